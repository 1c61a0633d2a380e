"""Denoising strength (``strength.keep_noise``): remove a stated noise SD, keep the rest, against the closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_lidnet.inference import InferenceSettings, denoise
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr
from napari_lidnet.metrics.noreference import NOISE_BLOCK, flat_block_noise_sds, noise_sd
from napari_lidnet.models.registry import load_model
from napari_lidnet.sim.lowdose import simulate_low_dose
from napari_lidnet.sim.phantom import make_phantom
from napari_lidnet.strength import (
    blend_weight,
    check_remove_sd,
    check_strength,
    keep_noise,
    leave_noise,
    residual_sd,
    total_noise_sd,
)


def body_image(size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """A smooth soft-tissue ellipse in air, and its mask."""
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.4 * size)) ** 2 < 1
    clean = np.where(body, 40.0 + 30.0 * np.sin(xx / 9.0) * np.cos(yy / 13.0), -1000.0).astype(np.float32)
    return clean, body


def fbp_like_noise(rng: np.random.Generator, shape: tuple[int, int], sd: float) -> np.ndarray:
    """Correlated noise of SD ``sd`` (white noise through a Gaussian, rescaled)."""
    n = ndimage.gaussian_filter(rng.normal(size=shape), 1.0)
    return (sd * n / n.std()).astype(np.float32)


def test_wiener_blend_reaches_the_closed_form_optimum() -> None:
    """With the clean image as the denoised one, the blend's error is var_r var_i / (var_r + var_i) (the Wiener
    optimum for reference noise r kept and inserted noise i removed), below both the input's and the clean image's."""
    rng = np.random.default_rng(0)
    clean, body = body_image()
    sd_ref, sd_ins = 20.0, 10.0
    ref = clean + fbp_like_noise(rng, clean.shape, sd_ref)
    low = ref + fbp_like_noise(rng, clean.shape, sd_ins)
    out = keep_noise(low, clean, sd_ins)
    mse = float(np.mean((out - ref)[body] ** 2))
    optimum = sd_ref**2 * sd_ins**2 / (sd_ref**2 + sd_ins**2)  # 80 HU^2
    assert mse == pytest.approx(optimum, rel=0.05)
    assert mse < 0.85 * np.mean((low - ref)[body] ** 2)  # 100: the input
    assert mse < 0.25 * np.mean((clean - ref)[body] ** 2)  # 400: removing everything


def test_total_noise_counts_what_the_network_left_in() -> None:
    """A "denoiser" that leaves the smoothest part of the noise in: the residual holds less than the noise, the
    input/residual ratio in flat blocks brings the estimate back to the noise's SD, and the weight follows it."""
    rng = np.random.default_rng(3)
    clean, body = body_image()
    noise = rng.normal(0.0, 20.0, clean.shape).astype(np.float32)
    left_in = ndimage.gaussian_filter(noise, 1.5)
    low, denoised = clean + noise, clean + left_in
    assert residual_sd(low, denoised) < 0.95 * 20.0
    assert total_noise_sd(low, denoised) == pytest.approx(float(noise[body].std()), rel=0.05)
    kept = (keep_noise(low, denoised, 10.0) - denoised)[body] / (low - denoised)[body]
    assert np.median(kept) == pytest.approx(blend_weight(10.0, total_noise_sd(low, denoised)), abs=1e-3)


def test_limits_none_zero_and_more_than_the_residual() -> None:
    rng = np.random.default_rng(1)
    clean, _ = body_image(96)
    low = clean + fbp_like_noise(rng, clean.shape, 15.0)
    assert keep_noise(low, clean, None) is clean
    np.testing.assert_allclose(keep_noise(low, clean, 0.0), low, atol=1e-4)
    np.testing.assert_array_equal(keep_noise(low, clean, 50.0), clean)  # asks more than there is: all of it
    assert blend_weight(5.0, float("nan")) == 0.0 and blend_weight(5.0, 10.0) == pytest.approx(0.75)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="noise SD to remove"):
            check_remove_sd(bad)


def test_each_slice_gets_its_own_weight() -> None:
    """A volume is blended slice by slice: a noisier slice keeps more of its residual for the same SD removed."""
    rng = np.random.default_rng(2)
    clean, body = body_image(96)
    den = np.stack([clean, clean])
    low = np.stack([clean + fbp_like_noise(rng, clean.shape, 12.0), clean + fbp_like_noise(rng, clean.shape, 24.0)])
    out = keep_noise(low, den, 10.0)
    sds = [np.std((low[k] - clean)[body]) for k in range(2)]  # about 12 and 24
    kept = [np.std((out[k] - clean)[body]) / sds[k] for k in range(2)]
    np.testing.assert_allclose(kept, [1 - (10 / sds[0]) ** 2, 1 - (10 / sds[1]) ** 2], rtol=0.03)
    assert kept[1] > 2.5 * kept[0]
    np.testing.assert_allclose(out[1], keep_noise(low[1], den[1], 10.0))


def test_shipped_denoiser_told_the_sd_keeps_a_noisy_references_noise() -> None:
    """A noisy normal-dose scan with a little noise inserted: removing all the noise moves the image away from its
    reference (the reference's own noise is gone); told the inserted SD, the shipped denoiser is about as close as
    the input and much closer than when blind."""
    phantom = make_phantom(3, kind="abdomen", size=256)
    hu, px = phantom.hu, phantom.spacing_mm
    ref = simulate_low_dose(hu, 0.05, px, seed=1)  # a noisy normal-dose scan: about 14 HU
    low = simulate_low_dose(ref, 0.5, px, seed=2)  # plus about 3 HU
    body = hu > -500
    sd_ins = float(np.std((low - ref)[body]))
    model, _ = load_model("default", "denoiser")
    blind = denoise(model, low, batch_size=1)
    told = denoise(model, low, batch_size=1, remove_sd=sd_ins)
    np.testing.assert_allclose(told[body], keep_noise(low, blind, sd_ins)[body], atol=1e-3)  # air: held at -1024
    scores = {name: psnr(img, ref, window=METRIC_WINDOW) for name, img in (("low", low), ("blind", blind),
                                                                         ("told", told))}  # fmt: skip
    assert scores["told"] > scores["blind"] + 5.0, scores  # 46.8 vs 37.8 dB
    assert scores["told"] > scores["low"] - 0.3, scores  # 46.8 vs 46.7 dB


def test_the_sd_is_part_of_the_cache_key() -> None:
    assert InferenceSettings(remove_sd=10.0).key() != InferenceSettings().key()


def test_a_told_model_is_given_the_sd_instead_of_a_blend() -> None:
    """A told unet (FFDNet-style) gets the SD as its input: the product's told output is the network's told one, not
    the blind output with residual put back; blind and "remove 0" are as for any model."""
    from napari_lidnet.models.denoisers import UNetDenoiser
    from napari_lidnet.models.normalize import hu_to_net, net_to_hu

    torch.manual_seed(3)
    model = UNetDenoiser(width=4, levels=2, told=True).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    clean, _ = body_image(64)
    low = (clean + fbp_like_noise(np.random.default_rng(4), clean.shape, 15.0)).astype(np.float32)

    def net(sd: float | None) -> np.ndarray:
        with torch.no_grad():
            return net_to_hu(model(hu_to_net(torch.from_numpy(low)[None, None]), remove_sd=sd))[0, 0].numpy()
    told = denoise(model, low, batch_size=1, amp=False, remove_sd=10.0)
    body = low > -1000
    np.testing.assert_allclose(told[body], net(10.0)[body], atol=1e-3)
    blind = denoise(model, low, batch_size=1, amp=False)
    assert np.abs(told - keep_noise(low, blind, 10.0))[body].max() > 1.0  # not the blend
    np.testing.assert_allclose(blind[body], net(None)[body], atol=1e-3)
    np.testing.assert_array_equal(denoise(model, low, batch_size=1, remove_sd=0.0), low)


def test_leaving_a_noise_sd_shows_that_sd_in_flat_tissue() -> None:
    """Regression: on a real chest the default took flat tissue from 58.7 to 4 HU of noise, a waxy image
    a reader may not accept. ``leave_sd`` blends the input back so that the output's flat tissue shows that SD, as
    the Denoise dock reads it (``noise_sd``), slice by slice; at or above the input's noise, the input itself."""
    rng = np.random.default_rng(4)
    model, _ = load_model("default", "denoiser")
    abdomen = np.clip(make_phantom(3, "abdomen", size=192).hu, -1024, 3000).astype(np.float32)
    clean, _ = body_image(192)
    low = np.stack([abdomen + fbp_like_noise(rng, abdomen.shape, 40.0), clean + fbp_like_noise(rng, clean.shape, 25.0)])
    blind = denoise(model, low, batch_size=1)
    assert all(noise_sd(blind[k]) < 7.0 for k in range(2)), [noise_sd(b) for b in blind]  # all the noise removed
    for leave in (8.0, 15.0):
        out = denoise(model, low, batch_size=1, leave_sd=leave)
        tissue = low > -500  # air is held at -1024 by the product, as for every strength
        np.testing.assert_allclose(out[tissue], leave_noise(low, blind, leave)[tissue], atol=1e-3)
        for k in range(2):
            assert noise_sd(out[k]) == pytest.approx(leave, rel=0.15), (k, leave, noise_sd(out[k]))
    np.testing.assert_allclose(leave_noise(low, blind, 500.0), low, atol=1e-3)  # more than there is: the input
    np.testing.assert_allclose(leave_noise(low, blind, 0.0), blind, atol=1e-4)  # none left: the denoised image
    assert leave_noise(low, blind, None) is blind
    assert InferenceSettings(leave_sd=10.0).key() != InferenceSettings(remove_sd=10.0).key()
    with pytest.raises(ValueError, match="not both"):
        check_strength(5.0, 10.0)
    with pytest.raises(ValueError, match="noise SD to leave must be"):
        denoise(model, low[0], leave_sd=-1.0)


def test_a_slice_without_body_keeps_the_strength_asked_for() -> None:
    """Regression: on a crop of lung alone (nothing above -500 HU) the residual's SD was NaN, and removing
    1 HU of 30 removed all the noise, as did leaving 10 HU. The field of view stands in for the body there."""
    rng = np.random.default_rng(2)
    den = np.full((128, 128), -850.0, np.float32)
    low = den + fbp_like_noise(rng, den.shape, 30.0)
    for vessels in (0, 1, 9):  # review: a vessel pixel above -500 HU was "the body", its SDs 0: all noise removed
        den[40 : 40 + vessels, 60] = low[40 : 40 + vessels, 60] = 40.0
        assert residual_sd(low, den) == pytest.approx(30.0, rel=0.05)
        slight = keep_noise(low, den, 1.0)
        assert np.std(slight - low) < 0.05 * np.std(low - den)  # removing 1 HU of 30 changes the slice slightly
        assert np.std(keep_noise(low, den, 20.0) - den) == pytest.approx(np.sqrt(30**2 - 20**2) ** 2 / 30, rel=0.1)
        left = leave_noise(low, den, 10.0)  # read as the leave target is defined: the flattest 8-px blocks
        read = flat_block_noise_sds(low, [left], NOISE_BLOCK, (-1200.0, 4000.0), low > -1200)[0]
        assert read == pytest.approx(10.0, rel=0.1)
    padding = np.full((64, 64), -3024.0, np.float32)  # outside the field of view only: nothing to measure
    assert np.isnan(residual_sd(padding, padding))
