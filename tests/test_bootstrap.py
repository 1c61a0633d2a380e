"""Case bootstrap intervals against known answers: coverage, 1/sqrt(n) width, paired vs unpaired, clusters, BCa on
skewed data, and the resampled FROC equal to metrics.froc on the resampled image list."""

import numpy as np
import pytest
from scipy.stats import chi2

from napari_lidnet.metrics.bootstrap import (
    case_bootstrap,
    froc_cases,
    froc_ci,
    froc_difference,
    mean_ci,
    mean_sensitivities,
    paired_difference,
    unpaired_difference,
)
from napari_lidnet.metrics.froc import froc


def _width(res) -> float:
    return res.ci[1] - res.ci[0]


@pytest.mark.parametrize("method", ["percentile", "bca"])
def test_paired_difference_covers_the_true_difference_95_percent_of_the_time(method):
    rng = np.random.default_rng(0)
    hits, reps = 0, 300
    for r in range(reps):
        case = rng.normal(0, 2, 40)  # what both methods share
        a, b = case + 0.5 + rng.normal(0, 1, 40), case + rng.normal(0, 1, 40)
        res = paired_difference(a, b, n_boot=400, seed=r, method=method)
        hits += res.ci[0] <= 0.5 <= res.ci[1]
        assert res.ci[0] <= res.estimate <= res.ci[1]
    assert 0.91 <= hits / reps <= 0.98


def test_mean_interval_matches_the_normal_theory_interval_and_shrinks_as_one_over_sqrt_n():
    rng = np.random.default_rng(1)
    widths = {}
    for n in (100, 400):
        w = []
        for r in range(6):
            x = rng.normal(3.0, 1.5, n)
            res = mean_ci(x, n_boot=2000, seed=r, method="percentile")
            normal = 2 * 1.96 * x.std(ddof=1) / np.sqrt(n)
            assert _width(res) == pytest.approx(normal, rel=0.12)
            assert res.se == pytest.approx(x.std(ddof=1) / np.sqrt(n), rel=0.12)
            w.append(_width(res))
        widths[n] = np.mean(w)
    assert 1.8 <= widths[100] / widths[400] <= 2.2


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
    """Correlation 0.9 between the methods: the paired SD is sqrt(2 (1 - rho)) sigma, the unpaired sqrt(2) sigma."""
    rng = np.random.default_rng(2)
    ratios = []
    for r in range(5):
        shared = rng.normal(0, 1, 200)
        a = np.sqrt(0.9) * shared + np.sqrt(0.1) * rng.normal(0, 1, 200) + 0.2
        b = np.sqrt(0.9) * shared + np.sqrt(0.1) * rng.normal(0, 1, 200)
        paired = paired_difference(a, b, n_boot=2000, seed=r, method="percentile")
        unpaired = unpaired_difference(a, b, n_boot=2000, seed=r)
        assert paired.estimate == pytest.approx(unpaired.estimate)
        ratios.append(_width(paired) / _width(unpaired))
    assert 0.25 <= np.mean(ratios) <= 0.4  # sqrt(0.1) = 0.32


def test_bca_is_closer_than_percentile_and_basic_to_the_exact_interval_of_a_skewed_mean():
    """Exponential data: the exact 95% interval of the mean is mean * 2n / chi2(2n) quantiles."""
    rng = np.random.default_rng(3)
    err = {"bca": [], "percentile": [], "basic": []}
    for r in range(80):
        x = rng.exponential(1.0, 20)
        exact = x.mean() * 40 / chi2.ppf([0.975, 0.025], 40)
        for method in err:
            err[method].append(np.abs(np.array(mean_ci(x, n_boot=1000, seed=r, method=method).ci) - exact))
    mean_err = {m: np.mean(e) for m, e in err.items()}
    assert mean_err["bca"] < 0.8 * mean_err["percentile"] < 0.8 * mean_err["basic"]


def test_cluster_bootstrap_counts_duplicated_cases_once():
    """Every case twice, as one cluster: as wide as the bootstrap of the unique cases; ignoring the clusters
    pretends to twice the data (sqrt(2) narrower)."""
    x = np.random.default_rng(4).normal(0, 1, 150)
    dup, groups = np.repeat(x, 2), np.repeat(np.arange(150), 2)
    unique = mean_ci(x, n_boot=3000, seed=0, method="percentile")
    clustered = mean_ci(dup, n_boot=3000, seed=0, method="percentile", clusters=groups)
    naive = mean_ci(dup, n_boot=3000, seed=0, method="percentile")
    assert clustered.n_clusters == 150 and clustered.n_cases == 300
    assert _width(clustered) == pytest.approx(_width(unique), rel=0.08)
    assert _width(unique) / _width(naive) == pytest.approx(np.sqrt(2), rel=0.1)


def test_seeded_and_degenerate():
    x = np.random.default_rng(5).normal(0, 1, 30)
    assert mean_ci(x, seed=7) == mean_ci(x, seed=7)
    assert mean_ci(x, seed=7).ci != mean_ci(x, seed=8).ci
    same = paired_difference(x, x)
    assert same.estimate == 0 and same.ci == (0.0, 0.0)
    # a generic vectorised statistic of the case multiplicities: the sum
    res = case_bootstrap(lambda c: c @ x, len(x), n_boot=500, method="basic")
    assert res.estimate == pytest.approx(x.sum()) and res.ci[0] < x.sum() < res.ci[1]


def test_bad_inputs_are_one_line_errors():
    for call, match in [
        (lambda: mean_ci([1.0, 2.0, 3.0], method="studentized"), "method"),
        (lambda: mean_ci([1.0, 2.0, 3.0], level=1.5), "level"),
        (lambda: mean_ci([1.0]), "at least 2"),
        (lambda: mean_ci([1.0, np.nan, 2.0]), "NaN"),
        (lambda: paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "one value per case"),
        (lambda: mean_ci([1.0, 2.0, 3.0], clusters=[0, 1]), "one label per case"),
        (lambda: unpaired_difference([1.0, 2.0], [1.0, 2.0], method="bca"), "bca"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            call()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------- FROC
def _readers(seed: int, n: int = 120, p_hit=(0.9, 0.6)):
    """Ground truth and two readers' detections: hits found with probabilities p_hit, the same false positives."""
    rng = np.random.default_rng(seed)
    gts, dets = [], ([], [])
    for _ in range(n):
        gt = np.array([[x, y, x + 12, y + 12] for x, y in rng.uniform(0, 400, (rng.integers(0, 4), 2))])
        gts.append(gt.reshape(-1, 4))
        fp = np.array([[x, y, x + 12, y + 12] for x, y in rng.uniform(0, 400, (rng.integers(0, 6), 2))])
        fp_scores = np.round(rng.uniform(0, 0.7, len(fp)), 2)
        found = rng.random(len(gt))
        for reader, p in zip(dets, p_hit, strict=True):
            hit = gt[found < p]
            boxes = np.vstack([hit.reshape(-1, 4), fp.reshape(-1, 4)])
            reader.append((boxes, np.r_[rng.uniform(0.5, 1.0, len(hit)), fp_scores]))
    return gts, dets


def test_resampled_froc_equals_froc_of_the_resampled_image_list():
    gts, (a, _) = _readers(6)
    cases = froc_cases(a, gts)
    assert mean_sensitivities(cases, np.ones((1, len(gts))))[0] == pytest.approx(froc(a, gts).mean_sensitivity)
    rng = np.random.default_rng(0)
    for _ in range(3):
        idx = rng.integers(0, len(gts), len(gts))
        counts = np.bincount(idx, minlength=len(gts))[None].astype(float)
        expected = froc([a[i] for i in idx], [gts[i] for i in idx]).mean_sensitivity
        assert mean_sensitivities(cases, counts)[0] == pytest.approx(expected, abs=1e-12)


def test_paired_froc_difference():
    gts, (a, b) = _readers(7, n=200)
    ca, cb = froc_cases(a, gts), froc_cases(b, gts)
    diff = froc_difference(ca, cb, n_boot=1000)
    assert diff.estimate == pytest.approx(froc(a, gts).mean_sensitivity - froc(b, gts).mean_sensitivity)
    assert 0.15 < diff.ci[0] < diff.estimate < diff.ci[1] < 0.45  # reader a finds 0.9 of the lesions, b 0.6
    ia, ib = froc_ci(ca, n_boot=1000), froc_ci(cb, n_boot=1000)
    assert _width(diff) < np.hypot(_width(ia), _width(ib))  # pairing removes what the images share
    assert froc_difference(ca, ca, n_boot=200).ci == (0.0, 0.0)
    # readers of the same images (training seeds) are averaged
    both = froc_ci([ca, cb], n_boot=200)
    assert both.estimate == pytest.approx((ia.estimate + ib.estimate) / 2)
    assert froc_difference([ca, ca], [cb, cb], n_boot=200).estimate == pytest.approx(diff.estimate)
    with pytest.raises(ValueError, match="same images"):
        froc_difference(ca, froc_cases(a[:-1], gts[:-1]))
