"""How long the Denoise and Lesion-navigator docks hold napari's GUI thread on a study, against napari adding it.

    xvfb-run -a env PYTHONPATH=. .venv/bin/python benchmarks/gui_holds.py --results benchmarks/results/gui_holds
    (--slices 300 --size 512: a 300-slice 512 x 512 study; --threshold 0.1: a low score threshold, many boxes)

Everything a dock does after its worker returns runs on the GUI thread: while it runs the viewer does not repaint or
answer the mouse. Each row times one such step as the docks run it, in a real (hidden) napari viewer with the
shipped models and a navigator docked: a whole-volume run's results arriving, ticking "show removed noise",
scrolling one slice with that overlay on, a threshold move that changes the boxes shown, one that lowers it back, a
slider drag of five steps and a move that changes none (each with the event loop run after it), and a current-slice
run folded into the volume. The reference is napari's own ``add_image`` of the same volume in
the same process (median of 3); each step's ratio to it is the machine-independent figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import refuse_existing, write_results  # noqa: E402
from throughput import phantom_volume  # noqa: E402


def seconds(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run_and_time(widget, app, timeout: float = 1800.0) -> tuple[float, float]:
    """Start ``widget``'s run and wait for it; the seconds Run held the GUI thread before its worker started, and
    the seconds its results took there, with the event loop run after them (the navigator reads when it runs)."""
    held: list[float] = []
    handler = widget._on_returned
    widget._on_returned = lambda out: held.append(seconds(lambda: (handler(out), app.processEvents())))
    done: list[bool] = []
    widget.job_finished.connect(lambda: done.append(True))
    started: list = []
    press = seconds(lambda: started.append(widget.run()))
    if started[0] is None:
        raise SystemExit(widget.status.text())
    end = time.monotonic() + timeout
    while not done and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    widget._on_returned = handler
    if not held:
        raise SystemExit(f"the run gave no result: {widget.status.text()}")
    return press, held[0]


def measure(n: int, size: int, threshold: float) -> dict[str, float]:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget
    from napari_lidnet._widgets.navigator import LesionNavigatorWidget

    volume = phantom_volume(n, size)
    geometry = {"scale": (2.5, 0.7, 0.7), "contrast_limits": (-160, 240), "colormap": "gray"}
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    refs = []
    for _ in range(3):
        refs.append(seconds(lambda: viewer.add_image(volume, name="reference", **geometry)))
        viewer.layers.remove("reference")
    viewer.add_image(volume, name="study", **geometry)
    viewer.window.add_dock_widget(LesionNavigatorWidget(viewer), area="bottom")
    widget = DenoiseDetectWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.device_combo.setCurrentText("cpu")
    widget.set_threshold(threshold)
    out = {"napari add_image (reference)": statistics.median(refs)}
    out["whole-volume run: Run pressed"], out["whole-volume run: results shown"] = run_and_time(widget, app)
    out["tick 'show removed noise'"] = seconds(lambda: widget.noise_check.setChecked(True))
    z0 = viewer.dims.point[0]
    out["scroll one slice, overlay on"] = seconds(lambda: (viewer.dims.set_point(0, z0 + 2.5), app.processEvents()))
    shown = len(widget.shown_boxes)

    def move(t: float) -> float:  # the slider set, then the event loop (the navigator reads when it runs)
        return seconds(lambda: (widget.set_threshold(t), app.processEvents()))

    def drag(first: int, last: int) -> float:  # a drag's steps delivered together (queued while the viewer was busy)
        return seconds(lambda: ([widget.threshold_slider.setValue(v) for v in range(first, last + 1)],
                                app.processEvents()))  # fmt: skip

    out["threshold move that changes the boxes"] = move(threshold + 0.05)
    out["boxes shown (low / raised threshold)"] = f"{shown} / {len(widget.shown_boxes)}"
    out["threshold lowered back (boxes added)"] = move(threshold)
    step = round(threshold * 100)
    out["slider dragged 5 steps up"] = drag(step + 1, step + 5)
    widget.set_threshold(threshold + 0.05)
    scores = np.asarray(widget._last["result"].boxes, np.float32).reshape(-1, 6)[:, 5]
    raised = threshold + 0.05
    same = next((t for t in np.arange(raised + 0.01, 0.99, 0.01) if not np.any((scores >= raised) & (scores < t))),
                None)  # the next slider step that leaves every box as it is  # fmt: skip
    if same is not None:
        out["threshold move that changes none"] = move(float(same))
    widget.set_threshold(threshold)
    widget.scope_combo.setCurrentText("current slice")
    out["current-slice run folded into the volume"] = run_and_time(widget, app)[1]
    viewer.close()
    out["fine-tune plot: one redraw (3 rounds of 40 + 20 steps)"] = plot_redraw()
    return out


def plot_redraw() -> float:
    """Seconds of one redraw of the Fine-tune dock's live plot (the median of 5) after a one-click run's records."""
    from napari_lidnet._widgets.loss_plot import TrainingPlot

    plot, step = TrainingPlot(), 0
    plot.resize(400, 360)
    for r in range(1, 4):
        for net, n in (("denoiser", 40), ("detector", 20)):
            for _ in range(n):
                step += 1
                losses = {"pixel": 1 / step, "detection": 2 / step, "roi_perceptual": 0.1 / step}
                plot.add_record({"stage": f"round{r}-{net}", "step": step, "losses": losses})
        plot.add_record({"stage": "validate", "step": step, "val": {"psnr": 40.0 + r, "sensitivity": 0.5 + r / 10}})
    times = []
    for _ in range(5):
        plot.add_record({"stage": "round3-denoiser", "step": step, "losses": {"pixel": 0.01}})
        times.append(seconds(lambda: (plot.redraw(), plot.canvas.draw())))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--results", type=Path, default=None, help="write STEM.md and STEM.json (never overwritten)")
    args = p.parse_args(argv)
    if args.results:
        refuse_existing(args.results)
    out = measure(args.slices, args.size, args.threshold)
    ref = out["napari add_image (reference)"]
    lines = [f"# GUI-thread holds, {args.slices} x {args.size}^2 study, threshold {args.threshold:.2f}", "",
             "| step | seconds | x napari add_image |", "|---|---|---|"]  # fmt: skip
    for step, value in out.items():
        if isinstance(value, float):
            lines.append(f"| {step} | {value:.3f} | {value / ref:.2f} |")
        else:
            lines.append(f"| {step} | {value} | |")
    if args.results:
        write_results(args.results, lines, {"args": vars(args) | {"results": str(args.results)}, "steps": out})
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
