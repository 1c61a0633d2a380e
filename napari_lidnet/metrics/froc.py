"""Free-response ROC (FROC) for lesion detection: sensitivity against mean false positives per image."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FROCResult", "box_cover_np", "box_iou_np", "fp_rate_at", "froc", "match_detections", "threshold_at_fp_rate"]


def _area(z: np.ndarray) -> np.ndarray:
    return np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pairwise intersection areas (N, M), areas of ``a``, areas of ``b``) of boxes ``x1, y1, x2, y2``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    return wh[..., 0] * wh[..., 1], _area(a), _area(b)


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) boxes ``x1, y1, x2, y2`` -> (N, M) float64."""
    inter, area_a, area_b = _intersections(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_cover_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise share of the smaller box of each pair that the pair's intersection covers -> (N, M) float64."""
    inter, area_a, area_b = _intersections(a, b)
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return np.divide(inter, smaller, out=np.zeros_like(inter), where=smaller > 0)


def match_detections(boxes: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5) -> np.ndarray:
    """True-positive flags of one image's detections, greedy by decreasing score (stable for ties).

    A detection is a hit when its IoU with a still unmatched ground-truth box is >= ``iou_threshold``; it takes the
    unmatched box of highest IoU, so each lesion is counted once and further detections of it are false positives.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    tp = np.zeros(len(boxes), dtype=bool)
    if len(boxes) == 0 or len(gt) == 0:
        return tp
    iou = box_iou_np(boxes, gt)
    free = np.ones(len(gt), dtype=bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(free & (iou[i] >= iou_threshold), iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= 0:
            tp[i], free[j] = True, False
    return tp


@dataclass
class FROCResult:
    """FROC curve (one point per distinct score threshold, plus the origin) and its summary."""

    thresholds: np.ndarray
    fp_per_image: np.ndarray
    sensitivity: np.ndarray
    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    mean_sensitivity: float
    n_images: int
    n_lesions: int
    n_detections: int
    criterion: str = field(default="")

    def at(self, threshold: float) -> tuple[float, float]:
        """(false positives per image, sensitivity) of the detections scoring at least ``threshold``: the
        operating point a viewer showing boxes from that threshold has."""
        k = int(np.flatnonzero(self.thresholds >= threshold)[-1])  # the curve starts at +inf: always one
        return float(self.fp_per_image[k]), float(self.sensitivity[k])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (without the full curve arrays' numpy types)."""
        return {
            "fp_rates": list(self.fp_rates),
            "sensitivities": [float(s) for s in self.sensitivities],
            "mean_sensitivity": float(self.mean_sensitivity),
            "n_images": self.n_images,
            "n_lesions": self.n_lesions,
            "n_detections": self.n_detections,
            "criterion": self.criterion,
            "curve": {
                "thresholds": [float(t) for t in self.thresholds],
                "fp_per_image": [float(f) for f in self.fp_per_image],
                "sensitivity": [float(s) for s in self.sensitivity],
            },
        }


def _table(values: Any, width: int, what: str) -> np.ndarray:
    """``values`` as an (N, ``width``) float array (an empty one for nothing), or ValueError naming the shape."""
    table = np.asarray(values, dtype=float)
    if table.size == 0:
        return table.reshape(0, width)
    if table.ndim != 2 or table.shape[1] != width:
        raise ValueError(f"an array of shape {table.shape}: expected (N, {width}) {what}")
    return table


def detections_per_slice(rows: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``detect``'s (N, 6) ``slice, x1, y1, x2, y2, score`` rows -> :func:`froc`'s (boxes, scores) for each of the
    ``n`` slices."""
    rows = _table(rows, 6, "slice, x1, y1, x2, y2, score rows")
    return [(rows[rows[:, 0] == i, 1:5], rows[rows[:, 0] == i, 5]) for i in range(n)]


def truth_per_slice(boxes: np.ndarray, n: int) -> list[np.ndarray]:
    """(M, 5) ``slice, x1, y1, x2, y2`` lesion boxes (a phantom's or a reader's ``boxes``) -> :func:`froc`'s ground
    truth for each of the ``n`` slices."""
    boxes = _table(boxes, 5, "slice, x1, y1, x2, y2 boxes")
    return [boxes[boxes[:, 0] == i, 1:5] for i in range(n)]


def froc(
    detections: Sequence[tuple[np.ndarray, np.ndarray]],
    ground_truth: Sequence[np.ndarray],
    fp_rates: Sequence[float] = (0.5, 1, 2, 4, 8),
    iou_threshold: float = 0.5,
) -> FROCResult:
    """FROC over a set of images.

    ``detections[i] = (boxes (N,4), scores (N,))`` and ``ground_truth[i] = (M,4)`` for image i (pixels):
    :func:`detections_per_slice` and :func:`truth_per_slice` make them from a volume's rows and boxes.
    Hits follow ``match_detections``. For every distinct score threshold t, sensitivity = hits with score >= t /
    lesions and FP/image = false positives with score >= t / images. The sensitivity at a rate r is the best
    sensitivity of the curve at FP/image <= r (0 when no threshold gets there); ``mean_sensitivity`` averages them.
    Sensitivities are NaN when there are no lesions.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} detection lists but {len(ground_truth)} ground-truth lists")
    all_scores, all_tp, n_lesions = [], [], 0
    for (boxes, scores), gt in zip(detections, ground_truth, strict=True):
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        all_tp.append(match_detections(boxes, scores, gt, iou_threshold))
        all_scores.append(scores)
        n_lesions += len(np.asarray(gt).reshape(-1, 4))
    n_images = len(detections)
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, tp = scores[order], tp[order]
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(~tp)
    # one point per distinct threshold: the last detection with each score
    last = np.r_[scores[1:] != scores[:-1], True] if len(scores) else np.zeros(0, dtype=bool)
    thresholds = np.r_[np.inf, scores[last]]
    fp_per_image = np.r_[0.0, cum_fp[last] / max(n_images, 1)]
    sensitivity = np.r_[0.0, cum_tp[last]] / n_lesions if n_lesions else np.full(len(thresholds), np.nan)
    fp_rates = tuple(float(r) for r in fp_rates)
    sens_at = np.array([sensitivity[fp_per_image <= r].max() for r in fp_rates]) if fp_rates else np.zeros(0)
    criterion = (
        f"hit: IoU >= {iou_threshold:g} with a not yet matched ground-truth box, detections matched greedily by "
        "decreasing score within each image (each lesion counted once, further detections of it are false "
        "positives); sensitivity at a rate = best sensitivity with mean FP/image <= rate"
    )
    return FROCResult(
        thresholds=thresholds,
        fp_per_image=fp_per_image,
        sensitivity=sensitivity,
        fp_rates=fp_rates,
        sensitivities=sens_at,
        mean_sensitivity=float(np.mean(sens_at)) if len(sens_at) else float("nan"),
        n_images=n_images,
        n_lesions=n_lesions,
        n_detections=len(scores),
        criterion=criterion,
    )


def threshold_at_fp_rate(scores_per_image: Sequence[np.ndarray], fp_per_image: float) -> float:
    """The lowest score threshold t at which images without lesions carry at most ``fp_per_image`` boxes with
    score >= t on average (every box there is a false positive).

    ``scores_per_image``: the detector's scores on each lesion-free image, kept from a low floor. The result is one
    of the scores (a box scoring exactly t counts), or just above the top score when even one box is too many;
    1.0 for no images. Raises ValueError for a negative rate.
    """
    if not (fp_per_image >= 0):
        raise ValueError(f"false positives per image must be >= 0, got {fp_per_image}")
    n = len(scores_per_image)
    if n == 0:
        return 1.0
    scores = np.sort(np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores_per_image]))[::-1]
    allowed = int(np.floor(fp_per_image * n + 1e-9))  # boxes allowed in total
    if allowed >= len(scores):
        return float(scores[-1]) if len(scores) else 0.0
    above = float(scores[allowed])  # the first box that would be one too many
    kept = scores[:allowed]
    # the lowest threshold strictly above ``above``: the smallest kept score above it, or just above it
    higher = kept[kept > above]
    if len(higher):
        return float(higher.min())
    # next float32 up, so that a comparison in float32 (scores usually are) or float64 both exclude ``above``
    return float(np.nextafter(np.float32(above), np.float32(np.inf)))


def fp_rate_at(scores_per_image: Sequence[np.ndarray], threshold: float) -> float:
    """Mean number of boxes per image scoring at least ``threshold`` (on lesion-free images: false positives per
    image, the quantity ``threshold_at_fp_rate`` inverts); NaN for no images."""
    if not len(scores_per_image):
        return float("nan")
    return float(np.mean([(np.asarray(s) >= threshold).sum() for s in scores_per_image]))
