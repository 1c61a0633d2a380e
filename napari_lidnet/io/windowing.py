"""Window presets (level/width in HU): they set contrast limits only, never the data."""

from __future__ import annotations

import re

#: name -> (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

DEFAULT_PRESET = "soft tissue"
#: the window stored in the scan (DICOM WindowCenter/Width), else ``DEFAULT_PRESET``
SCAN_WINDOW = "scan's own"


def stored_presets(metadata: dict | None) -> list[str]:
    """Preset names of a scan's further stored windows (``metadata["windows"]`` beyond the first, which
    ``SCAN_WINDOW`` is): "scan's own 2: BONE", "scan's own 3", ..."""
    windows = list((metadata or {}).get("windows") or [])
    return [f"{SCAN_WINDOW} {k}" + (f": {w[2]}" if len(w) > 2 and w[2] else "")
            for k, w in enumerate(windows[1:], start=2)]  # fmt: skip


def level_width(preset: str = DEFAULT_PRESET, metadata: dict | None = None) -> tuple[float, float]:
    """(level, width) in HU of a named preset, or for ``SCAN_WINDOW`` the scan's own ``metadata["window"]`` when it
    has a valid one (else the default preset); "scan's own K" (:func:`stored_presets`) is its K-th stored window,
    where the image has one (else the first, as ``SCAN_WINDOW``)."""
    k = re.match(rf"{re.escape(SCAN_WINDOW)} (\d+)", preset)
    if k is not None:
        windows = list((metadata or {}).get("windows") or [])
        n = int(k[1])
        if 2 <= n <= len(windows):
            return float(windows[n - 1][0]), float(windows[n - 1][1])
        preset = SCAN_WINDOW
    if preset == SCAN_WINDOW:
        window = (metadata or {}).get("window")
        if window is not None and len(window) == 2 and float(window[1]) > 0:
            return float(window[0]), float(window[1])
        preset = DEFAULT_PRESET
    try:
        return WINDOW_PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown window preset {preset!r}; choose one of {sorted(WINDOW_PRESETS)}") from None


def window_limits(preset: str, metadata: dict | None = None) -> tuple[float, float]:
    """Contrast limits (low, high) in HU of :func:`level_width`."""
    level, width = level_width(preset, metadata)
    return level - width / 2, level + width / 2


def contrast_limits(preset: str = DEFAULT_PRESET) -> tuple[float, float]:
    """Contrast limits (low, high) in HU for a named preset."""
    return window_limits(preset)
