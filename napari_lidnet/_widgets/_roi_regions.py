"""Regions of a Shapes layer for ROI compare: placed on each image's pixel grid through world coordinates, with a
note where an image is stored mirrored against the others."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_lidnet._widgets._geometry import pixel_map
from napari_lidnet.metrics.roi import AREA_SHAPES, Placement, Region

__all__ = ["mirrored_notes", "region_label", "regions_from_shapes", "short_label"]


def region_label(layer: Any, index: int) -> str:
    """'#i' plus the shape's name or label feature when the Shapes layer has one (a ROI layer's R1, R2...; the
    lesion type of annotated boxes)."""
    feats = getattr(layer, "features", None)
    for col in ("name", "label"):
        if feats is not None and col in feats and index < len(feats):
            return f"#{index} {feats[col].iloc[index]}"
    return f"#{index}"


def regions_from_shapes(shapes: Any, images: dict[str, Any], world_point: Any | None = None) -> list[Region]:
    """Regions of a napari Shapes layer, placed on each image layer's pixel grid through world coordinates.

    Args:
        shapes: napari Shapes layer.
        images: image name -> napari Image layer (2D or 3D).
        world_point: the viewer's current world position (``viewer.dims.point``), used for the slice of a 2D
            shape over a 3D image; None means world zeros.
    """
    nd_world = max([shapes.ndim, *(lay.ndim for lay in images.values())])
    base = np.zeros(nd_world)
    if world_point is not None and len(world_point):
        wp = np.asarray(world_point, dtype=float)[-nd_world:]
        base[-len(wp) :] = wp
    to_pixels = {img_name: pixel_map(shapes, lay, lead=base) for img_name, lay in images.items()}
    mirrored = mirrored_notes(images)
    regions = []
    for i, (data, stype) in enumerate(zip(shapes.data, shapes.shape_type, strict=False)):
        data = np.asarray(data, dtype=float)
        name = region_label(shapes, i)
        if stype not in AREA_SHAPES:
            regions.append(Region(name, stype, data[:, -2:]))
            continue
        region = Region(name, stype, data[:, -2:])
        for img_name, lay in images.items():
            pix = to_pixels[img_name](data)
            sl, where, notes = None, {}, [mirrored.get(img_name, "")]
            if lay.ndim >= 3:
                z = pix[:, -3]
                sl = int(np.floor(np.median(z) + 0.5))
                if shapes.ndim < 3:
                    notes.append(f"2D shape on a 3D image: slice {sl} (the viewer's current slice)")
                elif np.ptp(z) > 0.5:
                    notes.append(f"shape spans slices; using slice {sl}")
                centre = np.array([sl, *pix[:, -2:].mean(0)])  # the slice's world position, for other grids
                where = {"slice_mm": float(np.asarray(lay.data_to_world(centre))[-3]),
                         "spacing_mm": float(lay.scale[-3])}  # fmt: skip
            region.placements[img_name] = Placement(sl, pix[:, -2:], **where, note="; ".join(n for n in notes if n))
        regions.append(region)
    return regions


def _storage(layer: Any) -> tuple[int, int] | None:
    """The signs of the patient axes a layer's rows and columns run along (its ``affine_lps``), None without one."""
    aff = (layer.metadata or {}).get("affine_lps")
    if aff is None or np.shape(aff) != (4, 4):
        return None
    cols = np.asarray(aff, dtype=float)[:3, 1:3]  # the y (down a column) and x (along a row) array axes
    return tuple(int(np.sign(c[np.argmax(np.abs(c))])) for c in cols.T)


def mirrored_notes(images: dict[str, Any]) -> dict[str, str]:
    """Images stored with rows or columns reversed against the first image with patient geometry (a prone or
    feet-first copy): the viewer shows each as stored, so one region lies on other anatomy there; a note each."""
    known = {name: s for name, s in ((n, _storage(ly)) for n, ly in images.items()) if s is not None}
    if not known:
        return {}
    first, ref = next(iter(known.items()))
    out = {}
    for name, signs in known.items():
        flipped = [axis for axis, a, b in zip(("rows", "columns"), signs, ref) if a != b]
        if flipped:
            out[name] = (f"stored with its {' and '.join(flipped)} reversed against {first!r}: shown as stored, so the "
                         "region lies on other anatomy here (compare images stored alike)")  # fmt: skip
    return out


def short_label(name: str) -> str:
    """A region's label without its "#index " prefix ("#2 R3" -> "R3")."""
    return name.split(" ", 1)[1] if name.startswith("#") and " " in name else name
