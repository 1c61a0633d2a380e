"""Shape vertices to image pixels, through napari's world coordinates: one affine map per pair of layers.

napari maps one position at a time (``data_to_world``, ``world_to_data``: 0.3 ms a box, two calls per vertex); both
transforms are affine, so each is read once from ``nd + 1`` probes and applied to every vertex of a layer at once.
The navigator, ROI compare and Fine-tune place shapes on images with it. Pixel-edge indices to the viewer's world and
to the patient (``index_to_world``, ``index_to_patient``) place the navigator's findings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..io.volume import n_slices, per_slice
from ..layer_data import PIXEL_CENTRE_SHIFT, shapes_to_boxes


def placed_like(image: Any) -> dict[str, Any]:
    """Keyword arguments that put a new layer where ``image`` lies in the viewer: its scale, translate, rotate,
    shear, affine and units (mm on a CT, so napari's scale bar and the layer list agree)."""
    return {"scale": tuple(image.scale), "translate": tuple(image.translate), "rotate": image.rotate,
            "shear": image.shear, "affine": image.affine.affine_matrix, "units": tuple(image.units)}  # fmt: skip


def _affine(transform: Callable, nd: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) of an affine napari transform of ``nd``-long positions, read from nd + 1 probes."""
    offset = np.asarray(transform(np.zeros(nd)), dtype=float)
    return np.stack([np.asarray(transform(np.eye(nd)[i]), dtype=float) - offset for i in range(nd)], axis=1), offset


def pixel_map(shapes: Any, image: Any, lead: Sequence[float] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``shapes``' data coordinates (k, shapes.ndim) -> ``image``'s napari data coordinates (k, image.ndim), through
    world coordinates: the last image.ndim world axes; a shape with fewer axes than the image (2D over a volume)
    takes the missing leading world coordinates from the world position ``lead`` (its last image.ndim axes; default
    zeros, as napari pads one position)."""
    to_world, world0 = _affine(shapes.data_to_world, shapes.ndim)
    to_pix, pix0 = _affine(image.world_to_data, image.ndim)
    n = image.ndim

    def to_pixels(verts: np.ndarray) -> np.ndarray:
        world = np.asarray(verts, dtype=float).reshape(-1, shapes.ndim) @ to_world.T + world0
        if world.shape[1] >= n:
            world = world[:, -n:]
        else:
            missing = n - world.shape[1]
            full = np.zeros(n) if lead is None else np.asarray(lead, dtype=float)[-n:]
            front = np.pad(full, (n - len(full), 0))[:missing]
            world = np.hstack([np.broadcast_to(front, (len(world), missing)), world])
        return world @ to_pix.T + pix0

    return to_pixels


def shapes_in_image(shapes_layer: Any, image_layer: Any, current_slice: int | None = None) -> tuple[np.ndarray, list]:
    """Shapes of ``shapes_layer`` as (N, 5) ``slice, x1, y1, x2, y2`` pixel-edge boxes in ``image_layer``'s pixels
    (``layer_data.shapes_to_boxes``: the one Shapes -> boxes conversion).

    Vertices go through world coordinates (each layer's scale/translate/affine). 2D shapes over a 3D image lie
    on ``current_slice``. Lines and paths are not boxes: they are reported, not used. Returns (boxes, problems).
    """
    problems: list[str] = []
    rows: list[np.ndarray] = []
    img_ndim = int(image_layer.ndim)
    flat = shapes_layer.ndim < img_ndim  # 2D shapes over a volume: on the current slice
    lead = None
    if flat and current_slice is not None:
        lead = image_layer.data_to_world([current_slice] + [0] * (img_ndim - 1))
    to_pixels = pixel_map(shapes_layer, image_layer, lead=lead)
    types = list(getattr(shapes_layer, "shape_type", ["rectangle"] * len(shapes_layer.data)))
    for i, (verts, kind) in enumerate(zip(shapes_layer.data, types)):
        if kind in ("line", "path"):
            problems.append(f"shape {i} of {shapes_layer.name!r} is a {kind}, not a lesion box: draw rectangles")
        elif flat and current_slice is None:
            problems.append(f"shape {i} of {shapes_layer.name!r} is 2D but {image_layer.name!r} is 3D: draw it in 3D")
        else:
            rows.append(to_pixels(verts))
    boxes = shapes_to_boxes(rows)
    return boxes, problems


def centres_inside(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Which (N, 5) ``slice, x1, y1, x2, y2`` boxes have their centre (and slice) in an image of ``shape`` (y, x)
    or (z, y, x)."""
    b = np.asarray(boxes, float).reshape(-1, 5)
    h, w = shape[-2:]
    n_z = shape[0] if len(shape) == 3 else 1
    cx, cy = (b[:, 1] + b[:, 3]) / 2, (b[:, 2] + b[:, 4]) / 2
    return (0 <= cx) & (cx < w) & (0 <= cy) & (cy < h) & (-0.5 <= b[:, 0]) & (b[:, 0] < n_z - 0.5)


def corner_vertices(z: float, corners: np.ndarray, ndim: int) -> np.ndarray:
    """napari data vertices of a box on slice ``z`` with (K, 2) (row, col) pixel-edge ``corners``, on a layer placed
    like its ``ndim``-D image (the inverse of :func:`corners_in_image`)."""
    c = np.asarray(corners, dtype=float) + PIXEL_CENTRE_SHIFT
    return np.column_stack([np.full(len(c), float(z)), c]) if ndim == 3 else c


#: (slice, y, x, 1) pixel-edge coordinate -> napari data coordinate (pixel centres at integers)
_EDGE_TO_CENTRE = np.eye(4)
_EDGE_TO_CENTRE[1:3, 3] = PIXEL_CENTRE_SHIFT


def index_to_world(layer: Any) -> np.ndarray:
    """4x4 matrix taking (slice, y, x, 1) pixel-edge coordinates of ``layer`` (pixel k spans [k, k+1) in y and x;
    2D: the slice is ignored) to world (z, y, x) mm, through napari's own data -> world transform."""
    nd = layer.ndim
    to_world, origin = _affine(layer.data_to_world, nd)
    mat = np.eye(4)
    mat[3 - nd : 3, 3 - nd : 3] = to_world[-nd:]
    mat[3 - nd : 3, 3] = origin[-nd:]
    if nd == 2:
        mat[0, 0] = 0.0
    return mat @ _EDGE_TO_CENTRE


_ZYX_FROM_XYZ = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def index_to_patient(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(4x4 matrix taking (slice, y, x, 1) pixel-edge coordinates to patient LPS (z, y, x) mm, per-slice offsets
    or None) from the DICOM geometry the reader left in the layer's metadata (``affine_lps``: any orientation;
    ``slice_ipp``: each slice's own position, gaps kept); napari's world coordinates for layers without it."""
    aff = layer.metadata.get("affine_lps")
    if aff is None or np.shape(aff) != (4, 4):
        return index_to_world(layer), None
    aff = np.asarray(aff, dtype=float)
    ipp = per_slice(layer.metadata, "slice_ipp", n_slices(layer.data))
    offsets = None if ipp is None else (np.asarray(ipp, dtype=float).reshape(-1, 3) - aff[:3, 3])[:, ::-1]
    return _ZYX_FROM_XYZ @ aff @ _EDGE_TO_CENTRE, offsets


def corners_in_image(
    shapes: Any, index: int, image: Any, data: list | None = None, to_pixels: Callable | None = None,
) -> tuple[int, np.ndarray]:  # fmt: skip
    """(slice, (4, 2) row/col pixel-edge corners) of shape ``index`` of ``shapes`` in ``image``'s pixels (through
    world coordinates, then from napari's pixel-centre coordinates to pixel edges as ``layer_data`` does). ``data``
    and ``to_pixels`` (``pixel_map``): ``shapes.data`` and the map, made once by a caller looping over every shape
    (napari rebuilds that list at each access)."""
    verts = np.asarray((shapes.data if data is None else data)[index], dtype=float)
    pix = (to_pixels or pixel_map(shapes, image))(verts)
    z = int(np.rint(pix[:, 0].mean())) if image.ndim == 3 else 0
    return z, pix[:4, -2:] - PIXEL_CENTRE_SHIFT
