"""How the navigator frames a finding, as a PACS "go to finding" does: the box centred and zoomed so its larger side
spans about ``BOX_SHARE`` of the canvas's smaller side (of one panel side by side), never zoomed out below the
image's fit to the canvas (napari's Home) and never closer than ``MAX_PX_PER_PIXEL`` screen pixels per image pixel.
At the old zoom a 4.5 mm box was about 6 screen pixels wide, its score and status labels stacked on it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._viewer import viewbox_size

BOX_SHARE = 0.3  # between a quarter and a third: the lesion and its surroundings both readable
MAX_PX_PER_PIXEL = 8.0  # closer shows the pixels, not the lesion
FIT_SHARE = 0.95  # napari's Home leaves a 5% margin


def framing_zoom(
    box_sides: Sequence[float], image_sides: Sequence[float], pixel: float, view: Sequence[float]
) -> float:
    """The camera zoom (screen pixels per world unit) framing a box of ``box_sides`` on an image of
    ``image_sides`` (both in world units, on the two displayed axes) with pixels ``pixel`` wide, in a view of
    ``view`` screen pixels."""
    view = np.asarray(view, dtype=float)
    fit = FIT_SHARE * float(np.min(view / np.maximum(np.asarray(image_sides, dtype=float), 1e-9)))
    target = BOX_SHARE * float(view.min()) / max(float(np.max(box_sides)), pixel)
    return max(fit, min(target, MAX_PX_PER_PIXEL / pixel))


def finding_zoom(viewer: Any, image: Any, corners: np.ndarray, index_to_world: np.ndarray) -> float | None:
    """The zoom framing a box whose ``corners`` (k, image.ndim) are in world coordinates on ``image``'s axes
    (``index_to_world``: its 4x4 (slice, y, x, 1) -> world matrix); None in 3D or with fewer than two of the
    image's axes displayed (the zoom is then left as it is)."""
    dims = viewer.dims
    offset = dims.ndim - image.ndim
    axes = [d - offset for d in dims.displayed if d >= offset]
    if dims.ndisplay != 2 or len(axes) != 2:
        return None
    steps = np.linalg.norm(np.asarray(index_to_world, dtype=float)[:3, :3], axis=0)[3 - image.ndim :]
    pixel = float(np.min(steps[axes]))
    extent = np.asarray(image.extent.world, dtype=float)[:, axes]
    box = np.ptp(np.asarray(corners, dtype=float)[:, axes], axis=0)
    return framing_zoom(box, np.ptp(extent, axis=0) + steps[axes], pixel, viewbox_size(viewer))
