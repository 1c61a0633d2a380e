"""Save dialogs that write the file type the reader picked: a name typed without a known suffix gets the chosen
filter's, and an export refuses a suffix it does not write (one line, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def filter_suffixes(filters: str) -> list[list[str]]:
    """The suffixes of each filter of a Qt filter string ("CSV (*.csv);;NIfTI (*.nii.gz *.nii)")."""
    return [re.findall(r"\*(\.[\w.]+)", part) for part in filters.split(";;")]


def known_suffix(path: str | Path, allowed: list[str]) -> str | None:
    """The suffix of ``allowed`` that ``path`` ends in (case-insensitive, ``.nii.gz`` whole), or None."""
    name = Path(path).name.lower()
    return next((s for s in sorted(allowed, key=len, reverse=True) if name.endswith(s)), None)


def with_suffix(path: str, filters: str, chosen: str) -> str:
    """``path``, with the first suffix of the ``chosen`` filter added when it ends in none of ``filters``' suffixes
    (the reader picked "DICOM SR (*.dcm)" and typed "review")."""
    every = [s for group in filter_suffixes(filters) for s in group]
    if known_suffix(path, every) is not None:
        return path
    picked = filter_suffixes(chosen) if chosen else []
    first = picked[0][0] if picked and picked[0] else every[0]
    return path + first


def check_suffix(path: str | Path, allowed: list[str], what: str) -> None:
    """A one-line ValueError when ``path`` ends in none of ``allowed`` ("x.txt: give a .csv or .json file")."""
    if known_suffix(path, allowed) is None:
        names = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise ValueError(f"{Path(path).name}: give a {names} file ({what})")


def save_path(parent: Any, title: str, filters: str, start: str = "") -> str | None:
    """A path from Qt's save dialog with the chosen type's suffix (:func:`with_suffix`); None when cancelled. An
    existing file is not confirmed: the exports refuse it (outputs never overwrite)."""
    from qtpy.QtWidgets import QFileDialog

    path, chosen = QFileDialog.getSaveFileName(parent, title, start, filters,
                                               options=QFileDialog.Option.DontConfirmOverwrite)  # fmt: skip
    return with_suffix(path, filters, chosen) if path else None
