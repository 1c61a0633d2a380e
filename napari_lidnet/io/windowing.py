"""Window presets (level/width in HU): they set contrast limits only, never the data."""

from __future__ import annotations

#: name -> (level, width) in HU
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft tissue": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

DEFAULT_PRESET = "soft tissue"
#: the window stored in the scan (DICOM WindowCenter/Width), else ``DEFAULT_PRESET``
SCAN_WINDOW = "scan's own"


def level_width(preset: str = DEFAULT_PRESET, metadata: dict | None = None) -> tuple[float, float]:
    """(level, width) in HU of a named preset, or for ``SCAN_WINDOW`` the scan's own ``metadata["window"]`` when it
    has a valid one (else the default preset)."""
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
