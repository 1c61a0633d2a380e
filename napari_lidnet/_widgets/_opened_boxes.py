"""A saved box table or review opened onto an image (the navigator's Open…): a layer of its boxes placed like the
image and drawn as the Denoise dock draws its lesions (outlines by score, a box drawn by hand in orange)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layer_data import ROLE, boxes_to_shapes
from ._box_style import box_style
from ._hand_edits import DRAWN_BOX
from ._roles import DETECTIONS, pixel_mm, source_key


def opened_boxes_layer(rows: np.ndarray, image: Any, name: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Shapes data and keywords of (N, 6) ``slice, x1, y1, x2, y2, score`` rows (pixel edges, already placed on
    ``image``'s slices) as a layer of boxes to review on ``image``, named ``name`` (the file's)."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    shapes = boxes_to_shapes(rows[:, :5] if image.ndim == 3 else rows[:, 1:5], image.ndim)
    scores = rows[:, 5]
    features = {
        "score": scores,
        "label": [f"{s:.2f}" if np.isfinite(s) else DRAWN_BOX["label"] for s in scores],
    }
    info = {"source_layer": image.name, "source_key": source_key(image), "pixel_mm": pixel_mm(image), "opened": name}
    return shapes, {
        "name": name,
        "ndim": image.ndim,
        "shape_type": "rectangle",
        "features": features,
        **box_style(),
        "feature_defaults": {"score": np.nan, "label": DRAWN_BOX["label"]},
        "metadata": {ROLE: DETECTIONS, "lidnet": info},
        "scale": tuple(image.scale),
        "translate": tuple(image.translate),
        "rotate": image.rotate,
        "shear": image.shear,
        "affine": image.affine.affine_matrix,
    }
