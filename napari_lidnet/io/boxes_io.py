"""Lesion boxes to and from CSV/JSON: columns ``slice, x1, y1, x2, y2, score`` in pixels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

COLUMNS = ("slice", "x1", "y1", "x2", "y2", "score")


def write_boxes_csv(path: str | Path, rows: np.ndarray) -> Path:
    """Write (N, 6) rows as CSV, or as JSON when the path ends in .json. Refuses to overwrite."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    records = [
        {
            "slice": int(r[0]),
            **{k: round(float(v), 2) for k, v in zip(COLUMNS[1:5], r[1:5])},
            "score": round(float(r[5]), 4),
        }
        for r in rows
    ]
    try:
        fh = path.open("x", newline="")  # exclusive: never replaces a file that appeared meanwhile
    except FileExistsError:
        raise FileExistsError(f"{path} already exists") from None
    try:
        with fh:
            if path.suffix.lower() == ".json":
                fh.write(json.dumps({"columns": list(COLUMNS), "units": "pixels", "boxes": records}, indent=1))
            else:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(records)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written file (disk full, interrupted)
        raise
    return path


def read_boxes_csv(path: str | Path) -> np.ndarray:
    """Read boxes written by :func:`write_boxes_csv` (CSV or JSON) back to (N, 6)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        records = json.loads(path.read_text())["boxes"]
    else:
        with path.open(newline="") as fh:
            records = list(csv.DictReader(fh))
    return np.array([[float(r[c]) for c in COLUMNS] for r in records], dtype=np.float32).reshape(-1, 6)
