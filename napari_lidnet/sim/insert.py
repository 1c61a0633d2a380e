"""Synthetic lesions inserted into training patches, with their boxes (a detector's data augmentation).

A detector that only sees the phantoms' organ lesions learns the phantoms. Lesions inserted anywhere in soft tissue,
at sizes, contrasts, shapes and edges drawn from wide ranges, teach it what a focal lesion looks like against any
background; the anatomy around them (and the lesion-free slices) teach it what is not one. Each lesion is a
rotated ellipse (axis ratio 0.6-1, half of them lobulated), sharp or with a Gaussian edge, whose footprint lies
in soft tissue (smoothed HU in ``SOFT_TISSUE_HU``) and clear of the patch border and of other boxes. The same
signal is added to the full-dose patch and to its low-dose partner: the noise of a CT image barely changes with a
few tens of HU. Boxes are tight around the pixels at least half covered (x2, y2 exclusive), as ``sim.lesions``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from napari_lidnet.sim.canvas import Blob, Canvas, harm
from napari_lidnet.sim.lesions import tight_box

__all__ = ["INSERT_CONTRAST_HU", "INSERT_DIAMETER_MM", "SOFT_TISSUE_HU", "insert_lesions"]

#: diameter (mm, log-uniform) and |contrast| (HU, uniform; half hypodense) of an inserted lesion
INSERT_DIAMETER_MM = (3.0, 25.0)
INSERT_CONTRAST_HU = (10.0, 80.0)
#: edge: sharp with probability 0.3, else a Gaussian edge of this SD (mm)
INSERT_EDGE_MM = (0.3, 1.5)
#: where a lesion may lie: Gaussian(1 px)-smoothed HU in this range (fat excluded, parenchyma and muscle included)
SOFT_TISSUE_HU = (-30.0, 130.0)
#: pixels kept between an inserted lesion and any other box
GAP_PX = 3.0


def _draw(rng: np.random.Generator) -> tuple[float, float, float, float, np.ndarray | None]:
    """(diameter mm, axis ratio, edge SD mm, contrast HU, lobulation harmonics or None)."""
    lo, hi = INSERT_DIAMETER_MM
    diam = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ratio = float(rng.uniform(0.6, 1.0))
    sigma = 0.0 if rng.random() < 0.3 else float(rng.uniform(*INSERT_EDGE_MM))
    contrast = float(rng.uniform(*INSERT_CONTRAST_HU)) * (1.0 if rng.random() < 0.5 else -1.0)
    lobes = harm(rng, 3, 0.15) if rng.random() < 0.5 else None
    return diam, ratio, sigma, contrast, lobes


def insert_lesions(
    full: np.ndarray,
    low: np.ndarray,
    boxes: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    max_lesions: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Insert 1..``max_lesions`` lesions into a square HU patch pair; returns (full, low, boxes incl. ``boxes``).

    The inputs are not modified. Lesions that do not fit (no soft tissue far enough from the border and the other
    boxes) are skipped, so a patch of air or bone comes back unchanged.
    """
    size = full.shape[0]
    if full.shape != (size, size) or low.shape != full.shape:
        raise ValueError(f"insert_lesions needs square patches of one shape, got {full.shape} and {low.shape}")
    full, low = np.array(full, np.float32), np.array(low, np.float32)
    smooth = ndimage.gaussian_filter(full, 1.0)
    soft = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
    soft[[0, -1], :] = soft[:, [0, -1]] = False
    room = ndimage.distance_transform_edt(soft)
    taken = np.zeros_like(soft)
    out = [np.asarray(b, np.float32) for b in np.asarray(boxes, np.float32).reshape(-1, 4)]
    for x1, y1, x2, y2 in out:
        taken[max(int(y1), 0) : int(math.ceil(y2)), max(int(x1), 0) : int(math.ceil(x2))] = True
    canvas = Canvas(size, spacing_mm)
    for _ in range(int(rng.integers(1, max_lesions + 1))):
        diam, ratio, sigma, contrast, lobes = _draw(rng)
        blob = Blob(0.0, 0.0, diam / 2, diam / 2 * ratio, float(rng.uniform(0, math.pi)), lobes)
        need = (blob.extent() + 2 * sigma) / spacing_mm + 1.5
        clear = ndimage.distance_transform_edt(~taken) if taken.any() else np.full(soft.shape, np.inf)
        cand = np.argwhere((room >= need) & (clear >= need + GAP_PX))
        if len(cand) == 0:
            continue
        iy, ix = cand[rng.integers(len(cand))]
        blob.cx, blob.cy = float(canvas.coord[ix]), float(canvas.coord[iy])
        res = canvas.coverage(blob, sigma)
        if res is None:
            continue
        cov = np.zeros_like(full)
        cov[res[0]] = res[1]
        box = tight_box(cov)
        if box is None:
            continue
        full += contrast * cov
        low += contrast * cov
        taken[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
        out.append(box)
    return full, low, np.array(out, np.float32).reshape(-1, 4)
