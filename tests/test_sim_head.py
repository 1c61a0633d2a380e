"""Head phantoms: skull, grey / white matter, CSF, brain lesions; randomised FOV and pixel sizes."""

import numpy as np
import pytest

from napari_lidnet.sim import scanner
from napari_lidnet.sim.phantom import LABELS, make_phantom, make_phantom_volume


@pytest.mark.parametrize("seed", [0, 1])
def test_head_tissue_values(seed):
    p = make_phantom(seed, kind="head", size=256, n_lesions=0)
    assert p.kind == "head" and p.boxes.shape == (0, 4)
    med = {k: np.median(p.hu[p.labels == LABELS[k]]) for k in ("bone", "gm", "wm", "fluid")}
    assert med["bone"] > 700  # skull
    assert 20 <= med["wm"] < med["gm"] <= 45
    assert -5 < med["fluid"] < 20  # CSF
    brain = np.isin(p.labels, [LABELS["gm"], LABELS["wm"]])
    assert brain.sum() > 0.05 * brain.size
    assert 20 <= np.median(p.hu[brain]) <= 45


def test_head_ventricles_and_posterior_fossa():
    v = make_phantom_volume(4, 5, kind="head", size=192, slice_mm=20.0, n_lesions=0)
    assert v.hu.shape == (5, 192, 192)
    # the lowest slice is in the posterior fossa: bone floor with air spaces; a higher one shows the ventricles
    assert (v.labels[0] == LABELS["gas"]).sum() > 0 and (v.labels[0] == LABELS["bone"]).mean() > 0.05
    c = 96
    csf_mid = [(lab[c - 40 : c + 40, c - 16 : c + 16] == LABELS["fluid"]).mean() for lab in v.labels[1:]]
    assert max(csf_mid) > 0.05


def test_head_lesions_are_in_brain_and_boxed():
    kinds = set()
    for seed in range(4):
        clean = make_phantom(seed, kind="head", size=192, n_lesions=0)
        p = make_phantom(seed, kind="head", size=192, n_lesions=2)
        touched = np.abs(p.hu - clean.hu) > 0.5
        assert np.all(np.isin(p.labels[touched], [LABELS["gm"], LABELS["wm"], LABELS["fluid"], LABELS["dura"]]))
        for kind, c in zip(p.lesion_kinds, p.lesion_contrast_hu):
            kinds.add(kind)
            assert (-25 <= c <= -6) if kind == "brain_hypo" else (15 <= c <= 60)
        assert len(p.boxes) == len(p.lesion_kinds)
    assert kinds <= {"brain_hypo", "brain_hyper"} and kinds


def test_randomised_pixel_size_and_fov_within_ranges():
    rng = np.random.default_rng(0)
    for kind, (lo, hi) in scanner.FOV_RANGE_MM.items():
        px = np.array([scanner.sample_pixel_mm(rng, kind, 512) for _ in range(200)])
        assert px.min() >= 0.4 and px.max() <= 1.0
        fov = px * 512
        assert fov.min() >= min(lo, 0.4 * 512) - 1 and fov.max() <= hi + 1
        assert fov.max() - fov.min() > 0.5 * (hi - max(lo, 0.4 * 512))  # the range is used
    for seed in range(3):
        head = make_phantom(seed, kind="head", size=64, randomize=True)
        chest = make_phantom(seed, kind="chest", size=64, randomize=True)
        assert 0.4 <= head.spacing_mm <= 1.0 and 0.4 <= chest.spacing_mm <= 1.0
    px = [make_phantom(s, kind="abdomen", size=512, randomize=True, n_lesions=0).spacing_mm for s in range(2)]
    assert all(300 <= 512 * p <= 500 for p in px)
    with pytest.raises(ValueError, match="body part"):
        scanner.sample_pixel_mm(rng, "knee")
