"""napari reader: which paths it claims, the LayerDataTuples it returns, array files, box <-> shape conversion."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import listing
from PIL import Image

from napari_lidnet._reader import napari_get_reader
from napari_lidnet.io.arrays import read_array
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.png16 import write_png_hu
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.io.windowing import contrast_limits
from napari_lidnet.layer_data import boxes_layer_tuple, boxes_to_shapes, shapes_to_boxes


def test_paths_not_ours_give_none(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "photo.png")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "photo.png")) is None  # 8-bit: left to napari's own reader
    assert napari_get_reader(str(tmp_path)) is None  # folder without DICOM or 16-bit PNG
    assert napari_get_reader(str(tmp_path / "missing.dcm")) is None
    assert napari_get_reader([]) is None


def test_dicom_folder_gives_one_image_per_series(two_series_dir):
    d = two_series_dir
    before = listing(d["root"])
    reader = napari_get_reader(str(d["root"]))
    assert callable(reader)
    layers = reader(str(d["root"]))
    assert [(lt[1]["name"], lt[2]) for lt in layers] == [("abdomen A", "image"), ("chest B", "image")]
    data, kw, _ = layers[0]
    np.testing.assert_array_equal(data, d["hu_a"])  # HU untouched
    assert kw["scale"] == pytest.approx((2.5, 0.7, 0.8))
    assert kw["translate"] == pytest.approx((10.0, -120.0, -100.0))
    assert kw["contrast_limits"] == contrast_limits("soft tissue")
    aff = kw["metadata"]["affine_lps"]
    np.testing.assert_allclose(aff @ [1, 2, 3, 1], [-100 + 3 * 0.8, -120 + 2 * 0.7, 12.5, 1])
    assert kw["metadata"]["source"] == str(d["root"]) and kw["metadata"]["series_uid"] == d["uid_a"]
    assert listing(d["root"]) == before


def test_a_series_opens_at_its_own_window(tmp_path, make_napari_viewer):
    """A DICOM series that stores a window (lung, first of two) opens at it, as on the scanner's console; the
    Reading room's "scan's own" preset puts it back after another preset; a scan without one opens soft tissue."""
    from conftest import synthetic_hu, write_series

    from napari_lidnet._widgets.reading_room import ReadingRoom
    from napari_lidnet.io.windowing import SCAN_WINDOW

    window = {"WindowCenter": ["-600", "40"], "WindowWidth": ["1500", "400"]}
    write_series(tmp_path / "lung", synthetic_hu((3, 8, 8)), series_uid="1.2.3.42", extra=window)
    ((data, kw, _),) = napari_get_reader(str(tmp_path / "lung"))(str(tmp_path / "lung"))
    assert kw["contrast_limits"] == pytest.approx((-1350.0, 150.0))
    viewer = make_napari_viewer()
    layer = viewer.add_image(data, **kw)
    room = ReadingRoom.install(viewer)
    room.apply_preset("bone", layer)
    room.apply_preset(SCAN_WINDOW, layer)
    assert tuple(layer.contrast_limits) == pytest.approx((-1350.0, 150.0))
    write_series(tmp_path / "plain", synthetic_hu((3, 8, 8)), series_uid="1.2.3.43")
    ((_, kw, _),) = napari_get_reader(str(tmp_path / "plain"))(str(tmp_path / "plain"))
    assert kw["contrast_limits"] == contrast_limits("soft tissue")


def test_claimed_but_broken_file_raises_naming_it(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    reader = napari_get_reader(str(bad))
    assert reader is not None
    with pytest.raises(ValueError, match="broken.dcm"):
        reader(str(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.dcm"]


def test_deeplesion_png_gives_image_and_shapes(tmp_path):
    png = tmp_path / "000001_01_01_109.png"
    write_png_hu(png, np.full((20, 30), 40.0))
    (tmp_path / "DL_info.csv").write_text(
        "File_name,Key_slice_index,Bounding_boxes,Spacing_mm_px_,Image_size,Coarse_lesion_type\n"
        '000001_01_01_109.png,109,"2, 3, 12, 9","0.8, 0.8, 5","30, 20",4\n'
    )
    layers = napari_get_reader(str(png))(str(png))
    (img, img_kw, t1), (shapes, sh_kw, t2) = layers
    assert (t1, t2) == ("image", "shapes")
    assert img_kw["scale"] == (0.8, 0.8) and sh_kw["scale"] == (0.8, 0.8)
    assert np.all(img == 40.0)
    # the table's 2,3,12,9 are 1-based pixel centres: 0-based centres 1,2,11,8, which is where napari draws the
    # corners (row, col) (layer_data: pixel i is centred at i)
    np.testing.assert_array_equal(shapes[0], [[2.0, 1.0], [2.0, 11.0], [8.0, 11.0], [8.0, 1.0]])
    assert sh_kw["shape_type"] == "rectangle" and sh_kw["features"]["label"] == ["liver"]
    # the annotations' name is not "<image> lesions", the detector's output layer (a run would land on "... [1]")
    assert sh_kw["name"] == f"{img_kw['name']} lesions (annotated)"


def test_array_files(tmp_path):
    hu = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 1000
    np.save(tmp_path / "v.npy", hu)
    np.savez(tmp_path / "v.npz", hu=hu, spacing=np.array([3.0, 0.5, 0.5]))
    np.savez(tmp_path / "one.npz", img=hu[0])
    tifffile.imwrite(tmp_path / "v.tif", hu, photometric="minisblack")
    for name, spacing in [("v.npy", (1, 1, 1)), ("v.npz", (3, 0.5, 0.5)), ("v.tif", (1, 1, 1))]:
        ((data, kw, kind),) = napari_get_reader(str(tmp_path / name))(str(tmp_path / name))
        assert kind == "image" and data.dtype == np.float32 and kw["scale"] == spacing
        assert kw.get("units") == (("mm",) * 3 if name == "v.npz" else None)  # an assumed 1 mm is napari's pixel
        np.testing.assert_array_equal(data, hu)
    np.testing.assert_array_equal(read_array(tmp_path / "one.npz").hu, hu[0])
    assert "no pixel spacing" in read_array(tmp_path / "v.tif").metadata["warnings"][0]
    assert read_array(tmp_path / "v.npz").metadata["warnings"] == []
    home = tmp_path / "home"
    home.mkdir()
    (home / "v.npz").write_bytes((tmp_path / "v.npz").read_bytes())
    with pytest.MonkeyPatch.context() as mp:  # "~/v.npz" in a script: the home folder's file
        mp.setenv("HOME", str(home))
        assert open_ct("~/v.npz")[0].spacing == (3.0, 0.5, 0.5)
    with pytest.raises(FileNotFoundError, match="no such user's home"):
        open_ct("~no-such-user-here/v.npz")


def test_written_arrays_keep_their_voxel_size(tmp_path):
    """``write_array``: .npz and TIFF come back with the voxel size they were written with (a 2D TIFF's also in
    its resolution tags, which other viewers read); never over an existing file."""
    import tifffile

    from napari_lidnet.io.arrays import write_array

    hu = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5) - 1000
    for name, data, spacing in [("v.npz", hu, (2.5, 0.66, 0.7)), ("v.tif", hu, (2.5, 0.66, 0.7)),
                                ("s.tif", hu[0], (0.66, 0.7))]:  # fmt: skip
        write_array(tmp_path / name, data, spacing)
        back = read_array(tmp_path / name)
        np.testing.assert_array_equal(back.hu, data)
        assert back.spacing == pytest.approx(spacing) and back.metadata["warnings"] == []
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        (xn, xd), (yn, yd) = tif.pages[0].tags["XResolution"].value, tif.pages[0].tags["YResolution"].value
    assert (10 * xd / xn, 10 * yd / yn) == pytest.approx((0.7, 0.66))
    tifffile.imwrite(tmp_path / "fiji.tif", hu[0], resolution=(10 / 0.5, 10 / 0.4), resolutionunit="CENTIMETER")
    assert read_array(tmp_path / "fiji.tif").spacing == pytest.approx((0.4, 0.5))  # another program's TIFF
    with pytest.raises(FileExistsError):
        write_array(tmp_path / "v.npz", hu, (1, 1, 1))
    before = sorted(tmp_path.iterdir())  # a name it cannot write, a voxel size that does not fit: nothing written
    with pytest.raises(ValueError, match=r"unsupported array file type '\.png'"):
        write_array(tmp_path / "v.png", hu, (2.5, 0.66, 0.7))
    with pytest.raises(ValueError, match=r"spacing \[1\.0, 2\.0\] must be 3 positive numbers"):
        write_array(tmp_path / "w.npz", hu, (1.0, 2.0))
    with pytest.raises(ValueError, match="must be 2 positive numbers"):
        write_array(tmp_path / "w.tif", hu[0], (0.7, -0.7))
    assert sorted(tmp_path.iterdir()) == before


def test_written_arrays_keep_the_patient_geometry_they_were_given(tmp_path):
    """Regression: a denoised DICOM series saved as .npz lost its origin and directions (no R/L letters,
    positions from 0). Written with them, .npz and TIFF give them back (the letters with them); a malformed
    direction is refused in one line; an array written without them still says nothing of the patient."""
    from napari_lidnet.io.arrays import write_array

    hu = np.arange(2 * 6 * 5, dtype=np.float32).reshape(2, 6, 5) - 1000
    feet_first = np.diag([-1.0, 1.0, -1.0])  # x to the patient's right, z towards the feet
    origin = (-120.5, 33.0, 71.25)
    for name in ("g.npz", "g.tif"):
        write_array(tmp_path / name, hu, (2.5, 0.66, 0.7), origin, feet_first)
        back = read_array(tmp_path / name)
        assert back.origin == pytest.approx(origin) and not back.metadata["orientation_unknown"]
        np.testing.assert_array_equal(back.direction, feet_first)
        np.testing.assert_allclose(back.affine(), CTVolume(hu, (2.5, 0.66, 0.7), origin, feet_first).affine())
    write_array(tmp_path / "plain.npz", hu, (2.5, 0.66, 0.7))
    assert read_array(tmp_path / "plain.npz").metadata["orientation_unknown"]
    np.savez(tmp_path / "skew.npz", hu=hu, spacing=[2.5, 0.66, 0.7], origin=origin, direction=np.ones((3, 3)))
    with pytest.raises(ValueError, match="skew.npz: origin .* must be 3 positions"):
        read_array(tmp_path / "skew.npz")
    tilt = np.radians(15)  # a gantry-tilted series' sheared axes must not be written and then refused
    tilted = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, np.sin(tilt)], [0.0, 0.0, np.cos(tilt)]])
    write_array(tmp_path / "tilt.tif", hu, (2.5, 0.66, 0.7), origin, tilted)
    np.testing.assert_allclose(read_array(tmp_path / "tilt.tif").direction, tilted)
    with pytest.raises(ValueError, match="both origin and direction"):
        write_array(tmp_path / "half.npz", hu, (2.5, 0.66, 0.7), origin)
    assert not (tmp_path / "half.npz").exists()


@pytest.mark.parametrize(("unit", "per_mm"), [("mm", 1.0), ("micron", 1e-3), ("cm", 10.0)])
def test_an_imagej_tiff_keeps_its_voxel_size(tmp_path, unit, per_mm):
    """Regression: a Fiji/ImageJ stack (pixel size in its resolution tags per its unit, slice spacing in its
    description) opened as 1 x 1 x 1 mm with "the file stores no pixel spacing"; a TIFF with images of other sizes
    opened the first without a word."""
    import tifffile

    hu = np.arange(3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5) - 1000
    size = np.array([2.5, 0.7, 0.6]) / per_mm  # z, y, x in the file's unit
    tifffile.imwrite(tmp_path / "fiji.tif", hu, imagej=True, resolution=(1 / size[2], 1 / size[1]),
                     metadata={"spacing": size[0], "unit": unit, "axes": "ZYX"})  # fmt: skip
    back = read_array(tmp_path / "fiji.tif")
    np.testing.assert_array_equal(back.hu, hu)
    assert back.spacing == pytest.approx((2.5, 0.7, 0.6), rel=1e-5) and not back.metadata["spacing_assumed"]
    assert back.metadata["warnings"] == []
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tw:
        tw.write(hu[0])
        tw.write(np.zeros((4, 4), np.float32))
    mixed = read_array(tmp_path / "mixed.tif")
    assert mixed.hu.shape == (6, 5) and "1 more of other sizes ((4, 4)), not read" in mixed.metadata["warnings"][0]


def test_bad_arrays_are_refused(tmp_path):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    np.save(tmp_path / "4d.npy", np.zeros((2, 2, 2, 2)))
    np.savez(tmp_path / "two.npz", a=np.zeros((2, 2)), b=np.zeros((2, 2)))
    np.savez(tmp_path / "sp.npz", hu=np.zeros((2, 2)), spacing=np.array([1.0, 1.0, 1.0]))
    np.savez(tmp_path / "inf.npz", hu=np.zeros((2, 2)), spacing=np.array([np.inf, 1.0]))  # made a 0-pixel view
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 8, 3), np.uint8), photometric="rgb")
    cases = {
        "s.npy": "dtype <U1 is not numbers in HU",
        "4d.npy": r"shape \(2, 2, 2, 2\); expected a 2D",
        "two.npz": ".npz has arrays .* name the HU array 'hu'",
        "sp.npz": "spacing .* must be 2 positive numbers",
        "inf.npz": r"spacing \[inf, 1.0\] must be 2 positive numbers",
        "rgb.tif": r"TIFF has colour samples \(RGB\); expected grayscale HU \(.* photometric='minisblack'\)",
    }
    for name, msg in cases.items():
        with pytest.raises(ValueError, match=f"{name}: {msg}"):
            read_array(tmp_path / name)


def test_boxes_shapes_round_trip():
    boxes = np.array([[3, 10.5, 4, 20, 9.5], [0, 1, 2, 3, 4]], np.float32)
    shapes = boxes_to_shapes(boxes, 3)
    assert shapes[0].shape == (4, 3)
    np.testing.assert_array_equal(shapes[0][:, 0], 3)
    np.testing.assert_array_equal(shapes_to_boxes(shapes), boxes)
    flat = boxes_to_shapes(boxes[:, 1:], 2)
    np.testing.assert_array_equal(shapes_to_boxes(flat)[:, 1:], boxes[:, 1:])
    assert boxes_to_shapes(np.zeros((0, 5)), 3) == []
    assert shapes_to_boxes([]).shape == (0, 5)
    with pytest.raises(ValueError, match="need the slice index"):
        boxes_to_shapes(boxes[:, 1:], 3)
    data, kw, kind = boxes_layer_tuple(boxes, 3, scores=[0.9, 0.2], scale=(2, 1, 1))
    assert kind == "shapes" and len(data) == 2 and list(kw["features"]["score"]) == [0.9, 0.2]


def test_real_viewer_layers_and_shapes_round_trip(make_napari_viewer, two_series_dir, tmp_path):
    from napari_lidnet._reader import read_ct

    viewer = make_napari_viewer()
    for data, kw, kind in read_ct(str(two_series_dir["root"])):
        getattr(viewer, f"add_{kind}")(data, **kw)
    img = viewer.layers["abdomen A"]
    assert img.data.shape == (4, 12, 10) and tuple(img.scale) == pytest.approx((2.5, 0.7, 0.8))
    boxes = np.array([[2, 1, 2, 5, 6]], np.float32)
    data, kw, _ = boxes_layer_tuple(boxes, 3, scale=img.scale, translate=img.translate)
    shapes = viewer.add_shapes(data, **kw)
    np.testing.assert_array_equal(shapes_to_boxes(shapes), boxes)


def test_list_of_dicom_files_is_one_series(two_series_dir):
    files = [str(f) for f in two_series_dir["files_a"][::-1]]
    reader = napari_get_reader(files)
    ((data, kw, kind),) = reader(files)
    np.testing.assert_array_equal(data, two_series_dir["hu_a"])
    assert kind == "image" and kw["scale"] == pytest.approx((2.5, 0.7, 0.8))


def test_files_opened_as_a_stack_in_napari_give_one_volume(make_napari_viewer, two_series_dir) -> None:
    """File > Open Files as Stack (what the README tells a reader who picks a series' files): one volume per series,
    through npe2 and napari's own open; a plain open of the same files gives each file on its own."""
    viewer = make_napari_viewer()
    files = [str(f) for f in two_series_dir["files_a"][::-1]]
    (layer,) = viewer.open(files, stack=True, plugin="napari-lidnet")
    np.testing.assert_array_equal(layer.data, two_series_dir["hu_a"])
    assert len(viewer.open(files, plugin="napari-lidnet")) == len(files)


def test_an_imagej_stack_of_1_mm_slices_keeps_its_pixel_size(tmp_path):
    """Regression: ImageJ writes no "spacing" line for a depth of 1 (its default): such a stack lost its
    0.7 mm pixels and read as 1 x 1 x 1 mm "assumed"."""
    import tifffile

    hu = np.zeros((3, 6, 5), np.float32) - 1000
    tifffile.imwrite(tmp_path / "fiji.tif", hu, imagej=True, resolution=(1 / 0.7, 1 / 0.7),
                     metadata={"unit": "mm", "axes": "ZYX"})  # fmt: skip
    back = read_array(tmp_path / "fiji.tif")
    assert back.spacing == pytest.approx((1.0, 0.7, 0.7), rel=1e-5) and not back.metadata["spacing_assumed"]


def test_a_volume_built_from_an_array_has_no_made_up_patient_position(tmp_path):
    """``CTVolume(hu, spacing)`` in a script: sizes in mm, but no patient coordinates from the made-up origin and
    directions (a box table had lps columns of a position nobody measured); a spacing that does not fit, one
    line."""
    import csv

    from napari_lidnet.io.boxes_io import write_volume_boxes
    from napari_lidnet.io.volume import CTVolume

    hu = np.full((2, 24, 32), 40.0, np.float32)
    meta = {"source": "mine"}
    vol = CTVolume(hu, (2.5, 0.7, 0.7), metadata=meta)
    assert vol.metadata["orientation_unknown"] is True and meta == {"source": "mine"}  # the caller's dict untouched
    box = np.array([[1, 2, 3, 9, 8, 0.9]])
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "b.csv", box, vol).open()))
    assert float(row["width_mm"]) == pytest.approx(7 * 0.7) and not any(k.startswith("lps_") for k in row), row
    placed = CTVolume(hu, (2.5, 0.7, 0.7), origin=(-40.0, -100.0, -120.0), direction=np.eye(3))
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "p.csv", box, placed).open()))
    assert "orientation_unknown" not in placed.metadata and float(row["lps_z_mm"]) == pytest.approx(-40.0 + 2.5)
    for bad in (0.75, (0.7, 0.7), (2.5, 0.7, -0.7), (2.5, float("nan"), 0.7)):
        with pytest.raises(ValueError, match="must be 3 positive numbers"):
            CTVolume(hu, bad)
