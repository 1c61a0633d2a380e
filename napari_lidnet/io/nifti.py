"""NIfTI CT volumes (.nii, .nii.gz): the research format of converted CT (dcm2niix, public datasets, segmenters).

Read with nibabel, intensities scaled by the header's scl_slope/scl_inter, then put in the DICOM convention of the
rest of the plugin: the voxel axes reordered and flipped to the closest of x -> patient left, y -> posterior,
z -> superior (an axial volume then shows as its DICOM series does: anterior up, the patient's right on the
left, whatever order the converter stored), and the NIfTI RAS+ affine turned into LPS direction cosines, origin
and spacing. ``write_nifti`` writes a CTVolume back: float32 HU, its LPS geometry as a RAS+ qform and sform, mm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .checks import check_image_shape, one_line
from .volume import CTVolume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: patient LPS from NIfTI RAS+ (and back: the matrix is its own inverse)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the voxel-axis directions of a CTVolume's (x, y, z): patient left, posterior, superior
LPS_AXES = ("L", "P", "S")


def is_nifti(path: str | Path) -> bool:
    """Whether the file name says NIfTI (.nii or .nii.gz)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """The file name without .nii / .nii.gz."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


def _load(path: Path) -> Any:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(v) for v in img.shape)
    except Exception as exc:  # nibabel, gzip and numpy raise many types on broken files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {one_line(str(exc))})") from exc
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise ValueError(f"{path}: a {len(shape)}-D NIfTI image {shape}; a CT is one 3-D volume or a 2-D slice")
    return img


def read_nifti(path: str | Path) -> CTVolume:
    """A NIfTI file as a CTVolume in HU, axes (z, y, x) closest to (superior, posterior, left)."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    img = _load(path)
    data = np.asarray(img.get_fdata(dtype=np.float32))
    data = data.reshape(data.shape[:3]) if data.ndim > 3 else data  # trailing 1-long axes (checked by _load)
    while data.ndim < 3:
        data = data[..., None]
    img = nib.Nifti1Image(data, img.affine)
    img = img.as_reoriented(ornt_transform(io_orientation(img.affine), axcodes2ornt(LPS_AXES)))
    hu = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
    check_image_shape(hu.shape, hu.dtype, str(path))
    aff = LPS_FROM_RAS @ np.asarray(img.affine, dtype=float)
    spacing_xyz = np.linalg.norm(aff[:3, :3], axis=0)
    notes = []
    if not np.all(np.isfinite(spacing_xyz) & (spacing_xyz > 0)):
        notes.append(f"{path.name}: the header's voxel size is unusable; sizes in mm assume 1 mm voxels")
        aff[:3, :3], spacing_xyz = np.eye(3), np.ones(3)
    direction = aff[:3, :3] / spacing_xyz
    sx, sy, sz = (float(v) for v in spacing_xyz)
    px, py, pz = (float(v) for v in aff[:3, 3])
    meta = {"format": "nifti", "source": str(path), "warnings": notes}
    name = nifti_stem(path)
    if hu.shape[0] == 1:
        return CTVolume(hu[0], (sy, sx), (py, px), direction, name=name, metadata=meta)
    return CTVolume(hu, (sz, sy, sx), (pz, py, px), direction, name=name, metadata=meta)


def write_nifti(out: str | Path, volume: CTVolume) -> Path:
    """Write ``volume`` as a new NIfTI file (float32 HU, RAS+ affine from its LPS geometry); never replaces a file,
    and a failed write leaves none."""
    import nibabel as nib

    out = Path(out)
    hu = volume.hu if volume.hu.ndim == 3 else volume.hu[None]
    affine = LPS_FROM_RAS @ volume.affine()[:, [2, 1, 0, 3]]  # index (x, y, z) -> RAS
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0), dtype=np.float32), affine)
    img.set_qform(affine, code=1)  # scanner anatomical
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = b"napari-lidnet"
    with open(out, "xb"):  # exclusive: claims the name, refuses an existing file
        pass
    try:
        nib.save(img, str(out))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out
