"""Patient-orientation letters: the LPS arithmetic, and the canvas letters of a real DICOM series in a headless
viewer (run under xvfb-run) following dims rolls, camera flips, the active layer and the Load CT switch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_hu, write_series

from napari_lidnet._widgets.load_ct import LoadCTWidget
from napari_lidnet._widgets.orientation_markers import COLOR, COLOR_ON_LIGHT, OVERLAY_KEYS
from napari_lidnet._widgets.reading_room import ReadingRoom
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.orientation import direction_letters, edge_letters
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.layer_data import volume_to_layer_tuple

AXIAL = {"top": "A", "bottom": "P", "left": "R", "right": "L"}


@pytest.mark.parametrize(
    ("vector", "letters"),
    [((1, 0, 0), "L"), ((-1, 0, 0), "R"), ((0, 1, 0), "P"), ((0, -1, 0), "A"), ((0, 0, 2.5), "S"), ((0, 0, -1), "I"),
     ((0.8, 0.6, 0), "LP"), ((-0.6, 0.8, 0), "PR"), ((0.95, 0.2, 0.1), "L"), ((0, 0, 0), "")],
)  # fmt: skip
def test_direction_letters(vector, letters) -> None:
    assert direction_letters(vector) == letters


def letters_of(affine, down_axis: int, right_axis: int, flip_down: bool = False) -> dict[str, str]:
    """Edge letters when array axis ``down_axis`` runs down the screen and ``right_axis`` to the right."""
    aff = np.asarray(affine)
    return edge_letters(aff[:3, down_axis] * (-1 if flip_down else 1), aff[:3, right_axis])


def test_edge_letters_of_standard_prone_and_single_slice_geometry() -> None:
    supine = CTVolume(np.zeros((3, 4, 5)), (2.5, 0.7, 0.8))  # identity cosines: rows run L, columns P, slices S
    assert letters_of(supine.affine(), 1, 2) == AXIAL
    assert letters_of(supine.affine(), 1, 2, flip_down=True) == {**AXIAL, "top": "P", "bottom": "A"}
    assert letters_of(supine.affine(), 0, 2) == {"top": "I", "bottom": "S", "left": "R", "right": "L"}  # coronal
    prone = CTVolume(np.zeros((3, 4, 5)), (2.5, 0.7, 0.8), direction=np.diag([-1.0, -1.0, 1.0]))
    assert letters_of(prone.affine(), 1, 2) == {"top": "P", "bottom": "A", "left": "L", "right": "R"}
    single = CTVolume(np.zeros((4, 5)), (0.7, 0.8))  # a 2D slice: affine columns still (z, y, x)
    assert letters_of(single.affine(), 1, 2) == AXIAL


def add(viewer, vol: CTVolume):
    data, kwargs, _ = volume_to_layer_tuple(vol)
    return viewer.add_image(data, **kwargs)


def shown(viewer) -> dict[str, str]:
    overlays = viewer.canvas.overlays
    return {edge: overlays[key].text for edge, key in OVERLAY_KEYS.items() if overlays[key].visible}


def test_letters_follow_the_series_the_view_and_the_switch(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    write_series(tmp_path / "prone", synthetic_hu((4, 24, 32), seed=1), series_uid="1.2.3.71",
                 orientation=(-1, 0, 0, 0, -1, 0))  # fmt: skip
    viewer = make_napari_viewer(show=True)
    widget = LoadCTWidget(viewer)
    qtbot.addWidget(widget)
    room = ReadingRoom.install(viewer)
    plain = viewer.add_image(np.zeros((24, 32), np.float32), name="array", metadata={"hu": True})
    assert shown(viewer) == {}  # no patient geometry: no guess
    data, kwargs, _ = volume_to_layer_tuple(open_ct(tmp_path / "prone")[0])
    image = viewer.add_image(data, **kwargs)
    assert shown(viewer) == {"top": "P", "bottom": "A", "left": "L", "right": "R"}  # prone: rows run to the right
    viewer.layers.selection.active = plain  # an active layer without geometry: the top CT that has it
    assert shown(viewer)["right"] == "R"
    image.scale = (image.scale[0], image.scale[1], -image.scale[2])  # the user mirrors the columns
    assert shown(viewer)["right"] == "L" and shown(viewer)["left"] == "R"
    image.scale = (image.scale[0], image.scale[1], -image.scale[2])

    viewer.dims.order = (1, 0, 2)  # coronal-like: slices down the screen, superior as the index grows
    assert shown(viewer) == {"top": "S", "bottom": "I", "left": "L", "right": "R"}  # turned: the head on top
    assert str(viewer.scene.camera.orientation2d[0]) == "up"
    viewer.scene.camera.orientation2d = ("down", "right")  # the user turns it back: it stays so
    assert shown(viewer)["top"] == "I"
    viewer.dims.order = (0, 1, 2)  # axial again: napari's camera, the prone letters as before
    assert str(viewer.scene.camera.orientation2d[0]) == "down" and shown(viewer)["top"] == "P"
    viewer.dims.order = (1, 0, 2)
    viewer.dims.order = (0, 1, 2)  # a turn made for the coronal view is undone in the axial one
    assert str(viewer.scene.camera.orientation2d[0]) == "down" and shown(viewer)["top"] == "P"
    viewer.dims.order = (2, 0, 1)  # sagittal-like: the head on top too
    assert shown(viewer)["top"] == "S"
    viewer.dims.order = (0, 1, 2)
    viewer.dims.ndisplay = 3
    assert shown(viewer) == {}
    viewer.dims.ndisplay = 2

    viewer.reset_view()
    canvas = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    amber = np.abs(canvas - np.array([255, 176, 0])).sum(-1) < 60
    h, w = amber.shape
    assert COLOR == "#ffb000" and amber[h // 3 : 2 * h // 3, : w // 10].any()  # a letter drawn at the left edge
    assert not amber[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].any()  # and none over the middle of the image

    widget.orientation_check.setChecked(False)
    assert not room.orientation.enabled and shown(viewer) == {}
    widget.orientation_check.setChecked(True)
    image.visible = False
    assert shown(viewer) == {}


def test_letters_describe_the_layer_on_screen(make_napari_viewer, tmp_path: Path) -> None:
    """The top visible CT layer names the edges, a 2-D slice in a 3-D viewer included; a file that gave no
    orientation gets none."""
    viewer = make_napari_viewer()
    ReadingRoom.install(viewer)
    air = np.full((3, 8, 8), -1000.0, np.float32)  # CT in HU (an image with nothing below -50 HU is not)
    supine = CTVolume(air, (2.5, 0.7, 0.7), direction=np.eye(3), name="supine")
    prone = CTVolume(air[0], (0.7, 0.7), direction=np.diag([-1.0, -1.0, 1.0]), name="prone")
    low = add(viewer, supine)
    top = add(viewer, prone)  # 2-D, on top, over all slices
    viewer.layers.selection.active = low
    assert shown(viewer) == {"top": "P", "bottom": "A", "left": "L", "right": "R"}  # what is on screen
    top.visible = False
    assert shown(viewer) == AXIAL
    low.metadata = {**low.metadata, "orientation_unknown": True}
    viewer.layers.selection.active = top  # (metadata has no event: any layer change redraws)
    assert shown(viewer) == {}


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".tif"])
def test_an_array_file_gets_no_letters(make_napari_viewer, tmp_path: Path, suffix: str) -> None:
    """An array stores no patient directions: opened with the loader it is a CT layer, but no R/L letters."""
    from napari_lidnet.io.arrays import write_array

    path = tmp_path / f"scan{suffix}"
    write_array(path, synthetic_hu((3, 24, 32), seed=2), (2.5, 0.7, 0.7))
    viewer = make_napari_viewer()
    ReadingRoom.install(viewer)
    vol = open_ct(path)[0]
    assert vol.metadata["orientation_unknown"]
    data, kwargs, _ = volume_to_layer_tuple(vol)
    viewer.add_image(data, **kwargs)
    assert shown(viewer) == {}


def test_side_by_side_letters_only_when_every_image_shown_agrees(make_napari_viewer) -> None:
    """Grid mode draws the letters in every cell: a supine and a feet-first series side by side (left and right
    swapped) get none; two images of one geometry get theirs; an array without geometry on top of a CT hides them
    (the letters would describe the CT under it)."""
    viewer = make_napari_viewer()
    ReadingRoom.install(viewer)
    air = np.full((3, 8, 8), -1000.0, np.float32)
    supine = add(viewer, CTVolume(air, (2.5, 0.7, 0.7), direction=np.eye(3), name="supine"))
    other = add(viewer, CTVolume(air, (2.5, 0.7, 0.7), direction=np.diag([-1.0, 1.0, -1.0]), name="feet first"))
    viewer.grid.enabled = True
    assert shown(viewer) == {}
    other.visible = False
    assert shown(viewer) == AXIAL  # one image shown
    twin = add(viewer, CTVolume(air + 10.0, (2.5, 0.7, 0.7), direction=np.eye(3), name="supine denoised"))
    assert shown(viewer) == AXIAL  # the pair agrees
    viewer.grid.enabled = False
    twin.visible = supine.visible = False
    other.visible = True
    assert shown(viewer) == {"top": "A", "bottom": "P", "left": "L", "right": "R"}
    viewer.add_image(np.zeros((8, 8), np.float32), name="png", metadata={"hu": True, "orientation_unknown": True})
    assert shown(viewer) == {}


def test_releasing_the_room_gives_napari_its_view_back(make_napari_viewer) -> None:
    """A coronal view turned head-up by the room: when the last LIDnet dock lets the room go, the camera's turn is
    undone (the axial view came back upside down, without letters) and the letters leave the canvas."""
    from napari_lidnet._widgets._viewer import camera

    viewer = make_napari_viewer()

    class Owner:  # a LIDnet dock holding the room
        pass

    owner = Owner()
    ReadingRoom.install(viewer, owner)
    add(viewer, CTVolume(np.full((6, 8, 8), -1000.0, np.float32), (2.5, 0.7, 0.7), direction=np.eye(3), name="ct"))
    viewer.dims.order = (1, 0, 2)  # coronal: slices run feet to head down the screen, so the camera turns
    assert str(camera(viewer).orientation2d[0]) == "up" and shown(viewer)["top"] == "S"
    ReadingRoom.release(viewer, owner)
    assert str(camera(viewer).orientation2d[0]) == "down"
    assert not any(key in viewer.canvas.overlays for key in OVERLAY_KEYS.values())


def test_a_feet_first_series_lies_at_its_patient_z_beside_a_head_first_one(make_napari_viewer, tmp_path: Path) -> None:
    """Regression: a feet-first series (rows running to the patient's right, so its slices sort from head
    to feet) was placed from its first slice upwards: the viewer's z ran against the patient's, and a head-first
    series of the same positions lay mirrored beside it. Now every slice sits at its own patient z, and one slider
    position shows the same anatomy in both (columns as each series stores them); the letters follow."""
    from napari_lidnet._widgets._roles import current_slice

    hu = synthetic_hu((5, 12, 16), seed=3)
    write_series(tmp_path / "hfs", hu, series_uid="1.2.3.81")
    write_series(tmp_path / "ffs", hu[:, :, ::-1], series_uid="1.2.3.82", orientation=(-1, 0, 0, 0, 1, 0))
    viewer = make_napari_viewer()
    ReadingRoom.install(viewer)
    hfs, ffs = (viewer.open(str(tmp_path / name), plugin="napari-lidnet")[0] for name in ("hfs", "ffs"))
    for layer in (hfs, ffs):
        z_ipp = [p[2] for p in layer.metadata["slice_ipp"]]
        assert [layer.data_to_world((k, 0, 0))[0] for k in range(5)] == pytest.approx(z_ipp), layer.name
    assert ffs.metadata["slice_ipp"][0][2] == pytest.approx(20.0)  # sorted head to feet, as its normal runs
    for k in range(5):
        viewer.dims.set_point(0, 10.0 + 2.5 * k)
        a, b = current_slice(viewer, hfs), current_slice(viewer, ffs)
        np.testing.assert_array_equal(hfs.data[a], ffs.data[b][:, ::-1])
    viewer.dims.order = (1, 0, 2)  # slices down the screen: the head on top for both
    for layer in (ffs, hfs):
        viewer.layers.selection.active = layer
        layer.visible, (hfs if layer is ffs else ffs).visible = True, False
        assert shown(viewer)["top"] == "S", layer.name


def test_the_letters_stay_legible_on_a_light_theme_s_white_canvas(make_napari_viewer) -> None:
    """napari's light theme draws the canvas white, where the amber letters outside the image read at 1.8:1: they
    turn dark amber there and back when the theme does."""
    from napari.utils.colormaps.standardize_color import transform_color

    viewer = make_napari_viewer()
    ReadingRoom.install(viewer)
    letters = [viewer.canvas.overlays[key] for key in OVERLAY_KEYS.values()]
    for theme, colour in (("light", COLOR_ON_LIGHT), ("dark", COLOR)):
        viewer.theme = theme
        for overlay in letters:
            np.testing.assert_allclose(overlay.color, transform_color(colour)[0])
            assert overlay.box == (theme == "light")  # a pale backing where dark letters lie over black air
