"""Channelized Hotelling observer: LG channels, CHO d'/AUC against closed forms, bootstrap intervals, single-image
region detectability, patch extraction. Real computations on seeded synthetic noise."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.special import ndtr

from napari_lidnet.metrics.observer import (
    ObserverResult,
    cho,
    default_channel_width,
    extract_patches,
    laguerre_gauss_channels,
    region_detectability,
    result_to_dict,
)

SIZE = 31
TRUNCATE = 4.0


def gaussian_signal(size: int, a: float, amplitude: float) -> np.ndarray:
    """amplitude * exp(-pi r^2 / a^2) about the patch centre: proportional to LG channel 0 of width a."""
    c = (size - 1) / 2
    y, x = np.mgrid[0:size, 0:size] - c
    return amplitude * np.exp(-np.pi * (x * x + y * y) / a**2)


def margin(g: float) -> int:
    """Pixels on each side that a Gaussian filter of SD g (truncate 4) reads."""
    return int(TRUNCATE * g + 0.5) + 1


def noise_patches(rng: np.random.Generator, n: int, size: int, sigma_w: float, g: float = 0.0) -> np.ndarray:
    """n patches of white noise (SD sigma_w), Gaussian-filtered with SD g when g > 0 (stationary: cropped)."""
    if g == 0:
        return sigma_w * rng.standard_normal((n, size, size))
    m = margin(g)
    w = sigma_w * rng.standard_normal((n, size + 2 * m, size + 2 * m), dtype=np.float32)
    return gaussian_filter(w, (0, g, g), truncate=TRUNCATE)[:, m:-m, m:-m]


def channel_covariance(channels: np.ndarray, sigma_w: float, g: float = 0.0) -> np.ndarray:
    """Exact channelized noise covariance K_v = U Sigma U^T for noise_patches' noise model.

    Filtered noise n = G w, so the channel outputs U G w have covariance sigma_w^2 (U G)(U G)^T; U G is each
    channel zero-padded and passed through the same (symmetric) Gaussian filter."""
    c = channels.shape[0]
    if g == 0:
        u = channels.reshape(c, -1)
        return sigma_w**2 * u @ u.T
    m = margin(g)
    ug = np.stack([gaussian_filter(np.pad(u, m), g, truncate=TRUNCATE, mode="constant") for u in channels])
    ug = ug.reshape(c, -1)
    return sigma_w**2 * ug @ ug.T


def closed_form_d(channels: np.ndarray, signal: np.ndarray, k: np.ndarray) -> float:
    """CHO d' = sqrt(v^T K_v^-1 v), v = U s."""
    v = channels.reshape(channels.shape[0], -1) @ signal.ravel()
    return float(math.sqrt(v @ np.linalg.solve(k, v)))


def ske_data(seed: int, n: int, signal: np.ndarray, sigma_w: float, g: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    size = signal.shape[0]
    return signal + noise_patches(rng, n, size, sigma_w, g), noise_patches(rng, n, size, sigma_w, g)


# --- channels ------------------------------------------------------------------------------------------------


def test_channels_orthonormal_and_centred():
    """Sampled LG channels (unit pixel area) are orthonormal, as in the continuum, and centred at (s-1)/2."""
    for size, n in ((41, 10), (31, 10), (25, 5)):
        u = laguerre_gauss_channels(size, n)
        assert u.shape == (n, size, size)
        flat = u.reshape(n, -1)
        np.testing.assert_allclose(flat @ flat.T, np.eye(n), atol=1e-2)
        np.testing.assert_allclose(u, u[:, ::-1, :], atol=1e-12)  # symmetric about the centre row
        np.testing.assert_allclose(u, u.transpose(0, 2, 1), atol=1e-12)
        assert np.unravel_index(np.argmax(u[0]), u[0].shape) == (size // 2, size // 2)
    # channel 0 is the normalised Gaussian sqrt(2)/a exp(-pi r^2 / a^2); channel j has value sqrt(2)/a at r = 0
    a = 6.0
    u = laguerre_gauss_channels(41, 4, width=a)
    np.testing.assert_allclose(u[0], gaussian_signal(41, a, math.sqrt(2) / a), rtol=1e-12)
    np.testing.assert_allclose(u[:, 20, 20], math.sqrt(2) / a)
    # the default width keeps the last channel inside the patch: 2 pi (size/2)^2 / a^2 = 4 (n + 1)
    assert 2 * np.pi * (41 / 2) ** 2 / default_channel_width(41, 10) ** 2 == pytest.approx(44.0)


def test_channels_orthonormality_needs_sampling():
    """The Gram check can fail: a too-narrow width (undersampled) or a too-wide one (truncated) is not orthonormal."""
    for width in (2.0, 15.0):
        flat = laguerre_gauss_channels(31, 10, width=width).reshape(10, -1)
        assert np.abs(flat @ flat.T - np.eye(10)).max() > 0.05


# --- CHO on SKE patches ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("amplitude", [0.75, 2.5])
def test_cho_white_noise_matches_ideal_observer(amplitude):
    """White noise, signal in the span of channel 0: CHO d' = ideal observer d' = ||s|| / sigma (within 5%;
    4000 cases per class, 2000 held out: the estimate's SD is about 1.5%)."""
    sigma = 1.0
    s = gaussian_signal(SIZE, default_channel_width(SIZE), amplitude * sigma)
    analytic = float(np.linalg.norm(s) / sigma)
    u = laguerre_gauss_channels(SIZE)
    assert closed_form_d(u, s, channel_covariance(u, sigma)) == pytest.approx(analytic, rel=1e-6)
    g1, g0 = ske_data(1, 4000, s, sigma)
    res = cho(g1, g0, n_boot=0)
    assert res.d_prime == pytest.approx(analytic, rel=0.05)
    assert (res.n_signal, res.n_background, res.n_channels) == (4000, 4000, 10)
    assert math.isnan(res.d_ci[0]) and res.method == "cho"


def test_cho_correlated_noise_matches_closed_form():
    """Gaussian-filtered noise: CHO d' matches sqrt(v^T K_v^-1 v) from the exact channel covariance (within 5%),
    and differs clearly from the white-noise value ||s||/sigma_pixel (the observer sees the correlation)."""
    g, sigma_w = 1.5, math.sqrt(4 * np.pi) * 1.5  # pixel SD about 1
    s = gaussian_signal(SIZE, default_channel_width(SIZE), 3.0)
    u = laguerre_gauss_channels(SIZE)
    analytic = closed_form_d(u, s, channel_covariance(u, sigma_w, g))
    g1, g0 = ske_data(2, 4000, s, sigma_w, g)
    pixel_sd = g0.std()
    assert 2.0 < analytic < 0.5 * np.linalg.norm(s) / pixel_sd
    # the closed-form covariance agrees with the sampled one: whitened by it, the sample covariance is ~ identity
    v0 = g0.reshape(len(g0), -1) @ u.reshape(10, -1).T
    li = np.linalg.inv(np.linalg.cholesky(channel_covariance(u, sigma_w, g)))
    np.testing.assert_allclose(li @ np.cov(v0, rowvar=False) @ li.T, np.eye(10), atol=0.12)
    res = cho(g1, g0, n_boot=0)
    assert res.d_prime == pytest.approx(analytic, rel=0.05)


def test_auc_agrees_with_d_prime_and_null_is_chance():
    """Gaussian test statistics: empirical AUC = Phi(d'/sqrt 2) within 0.02; no signal: AUC ~ 0.5 and the
    intervals contain 0.5 (AUC) and 0 (d')."""
    s = gaussian_signal(SIZE, default_channel_width(SIZE), 0.4)
    g1, g0 = ske_data(3, 2000, s, 1.0)
    res = cho(g1, g0, n_boot=200)
    assert 1.0 < res.d_prime < 2.5
    assert res.auc_from_d == pytest.approx(float(ndtr(res.d_prime / math.sqrt(2))))
    assert abs(res.auc - res.auc_from_d) < 0.02
    assert res.auc_ci[0] < res.auc < res.auc_ci[1]

    null1, null0 = ske_data(4, 1000, np.zeros((SIZE, SIZE)), 1.0)
    null = cho(null1, null0, n_boot=300)
    assert abs(null.auc - 0.5) < 0.04 and abs(null.d_prime) < 0.15
    assert null.auc_ci[0] < 0.5 < null.auc_ci[1]
    assert null.d_ci[0] < 0.0 < null.d_ci[1]


def test_hold_out_is_not_optimistic_with_few_cases():
    """40 cases per class, 10 channels, no signal: the held-out d' averages ~0 (resubstitution would give ~0.8)."""
    zero = np.zeros((SIZE, SIZE))
    ds = [cho(*ske_data(100 + k, 40, zero, 1.0), n_boot=0, seed=k).d_prime for k in range(20)]
    assert abs(np.mean(ds)) < 0.25


def test_bootstrap_intervals_cover_and_shrink():
    """95% bootstrap intervals contain the analytic d' and AUC, and narrow about sqrt(10) x from N=200 to 2000."""
    s = gaussian_signal(SIZE, default_channel_width(SIZE), 0.5)
    analytic = float(np.linalg.norm(s))
    auc_analytic = float(ndtr(analytic / math.sqrt(2)))
    widths = []
    for n, seed in ((200, 5), (2000, 6)):
        res = cho(*ske_data(seed, n, s, 1.0), n_boot=500, seed=seed)
        assert res.d_ci[0] < analytic < res.d_ci[1]
        assert res.auc_ci[0] < auc_analytic < res.auc_ci[1]
        widths.append(res.d_ci[1] - res.d_ci[0])
    assert widths[1] < 0.5 * widths[0]


def test_cho_refuses_bad_inputs():
    g = np.zeros((10, 9, 9))
    with pytest.raises(ValueError, match="same s"):
        cho(g, np.zeros((10, 8, 8)))
    with pytest.raises(ValueError, match="train_fraction"):
        cho(g, g, train_fraction=1.0)
    with pytest.raises(ValueError, match="covariance"):
        cho(g, g, laguerre_gauss_channels(9, 10))


# --- single-image region detectability ---------------------------------------------------------------------------


def disc_image(seed: int, contrast: float, sigma_w: float, g: float, shape=(160, 160), radius=6):
    """Uniform 100 + contrast * disc at the centre + (filtered) noise; returns image, disc mask, noiseless disc."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = shape[0] // 2, shape[1] // 2
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    m = margin(g) if g else 0
    w = sigma_w * rng.standard_normal((shape[0] + 2 * m, shape[1] + 2 * m))
    noise = gaussian_filter(w, g, truncate=TRUNCATE)[m : m + shape[0], m : m + shape[1]] if g else w
    return 100.0 + contrast * disc + noise, disc


@pytest.mark.parametrize(
    ("contrast", "sigma_w", "g"),
    [(3.0, 1.0, 0.0), (0.5, math.sqrt(4 * np.pi) * 1.5, 1.5)],
    ids=["white", "correlated"],
)
def test_region_detectability_matches_closed_form(contrast, sigma_w, g):
    """One image, disc lesion marked, the rest of the image as background: d' within 15% of the closed-form CHO
    d' for the image's noise (same patch, channels and signal, exact channel covariance)."""
    image, disc = disc_image(7, contrast, sigma_w, g)
    background = np.zeros_like(disc)
    background[5:-5, 5:-5] = True
    res = region_detectability(image, disc, background, n_boot=300)
    size = 2 * 13 + 1  # disc extent 13 px
    u = laguerre_gauss_channels(size)
    signal = contrast * extract_patches(disc.astype(float), np.array([[80, 80]]), size)[0]
    predicted = closed_form_d(u, signal, channel_covariance(u, sigma_w, g))
    assert 15 < predicted < 40
    assert res.d_prime == pytest.approx(predicted, rel=0.15)
    assert res.d_ci[0] < res.d_prime < res.d_ci[1]
    assert res.method == "region" and res.n_signal == 1 and res.n_background >= 20
    assert res.auc == res.auc_from_d == pytest.approx(float(ndtr(res.d_prime / math.sqrt(2))))


def test_region_detectability_removes_the_lesion_patch_noise():
    """Pure noise where the lesion is marked: v^T K^-1 v averages n_channels (10) from the patch's own noise;
    the debiased d'^2 averages ~0 (clipped at 0, so slightly above), and the interval reaches 0."""
    d2, lows = [], []
    for seed in range(16):
        image, disc = disc_image(400 + seed, 0.0, 1.0, 0.0, shape=(96, 96))
        res = region_detectability(image, disc, np.ones_like(disc), n_boot=100 if seed < 4 else 0, seed=seed)
        d2.append(res.d_prime**2)
        lows += [res.d_ci[0]] if seed < 4 else []
    assert np.mean(d2) < 4.0
    assert min(lows) == 0.0


def test_region_detectability_refuses_empty_and_small_regions():
    image, disc = disc_image(9, 3.0, 1.0, 0.0)
    background = np.zeros_like(disc)
    background[5:-5, 5:-5] = True
    with pytest.raises(ValueError, match="lesion mask is empty"):
        region_detectability(image, np.zeros_like(disc), background)
    with pytest.raises(ValueError, match="background mask is empty"):
        region_detectability(image, disc, disc)  # background entirely inside the lesion
    small = np.zeros_like(disc)
    small[5:65, 5:50] = True  # 3 x 2 half-overlapping 27 x 27 patches
    with pytest.raises(ValueError, match="background region too small"):
        region_detectability(image, disc, small)
    # fewer channels need fewer patches: the same region then suffices
    assert region_detectability(image, disc, small, n_channels=3, n_boot=50).n_channels == 3
    # the message names a square that is enough: drawn so, the measure runs
    image, disc = disc_image(9, 3.0, 1.0, 0.0, shape=(200, 200))
    strip = np.zeros_like(disc)
    strip[:30, :] = True
    with pytest.raises(ValueError, match=r"draw at least \d+ x \d+ px of plain tissue") as err:
        region_detectability(image, disc, strip)
    side = int(re.search(r"draw at least (\d+) x", str(err.value)).group(1))
    square = np.zeros_like(disc)
    square[:side, :side] = True
    assert region_detectability(image, disc, square, n_boot=50).n_background >= 20


# --- patches and dicts ---------------------------------------------------------------------------------------


def test_extract_patches_positions_and_bounds():
    vol = np.arange(3 * 20 * 30, dtype=float).reshape(3, 20, 30)
    p = extract_patches(vol, np.array([[1, 10, 15], [2, 2, 2]]), 5)
    np.testing.assert_array_equal(p[0], vol[1, 8:13, 13:18])
    np.testing.assert_array_equal(p[1], vol[2, 0:5, 0:5])
    np.testing.assert_array_equal(extract_patches(vol[0], np.array([[10.4, 14.6]]), 3)[0], vol[0, 9:12, 14:17])
    for bad in ([[0, 1, 15]], [[0, 10, 28]], [[3, 10, 15]], [[-1, 10, 15]]):
        with pytest.raises(ValueError, match="leaves the image"):
            extract_patches(vol, np.array(bad), 5)
    with pytest.raises(ValueError, match="leaves the image"):
        extract_patches(vol[0], np.array([[5, 5], [18, 5]]), 5)
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        extract_patches(vol, np.array([[5, 5]]), 5)


def test_result_to_dict_is_flat_and_json_safe():
    res = ObserverResult(1.5, 0.85, 0.856, (1.2, 1.8), (float("nan"), float("nan")), 10, 12, 10)
    d = result_to_dict(res)
    assert d == res.as_dict()
    assert d["d_ci_low"] == 1.2 and d["d_ci_high"] == 1.8 and d["auc_ci_low"] is None
    assert d["n_channels"] == 10 and d["method"] == "cho"
    json.loads(json.dumps(d, allow_nan=False))
    with pytest.raises(AttributeError):
        res.d_prime = 2.0  # frozen
