"""Noise power spectrum: Parseval, flatness of white noise, low-pass shift of blurred noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from napari_lidnet.metrics.nps import (
    detrend,
    isolated_peak,
    largest_inscribed_square,
    nps_2d,
    phase_pattern_range,
    region_nps,
    residual_spectrum,
    sub_roi_origins,
)
from napari_lidnet.metrics.roi import shape_mask


@pytest.mark.parametrize("method", ["mean", "poly2"])
def test_white_noise_flat_and_integral_is_variance(method):
    rng = np.random.default_rng(0)
    s, px = 12.0, 0.7
    res = nps_2d(100.0 + rng.normal(0, s, (256, 256)), pixel_mm=px, roi_size=64, detrend_method=method)
    assert res.n_rois == 49 and res.roi_size == (64, 64)
    assert res.integral() == pytest.approx(s**2, rel=0.03)
    # flat at the white-noise level s^2 * dx * dy, frequencies up to Nyquist 1 / (2 px) mm^-1
    level = s**2 * px * px
    assert res.fx.max() == pytest.approx(1 / (2 * px) - 1 / (64 * px))
    assert res.f.max() <= 1 / (2 * px) + 1e-9
    band = res.nps[2:]  # the lowest bins are biased by detrending
    assert np.all(np.abs(band / level - 1) < 0.2)
    assert band.mean() == pytest.approx(level, rel=0.05)


def test_blurred_noise_moves_power_to_low_frequencies():
    rng = np.random.default_rng(1)
    white = rng.normal(0, 10, (256, 256))
    blurred = gaussian_filter(white, 1.5)
    w, b = nps_2d(white, 0.5), nps_2d(blurred, 0.5)
    fny = 1.0
    low_w, high_w = w.nps[w.f < fny / 4].mean(), w.nps[w.f > fny / 2].mean()
    low_b, high_b = b.nps[b.f < fny / 4].mean(), b.nps[b.f > fny / 2].mean()
    assert low_b / high_b > 50 * (low_w / high_w)
    assert b.integral() == pytest.approx(blurred.var(), rel=0.1)
    # the spectrum's peak frequency sits below a quarter of Nyquist for blurred noise
    assert b.f[np.argmax(b.nps)] < fny / 4


def test_detrend_removes_ramp_and_quadratic():
    y, x = np.mgrid[0:32, 0:32].astype(float)
    surf = 3 + 0.5 * x - 2 * y + 0.01 * x * x + 0.02 * x * y
    assert np.abs(detrend(surf, "poly2")).max() < 1e-8
    assert abs(detrend(surf, "mean").mean()) < 1e-10
    with pytest.raises(ValueError):
        detrend(surf, "cubic")


def test_sub_roi_tiling_and_small_region():
    assert sub_roi_origins(128, 64) == [0, 32, 64]
    assert sub_roi_origins(100, 64) == [0, 32, 36]
    assert sub_roi_origins(40, 64) == [0]
    res = nps_2d(np.random.default_rng(2).normal(0, 5, (40, 50)), roi_size=64)
    assert res.n_rois == 1 and res.roi_size == (40, 50)
    with pytest.raises(ValueError, match="4x4"):
        nps_2d(np.zeros((3, 10)))


def test_region_nps_on_rectangle_and_ellipse():
    rng = np.random.default_rng(3)
    img = rng.normal(0, 8, (200, 200))
    rect = shape_mask("rectangle", np.array([[20, 30], [120, 30], [120, 150], [20, 150]], float), img.shape)
    r = region_nps(img, rect, 1.0)
    assert r.n_rois == 3 * 3 and r.integral() == pytest.approx(64, rel=0.05)
    ell = shape_mask("ellipse", np.array([[20, 20], [180, 20], [180, 180], [20, 180]], float), img.shape)
    r0, c0, side = largest_inscribed_square(ell)
    assert ell[r0 : r0 + side, c0 : c0 + side].all()
    assert side > 160 / np.sqrt(2) - 3  # inscribed square of a circle of diameter 160
    assert region_nps(img, ell, 1.0).integral() == pytest.approx(64, rel=0.05)
    with pytest.raises(ValueError, match="too small"):
        region_nps(img, np.zeros_like(ell), 1.0)


def _correlated_noise(rng: np.random.Generator, n: int = 4, size: int = 256) -> list[np.ndarray]:
    """FBP-like correlated noise: white noise band-passed by a ramp-ish filter (difference of Gaussians)."""
    out = []
    for _ in range(n):
        w = rng.normal(0, 10, (size, size))
        out.append(ndimage.gaussian_filter(w, 0.7) - 0.5 * ndimage.gaussian_filter(w, 2.0))
    return out


def test_isolated_peak_finds_a_faint_periodic_hatch_and_not_noise() -> None:
    rng = np.random.default_rng(3)
    noise = _correlated_noise(rng)
    clean_peak = isolated_peak(residual_spectrum(noise)[0])
    assert clean_peak["local_ratio"] < 3.0
    assert phase_pattern_range(noise) < 0.3
    yy, xx = np.mgrid[:256, :256]
    hatch = 0.5 * np.cos(2 * np.pi * (yy + xx) / 4)  # 1 HU peak-to-peak, under a 4 HU noise SD
    peak = isolated_peak(residual_spectrum([r + hatch for r in noise])[0])
    assert peak["local_ratio"] > 8.0
    assert sorted(np.abs(peak["at_cycles_per_px"])) == [0.25, 0.25]
    assert 0.8 < phase_pattern_range([r + hatch for r in noise]) < 1.3


def test_residual_spectrum_refuses_small_images() -> None:
    with pytest.raises(ValueError, match="at least 64 x 64"):
        residual_spectrum([np.zeros((32, 128))])


def test_the_radial_average_starts_at_the_first_frequency_and_labels_rings_by_their_samples():
    """A metrics review: the first ring held only the zero frequency (0 after detrending, shown as a dip at df/2),
    and rings were labelled at their edges' middle, up to 24% above their samples' frequencies."""
    rng = np.random.default_rng(3)
    res = nps_2d(rng.normal(0, 10.0, (256, 256)), pixel_mm=0.5, roi_size=64, detrend_method="mean")
    df = 1 / (64 * 0.5)
    assert res.nps[0] > 0.5 * 100 * 0.25  # the first ring is noise, not an empty zero frequency
    f = np.hypot(*np.meshgrid(res.fy, res.fx, indexing="ij"))
    for k in (1, 3):
        ring = (f > (k - 0.5) * df) & (f < (k + 0.5) * df)
        assert res.f[k - 1] == pytest.approx(f[ring].mean())


def test_a_negative_pixel_size_is_a_size_and_zero_is_refused() -> None:
    """Regression: a layer flipped by a negative scale gave a negative NPS."""
    region = np.random.default_rng(0).normal(0, 10, (64, 64))
    flipped, plain = nps_2d(region, (-0.5, 0.8)), nps_2d(region, (0.5, 0.8))
    np.testing.assert_allclose(flipped.nps, plain.nps)
    assert np.all(plain.nps >= 0)
    with pytest.raises(ValueError, match="must be positive"):
        nps_2d(region, 0.0)
