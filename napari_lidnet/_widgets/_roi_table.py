"""The ROI compare table: its columns, cell text, the CSV export and the rows the worker computes (no Qt)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet._widgets._roi_observer import OBSERVER_COLUMNS, OBSERVER_KEYS, add_observer
from napari_lidnet.io.atomic import open_new
from napari_lidnet.metrics.roi import ROW_KEYS, compare_regions

__all__ = ["BAR_METRICS", "COLUMNS", "COLUMN_INDEX", "CSV_KEYS", "compute_rows", "finite", "format_value",
           "pixels_only", "write_csv"]  # fmt: skip

#: (row key, table header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("region", "region"),
    ("image", "image"),
    ("slice", "slice"),
    ("area_mm2", "area (mm²)"),
    ("mean", "mean HU"),
    ("sd", "SD (HU)"),
    ("snr", "SNR"),
    ("cnr", "CNR"),
    ("rmse", "RMSE (HU)"),
    ("psnr", "PSNR (dB)"),
    ("ssim", "SSIM"),
    ("roi_perceptual", "ROI perceptual"),
    *OBSERVER_COLUMNS,
    ("note", "note"),
)
BAR_METRICS = ("mean", "sd", "snr", "cnr", "rmse", "psnr", "ssim", "roi_perceptual", "cho_d")
#: what the numbers were computed against, on every row of the CSV (the file stands without the screen)
CONTEXT_KEYS = ("reference", "window_hu", "background", "lesion", "pixel_mm")
#: columns of the exported CSV: the region statistics, then the observer's values and intervals
CSV_KEYS = (*ROW_KEYS, "area_mm2", *OBSERVER_KEYS, *CONTEXT_KEYS)
#: CSV header names that carry their unit (the screen's headers do: "mean HU", "PSNR (dB)")
CSV_UNITS = {"mean": "mean_hu", "sd": "sd_hu", "rmse": "rmse_hu", "psnr": "psnr_db"}
COLUMN_INDEX = {key: i for i, (key, _) in enumerate(COLUMNS)}
#: what the headers whose meaning is not in their name measure
HEADER_TIPS = {
    "slice": "the image's own slice index (a 'current slice' output has one slice: 0)",
    "snr": "mean / SD, for regions above 0 HU only (HU is relative to water: below it a ratio means nothing)",
    "cnr": "|mean - the Background region's mean| / the Background region's SD",
    "rmse": "root-mean-square difference from the Reference inside the region, in the PSNR/SSIM window",
    "psnr": "10 log10(range² / MSE) against the Reference inside the region; range: the window's width (or the "
            "reference slice's max - min)",
    "ssim": "the region's mean of the SSIM map against the Reference (7 x 7 windows, each centred on a pixel)",
    "roi_perceptual": "LIDnet's ROI perceptual distance: the lesion detector's features inside the region "
                      "against the Reference's (lower is closer)",
}


def format_value(value: Any) -> str:
    """Table text: '' for None/NaN, 2 decimals from 0.01 to 1e5 (0 too), 3 significant digits beyond."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    v = float(value)
    if math.isnan(v):
        return ""
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if v == 0:
        return "0.00"  # as its neighbours in a column of decimals (it read "0" beside "4.62")
    return f"{v:.2f}" if 0.01 <= abs(v) < 1e5 else f"{v:.3g}"


def finite(value: Any) -> float:
    """``value`` as a float, NaN when it is missing or not a finite number (bar heights)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write table rows (``compare_regions`` dicts plus the observer's keys) as CSV with a header of ``CSV_KEYS``
    (those with a unit named with it: ``CSV_UNITS``); NaN or a missing key -> empty cell. Never overwrites."""
    path = Path(path)
    with open_new(path, newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([CSV_UNITS.get(k, k) for k in CSV_KEYS])
        for row in rows:
            out = []
            for key in CSV_KEYS:
                v = row.get(key)
                if isinstance(v, float) and math.isnan(v):
                    out.append("")
                elif isinstance(v, float) and not math.isinf(v):
                    out.append(repr(v))
                else:
                    out.append("" if v is None else str(v))
            writer.writerow(out)
    return path


def pixels_only(row: dict[str, Any]) -> bool:
    """Whether a row measured pixels on an image without a voxel size (its area is a pixel count)."""
    n, area = row.get("n"), row.get("area_mm2")
    return isinstance(n, (int, np.integer)) and n > 0 and not (isinstance(area, float) and math.isfinite(area))


def compute_rows(
    images: dict[str, np.ndarray],
    regions: list[Any],
    reference: str | None,
    background: str | None,
    window: tuple[float, float] | None,
    perceptual_on: bool,
    lesion: str | None = None,
) -> list[dict[str, Any]]:
    """Worker body (no Qt): the table rows with the model observer's keys; the ROI perceptual function is built
    here so torch loads off-GUI."""
    perceptual = None
    if perceptual_on:
        from napari_lidnet.models.roi_perceptual import make_perceptual_fn

        perceptual = make_perceptual_fn()
    rows = compare_regions(images, regions, reference, background, window, perceptual)
    return add_observer(rows, images, regions, lesion, background)
