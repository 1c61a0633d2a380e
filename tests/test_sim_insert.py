"""Synthetic lesion insertion (a detector's augmentation): where lesions go, what is added, the boxes, the patches."""

import numpy as np
import pytest
import torch

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.patches import PatchDataset, patch_batches
from napari_lidnet._training.trainer import Trainer
from napari_lidnet.inference import detect
from napari_lidnet.io.dataset import Sample
from napari_lidnet.metrics.froc import froc
from napari_lidnet.models.normalize import HU_SCALE
from napari_lidnet.sim.insert import INSERT_CONTRAST_HU, SOFT_TISSUE_HU, insert_lesions


def _tissue(size: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left half soft tissue (40 HU), right half fat (-100 HU); the low dose adds white noise (SD 20 HU)."""
    full = np.full((size, size), 40.0, np.float32)
    full[:, size // 2 :] = -100.0
    low = full + np.random.default_rng(seed).normal(0, 20, full.shape).astype(np.float32)
    return full, low


def test_lesions_land_in_soft_tissue_with_tight_boxes_and_the_same_signal_in_both_images():
    full, low = _tissue()
    for seed in range(20):
        f2, l2, boxes = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(seed))
        added = f2 - full
        assert len(boxes) >= 1
        np.testing.assert_allclose(l2 - low, added, atol=1e-4)  # same signal, noise untouched
        assert np.abs(added[:, 64 - 2 :]).max() < 1.0  # nothing in the fat (the edge tail aside)
        for x1, y1, x2, y2 in boxes.astype(int):
            a = np.abs(added)
            assert INSERT_CONTRAST_HU[0] * 0.5 <= a[y1:y2, x1:x2].max() <= INSERT_CONTRAST_HU[1] + 1e-3
            # tight: each side's inner line holds a pixel at least half covered, the line just outside none
            for inner, outer in (
                (a[y1, x1:x2], a[y1 - 1, x1:x2]), (a[y2 - 1, x1:x2], a[y2, x1:x2]),
                (a[y1:y2, x1], a[y1:y2, x1 - 1]), (a[y1:y2, x2 - 1], a[y1:y2, x2]),
            ):  # fmt: skip
                assert inner.max() > outer.max()
    assert (full == _tissue()[0]).all() and (low == _tissue()[1]).all()  # inputs untouched


def test_existing_boxes_are_kept_and_avoided_and_lesions_never_overlap():
    full, low = _tissue()
    given = np.array([[10, 10, 40, 40]], np.float32)
    for seed in range(20):
        _, _, boxes = insert_lesions(full, low, given, 0.5, np.random.default_rng(seed), max_lesions=3)
        np.testing.assert_array_equal(boxes[0], given[0])
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = min(a[2], b[2]) - max(a[0], b[0]) > 0 and min(a[3], b[3]) - max(a[1], b[1]) > 0
                assert not overlap, (seed, a, b)


def test_no_room_means_no_lesion_and_the_draw_is_seeded():
    air = np.full((64, 64), -1000.0, np.float32)
    f2, l2, boxes = insert_lesions(air, air, np.zeros((0, 4)), 0.7, np.random.default_rng(0))
    assert len(boxes) == 0 and (f2 == air).all() and (l2 == air).all()
    full, low = _tissue()
    one = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(3))
    two = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(3))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="square"):
        insert_lesions(full[:, :100], low[:, :100], np.zeros((0, 4)), 0.7, np.random.default_rng(0))
    assert SOFT_TISSUE_HU[0] < 40.0 < SOFT_TISSUE_HU[1] and not SOFT_TISSUE_HU[0] <= -100.0


def test_patches_of_lesion_free_slices_get_boxes_only_when_asked():
    full = np.full((160, 160), 40.0, np.float32)
    low = full + np.random.default_rng(1).normal(0, 20, full.shape).astype(np.float32)
    slices = [Sample(f"s{i}", full, low, np.zeros((0, 4), np.float32), 0.7) for i in range(4)]
    plain = PatchDataset(slices, 96, seed=1, repeat=4)
    augmented = PatchDataset(slices, 96, seed=1, repeat=4, insert_fraction=1.0)
    assert all(len(plain[i][2]) == 0 for i in range(len(plain)))
    items = [augmented[i] for i in range(len(augmented))]
    assert all(len(b) >= 1 for _, _, b in items)
    low_p, full_p, b = items[0]
    x1, y1, x2, y2 = b[0].astype(int)
    centre = (full_p[(y1 + y2) // 2, (x1 + x2) // 2] * HU_SCALE) - 40.0
    assert abs(centre) >= INSERT_CONTRAST_HU[0] * 0.5  # the box holds a lesion at network scale too
    batch = next(patch_batches(slices, 96, 4, 1, seed=2, insert_fraction=1.0))
    assert all(len(bb) >= 1 for bb in batch.boxes)
    with pytest.raises(ValueError, match="insert_lesions"):
        TrainConfig(out="x", insert_lesions=1.5).validate()


def _flat(seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    full = (60 + r.normal(0, 5, (96, 96))).astype(np.float32)
    return full, full + r.normal(0, 20, full.shape).astype(np.float32)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_detector_learns_lesions_from_lesion_free_slices_only_with_insertion(tmp_path, share):
    """Normal scans without a single annotation train a detector once synthetic lesions are inserted."""
    torch.manual_seed(0)
    samples = [Sample(f"s{i}", *_flat(i), np.zeros((0, 4), np.float32), 0.7) for i in range(8)]
    cfg = TrainConfig(
        out=str(tmp_path / "run"), mode="pixel", pretrain_denoiser_steps=0, pretrain_detector_steps=120, rounds=0,
        batch_size=4, patch_size=64, detector_lr=3e-3, detector_kwargs={"width": 8}, val_fraction=0.25,
        device="cpu", insert_lesions=share,
    )  # fmt: skip
    trainer = Trainer(cfg, samples)
    list(trainer.run())
    images, truth = [], []
    for k in range(10):  # held-out slices, lesions from the same generator
        full, low = _flat(100 + k)
        with_lesions, _, boxes = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(k))
        images.append(with_lesions)
        truth.append(boxes)
    rows = detect(trainer.detector.eval(), np.stack(images), score_threshold=0.05).reshape(-1, 6)
    found = [(rows[rows[:, 0] == i][:, 1:5], rows[rows[:, 0] == i][:, 5]) for i in range(len(images))]
    sens = froc(found, truth, fp_rates=(0.5, 1, 2)).mean_sensitivity
    assert sens >= 0.5 if share else sens < 0.2, sens
