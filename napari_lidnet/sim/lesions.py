"""Lesions of the phantoms: (soft or sharp) ellipsoids fully inside their host organ, with tight boxes per slice.

Lesion contrast vs the host organ is 15-120 HU in |value| for liver, spleen and kidney (kidney hypodense lesions
stop at cyst density, contrast >= -40 HU); lung nodules are physical (solid ~ -50..60 HU or ground-glass
-750..-500 HU in lung of ~ -850 HU), so their contrast is far larger; brain lesions are subtle: hypodense
-6..-25 HU (infarct, oedema) or hyperdense +15..+60 HU (haemorrhage, enhancing metastasis).

Two lesion profiles (``LESION_PROFILES``): ``"standard"`` (above, the default; a seed gives the phantoms of earlier
versions) and ``"hard"``, lesions whose reading is noise-limited, after the published low-contrast detectability
work: the FDA LCD-CT inserts (MITA CCT189: 3 mm / 14 HU, 5 mm / 7 HU, 7 mm / 5 HU, 10 mm / 3 HU, each +-10 %),
small metastases (5-15 mm, 20-50 HU against the organ; hypodense as liver metastases in the portal venous phase,
or hyperdense as hypervascular ones) in liver, spleen, kidney and brain, and faint pure ground-glass nodules in
the lung (5-10 mm, -800..-650 HU). Edges are sharp or soft (Gaussian, SD 0.4-1.2 mm, at most a quarter of the
diameter); a hard lesion that does not fit its organ at its drawn size is redrawn, never shrunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_lidnet.sim.canvas import LABELS as L
from napari_lidnet.sim.canvas import Blob, Canvas, harm

#: lesion cross-sections smaller than this (pixels, either side) get no box: a 1-2 pixel tip is invisible in noise
MIN_BOX_PX = 3

#: body part -> host organ -> (labels, relative weight, probability of a hypodense lesion)
HOSTS: dict[str, dict[str, tuple[tuple[int, ...], float, float]]] = {
    "abdomen": {
        "liver": ((L["liver"],), 0.55, 0.7),
        "spleen": ((L["spleen"],), 0.2, 0.8),
        "kidney": ((L["kidney"],), 0.25, 0.8),
    },
    "chest": {"lung": ((L["lung"],), 1.0, 0.0)},
    "head": {"brain": ((L["gm"], L["wm"]), 1.0, 0.6)},
}

LESION_PROFILES = ("standard", "hard")
#: FDA LCD-CT (MITA CCT189) low-contrast inserts: (diameter mm, |contrast| HU)
LCD_INSERTS = ((3.0, 14.0), (5.0, 7.0), (7.0, 5.0), (10.0, 3.0))
#: relative spread (+-) of an LCD insert's diameter and contrast in the hard profile
LCD_JITTER = 0.1
#: small metastases of the hard profile: diameter (mm) and |contrast| (HU) against the host organ
METASTASIS_MM = (5.0, 15.0)
METASTASIS_HU = (20.0, 50.0)
#: hypodense brain metastases stop at about CSF density (20-25 HU below brain)
BRAIN_HYPO_MAX_HU = 25.0
#: faint pure ground-glass nodules of the hard profile: diameter (mm), absolute HU
GGN_MM = (5.0, 10.0)
GGN_HU = (-800.0, -650.0)
#: soft edges of the hard profile: Gaussian SD (mm), at most this fraction of the diameter
SOFT_EDGE_MM = (0.4, 1.2)
SOFT_EDGE_MAX_FRACTION = 0.25
#: hard profile, organs other than the lung: probability of each lesion family. Calibrated in
#: benchmarks/hard_lesions.py (results/hard_lesions.md): no share meets issue 12's detector targets with the shipped
#: detector (LCD inserts are below its floor at every dose, metastases lose < 0.07 at 25 %), and the observer's
#: mix d' at 25 % moves only from 4.8 to 3.9 over shares 0.1-1; 0.3 keeps most lesions detectable by a CNN. With a
#: detector trained on hard lesions (results/hard_lesions_hardtrained.md): 0.75 at 25 %, but a loss of only 0.03 vs
#: full dose (0.11 at 10 %); LCD inserts, the most dose-sensitive family, stay near its floor.
HARD_MIX = {"lcd": 0.3, "metastasis": 0.7}
#: hard profile: lesions per slice 0..5 (more than the standard 0-4: small lesions fit, and statistics need them)
HARD_COUNT_P = (0.0, 0.15, 0.3, 0.3, 0.15, 0.1)


@dataclass(frozen=True)
class LesionDraw:
    """What a lesion is before it is placed: kind label, contrast (HU added, or absolute HU), edge, size, shape."""

    kind: str
    contrast: float
    sigma: float
    absolute: bool
    diameter_mm: float
    family: str = "standard"
    p_irregular: float = 0.6  # probability of a Fourier-irregular outline
    min_ratio: float = 0.75  # smallest minor / major axis ratio
    shrink: bool = True  # shrink to fit the organ (standard) or give up (hard: sizes are the point)


@dataclass
class Lesion:
    kind: str
    host: tuple[int, ...]
    blob: Blob  # in-plane outline at the centre slice
    zc: float  # centre z (mm)
    c: float  # z semi-axis (mm)
    contrast: float  # HU added (or absolute HU for lung nodules: see ``absolute``)
    sigma: float
    absolute: bool = False
    family: str = "standard"

    def at(self, z: float) -> Blob | None:
        q = 1.0 - ((z - self.zc) / self.c) ** 2
        if q <= 0:
            return None
        s = math.sqrt(q)
        b = self.blob
        return Blob(b.cx, b.cy, b.a * s, b.b * s, b.angle, b.harm)


def draw_lesion(rng: np.random.Generator, host_name: str, p_hypo: float) -> tuple[str, float, float, bool]:
    """(kind label, contrast HU or absolute HU, edge sigma mm, absolute?) for a new lesion."""
    if host_name == "lung":
        if rng.random() < 0.75:
            return "lung_nodule", float(rng.uniform(-50, 60)), float(rng.choice([0.0, 0.4])), True
        return "lung_ggo", float(rng.uniform(-750, -500)), float(rng.uniform(0.8, 2.0)), True
    hypo = rng.random() < p_hypo
    if host_name == "brain":
        mag = float(rng.uniform(6, 25) if hypo else rng.uniform(15, 60))
        sigma = float(rng.uniform(0.8, 2.5)) if rng.random() < 0.7 else 0.0
        return f"brain_{'hypo' if hypo else 'hyper'}", -mag if hypo else mag, sigma, False
    mag = float(rng.uniform(15, 120))
    if hypo and host_name == "kidney":
        mag = min(mag, 40.0)
    if hypo and host_name == "spleen":
        mag = min(mag, 70.0)
    sigma = float(rng.uniform(0.6, 2.5)) if rng.random() < 0.5 else 0.0
    return f"{host_name}_{'hypo' if hypo else 'hyper'}", -mag if hypo else mag, sigma, False


def _draw_standard(rng: np.random.Generator, host_name: str, p_hypo: float) -> LesionDraw:
    """The standard profile's draws, in the order of earlier versions (a seed gives the same lesions)."""
    kind, contrast, sigma, absolute = draw_lesion(rng, host_name, p_hypo)
    diam = math.exp(rng.uniform(math.log(4.0), math.log(40.0)))
    if kind == "lung_ggo":
        diam = max(diam, 8.0)
    return LesionDraw(kind, contrast, sigma, absolute, diam)


def _edge(rng: np.random.Generator, diam: float, p_soft: float) -> float:
    """Sharp (0) or soft edge SD (mm), at most ``SOFT_EDGE_MAX_FRACTION`` of the diameter."""
    if rng.random() >= p_soft:
        return 0.0
    return float(min(rng.uniform(*SOFT_EDGE_MM), SOFT_EDGE_MAX_FRACTION * diam))


def draw_hard_lesion(rng: np.random.Generator, host_name: str, p_hypo: float) -> LesionDraw:
    """A lesion of the hard profile for a host organ (see the module docstring for the published ranges)."""
    if host_name == "lung":
        diam = float(rng.uniform(*GGN_MM))
        return LesionDraw("lung_ggo", float(rng.uniform(*GGN_HU)), _edge(rng, diam, 0.8), True, diam, "ggn",
                          p_irregular=0.6, shrink=False)  # fmt: skip
    hypo = bool(rng.random() < p_hypo)
    family = "lcd" if rng.random() < HARD_MIX["lcd"] else "metastasis"
    if family == "lcd":
        d0, c0 = LCD_INSERTS[int(rng.integers(len(LCD_INSERTS)))]
        diam, mag = (float(v * (1.0 + rng.uniform(-LCD_JITTER, LCD_JITTER))) for v in (d0, c0))
        p_irregular, min_ratio = 0.0, 0.9
    else:
        diam, mag = float(rng.uniform(*METASTASIS_MM)), float(rng.uniform(*METASTASIS_HU))
        p_irregular, min_ratio = 0.4, 0.8
    if hypo and host_name == "brain" and family == "metastasis":  # squeezed into 20..25 HU, not clipped
        lo, hi = METASTASIS_HU
        mag = lo + (mag - lo) * (BRAIN_HYPO_MAX_HU - lo) / (hi - lo)
    sigma = _edge(rng, diam, 0.5)
    kind = f"{host_name}_{'hypo' if hypo else 'hyper'}"
    return LesionDraw(kind, -mag if hypo else mag, sigma, False, diam, family, p_irregular, min_ratio, False)


@dataclass
class _Placer:
    """Host distance maps (cached per slice and host) and the lesions placed so far."""

    labels: np.ndarray  # (Z, H, W)
    zs: np.ndarray  # (Z,) mm
    px: float
    coord: np.ndarray
    placed: list[tuple[float, float, float, float, float]] = field(default_factory=list)  # cx, cy, r, z lo, z hi
    cache: dict[tuple[int, tuple[int, ...]], np.ndarray] = field(default_factory=dict)
    lesions: list[Lesion] = field(default_factory=list)

    def edt(self, k: int, host: tuple[int, ...]) -> np.ndarray:
        if (k, host) not in self.cache:
            mask = self.labels[k] == host[0] if len(host) == 1 else np.isin(self.labels[k], host)
            self.cache[(k, host)] = ndimage.distance_transform_edt(mask) * self.px
        return self.cache[(k, host)]

    def candidates(self, d0: np.ndarray, need: float, z_here: float) -> np.ndarray:
        """Pixels (row, col) deep enough in the host and clear of lesions present at z_here."""
        cand = np.argwhere(d0 >= need)
        for cx, cy, r, zlo, zhi in self.placed:
            if cand.size and zlo <= z_here <= zhi:
                dist = np.hypot(self.coord[cand[:, 1]] - cx, self.coord[cand[:, 0]] - cy)
                cand = cand[dist >= r + need]
        return cand

    def fits(self, les: Lesion, iy: int, ix: int, margin: float, need: float) -> bool:
        """Inside the host in every slice it crosses, and clear of earlier lesions wherever both exist."""
        for k in range(self.labels.shape[0]):
            cut = les.at(float(self.zs[k]))
            if cut is not None and self.edt(k, les.host)[iy, ix] < cut.extent() + margin:
                return False
        b = les.blob
        return not any(
            zlo <= les.zc + les.c and les.zc - les.c <= zhi and math.hypot(b.cx - cx, b.cy - cy) < r + need
            for cx, cy, r, zlo, zhi in self.placed
        )


def _try_lesion(
    rng: np.random.Generator, pl: _Placer, hosts: dict, names: list[str], p: np.ndarray, profile: str = "standard"
) -> bool:
    """One placement attempt (draws in a fixed order, so a seed gives the same phantom); True if placed."""
    name = str(rng.choice(names, p=p))
    host, _, p_hypo = hosts[name]
    n_z = pl.labels.shape[0]
    k0 = (int(rng.integers(0, n_z)) + n_z // 2) // 2 if n_z > 2 else int(rng.integers(0, n_z))
    d0 = pl.edt(k0, host)
    draw = draw_hard_lesion(rng, name, p_hypo) if profile == "hard" else _draw_standard(rng, name, p_hypo)
    sigma = draw.sigma
    margin = 2.0 * sigma + 1.5 * pl.px
    hm = harm(rng, 3, 0.05) if rng.random() < draw.p_irregular else None
    shape = Blob(0.0, 0.0, 1.0, rng.uniform(draw.min_ratio, 1.0), float(rng.uniform(0, np.pi)), hm)
    a = min(draw.diameter_mm / 2, (float(d0.max()) - margin) / shape.extent())
    if a < (2.0 if draw.shrink else draw.diameter_mm / 2):
        return False
    need = a * shape.extent() + margin
    cand = pl.candidates(d0, need, float(pl.zs[k0]))
    if cand.size == 0:
        return False
    iy, ix = cand[rng.integers(len(cand))]
    blob = Blob(float(pl.coord[ix]), float(pl.coord[iy]), a, a * shape.b, shape.angle, hm)
    c = a * rng.uniform(0.7, 1.2)
    les = Lesion(draw.kind, host, blob, float(pl.zs[k0]), c, draw.contrast, sigma, draw.absolute, draw.family)
    if not pl.fits(les, iy, ix, margin, need):
        return False
    pl.lesions.append(les)
    pl.placed.append((blob.cx, blob.cy, need, les.zc - les.c, les.zc + les.c))
    return True


def check_profile(profile: str) -> str:
    """``profile`` if it is one of ``LESION_PROFILES``, else a one-line ValueError."""
    if profile not in LESION_PROFILES:
        raise ValueError(f"unknown lesion profile {profile!r}; choose one of {LESION_PROFILES}")
    return profile


def place_lesions(
    rng: np.random.Generator, kind: str, labels: np.ndarray, zs: np.ndarray, px: float, n_lesions: int,
    coord: np.ndarray, profile: str = "standard",
) -> list[Lesion]:  # fmt: skip
    """Ellipsoids fully inside their host organ in every slice they cross (labels (Z, H, W), zs (Z,) mm), apart.

    A lesion is kept only if, in each slice it crosses, the organ's distance map at its centre exceeds the
    cross-section's largest radius plus the soft edge (2 sigma) and 1.5 pixels; it tries up to 8 times per lesion
    (``profile="hard"``: 16 times, since its lesions are never shrunk to fit).
    """
    hosts = HOSTS[kind]
    names = list(hosts)
    weights = np.array([hosts[n][1] for n in names])
    pl = _Placer(labels, zs, px, coord)
    for _ in range(n_lesions):
        for _attempt in range(16 if check_profile(profile) == "hard" else 8):
            if _try_lesion(rng, pl, hosts, names, weights / weights.sum(), profile):
                break
    return pl.lesions


def tight_box(cov: np.ndarray) -> np.ndarray | None:
    """Tight box (x1, y1, x2, y2; x2, y2 exclusive) of the pixels at least half covered; None when there are none
    or the box is under ``MIN_BOX_PX`` on a side (the tip of an ellipsoid: drawn, not boxed)."""
    inside = np.argwhere(cov >= 0.5)
    if inside.size == 0:
        return None
    (r0, c0), (r1, c1) = inside.min(0), inside.max(0)
    if min(r1 - r0, c1 - c0) + 1 < MIN_BOX_PX:
        return None
    return np.array([c0, r0, c1 + 1, r1 + 1], np.float32)


def apply_lesion(cv: Canvas, les: Lesion, z: float) -> np.ndarray | None:
    """Add the lesion's cross-section at z to the canvas; its tight box (x1, y1, x2, y2) or None."""
    cut = les.at(z)
    if cut is None:
        return None
    res = cv.coverage(cut, les.sigma)
    if res is None:
        return None
    win, cov = res
    h = cv.hu[win]
    if les.absolute:
        h += (les.contrast - h) * cov
    else:
        h += les.contrast * cov
    box = tight_box(cov)
    if box is None:
        return None
    return box + np.array([win[1].start, win[0].start] * 2, np.float32)


def lesion_count(rng: np.random.Generator, n_lesions: int | None, profile: str = "standard") -> int:
    """``n_lesions`` checked, or a random 0-4 (mostly 1-2; hard profile: 1-5, mostly 2-3, ``HARD_COUNT_P``)."""
    if n_lesions is not None:
        if n_lesions < 0:
            raise ValueError(f"n_lesions must be >= 0, got {n_lesions}")
        return int(n_lesions)
    if check_profile(profile) == "hard":
        return int(rng.choice(len(HARD_COUNT_P), p=HARD_COUNT_P))
    return int(rng.choice(5, p=[0.1, 0.35, 0.3, 0.15, 0.1]))
