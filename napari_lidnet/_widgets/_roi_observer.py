"""ROI compare's model-observer columns: d' and AUC of a marked lesion against a marked background region.

The judge is ``metrics.observer.region_detectability``: a channelized Hotelling observer (10 Laguerre-Gauss
channels, signal known exactly) that takes its signal from the lesion region and its noise covariance from every
patch position inside the background region of the same image and slice, with a 95% block-bootstrap interval.
Each image gets its own value, so the column compares the low-dose, denoised and reference images on one task.

The values go into the rows of the lesion region (keys ``OBSERVER_KEYS``); a row without a value says why in
``cho_note`` (shown in the cell: the observer could not run) or in ``cho_hint`` (a tooltip on the dash: no
lesion/background pair, or not the lesion's row). No Qt here: the worker calls :func:`add_observer`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from napari_lidnet.metrics.observer import region_detectability, result_to_dict
from napari_lidnet.metrics.roi import AREA_SHAPES, Region, region_plane

#: row keys the observer adds (and the CSV exports), after ``metrics.roi.ROW_KEYS``
OBSERVER_KEYS = ("cho_d", "cho_d_low", "cho_d_high", "cho_auc", "cho_auc_low", "cho_auc_high", "cho_note")
#: (row key, table header) of the observer's table columns
OBSERVER_COLUMNS = (("cho_d", "d' (CHO)"), ("cho_auc", "AUC (CHO)"))
DASH = "\u2013"
HOW_TO = (
    "Pick a Lesion region and a Background region (left) to get the channelized Hotelling observer's d' and AUC "
    "of the lesion on each image; draw the background in plain tissue, a few lesion sizes wide"
)
N_BOOT = 500  # bootstrap replicates of the interval (region_detectability's default)


def pair_problem(regions: list[Region], lesion: int | None, background: int | None) -> str:
    """'' when ``lesion`` and ``background`` index two different area regions; otherwise what is missing."""
    for what, index in (("lesion", lesion), ("background", background)):
        if index is None:
            return f"no {what} region chosen. {HOW_TO}"
        if not 0 <= index < len(regions) or regions[index].shape_type not in AREA_SHAPES:
            return f"the {what} region {index} does not exist or has no area. {HOW_TO}"
    if lesion == background:
        return f"the lesion and the background are the same region. {HOW_TO}"
    return ""


def _empty(hint: str = "", note: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {key: math.nan for key in OBSERVER_KEYS}
    out.update(cho_note=note, cho_hint=hint)
    return out


def image_detectability(
    image: Any, lesion: Region, background: Region, name: str, n_boot: int = N_BOOT
) -> dict[str, Any]:
    """Observer keys for one image: d', AUC and their 95% intervals, or ``cho_note`` saying why there are none."""
    plane, lmask, lslice, lnote = region_plane(image, lesion, name)
    if plane is None:
        return _empty(note=f"lesion region: {lnote}")
    _, bmask, bslice, bnote = region_plane(image, background, name)
    if bmask is None:
        return _empty(note=f"background region: {bnote}")
    if lslice != bslice:
        return _empty(note=f"lesion (slice {lslice}) and background (slice {bslice}) differ: draw both on one slice")
    if not np.isfinite(plane).all():
        return _empty(note="NaN or infinite pixels in the slice: d' is not defined")
    try:
        result = region_detectability(plane, lmask, bmask, n_boot=n_boot)
    except np.linalg.LinAlgError:
        return _empty(note="no noise in the background region (singular channel covariance): d' is not defined")
    except ValueError as exc:
        return _empty(note=str(exc))
    flat = result_to_dict(result)
    out = _empty(
        hint=f"CHO, {result.n_channels} Laguerre-Gauss channels, lesion {lesion.name} vs background "
        f"{background.name}: {result.n_background} background patches; 95% block-bootstrap interval"
    )
    for key, value in (("d", "d_prime"), ("auc", "auc")):
        out[f"cho_{key}"] = flat[value]
        out[f"cho_{key}_low"], out[f"cho_{key}_high"] = flat[f"{key}_ci_low"], flat[f"{key}_ci_high"]
    return {k: (math.nan if v is None else v) for k, v in out.items()}


def add_observer(
    rows: list[dict[str, Any]],
    images: dict[str, Any],
    regions: list[Region],
    lesion: int | None,
    background: int | None,
    n_boot: int = N_BOOT,
) -> list[dict[str, Any]]:
    """Add the observer keys to every row of ``compare_regions`` (in place; returned): values on the lesion
    region's rows, one per image; a hint on the others."""
    problem = pair_problem(regions, lesion, background)
    if problem:
        for row in rows:
            row.update(_empty(hint=problem))
        return rows
    les, bg = regions[lesion], regions[background]  # type: ignore[index]
    other = f"d' (CHO) is on the rows of the lesion region {les.name} (background {bg.name})"
    for row in rows:
        if row.get("region") == les.name and row.get("image") in images:
            row.update(image_detectability(images[row["image"]], les, bg, row["image"], n_boot))
        else:
            row.update(_empty(hint=other))
    return rows


def observer_cell(row: dict[str, Any], key: str) -> tuple[str, str]:
    """(text, tooltip) of an observer cell: 'd [low, high]', the reason the observer could not run, or a dash."""
    value = row.get(key)
    if value is not None and isinstance(value, float) and math.isfinite(value):
        digits = 2 if key == "cho_d" else 3
        low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
        text = f"{value:.{digits}f}"
        if all(isinstance(v, float) and math.isfinite(v) for v in (low, high)):
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        return text, str(row.get("cho_hint", ""))
    note = str(row.get("cho_note") or "")
    if note:
        return note, note
    return DASH, str(row.get("cho_hint") or HOW_TO)
