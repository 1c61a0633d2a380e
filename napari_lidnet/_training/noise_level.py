"""The noise level of a simulated low-dose partner: the photon count that makes it the scan's own noise at the dose.

Noise SD goes as 1 / sqrt(photons), and a quarter of the dose doubles a scan's quantum noise SD (adds sqrt(3) times
it). The scan's own noise is measured in its flat tissue (``metrics.noreference``); the scanner model's photon count
(``sim.lowdose.I0_DEFAULT``, a phantom's) only stands in for an image without noise of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: below this noise SD in flat tissue (HU) an image is taken as noiseless (a phantom): the scanner model's photon
#: count is assumed, not calibrated to it
MIN_OWN_NOISE_HU = 2.0
#: simulated probe slices at most, to set the photon count
PROBES = 4
#: slices in the running median of a volume's own noise, slice by slice (:func:`own_noise_by_slice`)
SMOOTH_SLICES = 5


def insertion_kwargs(device: Any) -> dict[str, Any]:
    """The product's own insertion (the viewer's copy, the Fine-tune dock's partners): ``simulate_low_dose``'s fast
    path with the 1 mm scanner's grain (``sim.lowdose.SCANNER_SAMPLING_MM``) on ``device``."""
    from napari_lidnet.sim.lowdose import SCANNER_SAMPLING_MM

    return {"device": device, "fast": True, "sampling_mm": SCANNER_SAMPLING_MM}


def _added_sd(own: float, dose: float) -> float | None:
    """The SD a ``dose`` scan adds to a scan with ``own`` HU of noise in flat tissue, own * sqrt(1 / dose - 1); None
    when ``own`` is not a measured noise (NaN, or below ``MIN_OWN_NOISE_HU``: a noiseless image)."""
    if not np.isfinite(own) or own < MIN_OWN_NOISE_HU:
        return None
    return own * float(np.sqrt(1.0 / dose - 1.0))


def calibrated_i0(vol: np.ndarray, dose: float, spacing_mm: float, seed: int, **kwargs) -> tuple[float, str]:
    """(photons per detector sample and view, what was done) that make the noise inserted into a probe slice a
    ``dose`` scan's: that slice's own noise SD in flat tissue (``metrics.noreference``) times sqrt(1 / dose - 1),
    measured in the same flat blocks. Noise SD goes as 1 / sqrt(photons) until electronic noise and photon
    starvation take over (a noisy scan's few photons), so the count is refined from probes at the counts found
    (at most ``PROBES``, to within 5%). A scan without noise of its own, or without flat tissue, keeps
    ``I0_DEFAULT``. Other slices' own noise differs (tube-current modulation, attenuation): :func:`dose_calibration`
    matches each slice as well."""
    from napari_lidnet.metrics.noreference import noise_sd
    from napari_lidnet.sim.lowdose import I0_DEFAULT

    vol = np.asarray(vol, np.float32)
    vol = vol[None] if vol.ndim == 2 else vol
    if dose >= 1.0:
        return I0_DEFAULT, "dose 1: the scan itself, nothing added"
    if _added_sd(noise_sd(vol), dose) is None:
        return I0_DEFAULT, "the image shows no noise of its own: the scanner model's full-dose photon count assumed"
    k, own = _flat_slice(vol)
    target = _added_sd(own, dose)
    if target is None:
        return I0_DEFAULT, "no flat tissue to calibrate on: the scanner model's full-dose photon count assumed"
    i0, slope, last = I0_DEFAULT, 0.5, None
    for _ in range(PROBES):  # Newton steps on log SD against log photons, the slope measured from the last two
        probe = _probe_sd(vol[k], dose, spacing_mm, seed, i0, **kwargs)
        if not (np.isfinite(probe) and probe > 0) or abs(probe / target - 1.0) < 0.05:
            break
        if last is not None and last[0] != i0 and last[1] != probe:
            slope = float(np.clip(-np.log(probe / last[1]) / np.log(i0 / last[0]), 0.3, 2.0))
        last, i0 = (i0, probe), i0 * (probe / target) ** (1.0 / slope)
    return i0, (f"calibrated to the scan's own noise: {own:.1f} HU in flat tissue on slice {k}, so {dose:.0%} dose "
                f"adds {target:.1f} HU there")  # fmt: skip


def own_noise_by_slice(vol: np.ndarray) -> np.ndarray:
    """Each slice's own noise SD (HU) in its flat tissue, the running median over ``SMOOTH_SLICES`` slices of the
    per-slice measures (a slice's few flat blocks make a noisy measure; tube-current modulation changes the noise
    smoothly along z); NaN where no slice near has flat tissue."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    vol = np.asarray(vol, np.float32)
    vol = vol[None] if vol.ndim == 2 else vol
    raw = np.array([flat_block_noise_sds(s, [s])[0] for s in vol])
    half, out = SMOOTH_SLICES // 2, np.full(len(raw), np.nan)
    for k in range(len(raw)):
        near = raw[max(0, k - half) : k + half + 1]
        if np.isfinite(near).any():
            out[k] = float(np.nanmedian(near))
    return out


def dose_calibration(
    vol: np.ndarray, dose: float, spacing_mm: float, seed: int, **kwargs
) -> tuple[float, np.ndarray, str]:
    """How to simulate a ``dose`` partner of ``vol`` (z, y, x) as that scan at ``dose`` of each slice's own
    exposure: the photon count (:func:`calibrated_i0`), each slice's own noise (:func:`own_noise_by_slice`, for
    :func:`calibrated_noise` to scale that slice's inserted noise to), and what was done, in words."""
    i0, how = calibrated_i0(vol, dose, spacing_mm, seed, **kwargs)
    if not how.startswith("calibrated"):
        return i0, np.full(1 if np.ndim(vol) == 2 else len(vol), np.nan), how
    own = own_noise_by_slice(vol)
    finite = own[np.isfinite(own)]
    if len(finite) > 1 and np.ptp(finite) >= 0.5:
        factor = float(np.sqrt(1.0 / dose - 1.0))
        how = (f"calibrated slice by slice to the scan's own noise: {finite.min():.1f}-{finite.max():.1f} HU in flat "
               f"tissue, so {dose:.0%} dose adds {factor:.2f} times that ({factor * finite.min():.1f}-"
               f"{factor * finite.max():.1f} HU)")  # fmt: skip
    return i0, own, how


def _flat_slice(vol: np.ndarray) -> tuple[int, float]:
    """(the middle slice, else the first of a few evenly spaced ones, that has flat soft tissue; its own noise SD
    there), or (0, NaN) when none has."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds, sample_slices

    for k in dict.fromkeys([len(vol) // 2, *sample_slices(len(vol), 8)]):
        own = flat_block_noise_sds(vol[k], [vol[k]])[0]
        if np.isfinite(own):
            return int(k), float(own)
    return 0, float("nan")


def _probe_sd(hu2d: np.ndarray, dose: float, spacing_mm: float, seed: int, i0: float, **kwargs) -> float:
    """The SD of the noise inserted at ``i0`` into one slice, in its flat blocks."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds
    from napari_lidnet.sim.lowdose import simulate_low_dose

    noise = simulate_low_dose(hu2d, dose, spacing_mm, seed=seed, i0=i0, **kwargs) - hu2d
    return flat_block_noise_sds(hu2d, [noise])[0]


def calibrated_noise(full: np.ndarray, noise: np.ndarray, dose: float, own: float | None = None) -> np.ndarray:
    """``noise`` inserted into the slice ``full`` scaled to the slice's own noise at ``dose``: SD own *
    sqrt(1 / dose - 1) in its flat tissue (noise SD goes as 1 / sqrt(photons)); ``own`` (HU): that noise when it is
    known already (:func:`own_noise_by_slice`), else measured here; unchanged for a slice without noise of its own
    or without flat tissue. Per slice, as a manifest reads them and as :func:`dose_calibration` asks."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    measured, added = flat_block_noise_sds(full, [full, noise])
    target = _added_sd(measured if own is None else own, dose)
    if target is None or not (np.isfinite(added) and added > 0):
        return noise
    return (noise * (target / added)).astype(np.float32)


def at_own_noise(full: np.ndarray, low: np.ndarray, dose: float, own: float) -> np.ndarray:
    """The simulated partner ``low`` of the slice ``full`` with its inserted noise scaled to the slice's ``own``
    noise at ``dose`` (:func:`calibrated_noise`); ``low`` itself when ``own`` is NaN (not measured)."""
    return low if np.isnan(own) else full + calibrated_noise(full, low - full, dose, own)
