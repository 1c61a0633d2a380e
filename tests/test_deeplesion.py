"""DeepLesion key slices: 16-bit PNG + DL_info.csv rows -> 2D/3D CTVolume with boxes and spacing."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HEADER, _row, listing
from PIL import Image

from napari_lidnet.io.deeplesion import read_deeplesion_folder, read_deeplesion_slice, read_info_table, table_file_name
from napari_lidnet.io.png16 import write_png_hu


def test_table_name_and_parse(deeplesion_tree):
    root, series, _ = deeplesion_tree
    assert table_file_name(series / "109.png") == "000001_01_01_109.png"
    assert table_file_name(root / "flat_name.png") == "flat_name.png"
    table = read_info_table(root / "DL_info.csv")
    rows = table["000001_01_01_109.png"]
    assert len(rows) == 2 and rows[0].box == (3.5, 4.5, 10.25, 12.0) and rows[0].spacing_xyz == (0.7, 0.7, 5.0)
    assert rows[1].lesion_type == 5 and rows[0].windows == (-175.0, 275.0) and rows[0].image_size == (32, 24)


def test_key_slice_with_boxes_and_spacing(deeplesion_tree):
    root, series, hus = deeplesion_tree
    before = listing(root)
    vol = read_deeplesion_slice(series / "109.png")  # table found two folders up
    np.testing.assert_array_equal(vol.hu, hus[109])
    assert vol.spacing == (0.7, 0.7)
    np.testing.assert_array_equal(vol.boxes, [[0, 3.5, 4.5, 10.25, 12.0], [0, 20, 2, 30, 8]])
    assert vol.metadata["lesion_types"] == ["liver", "lung"]
    assert vol.metadata["warnings"] == []
    assert listing(root) == before


def test_non_key_slice_takes_series_spacing_without_boxes(deeplesion_tree):
    root, series, hus = deeplesion_tree
    vol = read_deeplesion_slice(series / "110.png", info_csv=root / "DL_info.csv")
    assert vol.spacing == (0.7, 0.7) and vol.boxes.shape == (0, 5)


def test_folder_stack_puts_boxes_on_key_slice(deeplesion_tree):
    root, series, hus = deeplesion_tree
    vol = read_deeplesion_folder(series)
    np.testing.assert_array_equal(vol.hu, np.stack([hus[108], hus[109], hus[110]]))
    assert vol.spacing == (5.0, 0.7, 0.7)
    np.testing.assert_array_equal(vol.boxes[:, 0], [1, 1])


def test_unknown_file_warns_and_assumes_1mm(deeplesion_tree, tmp_path):
    root, _, hus = deeplesion_tree
    other = tmp_path / "other.png"
    write_png_hu(other, hus[108])
    with pytest.warns(UserWarning, match="no row for 'other.png'"):
        vol = read_deeplesion_slice(other, info_csv=root / "DL_info.csv")
    assert vol.spacing == (1.0, 1.0) and vol.boxes.shape == (0, 5)


def test_eight_bit_png_and_bad_table_are_refused(tmp_path):
    png8 = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png8)
    with pytest.raises(ValueError, match="photo.png: PNG mode 'L'.*not a 16-bit grayscale CT slice"):
        read_deeplesion_slice(png8)
    bad = tmp_path / "DL_info.csv"
    bad.write_text("a,b\n1,2\n")
    png16 = tmp_path / "x.png"
    write_png_hu(png16, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="DL_info.csv: not a DeepLesion table"):
        read_deeplesion_slice(png16)
    bad.write_text(HEADER + _row("x.png", 1, "1, 2, 3"))
    with pytest.raises(ValueError, match=r"DL_info.csv, line 2: Bounding_boxes"):
        read_deeplesion_slice(png16)
