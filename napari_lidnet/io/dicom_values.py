"""Numbers from DICOM headers as scanners and exporters really write them, and the rescale and padding of stored
pixel values.

A decimal string (DS) is meant to use a point; some exporters write the locale's comma ("2,75"), which is read as
the number it means. A value that is no number at all counts as absent, and the caller says what it assumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

#: HU given to padding pixels whose padding value rescales into or above the range of tissue (a -3024 fill, as many
#: scanners write it: ``io.fov`` then finds it)
PADDING_HU = -3024.0
#: a padding value that rescales at or above this is no tissue (an unsigned 63536 read as +62512 HU)
TISSUE_MAX_HU = 3072.0


def _number(value: Any) -> float | None:
    """One value as a finite float (a decimal comma read as a point), None when it is no number."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        try:
            out = float(str(value).strip().replace(",", "."))
        except (TypeError, ValueError):
            return None
    return out if np.isfinite(out) else None


def header_float(value: Any) -> float | None:
    """A single-valued number element (DS, IS or binary; its first value when it holds several), None when it is
    missing, empty or not a number."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _number(value)


def header_floats(value: Any, n: int) -> np.ndarray | None:
    """A multi-valued number element as ``n`` floats, or None when missing or malformed."""
    if value is None:
        return None
    if isinstance(value, str | bytes):
        value = [value]
    try:
        numbers = [_number(v) for v in value]
    except TypeError:
        return None
    if len(numbers) != n or any(v is None for v in numbers):
        return None
    return np.asarray(numbers, dtype=float)


def header_rescale(ds: Any) -> tuple[float, float] | None:
    """(RescaleSlope, RescaleIntercept) of an image header, or None when it has no usable intercept (missing,
    empty or not a number) or a slope of 0; a missing slope with an intercept is 1."""
    intercept = header_float(ds.get("RescaleIntercept"))
    slope = header_float(ds.get("RescaleSlope")) if "RescaleSlope" in ds else 1.0
    if intercept is None or slope is None or slope == 0:
        return None
    return slope, intercept


def series_rescales(headers_ds: list[Any], label: str) -> tuple[list[tuple[float, float]], list[str]]:
    """Each header's (slope, intercept) and notes: headers without a usable pair get the series' most common one (a
    slice read as stored values would sit 1024 HU off its neighbours); with none in the series, values are read as
    stored."""
    found = [header_rescale(ds) for ds in headers_ds]
    present = [r for r in found if r is not None]
    missing = len(found) - len(present)
    if not missing:
        return found, []
    if not present:
        _refuse_bad_slope(headers_ds, label)
        return [(1.0, 0.0)] * len(found), []
    common = Counter(present).most_common(1)[0][0]
    note = (f"{label}: {missing} of {len(found)} slices have no usable RescaleSlope/RescaleIntercept; they are read "
            f"with the series' slope {common[0]:g} and intercept {common[1]:g}")  # fmt: skip
    return [r if r is not None else common for r in found], [note]


def _refuse_bad_slope(headers_ds: list[Any], label: str) -> None:
    """NotHU when the series' rescale is there but its slope is not a usable number (malformed, or 0): read as
    stored values, air came out at +24 HU and the models ran on it."""
    from .checks import NotHU

    for ds in headers_ds:
        if "RescaleSlope" in ds and header_float(ds.get("RescaleIntercept")) is not None:
            raw = ds.get("RescaleSlope")
            raise NotHU(label, f"RescaleSlope {raw!r} is not a usable slope (a number other than 0): its pixels "
                               "cannot be read as HU")  # fmt: skip


def stored_values_only(headers_ds: list[Any], hu: np.ndarray) -> bool:
    """Whether a CT series' pixels are stored values, not HU: no header gives a usable rescale and no pixel lies below
    0 HU (air is -1000)."""
    return not any(header_rescale(ds) for ds in headers_ds) and hu.size > 0 and float(hu.min()) >= 0


def padding_stored(ds: Any) -> tuple[float, float] | None:
    """The stored-value range (low, high) that PixelPaddingValue (and PixelPaddingRangeLimit) mark as padding,
    or None when the header marks none."""
    value = header_float(ds.get("PixelPaddingValue"))
    if value is None:
        return None
    limit = header_float(ds.get("PixelPaddingRangeLimit"))
    return (value, value) if limit is None else (min(value, limit), max(value, limit))


def padding_hu(ds: Any, rescale: tuple[float, float]) -> tuple[float, float] | None:
    """The HU range (low, high) that the series' PixelPaddingValue (to PixelPaddingRangeLimit) reads as
    (``PADDING_HU`` where :func:`fill_padding_values` sets it), so a derived series can mark the same pixels; None
    without PixelPaddingValue."""
    pad = padding_stored(ds)
    if pad is None:
        return None
    if pad[0] * rescale[0] + rescale[1] >= TISSUE_MAX_HU:
        return PADDING_HU, PADDING_HU
    lo, hi = sorted(float(v * rescale[0] + rescale[1]) for v in pad)
    return lo, hi


#: exposure values that scale with the dose (tube current, current-time product, CTDIvol); ExposureTime does not
DOSE_TAGS = ("XRayTubeCurrent", "Exposure", "ExposureInuAs", "CTDIvol")


def at_dose(tags: dict[str, Any] | None, dose: float) -> dict[str, Any] | None:
    """``tags`` (``metadata["source_tags"]`` or one slice's ``slice_tags``) with the :data:`DOSE_TAGS` values times
    ``dose``, so that a simulated low-dose copy written as DICOM states its own exposure, not the scan's (a
    "SIMULATED 25% dose" series does not keep e.g. 18.54 mGy and 253 mAs); whole numbers stay whole (IS)."""
    if not tags:
        return tags
    out = dict(tags)
    for key in DOSE_TAGS:
        value = out.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[key] = int(round(value * dose)) if isinstance(value, int) else float(value) * dose
    return out


def tag_value(value: Any) -> Any:
    """A header value as pydicom sets it: a code sequence kept as a list of dicts (``dicom_read._plain``) becomes
    a Sequence of Datasets again; anything else as it is."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        items = []
        for item in value:
            ds = Dataset()
            for kw, v in item.items():
                setattr(ds, kw, tag_value(v))
            items.append(ds)
        return Sequence(items)
    return value


def fill_padding_values(hu: np.ndarray, stored: np.ndarray, pad: tuple[float, float], rescale: tuple) -> int:
    """Set the pixels of ``hu`` whose stored value lies in ``pad`` to ``PADDING_HU`` when the padding value
    rescales to no tissue HU at or above ``TISSUE_MAX_HU`` (an unsigned 63536 read as +62512 HU); a padding that
    rescales below air is left as it is (``io.fov`` finds it), one inside the tissue range too (it may be tissue).
    Returns the number of pixels set."""
    slope, intercept = rescale
    pad_hu = pad[0] * slope + intercept
    if pad_hu < TISSUE_MAX_HU:
        return 0
    mask = (stored >= pad[0]) & (stored <= pad[1])
    hu[mask] = PADDING_HU
    return int(mask.sum())
