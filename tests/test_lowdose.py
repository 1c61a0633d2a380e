"""Projector and low-dose simulation: geometry against formulas and skimage, noise against 1/sqrt(dose)."""

import math

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from napari_lidnet.metrics.nps import angular_excess
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


def test_clean_full_is_the_noiseless_reconstruction_and_keeps_the_low_dose_draw():
    """``clean_full``: the full-dose image has no noise (two seeds give the same image, the same as a scan with a
    billion times the photons, and a noisy full-dose scan differs from it by exactly its noise), while the low-dose
    image is the noisy-target pair's, bit for bit."""
    phantom = _water(2)
    full, low = simulate_pair(phantom, 0.25, 0.8, seed=3)
    clean, low_c = simulate_pair(phantom, 0.25, 0.8, seed=3, clean_full=True)
    clean2, low_c2 = simulate_pair(phantom, 0.25, 0.8, seed=4, clean_full=True)
    assert np.array_equal(low_c, low) and not np.array_equal(low_c2, low)
    assert np.array_equal(clean, clean2)
    bright, _ = simulate_pair(phantom, 0.25, 0.8, seed=5, i0=lowdose.I0_DEFAULT * 1e9, electronic_noise=0.0)
    assert np.abs(clean - bright).max() < 0.5
    full2, _ = simulate_pair(phantom, 0.25, 0.8, seed=6)
    # full - clean is the full-dose noise alone: its SD is the one two independent full-dose draws show
    assert abs(_roi_sd(full - clean)[0] / _noise_sd(full, full2) - 1) < 0.1 and abs(_roi_sd(clean)[1]) < 3.0


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
        simulate_pair(np.zeros((32, 40), np.float32), 0.5, 1.0)
    with pytest.raises(ValueError, match="at least 16 pixels, got 12 x 40"):
        simulate_low_dose(np.zeros((12, 40), np.float32), 0.5, 1.0)


def test_a_cropped_scan_is_simulated_centred_in_air_on_a_square():
    """Regression: non-square slices (a cropped NIfTI, 167 x 233) were refused ("slices must be square for the
    projector"). Centred in air on the square of the longer side they get the noise the same water ellipse gets in a
    square image, in place: the body's mean kept, corners outside the scanner's circle untouched."""
    yy, xx = np.mgrid[:64, :96]
    body = ((yy - 31.5) / 26) ** 2 + ((xx - 47.5) / 40) ** 2 < 1
    crop = np.where(body, 0.0, -1000.0).astype(np.float32)
    square = np.full((96, 96), -1000.0, np.float32)
    square[16:80] = crop
    low = simulate_low_dose(crop, 0.25, 0.8, seed=2)
    other = simulate_low_dose(square, 0.25, 0.8, seed=3)[16:80]
    assert low.shape == crop.shape and abs(float(np.mean(low[body]))) < 3.0
    assert np.std(low[body]) == pytest.approx(np.std(other[body]), rel=0.1) and np.std(low[body]) > 2.0
    assert low[0, 0] == crop[0, 0] and low[-1, -1] == crop[-1, -1]
    with pytest.raises(ValueError, match="slice"):
        simulate_pair(np.zeros((2, 2, 32, 32), np.float32), 0.5, 1.0)


# --------------------------------------------------------------------------------------- fast path
def test_coarse_projection_tracks_the_full_one():
    """``forward_project_coarse`` + ``resample_sinogram`` give the line integrals to a few % of their range."""
    img = torch.from_numpy(_smooth_phantom(N) * (_disk(N, N / 2 - 2) > 0))
    full = projector.forward_project(img, 0.7)
    n = full.shape[0]
    for step in (1, 2, 4):
        coarse = projector.forward_project_coarse(img, 0.7, n, step)
        assert coarse.shape[0] == projector.coarse_views(n, step)
        theta = (torch.arange(n, dtype=torch.float64) + 0.5 * (step > 1)) * (math.pi / n)
        back = projector.resample_sinogram(coarse, step, theta, full.shape[1])
        if step > 1:  # compare at the shifted views against a fresh projection there
            ref = projector.forward_project(img, 0.7, 2 * n)[1::2]
        else:
            ref = full
        err = (back - ref).abs()
        assert err.mean() < 0.01 * step * ref.max() and err.max() < 0.1 * ref.max(), (step, err.mean(), err.max())
    down = projector.downsample(torch.from_numpy(_disk(N + 1, 20)), 2)  # odd size: centre pixel stays the centre
    assert down.shape[-1] % 2 == 1 and torch.allclose(down, down.flip(0)) and torch.allclose(down, down.T)
    with pytest.raises(ValueError, match="view angles"):
        projector.resample_sinogram(coarse, 4, torch.tensor([-1.0]), full.shape[1])


def test_half_offset_back_projection():
    """FBP with views at (k + 1/2) pi / n: the symmetric path equals the direct one and reconstructs the image."""
    img = _smooth_phantom(N) * (_disk(N, N / 2) > 0)
    n = 208
    odd = projector.forward_project(torch.from_numpy(img), 1.0, 2 * n)[1::2]
    rec = projector.fbp(odd, N, 1.0, "ram-lak", circle=True, offset=0.5)
    q = projector.filter_sinogram(odd[None], "ram-lak")
    direct = projector.back_project(q, N, circle=False, offset=0.5)[0] * (math.pi / n)
    inside = projector.circle_mask(N, "cpu") > 0
    assert torch.allclose(rec[inside], direct[inside], atol=1e-5)
    interior = _disk(N, 0.4 * N) > 0
    assert np.sqrt(np.mean((rec.numpy() - img)[interior] ** 2)) < 0.01 * (img.max() - img.min())
    with pytest.raises(ValueError, match="offset"):
        projector.back_project(q, N, offset=1.0)


def _noise(hu: np.ndarray, px: float, seed: int, fast: bool, **kw) -> np.ndarray:
    return simulate_low_dose(hu, 0.25, px, seed=seed, fast=fast, **kw) - hu


def _nps_bands(noise: np.ndarray, px: float, n_bands: int = 4) -> np.ndarray:
    """Radial NPS (64 px sub-ROIs, averaged over slices) summed in ``n_bands`` bands from the second ring (the first,
    at one frequency step, is the one detrending biases) to Nyquist."""
    from napari_lidnet.metrics.nps import nps_2d

    curves = np.mean([nps_2d(s, px, 64).nps for s in noise], axis=0)
    return np.array([b.sum() for b in np.array_split(curves[1:], n_bands)])


def test_fast_noise_matches_exact_on_water():
    """Uniform water: fast and exact noise (independent draws) agree in SD, radial NPS and 2D NPS anisotropy."""
    stack = _water(24)
    exact, fast = _noise(stack, 0.8, 1, False), _noise(stack, 0.8, 2, True)
    c, h = N // 2, N // 4
    centre = np.s_[:, c - h : c + h, c - h : c + h]
    for region in (centre, np.s_[:, c - 12 : c + 12, c + 20 : c + 44]):  # centre, edge
        assert abs(fast[region].std() / exact[region].std() - 1) < 0.05
        assert abs(fast[region].mean()) < 1.0 and abs(exact[region].mean()) < 1.0  # no bias (SD ~ 25 HU)
    ratio = _nps_bands(fast[centre], 0.8) / _nps_bands(exact[centre], 0.8)
    assert np.all(np.abs(ratio - 1) < 0.05), ratio
    assert np.array_equal(fast[:, 0, 0], np.zeros(len(stack)))  # outside the FOV circle: unchanged


def test_fast_noise_matches_exact_on_anatomy():
    """An abdomen phantom at 256 px: the fast path's local noise SD map, noise in the liver and radial NPS follow
    the exact path's (independent draws); the non-stationary pattern (thick vs thin directions) is kept."""
    from napari_lidnet.sim.phantom import LABELS, make_phantom

    p = make_phantom(3, kind="abdomen", size=256, n_lesions=0, pixel_mm=0.9)
    stack = np.stack([p.hu] * 6)
    exact, fast = _noise(stack, p.spacing_mm, 5, False), _noise(stack, p.spacing_mm, 6, True)
    block = lambda a: np.sqrt((a**2).reshape(len(a), 8, 32, 8, 32).mean((0, 2, 4)))  # noqa: E731
    fov = (projector.circle_mask(256, "cpu").numpy() > 0).reshape(8, 32, 8, 32).all((1, 3))
    sd_exact, sd_fast = block(exact)[fov], block(fast)[fov]
    assert sd_exact.max() > 1.5 * sd_exact.min()  # noise varies across the field of view ...
    assert np.abs(sd_fast / sd_exact - 1).max() < 0.1  # ... and the fast path follows it block by block
    assert abs(np.median(sd_fast / sd_exact) - 1) < 0.03
    liver = p.labels == LABELS["liver"]
    assert abs(fast[:, liver].std() / exact[:, liver].std() - 1) < 0.05
    assert abs(fast[:, liver].mean()) < 1.0
    roi = np.s_[:, 96:160, 64:192]
    ratio = _nps_bands(fast[roi], p.spacing_mm) / _nps_bands(exact[roi], p.spacing_mm)
    assert np.all(np.abs(ratio - 1) < 0.05), ratio


def test_fast_noise_at_512_has_no_view_aliasing():
    """512 px, the widget's case: SD and radial NPS within 5% of the exact path, and a 256 px 2D NPS free of the
    spokes of too few views (which binning 4 views to 1 would show)."""
    size, px = 512, 0.7
    stack = _water(2, size)
    exact, fast = _noise(stack, px, 1, False), _noise(stack, px, 2, True)
    c = np.s_[:, 160:352, 160:352]
    assert abs(fast[c].std() / exact[c].std() - 1) < 0.05
    ratio = _nps_bands(fast[c], px) / _nps_bands(exact[c], px)
    # 0.950 / 0.980 / 0.958 / 0.985 with the rings centred on the frequency steps (0.95-0.99 with
    # axis samples either side of ring edges): the lowest band is the fast path's largest difference
    assert np.all(np.abs(ratio - 1) < 0.06), ratio
    assert angular_excess(fast, 256) < angular_excess(exact, 256) + 0.03


def test_fast_path_is_seeded_and_keeps_shapes():
    phantom = _water(1)[0]
    a = simulate_low_dose(phantom, 0.3, 1.0, seed=7, fast=True)
    assert a.dtype == np.float32 and a.shape == phantom.shape
    assert np.array_equal(a, simulate_low_dose(phantom, 0.3, 1.0, seed=7, fast=True))
    assert not np.array_equal(a, simulate_low_dose(phantom, 0.3, 1.0, seed=8, fast=True))
    vol = simulate_low_dose(np.stack([phantom] * 3), 0.3, 1.0, seed=7, batch_size=2, fast=True)
    assert np.array_equal(vol[0], a)  # per-slice seeds: batching does not change results
    assert np.array_equal(simulate_low_dose(phantom, 1.0, 1.0, fast=True), phantom)
    full = np.zeros((N, N), np.float32)  # no air outside the FOV circle: the whole square gets noise
    filled = simulate_low_dose(full, 0.3, 1.0, seed=7, fast=True, n_angles=150)
    assert filled[0, 0] != 0.0 and abs(filled.mean()) < 2.0


def test_fast_view_plan():
    assert lowdose.fast_views(816) == (408, 816)
    assert lowdose.fast_views(500) == (248, 496)  # 496 views drawn with 500/496 of the photons each
    assert lowdose.fast_views(8) == (8, 16)
    assert [lowdose.fast_step(s) for s in (64, 128, 256, 384, 512, 1024)] == [1, 1, 2, 3, 4, 4]


def _grain(px: float, sampling_mm: float | None, fast: bool = False) -> tuple[float, float]:
    """(noise centroid in cycles/mm, noise SD in HU) in the middle of a 60 mm water disc at ``px`` mm pixels, 25%
    dose, two seeds."""
    n = 2 * int(round(36 / px))
    yy, xx = (np.mgrid[:n, :n] - n // 2) * px
    disc = np.where(yy**2 + xx**2 < 30.0**2, 0.0, -1000.0).astype(np.float32)
    h = int(round(10 / px))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(2 * h), np.fft.fftfreq(2 * h)))
    cents, sds = [], []
    for seed in (1, 2):
        noise = simulate_low_dose(disc, 0.25, px, seed=seed, n_angles=240, fast=fast, sampling_mm=sampling_mm) - disc
        roi = noise[n // 2 - h : n // 2 + h, n // 2 - h : n // 2 + h]
        power = np.abs(np.fft.fft2(roi - roi.mean())) ** 2
        cents.append(float((power * f).sum() / power.sum()) / px)
        sds.append(float(roi.std()))
    return float(np.mean(cents)), float(np.mean(sds))


@pytest.mark.parametrize("fast", [False, True])
def test_a_scanner_noise_grain_is_set_in_mm_not_by_the_pixel(fast):
    """Regression: bins one pixel wide gave fine pixels a bone-kernel grain (the centroid 0.33 cycles/px at
    any pixel). ``sampling_mm``: a scanner sampling every 1 mm gives, at 0.5-1 mm pixels, the grain (cycles/mm)
    and SD it gives at 1 mm; at and above 1 mm it is the legacy model itself."""
    ref_c, ref_sd = _grain(1.0, None, fast)
    for px in (0.5, 0.7, 0.97):  # just under the sampling the noise must not fall by a quarter
        c, sd = _grain(px, 1.0, fast)
        assert c == pytest.approx(ref_c, rel=0.15) and sd == pytest.approx(ref_sd, rel=0.25), (px, c, sd)
        legacy_c, _ = _grain(px, None, fast)
        assert px > 0.9 or legacy_c > 1.3 * ref_c  # the legacy grain: finer in mm as the pixel shrinks
    n = 64
    img = np.full((n, n), 40.0, np.float32)
    for px in (1.0, 1.4):
        same = simulate_low_dose(img, 0.25, px, seed=3, fast=fast, sampling_mm=1.0)
        np.testing.assert_array_equal(same, simulate_low_dose(img, 0.25, px, seed=3, fast=fast))


def test_ramp_band_one_is_the_plain_filter_and_a_band_limits_it():
    """``ramp_filter(band=1)`` is the filter itself; a band < 1 folds it into the band's Nyquist (nothing at the
    band's sampling frequency but the sinc^2-weighted repeat) and is refused outside (0, 1]."""
    plain = projector.ramp_filter(101, "shepp-logan", "cpu")
    torch.testing.assert_close(projector.ramp_filter(101, "shepp-logan", "cpu", band=1.0), plain)
    half = projector.ramp_filter(101, "shepp-logan", "cpu", band=0.5)
    f = torch.fft.rfftfreq(2 * (plain.shape[0] - 1))
    assert float(half[(f - 0.5).abs().argmin()]) < 1e-6  # a repeat's zero at the sampling frequency
    ramp, i = projector.ramp_filter(101, "ram-lak", "cpu"), int((f - 0.1).abs().argmin())
    fk = float(f[i]) / 0.5  # inside the band: the ramp, the window at f / band, the scanner's interpolation
    expected = float(ramp[i]) * np.sinc(fk) ** 3 / np.sinc(float(f[i])) ** 2  # over the bins' own
    assert float(half[i]) == pytest.approx(expected, rel=1e-4)
    near = projector.ramp_filter(101, "shepp-logan", "cpu", band=0.999)  # no jump at 1
    torch.testing.assert_close(near, plain, atol=0.01 * float(plain.max()), rtol=0.0)  # was 0.15 vs 0.31
    with pytest.raises(ValueError, match="band"):
        projector.ramp_filter(101, "shepp-logan", "cpu", band=1.5)


def test_a_volumes_spacing_is_taken_as_its_pixel_size_and_odd_pixels_refused() -> None:
    """``simulate_low_dose(hu, dose, vol.spacing)`` (the (z, y, x) tuple a CTVolume holds) is the call with its pixel
    size; pixels that are not square, or a size that is no size, are refused in one line."""
    hu = np.full((1, 48, 48), -1000.0, np.float32)
    hu[0, 12:36, 12:36] = 40.0
    one = simulate_low_dose(hu, 0.25, 0.7, seed=3)
    np.testing.assert_array_equal(simulate_low_dose(hu, 0.25, (2.5, 0.7, 0.7), seed=3), one)
    np.testing.assert_array_equal(simulate_low_dose(hu[0], 0.25, (0.7, 0.7), seed=3), one[0])
    with pytest.raises(ValueError, match="pixels of 0.7 x 0.9 mm are not square"):
        simulate_low_dose(hu, 0.25, (2.5, 0.7, 0.9))
    with pytest.raises(ValueError, match="give a positive number of mm"):
        simulate_low_dose(hu, 0.25, -0.7)
