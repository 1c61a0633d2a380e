"""HU arrays from .npy, .npz and .tif/.tiff files -> CTVolume (spacing 1 mm, with a warning, unless the file says
otherwise), and back. A .npz or TIFF this package wrote from a scan with patient geometry keeps its origin and
direction too (``origin``/``direction`` arrays, or the TIFF description's ``origin_mm``/``direction``), so the
R/L letters and world positions come back; any other array says nothing of the patient's directions.

The shape and dtype are read from the file's header and checked (``io.checks``) before any pixel is read, so a
huge, empty, 1D/4D, boolean, 8-bit or complex array is refused without allocating it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from .atomic import new_file
from .checks import check_image_shape, one_line
from .volume import CTVolume, checked_spacing

ARRAY_SUFFIXES = {".npy", ".npz", ".tif", ".tiff"}
#: the .npz members (besides ``hu``) that hold geometry: voxel size, origin (z, y, x order) and direction (3 x 3)
GEOMETRY_KEYS = ("spacing", "origin", "direction", "spacing_assumed")
#: their names in the description of a TIFF this package writes (``spacing_assumed``: 1 when the in-plane pixel size
#: was assumed where the file came from; the slice spacing may still be measured)
TIFF_NAMES = {"spacing": "spacing_mm", "origin": "origin_mm", "direction": "direction",
              "spacing_assumed": "spacing_assumed"}  # fmt: skip


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
    others = [k for k in keys if k not in GEOMETRY_KEYS]
    if len(others) != 1:
        raise ValueError(f"{path}: .npz has arrays {keys}; name the HU array 'hu'")
    return others[0]


def _read_npz(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(pixels, the geometry members it has: ``GEOMETRY_KEYS``)."""
    with zipfile.ZipFile(path) as zf:
        members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
        key = _npz_key(path, sorted(members))
        with zf.open(members[key]) as fh:
            check_image_shape(*_npy_header(fh), f"{path} [{key}]")
    with np.load(path, allow_pickle=False) as npz:
        geometry = {k: np.asarray(npz[k], dtype=float) for k in GEOMETRY_KEYS if k in npz.files}
        return npz[key], geometry


#: mm per length unit an ImageJ/Fiji TIFF names in its description (its "unit")
IMAGEJ_MM = {"mm": 1.0, "millimeter": 1.0, "cm": 10.0, "centimeter": 10.0, "m": 1000.0, "meter": 1000.0,
             "micron": 1e-3, "um": 1e-3, "\u00b5m": 1e-3, "\\u00b5m": 1e-3, "nm": 1e-6, "inch": 25.4}  # fmt: skip


def _resolution_mm(tags: Any, mm_per_unit: float) -> np.ndarray | None:
    """(row, column) pixel size in mm from the x/y resolution tags (pixels per unit), or None."""
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    (xn, xd), (yn, yd) = tags["XResolution"].value, tags["YResolution"].value
    if min(xn, xd, yn, yd) <= 0:
        return None
    return np.array([mm_per_unit * yd / yn, mm_per_unit * xd / xn])


def _tiff_geometry(tif: Any, ndim: int) -> dict[str, np.ndarray]:
    """This package's TIFF description: its ``spacing_mm`` and, when written from a scan with patient geometry,
    ``origin_mm`` and ``direction``; any other TIFF: the voxel size of :func:`_tiff_spacing` alone."""
    meta = (tif.shaped_metadata or [{}])[0] or {}
    if "spacing_mm" not in meta:
        spacing = _tiff_spacing(tif, ndim)
        return {} if spacing is None else {"spacing": spacing}
    return {k: np.asarray(meta[name], dtype=float) for k, name in TIFF_NAMES.items() if name in meta}


def _tiff_spacing(tif: Any, ndim: int) -> np.ndarray | None:
    """Voxel size in mm of another program's TIFF: an ImageJ/Fiji file's own (its resolution tags in pixels per
    its ``unit``, its ``spacing`` between slices); else the x/y resolution tags in pixels per centimetre (2D: both;
    3D: the slice spacing is unknown, so None)."""
    tags = tif.pages[0].tags
    imagej = tif.imagej_metadata or {}
    per_mm = IMAGEJ_MM.get(str(imagej.get("unit", "")).strip().lower()) if imagej else None
    if per_mm is not None:
        pixel = _resolution_mm(tags, per_mm)
        z = float(imagej.get("spacing", 1.0) or 0) * per_mm  # ImageJ leaves out a depth of 1 (its default)
        if pixel is not None and ndim == 2:
            return pixel
        if pixel is not None and ndim == 3 and z > 0:
            return np.array([z, *pixel])
        return None
    if ndim != 2 or int(tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2) != 3:  # 3: centimetre
        return None
    return _resolution_mm(tags, 10.0)


def _read_tiff(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    import logging

    quiet = logging.getLogger("tifffile")  # a broken file is said in one line (ours), not also in tifffile's log
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        return _tiff_content(path)
    finally:
        quiet.setLevel(level)


def _tiff_content(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray], list[str]]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        photometric = tif.pages[0].photometric
        if photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.PALETTE):
            hint = "" if photometric != tifffile.PHOTOMETRIC.RGB else (
                " (a volume of 3 or 4 slices: write it with photometric='minisblack')")
            raise ValueError(f"{path}: TIFF has colour samples ({photometric.name}); expected grayscale HU{hint}")
        series = tif.series[0]
        check_image_shape(series.shape, series.dtype, str(path))
        notes = []
        if len(tif.series) > 1:  # pages of other sizes or types: one image per file is read
            others = ", ".join(str(tuple(sr.shape)) for sr in tif.series[1:4])
            notes.append(f"{path.name}: read its first image {tuple(series.shape)}; it holds {len(tif.series) - 1} "
                         f"more of other sizes ({others}), not read")  # fmt: skip
        return series.asarray(), _tiff_geometry(tif, len(series.shape)), notes


def _read_any(path: Path, suffix: str) -> tuple[Any, dict[str, np.ndarray], list[str]]:
    """(pixels, geometry: ``GEOMETRY_KEYS`` it stores, notes) of an array file; its header is checked before the
    pixels are read."""
    if suffix == ".npy":
        with open(path, "rb") as fh:
            check_image_shape(*_npy_header(fh), str(path))
        return np.load(path, allow_pickle=False, mmap_mode="r"), {}, []
    if suffix == ".npz":
        return (*_read_npz(path), [])
    if suffix in (".tif", ".tiff"):
        return _read_tiff(path)
    raise ValueError(f"{path}: unsupported array file type {suffix!r} (use .npy, .npz, .tif)")


def read_array(path: str | Path) -> CTVolume:
    """Read HU from ``.npy``, ``.npz`` (key ``hu`` or the only array, optional ``spacing``, ``origin`` and
    ``direction``) or a TIFF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        arr, geometry, notes = _read_any(path, suffix)
        hu = np.array(arr, dtype=np.float32)  # a copy: the memory map is released
    except Exception as exc:  # numpy/tifffile/zipfile raise many types on broken files
        if isinstance(exc, ValueError | OSError) and str(path) in str(exc):
            raise  # ours, or an OSError naming the file
        raise ValueError(f"{path}: cannot read array file ({type(exc).__name__}: {one_line(str(exc))})") from exc
    check_image_shape(hu.shape, hu.dtype, str(path))
    assumed = "spacing" not in geometry or bool(geometry.get("spacing_assumed", np.zeros(1)).any())
    if "spacing" not in geometry:
        notes.append(f"{path.name}: the file stores no pixel spacing; sizes in mm assume 1 mm voxels")
    elif assumed:
        notes.append(f"{path.name}: the file records its pixel size as assumed (1 mm where it came from)")
    try:
        spacing = checked_spacing(geometry["spacing"].ravel() if "spacing" in geometry else np.ones(hu.ndim), hu.ndim)
    except (TypeError, ValueError) as exc:  # not numbers, not finite, not positive, not one per axis
        raise ValueError(f"{path}: {exc}") from None
    origin, direction = _patient_geometry(path, geometry, hu.ndim)
    # without origin and direction an array says nothing of the patient's directions: no R/L letters
    meta = {"format": suffix.lstrip("."), "source": str(path), "warnings": notes, "spacing_assumed": assumed,
            "orientation_unknown": direction is None}  # fmt: skip
    return CTVolume(hu, spacing, origin, direction, name=path.stem, metadata=meta)


def _patient_geometry(path: Path, geometry: dict[str, np.ndarray], ndim: int) -> tuple[tuple | None, Any]:
    """(origin, direction) the file stores, both or neither; a one-line ValueError when malformed."""
    if "origin" not in geometry and "direction" not in geometry:
        return None, None
    origin, direction = geometry.get("origin", np.zeros(0)).ravel(), geometry.get("direction", np.zeros(0))
    axes = direction.shape == (3, 3) and bool(np.all(np.isfinite(direction)))  # unit columns; a gantry-tilted
    axes = axes and np.allclose(np.linalg.norm(direction, axis=0), 1.0, atol=1e-4)  # series' are not orthogonal
    if origin.size != ndim or not np.all(np.isfinite(origin)) or not axes or abs(np.linalg.det(direction)) < 0.1:
        raise ValueError(f"{path}: origin {origin.tolist()} and direction {direction.tolist()} must be {ndim} "
                         "positions (mm) and a 3 x 3 matrix of independent unit columns")  # fmt: skip
    return tuple(origin.tolist()), direction


def write_array(out: str | Path, hu: np.ndarray, spacing: tuple[float, ...], origin: tuple[float, ...] | None = None,
                direction: np.ndarray | None = None, spacing_assumed: bool = False) -> Path:  # fmt: skip
    """Write ``hu`` as .npy, .npz (``hu``, ``spacing`` and, when given, ``origin`` and ``direction``) or TIFF (the
    same in its description; x/y spacing also in its resolution tags), created exclusively; a failed or killed write
    leaves no file under ``out``. A .npy keeps no geometry. ``origin`` and ``direction`` (a :class:`CTVolume`'s)
    go together or not at all. ``spacing_assumed``: the in-plane pixel size was assumed, recorded so (a later read
    took a made-up 1 mm as measured)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{out}: unsupported array file type {suffix!r} (use .npy, .npz, .tif)")
    if (origin is None) != (direction is None):
        raise ValueError("give both origin and direction, or neither")
    geometry = {"spacing": np.asarray(checked_spacing(spacing, np.ndim(hu)))}
    if spacing_assumed:
        geometry["spacing_assumed"] = np.ones(1)
    if origin is not None:
        geometry.update(origin=np.asarray(origin, dtype=float), direction=np.asarray(direction, dtype=float))
    with new_file(out) as tmp, open(tmp, "xb") as fh:  # appears whole under ``out`` or not at all
        if suffix == ".npy":
            np.save(fh, hu)
        elif suffix == ".npz":
            np.savez_compressed(fh, hu=hu, **geometry)
        else:
            import tifffile

            meta = {TIFF_NAMES[k]: v.tolist() for k, v in geometry.items()}
            dy, dx = (float(v) for v in spacing[-2:])
            tifffile.imwrite(fh, hu, photometric="minisblack", metadata=meta, resolution=(10.0 / dx, 10.0 / dy),
                             resolutionunit="CENTIMETER")  # fmt: skip
    return out
