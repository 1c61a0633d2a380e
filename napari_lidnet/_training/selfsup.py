"""Self-supervised fine-tuning of a denoiser on low-dose scans alone (no normal-dose partner).

FBP correlates CT noise between neighbouring pixels, so Noise2Void's one-pixel blind spot sees the noise it must
predict. Two schemes that respect correlated noise:

- ``neighbours`` (scheme A, the default; Noise2Noise across slices, as in Noise2Sim for CT): input slice z, target
  the mean of slices z-1 and z+1: independent noise realisations of nearly the same anatomy. Pixels where the two
  neighbours disagree beyond their noise (anatomy changing in z) are down-weighted. Needs >= 3 contiguous slices;
  runs are split where a gap exceeds ``GAP_FACTOR`` x the median spacing.
- ``blindspot`` (scheme B): sparse random centres (dart throwing, no regular grid) get a blind zone of radius R =
  the noise correlation length measured on the scan itself (``metrics.noreference.correlation_length``: across
  slices when the volume allows, else within the image), filled with the ring mean around it plus the texture of
  another zone; Huber loss on the centres only. Works on single slices.

Chosen by measurement (``benchmarks/adapt_benchmark.py``, results in ``benchmarks/results/adapt_cpu.md``): scheme A
closes about all of the supervised fine-tuning gain on an unseen protocol; scheme B does not work with the shipped
residual, pixel-unshuffling ``fastdn`` within hundreds of steps (it degrades the model), though it does denoise with
a plain CNN trained from scratch. B stays for single slices, with that warning.

Lesion boxes (optional, LIDnet's spirit without a detector): patches are centred near a lesion with probability
``lesion_fraction`` and the loss inside the boxes is weighted ``1 + roi_weight``.

``adapt_job`` is the whole run as a generator (the CLI, the widget, the benchmark and the tests run the same code):

- ``{"stage": "prepare", "message"}``: checks, notes (runs split, correlation length), loading;
- ``{"stage": "estimate", "step", "total_steps", "estimates": {"input", "start"} at step 0, then {"adapted"}}``,
  each ``{"noise_sd_hu", "edge_sharpness_hu_per_mm", "correlation_length_px", "correlation_length_mm",
  "noise_from"}`` (``metrics.noreference``, on the same few slices, edges at the input's strongest edges);
- ``{"stage": "adapt", "step", "total_steps", "losses": {"selfsup"}, "eta_s"}`` after every step;
- ``{"stage": "export", "message"}``, then ``{"stage": "finished" | "stopped", "step", "total_steps", "message",
  "estimates": {"input", "start", "adapted"}, "loss": {"before", "after"}, "exported": [paths]}``;

and returns an :class:`AdaptOutcome`. It exports ``NAME_denoiser`` into the user model folder (never over an
existing model) with a card recording the data, the scheme, the settings and the no-reference quality of the
input, the starting model and the adapted model. torch is imported only inside functions.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_lidnet.io.fov import fill_padding
from napari_lidnet.io.volume import per_slice
from napari_lidnet.metrics.noreference import (
    correlation_length,
    edge_locations,
    noise_sd,
    quality_estimates,
    worse_than_start,
)

__all__ = [
    "GAP_FACTOR",
    "SCHEMES",
    "AdaptData",
    "AdaptOutcome",
    "BlindSpotPatches",
    "NeighbourPatches",
    "PairPatches",
    "adapt_job",
    "adapt_summary",
    "blind_centres",
    "blindspot_input",
    "contiguous_runs",
    "denoiser_outputs",
    "estimate_slices",
    "estimates_line",
    "eval_loss",
    "make_patches",
    "neighbour_target",
    "prepare_adapt",
    "scheme_name",
    "slice_positions",
    "train_steps",
]

SCHEMES = ("neighbours", "blindspot")
_ALIASES = {"a": "neighbours", "neighbors": "neighbours", "b": "blindspot", "blind-spot": "blindspot"}
GAP_FACTOR = 2.0  # a step over this x the median slice spacing splits a run (neighbours are other anatomy)
MIN_RUN = 3  # slices a run needs for neighbour targets
PIXEL_RTOL = 0.02  # relative pixel-spacing difference tolerated between volumes / between dy and dx
MAX_BLIND_RADIUS = 8
BLINDSPOT_WARNING = (
    "scheme 'blindspot' is experimental: in benchmarks/adapt_benchmark.py it degraded the residual fastdn within "
    "hundreds of steps; use scheme 'neighbours' whenever the scan has >= 3 contiguous slices"
)
CONSISTENCY_SIGMA = 2.0  # px: smoothing of the neighbours' difference in scheme A's consistency weight
CONSISTENCY_TAU = 3.0  # x the robust SD of that difference: where the weight halves
ESTIMATE_SLICES = 3  # slices (each with its two neighbours when possible) of the no-reference estimates


def scheme_name(scheme: str) -> str:
    """The canonical scheme name (``neighbours`` / ``blindspot``; A and B accepted)."""
    key = str(scheme).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SCHEMES:
        raise ValueError(
            f"unknown scheme {scheme!r}: use 'neighbours' (A, needs >= 3 contiguous slices) or 'blindspot' (B, "
            "works on single slices)"
        )
    return key


# ----------------------------------------------------------------------------------------------- slice geometry


def slice_positions(volume: Any) -> np.ndarray:
    """Slice positions (mm) of a (z, y, x) CTVolume: ``metadata["slice_positions_mm"]`` when given, each DICOM
    slice's own position along the stacking direction (gaps kept), else evenly ``spacing[0]`` apart."""
    n = volume.hu.shape[0]
    given = per_slice(volume.metadata, "slice_positions_mm", n)
    if given is not None:
        return np.asarray(given, float)
    ipp = per_slice(volume.metadata, "slice_ipp", n)
    if ipp is not None:
        return np.asarray(ipp, float).reshape(n, 3) @ np.asarray(volume.direction, float)[:, 2]
    return np.arange(n, dtype=float) * float(volume.spacing[0])


def contiguous_runs(positions: Sequence[float], gap_factor: float = GAP_FACTOR) -> list[tuple[int, int]]:
    """``[start, stop)`` index runs of slices whose steps stay within ``gap_factor`` x the median step."""
    pos = np.asarray(positions, float)
    if len(pos) < 2:
        return [(0, len(pos))] if len(pos) else []
    steps = np.abs(np.diff(pos))
    cuts = np.flatnonzero(steps > gap_factor * float(np.median(steps))) + 1
    edges = [0, *cuts.tolist(), len(pos)]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:])]


def neighbour_target(hu: np.ndarray, z: int) -> np.ndarray:
    """Scheme A's target of slice ``z``: the mean of slices z-1 and z+1 (float32 HU)."""
    if not 1 <= z <= hu.shape[0] - 2:
        raise ValueError(f"slice {z} has no neighbour on both sides in a volume of {hu.shape[0]} slices")
    return (0.5 * (hu[z - 1].astype(np.float32) + hu[z + 1].astype(np.float32))).astype(np.float32)


# ----------------------------------------------------------------------------------------------- the data checked


@dataclass
class AdaptData:
    """The checked input of a run: (z, y, x) stacks, usable slices, boxes per slice, and what was measured."""

    stacks: list[np.ndarray]
    names: list[str]
    pixel_mm: float
    scheme: str
    items: list[tuple[int, int]]  # (volume, slice) pairs that train: centre slices (A) or all slices (B)
    runs: list[list[tuple[int, int]]]
    boxes: dict[tuple[int, int], np.ndarray]  # (volume, slice) -> (N, 4) x1, y1, x2, y2 pixels
    blind_radius: int | None = None
    correlation_length_px: float | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[dict[str, Any]]:
        """What the card records of the data: name, shape, pixel size, slices, runs, slices used."""
        return [
            {
                "name": name,
                "shape": list(stack.shape),
                "pixel_mm": self.pixel_mm,
                "n_slices": int(stack.shape[0]),
                "runs": [list(r) for r in self.runs[v]],
                "n_used_slices": sum(1 for i, _ in self.items if i == v),
            }
            for v, (name, stack) in enumerate(zip(self.names, self.stacks))
        ]


def _pixel_mm(volumes: Sequence[Any]) -> float:
    """The one in-plane pixel size of all volumes (ValueError on non-square pixels or a mixture)."""
    sizes = []
    for vol in volumes:
        dy, dx = (float(s) for s in vol.spacing[-2:])
        if abs(dy - dx) > PIXEL_RTOL * max(dy, dx):
            raise ValueError(f"{vol.name}: pixels are not square ({dy:.3g} x {dx:.3g} mm): resample to square pixels")
        sizes.append(dx)
    if max(sizes) - min(sizes) > PIXEL_RTOL * max(sizes):
        listed = ", ".join(f"{s:.3g}" for s in sorted(set(sizes)))
        raise ValueError(
            f"the volumes have different pixel spacings ({listed} mm): adapt on one series at a time, or resample "
            "them to one pixel size first (nothing is resampled here)"
        )
    return float(np.median(sizes))


def _runs_of(vol: Any, scheme: str) -> list[tuple[int, int]]:
    """Contiguous runs of a volume usable by ``scheme`` (ValueError when scheme A has none)."""
    n = 1 if vol.hu.ndim == 2 else vol.hu.shape[0]
    if scheme == "blindspot":
        return [(0, 1)] if n == 1 else contiguous_runs(slice_positions(vol))
    if n < MIN_RUN:
        raise ValueError(
            f"{vol.name}: scheme 'neighbours' needs >= {MIN_RUN} contiguous slices, this input has {n}: open the "
            "whole series, or use scheme 'blindspot'"
        )
    pos = slice_positions(vol)
    runs = contiguous_runs(pos)
    if not any(b - a >= MIN_RUN for a, b in runs):
        steps = np.abs(np.diff(pos))
        raise ValueError(
            f"{vol.name}: slice gaps of up to {steps.max():.3g} mm (over {GAP_FACTOR:g}x the median spacing "
            f"{np.median(steps):.3g} mm) leave no run of >= {MIN_RUN} contiguous slices: give a contiguous "
            "series, or use scheme 'blindspot'"
        )
    return runs


def _overlap_note(vol: Any) -> str:
    """A warning when a series' slices are thicker than their spacing (overlapping reconstruction): neighbouring
    slices then share part of their noise, which scheme A cannot learn to remove."""
    thickness = vol.metadata.get("slice_thickness")
    if not thickness or vol.hu.ndim != 3 or float(thickness) <= 1.2 * float(vol.spacing[0]):
        return ""
    return (
        f"{vol.name}: {float(thickness):g} mm slices every {float(vol.spacing[0]):g} mm overlap, so neighbours share "
        "part of their noise and scheme 'neighbours' removes less of it: prefer a series reconstructed without overlap"
    )


def _box_table(boxes: Any, n_volumes: int) -> dict[tuple[int, int], np.ndarray]:
    """Per-volume (N, 5|6) ``slice, x1, y1, x2, y2[, score]`` arrays -> {(volume, slice): (N, 4)}."""
    if boxes is None:
        return {}
    per_volume = [boxes] if isinstance(boxes, np.ndarray) and n_volumes == 1 else list(boxes)
    if len(per_volume) != n_volumes:
        raise ValueError(
            f"boxes: {len(per_volume)} arrays for {n_volumes} volumes: give one (N, 5) array of "
            "'slice, x1, y1, x2, y2' per volume"
        )
    table: dict[tuple[int, int], list] = {}
    for v, rows in enumerate(per_volume):
        rows = np.asarray(rows if rows is not None else np.zeros((0, 5)), np.float32)
        if rows.size and (rows.ndim != 2 or rows.shape[1] not in (5, 6)):
            raise ValueError(f"boxes of volume {v}: expected (N, 5) rows 'slice, x1, y1, x2, y2', got {rows.shape}")
        for row in rows.reshape(-1, rows.shape[-1] if rows.ndim == 2 else 5):
            table.setdefault((v, int(round(row[0]))), []).append(row[1:5])
    return {key: np.array(val, np.float32) for key, val in table.items()}


def _blind_radius(data: AdaptData, given: int | None) -> None:
    """Measure the noise correlation length (across slices when a run allows) and set the blind-zone radius."""
    if given is not None:
        data.blind_radius = int(given)
        data.notes.append(f"blind-zone radius {given} px as given")
        return
    v = int(np.argmax([s.shape[0] for s in data.stacks]))
    stack = data.stacks[v]
    a, b = max(data.runs[v], key=lambda r: r[1] - r[0])
    from_slices = b - a >= MIN_RUN
    length = correlation_length(stack[a:b] if from_slices else stack, noise_from="slices" if from_slices else "image")
    if not math.isfinite(length):
        raise ValueError(
            f"{data.names[v]}: no uniform soft-tissue region (-200..300 HU) to measure the noise correlation "
            "length: give the blind-zone radius (blind_radius)"
        )
    data.correlation_length_px = length
    data.blind_radius = int(min(MAX_BLIND_RADIUS, max(1, math.ceil(length))))
    how = "across slices" if from_slices else "within slices (tissue texture may lengthen it)"
    data.notes.append(f"noise correlation length {length:.2f} px ({how}): blind-zone radius {data.blind_radius} px")


def prepare_adapt(
    volumes: Any,
    scheme: str = "neighbours",
    patch_size: int = 96,
    boxes: Any = None,
    blind_radius: int | None = None,
) -> AdaptData:
    """Check the volumes (CTVolume or a list of them) for ``scheme`` and collect the training slices.

    Raises ValueError (one line, saying how to fix it): no volume, unknown scheme, a mixture of pixel spacings,
    non-square pixels, slices smaller than the patch, fewer than 3 contiguous slices for scheme A (runs are split
    at gaps over 2x the median spacing), or no uniform region to measure the correlation length for scheme B."""
    scheme = scheme_name(scheme)
    volumes = [volumes] if hasattr(volumes, "hu") else list(volumes or [])
    if not volumes:
        raise ValueError("no low-dose volume to adapt on: open a CT series (a DICOM folder or a volume file)")
    pixel_mm = _pixel_mm(volumes)
    stacks, runs, items = [], [], []
    for v, vol in enumerate(volumes):
        stack = vol.hu[None] if vol.hu.ndim == 2 else vol.hu
        if min(stack.shape[1:]) < patch_size:
            raise ValueError(
                f"{vol.name}: slices of {stack.shape[1]} x {stack.shape[2]} px are smaller than the patch size "
                f"{patch_size}: use a smaller patch size"
            )
        vol_runs = _runs_of(vol, scheme)
        lo = 1 if scheme == "neighbours" else 0
        items += [(v, z) for a, b in vol_runs if b - a >= (MIN_RUN if lo else 1) for z in range(a + lo, b - lo)]
        stacks.append(fill_padding(np.asarray(stack, np.float32))[0])  # padding outside the field of view: air
        runs.append(vol_runs)
    data = AdaptData(stacks, [v.name for v in volumes], pixel_mm, scheme, items, runs, _box_table(boxes, len(stacks)))
    if scheme == "neighbours":
        data.notes += [note for vol in volumes if (note := _overlap_note(vol))]
    split = [f"{n}: {len(r)} runs" for n, r in zip(data.names, runs) if len(r) > 1]
    if split:
        data.notes.append(f"split at slice gaps over {GAP_FACTOR:g}x the median spacing ({'; '.join(split)})")
    if scheme == "blindspot":
        _blind_radius(data, blind_radius)
        data.notes.append(BLINDSPOT_WARNING)
    return data


# ----------------------------------------------------------------------------------------------- patch samplers


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


# ----------------------------------------------------------------------------------------------- training loop


def _weighted_loss(model: Any, batch: tuple[np.ndarray, ...], device: Any, huber_hu: float | None = None) -> Any:
    """Weighted MSE (network scale), or Huber with its quadratic zone up to ``huber_hu`` HU."""
    import torch
    import torch.nn.functional as F

    from napari_lidnet.models.normalize import hu_to_net

    x, t, w = (torch.from_numpy(a).to(device) for a in batch)
    out = model(hu_to_net(x))
    if huber_hu:
        per_pixel = F.smooth_l1_loss(out, hu_to_net(t), reduction="none", beta=float(hu_to_net(huber_hu)))
    else:
        per_pixel = (out - hu_to_net(t)) ** 2
    return (w * per_pixel).sum() / w.sum().clamp_min(1e-6)


def eval_loss(model: Any, batch: tuple[np.ndarray, ...], device: Any, huber_hu: float | None = None) -> float:
    """The scheme's loss of ``model`` on a fixed batch, in eval mode."""
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        value = float(_weighted_loss(model, batch, device, huber_hu))
    model.train(was)
    return value


def train_steps(
    model: Any,
    patches: Any,
    steps: int,
    *,
    lr: float = 5e-4,
    batch_size: int = 4,
    device: Any = "cpu",
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict[str, Any], None, int]:
    """Adam on ``patches.batch`` for ``steps`` steps, yielding ``{"stage": "adapt", "step", "total_steps",
    "losses": {"selfsup"}, "eta_s"}`` after each; ``should_stop`` is checked before every step. Returns the number
    of steps done."""
    import torch

    should_stop = should_stop or (lambda: False)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0, done = time.monotonic(), 0
    for step in range(1, steps + 1):
        if should_stop():
            break
        loss = _weighted_loss(model, patches.batch(rng, batch_size), device, patches.huber_hu)
        if not torch.isfinite(loss):
            raise ValueError(f"the loss became {float(loss)} at step {step}: lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step
        eta = (time.monotonic() - t0) / step * (steps - step)
        losses = {"selfsup": float(loss.detach())}
        yield {"stage": "adapt", "step": step, "total_steps": steps, "losses": losses, "eta_s": eta}
    model.eval()
    return done


# ----------------------------------------------------------------------------------------------- quality estimates


def estimate_slices(data: AdaptData) -> tuple[np.ndarray, bool]:
    """(a (k, y, x) stack of the largest volume, whether it is made of contiguous triplets) for the no-reference
    estimates: up to ``ESTIMATE_SLICES`` slices with their neighbours when a run allows, else single slices."""
    v = int(np.argmax([s.shape[0] for s in data.stacks]))
    stack = data.stacks[v]
    a, b = max(data.runs[v], key=lambda r: r[1] - r[0])
    if b - a >= MIN_RUN:
        centres = np.unique(np.linspace(a + 1, b - 2, ESTIMATE_SLICES).round().astype(int))
        return np.concatenate([stack[c - 1 : c + 2] for c in centres]), True
    picks = np.unique(np.linspace(0, len(stack) - 1, ESTIMATE_SLICES).round().astype(int))
    return stack[picks], False


def _estimates(hu: np.ndarray, pixel_mm: float, triplets: bool, edges: np.ndarray) -> dict[str, float]:
    """No-reference estimates of ``hu``; with triplets, noise SD and correlation length across slices."""
    est = quality_estimates(hu, pixel_mm, edges)
    if triplets:
        groups = hu.reshape(-1, 3, *hu.shape[1:])
        est["noise_sd_hu"] = _nanmedian([noise_sd(g, noise_from="slices") for g in groups])
        est["correlation_length_px"] = _nanmedian([correlation_length(g, noise_from="slices") for g in groups])
        est["correlation_length_mm"] = est["correlation_length_px"] * pixel_mm
    est["noise_from"] = "slices" if triplets else "image"
    return est


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def denoiser_outputs(model: Any, hu: np.ndarray, device: Any) -> np.ndarray:
    """``model`` applied to a (k, y, x) HU stack (``inference.denoise``, no mixed precision)."""
    from napari_lidnet.inference import denoise

    return denoise(model, hu, device=device, amp=False)


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class AdaptOutcome:
    """How a run ended: ``status`` finished | stopped; ``exported`` the new model's files."""

    status: str
    message: str
    name: str
    exported: list[str] = field(default_factory=list)
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)  # input / start / adapted
    loss_before: float | None = None
    loss_after: float | None = None
    steps_done: int = 0
    seconds: float = 0.0
    card: dict[str, Any] = field(default_factory=dict)


def _target_path(name: str) -> Any:
    """``user_model_dir()/NAME_denoiser`` (ValueError: a bad name or a model already there)."""
    from napari_lidnet._training.export import valid_model_name
    from napari_lidnet.models.registry import user_model_dir

    name = valid_model_name(name)
    folder = user_model_dir()
    if (folder / f"{name}_denoiser.json").exists():  # NAME_detector may exist: lidnet calibrate makes the pair
        raise ValueError(f"a model named {name!r} already exists in {folder}: choose another name")
    return folder / f"{name}_denoiser"


def _start_model(from_model: Any, device: Any) -> tuple[Any, str]:
    """(a trainable copy of the starting denoiser on ``device``, how to name it in the card)."""
    if hasattr(from_model, "parameters"):
        return copy.deepcopy(from_model).to(device), f"in-memory {getattr(from_model, 'arch', 'denoiser')}"
    from napari_lidnet.models.registry import load_model

    model, card = load_model(from_model, kind="denoiser", device=device)
    return model, str(card.get("name") or os.fspath(from_model))


@dataclass
class _Run:
    """What one run carries between its parts."""

    data: AdaptData
    settings: dict[str, Any]
    device: Any = None
    model: Any = None
    from_name: str = ""
    est_stack: np.ndarray | None = None
    triplets: bool = False
    edges: np.ndarray | None = None
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)


def _measure(run: _Run, which: str) -> dict[str, Any]:
    """Estimates of the model's output on the estimate slices (``which`` names them in the record)."""
    out = denoiser_outputs(run.model, run.est_stack, run.device)
    run.estimates[which] = _estimates(out, run.data.pixel_mm, run.triplets, run.edges)
    return run.estimates[which]


def _setup(run: _Run, from_model: Any) -> Generator[dict[str, Any], None, None]:
    """Load the model and measure the input and the starting model, yielding records."""
    from napari_lidnet.models.device import pick_device

    run.device, notice = pick_device(run.settings["device"])
    if notice:
        yield {"stage": "prepare", "message": notice}
    yield {"stage": "prepare", "message": f"loading {from_model if isinstance(from_model, str) else 'the model'}"}
    run.model, run.from_name = _start_model(from_model, run.device)
    run.est_stack, run.triplets = estimate_slices(run.data)
    run.edges = edge_locations(run.est_stack, max_slices=len(run.est_stack))
    run.estimates["input"] = _estimates(run.est_stack, run.data.pixel_mm, run.triplets, run.edges)
    _measure(run, "start")
    yield {"stage": "estimate", "step": 0, "total_steps": run.settings["steps"], "estimates": dict(run.estimates)}


def _finite(value: Any) -> Any:
    """``value`` with NaN / infinite floats (no flat region, no edges) replaced by None, for a JSON card."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _card(run: _Run, outcome: AdaptOutcome, name: str, command: str) -> dict[str, Any]:
    s, data = run.settings, run.data
    selfsup = {
        "scheme": data.scheme,
        "steps": s["steps"],
        "steps_done": outcome.steps_done,
        "stopped_early": outcome.status == "stopped",
        **{k: s[k] for k in ("batch_size", "patch_size", "lr", "seed", "roi_weight", "lesion_fraction")},
        "consistency_weighting": bool(s["consistency"]) and data.scheme == "neighbours",
        "device": str(run.device),
        "from_model": run.from_name,
        "data": data.describe(),
        "n_training_slices": len(data.items),
        "lesion_boxes": sum(len(b) for b in data.boxes.values()),
        "roi": "patches near lesions, loss inside boxes x (1 + roi_weight)" if data.boxes else "no boxes given",
        "blind_radius_px": data.blind_radius,
        "correlation_length_px": data.correlation_length_px,
        "loss": {"before": outcome.loss_before, "after": outcome.loss_after},
        "notes": data.notes,
    }
    return {
        "name": f"{name}_denoiser",
        "training": {"selfsup": selfsup, "command": command},
        "metrics": {"noreference": _finite(run.estimates)},
    }


def _train(run: _Run, should_stop: Callable[[], bool], outcome: AdaptOutcome) -> Generator[dict, None, None]:
    """Train, with a fixed-batch loss before/after and estimates every ``estimate_every`` steps."""
    s = run.settings
    patches = make_patches(
        run.data, s["patch_size"], s["consistency"], lesion_fraction=s["lesion_fraction"], roi_weight=s["roi_weight"]
    )
    fixed = patches.batch(np.random.default_rng([s["seed"], 2]), max(8, s["batch_size"]))
    outcome.loss_before = eval_loss(run.model, fixed, run.device, patches.huber_hu)
    every = s["estimate_every"] or max(1, s["steps"] // 5)
    loop = train_steps(
        run.model,
        patches,
        s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        device=run.device,
        seed=s["seed"],
        should_stop=should_stop,
    )
    for rec in loop:
        outcome.steps_done = rec["step"]
        yield rec
        if rec["step"] % every == 0 and rec["step"] < s["steps"] and not should_stop():
            yield {
                "stage": "estimate",
                "step": rec["step"],
                "total_steps": s["steps"],
                "estimates": {"adapted": _measure(run, "adapted")},
            }
    outcome.loss_after = eval_loss(run.model, fixed, run.device, patches.huber_hu)


def adapt_job(
    volumes: Any,
    name: str,
    *,
    scheme: str = "neighbours",
    steps: int = 300,
    from_model: Any = "default",
    boxes: Any = None,
    device: str = "auto",
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int = 4,
    patch_size: int = 96,
    lr: float = 5e-4,
    blind_radius: int | None = None,
    roi_weight: float = 1.0,
    consistency: bool = True,
    lesion_fraction: float = 0.5,
    estimate_every: int = 0,
    command: str = "",
) -> Generator[dict[str, Any], None, AdaptOutcome]:
    """Fine-tune ``from_model`` (registry name, path, "default" or a module) on low-dose ``volumes`` alone and
    export it as ``NAME_denoiser`` in the user model folder (never over an existing model).

    Yields ``prepare`` / ``estimate`` / ``adapt`` records and a last ``finished`` | ``stopped`` record; returns an
    :class:`AdaptOutcome`. Raises ValueError (before any training) when the data or the name cannot work. A Stop
    before the first step exports nothing; a later Stop exports the model as trained so far (card: stopped_early).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = time.monotonic()
    should_stop = should_stop or (lambda: False)
    target = _target_path(name)
    yield {"stage": "prepare", "message": "checking the data"}
    data = prepare_adapt(volumes, scheme, patch_size, boxes, blind_radius)
    for note in data.notes:
        yield {"stage": "prepare", "message": note}
    settings = dict(
        steps=steps,
        batch_size=batch_size,
        patch_size=patch_size,
        lr=lr,
        seed=seed,
        device=device,
        roi_weight=roi_weight,
        lesion_fraction=lesion_fraction,
        estimate_every=estimate_every,
        consistency=consistency,
    )
    run = _Run(data, settings)
    yield from _setup(run, from_model)
    outcome = AdaptOutcome("finished", "", target.name.removesuffix("_denoiser"))
    yield from _train(run, should_stop, outcome)
    yield from _finish(run, outcome, target, command)
    outcome.seconds = time.monotonic() - t0
    return outcome


def _still_free(target: Any) -> Any:
    """``target`` (``.../NAME_denoiser``), or ``NAME-2_denoiser``, ``NAME-3`` ... when its card exists by now."""
    from napari_lidnet.models.weights import weight_paths

    name, k = target.name.removesuffix("_denoiser"), 1
    candidate = target
    while weight_paths(candidate)[1].exists():
        k += 1
        candidate = target.with_name(f"{name}-{k}_denoiser")
    return candidate


def _finish(run: _Run, outcome: AdaptOutcome, target: Any, command: str) -> Generator[dict, None, None]:
    """Measure the adapted model, export it (unless no step was done) and yield the last record."""
    from napari_lidnet.models.weights import save_weights, weight_paths

    steps = run.settings["steps"]
    stopped = outcome.steps_done < steps
    outcome.status = "stopped" if stopped else "finished"
    if outcome.steps_done == 0:
        outcome.message = "stopped before the first step: nothing was saved (the starting model stays)"
    else:
        _measure(run, "adapted")
        target = _still_free(target)  # another run may have taken the name while this one trained
        outcome.name = target.name.removesuffix("_denoiser")
        yield {"stage": "export", "message": f"saving {target.name}"}
        outcome.card = save_weights(run.model.cpu(), target, _card(run, outcome, outcome.name, command))
        outcome.exported = [str(p) for p in weight_paths(target)]
        outcome.message = f"saved {target.name}"
        if stopped:
            outcome.message += f" (stopped early after {outcome.steps_done} of {steps} steps)"
    outcome.estimates = dict(run.estimates)
    yield {
        "stage": outcome.status,
        "step": outcome.steps_done,
        "total_steps": steps,
        "message": outcome.message,
        "estimates": outcome.estimates,
        "loss": {"before": outcome.loss_before, "after": outcome.loss_after},
        "exported": outcome.exported,
    }


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, float) and math.isfinite(value) else "n/a"


def estimates_line(estimates: dict[str, dict[str, Any]]) -> str:
    """The no-reference estimates of a record on one line: ``noise SD 40.1 HU, edges 73.6 HU/mm (input); ...``."""
    return "; ".join(
        f"noise SD {_fmt(e.get('noise_sd_hu'), '.1f')} HU, edges {_fmt(e.get('edge_sharpness_hu_per_mm'), '.1f')} "
        f"HU/mm ({which})"
        for which, e in estimates.items()
    )


def adapt_summary(outcome: AdaptOutcome) -> str:
    """One paragraph for the CLI and the widget: what was saved, and the no-reference quality of the input, the
    starting model and the adapted model (noise SD, edge sharpness), and the self-supervised loss."""
    text = outcome.message
    est = outcome.estimates
    order = [k for k in ("input", "start", "adapted") if k in est]
    if order:
        noise = " -> ".join(f"{_fmt(est[k].get('noise_sd_hu'), '.1f')} ({k})" for k in order)
        edges = " -> ".join(f"{_fmt(est[k].get('edge_sharpness_hu_per_mm'), '.1f')} ({k})" for k in order)
        text += f"; noise SD {noise} HU; edge sharpness {edges} HU/mm"
    if outcome.loss_before is not None and outcome.loss_after is not None:
        text += f"; self-supervised loss {outcome.loss_before:.3g} -> {outcome.loss_after:.3g}"
    if outcome.seconds:
        text += f" ({outcome.seconds:.0f} s)"
    return text + _worse_note(est)


def _worse_note(est: dict) -> str:
    """A caveat when the adapted model leaves more noise than the starting one and no sharper edges, both measured
    without a reference (``metrics.noreference.worse_than_start``): the starting model is then the better choice."""
    if not worse_than_start(est):
        return ""
    noise = (est["start"]["noise_sd_hu"], est["adapted"]["noise_sd_hu"])
    return (f". Note: the adapted model leaves more noise ({noise[0]:.1f} -> {noise[1]:.1f} HU) and no sharper "
            "edges than the starting one: keep using the starting model, or adapt for more steps")  # fmt: skip
    return ""
