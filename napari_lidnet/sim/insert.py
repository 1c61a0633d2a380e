"""Synthetic lesions inserted into training patches, with their boxes (a detector's data augmentation).

A detector that only sees the phantoms' organ lesions learns the phantoms. Lesions inserted anywhere in soft tissue,
at sizes, contrasts, shapes and edges drawn from wide ranges, teach it what a focal lesion looks like against any
background; the anatomy around them (and the lesion-free slices) teach it what is not one. Each lesion is a
rotated ellipse (axis ratio 0.6-1, half of them lobulated), sharp or with a Gaussian edge, whose footprint lies
in soft tissue (smoothed HU in ``SOFT_TISSUE_HU``) and clear of the patch border and of other boxes. The same
signal is added to the full-dose patch and to its low-dose partner: the noise of a CT image barely changes with a
few tens of HU. Lung nodules (``lung`` > 0: solid or subsolid, 4-40 mm, often spiculated, in aerated lung and
against the pleura) teach it the lesion that low-dose chest CT is read for. Tumour-like masses (``attached`` > 0:
20 mm up to the largest size, centred in lung but free to run into the chest wall or the mediastinum, as a lung
cancer does, with an inner texture and sometimes a necrotic centre) teach it the cancer a radiologist looks for
first. Boxes are tight around the pixels at least half covered (x2, y2 exclusive), as ``sim.lesions``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from napari_lidnet.sim.canvas import Blob, Canvas, harm
from napari_lidnet.sim.lesions import tight_box
from napari_lidnet.sim.texture import power_law_noise

__all__ = ["INSERT_CONTRAST_HU", "INSERT_DIAMETER_MM", "LUNG_HU", "SOFT_TISSUE_HU", "insert_lesions", "lung_mask"]

#: diameter (mm, log-uniform) and |contrast| (HU, uniform; half hypodense) of an inserted lesion
INSERT_DIAMETER_MM = (3.0, 25.0)
INSERT_CONTRAST_HU = (10.0, 80.0)
#: edge: sharp with probability 0.3, else a Gaussian edge of this SD (mm)
INSERT_EDGE_MM = (0.3, 1.5)
#: where a lesion may lie: Gaussian(1 px)-smoothed HU in this range (fat excluded, parenchyma and muscle included)
SOFT_TISSUE_HU = (-30.0, 130.0)
#: pixels kept between an inserted lesion and any other box
GAP_PX = 3.0
#: lung nodules: diameter (mm, log-uniform); absolute HU of solid and of subsolid (part-solid, ground-glass) ones
LUNG_DIAMETER_MM = (4.0, 40.0)
LUNG_SOLID_HU = (-40.0, 60.0)
LUNG_SUBSOLID_HU = (-700.0, -300.0)
LUNG_SOLID_SHARE = 0.6
#: aerated lung: Gaussian(2 px)-smoothed HU in this range (air outside the body, airways and bowel gas lie below)
LUNG_HU = (-960.0, -600.0)
#: smallest lung cross-section (mm^2) that takes a nodule: an apex, not a rim of bowel gas
LUNG_MIN_MM2 = 400.0
#: an air pocket with this share of pixels below ``GAS_HU`` is gas (stomach, bowel), not lung
LUNG_MAX_GAS = 0.25
GAS_HU = -975.0
#: tumour-like masses: smallest diameter (mm), solid HU (unenhanced to enhanced), share of the footprint that must be
#: lung (the rest may be wall or mediastinum, kept as it is), inner texture SD (HU), necrotic-centre chance and drop
MASS_MIN_MM = 20.0
MASS_HU = (10.0, 70.0)
MASS_MIN_LUNG = 0.4
MASS_TEXTURE_HU = (4.0, 15.0)
MASS_NECROSIS = 0.3
MASS_NECROSIS_HU = (20.0, 50.0)
#: chance that a mass is placed against the chest wall or the mediastinum (where the patch has such a place)
MASS_ON_WALL = 0.6


def _draw(rng: np.random.Generator, max_mm: float = 0.0) -> tuple[float, float, float, float, np.ndarray | None]:
    """(diameter mm, axis ratio, edge SD mm, contrast HU, lobulation harmonics or None); ``max_mm`` > 0 replaces
    the largest diameter."""
    lo, hi = INSERT_DIAMETER_MM[0], max_mm or INSERT_DIAMETER_MM[1]
    diam = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ratio = float(rng.uniform(0.6, 1.0))
    sigma = 0.0 if rng.random() < 0.3 else float(rng.uniform(*INSERT_EDGE_MM))
    contrast = float(rng.uniform(*INSERT_CONTRAST_HU)) * (1.0 if rng.random() < 0.5 else -1.0)
    lobes = harm(rng, 3, 0.15) if rng.random() < 0.5 else None
    return diam, ratio, sigma, contrast, lobes


def _draw_nodule(rng: np.random.Generator, max_mm: float = 0.0) -> tuple[float, float, float, float, np.ndarray | None]:
    """A lung nodule: (diameter mm, axis ratio, edge SD mm, absolute HU, lobulation/spiculation harmonics);
    ``max_mm`` > 0 replaces the largest diameter (a mass above 30 mm)."""
    lo, hi = LUNG_DIAMETER_MM[0], max_mm or LUNG_DIAMETER_MM[1]
    diam = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    ratio = float(rng.uniform(0.7, 1.0))
    if rng.random() < LUNG_SOLID_SHARE:
        value = float(rng.uniform(*LUNG_SOLID_HU))
        sigma = 0.0 if rng.random() < 0.3 else float(rng.uniform(*INSERT_EDGE_MM))
    else:
        value, sigma = float(rng.uniform(*LUNG_SUBSOLID_HU)), float(rng.uniform(0.8, 2.0))
    lobes = harm(rng, 5, 0.25) if rng.random() < 0.6 else None
    return diam, ratio, sigma, value, lobes


def _draw_mass(rng: np.random.Generator, max_mm: float) -> tuple[float, float, float, float, np.ndarray]:
    """A tumour-like lung mass: (diameter mm, axis ratio, edge SD mm, HU, lobulation and spiculation harmonics)."""
    hi = max(max_mm or LUNG_DIAMETER_MM[1], MASS_MIN_MM * 1.5)
    diam = math.exp(rng.uniform(math.log(MASS_MIN_MM), math.log(hi)))
    lobes = np.concatenate([harm(rng, 4, 0.3), harm(rng, 12, 0.25)[4:]])  # lobulated, with finer spicules
    return diam, float(rng.uniform(0.6, 1.0)), float(rng.uniform(0.3, 1.2)), float(rng.uniform(*MASS_HU)), lobes


def _mass_inside(rng: np.random.Generator, cov: np.ndarray, canvas: Canvas, blob: Blob) -> np.ndarray:
    """A mass's HU offsets inside its coverage on ``canvas``: power-law texture, and (``MASS_NECROSIS``) a darker
    centre."""
    inside = power_law_noise(rng, canvas.size, 2.5, canvas.px, f_min=0.1) * float(rng.uniform(*MASS_TEXTURE_HU))
    if rng.random() < MASS_NECROSIS:
        core = Blob(blob.cx, blob.cy, blob.a, blob.b, blob.angle, harm(rng, 3, 0.2)).scaled(rng.uniform(0.3, 0.6))
        res = canvas.coverage(core, 1.0)
        if res is not None:
            inside[res[0]] -= res[1] * float(rng.uniform(*MASS_NECROSIS_HU))
    return inside * cov


#: the draw of each kind of lesion: in soft tissue, a lung nodule, a tumour-like mass
_DRAW = {"soft": _draw, "nodule": _draw_nodule, "mass": _draw_mass}


def lung_mask(hu: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Aerated lung: Gaussian(2 px)-smoothed HU in ``LUNG_HU``, in the air pockets of the body (holes in its largest
    part above -500 HU) that cover at least ``LUNG_MIN_MM2``, with a median HU in ``LUNG_HU`` and less than
    ``LUNG_MAX_GAS`` of pure gas, so that air outside the patient, the table's foam and bowel gas never count as
    lung (measured on the real chests of ``scripts/real_ct_dataset.py``: lungs hold 0-13% gas, stomach and bowel
    pockets 36-58%)."""
    wide = ndimage.gaussian_filter(np.asarray(hu, np.float32), 2.0)
    body = wide > -500.0
    labels, n = ndimage.label(body)
    if n == 0:
        return np.zeros(body.shape, bool)
    largest = labels == 1 + int(np.argmax(ndimage.sum_labels(body, labels, range(1, n + 1))))
    pockets, n = ndimage.label(ndimage.binary_fill_holes(largest) & ~largest)
    if n == 0:
        return np.zeros(body.shape, bool)
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(wide), pockets, idx) * spacing_mm**2
    raw = np.asarray(hu, np.float32)
    median = np.asarray(ndimage.median(raw, pockets, idx))
    gas = np.asarray(ndimage.mean(raw < GAS_HU, pockets, idx))
    keep = idx[(area >= LUNG_MIN_MM2) & (median >= LUNG_HU[0]) & (median <= LUNG_HU[1]) & (gas < LUNG_MAX_GAS)]
    return np.isin(pockets, keep) & (wide >= LUNG_HU[0]) & (wide <= LUNG_HU[1])


def _site_maps(full: np.ndarray, lung: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Room (px) in soft tissue; with a ``lung`` mask, room in it and the image a nodule replaces (smoothed, then the
    maximum over 5 x 5 px, so that a nodule against the pleura does not add density to the wall)."""
    smooth = ndimage.gaussian_filter(full, 1.0)
    soft = (smooth >= SOFT_TISSUE_HU[0]) & (smooth <= SOFT_TISSUE_HU[1])
    soft[[0, -1], :] = soft[:, [0, -1]] = False
    if lung is None:
        return ndimage.distance_transform_edt(soft), None, None
    aerated = np.array(lung, bool)
    aerated[[0, -1], :] = aerated[:, [0, -1]] = False
    base = ndimage.maximum_filter(smooth, size=5)
    return ndimage.distance_transform_edt(soft), ndimage.distance_transform_edt(aerated), base


def _fits(
    kind: str, need: float, room_soft: np.ndarray, room_lung: np.ndarray | None, edge: np.ndarray, clear: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Where the centre of a lesion ``need`` px across may go: a soft-tissue lesion inside soft tissue, a nodule with
    its centre half in lung and the whole of it in the patch, a mass (``kind`` "mass") centred in lung, the whole
    of it in the patch, on a wall with chance ``MASS_ON_WALL``; each clear of the other boxes."""
    if kind != "mass":
        fits = (room_lung >= need / 2) & (edge >= need) if kind == "nodule" else room_soft >= need
        return fits & (clear >= need + GAP_PX)
    fits = (room_lung >= 2.0) & (edge >= need / 2 + 1) & (clear >= need / 2 + GAP_PX)
    on_wall = fits & (room_lung < need / 2)
    return on_wall if rng.random() < MASS_ON_WALL and on_wall.any() else fits


def _signal(
    canvas: Canvas, blob: Blob, sigma: float, value: float, base: np.ndarray | None, mass: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(HU added, box) of a placed lesion; box None when it does not land. With ``base`` (a nodule) it fills what is
    less dense than it, so the wall, vessels and anything denser stay; a mass needs ``MASS_MIN_LUNG`` of itself over
    lung and gets its inner texture."""
    res = canvas.coverage(blob, sigma)
    cov = np.zeros((canvas.size, canvas.size), np.float32)
    if res is None:
        return cov, None
    cov[res[0]] = res[1]
    whole = float(cov.sum())
    if base is not None:
        cov *= base < value
    box = tight_box(cov)
    if box is None or (mass and cov.sum() < MASS_MIN_LUNG * whole):
        return cov, None
    signal = cov * (value - base) if base is not None else value * cov
    if mass:
        signal += _mass_inside(rng, cov, canvas, blob)
    return signal, box


def _occupied(boxes: list[np.ndarray], size: int) -> np.ndarray:
    """Pixels of a (size, size) patch inside ``boxes`` (x1, y1, x2, y2; x2 exclusive, clipped to the patch)."""
    taken = np.zeros((size, size), bool)
    for x1, y1, x2, y2 in boxes:
        taken[max(int(y1), 0) : int(math.ceil(y2)), max(int(x1), 0) : int(math.ceil(x2))] = True
    return taken


def insert_lesions(
    full: np.ndarray,
    low: np.ndarray,
    boxes: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    max_lesions: int = 3,
    lung: float = 0.0,
    lung_where: np.ndarray | None = None,
    max_mm: float = 0.0,
    attached: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Insert 1..``max_lesions`` lesions into a square HU patch pair; returns (full, low, boxes incl. ``boxes``).

    ``lung``: the chance that a lesion is a lung nodule (``_draw_nodule``), placed with its centre half in aerated
    lung (so it may touch the pleura or a vessel) and the whole of it inside the patch; where the smoothed image
    under it is less dense than the nodule, the nodule's HU replaces it, the noise kept. ``lung_where``: the patch's
    aerated lung (``lung_mask`` of its whole slice, cropped); by default ``lung_mask`` of the patch itself. ``max_mm``
    > 0: the largest diameter of both kinds (masses; by default 25 mm in soft tissue, 40 mm in lung). ``attached``:
    the chance that a lung lesion is a tumour-like mass (``_draw_mass``): centred in lung, the whole of it inside the
    patch, at least ``MASS_MIN_LUNG`` of it over lung (the wall or mediastinum under the rest stays), with its inner
    texture; 0 draws exactly what it drew before the option. The
    inputs are not modified. Lesions that do not fit (no room far enough from the border and the other boxes) are
    skipped, so a patch of air or bone comes back unchanged.
    """
    size = full.shape[0]
    if full.shape != (size, size) or low.shape != full.shape:
        raise ValueError(f"insert_lesions needs square patches of one shape, got {full.shape} and {low.shape}")
    full, low = np.array(full, np.float32), np.array(low, np.float32)
    where = (lung_mask(full, spacing_mm) if lung_where is None else lung_where) if lung > 0 else None
    room_soft, room_lung, base = _site_maps(full, where)
    to_border = np.minimum(np.arange(size), np.arange(size)[::-1])
    edge = np.minimum.outer(to_border, to_border)  # pixels to the patch border
    out = [np.asarray(b, np.float32) for b in np.asarray(boxes, np.float32).reshape(-1, 4)]
    taken = _occupied(out, size)
    canvas = Canvas(size, spacing_mm)
    for _ in range(int(rng.integers(1, max_lesions + 1))):
        kind = "nodule" if lung > 0 and rng.random() < lung else "soft"
        kind = "mass" if kind == "nodule" and attached > 0 and rng.random() < attached else kind
        diam, ratio, sigma, value, lobes = _DRAW[kind](rng, max_mm)
        blob = Blob(0.0, 0.0, diam / 2, diam / 2 * ratio, float(rng.uniform(0, math.pi)), lobes)
        need = (blob.extent() + 2 * sigma) / spacing_mm + 1.5
        clear = ndimage.distance_transform_edt(~taken) if taken.any() else np.full(taken.shape, np.inf)
        cand = np.argwhere(_fits(kind, need, room_soft, room_lung, edge, clear, rng))
        if len(cand) == 0:
            continue
        iy, ix = cand[rng.integers(len(cand))]
        blob.cx, blob.cy = float(canvas.coord[ix]), float(canvas.coord[iy])
        signal, box = _signal(canvas, blob, sigma, value, None if kind == "soft" else base, kind == "mass", rng)
        if box is None:
            continue
        full += signal
        low += signal
        taken[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])] = True
        out.append(box)
    return full, low, np.array(out, np.float32).reshape(-1, 4)
