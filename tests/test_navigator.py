"""The lesion navigator in a headless viewer (run under xvfb-run): the detector's boxes as a sortable table with
sizes in mm, a click jumps to the box, accept / reject / edit, the reviewed layer, CSV / JSON / DICOM SR exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import synthetic_hu, write_series
from qtpy.QtCore import Qt

from napari_lidnet._widgets._box_style import box_style
from napari_lidnet._widgets.navigator import COLUMNS, LesionNavigatorWidget
from napari_lidnet.findings import read_findings
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.layer_data import boxes_to_shapes, volume_to_layer_tuple

COL = {key: i for i, (key, _) in enumerate(COLUMNS)}
#: slice, x1, y1, x2, y2, score
DETECTIONS = np.array([[1, 4, 6, 14, 11, 0.42], [3, 20, 2, 26, 14, 0.91], [2, 8, 8, 12, 12, 0.15]], np.float32)


def open_with_boxes(viewer, vol, detections: np.ndarray = DETECTIONS) -> tuple:
    """``vol`` as an image layer of ``viewer``, a docked navigator, and ``detections`` as its detector's boxes."""
    data, kwargs, _ = volume_to_layer_tuple(vol)
    image = viewer.add_image(data, **kwargs)
    widget = LesionNavigatorWidget(viewer)
    viewer.window.add_dock_widget(widget, area="bottom")
    boxes = viewer.add_shapes(
        boxes_to_shapes(detections[:, :5], 3),
        shape_type="rectangle",
        name=f"{image.name} lesions",
        scale=image.scale,
        translate=image.translate,
        features={"score": detections[:, 5]},
        metadata={"lidnet_role": "detections", "lidnet": {"source_layer": image.name, "detector": "tiny"}},
    )
    return widget, image, boxes


@pytest.fixture
def case(make_napari_viewer, tmp_path: Path):
    """A 5-slice DICOM CT (0.7 x 0.8 mm pixels, 2.5 mm slices) and the detector's boxes on it."""
    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=3), series_uid="1.2.826.0.1.3680043.8.498.55")
    vol = open_ct(tmp_path / "ct")[0]
    viewer = make_napari_viewer()
    return viewer, *open_with_boxes(viewer, vol), vol


def cell(widget, row: int, key: str):
    return widget.table.item(row, COL[key]).data(Qt.ItemDataRole.UserRole)


def test_table_sizes_sorting_and_jump(case) -> None:
    viewer, widget, image, boxes, vol = case
    assert widget.boxes_layer is boxes and widget.image_layer is image  # a new detection run is loaded by itself
    assert widget.table.rowCount() == 3 and widget.boxes_combo.currentText() == boxes.name
    first = widget.finding(0)
    assert first.slice == 1 and first.status == "pending" and first.score == pytest.approx(0.42)
    # 10 columns x 0.8 mm = 8 mm long, 5 rows x 0.7 mm = 3.5 mm short; mean HU inside the box
    assert first.measures["long_mm"] == pytest.approx(8.0) and first.measures["short_mm"] == pytest.approx(3.5)
    assert first.measures["mean_hu"] == pytest.approx(float(vol.hu[1, 6:11, 4:14].mean()), abs=1e-3)
    assert first.measures["centre_z_mm"] == pytest.approx(image.data_to_world((1, 8.5, 9))[0])
    row = widget.row_ids().index(0)  # the slice's InstanceNumber beside its index (the series counts down: 5..1)
    assert widget.table.item(row, COL["slice"]).text() == f"1 ({vol.metadata['instance_numbers'][1]})" == "1 (4)"

    widget.table.sortItems(COL["score"], Qt.SortOrder.DescendingOrder)
    assert widget.row_ids() == [1, 0, 2]
    widget.table.sortItems(COL["long_mm"], Qt.SortOrder.AscendingOrder)  # numbers sort as numbers
    assert [cell(widget, r, "long_mm") for r in range(3)] == sorted(cell(widget, r, "long_mm") for r in range(3))

    widget.table.setCurrentCell(widget.row_ids().index(1), 0)  # a click on a row: jump there
    assert viewer.dims.current_step[0] == 3
    centre = image.data_to_world((3, 7.5, 22.5))  # box edges 2..14 x 20..26: centre pixel (7.5, 22.5)
    np.testing.assert_allclose(viewer.camera.center[-2:], centre[-2:], atol=1e-6)
    viewer.dims.order = (1, 0, 2)  # a coronal view: the y slider moves to the box, the camera centres on (z, x)
    widget.select(0)
    centre = np.asarray(image.data_to_world((1, 8.0, 8.5)))  # box edges 6..11 x 4..14: centre pixel (8, 8.5)
    assert viewer.dims.current_step[1] == 8
    np.testing.assert_allclose(viewer.camera.center[-2:], centre[[0, 2]], atol=1e-6)
    viewer.dims.order, viewer.dims.ndisplay = (0, 1, 2), 3  # 3D: the camera centres on the box
    widget.select(1)
    np.testing.assert_allclose(viewer.camera.center, image.data_to_world((3, 7.5, 22.5)), atol=1e-6)


def test_accept_reject_edit_and_exports(case, tmp_path: Path, qtbot) -> None:
    viewer, widget, image, boxes, vol = case
    widget.select(0)
    widget.accept()
    reviewed = viewer.layers[f"{image.name} reviewed"]
    assert reviewed.metadata["lidnet_role"] == "reviewed" and reviewed.nshapes == 1
    assert widget.current_id() != 0 and widget.finding(widget.current_id()).status == "pending"  # moved on
    widget.reject(1)
    widget.edit(2)
    assert reviewed.nshapes == 2 and viewer.layers.selection.active is reviewed
    assert reviewed.mode == "select" and reviewed.selected_data == {1}
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "rejected", "accepted"]

    # the reader drags the edited box wider and draws a box the detector missed
    with qtbot.waitSignal(widget.review_changed):
        verts = np.array(reviewed.data[1])
        verts[1:3, 2] += 10  # x2 from 12 to 22
        reviewed.data = [reviewed.data[0], verts]
    assert widget.finding(2).status == "edited" and widget.finding(2).measures["long_mm"] == pytest.approx(11.2)
    with qtbot.waitSignal(widget.review_changed):
        reviewed.add_rectangles(np.array([[4, 2, 2], [4, 2, 9], [4, 9, 9], [4, 9, 2]]))
    added = widget.finding(3)
    assert added.status == "added" and added.slice == 4 and added.score is None
    assert list(reviewed.features["status"]) == ["accepted", "edited", "added"]
    assert widget.table.rowCount() == 4

    rows = read_findings(widget.export(tmp_path / "review.csv"))
    assert [r["status"] for r in rows] == ["accepted", "rejected", "edited", "added"]
    assert float(rows[0]["long_mm"]) == pytest.approx(8.0)
    assert rows[0]["score"] == "0.42" and rows[3]["score"] in ("", None)  # rounded as the other columns; drawn: none
    js = read_findings(widget.export(tmp_path / "review.json"))
    assert js[2]["x2"] == pytest.approx(22.0)
    assert widget.export(tmp_path / "review.json") is None and "exists" in widget.status.text()

    src_uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in vol.metadata["files"]]
    numbers = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in vol.metadata["files"]]
    # each row names the instance a PACS finds its slice by (the fixture numbers slices in reverse)
    assert [(int(r["instance_number"]), r["sop_instance_uid"]) for r in rows] == [
        (numbers[z], src_uids[z]) for z in (1, 3, 2, 4)]  # fmt: skip
    assert js[0]["sop_instance_uid"] == src_uids[1]
    for f in vol.metadata["files"]:  # the references come from what the reader recorded, not from the files again
        Path(f).rename(f"{f}.moved")
    sr = pydicom.dcmread(widget.export(tmp_path / "review.dcm"))
    names = [g.ConceptNameCodeSequence[0].CodeMeaning for g in sr.ContentSequence]
    measurements = sr.ContentSequence[names.index("Imaging Measurements")]
    groups = list(measurements.ContentSequence)
    assert len(groups) == 3  # the kept boxes, not the rejected one
    refs = []
    for g in groups:
        scoord = next(i for i in g.ContentSequence if i.ValueType == "SCOORD")
        assert scoord.GraphicType == "POLYLINE" and len(scoord.GraphicData) == 10  # closed: 5 points
        refs.append(scoord.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    assert refs == [src_uids[1], src_uids[2], src_uids[4]]  # each box references its own slice
    assert sr.PatientID == "LIDNET-TEST"


def test_rejecting_through_the_layer_and_no_boxes(case, tmp_path) -> None:
    viewer, widget, image, boxes, _ = case
    widget.accept(0)
    widget.accept(1)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    reviewed.selected_data = {0}
    reviewed.remove_selected()  # deleting a kept box is a rejection
    assert widget.finding(0).status == "rejected" and widget.finding(1).status == "accepted"
    viewer.layers.remove(boxes)  # the detections go; the kept box stays in the review and its exports
    assert widget.table.rowCount() == 1 and [f.status for f in widget.findings] == ["accepted"]
    assert len(read_findings(widget.export(tmp_path / "x.csv"))) == 1
    viewer.layers.remove(reviewed)
    widget.findings = []
    assert widget.export(tmp_path / "y.csv") is None and "load a layer of boxes" in widget.status.text()


def test_the_review_of_a_simulated_low_dose_image_says_so_in_its_exports(make_napari_viewer, tmp_path: Path) -> None:
    """Regression: the SR of a review made on the viewer's simulated 25% copy read "LIDnet reviewed
    lesions: ..." in the patient's study, like a report of a real scan. Its SeriesDescription and the JSON's record
    now start with what the Denoise dock's DICOM export says: SIMULATED, the dose and the seed."""
    import json

    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=3), series_uid="1.2.826.0.1.3680043.8.498.56")
    vol = open_ct(tmp_path / "ct")[0]
    vol.metadata.update(simulated_dose=0.25, simulated_seed=3)  # as Load CT's Simulate records its copy
    viewer = make_napari_viewer()
    widget, image, _ = open_with_boxes(viewer, vol)
    widget.accept(0)
    sr = pydicom.dcmread(widget.export(tmp_path / "review.dcm"))
    assert sr.SeriesDescription.startswith("SIMULATED 25% dose seed 3: LIDnet reviewed lesions"), sr.SeriesDescription
    info = json.loads((widget.export(tmp_path / "review.json")).read_text())
    assert info["simulated"] == "SIMULATED 25% dose seed 3" and info["findings"]
    real = open_ct(tmp_path / "ct")[0]  # the scan itself: no such words
    viewer2 = make_napari_viewer()
    widget2, _, _ = open_with_boxes(viewer2, real)
    widget2.accept(0)
    assert pydicom.dcmread(widget2.export(tmp_path / "real.dcm")).SeriesDescription.startswith("LIDnet reviewed")


def test_exports_write_the_type_the_reader_picked(case, tmp_path: Path, monkeypatch) -> None:
    """Regression: the dialog's choice was thrown away, so "DICOM SR (*.dcm)" with the name "review"
    wrote a CSV called "review", and "x.txt" a CSV too. A name without a known suffix gets the chosen type's; an
    unknown suffix is refused in one line, nothing written."""
    from qtpy.QtWidgets import QFileDialog

    from napari_lidnet._widgets._save_dialog import with_suffix

    _, widget, _, _, _ = case
    widget.accept(0)
    assert widget.export(tmp_path / "x.txt") is None and not (tmp_path / "x.txt").exists()
    assert widget.status.text() == "export failed: x.txt: give a .dcm, .csv or .json file (DICOM SR, CSV or JSON)"
    picked = (str(tmp_path / "review"), "DICOM SR (*.dcm)")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: picked)
    widget._export_dialog()
    assert pydicom.dcmread(tmp_path / "review.dcm").Modality == "SR" and not (tmp_path / "review").exists()
    filters = "NIfTI (*.nii.gz *.nii);;CSV (*.csv)"
    assert with_suffix("/a/vol", filters, "NIfTI (*.nii.gz *.nii)") == "/a/vol.nii.gz"
    assert with_suffix("/a/VOL.NII.GZ", filters, "CSV (*.csv)") == "/a/VOL.NII.GZ"  # a known suffix is kept
    assert with_suffix("/a/t.v1", filters, "") == "/a/t.v1.nii.gz"  # no filter reported: the first type


def test_a_new_threshold_keeps_the_review(case) -> None:
    """The denoise widget refilters the same detections layer when the score threshold moves: reviewed boxes keep
    their id and status, kept ones stay even when their detection drops below the threshold."""
    viewer, widget, image, boxes, _ = case
    widget.accept(1)
    widget.reject(2)
    widget.edit(0)
    boxes.data = [boxes.data[1]]  # only the 0.91 box passes a higher threshold
    assert {f.id: f.status for f in widget.findings} == {0: "accepted", 1: "accepted"}
    assert viewer.layers[f"{image.name} reviewed"].nshapes == 2
    boxes.data = boxes_to_shapes(DETECTIONS[:, :5], 3)  # back to the low threshold
    assert {f.id: f.status for f in widget.findings} == {0: "accepted", 1: "accepted", 2: "rejected"}


def test_ids_survive_a_threshold_round_trip_and_a_removed_image_is_let_go(case) -> None:
    """Ids are cited by the CSV/JSON and the SR: a pending detection that leaves with a higher threshold and comes
    back keeps its id. Removing the image under review leaves no review on a layer that is gone."""
    viewer, widget, image, boxes, _ = case
    def ids() -> dict[int, tuple]:
        return {f.id: (f.slice, *np.round(f.corners, 2).ravel()) for f in widget.findings}

    before = ids()
    boxes.data = [boxes.data[1]]
    boxes.data = boxes_to_shapes(DETECTIONS[:, :5], 3)
    assert ids() == before and len(before) == 3
    viewer.layers.remove(image)
    assert widget.image_layer is None and widget.image_combo.currentText() == "(none)"
    assert "was removed" in widget.status.text()
    widget.select(0)  # no jump on a removed layer (nothing raises)


def test_a_new_run_keeps_what_the_reader_decided(case) -> None:
    """Another detection run (a new layer of boxes) on an image already reviewed: an accepted detection stays
    accepted with its score (not 'added'), an edited one stays edited, a drawn one stays added, and the new run's
    copies of kept boxes do not come back pending beside them."""
    viewer, widget, image, boxes, _ = case
    widget.accept(1)  # the 0.91 box
    widget.edit(0)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    corners = np.array(reviewed.data[list(reviewed.features["finding"]).index(0)], copy=True)
    corners[:, 1:] += 0.6  # the reader nudges the edited box (IoU with the detection still above 0.5)
    reviewed.data = [corners if i == list(reviewed.features["finding"]).index(0) else d
                     for i, d in enumerate(reviewed.data)]  # fmt: skip
    reviewed.add_rectangles(np.array([[4, 2, 2], [4, 2, 6], [4, 6, 6], [4, 6, 2]], float))  # a drawn box
    kept = sorted((f.slice, f.status, f.score) for f in widget.findings if f.kept)
    assert [st for _, st, _ in kept].count("added") == 1 and len(kept) == 3
    rerun = viewer.add_shapes(
        boxes_to_shapes(DETECTIONS[:, :5], 3), shape_type="rectangle", name=f"{image.name} lesions 2",
        scale=image.scale, translate=image.translate, features={"score": DETECTIONS[:, 5]},
        metadata={"lidnet_role": "detections", "lidnet": {"source_layer": image.name, "detector": "tiny"}},
    )  # fmt: skip
    assert widget.boxes_layer is rerun
    assert sorted((f.slice, f.status, f.score) for f in widget.findings if f.kept) == kept
    assert len(widget.findings) == len(DETECTIONS) + 1  # three detections (two of them kept) and the drawn box
    assert [f.status for f in widget.findings].count("pending") == 1


def press(viewer, key: str) -> None:
    """A key press on the canvas, through napari's key map (the active layer's bindings first)."""
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    handler.press_key(key)
    handler.release_key(key)


def test_review_keys_work_from_the_image_and_after_edit(case) -> None:
    """A reading loop runs from the image: A and R act on the selected finding whichever layer is active, and on
    the reviewed layer (active after Edit) R rejects instead of starting a rectangle that the next click would add."""
    viewer, widget, image, boxes, _ = case
    widget.select(0)
    viewer.layers.selection.active = image
    press(viewer, "a")
    assert widget.finding(0).status == "accepted"
    widget.edit(0)
    reviewed = viewer.layers.selection.active
    assert reviewed.name == f"{image.name} reviewed" and reviewed.mode == "select"
    widget.select(1)
    press(viewer, "r")
    assert widget.finding(1).status == "rejected"
    assert reviewed.mode != "add_rectangle" and reviewed.nshapes == 1
    viewer.layers.selection.active = boxes
    widget.select(2)
    press(viewer, "a")
    assert widget.finding(2).status == "accepted" and boxes.mode != "add_rectangle"


def test_centres_are_patient_coordinates_for_a_prone_series_with_a_gap(make_napari_viewer, tmp_path: Path) -> None:
    """The table's centre is the patient's LPS position (z, y, x), from each slice's ImagePositionPatient and the
    direction cosines: right for a prone scan (rows run right-to-left, columns anterior) and after a missing
    slice, where napari's evenly spaced world is not; a click still jumps to the box's slice."""
    zs = [0.0, 2.5, 5.0, 12.5, 15.0]  # 5 mm missing before the fourth slice
    write_series(tmp_path / "prone", synthetic_hu((5, 24, 32), seed=4), series_uid="1.2.3.66", z_positions=zs,
                 orientation=(-1, 0, 0, 0, -1, 0))  # fmt: skip
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        vol = open_ct(tmp_path / "prone")[0]
    viewer = make_napari_viewer()
    widget, image, _ = open_with_boxes(viewer, vol)
    f = widget.finding(1)  # slice 3, columns 20..26, rows 2..14: centre pixel (row 7.5, column 22.5)
    # IPP (-100, -120, 12.5) + 22.5 columns x 0.8 mm along -x + 7.5 rows x 0.7 mm along -y
    expected_xyz = np.array([-100.0 - 22.5 * 0.8, -120.0 - 7.5 * 0.7, 12.5])
    got_zyx = [f.measures["centre_z_mm"], f.measures["centre_y_mm"], f.measures["centre_x_mm"]]
    np.testing.assert_allclose(got_zyx, expected_xyz[::-1], atol=1e-4)
    widget.table.setCurrentCell(widget.row_ids().index(1), 0)
    assert viewer.dims.current_step[0] == 3
    np.testing.assert_allclose(viewer.camera.center[-2:], image.data_to_world((3, 7.5, 22.5))[-2:], atol=1e-6)


def test_one_lesion_through_neighbouring_slices_is_decided_at_once(make_napari_viewer, tmp_path: Path) -> None:
    """A lesion boxed on slices 1-3 (overlapping boxes) is one lesion in the table; Shift+A keeps all three, Shift+R
    on another lesion rejects it, and single findings stay as they were."""
    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=4), series_uid="1.2.826.0.1.3680043.8.498.56")
    vol = open_ct(tmp_path / "ct")[0]
    rows = np.array([[1, 4, 4, 14, 12, 0.8], [2, 5, 4, 15, 12, 0.7], [3, 4, 5, 14, 13, 0.6],
                     [2, 20, 14, 28, 22, 0.5], [4, 20, 14, 28, 22, 0.4]], np.float32)  # fmt: skip
    viewer = make_napari_viewer()
    widget, image, _boxes = open_with_boxes(viewer, vol, rows)
    lesion = {fid: cell(widget, r, "lesion") for r, fid in enumerate(widget.row_ids())}
    assert lesion == {0: 1, 1: 1, 2: 1, 3: 2, 4: 3}  # slice 4's box is two slices from slice 2's: another lesion
    row = widget.row_ids().index(1)
    assert widget.table.item(row, COL["lesion"]).text() == "1 (3 sl.)"
    tips = [widget.table.horizontalHeaderItem(COL[k]).toolTip() for k in ("long_mm", "mean_hu")]
    assert tips[0].startswith("the box's long side") and "inside the box" in tips[1]  # not the lesion's own
    widget.select(1)
    key = viewer.window._qt_viewer.canvas._key_map_handler
    key.press_key("Shift-A")
    key.release_key("Shift-A")
    assert [widget.finding(i).status for i in range(5)] == ["accepted"] * 3 + ["pending"] * 2
    assert viewer.layers[f"{image.name} reviewed"].nshapes == 3 and "lesion 1: 3 findings kept" in widget.status.text()
    widget.reject_lesion(4)
    assert [widget.finding(i).status for i in range(5)] == ["accepted"] * 3 + ["pending", "rejected"]
    rows = read_findings(widget.export(tmp_path / "review.csv"))  # the export says which boxes are one lesion
    assert [(r["id"], r["lesion"]) for r in rows] == [("0", "1"), ("1", "1"), ("2", "1"), ("3", "2"), ("4", "3")]
    widget.accept(3)
    sr = pydicom.dcmread(widget.export(tmp_path / "review.dcm"))  # TID 1500: one tracked lesion, one identifier
    tracked = []
    for group in sr.ContentSequence[-1].ContentSequence:  # TID 1500's last item: the imaging measurements
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in group.ContentSequence}
        tracked.append((items["Tracking Identifier"].TextValue, items["Tracking Unique Identifier"].UID))
    assert [t for t, _ in tracked] == ["lesion 1"] * 3 + ["lesion 2"]
    assert len({u for _, u in tracked[:3]}) == 1 and tracked[3][1] != tracked[0][1]


THREE_SLICES = [[1, 4, 4, 14, 12, 0.8], [2, 5, 4, 15, 12, 0.7], [3, 4, 5, 14, 13, 0.6]]  # one lesion, slices 1-3


def _three_slice_lesion(viewer, tmp_path: Path):
    """A navigator on a 5-slice series with the boxes of one lesion on slices 1-3 (ids 0-2)."""
    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=4), series_uid="1.2.826.0.1.3680043.8.498.57")
    return open_with_boxes(viewer, open_ct(tmp_path / "ct")[0], np.array(THREE_SLICES, np.float32))


def test_accepting_a_lesion_keeps_a_box_rejected_on_its_own(make_napari_viewer, tmp_path: Path) -> None:
    """A reader rejects one slice's box of a three-slice lesion (a wrong box), then accepts the lesion: that box stays
    rejected and the status says so; accepting the lesion from the rejected row itself keeps that row."""
    widget, _image, _boxes = _three_slice_lesion(make_napari_viewer(), tmp_path)
    widget.reject(2)
    widget.accept_lesion(0)
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "accepted", "rejected"]
    assert "2 findings kept (1 rejected before stays rejected: slice 3)" in widget.status.text()
    widget.accept_lesion(2)  # from the rejected row: the reader means that box
    assert [widget.finding(i).status for i in range(3)] == ["accepted"] * 3
    widget.reject_lesion(1)  # a lesion rejected as a whole (a review found only one box came back) ...
    widget.accept_lesion(0)  # ... comes back whole
    assert [widget.finding(i).status for i in range(3)] == ["accepted"] * 3


def test_rejecting_a_lesion_keeps_the_boxes_kept_on_their_own(make_napari_viewer, tmp_path: Path) -> None:
    """Regression (a reviewer's): Shift+R on one box of a lesion rejected the boxes accepted and edited one by one
    before, and Shift+A brought an edited box back as "accepted". The reader's own decisions stay, and say so; a box
    moved by hand comes back "edited"."""
    widget, _image, _boxes = _three_slice_lesion(make_napari_viewer(), tmp_path)
    widget.accept(0)
    widget.accept(1)
    reviewed = widget.reviewed_layer
    k = list(reviewed.features["finding"]).index(1)
    data = [np.array(d, copy=True) for d in reviewed.data]
    data[k][:, -1] += 2  # the reader widens box 1 by hand
    reviewed.data = data
    assert widget.finding(1).status == "edited"
    widget.reject_lesion(2)
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "edited", "rejected"]
    assert "1 finding rejected (2 kept before stay kept: slice 1, 2)" in widget.status.text()
    widget.reject_lesion(1)  # from a kept row: the reader means that box
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "rejected", "rejected"]
    widget.accept_lesion(1)  # back, with the box the reader drew: still "edited"
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "edited", "accepted"]
    widget.reject_lesion(2)  # the boxes kept by hand (box 0 accepted, box 1 moved) stay kept
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "edited", "rejected"]


def test_a_box_rejected_on_its_own_is_that_run_s_box_only(make_napari_viewer, tmp_path: Path) -> None:
    """The mark "rejected on its own" belongs to the run whose box it was: another run (ids from 0 again) accepts
    its lesion whole; a kept box deleted from the reviewed layer is rejected on its own like Reject."""
    viewer = make_napari_viewer()
    widget, image, _boxes = _three_slice_lesion(viewer, tmp_path)
    widget.reject(2)
    other = np.array(THREE_SLICES, np.float32)
    other[:, 1:5] += [14, 10, 14, 10]  # another lesion, elsewhere
    widget.load(_run(viewer, image, other, "run B"), image)
    widget.reject_lesion(0)
    widget.accept_lesion(0)
    assert [f.status for f in widget.findings] == ["accepted"] * 3
    reviewed = viewer.layers[f"{image.name} reviewed"]
    gone = list(reviewed.features["finding"]).index(2)
    reviewed.selected_data = {gone}
    reviewed.remove_selected()  # the reader deletes one wrong box on the layer
    assert widget.finding(2).status == "rejected"
    widget.accept_lesion(0)
    assert [widget.finding(i).status for i in range(3)] == ["accepted", "accepted", "rejected"]



def test_a_lesion_keeps_its_number_when_a_box_is_moved_off_it(make_napari_viewer, tmp_path: Path) -> None:
    """Regression: moving one box off a three-slice lesion renumbered the lesion (numbers follow the
    first slice, and the moved box's slice came first). The lesion keeps its number; the box moved off takes the
    next free one; the table and the export agree."""
    widget, image, _boxes = _three_slice_lesion(make_napari_viewer(), tmp_path)
    widget.accept_lesion(0)
    assert set(widget.lesion_numbers().values()) == {1}
    reviewed = widget.reviewed_layer
    k = list(reviewed.features["finding"]).index(0)  # the box on slice 1, the lesion's first
    data = [np.array(d, copy=True) for d in reviewed.data]
    data[k][:, -1] += 14  # dragged 14 px to the right: off the other two
    reviewed.data = data
    assert widget.lesion_numbers() == {0: 2, 1: 1, 2: 1}
    assert widget.table.item(widget.row_ids().index(1), COL["lesion"]).text() == "1 (2 sl.)"
    rows = read_findings(widget.export(tmp_path / "review.csv"))
    assert {r["id"]: r["lesion"] for r in rows} == {"0": "2", "1": "1", "2": "1"}


def _run(viewer, image, detections: np.ndarray, name: str):
    """Another detection run's boxes on ``image`` (as the Denoise widget adds them)."""
    return viewer.add_shapes(
        boxes_to_shapes(detections[:, :5], 3), shape_type="rectangle", name=name, scale=image.scale,
        translate=image.translate, features={"score": detections[:, 5]},
        metadata={"lidnet_role": "detections", "lidnet": {"source_layer": image.name, "detector": "tiny"}},
    )  # fmt: skip


def test_rejections_are_kept_with_the_image_across_runs_edits_and_a_foreign_image(case) -> None:
    """Review d: a Reject as the first decision crashed (an empty reviewed table took no status string); a run
    without a rejected box, or a kept box deleted on the reviewed layer, lost rejections; an image opened under the
    name of a deleted, reviewed one took over its review."""
    viewer, widget, image, boxes, _ = case
    widget.reject(0)  # the first decision: a rejection
    assert widget.finding(0).status == "rejected" and viewer.layers[f"{image.name} reviewed"].nshapes == 0
    _run(viewer, image, DETECTIONS[1:], "run 2")  # a run that does not find box 0; a decision there
    widget.accept(widget.findings[0].id)
    widget.load(boxes)  # back to the first run: box 0 is still rejected
    assert {f.slice: f.status for f in widget.findings}[1] == "rejected"
    widget.accept(2)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    index = list(reviewed.features["finding"]).index(2)
    reviewed.selected_data = {index}
    reviewed.remove_selected()  # deleting a kept box on the layer is a rejection, remembered too
    _run(viewer, image, DETECTIONS, "run 3")
    assert sorted(f.status for f in widget.findings if f.slice == 2) == ["rejected"]
    assert {f.slice: f.status for f in widget.findings}[1] == "rejected"
    name = image.name
    for layer in [ly for ly in viewer.layers if ly.name != reviewed.name]:
        viewer.layers.remove(layer)
    other = viewer.add_image(synthetic_hu((5, 24, 32), seed=11), name=name, scale=image.scale,
                             translate=image.translate, metadata=dict(image.metadata))  # another patient  # fmt: skip
    _run(viewer, other, DETECTIONS, "B lesions")
    assert widget.reviewed_layer is None and all(f.status == "pending" for f in widget.findings)


def _threshold(boxes, detections: np.ndarray, t: float) -> None:
    """The Denoise widget's threshold move on a detections layer: the boxes at or above ``t``, then their scores."""
    keep = detections[detections[:, 5] >= t]
    boxes.data = boxes_to_shapes(keep[:, :5], 3) if len(keep) else []
    boxes.features = {"score": keep[:, 5]}


def test_a_threshold_move_reads_the_boxes_once_per_change(case, qtbot, monkeypatch) -> None:
    """New boxes then their scores: read once, when both are set (napari announces the new boxes before their
    scores, and the resized feature table between; the navigator must not read twice), either when the
    event loop runs or when the findings are asked for; a move that changes neither reads nothing. The scores read
    are the new ones."""
    viewer, widget, image, boxes, _ = case
    reads = []
    read = widget._read_findings
    monkeypatch.setattr(widget, "_read_findings", lambda *a: reads.append(1) or read(*a))
    _threshold(boxes, DETECTIONS, 0.5)  # the 0.91 box: the table cut to one row reads 0.42 until its score is set
    qtbot.waitUntil(lambda: len(reads) == 1, timeout=2000)  # the event loop: the table follows without a click
    assert widget.table.rowCount() == 1 and [f.score for f in widget.findings] == pytest.approx([0.91])
    _threshold(boxes, DETECTIONS, 0.1)  # lowered: three boxes come back, their scores after them
    assert sorted(f.score for f in widget.findings) == pytest.approx(sorted(DETECTIONS[:, 5])) and len(reads) == 2
    reads.clear()
    _threshold(boxes, DETECTIONS, 0.1)  # the same boxes and scores
    assert len(widget.findings) == 3 and reads == []
    boxes.features = {"score": [0.95, 0.5, 0.4]}  # scores changed: read
    assert sorted(f.score for f in widget.findings) == pytest.approx([0.4, 0.5, 0.95]) and len(reads) == 1


def test_a_kept_box_and_a_drawn_one_across_a_run_at_a_higher_threshold(case) -> None:
    """Review l: a box accepted, then a run at a higher threshold, then the threshold lowered: one row, not an
    accepted and a pending one; a box drawn while detections are hidden keeps an id of its own."""
    viewer, widget, image, boxes, _ = case
    widget.accept(2)  # the 0.15 box
    run = _run(viewer, image, DETECTIONS[DETECTIONS[:, 5] >= 0.3], "run 2")
    _threshold(run, DETECTIONS, 0.0)
    assert [f.status for f in widget.findings if f.slice == 2] == ["accepted"]
    _threshold(run, DETECTIONS, 0.65)  # only the 0.91 box shown
    reviewed = viewer.layers[f"{image.name} reviewed"]
    reviewed.add_rectangles(np.array([[0, 2, 2], [0, 2, 6], [0, 6, 6], [0, 6, 2]], float))  # drawn by hand
    drawn = [f for f in widget.findings if f.status == "added"]
    _threshold(run, DETECTIONS, 0.0)
    assert len(drawn) == 1 and [f.status for f in widget.findings if f.id == drawn[0].id] == ["added"]
    assert sorted(f.status for f in widget.findings) == ["accepted", "added", "pending", "pending"]


def _shrink(reviewed, finding: int) -> None:
    """The reader halves a kept box on the reviewed layer (its top-left corner stays)."""
    index = list(reviewed.features["finding"]).index(finding)
    corners = np.array(reviewed.data[index], copy=True)
    lo = corners[:, 1:].min(axis=0)
    corners[:, 1:] = lo + (corners[:, 1:] - lo) * 0.5
    reviewed.data = [corners if i == index else d for i, d in enumerate(reviewed.data)]


def test_a_kept_box_shrunk_by_the_reader_stays_one_finding_after_a_run_and_a_reopen(case) -> None:
    """Review l (left open then): a kept box the reader shrank to half its size no longer overlaps its detection
    by IoU 0.5, so another run or a reopened navigator showed it twice (edited, and its detection pending). The
    reviewed layer now records each kept box's detection box, and the match uses it."""
    viewer, widget, image, boxes, _ = case
    widget.accept(1)  # the 0.91 box: slice 3, x 20-26, y 2-14
    reviewed = viewer.layers[f"{image.name} reviewed"]
    _shrink(reviewed, 1)  # the reader halves it: IoU with the detection 0.25
    assert [f.status for f in widget.findings if f.slice == 3] == ["edited"]
    _run(viewer, image, DETECTIONS, "run 2")
    assert [f.status for f in widget.findings if f.slice == 3] == ["edited"]
    viewer.window.remove_dock_widget(widget)
    again = LesionNavigatorWidget(viewer)
    viewer.window.add_dock_widget(again, area="bottom")
    again.load(boxes)
    assert [f.status for f in again.findings if f.slice == 3] == ["edited"]
    assert np.allclose(again.finding(1).bounds, [f.bounds for f in widget.findings if f.slice == 3][0])


def test_a_carried_over_kept_box_keeps_its_detection_through_edits_and_deletion(case) -> None:
    """Regression: a kept box carried over a run without its detection lost the link once edited (the
    detection came back pending beside it), and deleted, it was stored as a rejection of the edited box (the
    detection came back pending, not rejected)."""
    viewer, widget, image, boxes, _ = case
    widget.accept(1)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    run = _run(viewer, image, DETECTIONS[DETECTIONS[:, 5] < 0.5], "run 2")  # a run without the 0.91 box
    _shrink(reviewed, [f.id for f in widget.findings if f.slice == 3][0])
    _threshold(run, DETECTIONS, 0.0)  # the 0.91 detection is back
    assert [f.status for f in widget.findings if f.slice == 3] == ["edited"]
    run3 = _run(viewer, image, DETECTIONS[DETECTIONS[:, 5] < 0.5], "run 3")
    index = list(reviewed.features["finding"]).index([f.id for f in widget.findings if f.slice == 3][0])
    reviewed.selected_data = {index}
    reviewed.remove_selected()  # the reader deletes it: a rejection of the detection
    _threshold(run3, DETECTIONS, 0.0)
    assert [f.status for f in widget.findings if f.slice == 3] == ["rejected"]


def test_a_box_drawn_after_a_rejection_does_not_take_the_rejected_detection(case) -> None:
    """Regression: the detection box of a carried-over kept box outlived the finding once it was deleted,
    and a box drawn later under the reused id took it: the rejected detection was absorbed into the drawn box and
    came back in the next run as 'added' with the detector's score."""
    viewer, widget, image, boxes, _ = case
    widget.accept(1)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    low = DETECTIONS[DETECTIONS[:, 5] < 0.5]
    run = _run(viewer, image, low, "run 2")  # without the 0.91 box: the kept box is carried over
    carried = [f for f in widget.findings if f.slice == 3][0]
    reviewed.selected_data = {list(reviewed.features["finding"]).index(carried.id)}
    reviewed.remove_selected()  # rejected
    _threshold(run, low, 0.0)  # the slider touched
    reviewed.add_rectangles(np.array([[3, 2, 2], [3, 2, 6], [3, 6, 6], [3, 6, 2]], float))  # drawn, same slice
    _threshold(run, DETECTIONS, 0.0)  # the rejected detection is back
    assert sorted(f.status for f in widget.findings if f.slice == 3) == ["added", "rejected"]
    _run(viewer, image, DETECTIONS, "run 3")
    on_3 = sorted((f.status, f.score) for f in widget.findings if f.slice == 3)
    assert [st for st, _ in on_3] == ["added", "rejected"] and dict(on_3)["added"] is None


def test_an_image_without_a_voxel_size_is_measured_in_pixels(make_napari_viewer) -> None:
    """Regression: over an image added with no voxel size (scale 1, not a CT layer) the table said "mm" for
    pixel values while the calipers said "px". Its headers say px there, mm over a CT layer."""
    from napari_lidnet.io.volume import CTVolume

    viewer = make_napari_viewer()
    plain = CTVolume(synthetic_hu((5, 24, 32), seed=3), (1.0, 1.0, 1.0))
    widget, image, _ = open_with_boxes(viewer, plain)
    image.metadata.pop("hu", None)  # as napari's own reader adds an array: nothing says it is CT
    widget._fill_table()
    headers = [widget.table.horizontalHeaderItem(i).text() for i in range(len(COLUMNS))]
    assert "long (px)" in headers and not any("(mm)" in h for h in headers)
    assert "centre z, y, x (px, viewer)" in headers  # no patient position either: the viewer's coordinates
    image.metadata["hu"] = True
    widget._fill_table()
    assert widget.table.horizontalHeaderItem(COL["long_mm"]).text() == "long (mm)"


def test_rejected_detections_are_dimmed_on_the_detectors_layer(make_napari_viewer, tmp_path: Path) -> None:
    """On a layer coloured by score (as the Denoise dock draws it) a rejected box turns faint grey without its score
    label, through a threshold move that recolours the layer; accepting it again brings its score colour back."""
    from napari_lidnet._widgets._box_marks import DIM_EDGE

    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=3), series_uid="1.2.826.0.1.3680043.8.498.56")
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, open_ct(tmp_path / "ct")[0])
    boxes.edge_colormap, boxes.edge_color = "plasma", "score"  # as the Denoise dock colours them: one range, 0-1
    boxes.edge_contrast_limits = (0.0, 1.0)
    boxes.refresh_colors()
    boxes.text = {"string": "{score:.2f}", "color": "yellow"}
    widget.load(boxes, image)
    scored = np.array(boxes.edge_color)
    widget.reject(1)
    current = widget.current_id()  # moved on: its box is white (test_the_mark_survives_the_score_colours_and_dimming)
    others = [k for k in (0, 2) if k != current]
    edges, texts = np.array(boxes.edge_color), boxes.text.color._values
    np.testing.assert_allclose(edges[1], DIM_EDGE)
    np.testing.assert_allclose(edges[others], scored[others])
    assert texts[1][3] == 0 and texts[0][3] == 1
    # the dock's threshold move: the same boxes again, their scores, the score colours
    boxes.data = boxes_to_shapes(DETECTIONS[:, :5], 3)
    boxes.features = {"score": DETECTIONS[:, 5]}
    boxes.edge_color = "score"
    boxes.edge_contrast_limits = (0.0, 1.0)
    boxes.refresh_colors()
    np.testing.assert_allclose(np.array(boxes.edge_color)[1], DIM_EDGE)
    np.testing.assert_allclose(np.array(boxes.edge_color)[others], scored[others])  # the others on the 0-1 range
    widget.accept(1)
    unmarked = [k for k in range(3) if k != widget.current_id()]
    np.testing.assert_allclose(np.array(boxes.edge_color)[unmarked], scored[unmarked])
    assert (np.asarray(boxes.text.color._values).reshape(-1, 4)[:, 3] == 1).all()
    widget.reject(2)
    assert np.asarray(boxes.text.color._values)[2][3] == 0
    _run(viewer, image, DETECTIONS, "run 2")  # the navigator moves to a new run: the old layer is drawn as it was
    assert widget.boxes_layer.name == "run 2"
    np.testing.assert_allclose(np.array(boxes.edge_color), scored)
    assert (np.asarray(boxes.text.color._values).reshape(-1, 4)[:, 3] == 1).all()
    assert boxes.edge_color_mode == "colormap" and tuple(boxes.edge_contrast_limits) == (0.0, 1.0)


def test_2d_boxes_are_not_placed_on_a_made_up_slice_of_a_volume(case) -> None:
    """A 2D Shapes layer picked against the 3D CT: its boxes lie on no slice (napari's world_to_data filled z with
    0: "slice -40", measured on slice 0, exported so); refused in one line, the review left as it was."""
    viewer, widget, image, boxes, vol = case
    before = [(f.id, f.slice) for f in widget.findings]
    flat = viewer.add_shapes([np.array([[2, 2], [2, 9], [9, 9], [9, 2]], float)], shape_type="rectangle",
                             name="2D boxes", scale=image.scale[-2:], translate=image.translate[-2:])  # fmt: skip
    widget.load(flat, image)
    assert "is 2D and" in widget.status.text() and widget.boxes_layer is boxes
    assert [(f.id, f.slice) for f in widget.findings] == before


def test_mean_hu_over_the_box_window_equals_the_whole_slice_mask() -> None:
    """A box's mean HU is taken over its bounding window only (a full-slice mask per box made reviewing hundreds
    of boxes take seconds per threshold step): the same pixels as the whole-slice mask, for rotated boxes, boxes on
    pixel edges and boxes partly off the image; a box wholly off the image has none."""
    from napari_lidnet.findings import box_mask, mean_hu

    rng = np.random.default_rng(4)
    hu = rng.normal(40.0, 30.0, (64, 80))
    for _ in range(200):
        centre, half, angle = rng.uniform(-8, 88, 2), rng.uniform(0.3, 12, 2), rng.uniform(0, np.pi)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        corners = centre + (np.array([[-1, -1], [-1, 1], [1, 1], [1, -1]]) * half) @ rot.T
        if rng.random() < 0.3:
            corners = np.round(corners)  # on pixel edges
        mask = box_mask(corners, hu.shape)
        expect = float(hu[mask].mean()) if mask.any() else float("nan")
        np.testing.assert_allclose(mean_hu(corners, hu), expect, rtol=1e-12, equal_nan=True)
    assert np.isnan(mean_hu(np.array([[100, 100], [100, 110], [110, 110], [110, 100]], float), hu))


def test_the_pixel_map_is_napari_s_own_transform_position_by_position() -> None:
    """``pixel_map`` (one affine map read from napari's transforms) lands every vertex where napari's per-position
    ``data_to_world`` then ``world_to_data`` does: boxes drawn on a rotated, sheared, translated layer over an image
    with another scale and an affine, and 2D shapes over a 3D image (zeros in front, as napari pads)."""
    from napari.layers import Image, Shapes

    from napari_lidnet._widgets._geometry import pixel_map

    rng = np.random.default_rng(4)
    image = Image(np.zeros((6, 40, 50), np.float32), scale=(2.5, 0.7, 0.8), translate=(10, -5, 3),
                  affine=np.array([[1, 0, 0, 2], [0, 0.98, -0.2, 1], [0, 0.2, 0.98, -3], [0, 0, 0, 1]]))  # fmt: skip
    for shapes in (Shapes(ndim=3, scale=(2.0, 0.5, 0.9), translate=(4, 1, -2), rotate=17, shear=[0.1, 0, 0]),
                   Shapes(ndim=2, scale=(0.6, 0.75), translate=(-3, 8))):  # fmt: skip
        verts = rng.uniform(-20, 60, (12, shapes.ndim))
        mapped = pixel_map(shapes, image)(verts)
        one_by_one = [image.world_to_data(shapes.data_to_world(v)[-image.ndim :]) for v in verts]
        np.testing.assert_allclose(mapped, np.asarray(one_by_one, float), atol=1e-9)
    lead = np.array([12.5, 0.0, 0.0])  # a 2D shape on the slice at world z 12.5 (the viewer's point)
    flat = Shapes(ndim=2, scale=(0.6, 0.75), translate=(-3, 8))
    verts = rng.uniform(-20, 60, (5, 2))
    on_slice = [image.world_to_data([12.5, *flat.data_to_world(v)]) for v in verts]
    np.testing.assert_allclose(pixel_map(flat, image, lead=lead)(verts), np.asarray(on_slice, float), atol=1e-9)


def test_lesion_numbers_follow_a_threshold_until_the_review_begins(case) -> None:
    """Regression: the threshold moved while the navigator was open, and its lesion numbers no longer
    matched the Denoise dock's box export (numbered afresh, first slice first) for the same boxes. Until the reader
    decides, a new threshold numbers afresh; after, each lesion keeps its number."""
    from napari_lidnet.metrics.lesions import row_lesions

    viewer, widget, image, boxes, _ = case
    boxes.data = [boxes.data[1]]  # a higher threshold: only the slice-3 box
    assert list(widget.lesion_numbers().values()) == [1]
    boxes.data = boxes_to_shapes(DETECTIONS[:, :5], 3)  # back: the slice-1 box is lesion 1 in the export
    shown = widget.lesion_numbers()
    by_slice = {f.slice: shown[f.id] for f in widget.findings}
    exported = dict(zip(DETECTIONS[:, 0].astype(int), row_lesions(DETECTIONS)))
    assert by_slice == exported, (by_slice, exported)
    widget.accept(1)  # the review has begun: numbers stay put through a threshold round trip
    before = widget.lesion_numbers()
    boxes.data = [boxes.data[1]]
    boxes.data = boxes_to_shapes(DETECTIONS[:, :5], 3)
    assert widget.lesion_numbers() == before


def test_a_reopened_navigator_finds_a_review_whose_detections_were_deleted(case, tmp_path: Path) -> None:
    """Regression: accept two, delete the detections, close and reopen the navigator: the reviewed layer
    (the kept boxes) was in the viewer, but the dock offered "(none)" and refused to export."""
    viewer, widget, image, boxes, _ = case
    widget.accept(0)
    widget.accept(1)
    viewer.layers.remove(boxes)
    widget.close()
    viewer.add_shapes([np.array([[0, 1, 1], [0, 1, 5], [0, 5, 5], [0, 5, 1]], float)], shape_type="rectangle",
                      name="my notes on another scan", translate=(0, 0, 100))  # review: loaded as 'pending' boxes
    again = LesionNavigatorWidget(viewer)
    assert sorted(f.status for f in again.findings) == ["accepted", "accepted"]
    assert again.image_layer == image and "2 kept boxes" in again.status.text()
    out = again.export(tmp_path / "review.csv")
    assert out is not None and len(read_findings(out)) == 2


def _white(layer) -> list[bool]:
    from napari_lidnet._widgets._box_marks import MARK_EDGE

    return [bool(np.allclose(c, MARK_EDGE)) for c in np.asarray(layer.edge_color)]


def test_the_current_finding_s_box_is_drawn_white_at_its_width(case) -> None:
    """Regression: on a slice with several boxes the selected row's box looked like the others; then
    its outline, widened three times, covered 83-87% of a 7.7 mm lesion at every zoom. It is
    drawn white, as wide as the others."""
    viewer, widget, image, boxes, _ = case
    base = [float(w) for w in boxes.edge_width]
    colours = np.asarray(boxes.edge_color).copy()
    widget.select(1)
    assert _white(boxes) == [False, True, False] and [float(w) for w in boxes.edge_width] == base
    widget.select(2)
    assert _white(boxes) == [False, False, True]
    np.testing.assert_allclose(np.asarray(boxes.edge_color)[:2], colours[:2])  # the last one's colour is back
    for kept in ([1, 2], [0, 1, 2]):  # review: after a threshold move the outline sat on another finding's box
        boxes.data = [boxes_to_shapes(DETECTIONS[:, :5], 3)[k] for k in kept]
        assert len(widget.findings) == len(kept) and widget.current_id() == 2  # read now (reloads wait for events)
        current = kept.index(2)  # finding 2 (the slice-2 box) is shape 1, then shape 2
        assert _white(boxes) == [k == current for k in range(len(kept))]
    widget.accept(0)  # kept: its box is on the reviewed layer, marked there when it is the current row
    reviewed = viewer.layers[f"{image.name} reviewed"]
    kept_width = [float(w) for w in reviewed.edge_width]
    widget.select(0)
    assert reviewed.nshapes == 1 and _white(reviewed) == [True] and not any(_white(boxes))
    assert [float(w) for w in boxes.edge_width] == base and [float(w) for w in reviewed.edge_width] == kept_width


def test_the_mark_with_boxes_selected_and_on_a_recoloured_reviewed_layer(case) -> None:
    """Regression: with the reader's box selected, moving on left two boxes white (napari's setter of the
    new-box colour recolours the selection), or none; and a box drawn on the reviewed layer recoloured it by status,
    wiping the current box's mark, which the earlier widened outline had survived."""
    viewer, widget, image, boxes, _ = case
    widget.select(1)
    boxes.mode = "select"
    boxes.selected_data = {1}  # the reader clicks the current (white) box
    widget.select(2)
    assert _white(boxes) == [False, False, True]
    boxes.selected_data = {0}  # another box first, then the row of box 1
    widget.select(1)
    assert _white(boxes) == [False, True, False]
    boxes.selected_data = set()
    boxes.mode = "pan_zoom"
    widget.accept(0)
    widget.accept(1)
    reviewed = viewer.layers[f"{image.name} reviewed"]
    widget.select(0)
    reviewed.add_rectangles(np.array([[2, 1, 1], [2, 1, 5], [2, 5, 5], [2, 5, 1]], float))  # the reader adds one
    assert len(widget.findings) == 4  # read now: three detections and the drawn box
    assert widget.current_id() == 0 and _white(reviewed)[0] and sum(_white(reviewed)) == 1


def test_a_box_moved_by_hand_on_the_dock_s_layer_stays_its_finding(case) -> None:
    """Regression: moving a pending box on the Denoise dock's lesions layer (not with Edit) dropped its
    finding and listed the box as a new one (another id); a rejected one came back pending. The dock's detection key
    of each box (its ``detection`` feature) keeps a moved box its id and status (kept boxes move with Edit)."""
    viewer, widget, image, boxes, _ = case
    boxes.features = {**{k: boxes.features[k] for k in boxes.features}, "detection": ["a", "b", "c"]}
    widget.load(boxes, image)
    ids = [f.id for f in widget.findings]
    widget.reject(1)
    data = list(boxes.data)
    data[0] = data[0] + [0, 1, 2]  # pending box 0 moved 1 px down, 2 px right
    data[1] = data[1] + [0, 2, 0]  # the rejected box 1 moved too
    boxes.data = data
    widget.load(boxes, image)
    assert [f.id for f in widget.findings] == ids, [(f.id, f.status) for f in widget.findings]
    moved = widget.finding(ids[0])
    assert moved.status == "pending" and moved.bounds[0] == pytest.approx(_edges(data[0])[0])
    assert widget.finding(ids[1]).status == "rejected"


def test_a_kept_box_moved_on_the_dock_s_layer_moves_its_reviewed_box(case) -> None:
    """Regression: an accepted box moved on the lesions layer (not with Edit)
    showed twice, the kept box where it was and the moved one as a new pending finding. It stays its finding,
    edited, and its box on the reviewed layer follows."""
    viewer, widget, image, boxes, _ = case
    boxes.features = {**{k: boxes.features[k] for k in boxes.features}, "detection": ["a", "b", "c"]}
    widget.load(boxes, image)
    ids = [f.id for f in widget.findings]
    widget.accept(ids[2])
    reviewed = viewer.layers[f"{image.name} reviewed"]
    data = list(boxes.data)
    data[2] = data[2] + [0, 2, 3]
    boxes.data = data
    widget.load(boxes, image)
    assert [f.id for f in widget.findings] == ids, [(f.id, f.status) for f in widget.findings]
    moved = widget.finding(ids[2])
    assert moved.status == "edited" and moved.bounds == pytest.approx(_edges(data[2]))
    assert reviewed.nshapes == 1 and _edges(reviewed.data[0]) == pytest.approx(_edges(data[2]))
    assert list(reviewed.features["finding"]) == [ids[2]] and list(reviewed.features["status"]) == ["edited"]


def test_a_box_picked_on_the_canvas_is_the_one_decided(case) -> None:
    """Regression: with row 0 selected, the reader clicked another box with napari's select tool and
    pressed A: finding 0 was accepted, the clicked one stayed pending. The picked box becomes the current row."""
    viewer, widget, image, boxes, _ = case
    widget.select(0)
    camera_before = tuple(viewer.camera.center)
    viewer.layers.selection.active = boxes
    boxes.mode = "select"
    boxes.selected_data = {widget._shape_index[2]}  # the reader clicks finding 2's box
    assert widget.current_id() == 2 and _white(boxes)[widget._shape_index[2]]
    assert tuple(viewer.camera.center) == camera_before  # the box is in view: nothing jumps
    widget.accept()
    assert widget.finding(2).status == "accepted" and widget.finding(0).status == "pending"
    reviewed = viewer.layers[f"{image.name} reviewed"]
    viewer.layers.selection.active = reviewed
    widget.select(1)
    reviewed.mode = "select"
    reviewed.selected_data = {0}  # finding 2's kept box, clicked on the reviewed layer
    assert widget.current_id() == 2


def test_the_status_bar_hint_says_what_the_keys_do_on_the_boxes_layer(case) -> None:
    """Regression: with the lesions layer active napari's hint still read "use <R> for add rectangles"
    and "use <7> for transform", while R rejected a finding and 7 set the abdomen window."""
    from napari_lidnet._widgets.navigator import REVIEW_HINT
    from napari_lidnet._widgets.reading_room import PRESET_HINT

    viewer, widget, image, boxes, _ = case
    for mode in ("pan_zoom", "select", "direct"):  # napari writes its hint again at every mode change
        boxes.mode = mode
        parts = boxes.help.split(", ")
        assert REVIEW_HINT in parts and PRESET_HINT in parts, boxes.help
        assert not any(p.startswith(("use <R> ", "use <E> ", "use <P> ", "use <7> ", "use <1> ")) for p in parts)
        assert "use <L> for add lines" in parts  # napari's keys that still do what it says stay
    widget.dock_closed()  # the keys are napari's again: the hint no longer names them as LIDnet's
    assert REVIEW_HINT not in boxes.help.split(", ")


def _edges(verts) -> tuple[float, ...]:
    """x1, y1, x2, y2 of a rectangle's vertices in pixel edges (napari's pixel-centre corners shifted back)."""
    from napari_lidnet.layer_data import shapes_to_boxes

    return tuple(float(v) for v in shapes_to_boxes([verts])[0, 1:])


def test_the_mark_survives_the_score_colours_and_dimming(make_napari_viewer, tmp_path: Path) -> None:
    """On a layer coloured by score (the Denoise dock's), the current box stays white through a rejection's dimming
    and a recolouring by score; moving on gives it its score colour back."""
    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=3), series_uid="1.2.826.0.1.3680043.8.498.58")
    viewer = make_napari_viewer()
    widget, image, boxes = open_with_boxes(viewer, open_ct(tmp_path / "ct")[0])
    boxes.edge_colormap, boxes.edge_color = "plasma", "score"
    boxes.edge_contrast_limits = (0.0, 1.0)
    boxes.refresh_colors()
    boxes.text = {"string": "{score:.2f}", "color": "yellow"}
    widget.load(boxes, image)
    scored_colours = np.asarray(boxes.edge_color).copy()
    widget.select(0)
    widget.reject(1)  # dims box 1; the current row moves on
    current = widget.current_id()
    assert _white(boxes) == [k == current for k in range(3)]
    boxes.edge_color = "score"  # the dock's threshold move recolours by score
    boxes.refresh_colors()
    assert _white(boxes) == [k == current for k in range(3)]
    widget.select(0)
    np.testing.assert_allclose(np.asarray(boxes.edge_color)[current], scored_colours[current])


def test_deeplesion_boxes_measure_their_recist_diameters_not_their_padded_sides(make_napari_viewer, deeplesion_tree):
    """Regression: DeepLesion pads each box 5 px beyond the RECIST axes; the navigator gave a 4.9 mm
    lesion as 11.9 mm (the box). Its long/short are the table's diameters (5 and 3 px at 0.7 mm here)."""
    from napari_lidnet.io.deeplesion import read_deeplesion_slice
    from napari_lidnet.layer_data import volume_layer_tuples

    _, series, _ = deeplesion_tree
    viewer = make_napari_viewer()
    tuples = volume_layer_tuples(read_deeplesion_slice(series / "109.png"))
    (img_data, img_kwargs, _), (box_data, box_kwargs, _) = tuples
    image = viewer.add_image(img_data, **img_kwargs)
    boxes = viewer.add_shapes(box_data, **box_kwargs)
    widget = LesionNavigatorWidget(viewer)
    widget.load(boxes, image)
    sizes = sorted((round(f.measures["long_mm"], 3), round(f.measures["short_mm"], 3)) for f in widget.findings)
    assert sizes == [(3.5, 2.1), (3.5, 2.1)]
    assert "RECIST diameters" in widget.status.text()
    widget.accept(0)  # review: a reopened dock measured the kept box by its padded sides again
    widget.close()
    again = LesionNavigatorWidget(viewer)  # the image's own annotated layer and its review, as before
    assert again.boxes_layer == boxes and [f.status for f in again.findings] == ["accepted", "pending"]
    sizes = sorted((round(f.measures["long_mm"], 3), round(f.measures["short_mm"], 3)) for f in again.findings)
    assert sizes == [(3.5, 2.1), (3.5, 2.1)], sizes


def test_stepping_through_findings_side_by_side_says_where_the_box_is(case) -> None:
    """Regression: in Compare (napari's grid, the two images alone) a jump moved to the finding but no
    box showed, without a word; the status says the box is at the centre and that Flip shows it."""
    viewer, widget, image, boxes, _ = case
    viewer.grid.enabled, boxes.visible = True, False  # as Compare leaves them
    widget.select(1)
    assert "its box is hidden: F flips" in widget.status.text()
    viewer.grid.enabled, boxes.visible = False, True
    widget.status.setText("")
    widget.select(0)
    assert "hidden" not in widget.status.text()


def test_the_review_export_says_when_centres_are_not_patient_coordinates(make_napari_viewer, tmp_path: Path) -> None:
    """Regression: for a source without a patient position the review file's units still called the centre
    column patient LPS coordinates."""
    import json

    viewer = make_napari_viewer()
    for name, meta in (("placed", {"affine_lps": np.eye(4).tolist()}), ("unplaced", {"orientation_unknown": True})):
        vol = synthetic_hu((2, 24, 32), seed=1)
        image = viewer.add_image(vol, name=name, scale=(2.5, 0.7, 0.7), metadata={"hu": True, **meta})
        widget = LesionNavigatorWidget(viewer)
        boxes = viewer.add_shapes(boxes_to_shapes(DETECTIONS[:1, :5], 3), shape_type="rectangle",
                                  name=f"{name} lesions", scale=image.scale, features={"score": DETECTIONS[:1, 5]},
                                  metadata={"lidnet_role": "detections", "lidnet": {"source_layer": name}})  # fmt: skip
        widget.load(boxes, image)
        units = json.loads(widget.export(tmp_path / f"{name}.json").read_text())["units"]
        assert ("patient LPS" in units) == (name == "placed"), units


def test_from_the_table_tab_leaves_it_and_the_canvas_keys_work(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    """With the table in focus (after a row was clicked): Tab goes on to the next control instead of cycling through
    the cells, a window preset's digit sets that window (the table's type-to-search took it for a row number and
    jumped to another finding), and the status column's colour is a swatch, its text the theme's."""
    from qtpy.QtTest import QTest

    write_series(tmp_path / "ct", synthetic_hu((5, 24, 32), seed=3), series_uid="1.2.826.0.1.3680043.8.498.56")
    viewer = make_napari_viewer(show=True)  # keys reach a dock's shortcuts in a window that is shown
    widget, image, _ = open_with_boxes(viewer, open_ct(tmp_path / "ct")[0])
    widget.select(0)
    widget.window().activateWindow()
    qtbot.waitUntil(widget.window().isActiveWindow, timeout=3000)
    widget.table.setFocus()
    qtbot.waitUntil(widget.table.hasFocus, timeout=3000)
    before = widget.current_id()
    QTest.keyClick(widget.table, Qt.Key.Key_2)  # the lung window
    assert widget.current_id() == before
    assert tuple(image.contrast_limits) == (-1350.0, 150.0)
    QTest.keyClick(widget.table, Qt.Key.Key_Tab)
    assert not widget.table.hasFocus()
    status = widget.table.item(0, [k for k, _ in COLUMNS].index("status"))
    assert status.data(Qt.ItemDataRole.DecorationRole) is not None


def test_stepping_to_a_small_finding_zooms_to_it_and_its_labels_stand_apart(make_napari_viewer, tmp_path) -> None:
    """Regression: a step centred a 4 mm box at the image's fit zoom (a few screen pixels wide), its score above and
    its status below stacked on it. The step now zooms: the box fills about 30% of the canvas, stays on it, and
    the two labels (score at the box's top, status at its bottom) are more than two text lines apart on screen."""
    write_series(tmp_path / "ct", synthetic_hu((3, 256, 256), seed=4), series_uid="1.2.826.0.1.3680043.8.498.56")
    viewer = make_napari_viewer()
    small = np.array([[1, 100, 120, 105, 125, 0.8], [2, 30, 40, 60, 70, 0.6]], np.float32)  # 5 px and 30 px boxes
    widget, image, boxes = open_with_boxes(viewer, open_ct(tmp_path / "ct")[0], small)
    boxes.features = {"score": small[:, 5], "label": [f"{v:.2f}" for v in small[:, 5]]}
    boxes.text = box_style()["text"]  # the Denoise dock's score labels
    viewer.reset_view()
    fit = viewer.camera.zoom
    widget.select(0)
    widget.accept()  # on to the next pending box, then back: the kept box now has its "accepted" label
    widget.select(0)
    reviewed = widget.reviewed_layer
    zoom, view = viewer.camera.zoom, np.asarray(viewer.canvas.viewbox_size(viewer.layers), float)
    pixel = float(np.min(image.scale[-2:]))
    assert zoom > 2 * fit and zoom <= 8 / pixel + 1e-9  # closer than the fit, at most 8 screen px per pixel
    corners = np.array([image.data_to_world((1, r, c))[1:] for r, c in ((120, 100), (125, 105))])
    on_screen = (corners - np.asarray(viewer.camera.center)[-2:]) * zoom + view / 2
    assert np.all(on_screen >= 0) and np.all(on_screen <= view)  # the whole box on the canvas
    assert boxes.text.anchor == "upper_left" and reviewed.text.anchor == "lower_left"
    gap_px = float(np.ptp(corners[:, 0])) * zoom  # from the score's anchor (top edge) to the status's (bottom)
    assert gap_px > 2 * max(boxes.text.size, reviewed.text.size), gap_px
    widget.select(1)  # a large box: never zoomed out below the image's fit
    assert viewer.camera.zoom >= fit * 0.999
