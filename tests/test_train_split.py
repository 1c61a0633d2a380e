"""What a run's numbers mean: contiguous validation/test blocks, one checkpoint rule for every mode, the last
round without validation, and a held-out test part that is measured but never chooses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.split import slice_key, split_samples
from napari_lidnet._training.trainer import RULE_LAST, RULE_SCORE, Trainer, selection_score
from napari_lidnet.io.dataset import Sample
from napari_lidnet.models.weights import load_weights


def volume(name: str, n: int, size: int = 48, seed: int = 0) -> list[Sample]:
    """Slices ``name#z`` of a smooth volume (neighbours alike) with Gaussian noise, a lesion box on each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for z in range(n):
        full = (40 + 60 * np.sin(xx / 7 + z / 5) * np.cos(yy / 9)).astype(np.float32)
        low = full + rng.normal(0, 30, full.shape).astype(np.float32)
        out.append(Sample(f"{name}#{z}", full, low, np.array([[8, 8, 20, 20]], np.float32), 0.7))
    return out


def test_slices_are_split_by_contiguous_blocks_with_a_guard():
    data = volume("a", 20) + volume("b", 10)
    train, val, test = split_samples(data, 0.2, seed=1, val_max=8, test_fraction=0.1, test_max=8)
    assert (len(val), len(test)) == (6, 3)
    names = [s.name for s in train + val + test]
    assert len(set(names)) == len(names)
    held = [slice_key(s) for s in val + test]
    for part in (val, test, val + test):  # each a run of consecutive slices within each volume
        for group in {g for g, _ in map(slice_key, part)}:
            z = sorted(p for g, p in map(slice_key, part) if g == group)
            assert z == list(np.arange(z[0], z[0] + len(z)))
    for s in train:  # no training slice next to a held-out slice of its volume
        g, z = slice_key(s)
        assert all(not (g == hg and abs(z - hz) <= 1) for hg, hz in held), s.name
    assert len(train) >= len(data) - 9 - 4  # at most two guard slices per held-out block boundary
    again = split_samples(data, 0.2, seed=1, val_max=8, test_fraction=0.1, test_max=8)
    assert [[s.name for s in part] for part in again] == [[s.name for s in part] for part in (train, val, test)]


def test_independent_slices_split_at_random_and_at_least_one_trains():
    flat = [Sample(f"s{i}", np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), np.zeros((0, 4)), 1.0)
            for i in range(10)]  # fmt: skip
    train, val, test = split_samples(flat, 0.3, seed=0, val_max=8, test_fraction=0.2)
    assert (len(train), len(val), len(test)) == (5, 3, 2)
    assert split_samples(flat[:2], 0.5, 0, 8, 0.5)[0]  # two slices, both parts asked: one still trains


def test_one_checkpoint_rule_for_every_mode():
    m = {"psnr": 30.0, "ssim": 0.8, "sensitivity": 0.5}
    assert selection_score(m) == 30.0 + 20.0 * 0.5
    assert selection_score({"psnr": 30.0}) == 30.0  # no annotated lesions on validation: PSNR alone
    assert selection_score({}) is None


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out), mode="pixel", pretrain_denoiser_steps=60, pretrain_detector_steps=0, rounds=2,
        denoiser_steps=10, batch_size=4, patch_size=32, lr=3e-3, denoiser_kwargs={"width": 8, "factor": 2},
        detector_kwargs={"width": 4}, device="cpu",
    )  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_weights(path)[0].state_dict()


def test_without_validation_the_last_round_is_the_result(tmp_path):
    run = tmp_path / "run"
    t = Trainer(_config(run, val_fraction=0.0), volume("v", 8))
    records = list(t.run())
    checks = [r for r in records if r["stage"] == "validate" and r["after"] != "start"]
    assert [r["after"] for r in checks] == ["pretrain-denoiser", "round1-denoiser", "round2-denoiser"]
    assert all(r["is_best"] for r in checks)
    best, last = _weights(run / "best_denoiser"), _weights(run / "last_denoiser")
    assert all(torch.equal(best[k], last[k]) for k in best)
    assert t.state["selection"] == RULE_LAST and t.state["best_after"] == "round2-denoiser"
    assert load_weights(run / "best_denoiser")[1]["training"]["selection"] == RULE_LAST


def test_the_test_part_is_measured_but_never_chooses(tmp_path):
    data = volume("v", 16)
    cfg = dict(val_fraction=0.2, test_fraction=0.2)
    t = Trainer(_config(tmp_path / "a", **cfg), data)
    assert len(t.val_samples) == 3 and len(t.test_samples) == 3
    test_names = {s.name for s in t.test_samples}
    assert not test_names & {s.name for s in t.train_samples + t.val_samples}
    list(t.run())
    assert t.state["selection"] == RULE_SCORE
    start, best = t.state["start_test_metrics"], t.state["best_test_metrics"]
    assert best["psnr"] > start["psnr"] + 1.0  # measured on slices that neither trained nor chose
    # other images on the test slices: the same training, the same choice, other test numbers
    rng = np.random.default_rng(5)
    swapped = [Sample(s.name, s.full_hu, s.full_hu + rng.normal(0, 90, s.full_hu.shape).astype(np.float32), s.boxes,
                      s.spacing_mm) if s.name in test_names else s for s in data]  # fmt: skip
    u = Trainer(_config(tmp_path / "b", **cfg), swapped)
    list(u.run())
    assert u.state["best_after"] == t.state["best_after"] and u.state["history"] == t.state["history"]
    a, b = _weights(tmp_path / "a" / "best_denoiser"), _weights(tmp_path / "b" / "best_denoiser")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert u.state["start_test_metrics"]["psnr"] < start["psnr"] - 3.0


@pytest.mark.parametrize("bad", [dict(test_fraction=1.0), dict(val_fraction=0.5, test_fraction=0.5)])
def test_impossible_splits_are_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="fraction"):
        _config(tmp_path, **bad).validate()
