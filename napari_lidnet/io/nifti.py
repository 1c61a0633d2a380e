"""NIfTI CT volumes (.nii, .nii.gz): the research format of converted CT (dcm2niix, public datasets, segmenters).

Read with nibabel, intensities scaled by the header's scl_slope/scl_inter, then put in the DICOM convention of the
rest of the plugin: the voxel axes reordered and flipped to the closest of x -> patient left, y -> posterior,
z -> superior (an axial volume then shows as its DICOM series does: anterior up, the patient's right on the
left, whatever order the converter stored), and the NIfTI RAS+ affine turned into LPS direction cosines, origin
and spacing. ``write_nifti`` writes a CTVolume back: float32 HU, its LPS geometry as a RAS+ qform and sform, mm;
a volume read from NIfTI goes back in the voxel order, affine and codes of its file (a mask drawn on the input fits
the output voxel for voxel).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import check_new, new_file
from .checks import check_image_shape, one_line
from .volume import CTVolume, check_uniform_grid, per_slice

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: patient LPS from NIfTI RAS+ (and back: the matrix is its own inverse)
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the voxel-axis directions of a CTVolume's (x, y, z): patient left, posterior, superior
LPS_AXES = ("L", "P", "S")


def is_nifti(path: str | Path) -> bool:
    """Whether the file name says NIfTI (.nii or .nii.gz)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_files(folder: str | Path) -> list[Path]:
    """The NIfTI files directly in ``folder`` (sorted; none for a file), each a volume of its own."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p)) if folder.is_dir() else []


def nifti_stem(path: str | Path) -> str:
    """The file name without .nii / .nii.gz."""
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem


@contextlib.contextmanager
def _nibabel_fixes() -> Iterator[list[str]]:
    """Collect (instead of printing) what nibabel's logger says while a header is read and fixed."""
    logger = logging.getLogger("nibabel.global")
    said: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    saved, logger.handlers = logger.handlers, [_Collect()]
    try:
        yield said
    finally:
        logger.handlers = saved


def _load(path: Path) -> tuple[Any, np.ndarray]:
    """(nibabel image, float32 data with trailing 1-long axes dropped); ValueError naming the file otherwise."""
    import nibabel as nib

    try:
        with _nibabel_fixes() as fixes:  # the header fixes nibabel logs ("setting 0 dims to 1") become our notes
            img = nib.load(str(path))
        img.extra["lidnet_fixes"] = fixes
        shape = tuple(int(v) for v in img.shape)
        while len(shape) > 3 and shape[-1] == 1:
            shape = shape[:-1]
        if len(shape) > 3:
            raise ValueError(f"{path}: a {len(shape)}-D NIfTI image {shape}; a CT is one 3-D volume or a 2-D slice")
        shape = shape + (1,) * (3 - len(shape))
        check_image_shape(shape[::-1], _values_dtype(img), str(path))  # before the pixels are read
        data = np.asarray(img.get_fdata(dtype=np.float32)).reshape(shape)
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a readable NIfTI file ({one_line(str(exc))})") from exc
    except Exception as exc:  # nibabel, gzip, zlib and numpy raise many types on broken or truncated files
        raise ValueError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {one_line(str(exc))})") from exc
    return img, data


def _values_dtype(img: Any) -> np.dtype:
    """The dtype the file's values have after its scaling: the stored one without scl_slope/scl_inter (an 8-bit
    mask stays 8-bit, and is refused as not HU), float32 with them."""
    dtype = np.dtype(img.get_data_dtype())
    slope, inter = img.header.get_slope_inter()
    if dtype.kind in "iu" and slope in (None, 1.0) and inter in (None, 0.0):
        return dtype
    return dtype if dtype.kind not in "iuf" else np.dtype(np.float32)


#: mm per spatial unit of the header's xyzt_units
MM_PER_UNIT = {"mm": 1.0, "meter": 1000.0, "micron": 0.001, "unknown": 1.0}


def _usable(affine: Any) -> bool:
    a = np.asarray(affine, dtype=float) if affine is not None else np.zeros((4, 4))
    return bool(np.all(np.isfinite(a)) and abs(np.linalg.det(a[:3, :3])) > 1e-12)


def _geometry(src: Any, path: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(index -> RAS mm affine, qform in mm, voxel size assumed): nibabel's choice (the sform when its code is set,
    else the qform) when it is usable, else the other, else the voxel sizes alone; scaled from the header's spatial
    unit to mm; a qform and sform that place the volume differently are said (other tools may take the qform)."""
    header = src.header
    per_mm = MM_PER_UNIT.get(header.get_xyzt_units()[0], 1.0)
    if per_mm != 1.0:
        notes.append(f"{path.name}: spatial unit {header.get_xyzt_units()[0]}; sizes converted to mm")
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    zero_dims = any("setting 0 dims to 1" in fix for fix in src.extra.get("lidnet_fixes", []))
    choices = [(sform, "sform"), (qform, "qform")] if scode else [(qform, "qform"), (sform, "sform")]
    usable = [(a, name) for a, name in choices if a is not None and _usable(a)]
    if choices[0][0] is not None and not _usable(choices[0][0]):
        instead = f"the {usable[0][1]} is used" if usable else "placed by its voxel sizes alone"
        notes.append(f"{path.name}: its {choices[0][1]} is unusable (zero, not finite or flat); {instead}")
    if usable:
        affine = usable[0][0]
    else:  # no orientation at all: the stored voxel order as LPS (no flip from Analyze's radiological guess, which
        zooms = [float(z) or 1.0 for z in header.get_zooms()[:3]] + [1.0] * (3 - len(header.get_zooms()[:3]))
        affine = np.diag([-zooms[0], -zooms[1], zooms[2], 1.0])  # would mirror the file with no word)
    assumed = zero_dims and not (usable and usable[0][1] == "sform")  # a sform holds its voxel sizes itself
    if not _usable(affine):
        affine, assumed = np.diag([1.0, 1.0, 1.0, 1.0]), True
    if scode and qcode and _usable(qform) and _usable(sform):
        corners = np.array([[i, j, k, 1] for i in (0, src.shape[0]) for j in (0, src.shape[1])
                            for k in (0, src.shape[2] if len(src.shape) > 2 else 1)], float).T  # fmt: skip
        off = float(np.max(np.linalg.norm((sform - qform)[:3] @ corners, axis=0))) * per_mm
        if off > 1.0:
            notes.append(f"{path.name}: its qform and sform disagree (by up to {off:.0f} mm at the corners); read "
                         "with the sform, as nibabel does (tools that take the qform place it otherwise)")  # fmt: skip
    scale = np.diag([per_mm, per_mm, per_mm, 1.0])
    qform_mm = scale @ (qform if qform is not None and _usable(qform) else affine)
    return scale @ np.asarray(affine, dtype=float), qform_mm, assumed


#: array axes (x, y, z) of a single slice by the patient axis its 1-voxel axis lies along: rows run to the
#: posterior (axial) or to the feet (coronal, sagittal), as film and consoles show them
PLANE_AXES = {0: ("P", "I", "L"), 1: ("L", "I", "P"), 2: LPS_AXES}


def _target_axes(shape: tuple[int, ...], affine: np.ndarray) -> tuple[str, str, str]:
    """LPS_AXES for a volume; for a single slice the axes of its plane, its 1-voxel axis becoming z."""
    from nibabel.orientations import io_orientation

    flat = [k for k in range(3) if shape[k] == 1]
    if len(flat) != 1:
        return LPS_AXES
    return PLANE_AXES[int(io_orientation(affine)[flat[0], 0])]


def read_nifti(path: str | Path) -> CTVolume:
    """A NIfTI file as a CTVolume in HU, axes (z, y, x) closest to (superior, posterior, left); a single slice in
    its own plane (``PLANE_AXES``), with its position and thickness in ``slice_ipp`` / ``slice_thickness``."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    src, data = _load(path)
    notes: list[str] = []
    affine, qform, assumed = _geometry(src, path, notes)
    img = nib.Nifti1Image(data, affine)
    target = _target_axes(data.shape, img.affine)
    stored_ornt = io_orientation(img.affine)
    img = img.as_reoriented(ornt_transform(stored_ornt, axcodes2ornt(target)))
    hu = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
    check_image_shape(hu.shape, hu.dtype, str(path))
    aff = LPS_FROM_RAS @ np.asarray(img.affine, dtype=float)
    spacing_xyz = np.linalg.norm(aff[:3, :3], axis=0)
    meta: dict[str, Any] = {"format": "nifti", "source": str(path), "warnings": notes,
                            "written_here": _denoised_here(src.header)}  # fmt: skip
    if assumed:
        notes.append(f"{path.name}: the header's voxel size is unusable; sizes in mm assume 1 mm voxels")
        meta["spacing_assumed"] = True
    notes.extend(f"{path.name}: header fixed when read: {fix}" for fix in src.extra.get("lidnet_fixes", []))
    codes = [int(src.header.get("qform_code", 0)), int(src.header.get("sform_code", 0))]
    if not any(codes):
        notes.append(f"{path.name}: the header gives no patient orientation (qform and sform codes 0): shown in its "
                     "stored voxel order, rows along its 2nd axis, columns along its 1st")
        meta["orientation_unknown"] = True  # no R/L letters from a guess
    meta["nifti_stored"] = {  # how the file stored it: write_nifti gives derived files the same voxel grid
        "ornt": ornt_transform(axcodes2ornt(target), stored_ornt).tolist(),
        "affine": affine.tolist(),
        "qform": qform.tolist(),
        "shape": [int(v) for v in data.shape],
        "file_shape": [int(v) for v in src.shape],  # a 2-D file stays 2-D when written back
        "codes": codes,
        "integers": src.get_data_dtype().kind in "iu" and bool(np.all(data == np.round(data))),  # whole HU
        "assumed": bool(assumed),  # no usable voxel size: a derived file says so too, never an invented 1 mm
    }
    for note in notes:  # said as DICOM's notes are (the command line prints them as warnings)
        warnings.warn(note, UserWarning, stacklevel=2)
    direction = aff[:3, :3] / spacing_xyz
    sx, sy, sz = (float(v) for v in spacing_xyz)
    px, py, pz = (float(v) for v in aff[:3, 3])
    name = nifti_stem(path)
    if hu.shape[0] == 1:
        meta.update(slice_ipp=[[px, py, pz]], slice_thickness=sz)
        return CTVolume(hu[0], (sy, sx), (py, px), direction, name=name, metadata=meta)
    return CTVolume(hu, (sz, sy, sx), (pz, py, px), direction, name=name, metadata=meta)


def _index_to_ras(volume: CTVolume) -> np.ndarray:
    """4x4 from NIfTI index (i, j, k) = array (x, y, z) to RAS mm; a single slice placed by its own position and
    thickness when the metadata holds them (``slice_ipp``, ``slice_thickness``, as the readers leave them)."""
    aff = volume.affine()
    if volume.hu.ndim == 2:
        ipp = per_slice(volume.metadata, "slice_ipp", 1)
        if ipp is not None and np.shape(ipp[0]) == (3,):
            aff[:3, 3] = np.asarray(ipp[0], dtype=float)
        aff[:3, 0] = volume.direction[:, 2] * float(volume.metadata.get("slice_thickness") or 1.0)
    return LPS_FROM_RAS @ aff[:, [2, 1, 0, 3]]


def _as_stored(img: Any, stored: Any) -> Any | None:
    """``img`` in the voxel order, affine and codes of the NIfTI file it was read from (``metadata["nifti_stored"]``),
    or None when there was none or the geometry changed since (then the plugin's own order is written)."""
    import nibabel as nib

    if not isinstance(stored, dict):
        return None
    try:
        back = img.as_reoriented(np.asarray(stored["ornt"], dtype=float))
        affine = np.asarray(stored["affine"], dtype=float)
        qform = np.asarray(stored.get("qform", affine), dtype=float)
        qcode, scode = (int(c) for c in stored["codes"])
    except (KeyError, TypeError, ValueError):
        return None
    if tuple(back.shape) != tuple(stored["shape"]) or not np.allclose(back.affine, affine, atol=1e-3):
        return None
    out = nib.Nifti1Image(np.asarray(back.dataobj, dtype=np.float32), affine)
    out.set_sform(affine, code=scode)
    out.set_qform(qform, code=qcode)
    return out


def _source_codes(stored: Any) -> tuple[int, int]:
    """(qform code, sform code) of the NIfTI file a volume was read from (otherwise a current slice of a file with
    codes 0/2 is written 1/1), else scanner anatomical (1, 1)."""
    try:
        qcode, scode = (int(c) for c in stored["codes"])
    except (KeyError, TypeError, ValueError):
        return 1, 1
    return qcode, scode


def _whole_hu(img: Any, stored: Any) -> Any:
    """``img`` as int16 whole HU (rounded, scaling 1 and 0), as DICOM stores them, when the NIfTI file it was read
    from stored integers and the values fit; else ``img`` itself (float32)."""
    import nibabel as nib

    data = np.asarray(img.dataobj)
    if not (isinstance(stored, dict) and stored.get("integers")) or not -32768 <= data.min() <= data.max() <= 32767:
        return img
    out = nib.Nifti1Image(np.rint(data).astype(np.int16), None)
    out.set_sform(img.get_sform(coded=False), code=int(img.header["sform_code"]))
    out.set_qform(img.get_qform(coded=False), code=int(img.header["qform_code"]))
    out.header.set_slope_inter(1.0, 0.0)
    return out


#: the header description that marks a NIfTI file this program denoised (``write_nifti(..., denoised=True)``)
DENOISED_DESCRIP = b"napari-lidnet denoised"


def _denoised_here(header: Any) -> bool:
    """Whether a NIfTI header's description says napari-lidnet denoised the image."""
    return bytes(header["descrip"]).startswith(DENOISED_DESCRIP)


def is_our_denoised(path: str | Path) -> bool:
    """Whether a NIfTI file was denoised by napari-lidnet (its header's description; the header only is read)."""
    import nibabel as nib

    try:
        return _denoised_here(nib.load(str(path)).header)
    except Exception:  # an unreadable file is the reader's to refuse, with its reason
        return False


def _file_dims(img: Any, stored: Any) -> Any:
    """``img`` with the source file's own dimensions where it had fewer than three and the voxels are the same (a
    512 x 512 slice does not come back 512 x 512 x 1)."""
    import nibabel as nib

    shape = stored.get("file_shape") if isinstance(stored, dict) else None
    if not shape or len(shape) >= 3 or img.shape != (*shape, *[1] * (len(img.shape) - len(shape))):
        return img
    return nib.Nifti1Image(np.asanyarray(img.dataobj).reshape(shape), img.affine, header=img.header)


def write_nifti(out: str | Path, volume: CTVolume, denoised: bool = False, note: str = "") -> Path:
    """Write ``volume`` as a new NIfTI file: float32 HU (int16 whole HU when read from a NIfTI file of integers),
    its LPS geometry as a RAS+ sform (and qform when the axes are orthogonal: a qform cannot hold a gantry-tilt
    shear); ``denoised``: its description says so (with ``note`` after it: the model and strength, in NIfTI's 80
    bytes), and a batch denoise run leaves it out. Never replaces a file; written under a temporary name and linked
    into place, so an interrupted write leaves no file under ``out``."""
    import nibabel as nib

    out = Path(out)
    if not is_nifti(out):
        raise ValueError(f"{out}: a NIfTI file name ends in .nii or .nii.gz")
    check_new(out)
    check_uniform_grid(volume, "NIfTI")
    hu = volume.hu if volume.hu.ndim == 3 else volume.hu[None]
    affine = _index_to_ras(volume)
    if not _usable(affine):
        raise ValueError(f"{out}: the volume's voxel size {volume.spacing} or direction is unusable for NIfTI")
    img = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0), dtype=np.float32), affine)
    stored = _as_stored(img, volume.metadata.get("nifti_stored"))
    if stored is not None:  # read from NIfTI: the same voxel grid as the input, so its masks still line up
        img = stored
    else:  # another grid (a current slice of a NIfTI source: its codes kept) or another source (scanner anatomical)
        qcode, scode = _source_codes(volume.metadata.get("nifti_stored"))
        cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
        img.set_sform(affine, code=scode)
        img.set_qform(affine, code=qcode if np.allclose(cols.T @ cols, np.eye(3), atol=1e-6) else 0)
    img = _whole_hu(img, volume.metadata.get("nifti_stored"))
    source = volume.metadata.get("nifti_stored")
    if isinstance(source, dict) and source.get("assumed"):  # as the source: no voxel size
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), None, header=img.header)  # no affine: nothing filled in
        img.header["sform_code"], img.header["qform_code"] = 0, 0
        img.header["pixdim"][1:4] = 0
    img = _file_dims(img, source)
    img.header.set_xyzt_units("mm")
    said = (DENOISED_DESCRIP + (f": {note}".encode("ascii", "replace") if note else b""))[:80]
    img.header["descrip"] = said if denoised else b"napari-lidnet"
    with new_file(out) as tmp:  # an error names ``out``, not the temporary file
        nib.save(img, str(tmp))
    return out
