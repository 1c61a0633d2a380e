"""PSNR / SSIM / RMSE in HU against skimage.metrics and hand computations; per-lesion region metrics."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from napari_lidnet.metrics.image import METRIC_WINDOW, psnr, region_metrics, rmse, ssim


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :56]
    ref = (40 + 300 * ((xx - 28) ** 2 + (yy - 24) ** 2 < 100) - 500 * (xx < 8)).astype(np.float32)
    return (ref + rng.normal(0, 60, ref.shape)).astype(np.float32), ref


def test_plain_arrays_agree_with_skimage(pair) -> None:
    x, ref = pair
    dr = 1400.0
    assert psnr(x, ref, data_range=dr, window=None) == pytest.approx(
        peak_signal_noise_ratio(ref.astype(float), x.astype(float), data_range=dr), rel=1e-10
    )
    assert ssim(x, ref, data_range=dr, window=None) == pytest.approx(
        structural_similarity(x.astype(float), ref.astype(float), data_range=dr), rel=1e-10
    )
    assert rmse(x, ref) == pytest.approx(np.sqrt(mean_squared_error(ref.astype(float), x.astype(float))))


def test_window_clips_then_uses_window_width(pair) -> None:
    x, ref = pair
    lo, hi = METRIC_WINDOW
    xc, rc = np.clip(x, lo, hi).astype(float), np.clip(ref, lo, hi).astype(float)
    assert psnr(x, ref) == pytest.approx(peak_signal_noise_ratio(rc, xc, data_range=hi - lo))
    assert ssim(x, ref) == pytest.approx(structural_similarity(xc, rc, data_range=hi - lo))
    assert rmse(x, ref, window=(lo, hi)) == pytest.approx(np.sqrt(np.mean((xc - rc) ** 2)))
    # hand case: constant error of 20 HU inside the window, range 400 -> 20 log10(400 / 20)
    a = np.zeros((16, 16), np.float32)
    assert psnr(a + 20, a) == pytest.approx(20 * np.log10(20.0))
    assert psnr(a, a) == np.inf and rmse(a + 3, a) == pytest.approx(3.0)
    # errors outside the window do not count: both clip to 240
    assert psnr(a + 2000, a + 1000) == np.inf


def test_volumes_are_mean_over_slices(pair) -> None:
    x, ref = pair
    vol_x = np.stack([x, x + 10, ref])
    vol_r = np.stack([ref, ref, ref])
    assert psnr(vol_x[:2], vol_r[:2]) == pytest.approx(np.mean([psnr(x, ref), psnr(x + 10, ref)]))
    assert ssim(vol_x, vol_r) == pytest.approx(np.mean([ssim(x, ref), ssim(x + 10, ref), 1.0]))
    assert rmse(vol_x, vol_r) == pytest.approx(np.mean([rmse(x, ref), rmse(x + 10, ref), 0.0]))


def test_masked_ssim_averages_the_map_inside_the_mask(pair) -> None:
    x, ref = pair
    dr = 400.0
    xc, rc = np.clip(x, *METRIC_WINDOW).astype(float), np.clip(ref, *METRIC_WINDOW).astype(float)
    _, smap = structural_similarity(xc, rc, data_range=dr, full=True)
    mask = np.zeros(x.shape, bool)
    mask[10:30, 20:40] = True
    assert ssim(x, ref, mask=mask) == pytest.approx(smap[mask].mean())
    with pytest.raises(ValueError, match="no pixels"):
        ssim(x, ref, mask=np.zeros(x.shape, bool))


def test_region_metrics_per_box(pair) -> None:
    x, ref = pair
    x = x.copy()
    x[20:30, 10:20] = ref[20:30, 10:20] + 50.0  # a clean region with a constant +50 HU error
    res = region_metrics(x, ref, np.array([[10.0, 20.0, 20.0, 30.0], [30.2, 5.0, 40.0, 15.6]]), margin=0)
    assert len(res) == 2 and res[0]["n_pixels"] == 100
    assert res[0]["rmse"] == pytest.approx(50.0)
    inside = np.clip(ref[20:30, 10:20], *METRIC_WINDOW)
    expected = np.clip(inside + 50, *METRIC_WINDOW) - inside
    assert res[0]["psnr"] == pytest.approx(10 * np.log10(400.0**2 / np.mean(expected**2)))
    # pixel centres inside [30.2, 40) x [5, 15.6): columns 30..39, rows 5..15
    assert res[1]["n_pixels"] == 10 * 11
    rows, cols = slice(5, 16), slice(30, 40)
    assert res[1]["rmse"] == pytest.approx(np.sqrt(np.mean((x[rows, cols] - ref[rows, cols]).astype(float) ** 2)))
    mask = np.zeros(x.shape, bool)
    mask[rows, cols] = True
    assert res[1]["ssim"] == pytest.approx(ssim(x, ref, mask=mask))
    # margin grows the region; 3D boxes carry the slice index
    assert region_metrics(x, ref, [[10, 20, 20, 30]], margin=2)[0]["n_pixels"] == 14 * 14
    vol = region_metrics(np.stack([ref, x]), np.stack([ref, ref]), [[1, 10, 20, 20, 30], [0, 10, 20, 20, 30]])
    assert vol[0]["rmse"] == pytest.approx(50.0) and vol[1]["rmse"] == 0.0 and vol[1]["psnr"] == np.inf


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(np.zeros((8, 8)), np.zeros((8, 9)))
    with pytest.raises(ValueError, match="covers no pixel"):
        region_metrics(np.zeros((8, 8)), np.zeros((8, 8)), [[20, 20, 30, 30]])
