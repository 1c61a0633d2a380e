"""Box tables read back onto an image: the box tables of the Denoise dock, ``lidnet detect`` and File > Save
(``.boxes.csv``), and the navigator's review exports (CSV or JSON: every finding with its status; DICOM SR: the
kept ones).

A table's boxes are placed on an image's slices by their DICOM SOP Instance UIDs (and frame numbers) where both
the table and the image record them, else by slice number; a table that does not fit the image (a slice it does
not have, a box beyond its columns, another pixel size) is refused in one line, so no box lands on the wrong
anatomy. Plain numpy, no Qt.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .volume import per_slice

#: a review's statuses (``findings.KEPT`` and the two undecided or dismissed ones)
STATUSES = ("pending", "accepted", "rejected", "edited", "added")
#: the columns every box table has
BOX_COLUMNS = ("slice", "x1", "y1", "x2", "y2")
#: how far (pixels) a box may reach past the image's edge (rounding of an edited box), and how much a table's pixel
#: size may differ from the image's (relative) before the table is taken for another scan's
EDGE_SLACK_PX, PIXEL_TOLERANCE = 1.0, 0.01


@dataclass(frozen=True)
class SavedBoxes:
    """A box table as read: (N, 6) ``slice, x1, y1, x2, y2, score`` rows in pixel edges (score NaN: drawn by hand;
    slice NaN: found by its DICOM instance only, as a report gives it),
    each row's review status (None for a table of detections), DICOM instance and frame (None where the table has
    none), and the column pixel size (mm) the table was measured on, where it says."""

    rows: np.ndarray
    statuses: tuple[str, ...] | None
    uids: tuple[str, ...] | None
    frames: tuple[int | None, ...] | None
    pixel_mm: float | None


def _cell(value: Any) -> float:
    """A table cell as a number (JSON null, an empty CSV cell or 'nan': NaN)."""
    return math.nan if value is None or value == "" else float(value)


def _records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table's rows as dicts, and the JSON head (``{}`` for CSV)."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise KeyError("boxes")
        key = "findings" if "findings" in data else "boxes"
        records = data[key]
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise TypeError(key)
        return records, data
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        records, fields = list(reader), reader.fieldnames or []
    missing = [c for c in BOX_COLUMNS if c not in fields]
    if missing:
        raise KeyError(missing[0] if fields else "header (the file is empty)")
    return records, {}


def _table_pixel_mm(records: list[dict[str, Any]], rows: np.ndarray, head: dict[str, Any]) -> float | None:
    """The column pixel size the table was measured on: its JSON ``spacing_mm``, else its boxes' ``width_mm``."""
    spacing = head.get("spacing_mm")
    if isinstance(spacing, list) and spacing and all(isinstance(v, (int, float)) for v in spacing):
        return float(spacing[-1]) if spacing[-1] > 0 else None
    widths = np.array([_cell(r.get("width_mm")) for r in records], dtype=float)
    sides = rows[:, 3] - rows[:, 1] if len(rows) else np.zeros(0)
    ok = np.isfinite(widths) & (sides > 0)
    return float(np.median(widths[ok] / sides[ok])) if ok.any() else None


def _from_report(path: Path) -> SavedBoxes:
    """The kept boxes of a review's DICOM SR: placed by their instances only (the report has no slice numbers)."""
    from .dicom_sr import read_sr_regions

    regions = read_sr_regions(path)
    rows = np.array([[math.nan, *r.box, math.nan if r.score is None else r.score] for r in regions], float)
    odd = sorted({r.status for r in regions} - set(STATUSES))
    if odd:
        raise ValueError(f"{path.name}: not a LIDnet review report (status {odd[0]!r})")
    frames = tuple(r.frame for r in regions)
    return SavedBoxes(rows.reshape(-1, 6), tuple(r.status for r in regions), tuple(r.sop_instance_uid for r in regions),
                      frames if any(f is not None for f in frames) else None, None)  # fmt: skip


def read_saved_boxes(path: str | Path) -> SavedBoxes:
    """A box table or a review (CSV or JSON; a review's DICOM SR, ``.dcm``) as :class:`SavedBoxes`; a one-line
    ValueError for anything else."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".dcm":
        return _from_report(path)
    try:
        records, head = _records(path)
        rows = np.array([[_cell(r[c]) for c in BOX_COLUMNS] + [_cell(r.get("score"))] for r in records], float)
        rows = rows.reshape(-1, 6)
        if not np.all(np.isfinite(rows[:, :5])):
            raise ValueError("a box without its slice or corners")
        statuses = tuple(str(r["status"]) for r in records) if records and "status" in records[0] else None
        odd = sorted(set(statuses or ()) - set(STATUSES))
        if odd:
            raise ValueError(f"status {odd[0]!r}")
        uids = tuple(str(r.get("sop_instance_uid") or "") for r in records)
        frames = tuple(None if r.get("frame_number") in (None, "") else int(r["frame_number"]) for r in records)
        return SavedBoxes(rows, statuses, uids if records and all(uids) else None,
                          frames if any(f is not None for f in frames) else None,
                          _table_pixel_mm(records, rows, head))  # fmt: skip
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        what = f"no column {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise ValueError(f"{path.name}: not a box table or review of LIDnet ({what})") from None


def _by_instance(saved: SavedBoxes, uids: list, frames: list | None) -> tuple[np.ndarray, int]:
    """Each row's slice found by its DICOM instance (and frame); ValueError when some are not in the image."""
    where = {(str(u), None if frames is None else frames[i]): i for i, u in enumerate(uids)}
    table_frames = saved.frames or (None,) * len(saved.rows)
    found = [where.get((u, f if frames is not None else None)) for u, f in zip(saved.uids, table_frames)]
    lost = sum(i is None for i in found)
    if lost:
        raise ValueError(f"{lost} of {len(found)} boxes lie on DICOM instances this image does not have: they belong "
                         "to another series")  # fmt: skip
    slices = np.array(found, dtype=float)
    return slices, int(np.sum(slices != saved.rows[:, 0]))


def place_boxes(
    saved: SavedBoxes, shape: Sequence[int], metadata: dict[str, Any], pixel_mm: float | None
) -> tuple[np.ndarray, str]:  # fmt: skip
    """``saved``'s rows on an image of ``shape`` ((z, y, x) or (y, x)) whose reader recorded ``metadata`` (its DICOM
    instances per slice) and whose column pixel size is ``pixel_mm`` (None: unknown), and a note of how they were
    placed. Refuses (ValueError, one line) a table that does not fit the image."""
    rows = saved.rows.copy()
    n = int(shape[0]) if len(shape) == 3 else 1
    height, width = (int(v) for v in shape[-2:])
    uids = per_slice(metadata, "sop_instance_uids", n)
    note = "placed by slice number"
    if saved.uids is not None and uids is not None and all(uids):
        rows[:, 0], moved = _by_instance(saved, uids, per_slice(metadata, "frame_numbers", n))
        note = "placed by DICOM instance" + (f" ({moved} on another slice number than the table's)" if moved else "")
    elif saved.uids is not None:
        if np.isnan(rows[:, 0]).any():
            raise ValueError("the report finds its boxes' slices by DICOM instance and this image records none: "
                             "open it on its DICOM series")  # fmt: skip
        note += " (the image records no DICOM instances to match the table's)"
    if len(rows):
        bad = (rows[:, 0] != np.round(rows[:, 0])) | (rows[:, 0] < 0) | (rows[:, 0] >= n)
        if bad.any():
            has = f"has {n} slices" if len(shape) == 3 else "is one slice"
            raise ValueError(f"a box lies on slice {rows[bad, 0][0]:g} and this image {has}: the table is another "
                             "image's")  # fmt: skip
        reach_x, reach_y = float(rows[:, [1, 3]].max()), float(rows[:, [2, 4]].max())
        low = float(rows[:, 1:5].min())
        if reach_x > width + EDGE_SLACK_PX or reach_y > height + EDGE_SLACK_PX or low < -EDGE_SLACK_PX:
            raise ValueError(f"boxes reach ({reach_x:g}, {reach_y:g}) px, beyond this {width} x {height} image: the "
                             "table is another image's")  # fmt: skip
    if saved.pixel_mm is not None and pixel_mm is not None:
        if abs(saved.pixel_mm - pixel_mm) > PIXEL_TOLERANCE * pixel_mm:
            raise ValueError(f"the boxes were measured on {saved.pixel_mm:.3g} mm pixels and this image has "
                             f"{pixel_mm:.3g} mm: the table is another image's")  # fmt: skip
    return rows, note
