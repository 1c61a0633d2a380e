"""Each training branch is what it says: the joint terms move the denoiser, the detector stays frozen in the
denoiser's step, every mode has exactly its terms, and the weights are calibrated on fixed lesion patches."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.losses import detection_loss, roi_perceptual_loss, whole_image_perceptual_loss
from napari_lidnet._training.patches import PatchBatch, calibration_batch, patch_batches
from napari_lidnet._training.trainer import Trainer
from napari_lidnet.io.dataset import Sample
from napari_lidnet.models.normalize import hu_to_net

TERMS = {
    "pixel": set(),
    "lidnet": {"detection", "roi_perceptual"},
    "lidnet-noroi": {"detection"},
    "lidnet-wholeperc": {"detection", "whole_perceptual"},
}
JOINT = ("lidnet", "lidnet-noroi", "lidnet-wholeperc")


def samples(n: int = 6, size: int = 64, lesions_on: tuple[int, ...] | None = None, seed: int = 0) -> list[Sample]:
    """Soft tissue with a bright square lesion (on the slices ``lesions_on``, default all) and Gaussian noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        full = np.full((size, size), 50.0, np.float32)
        boxes = np.zeros((0, 4), np.float32)
        if lesions_on is None or i in lesions_on:
            x, y = rng.integers(8, size - 24, 2)
            full[y : y + 14, x : x + 14] += 90.0
            boxes = np.array([[x, y, x + 14, y + 14]], np.float32)
        low = full + rng.normal(0, 40, full.shape).astype(np.float32)
        out.append(Sample(f"s{i}", full, low, boxes, 0.7))
    return out


def config(out: Path, mode: str, **kw) -> TrainConfig:
    cfg = dict(
        out=str(out), mode=mode, pretrain_denoiser_steps=0, pretrain_detector_steps=0, rounds=1,
        denoiser_steps=2, detector_steps=0, batch_size=4, patch_size=32, denoiser_kwargs={"width": 8, "factor": 2},
        detector_kwargs={"width": 4}, val_fraction=0.0, device="cpu", init_detector=DETECTOR["path"],
    )  # fmt: skip
    cfg.update(kw)
    return TrainConfig(**cfg)


#: a detector pretrained on these lesions (an untrained one's heads barely respond: its detection gradient is ~0)
DETECTOR: dict[str, str | None] = {"path": None}


@pytest.fixture(scope="module", autouse=True)
def pretrained_detector(tmp_path_factory):
    run = tmp_path_factory.mktemp("detector")
    cfg = config(run, "pixel", pretrain_detector_steps=40, detector_lr=3e-3, rounds=0, init_detector=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest does for each test (module fixtures run before it)
    try:
        list(Trainer(cfg, samples(8, seed=9)).run())
    finally:
        torch.set_num_threads(threads)
    DETECTOR["path"] = str(run / "last_detector")
    yield
    DETECTOR["path"] = None


def trainer(out: Path, mode: str, data: list | None = None, **kw) -> Trainer:
    return Trainer(config(out, mode, **kw), data or samples())


def a_batch(t: Trainer) -> PatchBatch:
    batch = next(patch_batches(t.train_samples, 32, 4, 1, seed=1))
    assert sum(len(b) for b in batch.boxes) > 0
    return batch


def flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mode", list(TERMS))
def test_each_mode_has_exactly_its_terms(tmp_path, mode):
    t = trainer(tmp_path / mode, mode)
    batch = a_batch(t)
    t.detector.eval()
    with torch.no_grad():
        den = t.denoiser(batch.low)
        aux = t.aux_losses(den, batch)
        assert set(aux) == TERMS[mode]
        want = {
            "detection": (detection_loss(t.detector, den, batch.boxes), t.cfg.det_weight),
            "roi_perceptual": (roi_perceptual_loss(t.detector, den, batch.full, batch.boxes), t.cfg.roi_weight),
            "whole_perceptual": (whole_image_perceptual_loss(t.detector, den, batch.full), t.cfg.roi_weight),
        }
        for key, (value, weight) in aux.items():
            assert float(value) > 0 and weight > 0
            assert float(value) == pytest.approx(float(want[key][0]), rel=1e-6) and weight == want[key][1]


def test_roi_term_sees_only_lesions_whole_image_term_everything(tmp_path):
    full = torch.full((1, 1, 96, 96), 0.05)
    full[..., 6:18, 6:18] = 0.15
    denoised = full.clone()
    denoised[..., 70:, 70:] += 0.2  # far from the only lesion
    batch = PatchBatch(denoised, full, [torch.tensor([[6.0, 6.0, 18.0, 18.0]])])
    with torch.no_grad():
        t = trainer(tmp_path / "a", "lidnet")
        roi = t.detector.eval() and t.aux_losses(denoised, batch)["roi_perceptual"][0]
        t = trainer(tmp_path / "b", "lidnet-wholeperc")
        whole = t.detector.eval() and t.aux_losses(denoised, batch)["whole_perceptual"][0]
    assert float(roi) < 1e-9 and float(whole) > 1e-4


@pytest.mark.parametrize("mode", JOINT)
def test_joint_terms_change_the_denoiser_update_and_zero_weights_remove_them(tmp_path, mode):
    t = trainer(tmp_path / mode, mode)
    batch = a_batch(t)
    start = copy.deepcopy(t.denoiser.state_dict())

    def update(scales: dict[str, float], who: Trainer = t) -> torch.Tensor:
        who.denoiser.load_state_dict(start)
        opt = torch.optim.SGD(who.denoiser.parameters(), lr=1e-2)
        who.denoiser_step(batch, opt, who.denoiser, scales)
        return flat(who.denoiser) - torch.cat([v.flatten() for v in start.values()])

    scales = t.calibrate()
    assert set(scales) == TERMS[mode] and all(v > 0 for v in scales.values())
    pixel_only, joint = update({}), update(scales)
    assert (joint - pixel_only).norm() > 0.05 * pixel_only.norm()  # the joint terms move the denoiser
    off = trainer(tmp_path / f"{mode}-0", mode, det_weight=0.0, roi_weight=0.0)
    assert off.calibrate() == {}
    assert torch.equal(update(off.calibrate(), off), pixel_only)  # weights 0: exactly the pixel-only step


@pytest.mark.parametrize("mode", JOINT)
def test_the_detector_is_bit_identical_after_the_denoisers_joint_steps(tmp_path, mode):
    t = trainer(tmp_path / mode, mode, denoiser_steps=3)
    t.detector.train()  # as a detector stage leaves it: the joint step must freeze it itself
    before = copy.deepcopy(t.detector.state_dict())  # parameters and BatchNorm statistics
    t.denoiser_step(a_batch(t), torch.optim.SGD(t.denoiser.parameters(), lr=1e-2), t.denoiser, t.calibrate())
    assert all(torch.equal(before[k], v) for k, v in t.detector.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in t.detector.parameters())
    den_before = flat(t.denoiser)
    records = list(t.run())  # a whole joint round (no detector stage): the detector does not move either
    assert [r["stage"] for r in records if "losses" in r] == ["round1-denoiser"] * 3
    assert all(torch.equal(before[k], v) for k, v in t.detector.state_dict().items())
    assert not torch.equal(den_before, flat(t.denoiser))


def test_calibration_patches_are_fixed_and_all_hold_lesions(tmp_path):
    data = samples(8, lesions_on=(0, 5))
    t = trainer(tmp_path / "c", "lidnet", data)
    cal = t.calibration_set()
    assert len(cal.low) == 2 and all(len(b) == 1 for b in cal.boxes)  # one patch per lesion, each with it
    again = calibration_batch(t.train_samples, 32, 8, seed=0)
    assert torch.equal(again.low, cal.low) and torch.equal(again.full, cal.full)
    x1, y1, x2, y2 = cal.boxes[0][0].tolist()
    assert float(cal.full[0, 0, int(y1) + 2, int(x1) + 2]) == pytest.approx(float(hu_to_net(np.float32(140.0))))
    scales = t.calibrate()
    assert set(scales) == {"detection", "roi_perceptual"} and min(scales.values()) > 0
    assert t.calibrate() == scales  # same models, same patches: same scales (on every process too)


def test_roi_term_counts_when_the_rounds_first_batch_has_no_lesion(tmp_path):
    """One lesion in eight slices: the round's first batch holds none. The ROI term's weight must not fall to 0
    (it did when the first batch calibrated it): with it the denoiser ends elsewhere than with pixel loss alone."""
    data = samples(8, lesions_on=(3,), seed=2)
    kw = dict(batch_size=2, denoiser_steps=6, det_weight=0.0, seed=4)
    first = next(patch_batches(data, 32, 2, 7, seed=4000))
    assert sum(len(b) for b in first.boxes) == 0  # the first batch the old rule calibrated on
    with_roi = trainer(tmp_path / "roi", "lidnet", data, roi_weight=0.3, **kw)
    list(with_roi.run())
    pixel = trainer(tmp_path / "pix", "lidnet", data, roi_weight=0.0, **kw)
    list(pixel.run())
    assert not torch.equal(flat(with_roi.denoiser), flat(pixel.denoiser))
    assert with_roi.state["calibration"]["round1-denoiser"]["roi_perceptual"] > 0
