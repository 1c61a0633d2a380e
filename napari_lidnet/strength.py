"""Denoising strength: remove a stated noise SD and keep the rest, as BM3D's ``sigma`` does; or leave a stated
noise SD in the output, as a reader who finds a fully denoised image too smooth asks (``leave_noise``).

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

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from napari_lidnet.io.fov import PADDING_BELOW_HU
from napari_lidnet.metrics.noreference import NOISE_BLOCK, body_mask, flat_block_noise_sds

__all__ = ["blend_weight", "check_remove_sd", "check_strength", "keep_noise", "leave_noise", "leave_weight",
           "residual_sd", "total_noise_sd"]  # fmt: skip


def check_remove_sd(remove_sd: float | None, what: str = "to remove") -> float | None:
    """``remove_sd`` as a float (None stays None: remove all); a one-line ValueError when negative or not finite."""
    if remove_sd is None:
        return None
    value = float(remove_sd)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"noise SD {what} must be a finite number of HU >= 0, got {remove_sd!r}")
    return value


def check_strength(remove_sd: float | None, leave_sd: float | None) -> tuple[float | None, float | None]:
    """Both checked (:func:`check_remove_sd`); a one-line ValueError when both are given (one strength at a time).
    Leaving 0 HU is removing all the noise: ``leave_sd`` 0 comes back None, as the Denoise dock's box at 0 says."""
    remove_sd, leave_sd = check_remove_sd(remove_sd), check_remove_sd(leave_sd, "to leave")
    leave_sd = leave_sd or None
    if remove_sd is not None and leave_sd is not None:
        raise ValueError("give the noise SD to remove or the noise SD to leave, not both")
    return remove_sd, leave_sd


def blend_weight(remove_sd: float, residual: float) -> float:
    """Share of the residual to put back: ``1 - remove_sd**2 / residual**2``, clipped to [0, 1] (0: no residual)."""
    if not np.isfinite(residual) or residual <= 0:
        return 0.0
    return float(np.clip(1.0 - (remove_sd / residual) ** 2, 0.0, 1.0))


#: the body stands for the slice's noise when it covers at least this share of the field of view
MIN_BODY_SHARE = 0.05


def _region(denoised: np.ndarray) -> np.ndarray:
    """The body of a slice, else (a crop of lung alone, where the largest region above -500 HU may be one vessel
    pixel) every pixel inside the field of view."""
    body = body_mask(denoised)
    inside = denoised > PADDING_BELOW_HU
    return body if body.sum() >= MIN_BODY_SHARE * inside.sum() and body.any() else inside


def _region_sds(low: np.ndarray, denoised: np.ndarray) -> tuple[float, float, float]:
    """SDs of the input, the residual and the denoised slice over :func:`_region` (NaN when it is empty)."""
    region = _region(denoised)
    if not region.any():
        return float("nan"), float("nan"), float("nan")
    return tuple(float(np.std(v[region])) for v in (low, low - denoised, denoised))  # type: ignore[return-value]


def residual_sd(low: np.ndarray, denoised: np.ndarray, stride: int = 2) -> float:
    """SD (HU) of ``low - denoised`` over the body of one slice, on every ``stride``-th pixel in y and x (a quarter
    of a 512 x 512 slice is 65k samples: the same SD to a fraction of a percent, in a quarter of the time). A slice
    with no body (a crop of lung alone) takes every pixel inside the field of view (it was NaN, and any SD to remove
    then removed all the noise); NaN when there is none."""
    den = np.asarray(denoised)[::stride, ::stride]
    body = _region(den)
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
    return _blend_slices(low, denoised, lambda lo, de: blend_weight(remove_sd, total_noise_sd(lo, de)))


Weight = Callable[[np.ndarray, np.ndarray], float]


def _blend_slices(low: np.ndarray, denoised: ArrayLike, weight: Weight) -> np.ndarray:
    """``denoised + w * (low - denoised)`` slice by slice, ``w = weight(low slice, denoised slice)``, shaped as
    ``denoised``."""
    low3 = np.asarray(low, np.float32).reshape((-1, *np.shape(low)[-2:]))
    den3 = np.asarray(denoised, np.float32).reshape(low3.shape)
    out = np.empty_like(den3)
    for k, (lo, de) in enumerate(zip(low3, den3)):
        out[k] = de + np.float32(weight(lo, de)) * (lo - de)
    return out.reshape(np.shape(denoised))


def leave_weight(low: np.ndarray, denoised: np.ndarray, leave_sd: float) -> float:
    """The share ``w`` of the residual to put back so that the output ``denoised + w * (low - denoised)`` shows
    ``leave_sd`` HU of noise in the slice's flattest soft-tissue blocks (where the Denoise dock and ``lidnet adapt``
    read the noise): with the input's, the residual's and the denoised image's SDs there (``a``, ``b``, ``d``), the
    output's variance is ``a^2 - 2 u c + u^2 b^2`` for ``u = 1 - w`` and ``c = (a^2 + b^2 - d^2) / 2``; the root in
    [0, 1]. 1 (the input) when it holds no more than ``leave_sd``, 0 when the denoised image already holds as much.
    Without flat soft tissue (a crop of lung alone) the flattest blocks at any density inside the field of view
    stand in, and without those the SDs over the body or field of view, where anatomy adds to them (it was 0 there:
    all the noise removed); 0 when there is nothing to measure at all."""
    lo = np.asarray(low, np.float32)
    de = np.asarray(denoised, np.float32)
    a, b, d = flat_block_noise_sds(lo, [lo, lo - de, de], block=NOISE_BLOCK)
    if not np.isfinite(a) or b <= 0:  # no flat soft tissue: flat blocks at any density inside the field of view
        a, b, d = flat_block_noise_sds(lo, [lo, lo - de, de], NOISE_BLOCK, (PADDING_BELOW_HU, 4000.0),
                                       lo > PADDING_BELOW_HU)  # fmt: skip
    if not np.isfinite(a) or b <= 0:
        a, b, d = _region_sds(lo, de)
    if not np.isfinite(a) or b <= 0:
        return 0.0
    target = float(leave_sd) ** 2
    if target >= a * a:
        return 1.0
    if target <= d * d:
        return 0.0
    c = (a * a + b * b - d * d) / 2
    u = (c - np.sqrt(max(c * c - b * b * (a * a - target), 0.0))) / (b * b)
    return float(np.clip(1.0 - u, 0.0, 1.0))


def leave_noise(low: np.ndarray, denoised: ArrayLike, leave_sd: float | None) -> ArrayLike:
    """The denoised slice or stack with ``leave_sd`` HU of noise left in flat tissue, slice by slice
    (:func:`leave_weight`); None returns ``denoised`` unchanged (remove all)."""
    leave_sd = check_remove_sd(leave_sd, "to leave")
    if leave_sd is None:
        return denoised
    return _blend_slices(low, denoised, lambda lo, de: leave_weight(lo, de, leave_sd))
