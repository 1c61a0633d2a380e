"""Phantoms: realistic HU per tissue, reproducible, lesions inside organs with tight boxes, smooth volumes."""

import numpy as np
import pytest

from napari_lidnet.sim.phantom import LABELS, MIN_BOX_PX, make_phantom, make_phantom_volume

HOST = {"liver": "liver", "spleen": "spleen", "kidney": "kidney", "lung": "lung"}


def test_reproducible_and_seed_dependent():
    a, b, c = make_phantom(5, size=256), make_phantom(5, size=256), make_phantom(6, size=256)
    assert a.hu.dtype == np.float32 and a.hu.shape == (256, 256)
    np.testing.assert_array_equal(a.hu, b.hu)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.lesion_kinds == b.lesion_kinds
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tissue_values_are_realistic(seed):
    p = make_phantom(seed, n_lesions=0)
    assert 0.6 <= p.spacing_mm <= 0.9 and p.boxes.shape == (0, 4) and p.lesion_kinds == []
    assert p.hu[0, 0] == -1000 and p.hu[-1, -1] == -1000
    expected = {"fat": (-130, -70), "muscle": (30, 75), "liver": (45, 80), "vessel": (25, 60), "gas": (-1001, -900)}
    for name, (lo, hi) in expected.items():
        vals = p.hu[p.labels == LABELS[name]]
        assert vals.size > 50, name
        assert lo <= np.median(vals) <= hi, (name, np.median(vals))
    assert np.median(p.hu[p.labels == LABELS["bone"]]) > 400
    # low-amplitude texture: liver SD of a few HU (away from edges and vessels)
    liver = p.labels == LABELS["liver"]
    inner = liver & np.roll(liver, 8, 0) & np.roll(liver, -8, 0) & np.roll(liver, 8, 1) & np.roll(liver, -8, 1)
    assert 1.5 < p.hu[inner].std() < 12


def test_pixel_size_and_kind_are_honoured():
    p = make_phantom(3, kind="chest", size=256, pixel_mm=0.7, n_lesions=2)
    assert p.spacing_mm == 0.7 and p.kind == "chest"
    lung = make_phantom(3, kind="chest", size=256, pixel_mm=0.7, n_lesions=0).hu[p.labels == LABELS["lung"]]
    assert lung.size > 0.08 * 256**2 and -900 < np.median(lung) < -800
    assert all(k in ("lung_nodule", "lung_ggo") for k in p.lesion_kinds)
    with pytest.raises(ValueError, match="kind"):
        make_phantom(0, kind="brain")
    with pytest.raises(ValueError, match="size"):
        make_phantom(0, size=8)
    with pytest.raises(ValueError, match="n_lesions"):
        make_phantom(0, n_lesions=-1)


def test_lesions_inside_host_with_tight_boxes():
    """The lesion-only image (same seed with and without lesions) locates each lesion exactly."""
    kinds, sharp_and_soft = set(), set()
    for seed in range(10):
        clean = make_phantom(seed, size=256, n_lesions=0)
        p = make_phantom(seed, size=256, n_lesions=3)
        diff = p.hu - clean.hu
        assert np.array_equal(p.labels, clean.labels)
        assert len(p.boxes) == len(p.lesion_kinds) == len(p.lesion_contrast_hu)
        for box, kind, contrast, diam in zip(p.boxes, p.lesion_kinds, p.lesion_contrast_hu, p.lesion_diameter_mm):
            kinds.add(kind)
            organ, sign = kind.split("_")
            assert 15 <= abs(contrast) <= 120 and (contrast < 0) == (sign == "hypo")
            assert 4 <= diam <= 40 + 1e-3
            x1, y1, x2, y2 = box.astype(int)
            assert x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX
            # the half-contrast outline is exactly the box (restricted to this lesion's neighbourhood)
            pad = 40
            win = (slice(max(0, y1 - pad), y2 + pad), slice(max(0, x1 - pad), x2 + pad))
            local = np.zeros_like(diff, bool)
            local[win] = True
            inside = local & (diff * np.sign(contrast) >= 0.5 * abs(contrast))
            rows, cols = np.nonzero(inside)
            others = [b for b in p.boxes if not np.array_equal(b, box)]
            if not any(_overlap(b, box, pad) for b in others):
                assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == (x1, y1, x2, y2)
                touched = local & (np.abs(diff) > 0.01 * abs(contrast))
                assert np.all(p.labels[touched] == LABELS[HOST[organ]]), kind
                sharp_and_soft.add(bool((touched & ~inside & (np.abs(diff) < 0.25 * abs(contrast))).sum() > 20))
    assert {"liver_hypo", "liver_hyper"} <= kinds and len({k.split("_")[0] for k in kinds}) >= 2
    assert sharp_and_soft == {True, False}  # soft (blurred) and sharp edges both occur


def _overlap(a, b, pad):
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def test_lung_nodules_sit_in_lung():
    for seed in range(4):
        clean = make_phantom(seed, kind="chest", size=256, n_lesions=0)
        p = make_phantom(seed, kind="chest", size=256, n_lesions=3)
        touched = np.abs(p.hu - clean.hu) > 5
        assert np.all(p.labels[touched] == LABELS["lung"])
        for (x1, y1, x2, y2), kind in zip(p.boxes.astype(int), p.lesion_kinds):
            centre = p.hu[(y1 + y2) // 2, (x1 + x2) // 2]
            assert centre > -780 if kind == "lung_nodule" else -800 < centre < -450


def test_volume_is_smooth_with_ellipsoid_lesions():
    v = make_phantom_volume(4, 6, size=192, slice_mm=2.5, n_lesions=4)
    assert v.hu.shape == (6, 192, 192) and v.hu.dtype == np.float32 and v.labels.shape == v.hu.shape
    assert v.spacing_mm[0] == 2.5 and v.spacing_mm[1] == v.spacing_mm[2]
    assert v.boxes.shape[1] == 5 and len(v.lesion_kinds) == len(v.boxes) == len(v.lesion_ids)
    # anatomy changes slowly: adjacent slices are far closer than slices of another phantom
    other = make_phantom_volume(5, 1, size=192, pixel_mm=v.spacing_mm[1])
    step = np.mean(np.abs(np.diff(np.clip(v.hu, -200, 300), axis=0)))
    assert step < 0.3 * np.mean(np.abs(np.clip(v.hu[0], -200, 300) - np.clip(other.hu[0], -200, 300)))
    assert len(set(v.lesion_ids)) >= 2
    for lid in set(v.lesion_ids.tolist()):
        rows = v.boxes[v.lesion_ids == lid]
        slices = rows[:, 0].astype(int)
        assert np.array_equal(slices, np.arange(slices[0], slices[0] + len(slices)))  # contiguous span
        widths = rows[:, 3] - rows[:, 1]  # an ellipsoid: widest inside its span, narrowing towards both ends
        assert np.all(np.diff(widths[: np.argmax(widths) + 1]) >= -1) and np.all(
            np.diff(widths[np.argmax(widths) :]) <= 1
        )
        assert len({k for k, i in zip(v.lesion_kinds, v.lesion_ids) if i == lid}) == 1
    with pytest.raises(ValueError, match="n_slices"):
        make_phantom_volume(0, 0)
