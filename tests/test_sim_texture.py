"""Realistic anatomy: power-law texture spectra, detail structures (vessels, bronchi, stranding, trabecular bone)."""

import numpy as np
import pytest

from napari_lidnet.sim import texture as tx
from napari_lidnet.sim.phantom import LABELS, make_phantom, make_phantom_volume


@pytest.mark.parametrize("beta", [2.0, 2.5, 3.0])
def test_power_law_spectrum_slope_matches_beta(beta):
    px = 0.7
    rng = np.random.default_rng(int(beta * 10))
    f, power = tx.radial_power_spectrum(tx.power_law_noise(rng, 256, beta, px), px)
    sel = (f >= 4 / 60.0) & (f <= 0.8 * 0.5 / px)  # above the low-frequency knee, below the corners of the grid
    slope = np.polyfit(np.log(f[sel]), np.log(power[sel]), 1)[0]
    assert abs(-slope - beta) < 0.3, (beta, slope)
    field = tx.power_law_noise(rng, 64, beta)
    assert field.dtype == np.float32 and abs(field.std() - 1) < 1e-3
    with pytest.raises(ValueError, match="beta"):
        tx.power_law_noise(rng, 64, 9.0)


def test_lines_and_trabecular_fields():
    rng = np.random.default_rng(0)
    field = tx.band_noise(rng, 128, 0.5, 3.0)
    ln = tx.lines(field, 0.5, 0.4)
    assert 0 <= ln.min() and ln.max() <= 1 and 0.02 < (ln > 0.5).mean() < 0.3  # thin lines, not areas
    trab = tx.trabecular(tx.band_noise(rng, 128, 0.5, 0.45))
    assert -1 <= trab.min() < -0.9 and 0.9 < trab.max() <= 1 and 0.2 < (trab > 0).mean() < 0.6


def test_detailed_chest_has_trees_bronchi_and_texture():
    plain = make_phantom(3, kind="chest", size=192, n_lesions=0)
    rich = make_phantom(3, kind="chest", size=192, n_lesions=0, detail=True)
    lung = rich.labels == LABELS["lung"]
    vessels_in_lung = (rich.labels == LABELS["vessel"]).sum() - (plain.labels == LABELS["vessel"]).sum()
    assert vessels_in_lung > 0.01 * lung.sum()
    assert (rich.labels == LABELS["airway"]).sum() > (plain.labels == LABELS["airway"]).sum()  # bronchi
    fat = (rich.labels == LABELS["fat"]) & (plain.labels == LABELS["fat"])
    assert rich.hu[fat].std() > plain.hu[fat].std()  # power-law texture and stranding
    marrow = rich.labels == LABELS["marrow"]
    assert rich.hu[marrow].std() > 40  # trabecular network


def test_detailed_abdomen_liver_vessels_and_lesions_in_host():
    p = make_phantom(5, kind="abdomen", size=192, n_lesions=2, detail=True, contrast_enhanced=True)
    assert p.contrast_enhanced and p.hu[p.labels == LABELS["vessel"]].max() > 150
    liver = p.labels == LABELS["liver"]
    assert 80 < np.median(p.hu[liver]) < 140  # portal-venous enhancement
    assert all(k.split("_")[0] in ("liver", "spleen", "kidney") for k in p.lesion_kinds)
    assert not np.array_equal(p.hu, make_phantom(5, kind="abdomen", size=192, n_lesions=2).hu)


def test_detailed_volume_is_continuous():
    v = make_phantom_volume(2, 4, kind="chest", size=128, slice_mm=1.5, n_lesions=0, detail=True)
    step = np.mean(np.abs(np.diff(np.clip(v.hu, -1000, 300), axis=0)))
    other = make_phantom(9, kind="chest", size=128, pixel_mm=v.spacing_mm[1], n_lesions=0, detail=True)
    assert step < 0.5 * np.mean(np.abs(np.clip(v.hu[0], -1000, 300) - np.clip(other.hu, -1000, 300)))
