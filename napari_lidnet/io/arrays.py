"""HU arrays from .npy, .npz and .tif/.tiff files -> CTVolume (spacing 1 mm, with a warning, unless the file says
otherwise), and back.

The shape and dtype are read from the file's header and checked (``io.checks``) before any pixel is read, so a
huge, empty, 1D/4D, boolean, 8-bit or complex array is refused without allocating it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from .checks import check_image_shape, one_line
from .volume import CTVolume

ARRAY_SUFFIXES = {".npy", ".npz", ".tif", ".tiff"}


def _npy_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from an open .npy stream positioned at its start."""
    version = np.lib.format.read_magic(fh)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = read(fh)
    return tuple(shape), np.dtype(dtype)


def _npz_key(path: Path, keys: list[str]) -> str:
    """The member holding HU: ``hu``, or the only array besides ``spacing``."""
    if "hu" in keys:
        return "hu"
    others = [k for k in keys if k != "spacing"]
    if len(others) != 1:
        raise ValueError(f"{path}: .npz has arrays {keys}; name the HU array 'hu'")
    return others[0]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    with zipfile.ZipFile(path) as zf:
        members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
        key = _npz_key(path, sorted(members))
        with zf.open(members[key]) as fh:
            check_image_shape(*_npy_header(fh), f"{path} [{key}]")
    with np.load(path, allow_pickle=False) as npz:
        spacing = np.asarray(npz["spacing"], dtype=float).ravel() if "spacing" in npz.files else None
        return npz[key], spacing


def _tiff_spacing(tif: Any, ndim: int) -> np.ndarray | None:
    """Voxel size in mm: ``spacing_mm`` in this package's TIFF description, else the x/y resolution tags in pixels
    per centimetre (2D: both; 3D: the slice spacing is unknown, so None)."""
    meta = (tif.shaped_metadata or [{}])[0] or {}
    if "spacing_mm" in meta:
        return np.asarray(meta["spacing_mm"], dtype=float).ravel()
    page = tif.pages[0]
    tags = page.tags
    if ndim != 2 or "XResolution" not in tags or "YResolution" not in tags:
        return None
    if int(tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2) != 3:  # 3: centimetre
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if min(xn, xd, yn, yd) <= 0:
        return None
    return np.array([10.0 * yd / yn, 10.0 * xd / xn])


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        photometric = tif.pages[0].photometric
        if photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.PALETTE):
            hint = "" if photometric != tifffile.PHOTOMETRIC.RGB else (
                " (a volume of 3 or 4 slices: write it with photometric='minisblack')")
            raise ValueError(f"{path}: TIFF has colour samples ({photometric.name}); expected grayscale HU{hint}")
        series = tif.series[0]
        check_image_shape(series.shape, series.dtype, str(path))
        return series.asarray(), _tiff_spacing(tif, len(series.shape))


def _read_any(path: Path, suffix: str) -> tuple[Any, np.ndarray | None]:
    """(pixels, spacing or None) of an array file; its header is checked before the pixels are read."""
    if suffix == ".npy":
        with open(path, "rb") as fh:
            check_image_shape(*_npy_header(fh), str(path))
        return np.load(path, allow_pickle=False, mmap_mode="r"), None
    if suffix == ".npz":
        return _read_npz(path)
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    raise ValueError(f"{path}: unsupported array file type {suffix!r} (use .npy, .npz, .tif)")


def read_array(path: str | Path) -> CTVolume:
    """Read HU from ``.npy``, ``.npz`` (key ``hu`` or the only array, optional ``spacing``) or a TIFF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        arr, spacing = _read_any(path, suffix)
        hu = np.array(arr, dtype=np.float32)  # a copy: the memory map is released
    except Exception as exc:  # numpy/tifffile/zipfile raise many types on broken files
        if isinstance(exc, ValueError | OSError) and str(path) in str(exc):
            raise  # ours, or an OSError naming the file
        raise ValueError(f"{path}: cannot read array file ({type(exc).__name__}: {one_line(str(exc))})") from exc
    check_image_shape(hu.shape, hu.dtype, str(path))
    notes = []
    if spacing is None:
        spacing = np.ones(hu.ndim)
        notes.append(f"{path.name}: the file stores no pixel spacing; sizes in mm assume 1 mm voxels")
    if spacing.size != hu.ndim or not np.all(spacing > 0):
        raise ValueError(f"{path}: spacing {spacing.tolist()} must be {hu.ndim} positive numbers (mm per axis)")
    # an array says nothing of the patient's directions: no R/L letters
    meta = {"format": suffix.lstrip("."), "source": str(path), "warnings": notes, "orientation_unknown": True,
            "spacing_assumed": bool(notes)}  # fmt: skip
    return CTVolume(hu, tuple(spacing.tolist()), name=path.stem, metadata=meta)


def write_array(out: str | Path, hu: np.ndarray, spacing: tuple[float, ...]) -> Path:
    """Write ``hu`` as .npy, .npz (``hu`` and ``spacing``) or TIFF (spacing in its description and, for x/y, its
    resolution tags), created exclusively; a failed write leaves no file. A .npy keeps no spacing."""
    out = Path(out)
    suffix = out.suffix.lower()
    fh = open(out, "xb")  # noqa: SIM115 (closed below; exclusive: never replaces a file)
    try:
        with fh:
            if suffix == ".npy":
                np.save(fh, hu)
            elif suffix == ".npz":
                np.savez_compressed(fh, hu=hu, spacing=np.asarray(spacing))
            else:
                import tifffile

                dy, dx = (float(v) for v in spacing[-2:])
                tifffile.imwrite(fh, hu, photometric="minisblack", metadata={"spacing_mm": [float(v) for v in spacing]},
                                 resolution=(10.0 / dx, 10.0 / dy), resolutionunit="CENTIMETER")  # fmt: skip
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out
