"""Low-dose CT simulation with a physical scanner model: HU -> mu -> line integrals -> photon counts -> FBP -> HU.

Scanner model (parallel beam, ``sim.projector``; monoenergetic, no scatter or beam hardening):

- mu = MU_WATER * (1 + HU / 1000), clipped at 0; MU_WATER = 0.0193 /mm (water at ~70 keV, NIST XCOM).
- Expected counts per detector bin and view: I0 * dose * exp(-p), p the line integral of mu.
- Measurement: Poisson(expected) + Gaussian electronic noise of variance ``electronic_noise`` (counts^2), clamped
  to ``COUNT_FLOOR`` before the log, p_noisy = -log(counts / (I0 * dose)).
- Reconstruction: FBP with the Shepp-Logan apodised ramp (a "standard" soft-tissue kernel) by default; any kernel
  of ``projector`` (``filter_name``: FILTERS, the named KERNELS smooth .. bone, or a parametric ``apod:`` spec).
  Both images of a pair are always reconstructed with the same kernel and views.

Scan protocols: ``sim.scanner.ScannerParams(...).kwargs()`` gives ``dose``, ``i0`` (scaled by slice thickness),
``electronic_noise``, ``n_angles`` and ``filter_name`` for both entry points; ``sample_scanner`` draws random ones.

Calibration (measured with ``benchmarks/sim_speed.py``): with I0 = I0_DEFAULT = 2.5e6 photons per bin and view at
full dose, 816 views and 512 x 512 pixels, the liver of the abdomen phantoms has a noise SD of 7.4 HU at 0.6 mm
pixels and 12.6 HU at 0.9 mm (about 10 HU at the typical 0.75 mm); noise SD scales as 1/sqrt(dose) (tested).
Electronic noise variance ELECTRONIC_NOISE_VAR = 10 counts^2 is negligible at normal dose and sets the floor of
photon-starved rays (streaks, bias) at very low dose, as in real detectors.

Two entry points:

- ``simulate_pair``: a noiseless phantom through the scanner at dose 1 (reference) and at ``dose`` (independent
  noise).
- ``simulate_low_dose``: a real normal-dose scan, which already carries full-dose noise, made to look like a scan at
  ``dose`` by projection-domain noise insertion (after Yu et al., Med. Phys. 39(1), 2012): reproject the image,
  N1 = I0 exp(-p) expected full-dose counts, add Gaussian noise of variance
  ``dose (1 - dose) N1 + (1 - dose^2) sigma_e^2`` to the scaled counts ``dose N1`` (the variance a dose-``dose``
  scan has beyond the scaled full-dose noise), log, FBP the difference and add it to the image. The sum then has
  the (linearised) variance ``(dose N1 + sigma_e^2) / (dose N1)^2`` of a real scan at ``dose``.

Fast noise insertion (``simulate_low_dose(..., fast=True)``, what the viewer's simulation job runs; the exact path
stays the default): the same noise model at 5.7-8.5x less CPU than the exact path at 512 x 512 (0.2-0.3 CPU s per
slice on one thread, 6-7x less than the code the issue measured; ``benchmarks/results/sim_speed.md``), from two
approximations:

- p only sets the variance of the inserted noise and varies slowly across the sinogram, so it comes from the
  image blurred and sampled every s pixels (s = 4 at 512, 2 at 256, 1 below 256: s times fewer views, bins and
  samples along each ray), interpolated back to the full sinogram (``projector.forward_project_coarse``,
  ``projector.resample_sinogram``).
- The noise is drawn, logged and clamped ray by ray for the full scan (so photon starvation and the log's bias are
  as in the exact path), at views (i + 1/2) pi / n; pairs of adjacent views are averaged and FBP reconstructs the
  n/2 averaged views at (j + 1/2) pi / (n/2). Image noise variance goes as 1 / (views x photons per view) and an
  average of two views keeps all their photons, so the noise is unchanged. The half-view offset keeps every
  reconstructed view off the pixel axes: a view along an axis back-projects without interpolation smoothing, and
  weighting one twice raised the noise SD by 0.6-1.5% (256-128 px). With n not a multiple of 8 the n' drawn views
  (``fast_views``) get n / n' times the photons and electronic noise variance each: the same dose.

Validation (``tests/test_lowdose.py``; ``benchmarks/sim_speed.py --compare 48``, independent noise draws): noise SD
within 1% of the exact path, radial NPS within 5% in every band, 32 px local noise SD maps (the non-stationary
noise of thick and thin directions) within the sampling scatter of two exact draws, the same mean bias (0.1 HU at
25% dose; +25 HU in both at a photon-starved 1%), and the exact path's 2D NPS over regions up to ~60% of the image
width (binning 4 views into 1 would put view-aliasing spokes there). Over wider regions the 2D NPS resolves the n/2
view directions (each with 2/n of the noise variance; not visible in the images, side by side with the exact path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from napari_lidnet.io.volume import square_pixel_mm
from napari_lidnet.sim import projector

MU_WATER = 0.0193  # 1/mm, water at ~70 keV
I0_DEFAULT = 2.5e6  # photons per detector bin and view at full dose (calibrated: ~10 HU liver noise at 512)
ELECTRONIC_NOISE_VAR = 10.0  # counts^2
COUNT_FLOOR = 1.0  # counts: smallest measurement before the log (photon starvation)
DEFAULT_FILTER = "shepp-logan"
#: the detector sampling (mm) of the scanner the viewer's, the Fine-tune dock's and ``lidnet index --dose``'s
#: insertion models: slices with finer pixels get its noise grain (``simulate_low_dose(sampling_mm=)``; the training
#: sets of the shipped models keep bins one pixel wide, ``benchmarks/results/noise_grain_prereg.md``)
SCANNER_SAMPLING_MM = 1.0
FAST_VIEW_BIN = 2  # fast path: the inserted noise is reconstructed from views binned 2 to 1
FAST_MAX_STEP = 4  # fast path: expected counts from a projection up to 4x coarser (views, bins, along the ray) ...
FAST_MIN_COARSE = 128  # ... on an image of at least 128 pixels


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    """Linear attenuation (1/mm) from HU, never negative."""
    return torch.clamp(MU_WATER * (1.0 + hu / 1000.0), min=0.0)


def mu_to_hu(mu: torch.Tensor) -> torch.Tensor:
    """HU from linear attenuation (1/mm)."""
    return (mu / MU_WATER - 1.0) * 1000.0


def _check_dose(dose: float) -> float:
    try:
        dose = float(dose)
    except (TypeError, ValueError):
        raise ValueError(f"dose must be a number in (0, 1], got {dose!r}") from None
    if not (0.0 < dose <= 1.0) or math.isnan(dose):
        raise ValueError(f"dose must be in (0, 1] (fraction of the normal dose, e.g. 0.25), got {dose}")
    return dose


def _as_stack(hu: np.ndarray, square: bool = True) -> tuple[np.ndarray, bool]:
    arr = np.asarray(hu, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(f"expected a (y, x) slice or a (z, y, x) volume of HU, got shape {arr.shape}")
    if square and arr.shape[1] != arr.shape[2]:
        raise ValueError(f"slices must be square for the projector, got {arr.shape[1]} x {arr.shape[2]}")
    if min(arr.shape[1:]) < 16:
        raise ValueError(f"slices must be at least 16 pixels, got {arr.shape[1]} x {arr.shape[2]}")
    if not np.isfinite(arr).all():
        raise ValueError("the image contains NaN or infinite values")
    return arr, np.asarray(hu).ndim == 2


def _slice_seeds(seed: int | None, n: int) -> list[int]:
    """One independent 63-bit seed per slice, so results do not depend on batching."""
    ss = np.random.SeedSequence(seed)
    return [int(s.generate_state(2, np.uint64)[0] >> np.uint64(1)) for s in ss.spawn(n)]


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def _noisy_line_integrals(
    p: torch.Tensor, i0: float, dose: float, electronic_noise: float, gen: torch.Generator
) -> torch.Tensor:
    """-log of Poisson + electronic-noise counts at ``i0 * dose`` for one (n_angles, n_det) sinogram."""
    expected = (i0 * dose) * torch.exp(-p)
    counts = torch.poisson(expected, generator=gen)
    if electronic_noise > 0:
        counts += math.sqrt(electronic_noise) * torch.randn(p.shape, generator=gen, device=p.device)
    return -torch.log(torch.clamp(counts, min=COUNT_FLOOR) / (i0 * dose))


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return dev


def simulate_pair(
    phantom_hu: np.ndarray,
    dose: float,
    spacing_mm: float | Sequence[float],
    seed: int | None = None,
    i0: float = I0_DEFAULT,
    electronic_noise: float = ELECTRONIC_NOISE_VAR,
    n_angles: int | None = None,
    filter_name: str = DEFAULT_FILTER,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    clean_full: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(full-dose HU, low-dose HU) of a noiseless (y, x) or (z, y, x) phantom: one projection, two noise draws.

    Both images go through the same geometry and FBP; outside the scanner's circular FOV (when the object lies
    inside it) they are air (-1000 HU). ``clean_full``: the first image is the noiseless reconstruction (the same
    views, kernel and blur, no quantum or electronic noise), a training target for removing all the noise; the
    low-dose image is the same as without it (the full-dose noise is still drawn, then dropped).
    """
    dose = _check_dose(dose)
    spacing_mm = square_pixel_mm(spacing_mm)
    stack, squeeze = _as_stack(phantom_hu)
    dev = _device(device)
    seeds = _slice_seeds(seed, stack.shape[0])
    full = np.empty_like(stack)
    low = np.empty_like(stack)
    with torch.no_grad():
        for b0 in range(0, stack.shape[0], batch_size):
            mu = hu_to_mu(torch.from_numpy(stack[b0 : b0 + batch_size]).to(dev))
            circle = projector.is_inside_circle(mu)
            sino = projector.forward_project(mu, spacing_mm, n_angles, circle=circle)
            noisy = []
            for k in range(sino.shape[0]):
                gen = _generator(seeds[b0 + k], dev)
                full_sino = _noisy_line_integrals(sino[k], i0, 1.0, electronic_noise, gen)
                noisy.append(sino[k] if clean_full else full_sino)
                noisy.append(_noisy_line_integrals(sino[k], i0, dose, electronic_noise, gen))
            rec = mu_to_hu(projector.fbp(torch.stack(noisy), stack.shape[1], spacing_mm, filter_name, circle=circle))
            if circle:
                rec[:, projector.circle_mask(stack.shape[1], str(dev)) == 0] = -1000.0
            rec = rec.cpu().numpy()
            full[b0 : b0 + batch_size] = rec[0::2]
            low[b0 : b0 + batch_size] = rec[1::2]
    return (full[0], low[0]) if squeeze else (full, low)


def _noise_difference(
    p: torch.Tensor, i0: float, dose: float, electronic_noise: float, seeds: list[int]
) -> torch.Tensor:
    """Line-integral change (B, n_angles, n_det) that turns full-dose data with line integrals ``p`` into data at
    ``dose``: Gaussian counts of the missing variance around ``dose * N1``, logged; one generator per slice."""
    n1 = i0 * torch.exp(-p)
    extra_sd = torch.sqrt(dose * (1.0 - dose) * n1 + (1.0 - dose**2) * electronic_noise)
    dp = torch.empty_like(p)
    for k in range(p.shape[0]):
        gen = _generator(seeds[k], p.device)
        counts = dose * n1[k] + extra_sd[k] * torch.randn(p.shape[1:], generator=gen, device=p.device)
        dp[k] = -torch.log(torch.clamp(counts, min=COUNT_FLOOR) / (i0 * dose)) - p[k]
    return dp


def fast_views(n_angles: int, view_bin: int = FAST_VIEW_BIN) -> tuple[int, int]:
    """(binned views reconstructed, fine views drawn) of the fast path for an ``n_angles`` scan: a multiple of 4
    near n_angles / view_bin (at least 8) and ``view_bin`` times that."""
    n_b = max(8, 4 * round(n_angles / (4 * view_bin)))
    return n_b, n_b * view_bin


def fast_step(size: int) -> int:
    """Coarsening of the fast path's projection for (size, size) slices: 4 at 512, 2 at 256, 1 below 256."""
    return max(1, min(FAST_MAX_STEP, size // FAST_MIN_COARSE))


def _inserted_noise_fast(
    mu: torch.Tensor, spacing_mm: float, n_angles: int, circle: bool, seeds: list[int], filter_name: str,
    i0: float, dose: float, electronic_noise: float, band: float = 1.0,
) -> torch.Tensor:  # fmt: skip
    """Fast path of the inserted noise (B, N, N) in mu: line integrals from ``forward_project_coarse`` interpolated
    to n_f fine views at (i + 1/2) pi / n_f, noise drawn there, each group of FAST_VIEW_BIN views averaged into one
    view at (j + 1/2) pi / n_b, FBP of the n_b views (no view along the pixel axes, see the module docstring).

    With n_f != n_angles, photons and electronic noise variance per view scale by n_angles / n_f (the same dose
    spread over n_f views), so the image noise is that of the ``n_angles`` scan.
    """
    size, m, step = mu.shape[-1], FAST_VIEW_BIN, fast_step(mu.shape[-1])
    n_b, n_f = fast_views(n_angles, m)
    scale = n_angles / n_f
    theta = (torch.arange(n_f, dtype=torch.float64) + 0.5) * (math.pi / n_f)
    coarse = projector.forward_project_coarse(mu, spacing_mm, n_angles, step, circle=circle)
    p = projector.resample_sinogram(coarse, step, theta, projector.detector_bins(size))
    dp = _noise_difference(p, i0 * scale, dose, electronic_noise * scale, seeds)
    dp = dp.view(dp.shape[0], n_b, m, dp.shape[-1]).mean(2)
    return projector.fbp(dp, size, spacing_mm, filter_name, circle=circle, offset=0.5, band=band)


def simulate_low_dose(
    hu: np.ndarray,
    dose: float,
    spacing_mm: float | Sequence[float],
    seed: int | None = None,
    i0: float = I0_DEFAULT,
    electronic_noise: float = ELECTRONIC_NOISE_VAR,
    n_angles: int | None = None,
    filter_name: str = DEFAULT_FILTER,
    device: str | torch.device = "cpu",
    batch_size: int = 4,
    fast: bool = False,
    *,
    sampling_mm: float | None = None,
) -> np.ndarray:
    """A normal-dose CT (y, x) or (z, y, x) in HU made into a ``dose`` scan by projection-domain noise insertion.
    ``spacing_mm``: its pixel size (a number, or a volume's spacing with square pixels).

    ``i0`` is the full-dose photon count per bin and view assumed for the input scan. Pixels outside the FOV circle
    (when the image is air there) are returned unchanged. Non-square slices (a cropped scan) are simulated centred
    in air on the square of their longer side. ``dose == 1`` returns a copy. ``fast``: the variance map
    from a coarse projection and the noise reconstructed from pairs of views averaged (module docstring: ~6x less
    CPU at 512 x 512, the same noise SD and NPS within a few percent); for a seed, its image is close to the exact
    path's but not equal to it. ``sampling_mm``: the detector sampling (mm at the isocentre) the kernel is defined
    at. Pixels finer than it get the noise of that scanner: the kernel's frequencies in mm, not in pixels, and its
    photons per mm (``i0`` per ``sampling_mm``), so the noise grain and SD do not change with the display pixel, as
    on a scanner. None: bins one pixel wide with ``i0`` each, the kernel in cycles per pixel (the earlier
    model: the grain scales with the pixel).
    """
    dose = _check_dose(dose)
    spacing_mm = square_pixel_mm(spacing_mm)
    stack, squeeze = _as_stack(hu, square=False)
    if stack.shape[1] != stack.shape[2]:  # a cropped scan: centred in air on a square, as the scanner saw it
        padded, crop = _in_air_square(stack)
        low = simulate_low_dose(padded, dose, spacing_mm, seed, i0, electronic_noise, n_angles, filter_name, device,
                                batch_size, fast, sampling_mm=sampling_mm)[(slice(None), *crop)]  # fmt: skip
        return low[0] if squeeze else low
    out = stack.copy()
    if dose == 1.0:
        return out[0] if squeeze else out
    band = 1.0 if sampling_mm is None else min(1.0, spacing_mm / float(sampling_mm))
    i0, electronic_noise = i0 * band, electronic_noise * band  # a bin holds band of a detector sample's photons
    dev = _device(device)
    seeds = _slice_seeds(seed, stack.shape[0])
    n_angles = n_angles or projector.default_n_angles(stack.shape[1])
    with torch.no_grad():
        for b0 in range(0, stack.shape[0], batch_size):
            mu = hu_to_mu(torch.from_numpy(stack[b0 : b0 + batch_size]).to(dev))
            circle = projector.is_inside_circle(mu)
            part = seeds[b0 : b0 + batch_size]
            if fast:
                noise = (i0, dose, electronic_noise, band)
                dmu = _inserted_noise_fast(mu, spacing_mm, n_angles, circle, part, filter_name, *noise)
            else:
                p = projector.forward_project(mu, spacing_mm, n_angles, circle=circle)
                dp = _noise_difference(p, i0, dose, electronic_noise, part)
                dmu = projector.fbp(dp, stack.shape[1], spacing_mm, filter_name, circle=circle, band=band)
            out[b0 : b0 + batch_size] += (dmu * (1000.0 / MU_WATER)).cpu().numpy()
    return out[0] if squeeze else out


def _in_air_square(stack: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    """A (z, y, x) stack of non-square slices centred on square ones of air (-1000 HU), and the (y, x) crop back.
    The rays through the air add no attenuation, so each pixel's noise is that of the slice scanned as it is."""
    _, h, w = stack.shape
    side = max(h, w)
    y0, x0 = (side - h) // 2, (side - w) // 2
    out = np.full((len(stack), side, side), -1000.0, np.float32)
    crop = (slice(y0, y0 + h), slice(x0, x0 + w))
    out[(slice(None), *crop)] = stack
    return out, crop
