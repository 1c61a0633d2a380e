"""The photon count of a simulated low-dose partner, calibrated to the scan's own noise (``_training.noise_level``)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lidnet._training.noise_level import calibrated_i0, calibrated_noise
from napari_lidnet.metrics.noreference import flat_block_noise_sds
from napari_lidnet.sim.lowdose import I0_DEFAULT, SCANNER_SAMPLING_MM, simulate_low_dose


def _scan(own: float, size: int = 128, seed: int = 0) -> np.ndarray:
    """A water ellipse with ``own`` HU of white noise of its own, in air."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    return (np.where(body, 40.0, -1000.0) + rng.normal(0, own, (size, size)) * body).astype(np.float32)


@pytest.mark.parametrize(("own", "dose"), [(12.0, 0.25), (60.0, 0.25), (60.0, 0.1)])
def test_the_inserted_noise_is_the_scans_own_at_the_dose(own, dose):
    """Regression: one step of SD ~ 1/sqrt(photons) overshot by 22-71% on noisy scans (few photons:
    electronic noise and starvation grow faster). The count is refined from probes: within 10% of own x
    sqrt(1/dose - 1), and said."""
    vol = np.stack([_scan(own, seed=s) for s in range(3)])
    kw = {"fast": True, "sampling_mm": SCANNER_SAMPLING_MM}
    i0, how = calibrated_i0(vol, dose, 0.7, seed=5, **kw)
    noise = simulate_low_dose(vol[1], dose, 0.7, seed=9, i0=i0, **kw) - vol[1]
    measured_own, added = flat_block_noise_sds(vol[1], [vol[1], noise])
    target = measured_own * np.sqrt(1 / dose - 1)
    assert added == pytest.approx(target, rel=0.1), (own, dose, added, target, i0)
    assert how.startswith("calibrated to the scan's own noise") and i0 < I0_DEFAULT


def test_no_noise_of_its_own_dose_one_and_one_slice():
    """A noiseless image keeps the scanner model's count (said); dose 1 adds nothing; a 2D slice is one volume."""
    assert calibrated_i0(_scan(0.0), 0.25, 0.7, seed=1)[1].startswith("the image shows no noise of its own")
    assert calibrated_i0(_scan(20.0), 1.0, 0.7, seed=1) == (I0_DEFAULT, "dose 1: the scan itself, nothing added")
    assert calibrated_i0(_scan(20.0), 0.5, 0.7, seed=1, fast=True)[1].startswith("calibrated")


def test_a_slice_s_noise_is_scaled_to_its_own_at_the_dose():
    """``calibrated_noise`` (a manifest's slices): the noise scaled to own x sqrt(1/dose - 1) in flat tissue;
    a noiseless slice keeps it."""
    scan, noise = _scan(30.0), np.random.default_rng(1).normal(0, 5, (128, 128)).astype(np.float32)
    own, added = flat_block_noise_sds(scan, [scan, calibrated_noise(scan, noise, 0.25)])
    assert added == pytest.approx(own * np.sqrt(3), rel=0.02)
    np.testing.assert_array_equal(calibrated_noise(_scan(0.0), noise, 0.25), noise)
