"""DeepLesion key slices: 16-bit PNG (HU = value - 32768) plus the ``DL_info.csv`` annotation table.

DeepLesion stores slices as ``Images_png/000001_01_01/109.png``; the table names that slice
``000001_01_01_109.png`` (File_name) with Key_slice_index 109, one row per lesion. The column ``Train_Val_Test``
is the official patient-level split (1 train, 2 validation, 3 test); readers take ``split`` ("train", "val",
"test", or None/"all" for every row): training reads the train part, evaluation the test part.

The table's coordinates start from 1 at the first pixel's centre (NIH's loaders subtract 1); boxes here are pixel
edges from 0, so each is read 0.5 px lower. ``Possibly_noisy`` rows (an unreliable annotation) are shown marked and
left out of training and evaluation indexes, as NIH's MULAN does. One series folder may hold several sub-volumes
(one around each key slice, with gaps between): they open as separate volumes, as NIH's DL_save_nifti writes them.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .png16 import read_png_hu
from .volume import CTVolume

INFO_CSV_NAME = "DL_info.csv"
_SERIES_DIR = re.compile(r"^\d{6}_\d{2}_\d{2}$")
LESION_TYPES = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney", 7: "soft tissue",
                8: "pelvis"}  # fmt: skip
#: the official split's names and their codes in the Train_Val_Test column
SPLITS = {"train": 1, "val": 2, "test": 3}


@dataclass
class LesionRow:
    """One row of DL_info.csv (one lesion on one key slice)."""

    file_name: str
    key_slice: int
    box: tuple[float, float, float, float]
    spacing_xyz: tuple[float, float, float] | None
    image_size: tuple[int, int] | None
    windows: tuple[float, float] | None
    lesion_type: int | None
    extra: dict[str, str] = field(default_factory=dict)
    split: int | None = None  # Train_Val_Test: 1 train, 2 validation, 3 test (None when the table has no column)
    noisy: bool = False  # Possibly_noisy: an unreliable annotation

    @property
    def type_name(self) -> str:
        """The coarse lesion type, with "(possibly noisy)" when the table flags the annotation."""
        name = LESION_TYPES.get(self.lesion_type or -1, "unknown")
        return f"{name} (possibly noisy)" if self.noisy else name


def _numbers(text: str | None) -> list[float]:
    if not text:
        return []
    return [float(t) for t in re.split(r"[,\s]+", text.strip()) if t]


def split_code(split: str | None) -> int | None:
    """The Train_Val_Test code of a split name (None for "all" or None); ValueError for another name."""
    if split in (None, "all"):
        return None
    if split not in SPLITS:
        raise ValueError(f"unknown DeepLesion split {split!r}; use train, val, test or all")
    return SPLITS[split]


def read_info_table(
    csv_path: str | Path, split: str | None = None, skipped: list[str] | None = None
) -> dict[str, list[LesionRow]]:
    """Read a DL_info.csv style table: File_name -> lesion rows, only those of ``split`` (train/val/test, by the
    Train_Val_Test column; None or "all": every row). A table without that column has no split: asking for one
    raises ValueError. A row that cannot be read raises a one-line ValueError naming its line, or, given a
    ``skipped`` list (the viewer, which reads one series), is left out and named there."""
    code = split_code(split)
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: annotation table not found")
    table: dict[str, list[LesionRow]] = {}
    try:
        _read_rows(csv_path, code, split, table, skipped)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save the table as UTF-8 CSV"
                         ) from exc  # fmt: skip
    return table


def _checked(values: list[float], n: int, what: str, text: str | None, positive: bool = False) -> list[float]:
    """``values`` when there are ``n`` finite ones (positive ones with ``positive``); else a one-line ValueError."""
    if len(values) != n or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        kind = f"{n} positive numbers" if positive else f"{n} finite numbers"
        raise ValueError(f"{what} {text!r} is not {kind}")
    return values


def _int_of(rec: dict[str, Any], *columns: str) -> int | None:
    """The integer in the first of ``columns`` the row has (None when empty); a ValueError naming the column."""
    column = next((c for c in columns if c in rec), columns[0])
    value = rec.get(column)
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{column} {value!r} is not a number") from None


def _read_rows(
    csv_path: Path, code: int | None, split: str | None, table: dict[str, list[LesionRow]], skipped: list[str] | None
) -> None:
    """The rows of a DL_info.csv into ``table`` (see ``read_info_table``), each value checked."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = {"File_name", "Bounding_boxes"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: not a DeepLesion table, missing column(s) {sorted(missing)}")
        if code is not None and "Train_Val_Test" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: no Train_Val_Test column, so no {split!r} split; use split 'all'")
        for line, rec in enumerate(reader, start=2):
            try:
                box = _checked(_numbers(rec["Bounding_boxes"]), 4, "Bounding_boxes", rec["Bounding_boxes"])
                if box[2] < box[0] or box[3] < box[1]:
                    raise ValueError(f"Bounding_boxes {rec['Bounding_boxes']!r} is not 'x1, y1, x2, y2' (x1 <= x2)")
                spacing = _numbers(rec.get("Spacing_mm_px_"))
                if spacing:  # the column is optional; given, it is three sizes in mm (x, y, slice interval)
                    _checked(spacing, 3, "Spacing_mm_px_", rec.get("Spacing_mm_px_"), positive=True)
                size = _numbers(rec.get("Image_size"))
                win = _numbers(rec.get("DICOM_windows"))
                if win:
                    _checked(win, 2, "DICOM_windows", rec.get("DICOM_windows"))
                key = _int_of(rec, "Key_slice_index")
                row = LesionRow(
                    file_name=rec["File_name"].strip(),
                    key_slice=-1 if key is None else key,
                    box=(box[0] - 0.5, box[1] - 0.5, box[2] - 0.5, box[3] - 0.5),  # 1-based centres -> 0-based edges
                    spacing_xyz=(spacing[0], spacing[1], spacing[2]) if len(spacing) == 3 else None,
                    image_size=(int(size[0]), int(size[1])) if len(size) == 2 else None,
                    windows=(win[0], win[1]) if len(win) == 2 else None,
                    lesion_type=_int_of(rec, "Coarse_lesion_type", "Lesion_type"),
                    extra={k: v for k, v in rec.items() if k and v is not None},
                    split=_int_of(rec, "Train_Val_Test"),
                    noisy=str(rec.get("Possibly_noisy") or "0").strip() not in ("0", "0.0", ""),
                )
            except (ValueError, TypeError, AttributeError) as exc:
                if skipped is None:
                    raise ValueError(f"{csv_path}, line {line}: {exc}") from exc
                skipped.append(f"line {line}: {exc}")
                continue
            if code is None or row.split == code:
                table.setdefault(row.file_name, []).append(row)


def is_deeplesion_archive(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a DeepLesion archive's root (``DL_info.csv`` beside ``Images_png``), without walking it."""
    return (Path(folder) / INFO_CSV_NAME).is_file() and (Path(folder) / "Images_png").is_dir()


def table_file_name(png_path: str | Path) -> str:
    """DL_info.csv File_name of a slice: ``000001_01_01/109.png`` -> ``000001_01_01_109.png``."""
    png_path = Path(png_path)
    if _SERIES_DIR.match(png_path.parent.name):
        return f"{png_path.parent.name}_{png_path.name}"
    return png_path.name


def find_info_table(png_path: str | Path, levels: int = 3) -> Path | None:
    """A DL_info.csv in the slice's folder or up to ``levels`` folders above it: above the path as given first (an
    ``Images_png`` linked in from another disk keeps the table of the archive it is linked into; searching from
    the link's target missed it), then above the path with its links resolved."""
    for start in (Path(png_path).absolute().parent, Path(png_path).resolve().parent):
        folder = start
        for _ in range(levels + 1):
            cand = folder / INFO_CSV_NAME
            if cand.is_file():
                return cand
            if folder.parent == folder:
                break
            folder = folder.parent
    return None


def _series_rows(table: dict[str, list[LesionRow]], series: str) -> list[LesionRow]:
    return [r for name, rs in table.items() if name.startswith(f"{series}_") for r in rs]


def _viewer_table(table_path: Path, split: str | None, notes: list[str]) -> dict[str, list[LesionRow]]:
    """The table as the viewer reads it: a row that cannot be read is left out with a note (one typo in a
    32,735-row table made every slice of the archive fail to open); indexing and training stay strict."""
    skipped: list[str] = []
    table = read_info_table(table_path, split, skipped)
    if skipped:
        notes.append(f"{table_path}: {len(skipped)} row(s) could not be read and were left out ({skipped[0]}"
                     f"{'; ...' if len(skipped) > 1 else ''})")  # fmt: skip
    return table


def read_deeplesion_slice(
    png_path: str | Path, info_csv: str | Path | None = None, split: str | None = None
) -> CTVolume:
    """One DeepLesion 16-bit PNG slice as a 2D CTVolume, with boxes and spacing from the table when found.

    ``info_csv`` defaults to a DL_info.csv next to the slice or up to three folders above it. A slice that is not
    a key slice takes its spacing from the key slices of the same series. ``split``: only that part's rows.
    """
    png_path = Path(png_path)
    if not png_path.is_file():
        raise FileNotFoundError(f"{png_path}: no such file")
    hu = read_png_hu(png_path)
    notes: list[str] = []
    table_path = Path(info_csv) if info_csv is not None else find_info_table(png_path)
    key = table_file_name(png_path)
    rows: list[LesionRow] = []
    ref: LesionRow | None = None
    if table_path is not None:
        table = _viewer_table(table_path, split, notes)
        rows = table.get(key, [])
        series = _series_rows(table, png_path.parent.name) if _SERIES_DIR.match(png_path.parent.name) else []
        ref = (rows or series or [None])[0]
        if ref is None:
            notes.append(f"{png_path}: no row for {key!r} in {table_path}; spacing unknown (1 mm assumed)")
    else:
        notes.append(f"{png_path}: no {INFO_CSV_NAME} beside it or above; spacing unknown (1 mm assumed)")
    boxes = [[0.0, *r.box] for r in rows]
    vol = _volume(hu, png_path, key, rows, boxes, ref, notes, table_path)
    vol.metadata["files"] = [str(png_path)]  # the slice's number in its series, as a folder's volumes record it
    return vol


def read_deeplesion_folder(
    folder: str | Path, info_csv: str | Path | None = None, split: str | None = None
) -> list[CTVolume]:
    """A folder of DeepLesion slices (``103.png`` ... ``117.png``) as (z, y, x) CTVolumes, one per run of
    consecutive slice numbers (a sub-volume; the gaps between them are not stacked as if 1 slice apart).

    Boxes of every key slice get their slice index in their sub-volume. ``split``: only that part's rows.
    """
    folder = Path(folder)
    pngs = sorted((p for p in folder.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not pngs:
        raise ValueError(f"{folder}: no numbered 16-bit PNG slices (like 109.png) in this folder")
    runs: list[list[Path]] = []
    for p in pngs:
        if runs and int(p.stem) == int(runs[-1][-1].stem) + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    table_path = Path(info_csv) if info_csv is not None else find_info_table(pngs[0])
    first_notes: list[str] = []
    table = _viewer_table(table_path, split, first_notes) if table_path is not None else None
    if table is None:
        first_notes.append(f"{folder}: no {INFO_CSV_NAME} beside it or above; spacing unknown (1 mm assumed)")
    if len(runs) > 1:
        spans = ", ".join(f"{r[0].stem}-{r[-1].stem}" for r in runs[:4]) + (", ..." if len(runs) > 4 else "")
        first_notes.append(f"{folder}: {len(runs)} sub-volumes (slices {spans}) opened apart")
    return [_run_volume(folder, run, table, table_path, first_notes if i == 0 else [], len(runs) > 1)
            for i, run in enumerate(runs)]  # fmt: skip


def _run_volume(
    folder: Path, pngs: list[Path], table: dict | None, table_path: Path | None, notes: list[str], named_by_run: bool
) -> CTVolume:
    """One run of consecutive slices as a CTVolume with the boxes of its key slices."""
    slices = [read_png_hu(p) for p in pngs]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        odd = next(p for p, s in zip(pngs, slices) if s.shape != slices[0].shape)
        raise ValueError(f"{folder}: slices have different sizes {sorted(shapes)} ({odd.name}); cannot stack them")
    rows: list[LesionRow] = []
    boxes: list[list[float]] = []
    ref: LesionRow | None = None
    if table is not None:
        for k, p in enumerate(pngs):
            for r in table.get(table_file_name(p), []):
                rows.append(r)
                boxes.append([float(k), *r.box])
        ref = (rows or _series_rows(table, folder.name) or [None])[0]
        if ref is None:
            notes.append(f"{folder}: no row for series {folder.name!r} in {table_path}; spacing unknown (1 mm)")
    key = f"{folder.name} {pngs[0].stem}-{pngs[-1].stem}" if named_by_run else folder.name
    vol = _volume(np.stack(slices), folder, key, rows, boxes, ref, notes, table_path)
    vol.metadata["files"] = [str(p) for p in pngs]
    vol.metadata["series_key"] = key  # lidnet denoise/detect --series KEY picks this sub-volume
    return vol


def _recist_mm(row: LesionRow, pixel_mm: float) -> list[float]:
    """The row's RECIST long and short diameters in mm (``Lesion_diameters_Pixel_`` x the pixel size): what a
    DeepLesion box measures, not its sides, which DeepLesion pads by 5 px on each side; NaN where not given."""
    values = _numbers(row.extra.get("Lesion_diameters_Pixel_"))
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        return [math.nan, math.nan]
    long_px, short_px = max(values), min(values)
    return [long_px * pixel_mm, short_px * pixel_mm]


def _volume(
    hu: np.ndarray,
    source: Path,
    key: str,
    rows: list[LesionRow],
    boxes: list[list[float]],
    ref: LesionRow | None,
    notes: list[str],
    table_path: Path | None,
) -> CTVolume:
    spacing = (1.0,) * hu.ndim
    meta: dict = {"format": "deeplesion", "source": str(source), "file_name": key, "warnings": notes}
    if ref is not None:
        if ref.spacing_xyz is not None:
            sx, sy, sz = ref.spacing_xyz
            spacing = (sy, sx) if hu.ndim == 2 else (sz, sy, sx)
            meta["slice_spacing_mm"] = sz
        size_xy = (hu.shape[-1], hu.shape[-2])
        if ref.image_size is not None and tuple(ref.image_size) != size_xy:
            notes.append(f"{source}: table says image size {ref.image_size} (x, y), file has {size_xy}")
        meta["table"] = str(table_path)
    meta["lesion_types"] = [r.type_name for r in rows]
    if ref is not None and ref.spacing_xyz is not None:  # the boxes are the RECIST axes' extent padded by 5 px
        meta["recist_mm"] = [_recist_mm(r, ref.spacing_xyz[0]) for r in rows]
    meta["possibly_noisy"] = [r.noisy for r in rows]
    if ref is None:
        meta["spacing_assumed"] = True
    meta["orientation_unknown"] = True  # a PNG key slice keeps no patient directions: no R/L letters
    own = [r for r in (rows or ([ref] if ref is not None else [])) if r.windows is not None]
    meta["dicom_windows"] = [list(r.windows) for r in own]  # a neighbour slice: its series' window, as its spacing
    if meta["dicom_windows"] and meta["dicom_windows"][0][1] > meta["dicom_windows"][0][0]:
        lo, hi = meta["dicom_windows"][0]  # the table's window (low, high HU): the slice opens at it, as a DICOM does
        meta["window"] = [(lo + hi) / 2, hi - lo]
    for msg in notes:
        warnings.warn(msg, UserWarning, stacklevel=3)
    box_arr = np.asarray(boxes, np.float32).reshape(-1, 5)
    return CTVolume(hu, spacing, boxes=box_arr, name=Path(key).stem, metadata=meta)
