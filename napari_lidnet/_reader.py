"""npe2 reader: DICOM files/folders, NIfTI, DeepLesion 16-bit PNGs (with their boxes), .npy/.npz/.tif HU arrays.

Cheap to import (no torch, no Qt); reading happens only when napari calls the returned function.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io.open_ct import input_kind, open_ct

PathLike = str | Path


def _is_png16(path: Path) -> bool:
    """16-bit grayscale PNG (DeepLesion convention), from its IHDR chunk (not decoded, whatever its size); other
    PNGs are left to napari's own reader."""
    from napari_lidnet.io.png16 import png_header

    try:
        return png_header(path)[2:] == (16, 0)
    except (OSError, ValueError):
        return False


def _claims(path: PathLike) -> bool:
    try:
        kind = input_kind(path)
        if kind == "png":
            return _is_png16(Path(path))
        if kind == "png-folder":
            pngs = sorted(p for p in Path(path).glob("*.png") if p.stem.isdigit())
            return bool(pngs) and _is_png16(pngs[0])
        return kind is not None
    except OSError:
        return False


def napari_get_reader(path: PathLike | Sequence[PathLike]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader function when ``path`` (or every path in a list) is CT input this plugin reads, else None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or not all(_claims(p) for p in paths):
        return None
    return read_ct


def read_ct(path: PathLike | Sequence[PathLike]) -> list[tuple]:
    """Read CT at ``path`` (one per DICOM series) into LayerDataTuples; raise ValueError naming the bad file."""
    from .layer_data import volume_layer_tuples

    paths = [path] if isinstance(path, str | Path) else list(path)
    dicom_files = [p for p in paths if Path(p).is_file() and input_kind(p) == "dicom"]
    layers: list[tuple] = []
    if len(paths) > 1 and len(dicom_files) == len(paths):
        from .io.checks import note_image_problems
        from .io.dicom_read import read_dicom_files

        volumes = read_dicom_files(dicom_files)
        for vol in volumes:
            note_image_problems(vol)
    else:
        volumes = [vol for p in paths for vol in open_ct(p)]
    for vol in volumes:
        layers.extend(volume_layer_tuples(vol))
    return layers
