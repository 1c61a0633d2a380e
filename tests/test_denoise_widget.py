"""The denoise/detect dock widget end to end in a headless viewer (run under xvfb-run), with small saved models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from torch import nn

from napari_lidnet import inference as inf
from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget
from napari_lidnet._widgets.reading_room import READOUT
from napari_lidnet.layer_data import removed_noise, removed_noise_kwargs
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.registry import MODEL_DIR_ENV
from napari_lidnet.models.weights import FALLBACK_THRESHOLD, save_weights

SCALE, TRANSLATE = (2.5, 0.7, 0.8), (10.0, -120.0, -100.0)


def phantom(n: int = 6, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(low-dose-like, reference) HU volumes: an ellipse of soft tissue with bright disks, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ref = np.full((n, size, size), -1000.0, np.float32)
    body = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 < 1
    for k in range(n):
        ref[k][body] = 40.0
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        ref[k][(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 12) ** 2] = 120.0
    return (ref + rng.normal(0, 40, ref.shape)).astype(np.float32), ref


def tiny_denoiser(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = build_denoiser("fastdn", width=8, blocks=1)
    nn.init.normal_(model.tail.weight, std=0.05)  # not the identity
    return model.eval()


def tiny_detector(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = LesionDetector(width=4)
    nn.init.normal_(model.heatmap_head[2].weight, std=5.0)  # spread the scores around the 0.1 prior
    return model.eval()


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user model folder with a tiny denoiser and detector (random init), set as NAPARI_LIDNET_MODEL_DIR."""
    folder = tmp_path / "models"
    save_weights(tiny_denoiser(), folder / "tiny_denoiser", {"training": {"note": "test"}})
    save_weights(tiny_detector(), folder / "tiny_detector")
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    return folder


def add_ct(viewer, hu: np.ndarray, name: str = "low", **kwargs):
    """Add HU as an image layer placed like a CT (scale/translate/contrast limits)."""
    geo = {"scale": SCALE[-hu.ndim :], "translate": TRANSLATE[-hu.ndim :]}
    return viewer.add_image(hu, name=name, contrast_limits=(-160, 240), colormap="gray", **{**geo, **kwargs})


def make_widget(viewer, qtbot) -> DenoiseDetectWidget:
    """The widget on the CPU with the tiny test models selected (the shipped defaults are listed first)."""
    widget = DenoiseDetectWidget(viewer)
    qtbot.addWidget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.denoiser_combo.setCurrentText("tiny (user)")
    widget.detector_combo.setCurrentText("tiny (user)")
    return widget


def run_and_wait(widget: DenoiseDetectWidget, qtbot, timeout: int = 30000) -> None:
    with qtbot.waitSignal(widget.job_finished, timeout=timeout):
        assert widget.run() is not None, widget.status.text()


def names(viewer) -> list[str]:
    return [ly.name for ly in viewer.layers]


def test_volume_run_layers_geometry_threshold_and_rerun(make_napari_viewer, qtbot, model_dir: Path) -> None:
    from qtpy.QtCore import QTimer

    viewer = make_napari_viewer()
    low, _ = phantom(n=12, size=96)
    src = add_ct(viewer, low.copy(), units=("mm",) * 3)  # as the reader gives a CT: napari's scale bar reads mm
    widget = make_widget(viewer, qtbot)
    assert widget.denoiser_combo.currentText() == "tiny (user)"
    assert widget.detector_combo.currentText() == "tiny (user)"
    widget.batch_size = 2
    widget.set_threshold(0.05)  # random-init detector: scores near its prior 0.1

    ticks: list[int] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    progress: list[int] = []
    with qtbot.waitSignal(widget.job_finished, timeout=30000):
        widget.run().yielded.connect(lambda rec: progress.append(rec.done))
    timer.stop()
    assert len(ticks) >= 3  # the event loop kept running while the volume was processed
    assert progress[-1] == 24 and widget.progress.value() == widget.progress.maximum() == 24
    assert widget.progress.text() == "100% of 12 slices (denoise + detect)"  # slices, not steps

    np.testing.assert_array_equal(src.data, low)  # input untouched
    den = viewer.layers["low denoised"]
    assert den.data.shape == low.shape and den is not src
    np.testing.assert_allclose(den.scale, src.scale)
    np.testing.assert_allclose(den.translate, src.translate)
    np.testing.assert_allclose(den.affine.affine_matrix, src.affine.affine_matrix)
    assert tuple(den.contrast_limits) == tuple(src.contrast_limits)
    np.testing.assert_allclose(den.data, inf.denoise(tiny_denoiser(), low), atol=1e-3)

    boxes = viewer.layers["low lesions"]
    np.testing.assert_allclose(boxes.scale, src.scale)
    np.testing.assert_allclose(boxes.translate, src.translate)
    assert den.units == boxes.units == src.units and [str(u) for u in viewer.layers.units] == ["millimeter"] * 3
    assert boxes.metadata["lidnet"]["pixel_mm"] == SCALE[1:]  # its image's, measured: File > Save's .boxes.csv mm
    assert boxes.ndim == 3 and len(boxes.data) > 0 and set(boxes.shape_type) == {"rectangle"}
    for verts, z, score in zip(boxes.data, boxes.features["slice"], boxes.features["score"]):
        assert np.all(verts[:, 0] == z) and score >= widget.threshold  # each box lies on its own slice
    assert boxes.text.values[0] == f"{boxes.features['score'][0]:.2f}"
    assert not np.allclose(boxes.edge_color[0], boxes.edge_color[-1]) or len(set(boxes.features["score"])) == 1

    all_rows = widget._last["result"].boxes
    scores = np.sort(all_rows[:, 5])
    assert scores[0] >= inf.BOX_FLOOR
    for t in (0.05, float(np.round(np.median(scores), 2)), 0.95):
        widget.set_threshold(t)
        assert len(boxes.data) == int((all_rows[:, 5] >= t - 1e-6).sum())  # filtered live, same layer
        assert viewer.layers["low lesions"] is boxes
        assert tuple(boxes.edge_contrast_limits) == (0.0, 1.0)  # a score keeps its colour at any threshold
        if len(boxes.data):
            expected = boxes.edge_colormap.map(boxes.features["score"].to_numpy())
            np.testing.assert_allclose(boxes.edge_color, expected, atol=1e-6)
    # the status counts boxes and lesions as `lidnet detect` and the navigator do: overlapping boxes on
    # neighbouring slices are one lesion
    result = widget._last["result"]
    crafted = np.array([[3, 10, 10, 30, 30, 0.9], [4, 11, 10, 31, 30, 0.8], [8, 50, 50, 60, 60, 0.7]], np.float32)
    widget._last["result"] = dataclasses.replace(result, boxes=crafted)
    widget.set_threshold(0.5)
    assert "; 3 boxes (2 lesions) with score >= 0.50" in widget.status.text()
    widget.set_threshold(0.85)
    assert "; 1 box (1 lesion) with score >= 0.85" in widget.status.text()
    widget.set_threshold(0.8004)  # between the slider's steps: applied as given (as `lidnet detect` does), not 0.80
    assert "; 1 box (1 lesion) with score >= 0.800" in widget.status.text()
    widget._last["result"] = result
    widget.set_threshold(0.05)

    widget.noise_check.setChecked(True)
    noise = viewer.layers["low removed noise"]
    body = ndi.binary_fill_holes(low > -500, structure=np.ones((1, 3, 3)))  # tissue, per slice
    assert body.any() and (~body).any()  # the phantom has air around it
    np.testing.assert_allclose(noise.data[body], (low - den.data)[body], atol=1e-4)
    assert np.all(noise.data[~body] == 0) and np.abs(low - den.data)[~body].max() > 1  # air: removed, not shown
    assert noise.blending == "translucent" and noise.contrast_limits[0] == -noise.contrast_limits[1]
    inputs = [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())]
    assert "low removed noise" not in inputs and "low" in inputs  # an overlay, not an image to denoise
    alpha = noise.colormap.map(np.array([0.0, 0.5, 1.0]))[:, 3]
    np.testing.assert_allclose(alpha, [1.0, 0.0, 1.0])  # nothing removed: transparent, the CT shows
    widget.noise_check.setChecked(False)
    assert "low removed noise" not in names(viewer)

    layers_before = names(viewer)
    run_and_wait(widget, qtbot)  # re-run: served by the cache, layers replaced, not duplicated
    assert names(viewer) == layers_before
    assert "from cache: denoise, detect" in widget.status.text()
    assert widget._cache.hits == 2


def test_hand_edits_on_the_lesions_layer_survive_the_threshold(make_napari_viewer, qtbot, model_dir, tmp_path) -> None:
    """Regression: a box drawn on the lesions layer vanished at the next threshold move, a moved box jumped
    back to where the detector had put it, and a drawn box took the last row's score (0.51, shown and exported).
    A drawn box has no score and stays; a moved one stays where the reader put it; a deleted one stays deleted."""
    from napari.utils.colormaps.standardize_color import transform_color

    from napari_lidnet._widgets._box_style import DRAWN_EDGE
    from napari_lidnet.io.saved_boxes import read_boxes_csv

    viewer = make_napari_viewer()
    low, _ = phantom(n=6, size=64)
    add_ct(viewer, low.copy())
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    rows = np.array([[1, 10, 10, 20, 20, 0.9], [2, 30, 30, 40, 44, 0.8], [3, 5, 40, 15, 50, 0.7],
                     [4, 40, 8, 50, 18, 0.6]], np.float32)  # fmt: skip
    widget._last["result"] = dataclasses.replace(widget._last["result"], boxes=rows)
    widget.set_threshold(0.5)
    boxes = viewer.layers["low lesions"]
    assert len(boxes.data) == 4
    boxes.add_rectangles(np.array([[2, 50, 50], [2, 50, 60], [2, 58, 60], [2, 58, 50]], float))  # drawn
    assert np.isnan(boxes.features["score"].iloc[-1]) and boxes.text.values[-1] == "drawn"  # not the last row's
    orange = tuple(transform_color(DRAWN_EDGE)[0])
    np.testing.assert_allclose(boxes.edge_color[-1], orange)  # seen (napari draws a NaN score transparent)
    moved = np.array(boxes.data[1]) + [0, 3, 2]  # the 0.8 box, moved 3 px down and 2 right
    boxes.data = [moved if k == 1 else d for k, d in enumerate(boxes.data)]
    boxes.selected_data = {2}
    boxes.remove_selected()  # the 0.7 box
    for t in (0.65, 0.5, 0.3):
        widget.set_threshold(t)
        scores = boxes.features["score"].to_numpy()
        shown = sorted(f"{v:.1f}" for v in scores if np.isfinite(v))  # never the deleted 0.7; 0.6 below 0.65
        assert shown == (["0.6", "0.8", "0.9"] if t < 0.65 else ["0.8", "0.9"]), (t, shown)
        np.testing.assert_allclose(boxes.data[int(np.nanargmin(np.abs(scores - 0.8)))], moved)
        drawn = [d for d, v in zip(boxes.data, scores) if not np.isfinite(v)]
        assert len(drawn) == 1 and drawn[0][:, 0].tolist() == [2, 2, 2, 2]
        np.testing.assert_allclose(boxes.edge_color[np.isnan(scores)][0], orange)
    # the count and the export are the layer's: the deleted 0.7 left out, the moved 0.8 where the reader put it
    assert widget.status.text().endswith("3 boxes (3 lesions) with score >= 0.30 (hand edits: 1 deleted, 1 moved, "
                                         "1 drawn)"), widget.status.text()
    out = widget.export_boxes(tmp_path / "boxes.csv")
    exported = read_boxes_csv(out)
    assert sorted(np.round(exported[:, 5], 1)) == [0.6, 0.8, 0.9]
    np.testing.assert_allclose(exported[np.argmin(np.abs(exported[:, 5] - 0.8)), :5], [2, 32, 33, 42, 47])


def test_a_pasted_detection_is_a_drawn_box_and_its_original_stays(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: napari's copy and paste (Ctrl+C, Ctrl+V) of a detection gave the copy its score and
    detection key; the next threshold move took the copy for the detection moved, and the original vanished."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=6, size=64)
    add_ct(viewer, low.copy())
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    rows = np.array([[1, 10, 10, 20, 20, 0.9], [3, 30, 30, 40, 44, 0.8]], np.float32)
    widget._last["result"] = dataclasses.replace(widget._last["result"], boxes=rows)
    widget.set_threshold(0.5)
    boxes = viewer.layers["low lesions"]
    original = np.array(boxes.data[0])
    viewer.dims.set_point(0, 4)
    boxes.selected_data = {0}
    boxes._copy_data()  # napari's Ctrl+C and Ctrl+V
    boxes._paste_data()
    qtbot.waitUntil(lambda: np.isnan(boxes.features["score"].iloc[-1]), timeout=2000)
    assert boxes.nshapes == 3 and boxes.text.values[-1] == "drawn"
    for t in (0.85, 0.5):
        widget.set_threshold(t)
        scores = boxes.features["score"].to_numpy()
        kept = [np.array(d) for d, v in zip(boxes.data, scores) if v == pytest.approx(0.9)]
        assert len(kept) == 1, (t, scores)
        np.testing.assert_allclose(kept[0], original)  # the detection where the detector put it
        assert int(np.isnan(scores).sum()) == 1  # the copy, drawn
    assert "hand edits: 1 drawn" in widget.status.text(), widget.status.text()


def test_a_rerun_keeps_how_the_reader_set_the_outputs_to_look(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: every rerun (or a new strength) replaced the output layers with the dock's own look:
    a reader's colour map, opacity and gamma on the denoised image, line width and text size on the boxes, went."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=4, size=64)
    add_ct(viewer, low.copy())
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    den, boxes = viewer.layers["low denoised"], viewer.layers["low lesions"]
    den.colormap, den.opacity, den.gamma = "viridis", 0.5, 0.7
    boxes.current_edge_width, boxes.text.size, boxes.opacity = 6, 20, 0.3  # as the layer controls set them
    run_and_wait(widget, qtbot)
    den2, boxes2 = viewer.layers["low denoised"], viewer.layers["low lesions"]
    assert den2 is not den and boxes2 is not boxes  # new layers, as a rerun makes
    assert (den2.colormap.name, den2.opacity, den2.gamma) == ("viridis", 0.5, 0.7)
    assert boxes2.text.size == 20 and boxes2.opacity == pytest.approx(0.3) and boxes2.current_edge_width == 6
    # a rerun during side by side must not take Compare's hiding of the boxes for the reader's, for good
    widget.set_compare(True)
    assert not boxes2.visible  # side by side shows the images alone
    run_and_wait(widget, qtbot)
    widget.set_compare(False)
    assert viewer.layers["low lesions"].visible


def test_the_outputs_move_with_their_source(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: the source's scale changed after a run (napari's transform mode, the console) left
    the denoised image and the boxes where they were, on other slices of the moved source."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=6, size=64)
    src = add_ct(viewer, low.copy())
    widget = make_widget(viewer, qtbot)
    widget.scope_combo.setCurrentText("current slice")
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])
    run_and_wait(widget, qtbot)
    den, boxes = viewer.layers["low denoised (slice 3)"], viewer.layers["low lesions"]
    src.scale = (2 * SCALE[0], *SCALE[1:])
    src.translate = (TRANSLATE[0] + 10.0, *TRANSLATE[1:])
    np.testing.assert_allclose(den.data_to_world((0, 5, 7)), src.data_to_world((3, 5, 7)))  # still slice 3
    np.testing.assert_allclose(boxes.scale, src.scale)
    np.testing.assert_allclose(boxes.translate, src.translate)
    # every run's source is followed, not only the last one's: a study run before it moves too
    other = add_ct(viewer, low.copy() + 5.0, name="other")
    widget.image_combo.setCurrentText("other")
    run_and_wait(widget, qtbot)
    src.scale = SCALE
    np.testing.assert_allclose(den.data_to_world((0, 5, 7)), src.data_to_world((3, 5, 7)))
    np.testing.assert_allclose(boxes.scale, SCALE)
    assert other.scale[0] == SCALE[0]


def test_the_box_export_of_an_assumed_pixel_size_has_no_mm(make_napari_viewer, qtbot, model_dir, tmp_path) -> None:
    """Regression: the dock's box export of a DICOM without PixelSpacing (1 mm assumed) wrote lps_* columns
    from the made-up pixel, where `lidnet detect` writes none."""
    import csv

    viewer = make_napari_viewer()
    low, _ = phantom(n=3, size=64)
    add_ct(viewer, low, metadata={"hu": True, "spacing_assumed": True, "affine_lps": np.eye(4).tolist()},
           scale=(2.5, 1.0, 1.0))  # fmt: skip
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    widget._last["result"] = dataclasses.replace(widget._last["result"], boxes=np.array([[1, 10, 10, 20, 20, 0.9]]))
    widget.set_threshold(0.5)
    out = widget.export_boxes(tmp_path / "boxes.csv")
    header = next(csv.reader(out.open()))
    assert not any(c.endswith("_mm") for c in header), header


def test_current_slice_scope(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    low, _ = phantom(n=6)
    src = add_ct(viewer, low)
    widget = make_widget(viewer, qtbot)
    widget.scope_combo.setCurrentText("current slice")
    widget.set_threshold(0.05)
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])
    run_and_wait(widget, qtbot)
    den = viewer.layers["low denoised (slice 3)"]  # the layer list says what it holds
    assert den.data.shape == (1, 64, 64)
    np.testing.assert_allclose(den.translate, (TRANSLATE[0] + 3 * SCALE[0], *TRANSLATE[1:]))
    np.testing.assert_allclose(den.data_to_world((0, 5, 7)), src.data_to_world((3, 5, 7)))
    np.testing.assert_allclose(den.data[0], inf.denoise(tiny_denoiser(), low[3]), atol=1e-3)
    lesions = viewer.layers["low lesions"]
    assert len(lesions.data) and all(np.all(v[:, 0] == 3) for v in lesions.data)
    assert "replaces" not in widget.status.text()
    viewer.dims.set_point(0, TRANSLATE[0] + 1 * SCALE[0])  # scrolled off: the input shows through, and it says so
    assert widget.status.text().endswith("; denoised and boxes: slice 3 only; slice 1 on screen was not run")
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])
    assert widget.status.text().startswith("done") and "only" not in widget.status.text()
    widget.set_compare(True)  # elsewhere the denoised panel is blank: the status line says why
    assert "side by side: denoised on 1 of 6 slices, blank elsewhere" in widget.status.text()
    assert viewer.canvas.overlays[READOUT].text == "W 400  L 40"  # the window readout (the Flip button names F)
    widget.set_compare(False)
    viewer.dims.set_point(0, TRANSLATE[0] + 4 * SCALE[0])  # another slice: the slice-3 result goes, and it says so
    run_and_wait(widget, qtbot)
    assert "replaces the result of slice 3 (run all slices" in widget.status.text()
    widget.scope_combo.setCurrentText("all slices")  # covers slice 4: nothing lost, nothing said
    run_and_wait(widget, qtbot)
    assert "replaces" not in widget.status.text() and viewer.layers["low denoised"].data.shape == low.shape
    # in a side-on or 3D view "current slice" would run on an axial slice nobody is looking at: refused
    widget.scope_combo.setCurrentText("current slice")
    for turn, said in ((lambda: viewer.dims.roll(), "side on"), (lambda: setattr(viewer.dims, "ndisplay", 3), "3D")):
        turn()
        assert widget.run() is None and said in widget.status.text(), widget.status.text()
        viewer.dims.ndisplay, viewer.dims.order = 2, (0, 1, 2)
    run_and_wait(widget, qtbot)  # the axial view again: it runs
    viewer.dims.ndisplay = 3  # Compare in 3D would give three tiny volume renderings
    assert widget.set_compare(True) is False and "switch the view to 2D" in widget.status.text()
    assert not viewer.grid.enabled and not widget.compare_button.isChecked()


def test_a_current_slice_run_after_a_volume_run_updates_that_slice_only(make_napari_viewer, qtbot, model_dir) -> None:
    """With the whole volume done (and being reviewed), re-running one slice with the same models replaces that
    slice's denoised image and boxes in the same outputs: the other slices' boxes, the lesions layer itself and the
    navigator's review (ids, statuses, scores) stay; another model's slice run replaces the outputs as before."""
    from napari_lidnet._widgets.navigator import LesionNavigatorWidget

    viewer = make_napari_viewer()
    low, _ = phantom(n=6)
    add_ct(viewer, low)
    nav = LesionNavigatorWidget(viewer)
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    lesions, volume = viewer.layers["low lesions"], np.array(viewer.layers["low denoised"].data)
    others = [f for f in nav.findings if f.slice != 3]
    assert others and any(f.slice == 3 for f in nav.findings)
    nav.accept(others[0].id)
    review = {f.id: (f.slice, f.status, f.score) for f in nav.findings if f.slice != 3}
    before = [np.array(v) for v in lesions.data if v[0, 0] != 3]

    widget.noise_check.setChecked(True)
    den, noise = viewer.layers["low denoised"], viewer.layers["low removed noise"]
    widget.scope_combo.setCurrentText("current slice")
    viewer.dims.set_point(0, TRANSLATE[0] + 3 * SCALE[0])
    run_and_wait(widget, qtbot)
    assert viewer.layers["low lesions"] is lesions  # the same layer: the navigator's review carries on
    assert viewer.layers["low denoised"] is den and viewer.layers["low removed noise"] is noise  # refilled
    assert den.data.shape == low.shape
    np.testing.assert_allclose(np.asarray(noise.data[3]), removed_noise(low[3], den.data[3])[0], atol=1e-4)
    np.testing.assert_allclose(den.data, volume, atol=1e-4)  # same model: slice 3 as before, the others kept
    after = [np.array(v) for v in lesions.data if v[0, 0] != 3]
    assert len(after) == len(before) and all(np.allclose(a, b) for a, b in zip(after, before))
    assert {f.id: (f.slice, f.status, f.score) for f in nav.findings if f.slice != 3} == review
    assert "added" not in {f.status for f in nav.findings}

    src = viewer.layers["low"]
    src.translate = (TRANSLATE[0], TRANSLATE[1] + 50.0, TRANSLATE[2])  # the reader moved the image meanwhile
    run_and_wait(widget, qtbot)
    assert viewer.layers["low denoised"] is den  # refilled, and placed where the source lies now
    np.testing.assert_allclose(den.translate, src.translate)
    np.testing.assert_allclose(noise.translate, src.translate)

    widget.set_remove_sd(5.0)  # another strength: the slice run stands alone, as before, and says so
    run_and_wait(widget, qtbot)
    assert viewer.layers["low denoised (slice 3)"].data.shape == (1, 64, 64)
    assert "replaces the all-slices result on screen" in widget.status.text()


def test_routine_news_stays_in_the_status_line_and_errors_also_pop_up(make_napari_viewer, qtbot, model_dir,
                                                                       tmp_path) -> None:  # fmt: skip
    """Regression: every success message also popped a napari toast, which napari dismisses only while its window
    is active: one stayed over the window/level readout. Routine news is the status line's; an error still pops up."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=2)[0])
    widget = make_widget(viewer, qtbot)
    before = len(notification_manager.records)
    run_and_wait(widget, qtbot)
    assert widget.export_boxes(tmp_path / "boxes.csv") is not None and widget.status.text().startswith("wrote ")
    assert not [r for r in notification_manager.records[before:] if "LIDnet" in str(r.message)]
    assert widget.export_boxes(tmp_path / "boxes.csv") is None  # it exists: refused, in red and in a pop-up
    popped = [str(r.message) for r in notification_manager.records[before:] if "LIDnet" in str(r.message)]
    assert len(popped) == 1 and "box export failed" in popped[0] and widget.status.styleSheet()


def test_2d_image(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    low, _ = phantom(n=1)
    add_ct(viewer, low[0])
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    den = viewer.layers["low denoised"]
    assert den.data.shape == (64, 64)
    np.testing.assert_allclose(den.translate, TRANSLATE[1:])
    lesions = viewer.layers["low lesions"]
    assert lesions.ndim == 2 and len(lesions.data) and lesions.data[0].shape == (4, 2)


def test_cancel_mid_volume_adds_nothing(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    low, _ = phantom(n=40, size=96)
    add_ct(viewer, low)
    widget = make_widget(viewer, qtbot)
    widget.batch_size = 1
    done: list[int] = []

    def on_progress(rec) -> None:
        done.append(rec.done)
        if rec.stage == "running" and rec.done >= 2:
            widget.cancel()

    from napari.utils.notifications import notification_manager

    before = len(notification_manager.records)
    with qtbot.waitSignal(widget.job_finished, timeout=30000):
        widget.run().yielded.connect(on_progress)
    assert max(done) < 80  # stopped long before the 2 x 40 slices
    assert names(viewer) == ["low"]
    assert "cancelled" in widget.status.text()  # said in the status line, not in a pop-up over the image
    assert not any("cancelled" in str(r.message) for r in notification_manager.records[before:])
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert widget.progress.value() == 0 and "slices" not in widget.progress.format()  # no run's share left standing


def test_errors_are_messages(make_napari_viewer, qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "none"
    monkeypatch.setenv(MODEL_DIR_ENV, str(empty))
    monkeypatch.setattr("napari_lidnet.models.registry.shipped_model_dir", lambda: empty)
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot)
    assert "no LIDnet weights found" in widget.status.text()
    assert widget.run() is None and "no CT image layer" in widget.status.text()
    add_ct(viewer, phantom(n=2)[0])
    assert widget.run() is None and "choose a denoiser" in widget.status.text()

    bad_card = tmp_path / "junk.json"
    bad_card.write_text("{not json")
    assert not widget.add_model_file(bad_card, "denoiser") and "not a readable JSON" in widget.status.text()
    save_weights(tiny_detector(), tmp_path / "det")
    assert (
        not widget.add_model_file(tmp_path / "det.json", "denoiser") and "expected a denoiser" in widget.status.text()
    )

    save_weights(tiny_denoiser(), tmp_path / "broken")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    assert widget.add_model_file(tmp_path / "broken.safetensors", "denoiser")
    run_and_wait(widget, qtbot)
    assert "sha256" in widget.status.text() and names(viewer) == ["low"]
    assert widget.export_dicom(tmp_path / "out") == [] and "run the denoiser first" in widget.status.text()
    assert widget.export_boxes(tmp_path / "b.csv") is None and not (tmp_path / "b.csv").exists()


def test_refresh_models_picks_up_new_user_models(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot)
    widget.denoiser_combo.setCurrentText("(none)")
    save_weights(tiny_denoiser(seed=1), model_dir / "finetuned")
    widget.refresh_models()
    items = [widget.denoiser_combo.itemText(i) for i in range(widget.denoiser_combo.count())]
    assert items == ["(none)", "default (shipped)", "finetuned (user)", "tiny (user)", "Browse..."]
    assert widget.denoiser_combo.currentText() == "(none)"  # the user's choice is kept


def test_compare_side_by_side_with_one_window_and_flip(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Compare: input left, denoised right (napari grid, one row), the only layers shown, one window/level that
    follows a change on either; Flip shows one then the other in place; leaving restores the view."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=3)
    src = add_ct(viewer, low, metadata={"hu": True})
    other = viewer.add_image(np.zeros((3, 64, 64)), name="other", scale=SCALE, translate=TRANSLATE)
    widget = make_widget(viewer, qtbot)
    assert not widget.set_compare(True) and "run the denoiser first" in widget.status.text()
    widget.detector_combo.setCurrentText("(none)")
    widget.image_combo.setCurrentText("low")
    run_and_wait(widget, qtbot)
    den = viewer.layers["low denoised"]
    den.contrast_limits = (-50, 50)
    assert tuple(src.contrast_limits) == (-50, 50)  # CT layers share one window already

    widget.compare_button.click()
    assert widget.compare_button.isChecked() and viewer.grid.enabled and tuple(viewer.grid.shape) == (1, 2)
    layers = list(viewer.layers)
    assert viewer.grid.position(layers.index(src), layers) == (0, 0)  # input on the left
    assert viewer.grid.position(layers.index(den), layers) == (0, 1)  # denoised on the right
    assert [ly.name for ly in viewer.layers if ly.visible] == ["low", "low denoised"]
    assert src.name_overlay.visible and den.name_overlay.visible and not other.name_overlay.visible  # which is which
    assert viewer.canvas.overlays[READOUT].text == "W 100  L 0"
    src.contrast_limits = (-300, 500)  # a window set on one side is the window of both
    assert tuple(den.contrast_limits) == (-300, 500)

    drawn = viewer.add_shapes(ndim=3, name="drawn during the comparison", scale=SCALE, translate=TRANSLATE)
    # napari's grid would give it a cell of its own (the left one: calipers for the right image drawn over the
    # left): side by side ends, saying why, and the view is as before the comparison
    assert not viewer.grid.enabled and not widget.compare_button.isChecked()
    assert "side by side ended: 'drawn during the comparison' was added" in widget.status.text()
    assert other.visible and drawn.visible
    shown = widget.flip()  # key F: one image at a time, in place
    assert not viewer.grid.enabled and not widget.compare_button.isChecked()
    assert [ly.name for ly in viewer.layers if ly.visible] == [shown.name, drawn.name]
    second = widget.flip()
    assert second is not shown and [ly.name for ly in viewer.layers if ly.visible] == [second.name, drawn.name]
    assert {shown.name, second.name} == {"low", "low denoised"}

    widget.set_compare(True)
    widget.set_compare(False)  # back to the view before comparing
    assert not viewer.grid.enabled and other.visible and src.visible and den.visible
    assert drawn.visible  # added during the comparison (hidden by the second Compare): back as it was made
    assert not src.name_overlay.visible and not den.name_overlay.visible
    assert viewer.canvas.overlays[READOUT].text == "W 800  L 100"  # the window readout alone


def test_a_status_line_is_red_for_an_error_only(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """An error turns the status line red; the next run's summary is in the theme's colour again (it stayed red)."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=2)[0], metadata={"hu": True})
    widget = make_widget(viewer, qtbot)
    widget.scope_combo.setCurrentText("current slice")
    viewer.dims.ndisplay = 3
    assert widget.run() is None and widget.status.styleSheet()  # refused in 3D: said in red
    viewer.dims.ndisplay = 2
    run_and_wait(widget, qtbot)
    assert widget.status.text().startswith("done") and widget.status.styleSheet() == ""


def test_compare_shows_the_study_picked_in_the_dock(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Two studies denoised one after the other: Compare and Flip show the one picked in the dock's image list
    (or whose denoised layer is picked), not whichever ran last."""
    viewer = make_napari_viewer()
    first = add_ct(viewer, phantom(n=2, seed=1)[0], name="first", metadata={"hu": True})
    second = add_ct(viewer, phantom(n=2, seed=2)[0], name="second", metadata={"hu": True})
    widget = make_widget(viewer, qtbot)
    widget.detector_combo.setCurrentText("(none)")
    for name in ("first", "second"):
        widget.image_combo.setCurrentText(name)
        run_and_wait(widget, qtbot)
    widget.image_combo.setCurrentText("first")
    assert widget.set_compare(True)
    assert [ly.name for ly in viewer.layers if ly.visible] == ["first", "first denoised"]
    widget.set_compare(False)
    widget.image_combo.setCurrentText("second denoised")
    assert widget.flip() in (second, viewer.layers["second denoised"])
    assert {ly.name for ly in viewer.layers if ly.visible} <= {"second", "second denoised"}
    widget.image_combo.setCurrentText("first")
    assert widget.flip() in (first, viewer.layers["first denoised"])  # the pair flipped is the picked study's
    assert first.visible != viewer.layers["first denoised"].visible


def test_compare_shows_a_simulated_low_doses_reference_as_a_third_panel(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: Compare showed low dose and denoised only; with the normal dose the low dose was
    simulated from open, a reader checks a box against it by leaving Compare. It is a third panel, on one window;
    Flip still flips the pair; leaving restores the view."""
    viewer = make_napari_viewer()
    low, full = phantom(n=3)
    ref = add_ct(viewer, full, name="full", metadata={"hu": True})
    src = add_ct(viewer, low, metadata={"hu": True, "normal_dose": "full"})
    widget = make_widget(viewer, qtbot)
    widget.detector_combo.setCurrentText("(none)")
    widget.image_combo.setCurrentText("low")
    run_and_wait(widget, qtbot)
    den = viewer.layers["low denoised"]
    assert widget.set_compare(True)
    layers = list(viewer.layers)
    assert tuple(viewer.grid.shape) == (1, 3) and [ly.name for ly in layers if ly.visible] == ["full", "low",
                                                                                                "low denoised"]
    assert {viewer.grid.position(layers.index(ly), layers) for ly in (ref, src, den)} == {(0, 0), (0, 1), (0, 2)}
    assert ref.name_overlay.visible
    den.contrast_limits = (-20, 120)  # one window on the three
    assert tuple(ref.contrast_limits) == tuple(src.contrast_limits) == (-20, 120)
    shown = widget.flip()
    assert shown in (src, den) and not ref.visible
    widget.set_compare(False)
    assert not viewer.grid.enabled and ref.visible and not ref.name_overlay.visible


def test_flip_from_side_by_side_keeps_the_view_and_draws_the_boxes(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: F pressed in side by side (zoomed on a finding) went back to the whole image and kept
    the boxes hidden, though the navigator had said F shows them. The same spot at the same zoom, boxes drawn."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=3)
    add_ct(viewer, low, metadata={"hu": True})
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.0)
    run_and_wait(widget, qtbot)
    boxes = viewer.layers["low lesions"]
    assert boxes.visible and len(boxes.data)
    widget.set_compare(True)
    assert viewer.grid.enabled and not boxes.visible  # side by side: the images alone
    viewer.camera.zoom *= 4
    viewer.camera.center = (0.0, 5.0, 12.0)
    where = (tuple(viewer.camera.center), viewer.camera.zoom)
    shown = widget.flip()
    assert not viewer.grid.enabled and shown.visible and boxes.visible
    assert tuple(viewer.camera.center)[-2:] == pytest.approx(where[0][-2:])
    assert viewer.camera.zoom == pytest.approx(where[1])
    boxes.visible = False  # the reader hides them while flipping: the next F leaves them hidden
    widget.flip()
    assert not boxes.visible


def test_a_model_pair_is_chosen_by_its_name(make_napari_viewer, qtbot, model_dir: Path) -> None:
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot)
    save_weights(tiny_denoiser(seed=2), model_dir / "site-b_denoiser")
    save_weights(tiny_detector(seed=2), model_dir / "site-b_detector")
    widget.refresh_models()
    assert widget.select_model("site-b")
    assert Path(widget.denoiser_combo.currentData()).name == "site-b_denoiser"
    assert Path(widget.detector_combo.currentData()).name == "site-b_detector"
    # picking one network of a pair brings its partner
    widget.denoiser_combo.setCurrentText("tiny (user)")
    widget.denoiser_combo.activated.emit(widget.denoiser_combo.currentIndex())
    assert widget.detector_combo.currentText() == "tiny (user)"
    assert not widget.select_model("nowhere")


def test_threshold_follows_the_detectors_calibration(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Choosing a detector moves the score threshold to the calibrated one on its card (tooltip says the rate);
    a detector without calibration gets the fallback; the user's own setting stays until the detector changes."""
    sets = {"real": {"fp_per_image_by_type": {"full dose": 0.02, "denoised": 0.27}}}  # as the shipped card's
    save_weights(tiny_detector(seed=2), model_dir / "calibrated_detector",
                 {"calibration": {"threshold": 0.62, "fp_per_image": 0.5, "sets": sets}})  # fmt: skip
    viewer = make_napari_viewer()
    widget = make_widget(viewer, qtbot)
    assert widget.threshold == pytest.approx(FALLBACK_THRESHOLD)  # "tiny" has no calibration
    assert "no calibration" in widget.threshold_slider.toolTip()
    widget.detector_combo.setCurrentText("calibrated (user)")
    assert widget.threshold == pytest.approx(0.62)
    assert "0.5 false boxes per lesion-free slice" in widget.threshold_slider.toolTip()
    assert "lidnet calibrate" in widget.threshold_slider.toolTip()  # simulated calibration: says how to do better
    # a denoised real chest can draw 4x the boxes of the image as given: the rates by image
    assert "real: full dose 0.02, denoised 0.27" in widget.threshold_slider.toolTip()
    save_weights(tiny_detector(seed=3), model_dir / "site_detector", {"calibration": {
        "threshold": 0.71, "fp_per_image": 0.5, "data": {"input": "/scans/normal", "slices": 40}}})  # fmt: skip
    widget.refresh_models()
    widget.detector_combo.setCurrentText("site (user)")
    assert widget.threshold == pytest.approx(0.71)
    assert "on 40 slices of your scans (/scans/normal)" in widget.threshold_slider.toolTip()
    save_weights(tiny_detector(seed=4), model_dir / "lab_detector", {"calibration": {
        "threshold": 0.55, "fp_per_image": 0.5, "inherited_from": "default"}})  # fmt: skip
    widget.refresh_models()
    widget.detector_combo.setCurrentText("lab (user)")  # fine-tuned from the shipped detector: its threshold
    assert widget.threshold == pytest.approx(0.55)
    assert "for the weights this detector was trained from (default)" in widget.threshold_slider.toolTip()
    save_weights(tiny_detector(seed=5), model_dir / "fine_detector",
                 {"calibration": {"threshold": 0.49575, "fp_per_image": 0.5}})  # fmt: skip
    widget.refresh_models()
    widget.detector_combo.setCurrentText("fine (user)")  # the calibrated value itself, as `lidnet detect` applies it
    assert widget.threshold == 0.49575 and widget.threshold_label.text() == "0.496"  # not the slider's 0.50
    assert "calibrated default 0.496" in widget.threshold_slider.toolTip()
    widget.threshold_slider.setValue(52)  # dragged: the slider's steps
    assert widget.threshold == pytest.approx(0.52) and widget.threshold_label.text() == "0.52"
    widget.detector_combo.setCurrentText("calibrated (user)")
    widget.set_threshold(0.4)
    widget.refresh_models()  # same detector kept: the user's threshold too
    assert widget.threshold == pytest.approx(0.4)
    widget.detector_combo.setCurrentText("tiny (user)")
    assert widget.threshold == pytest.approx(FALLBACK_THRESHOLD)


def test_noise_sd_to_remove_keeps_the_rest(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """The strength box: 'all noise' by default; set to an SD, the denoised layer is the blind output with the
    rest of the noise put back (strength.keep_noise), and its metadata says how much was removed."""
    from napari_lidnet.strength import keep_noise, leave_noise

    viewer = make_napari_viewer()
    low, _ = phantom(n=2)
    add_ct(viewer, low)
    widget = make_widget(viewer, qtbot)
    assert widget.remove_sd is None and widget.strength_spin.text() == "all noise"
    run_and_wait(widget, qtbot)
    blind = np.array(viewer.layers["low denoised"].data)
    assert viewer.layers["low denoised"].metadata["lidnet"]["remove_sd"] is None
    sd = round(float(np.std((low - blind)[:, 16:48, 16:48])) / 2, 1)  # half the removed SD: 3/4 of its variance back
    widget.set_remove_sd(sd)
    run_and_wait(widget, qtbot)
    told = viewer.layers["low denoised"]
    assert told.metadata["lidnet"]["remove_sd"] == sd
    body = np.s_[:, 16:48, 16:48]  # (air is held at -1024 after the blend: compared in the body)
    np.testing.assert_allclose(told.data[body], keep_noise(low, blind, sd)[body], atol=1e-3)
    back = (told.data - blind)[:, 16:48, 16:48] / (low - blind)[:, 16:48, 16:48]
    # the weight 1 - sd^2 / total SD^2: at least 3/4 of the residual comes back, more as the input holds more noise
    # than the tiny network's residual (strength.total_noise_sd)
    assert 0.75 <= np.median(back) < 1.0
    # "leave": the SD of noise to leave in the output (a fully denoised chest looks waxy)
    widget.set_leave_sd(12.0)
    assert widget.remove_sd is None and widget.leave_sd == 12.0 and widget.strength_mode.currentText() == "leave"
    run_and_wait(widget, qtbot)
    left = viewer.layers["low denoised"]
    assert left.metadata["lidnet"]["leave_sd"] == 12.0 and left.metadata["lidnet"]["remove_sd"] is None
    np.testing.assert_allclose(left.data[body], leave_noise(low, blind, 12.0)[body], atol=1e-3)
    assert not np.allclose(left.data[body], told.data[body], atol=1e-2)
    widget.set_leave_sd(None)
    assert widget.leave_sd is None and widget.strength_spin.text() == "none (all removed)"
    widget.set_remove_sd(None)
    assert widget.remove_sd is None and widget.strength_mode.currentText() == "remove"
    assert "noise SD in flat tissue" in widget.status.text()

    _, flat = phantom(n=2)  # no noise at all, as a lossy codec leaves soft tissue: nothing to report as 0.0 -> 0.0
    add_ct(viewer, flat, name="flat")
    widget.image_combo.setCurrentText("flat")
    run_and_wait(widget, qtbot)
    assert "no measurable noise in flat tissue (SD 0.0 HU" in widget.status.text()
    assert "noise SD in flat tissue" not in widget.status.text()

    air = np.random.default_rng(1).normal(-1000.0, 20.0, (2, 64, 64)).astype(np.float32)  # no soft tissue at all
    add_ct(viewer, air, name="air")
    widget.image_combo.setCurrentText("air")
    run_and_wait(widget, qtbot)
    assert "no flat soft tissue found to measure the noise in" in widget.status.text()
    assert "nan" not in widget.status.text()


def test_flat_noise_sd_reads_the_noise_of_input_and_output() -> None:
    """The status line's no-reference noise SD: the phantom's 40 HU of noise in, nothing in the noise-free image."""
    from napari_lidnet.metrics.noreference import flat_noise_sd

    low, ref = phantom(n=3, size=128)
    before, after = flat_noise_sd(low, [0, 2], ref[[0, 2]])
    assert before == pytest.approx(40.0, rel=0.1) and after < 1.0
    from napari_lidnet.metrics.noreference import noise_sd

    low, ref = phantom(n=9, size=96)  # a volume: the same 4 evenly spaced slices measured, no copy of the rest
    picked = [0, 1, 3, 4, 5, 6, 8]
    assert flat_noise_sd(low, picked, ref[picked]) == (noise_sd(low[picked], max_slices=4),
                                                       noise_sd(ref[picked], max_slices=4))  # fmt: skip


def test_removed_noise_overlay_leaves_the_ct_visible(make_napari_viewer) -> None:
    """A picture: where the denoiser removed nothing the overlay renders as if absent; where it removed noise the
    pixels are coloured (blue for lowered HU, red for raised), so the CT beneath is never hidden wholesale."""
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    ct = np.full((64, 64), 50.0, np.float32)
    viewer.add_image(ct, contrast_limits=(-100, 200), colormap="gray")
    viewer.reset_view()
    bare = viewer.screenshot(canvas_only=True, flash=False).astype(int)
    noise = np.zeros_like(ct)  # input - denoised: left half nothing removed, then lowered, then raised HU
    noise[:, 32:48], noise[:, 48:] = 40.0, -40.0
    noise += np.random.default_rng(0).normal(0, 1e-3, noise.shape).astype(np.float32) * (noise != 0)
    viewer.add_image(noise, **removed_noise_kwargs(noise))
    shot = viewer.screenshot(canvas_only=True, flash=False).astype(int)

    rows, cols = np.nonzero(bare[..., :3].sum(-1) > 0)  # the grey square of the CT
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    quarter, pad = (c1 - c0) // 4, max(2, (c1 - c0) // 32)
    band = [np.s_[r0 + pad : r1 - pad, c0 + k * quarter + pad : c0 + (k + 1) * quarter - pad, :3] for k in range(4)]
    assert np.abs(shot[band[0]] - bare[band[0]]).max() <= 1  # transparent where nothing was removed
    assert np.abs(shot[band[1]] - bare[band[1]]).max() <= 1
    lowered, raised = shot[band[2]].reshape(-1, 3).mean(0), shot[band[3]].reshape(-1, 3).mean(0)
    assert lowered[2] > lowered[0] + 25  # the denoiser lowered HU: blue
    assert raised[0] > raised[2] + 25  # it raised them: red


def test_removed_noise_shows_every_body_part_and_no_air() -> None:
    """Two legs on a slice (two separate regions): what was removed shows on both, and nothing in the air."""
    yy, xx = np.mgrid[:64, :96]
    legs = ((yy - 32) ** 2 + (xx - 24) ** 2 < 18**2) | ((yy - 32) ** 2 + (xx - 72) ** 2 < 18**2)
    original = np.where(legs, 40.0, -1000.0).astype(np.float32)
    removed = np.random.default_rng(0).normal(0, 10, original.shape).astype(np.float32)
    noise, body = removed_noise(original + removed, original)
    np.testing.assert_array_equal(body, legs)
    assert np.all(noise[~legs] == 0) and np.abs(noise[legs]).mean() > 5
    assert np.abs(noise[:, :48][legs[:, :48]]).mean() > 5 and np.abs(noise[:, 48:][legs[:, 48:]]).mean() > 5
    stack = np.stack([original + removed, original - removed, original])  # a volume: slice by slice the same
    noise3, body3 = removed_noise(stack, np.stack([original] * 3))
    for k in range(3):
        n_k, b_k = removed_noise(stack[k], original)
        np.testing.assert_array_equal(noise3[k], n_k)
        np.testing.assert_array_equal(body3[k], b_k)
    limits = removed_noise_kwargs(noise3, body3)["contrast_limits"]
    assert limits[1] == pytest.approx(3.0 * float(np.std(noise3[body3])), rel=1e-5)  # 3 SDs of the body's


def test_no_dock_offers_the_removed_noise_overlay_as_an_image(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Regression: ROI compare ticked the overlay among the images to compare (RMSE against the reference
    of a noise map) and Fine-tune offered it as a normal-dose image to train on; no dock lists it now."""
    from napari_lidnet._widgets.finetune import FineTuneWidget
    from napari_lidnet._widgets.load_ct import LoadCTWidget
    from napari_lidnet._widgets.navigator import LesionNavigatorWidget
    from napari_lidnet._widgets.roi_compare import ROICompareWidget

    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=3)[0])
    widget = make_widget(viewer, qtbot)
    widget.noise_check.setChecked(True)
    run_and_wait(widget, qtbot)
    assert "low removed noise" in names(viewer)
    roi, tune = ROICompareWidget(viewer), FineTuneWidget(viewer)
    nav, load = LesionNavigatorWidget(viewer), LoadCTWidget(viewer)
    for w in (roi, tune, nav, load):
        qtbot.addWidget(w)
    listed = {
        "roi images": [roi.image_list.item(i).text() for i in range(roi.image_list.count())],
        "roi reference": [roi.reference_combo.itemText(i) for i in range(roi.reference_combo.count())],
        "fine-tune": [tune.data_box.image_list.item(i).text() for i in range(tune.data_box.image_list.count())],
        "navigator": [nav.image_combo.itemText(i) for i in range(nav.image_combo.count())],
        "load ct": [load.sim_layer_combo.itemText(i) for i in range(load.sim_layer_combo.count())],
        "denoise": [widget.image_combo.itemText(i) for i in range(widget.image_combo.count())],
    }
    for dock, items in listed.items():
        assert "low" in items and "low removed noise" not in items, (dock, items)


def test_a_threshold_move_is_read_once_by_the_navigator(make_napari_viewer, qtbot, model_dir, monkeypatch) -> None:
    """The lesions layer lists its boxes highest score first: a raised threshold cuts its tail, so napari's cut
    feature table already holds the right scores and the navigator reads the boxes once (twice before: the new
    boxes, then their scores); what it reads is what is shown."""
    from napari_lidnet._widgets.navigator import LesionNavigatorWidget

    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=6)[0])
    nav = LesionNavigatorWidget(viewer)
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    scores = np.sort(widget.shown_boxes[:, 5])
    assert len(scores) > 10
    reads, read = [], nav._read_findings
    monkeypatch.setattr(nav, "_read_findings", lambda *a: reads.append(1) or read(*a))
    widget.set_threshold(float(np.round(scores[len(scores) // 2] + 0.005, 2)))
    assert 0 < len(widget.shown_boxes) < len(scores)
    np.testing.assert_allclose(sorted(f.score for f in nav.findings), np.sort(widget.shown_boxes[:, 5]), rtol=1e-6)
    assert len(reads) == 1
    widget.set_threshold(0.05)  # lowered: new boxes, then their scores; one read too, not two
    np.testing.assert_allclose(sorted(f.score for f in nav.findings), scores, rtol=1e-6)
    assert len(reads) == 2


class _ReadLog:
    """A volume that records which slices were read from it."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.read, self.shape, self.ndim, self.dtype = data, set(), data.shape, data.ndim, data.dtype

    def __getitem__(self, key):
        z = key if isinstance(key, int) else key.start
        self.read.update(range(z, z + 1) if isinstance(key, int) else range(key.start, key.stop))
        return self.data[key]


def test_a_volume_overlay_is_computed_as_its_slices_are_shown() -> None:
    """A study's removed-noise overlay reads at most NOISE_LIMIT_SLICES slices (its limits) when made; a slice is
    computed when shown, and equals the whole map's."""
    from napari_lidnet.layer_data import NOISE_LIMIT_SLICES, removed_noise_layer

    rng = np.random.default_rng(1)
    denoised = np.where(rng.random((40, 32, 32)) < 0.9, 40.0, -1000.0).astype(np.float32)
    original = _ReadLog((denoised + rng.normal(0, 20, denoised.shape)).astype(np.float32))
    noise, styling = removed_noise_layer(original, denoised)
    assert len(original.read) <= NOISE_LIMIT_SLICES and noise.shape == denoised.shape
    sample = sorted(original.read)
    whole, body = removed_noise(original.data, denoised)
    np.testing.assert_array_equal(np.asarray(noise[21]), whole[21])
    assert 21 in original.read and len(original.read) <= NOISE_LIMIT_SLICES + 1
    lim = 3.0 * float(np.std(whole[sample][body[sample]]))  # 3 SDs of the sampled slices' body
    assert styling["contrast_limits"][1] == pytest.approx(lim, rel=1e-5)
    np.testing.assert_array_equal(np.asarray(noise), whole)


def test_the_comparison_fits_the_pair_keeps_one_window_and_gives_the_3d_view_back(make_napari_viewer) -> None:
    """Side by side fits the pair, not layers it hides (a 512 mm scout shrank the pair to a corner); the pair keeps
    one window while compared even with Load CT's "link" off, and not after; leaving restores 3D camera angles."""
    from napari_lidnet._widgets._viewer import camera
    from napari_lidnet._widgets.compare import CompareView

    viewer = make_napari_viewer()
    scout = viewer.add_image(np.zeros((512, 512), np.float32), name="scout")
    a = viewer.add_image(np.full((64, 64), 100.0, np.float32), name="ct", scale=(0.7, 0.7), metadata={"hu": True})
    b = viewer.add_image(np.full((64, 64), 90.0, np.float32), name="ct denoised", scale=(0.7, 0.7),
                         metadata={"hu": True})  # fmt: skip
    view = CompareView(viewer)
    view.show(a, b)
    with_scout = camera(viewer).zoom
    view.close()
    viewer.layers.remove(scout)
    view.show(a, b)
    assert camera(viewer).zoom == pytest.approx(with_scout)
    view.room.linked = False
    view.room.set_window(a, level=-600, width=1500)
    assert tuple(b.contrast_limits) == pytest.approx((-1350, 150))
    view.close()
    a.contrast_limits = (0, 200)
    assert tuple(b.contrast_limits) == pytest.approx((-1350, 150))  # the comparison is over: no link left
    viewer.layers.remove(b)
    viewer.layers.remove(a)
    vol = np.zeros((8, 32, 32), np.float32)
    a, b = (viewer.add_image(vol, name=n, metadata={"hu": True}) for n in ("v", "v denoised"))
    viewer.dims.ndisplay = 3
    camera(viewer).angles = (10.0, 35.0, 60.0)
    view.show(a, b)
    view.close()
    assert tuple(camera(viewer).angles) == pytest.approx((10.0, 35.0, 60.0))


def test_an_output_added_while_side_by_side_ends_it(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """The widget's own outputs count as added layers too: "show removed noise" ticked while side by side ends it
    at once, saying why (it stayed on with the noise layer wrapped into the input's cell, and ended later, at an
    unrelated layer change, naming the noise layer)."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=3)
    add_ct(viewer, low, metadata={"hu": True})
    widget = make_widget(viewer, qtbot)
    widget.detector_combo.setCurrentText("(none)")
    widget.image_combo.setCurrentText("low")
    run_and_wait(widget, qtbot)
    widget.compare_button.click()
    assert viewer.grid.enabled
    widget.noise_check.setChecked(True)
    assert not viewer.grid.enabled and not widget.compare_button.isChecked()
    assert "side by side ended: 'low removed noise' was added" in widget.status.text()


def test_a_lazy_int16_study_is_read_and_checked_by_the_worker(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Regression: Run converted the layer to float32 and checked it on the viewer's thread (an int16
    study copied whole there, a lazy one read whole). Now run() reads no pixel; the worker does, and the result is
    the float32 run's."""
    import threading

    low = np.rint(phantom(n=4)[0]).astype(np.int16)
    reads: list[bool] = []

    class Lazy:  # an array-like layer (as zarr or a lazy reader gives): records on which thread it is read
        shape, dtype, ndim, size = low.shape, low.dtype, low.ndim, low.size

        def _read(self) -> None:
            reads.append(threading.current_thread() is threading.main_thread())

        def __getitem__(self, key):
            self._read()
            return low[key]

        def __array__(self, dtype=None, copy=None):
            self._read()
            return low.astype(dtype or low.dtype)

    viewer = make_napari_viewer()
    add_ct(viewer, Lazy(), name="lazy")
    widget = make_widget(viewer, qtbot)
    reads.clear()
    with qtbot.waitSignal(widget.job_finished, timeout=30000):
        assert widget.run() is not None
        assert not any(reads), "run() read pixels on the viewer's thread"
    assert reads and not reads[0], "the worker read nothing"
    np.testing.assert_allclose(
        viewer.layers["lazy denoised"].data, inf.denoise(tiny_denoiser(), low.astype(np.float32)), atol=1e-3
    )
    viewer.add_image(low, name="int16")  # a plain int16 layer gives the same
    widget.image_combo.setCurrentText("int16")
    run_and_wait(widget, qtbot)
    np.testing.assert_allclose(viewer.layers["int16 denoised"].data, viewer.layers["lazy denoised"].data, atol=1e-4)


def test_a_dragged_threshold_refilters_the_boxes_once(make_napari_viewer, qtbot, model_dir: Path, monkeypatch) -> None:
    """A drag over several slider steps while the viewer is busy (the steps queue up) refilters the boxes once,
    when the event loop runs, at the last step; the label follows every step."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=6)[0])
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    shows, show = [], widget._show_boxes
    monkeypatch.setattr(widget, "_show_boxes", lambda **kw: shows.append(1) or show(**kw))
    for value in (10, 15, 20, 25, 30):  # five steps of a drag, delivered before the loop runs again
        widget.threshold_slider.setValue(value)
    assert widget.threshold_label.text() == "0.30" and shows == []
    qtbot.waitUntil(lambda: len(shows) == 1, timeout=2000)
    lesions = viewer.layers["low lesions"]
    assert len(lesions.data) == len(widget.shown_boxes) and (lesions.features["score"] >= 0.30).all()
    qtbot.wait(50)
    assert len(shows) == 1


def test_an_adapted_model_its_own_check_found_worse_says_so_in_the_pickers(make_napari_viewer, qtbot, model_dir,
                                                                          tmp_path, capsys) -> None:  # fmt: skip
    """`lidnet adapt` on real scans mostly made the images worse (benchmarks/results/adapt_real.md), and its own
    no-reference estimates (on its card) said so; the model was then listed like any other. The Denoise and
    Fine-tune pickers now mark it, and `lidnet denoise --model` warns; a model its check found better is unmarked."""
    from napari_lidnet._widgets._roles import WORSE_MARK
    from napari_lidnet._widgets.finetune import FineTuneWidget
    from napari_lidnet.cli import main

    def estimates(noise: float, edges: float) -> dict:
        return {"noise_sd_hu": noise, "edge_sharpness_hu_per_mm": edges}

    for name, adapted in (("worse", estimates(7.6, 57.0)), ("better", estimates(2.5, 80.0))):
        card = {"metrics": {"noreference": {"input": estimates(14.0, 60.0), "start": estimates(3.0, 76.0),
                                            "adapted": adapted}},
                "training": {"selfsup": {"from_model": "default"}}}  # fmt: skip
        save_weights(tiny_denoiser(), model_dir / f"{name}_denoiser", card)
    viewer = make_napari_viewer()
    for combo in (make_widget(viewer, qtbot).denoiser_combo, FineTuneWidget(viewer).start_denoiser_combo):
        labels = [combo.itemText(i) for i in range(combo.count())]
        assert f"worse (user){WORSE_MARK}" in labels and "better (user)" in labels, labels
    np.save(tmp_path / "ct.npy", phantom(n=2)[0])
    assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / "d.npy"), "--model", "worse_denoiser",
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "worse_denoiser: its own no-reference check found it worse than the model it was adapted from (default)" \
        in capsys.readouterr().err


def test_outputs_go_above_their_source_and_below_the_readers_calipers(make_napari_viewer, qtbot, model_dir) -> None:
    """Regression: calipers measured before a run disappeared under the denoised image, added on top."""
    viewer = make_napari_viewer()
    low, _ = phantom(n=3)
    add_ct(viewer, low, metadata={"hu": True})
    calipers = viewer.add_shapes([np.array([[1, 10, 10], [1, 10, 40]], float)], shape_type="line", name="calipers",
                                 scale=SCALE, translate=TRANSLATE)  # fmt: skip
    viewer.add_image(np.zeros_like(low), name="prior scan", scale=SCALE, translate=TRANSLATE)  # another scan
    viewer.layers.move(viewer.layers.index(calipers), len(viewer.layers))  # the reader's calipers on top
    widget = make_widget(viewer, qtbot)
    widget.image_combo.setCurrentText("low")
    widget.set_threshold(0.05)
    widget.noise_check.setChecked(True)
    run_and_wait(widget, qtbot)
    names = [ly.name for ly in viewer.layers]  # review: just above its source, it went under the prior scan
    assert names.index("prior scan") < names.index("low denoised") < names.index("calipers"), names
    assert names.index("low removed noise") < names.index("calipers") and calipers.visible, names
