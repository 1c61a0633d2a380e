"""Shape vertices to image pixels, through napari's world coordinates: one affine map per pair of layers.

napari maps one position at a time (``data_to_world``, ``world_to_data``: 0.3 ms a box, two calls per vertex); both
transforms are affine, so each is read once from ``nd + 1`` probes and applied to every vertex of a layer at once.
The navigator, ROI compare and Fine-tune place shapes on images with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


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
