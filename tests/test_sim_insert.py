"""Synthetic lesion insertion (a detector's augmentation): where lesions go, what is added, the boxes, the patches."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.patches import PatchDataset, patch_batches
from napari_lidnet._training.trainer import Trainer
from napari_lidnet.inference import detect
from napari_lidnet.io.dataset import Sample
from napari_lidnet.metrics.froc import froc
from napari_lidnet.models.normalize import HU_SCALE
from napari_lidnet.sim.insert import (
    INSERT_CONTRAST_HU,
    INSERT_DIAMETER_MM,
    LUNG_DIAMETER_MM,
    LUNG_HU,
    LUNG_SOLID_HU,
    LUNG_SUBSOLID_HU,
    MASS_HU,
    MASS_MIN_MM,
    MASS_TEXTURE_HU,
    SOFT_TISSUE_HU,
    insert_lesions,
    lung_mask,
)


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


def _chest(size: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Air (-1000 HU) around a body of soft tissue (40 HU) holding a lung (-850 HU, noisy); the lung mask too."""
    yy, xx = np.mgrid[:size, :size] - size / 2
    r = np.hypot(yy, xx)
    full = np.where(r < 0.45 * size, 40.0, -1000.0).astype(np.float32)
    lung = r < 0.33 * size
    rng = np.random.default_rng(seed)
    full[lung] = -850.0
    full += rng.normal(0, 8, full.shape).astype(np.float32)  # the normal-dose image's own noise
    low = full + rng.normal(0, 25, full.shape).astype(np.float32)
    return full, low, lung


def test_lung_nodules_replace_lung_by_their_own_density_inside_the_lung():
    full, low, lung = _chest()
    kinds = set()
    for seed in range(30):
        f2, l2, boxes = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(seed), lung=1.0)
        added = f2 - full
        np.testing.assert_allclose(l2 - low, added, atol=1e-3)  # the same signal in both: the noise is kept
        assert len(boxes) >= 1
        assert np.abs(added[~ndimage.binary_dilation(lung, iterations=6)]).max() <= LUNG_SOLID_HU[1] - 40 + 30
        assert added.min() > -1.0  # a nodule only adds density: it never carves the chest wall
        for x1, y1, x2, y2 in boxes.astype(int):
            cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
            assert lung[cy, cx]  # the centre in the lung (a nodule may touch the pleura)
            peak = ndimage.gaussian_filter(f2, 1.0)[y1:y2, x1:x2].max()
            assert LUNG_SUBSOLID_HU[0] - 100 <= peak <= LUNG_SOLID_HU[1] + 30, peak
            kinds.add("solid" if peak > LUNG_SOLID_HU[0] - 60 else "subsolid")
            assert max(x2 - x1, y2 - y1) * 0.7 <= LUNG_DIAMETER_MM[1] * 1.6 + 2
    assert kinds == {"solid", "subsolid"}
    assert LUNG_HU[0] < -850 < LUNG_HU[1] and not LUNG_HU[0] <= -1000  # lung yes, air outside the body no


def test_max_mm_draws_masses_that_the_default_sizes_never_reach():
    """``max_mm``: lung masses (and soft-tissue ones) up to that diameter; the default stops at 40 mm in lung."""
    px = 0.7

    def largest_mm(max_mm: float, lung: float) -> list[float]:
        full, low = _chest(384)[:2] if lung else _tissue(256)
        sizes = []
        for seed in range(25):
            rng = np.random.default_rng(seed)
            b = insert_lesions(full, low, np.zeros((0, 4)), px, rng, max_lesions=1, lung=lung, max_mm=max_mm)[2]
            sizes += [max(x2 - x1, y2 - y1) * px for x1, y1, x2, y2 in b]
        return sizes

    default, masses = largest_mm(0.0, 1.0), largest_mm(60.0, 1.0)
    assert max(default) <= LUNG_DIAMETER_MM[1] * 1.3 and max(masses) <= 60.0 * 1.3
    assert sum(s > 40.0 for s in masses) >= 3 and np.median(masses) > np.median(default)
    assert max(largest_mm(60.0, 0.0)) > 1.2 * INSERT_DIAMETER_MM[1] >= max(largest_mm(0.0, 0.0))  # soft tissue


def test_tumour_like_masses_run_into_the_wall_without_carving_it():
    """``attached``: lung masses of 20 mm up that mostly meet the chest wall (nodules rarely do), the wall kept, the
    same signal in both images."""
    full, low, lung = _chest(384)
    near_wall = ~lung & (full > -500)
    counts = {}
    for attached in (1.0, 0.0):
        on_wall, sizes = 0, []
        for seed in range(25):
            rng = np.random.default_rng(seed)
            f2, l2, b = insert_lesions(full, low, np.zeros((0, 4)), 0.7, rng, 1, lung=1.0, max_mm=60, attached=attached)
            added = f2 - full
            np.testing.assert_allclose(l2 - low, added, atol=1e-3)
            painted = added > 200
            on_wall += bool((ndimage.binary_dilation(painted, iterations=3) & near_wall).any())
            sizes += [max(x2 - x1, y2 - y1) * 0.7 for x1, y1, x2, y2 in b]
            if attached:
                wall = ~ndimage.binary_dilation(lung, iterations=6)
                assert np.abs(added[wall]).max() <= MASS_HU[1] - 40 + 4 * MASS_TEXTURE_HU[1]
        counts[attached] = on_wall
        if attached:
            assert len(sizes) >= 20 and min(sizes) >= 0.8 * MASS_MIN_MM and max(sizes) <= 60 * 1.3
    assert counts[1.0] >= 15 > 2 * counts[0.0]
    with pytest.raises(ValueError, match="insert_lung"):
        TrainConfig(out="x", insert_lesions=0.5, insert_attached=0.5).validate()


def test_the_lung_mask_holds_lung_and_not_gas_air_outside_or_a_small_pocket():
    full, _, lung = _chest(256)
    full[225:235, 120:150] = -1000.0  # a gas pocket in the wall below the lung
    full[100:108, 20:28] = -850.0  # a small lung-density pocket in the wall (8 x 8 px: under LUNG_MIN_MM2)
    found = lung_mask(full, 0.7)
    assert found[ndimage.binary_erosion(lung, iterations=4)].mean() > 0.99
    assert not found[~ndimage.binary_dilation(lung, iterations=4)].any()
    assert not lung_mask(np.full((64, 64), -1000.0, np.float32), 0.7).any()


def test_without_the_lung_share_nothing_goes_into_the_lung():
    full, low, lung = _chest()
    for seed in range(10):
        f2, _, boxes = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(seed))
        assert np.abs(f2 - full)[ndimage.binary_erosion(lung, iterations=3)].max() < 1.0
        plain = insert_lesions(full, low, np.zeros((0, 4)), 0.7, np.random.default_rng(seed), lung=0.0)
        np.testing.assert_array_equal(plain[0], f2)  # lung=0 is the soft-tissue-only draw


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
    with pytest.raises(ValueError, match="insert_lung"):
        TrainConfig(out="x", insert_lung=-0.1).validate()


def test_patches_and_batches_carry_the_largest_diameter():
    """``insert_max_mm`` reaches the lesions of PatchDataset and patch_batches: masses the default never draws."""
    full = np.full((320, 320), 40.0, np.float32)
    slices = [Sample(f"s{i}", full, full.copy(), np.zeros((0, 4), np.float32), 0.5) for i in range(4)]

    def largest_mm(**kw) -> float:
        items = PatchDataset(slices, 256, seed=3, repeat=8, insert_fraction=1.0, **kw)
        return max(max(b[2] - b[0], b[3] - b[1]) * 0.5 for i in range(len(items)) for b in items[i][2])

    assert largest_mm() <= 1.2 * INSERT_DIAMETER_MM[1] < 40.0 < largest_mm(insert_max_mm=80.0)
    batch = next(patch_batches(slices, 256, 8, 1, seed=4, insert_fraction=1.0, insert_max_mm=80.0))
    default = next(patch_batches(slices, 256, 8, 1, seed=4, insert_fraction=1.0))
    def mean_largest(boxes: list) -> float:
        return float(np.mean([float((bb[:, 2:] - bb[:, :2]).max()) for bb in boxes]))

    assert mean_largest(batch.boxes) > mean_largest(default.boxes)


def test_patches_get_lung_nodules_where_their_slice_has_lung():
    full, low, lung = _chest(256)
    slices = [Sample(f"s{i}", full, low, np.zeros((0, 4), np.float32), 0.7) for i in range(2)]
    data = PatchDataset(slices, 96, seed=3, repeat=6, insert_fraction=1.0, insert_lung=1.0)
    found = 0
    for i in range(len(data)):
        rng = np.random.default_rng([3, i])
        none = np.zeros((0, 4))
        y0, x0 = data._corner(rng, full.shape, none, none)  # the patch's corner, as __getitem__ draws it
        _, _, boxes = data[i]
        for x1, y1, x2, y2 in boxes:
            cx, cy = x0 + (x1 + x2) / 2, y0 + (y1 + y2) / 2
            flipped_cx = x0 + 96 - (x1 + x2) / 2  # the patch may have been flipped left-right
            assert lung[int(cy), int(cx)] or lung[int(cy), int(flipped_cx)]
            found += 1
    assert found >= 3


def test_patches_and_batches_carry_the_tumour_like_masses():
    """``insert_attached`` reaches PatchDataset and patch_batches: every lung lesion a mass of 20 mm up."""
    full, low, _ = _chest(384)
    slices = [Sample(f"s{i}", full, low, np.zeros((0, 4), np.float32), 0.7) for i in range(2)]

    def sizes_mm(**kw) -> list[float]:
        data = PatchDataset(slices, 192, seed=5, repeat=6, insert_fraction=1.0, insert_lung=1.0, **kw)
        return [max(b[2] - b[0], b[3] - b[1]) * 0.7 for i in range(len(data)) for b in data[i][2]]

    masses, nodules = sizes_mm(insert_max_mm=60.0, insert_attached=1.0), sizes_mm(insert_max_mm=60.0)
    assert len(masses) >= 6 and min(masses) >= 0.8 * MASS_MIN_MM and min(nodules) < 0.8 * MASS_MIN_MM
    batch = next(patch_batches(slices, 192, 4, 1, seed=6, insert_fraction=1.0, insert_lung=1.0, insert_attached=1.0))
    assert all(float((b[:, 2:] - b[:, :2]).max()) * 0.7 >= 0.8 * MASS_MIN_MM for b in batch.boxes if len(b))


def _flat(seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    full = (60 + r.normal(0, 5, (96, 96))).astype(np.float32)
    return full, full + r.normal(0, 20, full.shape).astype(np.float32)


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_a_detector_learns_lesions_from_lesion_free_slices_only_with_insertion(tmp_path, share):
    """Normal scans without a single annotation train a detector once synthetic lesions are inserted; without
    insertion there is nothing to learn and the run is refused."""
    torch.manual_seed(0)
    samples = [Sample(f"s{i}", *_flat(i), np.zeros((0, 4), np.float32), 0.7) for i in range(8)]
    cfg = TrainConfig(
        out=str(tmp_path / "run"), mode="pixel", pretrain_denoiser_steps=0, pretrain_detector_steps=120, rounds=0,
        batch_size=4, patch_size=64, detector_lr=3e-3, detector_kwargs={"width": 8}, val_fraction=0.25,
        device="cpu", insert_lesions=share,
    )  # fmt: skip
    if not share:  # nothing to learn from: refused before anything is written, not trained into a blind detector
        with pytest.raises(ValueError, match="no lesion boxes"):
            Trainer(cfg, samples)
        assert not (tmp_path / "run").exists()
        return
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
    assert sens >= 0.5, sens
