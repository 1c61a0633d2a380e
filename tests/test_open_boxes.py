"""Saved boxes opened again (the navigator's Open…, ``io.saved_boxes``): a review comes back with its statuses, a box
table of the Denoise dock or ``lidnet detect`` comes back to review, boxes find their slices by DICOM instance, and a
table of another image is refused in one line with nothing added (run under xvfb-run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_hu, write_series
from test_navigator import DETECTIONS, open_with_boxes

from napari_lidnet._widgets.navigator import LesionNavigatorWidget
from napari_lidnet.findings import read_findings
from napari_lidnet.io.boxes_io import write_boxes_csv, write_volume_boxes
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.saved_boxes import SavedBoxes, place_boxes, read_saved_boxes
from napari_lidnet.layer_data import volume_to_layer_tuple

SERIES = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    """A 5-slice DICOM CT (files in slice order), 0.7 x 0.8 mm pixels."""
    return write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=5), series_uid=SERIES)


def _review(viewer, widget, image, qtbot) -> None:
    """Accept finding 0, reject 1, edit 2 (its box made wider), draw a box the detector missed."""
    widget.accept(0)
    widget.reject(1)
    widget.edit(2)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    with qtbot.waitSignal(widget.review_changed):
        verts = np.array(reviewed.data[1])
        verts[1:3, 2] += 10
        reviewed.data = [reviewed.data[0], verts]
    with qtbot.waitSignal(widget.review_changed):
        reviewed.add_rectangles(np.array([[4, 2, 2], [4, 2, 9], [4, 9, 9], [4, 9, 2]]))


def _fields(rows: list[dict]) -> list[tuple]:
    """What a review says of each finding: slice, box, score, status (not the measures or ids)."""
    return [(str(r["slice"]), *(f"{float(r[k]):.2f}" for k in ("x1", "y1", "x2", "y2")), str(r["score"]),
             r["status"]) for r in rows]  # fmt: skip


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_review_reopens_with_its_statuses(make_napari_viewer, series, tmp_path, qtbot, suffix) -> None:
    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    _review(viewer, widget, image, qtbot)
    first = widget.export(tmp_path / f"review{suffix}")
    viewer.layers.remove(boxes)
    viewer.layers.remove(f"{image.name} reviewed")

    assert widget.open_boxes(first) == 4
    opened = viewer.layers[first.name]
    assert widget.boxes_layer == opened and widget.image_layer == image
    assert [f.status for f in widget.findings] == ["accepted", "rejected", "edited", "added"]
    assert "the saved review: 3 kept, 1 rejected, 0 pending" in widget.status.text()
    reviewed = viewer.layers[f"{image.name} reviewed"]
    assert list(reviewed.features["status"]) == ["accepted", "edited", "added"]
    np.testing.assert_allclose(opened.scale, image.scale)
    np.testing.assert_allclose(opened.translate, image.translate)
    again = widget.export(tmp_path / f"again{suffix}")
    a, b = read_findings(first), read_findings(again)
    assert _fields(b) == _fields(a)  # the same boxes, scores and statuses, written again
    assert [r["long_mm"] for r in b] == [r["long_mm"] for r in a]  # measured on the same pixels


def test_a_box_table_finds_its_slices_by_dicom_instance(make_napari_viewer, series, tmp_path) -> None:
    """A table written on the whole series, opened on the series without its first file: each box lands on its own
    instance (one slice lower), not on the slice of the same number."""
    vol = open_ct(series[0].parent)[0]
    table = write_volume_boxes(tmp_path / "ct.boxes.csv", DETECTIONS, vol)
    part = tmp_path / "part"
    part.mkdir()
    for f in series[1:]:
        shutil.copy(f, part / f.name)
    sub = open_ct(part)[0]
    viewer = make_napari_viewer()
    data, kwargs, _ = volume_to_layer_tuple(sub)
    image = viewer.add_image(data, **kwargs)
    widget = LesionNavigatorWidget(viewer)
    assert widget.open_boxes(table) == 3
    assert sorted(f.slice for f in widget.findings) == sorted(int(z) - 1 for z in DETECTIONS[:, 0])
    assert "placed by DICOM instance (3 on another slice number" in widget.status.text()
    scores = sorted(f.score for f in widget.findings)
    np.testing.assert_allclose(scores, sorted(DETECTIONS[:, 5]), atol=1e-4)
    for f in widget.findings:  # the same anatomy under each box
        src = next(r for r in DETECTIONS if int(r[0]) == f.slice + 1)
        x1, y1, x2, y2 = (int(v) for v in src[1:5])
        assert f.measures["mean_hu"] == pytest.approx(float(vol.hu[f.slice + 1, y1:y2, x1:x2].mean()), abs=1e-3)
        assert f.measures["mean_hu"] == pytest.approx(float(image.data[f.slice, y1:y2, x1:x2].mean()), abs=1e-3)


def test_another_images_table_is_refused(make_napari_viewer, series, tmp_path) -> None:
    vol = open_ct(series[0].parent)[0]
    other = write_series(tmp_path / "other", synthetic_hu((5, 24, 32), seed=6), series_uid=SERIES + "1")
    foreign = write_volume_boxes(tmp_path / "other.boxes.csv", DETECTIONS, open_ct(other[0].parent)[0])
    too_big = write_boxes_csv(tmp_path / "big.boxes.csv", np.array([[1, 30, 2, 60, 20, 0.5]]))
    too_deep = write_boxes_csv(tmp_path / "deep.boxes.csv", np.array([[7, 3, 2, 9, 8, 0.5]]))
    finer = write_boxes_csv(tmp_path / "fine.boxes.csv", DETECTIONS, pixel_mm=(0.35, 0.4))
    odd = tmp_path / "notes.csv"
    odd.write_text("name,value\na,1\n")
    viewer = make_napari_viewer()
    data, kwargs, _ = volume_to_layer_tuple(vol)
    viewer.add_image(data, **kwargs)
    widget = LesionNavigatorWidget(viewer)
    said = {
        foreign: "3 of 3 boxes lie on DICOM instances this image does not have",
        too_big: "beyond this 32 x 24 image",
        too_deep: "a box lies on slice 7 and this image has 5 slices",
        finer: "measured on other pixels: a box side of 4.00 mm in the table is 8.00 mm on this image (0.7 x 0.8 mm",
        odd: "notes.csv: not a box table or review of LIDnet (no column 'slice')",
        tmp_path / "none.csv": "cannot be read",
    }
    for path, words in said.items():
        assert widget.open_boxes(path) is None
        assert words in widget.status.text() and "\n" not in widget.status.text()
    assert len(viewer.layers) == 1  # nothing added


def test_an_image_under_review_is_not_opened_over(make_napari_viewer, series, tmp_path) -> None:
    vol = open_ct(series[0].parent)[0]
    table = write_volume_boxes(tmp_path / "ct.boxes.csv", DETECTIONS, vol)
    viewer = make_napari_viewer()
    widget, image, _ = open_with_boxes(viewer, vol)
    widget.accept(0)
    n = len(viewer.layers)
    assert widget.open_boxes(table) is None and "has a review in this viewer" in widget.status.text()
    assert "export it to keep it, then remove its reviewed layer" in widget.status.text()  # export alone lifts nothing
    assert len(viewer.layers) == n


def test_read_saved_boxes_formats(tmp_path) -> None:
    """Box tables (CSV, JSON, without scores), reviews; the pixel size a table was measured on."""
    rows = np.array([[0, 1, 2, 11, 7, 0.5], [2, 3, 3, 5, 9, np.nan]])
    saved = read_saved_boxes(write_boxes_csv(tmp_path / "a.boxes.csv", rows, pixel_mm=(0.6, 0.7)))
    np.testing.assert_allclose(saved.rows, rows)
    assert saved.statuses is None and saved.uids is None and saved.pixel_mm is None
    np.testing.assert_allclose(saved.sides_mm, [[7.0, 3.0], [1.4, 3.6]])  # x sides x 0.7, y sides x 0.6
    js = read_saved_boxes(write_boxes_csv(tmp_path / "a.json", rows[:, :5], about={"spacing_mm": [2.5, 0.6, 0.65]}))
    assert np.isnan(js.rows[:, 5]).all() and js.pixel_mm == pytest.approx(0.65)
    review = tmp_path / "r.json"
    review.write_text(json.dumps({"findings": [{"slice": 1, "x1": 1, "y1": 1, "x2": 4, "y2": 4, "score": None,
                                                "status": "added", "sop_instance_uid": "1.2"}]}))  # fmt: skip
    saved = read_saved_boxes(review)
    assert saved.statuses == ("added",) and saved.uids == ("1.2",)
    review.with_name("s.json").write_text(json.dumps({"findings": [{"slice": 1, "x1": 1, "y1": 1, "x2": 4, "y2": 4,
                                                                     "status": "maybe"}]}))  # fmt: skip
    with pytest.raises(ValueError, match="s.json: not a box table or review of LIDnet .status 'maybe'"):
        read_saved_boxes(review.with_name("s.json"))


def test_place_boxes_on_a_2d_image() -> None:
    """A 2D image is slice 0: a table of slice 0 fits, a table of slice 1 is another image's."""
    one = SavedBoxes(np.array([[0, 1, 1, 5, 5, 0.3]]), None, None, None, None)
    rows, note = place_boxes(one, (16, 16), {}, None)
    assert rows[0, 0] == 0 and note == "placed by slice number"
    two = SavedBoxes(np.array([[1, 1, 1, 5, 5, 0.3]]), None, None, None, None)
    with pytest.raises(ValueError, match="slice 1 and this image is one slice"):
        place_boxes(two, (16, 16), {}, None)


def test_a_reports_kept_boxes_reopen(make_napari_viewer, series, tmp_path, qtbot) -> None:
    """The review's DICOM SR holds the kept boxes only, each on its referenced instance: they come back kept, on
    their slices, with their scores; on an image without DICOM instances the report is refused."""
    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    _review(viewer, widget, image, qtbot)
    table = read_findings(widget.export(tmp_path / "review.csv"))
    report = widget.export(tmp_path / "review.dcm")
    viewer.layers.remove(boxes)
    viewer.layers.remove(f"{image.name} reviewed")

    assert widget.open_boxes(report) == 3
    assert [f.status for f in widget.findings] == ["accepted", "edited", "added"]
    kept = [r for r in table if r["status"] != "rejected"]
    assert [(str(f.slice), *(f"{v:.2f}" for v in f.bounds)) for f in widget.findings] == [
        (r["slice"], *(f"{float(r[k]):.2f}" for k in ("x1", "y1", "x2", "y2"))) for r in kept]
    assert [f.score for f in widget.findings][:2] == pytest.approx([float(r["score"]) for r in kept[:2]], abs=1e-4)
    assert widget.findings[2].score is None
    assert "placed by DICOM instance" in widget.status.text()

    data = np.array(image.data)
    data[0, 0, 0] += 2  # another image (the same pixels would be taken for the one under review)
    plain = viewer.add_image(data, name="no instances", scale=image.scale)
    widget.image_combo.setCurrentText(plain.name)
    n = len(viewer.layers)
    assert widget.open_boxes(report) is None and len(viewer.layers) == n
    assert "finds its boxes' slices by DICOM instance, and this image records none" in widget.status.text()
    with pytest.raises(ValueError, match=r"s\d+_\d+.dcm: not a LIDnet review report .not a structured report"):
        read_saved_boxes(series[0])


def _moved(vol, hu, origin_index, direction=None):
    """A CTVolume of ``hu`` whose voxel 0 lies where ``vol``'s index ``origin_index`` (z, y, x) does."""
    from napari_lidnet.io.volume import CTVolume

    lps = (vol.affine() @ np.array([*origin_index, 1.0]))[:3]
    return CTVolume(hu, vol.spacing, tuple(lps[::-1]), vol.direction if direction is None else direction)


def test_boxes_find_their_slices_by_patient_position(series, tmp_path) -> None:
    """A box table of a DICOM series opened on an image of the same patient without DICOM instances (a NIfTI of
    it): boxes go where their patient positions lie; an image one slice further along takes them one slice lower; an
    image stored with its columns the other way (the positions fall elsewhere on it) is refused."""
    vol = open_ct(series[0].parent)[0]
    saved = read_saved_boxes(write_volume_boxes(tmp_path / "ct.boxes.csv", DETECTIONS, vol))
    assert saved.centres_lps is not None
    same = {"affine_lps": vol.affine()}
    rows, note = place_boxes(saved, vol.hu.shape, same, vol.spacing[1:])
    assert note == "placed by patient position"
    np.testing.assert_allclose(rows, saved.rows)
    later = _moved(vol, vol.hu[1:], (1, 0, 0))
    rows, note = place_boxes(saved, later.hu.shape, {"affine_lps": later.affine()}, vol.spacing[1:])
    np.testing.assert_array_equal(rows[:, 0], DETECTIONS[:, 0] - 1)
    assert note == "placed by patient position (3 on another slice number than the table's)"
    direction = vol.direction.copy()
    direction[:, 0] *= -1  # x index runs the other way
    mirrored = _moved(vol, vol.hu[:, :, ::-1], (0, 0, vol.hu.shape[2] - 1), direction)
    with pytest.raises(ValueError, match="patient positions fall 14.0 px from them on this image"):
        place_boxes(saved, mirrored.hu.shape, {"affine_lps": mirrored.affine()}, vol.spacing[1:])
    far = _moved(vol, vol.hu, (40, 0, 0))
    with pytest.raises(ValueError, match=r"a box lies \d+.\d mm from the nearest slice of this image"):
        place_boxes(saved, far.hu.shape, {"affine_lps": far.affine()}, vol.spacing[1:])


def test_a_review_of_one_slice_reopens_on_its_volume(make_napari_viewer, series, tmp_path) -> None:
    """Regression: a review made on one slice of a NIfTI volume (a "current slice" run's layer) reopened on the
    whole volume landed on slice 0; its patient positions put it on slice 3."""
    from napari_lidnet.io.nifti import write_nifti
    from napari_lidnet.layer_data import metadata_for_slices

    nifti = open_ct(write_nifti(tmp_path / "ct.nii.gz", open_ct(series[0].parent)[0]))[0]
    one = _moved(nifti, nifti.hu[3:4], (3, 0, 0))
    one.metadata.update(metadata_for_slices(nifti.metadata, 3, 1), orientation_unknown=False, affine_lps=one.affine())
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, one, np.array([[0, 4, 6, 14, 11, 0.42]], np.float32))
    widget.accept(0)
    review = widget.export(tmp_path / "one.csv")
    assert read_findings(review)[0]["centre_space"] == "patient LPS"
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    data, kwargs, _ = volume_to_layer_tuple(nifti)
    viewer.add_image(data, **kwargs)
    assert widget.open_boxes(review) == 1
    assert widget.findings[0].slice == 3 and widget.findings[0].status == "accepted"
    assert "placed by patient position (1 on another slice number" in widget.status.text()


def test_deeplesion_slices_are_matched_by_their_numbers(tmp_path) -> None:
    """Two sub-volumes of one DeepLesion folder have the same size: a table of one is refused on the other."""
    table = write_boxes_csv(tmp_path / "dl.boxes.csv", np.array([[1, 3, 3, 9, 9, 0.6]]),
                            slices={"deeplesion_slice": [108, 109, 110]})  # fmt: skip
    saved = read_saved_boxes(table)
    assert saved.names == ("109",)
    files = {"format": "deeplesion", "files": [f"case/{k}.png" for k in (109, 110, 111)]}
    rows, note = place_boxes(saved, (3, 16, 16), files, None)
    assert rows[0, 0] == 0 and note.startswith("placed by DeepLesion slice number")
    other = {"format": "deeplesion", "files": [f"case/{k}.png" for k in (200, 201, 202)]}
    with pytest.raises(ValueError, match="1 of 1 boxes lie on DeepLesion slices this image does not have"):
        place_boxes(saved, (3, 16, 16), other, None)


def test_partly_recorded_instances(tmp_path) -> None:
    """Rows with an instance are matched by it (a foreign one refuses the table), rows without keep their slice."""
    table = tmp_path / "part.csv"
    table.write_text("slice,x1,y1,x2,y2,score,sop_instance_uid\n1,1,1,4,4,0.5,1.2.3\n2,1,1,4,4,0.5,\n")
    saved = read_saved_boxes(table)
    meta = {"sop_instance_uids": ["1.2.1", "1.2.2", "1.2.3"]}
    rows, _ = place_boxes(saved, (3, 8, 8), meta, None)
    assert rows[:, 0].tolist() == [2, 2]
    with pytest.raises(ValueError, match="1 of 1 boxes lie on DICOM instances this image does not have"):
        place_boxes(saved, (3, 8, 8), {"sop_instance_uids": ["9.1", "9.2", "9.3"]}, None)


@pytest.mark.parametrize(("text", "words"), [
    ("slice,x1,y1,x2,y2,score\n", "holds no boxes"),
    ('{"boxes": [{"slice": true, "x1": 1, "y1": 1, "x2": 4, "y2": 4}]}', "true/false where a number belongs"),
    ('{"boxes": [{"slice": 0, "x1": 1, "y1": 1, "x2": 4, "y2": 4, "frame_number": 1.7}]}', "1.7 where a whole"),
    ('{"findings": [{"slice": 0, "x1": 1, "y1": 1, "x2": 4, "y2": 4}, {"slice": 0, "x1": 1, "y1": 1, "x2": 4, '
     '"y2": 4, "status": "accepted"}]}', "a status on some rows only"),
    ("slice,x1,y1,x2,y2\n0,5,1,5,4\n", "a box without an area"),
])  # fmt: skip
def test_odd_tables_are_refused(tmp_path, text, words) -> None:
    path = tmp_path / ("t.json" if text.startswith("{") else "t.csv")
    path.write_text(text)
    with pytest.raises(ValueError, match=words):
        read_saved_boxes(path)


def test_a_table_saved_by_excel_reads(tmp_path) -> None:
    """A UTF-8 CSV with a byte-order mark (Excel's 'CSV UTF-8') was refused as having no 'slice' column."""
    path = tmp_path / "excel.csv"
    path.write_bytes("slice,x1,y1,x2,y2,score\r\n0,1,1,4,4,0.5\r\n".encode("utf-8-sig"))
    np.testing.assert_allclose(read_saved_boxes(path).rows, [[0, 1, 1, 4, 4, 0.5]])


def test_ids_and_lesion_numbers_come_back(make_napari_viewer, series, tmp_path, qtbot) -> None:
    """A report that cites "finding 12, lesion 5" still finds them: the ids and lesion numbers of the file stay."""
    import csv

    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    _review(viewer, widget, image, qtbot)
    rows = read_findings(widget.export(tmp_path / "review.csv"))
    for row, fid, lesion in zip(rows, (3, 12, 7, 20), (5, 9, 2, 4)):  # as an older session numbered them
        row["id"], row["lesion"] = fid, lesion
    edited = tmp_path / "edited.csv"
    with edited.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    viewer.layers.remove(boxes)
    viewer.layers.remove(f"{image.name} reviewed")
    assert widget.open_boxes(edited) == 4
    again = read_findings(widget.export(tmp_path / "again.csv"))
    assert [(r["id"], r["lesion"], r["status"]) for r in again] == [
        ("3", "5", "accepted"), ("7", "2", "edited"), ("12", "9", "rejected"), ("20", "4", "added")]
    assert sorted(viewer.layers[f"{image.name} reviewed"].features["finding"]) == [3, 7, 20]


def test_a_review_on_other_pixels_and_an_image_with_rejections(make_napari_viewer, series, tmp_path) -> None:
    """A CSV review of an image without DICOM instances is refused on an image of the same matrix with other
    pixels (its box sides in mm differ); an image whose review so far only rejected boxes is under review too; a
    table without boxes adds nothing."""
    from napari_lidnet.io.volume import CTVolume

    vol = open_ct(series[0].parent)[0]
    vol = CTVolume(vol.hu, vol.spacing)  # an array: no instances, no patient geometry
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    widget.accept(0)
    review = widget.export(tmp_path / "review.csv")
    other = viewer.add_image(np.asarray(image.data)[:, ::-1], name="other scan", scale=(2.5, 0.5, 0.5))
    widget.image_combo.setCurrentText(other.name)
    assert widget.open_boxes(review) is None
    assert "measured on other pixels: a box side of 8.00 mm in the table is 5.00 mm on this image" in \
        widget.status.text()

    viewer.layers.remove(f"{image.name} reviewed")
    widget.load(boxes, image)
    widget.reject(1)  # its reviewed layer: no boxes, one rejection
    widget.image_combo.setCurrentText(image.name)
    assert widget.open_boxes(review) is None and "has a review in this viewer" in widget.status.text()
    empty = write_boxes_csv(tmp_path / "none.boxes.csv", np.zeros((0, 6)))
    n = len(viewer.layers)
    widget.image_combo.setCurrentText(other.name)
    assert widget.open_boxes(empty) is None and widget.status.text() == "not opened: none.boxes.csv holds no boxes"
    assert len(viewer.layers) == n


def test_reviews_of_turned_boxes_and_recist_diameters_reopen(make_napari_viewer, series, tmp_path) -> None:
    """Regression: the pixel-size check compared a review's long/short sides with its bounds, refusing a review on
    its own image where they differ: a box turned on the lesions layer (still pending), DeepLesion's boxes (long and
    short are the RECIST diameters). Reviews now record their bounds' sides (width_mm, height_mm) for the check."""
    from napari_lidnet.io.volume import CTVolume
    from napari_lidnet.layer_data import volume_layer_tuples

    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    turn = np.radians(30)
    verts = np.array(boxes.data[0])
    centre = verts[:, 1:].mean(axis=0)
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    verts[:, 1:] = (verts[:, 1:] - centre) @ rot.T + centre
    boxes.data = [verts, *boxes.data[1:]]
    widget.load(boxes, image)
    review = widget.export(tmp_path / "turned.csv")
    turned = [r for r in read_findings(review) if r["slice"] == "1"]  # its sides are not its bounds' sides
    assert len(turned) == 1 and abs(float(turned[0]["long_mm"]) - float(turned[0]["width_mm"])) > 1
    viewer.layers.remove(boxes)
    assert widget.open_boxes(review) == 3, widget.status.text()

    viewer = make_napari_viewer()
    flat = CTVolume(vol.hu[2], vol.spacing[1:], boxes=np.array([[0, 4, 4, 14, 12]], float),
                    metadata={"recist_mm": [[5.0, 3.5]]})  # fmt: skip
    for data, kwargs, kind in volume_layer_tuples(flat):
        viewer._add_layer_from_data(data, kwargs, kind)
    image, annotated = viewer.layers
    widget = LesionNavigatorWidget(viewer)
    widget.load(annotated, image)
    widget.accept(widget.findings[0].id)
    review = widget.export(tmp_path / "recist.csv")
    assert read_findings(review)[0]["long_mm"] == "5.0"
    viewer.layers.remove(annotated)
    viewer.layers.remove(f"{image.name} reviewed")
    assert widget.open_boxes(review) == 1, widget.status.text()


def test_patient_positions_of_a_table_naming_instances(series, tmp_path) -> None:
    """A box whose corner was dragged (its centre the corners' mean, off its bounds' centre) still finds its slice
    by position; a table that names DICOM instances but gives no positions is refused on an image without instances
    (its slice numbers were those of another file's order)."""
    import csv

    vol = open_ct(series[0].parent)[0]
    table = write_volume_boxes(tmp_path / "ct.boxes.csv", DETECTIONS, vol)
    with table.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["lps_x_mm"] = str(float(rows[0]["lps_x_mm"]) + 1.5 * vol.spacing[2])  # 1.5 px off a 10 px box
    dragged = SavedBoxes(read_saved_boxes(table).rows, centres_lps=np.array(
        [[float(r[k]) for k in ("lps_x_mm", "lps_y_mm", "lps_z_mm")] for r in rows]))  # fmt: skip
    placed, note = place_boxes(dragged, vol.hu.shape, {"affine_lps": vol.affine()}, None)
    assert note == "placed by patient position" and placed[:, 0].tolist() == DETECTIONS[:, 0].tolist()
    named = SavedBoxes(read_saved_boxes(table).rows, uids=read_saved_boxes(table).uids)
    with pytest.raises(ValueError, match="finds its boxes' slices by DICOM instance, and this image records none"):
        place_boxes(named, vol.hu.shape, {"affine_lps": vol.affine()}, None)


def _turn(verts: np.ndarray, degrees: float) -> np.ndarray:
    """A rectangle's (z, y, x) vertices turned in-plane about its centre."""
    out = np.array(verts, dtype=float)
    a = np.radians(degrees)
    centre = out[:, 1:].mean(axis=0)
    out[:, 1:] = (out[:, 1:] - centre) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + centre
    return out


@pytest.mark.parametrize("suffix", [".json", ".dcm"])
def test_a_turned_box_reopens_turned(make_napari_viewer, series, tmp_path, qtbot, suffix) -> None:
    """Regression: a box turned on the reviewed layer to measure a lesion's axes reopened as the upright box around
    it, its long/short axes grown (and written so at the next export). The JSON and the SR keep its corners; an SR
    keeps its lesion numbers too."""
    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, vol)
    widget.accept(0)
    widget.accept(1)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    with qtbot.waitSignal(widget.review_changed):
        reviewed.data = [_turn(reviewed.data[0], 30), reviewed.data[1]]
    turned = widget.finding(0)
    assert turned.status == "edited"
    axes = (turned.measures["long_mm"], turned.measures["short_mm"])
    lesions = dict(widget.lesion_numbers())
    saved = widget.export(tmp_path / f"review{suffix}")
    viewer.layers.remove(boxes)
    viewer.layers.remove(reviewed)
    assert widget.open_boxes(saved) is not None, widget.status.text()
    back = next(f for f in widget.findings if f.status == "edited")
    assert (back.measures["long_mm"], back.measures["short_mm"]) == pytest.approx(axes, abs=0.02)
    numbers = widget.lesion_numbers()
    assert sorted((f.slice, numbers[f.id]) for f in widget.findings if f.kept) == [(1, lesions[0]), (3, lesions[1])]


def test_a_report_of_an_image_without_instances_says_so(make_napari_viewer, series, tmp_path) -> None:
    """Regression: the SR of a review on an image without DICOM instances (an array, the sample, a NIfTI) was
    refused as "not a LIDnet review report"; it is one that references no instances: its CSV or JSON reopens."""
    from napari_lidnet.io.volume import CTVolume

    vol = open_ct(series[0].parent)[0]
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, CTVolume(vol.hu, vol.spacing))
    widget.accept(0)
    report, table = widget.export(tmp_path / "review.dcm"), widget.export(tmp_path / "review.csv")
    viewer.layers.remove(boxes)
    viewer.layers.remove(f"{image.name} reviewed")
    assert widget.open_boxes(report) is None
    assert widget.status.text() == ("not opened: review.dcm references no DICOM instances (a report of an image "
                                    "without them): open the review's CSV or JSON instead")  # fmt: skip
    assert widget.open_boxes(table) == 3  # every row: one accepted, two to decide
