"""Noise power spectrum (NPS) of a uniform region, 2D and radially averaged, in mm^-1.

NPS(fy, fx) = <|FFT(roi - trend)|^2> * (dy * dx) / (Ny * Nx), averaged over sub-ROIs (half-overlapping
squares) when the region is large enough. Its integral over frequency equals the noise variance (Parseval):
sum(NPS) * dfy * dfx = mean((roi - trend)^2), with dfy = 1 / (Ny * dy), dfx = 1 / (Nx * dx).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.ndimage import distance_transform_cdt

from napari_lidnet.metrics.roi import mask_bbox


@dataclass
class NPSResult:
    """2D and radial NPS. ``nps2d`` is fft-shifted, ``fy``/``fx`` its axes; ``f``/``nps`` the radial curve."""

    nps2d: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    f: np.ndarray
    nps: np.ndarray
    n_rois: int
    roi_size: tuple[int, int]

    def integral(self) -> float:
        """Integral of the 2D NPS over frequency (= noise variance, in HU^2)."""
        dfy = self.fy[1] - self.fy[0] if len(self.fy) > 1 else 1.0
        dfx = self.fx[1] - self.fx[0] if len(self.fx) > 1 else 1.0
        return float(self.nps2d.sum() * dfy * dfx)


def detrend(roi: np.ndarray, method: str = "poly2") -> np.ndarray:
    """Remove the mean ("mean") or a least-squares 2nd-order polynomial surface ("poly2") from a 2D ROI."""
    roi = np.asarray(roi, dtype=np.float64)
    if method == "mean":
        return roi - roi.mean()
    if method != "poly2":
        raise ValueError(f"unknown detrend {method!r}; use 'mean' or 'poly2'")
    ny, nx = roi.shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    y, x = (y - ny / 2) / max(ny, 1), (x - nx / 2) / max(nx, 1)
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1).reshape(-1, 6)
    coef, *_ = np.linalg.lstsq(design, roi.ravel(), rcond=None)
    return roi - (design @ coef).reshape(ny, nx)


def sub_roi_origins(n: int, size: int) -> list[int]:
    """Start indices of half-overlapping windows of ``size`` along an axis of length ``n`` (ends included)."""
    if n <= size:
        return [0]
    step = max(size // 2, 1)
    starts = list(range(0, n - size + 1, step))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def nps_2d(
    region: np.ndarray,
    pixel_mm: float | tuple[float, float] = 1.0,
    roi_size: int | None = 64,
    detrend_method: str = "poly2",
) -> NPSResult:
    """NPS of a uniform 2D region (HU), averaged over half-overlapping square sub-ROIs of ``roi_size``.

    Args:
        region: (Ny, Nx) pixels of a uniform area (water, liver, ...), at least 4 x 4.
        pixel_mm: pixel size (dy, dx) or one value, in mm.
        roi_size: side of the sub-ROIs; None or a region smaller than it uses the whole region as one ROI.
        detrend_method: "mean" or "poly2" (per sub-ROI).

    Returns:
        NPSResult with the 2D NPS in HU^2 mm^2, frequency axes in mm^-1 and the radial average.
    """
    region = np.asarray(region, dtype=np.float64)
    if region.ndim != 2 or min(region.shape) < 4:
        raise ValueError(f"NPS needs a 2D region of at least 4x4 pixels, got shape {region.shape}")
    dy, dx = (abs(float(v)) for v in ((pixel_mm, pixel_mm) if np.isscalar(pixel_mm) else pixel_mm))  # a flipped
    if not (np.isfinite(dy) and np.isfinite(dx) and dy > 0 and dx > 0):  # layer's scale is negative: sizes count
        raise ValueError(f"pixel size {pixel_mm!r} must be positive numbers of mm")
    if roi_size is None or min(region.shape) < roi_size:
        sy, sx = region.shape
    else:
        sy = sx = int(roi_size)
    acc = np.zeros((sy, sx))
    n = 0
    for r in sub_roi_origins(region.shape[0], sy):
        for c in sub_roi_origins(region.shape[1], sx):
            roi = detrend(region[r : r + sy, c : c + sx], detrend_method)
            acc += np.abs(np.fft.fft2(roi)) ** 2
            n += 1
    nps2d = np.fft.fftshift(acc / n * (dy * dx) / (sy * sx))
    fy = np.fft.fftshift(np.fft.fftfreq(sy, d=dy))
    fx = np.fft.fftshift(np.fft.fftfreq(sx, d=dx))
    f, radial = radial_average(nps2d, fy, fx)
    return NPSResult(nps2d=nps2d, fy=fy, fx=fx, f=f, nps=radial, n_rois=n, roi_size=(sy, sx))


def radial_average(
    nps2d: np.ndarray, fy: np.ndarray, fx: np.ndarray, n_bins: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Average a (shifted) 2D spectrum over rings of radial frequency, up to the smaller Nyquist limit.

    Rings are as wide as the coarser frequency step and centred on its multiples (a sample on an axis never sits on
    a ring's edge, where rounding would put it either side); the zero frequency, which detrending empties, is left
    out. Returns (each ring's mean radial frequency in mm^-1, mean NPS per ring), empty rings dropped.
    """
    df = max(abs(fy[1] - fy[0]) if len(fy) > 1 else 0, abs(fx[1] - fx[0]) if len(fx) > 1 else 0)
    fmax = min(np.abs(fy).max(), np.abs(fx).max())
    n_bins = n_bins or max(int(round(fmax / df)), 1)
    step = fmax / n_bins
    edges = (np.arange(n_bins + 1) + 0.5) * step
    edges[-1] = max(edges[-1], fmax * (1 + 1e-9))
    fr = np.hypot(*np.meshgrid(fy, fx, indexing="ij")).ravel()
    idx = np.digitize(fr, edges) - 1
    ok = (idx >= 0) & (idx < n_bins) & (fr <= fmax * (1 + 1e-9))
    sums = np.bincount(idx[ok], weights=nps2d.ravel()[ok], minlength=n_bins)
    freq = np.bincount(idx[ok], weights=fr[ok], minlength=n_bins)
    counts = np.bincount(idx[ok], minlength=n_bins)
    keep = counts > 0
    return freq[keep] / counts[keep], sums[keep] / counts[keep]


def largest_inscribed_square(mask: np.ndarray) -> tuple[int, int, int] | None:
    """(row0, col0, side) of a large axis-aligned square inside ``mask`` (the largest odd-sided one centred on
    a pixel, from the chessboard distance transform); None for an empty mask."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    dist = distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    d = int(dist.max())
    if d == 0:
        return None
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    side = 2 * d - 1
    return int(r) - (d - 1), int(c) - (d - 1), side


def region_nps(
    plane: np.ndarray,
    mask: np.ndarray,
    pixel_mm: float | tuple[float, float] = 1.0,
    roi_size: int | None = 64,
    detrend_method: str = "poly2",
) -> NPSResult:
    """NPS of a region of a 2D image (see :func:`nps_2d`): its bounding box when the region fills it
    (a rectangle), otherwise the largest square inside it."""
    mask = np.asarray(mask, dtype=bool)
    box = mask_bbox(mask)
    if box is not None and mask[box[0] : box[2], box[1] : box[3]].all() and min(box[2] - box[0], box[3] - box[1]) >= 4:
        return nps_2d(plane[box[0] : box[2], box[1] : box[3]], pixel_mm, roi_size, detrend_method)
    sq = largest_inscribed_square(mask)
    if sq is None or sq[2] < 4:
        raise ValueError("region too small for a noise power spectrum (needs a 4x4 square inside)")
    r, c, s = sq
    return nps_2d(plane[r : r + s, c : c + s], pixel_mm, roi_size, detrend_method)


# ------------------------------------------------------------------------------- periodic texture in a residual

PEAK_ROI = 64  # side of the Hann-windowed sub-ROIs of ``residual_spectrum``


def residual_spectrum(residuals: list[np.ndarray], roi: int = PEAK_ROI) -> tuple[np.ndarray, int]:
    """Mean 2D power spectrum (HU^2 px^2, cycles/px, fft-shifted, ``roi`` x ``roi``) of residual images.

    Half-overlapping sub-ROIs, poly2-detrended and Hann-windowed so that their borders do not leak power along the
    axes (a residual, unlike a uniform region, is not periodic at the ROI's edges). Returns (spectrum, n_rois).
    """
    w = np.outer(np.hanning(roi), np.hanning(roi))
    acc, n = np.zeros((roi, roi)), 0
    for res in residuals:
        if res.ndim != 2 or min(res.shape) < roi:
            raise ValueError(f"residuals must be 2D and at least {roi} x {roi}, got shape {res.shape}")
        for r in sub_roi_origins(res.shape[0], roi):
            for c in sub_roi_origins(res.shape[1], roi):
                acc += np.abs(np.fft.fft2(detrend(res[r : r + roi, c : c + roi], "poly2") * w)) ** 2
                n += 1
    return np.fft.fftshift(acc / float((w**2).sum()) / n), n


def isolated_peak(spectrum: np.ndarray, skip_rings: int = 3) -> dict[str, float | list[float]]:
    """The most isolated peak of a shifted square 2D spectrum: a periodic texture's narrow spike.

    For each frequency beyond the ``skip_rings`` lowest rings, the ratio of the spectrum to the median of its 7 x 7
    neighbourhood (periodic wrap); noise, even anisotropic or correlated, gives values near 1.5-2.5 (a mean of
    tens of ROIs), a fixed periodic pattern a ratio of tens or more. Returns ``local_ratio``, ``radial_ratio`` (the
    peak over the mean of its ring) and ``at_cycles_per_px`` (fy, fx).
    """
    n = spectrum.shape[0]
    f = np.fft.fftshift(np.fft.fftfreq(n))
    ring = np.rint(np.hypot(*np.meshgrid(f, f, indexing="ij")) * n).astype(int)
    radial = np.bincount(ring.ravel(), weights=spectrum.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    around = np.ones((7, 7), bool)
    around[3, 3] = False
    local = spectrum / np.maximum(ndimage.median_filter(spectrum, footprint=around, mode="wrap"), 1e-12)
    local[ring < skip_rings] = 0.0
    k = np.unravel_index(int(np.argmax(local)), local.shape)
    return {
        "local_ratio": float(local[k]),
        "radial_ratio": float(spectrum[k] / max(radial[ring[k]], 1e-12)),
        "at_cycles_per_px": [float(f[k[0]]), float(f[k[1]])],
    }


def phase_pattern_range(residuals: list[np.ndarray], period: int = 4) -> float:
    """Peak-to-peak (HU) over the period x period pixel classes (y mod p, x mod p) of the mean high-passed residual
    (minus its 8 x 8 local mean): the amplitude of a fixed ``period``-pixel pattern; noise alone gives tenths."""
    means = []
    for res in residuals:
        hp = res.astype(np.float64) - ndimage.uniform_filter(res.astype(np.float64), 8)
        means.append([[hp[i::period, j::period].mean() for j in range(period)] for i in range(period)])
    phase = np.mean(means, axis=0)
    return float(phase.max() - phase.min())


def angular_excess(noise: np.ndarray, size: int = 256) -> float:
    """View aliasing in noise images: the relative variance of the high-frequency (0.25-0.45 cycles/px) 2D NPS of
    the central ``size`` ROI of a (n, y, x) stack about its ring means, less the scatter of a mean of n
    periodograms. Noise of enough views gives about 0; spokes from too few views raise it."""
    c = noise.shape[-1] // 2
    roi = noise[:, c - size // 2 : c + size // 2, c - size // 2 : c + size // 2]
    ps = (np.abs(np.fft.fft2(roi - roi.mean((1, 2), keepdims=True))) ** 2).mean(0)
    f = np.fft.fftfreq(size)
    fr = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    ring = np.rint(fr * size).astype(int)
    rel = ps / (np.bincount(ring.ravel(), ps.ravel()) / np.bincount(ring.ravel()))[ring]
    return float(rel[(fr > 0.25) & (fr < 0.45)].var() - 1.0 / len(noise))
