"""Head anatomy of the phantoms: scalp, skull (cortical tables around diploe), CSF spaces, grey and white matter.

Axial positions z (mm) run from the posterior fossa (z < -6: temporal lobes, cerebellum with folia, pons, fourth
ventricle, petrous bone, sphenoid sinus and mastoid air cells) over the ventricles (z ~ 5-40) to near the vertex
(z ~ 60). The cortex is a grey-matter ribbon (~2-4 mm, modulated) around white matter, cut by sulci: thin CSF lines
along the zero level set of a smooth random field, reaching 8-18 mm deep. Values: grey matter 35-42 HU, white
matter 24-31 HU (grey - white >= 6), CSF 2-10 HU, cortical bone 1300-1900 HU, diploe 500-900 HU.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_lidnet.sim import texture as tx
from napari_lidnet.sim.canvas import LABELS as L
from napari_lidnet.sim.canvas import Blob, Canvas, ext, harm

_BRAIN = (L["gm"], L["wm"])


class HeadAnatomy:
    """Random head parameters (drawn once) and the painter's list at any z (mm)."""

    kind = "head"

    def __init__(self, rng: np.random.Generator, size: int, px: float, contrast: bool, randomize: bool = False) -> None:
        self.size, self.px, self.contrast = size, px, contrast
        half = size * px / 2
        ratio = float(rng.uniform(1.15, 1.3))
        self.A = min(float(rng.uniform(66, 78)), 0.88 * half / ratio)  # lateral semi-axis (mm)
        self.B = self.A * ratio
        self.scalp = float(rng.uniform(3.5, 7.0))
        self.t_out, self.t_dip, self.t_in = (float(v) for v in rng.uniform((1.2, 1.5, 0.8), (2.5, 5.0, 1.8)))
        self.sas = float(rng.uniform(0.8, 2.5))  # subarachnoid CSF under the skull (atrophy: wider)
        gm = float(rng.uniform(35, 42))
        self.hu = {
            "skin": float(rng.uniform(30, 50)), "fat": float(rng.uniform(-100, -70)),
            "muscle": float(rng.uniform(45, 60)), "cortical": float(rng.uniform(1300, 1900)),
            "diploe": float(rng.uniform(500, 900)), "gm": gm, "wm": float(min(rng.uniform(24, 31), gm - 6)),
            "csf": float(rng.uniform(2, 10)), "falx": float(rng.uniform(50, 80)),
            "blood": float(rng.uniform(150, 250) if contrast else rng.uniform(40, 50)),
            "calc": float(rng.uniform(150, 400)), "lung": -850.0,
        }  # fmt: skip
        self.h_out, self.h_in = harm(rng, 4, 0.03), harm(rng, 5, 0.05)
        self.vent = float(rng.uniform(0.7, 1.8))  # ventricle size (age, atrophy)
        self.cortex = float(rng.uniform(2.0, 3.5))
        self.sulc_depth = float(rng.uniform(8, 18))
        self.calcs = rng.random(2) < 0.5  # choroid plexus, pineal calcifications
        self.fossa_z = float(rng.uniform(-9, -4))
        self.mastoid = rng.uniform(-1, 1, (8, 3))
        scale = float(rng.uniform(3.5, 5.5))
        self.sulci = tx.ZField(rng, lambda g: tx.band_noise(g, size, px, scale), -40.0, 3.0)
        self.gyri = tx.ZField(rng, lambda g: tx.band_noise(g, size, px, 6.0), -40.0, 6.0)

    def outline(self, z: float) -> Blob:
        """The head's outer contour at z."""
        e = 0.55 + 0.45 * ext(z, 8.0, 75.0)
        return Blob(0.0, 0.02 * self.B, self.A * e, self.B * e, 0.0, self.h_out)

    def _inset(self, z: float, ds: float) -> Blob:
        """The contour ``ds`` mm inside the scalp surface; beyond the outer table the inner harmonics take over."""
        o = self.outline(z)
        return Blob(o.cx, o.cy, o.a - ds, o.b - ds, 0.0, self.h_out if ds <= self.scalp + self.t_out else self.h_in)

    def paint(self, cv: Canvas, z: float) -> None:
        hu = self.hu
        cv.paint(self.outline(z), hu["skin"], L["muscle"])
        cv.paint(self._inset(z, 1.5), hu["fat"], L["fat"])
        if z < 35:  # temporalis muscles over the temporal bone
            for side in (-1, 1):
                o = self.outline(z)
                m = Blob(side * 0.93 * o.a, -0.1 * o.b, 6.0 * ext(z, 5, 32), 0.45 * o.b, side * 0.15)
                cv.paint(m, hu["muscle"], L["muscle"], only_on=(L["fat"],))
        d = self.scalp
        cv.paint(self._inset(z, d), hu["cortical"], L["bone"])
        cv.paint(self._inset(z, d + self.t_out), hu["diploe"], L["marrow"])
        cv.paint(self._inset(z, d + self.t_out + self.t_dip), hu["cortical"], L["bone"])
        inner = self._inset(z, d + self.t_out + self.t_dip + self.t_in)
        if z < self.fossa_z:
            self._skull_base(cv, z, inner)
            return
        cv.paint(inner, hu["csf"], L["fluid"])
        brain = Blob(inner.cx, inner.cy, inner.a - self.sas, inner.b - self.sas, 0.0, inner.harm)
        cv.paint(brain, hu["gm"], L["gm"])
        self._cortex(cv, z)
        self._deep(cv, z, brain)
        self._falx(cv, z, brain)

    # ----------------------------------------------------------------------------------------------- cerebrum
    def _cortex(self, cv: Canvas, z: float) -> None:
        """Sulci (CSF lines from the surface) and the grey ribbon over white matter."""
        brain = cv.lab == L["gm"]
        depth = ndimage.distance_transform_edt(brain) * cv.px
        s = self.sulci.at(z)
        reach = np.clip((self.sulc_depth * (1 + 0.3 * self.gyri.at(z)) - depth) / 2.0, 0, 1)
        sulcus = tx.lines(s, cv.px, 0.45) * reach * brain
        csf = (~brain) | (sulcus >= 0.5)
        to_csf = ndimage.distance_transform_edt(~csf) * cv.px
        wm = np.clip((to_csf - self.cortex * (1 + 0.35 * self.gyri.at(z))) / 1.2 + 0.5, 0, 1) * brain
        wm *= np.clip(depth / 2.0 - 1.0, 0, 1)
        cv.hu += (self.hu["wm"] - cv.hu) * wm
        cv.lab[wm >= 0.5] = L["wm"]
        cv.hu += (self.hu["csf"] - cv.hu) * sulcus
        cv.lab[sulcus >= 0.5] = L["fluid"]

    def _deep(self, cv: Canvas, z: float, brain: Blob) -> None:
        """Basal ganglia, thalami, lateral and third ventricles, calcifications."""
        A, B, v, hu = brain.a, brain.b, self.vent, self.hu
        y0 = brain.cy
        for side in (-1, 1):
            e = ext(z, 18, 12)
            if e > 0:  # caudate head, lentiform nucleus, thalamus
                cv.paint(Blob(side * (7 + 2 * v), y0 - 0.2 * B, 6 * e, 8 * e), hu["gm"] - 2, L["gm"], 1.0, _BRAIN)
                cv.paint(Blob(side * 0.3 * A, y0 - 0.02 * B, 6 * e, 15 * e, side * 0.25), hu["gm"] - 3, L["gm"], 1.0,
                         _BRAIN)  # fmt: skip
                cv.paint(Blob(side * 8.5, y0 + 0.08 * B, 9 * e, 11 * e), hu["gm"] - 2, L["gm"], 1.0, _BRAIN)
            e = ext(z, 16, 11)
            if e > 0:  # frontal horns and atria / occipital horns
                cv.paint(Blob(side * (3 + 2 * v), y0 - 0.18 * B, (2 + 2.5 * v) * e, (8 + 5 * v) * e, side * 0.4),
                         hu["csf"], L["fluid"], 0.3)  # fmt: skip
                cv.paint(Blob(side * 0.2 * A, y0 + 0.28 * B, (3 + 3 * v) * e, (7 + 4 * v) * e, -side * 0.5),
                         hu["csf"], L["fluid"], 0.3)  # fmt: skip
                if self.calcs[0]:
                    cv.paint(Blob(side * 0.2 * A, y0 + 0.28 * B, 2.0 * e, 2.5 * e), hu["calc"], L["bone"], 0.3)
            e = ext(z, 32, 10)
            if e > 0:  # bodies of the lateral ventricles
                cv.paint(Blob(side * (4 + 2.5 * v), y0, (2 + 2.5 * v) * e, 0.25 * B * e, side * 0.08), hu["csf"],
                         L["fluid"], 0.3)  # fmt: skip
        e = ext(z, 8, 9)
        if e > 0:
            cv.paint(Blob(0.0, y0 + 0.02 * B, 1.0 + 1.2 * v, 11 * e), hu["csf"], L["fluid"], 0.3)  # third ventricle
            if self.calcs[1] and abs(z - 10) < 3:
                cv.paint(Blob(0.0, y0 + 0.14 * B, 2.5, 2.5), hu["calc"], L["bone"], 0.3)  # pineal

    def _falx(self, cv: Canvas, z: float, brain: Blob) -> None:
        """Interhemispheric fissure (CSF) with the falx: the whole length above the corpus callosum, else its
        anterior and posterior parts."""
        B, y0 = brain.b, brain.cy
        parts = [(y0, B)] if z > 34 else [(y0 - 0.75 * B, 0.35 * B), (y0 + 0.78 * B, 0.3 * B)]
        on = (L["gm"], L["wm"], L["fluid"])
        for cy, half in parts:
            cv.paint(Blob(0.0, cy, 1.6, half), self.hu["csf"], L["fluid"], 0.2, on)
            cv.paint(Blob(0.0, cy, 0.6, half), self.hu["falx"], L["dura"], 0.2, on)

    # -------------------------------------------------------------------------------------------- skull base
    def _skull_base(self, cv: Canvas, z: float, inner: Blob) -> None:
        """Posterior fossa: bone floor with temporal lobes, cerebellum, pons, fourth ventricle and air spaces."""
        hu = self.hu
        cv.paint(inner, hu["cortical"] * 0.8, L["bone"])
        a, b, y0 = inner.a, inner.b, inner.cy
        e = 0.6 + 0.4 * ext(z, self.fossa_z, 30)
        lobes = [Blob(s * 0.5 * a, y0 - 0.22 * b, 0.42 * a * e, 0.4 * b * e, s * 0.35) for s in (-1, 1)]
        cereb = Blob(0.0, y0 + 0.48 * b, 0.85 * a * e, 0.45 * b * e)
        pons = Blob(0.0, y0 + 0.06 * b, 14.0 * e, 13.0 * e)
        for blob in [*lobes, cereb, pons]:
            cv.paint(blob.scaled(1.0, -1.5), hu["csf"], L["fluid"])  # cisterns around
        for blob in lobes:
            cv.paint(blob, hu["gm"], L["gm"])
            cv.paint(blob.scaled(0.6), hu["wm"], L["wm"], 1.0)
        cv.paint(cereb, hu["gm"], L["gm"])
        self._folia(cv, z)
        cv.paint(pons, hu["wm"] + 2, L["wm"])
        cv.paint(Blob(0.0, y0 + 0.2 * b, 5.0 * e, 3.0 * e), hu["csf"], L["fluid"], 0.3)  # fourth ventricle
        if z < -14:
            cv.paint(Blob(0.0, y0 - 0.6 * b, 0.14 * a, 0.12 * b), -1000.0, L["gas"], 0.3, (L["bone"],))  # sphenoid
        for mx, my, r in self.mastoid:
            for s in (-1, 1):
                cv.paint(Blob(s * (0.86 + 0.05 * mx) * a, y0 + (0.12 + 0.1 * my) * b, 2.5 + r, 2.0 + r), -1000.0,
                         L["gas"], 0.2, (L["bone"],))  # fmt: skip

    def _folia(self, cv: Canvas, z: float) -> None:
        """Cerebellar folia: fine white-matter lines in the cerebellum's grey matter."""
        gm = cv.lab == L["gm"]
        folia = tx.lines(self.sulci.at(z) * 2.5, cv.px, 0.5) * gm
        cv.hu += (self.hu["wm"] - cv.hu) * 0.6 * folia
