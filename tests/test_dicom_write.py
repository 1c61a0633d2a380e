"""DICOM writing: round trip through the plugin's own reader, geometry included."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from conftest import listing, synthetic_hu, write_series

from napari_lidnet.io.dicom_read import read_dicom
from napari_lidnet.io.dicom_write import write_dicom_series
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.volume import CTVolume


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.mark.parametrize("oblique", [False, True])
def test_round_trip_hu_and_geometry(tmp_path, oblique):
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 400, size=(5, 12, 9)).astype(np.float32)
    hu[0, 0, 0], hu[1, 1, 1] = -1024.4, 3071.2
    direction = _rotation(0.3, -0.2, 0.5) if oblique else np.eye(3)
    vol = CTVolume(
        hu,
        (2.0, 0.75, 0.6),
        origin=(-50.0, 20.5, 10.25),
        direction=direction,
        name="src",
        metadata={"source_tags": {"PatientID": "P1", "PatientName": "Doe^J", "KVP": 100.0, "StudyDate": "20200101"}},
    )
    out = tmp_path / "out"
    files = write_dicom_series(vol, out, "LIDnet denoised")
    assert [f.name for f in files] == [f"IM{k:05d}.dcm" for k in range(1, 6)]

    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.PatientID == "P1" and str(ds.PatientName) == "Doe^J" and float(ds.KVP) == 100.0
    assert ds.pixel_array.dtype == np.int16 and float(ds.RescaleSlope) == 1.0
    uids = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
    assert len(uids) == 5

    (back,) = read_dicom(out)
    assert back.metadata["series_description"] == "LIDnet denoised"
    assert back.metadata["warnings"] == []
    np.testing.assert_allclose(back.hu, np.rint(hu), atol=0)
    assert np.abs(back.hu - hu).max() <= 0.5 + 1e-3
    assert back.spacing == pytest.approx(vol.spacing, abs=1e-5)
    assert back.origin == pytest.approx(vol.origin, abs=1e-5)
    np.testing.assert_allclose(back.direction, direction, atol=1e-6)
    np.testing.assert_allclose(back.affine(), vol.affine(), atol=1e-4)


def test_wide_range_uses_intercept(tmp_path):
    hu = np.array([[[-30000.0, 30000.0], [5000.0, 34000.0]]], dtype=np.float32)
    vol = CTVolume(hu[0], (1.0, 1.0))
    (f,) = write_dicom_series(vol, tmp_path / "w", "wide")
    ds = pydicom.dcmread(f)
    assert float(ds.RescaleIntercept) != 0.0
    (back,) = read_dicom(f)
    np.testing.assert_array_equal(back.hu, hu[0])


def test_single_slice_keeps_patient_position(tmp_path):
    from pydicom.data import get_testdata_file

    (src,) = read_dicom(get_testdata_file("CT_small.dcm"))
    (f,) = write_dicom_series(src, tmp_path / "one", "copy")
    (back,) = read_dicom(f)
    np.testing.assert_array_equal(back.hu, src.hu)
    assert back.metadata["image_position_patient"] == pytest.approx(src.metadata["image_position_patient"])
    assert back.metadata["source_tags"]["StudyInstanceUID"] == src.metadata["source_tags"]["StudyInstanceUID"]
    assert back.metadata["series_uid"] != src.metadata["series_uid"]


def test_refuses_non_empty_folder_and_bad_values(tmp_path):
    vol = CTVolume(np.zeros((4, 4), np.float32), (1.0, 1.0))
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = listing(tmp_path)
    with pytest.raises(ValueError, match="busy: folder is not empty"):
        write_dicom_series(vol, out, "x")
    bad = CTVolume(np.full((4, 4), np.nan, np.float32), (1.0, 1.0))
    with pytest.raises(ValueError, match="NaN"):
        write_dicom_series(bad, tmp_path / "new", "x")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_nothing_and_keeps_the_error(tmp_path, monkeypatch, existing):
    """A write that fails half-way through its third file (a full disk) removes every file it wrote, the
    half-written one too, and the folder it created; the caller sees the disk's error, not a clean-up error."""
    vol = CTVolume(np.zeros((4, 8, 8), np.float32), (1.0, 0.5, 0.5), name="src")
    real = pydicom.dcmwrite
    calls = []

    def full_disk(path, ds, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            path.write_bytes(b"DICM half")  # the partial file a full disk leaves
            raise OSError(28, "No space left on device")
        return real(path, ds, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", full_disk)
    out = tmp_path / "out" if existing else tmp_path / "new" / "exports" / "out"  # folders made on the way too
    if existing:
        out.mkdir()
    with pytest.raises(OSError, match="No space left"):
        write_dicom_series(vol, out, "x")
    assert len(calls) == 3
    assert (out.exists() and not any(out.iterdir())) if existing else not (tmp_path / "new").exists()


def test_a_series_with_a_missing_slice_keeps_each_slices_position(tmp_path):
    """A gap in the source (one slice missing) stays a gap in the written series: every slice keeps its own
    ImagePositionPatient and InstanceNumber and references its source slice, so the derived series lines up with
    its source slice by slice; the scan's windows (all of them, with their names), gantry tilt and contrast agent
    are kept."""
    from conftest import synthetic_hu, write_series

    zs = [0.0, 5.0, 10.0, 20.0, 25.0]  # 15 mm missing
    window = {"WindowCenter": ["-600", "40"], "WindowWidth": ["1500", "400"], "ContrastBolusAgent": "IOMERON",
              "WindowCenterWidthExplanation": ["LUNG", "SOFT"], "GantryDetectorTilt": "0"}  # fmt: skip
    sources = write_series(tmp_path / "gap", synthetic_hu((5, 8, 8)), series_uid="1.2.3.99", z_positions=zs,
                           extra=window)  # fmt: skip
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        (src,) = read_dicom(tmp_path / "gap")
    assert [p[2] for p in src.metadata["slice_ipp"]] == zs
    assert src.metadata["instance_numbers"] == [5, 4, 3, 2, 1]  # write_series numbers them head first
    files = write_dicom_series(src, tmp_path / "out", "LIDnet denoised")
    assert [f.name for f in files] == [f"IM{n:05d}.dcm" for n in (5, 4, 3, 2, 1)]  # named as PACS lists them
    for f, source, z in zip(files, sources, zs):
        ds, orig = pydicom.dcmread(f, stop_before_pixels=True), pydicom.dcmread(source, stop_before_pixels=True)
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(z)
        assert ds.InstanceNumber == orig.InstanceNumber  # the image number a reader knows from PACS
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == orig.SOPInstanceUID
        assert [float(v) for v in ds.WindowCenter] == [-600.0, 40.0] and [float(v) for v in ds.WindowWidth] == [
            1500.0, 400.0]  # fmt: skip
        assert list(ds.WindowCenterWidthExplanation) == ["LUNG", "SOFT"] and float(ds.GantryDetectorTilt) == 0.0
        assert ds.ContrastBolusAgent == "IOMERON"


def test_a_lossy_compressed_source_is_said_at_open_and_stays_flagged_in_what_is_written(tmp_path):
    """PS3.3 C.7.6.1.1.5: an image once lossy compressed stays flagged in everything derived from it, even when
    stored uncompressed; the reader says so at open (noise measures see the codec, not the scanner)."""
    from conftest import write_series

    hu = np.random.default_rng(0).normal(40.0, 10.0, (2, 16, 16)).round()
    lossy = {"LossyImageCompression": "01", "LossyImageCompressionRatio": "12.5",
             "LossyImageCompressionMethod": "ISO_15444_1"}  # fmt: skip
    write_series(tmp_path / "src", hu, series_uid="1.2.826.0.1.3680043.8.498.77", extra=lossy)
    with pytest.warns(UserWarning, match=r"lossy compressed \(ISO_15444_1, 12:1\)"):
        vol = read_dicom(tmp_path / "src")[0]
    assert any("lossy compressed" in w for w in vol.metadata["warnings"])
    files = write_dicom_series(vol, tmp_path / "out", series_description="denoised")
    ds = pydicom.dcmread(files[0])
    assert ds.LossyImageCompression == "01"
    assert float(ds.LossyImageCompressionRatio) == pytest.approx(12.5)
    assert ds.LossyImageCompressionMethod == "ISO_15444_1"
    plain = read_dicom(tmp_path / "out")[0]  # the written series says the same when it is read back
    assert any("lossy compressed" in w for w in plain.metadata["warnings"])

    write_series(tmp_path / "clean", hu, series_uid="1.2.826.0.1.3680043.8.498.78")
    clean = read_dicom(tmp_path / "clean")[0]
    assert not any("lossy" in w for w in clean.metadata["warnings"])
    assert "LossyImageCompression" not in pydicom.dcmread(write_dicom_series(clean, tmp_path / "o2", "d")[0])


def test_type2_elements_are_written_empty_when_unknown_and_kept_when_the_source_has_them_empty(tmp_path):
    """A validating archive checks the IOD (PS3.3 A.3): every Type 2 element of the CT modules is present in what we
    write, even from a plain array, and one the source holds empty (PositionReferenceIndicator) stays present."""
    from conftest import write_series

    from napari_lidnet.io.dicom_write import TYPE2_TAGS

    bare = CTVolume(np.zeros((2, 8, 8), np.float32), (2.5, 0.7, 0.7), name="array")
    ds = pydicom.dcmread(write_dicom_series(bare, tmp_path / "bare", "denoised")[0])
    assert all(kw in ds for kw in TYPE2_TAGS) and ds.PositionReferenceIndicator == "" and ds.KVP in ("", None)
    (made_by,) = ds.ContributingEquipmentSequence  # this program as the processing equipment, the scanner stays
    assert made_by.Manufacturer == "napari-lidnet" and made_by.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert "Laterality" not in ds  # Type 2C: only where the source had it (a paired body part)

    hu = np.random.default_rng(1).normal(40.0, 10.0, (2, 16, 16)).round()
    given = {"PositionReferenceIndicator": "", "Laterality": "", "KVP": "120", "AcquisitionNumber": "3",
             "IssuerOfPatientID": "HOSP-A", "DerivationDescription": "lossy conversion", "CTDIvol": None}  # fmt: skip
    write_series(tmp_path / "src", hu, series_uid="1.2.826.0.1.3680043.8.498.79", extra=given)
    vol = read_dicom(tmp_path / "src")[0]
    assert vol.metadata["source_tags"]["PositionReferenceIndicator"] == "" and vol.metadata["source_tags"]["KVP"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty binary element (CTDIvol, FD) is left out, not written as ""
        out = pydicom.dcmread(write_dicom_series(vol, tmp_path / "out", "denoised")[0])
    assert "CTDIvol" not in vol.metadata["source_tags"]
    assert out.PositionReferenceIndicator == "" and out.Laterality == "" and float(out.KVP) == 120.0
    assert out.IssuerOfPatientID == "HOSP-A"  # the patient's ID stays tied to its issuer
    assert out.DerivationDescription == "lossy conversion; napari-lidnet: denoised"  # the history, then ours


def test_derived_series_are_numbered_after_their_source(tmp_path):
    """Regression: every derived series was 9001 and every report 9901, so a batch of four series listed four
    9001s in a PACS. Now series N gives 9000 + N (denoised) and 9900 + N (its review report), read from the source."""
    from pydicom.data import get_testdata_file

    from napari_lidnet.findings import box_corners
    from napari_lidnet.io.dicom_sr import SRRegion, write_sr
    from napari_lidnet.io.dicom_write import derived_series_number

    (vol,) = read_dicom(get_testdata_file("CT_small.dcm"))  # a real CT of series number 1
    vol.metadata["source_tags"]["SeriesNumber"] = "7"
    files = write_dicom_series(vol, tmp_path / "den", "LIDnet denoised")
    assert int(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesNumber) == 9007
    sr = write_sr(tmp_path / "sr.dcm", [SRRegion(0, box_corners(3, 4, 9, 10), 4.0, 3.0, 30.0, 0.8, "accepted")],
                  source_tags=vol.metadata["source_tags"])  # fmt: skip
    assert int(pydicom.dcmread(sr).SeriesNumber) == 9907
    (again,) = read_dicom(get_testdata_file("CT_small.dcm"))
    assert again.metadata["source_tags"]["SeriesNumber"] in (1, "1")  # read from the file
    assert [derived_series_number(v, 9000) for v in (None, "", "x", -2, 899, 900)] == [9001] * 4 + [9899, 9001]
    assert derived_series_number("9007", 9900) == 9907  # a report on the re-opened denoised series pairs with 7


def test_blank_sop_uids_give_no_reference_rather_than_an_empty_or_an_original_one(tmp_path):
    """Regression (a real anonymised abdomen): the datasets' SOPInstanceUID and SOPClassUID were blank,
    and the SR wrote empty references (12 dciodvfy errors). The file meta's copies are not used (they may
    be the original, identifying UIDs): the SR and the derived series reference no source image, and stay valid."""
    import pydicom
    from conftest import make_ct_slice

    from napari_lidnet.io.dicom_sr import SRRegion, instance_refs, write_sr

    (tmp_path / "src").mkdir()
    for k in range(2):
        make_ct_slice(tmp_path / "src" / f"s{k}.dcm", np.full((8, 8), 1000), series_uid="1.2.3.121",
                      position=(0, 0, 2.5 * k), instance_number=k + 1, extra={"SOPInstanceUID": "", "SOPClassUID": ""})
    metas = [pydicom.dcmread(f).file_meta.MediaStorageSOPInstanceUID for f in sorted((tmp_path / "src").iterdir())]
    (vol,) = read_dicom(tmp_path / "src")
    assert vol.metadata["sop_instance_uids"] == ["", ""]
    out = pydicom.dcmread(write_dicom_series(vol, tmp_path / "out", "d")[0])
    assert "SourceImageSequence" not in out
    box = SRRegion(0, np.array([[2, 2], [2, 5], [5, 5], [5, 2]], float), 2.1, 2.4, 0.0, 0.9)
    refs = instance_refs(vol.metadata["files"])  # what the navigator's export reads again
    sr = pydicom.dcmread(write_sr(tmp_path / "review.dcm", [box], refs, vol.metadata["source_tags"], "1.2.3.121"))
    text = str(sr)
    assert "CurrentRequestedProcedureEvidenceSequence" not in sr and "ReferencedSOPInstanceUID" not in text
    assert not any(uid in text for uid in metas)


def test_per_image_tags_follow_their_slice(tmp_path):
    """Tube current modulation and a slice compressed lossy on its own: each derived slice carries its source
    slice's mA, mAs, CTDIvol, SliceLocation and lossy flag (they used to be slice 0's on every slice)."""
    from conftest import make_ct_slice

    (tmp_path / "src").mkdir()
    for k in range(4):
        extra = {"XRayTubeCurrent": 100 + 50 * k, "Exposure": 10 + 5 * k, "CTDIvol": 5.0 + k,
                 "SliceLocation": f"{-77.2 + 2.5 * k:.1f}"}  # fmt: skip
        if k == 2:
            extra |= {"LossyImageCompression": "01", "LossyImageCompressionRatio": "10"}
        if k == 3:
            del extra["CTDIvol"]  # this slice does not say: it must not take slice 0's
        if k == 0:
            extra["AcquisitionNumber"] = 1  # the others do not say: Type 2, so present and empty there
        make_ct_slice(tmp_path / "src" / f"s{k}.dcm", np.full((8, 8), 1000), series_uid="1.2.3.120",
                      position=(0, 0, 2.5 * k), instance_number=k + 1, extra=extra)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lossy, blank
        (vol,) = read_dicom(tmp_path / "src")
    files = write_dicom_series(vol, tmp_path / "out", "denoised")
    written = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert [int(ds.XRayTubeCurrent) for ds in written] == [100, 150, 200, 250]
    assert [int(ds.Exposure) for ds in written] == [10, 15, 20, 25]
    assert [float(ds.CTDIvol) if "CTDIvol" in ds else None for ds in written] == [5.0, 6.0, 7.0, None]
    assert [float(ds.SliceLocation) for ds in written] == pytest.approx([-77.2, -74.7, -72.2, -69.7])
    assert [ds.get("LossyImageCompression") for ds in written] == [None, None, "01", None]
    numbers = [str(ds.AcquisitionNumber or "") if "AcquisitionNumber" in ds else None for ds in written]
    assert numbers == ["1", "", "", ""]  # Type 2: present, empty where the source slice does not say


def test_empty_source_windows_get_the_default_and_a_source_without_frame_of_reference_one_stable_uid(tmp_path):
    """Empty WindowCenter/Width in the source give the writer's default window (an empty one is invalid), and two
    series written from one source without FrameOfReferenceUID share a frame of reference (a viewer links them)."""
    from conftest import make_ct_slice

    (tmp_path / "src").mkdir()
    for k in range(2):
        f = make_ct_slice(tmp_path / "src" / f"s{k}.dcm", np.full((8, 8), 1000), series_uid="1.2.3.121",
                          position=(0, 0, 2.5 * k), extra={"WindowCenter": "", "WindowWidth": ""})  # fmt: skip
        ds = pydicom.dcmread(f)
        del ds.FrameOfReferenceUID
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # blank
        (vol,) = read_dicom(tmp_path / "src")
    one, two = (pydicom.dcmread(write_dicom_series(vol, tmp_path / n, "d")[0]) for n in ("a", "b"))
    assert float(one.WindowCenter) == 40.0 and float(one.WindowWidth) == 400.0
    assert one.FrameOfReferenceUID == two.FrameOfReferenceUID and pydicom.uid.UID(one.FrameOfReferenceUID).is_valid


def test_a_long_source_name_is_shortened_never_the_denoised_marker() -> None:
    """Regression (DICOM): "<source> denoised (LIDnet ...)" cut at 64 characters lost the marker, and a
    PACS listed the denoised series under the original's name."""
    from napari_lidnet.io.dicom_write import denoised_description

    assert denoised_description("chest", "default") == "chest denoised (LIDnet default)"
    for source in ("A" * 38, "CHEST W/O CONTRAST 1.0 B30f THIN SLICES AXIAL RECON" * 2):
        for model, sd in (("default", None), ("finetuned-20261206-1403-2 (user)", 12.5)):
            text = denoised_description(source, model, sd)
            assert len(text) <= 64 and " denoised (LIDnet " in text and text.endswith(")"), text
            assert text.startswith(source[:10])
            whole = denoised_description(source, model, sd, whole=True)  # the DerivationDescription's: uncut
            assert whole == f"{source} denoised (LIDnet {model}{f', {sd:g} HU SD removed' if sd else ''})"


def test_release_flags_are_carried_and_no_pixel_size_is_invented(tmp_path) -> None:
    """Regression (DICOM): BurnedInAnnotation and the de-identification flags were dropped from what is
    written (release filters read them); a source without PixelSpacing got a stated 1 mm x 1 mm. The flags travel,
    and a copy of a source without a pixel size states none either (the reader then assumes one again, and says so)."""
    from conftest import make_ct_slice

    (tmp_path / "src").mkdir()
    extra = {"BurnedInAnnotation": "YES", "PatientIdentityRemoved": "YES", "DeidentificationMethod": "site script"}
    for k in range(2):
        f = make_ct_slice(tmp_path / "src" / f"s{k}.dcm", np.full((8, 8), 1000), series_uid="1.2.3.122",
                          position=(0, 0, 2.5 * k), extra=extra)  # fmt: skip
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no pixel spacing: 1 mm assumed, said
        (vol,) = read_dicom(tmp_path / "src")
    assert vol.metadata.get("spacing_assumed")
    out = pydicom.dcmread(write_dicom_series(vol, tmp_path / "out", "d")[0])
    assert (out.BurnedInAnnotation, out.PatientIdentityRemoved, out.DeidentificationMethod) == ("YES", "YES",
                                                                                                 "site script")
    assert "PixelSpacing" not in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (again,) = read_dicom(tmp_path / "out")
    assert again.metadata.get("spacing_assumed")


def test_padding_and_the_de_identification_codes_are_carried(tmp_path) -> None:
    """Regression (a real chest, CLI): a denoised series kept the padding pixels but dropped
    PixelPaddingValue, and copied DeidentificationMethod without the code sequence it refers to. Both travel now:
    the padding value marks exactly the source's padding pixels (in the new series' stored values), the codes are
    the source's; a padding that reads as air (-1024 HU, where the denoiser holds air) is not declared."""
    from conftest import make_ct_slice
    from pydicom.dataset import Dataset

    from napari_lidnet.io.dicom_sr import SRRegion, write_sr

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "113100", "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    yy, xx = np.mgrid[:16, :16]
    outside = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 >= 7**2
    for name, pad, hu_pad in (("unsigned", 63536, -3024.0), ("air", 0, None)):
        src = tmp_path / name
        src.mkdir()
        extra = {"PixelPaddingValue": pad, "PatientIdentityRemoved": "YES", "DeidentificationMethod": "profile",
                 "DeidentificationMethodCodeSequence": [code]}  # fmt: skip
        for k in range(2):
            make_ct_slice(src / f"s{k}.dcm", np.where(outside, pad, 1000), series_uid=f"1.2.3.{123 + len(name)}",
                          position=(0, 0, 2.5 * k), extra=extra)  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unsigned padding is said
            (vol,) = read_dicom(src)
        out = pydicom.dcmread(write_dicom_series(vol, tmp_path / f"{name}-out", "d")[0])
        assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100"]
        if hu_pad is None:
            assert "PixelPaddingValue" not in out
            continue
        stored = out.pixel_array
        assert np.array_equal(stored == out.PixelPaddingValue, outside)
        assert out.PixelPaddingValue * float(out.RescaleSlope) + float(out.RescaleIntercept) == hu_pad
        (again,) = read_dicom(tmp_path / f"{name}-out")
        np.testing.assert_array_equal(again.hu, vol.hu)
        box = SRRegion(0, np.array([[4, 4], [4, 8], [8, 8], [8, 4]], float), 2.8, 2.8, 0.0, 0.9)
        sr = pydicom.dcmread(write_sr(tmp_path / "review.dcm", [box], source_tags=vol.metadata["source_tags"]))
        assert [c.CodeValue for c in sr.DeidentificationMethodCodeSequence] == ["113100"]


def test_a_padding_range_is_carried_whole(tmp_path) -> None:
    """Regression: a source whose PixelPaddingValue..PixelPaddingRangeLimit spans several stored values
    (padding filled with two of them, below air) got a derived series marking only the first: the range travels."""
    from conftest import make_ct_slice

    yy, xx = np.mgrid[:16, :16]
    outside = (yy - 7.5) ** 2 + (xx - 7.5) ** 2 >= 7**2
    stored_in = np.where(outside, np.where(xx % 2 == 0, 0, 300), 3000)  # HU -3024 and -2724 outside, -24 inside
    (tmp_path / "src").mkdir()
    for k in range(2):
        make_ct_slice(tmp_path / "src" / f"s{k}.dcm", stored_in, series_uid="1.2.3.4567", position=(0, 0, 2.5 * k),
                      intercept=-3024.0, extra={"PixelPaddingValue": 0, "PixelPaddingRangeLimit": 400})  # fmt: skip
    (vol,) = read_dicom(tmp_path / "src")
    out = pydicom.dcmread(write_dicom_series(vol, tmp_path / "out", "d")[0])
    lo, hi = sorted((out.PixelPaddingValue, out.PixelPaddingRangeLimit))
    assert np.array_equal((out.pixel_array >= lo) & (out.pixel_array <= hi), outside)
    hu = np.array([lo, hi]) * float(out.RescaleSlope) + float(out.RescaleIntercept)
    np.testing.assert_array_equal(hu, [-3024, -2624])  # the source's range: stored 0..400 at intercept -3024


def test_a_single_slice_keeps_its_scanner_s_slice_location_and_acquisition_number(tmp_path) -> None:
    """Regression (DICOM): a one-slice source (pydicom's CT_small: SliceLocation -77.204, its position -75.70
    along the normal) came back with a SliceLocation worked out from its position, and no AcquisitionNumber."""
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    (vol,) = read_dicom(src)
    out = pydicom.dcmread(write_dicom_series(vol, tmp_path / "out", "d")[0])
    ds = pydicom.dcmread(src)
    assert float(out.SliceLocation) == pytest.approx(float(ds.SliceLocation))
    assert int(out.AcquisitionNumber) == int(ds.AcquisitionNumber)


def test_a_series_from_png_slices_states_no_thickness_and_says_its_orientation_is_assumed(tmp_path, deeplesion_tree):
    """Regression: a series written from DeepLesion PNG slices stated a slice thickness (the slice
    interval) and an axial orientation the PNGs do not give. SliceThickness is Type 2: empty; the orientation, Type 1,
    is written and said to be assumed. A DICOM source keeps both as it gave them."""
    from napari_lidnet.io.open_ct import open_ct

    _root, series, _hus = deeplesion_tree
    (png,) = open_ct(series)
    files = write_dicom_series(png, tmp_path / "from-png", "LIDnet denoised")
    ds = pydicom.dcmread(files[0])
    assert "SliceThickness" in ds and ds.SliceThickness in ("", None)  # present, empty
    assert float(ds.SpacingBetweenSlices) == png.spacing[0]
    assert "gives no patient orientation or position" in ds.ImageComments
    dicom = CTVolume(np.zeros((2, 8, 8), np.float32), (5.0, 0.7, 0.7), (0.0, 0.0, 0.0), np.eye(3), name="ct",
                     metadata={"slice_thickness": 2.5})  # fmt: skip
    ds = pydicom.dcmread(write_dicom_series(dicom, tmp_path / "from-dicom", "LIDnet denoised")[0])
    assert float(ds.SliceThickness) == 2.5 and "ImageComments" not in ds


def test_a_series_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """Regression: `lidnet denoise` killed mid-write left a folder of 3 of 12 valid slices, which looked like
    a whole, shorter series, and every rerun was refused. Until its last slice is written nothing is under the
    output's name (into a new folder, or into an existing empty one); what a killed write left is cleared."""
    import os

    vol = CTVolume(np.zeros((6, 8, 8), np.float32), (2.0, 0.7, 0.7), name="ct")
    real = pydicom.dcmwrite
    seen = []

    def watch(path, *args, **kwargs):
        seen.append(sorted(p.name for p in out.iterdir()) if out.exists() else None)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmwrite", watch)
    for out in (tmp_path / "new", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
            (out / f".lidnet.partial-{2**22 + 7}").mkdir()  # a killed write's leftover (no such process)
        seen.clear()
        files = write_dicom_series(vol, out, "LIDnet denoised")
        assert seen == [None] * 6 if out.name == "new" else all(s == [] or s[0].startswith(".") for s in seen)
        assert sorted(os.listdir(out)) == [f.name for f in files] and len(files) == 6
    assert sorted(os.listdir(tmp_path)) == ["empty", "new"]  # no temporary folder left beside them
    busy = tmp_path / "busy"  # another process writing into the same empty folder: refused, not mixed
    (busy / f".busy.partial-{os.getppid()}.1234abcd").mkdir(parents=True)
    with pytest.raises(ValueError, match="folder is not empty"):
        write_dicom_series(vol, busy, "LIDnet denoised")


def test_a_series_without_positions_says_its_geometry_is_assumed(tmp_path):
    """Regression: a series without ImagePositionPatient/Orientation was written with made-up positions
    stated as the patient's, its copied SliceLocation contradicting them, and its boxes had lps_* columns."""
    import csv

    from napari_lidnet.io.boxes_io import write_volume_boxes

    files = write_series(tmp_path / "src", synthetic_hu((3, 16, 16)), series_uid="1.2.826.0.1.3680043.8.498.71")
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient
        ds.SliceLocation = -100.0 + 2.5 * k
        ds.save_as(f)
    vol = open_ct(tmp_path / "src")[0]
    assert vol.metadata["orientation_unknown"]
    written = write_dicom_series(vol, tmp_path / "out", "denoised")
    for f in written:
        ds = pydicom.dcmread(f)
        assert "assumed" in str(ds.ImageComments)
        assert float(ds.SliceLocation) == pytest.approx(float(ds.ImagePositionPatient[2]))
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "b.csv", np.array([[1, 2, 3, 9, 8, 0.9]]), vol).open()))
    assert not any(k.startswith("lps_") for k in row)


def test_spacing_between_slices_is_along_the_normal_and_absent_when_uneven(tmp_path):
    """Regression: a 15-deg gantry tilt's derived series said 2.5 mm between slices (the planes are
    2.415 mm apart), and a series with a gap said its median step."""
    tilt = np.radians(15.0)
    write_series(tmp_path / "tilt", synthetic_hu((4, 16, 16)), series_uid="1.2.826.0.1.3680043.8.498.81",
                 orientation=(1, 0, 0, 0, np.cos(tilt), np.sin(tilt)))  # fmt: skip
    write_series(tmp_path / "gap", synthetic_hu((4, 16, 16)), series_uid="1.2.826.0.1.3680043.8.498.82",
                 z_positions=[0.0, 2.5, 5.0, 12.5])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tilt and the gap are said when read
        tilted, gapped = open_ct(tmp_path / "tilt")[0], open_ct(tmp_path / "gap")[0]
    (f, *_) = write_dicom_series(tilted, tmp_path / "o1", "tilted")
    assert float(pydicom.dcmread(f).SpacingBetweenSlices) == pytest.approx(2.5 * np.cos(tilt), abs=1e-3)
    (f, *_) = write_dicom_series(gapped, tmp_path / "o2", "gapped")
    assert "SpacingBetweenSlices" not in pydicom.dcmread(f)


def test_a_killed_writes_hidden_series_is_not_read_as_input(tmp_path) -> None:
    """Regression: a `lidnet denoise` killed while writing its DICOM series left `.NAME.partial-PID...`
    (230 of 320 slices), which a folder holding it read as a series; the next write of that name clears it."""
    dead = 2**22 + 12345  # above Linux's largest process id: no process has it
    hidden = tmp_path / "study" / f".den.partial-{dead}.deadbeef"
    write_series(hidden, synthetic_hu((2, 16, 16), seed=4), series_uid="1.2.826.0.1.3680043.8.498.63")
    real = "1.2.826.0.1.3680043.8.498.64"
    write_series(tmp_path / "study" / "real", synthetic_hu((3, 16, 16), seed=5), series_uid=real)
    (vol,) = read_dicom(tmp_path / "study")
    assert vol.metadata["series_uid"] == real and vol.hu.shape[0] == 3
    write_dicom_series(CTVolume(synthetic_hu((2, 16, 16), seed=6), (2.0, 0.7, 0.7)), tmp_path / "study" / "den",
                       "the same name")  # fmt: skip
    assert not hidden.exists()  # the dead process's leftover of that name (another name's may be another machine's)
