"""Denoising strength: remove a stated noise SD and keep the rest, as BM3D's ``sigma`` does.

The networks are blind: they remove all the noise they see. When only part of it should go (a normal-dose scan
has noise of its own, and the user or a protocol says how much to take away, e.g. the SD that a dose reduction
added), the output puts back a share ``w`` of the residual (input - denoised). Taking the denoised image as the
noise-free one, the residual holds all the noise, ``n = n_keep + n_remove`` (independent, with the same texture:
both are the scanner's noise), and the least-squares estimate of ``clean + n_keep`` from the input is
``denoised + w * residual`` with ``w = var_keep / var_total = 1 - remove_sd**2 / total_sd**2`` (the Wiener
weight; 0 when the input holds no more than ``remove_sd``). ``total_sd``, the SD of all the noise in the input over
the body, comes from the residual: its SD over the body (the largest region above -500 HU, holes filled, every
second pixel), scaled by the input's noise SD over the residual's in the slice's flattest soft-tissue blocks (8 px,
``metrics.noreference``). The network leaves part of the noise in (the smoothest part looks like tissue), so the
residual alone holds less than the noise; in flat tissue the input's own SD says how much less. Chosen under a rule
written before the run (``benchmarks/results/told_sd_estimator8_prereg.md``): +0.33 / +0.23 dB at 25% dose on
simulated / real validation slices over the residual alone. No parameter is fitted: the weight follows from SDs.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from napari_lidnet.metrics.noreference import NOISE_BLOCK, body_mask, flat_block_noise_sds

__all__ = ["blend_weight", "check_remove_sd", "keep_noise", "residual_sd", "total_noise_sd"]


def check_remove_sd(remove_sd: float | None) -> float | None:
    """``remove_sd`` as a float (None stays None: remove all); a one-line ValueError when negative or not finite."""
    if remove_sd is None:
        return None
    value = float(remove_sd)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"noise SD to remove must be a finite number of HU >= 0, got {remove_sd!r}")
    return value


def blend_weight(remove_sd: float, residual: float) -> float:
    """Share of the residual to put back: ``1 - remove_sd**2 / residual**2``, clipped to [0, 1] (0: no residual)."""
    if not np.isfinite(residual) or residual <= 0:
        return 0.0
    return float(np.clip(1.0 - (remove_sd / residual) ** 2, 0.0, 1.0))


def residual_sd(low: np.ndarray, denoised: np.ndarray, stride: int = 2) -> float:
    """SD (HU) of ``low - denoised`` over the body of one slice, on every ``stride``-th pixel in y and x (a quarter
    of a 512 x 512 slice is 65k samples: the same SD to a fraction of a percent, in a quarter of the time); NaN when
    the slice has no body."""
    den = np.asarray(denoised)[::stride, ::stride]
    body = body_mask(den)
    if not body.any():
        return float("nan")
    return float(np.std((np.asarray(low, np.float64)[::stride, ::stride] - den)[body]))


def total_noise_sd(low: np.ndarray, denoised: np.ndarray, stride: int = 1) -> float:
    """SD (HU) of all the noise in ``low`` over the body: :func:`residual_sd` times the input's noise SD over the
    residual's in the slice's flattest soft-tissue blocks (the share the network left in); the residual SD alone
    when the slice has no flat block. ``stride`` 2 takes the blocks on every second pixel (``NOISE_BLOCK // 2`` px
    there, the same footprint, a third of the time), which lost 0.04-0.05 dB on simulation under its rule
    (``benchmarks/results/told_sd_estimator8_prereg.md``), so the product keeps stride 1."""
    total = residual_sd(low, denoised)
    lo = np.asarray(low, np.float32)[::stride, ::stride]
    res = lo - np.asarray(denoised, np.float32)[::stride, ::stride]
    own, left = flat_block_noise_sds(lo, [lo, res], block=max(2, NOISE_BLOCK // stride))
    return total * own / left if np.isfinite(own) and left > 0 else total


def keep_noise(low: np.ndarray, denoised: ArrayLike, remove_sd: float | None) -> ArrayLike:
    """The denoised slice or stack (y, x) / (z, y, x) (an array, or a list of slices) with only ``remove_sd`` HU of
    noise removed from ``low``, slice by slice, as an array; ``remove_sd=None`` returns ``denoised`` unchanged
    (remove all), 0 returns ``low``."""
    remove_sd = check_remove_sd(remove_sd)
    if remove_sd is None:
        return denoised
    if remove_sd == 0:  # nothing removed: the input itself, to the bit
        return np.array(low, np.float32).reshape(np.shape(denoised))
    low3 = np.asarray(low, np.float32).reshape((-1, *np.shape(low)[-2:]))
    den3 = np.asarray(denoised, np.float32).reshape(low3.shape)
    out = np.empty_like(den3)
    for k, (lo, de) in enumerate(zip(low3, den3)):
        w = blend_weight(remove_sd, total_noise_sd(lo, de))
        out[k] = de + np.float32(w) * (lo - de)
    return out.reshape(np.shape(denoised))
