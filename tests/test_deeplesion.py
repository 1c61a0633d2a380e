"""DeepLesion key slices: 16-bit PNG + DL_info.csv rows -> 2D/3D CTVolume with boxes and spacing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import HEADER, _row, listing
from PIL import Image

from napari_lidnet.io.deeplesion import read_deeplesion_folder, read_deeplesion_slice, read_info_table, table_file_name
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.png16 import write_png_hu


def test_table_name_and_parse(deeplesion_tree):
    root, series, _ = deeplesion_tree
    assert table_file_name(series / "109.png") == "000001_01_01_109.png"
    assert table_file_name(root / "flat_name.png") == "flat_name.png"
    table = read_info_table(root / "DL_info.csv")
    rows = table["000001_01_01_109.png"]
    # the table's coordinates are 1-based pixel centres: 0.5 px lower as 0-based pixel edges
    assert len(rows) == 2 and rows[0].box == (3.0, 4.0, 9.75, 11.5) and rows[0].spacing_xyz == (0.7, 0.7, 5.0)
    assert rows[1].lesion_type == 5 and rows[0].windows == (-175.0, 275.0) and rows[0].image_size == (32, 24)


def test_key_slice_with_boxes_and_spacing(deeplesion_tree):
    root, series, hus = deeplesion_tree
    before = listing(root)
    vol = read_deeplesion_slice(series / "109.png")  # table found two folders up
    np.testing.assert_array_equal(vol.hu, hus[109])
    assert vol.spacing == (0.7, 0.7)
    np.testing.assert_array_equal(vol.boxes, [[0, 3.0, 4.0, 9.75, 11.5], [0, 19.5, 1.5, 29.5, 7.5]])
    assert vol.metadata["lesion_types"] == ["liver", "lung"]
    assert vol.metadata["warnings"] == []
    assert listing(root) == before


def test_non_key_slice_takes_series_spacing_without_boxes(deeplesion_tree):
    root, series, hus = deeplesion_tree
    vol = read_deeplesion_slice(series / "110.png", info_csv=root / "DL_info.csv")
    assert vol.spacing == (0.7, 0.7) and vol.boxes.shape == (0, 5)


def test_folder_stack_puts_boxes_on_key_slice(deeplesion_tree):
    root, series, hus = deeplesion_tree
    (vol,) = read_deeplesion_folder(series)
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
        read_info_table(bad)
    bad.write_text(HEADER + _row("x.png", 1, "1, 2, 3, 4").replace(",1,1,1,1,", ",1,1,1,abc,", 1))  # named column
    with pytest.raises(ValueError, match=r"line 2: Key_slice_index 'abc' is not a number"):
        read_info_table(bad)


@pytest.mark.parametrize(
    ("field", "row", "says"),
    [("spacing", _row("x.png", 1, "1, 2, 3, 4", spacing="0, 0, 0"), "Spacing_mm_px_ '0, 0, 0' is not 3 positive"),
     ("interval", _row("x.png", 1, "1, 2, 3, 4", spacing="0.7, 0.7, -2.5"), "is not 3 positive numbers"),
     ("box", _row("x.png", 1, "1, nan, 3, 4"), "Bounding_boxes '1, nan, 3, 4' is not 4 finite"),
     ("order", _row("x.png", 1, "9, 2, 3, 4"), "(x1 <= x2)")],
)  # fmt: skip
def test_a_table_value_that_is_no_size_or_box_is_refused_in_one_line(tmp_path, field, row, says):
    """Regression: a spacing of 0 raised in napari's layer ("scale values of 0") without naming the table; a
    negative slice interval mirrored z; a box with nan drew a rectangle with NaN corners. Each is now the table's
    line, refused where the table is indexed; a table saved as UTF-16 is named with what to do. The viewer (so that one
    typo anywhere does not make every slice of the archive fail to open) leaves that row out, with a note."""
    png16 = tmp_path / "x.png"
    write_png_hu(png16, np.zeros((4, 4)))
    (tmp_path / "DL_info.csv").write_text(HEADER + row + _row("y.png", 1, "1, 2, 3, 4"))
    with pytest.raises(ValueError, match=rf"DL_info.csv, line 2: .*{re.escape(says)}"):
        read_info_table(tmp_path / "DL_info.csv")
    left_out = rf"1 row\(s\) could not be read and were left out \(line 2: .*{re.escape(says)}"
    with pytest.warns(UserWarning, match=left_out):
        vol = read_deeplesion_slice(png16)
    assert len(vol.boxes) == 0 and vol.metadata["spacing_assumed"]
    (tmp_path / "DL_info.csv").write_text(HEADER + _row("x.png", 1, "1, 2, 3, 4"), encoding="utf-16")
    with pytest.raises(ValueError, match="DL_info.csv: not UTF-8 text .*save the table as UTF-8 CSV"):
        read_deeplesion_slice(png16)


def test_a_key_slice_opens_at_the_tables_window(deeplesion_tree):
    """DL_info.csv's DICOM_windows (low, high HU) is the window the slice opens at, as a DICOM's own window is."""
    from napari_lidnet.layer_data import volume_to_layer_tuple

    _, series, _ = deeplesion_tree
    _, kwargs, _ = volume_to_layer_tuple(read_deeplesion_slice(series / "109.png"))
    assert tuple(kwargs["contrast_limits"]) == pytest.approx((-175.0, 275.0))


def test_official_split_column_selects_rows(deeplesion_tree):
    """Train_Val_Test (1 train, 2 validation, 3 test) is read and honoured by the table and the readers."""
    root, series, _ = deeplesion_tree
    table = root / "DL_info.csv"
    text = table.read_text().splitlines()
    text[2] = text[2][:-1] + "3"  # the second lesion of slice 109 belongs to the test part
    table.write_text("\n".join(text) + "\n")
    everything = read_info_table(table)
    assert [r.split for r in everything["000001_01_01_109.png"]] == [1, 3]
    train = read_info_table(table, split="train")
    assert [r.box for r in train["000001_01_01_109.png"]] == [(3.0, 4.0, 9.75, 11.5)]
    assert [r.box for r in read_info_table(table, split="test")["000001_01_01_109.png"]] == [(19.5, 1.5, 29.5, 7.5)]
    assert read_info_table(table, split="val") == {} and read_info_table(table, split="all") == everything
    test_boxes = read_deeplesion_slice(series / "109.png", split="test").boxes
    np.testing.assert_array_equal(test_boxes, [[0, 19.5, 1.5, 29.5, 7.5]])
    assert len(read_deeplesion_folder(series, split="train")[0].boxes) == 1
    assert len(read_deeplesion_slice(series / "109.png").boxes) == 2  # the viewer shows every annotation
    with pytest.raises(ValueError, match="split"):
        read_info_table(table, split="holdout")
    table.write_text(HEADER.replace(",Train_Val_Test", "") + _row("x.png", 1, "1, 2, 3, 4").rsplit(",", 1)[0] + "\n")
    with pytest.raises(ValueError, match="no Train_Val_Test column"):
        read_info_table(table, split="test")


def test_sub_volumes_noisy_rows_and_a_missing_table(tmp_path):
    """A series folder holding two sub-volumes (103-105 and 150-151, 225 mm apart at 5 mm) opens as two volumes,
    not one stack that puts them 5 mm apart; a Possibly_noisy lesion is shown marked and left out of the training
    index; a slice without any DL_info.csv says its 1 mm spacing is assumed."""
    from napari_lidnet.datasets.manifest import index_archive, read_header

    root = tmp_path / "DL"
    series = root / "Images_png" / "000002_01_01"
    series.mkdir(parents=True)
    for k in (103, 104, 105, 150, 151):
        write_png_hu(series / f"{k}.png", np.full((24, 32), float(k)))
    noisy = _row("000002_01_01_150.png", 150, "5, 5, 15, 15").replace(",4,0,", ",4,1,")  # Possibly_noisy 1
    (root / "DL_info.csv").write_text(HEADER + _row("000002_01_01_104.png", 104, "3, 4, 10, 12") + noisy)
    with pytest.warns(UserWarning, match="2 sub-volumes"):
        first, second = read_deeplesion_folder(series)
    assert first.hu.shape[0] == 3 and second.hu.shape[0] == 2 and np.all(second.hu[0] == 150)
    with pytest.warns(UserWarning):
        (picked,) = open_ct(series, series_uid="000002_01_01 150-151")  # what lidnet --series KEY asks
    np.testing.assert_array_equal(picked.hu, second.hu)
    assert second.metadata["lesion_types"] == ["liver (possibly noisy)"] and first.metadata["lesion_types"] == ["liver"]
    out = index_archive(root, tmp_path / "m.jsonl")
    assert read_header(out)["n"] == 1 and any("Possibly_noisy" in s for s in read_header(out)["skipped"])
    lone = tmp_path / "lone" / "7.png"
    lone.parent.mkdir()
    write_png_hu(lone, np.zeros((8, 8)))
    with pytest.warns(UserWarning, match="no DL_info.csv beside it or above; spacing unknown"):
        assert read_deeplesion_slice(lone).metadata["spacing_assumed"]


def test_a_linked_image_folder_and_a_neighbour_slice_keep_the_archives_table(deeplesion_tree, tmp_path):
    """Regression: an Images_png linked in from another disk opened at 1 mm without boxes or window
    ("no DL_info.csv beside it or above": the search began at the link's target); a neighbour slice took its
    series' spacing but not its window."""
    root, series, hus = deeplesion_tree
    project = tmp_path / "project"
    project.mkdir()
    (project / "DL_info.csv").write_text((root / "DL_info.csv").read_text())
    store = tmp_path / "store"
    (root / "DL_info.csv").rename(tmp_path / "away.csv")  # the images' own disk holds no table
    store.mkdir()
    (root / "Images_png").rename(store / "Images_png")
    (project / "Images_png").symlink_to(store / "Images_png")
    vol = read_deeplesion_slice(project / "Images_png" / "000001_01_01" / "109.png")
    assert vol.spacing == (0.7, 0.7) and len(vol.boxes) == 2 and vol.metadata["table"].startswith(str(project))
    neighbour = read_deeplesion_slice(project / "Images_png" / "000001_01_01" / "110.png")
    assert neighbour.spacing == (0.7, 0.7) and neighbour.metadata["window"] == [50.0, 450.0]


def test_the_archive_its_table_and_images_folder_say_what_to_open(deeplesion_tree):
    """Regression: opening DL_info.csv, the archive or Images_png said "not a CT file" / "no DICOM
    files", with no next step."""
    root, series, _ = deeplesion_tree
    for path in (root / "DL_info.csv", root, root / "Images_png"):
        with pytest.raises(ValueError) as err:
            open_ct(path)
        text = str(err.value)
        assert "a DeepLesion archive; open one series folder under Images_png" in text and "\n" not in text, text
        assert str(series) in text and "lidnet index" in text
    alone = root.parent / "copy"
    alone.mkdir()
    (alone / "DL_info.csv").write_text((root / "DL_info.csv").read_text())  # the table without its images
    with pytest.raises(ValueError, match="DeepLesion's lesion table, without its Images_png beside it"):
        open_ct(alone / "DL_info.csv")
