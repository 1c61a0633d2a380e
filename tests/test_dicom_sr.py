"""Reviewed boxes -> DICOM Comprehensive SR, read back with pydicom: regions, measurements, source references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import synthetic_hu, write_series

from napari_lidnet.findings import Finding, box_corners, findings_from_rows, measure, read_findings, write_findings
from napari_lidnet.io.boxes_io import slice_columns
from napari_lidnet.io.dicom_sr import COMPREHENSIVE_SR, SRRegion, closed_polyline, instance_refs, write_sr
from napari_lidnet.io.open_ct import open_ct

UID = "1.2.826.0.1.3680043.8.498.4242"


def items(ds, value_type: str) -> list:
    """Every content item of ``value_type`` in the SR tree (depth first)."""
    found = []
    for item in ds.get("ContentSequence", []):
        if item.ValueType == value_type:
            found.append(item)
        found.extend(items(item, value_type))
    return found


def meaning(item) -> str:
    return item.ConceptNameCodeSequence[0].CodeMeaning


@pytest.fixture
def series(tmp_path: Path):
    hu = synthetic_hu((4, 16, 20), seed=5)
    files = write_series(tmp_path / "ct", hu, series_uid=UID, description="chest")
    return open_ct(tmp_path / "ct")[0], files


def test_sr_regions_reference_the_source_slices(series, tmp_path: Path) -> None:
    vol, files = series
    refs = instance_refs(vol.metadata["files"])
    assert all(r is not None for r in refs)
    regions = [
        SRRegion(2, box_corners(3, 4, 9, 10), 8.4, 4.2, 35.5, 0.81, "accepted", "finding 1"),
        SRRegion(0, box_corners(1.5, 2, 5, 7.25), 5.0, 3.0, float("nan"), None, "added"),
    ]
    out = write_sr(tmp_path / "sr.dcm", regions, refs, vol.metadata["source_tags"], UID)
    with pytest.raises(FileExistsError):
        write_sr(out, regions, refs)

    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(files[2], stop_before_pixels=True)
    assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurement Report"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"  # TID 1500: the tree below is its shape
    # TID 1500's rows in order: language, observer context (this program, a device), procedure, library, measurements
    root = {meaning(i): i for i in ds.ContentSequence}
    assert [meaning(i) for i in ds.ContentSequence] == [
        "Language of Content Item and Descendants", "Observer Type", "Device Observer UID", "Device Observer Name",
        "Device Observer Manufacturer", "Procedure reported", "Image Library", "Imaging Measurements"]  # fmt: skip
    assert root["Language of Content Item and Descendants"].ConceptCodeSequence[0].CodeValue == "en-US"
    assert root["Observer Type"].ConceptCodeSequence[0].CodeMeaning == "Device"
    assert {root[k].RelationshipType for k in ("Observer Type", "Device Observer UID")} == {"HAS OBS CONTEXT"}
    assert root["Procedure reported"].ConceptCodeSequence[0].CodeMeaning == "Computed tomography"
    (library_group,) = root["Image Library"].ContentSequence
    cited = [i for i in library_group.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in cited] == [src.SOPInstanceUID,
        pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID]  # each cited image once  # fmt: skip
    modality, for_uid = library_group.ContentSequence[:2]  # TID 1602's shared descriptors of the group
    assert modality.ConceptCodeSequence[0].CodeValue == "CT" and for_uid.UID == src.FrameOfReferenceUID
    assert "ReferencedPerformedProcedureStepSequence" in ds  # Type 2 of the SR Document Series module
    assert ds.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99LIDNET"
    groups = list(root["Imaging Measurements"].ContentSequence)
    assert [meaning(g) for g in groups] == ["Measurement Group"] * 2
    uids = [i.UID for g in groups for i in g.ContentSequence if i.ValueType == "UIDREF"]
    assert len(set(uids)) == 2  # a tracking unique identifier per region
    scoords = items(ds, "SCOORD")
    assert [s.GraphicType for s in scoords] == ["POLYLINE", "POLYLINE"]
    pts = np.asarray(scoords[0].GraphicData, float).reshape(-1, 2)
    np.testing.assert_allclose(pts, [[3, 4], [9, 4], [9, 10], [3, 10], [3, 4]])  # (col, row), closed
    ref = scoords[0].ContentSequence[0]
    assert ref.ValueType == "IMAGE" and ref.RelationshipType == "SELECTED FROM"
    assert ref.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID  # slice 2 -> its file
    nums = {meaning(n): float(n.MeasuredValueSequence[0].NumericValue) for n in items(groups[0], "NUM")}
    assert nums == {"Long Axis": 8.4, "Short Axis": 4.2, "Attenuation Coefficient": 35.5, "Detector score": 0.81}
    mean = next(n for n in items(groups[0], "NUM") if meaning(n) == "Attenuation Coefficient")
    assert mean.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning == "Mean"  # derivation (TID 1419)
    second = {meaning(n) for n in items(groups[1], "NUM")}
    assert second == {"Long Axis", "Short Axis"}  # no mean (NaN), no score (drawn by hand)
    texts = [t.TextValue for t in items(groups[1], "TEXT")]
    assert "added" in texts
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == UID and len(evidence.ReferencedSOPSequence) == 2


def test_sr_regions_reference_frames_of_a_multi_frame_source(tmp_path: Path) -> None:
    """Slices that are frames of one enhanced instance: each region cites the instance and its own frame (the
    volume's slice order need not be the file's frame order); the evidence lists the instance once."""
    ref = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.3.77")
    regions = [SRRegion(z, box_corners(1, 1, 4, 4), 3.0, 3.0, 0.0) for z in (0, 2)]
    ds = pydicom.dcmread(write_sr(tmp_path / "sr.dcm", regions, [ref] * 3, {}, "1.2.3.78", frames=[3, 2, 1]))
    cited = [s.ContentSequence[0].ReferencedSOPSequence[0] for s in items(ds, "SCOORD")]
    assert [(c.ReferencedSOPInstanceUID, int(c.ReferencedFrameNumber)) for c in cited] == [("1.2.3.77", 3),
                                                                                          ("1.2.3.77", 1)]  # fmt: skip
    assert len(ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence) == 1


def test_sr_without_known_source_has_no_image_reference(tmp_path: Path) -> None:
    out = write_sr(tmp_path / "plain.dcm", [SRRegion(0, box_corners(0, 0, 4, 4), 4, 4, 0.0)])
    ds = pydicom.dcmread(out)
    scoord = items(ds, "SCOORD")[0]
    assert "ContentSequence" not in scoord and "CurrentRequestedProcedureEvidenceSequence" not in ds
    assert "Image Library" not in [meaning(i) for i in ds.ContentSequence]  # optional in TID 1500, never empty
    assert closed_polyline(box_corners(0, 0, 4, 4))[:2] == closed_polyline(box_corners(0, 0, 4, 4))[-2:]
    # Type 2 attributes are present (empty) even without a source that says them: a validating archive wants them
    for kw in ("PatientBirthDate", "PatientSex", "StudyTime", "StudyID", "ReferringPhysicianName",
               "AccessionNumber", "PerformedProcedureCodeSequence"):  # fmt: skip
        assert kw in ds, kw
    assert ds.PatientSex == "" and len(ds.PerformedProcedureCodeSequence) == 0


def test_findings_measure_sizes_centres_and_hu(tmp_path: Path) -> None:
    hu = np.zeros((3, 20, 30), np.float32)
    hu[1, 5:10, 10:20] = 100.0  # rows 5..9, columns 10..19
    to_world = np.diag([2.5, 0.5, 0.8, 1.0])
    to_world[:3, 3] = (10.0, -5.0, 3.0)
    (f,) = findings_from_rows(np.array([[1, 10, 5, 20, 10, 0.7]]))
    m = measure(f, hu, (2.5, 0.5, 0.8), to_world)
    assert m["long_mm"] == pytest.approx(8.0) and m["short_mm"] == pytest.approx(2.5)  # 10 px x 0.8, 5 px x 0.5
    assert m["mean_hu"] == pytest.approx(100.0)
    np.testing.assert_allclose([m["centre_z_mm"], m["centre_y_mm"], m["centre_x_mm"]], [12.5, -1.25, 15.0])
    turned = Finding(1, 1, np.array([[5, 15], [10, 20], [15, 15], [10, 10]], float))  # a diamond
    long_mm, short_mm = measure(turned, hu, (1, 1, 1), np.eye(4))["long_mm"], turned.measures["short_mm"]
    assert long_mm == pytest.approx(np.hypot(5, 5)) and short_mm == pytest.approx(np.hypot(5, 5))
    f.status = "accepted"
    out = write_findings(tmp_path / "f.csv", [f, turned])
    rows = read_findings(out)
    assert [r["status"] for r in rows] == ["accepted", "pending"] and float(rows[0]["long_mm"]) == 8.0
    js = read_findings(write_findings(tmp_path / "f.json", [f], {"source": "test"}))
    assert js[0]["x1"] == 10 and js[0]["score"] == 0.7
    assert js[0]["instance_number"] is None and js[0]["sop_instance_uid"] is None  # no DICOM source: empty
    # a multi-frame source (one instance, its frames): the frame finds the slice, not an "instance number"
    meta = {"frame_numbers": [1, 2, 3], "instance_numbers": [1, 2, 3], "sop_instance_uids": ["1.2.3"] * 3}
    js = read_findings(write_findings(tmp_path / "mf.json", [f], {}, slice_columns(meta, 3)))
    assert (js[0]["instance_number"], js[0]["frame_number"], js[0]["sop_instance_uid"]) == (None, 2, "1.2.3")


def test_boxes_on_neighbouring_slices_are_one_lesion() -> None:
    """Overlapping boxes on slices 3-5 are one lesion, a box elsewhere on slice 4 another, the same place again on
    slice 8 (a gap) a third; numbers follow the first slice."""
    from napari_lidnet.findings import lesion_groups

    rows = np.array([[4, 10, 10, 20, 20, 0.9], [3, 11, 10, 21, 20, 0.8], [5, 10, 11, 20, 21, 0.7],
                     [4, 40, 40, 50, 50, 0.6], [8, 10, 10, 20, 20, 0.5], [1, 60, 60, 64, 64, 0.4]])  # fmt: skip
    groups = lesion_groups(findings_from_rows(rows))
    assert groups == {5: 1, 1: 2, 0: 2, 2: 2, 3: 3, 4: 4}
    assert lesion_groups([]) == {}
    # the boxes exports number the detector's rows the same way, in row order
    from napari_lidnet.metrics.lesions import row_lesions

    assert row_lesions(rows).tolist() == [2, 2, 2, 3, 4, 1] and row_lesions(np.zeros((0, 6))).tolist() == []
    # findings numbered out of id order get the numbers of their ids
    shuffled = findings_from_rows(rows)[::-1]
    assert lesion_groups(shuffled) == groups
    # on 5 mm slices a lesion's end slice shows a small box wholly inside its neighbour's,
    # IoU 0.15: one lesion, not two; a small box only touching a big one on the next slice stays another lesion
    cap = np.array([[2, 190, 171, 208, 189, 0.7], [3, 183, 163, 215, 198, 0.6]])
    assert row_lesions(cap).tolist() == [1, 1]
    touching = np.array([[2, 0, 0, 10, 10, 0.7], [3, 8, 8, 40, 40, 0.6]])  # 4 of 100 px of the small box
    assert row_lesions(touching).tolist() == [1, 2]
    # review: cover chained a small lesion to a large mass beside it on its own slice, and two small ones together
    beside = np.array([[0, 10, 10, 14, 14, 0.9], [1, 10, 10, 14, 14, 0.8], [1, 0, 0, 40, 40, 0.7]])
    assert row_lesions(beside).tolist() == [1, 1, 2]
    two_small = np.array([[0, 2, 2, 6, 6, 0.9], [0, 30, 30, 34, 34, 0.8], [1, 0, 0, 40, 40, 0.7]])
    assert len(set(row_lesions(two_small).tolist())) >= 2


def test_a_source_without_study_uid_puts_its_report_in_its_denoised_series_study(tmp_path: Path) -> None:
    """Regression (DICOM): the denoised series of a source without StudyInstanceUID got a stable stand-in
    study, its SR a random one: each export landed in a study of its own. Both now share the stand-in; a region
    without a pixel size is reported without sizes in mm."""
    import warnings

    from napari_lidnet.io.dicom_write import write_dicom_series

    files = write_series(tmp_path / "ct", synthetic_hu((3, 16, 20), seed=6), series_uid=UID, description="chest")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.StudyInstanceUID
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vol = open_ct(tmp_path / "ct")[0]
    series_study = pydicom.dcmread(write_dicom_series(vol, tmp_path / "den", "d")[0]).StudyInstanceUID
    regions = [SRRegion(1, box_corners(3, 4, 9, 10), float("nan"), float("nan"), 35.5, 0.8, "accepted")]
    reports = [pydicom.dcmread(write_sr(tmp_path / f"sr{k}.dcm", regions, None, vol.metadata["source_tags"], UID,
                                        source=UID)) for k in range(2)]  # fmt: skip
    assert reports[0].StudyInstanceUID == reports[1].StudyInstanceUID == series_study
    assert not [i for i in items(reports[0], "NUM") if "Axis" in meaning(i)]  # no size without a pixel size
    assert [i for i in items(reports[0], "NUM") if meaning(i) == "Attenuation Coefficient"]


def test_a_measure_that_does_not_exist_is_null_in_json_and_empty_in_csv(tmp_path: Path) -> None:
    """Regression: a box holding no pixel centre has no mean HU; the JSON export wrote the token NaN, which
    strict readers (JSON.parse, jq, PACS tools) reject."""
    import csv
    import json

    f = Finding(0, 1, box_corners(10.2, 10.2, 10.4, 10.4), 0.7)  # a tiny drawn box between pixel centres
    measure(f, np.zeros((2, 32, 32), np.float32), (2.5, 0.7, 0.7), np.diag([2.5, 0.7, 0.7, 1.0]))
    assert np.isnan(f.measures["mean_hu"])

    def strict(constant: str) -> None:
        raise ValueError(f"non-standard JSON constant {constant}")

    doc = json.loads(write_findings(tmp_path / "f.json", [f], {"source": "t"}).read_text(), parse_constant=strict)
    assert doc["findings"][0]["mean_hu"] is None and doc["findings"][0]["long_mm"] > 0
    row = next(csv.DictReader(write_findings(tmp_path / "f.csv", [f]).open()))
    assert row["mean_hu"] == ""
