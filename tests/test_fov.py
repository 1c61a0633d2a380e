"""Padding outside the scanner's field of view: found, given to the networks as air, put back unchanged."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_lidnet._training.adapt_data import prepare_adapt
from napari_lidnet.inference import denoise, detect
from napari_lidnet.io.fov import AIR_HU, fill_padding, padding_mask
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.models.registry import load_model

SIZE = 128


def _slice(seed: int = 0, fov_radius: float = 60.0, pad: float = -3024.0) -> tuple[np.ndarray, np.ndarray]:
    """(image, outside): a body wider than the reconstruction circle (soft tissue 40 HU with a 100 HU organ and
    fat, FBP-like correlated noise of SD ~25 HU), ``pad`` outside a circle of ``fov_radius`` px."""
    yy, xx = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2
    img = np.full((SIZE, SIZE), 40.0)
    img[((yy + 15) / 20) ** 2 + ((xx - 10) / 25) ** 2 < 1] = 100.0
    img[(yy / 12) ** 2 + ((xx + 30) / 10) ** 2 < 1] = -100.0
    noise = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(img.shape), 0.7) * 25 / 0.4
    outside = np.hypot(yy, xx) > fov_radius
    img = (img + noise).astype(np.float32)
    img[outside] = pad
    return img, outside


def test_padding_is_what_lies_far_below_air_at_the_border_and_nothing_else():
    img, outside = _slice()
    np.testing.assert_array_equal(padding_mask(img), outside)
    assert padding_mask(_slice(pad=-2048.0)[0]).sum() == outside.sum()
    rng = np.random.default_rng(1)
    smeared = img.copy()  # a lossy file: the fill becomes a range of values, ringing across the circle's edge
    smeared[outside] += rng.normal(0, 60, outside.sum()).astype(np.float32)
    np.testing.assert_array_equal(padding_mask(smeared), outside)
    noisy_air = np.round(rng.normal(-1000, 70, (SIZE, SIZE))).astype(np.float32)  # air at a very low dose
    assert (noisy_air < -1200).any() and padding_mask(noisy_air) is None
    assert padding_mask(np.maximum(noisy_air, -1024.0)) is None  # scanners that clip air at -1024 HU
    streak = np.full((SIZE, SIZE), 40.0, np.float32)
    streak[60:64, 10:118] = -1500.0  # a photon-starvation streak inside the body: not padding
    assert padding_mask(streak) is None
    joined = img.copy()  # a dark streak through the body that runs out to the fill: the streak stays image
    body = ~outside & (np.hypot(*(np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2)) < 50)
    joined[62:65, :80] = -1500.0
    mask = padding_mask(joined)
    assert not (mask & body).any() and mask[outside].all()
    wide, wide_outside = _slice(fov_radius=66.0)  # the circle crosses the image's edges: the fill tapers to slivers
    np.testing.assert_array_equal(padding_mask(wide), wide_outside)
    tiny = np.full((8, 8), -1000.0, np.float32)
    tiny[0, 0] = -1250.0  # one noisy corner pixel of a tiny image is not a fill
    assert padding_mask(tiny) is None
    few = np.full((SIZE, SIZE), 40.0, np.float32)
    few[0, :40] = -3024.0  # 40 px of 16384 (0.24%): too few to be a fill
    assert padding_mask(few) is None
    stack = np.stack([img, noisy_air])
    filled, masks = fill_padding(stack)
    assert masks[1] is None and (filled[0][outside] == AIR_HU).all() and (filled[1] == noisy_air).all()
    assert (stack[0][outside] == -3024.0).all()  # the input is not touched
    plain = noisy_air[None]
    assert fill_padding(plain)[0] is plain  # no copy when nothing is padded


@pytest.mark.parametrize("pad", [-3024.0, -2048.0])
def test_the_shipped_denoiser_sees_air_where_the_scanner_padded(pad):
    """A body cut by the reconstruction circle: near the edge, inside it, the denoised image is the one that air
    outside would give (the raw network rings the 2000 HU step tens of HU into the tissue); the padding comes back
    exactly; the detector centres no box on it."""
    model = load_model("default", "denoiser")[0]
    img, outside = _slice(pad=pad)
    air = img.copy()
    air[outside] = AIR_HU
    out = denoise(model, img)
    ref = denoise(model, air)
    r = np.hypot(*(np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2))
    rim = (r > 56) & ~outside
    assert np.abs(out[rim] - ref[rim]).max() < 0.01
    assert (out[outside] == pad).all()
    import torch

    from napari_lidnet.models.normalize import hu_to_net, net_to_hu

    with torch.inference_mode():  # what the network alone makes of the padding: the reason for all this
        raw = net_to_hu(model(torch.from_numpy(hu_to_net(img))[None, None]))[0, 0].numpy()
    assert np.abs(raw[rim] - ref[rim]).mean() > 5 * max(np.abs(out[rim] - ref[rim]).mean(), 0.1)
    boxes = detect(load_model("default", "detector")[0], np.stack([img, air]))
    centres = ((boxes[:, 2] + boxes[:, 4]) / 2).astype(int), ((boxes[:, 1] + boxes[:, 3]) / 2).astype(int)
    assert not outside[centres][boxes[:, 0] == 0].any()


def test_self_supervised_adaptation_trains_on_air_not_on_padding():
    stack = np.stack([_slice(seed=s)[0] for s in range(4)])
    data = prepare_adapt(CTVolume(stack, (2.5, 0.8, 0.8), name="padded"), "neighbours", patch_size=32)
    assert data.stacks[0].min() >= AIR_HU - 1e-3 and (data.stacks[0][:, _slice()[1]] == AIR_HU).all()
