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
        finer: "measured on 0.4 mm pixels and this image has 0.8 mm",
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
    assert len(viewer.layers) == n


def test_read_saved_boxes_formats(tmp_path) -> None:
    """Box tables (CSV, JSON, without scores), reviews; the pixel size a table was measured on."""
    rows = np.array([[0, 1, 2, 11, 7, 0.5], [2, 3, 3, 5, 9, np.nan]])
    saved = read_saved_boxes(write_boxes_csv(tmp_path / "a.boxes.csv", rows, pixel_mm=(0.6, 0.7)))
    np.testing.assert_allclose(saved.rows, rows)
    assert saved.statuses is None and saved.uids is None and saved.pixel_mm == pytest.approx(0.7, rel=1e-3)
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
    assert "finds its boxes' slices by DICOM instance and this image records none" in widget.status.text()
    with pytest.raises(ValueError, match=r"s\d+_\d+.dcm: not a LIDnet review report .not a structured report"):
        read_saved_boxes(series[0])
