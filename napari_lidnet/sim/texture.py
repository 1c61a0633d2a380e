"""Random fields for tissue texture: power-law (1/f^beta) parenchyma, wispy line networks, trabecular bone.

All fields are float32, zero-mean and unit-SD (``lines`` and ``trabecular`` are in [0, 1] / [-1, 1]), on a square
grid of ``pixel_mm`` pixels, and are smooth in z through ``ZField`` (independent fields every ``step`` mm, blended
linearly with the variance kept), so stacks of slices share texture like a real volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage


def _freq_mm(size: int, pixel_mm: float) -> np.ndarray:
    """|f| in cycles/mm on the rfft2 grid of a (size, size) image."""
    fy = np.fft.fftfreq(size, d=pixel_mm)[:, None]
    fx = np.fft.rfftfreq(size, d=pixel_mm)[None, :]
    return np.sqrt(fx * fx + fy * fy)


def power_law_noise(
    rng: np.random.Generator, size: int, beta: float, pixel_mm: float = 1.0, f_min: float = 1.0 / 60.0
) -> np.ndarray:
    """Gaussian field with power spectrum ~ 1 / (f^2 + f_min^2)^(beta/2) (f in cycles/mm), unit SD.

    ``f_min`` (cycles/mm) flattens the spectrum at scales above ~1/f_min so organ-sized blotches do not dominate;
    above a few f_min the radially averaged power falls as f^-beta.
    """
    if not 0.0 <= beta <= 6.0:
        raise ValueError(f"beta must be in [0, 6], got {beta}")
    white = np.fft.rfft2(rng.standard_normal((size, size)).astype(np.float32))
    f = _freq_mm(size, pixel_mm)
    amp = (f * f + f_min * f_min) ** (-beta / 4.0)
    amp[0, 0] = 0.0
    field = np.fft.irfft2(white * amp.astype(np.float32), s=(size, size)).astype(np.float32)
    return field / max(float(field.std()), 1e-12)


def band_noise(rng: np.random.Generator, size: int, pixel_mm: float, scale_mm: float) -> np.ndarray:
    """Gaussian field smoothed at ``scale_mm`` (a band of wavelengths ~ 2-6 scale), unit SD."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), scale_mm / pixel_mm)
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def lines(field: np.ndarray, pixel_mm: float, width_mm: float) -> np.ndarray:
    """Thin wispy lines along the zero level set of a smooth ``field``: ~1 on the lines, falling off over
    ``width_mm`` (distance to the level set ~ |field| / |grad field|)."""
    gy, gx = np.gradient(field, pixel_mm)
    dist = np.abs(field) / np.maximum(np.hypot(gx, gy), 1e-6)
    return np.exp(-0.5 * (dist / width_mm) ** 2).astype(np.float32)


def trabecular(field: np.ndarray, sharpness: float = 3.0, bias: float = 0.3) -> np.ndarray:
    """A trabecular network in [-1, 1] from band noise at the trabecular scale: plates and rods where the field
    exceeds ``bias`` (about 40 % bone at the default), fatty marrow spaces between."""
    return np.tanh(sharpness * (field - bias)).astype(np.float32)


class ZField:
    """A field smooth in z: independent fields ``make(rng)`` at nodes every ``step`` mm from ``z0``, blended
    linearly (the blend of two unit-SD fields rescaled to unit SD). The field has its own seed (one draw from
    ``rng``); node i comes from ``default_rng([seed, i])``, made only when a slice needs it.
    """

    def __init__(
        self, rng: np.random.Generator, make: Callable[[np.random.Generator], np.ndarray], z0: float, step: float
    ) -> None:
        self.seed, self.make, self.z0, self.step = int(rng.integers(2**62)), make, z0, step
        self.nodes: dict[int, np.ndarray] = {}

    def _node(self, i: int) -> np.ndarray:
        if i not in self.nodes:
            self.nodes[i] = self.make(np.random.default_rng([self.seed, i]))
        return self.nodes[i]

    def at(self, z: float) -> np.ndarray:
        t = (z - self.z0) / self.step
        i = int(math.floor(t))
        w = t - i
        if w < 1e-6:
            return self._node(i)
        return ((1 - w) * self._node(i) + w * self._node(i + 1)) / math.sqrt((1 - w) ** 2 + w**2)


def radial_power_spectrum(img: np.ndarray, pixel_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(f cycles/mm, radially averaged |FFT|^2) of a square image, one bin per 1/(size pixel_mm), DC excluded."""
    size = img.shape[0]
    power = np.abs(np.fft.rfft2(img - img.mean())) ** 2
    f = _freq_mm(size, pixel_mm)
    df = 1.0 / (size * pixel_mm)
    idx = np.rint(f / df).astype(int)
    n_bins = size // 2
    keep = (idx >= 1) & (idx < n_bins)
    total = np.bincount(idx[keep], power[keep], minlength=n_bins)
    count = np.bincount(idx[keep], minlength=n_bins)
    bins = np.arange(1, n_bins)
    return bins * df, total[1:] / np.maximum(count[1:], 1)
