"""The fine-tuning dock widget in a headless viewer (run under xvfb-run): a real short run, Stop, bad data."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QTimer
from test_local_data import phantom

from napari_lidnet._widgets.finetune import DETECT_ITEM, NO_BOXES_ITEM, SCRATCH_ITEM, FineTuneWidget
from napari_lidnet.layer_data import boxes_to_shapes
from napari_lidnet.models.registry import MODEL_DIR_ENV, list_models
from napari_lidnet.models.weights import load_weights

SCALE, TRANSLATE = (2.5, 0.7, 0.8), (10.0, -120.0, -100.0)


def add_case(viewer, n: int = 6, size: int = 64, noise: float = 80.0):
    """Low-dose, full-dose and lesion-box layers placed like a CT (the boxes drawn in 3D, on their slices)."""
    low, full, boxes = phantom(n=n, size=size, noise=noise)
    geo = {"scale": SCALE, "translate": TRANSLATE}
    viewer.add_image(low, name="low-dose CT", **geo)
    viewer.add_image(full, name="full-dose CT", **geo)
    viewer.add_shapes(boxes_to_shapes(boxes, 3), shape_type="rectangle", name="lesions", **geo)
    return low, full, boxes


def make_widget(viewer, qtbot, name: str, add: bool = True, **settings) -> FineTuneWidget:
    widget = FineTuneWidget(viewer)
    if add:
        qtbot.addWidget(widget)
    widget.name_edit.setText(name)
    widget.device_combo.setCurrentText("cpu")
    widget.patch_spin.setValue(32)
    widget.val_spin.setValue(0.34)
    widget.lr_spin.setValue(2e-3)
    for key, value in {"rounds": 2, "den_steps": 10, "det_steps": 2, **settings}.items():
        getattr(widget, f"{key}_spin").setValue(value)
    return widget


def wait_done(widget: FineTuneWidget, qtbot, worker, timeout: int = 60000) -> None:
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: widget.worker is None, timeout=2000)


def test_one_click_run_improves_and_publishes(make_napari_viewer, qtbot, model_dir: Path, tmp_path: Path) -> None:
    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget

    viewer = make_napari_viewer()
    add_case(viewer)
    denoise = DenoiseDetectWidget(viewer)
    viewer.window.add_dock_widget(denoise, name="LIDnet denoise")
    widget = make_widget(viewer, qtbot, "site-b")
    # defaults: the full-dose layer is ticked, the drawn boxes are picked, the user's models are the start
    assert widget.checked_images() == ["full-dose CT"]
    assert widget.boxes_combo.currentText() == "lesions"
    assert widget.start_denoiser_combo.currentText() == "default (shipped)"  # one click away, first
    widget.start_denoiser_combo.setCurrentText("tiny (user)")  # small and fast for the test
    assert widget.start_detector_combo.itemText(widget.start_detector_combo.count() - 1) == SCRATCH_ITEM
    # the one-click source simulates 25% dose; for a clear, fast test use the paired layers (Gaussian noise)
    widget.set_source("paired")
    assert widget.low_combo.currentText() == "low-dose CT" and widget.full_combo.currentText() == "full-dose CT"
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    t0 = time.monotonic()
    widget.start_button.click()  # the one click
    worker = widget.worker
    assert worker is not None, widget.status.text()
    wait_done(widget, qtbot, worker)
    elapsed = time.monotonic() - t0
    timer.stop()
    out = widget.outcome
    assert out is not None and out.status == "finished", widget.status.text()
    # the GUI thread kept running while the network trained
    assert len(ticks) >= max(3, 0.2 * elapsed / 0.02), (len(ticks), elapsed)
    vals = [r for r in widget.records if r["stage"] == "validate"]
    assert vals[0]["after"] == "start"
    # the widget shows validation and held-out numbers; whether fine-tuning improves a SOUND model on held-out
    # slices is tested in test_local_data (the tiny start is broken on purpose, so a gain here would prove little)
    assert out.best_metrics["psnr"] > out.start_metrics["psnr"]  # it learned: the broken start got fixed
    assert "psnr" in out.start_test_metrics and "psnr" in out.best_test_metrics
    assert "PSNR" in widget.status.text() and "->" in widget.status.text() and "test" in widget.status.text()
    assert "false boxes per slice" in widget.status.text()  # what the Denoise dock will draw with the new model
    # progress bars and plot followed the run
    assert widget.overall_bar.value() == widget.overall_bar.maximum() == 2 * (10 + 2)
    assert widget.stage_bar.value() == widget.stage_bar.maximum() == 2
    assert {"denoiser: pixel", "denoiser: detection", "denoiser: ROI perceptual", "detector: detection"} <= set(
        widget.plot.losses
    )
    assert len(widget.plot.validation) == 3
    widget.plot.redraw()
    widget.plot.canvas.draw()
    renderer = widget.plot.figure.canvas.get_renderer()
    legend = widget.plot.ax_loss.get_legend().get_window_extent(renderer)
    assert legend.y0 >= widget.plot.ax_loss.get_window_extent(renderer).y1 - 1  # above the curves, not over them
    widget.plot.figure.savefig(tmp_path / "loss_plot.png")
    assert widget.plot.ax_sens.yaxis.get_label_position() == "right"  # beside its own ticks, not over PSNR's
    assert widget.stage_label.text() == "finished: saved as site-b"  # not the last record's "saving ..."
    # the run folder is under the user's data dir, the model in the user folder and in the denoise widget
    assert Path(out.run_dir).parent == tmp_path / "runs"
    assert {"site-b_denoiser", "site-b_detector"} <= {m.name for m in list_models()}
    assert Path(str(denoise.denoiser_combo.currentData())).name == "site-b_denoiser"
    assert denoise.denoiser_combo.itemText(0) == "(none)"  # shipped models (when present) come next, first
    model, card = load_weights(model_dir / "site-b_detector")
    assert card["validation"]["before"] and card["validation"]["after"]
    assert card["training"]["finetune"]["images"][0]["boxes"] == "drawn (lesions)"
    # the new model can be the start of the next run, and the name was renewed so a second click does not clash
    texts = [widget.start_denoiser_combo.itemText(i) for i in range(widget.start_denoiser_combo.count())]
    assert "site-b (user)" in texts  # one name for the pair, as typed
    assert widget.name_edit.text() != "site-b"
    # a model that scores below its start on the held-out slices must not be selected all the same
    import dataclasses

    denoise.denoiser_combo.setCurrentIndex(0)
    widget._on_returned(dataclasses.replace(out, improved=False))
    assert denoise.denoiser_combo.currentIndex() == 0 and "listed in the denoise widget, not selected" in \
        widget.status.text(), widget.status.text()  # fmt: skip


def test_scans_without_lesion_boxes_fine_tune_both_networks_with_synthetic_lesions(
    make_napari_viewer, qtbot, model_dir: Path
) -> None:
    """Regression: a clinic's normal scans have no lesion boxes, so the dock refused a LIDnet run (the
    command line's --insert-lesions was not offered). "synthetic lesions" (Advanced) gives patches lesions to train
    both networks on: no boxes are needed then."""
    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    viewer.layers.remove("lesions")  # lesion-free scans
    widget = make_widget(viewer, qtbot, "normals", rounds=1, den_steps=4, det_steps=2)
    widget.start_denoiser_combo.setCurrentText("tiny (user)")
    widget.set_source("paired")
    assert widget.start() is None and "choose the lesion boxes" in widget.status.text()
    assert "scans without lesions: give synthetic lesions (Advanced)" in widget.status.text()
    widget.insert_spin.setValue(0.5)
    worker = widget.start()
    assert worker is not None, widget.status.text()
    wait_done(widget, qtbot, worker)
    assert widget.outcome is not None and widget.outcome.status == "finished", widget.status.text()
    card = load_weights(model_dir / "normals_detector")[1]
    assert card["training"]["config"]["insert_lesions"] == 0.5
    assert card["training"]["finetune"]["images"][0]["boxes"] == "none (synthetic lesions)"
    # the ROI perceptual loss compares detector features inside lesion boxes: non-zero only where lesions were put in
    roi = [r["losses"]["roi_perceptual"] for r in widget.records if "roi_perceptual" in r.get("losses", {})]
    assert roi and max(roi) > 0, roi


def test_stop_ends_the_run_and_keeps_the_best_so_far(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    widget = make_widget(viewer, qtbot, "stopped", rounds=3, den_steps=8, det_steps=2)
    widget.dose_spin.setValue(0.1)  # the one-click source: simulated low dose of the ticked full-dose layer
    seen = {}

    def on_record(rec: dict) -> None:
        if "stop_at" not in seen and rec["stage"] == "validate" and rec["after"] == "round1-detector":
            seen["stop_at"] = rec["step"]
            assert widget.stop_button.isEnabled()
            widget.stop_button.click()

    worker = widget.start()
    assert worker is not None, widget.status.text()
    worker.yielded.connect(on_record)
    wait_done(widget, qtbot, worker)
    stopped = [r for r in widget.records if r["stage"] == "stopped"]
    assert stopped, widget.status.text()
    total = stopped[0]["total_steps"]
    assert stopped[0]["step"] - seen["stop_at"] <= 3 < total - seen["stop_at"]
    assert widget.outcome.status == "stopped" and widget.outcome.exported
    run = Path(widget.outcome.run_dir)
    for tag in ("best", "last"):
        load_weights(run / f"{tag}_denoiser")
        load_weights(run / f"{tag}_detector")
    info = load_weights(model_dir / "stopped_denoiser")[1]["training"]["finetune"]
    assert info["stopped_early"] and info["dose"] == pytest.approx(0.1)
    assert info["images"][0]["name"] == "full-dose CT"
    # Start after a Stop must not begin a new run from the old start without a word
    assert "Start begins a new run: to go on from this one, pick stopped as the start" in widget.status.text()


def test_bad_data_gives_a_message_and_starts_nothing(make_napari_viewer, qtbot, model_dir: Path, tmp_path) -> None:
    viewer = make_napari_viewer()
    low, full, boxes = phantom(n=1, size=48)
    viewer.add_image(full[0], name="full-dose slice")
    viewer.add_shapes(boxes_to_shapes(boxes[:1, 1:], 2), shape_type="rectangle", name="one box")
    widget = make_widget(viewer, qtbot, "bad one")
    widget.patch_spin.setValue(64)
    assert widget.start() is None
    text = widget.status.text()
    for part in ("model name", "smaller than the patch size 64", "at least 2 slices", "only 1 lesion"):
        assert part in text, text
    assert widget.worker is None and widget.start_button.isEnabled()
    assert not (tmp_path / "runs").exists()
    # no boxes and no trained detector: says so
    widget.name_edit.setText("ok-name")
    widget.boxes_combo.setCurrentText(DETECT_ITEM)
    widget.start_detector_combo.setCurrentIndex(widget.start_detector_combo.count() - 1)
    assert widget.start() is None
    assert "draw rectangles" in widget.status.text()
    # nothing ticked
    widget.set_images([])
    assert widget.start() is None and "tick at least one" in widget.status.text()
    assert not (tmp_path / "runs").exists()


def test_default_boxes_are_reviewed_or_drawn_never_raw_detections(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """With only the detector's output open, no boxes are chosen and the run asks for reviewed or drawn ones;
    a reviewed layer becomes the default; the raw detections stay choosable under a name that says what they are."""
    viewer = make_napari_viewer()
    low, full, boxes = phantom(n=4, size=64, noise=80.0)
    geo = {"scale": SCALE, "translate": TRANSLATE}
    viewer.add_image(full, name="full-dose CT", **geo)
    shapes = boxes_to_shapes(boxes, 3)
    raw = {"lidnet_role": "detections", "lidnet": {"source_layer": "full-dose CT", "detector": "tiny"}}
    viewer.add_shapes(shapes, shape_type="rectangle", name="full-dose CT lesions", metadata=raw, **geo)
    widget = make_widget(viewer, qtbot, "no-raw")
    assert widget.boxes_combo.currentText() == NO_BOXES_ITEM
    texts = [widget.boxes_combo.itemText(i) for i in range(widget.boxes_combo.count())]
    assert "raw detections, unreviewed: full-dose CT lesions" in texts and DETECT_ITEM in texts
    request, problems = widget.build_request()
    assert request is None and any("choose the lesion boxes" in p and "false positives" in p for p in problems)

    viewer.add_shapes(ndim=3, name="empty reviewed", metadata={"lidnet_role": "reviewed"}, **geo)  # a Reject first
    assert widget.boxes_combo.currentText() == NO_BOXES_ITEM  # a reviewed layer with no box is not the default
    viewer.add_shapes(shapes[:2], shape_type="rectangle", name="full-dose CT reviewed",
                      metadata={"lidnet_role": "reviewed"}, **geo)  # fmt: skip
    assert widget.boxes_combo.currentText() == "full-dose CT reviewed (reviewed)"
    request, problems = widget.build_request()
    assert request is not None, problems
    assert [len(i.boxes) for i in request.inputs] == [2]  # the reviewed boxes, not the raw ones

    widget.den_steps_spin.setValue(0)
    widget.det_steps_spin.setValue(0)  # 0 steps: refused before the data is read
    request, problems = widget.build_request()
    assert request is None and any("nothing to train: every stage has 0 steps" in p for p in problems), problems
    widget.den_steps_spin.setValue(10)
    viewer.add_shapes(shapes[:1], shape_type="rectangle", name="my boxes", **geo)  # drawn by hand
    assert widget.boxes_combo.currentText() == "full-dose CT reviewed (reviewed)"  # the choice is kept
    widget.boxes_combo.setCurrentText("raw detections, unreviewed: full-dose CT lesions")  # knowingly
    request, problems = widget.build_request()
    assert request is not None and len(request.inputs[0].boxes) == len(boxes), problems
    assert "unreviewed detections" in widget._boxes_note()
    widget.set_source("dicom")  # a folder without annotations gets the starting detector's boxes: said at start
    assert "starting detector's boxes" in widget._boxes_note()
    widget.insert_spin.setValue(0.5)  # with synthetic lesions it takes none (and does not say it does)
    assert widget._boxes_note() == ", on synthetic lesions inserted into the folder's scans"


def test_normal_dose_pick_follows_the_metadata_and_refuses_low_dose(make_napari_viewer, qtbot, model_dir) -> None:
    """As when the dock is open before File > Open Sample: the low-dose layer arrives first and alone, and is not
    taken for the normal-dose image; the full-dose layer is ticked when it comes; a low-dose or denoised layer
    ticked by hand is refused in one line and nothing starts."""
    from napari_lidnet._widgets.finetune import ADAPT_SOURCE

    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot, "metadata")
    low, full, _boxes = phantom(n=4, size=64, noise=80.0)
    viewer.add_image(low, name="CT (25%)", metadata={"hu": True, "dose": 0.25, "normal_dose": "CT"})
    assert widget.checked_images() == []
    assert widget.data_box.adapt_images() == ["CT (25%)"]  # the self-supervised source takes it
    viewer.add_image(full, name="CT", metadata={"hu": True, "dose": 1.0})
    assert widget.checked_images() == ["CT"]
    viewer.add_image(full, name="CT denoised", metadata={"hu": True, "lidnet": {"denoiser": "default (unet)"}})
    widget.set_images(["CT", "CT denoised"])
    widget.start_button.click()
    assert widget.worker is None
    text = widget.status.text()
    line = next(ln for ln in text.splitlines() if "CT denoised" in ln)  # one line among the problems
    assert "low dose or denoised" in line and ADAPT_SOURCE[1] in line and "CT," not in line


def test_paired_layers_on_other_grids_are_refused_and_a_failed_start_leaves_no_preparing_label(
    make_napari_viewer, qtbot, model_dir: Path
) -> None:
    """A Fine-tune review: a low-dose layer 60 mm off its full-dose partner (or at another pixel size) was paired
    pixel by pixel and trained on; the stage label kept "reading ..." after a run that ended before training."""
    viewer = make_napari_viewer()
    add_case(viewer)
    widget = make_widget(viewer, qtbot, "site-grid")
    widget.set_source("paired")
    viewer.layers["low-dose CT"].translate = [t + (60 if k == 1 else 0) for k, t in enumerate(TRANSLATE)]
    request, problems = widget.build_request()
    assert request is None and any("do not lie on one grid in the viewer (translate differ)" in p for p in problems)
    viewer.layers["low-dose CT"].translate = TRANSLATE
    assert widget.build_request()[0] is not None
    # a swapped pair, or a denoised image as the full dose, must not train and be selected
    low, full = viewer.layers["low-dose CT"], viewer.layers["full-dose CT"]
    for layer, meta, said in ((full, {"lidnet": {"denoiser": "unet"}}, "full-dose CT: its metadata says denoised"),
                              (full, {"dose": 0.25, "normal_dose": "x"}, "full-dose CT: its metadata says a reduced"),
                              (low, {"dose": 1.0}, "low-dose CT: its metadata says normal dose")):  # fmt: skip
        layer.metadata = meta
        request, problems = widget.build_request()
        assert request is None and any(p.startswith(said) for p in problems), problems
        layer.metadata = {}
    assert widget.build_request()[0] is not None
    widget.run_panel.stage_label.setText("reading /somewhere")  # what a run that fails while preparing leaves
    widget.run_panel.end()
    assert widget.run_panel.stage_label.text() == ""
    widget.run_panel.stage_label.setText("simulating 25% dose")  # Stop pressed while preparing: it says so
    widget.run_panel.end("stopped")
    assert widget.run_panel.stage_label.text() == "stopped"


def test_closing_napari_mid_run_stops_it_and_keeps_the_best_so_far(make_napari_viewer, qtbot, model_dir) -> None:
    """Closing the whole viewer (not just the dock) while a run trains: the run stops at its next step and its
    best checkpoint is saved as a model, as Stop does; the window does not wait for the last step of the plan."""
    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    widget = make_widget(viewer, qtbot, "closed", rounds=3, den_steps=8, det_steps=2, add=False)
    viewer.window.add_dock_widget(widget, name="Fine-tune")  # the window deletes it on closing
    widget.dose_spin.setValue(0.1)
    seen = {}

    def on_record(rec: dict) -> None:
        if "closed_at" not in seen and rec["stage"] == "validate" and rec["after"] == "round1-detector":
            seen["closed_at"] = rec["step"]
            QTimer.singleShot(0, viewer.close)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        worker = widget.start()
    assert worker is not None, widget.status.text()
    assert not [w for w in caught if "_register_task_status" in str(w.message)]  # not read through napari's proxy
    records = []
    worker.yielded.connect(on_record)
    worker.yielded.connect(records.append)
    with qtbot.waitSignal(worker.finished, timeout=60000):
        pass
    assert seen, "the run ended before the viewer was closed"
    stopped = [r for r in records if r["stage"] == "stopped"]
    assert stopped and stopped[0]["step"] < seen["closed_at"] + 8 < stopped[0]["total_steps"]  # the GUI closes later
    assert load_weights(model_dir / "closed_denoiser")[1]["training"]["finetune"]["stopped_early"]


def test_a_model_folder_that_cannot_be_written_opens_the_dock_and_refuses_a_run_in_one_line(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a model folder that cannot be written (here: below a file, which even root cannot write
    into) made the dock raise while opening and Start raise out of its slot. The dock opens; Start says why in one
    line and starts nothing."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    monkeypatch.setenv(MODEL_DIR_ENV, str(blocker / "models"))
    viewer = make_napari_viewer()
    low, full, boxes = phantom(n=4, size=48)
    viewer.add_image(full, name="full-dose CT")
    viewer.add_shapes(boxes_to_shapes(boxes[:, :5], 3), shape_type="rectangle", name="boxes")
    widget = make_widget(viewer, qtbot, "site")
    assert widget.start() is None and widget.worker is None
    text = widget.status.text()
    assert f"cannot write to {blocker}" in text and MODEL_DIR_ENV in text, text
    assert blocker.read_text() == "a file"


def test_the_training_plot_draws_every_point_and_starts_afresh(qtbot, tmp_path: Path) -> None:
    """The curves are kept and given new points (clearing and rebuilding both panels at every draw would hold
    the viewer 0.15 s a draw, 0.05 s now: ``benchmarks/gui_holds.py``): each curve holds every point of its
    series, the legend names each series once, and ``clear`` leaves no curve of the old run."""
    from napari_lidnet._widgets.loss_plot import TrainingPlot

    plot = TrainingPlot()
    qtbot.addWidget(plot)
    for step in range(1, 31):
        losses = {"pixel": 1 / step, "detection": 2 / step} if step <= 20 else {"detection": 3 / step}
        stage = "round1-denoiser" if step <= 20 else "round1-detector"
        plot.add_record({"stage": stage, "step": step, "losses": losses})
        if step in (10, 30):
            plot.redraw()
    plot.add_record({"stage": "validate", "step": 30, "val": {"psnr": 41.0, "sensitivity": 0.7}})
    lines = {ln.get_label(): ln for ln in plot.ax_loss.get_lines()}
    assert sorted(lines) == sorted(plot.losses) == ["denoiser: detection", "denoiser: pixel", "detector: detection"]
    for name, pts in plot.losses.items():
        np.testing.assert_allclose(np.column_stack(lines[name].get_data()), pts)
    texts = [t.get_text() for t in plot.ax_loss.get_legend().get_texts()]
    assert sorted(texts) == sorted(plot.losses)
    plot.canvas.draw()
    plot.figure.savefig(tmp_path / "plot.png")
    plot.clear()
    plot.add_record({"stage": "round1-denoiser", "step": 1, "losses": {"pixel": 0.5}})
    plot.redraw()
    assert [ln.get_label() for ln in plot.ax_loss.get_lines()] == ["denoiser: pixel"]


def test_closing_waits_for_the_saved_model_while_the_window_paints(qtbot) -> None:
    """Regression: closing napari mid-run waited for the model on the GUI thread without processing events,
    5-11 s of a frozen window (which invites the system's "not responding" kill that loses the model). The wait lets
    Qt run timers and paint meanwhile; it ends when the run is done, or gives up after its timeout."""
    import threading

    from napari_lidnet._widgets._run_task import wait_painting

    done, ticks = threading.Event(), []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(20)
    threading.Timer(0.6, done.set).start()
    start = time.monotonic()
    assert wait_painting(done, timeout=10.0)
    assert 0.5 < time.monotonic() - start < 5.0 and len(ticks) >= 10  # the event loop ran during the wait
    assert not wait_painting(threading.Event(), timeout=0.2)
    timer.stop()


def test_a_plan_of_hours_runs_on_a_second_start_and_a_run_stopped_before_a_model_leaves_no_folder(
    make_napari_viewer, qtbot, model_dir: Path
) -> None:
    """Regression: 2,000,000 steps (weeks on a CPU) started without a word, and every run stopped before its
    first model left a run folder the dock can never resume. A plan over LONG_PLAN_STEPS asks for a second Start;
    a run stopped before any round finished leaves nothing behind."""
    from napari_lidnet._widgets.finetune import LONG_PLAN_STEPS

    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    widget = make_widget(viewer, qtbot, "long", rounds=60, den_steps=80, det_steps=20)
    assert 60 * 100 > LONG_PLAN_STEPS
    assert widget.start() is None and "6000 training steps" in widget.status.text()
    assert "press Start again" in widget.status.text() and not (model_dir.parent / "runs").exists()
    worker = widget.start()  # confirmed: it runs
    assert worker is not None, widget.status.text()
    worker.yielded.connect(lambda rec: widget.stop_button.click() if rec["stage"] == "round1-denoiser" else None)
    wait_done(widget, qtbot, worker)
    assert widget.outcome.status == "stopped" and not widget.outcome.exported
    assert "no model was saved" in widget.outcome.message
    assert not widget.outcome.notes  # nothing said about a model there is not
    assert not widget.run_dir.exists()  # its partial checkpoints serve no one
    assert widget.start() is None and "press Start again" in widget.status.text()  # asked again next time


def test_what_to_fix_first_is_said_first(make_napari_viewer, qtbot, model_dir: Path, tmp_path: Path) -> None:
    """Regression: with no image layer the message led with the lesion boxes to choose; a folder holding no
    DICOM started a run that then failed. Now the missing images are the message, and the folder is refused first."""
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot, "first")
    assert widget.start() is None
    assert "tick at least one" in widget.status.text() and "lesion boxes" not in widget.status.text()
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a scan")
    widget.set_source("dicom")
    widget.data_box.dicom_edit.setText(str(notes))
    assert widget.start() is None and widget.worker is None
    assert "no DICOM file found" in widget.status.text()
    assert not (model_dir.parent / "runs").exists()


def test_a_dataset_without_lesion_boxes_is_refused_before_a_lidnet_run(make_napari_viewer, qtbot, model_dir: Path,
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """Regression: a dataset folder without lesion boxes started a LIDnet run that then failed with the
    command line's advice (--insert-lesions, --mode pixel). Now Start refuses it at once in the dock's words, and the
    denoiser-alone mode takes the same folder."""
    from napari_lidnet.io.dataset import Sample, write_dataset

    rng = np.random.default_rng(0)
    full = [rng.normal(40, 10, (48, 48)).astype(np.float32) for _ in range(6)]
    samples = [Sample(f"s{k}", f, f + rng.normal(0, 20, f.shape).astype(np.float32), np.zeros((0, 4)), 0.7)
               for k, f in enumerate(full)]  # fmt: skip
    folder = write_dataset(tmp_path / "no-lesions", samples, {"dose": 0.25})
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot, "nolesions")
    widget.set_source("dataset")
    widget.data_box.dataset_edit.setText(str(folder))
    assert widget.start() is None and widget.worker is None
    assert "no-lesions: its slices have no lesion boxes" in widget.status.text()
    assert "denoiser alone" in widget.status.text() and "--" not in widget.status.text()
    assert not (model_dir.parent / "runs").exists()
    widget.mode_combo.setCurrentIndex(widget.mode_combo.findData("pixel"))
    request, problems = widget.build_request()
    assert request is not None and problems == [], problems


def test_an_int16_study_is_not_copied_to_float_on_the_gui_thread(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Regression: int16 layers were copied to float32 at Start (on the GUI thread) and held for the whole run
    (peak +1021 MiB on a 300-slice study against +451 MiB for float32). The inputs are the layers' own arrays, and
    a run on them trains and saves as on float32 layers."""
    viewer = make_napari_viewer()
    low, full, boxes = phantom(n=4, size=64)
    geo = {"scale": SCALE, "translate": TRANSLATE}
    low_layer = viewer.add_image(np.rint(low).astype(np.int16), name="low-dose CT", **geo)
    full_layer = viewer.add_image(np.rint(full).astype(np.int16), name="full-dose CT", **geo)
    viewer.add_shapes(boxes_to_shapes(boxes, 3), shape_type="rectangle", name="lesions", **geo)
    widget = make_widget(viewer, qtbot, "int16", rounds=1)
    widget.start_denoiser_combo.setCurrentText("tiny (user)")
    widget.set_source("paired")
    request, problems = widget.build_request()
    assert request is not None, problems
    item = request.inputs[0]
    assert np.shares_memory(item.full_hu, full_layer.data) and np.shares_memory(item.low_hu, low_layer.data)
    worker = widget.start()
    assert worker is not None, widget.status.text()
    wait_done(widget, qtbot, worker)
    assert widget.outcome.status == "finished" and widget.outcome.exported, widget.status.text()


def test_the_start_pickers_keep_their_choice_when_the_models_are_listed_again(
    make_napari_viewer, qtbot, model_dir
) -> None:
    """The Denoise and Fine-tune docks refill their model pickers one way (``_roles.fill_models``): a model stays
    chosen by its path, an entry without a model by its text: "from scratch" stayed chosen only until a refresh
    (a fine-tune run refreshes the pickers when it publishes), which put the shipped model back."""
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot, "site-c")
    widget.start_denoiser_combo.setCurrentText(SCRATCH_ITEM)
    widget.start_detector_combo.setCurrentText("tiny (user)")
    widget.refresh_models()
    assert widget.start_denoiser_combo.currentText() == SCRATCH_ITEM
    assert widget.start_detector_combo.currentText() == "tiny (user)"
    listed = [widget.start_denoiser_combo.itemText(i) for i in range(widget.start_denoiser_combo.count())]
    assert listed[0] == "default (shipped)" and listed[-1] == SCRATCH_ITEM and "tiny (user)" in listed


def test_the_training_plot_stays_readable_in_the_narrow_column(qtbot) -> None:
    """Regression: in the reading room's 247 px column the two-column legend beside the layout squeezed
    both panels to a few pixels, its entries cut. The legend takes one column above the panels, which keep the
    width; it stays so when the column is resized."""
    from napari_lidnet._widgets.loss_plot import TrainingPlot

    plot = TrainingPlot()
    qtbot.addWidget(plot)
    plot.resize(247, 360)
    plot.show()
    qtbot.waitExposed(plot)
    for step in range(1, 6):
        plot.add_record({"stage": "round1-denoiser", "step": step,
                         "losses": {"pixel": 1 / step, "detection": 2 / step, "ROI perceptual": 0.5 / step}})
        plot.add_record({"stage": "round1-detector", "step": step, "losses": {"detection": 3 / step}})
    plot.add_record({"stage": "validate", "step": 5, "val": {"psnr": 40.2, "sensitivity": 0.7}})
    plot.redraw()
    for width in (247, 420, 247):
        plot.resize(width, 360)
        qtbot.wait(50)
        plot.canvas.draw()
        renderer = plot.figure.canvas.get_renderer()
        fig = plot.figure.bbox
        for ax in (plot.ax_loss, plot.ax_val):
            assert ax.get_window_extent(renderer).width >= 0.45 * fig.width, (width, ax.get_window_extent(renderer))
        legend = plot.ax_loss.get_legend().get_window_extent(renderer)
        assert fig.x0 - 1 <= legend.x0 and legend.x1 <= fig.x1 + 1 and legend.y1 <= fig.y1 + 1, (width, legend)
        assert legend.y0 >= plot.ax_loss.get_window_extent(renderer).y1 - 1  # above the curves, not over them


def test_a_deeplesion_archive_fine_tunes_on_its_train_part(make_napari_viewer, qtbot, model_dir: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Regression: the dock had no DeepLesion source (its folder sources refused the archive, which
    `lidnet train --data` takes). The dataset source takes one: its train part, indexed when the run starts, low
    doses simulated when a slice is first used, kept in the run folder; the test part is never read."""
    from conftest import HEADER, _row
    from test_local_data import phantom

    from napari_lidnet.io.png16 import write_png_hu

    root = tmp_path / "DeepLesion"
    _, full, boxes = phantom(n=8, size=64, noise=0.0, seed=3)
    rows = []
    for k in range(8):
        series = root / "Images_png" / f"00000{k}_01_01"
        series.mkdir(parents=True)
        write_png_hu(series / "050.png", full[k])
        box = boxes[boxes[:, 0] == k][:1, 1:] if (boxes[:, 0] == k).any() else np.array([[20.0, 20.0, 30.0, 30.0]])
        text = ", ".join(f"{v + 0.5:.1f}" for v in box[0])  # the table's 1-based centres
        part = "3" if k == 7 else "1"  # one patient in the official test part
        rows.append(_row(f"00000{k}_01_01_050.png", 50, text, size="64, 64").rstrip("\n")[:-1] + part + "\n")
    (root / "DL_info.csv").write_text(HEADER + "".join(rows))
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot, "dl-tuned", rounds=1, den_steps=3, det_steps=2)
    widget.start_denoiser_combo.setCurrentText("tiny (user)")
    widget.set_source("dataset")
    widget.data_box.dataset_edit.setText(str(root))
    worker = widget.start()
    assert worker is not None, widget.status.text()
    wait_done(widget, qtbot, worker)
    assert widget.outcome is not None and widget.outcome.status == "finished", widget.status.text()
    card = load_weights(model_dir / "dl-tuned_denoiser")[1]
    assert card["training"]["finetune"]["source"] == "deeplesion" and card["training"]["finetune"]["n_slices"] == 7
    cached = list((Path(widget.outcome.run_dir) / "lowdose").glob("*.npy"))
    assert 0 < len(cached) <= 7  # simulated when used, in the run folder, never in the archive
    assert not any(p.suffix == ".npy" for p in root.rglob("*"))


def test_a_saved_network_below_its_start_is_named_in_the_finish_note(tmp_path) -> None:
    """Regression: a stopped fine-tune's pair was selected (better as a whole on the test slices) while
    its detector's validation sensitivity had fallen from 0.467 to 0.333, and the message said nothing of it."""
    from napari_lidnet._widgets.finetune import _worse_networks
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import save_weights

    card = {"metrics": {"psnr": 36.3, "sensitivity": 0.333},
            "training": {"start_metrics": {"psnr": 35.5, "sensitivity": 0.467}}}  # fmt: skip
    save_weights(LesionDetector(width=4), tmp_path / "run_detector", card)
    save_weights(LesionDetector(width=4), tmp_path / "fine_detector", {"metrics": {"sensitivity": 0.5},
                 "training": {"start_metrics": {"sensitivity": 0.4}}})  # fmt: skip
    notes = _worse_networks([str(tmp_path / "run_detector"), str(tmp_path / "fine_detector")])
    assert notes == {"detector": "its validation mean sensitivity fell from 0.467 to 0.333 during training"}


def test_a_pair_better_as_a_whole_leaves_its_worse_detector_unselected(make_napari_viewer, qtbot, model_dir) -> None:
    """A reviewer's: a pair better as a whole selected, in the Denoise dock, a detector the same message called
    worse than its start. Now its denoiser is selected, its detector listed, and the detector in use stays."""
    from napari_lidnet._training.finetune import FinetuneOutcome
    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import save_weights

    viewer = make_napari_viewer()
    denoise = DenoiseDetectWidget(viewer)
    viewer.window.add_dock_widget(denoise)
    denoise.detector_combo.setCurrentText("tiny (user)")
    before = denoise.detector_combo.currentText()
    den, _ = load_weights(model_dir / "tiny_denoiser")
    save_weights(den, model_dir / "rev_denoiser", {"metrics": {"psnr": 36.0},
                                                   "training": {"start_metrics": {"psnr": 35.0}}})  # fmt: skip
    save_weights(LesionDetector(width=4), model_dir / "rev_detector", {"metrics": {"sensitivity": 0.333},
                 "training": {"start_metrics": {"sensitivity": 0.467}}})  # fmt: skip
    widget = make_widget(viewer, qtbot, "rev")
    exported = [str(model_dir / f"rev_{k}.safetensors") for k in ("denoiser", "detector")]
    widget._on_returned(FinetuneOutcome("finished", "finished", exported=exported, improved=True))
    assert denoise.denoiser_combo.currentText().startswith("rev (user)")
    assert denoise.detector_combo.currentText() == before
    assert "its detector listed, not selected: the detector in use stays" in widget.status.text()
    assert "fell from 0.467 to 0.333" in widget.status.text()


def test_the_pair_pickers_follow_a_simulated_low_dose_until_the_user_picks(make_napari_viewer, qtbot) -> None:
    """Regression: opened beside one normal-dose scan, both pair pickers showed it; after Load
    CT simulated its low dose they still did, and Start said "must be different layers"."""
    from napari_lidnet.layer_data import data_key

    viewer = make_napari_viewer()
    low, full, _ = phantom(n=4, size=64)
    viewer.add_image(full, name="chest", metadata={"hu": True})
    widget = make_widget(viewer, qtbot, "pair")
    widget.set_source("paired")
    box = widget.data_box
    assert box.low_combo.currentText() == box.full_combo.currentText() == "chest"
    meta = {"hu": True, "dose": 0.25, "normal_dose": "chest", "normal_dose_key": data_key(full)}
    viewer.add_image(low, name="chest 25% dose", metadata=meta)  # as Load CT's simulation records it
    assert (box.low_combo.currentText(), box.full_combo.currentText()) == ("chest 25% dose", "chest")
    box.full_combo.setCurrentText("chest 25% dose")
    box.full_combo.activated.emit(box.full_combo.currentIndex())  # the user's own pick stays
    viewer.add_image(full + 1.0, name="another", metadata={"hu": True})
    assert box.full_combo.currentText() == "chest 25% dose"


def test_the_card_says_where_the_training_boxes_came_from(make_napari_viewer) -> None:
    """A reviewer's: a scan's own annotations and a navigator's reviewed boxes were recorded as "drawn"."""
    from napari_lidnet._widgets._roles import DETECTIONS, REVIEWED
    from napari_lidnet._widgets.layer_inputs import box_source
    from napari_lidnet.layer_data import ANNOTATIONS, ROLE

    viewer = make_napari_viewer()
    for meta, said in (({}, "drawn"), ({ROLE: ANNOTATIONS}, "annotations"), ({ROLE: REVIEWED}, "reviewed detections"),
                       ({ROLE: DETECTIONS}, "raw detections, unreviewed")):  # fmt: skip
        layer = viewer.add_shapes(name="boxes", metadata=meta)
        assert box_source(layer) == f"{said} ({layer.name})"
