"""What ``lidnet adapt`` trains on (``selfsup``): its schemes, the contiguous slice runs of each low-dose volume,
neighbour targets, and the checked, loaded data (:class:`AdaptData`, :func:`prepare_adapt`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_lidnet.io.fov import fill_padding
from napari_lidnet.io.volume import per_slice
from napari_lidnet.metrics.noreference import (
    correlation_length,
)

__all__ = ["GAP_FACTOR", "MIN_RUN", "SCHEMES", "AdaptData", "contiguous_runs", "neighbour_target", "prepare_adapt",
           "scheme_name", "slice_positions"]  # fmt: skip

SCHEMES = ("neighbours", "blindspot")
_ALIASES = {"a": "neighbours", "neighbors": "neighbours", "b": "blindspot", "blind-spot": "blindspot"}
GAP_FACTOR = 2.0  # a step over this x the median slice spacing splits a run (neighbours are other anatomy)
#: mm between slices over which scheme A's neighbours hold other anatomy (measured: benchmarks/adapt_real.py)
THICK_MM = 2.0
MIN_RUN = 3  # slices a run needs for neighbour targets
PIXEL_RTOL = 0.02  # relative pixel-spacing difference tolerated between volumes / between dy and dx
MAX_BLIND_RADIUS = 8
BLINDSPOT_WARNING = (
    "scheme 'blindspot' is experimental: in benchmarks/adapt_benchmark.py it degraded the residual fastdn within "
    "hundreds of steps; use scheme 'neighbours' whenever the scan has >= 3 contiguous slices"
)


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


def _thick_note(vol: Any) -> str:
    """A warning when neighbouring slices lie over ``THICK_MM`` apart: their average (scheme A's target) then mixes
    other anatomy in, and on real scans of 2.5-5 mm slices adaptation mostly made the images worse."""
    positions = slice_positions(vol)
    step = float(np.median(np.abs(np.diff(positions)))) if len(positions) > 1 else 0.0
    if step <= THICK_MM:
        return ""
    return (
        f"{vol.name}: slices {step:g} mm apart: on real scans of 2.5-5 mm slices, adapting to neighbouring slices "
        "mostly made the images worse (README, 'lidnet adapt'): keep the adapted model only if its estimates say "
        "it is better, or adapt on a thin-slice reconstruction"
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
        data.notes += [note for vol in volumes for f in (_overlap_note, _thick_note) if (note := f(vol))]
    split = [f"{n}: {len(r)} runs" for n, r in zip(data.names, runs) if len(r) > 1]
    if split:
        data.notes.append(f"split at slice gaps over {GAP_FACTOR:g}x the median spacing ({'; '.join(split)})")
    if scheme == "blindspot":
        _blind_radius(data, blind_radius)
        data.notes.append(BLINDSPOT_WARNING)
    return data
