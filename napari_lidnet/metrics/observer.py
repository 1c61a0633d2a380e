"""Channelized Hotelling observer (CHO) with Laguerre-Gauss channels: task-based lesion detectability.

The CHO (Barrett & Myers, *Foundations of Image Science*; Yu et al., Med Phys 2013; FDA LCD-CT) reduces each
patch ``g`` to channel outputs ``v = U g`` and applies the Hotelling template ``w = K^-1 (<v|1> - <v|0>)``,
where ``K`` is the mean of the two classes' channel covariances. Detectability is reported as d' and AUC.

Conventions (also in the docstrings below):

- A patch of side ``size`` has its centre at ``(size - 1) / 2`` in patch coordinates (pixel ``i`` has its
  centre at ``i``). ``extract_patches`` puts the chosen pixel at index ``size // 2``, which is that centre for
  odd sizes (use odd sizes; for even sizes the channels sit half a pixel up-left of the chosen pixel).
- Channels ``u_j(r) = sqrt(2)/a exp(-pi r^2/a^2) L_j(2 pi r^2/a^2)``: this normalisation makes them orthonormal
  in the continuum (the form ``sqrt(2)/(sqrt(pi) a)`` sometimes quoted has norm 1/pi).
- ``cho``: template trained on one part of the cases, test statistics computed on the held-out rest, so d' is
  not optimistic (the hold-out estimate is slightly pessimistic when the training set is small compared with
  the number of channels). d' = (mean1 - mean0) / sqrt((var1 + var0) / 2) of the held-out test statistics.
- ``region_detectability``: one marked lesion on one image; ``d'^2`` is debiased for the noise of that one
  lesion patch (see its docstring).
- Bootstrap intervals are 95%: basic (reflected) for ``cho``, percentile for ``region_detectability``.

numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import eval_laguerre, ndtr
from scipy.stats import rankdata

__all__ = [
    "ObserverResult",
    "cho",
    "default_channel_width",
    "extract_patches",
    "laguerre_gauss_channels",
    "region_detectability",
    "result_to_dict",
]


@dataclass(frozen=True)
class ObserverResult:
    """Detectability of one task.

    ``auc`` is the empirical (Mann-Whitney) AUC of held-out test statistics for ``method == "cho"``; for
    ``method == "region"`` (one lesion, no test statistics) it equals ``auc_from_d`` = Phi(d'/sqrt 2).
    ``d_ci`` and ``auc_ci`` are 95% bootstrap intervals ((nan, nan) without bootstrap).
    """

    d_prime: float
    auc: float
    auc_from_d: float
    d_ci: tuple[float, float]
    auc_ci: tuple[float, float]
    n_signal: int
    n_background: int
    n_channels: int
    method: str = "cho"

    def as_dict(self) -> dict[str, Any]:
        """Flat, JSON-safe dict (see ``result_to_dict``)."""
        return result_to_dict(self)


def result_to_dict(result: ObserverResult) -> dict[str, Any]:
    """Flat dict for JSON or a table row: intervals split into ``*_ci_low``/``*_ci_high``, NaN as None."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    out: dict[str, Any] = {}
    for key, value in asdict(result).items():
        if key.endswith("_ci"):
            out[f"{key}_low"], out[f"{key}_high"] = clean(float(value[0])), clean(float(value[1]))
        else:
            out[key] = clean(value)
    return out


def default_channel_width(size: int, n_channels: int = 10) -> float:
    """Default LG width ``a`` (px): the widest for which the last channel has decayed at the patch edge.

    Rule: ``2 pi r_edge^2 / a^2 = 4 (n_channels + 1)`` with ``r_edge = size / 2``, i.e.
    ``a = size * sqrt(pi / (8 (n_channels + 1)))`` (``size / 5.3`` for 10 channels). With a patch of about
    twice the lesion diameter (``region_detectability``'s default) this is ``a`` ~ 0.75 x the lesion radius.
    """
    return float(size) * math.sqrt(math.pi / (8.0 * (n_channels + 1)))


def laguerre_gauss_channels(size: int, n_channels: int = 10, width: float | None = None) -> np.ndarray:
    """Laguerre-Gauss channels, shape (n_channels, size, size), centred at ((size-1)/2, (size-1)/2).

    ``u_j(r) = sqrt(2)/a exp(-pi r^2/a^2) L_j(2 pi r^2/a^2)``, sampled at pixel centres (unit pixel area), so
    the sampled channels are orthonormal (Gram ~ identity) when ``a`` is well sampled (about a >= 0.55 px per
    channel) and the last channel fits in the patch (``default_channel_width``). ``width`` = ``a`` in pixels.
    """
    if size < 1 or n_channels < 1:
        raise ValueError(f"size and n_channels must be >= 1, got {size} and {n_channels}")
    a = default_channel_width(size, n_channels) if width is None else float(width)
    if not a > 0:
        raise ValueError(f"channel width must be > 0, got {width}")
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) - c
    t = 2.0 * np.pi * (x * x + y * y) / (a * a)
    envelope = math.sqrt(2.0) / a * np.exp(-t / 2.0)
    return np.stack([envelope * eval_laguerre(j, t) for j in range(n_channels)])


def extract_patches(images: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """Square patches (K, size, size) centred on integer pixels of a (Y, X) image or a (Z, Y, X) stack.

    ``centres`` is (K, 2) [y, x] for a 2D image or (K, 3) [z, y, x] for a stack (rounded to the nearest
    pixel). The centre pixel lands at patch index ``size // 2``. Raises ValueError when a patch would leave
    the image.
    """
    images = np.asarray(images)
    if images.ndim not in (2, 3):
        raise ValueError(f"images must be (Y, X) or (Z, Y, X), got shape {images.shape}")
    if size < 1:
        raise ValueError(f"patch size must be >= 1, got {size}")
    pts = np.asarray(centres, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != images.ndim:
        raise ValueError(f"centres must be (K, {images.ndim}) for images of shape {images.shape}, got {pts.shape}")
    pts = np.rint(pts).astype(np.int64)
    half = size // 2
    lo = pts.copy()
    lo[:, -2:] -= half
    hi = lo.copy()
    hi[:, -2:] += size
    hi[:, :-2] += 1
    bad = np.flatnonzero(np.any(lo < 0, axis=1) | np.any(hi > np.asarray(images.shape), axis=1))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"patch of size {size} at centre {pts[k].tolist()} (#{k}, {bad.size} such) leaves the image {images.shape}"
        )
    stack = images if images.ndim == 3 else images[None]
    zs = pts[:, 0] if images.ndim == 3 else np.zeros(len(pts), dtype=np.int64)
    rows = lo[:, -2, None] + np.arange(size)
    cols = lo[:, -1, None] + np.arange(size)
    return stack[zs[:, None, None], rows[:, :, None], cols[:, None, :]]


def _channelize(patches: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Channel outputs (N, C) of patches (N, s, s)."""
    n = patches.shape[0]
    return np.asarray(patches, dtype=np.float64).reshape(n, -1) @ channels.reshape(channels.shape[0], -1).T


def _template(v1: np.ndarray, v0: np.ndarray, ridge: float) -> np.ndarray:
    """Hotelling template K^-1 dmu from channel outputs, K = mean of the class covariances (+ ridge)."""
    k = 0.5 * (np.cov(v1, rowvar=False, ddof=1) + np.cov(v0, rowvar=False, ddof=1))
    k = np.atleast_2d(k)
    if ridge > 0:
        k = k + ridge * np.trace(k) / k.shape[0] * np.eye(k.shape[0])
    return np.linalg.solve(k, v1.mean(axis=0) - v0.mean(axis=0))


def _d_prime(t1: np.ndarray, t0: np.ndarray) -> float:
    """(mean1 - mean0) / sqrt((var1 + var0) / 2), sample variances."""
    pooled = 0.5 * (t1.var(ddof=1) + t0.var(ddof=1))
    return float((t1.mean() - t0.mean()) / math.sqrt(pooled)) if pooled > 0 else float("nan")


def _auc(t1: np.ndarray, t0: np.ndarray) -> float:
    """Empirical AUC (Mann-Whitney U / (n1 n0)), ties counted one half."""
    ranks = rankdata(np.concatenate([t1, t0]))
    n1, n0 = len(t1), len(t0)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _split(n: int, train_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, test) index split of n cases, at least 2 in each part."""
    n_train = int(round(train_fraction * n))
    if n_train < 2 or n - n_train < 2:
        raise ValueError(f"{n} cases with train_fraction={train_fraction} leave fewer than 2 to train or to test")
    perm = rng.permutation(n)
    return perm[:n_train], perm[n_train:]


def _percentile_ci(values: np.ndarray) -> tuple[float, float]:
    """95% percentile interval of bootstrap replicates (NaN ones dropped; (nan, nan) if none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def _basic_ci(
    values: np.ndarray, estimate: float, bounds: tuple[float, float] = (-np.inf, np.inf)
) -> tuple[float, float]:
    """95% basic (reflected) bootstrap interval (2 estimate - q97.5, 2 estimate - q2.5), clipped to ``bounds``."""
    lo, hi = _percentile_ci(values)
    return (float(np.clip(2 * estimate - hi, *bounds)), float(np.clip(2 * estimate - lo, *bounds)))


def _checked_channels(g1: np.ndarray, g0: np.ndarray, channels: np.ndarray | None) -> np.ndarray:
    """Channels (C, s, s) for patch stacks (N1, s, s) and (N0, s, s), checked; LG defaults when None."""
    if g1.ndim != 3 or g0.ndim != 3 or g1.shape[1:] != g0.shape[1:] or g1.shape[1] != g1.shape[2]:
        raise ValueError(f"patches must be (N, s, s) with the same s, got {g1.shape} and {g0.shape}")
    u = laguerre_gauss_channels(g1.shape[1]) if channels is None else np.asarray(channels, dtype=np.float64)
    u = u[None] if u.ndim == 2 else u
    if u.shape[1:] != g1.shape[1:]:
        raise ValueError(f"channels {u.shape} do not match patches {g1.shape[1:]}")
    return u


def cho(
    signal_patches: np.ndarray,
    background_patches: np.ndarray,
    channels: np.ndarray | None = None,
    *,
    train_fraction: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    ridge: float = 0.0,
) -> ObserverResult:
    """CHO for a signal-known-exactly task: lesion-present (N1, s, s) vs lesion-absent (N0, s, s) patches.

    Each class is split at random (``seed``) into a training part (``train_fraction``) and a held-out test
    part. The template is trained on the training parts; d' and the empirical AUC come from the test
    statistics of the held-out cases. The bootstrap resamples cases (with replacement, within class and
    within part), retrains the template and recomputes d' and AUC, so the intervals include the template's
    training variability; they are basic (reflected) intervals, because templates trained on resampled cases
    (with duplicates) score lower than the estimate, and reflecting corrects for that shift.
    ``channels`` defaults to ``laguerre_gauss_channels(s)``; ``ridge`` (relative to the mean channel variance)
    is 0 by default and only needed when the channel covariance is singular.
    """
    g1, g0 = np.asarray(signal_patches), np.asarray(background_patches)
    u = _checked_channels(g1, g0, channels)
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    v1, v0 = _channelize(g1, u), _channelize(g0, u)
    (tr1, te1), (tr0, te0) = _split(len(v1), train_fraction, rng), _split(len(v0), train_fraction, rng)
    if ridge <= 0 and len(tr1) + len(tr0) - 2 < u.shape[0]:
        raise ValueError(f"{len(tr1) + len(tr0)} training cases cannot estimate a {u.shape[0]}-channel covariance")

    def evaluate(a1: np.ndarray, a0: np.ndarray, b1: np.ndarray, b0: np.ndarray) -> tuple[float, float]:
        w = _template(v1[a1], v0[a0], ridge)
        t1, t0 = v1[b1] @ w, v0[b0] @ w
        return _d_prime(t1, t0), _auc(t1, t0)

    d, auc = evaluate(tr1, tr0, te1, te0)
    boots = np.full((max(n_boot, 0), 2), np.nan)
    for b in range(max(n_boot, 0)):
        picks = [idx[rng.integers(0, len(idx), len(idx))] for idx in (tr1, tr0, te1, te0)]
        try:
            boots[b] = evaluate(*picks)
        except np.linalg.LinAlgError:
            continue
    return ObserverResult(
        d_prime=d,
        auc=auc,
        auc_from_d=float(ndtr(d / math.sqrt(2.0))),
        d_ci=_basic_ci(boots[:, 0], d),
        auc_ci=_basic_ci(boots[:, 1], auc, (0.0, 1.0)),
        n_signal=len(v1),
        n_background=len(v0),
        n_channels=u.shape[0],
    )


def _background_positions(mask: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Top-left corners (M, 2) of size x size windows lying fully in ``mask``, on a grid of ``stride`` that
    starts at the mask's first row and column."""
    ny, nx = mask.shape
    if ny < size or nx < size or not mask.any():
        return np.zeros((0, 2), dtype=np.int64)
    integral = np.zeros((ny + 1, nx + 1), dtype=np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    inside = (
        integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size] + integral[:-size, :-size]
    ) == size * size
    rows, cols = np.nonzero(mask.any(axis=1))[0][0], np.nonzero(mask.any(axis=0))[0][0]
    grid = np.zeros_like(inside)
    grid[rows::stride, cols::stride] = True
    return np.argwhere(inside & grid)


def _region_inputs(
    image: np.ndarray, lesion_mask: np.ndarray, background_mask: np.ndarray, patch_size: int | None
) -> tuple[np.ndarray, np.ndarray, int, tuple[int, int]]:
    """Checked image (float), background mask without the lesion, patch size and lesion centre pixel."""
    image = np.asarray(image, dtype=np.float64)
    lesion, background = np.asarray(lesion_mask, dtype=bool), np.asarray(background_mask, dtype=bool)
    if image.ndim != 2 or lesion.shape != image.shape or background.shape != image.shape:
        shapes = f"{image.shape}, {lesion.shape}, {background.shape}"
        raise ValueError(f"image and masks must be 2D of one shape, got {shapes}")
    background = background & ~lesion
    if not lesion.any():
        raise ValueError("the lesion mask is empty")
    if not background.any():
        raise ValueError("the background mask is empty (outside the lesion)")
    ys, xs = np.nonzero(lesion)
    centre = (int(round(ys.mean())), int(round(xs.mean())))
    if patch_size is None:
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        patch_size = 2 * int(extent) + 1
    return image, background, int(patch_size), centre


def _all_channel_outputs(image: np.ndarray, channels: np.ndarray) -> np.ndarray:
    """Channel outputs (Y-s+1, X-s+1, C) of every s x s window of the image, indexed by its top-left corner."""
    return np.stack([fftconvolve(image, u[::-1, ::-1], mode="valid") for u in channels], axis=-1)


def _debiased_d2(v: np.ndarray, k: np.ndarray, n_extra: int) -> float:
    """v^T K^-1 v minus ``n_extra`` times the number of channels (the noise's expected share)."""
    return float(v @ np.linalg.solve(k, v)) - n_extra * len(v)


def _block_moments(positions: np.ndarray, values: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count (B,), sum (B, C) and sum of outer products (B, C, C) of channel outputs ``values`` (M, C), with
    positions (M, 2) grouped into ``block`` x ``block`` cells."""
    cell = positions // block
    _, label = np.unique(cell[:, 0] * (int(cell[:, 1].max()) + 1) + cell[:, 1], return_inverse=True)
    label = label.ravel()
    n_blocks, n_ch = int(label.max()) + 1, values.shape[1]
    counts = np.bincount(label, minlength=n_blocks).astype(np.float64)
    sums = np.stack([np.bincount(label, values[:, j], n_blocks) for j in range(n_ch)], axis=1)
    outer = np.empty((n_blocks, n_ch, n_ch))
    for j in range(n_ch):
        for k in range(j, n_ch):
            outer[:, j, k] = outer[:, k, j] = np.bincount(label, values[:, j] * values[:, k], n_blocks)
    return counts, sums, outer


def _block_bootstrap(
    v: np.ndarray, positions: np.ndarray, values: np.ndarray, block: int, n_boot: int, seed: int
) -> np.ndarray:
    """Bootstrap d' replicates: blocks of background positions resampled for K*, plus one resampled centred
    background channel vector added to ``v`` for the lesion patch's own noise; d*^2 = v*^T K*^-1 v* - 2C."""
    counts, sums, outer = _block_moments(positions, values, block)
    rng = np.random.default_rng(seed)
    centred = values - values.mean(axis=0)
    boots = np.full(max(n_boot, 0), np.nan)
    for b in range(len(boots)):
        w = rng.multinomial(len(counts), np.full(len(counts), 1.0 / len(counts))).astype(np.float64)
        n, total = w @ counts, w @ sums
        k = (np.tensordot(w, outer, axes=1) - np.outer(total, total) / n) / (n - 1)
        noise = centred[rng.integers(0, len(centred))]
        try:
            boots[b] = math.sqrt(max(_debiased_d2(v + noise, k, 2), 0.0))
        except np.linalg.LinAlgError:
            continue
    return boots


def region_detectability(
    image: np.ndarray,
    lesion_mask: np.ndarray,
    background_mask: np.ndarray,
    *,
    n_channels: int = 10,
    patch_size: int | None = None,
    width: float | None = None,
    n_boot: int = 500,
    seed: int = 0,
) -> ObserverResult:
    """CHO detectability of one marked lesion against a marked background region of the same (Y, X) image.

    Signal: the patch centred on the lesion mask's centroid (side ``patch_size``, default 2 x the lesion's
    bounding-box extent + 1) minus the mean background level; ``v = U s`` with LG channels (``width`` default
    ``default_channel_width``). Covariance ``K``: channel outputs of every patch position lying fully inside the
    background mask (lesion pixels removed from it; overlapping patches). ``d'^2 = v^T K^-1 v - n_channels``:
    ``v`` carries the noise of the lesion patch, whose expected share of ``v^T K^-1 v`` is ``n_channels``;
    d' is clipped at 0.

    Bootstrap (95% percentile): each replicate resamples blocks of background patch positions (cells of
    ``patch_size // 2``, so that overlapping patches stay together) for ``K*``, adds one resampled centred
    background channel vector to ``v`` for the lesion patch's own noise and takes
    ``d*^2 = v*^T K*^-1 v* - 2 n_channels``. ``auc`` equals ``auc_from_d`` (no test statistics here);
    ``n_background`` counts half-overlapping background patches (stride ``patch_size // 2``).
    Raises ValueError (one line) for empty masks, fewer than 2 x n_channels half-overlapping patches, or a
    background without noise.
    """
    image, background, size, centre = _region_inputs(image, lesion_mask, background_mask, patch_size)
    u = laguerre_gauss_channels(size, n_channels, width)
    block = max(1, size // 2)
    n_half = len(_background_positions(background, size, block))
    if n_half < 2 * n_channels:
        side = size + block * (math.ceil(math.sqrt(2 * n_channels)) - 1)  # a square that holds enough of them
        raise ValueError(
            f"background region too small: {n_half} half-overlapping {size}x{size} patches fit in it, need >= "
            f"{2 * n_channels}: draw at least {side} x {side} px of plain tissue (the lesion's patch is {size} px)"
        )
    level = float(image[background].mean())
    v = _channelize(extract_patches(image - level, np.array([centre]), size), u)[0]
    every = _background_positions(background, size, 1)
    values = _all_channel_outputs(image - level, u)[every[:, 0], every[:, 1]]
    cov = np.cov(values, rowvar=False)
    if not np.all(np.isfinite(cov)) or np.linalg.cond(cov) > 1e10:  # a noise-free background: K^-1 is noise
        raise ValueError("the background region holds (almost) no noise, a noise-free image: d' is not defined")
    d = math.sqrt(max(_debiased_d2(v, cov, 1), 0.0))
    d_ci = _percentile_ci(_block_bootstrap(v, every, values, block, n_boot, seed))
    auc = float(ndtr(d / math.sqrt(2.0)))
    return ObserverResult(
        d_prime=d,
        auc=auc,
        auc_from_d=auc,
        d_ci=d_ci,
        auc_ci=(float(ndtr(d_ci[0] / math.sqrt(2.0))), float(ndtr(d_ci[1] / math.sqrt(2.0)))),
        n_signal=1,
        n_background=n_half,
        n_channels=n_channels,
        method="region",
    )
