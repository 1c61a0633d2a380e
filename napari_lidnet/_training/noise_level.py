"""The noise level of a simulated low-dose partner: the photon count that makes it the scan's own noise at the dose.

Noise SD goes as 1 / sqrt(photons), and a quarter of the dose doubles a scan's quantum noise SD (adds sqrt(3) times
it). The scan's own noise is measured in its flat tissue (``metrics.noreference``); the scanner model's photon count
(``sim.lowdose.I0_DEFAULT``, a phantom's) only stands in for an image without noise of its own.
"""

from __future__ import annotations

import numpy as np

#: below this noise SD in flat tissue (HU) an image is taken as noiseless (a phantom): the scanner model's photon
#: count is assumed, not calibrated to it
MIN_OWN_NOISE_HU = 2.0


def calibrated_i0(vol: np.ndarray, dose: float, spacing_mm: float, seed: int, **kwargs) -> tuple[float, str]:
    """(photons per detector sample and view, what was done) that make the inserted noise a ``dose`` scan's: the
    scan's own noise SD in flat tissue (``metrics.noreference.noise_sd``) times sqrt(1 / dose - 1), measured in the
    same flat blocks of a probe slice simulated at ``I0_DEFAULT`` (noise SD goes as 1 / sqrt(photons)). A scan
    without noise of its own, or without flat tissue, keeps ``I0_DEFAULT``."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds, noise_sd, sample_slices
    from napari_lidnet.sim.lowdose import I0_DEFAULT, simulate_low_dose

    own = noise_sd(vol)
    if not np.isfinite(own) or own < MIN_OWN_NOISE_HU:
        return I0_DEFAULT, "the image shows no noise of its own: the scanner model's full-dose photon count assumed"
    target = own * float(np.sqrt(1.0 / dose - 1.0))
    for k in dict.fromkeys([len(vol) // 2, *sample_slices(len(vol), 8)]):  # the middle slice first
        probe = simulate_low_dose(vol[k], dose, spacing_mm, seed=seed, **kwargs) - vol[k]
        probe_sd = flat_block_noise_sds(vol[k], [probe])[0]
        if np.isfinite(probe_sd) and probe_sd > 0:
            return (I0_DEFAULT * (probe_sd / target) ** 2,
                    f"calibrated to the scan's own noise: {own:.1f} HU in flat tissue, so {dose:.0%} dose adds "
                    f"{target:.1f} HU there")  # fmt: skip
    return I0_DEFAULT, "no flat tissue to calibrate on: the scanner model's full-dose photon count assumed"


def calibrated_noise(full: np.ndarray, noise: np.ndarray, dose: float) -> np.ndarray:
    """``noise`` inserted into the slice ``full`` (simulated at ``I0_DEFAULT``) scaled to the slice's own noise at
    ``dose``: SD own * sqrt(1 / dose - 1) in its flat tissue (noise SD goes as 1 / sqrt(photons)); unchanged for a
    slice without noise of its own or without flat tissue. Per slice, as a manifest reads them."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    own, added = flat_block_noise_sds(full, [full, noise])
    if not (np.isfinite(own) and own >= MIN_OWN_NOISE_HU and np.isfinite(added) and added > 0):
        return noise
    return (noise * (own * float(np.sqrt(1.0 / dose - 1.0)) / added)).astype(np.float32)
