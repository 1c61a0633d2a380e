"""Lesion boxes written as CSV/JSON (``io.saved_boxes`` reads them back): columns ``slice, x1, y1, x2, y2, score`` in
pixels (``slice`` counts from the first slice of the volume as sorted along its normal), ``width_mm, height_mm``
(the box's x and y sides) where the writer was given the pixel size, ``lps_x_mm, lps_y_mm, lps_z_mm`` (the box
centre in patient coordinates, DICOM's LPS, whatever the file's voxel order) where it was given the volume's affine,
``lesion`` where the writer was given it (boxes on neighbouring slices that overlap share a number), then, for DICOM
sources, the slice's ``instance_number`` (or ``frame_number`` for the frames of an enhanced multi-frame instance),
``z_mm`` (ImagePositionPatient z) and ``sop_instance_uid``, and for DeepLesion slices the archive's own
``deeplesion_slice`` number."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import check_new, open_new
from .json_text import strict_dumps
from .volume import CTVolume, known_pixel_mm, n_slices, per_slice

COLUMNS = ("slice", "x1", "y1", "x2", "y2", "score")
#: what a review's centre columns measure (its ``centre_space``): the patient's LPS mm (an image placed in the
#: patient), or napari's world (an image without a patient position)
PATIENT_SPACE, WORLD_SPACE = "patient LPS", "viewer world"


def slice_columns(metadata: dict[str, Any], n: int) -> dict[str, list]:
    """Per-slice columns that find a slice outside this program (PACS image number, table position, UID) from a
    DICOM volume's metadata (``n`` slices); empty for other sources."""
    out: dict[str, list] = {}
    frames = per_slice(metadata, "frame_numbers", n)
    numbers = per_slice(metadata, "instance_numbers", n)
    ipp = per_slice(metadata, "slice_ipp", n)
    uids = per_slice(metadata, "sop_instance_uids", n)
    if frames is not None:  # frames of an enhanced (multi-frame) instance: the UID and its frame find the slice
        out["frame_number"] = ["" if v is None else int(v) for v in frames]
    elif numbers is not None:
        out["instance_number"] = ["" if v is None else int(v) for v in numbers]
    if ipp is not None and metadata.get("format") == "dicom":  # a 2-D NIfTI keeps its position too: lps_z_mm says it
        out["z_mm"] = [round(float(p[2]), 3) for p in ipp]
    if uids is not None:
        out["sop_instance_uid"] = [str(u) for u in uids]
    files = metadata.get("files")
    if metadata.get("format") == "deeplesion" and isinstance(files, list) and len(files) == n:
        out["deeplesion_slice"] = [_slice_number(f) for f in files]  # the archive's own number (105.png: 105)
    return out


def _slice_number(path: str) -> int | str:
    """A DeepLesion slice's number from its file name (``.../105.png`` -> 105), else the name."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else stem


def box_sides_mm(rows: np.ndarray, pixel_mm: Sequence[float]) -> dict[str, np.ndarray]:
    """``width_mm`` (x side) and ``height_mm`` (y side) of (N, 6) box rows, ``pixel_mm`` ending in (row, column)
    pixel size; a one-line ValueError when the size is not two or three positive numbers."""
    size = np.asarray(pixel_mm, dtype=float).ravel()
    if size.size not in (2, 3) or not np.all(np.isfinite(size) & (size > 0)):
        raise ValueError(f"pixel size {size.tolist()} must be 2 or 3 positive numbers of mm")
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    return {"width_mm": (rows[:, 3] - rows[:, 1]) * size[-1], "height_mm": (rows[:, 4] - rows[:, 2]) * size[-2]}


def slice_origins(affine: np.ndarray, slice_ipp: Sequence[Sequence[float]] | None, z: Any) -> np.ndarray:
    """Patient position (LPS mm) of pixel (0, 0) of slices ``z``: each slice's own (``slice_ipp``, gaps included),
    else where ``affine`` (array index (z, y, x, 1) -> LPS) puts it."""
    a, z = np.asarray(affine, dtype=float), np.asarray(z, dtype=int)
    return np.asarray(slice_ipp, float).reshape(-1, 3)[z] if slice_ipp is not None else a[:3, 3] + np.outer(z, a[:3, 0])


def box_centre_index(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) array index of the centre of each ``slice, x1, y1, x2, y2 ...`` row's box (pixel-edge
    coordinates: the centre of pixel i is i + 0.5, its index i)."""
    rows = np.asarray(rows, dtype=float)
    return (rows[:, 2] + rows[:, 4]) / 2 - 0.5, (rows[:, 1] + rows[:, 3]) / 2 - 0.5


def box_centres_lps(
    rows: np.ndarray, affine: np.ndarray, slice_ipp: Sequence[Sequence[float]] | None = None
) -> dict[str, np.ndarray]:
    """Patient position (DICOM LPS, mm) of each box centre: ``affine`` maps array index (z, y, x, 1) to LPS (a 2D
    slice's is its own with slice 0), and ``slice_ipp`` (each slice's own position, gaps included) overrides its
    slice origins. Pixel-edge coordinates: the centre of pixel i is i + 0.5."""
    a = np.asarray(affine, dtype=float)
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    cy, cx = box_centre_index(rows)
    pos = slice_origins(a, slice_ipp, rows[:, 0]) + np.outer(cy, a[:3, 1]) + np.outer(cx, a[:3, 2])
    return {"lps_x_mm": pos[:, 0], "lps_y_mm": pos[:, 1], "lps_z_mm": pos[:, 2]}


def write_boxes_csv(
    path: str | Path, rows: np.ndarray, slices: dict[str, list] | None = None, lesions: Sequence[int] | None = None,
    pixel_mm: Sequence[float] | None = None, affine: np.ndarray | None = None,
    slice_ipp: Sequence[Sequence[float]] | None = None, about: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """Write (N, 6) rows (or (N, 5) boxes without scores) as CSV, or as JSON when the path ends in .json, with each
    box's sides in mm (``pixel_mm``: the pixel's (row, column) size, or (z, y, x) spacing), its centre in patient mm
    (``affine``, ``slice_ipp``: :func:`box_centres_lps`), its lesion number (``lesions``, one per row) and its
    slice's entries of ``slices`` (:func:`slice_columns`) as further columns; ``about`` (input, model,
    threshold...) goes into the JSON only. Refuses to overwrite."""
    path = check_new(path)
    rows = np.asarray(rows, dtype=float)
    if rows.size and (rows.ndim != 2 or rows.shape[1] not in (5, 6)):
        raise ValueError(f"boxes of shape {rows.shape}: expected (N, 6) slice, x1, y1, x2, y2, score rows (or (N, 5) "
                         "without scores)")  # fmt: skip
    rows = rows.reshape(-1, rows.shape[-1] if rows.size else 6)
    if rows.shape[1] == 5:  # lesion boxes (a reader's, a phantom's): no score
        rows = np.column_stack([rows, np.full(len(rows), np.nan)])
    slices = slices or {}
    if lesions is not None and len(lesions) != len(rows):
        raise ValueError(f"{len(lesions)} lesion numbers for {len(rows)} boxes")
    lesion = {} if lesions is None else {"lesion": [int(n) for n in lesions]}
    sizes = {} if pixel_mm is None else box_sides_mm(rows, pixel_mm)
    if affine is not None:
        sizes.update(box_centres_lps(rows, affine, slice_ipp))
    records = [
        {
            "slice": int(r[0]),
            **{k: round(float(v), 2) for k, v in zip(COLUMNS[1:5], r[1:5])},
            "score": round(float(r[5]), 4),
            **{k: round(float(v[i]), 2) for k, v in sizes.items()},
            **{k: v[i] for k, v in lesion.items()},
            **{k: v[int(r[0])] for k, v in slices.items() if 0 <= int(r[0]) < len(v)},
        }
        for i, r in enumerate(rows)
    ]
    fields = [*COLUMNS, *sizes, *lesion, *slices]
    units = ("slice and x1, y1, x2, y2 in pixels (edges: pixel i spans [i, i + 1)) of the image as read: "
             "a DICOM series in its stored pixel order, slices along its normal; a NIfTI file turned to "
             "(z up, y to the back, x to the left), not its own voxel order; the other *_mm in mm, lps_*: "
             "patient coordinates (x to the left, y to the back, z up), for any storage")  # fmt: skip
    return write_table(path, fields, records, {"columns": fields, "units": units, **(about or {})}, "boxes")


def write_table(path: Path, fields: list[str], records: list[dict[str, Any]], head: dict[str, Any], key: str) -> Path:
    """``records`` as CSV (``fields`` its columns), or as JSON (``head`` and the records under ``key``) when ``path``
    ends in .json; written whole or not at all, never over a file."""
    with open_new(path, newline="") as fh:  # no half-written file (disk full, killed)
        if path.suffix.lower() == ".json":
            fh.write(strict_dumps({**head, key: records}, indent=1, default=str))  # no measure: null, not NaN
        else:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
    return path


def patient_affine(metadata: dict[str, Any], affine: Any) -> Any:
    """``affine`` where the source records a patient orientation, else None: the ``lps_*`` columns of a PNG or a
    plain array would be millimetres from a made-up origin, not patient coordinates."""
    return None if metadata.get("orientation_unknown") else affine


def write_volume_boxes(
    path: str | Path, rows: np.ndarray, volume: CTVolume, lesions: Sequence[int] | None = None,
    about: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """:func:`write_boxes_csv` with every column ``volume`` gives: sides in mm, centres in patient mm (neither when
    the reader assumed the pixel size), the DICOM slice columns; ``about`` plus the volume's spacing and series UID go
    into the JSON."""
    n = n_slices(volume.hu)
    known = known_pixel_mm(volume) is not None  # an assumed 1 mm would give pixels as mm
    spacing = {"spacing_mm": list(volume.spacing) if known else None, "series_uid": volume.metadata.get("series_uid")}
    affine = patient_affine(volume.metadata, volume.affine()) if known else None
    return write_boxes_csv(
        path, rows, slice_columns(volume.metadata, n), lesions, volume.spacing if known else None, affine,
        per_slice(volume.metadata, "slice_ipp", n), {**(about or {}), **spacing},
    )  # fmt: skip
