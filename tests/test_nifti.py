"""NIfTI CT: read in the DICOM convention whatever axis order the converter stored, scaled to HU, written back with
its geometry; the reader plugin, the CLI and the orientation letters take it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import synthetic_hu, tiny_models, write_series

from napari_lidnet._reader import napari_get_reader
from napari_lidnet.cli import main
from napari_lidnet.io.nifti import read_nifti, write_nifti
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.volume import CTVolume


def as_ras_nifti(vol: CTVolume, path: Path, dtype=np.float32, slope: float = 1.0, inter: float = 0.0) -> Path:
    """``vol`` (identity cosines) stored as a converter that reorients to RAS+ stores it: columns run from the
    patient's left to right flipped, rows from posterior to anterior, with the RAS affine that says so."""
    dz, dy, dx = vol.spacing
    oz, oy, ox = vol.origin
    nz, ny, nx = vol.hu.shape
    stored = vol.hu[:, ::-1, ::-1].transpose(2, 1, 0)  # i: right -> left flipped, j: anterior up, k: superior
    affine = np.array([[dx, 0, 0, -ox - (nx - 1) * dx], [0, dy, 0, -oy - (ny - 1) * dy], [0, 0, dz, oz], [0, 0, 0, 1]])
    img = nib.Nifti1Image(((stored - inter) / slope).astype(dtype), affine)
    img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


@pytest.fixture
def dicom_volume(tmp_path: Path) -> CTVolume:
    write_series(tmp_path / "dcm", synthetic_hu((4, 24, 32), seed=2), series_uid="1.2.3.81")
    return open_ct(tmp_path / "dcm")[0]


def test_a_ras_file_reads_as_its_dicom_series(dicom_volume: CTVolume, tmp_path: Path) -> None:
    path = as_ras_nifti(dicom_volume, tmp_path / "chest.nii.gz", np.int16, slope=1.0, inter=-1024.0)
    (vol,) = open_ct(path)
    np.testing.assert_array_equal(vol.hu, dicom_volume.hu)  # anterior row first, the patient's right column first
    np.testing.assert_allclose(vol.spacing, dicom_volume.spacing)
    np.testing.assert_allclose(vol.origin, dicom_volume.origin, atol=1e-4)
    np.testing.assert_allclose(vol.affine(), dicom_volume.affine(), atol=1e-4)
    assert vol.name == "chest" and vol.metadata["format"] == "nifti" and vol.hu.dtype == np.float32


def test_any_stored_order_keeps_each_value_at_its_patient_position(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(0, 100, (6, 5, 4)).astype(np.float32)  # (i, j, k) of a sagittally stored, rotated volume
    affine = np.array([[0, 0, -2.0, 30], [0.8, 0, 0, -50], [0, -0.7, 0, 120], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "odd.nii"))
    vol = read_nifti(tmp_path / "odd.nii")
    to_lps = vol.affine()
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 1, 3), (4, 0, 1)]:
        lps = np.diag([-1, -1, 1]) @ (affine[:3, :3] @ ijk + affine[:3, 3])
        zyx = np.linalg.solve(to_lps[:3, :3], lps - to_lps[:3, 3])
        assert vol.hu[tuple(np.rint(zyx).astype(int))] == pytest.approx(data[ijk])
    assert np.all(np.diag(vol.direction) > 0.99)  # reordered to x -> left, y -> posterior, z -> superior


def test_write_then_read_is_the_same_volume(tmp_path: Path) -> None:
    vol = CTVolume(synthetic_hu((3, 8, 10), seed=5), (2.5, 0.6, 0.7), (40.0, -90.0, -110.0))
    write_nifti(tmp_path / "den.nii.gz", vol)
    back = read_nifti(tmp_path / "den.nii.gz")
    np.testing.assert_array_equal(back.hu, vol.hu)
    np.testing.assert_allclose(back.affine(), vol.affine(), atol=1e-5)
    with pytest.raises(FileExistsError):
        write_nifti(tmp_path / "den.nii.gz", vol)  # outputs never overwrite
    one = replace(vol, hu=vol.hu[0], spacing=(0.6, 0.7), origin=(-90.0, -110.0),
                  metadata={"slice_ipp": [[-110.0, -90.0, 40.0]], "slice_thickness": 2.5})  # fmt: skip
    single = read_nifti(write_nifti(tmp_path / "one.nii", one))
    assert single.hu.shape == (8, 10) and single.spacing == pytest.approx((0.6, 0.7))
    assert single.metadata["slice_ipp"] == [pytest.approx([-110.0, -90.0, 40.0])]  # where the slice lies
    assert single.metadata["slice_thickness"] == pytest.approx(2.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["den.nii.gz", "one.nii"]  # no temporary left


@pytest.mark.parametrize("kind", ["ras", "odd", "coronal slice"])
def test_nifti_in_nifti_out_keeps_the_files_voxel_grid(dicom_volume: CTVolume, tmp_path: Path, kind: str) -> None:
    """What is derived from a NIfTI file is written in that file's voxel order, affine and codes, so a mask or label
    map drawn on the input fits the output voxel for voxel (the plugin shows it reoriented, and writes it back)."""
    if kind == "ras":
        src = as_ras_nifti(dicom_volume, tmp_path / "in.nii.gz")
    else:
        shape, affine = ((6, 5, 4), [[0, 0, -2.0, 30], [0.8, 0, 0, -50], [0, -0.7, 0, 120], [0, 0, 0, 1]])
        if kind == "coronal slice":
            shape, affine = ((6, 1, 5), [[-0.8, 0, 0, 50], [0, 3.0, 0, -20], [0, 0, 0.9, -300], [0, 0, 0, 1]])
        data = np.random.default_rng(4).normal(0, 100, shape).astype(np.float32)
        img = nib.Nifti1Image(data, np.array(affine))
        img.set_qform(np.array(affine), code=1)
        src = tmp_path / "in.nii.gz"
        nib.save(img, str(src))
    vol = read_nifti(src)
    out = write_nifti(tmp_path / "out.nii.gz", replace(vol, hu=vol.hu + 1.0))  # a "denoised" copy
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-6)
    np.testing.assert_allclose(np.asarray(b.dataobj), np.asarray(a.get_fdata()).reshape(b.shape) + 1.0, atol=1e-3)
    assert [int(b.header[k]) for k in ("qform_code", "sform_code")] == [int(a.header[k]) for k in ("qform_code",
                                                                                                    "sform_code")]
    moved = replace(vol, spacing=tuple(2 * v for v in vol.spacing))  # geometry no longer the file's
    assert not np.allclose(nib.load(str(write_nifti(tmp_path / "o2.nii", moved))).affine, a.affine)


def test_a_single_coronal_slice_reads_in_its_plane_head_up(tmp_path: Path) -> None:
    data = np.arange(6 * 5, dtype=np.float32).reshape(6, 1, 5)  # (i, j: one voxel, k)
    affine = np.array([[-0.8, 0, 0, 50], [0, 3.0, 0, -20], [0, 0, 0.9, -300], [0, 0, 0, 1]])  # i to L, k to S
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "coronal.nii.gz"))
    vol = read_nifti(tmp_path / "coronal.nii.gz")
    assert vol.hu.shape == (5, 6)  # rows: superior first (to the feet), columns: to the patient's left
    np.testing.assert_array_equal(vol.hu, data[:, 0, ::-1].T)
    np.testing.assert_allclose(vol.direction[:, :2], [[1, 0], [0, 0], [0, -1]], atol=1e-9)  # x -> L, y -> I
    assert vol.spacing == pytest.approx((0.9, 0.8)) and vol.metadata["slice_thickness"] == pytest.approx(3.0)


def test_sheared_volume_keeps_its_geometry_in_the_sform(tmp_path: Path) -> None:
    tilt = np.radians(20)  # gantry tilt: slices step along y as well as z
    vol = CTVolume(synthetic_hu((3, 6, 7), seed=6), (2.0, 0.7, 0.7),
                   direction=np.array([[1, 0, 0], [0, 1, np.sin(tilt)], [0, 0, np.cos(tilt)]]))  # fmt: skip
    out = write_nifti(tmp_path / "tilt.nii.gz", vol)
    hdr = nib.load(str(out)).header
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 0  # a qform cannot hold the shear
    np.testing.assert_allclose(read_nifti(out).affine(), vol.affine(), atol=1e-5)


def test_bad_files_get_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.nii.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="broken.nii.gz: not a readable NIfTI") as err:
        open_ct(tmp_path / "broken.nii.gz")
    assert "\n" not in str(err.value)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), str(tmp_path / "fmri.nii"))
    with pytest.raises(ValueError, match="4-D NIfTI"):
        open_ct(tmp_path / "fmri.nii")
    nib.save(nib.Nifti1Image(np.ones((32, 32, 8), np.float32), np.eye(4)), str(tmp_path / "whole.nii.gz"))
    (tmp_path / "cut.nii.gz").write_bytes((tmp_path / "whole.nii.gz").read_bytes()[:-200])  # a truncated download
    with pytest.raises(ValueError, match="cut.nii.gz: not a readable NIfTI") as err:
        open_ct(tmp_path / "cut.nii.gz")
    assert "\n" not in str(err.value)
    vol = CTVolume(np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0), name="v")
    with pytest.raises(OSError) as err:  # a path that cannot be written: the message names it, not a temporary file
        write_nifti(tmp_path / "missing" / "out.nii.gz", vol)
    assert str(tmp_path / "missing" / "out.nii.gz") in str(err.value) and "partial" not in str(err.value)


def test_a_header_without_orientation_is_flagged(tmp_path: Path) -> None:
    """Without a qform or sform code the volume is shown in its stored voxel order (not
    mirrored by Analyze's radiological guess, without a word) and a derived file keeps that order."""
    stored = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8, 6, 3) - 100  # (i, j, k), no symmetry
    img = nib.Nifti1Image(stored, np.diag([0.7, 0.7, 2.5, 1]))
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(tmp_path / "bare.nii"))
    vol = read_nifti(tmp_path / "bare.nii")
    assert vol.metadata["orientation_unknown"] and "no patient orientation" in vol.metadata["warnings"][0]
    assert vol.spacing == pytest.approx((2.5, 0.7, 0.7))
    np.testing.assert_array_equal(vol.hu, stored.transpose(2, 1, 0))  # z = k, row = j, column = i
    out = write_nifti(tmp_path / "out.nii.gz", vol)
    np.testing.assert_array_equal(np.asarray(nib.load(str(out)).dataobj), stored)


def test_plugin_reader_and_cli_take_nifti(dicom_volume: CTVolume, tmp_path: Path, monkeypatch) -> None:
    path = as_ras_nifti(dicom_volume, tmp_path / "ct.nii.gz")
    reader = napari_get_reader(str(path))
    assert reader is not None
    (data, kwargs, kind), *_ = reader(str(path))
    np.testing.assert_array_equal(data, dicom_volume.hu)
    assert kind == "image" and kwargs["metadata"]["affine_lps"].shape == (4, 4)

    tiny_models(tmp_path / "models")
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    out = tmp_path / "den.nii.gz"
    assert main(["denoise", str(path), str(out), "--model", "tiny_denoiser", "--device", "cpu"]) == 0
    den = read_nifti(out)
    np.testing.assert_allclose(den.affine(), dicom_volume.affine(), atol=1e-4)
    assert den.hu.shape == dicom_volume.hu.shape and not np.array_equal(den.hu, dicom_volume.hu)
    before = out.read_bytes()
    assert main(["denoise", str(path), str(out), "--model", "tiny_denoiser", "--device", "cpu"]) == 2
    assert out.read_bytes() == before


def test_a_series_with_a_gap_is_not_written_to_a_uniform_grid(tmp_path: Path, monkeypatch, capsys) -> None:
    """Regression: two slices missing from a series (a 7.5 mm gap in 2.5 mm slices) went to NIfTI on the
    median spacing, the slices above the gap 5 mm off. A uniform-grid output is refused, in one line, before the
    model runs; a DICOM series keeps every slice's own position."""
    z = [0.0, 2.5, 5.0, 12.5, 15.0, 17.5]
    write_series(tmp_path / "gap", synthetic_hu((6, 32, 32)), series_uid="1.2.3.4", z_positions=z)
    tiny_models(tmp_path / "models")
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    for name in ("den.nii.gz", "den.npz", "den.tif"):
        args = ["denoise", str(tmp_path / "gap"), str(tmp_path / name), "--model", "tiny_denoiser", "--device", "cpu"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "unevenly spaced (one lies 5.0 mm off a 2.5 mm grid" in err and "write a DICOM series" in err, err
        assert not (tmp_path / name).exists()
    with pytest.warns(UserWarning, match=r"the viewer stacks the slices on the median, so its positions are up to "
                      r"5\.0 mm off beyond a gap"):  # fmt: skip
        (vol,) = open_ct(tmp_path / "gap")
    with pytest.raises(ValueError, match="unevenly spaced"):
        write_nifti(tmp_path / "direct.nii.gz", vol)
    assert main(["denoise", str(tmp_path / "gap"), str(tmp_path / "dcm"), "--model", "tiny_denoiser"]) == 0
    (out,) = open_ct(tmp_path / "dcm")
    np.testing.assert_allclose(np.asarray(out.metadata["slice_ipp"])[:, 2], z, atol=1e-3)
    even = [0.0, 2.5, 5.0, 7.5, 10.0, 12.5]
    write_series(tmp_path / "even", synthetic_hu((6, 32, 32)), series_uid="1.2.3.5", z_positions=even)
    assert main(["denoise", str(tmp_path / "even"), str(tmp_path / "even.nii.gz"), "--model", "tiny_denoiser"]) == 0


def test_box_centres_in_patient_mm_find_the_same_voxel_in_a_ras_file(dicom_volume: CTVolume, tmp_path: Path) -> None:
    """Regression: box pixels follow the reader's grid, which mirrors a RAS-stored file's voxel order, and
    nothing else located them. The lps_* columns are patient mm: through the file's own affine they land on the
    voxel of the same value, and for the DICOM series on the slice's own position."""
    import json

    from napari_lidnet.io.boxes_io import write_volume_boxes

    path = as_ras_nifti(dicom_volume, tmp_path / "ct.nii.gz")
    (vol,) = open_ct(path)
    rows = np.array([[1, 2, 3, 5, 6, 0.9], [3, 20, 10, 27, 21, 0.5], [0, 0, 0, 1, 1, 0.4]], np.float32)  # odd sides
    for name, volume in (("nii.json", vol), ("dcm.json", dicom_volume)):
        write_volume_boxes(tmp_path / name, rows, volume, about={"input": name})
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    boxes = json.loads((tmp_path / "nii.json").read_text())
    assert boxes["input"] == "nii.json" and boxes["spacing_mm"] == list(vol.spacing)
    for row, box in zip(rows, boxes["boxes"]):
        ras = np.array([-box["lps_x_mm"], -box["lps_y_mm"], box["lps_z_mm"], 1.0])
        i, j, k = np.rint(np.linalg.solve(img.affine, ras)[:3]).astype(int)
        cy, cx = int((row[2] + row[4]) / 2), int((row[1] + row[3]) / 2)
        assert data[i, j, k] == vol.hu[int(row[0]), cy, cx]
    dcm = json.loads((tmp_path / "dcm.json").read_text())["boxes"]
    for box, nii in zip(dcm, boxes["boxes"]):
        assert box["lps_z_mm"] == pytest.approx(box["z_mm"]) and box["lps_x_mm"] == pytest.approx(nii["lps_x_mm"])


def test_what_nibabel_fixes_in_a_header_is_a_note_not_a_stray_line(tmp_path: Path, capfd) -> None:
    """Regression: a header with voxel size 0 made nibabel print an unprefixed line, and the 1 mm it
    assumed was said nowhere. It is now one of the reader's notes (a warning the command line prints)."""
    img = nib.Nifti1Image(np.full((4, 5, 6), -1000.0, np.float32), np.eye(4))
    img.header["pixdim"][1:4] = 0
    nib.save(img, str(tmp_path / "zero.nii"))
    capfd.readouterr()
    with pytest.warns(UserWarning, match=r"zero.nii: header fixed when read: pixdim\[1,2,3\] should be non-zero"):
        vol = read_nifti(tmp_path / "zero.nii")
    assert vol.spacing == (1.0, 1.0, 1.0) and "pixdim" not in capfd.readouterr().err


def test_a_sform_gives_the_voxel_size_when_pixdim_is_zero(tmp_path: Path) -> None:
    """Regression: a file whose sform holds 0.7 x 0.7 x 2 mm but whose unused pixdim[3] was 0 was read at
    the right size yet marked "sizes in mm assume 1 mm voxels", and measured in pixels. Only a geometry that rests
    on the zeroed voxel sizes (no usable sform) is an assumption."""
    from napari_lidnet.io.volume import known_pixel_mm

    for shape in ((6, 5, 4), (6, 5, 1)):
        img = nib.Nifti1Image(np.full(shape, 40.0, np.float32), np.diag([-0.7, -0.7, 2.0, 1.0]))
        img.header["pixdim"][3] = 0
        nib.save(img, str(tmp_path / "z.nii"))
        with pytest.warns(UserWarning, match="header fixed when read"):
            vol = read_nifti(tmp_path / "z.nii")
        assert vol.spacing[-2:] == pytest.approx((0.7, 0.7)) and known_pixel_mm(vol) == pytest.approx((0.7, 0.7))
        assert not any("assume 1 mm" in note for note in vol.metadata["warnings"]), shape
        (tmp_path / "z.nii").unlink()
    img = nib.Nifti1Image(np.full((6, 5, 4), 40.0, np.float32), None)  # no sform: the zeroed sizes are all it has
    img.header["pixdim"][1:4] = 0
    nib.save(img, str(tmp_path / "q.nii"))
    with pytest.warns(UserWarning):
        assert known_pixel_mm(read_nifti(tmp_path / "q.nii")) is None


def test_a_nifti_of_whole_hu_gives_a_nifti_of_whole_hu(dicom_volume: CTVolume, tmp_path: Path) -> None:
    """Regression: every NIfTI output was float32, a 34 MB int32 scan gave a 107 MB .nii.gz. Read from a file
    of integers, a derived file stores int16 whole HU (rounded, as DICOM does); from floats, float32 as before."""
    src = as_ras_nifti(dicom_volume, tmp_path / "int.nii.gz", np.int16, inter=-1024.0)
    vol = read_nifti(src)
    denoised = vol.hu + np.float32(0.4) * np.sign(vol.hu)  # sub-HU changes, as a denoiser makes
    out = write_nifti(tmp_path / "out.nii.gz", replace(vol, hu=denoised))
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.int16 and img.header.get_slope_inter() in ((None, None), (1.0, 0.0))
    np.testing.assert_array_equal(read_nifti(out).hu, np.rint(denoised))
    np.testing.assert_allclose(img.affine, nib.load(str(src)).affine, atol=1e-6)
    floats = write_nifti(tmp_path / "f.nii.gz", replace(read_nifti(as_ras_nifti(dicom_volume, tmp_path / "f_in.nii")),
                                                        hu=denoised))  # fmt: skip
    assert nib.load(str(floats)).get_data_dtype() == np.float32


def _ras_file(path: Path, data: np.ndarray, affine: np.ndarray, **header) -> Path:
    img = nib.Nifti1Image(data, affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def test_spatial_units_other_than_mm_are_converted(tmp_path: Path) -> None:
    """A file in micrometres (micro-CT, some converters) or metres: sizes and positions in mm, said."""
    data = synthetic_hu((6, 5, 4), seed=3).transpose(2, 1, 0).astype(np.float32)
    for unit, per_mm in (("micron", 1000.0), ("meter", 0.001)):
        img = nib.Nifti1Image(data, np.diag([0.7 * per_mm, 0.8 * per_mm, 2.5 * per_mm, 1.0]))
        img.header.set_xyzt_units(unit)
        nib.save(img, str(tmp_path / f"{unit}.nii"))
        with pytest.warns(UserWarning, match=f"spatial unit {unit}; sizes converted to mm"):
            vol = read_nifti(tmp_path / f"{unit}.nii")
        assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))


def test_an_unusable_sform_falls_back_to_the_qform(tmp_path: Path) -> None:
    """A zero sform with its code set (a converter's slip): the qform places the volume, in one note; nothing of
    nibabel's multi-line errors."""
    img = nib.Nifti1Image(synthetic_hu((6, 5, 4), seed=4).transpose(2, 1, 0).astype(np.float32), None)
    img.set_qform(np.diag([-0.7, -0.8, 2.5, 1.0]), code=1)
    img.set_sform(np.diag([-0.7, -0.8, 2.5, 1.0]), code=1)
    nib.save(img, str(tmp_path / "zero_sform.nii"))
    raw = bytearray((tmp_path / "zero_sform.nii").read_bytes())
    raw[280:328] = bytes(48)  # srow_x, srow_y, srow_z: zero (nibabel writes its affine there on save)
    (tmp_path / "zero_sform.nii").write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="its sform is unusable .*; the qform is used"):
        vol = read_nifti(tmp_path / "zero_sform.nii")
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7)) and not vol.metadata.get("spacing_assumed")
    with pytest.raises(ValueError, match="must be 3 positive numbers"):  # a volume refuses it when made
        replace(vol, spacing=(0.0, 0.8, 0.7))
    broken = replace(vol)
    broken.spacing = (0.0, 0.8, 0.7)  # or set afterwards: the writer refuses it too
    with pytest.raises(ValueError, match="voxel size .* unusable for NIfTI"):
        write_nifti(tmp_path / "out.nii", broken)
    with pytest.raises(ValueError, match=r"a NIfTI file name ends in \.nii or \.nii\.gz"):
        write_nifti(tmp_path / "out.txt", vol)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero_sform.nii"]


def test_qform_and_sform_that_disagree_are_said_and_both_written_back(tmp_path: Path) -> None:
    """A tilted file: a sheared sform and a rigid qform, both coded. The reader says they differ (tools that take
    the qform place it otherwise), and the derived file keeps each as it was (the qform is not the sform's
    rotated approximation)."""
    data = synthetic_hu((6, 5, 4), seed=5).transpose(2, 1, 0).astype(np.float32)
    sform = np.array([[0.7, 0, 0, 10], [0, 0.8, 0.9, 20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    qform = np.diag([0.7, 0.8, 2.5, 1.0])
    qform[:3, 3] = (10, 20, 30)
    img = nib.Nifti1Image(data, None)
    img.set_sform(sform, code=1)
    img.set_qform(qform, code=1)
    nib.save(img, str(tmp_path / "tilt.nii"))
    with pytest.warns(UserWarning, match="its qform and sform disagree"):
        vol = read_nifti(tmp_path / "tilt.nii")
    out = nib.load(str(write_nifti(tmp_path / "out.nii", vol)))
    np.testing.assert_allclose(out.get_sform(), sform, atol=1e-4)
    np.testing.assert_allclose(out.get_qform(), qform, atol=1e-4)


def test_half_hu_stored_as_scaled_integers_are_not_rounded_on_write(tmp_path: Path) -> None:
    """int16 with scl_slope 0.5 holds x.5 HU: the derived file keeps them (it used to round to whole HU)."""
    hu = (synthetic_hu((4, 6, 5), seed=6) / 2 + 0.5).astype(np.float32)  # half-HU values
    img = nib.Nifti1Image(np.rint(hu.transpose(2, 1, 0) * 2).astype(np.int16), np.diag([0.7, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(0.5, 0.0)
    nib.save(img, str(tmp_path / "half.nii"))
    vol = read_nifti(tmp_path / "half.nii")
    back = read_nifti(write_nifti(tmp_path / "out.nii", vol))
    np.testing.assert_array_equal(back.hu, vol.hu)
    assert np.any(vol.hu != np.round(vol.hu))


def test_sizes_and_masks_are_refused_from_the_header_before_the_pixels_are_read(tmp_path: Path) -> None:
    """A header saying 30000 x 30000 pixels is refused by its size (not a MemoryError from reading it), and an
    unscaled uint8 file (a segmentation mask) as not HU, as the array reader refuses one."""
    img = nib.Nifti1Image(np.zeros((4, 4, 1), np.float32), np.eye(4))
    path = tmp_path / "huge.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    raw[42:48] = np.array([30000, 30000, 1], "<i2").tobytes()  # dim[1..3] in the header (no pixels behind them)
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="slices of 30000 x 30000 pixels are larger than"):
        read_nifti(path)
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4), np.uint8), np.eye(4)), str(tmp_path / "mask.nii.gz"))
    with pytest.raises(ValueError, match=r"dtype uint8 \(8 bits\) cannot hold HU"):
        read_nifti(tmp_path / "mask.nii.gz")


def test_a_file_without_a_voxel_size_gives_outputs_without_one(tmp_path: Path, capsys) -> None:
    """Regression: a NIfTI with voxel size 0 (and no sform) was denoised into a file whose header claimed
    1.0 mm as if measured. The derived file keeps the source's "unknown" (no sform or qform, pixdim 0): read back,
    it says its 1 mm is assumed, as the source did."""
    from napari_lidnet.cli import main
    from napari_lidnet.io.volume import known_pixel_mm

    hu = np.random.default_rng(0).normal(40.0, 20.0, (24, 24, 3)).astype(np.float32)
    hu[:4] = -1000.0  # air: CT in HU
    img = nib.Nifti1Image(hu, None)
    img.header["pixdim"][1:4] = 0
    nib.save(img, str(tmp_path / "zero.nii"))
    assert main(["denoise", str(tmp_path / "zero.nii"), str(tmp_path / "out.nii.gz"), "--device", "cpu"]) == 0
    assert "assume 1 mm voxels" in capsys.readouterr().err  # said as the file is read
    import gzip

    with gzip.open(tmp_path / "out.nii.gz") as fh:  # the header's bytes (nibabel's reading fixes the zeros)
        raw = fh.read(348)
    pixdim, (qcode, scode) = np.frombuffer(raw[76:108], "<f4"), np.frombuffer(raw[252:256], "<i2")
    assert np.all(pixdim[1:4] == 0) and qcode == 0 and scode == 0
    with pytest.warns(UserWarning, match="sizes in mm assume 1 mm voxels"):
        assert known_pixel_mm(read_nifti(tmp_path / "out.nii.gz")) is None


@pytest.mark.parametrize("codes", [(0, 2), (1, 0), (2, 4)])
def test_a_current_slice_of_a_nifti_file_keeps_its_header_codes(tmp_path: Path, codes: tuple[int, int]) -> None:
    """Regression: the Denoise dock's "current slice" export of a NIfTI source (one slice: not the file's
    grid, so not written in its voxel order) wrote qform/sform codes 1/1 whatever the file said (2: aligned to
    another scan, 4: a template; 0: not given). The file's codes stay; the slice is placed where it was."""
    from napari_lidnet.layer_data import volume_from_layer, volume_to_layer_tuple

    affine = np.array([[-0.8, 0, 0, 50], [0, 0.8, 0, -20], [0, 0, 2.5, -300], [0, 0, 0, 1]])
    img = nib.Nifti1Image(synthetic_hu((7, 6, 4), seed=3), affine)
    img.set_qform(affine, code=codes[0])
    img.set_sform(affine, code=codes[1])
    nib.save(img, str(tmp_path / "in.nii.gz"))
    vol = read_nifti(tmp_path / "in.nii.gz")
    data, kwargs, _kind = volume_to_layer_tuple(vol)
    one = volume_from_layer(data[2:3] + 1.0, kwargs["scale"], kwargs["translate"], kwargs["metadata"], "slice",
                            first_slice=2)  # fmt: skip
    out = nib.load(str(write_nifti(tmp_path / "slice.nii.gz", one, denoised=True)))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == codes
    centre = [(n - 1) / 2 for n in out.shape[:3]]  # the slice's centre lies at the source's slice 2's centre
    np.testing.assert_allclose(out.affine @ [*centre, 1], affine @ [3, 2.5, 2, 1], atol=1e-4)


def test_a_folder_of_nifti_files_alone_is_not_called_empty(tmp_path, capsys):
    """Regression: `lidnet index` / `train` on a folder of NIfTI files said "folder is empty"."""
    import nibabel as nib

    from napari_lidnet.cli import main

    folder = tmp_path / "niftis"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.full((8, 8, 2), 40, np.int16), np.eye(4)), folder / "a.nii.gz")
    assert main(["index", str(folder), "--out", str(tmp_path / "i.jsonl"), "--dose", "0.25"]) == 2
    err = capsys.readouterr().err
    assert "holds NIfTI files only (1, first a.nii.gz)" in err and "empty" not in err and err.count("\n") == 1


def test_a_2d_nifti_slice_is_written_back_2d(tmp_path: Path) -> None:
    """Regression: a 512 x 512 NIfTI slice came back 512 x 512 x 1."""
    stored = (np.arange(32 * 24, dtype=np.int16).reshape(32, 24) - 300).astype(np.int16)
    nib.save(nib.Nifti1Image(stored, np.diag([0.7, 0.7, 2.5, 1])), str(tmp_path / "slice.nii.gz"))
    vol = read_nifti(tmp_path / "slice.nii.gz")
    back = nib.load(str(write_nifti(tmp_path / "out.nii.gz", vol)))
    assert back.shape == (32, 24)
    np.testing.assert_array_equal(np.asarray(back.dataobj), stored)


def test_a_2d_nifti_slices_boxes_carry_no_dicom_columns(tmp_path: Path) -> None:
    """Regression: a one-slice NIfTI's boxes had the DICOM-only ``z_mm`` (ImagePositionPatient z) beside
    ``lps_z_mm``, a column a NIfTI volume's boxes do not have."""
    from napari_lidnet.io.boxes_io import slice_columns

    stored = np.zeros((32, 24), np.int16)
    nib.save(nib.Nifti1Image(stored, np.diag([0.7, 0.7, 2.5, 1])), str(tmp_path / "slice.nii.gz"))
    vol = read_nifti(tmp_path / "slice.nii.gz")
    assert vol.metadata.get("slice_ipp") is not None  # kept to write the slice back
    assert slice_columns(vol.metadata, 1) == {}


def test_a_layer_flipped_with_a_negative_scale_exports_where_napari_shows_it(tmp_path) -> None:
    """napari takes a negative scale (an axis flipped); the volume made from such a layer for an export has positive
    voxel sizes and a direction that runs the other way, so every voxel is written where the viewer shows it."""
    from napari_lidnet.layer_data import volume_from_layer

    hu = synthetic_hu((3, 6, 5), seed=5)
    scale, translate = (2.5, -0.7, 0.8), (10.0, -20.0, 30.0)
    vol = volume_from_layer(hu, scale, translate, {}, "flipped")
    assert vol.spacing == (2.5, 0.7, 0.8)
    index = np.array([2.0, 3.0, 4.0])
    world = np.array(translate) + np.array(scale) * index  # napari's (z, y, x) of that voxel
    np.testing.assert_allclose((vol.affine() @ [*index, 1.0])[:3], world[::-1], atol=1e-9)
    back = read_nifti(write_nifti(tmp_path / "flipped.nii.gz", vol))  # read back in the reader's own voxel order
    (there,) = np.argwhere(np.isclose(back.hu, hu[2, 3, 4], atol=1e-3))  # the same voxel, by its value
    np.testing.assert_allclose((back.affine() @ [*there, 1.0])[:3], world[::-1], atol=1e-3)
