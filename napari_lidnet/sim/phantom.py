"""Procedural axial abdomen and chest CT phantoms in HU, with lesions and their ground-truth boxes.

Anatomy is a painter's list of smooth blobs (ellipses with low-order Fourier irregularity, anti-aliased edges) in
millimetres, drawn in order onto an air background: body with subcutaneous fat, muscle wall, peritoneal / thoracic
cavity, organs, vessels, bone, bowel gas, lungs with vessels. Sizes scale with the field of view (the scanner's FOV
is chosen to fit the patient, so the body fills ~80-90 % of it) and organ positions drift smoothly with the axial
position z (mm, superior positive), so a stack of slices is a coherent volume. A low-amplitude correlated texture
(a few HU, smooth in z) is added per tissue; lesions are added last as (soft or sharp) ellipsoids fully inside
their host organ, and their boxes are tight around the cross-section's half-contrast outline.

Lesion contrast vs the host organ is 15-120 HU in |value| for liver, spleen and kidney (kidney hypodense lesions
stop at cyst density, contrast >= -40 HU); lung nodules are physical (solid ~ -50..60 HU or ground-glass
-750..-500 HU in lung of ~ -850 HU), so their contrast is far larger.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``: the same seed gives the same phantom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special

KINDS = ("abdomen", "chest")

#: lesion cross-sections smaller than this (pixels, either side) get no box: a 1-2 pixel tip is invisible in noise
MIN_BOX_PX = 3

#: organ label map values
LABELS: dict[str, int] = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "liver": 3,
    "spleen": 4,
    "kidney": 5,
    "vessel": 6,
    "bone": 7,
    "marrow": 8,
    "bowel": 9,
    "gas": 10,
    "lung": 11,
    "heart": 12,
    "fluid": 13,
    "airway": 14,
}
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

#: host organ -> (label, relative weight, probability of a hypodense lesion)
_HOSTS = {
    "abdomen": {
        "liver": (L["liver"], 0.55, 0.7),
        "spleen": (L["spleen"], 0.2, 0.8),
        "kidney": (L["kidney"], 0.25, 0.8),
    },
    "chest": {"lung": (L["lung"], 1.0, 0.0)},
}
_Z_RANGE = {"abdomen": (-60.0, 130.0), "chest": (-70.0, 60.0)}


@dataclass
class Phantom:
    """One axial slice in HU with lesions.

    Attributes:
        hu: (size, size) float32 HU, air -1000 outside the body.
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` pixels (x2, y2 exclusive), tight around each lesion.
        lesion_kinds: N strings ``"<organ>_hypo"``, ``"<organ>_hyper"``, ``"lung_nodule"`` or ``"lung_ggo"``.
        spacing_mm: square pixel size in mm.
        labels: (size, size) uint8 organ label map (``LABELS``) of the anatomy without lesions.
        lesion_contrast_hu: (N,) lesion minus host HU; ``lesion_diameter_mm``: (N,) largest in-plane diameter.
    """

    hu: np.ndarray
    boxes: np.ndarray
    lesion_kinds: list[str]
    spacing_mm: float
    labels: np.ndarray | None = None
    lesion_contrast_hu: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    lesion_diameter_mm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    kind: str = "abdomen"


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


# ----------------------------------------------------------------------------------------------- drawing primitives
@dataclass
class _Blob:
    """Ellipse (semi-axes a, b mm, rotated by ``angle`` rad) with radius modulation 1 + sum amp_k cos(k t + ph_k)."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float = 0.0
    harm: np.ndarray | None = None  # (K, 2): amplitude, phase for k = 2 .. K+1

    def extent(self) -> float:
        amp = 0.0 if self.harm is None else float(np.abs(self.harm[:, 0]).sum())
        return max(self.a, self.b) * (1.0 + amp)

    def scaled(self, s: float, ds: float = 0.0) -> _Blob:
        """Same shape, semi-axes times s minus ds mm (shrinking inward for walls and layers)."""
        return _Blob(self.cx, self.cy, max(self.a * s - ds, 0.0), max(self.b * s - ds, 0.0), self.angle, self.harm)


def _harm(rng: np.random.Generator, k: int, amp: float) -> np.ndarray:
    """Random Fourier irregularity: amplitudes decaying with order."""
    orders = np.arange(2, k + 2)
    return np.stack([rng.uniform(0, amp, k) / orders * 2, rng.uniform(0, 2 * np.pi, k)], axis=1)


class _Canvas:
    """HU image and label map on a mm grid, painted with anti-aliased blobs."""

    def __init__(self, size: int, px: float) -> None:
        self.size, self.px = size, px
        self.coord = (np.arange(size) - size // 2) * px  # mm of pixel centres, x (cols) and y (rows)
        self.hu = np.full((size, size), -1000.0, np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def window(self, blob: _Blob, pad_mm: float) -> tuple[slice, slice] | None:
        r = blob.extent() + pad_mm + 2 * self.px
        c = self.size // 2
        i0 = max(0, int(math.floor((blob.cy - r) / self.px)) + c)
        i1 = min(self.size, int(math.ceil((blob.cy + r) / self.px)) + c + 1)
        j0 = max(0, int(math.floor((blob.cx - r) / self.px)) + c)
        j1 = min(self.size, int(math.ceil((blob.cx + r) / self.px)) + c + 1)
        if i0 >= i1 or j0 >= j1 or blob.a <= 0 or blob.b <= 0:
            return None
        return slice(i0, i1), slice(j0, j1)

    def coverage(self, blob: _Blob, sigma: float = 0.0) -> tuple[tuple[slice, slice], np.ndarray] | None:
        """Fraction of each pixel inside the blob (sharp: 1-pixel ramp; soft: Gaussian edge of SD sigma mm)."""
        win = self.window(blob, 3.0 * sigma)
        if win is None:
            return None
        dx = self.coord[win[1]][None, :] - blob.cx
        dy = self.coord[win[0]][:, None] - blob.cy
        ca, sa = math.cos(blob.angle), math.sin(blob.angle)
        u = (dx * ca + dy * sa) / blob.a
        v = (-dx * sa + dy * ca) / blob.b
        rho = np.sqrt(u * u + v * v)
        radius = 1.0
        if blob.harm is not None:
            t = np.arctan2(v, u)
            radius = 1.0 + sum(amp * np.cos(k * t + ph) for k, (amp, ph) in enumerate(blob.harm, start=2))
        # signed distance (mm) ~ (rho - R) / |grad rho|, |grad rho| = |(u/a, v/b)| / rho
        grad = np.sqrt((u / blob.a) ** 2 + (v / blob.b) ** 2) / np.maximum(rho, 1e-6)
        dist = (rho - radius) / np.maximum(grad, 1e-6)
        if sigma > 0:
            cov = 0.5 * special.erfc(dist / (math.sqrt(2.0) * sigma))
        else:
            cov = np.clip(0.5 - dist / self.px, 0.0, 1.0)
        return win, cov

    def paint(
        self,
        blob: _Blob,
        value: float,
        label: int,
        sigma: float = 0.0,
        only_on: tuple[int, ...] | None = None,
        within: np.ndarray | None = None,
    ) -> None:
        """Composite ``value`` over the blob; ``only_on`` labels / ``within`` coverage restrict where it lands."""
        res = self.coverage(blob, sigma)
        if res is None:
            return
        win, cov = res
        if only_on is not None:
            cov = cov * np.isin(self.lab[win], only_on)
        if within is not None:
            cov = cov * within[win]
        h = self.hu[win]
        h += (value - h) * cov
        self.lab[win] = np.where(cov >= 0.5, label, self.lab[win])

    def full_coverage(self, blob: _Blob) -> np.ndarray:
        out = np.zeros((self.size, self.size), np.float32)
        res = self.coverage(blob)
        if res is not None:
            out[res[0]] = res[1]
        return out


def _ext(z: float, zc: float, hz: float) -> float:
    """Ellipsoidal extent factor of an organ centred at zc with half-length hz (0 outside)."""
    q = 1.0 - ((z - zc) / hz) ** 2
    return math.sqrt(q) if q > 0 else 0.0


# ------------------------------------------------------------------------------------------------------- anatomy
class _Anatomy:
    """Random patient parameters (drawn once) and the painter's list at any axial position z (mm)."""

    def __init__(self, rng: np.random.Generator, kind: str, size: int, px: float, contrast: bool) -> None:
        self.kind, self.size, self.px = kind, size, px
        half = size * px / 2
        self.A = half * rng.uniform(0.78, 0.88)  # lateral body semi-axis (mm)
        self.B = self.A * (rng.uniform(0.62, 0.78) if kind == "abdomen" else rng.uniform(0.6, 0.72))
        self.body_harm = _harm(rng, 4, 0.04)
        self.fat_t = self.A * rng.uniform(0.05, 0.15)
        self.mus_t = self.A * rng.uniform(0.035, 0.06)
        self.hu = {
            "fat": rng.uniform(-115, -85),
            "muscle": rng.uniform(40, 60),
            "liver": rng.uniform(55, 68),
            "spleen": rng.uniform(45, 52),
            "kidney": rng.uniform(28, 35),
            "blood": rng.uniform(150, 200) if contrast else rng.uniform(35, 45),
            "cortical": rng.uniform(650, 800),
            "cancellous": rng.uniform(180, 280),
            "lung": rng.uniform(-870, -830),
            "bowel": rng.uniform(5, 30),
        }
        self.jit = rng.uniform(-1, 1, 64)  # small per-patient offsets of organ positions and sizes
        self.harms = [_harm(rng, 4, 0.08) for _ in range(12)]
        self.vert_phase = rng.uniform(0, 1)
        self.rib_phase = rng.uniform(0, 2 * np.pi)
        self.bowels = [
            (rng.uniform(-0.45, 0.45), rng.uniform(-0.7, 0.15), rng.uniform(0.05, 0.1), rng.uniform(-100, 60),
             rng.uniform(30, 80), rng.uniform(-0.004, 0.004, 2), rng.random() < 0.45, rng.uniform(0, 2 * np.pi))
            for _ in range(rng.integers(8, 15))
        ]  # fmt: skip
        n_ves = 70 if kind == "chest" else 35
        self.lung_vessels = [
            (rng.uniform(0, 1), rng.uniform(0, 2 * np.pi), rng.uniform(0.6, 3.0), rng.uniform(-150, 150),
             rng.uniform(20, 70), rng.normal(0, 0.5, 2), rng.random())
            for _ in range(2 * n_ves)
        ]  # fmt: skip
        self.liver_vessels = [
            (rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), rng.uniform(1.5, 4.0), rng.uniform(-40, 180),
             rng.uniform(20, 60), rng.normal(0, 0.3, 2), rng.uniform(15, 30))
            for _ in range(6)
        ]  # fmt: skip

    # -- helpers
    def _j(self, i: int, scale: float) -> float:
        return float(self.jit[i % self.jit.size]) * scale

    def body(self, z: float) -> _Blob:
        s = 1.0 + 0.03 * math.sin(2 * math.pi * z / 400 + self.jit[0])
        return _Blob(0.0, 0.02 * self.B, self.A * s, self.B * s, 0.0, self.body_harm)

    def paint(self, cv: _Canvas, z: float) -> None:
        hu = self.hu
        body = self.body(z)
        cv.paint(body, hu["fat"], L["fat"])
        cv.paint(body.scaled(1.0, self.fat_t), hu["muscle"], L["muscle"])
        cavity = body.scaled(1.0, self.fat_t + self.mus_t)
        cav_cov = cv.full_coverage(cavity)
        cv.paint(cavity, hu["fat"] + 10, L["fat"])
        if self.kind == "abdomen":
            self._abdomen(cv, z, cav_cov)
        else:
            self._chest(cv, z, cav_cov)
        self._spine(cv, z, cv.full_coverage(body.scaled(1.0, 0.3 * self.fat_t)))
        self._ribs(cv, z, body)
        if self.kind == "abdomen":
            self._bowel(cv, z)
        self._lung_vessels(cv, z)

    def _spine(self, cv: _Canvas, z: float, inside: np.ndarray) -> None:
        A, B, hu = self.A, self.B, self.hu
        rv = A * (0.11 + 0.01 * self._j(3, 1))
        vy = B * (0.5 if self.kind == "abdomen" else 0.55)
        # paraspinal muscles
        for side in (-1, 1):
            para = _Blob(side * 0.14 * A, vy + rv + 0.16 * B, 0.11 * A, 0.16 * B, side * 0.2)
            cv.paint(para, hu["muscle"], L["muscle"], within=inside)
            if self.kind == "abdomen" and z < 40:  # psoas, growing caudally
                psoas = _Blob(side * (rv + 0.05 * A), vy - 0.2 * rv, 0.055 * A * (1 + (40 - z) / 120), 0.06 * B)
                cv.paint(psoas, hu["muscle"], L["muscle"])
        disc = ((z / 32.0 + self.vert_phase) % 1.0) < 0.22
        vb = _Blob(0.0, vy, rv, 0.85 * rv, 0.0, self.harms[0] * 0.3)
        if disc:
            cv.paint(vb, 85.0, L["muscle"])
        else:
            cv.paint(vb, hu["cortical"], L["bone"])
            cv.paint(vb.scaled(1.0, 2.0), hu["cancellous"], L["marrow"])
        canal_r = 0.05 * A
        cy = vy + 0.85 * rv + canal_r * 1.4
        cv.paint(_Blob(0.0, cy, canal_r * 1.9, canal_r * 1.7), hu["cortical"] - 100, L["bone"])  # arch
        cv.paint(_Blob(0.0, cy + canal_r * 2.2, 0.022 * A, 0.09 * B), hu["cortical"] - 150, L["bone"])  # spinous
        cv.paint(_Blob(0.0, cy, canal_r, canal_r * 0.9), 12.0, L["fluid"])  # canal (CSF)

    def _ribs(self, cv: _Canvas, z: float, body: _Blob) -> None:
        """Rib cross-sections in the muscle wall: all around the chest, posterior-lateral in the upper abdomen."""
        if self.kind == "abdomen" and z < 30:
            return
        ring = body.scaled(1.0, self.fat_t + 0.5 * self.mus_t)
        if self.kind == "chest":
            angles = [2 * np.pi * (k + 0.5) / 12 + 0.05 * self.rib_phase + 0.004 * z for k in range(12)]
            angles = [t for t in angles if math.sin(t) > -0.9]  # none over the sternum
        else:
            arc = [-0.35 + 1.5 * (k + 0.5) / 4 + 0.1 * math.sin(z / 40 + k) for k in range(4)]
            angles = arc + [np.pi - t for t in arc]
        for t in angles:
            r = ring.a * ring.b / math.hypot(ring.b * math.cos(t), ring.a * math.sin(t))
            rib = _Blob(r * math.cos(t), ring.cy + r * math.sin(t), 6.0, 3.5, t + np.pi / 2)
            cv.paint(rib, self.hu["cortical"] - 50, L["bone"])
            cv.paint(rib.scaled(1.0, 1.4), self.hu["cancellous"], L["marrow"])

    def _abdomen(self, cv: _Canvas, z: float, cav: np.ndarray) -> None:
        A, B, hu, j, h = self.A, self.B, self.hu, self._j, self.harms
        # lung bases behind liver and spleen in the upper abdomen
        e_lung = math.sqrt(min(max((z - 85.0) / 60.0, 0.0), 1.0))
        if e_lung > 0:
            for side, k in ((-1, 1), (1, 2)):
                lb = _Blob(side * 0.45 * A, 0.42 * B, 0.25 * A * e_lung, 0.32 * B * e_lung, side * 0.4, h[k] * 0.5)
                cv.paint(lb, hu["lung"], L["lung"], within=cav)
        # liver (right lobe on image left, left lobe toward the midline in the upper part)
        e = _ext(z, 70 + 10 * j(4, 1), 115)
        if e > 0:
            liver = _Blob((-0.36 + 0.04 * j(5, 1)) * A, (-0.06 + 0.04 * j(6, 1)) * B, 0.44 * A * e, 0.62 * B * e,
                          -0.35 + 0.1 * j(7, 1), h[3])  # fmt: skip
            cv.paint(liver, hu["liver"], L["liver"], within=cav)
            el = _ext(z, 95, 60)
            if el > 0:
                cv.paint(_Blob(-0.02 * A, -0.42 * B, 0.3 * A * el, 0.18 * B * el, 0.25, h[4] * 0.5), hu["liver"],
                         L["liver"], within=cav)  # fmt: skip
            eg = _ext(z, 45, 28)
            if eg > 0:  # gallbladder
                cv.paint(_Blob(-0.22 * A, -0.28 * B, 0.09 * A * eg, 0.06 * B * eg, 0.6), 10.0, L["fluid"])
            for x0, y0, r, zc, hz, d, c in self.liver_vessels:
                if abs(z - zc) < hz:
                    vx = liver.cx + x0 * liver.a * 0.7 + d[0] * (z - zc)
                    vy = liver.cy + y0 * liver.b * 0.7 + d[1] * (z - zc)
                    cv.paint(_Blob(vx, vy, r, r * 0.8), hu["liver"] + c, L["vessel"], sigma=0.6, only_on=(L["liver"],))
        # spleen (image right, posterior)
        e = _ext(z, 65 + 10 * j(8, 1), 65)
        if e > 0:
            spleen = _Blob((0.55 + 0.03 * j(9, 1)) * A, (0.2 + 0.04 * j(10, 1)) * B, 0.15 * A * e, 0.33 * B * e,
                           0.6 + 0.1 * j(11, 1), h[5])  # fmt: skip
            cv.paint(spleen, hu["spleen"], L["spleen"], within=cav)
        # stomach with an air-fluid level
        e = _ext(z, 85, 50)
        if e > 0:
            st = _Blob(0.28 * A, -0.35 * B, 0.2 * A * e, 0.22 * B * e, 0.3, h[6])
            cv.paint(st, 40.0, L["bowel"], within=cav)
            inner = st.scaled(1.0, 3.0)
            cv.paint(inner, 15.0, L["fluid"], within=cav)
            res = cv.coverage(inner)
            if res is not None:
                win, cov = res
                level = st.cy - 0.1 * st.b
                below = np.clip((level - cv.coord[win[0]][:, None]) / cv.px + 0.5, 0, 1)
                gas = cov * below * cav[win]
                cv.hu[win] += (-1000.0 - cv.hu[win]) * gas
                cv.lab[win] = np.where(gas >= 0.5, L["gas"], cv.lab[win])
        # kidneys with sinus fat
        for side, k, jj in ((-1, 7, 12), (1, 8, 14)):
            e = _ext(z, side * 8 + 10 * j(jj, 1), 62)
            if e > 0:
                kid = _Blob(side * (0.36 + 0.03 * j(jj + 1, 1)) * A, 0.4 * B, 0.11 * A * e, 0.17 * B * e, side * -0.45,
                            h[k] * 0.5)  # fmt: skip
                cv.paint(kid, hu["kidney"], L["kidney"], within=cav)
                es = _ext(z, side * 8, 25)
                if es > 0:
                    sinus = _Blob(kid.cx - side * 0.45 * kid.a, kid.cy - 0.1 * kid.b, 0.35 * kid.a * es,
                                  0.3 * kid.b * es, side * -0.45)  # fmt: skip
                    cv.paint(sinus, hu["fat"] + 20, L["fat"], only_on=(L["kidney"],))
        # aorta and IVC in front of the spine
        rv = A * (0.11 + 0.01 * self._j(3, 1))
        top = 0.5 * B - 0.85 * rv
        ra = 11.0 + 1.5 * j(16, 1)
        cv.paint(_Blob(0.07 * A, top - ra - 3, ra, ra), hu["blood"], L["vessel"])
        cv.paint(_Blob(-0.13 * A, top - 0.07 * B, 13.0, 9.0, 0.2), hu["blood"] - 5, L["vessel"])

    def _bowel(self, cv: _Canvas, z: float) -> None:
        A, B = self.A, self.B
        for x0, y0, r, zc, hz, d, gas, ang in self.bowels:
            if abs(z - zc) > hz:
                continue
            x = x0 * A + d[0] * (z - zc) * A
            y = y0 * B + d[1] * (z - zc) * B
            rr = r * A * _ext(z, zc, hz * 1.3)
            loop = _Blob(x, y, rr, rr * 0.8, ang)
            free = (L["fat"],)
            cv.paint(loop, 40.0, L["bowel"], only_on=free)
            inner = loop.scaled(1.0, 2.5)
            cv.paint(inner, -1000.0 if gas else self.hu["bowel"], L["gas"] if gas else L["bowel"],
                     only_on=(L["bowel"],))  # fmt: skip

    def _chest(self, cv: _Canvas, z: float, cav: np.ndarray) -> None:
        A, B, hu, j, h = self.A, self.B, self.hu, self._j, self.harms
        # lungs fill most of the cavity; mediastinum in between
        for side, k in ((-1, 1), (1, 2)):
            e = 0.85 + 0.15 * _ext(z, -10, 120)
            lung = _Blob(side * 0.44 * A, 0.05 * B, 0.4 * A * e, 0.8 * B * e, side * 0.1, h[k] * 0.6)
            cv.paint(lung, hu["lung"], L["lung"], within=cav)
        # heart (lower chest), great vessels, airway
        e = _ext(z, -70 + 8 * j(20, 1), 75)
        if e > 0:
            cv.paint(_Blob(0.1 * A, -0.2 * B, 0.33 * A * e, 0.42 * B * e, 0.5, h[9] * 0.5), 40.0, L["heart"],
                     within=cav)  # fmt: skip
        ra = 12.0 + 1.5 * j(21, 1)
        if z > -30:
            cv.paint(_Blob(0.05 * A, -0.3 * B, ra * 1.2, ra * 1.2), hu["blood"], L["vessel"])  # ascending aorta
            cv.paint(_Blob(0.16 * A, -0.12 * B, ra * 1.1, ra), hu["blood"], L["vessel"])  # pulmonary trunk
        cv.paint(_Blob(0.13 * A, 0.36 * B, ra, ra), hu["blood"], L["vessel"])  # descending aorta
        if z > 0:
            cv.paint(_Blob(0.0, 0.1 * B, 10.0, 9.0), 40.0, L["muscle"])
            cv.paint(_Blob(0.0, 0.1 * B, 8.0, 7.0), -1000.0, L["airway"])  # trachea
        elif z > -30:
            for side in (-1, 1):
                cv.paint(_Blob(side * 0.12 * A, 0.12 * B, 7.0, 6.0), 40.0, L["muscle"])
                cv.paint(_Blob(side * 0.12 * A, 0.12 * B, 5.5, 4.5), -1000.0, L["airway"])  # main bronchi
        cv.paint(_Blob(-0.04 * A, 0.27 * B, 7.0, 5.0), 35.0, L["muscle"])  # oesophagus
        cv.paint(_Blob(0.0, -0.93 * B, 0.09 * A, 0.045 * B), hu["cortical"] - 200, L["bone"])  # sternum
        cv.paint(_Blob(0.0, -0.93 * B, 0.07 * A, 0.025 * B), hu["cancellous"], L["marrow"])

    def _lung_vessels(self, cv: _Canvas, z: float) -> None:
        """Pulmonary vessels: oblique tubes, denser and thicker towards the hilum."""
        if not (cv.lab == L["lung"]).any():
            return
        A, B = self.A, self.B
        for rad, ang, r, z0, hz, d, side in self.lung_vessels:
            if abs(z - z0) > hz:
                continue
            sx = -1 if side < 0.5 else 1
            hx, hy = sx * 0.2 * A, 0.0  # hilum
            rr = rad**0.7  # more vessels near the hilum
            x = hx + sx * rr * 0.7 * A * abs(math.cos(ang)) + d[0] * (z - z0)
            y = hy + rr * 0.8 * B * math.sin(ang) + d[1] * (z - z0)
            rv = r * (1.3 - 0.8 * rr)
            stretch = math.sqrt(1.0 + float(d[0] ** 2 + d[1] ** 2))
            cv.paint(_Blob(x, y, rv * stretch, rv, math.atan2(d[1], d[0])), 35.0, L["vessel"], sigma=0.4,
                     only_on=(L["lung"],))  # fmt: skip


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


def _add_texture(cv: _Canvas, tex: np.ndarray) -> None:
    sd = np.zeros(256, np.float32)
    for lab, s in _TEXTURE_SD.items():
        sd[lab] = s
    cv.hu += tex * sd[cv.lab]


# ------------------------------------------------------------------------------------------------------- lesions
@dataclass
class _Lesion:
    kind: str
    host: int
    blob: _Blob  # in-plane outline at the centre slice
    zc: float  # centre z (mm)
    c: float  # z semi-axis (mm)
    contrast: float  # HU added (or absolute HU for lung nodules: see ``absolute``)
    sigma: float
    absolute: bool = False

    def at(self, z: float) -> _Blob | None:
        q = 1.0 - ((z - self.zc) / self.c) ** 2
        if q <= 0:
            return None
        s = math.sqrt(q)
        b = self.blob
        return _Blob(b.cx, b.cy, b.a * s, b.b * s, b.angle, b.harm)


def _draw_lesion(rng: np.random.Generator, kind: str, host_name: str, p_hypo: float) -> tuple[str, float, float, bool]:
    """(kind label, contrast HU or absolute HU, edge sigma mm, absolute?) for a new lesion."""
    if host_name == "lung":
        if rng.random() < 0.75:
            return "lung_nodule", float(rng.uniform(-50, 60)), float(rng.choice([0.0, 0.4])), True
        return "lung_ggo", float(rng.uniform(-750, -500)), float(rng.uniform(0.8, 2.0)), True
    hypo = rng.random() < p_hypo
    mag = float(rng.uniform(15, 120))
    if hypo and host_name == "kidney":
        mag = min(mag, 40.0)
    if hypo and host_name == "spleen":
        mag = min(mag, 70.0)
    sigma = float(rng.uniform(0.6, 2.5)) if rng.random() < 0.5 else 0.0
    return f"{host_name}_{'hypo' if hypo else 'hyper'}", -mag if hypo else mag, sigma, False


def _place_lesions(
    rng: np.random.Generator,
    kind: str,
    labels: np.ndarray,  # (Z, H, W)
    zs: np.ndarray,  # (Z,) mm
    px: float,
    n_lesions: int,
    coord: np.ndarray,
) -> list[_Lesion]:
    """Ellipsoids fully inside their host organ in every slice they cross, clear of each other.

    A lesion is kept only if, in each slice it crosses, the organ's distance map at its centre exceeds the
    cross-section's largest radius plus the soft edge (2 sigma) and 1.5 pixels; it tries up to 8 times per lesion.
    """
    hosts = _HOSTS[kind]
    lesions: list[_Lesion] = []
    placed: list[tuple[float, float, float, float, float]] = []  # cx, cy, radius mm, z lo, z hi
    edt_cache: dict[tuple[int, int], np.ndarray] = {}

    def edt(k: int, lab: int) -> np.ndarray:
        if (k, lab) not in edt_cache:
            edt_cache[(k, lab)] = ndimage.distance_transform_edt(labels[k] == lab) * px
        return edt_cache[(k, lab)]

    n_z = labels.shape[0]
    names = list(hosts)
    weights = np.array([hosts[n][1] for n in names])
    for _ in range(n_lesions):
        for _attempt in range(8):
            name = str(rng.choice(names, p=weights / weights.sum()))
            lab, _, p_hypo = hosts[name]
            k0 = (int(rng.integers(0, n_z)) + n_z // 2) // 2 if n_z > 2 else int(rng.integers(0, n_z))
            d0 = edt(k0, lab)
            lkind, contrast, sigma, absolute = _draw_lesion(rng, kind, name, p_hypo)
            margin = 2.0 * sigma + 1.5 * px
            diam = math.exp(rng.uniform(math.log(4.0), math.log(40.0)))
            if lkind == "lung_ggo":
                diam = max(diam, 8.0)
            harm = _harm(rng, 3, 0.05) if rng.random() < 0.6 else None
            shape = _Blob(0.0, 0.0, 1.0, rng.uniform(0.75, 1.0), float(rng.uniform(0, np.pi)), harm)
            a = min(diam / 2, (float(d0.max()) - margin) / shape.extent())
            if a < 2.0:
                continue
            need = a * shape.extent() + margin
            cand = np.argwhere(d0 >= need)
            if placed and cand.size:
                z_here = float(zs[k0])
                for cx, cy, r, zlo, zhi in placed:
                    if zlo <= z_here <= zhi:
                        dist = np.hypot(coord[cand[:, 1]] - cx, coord[cand[:, 0]] - cy)
                        cand = cand[dist >= r + need]
            if cand.size == 0:
                continue
            iy, ix = cand[rng.integers(len(cand))]
            blob = _Blob(float(coord[ix]), float(coord[iy]), a, a * shape.b, shape.angle, harm)
            les = _Lesion(lkind, lab, blob, float(zs[k0]), a * rng.uniform(0.7, 1.2), contrast, sigma, absolute)
            ok = True
            for k in range(n_z):
                cut = les.at(float(zs[k]))
                if cut is not None and edt(k, lab)[iy, ix] < cut.extent() + margin:
                    ok = False
                    break
            for cx, cy, r, zlo, zhi in placed:  # clear of earlier lesions wherever both exist
                if (
                    zlo <= les.zc + les.c
                    and les.zc - les.c <= zhi
                    and math.hypot(blob.cx - cx, blob.cy - cy) < r + need
                ):
                    ok = False
            if not ok:
                continue
            lesions.append(les)
            placed.append((blob.cx, blob.cy, need, les.zc - les.c, les.zc + les.c))
            break
    return lesions


def _apply_lesion(cv: _Canvas, les: _Lesion, z: float) -> np.ndarray | None:
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
    inside = np.argwhere(cov >= 0.5)
    if inside.size == 0:
        return None
    (r0, c0), (r1, c1) = inside.min(0), inside.max(0)
    if min(r1 - r0, c1 - c0) + 1 < MIN_BOX_PX:  # the tip of an ellipsoid: drawn, not boxed
        return None
    return np.array([c0 + win[1].start, r0 + win[0].start, c1 + win[1].start + 1, r1 + win[0].start + 1], np.float32)


def _lesion_count(rng: np.random.Generator, n_lesions: int | None) -> int:
    if n_lesions is not None:
        if n_lesions < 0:
            raise ValueError(f"n_lesions must be >= 0, got {n_lesions}")
        return int(n_lesions)
    return int(rng.choice(5, p=[0.1, 0.35, 0.3, 0.15, 0.1]))


def _check(kind: str, size: int, pixel_mm: float | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 pixels, got {size}")
    if pixel_mm is not None and not 0.1 <= pixel_mm <= 5.0:
        raise ValueError(f"pixel_mm must be in [0.1, 5] mm, got {pixel_mm}")


# ------------------------------------------------------------------------------------------------------------ API
def make_phantom(
    seed: int | np.random.Generator,
    kind: str = "abdomen",
    size: int = 512,
    pixel_mm: float | None = None,
    n_lesions: int | None = None,
    contrast_enhanced: bool = False,
) -> Phantom:
    """One random axial slice in HU with lesions (0-4 when ``n_lesions`` is None; fewer if they do not fit).

    ``pixel_mm`` None draws it in 0.6-0.9 mm (the FOV scales with it, so the body always fits).
    """
    _check(kind, size, pixel_mm)
    rng = np.random.default_rng(seed)
    px = float(pixel_mm) if pixel_mm is not None else float(rng.uniform(0.6, 0.9))
    anat = _Anatomy(rng, kind, size, px, contrast_enhanced)
    z = float(rng.uniform(*_Z_RANGE[kind]))
    cv = _Canvas(size, px)
    anat.paint(cv, z)
    labels = cv.lab.copy()
    _add_texture(cv, _Texture(rng, size, px, z, z).at(z))
    lesions = _place_lesions(rng, kind, labels[None], np.array([z]), px, _lesion_count(rng, n_lesions), cv.coord)
    boxes, kinds, contrast, diam = [], [], [], []
    for les in lesions:
        box = _apply_lesion(cv, les, z)
        if box is None:
            continue
        boxes.append(box)
        kinds.append(les.kind)
        contrast.append(les.contrast - anat.hu["lung"] if les.absolute else les.contrast)
        diam.append(2 * max(les.blob.a, les.blob.b))
    return Phantom(
        hu=cv.hu,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        lesion_kinds=kinds,
        spacing_mm=px,
        labels=labels,
        lesion_contrast_hu=np.array(contrast, np.float32),
        lesion_diameter_mm=np.array(diam, np.float32),
        kind=kind,
    )


def make_phantom_volume(
    seed: int | np.random.Generator,
    n_slices: int,
    kind: str = "abdomen",
    size: int = 512,
    slice_mm: float = 2.5,
    pixel_mm: float | None = None,
    n_lesions: int | None = None,
    contrast_enhanced: bool = False,
) -> PhantomVolume:
    """A (z, y, x) stack of ``n_slices`` slices ``slice_mm`` apart whose anatomy and lesions are continuous in z.

    Lesions are ellipsoids (z semi-axis 0.7-1.2x the in-plane one) spanning a few slices; one box row per slice
    crossed. The slice index grows with z (towards the head).
    """
    _check(kind, size, pixel_mm)
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    if not 0.1 <= slice_mm <= 20:
        raise ValueError(f"slice_mm must be in [0.1, 20] mm, got {slice_mm}")
    rng = np.random.default_rng(seed)
    px = float(pixel_mm) if pixel_mm is not None else float(rng.uniform(0.6, 0.9))
    anat = _Anatomy(rng, kind, size, px, contrast_enhanced)
    zlo, zhi = _Z_RANGE[kind]
    span = (n_slices - 1) * slice_mm
    z0 = float(rng.uniform(zlo, max(zlo, zhi - span)))
    zs = z0 + np.arange(n_slices) * slice_mm
    tex = _Texture(rng, size, px, float(zs[0]), float(zs[-1]))
    hu = np.empty((n_slices, size, size), np.float32)
    labels = np.empty((n_slices, size, size), np.uint8)
    canvases = []
    for k, z in enumerate(zs):
        cv = _Canvas(size, px)
        anat.paint(cv, float(z))
        labels[k] = cv.lab
        _add_texture(cv, tex.at(float(z)))
        canvases.append(cv)
    lesions = _place_lesions(rng, kind, labels, zs, px, _lesion_count(rng, n_lesions), canvases[0].coord)
    rows, kinds, ids = [], [], []
    for k, (cv, z) in enumerate(zip(canvases, zs, strict=True)):
        for i, les in enumerate(lesions):
            box = _apply_lesion(cv, les, float(z))
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
        spacing_mm=(float(slice_mm), px, px),
        labels=labels,
        kind=kind,
    )
