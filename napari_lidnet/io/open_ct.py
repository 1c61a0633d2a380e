"""One entry point for every CT input: DICOM file/folder, NIfTI, DeepLesion PNG slice/folder, array files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .arrays import ARRAY_SUFFIXES, read_array
from .checks import note_image_problems
from .dataset import is_dataset, read_info, slice_entry
from .dicom_read import read_dicom
from .dicom_scan import SeriesInfo, list_dicom_series, looks_like_dicom
from .nifti import is_nifti, nifti_files, read_nifti
from .png16 import read_png_hu
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
    try:
        path = Path(path).expanduser()
    except RuntimeError:  # "~someone" who is not a user here
        raise FileNotFoundError(f"{path}: no such file or folder (no such user's home)") from None
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
    dataset = _dataset_root(path)
    if kind == "png" and dataset is not None:
        return [_dataset_slice(path, dataset)]
    if dataset is not None and path.is_dir():
        raise ValueError(f"{path}: a lidnet dataset's slices (separate phantoms or scans, each with its own "
                         f"pixel size), not one volume: open one of its PNG files, or `lidnet evaluate {dataset}`")
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
        _deeplesion_hint(path)
        raise ValueError(f"{path}: folder has no DICOM files or numbered 16-bit PNG slices")
    _deeplesion_hint(path)
    raise ValueError(f"{path}: not a CT file this plugin reads (DICOM, NIfTI, 16-bit PNG, .npy, .npz, .tif)")


def _deeplesion_hint(path: Path) -> None:
    """A one-line ValueError with the next step when ``path`` is DeepLesion's table, its archive folder or its
    ``Images_png`` (rather than "not a CT file" or "no DICOM files", with nothing to do next)."""
    from .deeplesion import INFO_CSV_NAME, is_deeplesion_archive

    root = path.parent if path.name in (INFO_CSV_NAME, "Images_png") else path
    images = root / "Images_png"
    if not images.is_dir():
        if (root / INFO_CSV_NAME).is_file():
            raise ValueError(f"{path}: DeepLesion's lesion table, without its Images_png beside it: open a series "
                             "folder of the archive's Images_png, or one of its slices")  # fmt: skip
        return
    if is_deeplesion_archive(root) or path.is_dir():
        series = next((p for p in sorted(images.iterdir()) if p.is_dir()), None)
        example = f" (e.g. {series})" if series is not None else ""
        raise ValueError(f"{path}: a DeepLesion archive; open one series folder under Images_png{example} or one of "
                         f"its slices, or index the archive for training (lidnet index {root} --out dl.jsonl)")


def _dataset_root(path: Path) -> Path | None:
    """The lidnet dataset (``lidnet simulate``'s folder) that ``path`` is, or whose full/ or low/ slice or folder
    it is; None otherwise."""
    for root, part in ((path, None), (path.parent, path.name), (path.parent.parent, path.parent.name)):
        if (part is None or part in ("full", "low")) and is_dataset(root):
            return root
    return None


def _dataset_slice(path: Path, root: Path) -> CTVolume:
    """One slice of a lidnet dataset with its pixel size (slices.csv) and lesion boxes (lesions.csv): otherwise it
    would be read as a DeepLesion slice at an assumed 1 mm."""
    entry = slice_entry(root, path.name)
    if entry is None:
        raise ValueError(f"{path}: not listed in {root / 'slices.csv'}")
    spacing, found = entry
    boxes = np.concatenate([np.zeros((len(found), 1), np.float32), found], axis=1)
    meta = {"format": "lidnet-dataset", "source": str(path), "dataset": str(root), "orientation_unknown": True}
    dose = read_info(root).get("dose")
    if path.parent.name == "low" and isinstance(dose, int | float):
        meta["dose"] = float(dose)
    return CTVolume(read_png_hu(path), (spacing, spacing), boxes=boxes, name=f"{path.parent.name} {path.stem}",
                    metadata=meta)  # fmt: skip


def list_series(path: str | Path) -> tuple[list[SeriesInfo], list[Path]]:
    """What ``path`` offers to open one at a time: its DICOM series (headers only) and the NIfTI files beside them or
    in a folder of them (each a volume); both empty for other inputs (a PNG folder is one volume)."""
    kind = input_kind(path)
    series = list_dicom_series(path) if kind == "dicom" else []
    return series, nifti_files(path) if kind in ("dicom", None) else []
