"""The README's main job: napari with the sample low-dose CT, denoised, lesions boxed, on the shipped weights.

``python -m napari_lidnet.demo`` opens the viewer with every LIDnet dock (forms tabbed on the right, the lesion
navigator and ROI compare tabbed at the bottom), two regions drawn for ROI compare; ``--headless`` (under Xvfb)
also writes a screenshot and a metrics report (``report.md`` and ``report.json``) to ``--out``, and the README's
pictures (``layout.png``, ``compare.png``, ``navigator.png``, 1600 x 1000) to ``--pictures``, then exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet import PLUGIN
from napari_lidnet.io.json_text import strict_dumps

LOW, FULL, TRUTH = "low-dose CT (25%)", "full-dose CT", "lesions (ground truth)"


def _wait(widget: Any, timeout_s: float = 600.0) -> None:
    """Run the Qt event loop until the widget's job finishes (the viewer stays live meanwhile)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    widget.job_finished.connect(loop.quit)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    if widget.run() is not None:
        loop.exec()


def sample_metrics(viewer: Any, threshold: float) -> dict[str, Any]:
    """PSNR/SSIM of low dose and denoised against full dose, and the detections against the ground truth."""
    from napari_lidnet.layer_data import shapes_to_boxes
    from napari_lidnet.metrics.froc import detections_per_slice, froc, truth_per_slice
    from napari_lidnet.metrics.image import METRIC_WINDOW, slice_quality

    low = np.asarray(viewer.layers[LOW].data)
    full = np.asarray(viewer.layers[FULL].data)
    den = np.asarray(viewer.layers[f"{LOW} denoised"].data)
    gt = shapes_to_boxes(viewer.layers[TRUTH])
    found = shapes_to_boxes(viewer.layers[f"{LOW} lesions"])
    scores = np.asarray(viewer.layers[f"{LOW} lesions"].features["score"], dtype=float)
    n = low.shape[0]
    rows = np.hstack([found, scores[:, None]]) if len(found) else np.zeros((0, 6))
    fr = froc(detections_per_slice(rows, n), truth_per_slice(gt, n))  # the shown boxes are those >= threshold
    quality = {}
    for name, img in (("low dose", low), ("denoised", den)):
        q = slice_quality(img, full, window=METRIC_WINDOW)
        quality[name] = {"psnr_db": q["psnr"], "ssim": q["ssim"]}
    return {
        "window_hu": list(METRIC_WINDOW),
        "quality": quality,
        "lesions": int(len(gt)),
        "boxes_shown": int(len(found)),
        "score_threshold": threshold,
        "sensitivity_at_threshold": float(fr.sensitivity[-1]) if len(rows) else 0.0,
        "false_positives_per_slice": float(fr.fp_per_image[-1]) if len(rows) else 0.0,
        "froc_criterion": fr.criterion,
    }


def write_report(out: Path, metrics: dict[str, Any], timings: dict[str, float], models: dict[str, str]) -> None:
    """report.json plus a short report.md."""
    report = {"metrics": metrics, "timings_s": timings, "models": models}
    (out / "report.json").write_text(strict_dumps(report, indent=2))
    q = metrics["quality"]
    lines = [
        "# napari-lidnet demo report",
        "",
        f"Sample: simulated abdomen CT at 25% dose; models: {models['denoiser']} + {models['detector']}.",
        "",
        f"| image | PSNR (dB) | SSIM |  (HU window {metrics['window_hu']}, vs full dose)",
        "|---|---|---|",
        *(f"| {k} | {v['psnr_db']:.2f} | {v['ssim']:.3f} |" for k, v in q.items()),
        "",
        f"Lesions: {metrics['lesions']} in the ground truth, {metrics['boxes_shown']} boxes shown at score >= "
        f"{metrics['score_threshold']:.3f}: sensitivity {metrics['sensitivity_at_threshold']:.2f} at "
        f"{metrics['false_positives_per_slice']:.2f} false positives per slice ({metrics['froc_criterion']}).",
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
        "![screenshot](screenshot.png)",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


#: the docks of the reading room, in the order they open (forms on the right, tables at the bottom)
DOCKS = {
    "load": "Load CT",
    "denoise": "Denoise and detect",
    "navigator": "Lesion navigator",
    "roi": "ROI compare",
    "finetune": "Fine-tune",
}
#: the pictures of the README, written by ``--headless`` into ``--pictures``
PICTURES = ("layout.png", "compare.png", "navigator.png")


def open_reading_room(viewer: Any) -> dict[str, Any]:
    """Open every LIDnet dock through the manifest (as a user would from the Plugins menu) and let them settle
    into their areas; returns the widgets by key of ``DOCKS``."""
    from qtpy.QtWidgets import QApplication

    widgets = {key: viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for key, name in DOCKS.items()}
    for _ in range(5):
        QApplication.processEvents()
    raise_tab(widgets["denoise"])
    raise_tab(widgets["roi"])
    return widgets


def raise_tab(widget: Any) -> None:
    """Bring a widget's dock to the front of its tab group."""
    from qtpy.QtWidgets import QApplication

    from napari_lidnet._widgets._docking import dock_of

    dock = dock_of(widget)
    if dock is not None:
        dock.raise_()
    QApplication.processEvents()


def draw_rois(viewer: Any, roi_widget: Any, z: int, image_name: str = FULL) -> None:
    """Two regions on slice ``z`` with "New ROI layer" (on the sample: both in the liver, one over lesions)."""
    image = viewer.layers[image_name]
    roi = roi_widget.new_roi_layer()
    h, w = image.data.shape[-2:]
    for cy, cx, r in ((0.55 * h, 0.32 * w, 0.05 * h), (0.38 * h, 0.36 * w, 0.035 * h)):
        corners = [[z, cy - r, cx - r], [z, cy - r, cx + r], [z, cy + r, cx + r], [z, cy + r, cx - r]]
        roi.add_ellipses(np.array(corners))
    roi_widget.metric_combo.setCurrentIndex(roi_widget.metric_combo.findData("sd"))  # noise: what denoising changes
    roi_widget.refresh()


def review_some(navigator: Any) -> None:
    """Accept the two best-scoring boxes, reject the next one, and select the best one (the view jumps to it)."""
    ranked = sorted(navigator.findings, key=lambda f: -(f.score or 0.0))
    for f in ranked[:2]:
        navigator.accept(f.id)
    if len(ranked) > 2:
        navigator.reject(ranked[2].id)
    if ranked:
        navigator.select(ranked[0].id)


def measure_finding(load_widget: Any, finding: Any) -> Any:
    """A caliper across a finding's box at its middle row (Load CT's "Measure (mm)"), as a reader checks a size."""
    x1, y1, x2, y2 = finding.bounds
    layer = load_widget.measure()
    lead = [finding.slice] if layer.ndim == 3 else []
    layer.add_lines(np.array([[*lead, (y1 + y2) / 2, x1], [*lead, (y1 + y2) / 2, x2]]))
    return layer


def take_pictures(viewer: Any, widgets: dict[str, Any], folder: Path, wait: Any) -> list[Path]:
    """The README's pictures at the window's size: the layout, the side-by-side comparison, the navigator (with a
    caliper across the finding it zoomed to)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / name for name in PICTURES]
    raise_tab(widgets["roi"])
    wait(widgets["roi"])
    viewer.screenshot(str(paths[0]), canvas_only=False, flash=False)
    widgets["denoise"].set_compare(True)
    raise_tab(widgets["denoise"])
    viewer.screenshot(str(paths[1]), canvas_only=False, flash=False)
    widgets["denoise"].set_compare(False)
    review_some(widgets["navigator"])
    shown = widgets["navigator"].finding(widgets["navigator"].current_id())
    if shown is not None:  # the step zoomed to it: the caliper across it reads on screen
        measure_finding(widgets["load"], shown)
    raise_tab(widgets["navigator"])
    viewer.screenshot(str(paths[2]), canvas_only=False, flash=False)
    return paths


def _wait_table(widget: Any, timeout_s: float = 120.0) -> None:
    """Run the event loop until ROI compare's table is computed."""
    from qtpy.QtWidgets import QApplication

    t0 = time.perf_counter()
    while widget.busy and time.perf_counter() - t0 < timeout_s:
        QApplication.processEvents()
        time.sleep(0.02)


def _settle_workers(timeout_s: float = 120.0) -> None:
    """Let every background job (ROI compare's table after the last picture, say) finish and deliver its signals
    before the viewer closes: one that finished after the docks were deleted aborted the demo at exit (exit 134)."""
    from qtpy.QtCore import QThreadPool
    from qtpy.QtWidgets import QApplication

    pool, t0 = QThreadPool.globalInstance(), time.perf_counter()
    while pool.activeThreadCount() and time.perf_counter() - t0 < timeout_s:
        QApplication.processEvents()
        pool.waitForDone(20)
    QApplication.processEvents()


def main(argv: list[str] | None = None) -> int:
    """Open the demo; with ``--headless`` write the screenshot, the report and the README's pictures, then exit."""
    parser = argparse.ArgumentParser(prog="python -m napari_lidnet.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--headless", action="store_true", help="no window: write screenshot + report, then exit")
    parser.add_argument("--out", default="demo-out", help="folder for screenshot.png and report.md/json")
    parser.add_argument(
        "--pictures", default=None, help="folder for layout.png, compare.png, navigator.png (default: --out)"
    )
    parser.add_argument("--threshold", type=float, default=None,
                        help="score threshold of the shown boxes (default: the detector's calibrated one)")  # fmt: skip
    args = parser.parse_args(argv)
    problem = display_problem()
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2
    if args.headless:
        args.out = str(free_folder(Path(args.out)))

    import napari

    t0 = time.perf_counter()
    viewer = napari.Viewer(title="napari-lidnet demo", show=True)
    viewer.window.resize(1600, 1000)
    viewer.open_sample(PLUGIN, "abdomen_lowdose")
    t_sample = time.perf_counter() - t0
    widgets = open_reading_room(viewer)
    widget = widgets["denoise"]
    widget.image_combo.setCurrentText(LOW)
    widget.scope_combo.setCurrentText("all slices")
    if args.threshold is not None:
        widget.set_threshold(args.threshold)
    args.threshold = widget.threshold  # the detector card's calibrated one unless given
    t1 = time.perf_counter()
    _wait(widget)
    t_run = time.perf_counter() - t1
    if f"{LOW} denoised" not in viewer.layers:
        print(f"demo: denoising did not produce a layer: {widget.status.text()}", file=sys.stderr)
        return 1
    truth = viewer.layers[TRUTH]
    slices = [int(s[0, 0]) for s in truth.data] if truth.ndim == 3 else []
    z = int(np.bincount(slices or [0]).argmax())  # the slice with most lesions
    viewer.dims.set_current_step(0, z)
    for name in (FULL, TRUTH, LOW):
        viewer.layers[name].visible = False
    draw_rois(viewer, widgets["roi"], z)
    viewer.layers.selection.active = viewer.layers[f"{LOW} lesions"]
    if not args.headless:
        napari.run()
        return 0
    return _headless_outputs(viewer, widgets, args, {"open sample": t_sample, "denoise + detect": t_run})


def display_problem(env: dict[str, str] | None = None) -> str:
    """Why napari cannot open a window here (Linux without an X or Wayland display, no Qt platform chosen), in one
    line; '' when it can (Qt aborted with a page of text)."""
    env = os.environ if env is None else env
    shown = any(env.get(k) for k in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))
    if shown or not sys.platform.startswith("linux"):
        return ""
    return ("no display to open napari on (DISPLAY is not set): run it under a virtual X server, `xvfb-run -a python "
            "-m napari_lidnet.demo --headless`, or `make demo HEADLESS=1`")


def free_folder(out: Path) -> Path:
    """``out`` when it is new or empty, else the first free ``out-2``, ``out-3``, ... (said): an earlier demo's
    outputs are never overwritten."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    k = 2
    while (out.with_name(f"{out.name}-{k}")).exists():
        k += 1
    free = out.with_name(f"{out.name}-{k}")
    print(f"demo: {out} holds earlier outputs (never overwritten): writing {free}", file=sys.stderr)
    return free


def _headless_outputs(viewer: Any, widgets: dict[str, Any], args: Any, timings: dict[str, float]) -> int:
    """Screenshot, report and the README's pictures; closes the viewer."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _wait_table(widgets["roi"])
    viewer.screenshot(str(out / "screenshot.png"), canvas_only=False, flash=False)
    metrics = sample_metrics(viewer, args.threshold)
    widget = widgets["denoise"]
    models = {k: Path(str(getattr(widget, f"{k}_combo").currentData())).name for k in ("denoiser", "detector")}
    write_report(out, metrics, timings, models)
    pictures = take_pictures(viewer, widgets, Path(args.pictures or out), _wait_table)
    _settle_workers()
    viewer.close()
    print((out / "report.md").read_text())
    print("pictures: " + ", ".join(str(p) for p in pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
