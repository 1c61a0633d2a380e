"""Image quality in HU: PSNR, SSIM and RMSE over a stated window, whole images and lesion regions.

Convention: both images are clipped to a HU window before PSNR and SSIM (default ``METRIC_WINDOW`` = (-160, 240),
the abdominal soft-tissue display window of the low-dose CT literature) and ``data_range`` defaults to the window
width; ``window=None`` skips clipping and then ``data_range`` defaults to the reference's range (max - min).
RMSE follows the same rule as PSNR: HU on window-clipped images (``window=None``: raw HU), so that
PSNR = 20 log10(data_range / RMSE) holds on every slice. 3D arrays (z, y, x), and lists of slices
(:func:`slice_quality`), are evaluated slice by slice and the per-slice values averaged; a slice equal to its
reference inside the window (air only, say) has no error to measure and no finite PSNR, so it is left out of the
PSNR mean (the mean is inf only when every slice is such a slice). SSIM follows Wang et al. 2004 with skimage's
defaults (7x7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance, reflect borders, mean over the map without a
3-pixel border), so on plain arrays the results equal ``skimage.metrics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.ndimage import uniform_filter

from napari_lidnet.io.checks import NOT_HU_RANGE, not_hu_note, warn_caller

__all__ = ["METRIC_WINDOW", "clip_to_window", "data_range_of", "mean_psnr", "psnr", "psnr_from_mse", "rmse",
           "slice_quality", "ssim", "ssim_map"]  # fmt: skip

METRIC_WINDOW: tuple[float, float] = (-160.0, 240.0)


def _prepare(
    x: ArrayLike, ref: ArrayLike, window: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {ref.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or a 3D (z, y, x) volume, got shape {x.shape}")
    if window is not None:
        if not_hu_note(ref):  # HU / 1000 inside a window of HU: nothing clipped, a range 100x the values' (+40 dB)
            warn_caller(f"the reference's values (all within +-{NOT_HU_RANGE:g}) are not HU: the HU window "
                        f"{tuple(window)} does not apply to them; give window=None (or the images in HU)",
                        UserWarning)  # the same words for every slice: said once per line of the caller's
        x, ref, window = *clip_to_window(x, ref, window), (float(window[0]), float(window[1]))
    return x, ref, window


def clip_to_window(x: ArrayLike, ref: ArrayLike, window: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float64, clipped to the HU ``window`` (low, high)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"window must be (low, high) with high > low, got {window}")
    return np.clip(np.asarray(x, np.float64), lo, hi), np.clip(np.asarray(ref, np.float64), lo, hi)


def data_range_of(ref: np.ndarray, data_range: float | None = None, window: tuple[float, float] | None = None) -> float:
    """``data_range`` when given, else the window width, else the reference's max - min."""
    if data_range is not None:
        return float(data_range)
    if window is not None:
        return window[1] - window[0]
    return float(ref.max() - ref.min())


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return [a] if a.ndim == 2 else list(a)


def psnr_from_mse(mse: float, data_range: float) -> float:
    """10 log10(data_range^2 / MSE) dB; inf for identical images, NaN for a zero range or a NaN MSE."""
    if not np.isfinite(mse) or data_range <= 0:
        return float("nan")
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def psnr(
    x: ArrayLike, ref: ArrayLike, data_range: float | None = None, window: tuple[float, float] | None = METRIC_WINDOW
) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref`` (HU); mean over slices for 3D."""
    x, ref, window = _prepare(x, ref, window)
    vals = []
    for xs, rs in zip(_slices(x), _slices(ref), strict=True):
        vals.append(psnr_from_mse(float(np.mean((xs - rs) ** 2)), data_range_of(rs, data_range, window)))
    return mean_psnr(vals)


def mean_psnr(values: list[float]) -> float:
    """The mean of per-slice PSNRs, slices without error (inf) left out: inf only when every slice has none (one
    air-only slice made a whole volume's PSNR inf); NaN for none."""
    finite = [v for v in values if v != float("inf")]
    if not values:
        return float("nan")
    return float(np.mean(finite)) if finite else float("inf")


def slice_quality(images: Any, refs: Any, window: tuple[float, float] | None = METRIC_WINDOW) -> dict[str, float]:
    """``{"psnr", "ssim"}``: the per-slice means of ``images`` against ``refs`` (a (z, y, x) array or a list of
    slices, which may differ in size), PSNR by :func:`mean_psnr`."""
    pairs = list(zip(images, refs, strict=True))
    return {
        "psnr": mean_psnr([psnr(a, b, window=window) for a, b in pairs]),
        "ssim": float(np.mean([ssim(a, b, window=window) for a, b in pairs])) if pairs else float("nan"),
    }


def rmse(x: ArrayLike, ref: ArrayLike, window: tuple[float, float] | None = METRIC_WINDOW) -> float:
    """Root mean squared error in HU of the window-clipped images (``window=None``: raw HU); mean over slices."""
    x, ref, _ = _prepare(x, ref, window)
    return float(np.mean([np.sqrt(np.mean((xs - rs) ** 2)) for xs, rs in zip(_slices(x), _slices(ref), strict=True)]))


def ssim_map(x: np.ndarray, ref: np.ndarray, data_range: float, win_size: int = 7) -> np.ndarray:
    """Per-pixel SSIM of two 2D float arrays (skimage's definition, uniform window)."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n = win_size**2
    cov_norm = n / (n - 1)
    ux, uy = uniform_filter(x, win_size), uniform_filter(ref, win_size)
    uxx, uyy, uxy = (
        uniform_filter(x * x, win_size),
        uniform_filter(ref * ref, win_size),
        uniform_filter(x * ref, win_size),
    )
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def _masked_mean(s: np.ndarray, mask: np.ndarray | None, pad: int) -> float:
    interior = np.zeros(s.shape, dtype=bool)
    interior[pad : s.shape[0] - pad, pad : s.shape[1] - pad] = True
    if mask is None:
        return float(s[interior].mean())
    sel = mask & interior
    if not sel.any():  # region lies in the border: use it anyway
        sel = mask
    if not sel.any():
        raise ValueError("mask selects no pixels")
    return float(s[sel].mean())


def ssim(
    x: ArrayLike,
    ref: ArrayLike,
    data_range: float | None = None,
    window: tuple[float, float] | None = METRIC_WINDOW,
    mask: np.ndarray | None = None,
    win_size: int = 7,
) -> float:
    """Mean structural similarity of ``x`` against ``ref`` (HU); mean over slices for 3D.

    ``mask`` (same shape, bool) restricts the mean of the SSIM map (computed on the whole image) to a region.
    """
    x, ref, window = _prepare(x, ref, window)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"images of shape {x.shape} are smaller than the SSIM window {win_size}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape:
            raise ValueError(f"mask shape {mask.shape} differs from image shape {x.shape}")
    masks = _slices(mask) if mask is not None else [None] * (1 if x.ndim == 2 else x.shape[0])
    vals = []
    for xs, rs, ms in zip(_slices(x), _slices(ref), masks, strict=True):
        if ms is not None and not ms.any():
            continue
        s = ssim_map(xs, rs, data_range_of(rs, data_range, window), win_size)
        vals.append(_masked_mean(s, ms, (win_size - 1) // 2))
    if not vals:
        raise ValueError("mask selects no pixels")
    return float(np.mean(vals))
