"""Images larger than a tile go through overlapping tiles: their spans (starts on a grid of ``TILE_ALIGN`` pixels),
the cosine-ramp blend of denoised tiles, and the merge of detections by tile ownership and NMS."""

from __future__ import annotations

import math

import numpy as np
import torch

#: tile starts are multiples of this (largest stride of the shipped networks)
TILE_ALIGN = 16


def tile_spans(length: int, tile: int, overlap: int, align: int = TILE_ALIGN) -> list[tuple[int, int]]:
    """``(start, end)`` of overlapping tiles along one axis; starts are multiples of ``align``, the last tile ends
    at ``length`` (it may be up to ``align - 1`` longer than ``tile``). One span when ``length <= tile``."""
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0 px, not {overlap}")
    if length <= tile:
        return [(0, length)]
    if tile < 2 * overlap + align:
        raise ValueError(f"tile size {tile} too small for an overlap of {overlap} (needs >= {2 * overlap + align})")
    n = 1 + math.ceil((length - tile) / (tile - overlap - align))
    starts = sorted({(round(i * (length - tile) / (n - 1)) // align) * align for i in range(n)})
    return [(s, s + tile) for s in starts[:-1]] + [(starts[-1], length)]


def ramp_1d(start: int, end: int, length: int, overlap: int) -> np.ndarray:
    """Blending weights of one tile along one axis: zero for ``overlap // 4`` pixels at an inner edge (where the
    tile's zero padding disturbs the output), then a cosine ramp over ``overlap // 2`` pixels, then one."""
    n = end - start
    w = np.ones(n, np.float64)
    margin, ramp = overlap // 4, max(1, overlap // 2)
    up = np.zeros(min(n, margin + ramp))
    t = (np.arange(ramp) + 0.5) / ramp
    up[margin : margin + ramp] = (np.sin(t * np.pi / 2) ** 2)[: max(0, len(up) - margin)]
    if start > 0:
        w[: len(up)] = np.minimum(w[: len(up)], up)
    if end < length:
        w[n - len(up) :] = np.minimum(w[n - len(up) :], up[::-1])
    return w


def blend(parts: list[np.ndarray], spans: list, shape: tuple[int, int], overlap: int) -> np.ndarray:
    """One image of ``shape`` from its denoised tiles ``parts`` (at ``spans``), weighted by their ramps."""
    acc = np.zeros(shape, np.float64)
    wsum = np.zeros(shape, np.float64)
    for part, ((y0, y1), (x0, x1)) in zip(parts, spans):
        wgt = np.outer(ramp_1d(y0, y1, shape[0], overlap), ramp_1d(x0, x1, shape[1], overlap))
        acc[y0:y1, x0:x1] += wgt * part
        wsum[y0:y1, x0:x1] += wgt
    return (acc / wsum).astype(np.float32)


def _owned(spans: list[tuple[int, int]], k: int, length: int) -> tuple[float, float]:
    """The part of tile ``k`` that owns detections: split every overlap at its middle."""
    lo = 0.0 if k == 0 else (spans[k][0] + spans[k - 1][1]) / 2
    hi = float(length) if k == len(spans) - 1 else (spans[k + 1][0] + spans[k][1]) / 2
    return lo, hi


def merge_detections(parts: list, spans: list, shape: tuple[int, int], max_det: int) -> tuple:
    """One image's (boxes, scores) from its tiles' detections: each tile keeps the boxes centred in the part it
    owns, then NMS (IoU 0.5) keeps the best ``max_det``."""
    from napari_lidnet.models.nms import nms

    ys = sorted({s[0] for s in spans})
    xs = sorted({s[1] for s in spans})
    boxes, scores = [], []
    for (b, s), (yspan, xspan) in zip(parts, spans):
        if not len(b):
            continue
        b = b.clone()
        b[:, 0::2] += xspan[0]
        b[:, 1::2] += yspan[0]
        cy, cx = (b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2
        ylo, yhi = _owned(ys, ys.index(yspan), shape[0])
        xlo, xhi = _owned(xs, xs.index(xspan), shape[1])
        keep = (cy >= ylo) & (cy < yhi) & (cx >= xlo) & (cx < xhi)
        boxes.append(b[keep])
        scores.append(s[keep])
    if not boxes:
        return torch.zeros(0, 4), torch.zeros(0)
    b, s = torch.cat(boxes), torch.cat(scores)
    kept = nms(b, s, 0.5)[:max_det]
    return b[kept], s[kept]


def centred_in(boxes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Which (N, 4) pixel boxes ``x1, y1, x2, y2`` have their centre on a True pixel of ``mask``."""
    h, w = mask.shape
    cx = np.clip(((boxes[:, 0] + boxes[:, 2]) / 2).astype(int), 0, w - 1)
    cy = np.clip(((boxes[:, 1] + boxes[:, 3]) / 2).astype(int), 0, h - 1)
    return mask[cy, cx]
