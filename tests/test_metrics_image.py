"""PSNR / SSIM / RMSE in HU against skimage.metrics and hand computations; per-lesion region metrics."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from napari_lidnet.metrics.image import METRIC_WINDOW, psnr, rmse, slice_quality, ssim


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
    assert rmse(x, ref, window=None) == pytest.approx(np.sqrt(mean_squared_error(ref.astype(float), x.astype(float))))


def test_window_clips_then_uses_window_width(pair) -> None:
    x, ref = pair
    lo, hi = METRIC_WINDOW
    xc, rc = np.clip(x, lo, hi).astype(float), np.clip(ref, lo, hi).astype(float)
    assert psnr(x, ref) == pytest.approx(peak_signal_noise_ratio(rc, xc, data_range=hi - lo))
    assert ssim(x, ref) == pytest.approx(structural_similarity(xc, rc, data_range=hi - lo))
    assert rmse(x, ref) == pytest.approx(np.sqrt(np.mean((xc - rc) ** 2)))
    assert psnr(x, ref) == pytest.approx(20 * np.log10((hi - lo) / rmse(x, ref)))  # one rule for both
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
    # one slice equal to its reference (air only) must not make the volume's PSNR inf; it has no error to
    # measure and is left out of the mean, in the volume and in a list of slices of other sizes alike
    expected = np.mean([psnr(x, ref), psnr(x + 10, ref)])
    assert psnr(vol_x, vol_r) == pytest.approx(expected)
    air = np.full((20, 20), -1000.0)
    quality = slice_quality([x, x + 10, air + np.random.default_rng(1).normal(0, 30, air.shape)], [ref, ref, air])
    assert quality["psnr"] == pytest.approx(expected)
    assert quality["ssim"] == pytest.approx(np.mean([ssim(x, ref), ssim(x + 10, ref), 1.0]))
    assert psnr(vol_r, vol_r) == np.inf and np.isnan(slice_quality([], [])["psnr"])


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


def test_images_that_are_not_hu_are_warned_about_in_a_window_of_hu() -> None:
    """PSNR of HU / 1000 images inside the soft-tissue window read 97.6 dB (nothing clipped, the window's 400 HU
    as the data range): said, pointing at the caller's line; window=None measures them on their own range."""
    import warnings

    rng = np.random.default_rng(3)
    ref = rng.normal(40.0, 30.0, (32, 32)) / 1000.0
    noisy = ref + rng.normal(0.0, 0.02, ref.shape)
    with pytest.warns(UserWarning, match=r"the reference's values \(all within \+-4\) are not HU") as said:
        psnr(noisy, ref)
    assert said[0].filename == __file__
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("default")  # Python's own: once per caller's line and message
        for _ in range(3):
            slice_quality(np.stack([noisy] * 4), np.stack([ref] * 4))
    assert len(said) == 1  # the same words for every slice: said once, not per slice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert psnr(noisy, ref, window=None) < 40.0  # on their own range: the noise is large
        psnr(noisy * 1000.0, ref * 1000.0)  # the same in HU: nothing to say
