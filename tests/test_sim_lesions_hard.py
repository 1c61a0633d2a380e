"""The hard lesion profile: published contrasts and sizes (FDA LCD-CT inserts, small metastases, faint ground-glass
nodules), hypo and hyper, sharp and soft, every host organ; the standard profile unchanged; the CLI's card."""

import csv
import json

import numpy as np
import pytest

from napari_lidnet.cli import main
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.sim import lesions as L
from napari_lidnet.sim.make_dataset import read_lesion_info, simulate_dataset
from napari_lidnet.sim.phantom import make_phantom

LCD = np.array(L.LCD_INSERTS)


def _lcd_pair(diam: float, mag: float) -> bool:
    """Diameter and |contrast| within LCD_JITTER of the same FDA LCD-CT insert."""
    return any(abs(diam - d) <= L.LCD_JITTER * d + 1e-6 and abs(mag - c) <= L.LCD_JITTER * c + 1e-6 for d, c in LCD)


def _in_published_range(family: str, host: str, contrast: float, diam: float) -> bool:
    mag = abs(contrast)
    if family == "lcd":
        return _lcd_pair(diam, mag)
    if family == "metastasis":
        top = L.BRAIN_HYPO_MAX_HU if host == "brain" and contrast < 0 else L.METASTASIS_HU[1]
        return L.METASTASIS_MM[0] <= diam <= L.METASTASIS_MM[1] and L.METASTASIS_HU[0] <= mag <= top + 1e-6
    return family == "ggn" and L.GGN_MM[0] <= diam <= L.GGN_MM[1]


def test_hard_draws_fall_in_the_published_ranges_with_both_signs_and_both_edges():
    rng = np.random.default_rng(0)
    for host, p_hypo in [("liver", 0.7), ("spleen", 0.8), ("kidney", 0.8), ("brain", 0.6), ("lung", 0.0)]:
        draws = [L.draw_hard_lesion(rng, host, p_hypo) for _ in range(400)]
        for d in draws:
            assert _in_published_range(d.family, host, d.contrast, d.diameter_mm), d
            assert d.kind.startswith(host) and not d.shrink
            assert 0 <= d.sigma <= L.SOFT_EDGE_MAX_FRACTION * d.diameter_mm + 1e-9
        assert {d.sigma == 0 for d in draws} == {True, False}, host  # sharp and soft edges
        if host == "lung":
            assert all(d.absolute and L.GGN_HU[0] <= d.contrast <= L.GGN_HU[1] for d in draws)
            continue
        assert {d.contrast < 0 for d in draws} == {True, False}, host  # hypo- and hyperdense
        fams = [d.family for d in draws]
        assert abs(fams.count("lcd") / len(fams) - L.HARD_MIX["lcd"]) < 0.08
        inserts = {min(range(4), key=lambda k: abs(d.diameter_mm - LCD[k, 0])) for d in draws if d.family == "lcd"}
        assert inserts == {0, 1, 2, 3}


def test_hard_phantoms_place_drawn_sizes_in_every_host_organ():
    hosts, n = set(), 0
    for kind in ("abdomen", "chest", "head"):
        for seed in range(12):
            p = make_phantom(seed, kind, 256, lesions="hard")
            clean = make_phantom(seed, kind, 256, n_lesions=0)
            assert p.lesion_profile == "hard" and np.array_equal(p.labels, clean.labels)  # same anatomy
            assert len(p.boxes) == len(p.lesion_families) == len(p.lesion_contrast_hu)
            diff = p.hu - clean.hu
            for box, kind_, fam, c, d in zip(p.boxes.astype(int), p.lesion_kinds, p.lesion_families,
                                             p.lesion_contrast_hu, p.lesion_diameter_mm):  # fmt: skip
                host = kind_.split("_")[0]
                hosts.add(host)
                assert _in_published_range(fam, host, float(c), float(d)), (kind_, fam, c, d)
                inside = diff[box[1] : box[3], box[0] : box[2]]
                peak = inside.max() if c > 0 else inside.min()
                slack = 60.0 if fam == "ggn" else 1e-3  # a ground-glass nodule replaces textured lung (SD 18 HU)
                assert np.sign(peak) == np.sign(c) and abs(peak) <= abs(c) + slack  # drawn with its contrast
                n += 1
    assert hosts == {"liver", "spleen", "kidney", "lung", "brain"}
    assert n >= 36 * 1.5  # 1-5 lesions per slice, most of them fit


#: boxes, kinds and contrasts of the standard profile recorded before the hard profile existed
STANDARD_BEFORE = {
    ("abdomen", 0): ([[65, 104, 95, 136]], ["liver_hypo"], [-90.816]),
    ("abdomen", 2): ([[183, 147, 190, 154]], ["spleen_hypo"], [-70.0]),
    ("chest", 2): ([[76, 94, 83, 101], [182, 152, 189, 162], [62, 141, 93, 176]], ["lung_nodule"] * 3,
                   [826.904, 836.019, 841.904]),  # fmt: skip
    ("head", 0): ([[79, 123, 104, 150], [111, 156, 116, 161], [91, 82, 120, 111], [161, 92, 166, 97]],
                  ["brain_hyper", "brain_hypo", "brain_hyper", "brain_hyper"], [36.599, -23.653, 40.221, 21.546]),
    ("head", 1): ([[143, 177, 152, 188]], ["brain_hypo"], [-14.003]),
}  # fmt: skip


@pytest.mark.parametrize(("kind", "seed"), list(STANDARD_BEFORE))
def test_standard_profile_is_unchanged(kind, seed):
    boxes, kinds, contrast = STANDARD_BEFORE[(kind, seed)]
    p = make_phantom(seed, kind, 256)
    assert p.boxes.astype(int).tolist() == boxes and p.lesion_kinds == kinds
    np.testing.assert_allclose(p.lesion_contrast_hu, contrast, atol=1e-3)
    assert p.lesion_profile == "standard" and set(p.lesion_families) == {"standard"}
    np.testing.assert_array_equal(p.hu, make_phantom(seed, kind, 256, lesions="standard").hu)


def test_unknown_profile_is_refused_in_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="lesion profile") as err:
        make_phantom(0, lesions="easy")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="lesion profile"):
        simulate_dataset(tmp_path / "d", 2, 0.25, seed=0, size=64, lesions="easy")
    assert not (tmp_path / "d").exists()


def test_cli_simulate_hard_writes_a_dataset_whose_card_says_so(tmp_path, capsys):
    out = tmp_path / "hard"
    assert main(["simulate", "--out", str(out), "--n", "3", "--size", "128", "--seed", "4", "--lesions", "hard"]) == 0
    assert "hard lesions" in capsys.readouterr().err
    info = json.loads((out / "dataset.json").read_text())
    assert info["lesions"] == "hard" and "--lesions hard" in info["command"]
    rows = read_lesion_info(out)
    with open(out / "lesions.csv", newline="") as f:
        boxes = [[r["file"], *(float(r[k]) for k in ("x1", "y1", "x2", "y2"))] for r in csv.DictReader(f)]
    assert [[r["file"], *(float(r[k]) for k in ("x1", "y1", "x2", "y2"))] for r in rows] == boxes
    assert len(rows) == sum(len(s.boxes) for s in read_dataset(out)) > 0
    for r in rows:
        host, contrast, diam = r["kind"].split("_")[0], float(r["contrast_hu"]), float(r["diameter_mm"])
        assert _in_published_range(r["family"], host, contrast, diam)  # 2 decimals stay inside the bounds
    std = tmp_path / "std"
    assert main(["simulate", "--out", str(std), "--n", "1", "--size", "64", "--seed", "4"]) == 0
    assert json.loads((std / "dataset.json").read_text())["lesions"] == "standard"
    assert not (std / "lesion_info.csv").exists() and read_lesion_info(std) == []
