"""Calipers (Load CT's "Measure (mm)"): lines labelled with their length in mm from the CT layer's voxel size, in a
real headless viewer (run under xvfb-run); caliper layers are never taken for regions or lesion boxes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lidnet._widgets.calipers import caliper_label, path_length_mm
from napari_lidnet._widgets.load_ct import LoadCTWidget
from napari_lidnet._widgets.navigator import LesionNavigatorWidget
from napari_lidnet._widgets.roi_compare import ROICompareWidget


def test_lengths_follow_the_voxel_size_of_each_axis() -> None:
    scale = (5.0, 0.5, 0.8)  # slice spacing, row spacing, column spacing (mm)
    assert path_length_mm([[3, 10, 10], [3, 10, 35]], scale) == pytest.approx(20.0)  # 25 columns of 0.8 mm
    assert path_length_mm([[3, 10, 10], [3, 50, 10]], scale) == pytest.approx(20.0)  # 40 rows of 0.5 mm
    assert path_length_mm([[0, 0], [6, 0], [6, 5]], scale) == pytest.approx(3.0 + 4.0)  # a path: its segments
    assert path_length_mm([[0, 0], [8, 5]], scale[1:]) == pytest.approx(np.hypot(4.0, 4.0))
    assert caliper_label(np.array([[0, 0], [8, 5]]), "line", scale[1:]) == "5.7 mm"
    corners = np.array([[0, 0], [0, 10], [40, 10], [40, 0]])  # 8 mm wide (10 x 0.8), 20 mm high (40 x 0.5)
    assert caliper_label(corners, "rectangle", scale[1:]) == "20.0 x 8.0 mm"
    assert caliper_label(corners, "ellipse", scale[1:]) == "20.0 x 8.0 mm"
    assert caliper_label(corners, "polygon", scale[1:]) == ""


@pytest.fixture
def viewer_with_ct(make_napari_viewer):
    viewer = make_napari_viewer()
    ct = viewer.add_image(
        np.full((4, 64, 64), 40.0, np.float32), name="ct", scale=(5.0, 0.5, 0.8), metadata={"hu": True},
        units=("mm",) * 3,  # as the reader gives a CT
    )
    return viewer, ct


def test_measure_draws_lines_labelled_in_mm_and_follows_edits(viewer_with_ct, qtbot) -> None:
    viewer, ct = viewer_with_ct
    w = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.measure_button.click()
    layer = viewer.layers.selection.active
    assert layer.name == "calipers" and layer.mode == "add_line"
    np.testing.assert_allclose(layer.scale, ct.scale)
    assert layer.units == ct.units  # in mm too: napari's scale bar keeps reading mm

    layer.add_lines(np.array([[2, 10, 10], [2, 10, 35]]))  # as a drawn line arrives: an 'added' data event
    layer.add_lines(np.array([[2, 5, 5], [2, 45, 5]]))
    assert list(layer.features["label"]) == ["20.0 mm", "20.0 mm"]
    assert list(layer.text.values) == ["20.0 mm", "20.0 mm"]  # what the canvas writes beside each line

    layer.selected_data = {0}
    layer.remove_selected()
    assert list(layer.text.values) == ["20.0 mm"]
    layer.add_rectangles(np.array([[2, 0, 0], [2, 0, 10], [2, 40, 10], [2, 40, 0]]))
    assert list(layer.text.values) == ["20.0 mm", "20.0 x 8.0 mm"]

    w.measure_button.click()  # again: the same layer, back in line mode
    assert [ly.name for ly in viewer.layers].count("calipers") == 1
    assert viewer.layers.selection.active is layer and layer.mode == "add_line"


def test_the_label_is_on_the_canvas_beside_the_line(make_napari_viewer) -> None:
    """A picture: the line and its label render in the caliper colour over the image, and nowhere else."""
    viewer = make_napari_viewer(show=True)  # a hidden canvas renders black
    ct = viewer.add_image(np.zeros((64, 64), np.float32), scale=(0.5, 0.5), metadata={"hu": True}, colormap="gray")
    viewer.reset_view()
    bare = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    w = LoadCTWidget(viewer)
    layer = w.measure()
    assert layer.scale[0] == ct.scale[0]
    layer.add_lines(np.array([[48, 8], [48, 56]]))  # 48 px of 0.5 mm across the lower part of the image
    assert list(layer.text.values) == ["24.0 mm"]
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    cyan = (shot[..., 1] > 150) & (shot[..., 2] > 150) & (shot[..., 0] < 100)
    assert not ((bare[..., 1] > 150) & (bare[..., 2] > 150)).any()
    rows = np.nonzero(cyan.any(axis=1))[0]
    assert cyan.sum() > 100  # the line and its text
    assert rows.max() - rows.min() > 5  # text above the line, not the line alone


def test_calipers_are_not_regions_or_lesion_boxes(viewer_with_ct, qtbot) -> None:
    viewer, _ct = viewer_with_ct
    roi = ROICompareWidget(viewer)
    nav = LesionNavigatorWidget(viewer)
    regions = roi.new_roi_layer()
    regions.add_rectangles(np.array([[2, 10, 10], [2, 10, 30], [2, 30, 30], [2, 30, 10]]))
    calipers = LoadCTWidget(viewer).measure()
    calipers.add_lines(np.array([[2, 10, 10], [2, 10, 35]]))
    assert roi.shapes_combo.currentData() == regions.name  # drawing a caliper does not switch the regions
    assert roi.default_regions_layer() == regions.name
    boxes = [nav.boxes_combo.itemText(i) for i in range(nav.boxes_combo.count())]
    assert calipers.name not in boxes and regions.name in boxes


def press(viewer, key: str) -> None:
    """A key press through napari's key map (the active layer's bindings first, as on the canvas)."""
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_preset_keys_stay_presets_while_the_calipers_are_active(viewer_with_ct, qtbot) -> None:
    """napari's own number keys on a Shapes layer change modes, and '3' deletes the selected shape: with the
    calipers active (as Measure leaves them), keys 1-5 are still the window presets and no caliper is lost."""
    from napari_lidnet.io.windowing import contrast_limits

    viewer, ct = viewer_with_ct
    layer = LoadCTWidget(viewer).measure()
    layer.add_lines(np.array([[2, 10, 10], [2, 10, 35]]))
    layer.selected_data = {0}
    for key, preset in (("3", "bone"), ("6", "mediastinum"), ("7", "abdomen"), ("2", "lung"), ("1", "soft tissue")):
        press(viewer, key)  # 6 and 7: a mediastinal and an abdominal window
        assert tuple(ct.contrast_limits) == contrast_limits(preset)
        assert len(layer.data) == 1 and layer.mode == "add_line"
    # a Labels or Points layer keeps its own tool keys: 2 paints, and the window stays
    mask = viewer.add_labels(np.zeros(ct.data.shape, np.uint8), name="mask")
    press(viewer, "2")
    assert mask.mode == "paint" and tuple(ct.contrast_limits) == contrast_limits("soft tissue")


def test_measure_needs_an_image_and_says_pixels_without_a_voxel_size(make_napari_viewer, qtbot) -> None:
    viewer = make_napari_viewer()
    w = LoadCTWidget(viewer)
    assert w.measure() is None and "nothing to measure on" in w.status.text()
    assert len(viewer.layers) == 0
    viewer.add_image(np.zeros((8, 64, 64), np.float32), name="plain")  # not a CT layer, no scale: pixels
    layer = w.measure()
    assert "'plain' has no voxel size" in w.status.text()
    assert layer.ndim == 3  # a caliper on one slice stays on that slice
    layer.add_lines(np.array([[7, 10, 10], [7, 10, 50]]))
    assert list(layer.text.values) == ["40.0 px"]  # 40 of that image's pixels
    viewer.add_image(np.zeros((8, 64, 64), np.float32), name="scaled", scale=(5.0, 0.5, 0.5))  # given a voxel size
    layer = w.measure()
    assert "'scaled' is not a CT layer: the calipers take its scale as mm" in w.status.text()
    layer.add_lines(np.array([[7, 10, 10], [7, 10, 50]]))
    assert list(layer.text.values) == ["20.0 mm"]  # as the navigator measures boxes on that image


def test_the_status_bar_reads_the_ct_under_the_cursor_while_measuring(viewer_with_ct) -> None:
    """Drawing a caliper or a region makes a Shapes layer active; the status bar still gives the CT's HU there."""
    viewer, ct = viewer_with_ct
    ct.data[2, 30, 20] = 123.0
    layer = LoadCTWidget(viewer).measure()
    world = ct.data_to_world((2, 30, 20))
    viewer.dims.set_point(0, world[0])
    viewer.cursor.position = tuple(world)
    viewer.status = layer.get_status(tuple(world), world=True)  # what napari puts there for the active layer
    assert viewer.status["coordinates"].endswith("; ct: 123.0 HU"), viewer.status
    assert "[, ]" not in viewer.status["coordinates"]  # napari's empty "no shape here" value is left out
    viewer.cursor.position = (world[0], -50.0, -50.0)  # off the image: nothing added
    viewer.status = layer.get_status(viewer.cursor.position, world=True)
    assert "HU" not in viewer.status["coordinates"] and "[, ]" not in viewer.status["coordinates"]


def test_side_by_side_the_status_bar_reads_the_image_in_the_cursors_cell(viewer_with_ct) -> None:
    """Grid mode shows the pair over one world extent: the HU in the status bar is that of the image in the cell
    under the cursor, whichever layer is active (napari gives the active layer's value wherever the cursor is)."""
    viewer, ct = viewer_with_ct
    viewer.add_image(np.full((4, 64, 64), 300.0, np.float32), name="ct denoised", scale=ct.scale,
                           metadata={"hu": True})  # fmt: skip
    viewer.grid.enabled = True
    layer = LoadCTWidget(viewer).measure()
    layer.visible = False  # a caliper layer with nothing drawn yet (a visible one takes a cell of its own)
    world = ct.data_to_world((2, 30, 20))
    viewer.dims.set_point(0, world[0])
    viewer.cursor.position = tuple(world)
    for cell, layer_name, value in (((0, 1), "ct denoised", 300.0), ((0, 0), "ct", 40.0)):
        viewer.cursor.viewbox = cell
        viewer.status = layer.get_status(tuple(world), world=True)
        assert viewer.status["coordinates"].endswith(f"; {layer_name}: {value:.1f} HU"), viewer.status
    viewer.layers.selection.active = ct
    viewer.cursor.viewbox = (0, 1)
    viewer.status = ct.get_status(tuple(world), world=True)  # napari: the active CT's 40 wherever the cursor is
    coords = viewer.status["coordinates"]
    assert coords.endswith("; ct denoised: 300.0 HU") and ": 40" not in coords, coords
    viewer.cursor.viewbox = (0, 0)
    viewer.status = ct.get_status(tuple(world), world=True)
    assert viewer.status["coordinates"].endswith(": 40 HU"), viewer.status  # napari's own value, in its cell


def test_the_window_and_level_are_shown_on_the_image_in_hu(viewer_with_ct, qtbot) -> None:
    """Regression: after a drag or a preset key no number said which window was on; a PACS shows it in a
    corner of the image. The lower right corner reads 'W .. L ..' (HU), following keys, napari's slider and removal;
    napari's own text overlay stays the user's (the readout must not write over it, nor closing the dock blank
    it)."""
    from napari_lidnet._widgets.reading_room import READOUT, ReadingRoom

    viewer, ct = viewer_with_ct
    viewer.text_overlay.text, viewer.text_overlay.visible = "Study 2024-001", True  # the user's own
    widget = LoadCTWidget(viewer)
    overlay = viewer.canvas.overlays[READOUT]
    press(viewer, "2")  # lung: -600 / 1500
    assert overlay.visible and overlay.text == "W 1500  L -600" and overlay.position == "bottom_right"
    ct.contrast_limits = (-100, 300)  # napari's own slider
    assert overlay.text == "W 400  L 100"
    viewer.layers.remove(ct)
    assert not overlay.visible
    viewer.add_image(np.full((4, 64, 64), 40.0, np.float32), name="ct", metadata={"hu": True})
    assert overlay.visible
    assert viewer.text_overlay.text == "Study 2024-001" and viewer.text_overlay.visible
    ReadingRoom.release(viewer, widget)  # the last LIDnet dock closed: nothing follows the window any more
    assert READOUT not in viewer.canvas.overlays
    assert viewer.text_overlay.text == "Study 2024-001" and viewer.text_overlay.visible


def test_a_line_s_label_sits_beside_its_right_end_at_any_zoom(viewer_with_ct) -> None:
    """Regression: the label was anchored at the line's lower right end and ran leftwards from there, so a 5 mm
    line's "5.0 mm" lay about 50 screen pixels off the line, over a rib; then, centred below the line's middle, it
    covered the lesion the line measured. It now starts ``LABEL_GAP_PX`` screen pixels right of the line's right end,
    on its row, at every zoom (a PACS's place for a length)."""
    from napari_lidnet._widgets.calipers import CHAR_PX, LABEL_GAP_PX, LABEL_HEIGHT_PX

    viewer, ct = viewer_with_ct
    layer = LoadCTWidget(viewer).measure()
    viewer.dims.set_current_step(0, 2)
    layer.add_lines(np.array([[2, 30, 20], [2, 30, 26]]))  # 6 columns of 0.8 mm: a 4.8 mm line
    assert list(layer.features["label"]) == ["4.8 mm"]
    for zoom in (1.5, 12.0):
        viewer.camera.zoom = zoom
        coords, anchor_x, anchor_y = layer._view_text_coords
        assert (anchor_x, anchor_y) == ("right", "bottom")  # right edge and (y down) top on the anchor
        corner_px = (coords[0] - np.array([30.0, 26.0])) * np.asarray(ct.scale[1:]) * zoom  # from the line's end
        width = CHAR_PX * len("4.8 mm")
        np.testing.assert_allclose(corner_px, [-LABEL_HEIGHT_PX / 2, LABEL_GAP_PX + width], atol=1e-6)
        assert corner_px[1] - width == pytest.approx(LABEL_GAP_PX)  # its left edge clear of the line, on the line's row
