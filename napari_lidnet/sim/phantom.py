"""Procedural axial CT phantoms in HU (abdomen, chest, head), with lesions and their ground-truth boxes.

Anatomy is a painter's list of smooth blobs (``sim.canvas``) in millimetres, drawn in order onto an air background:
``sim.body`` (body with subcutaneous fat, muscle wall, cavity, organs, vessels, bone, bowel gas, lungs) and
``sim.head`` (scalp, skull with cortical tables and diploe, grey / white matter, CSF spaces, posterior fossa).
Organ positions drift smoothly with the axial position z (mm, superior positive), so a stack of slices is a
coherent volume. Texture is added per tissue; lesions (``sim.lesions``) last, as (soft or sharp) ellipsoids fully
inside their host organ, their boxes tight around the cross-section's half-contrast outline.

Two levels of realism:

- default (``detail=False`` for abdomen / chest): smooth organs with a low-amplitude correlated texture (a few HU),
  exactly the phantoms of earlier versions for a given seed;
- ``detail=True`` (always for the head, and with ``randomize=True``): ``sim.detail`` adds power-law (1/f^beta)
  parenchymal texture, fat stranding and muscle marbling, branching vessel and bronchial trees of many calibres,
  trabecular bone, contrast-enhanced organs and the patient table.

``randomize=True`` also samples the display FOV per body part (``scanner.sample_pixel_mm``: head 200-250 mm, body
300-500 mm, pixels 0.4-1.0 mm) and how much of it the patient fills. Everything is drawn from one
``numpy.random.Generator`` seeded by ``seed``: the same seed gives the same phantom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from scipy import ndimage

from napari_lidnet.sim.body import BodyAnatomy
from napari_lidnet.sim.canvas import LABELS, Canvas
from napari_lidnet.sim.detail import Detail
from napari_lidnet.sim.head import HeadAnatomy
from napari_lidnet.sim.lesions import MIN_BOX_PX, apply_lesion, check_profile, lesion_count, place_lesions
from napari_lidnet.sim.scanner import sample_pixel_mm

__all__ = ["KINDS", "LABELS", "MIN_BOX_PX", "Phantom", "PhantomVolume", "make_phantom", "make_phantom_volume"]

KINDS = ("abdomen", "chest", "head")
L = LABELS

#: texture SD (HU) of the correlated tissue texture per label
_TEXTURE_SD = {
    L["fat"]: 6.0,
    L["muscle"]: 5.0,
    L["liver"]: 4.0,
    L["spleen"]: 4.0,
    L["kidney"]: 4.0,
    L["vessel"]: 2.0,
    L["bone"]: 40.0,
    L["marrow"]: 25.0,
    L["bowel"]: 6.0,
    L["lung"]: 18.0,
    L["heart"]: 3.0,
    L["fluid"]: 2.0,
}

#: axial range (mm) of the slices of each body part
Z_RANGE = {"abdomen": (-60.0, 130.0), "chest": (-70.0, 60.0), "head": (-30.0, 62.0)}
#: fraction of the half FOV the body's lateral semi-axis takes: fixed protocol, randomised FOVs
_FILL = (0.78, 0.88)
_FILL_RANDOM = (0.6, 0.92)


@dataclass
class Phantom:
    """One axial slice in HU with lesions.

    Attributes:
        hu: (size, size) float32 HU, air -1000 outside the body.
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` pixels (x2, y2 exclusive), tight around each lesion.
        lesion_kinds: N strings ``"<organ>_hypo"``, ``"<organ>_hyper"``, ``"lung_nodule"``, ``"lung_ggo"``
            or ``"brain_hypo"`` / ``"brain_hyper"``.
        spacing_mm: square pixel size in mm.
        labels: (size, size) uint8 organ label map (``LABELS``) of the anatomy without lesions.
        lesion_contrast_hu: (N,) lesion minus host HU; ``lesion_diameter_mm``: (N,) largest in-plane diameter.
        lesion_families: N strings, ``"standard"`` or the hard profile's ``"lcd"``, ``"metastasis"``, ``"ggn"``;
        lesion_profile: the profile drawn from (``sim.lesions.LESION_PROFILES``).
    """

    hu: np.ndarray
    boxes: np.ndarray
    lesion_kinds: list[str]
    spacing_mm: float
    labels: np.ndarray | None = None
    lesion_contrast_hu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    lesion_diameter_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: str = "abdomen"
    contrast_enhanced: bool = False
    lesion_families: list[str] = field(default_factory=list)
    lesion_profile: str = "standard"


@dataclass
class PhantomVolume:
    """A (z, y, x) stack with ellipsoidal lesions spanning several slices.

    Attributes:
        hu: (n_slices, size, size) float32 HU.
        boxes: (M, 5) float32 ``slice, x1, y1, x2, y2``: one row per lesion per slice it appears in.
        lesion_kinds: M strings, one per box row; ``lesion_ids``: (M,) int, which lesion each row belongs to.
        spacing_mm: (slice_mm, pixel_mm, pixel_mm).
        labels: (n_slices, size, size) uint8 organ labels.
    """

    hu: np.ndarray
    boxes: np.ndarray
    lesion_kinds: list[str]
    lesion_ids: np.ndarray
    spacing_mm: tuple[float, float, float]
    labels: np.ndarray | None = None
    kind: str = "abdomen"
    contrast_enhanced: bool = False


# ------------------------------------------------------------------------------------------------------- texture
class _Texture:
    """Unit-SD correlated noise (correlation length ~ 3 mm in-plane, ~10 mm in z), smooth in z."""

    def __init__(self, rng: np.random.Generator, size: int, px: float, z0: float, z1: float) -> None:
        self.size = size
        self.step = 10.0
        self.z0 = z0
        n_nodes = int(math.ceil((z1 - z0) / self.step)) + 2
        coarse = max(8, int(round(size * px / 3.0)))  # one node per ~3 mm
        self.fields = []
        for _ in range(n_nodes):
            f = ndimage.gaussian_filter(rng.standard_normal((coarse, coarse)).astype(np.float32), 1.0)
            self.fields.append(f / max(float(f.std()), 1e-6))

    def at(self, z: float) -> np.ndarray:
        t = (z - self.z0) / self.step
        i = min(max(int(math.floor(t)), 0), len(self.fields) - 2)
        w = min(max(t - i, 0.0), 1.0)
        f = (1 - w) * self.fields[i] + w * self.fields[i + 1]
        f = f / math.sqrt((1 - w) ** 2 + w**2)
        return ndimage.zoom(f, self.size / f.shape[0], order=1, grid_mode=True, mode="nearest")[
            : self.size, : self.size
        ]


def _add_texture(cv: Canvas, tex: np.ndarray) -> None:
    sd = np.zeros(256, np.float32)
    for lab, s in _TEXTURE_SD.items():
        sd[lab] = s
    cv.hu += tex * sd[cv.lab]


class _Texturer(Protocol):
    def paint(self, cv: Canvas, z: float) -> None: ...

    def apply(self, cv: Canvas, z: float) -> None: ...


class _SmoothTexture:
    """The texture of the default phantoms: structures none, a smooth correlated field scaled per tissue."""

    def __init__(self, rng: np.random.Generator, size: int, px: float, z0: float, z1: float) -> None:
        self.tex = _Texture(rng, size, px, z0, z1)

    def paint(self, cv: Canvas, z: float) -> None:
        pass

    def apply(self, cv: Canvas, z: float) -> None:
        _add_texture(cv, self.tex.at(z))


# ------------------------------------------------------------------------------------------------------------ API
def _check(kind: str, size: int, pixel_mm: float | None, lesions: str = "standard") -> None:
    check_profile(lesions)
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 pixels, got {size}")
    if pixel_mm is not None and not 0.1 <= pixel_mm <= 5.0:
        raise ValueError(f"pixel_mm must be in [0.1, 5] mm, got {pixel_mm}")


@dataclass
class _Setup:
    rng: np.random.Generator
    px: float
    anat: BodyAnatomy | HeadAnatomy
    contrast: bool
    detail: bool


def _setup(
    seed: int | np.random.Generator, kind: str, size: int, pixel_mm: float | None, contrast_enhanced: bool | None,
    detail: bool | None, randomize: bool,
) -> _Setup:  # fmt: skip
    """Generator, pixel size, patient anatomy; the draws of the default phantoms come first and in their order."""
    rng = np.random.default_rng(seed)
    if pixel_mm is not None:
        px = float(pixel_mm)
    elif randomize or kind == "head":
        px = sample_pixel_mm(rng, kind, size)
    else:
        px = float(rng.uniform(0.6, 0.9))
    contrast = bool(rng.random() < 0.5) if contrast_enhanced is None else bool(contrast_enhanced)
    if kind == "head":
        anat: BodyAnatomy | HeadAnatomy = HeadAnatomy(rng, size, px, contrast, randomize)
    else:
        anat = BodyAnatomy(rng, kind, size, px, contrast, _FILL_RANDOM if randomize else _FILL)
    use_detail = (kind == "head" or randomize) if detail is None else bool(detail)
    return _Setup(rng, px, anat, contrast, use_detail)


def _texturer(st: _Setup, kind: str, size: int, z0: float, z1: float) -> _Texturer:
    if st.detail:
        return Detail(st.rng, st.anat, kind, size, st.px, z0, z1)
    return _SmoothTexture(st.rng, size, st.px, z0, z1)


def _paint(st: _Setup, tex: _Texturer, size: int, z: float) -> tuple[Canvas, np.ndarray]:
    """The anatomy at z on a new canvas, the host labels (before detail structures) for lesion placement."""
    cv = Canvas(size, st.px)
    st.anat.paint(cv, z)
    host = cv.lab.copy()
    tex.paint(cv, z)
    return cv, host


def make_phantom(
    seed: int | np.random.Generator,
    kind: str = "abdomen",
    size: int = 512,
    pixel_mm: float | None = None,
    n_lesions: int | None = None,
    contrast_enhanced: bool | None = False,
    *,
    detail: bool | None = None,
    randomize: bool = False,
    lesions: str = "standard",
) -> Phantom:
    """One random axial slice in HU with lesions (0-4 when ``n_lesions`` is None; fewer if they do not fit).

    ``pixel_mm`` None draws it: 0.6-0.9 mm for abdomen / chest (the FOV scales with it, so the body always fits),
    from the body part's FOV range for the head or with ``randomize``. ``contrast_enhanced`` None: drawn (50 %).
    ``detail`` None: on for the head and with ``randomize`` (see the module docstring). ``lesions``: the lesion
    profile, ``"standard"`` or ``"hard"`` (``sim.lesions``); the anatomy of a seed is the same for both.
    """
    _check(kind, size, pixel_mm, lesions)
    st = _setup(seed, kind, size, pixel_mm, contrast_enhanced, detail, randomize)
    rng = st.rng
    z = float(rng.uniform(*Z_RANGE[kind]))
    tex = _texturer(st, kind, size, z, z)
    cv, host = _paint(st, tex, size, z)
    labels = cv.lab.copy()
    tex.apply(cv, z)
    count = lesion_count(rng, n_lesions, lesions)
    placed = place_lesions(rng, kind, host[None], np.array([z]), st.px, count, cv.coord, lesions)
    boxes, kinds, contrast, diam, families = [], [], [], [], []
    for les in placed:
        box = apply_lesion(cv, les, z)
        if box is None:
            continue
        boxes.append(box)
        kinds.append(les.kind)
        families.append(les.family)
        contrast.append(les.contrast - st.anat.hu["lung"] if les.absolute else les.contrast)
        diam.append(2 * max(les.blob.a, les.blob.b))
    return Phantom(
        hu=cv.hu,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        lesion_kinds=kinds,
        spacing_mm=st.px,
        labels=labels,
        lesion_contrast_hu=np.array(contrast, np.float32),
        lesion_diameter_mm=np.array(diam, np.float32),
        kind=kind,
        contrast_enhanced=st.contrast,
        lesion_families=families,
        lesion_profile=lesions,
    )


def make_phantom_volume(
    seed: int | np.random.Generator,
    n_slices: int,
    kind: str = "abdomen",
    size: int = 512,
    slice_mm: float = 2.5,
    pixel_mm: float | None = None,
    n_lesions: int | None = None,
    contrast_enhanced: bool | None = False,
    *,
    detail: bool | None = None,
    randomize: bool = False,
    lesions: str = "standard",
) -> PhantomVolume:
    """A (z, y, x) stack of ``n_slices`` slices ``slice_mm`` apart whose anatomy and lesions are continuous in z.

    Lesions are ellipsoids (z semi-axis 0.7-1.2x the in-plane one) spanning a few slices; one box row per slice
    crossed. The slice index grows with z (towards the head). Other arguments as ``make_phantom``.
    """
    _check(kind, size, pixel_mm, lesions)
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if not 0.1 <= slice_mm <= 20:
        raise ValueError(f"slice_mm must be in [0.1, 20] mm, got {slice_mm}")
    st = _setup(seed, kind, size, pixel_mm, contrast_enhanced, detail, randomize)
    zlo, zhi = Z_RANGE[kind]
    span = (n_slices - 1) * slice_mm
    z0 = float(st.rng.uniform(zlo, max(zlo, zhi - span)))
    zs = z0 + np.arange(n_slices) * slice_mm
    tex = _texturer(st, kind, size, float(zs[0]), float(zs[-1]))
    hu = np.empty((n_slices, size, size), np.float32)
    labels = np.empty((n_slices, size, size), np.uint8)
    host = np.empty((n_slices, size, size), np.uint8)
    canvases = []
    for k, z in enumerate(zs):
        cv, host[k] = _paint(st, tex, size, float(z))
        labels[k] = cv.lab
        tex.apply(cv, float(z))
        canvases.append(cv)
    count = lesion_count(st.rng, n_lesions, lesions)
    placed = place_lesions(st.rng, kind, host, zs, st.px, count, canvases[0].coord, lesions)
    rows, kinds, ids = [], [], []
    for k, (cv, z) in enumerate(zip(canvases, zs, strict=True)):
        for i, les in enumerate(placed):
            box = apply_lesion(cv, les, float(z))
            if box is not None:
                rows.append([k, *box])
                kinds.append(les.kind)
                ids.append(i)
        hu[k] = cv.hu
    return PhantomVolume(
        hu=hu,
        boxes=np.array(rows, np.float32).reshape(-1, 5),
        lesion_kinds=kinds,
        lesion_ids=np.array(ids, np.int64),
        spacing_mm=(float(slice_mm), st.px, st.px),
        labels=labels,
        kind=kind,
        contrast_enhanced=st.contrast,
    )
