"""HU arrays from .npy, .npz and .tif/.tiff files -> CTVolume (spacing 1 mm unless the file says otherwise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume import CTVolume

ARRAY_SUFFIXES = {".npy", ".npz", ".tif", ".tiff"}


def _check(arr: np.ndarray, path: Path, what: str = "array") -> np.ndarray:
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {what} has dtype {arr.dtype}, expected numbers (integer or float HU)")
    if arr.ndim not in (2, 3):
        raise ValueError(f"{path}: {what} has shape {arr.shape}; expected a 2D slice (y, x) or 3D volume (z, y, x)")
    if min(arr.shape) < 1:
        raise ValueError(f"{path}: {what} is empty (shape {arr.shape})")
    return arr


def read_array(path: str | Path) -> CTVolume:
    """Read HU from ``.npy``, ``.npz`` (key ``hu`` or the only array, optional ``spacing``) or a TIFF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = path.suffix.lower()
    spacing = None
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.files)
                if "hu" in keys:
                    arr = npz["hu"]
                elif len([k for k in keys if k != "spacing"]) == 1:
                    arr = npz[next(k for k in keys if k != "spacing")]
                else:
                    raise ValueError(f"{path}: .npz has arrays {keys}; name the HU array 'hu'")
                if "spacing" in keys:
                    spacing = np.asarray(npz["spacing"], dtype=float).ravel()
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                photometric = tif.pages[0].photometric
                if photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR, tifffile.PHOTOMETRIC.PALETTE):
                    raise ValueError(f"{path}: TIFF has colour samples ({photometric.name}); expected grayscale HU")
                arr = tif.series[0].asarray()
        else:
            raise ValueError(f"{path}: unsupported array file type {suffix!r} (use .npy, .npz, .tif)")
    except ValueError:
        raise
    except Exception as exc:  # numpy/tifffile raise many types on broken files
        raise ValueError(f"{path}: cannot read array file ({type(exc).__name__}: {exc})") from exc
    arr = _check(np.asarray(arr), path)
    if spacing is None:
        spacing = np.ones(arr.ndim)
    if spacing.size != arr.ndim or not np.all(spacing > 0):
        raise ValueError(f"{path}: spacing {spacing.tolist()} must be {arr.ndim} positive numbers (mm per axis)")
    meta = {"format": suffix.lstrip("."), "source": str(path), "warnings": []}
    return CTVolume(arr.astype(np.float32), tuple(spacing.tolist()), name=path.stem, metadata=meta)
