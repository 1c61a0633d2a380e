"""DICOM reading: real pydicom test files and synthetic series written in tmp_path."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from conftest import listing, make_ct_slice, synthetic_hu, write_enhanced_ct, write_series
from pydicom.data import get_testdata_file

from napari_lidnet.io.dicom_read import read_dicom
from napari_lidnet.io.dicom_scan import list_dicom_series


def test_ct_small_single_file_hu_and_geometry():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    (vol,) = read_dicom(path)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.hu.dtype == np.float32 and vol.hu.shape == (128, 128)
    np.testing.assert_array_equal(vol.hu, expected)
    assert vol.spacing == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert vol.metadata["image_position_patient"] == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert vol.metadata["modality"] == "CT"
    assert vol.metadata["source_tags"]["PatientID"] == ds.PatientID
    assert vol.metadata["source_tags"]["KVP"] == pytest.approx(float(ds.KVP))
    assert vol.metadata["warnings"] == []


def test_jpeg2000_ct_decodes_like_pydicom():
    path = get_testdata_file("693_J2KI.dcm")
    ds = pydicom.dcmread(path)
    (vol,) = read_dicom(path)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(vol.hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_undecodable_transfer_syntax_names_syntax_and_file(tmp_path):
    src = get_testdata_file("JPEG2000.dcm")
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder installed
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # a CT image, not a screen
    bad = tmp_path / "mpeg.dcm"
    ds.save_as(bad)
    with pytest.raises(ValueError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(bad)
    msg = str(err.value)
    assert "MPEG2" in msg and "1.2.840.10008.1.2.4.100" in msg and "mpeg.dcm" in msg


def test_rgb_secondary_capture_is_refused():
    with pytest.raises(ValueError, match="samples per pixel"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(get_testdata_file("SC_rgb_jpeg.dcm"))


def test_multi_series_folder_sorted_by_position_with_per_slice_rescale(two_series_dir):
    d = two_series_dir
    before = listing(d["root"])
    infos = list_dicom_series(d["root"])
    assert [(i.uid, i.n_slices, i.rows, i.cols) for i in infos] == [(d["uid_a"], 4, 12, 10), (d["uid_b"], 3, 8, 8)]
    assert infos[0].description == "abdomen A" and infos[0].modality == "CT"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean series gives no warning
        vols = read_dicom(d["root"])
    a, b = vols
    np.testing.assert_array_equal(a.hu, d["hu_a"])
    assert a.spacing == pytest.approx((2.5, 0.7, 0.8))
    assert a.origin == pytest.approx((10.0, -120.0, -100.0))
    np.testing.assert_allclose(a.direction, np.eye(3))
    assert a.metadata["files"] == [str(f) for f in d["files_a"]]
    assert a.metadata["series_uid"] == d["uid_a"] and a.name == "abdomen A"
    # series B was written at z = 5, 0, -5: ascending z means reversed file order
    np.testing.assert_array_equal(b.hu, d["hu_b"][::-1])
    assert b.origin[0] == pytest.approx(-5.0) and b.spacing[0] == pytest.approx(5.0)
    assert listing(d["root"]) == before  # reading writes nothing


def test_series_uid_selects_one(two_series_dir):
    d = two_series_dir
    (b,) = read_dicom(d["root"], series_uid=d["uid_b"])
    assert b.hu.shape == (3, 8, 8)
    with pytest.raises(ValueError, match="no series with SeriesInstanceUID 9.9"):
        read_dicom(d["root"], series_uid="9.9")


def test_oblique_orientation_sorted_along_normal(tmp_path):
    c, s = np.cos(0.4), np.sin(0.4)
    row, col = np.array([c, s, 0.0]), np.array([0.0, 0.0, -1.0])  # coronal-ish, rotated
    normal = np.cross(row, col)
    hu = synthetic_hu((3, 6, 6), seed=3)
    for k, off in enumerate([2.0, 0.0, 1.0]):  # written out of order
        pos = np.array([5.0, 6.0, 7.0]) + off * 3.0 * normal
        make_ct_slice(
            tmp_path / f"s{k}.dcm", hu[k] + 1024, series_uid="1.2.3.4", position=tuple(pos), orientation=(*row, *col)
        )
    (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu[[1, 2, 0]])
    assert vol.spacing[0] == pytest.approx(3.0, abs=1e-4)
    np.testing.assert_allclose(vol.direction, np.stack([row, col, normal], axis=1), atol=1e-6)


def test_uneven_spacing_warns_and_uses_median(tmp_path):
    hu = synthetic_hu((4, 6, 6))
    with pytest.warns(UserWarning, match="uneven slice spacing"):
        write_series(tmp_path, hu, series_uid="1.2.3.5", z_positions=[0.0, 2.0, 4.0, 9.0])
        (vol,) = read_dicom(tmp_path)
    assert vol.spacing[0] == pytest.approx(2.0)
    assert any("uneven" in w for w in vol.metadata["warnings"])


def test_gantry_tilt_warns(tmp_path):
    hu = synthetic_hu((3, 6, 6))
    for k in range(3):
        make_ct_slice(
            tmp_path / f"t{k}.dcm",
            hu[k] + 1024,
            series_uid="1.2.3.6",
            position=(0.0, 0.5 * k, 2.0 * k),
            extra={"GantryDetectorTilt": "14.0"},
        )
    with pytest.warns(UserWarning, match="gantry tilt"):
        (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing[0] == pytest.approx(np.hypot(0.5, 2.0))
    # stacking axis follows the real slice positions, so world positions are right
    np.testing.assert_allclose(vol.affine() @ [2, 0, 0, 1], [0.0, 1.0, 4.0, 1.0], atol=1e-6)


def test_non_ct_modality_warns(tmp_path):
    write_series(tmp_path, synthetic_hu((2, 4, 4)), series_uid="1.2.3.7", modality="MR")
    with pytest.warns(UserWarning, match="modality is 'MR'"):
        (vol,) = read_dicom(tmp_path)
    assert "MR" in vol.metadata["warnings"][0]


def test_mixed_sizes_refused_naming_series(tmp_path):
    make_ct_slice(tmp_path / "a.dcm", np.zeros((4, 4)), series_uid="1.2.3.8", position=(0, 0, 0), description="mix")
    make_ct_slice(tmp_path / "b.dcm", np.zeros((5, 4)), series_uid="1.2.3.8", position=(0, 0, 1), description="mix")
    with pytest.raises(ValueError, match=r"series 'mix' \(1.2.3.8\) mixes image sizes.*4x4: a.dcm.*5x4: b.dcm"):
        read_dicom(tmp_path)


def test_two_series_without_a_series_uid_in_one_folder_stay_apart(tmp_path):
    """Files lacking SeriesInstanceUID are grouped by what one series shares: an abdomen (0.98 mm pixels) and a
    chest (0.84 mm, another study) in one folder open as two volumes, each at its own pixel size."""
    for k in range(3):
        make_ct_slice(tmp_path / f"abd{k}.dcm", synthetic_hu((6, 6), k) + 1024, series_uid="",
                      position=(0, 0, 2.0 * k), pixel_spacing=(0.98, 0.98), study_uid="1.2.3.100")  # fmt: skip
    for k in range(2):
        make_ct_slice(tmp_path / f"chest{k}.dcm", synthetic_hu((6, 6), 9 + k) + 1024, series_uid="",
                      position=(0, 0, 700.0 + 5 * k), pixel_spacing=(0.84, 0.84), study_uid="1.2.3.200")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "uneven spacing" or "gantry tilt" from a merged pair
        vols = read_dicom(tmp_path)
    assert [(v.hu.shape[0], v.spacing[1]) for v in vols] == [(3, pytest.approx(0.98)), (2, pytest.approx(0.84))]


def test_bad_inputs_clear_messages_and_nothing_written(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty"):
        read_dicom(empty)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("hello")
    with pytest.raises(ValueError, match="contains no DICOM image"):
        read_dicom(notes)
    with pytest.raises(FileNotFoundError):
        read_dicom(tmp_path / "missing")

    trunc = tmp_path / "trunc"
    trunc.mkdir()
    good = make_ct_slice(trunc / "full.dcm", np.ones((16, 16)), series_uid="1.2.3.9", position=(0, 0, 0))
    data = good.read_bytes()
    (trunc / "full.dcm").write_bytes(data[:-100])
    before = listing(tmp_path)
    with pytest.raises(ValueError, match="full.dcm: pixel data cannot be read, the file may be truncated"):
        read_dicom(trunc)
    (trunc / "full.dcm").write_bytes(data[:60])  # header cut inside the preamble
    with pytest.raises(ValueError, match="(?s)unreadable DICOM file.*full.dcm"):
        read_dicom(trunc)

    nopix = tmp_path / "nopix"
    nopix.mkdir()
    make_ct_slice(nopix / "hdr.dcm", np.ones((4, 4)), series_uid="1.2.3.10", position=(0, 0, 0), with_pixels=False)
    with pytest.raises(ValueError, match="hdr.dcm: DICOM file has no PixelData"):
        read_dicom(nopix)
    assert [p for p in listing(tmp_path) if not p[0].startswith(("nopix", "trunc"))] == [
        p for p in before if not p[0].startswith(("nopix", "trunc"))
    ]


def test_dicomdir_and_pydicom_truncated_files():
    with pytest.raises(ValueError, match="MR_truncated.dcm: pixel data cannot be read"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(get_testdata_file("MR_truncated.dcm"))
    with pytest.raises(ValueError, match="no DICOM image.*RTPLAN"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(get_testdata_file("rtplan_truncated.dcm"))


def test_dicomdir_is_skipped(tmp_path, two_series_dir):
    root = two_series_dir["root"]
    dicomdir = get_testdata_file("DICOMDIR")
    if dicomdir is None:
        pytest.skip("pydicom test DICOMDIR not available")
    shutil.copy(dicomdir, root / "DICOMDIR")
    assert [i.n_slices for i in list_dicom_series(root)] == [4, 3]


def test_enhanced_ct_frames_take_their_functional_groups(tmp_path):
    """An Enhanced CT file (one file, the rescale, spacing and positions in the functional groups) reads as the
    same HU and geometry as single-frame files would: frames sorted by position, each with its own rescale."""
    hu = synthetic_hu((4, 12, 10), seed=3)
    zs = [40.0, 37.5, 35.0, 32.5]  # stored head first: the volume runs feet to head like a single-frame series
    sop = write_enhanced_ct(tmp_path / "enh.dcm", hu, zs, intercepts=[-1024, -1024, -2048, -1024])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no PixelSpacing", no "sorted by InstanceNumber"
        (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu[::-1])
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.7)) and vol.origin == pytest.approx((32.5, -60.0, -50.0))
    assert vol.metadata["frame_numbers"] == [4, 3, 2, 1] and vol.metadata["instance_numbers"] == [4, 3, 2, 1]
    assert vol.metadata["sop_instance_uids"] == [sop] * 4
    assert list_dicom_series(tmp_path)[0].n_slices == 4


def test_enhanced_ct_written_back_references_its_frames(tmp_path):
    from napari_lidnet.io.dicom_write import write_dicom_series

    hu = synthetic_hu((3, 8, 8), seed=4)
    (tmp_path / "in").mkdir()
    sop = write_enhanced_ct(tmp_path / "in" / "enh.dcm", hu, [0.0, 2.5, 5.0])
    (vol,) = read_dicom(tmp_path / "in")
    files = write_dicom_series(vol, tmp_path / "out", "denoised")
    refs = [pydicom.dcmread(f).SourceImageSequence[0] for f in files]
    assert [(r.ReferencedSOPInstanceUID, int(r.ReferencedFrameNumber)) for r in refs] == [(sop, 1), (sop, 2), (sop, 3)]
    assert {r.ReferencedSOPClassUID for r in refs} == {"1.2.840.10008.5.1.4.1.1.2.1"}
    (back,) = read_dicom(tmp_path / "out")
    np.testing.assert_allclose(back.hu, hu, atol=0.5)
    # a boxes export names each frame by the instance's UID and its frame number, not as an instance number
    from napari_lidnet.io.boxes_io import slice_columns

    columns = slice_columns(vol.metadata, 3)
    assert columns["frame_number"] == [1, 2, 3] and columns["sop_instance_uid"] == [sop] * 3
    assert "instance_number" not in columns


def test_localizers_are_left_out_and_the_axial_series_opens(tmp_path):
    """A scout in the series (or in its own, larger-matrix series) is left out with a note: the axial slices open,
    and the CLI's default series is the one with the most slices, as Load CT's list orders them."""
    write_series(tmp_path, synthetic_hu((3, 8, 8), seed=5), series_uid="1.2.3.40", description="axial")
    scout = np.full((32, 64), 1024.0)
    coronal, localizer = (1, 0, 0, 0, 0, -1), {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}
    make_ct_slice(tmp_path / "loc_same.dcm", scout, series_uid="1.2.3.40", position=(0, 0, 0),
                  orientation=coronal, extra=localizer)  # fmt: skip
    make_ct_slice(tmp_path / "loc_own.dcm", scout, series_uid="1.2.3.41", position=(0, 0, 0), description="Topogram",
                  orientation=coronal, extra=localizer)  # fmt: skip
    with pytest.warns(UserWarning, match="left out 2 localizer images"):
        vols = read_dicom(tmp_path)
    assert [v.metadata["series_description"] for v in vols] == ["axial"] and vols[0].hu.shape == (3, 8, 8)
    # no localizer: a 2-slice series of larger images comes after the 3-slice one
    (tmp_path / "loc_same.dcm").unlink()
    (tmp_path / "loc_own.dcm").unlink()
    write_series(tmp_path / "big", synthetic_hu((2, 32, 32), seed=6), series_uid="1.2.3.42", description="big")
    assert [v.metadata["series_description"] for v in read_dicom(tmp_path)] == ["axial", "big"]
    assert [s.description for s in list_dicom_series(tmp_path)] == ["axial", "big"]


def test_mixed_pixel_spacing_refused_naming_files(tmp_path):
    make_ct_slice(tmp_path / "a.dcm", np.zeros((4, 4)), series_uid="1.2.3.9", position=(0, 0, 0), description="mix")
    make_ct_slice(tmp_path / "b.dcm", np.zeros((4, 4)), series_uid="1.2.3.9", position=(0, 0, 1), description="mix",
                  pixel_spacing=(0.8, 0.8))  # fmt: skip
    with pytest.raises(ValueError, match=r"mixes pixel spacings \(mm\).*0.8000x0.8000: b.dcm"):
        read_dicom(tmp_path)


def test_raw_dicom_without_preamble_reads(tmp_path):
    """Files without the Part 10 header (no preamble, no file meta: older archives), without a suffix."""
    hu = synthetic_hu((2, 6, 6), seed=7)
    files = write_series(tmp_path / "p10", hu, series_uid="1.2.3.50")
    (tmp_path / "raw").mkdir()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        with open(tmp_path / "raw" / f"{k:08d}", "wb") as fh:  # the data set alone: no preamble, "DICM", file meta
            out = pydicom.filebase.DicomFileLike(fh)
            out.is_implicit_VR = out.is_little_endian = True
            pydicom.filewriter.write_dataset(out, ds)
    assert (tmp_path / "raw" / "00000000").read_bytes()[:2] == b"\x08\x00"  # a dataset from its first byte
    (vol,) = read_dicom(tmp_path / "raw")
    np.testing.assert_array_equal(vol.hu, hu)


def test_negative_spacing_between_slices_is_a_size(tmp_path):
    """A two-frame file without positions whose SpacingBetweenSlices is negative (some vendors sign it)."""
    hu = synthetic_hu((1, 6, 6), seed=8)
    (f,) = write_series(tmp_path / "one", hu, series_uid="1.2.3.60")
    ds = pydicom.dcmread(f)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.PixelData = np.concatenate([ds.pixel_array] * 2).astype("<u2").tobytes()
    ds.NumberOfFrames, ds.SpacingBetweenSlices = 2, "-2.5"
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    (vol,) = read_dicom(tmp_path / "mf.dcm")
    assert vol.hu.shape[0] == 2 and vol.spacing[0] == 2.5


def test_single_frame_enhanced_files_and_enhanced_series_of_several_files(tmp_path):
    """Enhanced CT with one frame per file (some scanners write a series so): each file's functional groups count;
    frames of several files get image numbers in slice order, one each."""
    hu = synthetic_hu((3, 8, 8), seed=9)
    uid = pydicom.uid.generate_uid()
    for k in range(3):
        write_enhanced_ct(tmp_path / f"f{k}.dcm", hu[k : k + 1], [2.5 * k], intercepts=[(-1024, -2048, -1024)[k]],
                          series_uid=uid)  # fmt: skip
    (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.7)) and vol.metadata["instance_numbers"] == [1, 2, 3]


def test_a_file_that_only_starts_like_dicom_is_not_taken_for_it(tmp_path):
    """A raw binary beside a series whose first bytes happen to read as group 0008 is skipped silently."""
    write_series(tmp_path, synthetic_hu((2, 6, 6), seed=10), series_uid="1.2.3.70")
    (tmp_path / "volume.raw").write_bytes(b"\x08\x00\x10\x00" + bytes(range(256)) * 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (vol,) = read_dicom(tmp_path)
    assert vol.hu.shape == (2, 6, 6)


def _file_set(tmp_path, hu, uid):
    """A DICOMDIR file-set (as a CD or a PACS export writes it: extension-less files under PT/ST/SE folders) holding
    one synthetic series; returns the DICOMDIR's path."""
    from pydicom.fileset import FileSet

    fs = FileSet()
    for f in write_series(tmp_path / "src", hu, series_uid=uid):
        ds = pydicom.dcmread(f)
        for key, value in (("PatientID", "P1"), ("PatientName", "Test^CD"), ("StudyDate", "20260101"),
                           ("StudyTime", "120000"), ("StudyID", "1"), ("AccessionNumber", "1"), ("SeriesNumber", 1)):
            if key not in ds:
                setattr(ds, key, value)
        fs.add(ds)
    fs.write(tmp_path / "cd")
    return tmp_path / "cd" / "DICOMDIR"


def test_dicomdir_opens_the_series_it_lists_and_nothing_else(tmp_path):
    """Opening a CD's DICOMDIR reads the images it indexes (not the DICOMDIR itself, not other files beside it)."""
    hu = synthetic_hu((3, 8, 8), seed=11)
    dicomdir = _file_set(tmp_path, hu, "1.2.3.80")
    write_series(tmp_path / "cd" / "other", synthetic_hu((2, 8, 8), seed=12), series_uid="1.2.3.81")
    (vol,) = read_dicom(dicomdir)
    np.testing.assert_array_equal(vol.hu, hu)
    assert [s.uid for s in list_dicom_series(dicomdir)] == ["1.2.3.80"]
    assert sorted(v.metadata["series_uid"] for v in read_dicom(tmp_path / "cd")) == ["1.2.3.80", "1.2.3.81"]


def test_dicomdir_with_missing_files_reads_the_rest_and_says_so(tmp_path):
    hu = synthetic_hu((3, 8, 8), seed=13)
    dicomdir = _file_set(tmp_path, hu, "1.2.3.82")
    listed = sorted(p for p in dicomdir.parent.rglob("*") if p.is_file() and p.name != "DICOMDIR")
    listed[0].unlink()
    with pytest.warns(UserWarning, match="1 files it lists are missing"):
        (vol,) = read_dicom(dicomdir)
    assert vol.hu.shape == (2, 8, 8)
    for p in listed[1:]:
        p.unlink()
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=r"DICOMDIR without images \(its 3 files are missing\)"):
        read_dicom(dicomdir)
    assert listing(tmp_path) == before


def test_pydicom_dicomdir_reads_its_image_series():
    """pydicom's sample DICOMDIR (CT, CR and MR series of three patients): every image series it lists opens."""
    path = get_testdata_file("DICOMDIR")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CR and MR series are said not to be CT
        vols = read_dicom(path)
    assert {"SmartScore - Gated 0.5 sec", "Routine Brain"} <= {v.name for v in vols}
    assert all(v.metadata["modality"] in ("CT", "CR", "MR") for v in vols)


def test_dicomdir_of_a_cd_mounted_in_lower_case(tmp_path):
    """Linux often mounts an ISO 9660 CD with its upper-case names in lower case: the DICOMDIR's IDs still resolve."""
    hu = synthetic_hu((2, 8, 8), seed=14)
    dicomdir = _file_set(tmp_path, hu, "1.2.3.83")
    for p in sorted(dicomdir.parent.rglob("*"), key=lambda q: -len(q.parts)):
        if p != dicomdir:
            p.rename(p.with_name(p.name.lower()))
    (vol,) = read_dicom(dicomdir)
    np.testing.assert_array_equal(vol.hu, hu)


def _disk_stored(size: int = 32, inside: int = 1000, outside: int = 63536) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.where((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (size / 2 - 1) ** 2, inside, outside)


def test_unsigned_pixel_padding_value_reads_as_padding_not_as_60000_hu(tmp_path):
    """An unsigned series padded with 63536 (-2000 as stored words) outside the circle: read as a -3024 HU fill,
    which the field-of-view code finds, not as +62512 HU of 'tissue'."""
    from napari_lidnet.io.fov import padding_mask

    stored = _disk_stored()
    for k in range(2):
        make_ct_slice(tmp_path / f"s{k}.dcm", stored, series_uid="1.2.3.90", position=(0, 0, 2.5 * k),
                      extra={"PixelPaddingValue": 63536})  # fmt: skip
    with pytest.warns(UserWarning, match="PixelPaddingValue"):
        (vol,) = read_dicom(tmp_path)
    outside = stored == 63536
    assert np.all(vol.hu[:, outside] == -3024) and np.all(vol.hu[:, ~outside] == 1000 - 1024)
    assert padding_mask(vol.hu[0]) is not None


def test_a_slice_without_rescale_gets_the_series_rescale(tmp_path):
    """One slice of three written without RescaleSlope/Intercept (an exporter's slip): it is read with its
    neighbours' rescale, not 1024 HU above them, and the reader says so."""
    stored = np.full((8, 8), 1000)
    files = [make_ct_slice(tmp_path / f"s{k}.dcm", stored, series_uid="1.2.3.91", position=(0, 0, 2.5 * k))
             for k in range(3)]  # fmt: skip
    ds = pydicom.dcmread(files[1])
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(files[1])
    with pytest.warns(UserWarning, match="1 of 3 slices have no usable RescaleSlope/RescaleIntercept"):
        (vol,) = read_dicom(tmp_path)
    assert np.all(vol.hu == 1000 - 1024)


def test_decimal_comma_in_rescale_and_thickness_is_read_as_the_number_it_means(tmp_path):
    f = make_ct_slice(tmp_path / "s.dcm", np.full((8, 8), 100), series_uid="1.2.3.92", slope=1.25, position=(0, 0, 0))
    raw = f.read_bytes()
    f.write_bytes(raw.replace(b"1.25", b"1,25").replace(b"2.5 ", b"2,5 "))
    (vol,) = read_dicom(f)
    assert np.all(vol.hu == 100 * 1.25 - 1024) and vol.metadata["slice_thickness"] == 2.5


def test_stored_values_without_any_rescale_are_flagged(tmp_path):
    """A CT series with no rescale at all and nothing below 0 (stored words, or an 8-bit display copy): read as
    they are, with a note that these are likely not HU."""
    for k in range(2):
        f = make_ct_slice(tmp_path / f"s{k}.dcm", _disk_stored(16, 1000, 24), series_uid="1.2.3.93",
                          position=(0, 0, 2.5 * k))  # fmt: skip
        ds = pydicom.dcmread(f)
        del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(f)
    with pytest.warns(UserWarning, match="no RescaleIntercept and no pixel below 0 HU"):
        (vol,) = read_dicom(tmp_path)
    assert vol.hu.min() == 24


def test_one_slice_without_position_is_left_out_not_stacked_by_guess(tmp_path):
    """Four slices at z = 6, 4, 2, 0 (written in reverse), one without ImagePositionPatient: the other three keep
    their true order and positions (it used to drop every position and stack by InstanceNumber, flipped)."""
    hu = synthetic_hu((4, 6, 6), seed=15)
    files = write_series(tmp_path, hu, series_uid="1.2.3.94", z_positions=[0.0, 2.0, 4.0, 6.0])
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.warns(UserWarning, match="left out 1 of 4 slices without a readable ImagePositionPatient"):
        (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu[[0, 1, 3]])
    assert [p[2] for p in vol.metadata["slice_ipp"]] == [0.0, 2.0, 6.0]


def test_different_images_sharing_one_sop_instance_uid_are_all_read(tmp_path):
    """A broken anonymiser gave three slices one SOPInstanceUID: they are three images (other positions), not
    copies of one."""
    hu = synthetic_hu((3, 6, 6), seed=16)
    for f in write_series(tmp_path, hu, series_uid="1.2.3.95"):
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
        ds.save_as(f)
    shutil.copy(f, tmp_path / "copy.dcm")  # a true copy (same position) is still read once
    with pytest.warns(UserWarning, match="share a SOPInstanceUID but are different images"):
        (vol,) = read_dicom(tmp_path)
    np.testing.assert_array_equal(vol.hu, hu)


def test_a_scout_filed_in_the_axial_series_is_left_out_and_a_real_mix_still_refused(tmp_path):
    """One coronal 16 x 8 image (a scout not marked LOCALIZER) among six axial slices of one series UID: the axial
    volume opens and the note names the scout. Three such images among six are a mix, still refused."""
    hu = synthetic_hu((6, 8, 8), seed=17)
    write_series(tmp_path / "a", hu, series_uid="1.2.3.130")
    scout = dict(series_uid="1.2.3.130", position=(0, 0, 0), orientation=(1, 0, 0, 0, 0, -1))
    make_ct_slice(tmp_path / "a" / "scout.dcm", np.zeros((16, 8)), **scout)
    with pytest.warns(UserWarning, match=r"left out 1 image whose size, pixel spacing or orientation differ.*scout"):
        (vol,) = read_dicom(tmp_path / "a")
    np.testing.assert_array_equal(vol.hu, hu)
    for k in (1, 2):
        make_ct_slice(tmp_path / "a" / f"scout{k}.dcm", np.zeros((16, 8)), **scout)
    with pytest.raises(ValueError, match="mixes image sizes"):
        read_dicom(tmp_path / "a")


def test_a_scout_sorting_first_lends_the_volume_nothing_and_copies_of_shared_uid_images_are_read_once(tmp_path):
    """Review findings: the scout left out must not give the volume its pixel spacing even when its file sorts
    first; a true copy of the second of several images sharing a SOPInstanceUID is still a copy; a padding value
    on some slices only is said without a traceback."""
    hu = synthetic_hu((6, 8, 8), seed=18)
    write_series(tmp_path / "a", hu, series_uid="1.2.3.131")
    make_ct_slice(tmp_path / "a" / "0_scout.dcm", np.zeros((8, 8)), series_uid="1.2.3.131", position=(0, 0, 0),
                  pixel_spacing=(3.0, 3.0), orientation=(1, 0, 0, 0, 0, -1))  # fmt: skip
    with pytest.warns(UserWarning, match="left out 1 image"):
        (vol,) = read_dicom(tmp_path / "a")
    assert vol.spacing[1:] == pytest.approx((0.7, 0.8))
    files = write_series(tmp_path / "b", hu[:3], series_uid="1.2.3.132")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.998"
        ds.save_as(f)
    shutil.copy(files[2], tmp_path / "b" / "zz_copy.dcm")
    with pytest.warns(UserWarning, match="is a copy of"):
        (vol,) = read_dicom(tmp_path / "b")
    np.testing.assert_array_equal(vol.hu, hu[:3])
    stored = _disk_stored(16)
    (tmp_path / "c").mkdir()
    for k in range(3):
        extra = {"PixelPaddingValue": 63536} if k < 2 else {}
        make_ct_slice(tmp_path / "c" / f"s{k}.dcm", stored, series_uid="1.2.3.133", position=(0, 0, 2.5 * k),
                      extra=extra)  # fmt: skip
    with pytest.warns(UserWarning, match="would read as 62512 HU"):
        (vol,) = read_dicom(tmp_path / "c")
    assert np.all(vol.hu[:2, stored == 63536] == -3024) and np.all(vol.hu[2, stored == 63536] == 62512)


def _set_raw(path, keyword: str, vr: str, value: bytes) -> None:
    """Store ``value`` as ``keyword`` byte for byte (a malformed value pydicom would not write)."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    tag = Tag(tag_for_keyword(keyword))
    del ds[tag]
    ds._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    ds.save_as(path)


def test_a_malformed_instance_number_counts_as_missing(tmp_path):
    """Regression: one file with InstanceNumber 'x1' failed its whole series with "invalid literal for
    int()". A bad value is treated as missing: the series opens, sorted by InstanceNumber where it has no
    positions, and the slice keeps no number."""
    from napari_lidnet.io.open_ct import open_ct

    hu = synthetic_hu((4, 16, 16))
    for k in range(4):
        make_ct_slice(tmp_path / f"im{k}.dcm", hu[k] + 1024, series_uid="1.2.3.77", position=(0, 0, 2.0 * k),
                      instance_number=k + 1, extra={"ImageOrientationPatient": None})  # fmt: skip
    _set_raw(tmp_path / "im2.dcm", "InstanceNumber", "IS", b"x1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no positions: "sorted by InstanceNumber"; pydicom on 'x1'
        (vol,) = read_dicom(tmp_path)
        (opened,) = open_ct(tmp_path)
    assert vol.metadata["instance_numbers"] == opened.metadata["instance_numbers"] == [None, 1, 2, 4]
    np.testing.assert_allclose(vol.hu[1:], hu[[0, 1, 3]], atol=0.5)  # the numbered ones in their order


def test_linked_series_folders_are_read_once_and_a_link_loop_ends(tmp_path):
    """Regression: a series folder that is a symbolic link (a curated archive of links into storage)
    was skipped without a word. Linked folders are followed; each real folder is entered once, so a link back up
    neither loops nor reads a series twice."""
    write_series(tmp_path / "arch" / "P1", synthetic_hu((3, 16, 16)), series_uid="1.2.3.61", description="one")
    write_series(tmp_path / "storage" / "P2", synthetic_hu((2, 16, 16), 1), series_uid="1.2.3.62", description="two")
    (tmp_path / "arch" / "P2").symlink_to(tmp_path / "storage" / "P2", target_is_directory=True)
    (tmp_path / "arch" / "P1" / "up").symlink_to(tmp_path / "arch", target_is_directory=True)  # a loop
    infos = list_dicom_series(tmp_path / "arch")
    assert sorted((s.description, s.n_slices) for s in infos) == [("one", 3), ("two", 2)]
    (vol,) = read_dicom(tmp_path / "arch", series_uid="1.2.3.62")
    assert all(f.startswith(str(tmp_path / "arch" / "P2")) for f in vol.metadata["files"])  # named as linked


def test_a_series_without_uid_has_one_key_whatever_path_reaches_it(tmp_path, monkeypatch):
    """Regression: the stand-in key of a series without SeriesInstanceUID held its folder as typed, so
    'arch', '/abs/arch' and a moved copy gave three keys (and batch outputs three names)."""
    write_series(tmp_path / "arch" / "S", synthetic_hu((2, 16, 16)), series_uid="", description="anon")
    monkeypatch.chdir(tmp_path)
    keys = [read_dicom(p)[0].metadata["series_key"] for p in ("arch", tmp_path / "arch", "arch/../arch")]
    shutil.copytree(tmp_path / "arch", tmp_path / "elsewhere" / "copy")
    keys.append(read_dicom(tmp_path / "elsewhere" / "copy")[0].metadata["series_key"])
    assert len(set(keys)) == 1 and keys[0].startswith("no-series-uid:S:"), keys


def test_the_series_picker_names_a_series_as_its_layer_is_named(tmp_path):
    """Regression: a series without a description was listed as '(no description)' while its layer
    was named 'CT 30.12322', and one without a UID showed the tail of its stand-in key ('...00,0.000'). The picker
    starts with the layer's name; a series without a UID says so and where it lies."""
    write_series(tmp_path / "a", synthetic_hu((2, 16, 16)), series_uid="1.2.3.4.5.630.12322", description="")
    write_series(tmp_path / "b" / "S", synthetic_hu((3, 16, 16), 1), series_uid="", description="Body 3.0")
    write_series(tmp_path / "c", synthetic_hu((4, 16, 16), 2), series_uid="1.2.3.4.5.977", description="Chest")
    labels = {s.n_slices: s.label() for s in list_dicom_series(tmp_path)}
    names = {v.hu.shape[0]: v.name for v in read_dicom(tmp_path)}
    assert labels[2].startswith(names[2] + " [CT, 2 x 16 x 16]") and names[2] == "CT 30.12322", labels
    assert labels[3] == "Body 3.0 [CT, 3 x 16 x 16] (no series UID; in b/S)", labels
    assert labels[4] == "Chest [CT, 4 x 16 x 16] ....4.5.977" and names[4] == "Chest", labels


def test_the_scans_own_window_is_its_first_valid_stored_one(tmp_path):
    """Regression: where a series' first stored window was invalid (width 0), "scan's own" fell back to soft
    tissue while "scan's own 2" named the next valid window. The scan's own is its first valid window now, and the
    further presets count valid windows only."""
    from napari_lidnet.io.windowing import SCAN_WINDOW, level_width, stored_presets

    windows = {"WindowCenter": ["40", "300", "-600"], "WindowWidth": ["0", "1500", "1200"],
               "WindowCenterWidthExplanation": ["BROKEN", "BONE", "LUNG"]}  # fmt: skip
    write_series(tmp_path / "s", synthetic_hu((2, 16, 16)), series_uid="1.2.3.62", extra=windows)
    meta = read_dicom(tmp_path / "s")[0].metadata
    assert level_width(SCAN_WINDOW, meta) == (300.0, 1500.0)
    assert stored_presets(meta) == [f"{SCAN_WINDOW} 2: LUNG"]
    assert level_width(f"{SCAN_WINDOW} 2: LUNG", meta) == (-600.0, 1200.0)


def test_positions_written_to_a_tenth_of_a_mm_stack_at_their_mean_spacing(tmp_path):
    """Regression: 0.625 mm slices whose positions a scanner wrote to 0.1 mm read 0.6 mm (the median
    step), 4% short, with an "uneven slice spacing" warning."""
    from conftest import synthetic_hu, write_series

    zs = [round(10 + 0.625 * k, 1) for k in range(12)]
    write_series(tmp_path / "s", synthetic_hu((12, 8, 8)), series_uid="1.2.826.0.1.3680043.8.498.91", z_positions=zs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (vol,) = read_dicom(tmp_path / "s")
    assert vol.spacing[0] == pytest.approx(0.625, abs=0.005)  # the endpoints are rounded too
    assert not any("uneven" in str(w.message) for w in caught)
    zs = [10.123 + 0.5 * k + (0.1 if k > 3 else 0.0) for k in range(8)]  # review: a real 0.6 mm step, not rounding
    write_series(tmp_path / "t", synthetic_hu((8, 8, 8)), series_uid="1.2.826.0.1.3680043.8.498.95", z_positions=zs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (vol,) = read_dicom(tmp_path / "t")
    assert vol.spacing[0] == pytest.approx(0.5) and any("uneven" in str(w.message) for w in caught)


def test_a_missing_pixel_spacing_names_the_detectors_and_a_two_patient_folder_says_so(tmp_path, capsys):
    """Regression: 'assuming 1 mm pixels' did not name the ImagerPixelSpacing the file has (sizes 2.5x
    too small, unexplained); the largest series was picked across two patients without a word."""
    from conftest import synthetic_hu, write_series

    from napari_lidnet.cli.common import open_single

    files = write_series(tmp_path / "a", synthetic_hu((3, 8, 8)), series_uid="1.2.826.0.1.3680043.8.498.92")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.ImagerPixelSpacing = [2.5, 2.5]
        ds.save_as(f)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_dicom(tmp_path / "a")
    assert any("ImagerPixelSpacing 2.5 x 2.5 mm is at the detector" in str(w.message) for w in caught)
    other = write_series(tmp_path / "b", synthetic_hu((2, 8, 8)), series_uid="1.2.826.0.1.3680043.8.498.93")
    for f in other:
        ds = pydicom.dcmread(f)
        ds.PatientID = "SOMEONE-ELSE"
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        open_single(str(tmp_path))
    assert "holds 2 series of 2 patients" in capsys.readouterr().err


def test_a_16_bit_secondary_capture_placed_in_the_patient_is_ct_and_a_screen_alone_says_so(tmp_path):
    """Regression: the screen-capture rule also refused a workstation's CT export stored as a 16-bit
    Secondary Capture with its geometry; a screen opened alone said "contains no DICOM image"."""
    from conftest import synthetic_hu, write_series

    files = write_series(tmp_path / "sc", synthetic_hu((3, 8, 8)), series_uid="1.2.826.0.1.3680043.8.498.94")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        del ds.RescaleIntercept, ds.RescaleSlope
        ds.save_as(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stored values without a rescale: said
        (vol,) = read_dicom(tmp_path / "sc")
    assert vol.hu.shape == (3, 8, 8)
    with pytest.raises(ValueError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(get_testdata_file("SC_rgb_small_odd.dcm"))
    assert "a screen capture (colour image, 3 samples per pixel" in str(err.value) and "no DICOM image" not in str(
        err.value)


@pytest.mark.parametrize("slope", [b"ab", b"0 "])
def test_an_unusable_rescale_slope_is_refused_not_read_as_stored_values(tmp_path, slope) -> None:
    """Regression: a series whose RescaleSlope is malformed or 0 (its intercept -1024 there) was read as
    stored values, air at +24 HU, with a note blaming a missing intercept, and the models ran on it."""
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    files = write_series(tmp_path / "ct", synthetic_hu((3, 16, 16), seed=1), series_uid="1.2.826.0.1.3680043.8.498.61")
    for f in files:  # the bytes as a broken writer left them ("ab" is no number pydicom would write)
        ds = pydicom.dcmread(f)
        ds[0x00281053] = RawDataElement(Tag(0x00281053), "DS", 2, slope, 0, False, True)
        ds.save_as(f)
    with pytest.raises(ValueError, match="RescaleSlope '(ab|0)' is not a usable slope"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_dicom(tmp_path / "ct")


def test_a_pixel_spacing_of_zero_is_taken_as_missing(tmp_path) -> None:
    """Regression: PixelSpacing 0\\0 was accepted: a DICOM output kept it and sizes failed after the run."""
    import pydicom

    files = write_series(tmp_path / "ct", synthetic_hu((3, 16, 16), seed=1), series_uid="1.2.826.0.1.3680043.8.498.62")
    for f in files:
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = [0, 0]
        ds.save_as(f)
    with pytest.warns(UserWarning, match=r"PixelSpacing 0 x 0 mm is not a pixel size; assuming 1 mm"):
        (vol,) = read_dicom(tmp_path / "ct")
    assert vol.spacing[-2:] == (1.0, 1.0) and vol.metadata["spacing_assumed"]
