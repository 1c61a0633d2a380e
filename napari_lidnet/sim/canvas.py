"""Drawing primitives of the phantoms: anti-aliased irregular ellipses ("blobs") painted on a mm grid.

A ``Blob`` is an ellipse (semi-axes in mm, rotated) whose radius is modulated by a few Fourier harmonics; a
``Canvas`` holds the HU image and the label map and composites blobs with a one-pixel (sharp) or Gaussian (soft)
edge, optionally only over given labels or inside another coverage map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

#: organ label map values
LABELS: dict[str, int] = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "liver": 3,
    "spleen": 4,
    "kidney": 5,
    "vessel": 6,
    "bone": 7,
    "marrow": 8,
    "bowel": 9,
    "gas": 10,
    "lung": 11,
    "heart": 12,
    "fluid": 13,
    "airway": 14,
    "gm": 15,
    "wm": 16,
    "dura": 17,
    "table": 18,
}


@dataclass
class Blob:
    """Ellipse (semi-axes a, b mm, rotated by ``angle`` rad) with radius modulation 1 + sum amp_k cos(k t + ph_k)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    harm: np.ndarray | None = None  # (K, 2): amplitude, phase for k = 2 .. K+1

    def extent(self) -> float:
        amp = 0.0 if self.harm is None else float(np.abs(self.harm[:, 0]).sum())
        return max(self.a, self.b) * (1.0 + amp)

    def scaled(self, s: float, ds: float = 0.0) -> Blob:
        """Same shape, semi-axes times s minus ds mm (shrinking inward for walls and layers)."""
        return Blob(self.cx, self.cy, max(self.a * s - ds, 0.0), max(self.b * s - ds, 0.0), self.angle, self.harm)


def harm(rng: np.random.Generator, k: int, amp: float) -> np.ndarray:
    """Random Fourier irregularity: amplitudes decaying with order."""
    orders = np.arange(2, k + 2)
    return np.stack([rng.uniform(0, amp, k) / orders * 2, rng.uniform(0, 2 * np.pi, k)], axis=1)


class Canvas:
    """HU image and label map on a mm grid, painted with anti-aliased blobs."""

    def __init__(self, size: int, px: float) -> None:
        self.size, self.px = size, px
        self.coord = (np.arange(size) - size // 2) * px  # mm of pixel centres, x (cols) and y (rows)
        self.hu = np.full((size, size), -1000.0, np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def window(self, blob: Blob, pad_mm: float) -> tuple[slice, slice] | None:
        r = blob.extent() + pad_mm + 2 * self.px
        c = self.size // 2
        i0 = max(0, int(math.floor((blob.cy - r) / self.px)) + c)
        i1 = min(self.size, int(math.ceil((blob.cy + r) / self.px)) + c + 1)
        j0 = max(0, int(math.floor((blob.cx - r) / self.px)) + c)
        j1 = min(self.size, int(math.ceil((blob.cx + r) / self.px)) + c + 1)
        if i0 >= i1 or j0 >= j1 or blob.a <= 0 or blob.b <= 0:
            return None
        return slice(i0, i1), slice(j0, j1)

    def coverage(self, blob: Blob, sigma: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Fraction of each pixel inside the blob (sharp: 1-pixel ramp; soft: Gaussian edge of SD sigma mm)."""
        win = self.window(blob, 3.0 * sigma)
        if win is None:
            return None
        dx = self.coord[win[1]][None, :] - blob.cx
        dy = self.coord[win[0]][:, None] - blob.cy
        ca, sa = math.cos(blob.angle), math.sin(blob.angle)
        u = (dx * ca + dy * sa) / blob.a
        v = (-dx * sa + dy * ca) / blob.b
        rho = np.sqrt(u * u + v * v)
        radius = 1.0
        if blob.harm is not None:
            t = np.arctan2(v, u)
            radius = 1.0 + sum(amp * np.cos(k * t + ph) for k, (amp, ph) in enumerate(blob.harm, start=2))
        # signed distance (mm) ~ (rho - R) / |grad rho|, |grad rho| = |(u/a, v/b)| / rho
        grad = np.sqrt((u / blob.a) ** 2 + (v / blob.b) ** 2) / np.maximum(rho, 1e-6)
        dist = (rho - radius) / np.maximum(grad, 1e-6)
        if sigma > 0:
            cov = 0.5 * special.erfc(dist / (math.sqrt(2.0) * sigma))
        else:
            cov = np.clip(0.5 - dist / self.px, 0.0, 1.0)
        return win, cov

    def paint(
        self,
        blob: Blob,
        value: float,
        label: int,
        sigma: float = 0.0,
        only_on: tuple[int, ...] | None = None,
        within: np.ndarray | None = None,
    ) -> None:
        """Composite ``value`` over the blob; ``only_on`` labels / ``within`` coverage restrict where it lands."""
        res = self.coverage(blob, sigma)
        if res is None:
            return
        win, cov = res
        if only_on is not None:
            cov = cov * np.isin(self.lab[win], only_on)
        if within is not None:
            cov = cov * within[win]
        h = self.hu[win]
        h += (value - h) * cov
        self.lab[win] = np.where(cov >= 0.5, label, self.lab[win])

    def full_coverage(self, blob: Blob) -> np.ndarray:
        out = np.zeros((self.size, self.size), np.float32)
        res = self.coverage(blob)
        if res is not None:
            out[res[0]] = res[1]
        return out


def ext(z: float, zc: float, hz: float) -> float:
    """Ellipsoidal extent factor of an organ centred at zc with half-length hz (0 outside)."""
    q = 1.0 - ((z - zc) / hz) ** 2
    return math.sqrt(q) if q > 0 else 0.0
