"""Image quality in HU: PSNR, SSIM and RMSE over a stated window, whole images and lesion regions.

Convention: both images are clipped to a HU window before PSNR and SSIM (default ``METRIC_WINDOW`` = (-160, 240),
the abdominal soft-tissue display window of the low-dose CT literature) and ``data_range`` defaults to the window
width; ``window=None`` skips clipping and then ``data_range`` defaults to the reference's range (max - min).
RMSE is in HU, unclipped unless a window is given. 3D arrays (z, y, x) are evaluated slice by slice and the
per-slice values averaged. SSIM follows Wang et al. 2004 with skimage's defaults (7x7 uniform window, K1 = 0.01,
K2 = 0.03, sample covariance, reflect borders, mean over the map without a 3-pixel border), so on plain arrays
the results equal ``skimage.metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import uniform_filter

__all__ = ["METRIC_WINDOW", "psnr", "region_metrics", "rmse", "ssim", "ssim_map"]

METRIC_WINDOW: tuple[float, float] = (-160.0, 240.0)


def _prepare(x, ref, window) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"image shapes differ: {x.shape} vs {ref.shape}")
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or a 3D (z, y, x) volume, got shape {x.shape}")
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        if not hi > lo:
            raise ValueError(f"window must be (low, high) with high > low, got {window}")
        x, ref, window = np.clip(x, lo, hi), np.clip(ref, lo, hi), (lo, hi)
    return x, ref, window


def _range(ref: np.ndarray, data_range: float | None, window) -> float:
    if data_range is not None:
        return float(data_range)
    if window is not None:
        return window[1] - window[0]
    return float(ref.max() - ref.min())


def _slices(a: np.ndarray) -> list[np.ndarray]:
    return [a] if a.ndim == 2 else list(a)


def _psnr_from_mse(mse: float, data_range: float) -> float:
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def psnr(x, ref, data_range: float | None = None, window: tuple[float, float] | None = METRIC_WINDOW) -> float:
    """Peak signal-to-noise ratio in dB of ``x`` against ``ref`` (HU); mean over slices for 3D."""
    x, ref, window = _prepare(x, ref, window)
    vals = []
    for xs, rs in zip(_slices(x), _slices(ref), strict=True):
        vals.append(_psnr_from_mse(float(np.mean((xs - rs) ** 2)), _range(rs, data_range, window)))
    return float(np.mean(vals))


def rmse(x, ref, window: tuple[float, float] | None = None) -> float:
    """Root mean squared error in HU (unclipped unless ``window``); mean over slices for 3D."""
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
    x,
    ref,
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
        s = ssim_map(xs, rs, _range(rs, data_range, window), win_size)
        vals.append(_masked_mean(s, ms, (win_size - 1) // 2))
    if not vals:
        raise ValueError("mask selects no pixels")
    return float(np.mean(vals))


def region_metrics(
    x,
    ref,
    boxes: np.ndarray | Sequence[Sequence[float]],
    margin: float = 0.0,
    data_range: float | None = None,
    window: tuple[float, float] | None = METRIC_WINDOW,
) -> list[dict[str, float]]:
    """PSNR, SSIM and RMSE inside each lesion box grown by ``margin`` pixels.

    ``boxes``: (N, 4) ``x1, y1, x2, y2`` pixels for a 2D slice, or (N, 5) ``slice, x1, y1, x2, y2`` for a volume.
    The box covers pixels with centres inside it (pixel i spans [i, i+1)), clipped to the image; PSNR and RMSE
    use the windowed pixels of the region (RMSE unclipped HU), SSIM the mean of the whole-slice SSIM map there.
    Returns one dict per box: ``box`` (as given), ``n_pixels``, ``psnr``, ``ssim``, ``rmse``.
    """
    x_raw = np.asarray(x, dtype=np.float64)
    ref_raw = np.asarray(ref, dtype=np.float64)
    xw, refw, win = _prepare(x_raw, ref_raw, window)
    boxes = np.asarray(boxes, dtype=np.float64)
    ncol = 4 if x_raw.ndim == 2 else 5
    boxes = boxes.reshape(-1, ncol)
    results = []
    for box in boxes:
        if ncol == 5:
            z = int(round(box[0]))
            if not 0 <= z < x_raw.shape[0]:
                raise ValueError(f"box slice index {z} outside volume of {x_raw.shape[0]} slices")
            xs, rs, xr, rr = xw[z], refw[z], x_raw[z], ref_raw[z]
            x1, y1, x2, y2 = box[1:]
        else:
            xs, rs, xr, rr = xw, refw, x_raw, ref_raw
            x1, y1, x2, y2 = box
        h, w = xs.shape
        c0, c1 = max(0, int(np.ceil(x1 - margin - 0.5))), min(w, int(np.ceil(x2 + margin - 0.5)))
        r0, r1 = max(0, int(np.ceil(y1 - margin - 0.5))), min(h, int(np.ceil(y2 + margin - 0.5)))
        if c1 <= c0 or r1 <= r0:
            raise ValueError(f"box {box.tolist()} covers no pixel of the {h}x{w} image")
        mask = np.zeros((h, w), dtype=bool)
        mask[r0:r1, c0:c1] = True
        mse = float(np.mean((xs[mask] - rs[mask]) ** 2))
        drange = _range(rs, data_range, win)
        results.append(
            {
                "box": box.tolist(),
                "n_pixels": int(mask.sum()),
                "psnr": _psnr_from_mse(mse, drange),
                "ssim": _masked_mean(ssim_map(xs, rs, drange), mask, 3) if min(h, w) >= 7 else float("nan"),
                "rmse": float(np.sqrt(np.mean((xr[mask] - rr[mask]) ** 2))),
            }
        )
    return results
