"""Scanner randomisation: protocol sampling, kernels ordered by sharpness, same kernel for both images of a pair,
slice thickness as photon count, the default protocol unchanged, the symmetric projector equal to the direct one."""

import math

import numpy as np
import pytest
import torch

from napari_lidnet.sim import projector
from napari_lidnet.sim.lowdose import simulate_low_dose, simulate_pair
from napari_lidnet.sim.scanner import NAMED_KERNELS, ScannerParams, sample_scanner

N = 64


def _water(n: int = 2, size: int = N) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.stack([np.where(xx**2 + yy**2 <= (0.42 * size) ** 2, 0.0, -1000.0).astype(np.float32)] * n)


def _noise_sd(a: np.ndarray, b: np.ndarray, size: int = N) -> float:
    yy, xx = np.mgrid[:size, :size] - size // 2
    roi = xx**2 + yy**2 <= (0.25 * size) ** 2
    return float((a - b)[..., roi].std() / math.sqrt(2))


def test_sample_scanner_ranges():
    rng = np.random.default_rng(0)
    ps = [sample_scanner(rng) for _ in range(300)]
    doses = np.array([p.dose for p in ps])
    assert 0.05 <= doses.min() and doses.max() <= 0.5
    assert 0.3 < np.mean(doses < math.sqrt(0.05 * 0.5)) < 0.7  # log-uniform: median near the geometric mean
    views = np.array([p.n_views for p in ps])
    assert 500 <= views.min() and views.max() <= 1200 and np.all(views % 4 == 0)
    assert all(1 <= p.thickness_mm <= 5 and 0 <= p.electronic_noise <= 50 for p in ps)
    kernels = {p.kernel for p in ps}
    assert set(NAMED_KERNELS) <= kernels and any(k.startswith("apod:") for k in kernels)
    for p in ps[:20]:
        projector.parse_kernel(p.kernel)
        assert ScannerParams.from_record(p.record()) == p
    assert sample_scanner(rng, size=128).n_views <= 300
    with pytest.raises(ValueError, match="FBP filter"):
        ScannerParams(kernel="apod:5:1:0")
    with pytest.raises(ValueError, match="dose"):
        ScannerParams(dose=0.0)


def test_kernels_order_by_noise_and_mtf():
    phantom = _water()
    sd = {}
    for k in ("smooth", "standard", "sharp", "bone"):
        _, a = simulate_pair(phantom, 0.25, 0.8, seed=1, filter_name=k)
        _, b = simulate_pair(phantom, 0.25, 0.8, seed=2, filter_name=k)
        sd[k] = _noise_sd(a, b)
    assert sd["smooth"] < sd["standard"] < sd["sharp"] < sd["bone"], sd
    f = torch.fft.rfftfreq(256, dtype=torch.float64)
    ramp = projector.ramp_filter(127, "ram-lak", "cpu").double()

    def mtf(name: str, at: float = 0.35) -> float:  # the kernel's window (response / ramp) at 0.7 Nyquist
        w = projector.ramp_filter(127, name, "cpu").double()[1:] / ramp[1:]
        return float(w[torch.argmin((f[1:] - at).abs())])

    names = ["smooth", "soft", "hamming", "cosine", "standard", "sharp", "bone"]
    assert [mtf(k) for k in names] == sorted(mtf(k) for k in names)
    assert mtf("bone") > 1.2  # edge enhancement


def test_default_kernel_and_protocol_reproduce_the_defaults_exactly():
    phantom = _water(1)
    ref = simulate_pair(phantom, 0.3, 0.8, seed=5)
    for kw in ({"filter_name": "standard"}, ScannerParams(dose=0.3).kwargs()):
        kw = {k: v for k, v in kw.items() if k != "dose"}
        out = simulate_pair(phantom, 0.3, 0.8, seed=5, **kw)
        assert all(np.array_equal(a, b) for a, b in zip(ref, out))
    assert torch.equal(projector.ramp_filter(91, "standard", "cpu"), projector.ramp_filter(91, "shepp-logan", "cpu"))
    full = ref[0]
    ins = simulate_low_dose(
        full, 0.5, 0.8, seed=1, **{k: v for k, v in ScannerParams().kwargs().items() if k != "dose"}
    )
    assert np.array_equal(ins, simulate_low_dose(full, 0.5, 0.8, seed=1))


@pytest.mark.parametrize("kernel", ["smooth", "bone"])
def test_pair_full_and_low_share_the_kernel(kernel):
    """Low/full noise ratio is 1/sqrt(dose) for any kernel only if both images use the same kernel."""
    phantom = _water()
    f1, l1 = simulate_pair(phantom, 0.25, 0.8, seed=3, filter_name=kernel)
    f2, l2 = simulate_pair(phantom, 0.25, 0.8, seed=4, filter_name=kernel)
    assert abs(_noise_sd(l1, l2) / _noise_sd(f1, f2) * math.sqrt(0.25) - 1) < 0.12


def test_thickness_scales_noise_as_inverse_sqrt():
    phantom = _water()
    sds = []
    for t in (1.0, 4.0):
        kw = {k: v for k, v in ScannerParams(thickness_mm=t, electronic_noise=0.0).kwargs().items() if k != "dose"}
        _, a = simulate_pair(phantom, 0.25, 0.8, seed=6, **kw)
        _, b = simulate_pair(phantom, 0.25, 0.8, seed=7, **kw)
        sds.append(_noise_sd(a, b))
    assert abs(sds[0] / sds[1] / 2.0 - 1) < 0.1


@pytest.mark.parametrize("size,n_views", [(64, 64), (65, 100), (96, 52)])
def test_symmetric_projector_equals_direct(size, n_views):
    rng = torch.Generator().manual_seed(0)
    img = torch.randn(2, size, size, generator=rng) * projector.circle_mask(size, "cpu")
    geo = projector.get_geometry(size, n_views, "cpu")
    n_t = min(2 * (size // 2 + 1) + 1, geo.n_det)
    lo = geo.n_det // 2 - n_t // 2
    direct = torch.zeros(2, n_views, n_t)
    projector._forward_views(img.unsqueeze(0), geo, torch.arange(n_views), n_t, direct)
    fast = projector.forward_project(img, 1.0, n_views, circle=True)[..., lo : lo + n_t]
    assert torch.allclose(fast, direct, atol=1e-5 * float(direct.abs().max()))
    q = torch.randn(2, n_views, geo.n_det, generator=rng)
    bp_direct = projector._back_project_direct(q, size) * projector.circle_mask(size, "cpu")
    bp = projector.back_project(q, size, circle=True)
    assert torch.allclose(bp, bp_direct, atol=1e-5 * float(bp_direct.abs().max()))
