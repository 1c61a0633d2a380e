"""The lidnet dataset folder (docs/CONTRACTS.md): paired full/low-dose 16-bit PNG slices with lesion boxes.

```
DIR/dataset.json   {"format": "lidnet-dataset", "version": 1, "n": N, ...provenance}
DIR/full/NAME.png  normal-dose slice (HU + 32768, 16-bit)
DIR/low/NAME.png   low-dose partner (absent until simulated)
DIR/slices.csv     file,spacing_mm
DIR/lesions.csv    file,x1,y1,x2,y2
```
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet.io.atomic import write_atomically
from napari_lidnet.io.png16 import png_shape, read_png_hu, write_png_hu

FORMAT = "lidnet-dataset"
VERSION = 1


@dataclass(repr=False, eq=False)
class Sample:
    """One slice: HU images (``low_hu`` None when the folder has no low-dose partner yet), boxes (N, 4) pixels;
    ``rejected`` (N, 4): boxes a reader rejected (the detector's false positives: background, never targets;
    ``TrainConfig.hard_negatives`` may centre patches on them)."""

    name: str
    full_hu: np.ndarray
    low_hu: np.ndarray | None
    boxes: np.ndarray
    spacing_mm: float
    rejected: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the slice."""
        rows, cols = np.shape(self.full_hu)[-2:]
        return int(rows), int(cols)

    @property
    def has_low_dose(self) -> bool:
        """Whether the slice has a low-dose partner."""
        return self.low_hu is not None

    @property
    def low_shape(self) -> tuple[int, ...]:
        """Shape of the low-dose partner (of the slice itself when it has none)."""
        if self.low_hu is None:
            return self.shape
        rows, cols = np.shape(self.low_hu)[-2:]
        return int(rows), int(cols)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, boxes={len(self.boxes)}, spacing_mm={self.spacing_mm})"


class LazySample(Sample):
    """A Sample whose pixels are read from its PNG files on every access (nothing is kept in memory)."""

    def __init__(self, name: str, full_path: Path, low_path: Path | None, boxes: np.ndarray, spacing_mm: float):
        self.name, self.full_path, self.low_path = name, full_path, low_path
        self.boxes, self.spacing_mm = boxes, spacing_mm
        self.rejected = np.zeros((0, 4), np.float32)  # a dataset folder records no reader's rejections

    @property
    def shape(self) -> tuple[int, int]:
        return png_shape(self.full_path)  # from the PNG header, no pixel read

    @property
    def has_low_dose(self) -> bool:
        return self.low_path is not None

    @property
    def low_shape(self) -> tuple[int, ...]:
        return png_shape(self.low_path) if self.low_path is not None else self.shape

    @property
    def full_hu(self) -> np.ndarray:  # type: ignore[override]
        return read_png_hu(self.full_path)

    @property
    def low_hu(self) -> np.ndarray | None:  # type: ignore[override]
        return read_png_hu(self.low_path) if self.low_path is not None else None


def is_dataset(path: str | Path) -> bool:
    """Whether ``path`` holds a lidnet dataset (a dataset.json of this format)."""
    try:
        info = json.loads((Path(path) / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") == FORMAT


def read_info(path: str | Path) -> dict[str, Any]:
    """The dataset.json of a dataset folder."""
    path = Path(path)
    if path.is_file():
        raise ValueError(f"{path}: a file; a lidnet dataset is a folder (lidnet simulate writes one)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: dataset folder not found")
    if not is_dataset(path):
        raise ValueError(f"{path}: not a lidnet dataset (no dataset.json with format {FORMAT!r})")
    info = json.loads((path / "dataset.json").read_text())
    if int(info.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: dataset version {info.get('version')} is newer than this software ({VERSION})")
    if info.get("complete") is False:
        raise ValueError(f"{path}: dataset writing did not finish (interrupted?); write it again")
    return info


def write_json(path: Path, info: dict[str, Any]) -> None:
    """Write a dataset card atomically (fsynced temporary file renamed into place)."""
    write_atomically(path, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())


def _is_unfinished(path: Path) -> bool:
    """A lidnet dataset whose writing was interrupted (dataset.json says ``complete: false``)."""
    try:
        return json.loads((path / "dataset.json").read_text()).get("complete") is False
    except (OSError, ValueError, AttributeError):
        return False


def prepare_folder(path: str | Path) -> Path:
    """Make ``path`` ready for a new dataset: create it, or clear what an interrupted dataset write left there.

    Refuses (ValueError, nothing touched) any other non-empty folder, a finished lidnet dataset included:
    outputs never overwrite.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; choose a new folder for the dataset")
    if path.is_dir() and any(path.iterdir()):
        if not is_dataset(path):
            raise ValueError(
                f"{path}: folder is not empty and is not a lidnet dataset (no dataset.json); choose a new folder"
            )
        if not _is_unfinished(path):
            raise ValueError(f"{path}: already holds a lidnet dataset; outputs never overwrite: choose a new folder")
    path.mkdir(parents=True, exist_ok=True)
    for sub in ("full", "low"):
        for f in (path / sub).glob("*.png") if (path / sub).is_dir() else ():
            f.unlink()
    for name in ("slices.csv", "lesions.csv"):
        (path / name).unlink(missing_ok=True)
    return path


def write_dataset(path: str | Path, samples: Iterable[Sample], info: dict[str, Any] | None = None) -> Path:
    """Write samples (any iterable, streamed one at a time) as a dataset folder; returns the folder.

    ``info`` (provenance: dose, seed, source, command, ...) goes into dataset.json with format, version and n.
    """
    path = prepare_folder(path)
    info = {**(info or {}), "format": FORMAT, "version": VERSION}
    write_json(path / "dataset.json", {**info, "complete": False})
    (path / "full").mkdir(exist_ok=True)
    n = 0
    names: set[str] = set()
    with open(path / "slices.csv", "w", newline="") as fs, open(path / "lesions.csv", "w", newline="") as fl:
        slices, lesions = csv.writer(fs), csv.writer(fl)
        slices.writerow(["file", "spacing_mm"])
        lesions.writerow(["file", "x1", "y1", "x2", "y2"])
        for s in samples:
            fname = s.name if s.name.endswith(".png") else f"{s.name}.png"
            if fname in names or "/" in fname or "\\" in fname:
                raise ValueError(f"{path}: sample name {s.name!r} is repeated or contains a path separator")
            names.add(fname)
            write_png_hu(path / "full" / fname, s.full_hu)
            if s.low_hu is not None:
                (path / "low").mkdir(exist_ok=True)
                write_png_hu(path / "low" / fname, s.low_hu)
            slices.writerow([fname, f"{float(s.spacing_mm):.6g}"])
            for x1, y1, x2, y2 in np.asarray(s.boxes, dtype=float).reshape(-1, 4):
                lesions.writerow([fname, f"{x1:.2f}", f"{y1:.2f}", f"{x2:.2f}", f"{y2:.2f}"])
            n += 1
    info["n"] = n
    write_json(path / "dataset.json", info)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"{path}: missing (every lidnet dataset has slices.csv and lesions.csv)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def slice_entry(path: str | Path, file: str) -> tuple[float, np.ndarray] | None:
    """(pixel size in mm, boxes (N, 4)) that a dataset's tables give one slice file, None when slices.csv does not
    list it; only that slice's rows are used (the other files need not be there)."""
    path = Path(path)
    row = next((r for r in _read_csv(path / "slices.csv") if r.get("file") == file), None)
    if row is None:
        return None
    try:
        spacing = float(row["spacing_mm"])
        boxes = [[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in _read_csv(path / "lesions.csv")
                 if r.get("file") == file]  # fmt: skip
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path}: slices.csv or lesions.csv has a malformed row for {file}") from None
    return spacing, np.array(boxes, np.float32).reshape(-1, 4)


def read_dataset(path: str | Path, lazy: bool = False) -> list[Sample]:
    """All samples of a dataset folder, in slices.csv order; ``lazy`` reads pixels only when accessed."""
    path = Path(path)
    read_info(path)
    rows = _read_csv(path / "slices.csv")
    boxes: dict[str, list[list[float]]] = {}
    for i, row in enumerate(_read_csv(path / "lesions.csv"), start=2):
        try:
            boxes.setdefault(row["file"], []).append([float(row[k]) for k in ("x1", "y1", "x2", "y2")])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path / 'lesions.csv'}: line {i} is not file,x1,y1,x2,y2") from None
    samples: list[Sample] = []
    for i, row in enumerate(rows, start=2):
        try:
            fname, spacing = row["file"], float(row["spacing_mm"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path / 'slices.csv'}: line {i} is not file,spacing_mm") from None
        full = path / "full" / fname
        if not full.is_file():
            raise FileNotFoundError(f"{full}: listed in slices.csv but missing")
        low = path / "low" / fname
        low_path = low if low.is_file() else None
        b = np.array(boxes.get(fname, []), np.float32).reshape(-1, 4)
        name = fname[:-4] if fname.endswith(".png") else fname
        if lazy:
            samples.append(LazySample(name, full, low_path, b, spacing))
        else:
            samples.append(Sample(name, read_png_hu(full), read_png_hu(low_path) if low_path else None, b, spacing))
    unknown = set(boxes) - {r["file"] for r in rows}
    if unknown:
        raise ValueError(f"{path / 'lesions.csv'}: boxes for files not in slices.csv: {sorted(unknown)[:5]}")
    return samples
