"""Box tables read back onto an image: the box tables of the Denoise dock, ``lidnet detect`` and File > Save
(``.boxes.csv``), and the navigator's review exports (CSV or JSON: every finding with its status; DICOM SR: the
kept ones).

A table's boxes find their slices on an image by what both record of them, in this order: DICOM SOP Instance UIDs
(and frames); DeepLesion's slice numbers; patient positions (the boxes' centres in LPS mm, against the image's
geometry, in-plane too); else slice numbers. A table that does not fit the image (an instance or slice it does not
have, a box beyond its edge or elsewhere in the patient, another pixel size) is refused in one line, so no box lands
on the wrong anatomy. Plain numpy, no Qt.
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

from .boxes_io import PATIENT_SPACE, box_centre_index, slice_columns, slice_origins
from .volume import per_slice

#: review states whose boxes are part of the reviewed result (kept, kept after its box was changed, drawn by hand)
KEPT = ("accepted", "edited", "added")
#: a review's statuses: the kept ones, "pending" (a detection not looked at yet) and "rejected"
STATUSES = ("pending", "rejected", *KEPT)
#: the columns every box table has
BOX_COLUMNS = ("slice", "x1", "y1", "x2", "y2")
#: how far (pixels) a box may reach past the image's edge, or its centre lie from where the table's patient position
#: puts it, before the table is taken for another image's; a table's box sides (mm) may differ from the image's by
#: SIDE_TOLERANCE of the side plus SIDE_SLACK_MM (the tables round to 0.01 px and 0.01 mm)
EDGE_SLACK_PX, CENTRE_SLACK_PX, SIDE_TOLERANCE, SIDE_SLACK_MM = 1.0, 0.5, 0.01, 0.03


@dataclass(frozen=True)
class SavedBoxes:
    """A box table as read: (N, 6) ``slice, x1, y1, x2, y2, score`` rows in pixel edges (score NaN: drawn by hand;
    slice NaN: found by its DICOM instance only, as a report gives it), and per row where the table says: review
    status, DICOM instance ('' for none) and frame, DeepLesion slice number, box centre in patient LPS (x, y, z) mm,
    box x and y sides in mm, finding id and lesion number, the box's four (row, col) corners (a turned box's: a
    review's JSON and SR); ``pixel_mm``: the column pixel size a JSON table records."""

    rows: np.ndarray
    statuses: tuple[str, ...] | None = None
    uids: tuple[str, ...] | None = None
    frames: tuple[int | None, ...] | None = None
    pixel_mm: float | None = None
    names: tuple[str, ...] | None = None
    centres_lps: np.ndarray | None = None
    sides_mm: np.ndarray | None = None
    ids: tuple[int, ...] | None = None
    lesions: tuple[int, ...] | None = None
    corners: np.ndarray | None = None


def _cell(value: Any) -> float:
    """A table cell as a number (JSON null, an empty CSV cell or 'nan': NaN; a JSON true is not a number)."""
    if isinstance(value, bool):
        raise TypeError("a true/false where a number belongs")
    return math.nan if value is None or value == "" else float(value)


def _whole(value: Any) -> int:
    """A cell that must hold a whole number (a frame, an id, a lesion)."""
    number = _cell(value)
    if not number.is_integer():
        raise ValueError(f"{value!r} where a whole number belongs")
    return int(number)


def _records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The table's rows as dicts, and the JSON head (``{}`` for CSV)."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        key = "findings" if isinstance(data, dict) and "findings" in data else "boxes"
        records = data.get(key) if isinstance(data, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("no list of 'boxes' or 'findings'")
        return records, data
    with path.open(newline="", encoding="utf-8-sig") as fh:  # a table saved by Excel starts with a BOM
        reader = csv.DictReader(fh)
        records, fields = list(reader), reader.fieldnames or []
    if not fields:  # an empty file is not "no boxes" (a header alone is)
        raise ValueError("the file is empty")
    missing = [c for c in BOX_COLUMNS if c not in fields]
    if missing:
        raise KeyError(missing[0])
    return records, {}


def _column(records: list[dict[str, Any]], key: str) -> list[Any] | None:
    """Every row's ``key`` when each row has it filled, else None (a column some rows lack is not relied on)."""
    values = [r.get(key) for r in records]
    return values if records and all(v not in (None, "") for v in values) else None


def _floats(records: list[dict[str, Any]], keys: Sequence[str]) -> np.ndarray | None:
    """(N, len(keys)) numbers of those columns when every row has them all finite, else None."""
    columns = [_column(records, k) for k in keys]
    if any(c is None for c in columns):
        return None
    values = np.array([[_cell(v) for v in row] for row in zip(*columns)], dtype=float)
    return values if np.isfinite(values).all() else None


def _centres(records: list[dict[str, Any]], head: dict[str, Any]) -> np.ndarray | None:
    """Box centres in patient LPS (x, y, z) mm: a box table's ``lps_*_mm``, or a review's centres where it says they
    are the patient's (its ``centre_space`` column, or an older JSON's units)."""
    lps = _floats(records, ("lps_x_mm", "lps_y_mm", "lps_z_mm"))
    if lps is not None:
        return lps
    space = _column(records, "centre_space")
    patient = all(v == PATIENT_SPACE for v in space) if space else "centre: patient LPS" in str(head.get("units", ""))
    return _floats(records, ("centre_x_mm", "centre_y_mm", "centre_z_mm")) if patient else None


def _sides(records: list[dict[str, Any]]) -> np.ndarray | None:
    """Each box's x and y sides in mm (``width_mm``, ``height_mm``: a box table's, a review's bounds)."""
    return _floats(records, ("width_mm", "height_mm"))


def _corners(records: list[dict[str, Any]]) -> np.ndarray | None:
    """(N, 4, 2) (row, col) corners of each box where every row of a JSON review gives its four, else None."""
    if not records or not all(isinstance(r.get("corners"), list) and len(r["corners"]) == 4 for r in records):
        return None
    corners = np.array([[[_cell(v) for v in point] for point in r["corners"]] for r in records], dtype=float)
    return corners if corners.shape[-1] == 2 and np.isfinite(corners).all() else None


def _head_pixel_mm(head: dict[str, Any]) -> float | None:
    """The column pixel size of a JSON table's ``spacing_mm`` ([z, y, x] or [y, x])."""
    spacing = head.get("spacing_mm")
    if isinstance(spacing, list) and spacing and all(isinstance(v, (int, float)) for v in spacing):
        return float(spacing[-1]) if spacing[-1] > 0 else None
    return None


def _statuses(records: list[dict[str, Any]]) -> tuple[str, ...] | None:
    """Each row's review status; None for a table of detections. A status some rows lack, or not a review's, is
    refused (ValueError)."""
    present = [("status" in r) for r in records]
    if not any(present):
        return None
    if not all(present):
        raise ValueError("a status on some rows only")
    statuses = tuple(str(r["status"]) for r in records)
    odd = sorted(set(statuses) - set(STATUSES))
    if odd:
        raise ValueError(f"status {odd[0]!r}")
    return statuses


def _from_records(records: list[dict[str, Any]], head: dict[str, Any]) -> SavedBoxes:
    """The table's rows and what it records of each (ValueError, TypeError or KeyError for what does not read)."""
    rows = np.array([[_cell(r[c]) for c in BOX_COLUMNS] + [_cell(r.get("score"))] for r in records], float)
    rows = rows.reshape(-1, 6)
    if not np.all(np.isfinite(rows[:, :5])):
        raise ValueError("a box without its slice or corners")
    if np.any((rows[:, 3] <= rows[:, 1]) | (rows[:, 4] <= rows[:, 2])):
        raise ValueError("a box without an area (x2 <= x1 or y2 <= y1)")
    uids = tuple(str(r.get("sop_instance_uid") or "") for r in records)
    frames = tuple(None if r.get("frame_number") in (None, "") else _whole(r["frame_number"]) for r in records)
    names = _column(records, "deeplesion_slice")
    ids, lesions = _column(records, "id"), _column(records, "lesion")
    return SavedBoxes(
        rows, _statuses(records), uids if any(uids) else None, frames if any(f is not None for f in frames) else None,
        _head_pixel_mm(head), tuple(str(v) for v in names) if names else None, _centres(records, head), _sides(records),
        tuple(_whole(v) for v in ids) if ids else None, tuple(_whole(v) for v in lesions) if lesions else None,
        _corners(records),
    )  # fmt: skip


def _from_report(path: Path) -> SavedBoxes:
    """The kept boxes of a review's DICOM SR, corners and lesion numbers kept: placed by their instances only (the
    report has no slice numbers; one of an image without DICOM instances references none and is refused)."""
    from .dicom_sr import read_sr_regions

    regions = read_sr_regions(path)
    if not all(r.sop_instance_uid for r in regions):
        raise ValueError(f"{path.name} references no DICOM instances (a report of an image without them): open the "
                         "review's CSV or JSON instead")  # fmt: skip
    odd = sorted({r.status for r in regions} - set(STATUSES))
    if odd:
        raise ValueError(f"{path.name}: not a LIDnet review report (status {odd[0]!r})")
    rows = np.array([[math.nan, *r.box, math.nan if r.score is None else r.score] for r in regions], float)
    frames = tuple(r.frame for r in regions)
    lesions = tuple(r.lesion for r in regions)
    corners = np.array([r.corners for r in regions]) if all(len(r.corners) == 4 for r in regions) else None
    return SavedBoxes(rows.reshape(-1, 6), tuple(r.status for r in regions), tuple(r.sop_instance_uid for r in regions),
                      frames if any(f is not None for f in frames) else None,
                      lesions=lesions if all(v is not None for v in lesions) else None, corners=corners)  # fmt: skip


def _parse(path: Path) -> SavedBoxes:
    """A CSV or JSON table as :class:`SavedBoxes`; a one-line ValueError naming the file for anything else."""
    try:
        return _from_records(*_records(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        what = f"no column {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
        raise ValueError(f"{path.name}: not a box table or review of LIDnet ({what})") from None


def read_saved_boxes(path: str | Path) -> SavedBoxes:
    """A box table or a review (CSV or JSON; a review's DICOM SR, ``.dcm``) as :class:`SavedBoxes`; a one-line
    ValueError for anything else (a table without boxes included)."""
    path = Path(path).expanduser()
    saved = _from_report(path) if path.suffix.lower() == ".dcm" else _parse(path)
    if not len(saved.rows):
        raise ValueError(f"{path.name} holds no boxes")
    return saved


def read_boxes_csv(path: str | Path) -> np.ndarray:
    """The (N, 6) ``slice, x1, y1, x2, y2, score`` rows of a box table (CSV or JSON; a header alone: no boxes)."""
    return _parse(Path(path).expanduser()).rows.astype(np.float32)


def _match(table: Sequence[Any], image: Sequence[Any], what: str, hint: str = "") -> np.ndarray:
    """The image's slice of each of ``table``'s keys; ValueError (ending in ``hint``) when some are not among
    ``image``'s."""
    where = {key: i for i, key in enumerate(image)}
    found = [where.get(key) for key in table]
    lost = sum(i is None for i in found)
    if lost:
        raise ValueError(f"{lost} of {len(found)} boxes lie on {what} this image does not have: the table is another "
                         f"image's{hint}")  # fmt: skip
    return np.array(found, dtype=float)


def _by_instance(saved: SavedBoxes, uids: list, frames: list | None) -> np.ndarray:
    """Each row's slice: its DICOM instance's (and frame's); a row without one keeps its slice number."""
    slices = saved.rows[:, 0].copy()
    table_frames = saved.frames or (None,) * len(slices)
    keyed = [i for i, uid in enumerate(saved.uids or ()) if uid]
    keys = [(saved.uids[i], table_frames[i] if frames is not None else None) for i in keyed]
    image = [(str(uid), None if frames is None else frames[k]) for k, uid in enumerate(uids)]
    slices[keyed] = _match(keys, image, "DICOM instances", " (a series derived from it has instances of its own)")
    return slices


def _by_position(saved: SavedBoxes, affine: np.ndarray, slice_ipp: list | None, n: int) -> np.ndarray:
    """Each row's slice: the one its patient position (LPS x, y, z mm) lies on through the image's index -> LPS
    ``affine`` (``slice_ipp``: each slice's own position). ValueError when a position lies off every slice, or in
    the slice away from its box (another scan, or the scan stored in another orientation); a box whose corner was
    dragged has its centre (the corners' mean) off its bounds' centre by up to a quarter of its size."""
    a = np.asarray(affine, dtype=float)
    normal = np.cross(a[:3, 1], a[:3, 2])
    normal /= np.linalg.norm(normal)  # the slices' plane (a tilted gantry's slices step off it)
    thickness = abs(float(a[:3, 0] @ normal))
    origins = slice_origins(a, slice_ipp, np.arange(n))
    slices = np.zeros(len(saved.rows))
    box_y, box_x = box_centre_index(saved.rows)
    for i, centre in enumerate(saved.centres_lps):
        along = (centre - origins) @ normal
        k = int(np.argmin(np.abs(along)))
        if abs(along[k]) > max(0.25 * thickness, 0.05):
            raise ValueError(f"a box lies {abs(along[k]):.1f} mm from the nearest slice of this image (in the "
                             "patient): the table is another image's")  # fmt: skip
        yx = np.linalg.lstsq(a[:3, 1:3], centre - origins[k] - along[k] * normal, rcond=None)[0]
        miss = float(np.abs(yx - (box_y[i], box_x[i])).max())
        row = saved.rows[i]
        if miss > CENTRE_SLACK_PX + 0.25 * max(row[3] - row[1], row[4] - row[2]):
            raise ValueError(f"the boxes' patient positions fall {miss:.1f} px from them on this image: the table is "
                             "another scan's, or this scan stored in another orientation")  # fmt: skip
        slices[i] = k
    return slices


def _place(saved: SavedBoxes, metadata: dict[str, Any], n: int) -> tuple[np.ndarray, str]:
    """Each row's slice on this image by the first key both record (see the module), and how, in words. A table
    whose DICOM instances are not this image's is refused, even where its patient positions fit: those of two
    series agree only within one frame of reference, which a table does not record (a series the plugin derived
    from a scan has new instances: its tables open on it, the scan's on the scan)."""
    uids = per_slice(metadata, "sop_instance_uids", n)
    affine = metadata.get("affine_lps")
    placed = not metadata.get("orientation_unknown") and not metadata.get("spacing_assumed")
    by_position = saved.centres_lps is not None and placed and np.shape(affine) == (4, 4)
    if saved.uids is not None and uids is not None and all(uids):
        return _by_instance(saved, uids, per_slice(metadata, "frame_numbers", n)), "placed by DICOM instance"
    names = slice_columns(metadata, n).get("deeplesion_slice")
    if saved.names is not None and names is not None:
        return _match(saved.names, [str(v) for v in names], "DeepLesion slices"), "placed by DeepLesion slice number"
    if by_position:
        return _by_position(saved, affine, per_slice(metadata, "slice_ipp", n), n), "placed by patient position"
    if saved.uids is not None:  # slice numbers of a DICOM series say nothing of another file's slices
        raise ValueError("the table finds its boxes' slices by DICOM instance, and this image records none (nor do "
                         "both give patient positions): open it on its DICOM series")  # fmt: skip
    return saved.rows[:, 0].copy(), "placed by slice number"


def _check_sides(saved: SavedBoxes, rows: np.ndarray, pixel_yx: Sequence[float]) -> None:
    """ValueError when the table's box sides (mm) are not what this image's pixel size makes of them."""
    dy, dx = (float(v) for v in pixel_yx[-2:])
    sides = np.column_stack([(rows[:, 3] - rows[:, 1]) * dx, (rows[:, 4] - rows[:, 2]) * dy])
    off = np.abs(saved.sides_mm - sides) > SIDE_TOLERANCE * sides + SIDE_SLACK_MM
    bad = np.flatnonzero(off.any(axis=1))
    if len(bad):
        i, k = int(bad[0]), int(np.argmax(off[bad[0]]))
        raise ValueError(f"the boxes were measured on other pixels: a box side of {saved.sides_mm[i, k]:.2f} mm in the "
                         f"table is {sides[i, k]:.2f} mm on this image ({dy:.3g} x {dx:.3g} mm pixels): the table is "
                         "another image's")  # fmt: skip


def place_boxes(
    saved: SavedBoxes, shape: Sequence[int], metadata: dict[str, Any], pixel_yx: Sequence[float] | None
) -> tuple[np.ndarray, str]:  # fmt: skip
    """``saved``'s rows on an image of ``shape`` ((z, y, x) or (y, x)) whose reader recorded ``metadata`` (DICOM
    instances, DeepLesion files, patient geometry) and whose pixel is ``pixel_yx`` mm (row, column; None: unknown),
    and a note of how they were placed. Refuses (ValueError, one line) a table that does not fit the image."""
    rows = saved.rows.copy()
    n = int(shape[0]) if len(shape) == 3 else 1
    height, width = (int(v) for v in shape[-2:])
    rows[:, 0], note = _place(saved, metadata, n)
    moved = int(np.sum(rows[:, 0] != saved.rows[:, 0]))
    if moved and not np.isnan(saved.rows[:, 0]).all():
        note += f" ({moved} on another slice number than the table's)"
    bad = (rows[:, 0] != np.round(rows[:, 0])) | (rows[:, 0] < 0) | (rows[:, 0] >= n)
    if bad.any():
        has = f"has {n} slices" if len(shape) == 3 else "is one slice"
        raise ValueError(f"a box lies on slice {rows[bad, 0][0]:g} and this image {has}: the table is another image's")
    reach_x, reach_y, low = float(rows[:, [1, 3]].max()), float(rows[:, [2, 4]].max()), float(rows[:, 1:5].min())
    if reach_x > width + EDGE_SLACK_PX or reach_y > height + EDGE_SLACK_PX or low < -EDGE_SLACK_PX:
        raise ValueError(f"boxes reach ({reach_x:g}, {reach_y:g}) px, beyond this {width} x {height} image: the "
                         "table is another image's")  # fmt: skip
    if pixel_yx is not None:
        if saved.pixel_mm is not None and abs(saved.pixel_mm - pixel_yx[-1]) > SIDE_TOLERANCE * pixel_yx[-1]:
            raise ValueError(f"the boxes were measured on {saved.pixel_mm:.3g} mm pixels and this image has "
                             f"{pixel_yx[-1]:.3g} mm: the table is another image's")  # fmt: skip
        if saved.sides_mm is not None:
            _check_sides(saved, rows, pixel_yx)
    return rows, note
