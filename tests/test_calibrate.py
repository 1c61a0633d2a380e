"""Detector score calibration: threshold at a false-positive rate, the run over a dataset, the card's default."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lidnet._training.calibrate import calibrate_detector
from napari_lidnet.io.dataset import Sample
from napari_lidnet.metrics.froc import threshold_at_fp_rate
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.weights import FALLBACK_THRESHOLD, default_threshold


def _mean_boxes(scores: list[np.ndarray], t: float) -> float:
    return float(np.mean([(s >= t).sum() for s in scores]))


def test_threshold_at_fp_rate_is_the_lowest_that_keeps_the_rate() -> None:
    scores = [np.array([0.9, 0.4]), np.array([0.5, 0.5, 0.2]), np.array([])]
    t = threshold_at_fp_rate(scores, 1.0)  # 3 boxes allowed over 3 images: 0.9, 0.5, 0.5
    assert t == 0.5 and _mean_boxes(scores, t) == 1.0
    t = threshold_at_fp_rate(scores, 2 / 3)  # 2 boxes allowed: the tie at 0.5 cannot be split -> 0.9
    assert t == 0.9 and _mean_boxes(scores, t) <= 2 / 3
    t0 = threshold_at_fp_rate(scores, 0.0)
    assert t0 > 0.9 and _mean_boxes(scores, t0) == 0.0
    assert threshold_at_fp_rate(scores, 10.0) == 0.2  # every box allowed: the lowest score
    assert threshold_at_fp_rate([], 0.5) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        threshold_at_fp_rate(scores, -1.0)


def test_threshold_at_fp_rate_on_random_scores_is_minimal() -> None:
    rng = np.random.default_rng(0)
    scores = [rng.beta(1, 5, rng.integers(0, 12)) for _ in range(40)]
    for rate in (0.25, 0.5, 1.0, 3.0):
        t = threshold_at_fp_rate(scores, rate)
        assert _mean_boxes(scores, t) <= rate
        lower = np.concatenate(scores)
        lower = lower[lower < t]
        if len(lower):  # the next lower score already breaks the rate
            assert _mean_boxes(scores, float(lower.max())) > rate


def _samples(n_neg: int, n_pos: int, size: int = 64) -> list[Sample]:
    rng = np.random.default_rng(1)
    out = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n_neg + n_pos):
        full = 40 + rng.normal(0, 5, (size, size))
        boxes = np.zeros((0, 4), np.float32)
        if i >= n_neg:
            cy, cx = rng.uniform(16, size - 16, 2)
            full = full + 60 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 36)
            boxes = np.array([[cx - 6, cy - 6, cx + 6, cy + 6]], np.float32)
        low = full + rng.normal(0, 20, (size, size))
        out.append(Sample(f"s{i}", full.astype(np.float32), low.astype(np.float32), boxes, 0.7))
    return out


def test_calibrate_detector_meets_its_rate_on_every_image_type_pooled() -> None:
    torch.manual_seed(0)
    detector = LesionDetector(width=4, neck_width=8).eval()
    denoiser = build_denoiser("unet", width=4, levels=2).eval()
    samples = _samples(n_neg=6, n_pos=3)
    cal = calibrate_detector(detector, samples, denoiser=denoiser, fp_per_image=1.0)
    assert set(cal["fp_per_image_by_type"]) == {"full dose", "low dose", "denoised"}
    assert np.mean(list(cal["fp_per_image_by_type"].values())) <= 1.0  # pooled over the three types
    assert cal["n_negative_slices"] == 6 and cal["n_lesions"] == 3
    assert set(cal["sensitivity_by_type"]) == {"full dose", "low dose", "denoised"}
    assert all(0.0 <= s <= 1.0 for s in cal["sensitivity_by_type"].values())
    strict = calibrate_detector(detector, samples, denoiser=denoiser, fp_per_image=0.0)
    assert strict["threshold"] >= cal["threshold"]
    assert all(v == 0.0 for v in strict["fp_per_image_by_type"].values())
    with pytest.raises(ValueError, match="lesion-free slices"):
        calibrate_detector(detector, samples[6:])
    # a kept threshold (another denoiser, say) is measured, not chosen: asked for no boxes, it keeps the loose one
    assert strict["threshold"] > cal["threshold"]
    kept = calibrate_detector(detector, samples, denoiser=denoiser, fp_per_image=0.0, threshold=cal["threshold"])
    assert kept["threshold"] == cal["threshold"]
    assert kept["fp_per_image_by_type"] == cal["fp_per_image_by_type"]
    assert kept["sensitivity_by_type"] == cal["sensitivity_by_type"]
    # several sets: the threshold holds on each (here the loosest set is the first, the strictest a noisier one)
    noisy = [Sample(x.name, x.full_hu, x.low_hu + np.float32(30) * np.sin(np.arange(64, dtype=np.float32)), x.boxes,
                    0.7) for x in samples[:6]]  # fmt: skip
    both = calibrate_detector(detector, samples, denoiser=denoiser, fp_per_image=1.0, also=[noisy])
    own = [x["own_threshold"] for x in both["sets"]]
    assert own[0] == cal["threshold"] and both["threshold"] == max(own)
    for x in both["sets"]:
        assert x["threshold"] == both["threshold"] and np.mean(list(x["fp_per_image_by_type"].values())) <= 1.0
    assert (
        both["sensitivity_by_type"]
        == calibrate_detector(detector, samples, denoiser=denoiser, fp_per_image=1.0, threshold=both["threshold"])[
            "sensitivity_by_type"
        ]
    )


def test_default_threshold_reads_the_card_and_falls_back() -> None:
    assert default_threshold({"calibration": {"threshold": 0.42}}) == 0.42
    assert default_threshold({"kind": "detector"}) == FALLBACK_THRESHOLD
    assert default_threshold(None) == FALLBACK_THRESHOLD
    for bad in ({"threshold": "x"}, {"threshold": 0.0}, {"threshold": 1.5}, "0.4", {}):
        assert default_threshold({"calibration": bad}) == FALLBACK_THRESHOLD
