"""The docks when a reader does things in another order: closing a dock while it works, renaming and
deleting layers under it, running on one image between two runs on another. Headless viewer, real workers."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
from napari.utils.key_bindings import coerce_keybinding
from test_denoise_widget import add_ct, make_widget, model_dir, phantom, run_and_wait  # noqa: F401 (fixture)
from test_finetune_widget import add_case

from napari_lidnet import PLUGIN
from napari_lidnet._widgets.compare import FLIP_KEY
from napari_lidnet._widgets.finetune import NO_BOXES_ITEM


def _layer_names(viewer) -> list[str]:
    return [ly.name for ly in viewer.layers]


def _detected_then_navigator(viewer, qtbot, n: int) -> tuple:
    """An n-slice low dose run through Denoise (threshold 0.05), then the Lesion navigator opened from the menu."""
    add_ct(viewer, phantom(n=n)[0], name="low")
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    return viewer, widget, viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")[1]


def _flipped_to_denoised(viewer, qtbot) -> tuple:
    """A full dose, a low dose denoised by the Denoise widget, and F pressed twice: the denoised image in place."""
    low, ref = phantom(n=3)
    add_ct(viewer, ref, name="full")
    src = add_ct(viewer, low, name="low")
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    widget.flip()
    widget.flip()
    return viewer, widget, src


def test_current_slice_after_a_run_on_another_image_keeps_the_volume(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """All slices of A, then all slices of B, then the current slice of A: A's volume outputs stay whole and only
    that slice's boxes change (the merge used to know only the last run, and A lost every other slice)."""
    viewer = make_napari_viewer()
    low, ref = phantom(n=5)
    a, b = add_ct(viewer, low, name="A"), add_ct(viewer, ref, name="B")
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    for name in ("A", "B"):
        widget.image_combo.setCurrentText(name)
        run_and_wait(widget, qtbot)
    boxes_a = viewer.layers["A lesions"]
    before = np.asarray(widget._volumes[0]["result"].boxes)
    widget.image_combo.setCurrentText("A")
    widget.scope_combo.setCurrentText("current slice")
    viewer.dims.set_current_step(0, 2)
    run_and_wait(widget, qtbot)
    assert viewer.layers["A denoised"].data.shape == a.data.shape  # not one slice
    assert viewer.layers["A lesions"] is boxes_a  # the same layer: a review on it carries on
    kept = before[before[:, 0] != 2]
    rows = np.asarray(widget._last["result"].boxes)
    np.testing.assert_array_equal(rows[rows[:, 0] != 2], kept)  # every other slice's boxes as they were
    assert len(kept) > 0 and b.data.shape == viewer.layers["B denoised"].data.shape


def test_renamed_input_is_followed_and_renamed_outputs_are_kept(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    viewer = make_napari_viewer()
    layer = add_ct(viewer, phantom(n=3)[0], name="low")
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    layer.name = "patient A"  # the picker follows; the next run replaces its own outputs, not a second set
    assert widget.image_combo.currentText() == "patient A"
    run_and_wait(widget, qtbot)
    assert sorted(_layer_names(viewer)) == ["patient A", "patient A denoised", "patient A lesions"]
    viewer.layers["patient A denoised"].name = "keep: all noise"  # renamed by the reader: theirs to keep
    widget.strength_spin.setValue(10)
    run_and_wait(widget, qtbot)
    assert sorted(_layer_names(viewer)) == ["keep: all noise", "patient A", "patient A denoised", "patient A lesions"]


def test_deleting_a_compared_layer_or_the_lesions_restores_the_view(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    viewer, widget, src = _flipped_to_denoised(make_napari_viewer(), qtbot)
    assert not src.visible and not viewer.layers["full"].visible
    viewer.layers.remove("low denoised")
    assert src.visible and viewer.layers["full"].visible  # the view as before the comparison
    assert widget.set_compare(True) is False and "deleted" in widget.status.text()  # nothing left to compare
    viewer.layers.remove("low lesions")
    widget.set_threshold(0.1)  # the slider does not bring back a layer the reader deleted
    assert "low lesions" not in _layer_names(viewer)


def _run_in_a_new_dock(viewer, qtbot, scope: str) -> None:
    """Open a Denoise dock, run it on ``scope`` on the CPU, close it."""
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise and detect")
    widget.device_combo.setCurrentText("cpu")
    widget.scope_combo.setCurrentText(scope)
    with qtbot.waitSignal(widget.job_finished, timeout=60000):
        widget.run()
    viewer.window.remove_dock_widget(dock)


def test_closed_docks_stop_working_and_let_go_of_the_viewer(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """napari's X takes the widget out of its dock without closing it: a run under way adds nothing, F and the
    review keys are napari's again, and a closed ROI compare computes nothing more."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=12, size=96)[0], name="low")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise and detect")
    nav_dock, navigator = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")
    roi_dock, roi = viewer.window.add_plugin_dock_widget(PLUGIN, "ROI compare")
    f_key = coerce_keybinding(FLIP_KEY)
    assert f_key in viewer.keymap and coerce_keybinding("a") in viewer.keymap
    widget.device_combo.setCurrentText("cpu")
    worker = widget.run()
    assert worker is not None, widget.status.text()
    ended = []
    worker.finished.connect(lambda: ended.append(True))
    viewer.window.remove_dock_widget(dock)
    qtbot.waitUntil(lambda: bool(ended), timeout=60000)
    qtbot.wait(50)
    assert _layer_names(viewer) == ["low"]  # the cancelled run added nothing
    assert f_key not in viewer.keymap and f_key not in viewer.layers["low"].keymap
    for step in (4, 5):  # a dock opened again replaces what a closed one made, of any slice: no "low denoised [1]"
        viewer.dims.set_current_step(0, step)  # nor a stale "low denoised (slice 4)" beside the new one
        _run_in_a_new_dock(viewer, qtbot, "current slice")
    assert sorted(_layer_names(viewer)) == ["low", "low denoised (slice 5)", "low lesions"]
    _run_in_a_new_dock(viewer, qtbot, "all slices")  # the whole volume: replaces the slice's outputs
    volume, boxes = viewer.layers["low denoised"], viewer.layers["low lesions"]
    n_boxes = len(boxes.data)
    assert volume.data.shape[0] == 12 and sorted(_layer_names(viewer)) == ["low", "low denoised", "low lesions"]
    for step in (4, 5):  # a reopened dock's one-slice runs go beside a closed one's whole volume, never over it
        viewer.dims.set_current_step(0, step)
        _run_in_a_new_dock(viewer, qtbot, "current slice")
    assert viewer.layers["low denoised"] is volume and viewer.layers["low lesions"] is boxes
    assert len(boxes.data) == n_boxes and volume.data.shape[0] == 12
    assert sorted(_layer_names(viewer)) == ["low", "low denoised", "low denoised (slice 5)", "low lesions",
                                            "low lesions (slice 5)"]  # fmt: skip
    viewer.window.remove_dock_widget(nav_dock)
    assert coerce_keybinding("a") not in viewer.keymap
    viewer.window.remove_dock_widget(roi_dock)
    viewer.add_shapes([[[10, 10], [10, 40], [40, 40], [40, 10]]], shape_type="rectangle", name="regions")
    qtbot.wait(500)  # longer than the table's debounce
    assert not roi.busy and roi.rows == [] and navigator.watch.closed


def test_closing_fine_tune_stops_its_run(make_napari_viewer, qtbot, model_dir: Path) -> None:  # noqa: F811
    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    widget.name_edit.setText("closed")
    widget.device_combo.setCurrentText("cpu")
    widget.patch_spin.setValue(32)
    widget.val_spin.setValue(0.34)
    for key, value in {"rounds": 3, "den_steps": 8, "det_steps": 2}.items():
        getattr(widget, f"{key}_spin").setValue(value)
    worker = widget.start()
    assert worker is not None, widget.status.text()
    closed = []

    def on_record(rec: dict) -> None:
        if not closed and rec["stage"] == "validate":
            closed.append(rec["step"])
            viewer.window.remove_dock_widget(dock)

    worker.yielded.connect(on_record)
    with qtbot.waitSignal(worker.finished, timeout=120000):
        pass
    stopped = [r for r in widget.records if r["stage"] == "stopped"]
    assert closed and stopped and stopped[0]["step"] - closed[0] <= 3 < stopped[0]["total_steps"] - closed[0]


def test_fine_tune_follows_renamed_layers_and_never_trains_on_a_vanished_boxes_layer(
    make_napari_viewer, qtbot, model_dir  # noqa: F811
) -> None:
    viewer = make_napari_viewer()
    add_case(viewer, n=4)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    widget.patch_spin.setValue(32)
    widget.set_images(["full-dose CT"])
    widget.data_box.boxes_combo.setCurrentIndex(widget.data_box.boxes_combo.findData("lesions"))
    viewer.layers["full-dose CT"].name = "patient B"
    viewer.layers["lesions"].name = "truth"
    assert widget.checked_images() == ["patient B"] and widget.data_box.boxes_combo.currentData() == "truth"
    request, problems = widget.build_request()
    assert request is not None and len(request.inputs) == 1 and request.inputs[0].boxes is not None, problems
    # a picked boxes layer that is gone is never read as "no boxes" (the detector would learn its own boxes)
    problems = widget._layer_inputs(["patient B"], "gone")[1]
    assert problems == ["the boxes layer 'gone' is gone: pick the lesion boxes again"]
    assert widget.data_box.boxes_combo.itemText(0) == NO_BOXES_ITEM


def test_navigator_opened_after_a_run_reviews_it_and_refuses_without_its_image(
    make_napari_viewer, qtbot, model_dir  # noqa: F811
) -> None:
    viewer, widget, navigator = _detected_then_navigator(make_napari_viewer(), qtbot, 3)
    n = len(navigator.findings)
    assert n > 1 and navigator.table.rowCount() == n  # the run's boxes, ready to review
    navigator.accept(navigator.findings[0].id)
    viewer.layers.remove("low")
    navigator.accept(navigator.findings[1].id)  # refused with a message, no traceback, nothing half-done
    assert navigator.findings[1].status == "pending" and "image" in navigator.status.text()


def test_a_rerun_during_a_flip_goes_on_flipping_the_new_result(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    viewer, widget, src = _flipped_to_denoised(make_napari_viewer(), qtbot)
    widget.strength_spin.setValue(10)  # another strength, run again: the flip goes on with the new output
    run_and_wait(widget, qtbot)
    assert not viewer.layers["full"].visible and not src.visible
    assert widget.flip() == src and widget.flip() == viewer.layers["low denoised"]


def test_a_deleted_image_is_freed_and_never_mistaken_for_another_of_its_name(
    make_napari_viewer, qtbot, model_dir  # noqa: F811
) -> None:
    import gc
    import weakref

    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=3)[0], name="CT")
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise and detect")
    widget.device_combo.setCurrentText("cpu")
    other = add_ct(viewer, phantom(n=3, seed=2)[0], name="other")
    widget.image_combo.setCurrentText("other")
    run_and_wait(widget, qtbot)  # a volume result and outputs of "other", then the last run on "CT"
    widget.image_combo.setCurrentText("CT")
    run_and_wait(widget, qtbot)
    gone = weakref.ref(other)
    viewer.layers.remove("other")
    del other
    gc.collect()
    assert gone() is None  # no dock holds a deleted image (its key bindings, events, volume result)
    viewer.window.remove_dock_widget(dock)
    viewer.layers.remove("CT")
    add_ct(viewer, phantom(n=3, seed=5)[0], name="CT")  # another patient, the same name
    _, again = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise and detect")
    again.device_combo.setCurrentText("cpu")
    run_and_wait(again, qtbot)
    assert "CT denoised" in _layer_names(viewer) and "CT denoised [1]" in _layer_names(viewer)  # the first kept


def test_one_export_at_a_time_and_two_docks_share_f(
    make_napari_viewer, qtbot, model_dir, tmp_path, monkeypatch  # noqa: F811
) -> None:
    import time

    import napari_lidnet.io.dicom_write as dicom_write

    real = dicom_write.write_dicom_series
    monkeypatch.setattr(dicom_write, "write_dicom_series", lambda *a, **k: time.sleep(1.5) or real(*a, **k))
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=3)[0], name="low")
    widget = make_widget(viewer, qtbot)
    run_and_wait(widget, qtbot)
    widget.export_dicom(tmp_path / "a", background=True)
    widget.scope_combo.setCurrentText("current slice")
    run_and_wait(widget, qtbot)  # a run ending while the export writes leaves Export off
    assert widget.export_worker is not None and not widget.export_dicom_button.isEnabled()
    assert widget.export_dicom(tmp_path / "b", background=True) == [] and "still writing" in widget.status.text()
    qtbot.waitUntil(lambda: widget.export_worker is None, timeout=20000)
    assert widget.export_dicom_button.isEnabled() and not (tmp_path / "b").exists()

    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget

    second = viewer.window.add_dock_widget(DenoiseDetectWidget(viewer), name="second")  # a script's second dock
    assert viewer.keymap[coerce_keybinding(FLIP_KEY)] is not widget._flip_key
    viewer.window.remove_dock_widget(second)  # F goes back to the widget still open
    assert viewer.keymap[coerce_keybinding(FLIP_KEY)] is widget._flip_key


def test_a_review_survives_renames_reruns_copies_and_a_reopened_navigator(
    make_napari_viewer, qtbot, model_dir, tmp_path  # noqa: F811
) -> None:
    """Review k: renaming the image or its reviewed layer and detecting again dropped the accepted boxes from the
    review (and the SR); any reload of another layer forgot the rejections."""
    viewer = make_napari_viewer()
    image = add_ct(viewer, phantom(n=4)[0], name="low")
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    nav_dock, nav = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")
    first, second = nav.findings[0], nav.findings[1]
    nav.accept(first.id)
    nav.reject(second.id)

    def decided(navigator) -> list[str]:
        return sorted(f.status for f in navigator.findings if f.status != "pending")

    image.name = "patient 7"
    run_and_wait(widget, qtbot)  # a new lesions layer under the new name: the review carries on
    assert decided(nav) == ["accepted", "rejected"]
    viewer.layers["low reviewed"].name = "reviewed by JD"
    widget.strength_spin.setValue(10)
    run_and_wait(widget, qtbot)
    assert decided(nav) == ["accepted", "rejected"]
    assert [ly.name for ly in viewer.layers if ly.name.endswith("reviewed") or "JD" in ly.name] == ["reviewed by JD"]
    from napari.layers._layer_actions import _duplicate_layer

    viewer.layers.selection.active = viewer.layers["patient 7 lesions"]
    _duplicate_layer(viewer.layers)  # napari's Duplicate Layer (metadata copied): not a new run to review
    assert "patient 7 lesions copy" in _layer_names(viewer)
    assert nav.boxes_combo.currentText() == "patient 7 lesions" and decided(nav) == ["accepted", "rejected"]
    viewer.window.remove_dock_widget(nav_dock)  # closed by mistake and opened again
    _, again = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")
    assert decided(again) == ["accepted", "rejected"]
    viewer.layers.remove("patient 7")
    assert again.export(tmp_path / "review.csv") is None and "image of these boxes was removed" in again.status.text()


def test_roi_compare_says_so_when_every_layer_goes_while_it_computes(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).normal(40, 10, (3, 64, 64)).astype(np.float32), name="low")
    _, roi = viewer.window.add_plugin_dock_widget(PLUGIN, "ROI compare")
    shapes = viewer.add_shapes(ndim=3, name="regions")
    shapes.add_rectangles(np.array([[1, 10, 10], [1, 10, 40], [1, 40, 40], [1, 40, 10]]))
    roi.perceptual_check.setChecked(True)  # computed in a worker, and again (in a worker) once the layers go
    roi.refresh()
    assert roi.status.text() == "computing..."
    viewer.layers.clear()
    qtbot.waitUntil(lambda: not roi.busy, timeout=30000)
    assert roi.status.text() != "computing..." and "New ROI layer" in roi.status.text()


def test_roi_compare_keeps_the_readers_regions_when_a_reviewed_layer_appears(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, 32, 32), np.float32), name="low")
    _, roi = viewer.window.add_plugin_dock_widget(PLUGIN, "ROI compare")
    viewer.add_shapes(ndim=3, name="regions")
    viewer.add_shapes(ndim=3, name="low reviewed", metadata={"lidnet_role": "reviewed"})  # a navigator's first Reject
    assert roi.shapes_combo.currentData() == "regions"


def test_navigator_scores_and_rejections_follow_the_denoise_threshold(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """Review l: Denoise sets the boxes, then their scores, and the navigator read the old scores; a rejected box
    that a later run at a higher threshold did not show came back pending when the threshold went down."""
    viewer, widget, nav = _detected_then_navigator(make_napari_viewer(), qtbot, 4)
    low = min(nav.findings, key=lambda f: f.score)
    nav.reject(low.id)
    for threshold in (low.score + 0.02, 0.05):
        widget.set_threshold(threshold)
        layer_scores = sorted(np.round(nav.boxes_layer.features["score"].to_numpy(float), 4))
        assert sorted(round(f.score, 4) for f in nav.findings if f.score is not None) == layer_scores
    widget.set_threshold(low.score + 0.02)
    widget.strength_spin.setValue(10)
    run_and_wait(widget, qtbot)  # another run, the rejected box under its threshold
    widget.set_threshold(0.05)
    again = [f for f in nav.findings if f.slice == low.slice and np.allclose(f.bounds, low.bounds, atol=1.0)]
    assert again and all(f.status == "rejected" for f in again)


def test_the_last_closed_dock_gives_the_viewer_its_keys_mouse_and_letters_back(make_napari_viewer) -> None:
    """The reading room (keys 1-5, right-drag window/level, HU in the status bar, orientation letters) stays while
    any LIDnet dock is open and goes with the last one: napari's own number keys work again on a Shapes layer."""
    from pydicom.data import get_testdata_file

    from napari_lidnet._widgets.orientation_markers import OVERLAY_KEYS

    viewer = make_napari_viewer()
    viewer.open(get_testdata_file("CT_small.dcm"), plugin=PLUGIN)
    regions = viewer.add_shapes(name="regions")
    one = coerce_keybinding("1")
    shapes_one = type(regions).class_keymap.get(one)  # napari's own (a shape mode), if any
    load_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Load CT")
    nav_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")
    drags = len(viewer.mouse_drag_callbacks)
    overlays = viewer.canvas.overlays
    letters = lambda: [k in overlays and overlays[k].visible for k in OVERLAY_KEYS.values()]  # noqa: E731
    assert one in viewer.keymap and one in regions.keymap and any(letters())
    viewer.window.remove_dock_widget(load_dock)
    assert one in viewer.keymap and one in regions.keymap and any(letters())  # the navigator still holds it
    viewer.window.remove_dock_widget(nav_dock)
    assert one not in viewer.keymap and one not in regions.keymap and not any(letters())
    assert len(viewer.mouse_drag_callbacks) == drags - 1
    assert type(regions).class_keymap.get(one) is shapes_one
    copy = viewer.add_image(viewer.layers[0].data, name="copy", metadata=dict(viewer.layers[0].metadata))
    assert one not in copy.keymap  # a layer added now is left alone
    viewer.window.add_plugin_dock_widget(PLUGIN, "Load CT")  # opened again: all of it is back
    assert one in viewer.keymap and one in regions.keymap and one in copy.keymap and any(letters())
    assert len(viewer.mouse_drag_callbacks) == drags


def test_flip_threshold_and_navigator_say_what_is_gone(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """A widget review: Flip before a run did nothing silently; after the lesions layer was deleted the slider said
    "N lesions" that were nowhere, and replaced the run's summary; the navigator kept "N boxes to review" after its
    boxes were deleted."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=4, size=96)[0], name="low")
    widget = make_widget(viewer, qtbot)
    assert widget.flip() is None and "run the denoiser first: there is nothing to flip" in widget.status.text()
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    assert widget.status.text().startswith("done on 'low'")
    widget.set_threshold(0.1)
    assert widget.status.text().startswith("done on 'low'") and widget.status.text().endswith(">= 0.10")
    _, navigator = viewer.window.add_plugin_dock_widget(PLUGIN, "Lesion navigator")
    viewer.add_shapes(name="someone's boxes")  # the picker must not name this one
    viewer.layers.remove("low lesions")
    assert "was removed: nothing left to review" in navigator.status.text()
    assert navigator.boxes_combo.currentText() == "(none)" and navigator.table.rowCount() == 0
    widget.set_threshold(0.2)
    assert "their layer was deleted: run again to show them" in widget.status.text()


def test_the_threshold_says_when_the_image_itself_was_removed(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """Regression: with only the source image deleted, the status said the lesions layer "was deleted:
    run again", while that layer was still there and there was nothing left to run on. Also, the
    dock held the deleted image and its results (twice the study) for as long as it was open."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=4, size=96)[0], name="low")
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    data = weakref.ref(viewer.layers["low"].data)
    viewer.layers.remove("low")
    widget.set_threshold(0.2)
    text = widget.status.text()
    assert "low lesions" in viewer.layers and "the image the boxes were found on was removed" in text, text
    gc.collect()
    assert data() is None  # the deleted image's pixels are freed while the dock stays open
    assert "their layer was deleted" not in text
    assert widget._last is None and len(widget._cache) == 0 and not widget.export_dicom_button.isEnabled()


def test_a_deleted_image_s_cached_results_go_and_the_other_study_s_stay(make_napari_viewer, qtbot, model_dir) -> None:  # noqa: F811
    """Regression: letting go of a deleted image emptied the whole result cache, so a rerun on another open
    study computed everything again; a detector-only run's image deleted made Compare speak of a denoised layer."""
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=3, size=64)[0], name="low")
    add_ct(viewer, phantom(n=3, size=64, seed=5)[0] + 10.0, name="other")
    widget = make_widget(viewer, qtbot)
    for name in ("other", "low"):
        widget.image_combo.setCurrentText(name)
        run_and_wait(widget, qtbot)
    viewer.layers.remove("low")
    assert len(widget._cache) == 2  # the other study's denoising and detection
    widget.image_combo.setCurrentText("other")
    run_and_wait(widget, qtbot)
    assert "from cache: denoise, detect" in widget.status.text(), widget.status.text()
    widget.denoiser_combo.setCurrentText("(none)")
    run_and_wait(widget, qtbot)  # detection alone
    viewer.layers.remove("other")
    widget.set_compare(True)
    assert "run the denoiser first" in widget.status.text(), widget.status.text()
