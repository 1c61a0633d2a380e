"""One entry point for every CT input: DICOM file/folder, NIfTI, DeepLesion PNG slice/folder, array files."""

from __future__ import annotations

from pathlib import Path

from .arrays import ARRAY_SUFFIXES, read_array
from .checks import note_image_problems
from .dicom_read import read_dicom
from .dicom_scan import SeriesInfo, looks_like_dicom
from .dicom_scan import list_series as _list_dicom_series
from .nifti import is_nifti, nifti_files, read_nifti
from .volume import CTVolume

_SCAN_LIMIT = 2000  # files looked at when deciding whether a folder is ours


def _folder_kind(folder: Path) -> str | None:
    """'dicom', 'png' or None for a folder, looking at a bounded number of files."""
    has_png = False
    for k, p in enumerate(folder.rglob("*")):
        if k >= _SCAN_LIMIT:
            break
        if not p.is_file() or p.name.startswith("."):
            continue
        if looks_like_dicom(p):
            return "dicom"
        if p.suffix.lower() == ".png" and p.parent == folder:
            has_png = True
    return "png" if has_png else None


def input_kind(path: str | Path) -> str | None:
    """What ``open_ct`` would read at ``path``: 'dicom', 'nifti', 'png', 'png-folder', 'array', or None (not ours)."""
    path = Path(path)
    if path.is_dir():
        kind = _folder_kind(path)
        return "png-folder" if kind == "png" else kind
    if not path.is_file():
        return None
    suffix = path.suffix.lower()
    if is_nifti(path):
        return "nifti"
    if suffix in ARRAY_SUFFIXES:
        return "array"
    if suffix == ".png":
        return "png"
    if looks_like_dicom(path):
        return "dicom"
    return None


def open_ct(path: str | Path, series_uid: str | None = None) -> list[CTVolume]:
    """Read any supported CT input at ``path`` into CTVolumes (one per DICOM series).

    NaN, infinite or constant pixels are kept (the user sees them) with a warning in ``metadata["warnings"]``;
    the commands that compute on an image refuse them (``io.checks.ct_problem``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    kind = input_kind(path)
    if series_uid is not None and kind not in ("dicom", "png-folder", None):
        raise ValueError(f"{path}: a series UID picks one DICOM series; this {kind} input holds one volume")
    volumes = _read(path, kind, series_uid)
    if series_uid is not None and kind == "png-folder":  # a DeepLesion folder's sub-volume, by its name
        keys = [v.metadata.get("series_key") for v in volumes]
        if series_uid not in keys:
            raise ValueError(f"{path}: no sub-volume {series_uid!r} (found: {', '.join(map(str, keys))})")
        volumes = [volumes[keys.index(series_uid)]]
    for vol in volumes:
        note_image_problems(vol)
    return volumes


def _read(path: Path, kind: str | None, series_uid: str | None) -> list[CTVolume]:
    from .deeplesion import read_deeplesion_folder, read_deeplesion_slice

    if kind == "dicom":
        return read_dicom(path, series_uid=series_uid)
    if kind == "nifti":
        return [read_nifti(path)]
    if kind == "png":
        return [read_deeplesion_slice(path)]
    if kind == "png-folder":
        return read_deeplesion_folder(path)
    if kind == "array":
        return [read_array(path)]
    if path.is_dir():
        if not any(path.iterdir()):
            raise ValueError(f"{path}: folder is empty")
        niftis = [p.name for p in nifti_files(path)]
        if niftis:
            raise ValueError(
                f"{path}: folder holds {len(niftis)} NIfTI file(s) ({niftis[0]}, ...), each a volume of its own: "
                "open one file (or, in the command line, take them all with --all-series)"
            )
        raise ValueError(f"{path}: folder has no DICOM files or numbered 16-bit PNG slices")
    raise ValueError(f"{path}: not a CT file this plugin reads (DICOM, NIfTI, 16-bit PNG, .npy, .npz, .tif)")


def list_series(path: str | Path) -> tuple[list[SeriesInfo], list[Path]]:
    """What ``path`` offers to open one at a time: its DICOM series (headers only) and the NIfTI files beside them or
    in a folder of them (each a volume); both empty for other inputs (a PNG folder is one volume)."""
    kind = input_kind(path)
    series = _list_dicom_series(path) if kind == "dicom" else []
    return series, nifti_files(path) if kind in ("dicom", None) else []
