"""Randomised simulated datasets: per-slice parameters in scanner.csv, negatives, reader round trip."""

import json

import numpy as np
import pytest

from napari_lidnet.io.dataset import read_dataset, read_info
from napari_lidnet.sim.make_dataset import read_scanner_csv, simulate_dataset
from napari_lidnet.sim.scanner import ScannerParams

SIZE = 64


def test_random_dataset_records_parameters_and_round_trips(tmp_path):
    out = simulate_dataset(tmp_path / "r", 6, 0.25, seed=2, size=SIZE, domain="random", negatives=0.5)
    info = read_info(out)
    assert info["domain"] == "random" and info["dose"] is None and info["n"] == 6
    assert "--domain random" in info["command"] and "--negatives 0.5" in info["command"]
    samples = read_dataset(out)
    rows = read_scanner_csv(out)
    assert [s.name for s in samples] == list(rows)
    for s in samples:
        row = rows[s.name]
        sc = ScannerParams.from_record(row)
        assert 0.05 <= sc.dose <= 0.5 and sc.n_views >= 8 and 1 <= sc.thickness_mm <= 5
        assert row["kind"] in ("head", "chest", "abdomen")
        assert float(row["pixel_mm"]) == s.spacing_mm and int(row["n_boxes"]) == len(s.boxes)
        if row["negative"] == "1":
            assert s.boxes.shape == (0, 4)
        assert s.full_hu.shape == (SIZE, SIZE) and s.low_hu is not None
        assert s.full_hu[0, 0] == -1000  # air outside the FOV circle, table included
    assert {r["negative"] for r in rows.values()} == {"0", "1"}
    again = simulate_dataset(tmp_path / "r2", 6, 0.25, seed=2, size=SIZE, domain="random", negatives=0.5)
    for name in ("scanner.csv", "lesions.csv", "low/sim_00003.png"):
        assert (out / name).read_bytes() == (again / name).read_bytes()


def test_fixed_domain_negatives_have_no_boxes(tmp_path):
    out = simulate_dataset(tmp_path / "f", 3, 0.5, seed=1, size=SIZE, negatives=1.0)
    assert all(s.boxes.shape == (0, 4) for s in read_dataset(out))
    rows = read_scanner_csv(out)
    assert {r["kernel"] for r in rows.values()} == {"standard"} and {r["dose"] for r in rows.values()} == {"0.5"}
    assert json.loads((out / "dataset.json").read_text())["kind"] == "abdomen"


def test_head_only_mix(tmp_path):
    out = simulate_dataset(tmp_path / "h", 2, 0.25, seed=3, size=SIZE, domain="random", kinds=("head",))
    assert {r["kind"] for r in read_scanner_csv(out).values()} == {"head"}
    body = [s.full_hu[s.full_hu > -500] for s in read_dataset(out)]
    assert all(np.percentile(b, 95) > 300 for b in body)  # skull


def test_clean_target_dataset_pairs_the_same_low_dose_with_the_noiseless_scan(tmp_path):
    noisy = simulate_dataset(tmp_path / "n", 3, 0.25, seed=4, size=SIZE, domain="random")
    clean = simulate_dataset(tmp_path / "c", 3, 0.25, seed=4, size=SIZE, domain="random", target="clean")
    info = read_info(clean)
    assert info["target"] == "clean" and "--target clean" in info["command"]
    assert read_info(noisy)["target"] == "noisy" and "--target" not in read_info(noisy)["command"]
    for a, b in zip(read_dataset(noisy), read_dataset(clean), strict=True):
        assert np.array_equal(a.low_hu, b.low_hu) and np.array_equal(a.boxes, b.boxes)
        body = b.full_hu > -500
        # the noisy target differs from the clean one by its noise only: a few HU, centred on zero
        assert 0.5 < np.std((a.full_hu - b.full_hu)[body]) < 30 and abs(np.mean((a.full_hu - b.full_hu)[body])) < 1
    assert (tmp_path / "n" / "scanner.csv").read_bytes() == (tmp_path / "c" / "scanner.csv").read_bytes()


def test_unknown_target_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="unknown target 'smooth'"):
        simulate_dataset(tmp_path / "x", 2, 0.25, seed=1, size=SIZE, target="smooth")
    assert not (tmp_path / "x").exists()
