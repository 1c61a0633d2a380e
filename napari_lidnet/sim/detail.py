"""Realistic detail over the painted anatomy: vessel / bronchial trees, patient table, tissue texture.

``Detail`` is drawn once per patient (its random parameters and trees) and applied at any z:

- ``paint`` (structures, before the label map is frozen): pulmonary arteries with their bronchi and pulmonary
  veins (chest, lung bases), portal and hepatic veins in the liver and mesenteric vessels in the fat (abdomen),
  1-15 mm calibres; the patient table (or head holder) under the patient, inside the scanner's FOV circle;
- ``apply`` (texture, after): per-tissue power-law 1/f^beta texture (beta 2-3, amplitude per tissue and patient),
  fat stranding (thin, wispy, denser lines in fat) and muscle marbling (fat lines in muscle), trabecular
  cancellous bone (a network of plates in fatty marrow, ``texture.trabecular``).

With contrast, organs enhance as in a portal-venous phase (liver ~100-125 HU, spleen ~105-130, kidney ~150-200)
and vessels take 150-300 HU.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from napari_lidnet.sim import texture as tx
from napari_lidnet.sim.canvas import LABELS as L
from napari_lidnet.sim.canvas import Blob, Canvas
from napari_lidnet.sim.vessels import Tree, grow_tree, paint_airways, paint_tree

if TYPE_CHECKING:
    from napari_lidnet.sim.body import BodyAnatomy
    from napari_lidnet.sim.head import HeadAnatomy

#: texture SD (HU) per label at amplitude factor 1; which power-law field each label takes
_SD = {
    L["fat"]: 7.0, L["muscle"]: 6.0, L["liver"]: 6.0, L["spleen"]: 5.0, L["kidney"]: 8.0, L["vessel"]: 3.0,
    L["bone"]: 50.0, L["marrow"]: 25.0, L["bowel"]: 8.0, L["lung"]: 25.0, L["heart"]: 4.0, L["fluid"]: 1.5,
    L["gm"]: 2.5, L["wm"]: 2.0, L["dura"]: 3.0,
}  # fmt: skip
_FIELD = {L["fat"]: 1, L["lung"]: 2, L["gm"]: 3, L["wm"]: 3}  # others: 0 (solid organs, muscle, bone)


class Detail:
    """Per-patient realistic detail for an anatomy (``BodyAnatomy`` or ``HeadAnatomy``) of ``kind``."""

    def __init__(
        self, rng: np.random.Generator, anat: BodyAnatomy | HeadAnatomy, kind: str, size: int, px: float, z0: float,
        z1: float,
    ) -> None:  # fmt: skip
        self.anat, self.kind, self.size, self.px = anat, kind, size, px
        self.amp = rng.uniform(0.6, 1.4, 4)  # per-field amplitude factors
        betas = rng.uniform(2.0, 3.0, 4)
        self.fields = [
            tx.ZField(rng, lambda g, b=b: tx.power_law_noise(g, size, b, px), z0, 8.0) for b in betas
        ]  # fmt: skip
        scale = float(rng.uniform(2.5, 5.0))
        self.strand = tx.ZField(rng, lambda g: tx.band_noise(g, size, px, scale), z0, 4.0)
        self.fade = tx.ZField(rng, lambda g: tx.band_noise(g, size, px, 10.0), z0, 12.0)
        self.trab = tx.ZField(rng, lambda g: tx.band_noise(g, size, px, 0.45), z0, 1.5)
        self.strand_hu = float(rng.uniform(10, 60))
        self.strand_thr = float(rng.uniform(-0.8, 1.2))  # higher: fewer lines
        self.marble_hu = float(rng.uniform(-60, -15))
        self.trab_hu = float(rng.uniform(80, 220))
        self.table = _draw_table(rng, kind)
        self.trees: list[tuple[Tree, float, int, tuple[int, ...]]] = []
        self.airways = Tree.concat([])
        if kind != "head":
            self._body_setup(rng)

    # ---------------------------------------------------------------------------------------------- structures
    def _body_setup(self, rng: np.random.Generator) -> None:
        anat, hu = self.anat, self.anat.hu
        if anat.contrast:
            hu["blood"] = float(rng.uniform(150, 300))
            hu["liver"] = float(rng.uniform(95, 125))
            hu["spleen"] = float(rng.uniform(105, 130))
            hu["kidney"] = float(rng.uniform(150, 200))
            hu["muscle"] += float(rng.uniform(3, 10))
        A, B = anat.A, anat.B
        blood = hu["blood"]
        self._lung_trees(rng, A, B, blood)  # chest, and the lung bases of the upper abdomen
        if anat.kind == "abdomen":
            self._abdomen_trees(rng, blood)

    def _lung_trees(self, rng: np.random.Generator, A: float, B: float, blood: float) -> None:
        """Pulmonary arteries (4 lobar trees per lung from the hilum) with bronchi beside them, and veins."""
        arteries, veins = [], []
        for side in (-1, 1):
            hilum = np.array([side * 0.2 * A, 0.0, -5.0 if self.kind == "chest" else 60.0])
            for ang in np.linspace(-1.2, 1.2, 4) + rng.uniform(-0.2, 0.2, 4):
                d = np.array([side * math.cos(ang), 0.3 * rng.uniform(-1, 1), math.sin(ang) * 1.2])
                arteries.append(grow_tree(rng, hilum, d, rng.uniform(4.5, 6.5), 0.45, 500))
                vroot = hilum + np.array([-side * 0.06 * A, 0.12 * B, -25.0])
                veins.append(grow_tree(rng, vroot, d + np.array([0, 0.3, 0]), rng.uniform(4, 6), 0.45, 400))
        art = Tree.concat(arteries)
        lung_blood = blood if self.anat.contrast else float(rng.uniform(35, 45))
        self.trees += [(art, lung_blood, L["vessel"], (L["lung"],)),
                       (Tree.concat(veins), lung_blood, L["vessel"], (L["lung"],))]  # fmt: skip
        big = art.r >= 0.9
        self.airways = Tree(art.p0[big], art.p1[big], art.r[big]).offset(rng)

    def _abdomen_trees(self, rng: np.random.Generator, blood: float) -> None:
        anat = self.anat
        liver = anat.liver_blob(70.0)
        if liver is not None:
            portal = np.array([liver.cx + 0.35 * liver.a, liver.cy + 0.1 * liver.b, 55.0])
            hepatic = np.array([-0.13 * anat.A, 0.3 * anat.B, 110.0])
            trees = [grow_tree(rng, portal, rng.normal(0, 1, 3) + [-1.0, 0, 0.3], rng.uniform(4, 6.5), 0.6, 250)
                     for _ in range(3)]  # fmt: skip
            trees += [grow_tree(rng, hepatic, rng.normal(0, 1, 3) + [-0.5, -1.0, -0.4], rng.uniform(4, 6), 0.6, 200)
                      for _ in range(3)]  # fmt: skip
            v = blood - 10 if anat.contrast else anat.hu["liver"] - rng.uniform(15, 30)
            self.trees.append((Tree.concat(trees), float(v), L["vessel"], (L["liver"],)))
        ax, ay, ra = anat.aorta()
        sma = np.array([ax, ay - ra, 55.0])
        mes = [grow_tree(rng, sma, rng.normal(0, 0.6, 3) + [0, -1.0, -0.8], rng.uniform(3, 4.5), 0.6, 300)
               for _ in range(3)]  # fmt: skip
        self.trees.append((Tree.concat(mes), blood, L["vessel"], (L["fat"],)))

    def paint(self, cv: Canvas, z: float) -> None:
        """Trees (vessels, bronchi) and the table at z."""
        for tree, value, label, only_on in self.trees:
            paint_tree(cv, tree, z, value, label, only_on)
        if self.airways.r.size:
            paint_airways(cv, self.airways, z, float(self.anat.hu["muscle"]) - 20.0, L["lung"], L["airway"])
        if self.table is not None:
            _paint_table(cv, self.anat.outline(z), self.table)

    # ------------------------------------------------------------------------------------------------- texture
    def apply(self, cv: Canvas, z: float) -> None:
        """Power-law texture per tissue, stranding / marbling lines, trabecular bone."""
        lab = cv.lab
        present = np.bincount(lab.ravel(), minlength=256) > 0
        for f in range(4):
            sd = np.zeros(256, np.float32)
            for k, s in _SD.items():
                if _FIELD.get(k, 0) == f and present[k]:
                    sd[k] = s * self.amp[f]
            if sd.any():
                cv.hu += self.fields[f].at(z) * sd[lab]
        self._lines(cv, z)
        marrow = lab == L["marrow"]
        if marrow.any():
            cv.hu[marrow] += self.trab_hu * tx.trabecular(self.trab.at(z)[marrow])

    def _lines(self, cv: Canvas, z: float) -> None:
        fat, muscle = cv.lab == L["fat"], cv.lab == L["muscle"]
        if not (fat.any() or muscle.any()):
            return
        s = self.strand.at(z)
        fade = np.clip(self.fade.at(z) - self.strand_thr, 0.0, 1.0)
        if fat.any():
            cv.hu[fat] += self.strand_hu * (tx.lines(s, self.px, 0.35) * fade)[fat]
        if muscle.any():
            cv.hu[muscle] += self.marble_hu * (tx.lines(s - 1.2, self.px, 0.3) * fade)[muscle]


# ------------------------------------------------------------------------------------------------------- table
def _draw_table(rng: np.random.Generator, kind: str) -> tuple[float, float, float, float, float] | None:
    """(gap mm, thickness mm, curvature 1/mm, skin HU, core HU) of the table / head holder, or None (absent)."""
    if rng.random() < 0.2:
        return None
    if kind == "head":
        return (float(rng.uniform(3, 10)), float(rng.uniform(6, 14)), float(rng.uniform(0.004, 0.01)),
                float(rng.uniform(100, 300)), float(rng.uniform(-900, -600)))  # fmt: skip
    return (float(rng.uniform(2, 25)), float(rng.uniform(15, 45)), float(rng.uniform(0.0003, 0.0015)),
            float(rng.uniform(150, 450)), float(rng.uniform(-950, -700)))  # fmt: skip


def _paint_table(cv: Canvas, outline: Blob, table: tuple[float, float, float, float, float]) -> None:
    """A curved slab below (posterior to) the patient: carbon skins around a foam core, over air only, cut to
    2 pixels inside the FOV circle."""
    gap, thick, curv, skin_hu, core_hu = table
    x = cv.coord[None, :]
    y = cv.coord[:, None]
    top = outline.cy + outline.b + gap + curv * x * x - curv * outline.a**2 * 0.5
    s = y - top  # mm below the table's top surface
    inside = np.clip((s + 0.5 * cv.px) / cv.px, 0, 1) * np.clip((thick - s) / cv.px + 0.5, 0, 1)
    skin = np.clip(1.5 - np.minimum(np.abs(s), np.abs(thick - s)), 0, 1)
    value = core_hu + (skin_hu - core_hu) * skin
    r_fov = (cv.size / 2.0 - 2.0) * cv.px
    inside = inside * (x * x + y * y <= r_fov * r_fov) * (cv.lab == L["air"])
    cv.hu += (value - cv.hu) * inside
    cv.lab[inside >= 0.5] = L["table"]
