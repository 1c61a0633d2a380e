"""Branching tube trees (vessels, bronchi) in 3-D, and their cross-sections in an axial slice.

A tree is a set of straight segments (p0, p1, radius) grown generation by generation from a root: each segment
splits into two children of smaller radius (ratios ~0.55-0.9, Murray-like) whose directions scatter around the
parent's. An axial plane cuts a segment of radius r and tilt phi in an ellipse of semi-axes r and r / cos(phi)
(capped by the part of the segment within r of the plane), so vessels of all calibres and orientations appear as
circles, ellipses and short bands, continuous from slice to slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_lidnet.sim.canvas import Blob, Canvas


@dataclass
class Tree:
    """Segments of one or more trees: p0, p1 (n, 3) mm as (x, y, z); r (n,) mm."""

    p0: np.ndarray
    p1: np.ndarray
    r: np.ndarray

    @staticmethod
    def concat(trees: list[Tree]) -> Tree:
        if not trees:
            return Tree(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
        return Tree(*(np.concatenate([getattr(t, k) for t in trees]) for k in ("p0", "p1", "r")))

    def offset(self, rng: np.random.Generator, gap: float = 1.0, ratio: tuple[float, float] = (0.8, 1.2)) -> Tree:
        """A companion tree (bronchi beside arteries): each segment moved sideways, perpendicular to itself, by the
        two radii plus ``gap`` mm, with radius times ``ratio``."""
        d = self.p1 - self.p0
        side = np.cross(d, rng.standard_normal(d.shape))
        side /= np.maximum(np.linalg.norm(side, axis=1, keepdims=True), 1e-9)
        r2 = self.r * rng.uniform(*ratio, self.r.shape)
        shift = side * (self.r + r2 + gap)[:, None]
        return Tree(self.p0 + shift, self.p1 + shift, r2)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def grow_tree(
    rng: np.random.Generator,
    root: np.ndarray,
    direction: np.ndarray,
    r0: float,
    r_min: float = 0.5,
    max_segments: int = 600,
    length: tuple[float, float] = (4.0, 9.0),
    spread: float = 0.55,
) -> Tree:
    """A tree from ``root`` (x, y, z mm) heading along ``direction``: segment length ``length`` x radius (3-40 mm),
    children at radius ratios 0.7-0.9 and 0.55-0.8, direction scatter ``spread``; stops below ``r_min`` or at
    ``max_segments`` (children kept at random once the budget is short)."""
    p0 = np.asarray(root, float)[None]
    d = _unit(np.asarray(direction, float))[None]
    r = np.array([float(r0)])
    out: list[Tree] = []
    total = 0
    while r.size and total < max_segments:
        seg = np.clip(r * rng.uniform(*length, r.size), 3.0, 40.0)
        p1 = p0 + d * seg[:, None]
        out.append(Tree(p0, p1, r))
        total += r.size
        ratios = np.stack([rng.uniform(0.7, 0.9, r.size), rng.uniform(0.55, 0.8, r.size)], axis=1)
        cr = (r[:, None] * ratios).ravel()
        cd = _unit(np.repeat(d, 2, axis=0) + spread * rng.standard_normal((cr.size, 3)))
        cp = np.repeat(p1, 2, axis=0)
        keep = cr >= r_min
        if keep.sum() > max_segments - total:
            idx = np.flatnonzero(keep)
            keep[:] = False
            keep[rng.choice(idx, max(0, max_segments - total), replace=False)] = True
        p0, d, r = cp[keep], cd[keep], cr[keep]
    return Tree.concat(out)


def sections(tree: Tree, z: float) -> list[Blob]:
    """Ellipses where the axial plane at z cuts the tree's segments (largest first)."""
    if tree.r.size == 0:
        return []
    z0, z1, r = tree.p0[:, 2], tree.p1[:, 2], tree.r
    hit = (np.minimum(z0, z1) - r <= z) & (np.maximum(z0, z1) + r >= z)
    idx = np.flatnonzero(hit)
    if idx.size == 0:
        return []
    p0, d, r = tree.p0[idx], tree.p1[idx] - tree.p0[idx], r[idx]
    dz = d[:, 2]
    steep = np.abs(dz) > 1e-6
    safe = np.where(steep, dz, 1.0)
    ta = np.where(steep, (z - r - p0[:, 2]) / safe, 0.0)
    tb = np.where(steep, (z + r - p0[:, 2]) / safe, 1.0)
    lo = np.clip(np.minimum(ta, tb), 0.0, 1.0)
    hi = np.clip(np.maximum(ta, tb), 0.0, 1.0)
    tm = 0.5 * (lo + hi)
    centre = p0 + tm[:, None] * d
    gap = np.abs(centre[:, 2] - z)  # > 0 only where the plane passes beyond the segment's end
    rr = r * np.sqrt(np.clip(1.0 - (gap / r) ** 2, 0.0, 1.0))
    half = 0.5 * (hi - lo) * np.hypot(d[:, 0], d[:, 1])
    a = np.sqrt(rr**2 + half**2)
    ang = np.arctan2(d[:, 1], d[:, 0])
    order = np.argsort(-r)
    return [Blob(float(centre[i, 0]), float(centre[i, 1]), float(a[i]), float(rr[i]), float(ang[i]))
            for i in order if rr[i] > 0.05]  # fmt: skip


def paint_tree(
    cv: Canvas, tree: Tree, z: float, value: float, label: int, only_on: tuple[int, ...], sigma: float = 0.35
) -> None:
    """Paint the tree's cross-sections at z (value HU, label) where the canvas has one of ``only_on`` labels."""
    for blob in sections(tree, z):
        cv.paint(blob, value, label, sigma=sigma, only_on=only_on)


def paint_airways(
    cv: Canvas, tree: Tree, z: float, wall_hu: float, host: int, lumen: int, wall_frac: float = 0.22
) -> None:
    """Bronchi: a soft-tissue wall (``wall_frac`` of the radius + 0.3 mm) around an air lumen, inside ``host``."""
    for blob in sections(tree, z):
        cv.paint(blob, wall_hu, lumen, sigma=0.3, only_on=(host,))
        w = wall_frac * blob.b + 0.3
        inner = Blob(blob.cx, blob.cy, blob.a - w, blob.b - w, blob.angle)
        if inner.b > 0.2:
            cv.paint(inner, -1000.0, lumen, sigma=0.2, only_on=(lumen,))
