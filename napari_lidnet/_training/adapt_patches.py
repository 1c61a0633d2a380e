"""Patch samplers of ``lidnet adapt`` (``selfsup``): neighbouring-slice targets with a consistency weight (scheme
A), blind-spot inputs (scheme B) and supervised pairs, each with a loss weight map."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_lidnet._training.adapt_data import AdaptData

__all__ = ["BlindSpotPatches", "NeighbourPatches", "PairPatches", "blind_centres", "blindspot_input", "make_patches"]

CONSISTENCY_SIGMA = 2.0  # px: smoothing of the neighbours' difference in scheme A's consistency weight
CONSISTENCY_TAU = 3.0  # x the robust SD of that difference: where the weight halves


def _dihedral(arrays: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random flip / transpose of every (p, p) array."""
    k = int(rng.integers(8))
    out = [np.rot90(a, k % 4) for a in arrays]
    return [np.ascontiguousarray(a[:, ::-1] if k >= 4 else a) for a in out]


class _Patches:
    """Random patches of the training slices (optionally near lesions) with a loss weight map."""

    huber_hu: float | None = None  # the loss: MSE, or Huber with this quadratic zone (HU)

    def __init__(self, data: AdaptData, patch_size: int, lesion_fraction: float = 0.5, roi_weight: float = 1.0):
        self.data, self.p, self.items = data, patch_size, list(data.items)
        self.lesion_fraction, self.roi_weight = lesion_fraction, roi_weight
        usable = set(self.items)
        self.lesions = [(key, box) for key, rows in data.boxes.items() if key in usable for box in rows]

    def _where(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(volume, slice, y0, x0) of the next patch."""
        p = self.p
        if self.lesions and rng.random() < self.lesion_fraction:
            (v, z), (x1, y1, x2, y2) = self.lesions[int(rng.integers(len(self.lesions)))]
            cy, cx = (y1 + y2) / 2 + rng.uniform(-0.3, 0.3) * p, (x1 + x2) / 2 + rng.uniform(-0.3, 0.3) * p
            y0, x0 = int(round(cy - p / 2)), int(round(cx - p / 2))
        else:
            v, z = self.items[int(rng.integers(len(self.items)))]
            h, w = self.data.stacks[v].shape[1:]
            y0, x0 = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        h, w = self.data.stacks[v].shape[1:]
        return v, z, int(np.clip(y0, 0, h - p)), int(np.clip(x0, 0, w - p))

    def _weight(self, v: int, z: int, y0: int, x0: int) -> np.ndarray:
        w = np.ones((self.p, self.p), np.float32)
        for x1, y1, x2, y2 in self.data.boxes.get((v, z), ()):
            ys = slice(max(0, int(y1) - y0), max(0, int(math.ceil(y2)) - y0))
            xs = slice(max(0, int(x1) - x0), max(0, int(math.ceil(x2)) - x0))
            w[ys, xs] = 1.0 + self.roi_weight
        return w

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One (input, target, weight) triple of (p, p) float32 arrays (HU, HU, loss weight)."""
        raise NotImplementedError

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input, target, weight), each (n, 1, p, p) float32."""
        parts = [self.sample(rng) for _ in range(n)]
        return tuple(np.stack([q[i] for q in parts])[:, None] for i in range(3))  # type: ignore[return-value]


class NeighbourPatches(_Patches):
    """Scheme A: input slice z, target the mean of slices z-1 and z+1, loss on every pixel.

    ``consistency`` (default on) weights each pixel by 1 / (1 + (d / tau)^2), d the smoothed difference of the two
    neighbours (sigma ``CONSISTENCY_SIGMA``) and tau ``CONSISTENCY_TAU`` x its robust SD over the volume: where the
    anatomy changes between slices the target is not the same anatomy, and those pixels would teach blur (after
    Noise2Sim's similarity weighting)."""

    def __init__(self, data: AdaptData, patch_size: int, consistency: bool = True, **kwargs: Any):
        super().__init__(data, patch_size, **kwargs)
        self.tau = [_difference_scale(s) for s in data.stacks] if consistency else None

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v, z, y0, x0 = self._where(rng)
        s = self.data.stacks[v][:, y0 : y0 + self.p, x0 : x0 + self.p]
        target = 0.5 * (s[z - 1] + s[z + 1])
        weight = self._weight(v, z, y0, x0)
        if self.tau is not None:
            d = ndi.gaussian_filter(s[z + 1] - s[z - 1], CONSISTENCY_SIGMA)
            weight = weight / (1.0 + (d / self.tau[v]) ** 2)
        return tuple(_dihedral([s[z], target, weight.astype(np.float32)], rng))  # type: ignore[return-value]


def _difference_scale(stack: np.ndarray, n: int = 4) -> float:
    """tau of the consistency weight: ``CONSISTENCY_TAU`` x the robust SD (MAD) of the smoothed difference of the
    two neighbours of up to ``n`` slices, inside the body (mostly noise: anatomy changes only at a few pixels)."""
    if stack.shape[0] < 3:
        return float("inf")
    values = []
    for z in np.unique(np.linspace(1, stack.shape[0] - 2, n).round().astype(int)):
        d = ndi.gaussian_filter(stack[z + 1] - stack[z - 1], CONSISTENCY_SIGMA)
        values.append(d[stack[z] > -500])
    d = np.concatenate(values) if values else np.zeros(1)
    mad = 1.4826 * float(np.median(np.abs(d - np.median(d)))) if d.size else 0.0
    return CONSISTENCY_TAU * max(mad, 1.0)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    keep = yy**2 + xx**2 <= radius**2
    return np.stack([yy[keep], xx[keep]], axis=1)


def _ring(radius: int) -> np.ndarray:
    """Offsets at Chebyshev distance radius+1 .. 2 radius+1: outside the blind zone, near enough to look alike."""
    r = np.arange(-(2 * radius + 1), 2 * radius + 2)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    keep = np.maximum(np.abs(yy), np.abs(xx)) > radius
    return np.stack([yy[keep], xx[keep]], axis=1)


def blind_centres(p: int, radius: int, rng: np.random.Generator) -> np.ndarray:
    """Random blind-zone centres (K, 2) in a (p, p) patch, at least 2 radius + 1 from the border and 3 radius + 3
    apart (Chebyshev): dart throwing, so that no regular grid exists for the network to learn."""
    gap, margin = 3 * radius + 3, 2 * radius + 1
    free = np.zeros((p, p), bool)
    free[margin : p - margin, margin : p - margin] = True
    n_try = 3 * max(1, ((p - 2 * margin) // gap + 1) ** 2)
    kept = []
    for y, x in rng.integers(margin, max(margin + 1, p - margin), size=(n_try, 2)):
        if free[y, x]:
            kept.append((y, x))
            free[max(0, y - gap + 1) : y + gap, max(0, x - gap + 1) : x + gap] = False
    return np.array(kept, dtype=int).reshape(-1, 2)


def blindspot_input(
    patch: np.ndarray, radius: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scheme B masking of one (p, p) patch: (masked input, centre mask, blind-zone mask).

    Centres come from :func:`blind_centres`. The blind zone (pixels within ``radius`` of a centre, Euclidean) is
    replaced by the mean of the ring at Chebyshev distance radius+1 .. 2 radius+1 around it plus the texture of a
    disk taken from another random centre of the patch (its own mean removed): a natural-looking zone whose noise
    is independent of the centre's, so the network learns to predict the centre from outside the zone only."""
    centres = blind_centres(patch.shape[0], radius, rng)
    disk, ring = _disk(radius), _ring(radius)
    zone = centres[:, None, :] + disk[None]
    ring_mean = patch[(centres[:, None, :] + ring[None])[..., 0], (centres[:, None, :] + ring[None])[..., 1]].mean(1)
    order = rng.permutation(len(centres))
    source = np.empty_like(centres)
    source[order] = centres[np.roll(order, 1)]  # every zone takes another centre's texture (none its own)
    texture = patch[(source[:, None, :] + disk[None])[..., 0], (source[:, None, :] + disk[None])[..., 1]]
    texture = texture if len(centres) > 1 else np.zeros_like(texture)  # a lone zone has no other to borrow from
    masked = patch.copy()
    masked[zone[..., 0], zone[..., 1]] = ring_mean[:, None] + texture - texture.mean(1, keepdims=True)
    centre_mask = np.zeros(patch.shape, bool)
    centre_mask[centres[:, 0], centres[:, 1]] = True
    zone_mask = np.zeros(patch.shape, bool)
    zone_mask[zone[..., 0], zone[..., 1]] = True
    return masked, centre_mask, zone_mask


class BlindSpotPatches(_Patches):
    """Scheme B: masked input, the noisy patch as target, loss only on the blind-zone centres (Huber: a centre on an
    edge that its blind zone hides cannot be predicted, and would dominate a squared loss)."""

    huber_hu = 50.0

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v, z, y0, x0 = self._where(rng)
        patch = self.data.stacks[v][z, y0 : y0 + self.p, x0 : x0 + self.p]
        patch, weight = _dihedral([patch, self._weight(v, z, y0, x0)], rng)
        masked, centres, _ = blindspot_input(patch, int(self.data.blind_radius or 1), rng)
        return masked, patch, (weight * centres).astype(np.float32)


class PairPatches(_Patches):
    """Supervised reference (benchmarks): input low dose, target its full-dose partner (``full`` stacks); every
    slice trains."""

    def __init__(self, data: AdaptData, full: Sequence[np.ndarray], patch_size: int, **kwargs: Any):
        super().__init__(data, patch_size, **kwargs)
        self.items = [(v, z) for v, s in enumerate(data.stacks) for z in range(s.shape[0])]
        self.full = [np.asarray(f, np.float32).reshape(s.shape) for f, s in zip(full, data.stacks)]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        v, z, y0, x0 = self._where(rng)
        win = (z, slice(y0, y0 + self.p), slice(x0, x0 + self.p))
        pair = [self.data.stacks[v][win], self.full[v][win], self._weight(v, z, y0, x0)]
        return tuple(_dihedral(pair, rng))  # type: ignore[return-value]


def make_patches(data: AdaptData, patch_size: int, consistency: bool = True, **kwargs: Any) -> _Patches:
    """The sampler of ``data.scheme`` (``consistency``: scheme A's weighting, see :class:`NeighbourPatches`)."""
    if data.scheme == "neighbours":
        return NeighbourPatches(data, patch_size, consistency=consistency, **kwargs)
    return BlindSpotPatches(data, patch_size, **kwargs)
