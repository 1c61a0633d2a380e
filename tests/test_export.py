"""Exports of the denoise/detect widget: a derived DICOM series read back by the plugin's reader, boxes CSV/JSON."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import listing, write_series
from test_denoise_widget import add_ct, make_widget, model_dir, phantom, run_and_wait  # noqa: F401 (fixture)

from napari_lidnet.io.boxes_io import write_boxes_csv
from napari_lidnet.io.nifti import read_nifti, write_nifti
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.saved_boxes import read_boxes_csv
from napari_lidnet.layer_data import volume_to_layer_tuple
from napari_lidnet.metrics.lesions import row_lesions

COS, SIN = np.cos(np.radians(25)), np.sin(np.radians(25))
OBLIQUE = (COS, SIN, 0.0, -SIN, COS, 0.0)  # rows/columns rotated about the slice normal (z)


def dicom_ct(folder: Path, n: int = 5) -> Path:
    """A low-dose-like phantom written as an oblique DICOM series (integer HU, multiples of 2)."""
    low, _ = phantom(n=n, size=48, seed=3)
    hu = (np.clip(np.rint(low / 2), -500, 500) * 2).astype(np.float32)
    write_series(folder, hu, series_uid="1.2.826.0.1.3680043.8.498.77", orientation=OBLIQUE, description="lowdose")
    return folder


def add_dicom_layer(viewer, folder: Path):
    vol = open_ct(folder)[0]
    data, kwargs, _ = volume_to_layer_tuple(vol)
    return viewer.add_image(data, **kwargs), vol


def test_dicom_round_trip_volume(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path, monkeypatch) -> None:  # noqa: F811
    src_dir = dicom_ct(tmp_path / "src")
    before = listing(src_dir)
    viewer = make_napari_viewer()
    layer, vol = add_dicom_layer(viewer, src_dir)
    widget = make_widget(viewer, qtbot)
    widget.detector_combo.setCurrentText("(none)")
    run_and_wait(widget, qtbot)
    den = viewer.layers[f"{layer.name} denoised"]
    assert not widget.export_boxes_button.isEnabled()

    assert widget.export_dicom(src_dir) == [] and "not empty" in widget.status.text()
    assert listing(src_dir) == before  # the source is never touched

    files = widget.export_dicom(tmp_path / "out")
    assert len(files) == 5 and "wrote 5 DICOM files" in widget.status.text()
    back = open_ct(tmp_path / "out")[0]
    assert np.abs(back.hu - den.data).max() <= 0.5 + 1e-3  # int16 HU, within 1 HU
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-3)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    ds = pydicom.dcmread(files[0])
    src_ds = pydicom.dcmread(next(src_dir.glob("*.dcm")))
    from napari_lidnet.cli import main

    # the command line names the model as the dock does (not "LIDnet default_denoiser (unet)"
    # from the dock and "LIDnet default" from the command line)
    assert main(["denoise", str(src_dir), str(tmp_path / "cli"), "--model", "tiny", "--device", "cpu"]) == 0
    cli_ds = pydicom.dcmread(sorted((tmp_path / "cli").rglob("*.dcm"))[0], stop_before_pixels=True)
    assert ds.SeriesDescription == cli_ds.SeriesDescription == "lowdose denoised (LIDnet tiny (fastdn))"
    assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert ds.SeriesInstanceUID != src_ds.SeriesInstanceUID and ds.SOPInstanceUID != src_ds.SOPInstanceUID
    assert ds.StudyInstanceUID == src_ds.StudyInstanceUID and ds.PatientID == src_ds.PatientID
    assert ds.FrameOfReferenceUID == src_ds.FrameOfReferenceUID

    # the Export button writes in a worker thread: its button is off until the files are written, then back on
    from qtpy.QtWidgets import QFileDialog

    for folder, expect in ((tmp_path / "button", "wrote 5 DICOM files"), (src_dir, "not empty")):
        folder.mkdir(exist_ok=True)
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, f=str(folder), **k: f)  # the choice
        widget.export_dicom_button.click()
        assert widget.export_worker is not None and not widget.export_dicom_button.isEnabled()
        qtbot.waitUntil(lambda: widget.export_worker is None, timeout=30000)
        assert expect in widget.status.text() and widget.export_dicom_button.isEnabled()
    assert listing(src_dir) == before
    again = open_ct(tmp_path / "button")[0]
    np.testing.assert_array_equal(again.hu, back.hu)


def test_dicom_export_current_slice_and_plain_array(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path) -> None:  # noqa: F811
    viewer = make_napari_viewer()
    layer, vol = add_dicom_layer(viewer, dicom_ct(tmp_path / "src"))
    widget = make_widget(viewer, qtbot)
    widget.scope_combo.setCurrentText("current slice")
    viewer.dims.set_point(0, layer.data_to_world((2, 0, 0))[0])
    run_and_wait(widget, qtbot)
    assert widget.export_dicom(tmp_path / "one")
    back = open_ct(tmp_path / "one")[0]
    assert back.hu.shape == (48, 48)  # a single slice, placed where slice 2 of the source is
    ipp = np.asarray(pydicom.dcmread(next((tmp_path / "one").glob("*.dcm"))).ImagePositionPatient, float)
    np.testing.assert_allclose(ipp, (vol.affine() @ [2, 0, 0, 1])[:3], atol=1e-3)
    den = viewer.layers[f"{layer.name} denoised (slice 2)"]
    np.testing.assert_allclose(back.hu, den.data[0], atol=0.5 + 1e-3)
    np.testing.assert_allclose(den.metadata["affine_lps"] @ [0, 0, 0, 1], vol.affine() @ [2, 0, 0, 1], atol=1e-6)

    plain = add_ct(viewer, phantom(n=3, size=48)[0], name="array")
    widget.image_combo.setCurrentText("array")
    widget.scope_combo.setCurrentText("all slices")
    run_and_wait(widget, qtbot)
    assert widget.export_dicom(tmp_path / "plain")
    back = open_ct(tmp_path / "plain")[0]
    np.testing.assert_allclose(back.spacing, plain.scale, atol=1e-4)
    np.testing.assert_allclose(back.origin, plain.translate, atol=1e-3)


def test_a_simulated_low_dose_says_so_in_what_it_exports(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path) -> None:  # noqa: F811,E501
    """Regression: the denoised result of Load CT's simulated 25% dose went into the patient's study named
    like a denoised clinical series. Its description (and derivation) now start with the simulation."""
    viewer = make_napari_viewer()
    layer, _ = add_dicom_layer(viewer, dicom_ct(tmp_path / "src"))
    meta = {**layer.metadata, "dose": 0.25, "simulated_dose": 0.25, "simulated_seed": 7}  # as Load CT's Simulate
    viewer.add_image(layer.data, name="lowdose 25% dose", scale=layer.scale, translate=layer.translate, metadata=meta)
    widget = make_widget(viewer, qtbot)
    widget.image_combo.setCurrentText("lowdose 25% dose")
    widget.detector_combo.setCurrentText("(none)")
    run_and_wait(widget, qtbot)
    ds = pydicom.dcmread(widget.export_dicom(tmp_path / "out")[0])
    assert ds.SeriesDescription.startswith("SIMULATED 25% dose seed 7: lowdose denoised"), ds.SeriesDescription
    assert "SIMULATED 25% dose" in ds.DerivationDescription


def test_boxes_csv_and_json(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path) -> None:  # noqa: F811
    viewer = make_napari_viewer()
    add_ct(viewer, phantom(n=4)[0])
    widget = make_widget(viewer, qtbot)
    widget.set_threshold(0.05)
    run_and_wait(widget, qtbot)
    scores = widget._last["result"].boxes[:, 5]
    widget.set_threshold(float(np.round(np.median(scores), 2)))
    shown = widget.shown_boxes
    assert 0 < len(shown) < len(scores)
    for name in ("boxes.csv", "boxes.json"):
        out = widget.export_boxes(tmp_path / name)
        assert out == tmp_path / name
        rows = read_boxes_csv(out)
        np.testing.assert_allclose(rows[:, :5], shown[:, :5], atol=0.006)
        np.testing.assert_allclose(rows[:, 5], shown[:, 5], atol=6e-5)
    doc = json.loads((tmp_path / "boxes.json").read_text())
    assert [b["lesion"] for b in doc["boxes"]] == row_lesions(shown).tolist() and "lesion" in doc["columns"]
    dy, dx = widget._last["layer"].scale[-2:]  # sizes in mm from the image's pixel size
    np.testing.assert_allclose([b["width_mm"] for b in doc["boxes"]], (shown[:, 3] - shown[:, 1]) * dx, atol=0.006)
    np.testing.assert_allclose([b["height_mm"] for b in doc["boxes"]], (shown[:, 4] - shown[:, 2]) * dy, atol=0.006)
    # what made the boxes, not only the input
    assert doc["threshold"] == pytest.approx(widget.threshold, abs=1e-4) and "tiny" in doc["detector"]
    assert doc["spacing_mm"] == [float(v) for v in widget._last["layer"].scale] and "remove_sd" in doc
    assert "unreviewed" not in widget.status.text()
    from napari_lidnet._widgets.navigator import LesionNavigatorWidget

    navigator = LesionNavigatorWidget(viewer)  # a review of these boxes: the dock's export says it is not that
    navigator.load(viewer.layers[widget.output("lesions").name], widget._last["layer"])
    navigator.reject(navigator.findings[0].id)
    navigator.accept(navigator.findings[1].id)
    widget.export_boxes(tmp_path / "after-review.csv")
    assert f"the detector's, unreviewed (the review on '{widget._last['layer'].name} reviewed'" in widget.status.text()
    before = (tmp_path / "boxes.csv").read_bytes()
    assert widget.export_boxes(tmp_path / "boxes.csv") is None and "already exists" in widget.status.text()
    assert (tmp_path / "boxes.csv").read_bytes() == before
    assert widget.export_boxes(tmp_path / "boxes") is None and not (tmp_path / "boxes").exists()  # no type: refused
    assert "boxes: give a .csv or .json file" in widget.status.text()
    viewer.add_image(phantom(n=4)[0], name="pixels")  # no voxel size: no "mm" columns holding pixels
    widget.image_combo.setCurrentText("pixels")
    run_and_wait(widget, qtbot)
    header = widget.export_boxes(tmp_path / "px.csv").read_text().splitlines()[0]
    assert header.startswith("slice,x1,y1,x2,y2,score") and "_mm" not in header


def test_nifti_export_keeps_geometry(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path) -> None:  # noqa: F811
    src = write_nifti(tmp_path / "ct.nii.gz", open_ct(dicom_ct(tmp_path / "src"))[0])  # an oblique volume
    viewer = make_napari_viewer()
    layer, vol = add_dicom_layer(viewer, src)
    assert layer.metadata["format"] == "nifti"
    widget = make_widget(viewer, qtbot)
    assert widget.export_nifti(tmp_path / "early.nii.gz") is None and "run the denoiser first" in widget.status.text()
    widget.detector_combo.setCurrentText("(none)")
    run_and_wait(widget, qtbot)
    den = viewer.layers[f"{layer.name} denoised"]

    assert widget.export_nifti(tmp_path / "den.nrrd") is None and "ends in .nii" in widget.status.text()
    out = widget.export_nifti(tmp_path / "den.nii.gz")
    back = read_nifti(out)
    np.testing.assert_allclose(back.hu, den.data, atol=1e-4)  # float32 HU, not rounded
    np.testing.assert_allclose(back.affine(), vol.affine(), atol=1e-4)
    before = out.read_bytes()
    assert widget.export_nifti(out) is None and "NIfTI export failed" in widget.status.text()
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.glob("*.nii*")) == ["ct.nii.gz", "den.nii.gz"]


def test_an_oblique_single_slice_exports_with_its_tilt_and_position(make_napari_viewer, qtbot, tmp_path: Path, model_dir: Path) -> None:  # noqa: F811,E501
    viewer = make_napari_viewer()
    layer, vol = add_dicom_layer(viewer, dicom_ct(tmp_path / "src", n=1))
    assert layer.ndim == 2 and not np.allclose(vol.direction, np.eye(3))
    widget = make_widget(viewer, qtbot)
    widget.detector_combo.setCurrentText("(none)")
    run_and_wait(widget, qtbot)
    back = read_nifti(widget.export_nifti(tmp_path / "slice.nii.gz"))
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)
    np.testing.assert_allclose(back.metadata["slice_ipp"][0], vol.metadata["slice_ipp"][0], atol=1e-4)
    np.testing.assert_allclose(back.affine(), vol.affine(), atol=1e-4)


def test_box_sides_in_mm_follow_non_square_pixels(tmp_path: Path) -> None:
    rows = np.array([[0, 10, 20, 30, 25, 0.9], [1, 5, 5, 9, 15, 0.5]])
    out = write_boxes_csv(tmp_path / "b.csv", rows, pixel_mm=(2.5, 0.7, 0.5))  # (z, y, x): x 0.5 mm, y 0.7 mm
    with out.open(newline="") as fh:
        recs = list(csv.DictReader(fh))
    assert [float(r["width_mm"]) for r in recs] == [10.0, 2.0] and [float(r["height_mm"]) for r in recs] == [3.5, 7.0]
    np.testing.assert_allclose(read_boxes_csv(out), rows, atol=1e-4)
    assert "width_mm" not in (write_boxes_csv(tmp_path / "px.csv", rows).read_text().splitlines()[0])
    with pytest.raises(ValueError, match="positive numbers of mm"):
        write_boxes_csv(tmp_path / "bad.csv", rows, pixel_mm=(0.0, 0.5))
    assert not (tmp_path / "bad.csv").exists()
    truth = write_boxes_csv(tmp_path / "truth.json", rows[:, :5])  # a volume's lesion boxes: no scores (null)
    assert [r["score"] for r in json.loads(truth.read_text())["boxes"]] == [None, None]
    np.testing.assert_allclose(read_boxes_csv(truth), np.column_stack([rows[:, :5], [np.nan] * 2]), atol=1e-4)
    np.testing.assert_allclose(read_boxes_csv(write_boxes_csv(tmp_path / "t.csv", rows[:, :5]))[:, 5], [np.nan] * 2)
    with pytest.raises(ValueError, match=r"boxes of shape \(2, 4\): expected \(N, 6\)"):
        write_boxes_csv(tmp_path / "bad.csv", rows[:, 1:5])
    assert not (tmp_path / "bad.csv").exists()


@pytest.mark.parametrize("name", ["ü-name", "-lead", "a b", "x" * 65])
def test_a_model_name_refusal_says_which_characters(name) -> None:
    """Regression: 'ü-name' was refused as not "letters": the rule is ASCII letters; it says so."""
    from napari_lidnet._training.export import valid_model_name

    with pytest.raises(ValueError, match=r"use 1-64 ASCII letters \(a-z, A-Z\), digits"):
        valid_model_name(name)
    assert valid_model_name(" lab-2.v1 ") == "lab-2.v1"
