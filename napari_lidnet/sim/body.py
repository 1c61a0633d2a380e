"""Body anatomy (abdomen and chest) of the phantoms: a painter's list of blobs at any axial position z (mm).

Sizes scale with the body semi-axes A (lateral) and B (antero-posterior); organ positions drift smoothly with z
(superior positive), so a stack of slices is a coherent volume. Image rows grow posteriorly (anterior at the top).
"""

from __future__ import annotations

import math

import numpy as np

from napari_lidnet.sim.canvas import LABELS as L
from napari_lidnet.sim.canvas import Blob, Canvas, ext, harm


class BodyAnatomy:
    """Random patient parameters (drawn once) and the painter's list at any axial position z (mm)."""

    def __init__(
        self, rng: np.random.Generator, kind: str, size: int, px: float, contrast: bool,
        fill: tuple[float, float] = (0.78, 0.88),
    ) -> None:  # fmt: skip
        self.kind, self.size, self.px, self.contrast = kind, size, px, contrast
        half = size * px / 2
        self.A = half * rng.uniform(*fill)  # lateral body semi-axis (mm): fill x the half FOV
        self.B = self.A * (rng.uniform(0.62, 0.78) if kind == "abdomen" else rng.uniform(0.6, 0.72))
        self.body_harm = harm(rng, 4, 0.04)
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
        self.harms = [harm(rng, 4, 0.08) for _ in range(12)]
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

    def body(self, z: float) -> Blob:
        s = 1.0 + 0.03 * math.sin(2 * math.pi * z / 400 + self.jit[0])
        return Blob(0.0, 0.02 * self.B, self.A * s, self.B * s, 0.0, self.body_harm)

    def outline(self, z: float) -> Blob:
        """The patient's outer contour at z."""
        return self.body(z)

    def paint(self, cv: Canvas, z: float) -> None:
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

    def _spine(self, cv: Canvas, z: float, inside: np.ndarray) -> None:
        A, B, hu = self.A, self.B, self.hu
        rv = A * (0.11 + 0.01 * self._j(3, 1))
        vy = B * (0.5 if self.kind == "abdomen" else 0.55)
        # paraspinal muscles
        for side in (-1, 1):
            para = Blob(side * 0.14 * A, vy + rv + 0.16 * B, 0.11 * A, 0.16 * B, side * 0.2)
            cv.paint(para, hu["muscle"], L["muscle"], within=inside)
            if self.kind == "abdomen" and z < 40:  # psoas, growing caudally
                psoas = Blob(side * (rv + 0.05 * A), vy - 0.2 * rv, 0.055 * A * (1 + (40 - z) / 120), 0.06 * B)
                cv.paint(psoas, hu["muscle"], L["muscle"])
        disc = ((z / 32.0 + self.vert_phase) % 1.0) < 0.22
        vb = Blob(0.0, vy, rv, 0.85 * rv, 0.0, self.harms[0] * 0.3)
        if disc:
            cv.paint(vb, 85.0, L["muscle"])
        else:
            cv.paint(vb, hu["cortical"], L["bone"])
            cv.paint(vb.scaled(1.0, 2.0), hu["cancellous"], L["marrow"])
        canal_r = 0.05 * A
        cy = vy + 0.85 * rv + canal_r * 1.4
        cv.paint(Blob(0.0, cy, canal_r * 1.9, canal_r * 1.7), hu["cortical"] - 100, L["bone"])  # arch
        cv.paint(Blob(0.0, cy + canal_r * 2.2, 0.022 * A, 0.09 * B), hu["cortical"] - 150, L["bone"])  # spinous
        cv.paint(Blob(0.0, cy, canal_r, canal_r * 0.9), 12.0, L["fluid"])  # canal (CSF)

    def _ribs(self, cv: Canvas, z: float, body: Blob) -> None:
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
            rib = Blob(r * math.cos(t), ring.cy + r * math.sin(t), 6.0, 3.5, t + np.pi / 2)
            cv.paint(rib, self.hu["cortical"] - 50, L["bone"])
            cv.paint(rib.scaled(1.0, 1.4), self.hu["cancellous"], L["marrow"])

    def _abdomen(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        self._lung_bases(cv, z, cav)
        self._liver(cv, z, cav)
        self._spleen(cv, z, cav)
        self._stomach(cv, z, cav)
        self._kidneys(cv, z, cav)
        self._great_vessels(cv)

    def _lung_bases(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        """Lung bases behind liver and spleen in the upper abdomen."""
        A, B, h = self.A, self.B, self.harms
        e_lung = math.sqrt(min(max((z - 85.0) / 60.0, 0.0), 1.0))
        if e_lung > 0:
            for side, k in ((-1, 1), (1, 2)):
                lb = Blob(side * 0.45 * A, 0.42 * B, 0.25 * A * e_lung, 0.32 * B * e_lung, side * 0.4, h[k] * 0.5)
                cv.paint(lb, self.hu["lung"], L["lung"], within=cav)

    def liver_blob(self, z: float) -> Blob | None:
        """The liver's main outline at z (right lobe on image left), None outside it."""
        A, B, j = self.A, self.B, self._j
        e = ext(z, 70 + 10 * j(4, 1), 115)
        if e <= 0:
            return None
        return Blob((-0.36 + 0.04 * j(5, 1)) * A, (-0.06 + 0.04 * j(6, 1)) * B, 0.44 * A * e, 0.62 * B * e,
                    -0.35 + 0.1 * j(7, 1), self.harms[3])  # fmt: skip

    def _liver(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        """Liver with the left lobe toward the midline in its upper part, gallbladder, and a few vessels."""
        A, B, hu, h = self.A, self.B, self.hu, self.harms
        liver = self.liver_blob(z)
        if liver is None:
            return
        cv.paint(liver, hu["liver"], L["liver"], within=cav)
        el = ext(z, 95, 60)
        if el > 0:
            cv.paint(Blob(-0.02 * A, -0.42 * B, 0.3 * A * el, 0.18 * B * el, 0.25, h[4] * 0.5), hu["liver"],
                     L["liver"], within=cav)  # fmt: skip
        eg = ext(z, 45, 28)
        if eg > 0:  # gallbladder
            cv.paint(Blob(-0.22 * A, -0.28 * B, 0.09 * A * eg, 0.06 * B * eg, 0.6), 10.0, L["fluid"])
        for x0, y0, r, zc, hz, d, c in self.liver_vessels:
            if abs(z - zc) < hz:
                vx = liver.cx + x0 * liver.a * 0.7 + d[0] * (z - zc)
                vy = liver.cy + y0 * liver.b * 0.7 + d[1] * (z - zc)
                cv.paint(Blob(vx, vy, r, r * 0.8), hu["liver"] + c, L["vessel"], sigma=0.6, only_on=(L["liver"],))

    def _spleen(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        """Spleen (image right, posterior)."""
        A, B, j = self.A, self.B, self._j
        e = ext(z, 65 + 10 * j(8, 1), 65)
        if e > 0:
            spleen = Blob((0.55 + 0.03 * j(9, 1)) * A, (0.2 + 0.04 * j(10, 1)) * B, 0.15 * A * e, 0.33 * B * e,
                          0.6 + 0.1 * j(11, 1), self.harms[5])  # fmt: skip
            cv.paint(spleen, self.hu["spleen"], L["spleen"], within=cav)

    def _stomach(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        """Stomach with an air-fluid level."""
        e = ext(z, 85, 50)
        if e <= 0:
            return
        st = Blob(0.28 * self.A, -0.35 * self.B, 0.2 * self.A * e, 0.22 * self.B * e, 0.3, self.harms[6])
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

    def _kidneys(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        """Kidneys with sinus fat."""
        A, B, j, h = self.A, self.B, self._j, self.harms
        for side, k, jj in ((-1, 7, 12), (1, 8, 14)):
            e = ext(z, side * 8 + 10 * j(jj, 1), 62)
            if e <= 0:
                continue
            kid = Blob(side * (0.36 + 0.03 * j(jj + 1, 1)) * A, 0.4 * B, 0.11 * A * e, 0.17 * B * e, side * -0.45,
                       h[k] * 0.5)  # fmt: skip
            cv.paint(kid, self.hu["kidney"], L["kidney"], within=cav)
            es = ext(z, side * 8, 25)
            if es > 0:
                sinus = Blob(kid.cx - side * 0.45 * kid.a, kid.cy - 0.1 * kid.b, 0.35 * kid.a * es, 0.3 * kid.b * es,
                             side * -0.45)  # fmt: skip
                cv.paint(sinus, self.hu["fat"] + 20, L["fat"], only_on=(L["kidney"],))

    def aorta(self) -> tuple[float, float, float]:
        """(x, y, radius) mm of the abdominal aorta in front of the spine."""
        rv = self.A * (0.11 + 0.01 * self._j(3, 1))
        top = 0.5 * self.B - 0.85 * rv
        ra = 11.0 + 1.5 * self._j(16, 1)
        return 0.07 * self.A, top - ra - 3, ra

    def _great_vessels(self, cv: Canvas) -> None:
        """Aorta and IVC in front of the spine."""
        ax, ay, ra = self.aorta()
        top = ay + ra + 3
        cv.paint(Blob(ax, ay, ra, ra), self.hu["blood"], L["vessel"])
        cv.paint(Blob(-0.13 * self.A, top - 0.07 * self.B, 13.0, 9.0, 0.2), self.hu["blood"] - 5, L["vessel"])

    def _bowel(self, cv: Canvas, z: float) -> None:
        A, B = self.A, self.B
        for x0, y0, r, zc, hz, d, gas, ang in self.bowels:
            if abs(z - zc) > hz:
                continue
            x = x0 * A + d[0] * (z - zc) * A
            y = y0 * B + d[1] * (z - zc) * B
            rr = r * A * ext(z, zc, hz * 1.3)
            loop = Blob(x, y, rr, rr * 0.8, ang)
            free = (L["fat"],)
            cv.paint(loop, 40.0, L["bowel"], only_on=free)
            inner = loop.scaled(1.0, 2.5)
            cv.paint(inner, -1000.0 if gas else self.hu["bowel"], L["gas"] if gas else L["bowel"],
                     only_on=(L["bowel"],))  # fmt: skip

    def _chest(self, cv: Canvas, z: float, cav: np.ndarray) -> None:
        A, B, hu, j, h = self.A, self.B, self.hu, self._j, self.harms
        # lungs fill most of the cavity; mediastinum in between
        for side, k in ((-1, 1), (1, 2)):
            e = 0.85 + 0.15 * ext(z, -10, 120)
            lung = Blob(side * 0.44 * A, 0.05 * B, 0.4 * A * e, 0.8 * B * e, side * 0.1, h[k] * 0.6)
            cv.paint(lung, hu["lung"], L["lung"], within=cav)
        # heart (lower chest), great vessels, airway
        e = ext(z, -70 + 8 * j(20, 1), 75)
        if e > 0:
            cv.paint(Blob(0.1 * A, -0.2 * B, 0.33 * A * e, 0.42 * B * e, 0.5, h[9] * 0.5), 40.0, L["heart"],
                     within=cav)  # fmt: skip
        ra = 12.0 + 1.5 * j(21, 1)
        if z > -30:
            cv.paint(Blob(0.05 * A, -0.3 * B, ra * 1.2, ra * 1.2), hu["blood"], L["vessel"])  # ascending aorta
            cv.paint(Blob(0.16 * A, -0.12 * B, ra * 1.1, ra), hu["blood"], L["vessel"])  # pulmonary trunk
        cv.paint(Blob(0.13 * A, 0.36 * B, ra, ra), hu["blood"], L["vessel"])  # descending aorta
        if z > 0:
            cv.paint(Blob(0.0, 0.1 * B, 10.0, 9.0), 40.0, L["muscle"])
            cv.paint(Blob(0.0, 0.1 * B, 8.0, 7.0), -1000.0, L["airway"])  # trachea
        elif z > -30:
            for side in (-1, 1):
                cv.paint(Blob(side * 0.12 * A, 0.12 * B, 7.0, 6.0), 40.0, L["muscle"])
                cv.paint(Blob(side * 0.12 * A, 0.12 * B, 5.5, 4.5), -1000.0, L["airway"])  # main bronchi
        cv.paint(Blob(-0.04 * A, 0.27 * B, 7.0, 5.0), 35.0, L["muscle"])  # oesophagus
        cv.paint(Blob(0.0, -0.93 * B, 0.09 * A, 0.045 * B), hu["cortical"] - 200, L["bone"])  # sternum
        cv.paint(Blob(0.0, -0.93 * B, 0.07 * A, 0.025 * B), hu["cancellous"], L["marrow"])

    def _lung_vessels(self, cv: Canvas, z: float) -> None:
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
            cv.paint(Blob(x, y, rv * stretch, rv, math.atan2(d[1], d[0])), 35.0, L["vessel"], sigma=0.4,
                     only_on=(L["lung"],))  # fmt: skip
