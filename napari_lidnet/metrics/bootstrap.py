"""Case bootstrap: confidence intervals for a mean, a paired difference of means and FROC mean sensitivity (or its
paired difference between two readers of the same images).

Cases (slices, lesions, patients) are resampled with replacement; a replicate is a vector of case multiplicities
(``counts``, summing to the number of cases), so statistics are vectorised over replicates. ``clusters`` resamples
groups of cases (e.g. all slices of a patient) instead of single cases. "Paired" means both quantities are computed
on the same resampled cases in every replicate, so what the cases share (a hard lesion is hard for both denoisers)
cancels in the difference; the unpaired bootstrap resamples each group on its own.

Intervals (``method``): ``"percentile"`` (quantiles of the replicates), ``"basic"`` (reflected: 2 estimate - the
upper / lower quantile) and ``"bca"`` (bias-corrected and accelerated, Efron 1987: bias from the share of
replicates below the estimate, acceleration from the jackknife, leaving one case, or cluster, out). Replicates
whose statistic is not finite (no lesion drawn) are dropped. Everything is seeded: a seed gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import ndtr, ndtri

from napari_lidnet.metrics.froc import match_detections

__all__ = [
    "METHODS",
    "BootstrapResult",
    "FrocCases",
    "case_bootstrap",
    "froc_cases",
    "froc_ci",
    "froc_difference",
    "mean_ci",
    "mean_sensitivities",
    "paired_difference",
    "unpaired_difference",
]

METHODS = ("percentile", "basic", "bca")
#: replicates evaluated at once (memory: chunk x cases, or chunk x detections for FROC)
_CHUNK = 128

#: a vectorised statistic: case multiplicities (B, n) -> B values
Stat = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BootstrapResult:
    """An estimate and its bootstrap interval: ``ci`` at ``level`` by ``method``, ``se`` the replicates' SD,
    ``n_boot`` the finite replicates used, ``n_cases`` the cases (``n_clusters`` the resampled units)."""

    estimate: float
    ci: tuple[float, float]
    se: float
    method: str
    level: float
    n_cases: int
    n_clusters: int
    n_boot: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, the interval as ``ci_low`` / ``ci_high`` (NaN as None)."""
        out = {k: v for k, v in asdict(self).items() if k != "ci"}
        out["ci_low"], out["ci_high"] = self.ci
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}


def _check_method(method: str, level: float) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown bootstrap interval method {method!r}; choose one of {METHODS}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")


def _cluster_index(n_cases: int, clusters: Sequence | np.ndarray | None) -> tuple[np.ndarray, int]:
    """(cluster id 0..k-1 per case, k); every case its own cluster when ``clusters`` is None."""
    if clusters is None:
        return np.arange(n_cases), n_cases
    labels = np.asarray(clusters)
    if labels.shape != (n_cases,):
        raise ValueError(f"clusters must give one label per case ({n_cases}), got shape {labels.shape}")
    _, ids = np.unique(labels, return_inverse=True)
    return ids.reshape(-1), int(ids.max()) + 1


def _resample(rng: np.random.Generator, ids: np.ndarray, k: int, n_boot: int) -> np.ndarray:
    """Case multiplicities (n_boot, n_cases): k clusters drawn with replacement, each bringing all its cases."""
    draws = rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64)
    return draws[:, ids]


def _jackknife(ids: np.ndarray, k: int) -> np.ndarray:
    """Case multiplicities (k, n_cases) leaving one cluster out at a time."""
    return (ids[None, :] != np.arange(k)[:, None]).astype(np.float64)


def _apply(stat: Stat, counts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(stat(counts[i : i + _CHUNK]), np.float64) for i in range(0, len(counts), _CHUNK)])


def _interval(est: float, reps: np.ndarray, method: str, level: float, jack: Callable[[], np.ndarray]) -> tuple:
    """(low, high) of the replicates ``reps`` around ``est``; ``jack()`` gives the jackknife values (BCa only)."""
    if reps.size == 0 or not math.isfinite(est):
        return (float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    if np.all(reps == reps[0]):
        return (float(reps[0]), float(reps[0])) if method != "basic" else (2 * est - reps[0], 2 * est - reps[0])
    q = np.array([alpha, 1.0 - alpha])
    if method == "bca":
        below = (np.sum(reps < est) + 0.5 * np.sum(reps == est)) / reps.size
        z0 = float(ndtri(np.clip(below, 1.0 / (2 * reps.size), 1.0 - 1.0 / (2 * reps.size))))
        theta = jack()
        theta = theta[np.isfinite(theta)]
        d = theta.mean() - theta if theta.size else np.zeros(1)
        denom = 6.0 * float(np.sum(d * d)) ** 1.5
        acc = float(np.sum(d**3)) / denom if denom > 0 else 0.0
        z = ndtri(q)
        q = ndtr(z0 + (z0 + z) / (1.0 - acc * (z0 + z)))
    lo, hi = np.quantile(reps, q)
    if method == "basic":
        lo, hi = 2.0 * est - hi, 2.0 * est - lo
    return (float(lo), float(hi))


def case_bootstrap(
    stat: Stat,
    n_cases: int,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    method: str = "bca",
    level: float = 0.95,
    clusters: Sequence | np.ndarray | None = None,
) -> BootstrapResult:
    """Bootstrap interval of ``stat``, a vectorised statistic of case multiplicities: ``stat(counts)`` takes a
    (B, n_cases) float array (each row a resample; all ones is the data itself) and returns B values."""
    _check_method(method, level)
    if n_cases < 2:
        raise ValueError(f"a bootstrap needs at least 2 cases, got {n_cases}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    ids, k = _cluster_index(n_cases, clusters)
    if k < 2:
        raise ValueError(f"a bootstrap needs at least 2 clusters, got {k}")
    est = float(_apply(stat, np.ones((1, n_cases)))[0])
    reps = _apply(stat, _resample(np.random.default_rng(seed), ids, k, n_boot))
    reps = reps[np.isfinite(reps)]
    ci = _interval(est, reps, method, level, lambda: _apply(stat, _jackknife(ids, k)))
    se = float(reps.std(ddof=1)) if reps.size > 1 else float("nan")
    return BootstrapResult(est, ci, se, method, level, n_cases, k, int(reps.size))


def _vector(values: Any, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return v


def _weighted_mean(v: np.ndarray) -> Stat:
    return lambda c: (c @ v) / c.sum(axis=1)


def mean_ci(values: Any, **kwargs: Any) -> BootstrapResult:
    """Interval of the mean of per-case values (``case_bootstrap``'s keyword arguments)."""
    v = _vector(values, "values")
    return case_bootstrap(_weighted_mean(v), len(v), **kwargs)


def paired_difference(a: Any, b: Any, **kwargs: Any) -> BootstrapResult:
    """Interval of mean(a - b) for per-case values of two methods on the same cases (resampled together)."""
    va, vb = _vector(a, "a"), _vector(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"paired values need one value per case for both, got {va.size} and {vb.size}")
    return case_bootstrap(_weighted_mean(va - vb), len(va), **kwargs)


def unpaired_difference(
    a: Any, b: Any, *, n_boot: int = 2000, seed: int = 0, method: str = "percentile", level: float = 0.95
) -> BootstrapResult:
    """Interval of mean(a) - mean(b) resampling each group on its own (independent samples; for comparison with
    ``paired_difference``). Methods: percentile or basic (BCa needs one jackknife over both groups: not offered)."""
    if method == "bca":
        raise ValueError("unpaired_difference offers the percentile and basic intervals, not bca")
    _check_method(method, level)
    va, vb = _vector(a, "a"), _vector(b, "b")
    if va.size < 2 or vb.size < 2:
        raise ValueError(f"each group needs at least 2 values, got {va.size} and {vb.size}")
    rng = np.random.default_rng(seed)
    ca = _resample(rng, np.arange(va.size), va.size, n_boot)
    cb = _resample(rng, np.arange(vb.size), vb.size, n_boot)
    reps = _weighted_mean(va)(ca) - _weighted_mean(vb)(cb)
    est = float(va.mean() - vb.mean())
    ci = _interval(est, reps, method, level, lambda: np.zeros(0))
    return BootstrapResult(est, ci, float(reps.std(ddof=1)), method, level, va.size + vb.size, va.size + vb.size,
                           n_boot)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- FROC
@dataclass(frozen=True)
class FrocCases:
    """One reader's detections on a set of images, matched once (``froc_cases``) and sorted by decreasing score.

    ``image`` (D,) image of each detection, ``tp`` (D,) hit flags, ``last`` (D,) True for the last detection of
    each distinct score (one FROC point per threshold), ``lesions`` (n_images,) lesions per image.
    """

    image: np.ndarray
    tp: np.ndarray
    last: np.ndarray
    lesions: np.ndarray
    fp_rates: tuple[float, ...]

    @property
    def n_images(self) -> int:
        return len(self.lesions)


def froc_cases(
    detections: Sequence[tuple[np.ndarray, np.ndarray]],
    ground_truth: Sequence[np.ndarray],
    fp_rates: Sequence[float] = (0.5, 1, 2, 4, 8),
    iou_threshold: float = 0.5,
) -> FrocCases:
    """Match each image's detections (``metrics.froc.match_detections``) once, for fast resampled FROCs."""
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists but {len(ground_truth)} ground-truth lists")
    scores, tps, images = [], [], []
    lesions = np.zeros(len(detections), np.int64)
    for i, ((boxes, s), gt) in enumerate(zip(detections, ground_truth, strict=True)):
        s = np.asarray(s, np.float64).reshape(-1)
        tps.append(match_detections(boxes, s, gt, iou_threshold))
        scores.append(s)
        images.append(np.full(len(s), i, np.int64))
        lesions[i] = len(np.asarray(gt).reshape(-1, 4))
    score = np.concatenate(scores) if scores else np.zeros(0)
    order = np.argsort(-score, kind="stable")
    score = score[order]
    last = np.r_[score[1:] != score[:-1], True] if len(score) else np.zeros(0, bool)
    tp = np.concatenate(tps)[order] if tps else np.zeros(0, bool)
    image = np.concatenate(images)[order] if images else np.zeros(0, np.int64)
    return FrocCases(image, tp, last, lesions, tuple(float(r) for r in fp_rates))


def mean_sensitivities(cases: FrocCases, counts: np.ndarray) -> np.ndarray:
    """FROC mean sensitivity (the mean over ``fp_rates`` of ``metrics.froc.froc``'s sensitivity at each rate) of
    each row of image multiplicities ``counts`` (B, n_images); NaN where the resample holds no lesion."""
    counts = np.atleast_2d(np.asarray(counts, np.float64))
    w = counts[:, cases.image]
    cum_tp = np.cumsum(w * cases.tp, axis=1)[:, cases.last]
    cum_fp = np.cumsum(w * ~cases.tp, axis=1)[:, cases.last]
    n_img = np.maximum(counts.sum(axis=1), 1.0)[:, None]
    n_les = (counts @ cases.lesions)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.concatenate([np.zeros((len(counts), 1)), cum_tp / n_les], axis=1)
    fp = np.concatenate([np.zeros((len(counts), 1)), cum_fp / n_img], axis=1)
    rows = np.arange(len(counts))
    at = [sens[rows, (fp <= r).sum(axis=1) - 1] for r in cases.fp_rates]  # fp is non-decreasing: a prefix
    out = np.mean(at, axis=0)
    return np.where(n_les[:, 0] > 0, out, np.nan)


Readers = FrocCases | Sequence[FrocCases]


def _readers(r: Readers) -> list[FrocCases]:
    out = [r] if isinstance(r, FrocCases) else list(r)
    if not out or any(x.n_images != out[0].n_images or not np.array_equal(x.lesions, out[0].lesions) for x in out):
        raise ValueError("FROC readers must share the same images and lesions (and there must be at least one)")
    return out


def _mean_of(readers: list[FrocCases]) -> Stat:
    return lambda c: np.mean([mean_sensitivities(r, c) for r in readers], axis=0)


def froc_ci(cases: Readers, **kwargs: Any) -> BootstrapResult:
    """Interval of a reader's FROC mean sensitivity, images as cases (``case_bootstrap``'s keywords). A sequence of
    readers of the same images (e.g. training seeds) gives the interval of their average."""
    readers = _readers(cases)
    return case_bootstrap(_mean_of(readers), readers[0].n_images, **kwargs)


def froc_difference(a: Readers, b: Readers, **kwargs: Any) -> BootstrapResult:
    """Interval of the paired difference of FROC mean sensitivity, reader a - reader b, on the same images (the
    same lesions): every replicate resamples the images once for both. Sequences of readers (e.g. one per training
    seed) compare their averages."""
    ra, rb = _readers(a), _readers(b)
    if ra[0].n_images != rb[0].n_images or not np.array_equal(ra[0].lesions, rb[0].lesions):
        raise ValueError(f"paired FROC needs the same images and lesions: {ra[0].n_images} vs {rb[0].n_images} images")
    fa, fb = _mean_of(ra), _mean_of(rb)
    return case_bootstrap(lambda c: fa(c) - fb(c), ra[0].n_images, **kwargs)
