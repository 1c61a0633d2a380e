"""Lesion findings under review: box sizes and centres in mm, mean HU, review status, CSV/JSON export.

Plain numpy (no Qt, no torch). A finding is one box on one slice, kept as its four corners in pixel coordinates
``(row, col)`` = ``(y, x)`` (napari's rectangle vertex order), so a box the reader turned or stretched while
reviewing keeps its shape. Sizes use the pixel spacing; centres go through a 4x4 index -> world matrix.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet.io.atomic import check_new
from napari_lidnet.io.boxes_io import WORLD_SPACE, write_table
from napari_lidnet.io.saved_boxes import KEPT
from napari_lidnet.metrics.lesions import LESION_IOU, lesion_numbers

#: the columns that find a finding's slice outside this program (from ``io.boxes_io.slice_columns``)
SLICE_ID_COLUMNS = ("instance_number", "frame_number", "sop_instance_uid", "deeplesion_slice")
#: columns of the exported table (``centre_space``: what the centre columns measure, ``io.boxes_io.PATIENT_SPACE`` or
#: ``WORLD_SPACE``)
COLUMNS = ("id", "lesion", "slice", "centre_z_mm", "centre_y_mm", "centre_x_mm", "centre_space", "long_mm",
           "short_mm", "width_mm", "height_mm", "mean_hu", "score", "status", "x1", "y1", "x2", "y2",
           *SLICE_ID_COLUMNS)  # fmt: skip


@dataclass
class Finding:
    """One box on one slice: corners (4, 2) as (row, col) pixels, detector score (None when drawn), status."""

    id: int
    slice: int
    corners: np.ndarray
    score: float | None = None
    status: str = "pending"
    measures: dict[str, Any] = field(default_factory=dict)
    detection: tuple[float, float, float, float] | None = None  # a kept box's detection box, when not in this run

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """Axis-aligned ``x1, y1, x2, y2`` (pixels) around the corners."""
        c = np.asarray(self.corners, dtype=float)
        return float(c[:, 1].min()), float(c[:, 0].min()), float(c[:, 1].max()), float(c[:, 0].max())

    @property
    def kept(self) -> bool:
        """Whether the box belongs to the reviewed result."""
        return self.status in KEPT


def box_corners(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
    """Four (row, col) corners of a pixel box, in napari's rectangle order."""
    return np.array([[y1, x1], [y1, x2], [y2, x2], [y2, x1]], dtype=float)


def findings_from_rows(rows: np.ndarray) -> list[Finding]:
    """Detections (N, 6) ``slice, x1, y1, x2, y2, score`` -> pending findings, ids 0..N-1 in input order."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    return [
        Finding(i, int(round(r[0])), box_corners(*r[1:5]), float(r[5]))
        for i, r in enumerate(rows)
    ]  # fmt: skip


def lesion_groups(
    findings: Sequence[Finding], iou: float = LESION_IOU, previous: dict[int, int] | None = None
) -> dict[int, int]:
    """Finding id -> lesion number (1, 2, ... in order of first slice, then of id): boxes on adjacent slices whose
    in-plane IoU reaches ``iou`` are one lesion (:func:`napari_lidnet.metrics.lesions.lesion_numbers`). With
    ``previous`` (the numbers shown before an edit) a lesion keeps the number most of its boxes had, larger lesions
    first, and a lesion that is new (split off, drawn) takes the next free number: a reader's "lesion 4" stays
    lesion 4 when a box is moved off another lesion (an unrelated lesion is not renumbered)."""
    ordered = sorted(findings, key=lambda f: f.id)
    numbers = lesion_numbers([f.slice for f in ordered], np.array([f.bounds for f in ordered]), iou)
    raw = {f.id: int(n) for f, n in zip(ordered, numbers)}
    if not previous:
        return raw
    members: dict[int, list[int]] = {}
    for fid, n in raw.items():
        members.setdefault(n, []).append(fid)
    taken: dict[int, int] = {}  # raw number -> kept number
    for n in sorted(members, key=lambda n: (-len(members[n]), n)):
        votes = Counter(previous[f] for f in members[n] if f in previous and previous[f] not in taken.values())
        if votes:
            taken[n] = min(votes, key=lambda v: (-votes[v], v))
    fresh = max([*previous.values(), *taken.values()], default=0) + 1
    for n in sorted(members):
        if n not in taken:
            taken[n], fresh = fresh, fresh + 1
    return {fid: taken[n] for fid, n in raw.items()}


def axes_mm(corners: np.ndarray, spacing_yx: Sequence[float]) -> tuple[float, float]:
    """(long, short) side of a four-corner box in mm; any rotation, non-square pixels."""
    c = np.asarray(corners, dtype=float)[:4] * np.asarray(spacing_yx, dtype=float)[-2:]
    sides = sorted((float(np.linalg.norm(c[1] - c[0])), float(np.linalg.norm(c[2] - c[1]))), reverse=True)
    return sides[0], sides[1]


def box_mask(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a (y, x) image whose centres lie inside the box (pixel k spans [k, k+1); any rotation)."""
    c = np.asarray(corners, dtype=float)[:4]
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    py, px = rows + 0.5, cols + 0.5
    inside = np.ones(shape, dtype=bool)
    sign = None
    for k in range(4):
        (y0, x0), (y1, x1) = c[k], c[(k + 1) % 4]
        cross = (x1 - x0) * (py - y0) - (y1 - y0) * (px - x0)
        if sign is None:
            centre = c.mean(axis=0)
            sign = np.sign((x1 - x0) * (centre[0] - y0) - (y1 - y0) * (centre[1] - x0)) or 1.0
        inside &= cross * sign >= 0
    return inside


def mean_hu(corners: np.ndarray, hu_slice: np.ndarray) -> float:
    """Mean HU of the pixels inside the box (NaN when it holds none), over the box's bounding window only (a full
    slice's mask per box made a review of hundreds of boxes take seconds)."""
    c = np.asarray(corners, dtype=float)[:4]
    h, w = np.shape(hu_slice)[-2:]
    r0, c0 = max(int(np.floor(c[:, 0].min())), 0), max(int(np.floor(c[:, 1].min())), 0)
    r1, c1 = min(int(np.ceil(c[:, 0].max())), h), min(int(np.ceil(c[:, 1].max())), w)
    if r1 <= r0 or c1 <= c0:
        return float("nan")
    mask = box_mask(c - [r0, c0], (r1 - r0, c1 - c0))
    return float(np.asarray(hu_slice)[r0:r1, c0:c1][mask].mean()) if mask.any() else float("nan")


def centre_world(finding: Finding, index_to_world: np.ndarray, slice_offsets: np.ndarray | None = None) -> np.ndarray:
    """Box centre in world mm (z, y, x) through a 4x4 (z, y, x, 1) index -> world matrix; ``slice_offsets`` (n, 3):
    where each slice's pixel (0, 0) lies relative to the matrix's origin, for slices not evenly spaced."""
    c = np.asarray(finding.corners, dtype=float).mean(axis=0)
    m = np.asarray(index_to_world, dtype=float)
    if slice_offsets is not None and 0 <= finding.slice < len(slice_offsets):
        return (m @ np.array([0.0, c[0], c[1], 1.0]))[:3] + np.asarray(slice_offsets, dtype=float)[finding.slice]
    return (m @ np.array([finding.slice, c[0], c[1], 1.0]))[:3]


def measure(
    finding: Finding, hu: np.ndarray, spacing_zyx: Sequence[float], index_to_world: np.ndarray,
    slice_offsets: np.ndarray | None = None,
) -> dict:  # fmt: skip
    """Sizes (long and short side; the x and y sides of its bounds), centre (``centre_world``) and mean HU of a
    finding on volume ``hu`` (z, y, x); stored in ``finding.measures``."""
    long_mm, short_mm = axes_mm(finding.corners, spacing_zyx)
    x1, y1, x2, y2 = finding.bounds
    z = int(np.clip(finding.slice, 0, hu.shape[0] - 1))
    cz, cy, cx = centre_world(finding, index_to_world, slice_offsets)
    finding.measures = {
        "centre_z_mm": float(cz),
        "centre_y_mm": float(cy),
        "centre_x_mm": float(cx),
        "long_mm": long_mm,
        "short_mm": short_mm,
        "width_mm": (x2 - x1) * float(spacing_zyx[-1]),  # the box's bounds (x1..y2) in mm: x and y sides
        "height_mm": (y2 - y1) * float(spacing_zyx[-2]),
        "mean_hu": mean_hu(finding.corners, hu[z]),
    }
    return finding.measures


def record(finding: Finding, lesion: int | None = None) -> dict[str, Any]:
    """One row of the exported table (``COLUMNS``); ``lesion``: its number among :func:`lesion_groups`."""
    x1, y1, x2, y2 = finding.bounds
    score = None if finding.score is None else round(float(finding.score), 4)  # the detector's float32, rounded
    row = {"id": finding.id, "lesion": lesion, "slice": finding.slice, "score": score, "status": finding.status}
    row.update({k: round(float(v), 2) if np.isfinite(v) else None for k, v in finding.measures.items()})
    row.update({"x1": round(x1, 2), "y1": round(y1, 2), "x2": round(x2, 2), "y2": round(y2, 2)})
    return {k: row.get(k) for k in COLUMNS}


def write_findings(
    path: str | Path,
    findings: Sequence[Finding],
    info: dict[str, Any] | None = None,
    slice_ids: dict[str, list] | None = None,
    unit: str = "mm",
    lesions: dict[int, int] | None = None,
    centre_space: str = WORLD_SPACE,
) -> Path:
    """Write findings as CSV, or as JSON (with ``info``: source, spacing, units) when ``path`` ends in .json, each
    with its lesion number (boxes overlapping on neighbouring slices are one lesion) and the columns of
    ``slice_ids`` (``io.boxes_io.slice_columns`` of a DICOM source: InstanceNumber, or the frame of a multi-frame
    instance, and SOP Instance UID per slice, that find its slice in a PACS; a DeepLesion slice's own number); empty
    where unknown. The JSON gives each finding's four corners too (a turned box's; the CSV's x1..y2 are its bounds).

    ``unit`` "px" (an image without a voxel size): the ``_mm`` columns hold pixels and are named ``_px``;
    ``lesions``: the numbers shown (:func:`lesion_groups` with ``previous``), else numbered afresh;
    ``centre_space``: where the centres are measured (``PATIENT_SPACE`` for an image placed in the patient). Refuses
    to overwrite an existing file.
    """
    path = check_new(path)
    lesions = lesions if lesions is not None else lesion_groups(findings)
    rename = {c: c.removesuffix("_mm") + "_px" for c in COLUMNS if c.endswith("_mm")} if unit == "px" else {}
    rows = [{rename.get(k, k): v for k, v in {**record(f, lesions[f.id]), "centre_space": centre_space}.items()}
            for f in findings]  # fmt: skip
    if path.suffix.lower() == ".json":  # a turned box's corners (the CSV gives its upright bounds x1..y2)
        for row, f in zip(rows, findings):
            row["corners"] = np.round(np.asarray(f.corners, float)[:4], 2).tolist()
    columns_out = [rename.get(c, c) for c in COLUMNS]
    columns = {key: (slice_ids or {}).get(key) or [] for key in SLICE_ID_COLUMNS}
    for row in rows:
        z = int(row["slice"])
        for key, values in columns.items():
            value = values[z] if 0 <= z < len(values) else None
            row[key] = None if value in ("", None) else value
    head = {"format": "lidnet-findings", "version": 1, **(info or {}), "columns": columns_out}
    return write_table(path, columns_out, rows, head, "findings")


def read_findings(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_findings` (CSV values as strings, JSON values typed)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return list(json.loads(path.read_text())["findings"])
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
