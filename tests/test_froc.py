"""FROC with hand-made boxes whose curve is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lidnet.metrics.froc import (
    box_iou_np,
    detections_per_slice,
    fp_rate_at,
    froc,
    match_detections,
    threshold_at_fp_rate,
    truth_per_slice,
)


def _case():
    gt = [
        np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float),  # image A: two lesions
        np.array([[0, 0, 10, 10]], float),  # image B: one lesion
    ]
    det = [
        (
            np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], float),
            np.array([0.9, 0.8, 0.3]),  # TP, duplicate of the same lesion (FP), FP
        ),
        (
            np.array([[0, 0, 10, 11], [0, 0, 10, 5], [40, 40, 50, 50]], float),
            np.array([0.7, 0.6, 0.95]),  # TP (IoU 0.909), duplicate (FP), FP
        ),
    ]
    return det, gt


def test_hand_computed_curve() -> None:
    det, gt = _case()
    r = froc(det, gt, fp_rates=(0.25, 0.5, 1, 2, 4, 8))
    # pooled by score: .95 FP, .9 TP, .8 FP, .7 TP, .6 FP, .3 FP ; 3 lesions, 2 images
    np.testing.assert_allclose(r.thresholds, [np.inf, 0.95, 0.9, 0.8, 0.7, 0.6, 0.3])
    np.testing.assert_allclose(r.fp_per_image, [0, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(r.sensitivity, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r.sensitivities, [0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert r.mean_sensitivity == pytest.approx((0 + 1 / 3 + 4 * 2 / 3) / 6)
    assert (r.n_images, r.n_lesions, r.n_detections) == (2, 3, 6)
    assert "IoU >= 0.5" in r.criterion and "counted once" in r.criterion
    d = r.as_dict()
    assert d["sensitivities"][2] == pytest.approx(2 / 3) and len(d["curve"]["fp_per_image"]) == 7
    # the operating point of a viewer showing boxes from a threshold: every detection scoring at least that
    assert r.at(0.75) == pytest.approx((1.0, 1 / 3))  # .95 FP, .9 TP, .8 FP
    assert r.at(0.7) == pytest.approx((1.0, 2 / 3)) and r.at(0.99) == (0.0, 0.0)
    assert r.at(0.0) == pytest.approx((2.0, 2 / 3))


def test_default_rates_and_iou_boundary() -> None:
    det, gt = _case()
    r = froc(det, gt)
    assert r.fp_rates == (0.5, 1.0, 2.0, 4.0, 8.0)
    assert r.mean_sensitivity == pytest.approx((1 / 3 + 4 * 2 / 3) / 5)  # = 0.6
    # IoU exactly 0.5 is a hit ([0,0,10,5] vs [0,0,10,10]: 50 / 100); a stricter threshold makes it a miss
    only = [(np.array([[0, 0, 10, 5]], float), np.array([0.5]))]
    assert froc(only, [np.array([[0, 0, 10, 10]], float)]).sensitivities[0] == 1.0
    assert froc(only, [np.array([[0, 0, 10, 10]], float)], iou_threshold=0.6).sensitivities[-1] == 0.0


def test_greedy_matching_by_score_each_lesion_once() -> None:
    gt = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], float)
    boxes = np.array([[2, 0, 12, 10], [0, 0, 10, 10], [30, 30, 40, 40]], float)
    scores = np.array([0.4, 0.9, 0.8])
    # 0.9 takes gt0 (IoU 1); 0.8 misses; 0.4 overlaps gt0 (80/120, taken) and gt1 (70/130, free) -> hit on gt1
    assert match_detections(boxes, scores, gt).tolist() == [True, True, False]
    assert match_detections(boxes, scores, np.zeros((0, 4))).tolist() == [False] * 3
    np.testing.assert_allclose(box_iou_np(boxes[:1], gt), [[80 / 120, 70 / 130]])


def test_no_detections_and_no_lesions() -> None:
    r = froc([(np.zeros((0, 4)), np.zeros(0))] * 3, [np.array([[0, 0, 5, 5]], float)] * 3)
    np.testing.assert_allclose(r.sensitivities, 0.0)
    assert r.n_detections == 0 and list(r.fp_per_image) == [0.0]
    r = froc([(np.array([[0, 0, 5, 5]], float), np.array([0.5]))], [np.zeros((0, 4))])
    assert np.isnan(r.mean_sensitivity) and r.fp_per_image[-1] == 1.0
    empty = froc([], [])  # no images at all: NaN sensitivities, the criterion still stated
    assert np.isnan(empty.sensitivities).all() and "IoU" in empty.criterion
    with pytest.raises(ValueError, match="ground-truth"):
        froc([], [np.zeros((0, 4))])


def test_fp_rate_at_is_what_threshold_at_fp_rate_inverts():
    rng = np.random.default_rng(3)
    scores = [rng.uniform(0, 1, rng.integers(0, 6)) for _ in range(40)]
    for rate in (0.0, 0.5, 1.0, 2.0):
        t = threshold_at_fp_rate(scores, rate)
        assert fp_rate_at(scores, t) <= rate
        below = [s[s < t] for s in scores]
        if any(len(b) for b in below):  # the next lower score would be one box too many
            assert fp_rate_at(scores, max(b.max() for b in below if len(b))) > rate
    assert fp_rate_at([np.array([0.2, 0.7]), np.array([0.9])], 0.5) == 1.0
    assert np.isnan(fp_rate_at([], 0.5))


def test_a_volume_s_rows_and_boxes_go_to_froc_slice_by_slice() -> None:
    """``detect``'s (N, 6) rows and a volume's (M, 5) lesion boxes, as froc takes them: one entry per slice, empty
    slices included; the curve equals the one of the lists written out by hand."""
    rows = np.array([[2, 10, 10, 20, 20, 0.9], [0, 50, 50, 60, 60, 0.4], [2, 70, 70, 80, 80, 0.2]])
    truth = np.array([[2, 11, 11, 21, 21], [1, 30, 30, 40, 40]])
    dets, gts = detections_per_slice(rows, 3), truth_per_slice(truth, 3)
    assert [len(b) for b, _ in dets] == [1, 0, 2] and [len(g) for g in gts] == [0, 1, 1]
    np.testing.assert_array_equal(dets[2][1], [0.9, 0.2])
    by_hand = froc([(rows[1:2, 1:5], [0.4]), (np.zeros((0, 4)), []), (rows[[0, 2], 1:5], [0.9, 0.2])],
                   [np.zeros((0, 4)), truth[1:, 1:], truth[:1, 1:]])  # fmt: skip
    np.testing.assert_array_equal(froc(dets, gts).sensitivity, by_hand.sensitivity)
    assert froc(dets, gts).mean_sensitivity == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"shape \(2, 6\): expected \(N, 5\)"):
        truth_per_slice(rows[:2], 3)  # rows where boxes were meant: refused, not regrouped
    with pytest.raises(ValueError, match=r"shape \(2, 5\): expected \(N, 6\)"):
        detections_per_slice(truth, 3)
    assert [len(g) for g in truth_per_slice([], 2)] == [0, 0]
