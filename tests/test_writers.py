"""napari's File > Save with LIDnet's writers: a CT as .nii.gz with its geometry, boxes as .boxes.csv with their
scores and sides in mm; every other save exactly as napari makes it, whichever plugin npe2 indexes first."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_lidnet._writer import write_boxes, write_ct_nifti
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.layer_data import volume_to_layer_tuple

npe2 = pytest.importorskip("npe2")
MANIFEST = Path(__file__).resolve().parents[1] / "napari_lidnet" / "napari.yaml"
SPACING = (2.5, 0.7, 0.7)


@pytest.fixture(params=["lidnet first", "lidnet last"])
def plugins(request, npe2pm):
    """napari's builtins and LIDnet registered in either order (on a user's machine the order of the installed
    packages decides it)."""
    ours = npe2.PluginManifest.from_file(MANIFEST)
    napari_own = npe2.PluginManifest.from_distribution("napari")
    for manifest in [ours, napari_own] if request.param == "lidnet first" else [napari_own, ours]:
        npe2pm.register(manifest)
    return npe2pm


def _ct(viewer: ViewerModel):
    hu = np.full((3, 16, 20), -1000.0, np.float32)
    hu[:, 4:12, 5:15] = 40.0
    volume = CTVolume(hu, SPACING, origin=(-30.0, -80.0, -90.0), direction=np.eye(3), name="ct")
    data, kwargs, _ = volume_to_layer_tuple(volume)
    return viewer.add_image(data, **kwargs)


def _boxes(viewer: ViewerModel, metadata: dict | None = None):
    """A box layer as the Denoise dock draws one: its image's measured pixel size recorded."""
    rect = np.array([[1, 2, 3], [1, 2, 9], [1, 8, 9], [1, 8, 3]], float)
    metadata = {"lidnet": {"pixel_mm": SPACING[1:]}} if metadata is None else metadata
    return viewer.add_shapes([rect], shape_type="rectangle", name="boxes", scale=SPACING, features={"score": [0.8]},
                             metadata=metadata)  # fmt: skip


def _polygon(viewer: ViewerModel):
    return viewer.add_shapes([np.array([[0, 0], [5, 9], [9, 2]], float)], shape_type="polygon", name="poly")


def _photo(viewer: ViewerModel):
    return viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="photo")


@pytest.mark.parametrize(
    ("make", "name", "written"),
    [
        (_polygon, "p.csv", "p.csv"),
        (_boxes, "b.csv", "b.csv"),
        (_polygon, "p", "p.csv"),
        (_boxes, "b", "b.csv"),
        (_photo, "a.png", "a.png"),
        (_photo, "a", "a.tif"),
        (_ct, "c", "c.tif"),
        (_ct, "c.tif", "c.tif"),
    ],
)
def test_napari_s_own_saves_are_untouched(plugins, tmp_path: Path, make, name: str, written: str) -> None:
    viewer = ViewerModel()
    layer = make(viewer)
    writer, _ = plugins.get_writer(str(tmp_path / name), [type(layer).__name__.lower()])
    assert writer.command.startswith("napari."), writer.command
    viewer.layers.save(str(tmp_path / name))
    assert [p.name for p in tmp_path.iterdir()] == [written]
    if written.endswith(".csv"):  # napari's table of vertices, which napari reopens
        assert (tmp_path / written).read_text().startswith("index,shape-type,vertex-index")


def test_save_all_to_a_folder_and_the_dialog_s_first_choice_stay_napari_s(plugins, tmp_path: Path) -> None:
    from napari.plugins._npe2 import file_extensions_string_for_layers

    viewer = ViewerModel()
    _ct(viewer), _boxes(viewer), _polygon(viewer)
    written = viewer.layers.save(str(tmp_path / "out"))
    assert sorted(Path(p).name for p in written) == ["boxes.csv", "ct.tif", "poly.csv"]
    for make, ours in ((_polygon, "napari-lidnet.write_boxes"), (_ct, "napari-lidnet.write_ct_nifti")):
        viewer.layers.clear()
        make(viewer)
        _, writers = file_extensions_string_for_layers(list(viewer.layers))
        commands = [w.command for w in writers]
        assert commands[0].startswith("napari.") and ours in commands, commands  # offered, not preselected


def test_a_ct_saved_as_nifti_reopens_with_its_voxel_size_and_position(plugins, tmp_path: Path) -> None:
    viewer = ViewerModel()
    ct = _ct(viewer)
    (saved,) = ct.save(str(tmp_path / "ct.nii.gz"))
    (back,) = open_ct(saved)
    assert back.spacing == pytest.approx(SPACING) and back.origin == pytest.approx((-30.0, -80.0, -90.0))
    np.testing.assert_array_equal(back.hu, ct.data)
    with pytest.raises(Exception, match="exists"):  # never over a file
        ct.save(saved)
    photo = _photo(viewer)
    with pytest.raises(ValueError, match="not a CT image in HU"):
        write_ct_nifti(str(tmp_path / "photo.nii.gz"), [photo.as_layer_data_tuple()])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_boxes_saved_as_a_box_table_keep_scores_and_sides_in_mm(plugins, tmp_path: Path) -> None:
    viewer = ViewerModel()
    boxes = _boxes(viewer)
    (saved,) = boxes.save(str(tmp_path / "les.boxes.csv"))
    (row,) = list(csv.DictReader(open(saved)))
    assert float(row["score"]) == 0.8 and row["slice"] == "1"
    assert float(row["width_mm"]) == pytest.approx(6 * 0.7) and float(row["height_mm"]) == pytest.approx(6 * 0.7)
    # the dialog with LIDnet's filter picked hands over the name as typed: the writer adds its suffix
    assert write_boxes(str(tmp_path / "typed"), [boxes.as_layer_data_tuple()]) == [str(tmp_path / "typed.boxes.csv")]
    assert write_boxes(str(tmp_path / "t.csv"), [boxes.as_layer_data_tuple()]) == [str(tmp_path / "t.boxes.csv")]
    drawn = _boxes(viewer, metadata={})  # scale (2.5, 0.7, 0.7) but no record of a measured pixel: no mm
    (row,) = list(csv.DictReader(open(write_boxes(str(tmp_path / "d.boxes.csv"), [drawn.as_layer_data_tuple()])[0])))
    assert "width_mm" not in row and float(row["score"]) == 0.8
    with pytest.raises(ValueError, match="rectangles only, not polygon"):
        write_boxes(str(tmp_path / "poly.boxes.csv"), [_polygon(viewer).as_layer_data_tuple()])
    assert not (tmp_path / "poly.boxes.csv").exists()
