"""Noise power spectrum: Parseval, flatness of white noise, low-pass shift of blurred noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_lidnet.metrics.nps import detrend, largest_inscribed_square, nps_2d, region_nps, sub_roi_origins
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
