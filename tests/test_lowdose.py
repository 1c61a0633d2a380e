"""Projector and low-dose simulation: geometry against formulas and skimage, noise against 1/sqrt(dose)."""

import math

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from napari_lidnet.sim import lowdose, projector
from napari_lidnet.sim.lowdose import simulate_low_dose, simulate_pair

N = 128


def _disk(size: int, radius: float, value: float = 1.0, background: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.where(xx**2 + yy**2 <= radius**2, value, background).astype(np.float32)


def _aa_disk(size: int, radius: float, sub: int = 8) -> np.ndarray:
    """Disk with exact-ish partial-pixel coverage (8 x 8 supersampling)."""
    off = (np.arange(sub) + 0.5) / sub - 0.5
    yy, xx = np.mgrid[:size, :size] - size // 2
    cov = np.zeros((size, size), np.float32)
    for dy in off:
        for dx in off:
            cov += ((xx + dx) ** 2 + (yy + dy) ** 2 <= radius**2) / sub**2
    return cov


def _smooth_phantom(size: int) -> np.ndarray:
    """Sum of Gaussian blobs: smooth enough for FBP to reproduce it closely."""
    yy, xx = np.mgrid[:size, :size] - size // 2
    img = np.zeros((size, size), np.float32)
    for cx, cy, s, a in [(0, 0, 0.25, 1.0), (-0.15, 0.1, 0.08, 0.5), (0.2, -0.1, 0.06, -0.4)]:
        img += a * np.exp(-((xx - cx * size) ** 2 + (yy - cy * size) ** 2) / (2 * (s * size) ** 2))
    return img


def test_forward_of_disk_is_chord_length():
    r, px = 40.0, 0.5
    sino = projector.forward_project(torch.from_numpy(_aa_disk(N, r)), pixel_mm=px).numpy()
    n_det = projector.detector_bins(N)
    t = np.arange(n_det) - n_det // 2
    chord = 2 * np.sqrt(np.clip(r**2 - t**2, 0, None)) * px
    inner = np.abs(t) < r - 2
    # every view sees the same chord (relative error small away from the tangent rays)
    assert sino.shape == (projector.default_n_angles(N), n_det)
    # (one-pixel sampling along the ray: each end of the chord is within half a pixel)
    assert np.abs(sino[:, inner] - chord[inner]).max() < 1.0 * px
    assert np.abs(sino[:, inner].mean(0) / chord[inner] - 1).max() < 0.005
    assert np.all(sino[:, np.abs(t) > r + 2] == 0)


def test_forward_matches_skimage_radon():
    img = _smooth_phantom(N)
    img[_disk(N, N / 2) == 0] = 0
    n_angles = 60
    geo = projector.get_geometry(N, n_angles, "cpu")
    ref = radon(img, geo.angles_deg.numpy(), circle=False).T  # (angles, ceil(N sqrt 2))
    for circle in (True, False):
        ours = projector.forward_project(torch.from_numpy(img), 1.0, n_angles, circle=circle).numpy()
        ours = ours[:, : ref.shape[1]]
        assert np.abs(ours - ref).max() < 1e-3 * np.abs(ref).max()


def test_fbp_matches_skimage_iradon_and_reproduces_image():
    img = _smooth_phantom(N)
    sino = projector.forward_project(torch.from_numpy(img), 1.0, circle=False)
    rec = projector.fbp(sino, N, 1.0, "ram-lak").numpy()
    geo = projector.get_geometry(N, sino.shape[0], "cpu")
    ref = iradon(sino.numpy()[:, :-1].T, geo.angles_deg.numpy(), output_size=N, filter_name="ramp", circle=False)
    assert np.sqrt(np.mean((rec - ref) ** 2)) < 1e-3 * img.max()
    interior = _disk(N, 0.4 * N) > 0
    contrast = img.max() - img.min()
    assert np.sqrt(np.mean((rec - img)[interior] ** 2)) < 0.01 * contrast


def test_fbp_scale_in_mm():
    """A disk of mu = 0.02 /mm reconstructs to 0.02 whatever the pixel size."""
    for px in (0.5, 2.0):
        sino = projector.forward_project(torch.from_numpy(_disk(N, 40, 0.02)), px)
        rec = projector.fbp(sino, N, px, "shepp-logan", circle=True).numpy()
        assert abs(rec[_disk(N, 30) > 0].mean() - 0.02) < 2e-4


def test_projector_batches_and_filters():
    imgs = torch.from_numpy(np.stack([_disk(64, 20), _smooth_phantom(64)]))
    batch = projector.forward_project(imgs, 1.0)
    single = projector.forward_project(imgs[1], 1.0)
    assert torch.allclose(batch[1], single, atol=1e-5)
    assert projector.get_geometry(64, batch.shape[1], "cpu") is projector.get_geometry(64, batch.shape[1], "cpu")
    responses = {f: projector.ramp_filter(91, f, "cpu") for f in projector.FILTERS}
    assert abs(float(responses["ram-lak"][-1]) - 0.5) < 0.01  # |f| at Nyquist
    assert float(responses["hann"][-1]) < 1e-3
    with pytest.raises(ValueError, match="unknown FBP filter"):
        projector.ramp_filter(91, "butterworth", "cpu")


# --------------------------------------------------------------------------------------- low-dose physics
def _water(n: int = 3, size: int = N, radius: float = 0.42) -> np.ndarray:
    return np.stack([_disk(size, radius * size, 0.0, -1000.0)] * n)


def _roi_sd(img: np.ndarray, size: int = N) -> tuple[float, float]:
    roi = _disk(size, 0.25 * size) > 0
    vals = img[..., roi]
    return float(vals.std()), float(vals.mean())


def _noise_sd(a: np.ndarray, b: np.ndarray, size: int = N) -> float:
    """Noise SD from two independent realisations (removes the deterministic FBP structure)."""
    return _roi_sd(a - b, size)[0] / math.sqrt(2)


def test_noise_grows_as_inverse_sqrt_dose_and_mean_is_kept():
    phantom = _water()
    sds = {}
    for dose in (1.0, 0.5, 0.25, 0.1):
        full, low = simulate_pair(phantom, dose, 0.8, seed=3)
        _, low2 = simulate_pair(phantom, dose, 0.8, seed=4)
        sds[dose] = _noise_sd(low, low2)
        mean = _roi_sd(low)[1]
        assert abs(mean) < 3.0, f"dose {dose}: mean HU {mean}"
        assert abs(_roi_sd(full)[1]) < 3.0
    assert 2 < sds[1.0] < 60
    for dose in (0.5, 0.25, 0.1):
        ratio = sds[dose] / sds[1.0]
        assert abs(ratio * math.sqrt(dose) - 1) < 0.1, (dose, ratio)


def test_noise_insertion_matches_direct_simulation():
    """A full-dose scan made low-dose by noise insertion has the noise of a direct low-dose scan."""
    phantom = _water()
    full, low_a = simulate_pair(phantom, 0.25, 0.8, seed=1)
    _, low_b = simulate_pair(phantom, 0.25, 0.8, seed=2)
    full2, _ = simulate_pair(phantom, 0.25, 0.8, seed=3)
    ins_a = simulate_low_dose(full, 0.25, 0.8, seed=4)
    ins_b = simulate_low_dose(full2, 0.25, 0.8, seed=5)
    assert abs(_noise_sd(ins_a, ins_b) / _noise_sd(low_a, low_b) - 1) < 0.1
    assert abs(_roi_sd(ins_a)[1]) < 3.0
    assert np.array_equal(ins_a[:, 0, 0], full[:, 0, 0])  # outside the FOV circle: unchanged


def test_seeded_and_shapes():
    phantom = _water(1)[0]
    a = simulate_low_dose(phantom, 0.3, 1.0, seed=7)
    b = simulate_low_dose(phantom, 0.3, 1.0, seed=7)
    c = simulate_low_dose(phantom, 0.3, 1.0, seed=8)
    assert a.dtype == np.float32 and a.shape == phantom.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    vol = simulate_low_dose(np.stack([phantom, phantom]), 0.3, 1.0, seed=7, batch_size=1)
    assert np.array_equal(vol[0], a)  # per-slice seeds: batching does not change results
    assert np.array_equal(simulate_low_dose(phantom, 1.0, 1.0), phantom)


def test_electronic_noise_matters_at_very_low_dose():
    """Thick water (30 cm) at 1% dose: few photons per ray, so electronic noise adds visibly to the noise."""
    phantom = _water(2, 64)
    common = dict(dose=0.01, spacing_mm=5.0, seed=5, i0=2e5)
    _, with_e = simulate_pair(phantom, electronic_noise=lowdose.ELECTRONIC_NOISE_VAR * 10, **common)
    _, without = simulate_pair(phantom, electronic_noise=0.0, **common)
    assert _roi_sd(with_e, 64)[0] > 1.15 * _roi_sd(without, 64)[0]
    _, normal = simulate_pair(phantom, dose=1.0, spacing_mm=5.0, seed=5, i0=2e5)
    _, normal_e = simulate_pair(phantom, dose=1.0, spacing_mm=5.0, seed=5, i0=2e5, electronic_noise=0.0)
    assert abs(_roi_sd(normal, 64)[0] / _roi_sd(normal_e, 64)[0] - 1) < 0.05


@pytest.mark.parametrize("dose", [0.0, -0.1, 1.5, float("nan"), "a lot"])
def test_dose_is_validated(dose):
    with pytest.raises(ValueError, match="dose"):
        simulate_low_dose(np.zeros((32, 32), np.float32), dose, 1.0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="square"):
        simulate_low_dose(np.zeros((32, 40), np.float32), 0.5, 1.0)
    with pytest.raises(ValueError, match="slice"):
        simulate_pair(np.zeros((2, 2, 32, 32), np.float32), 0.5, 1.0)
