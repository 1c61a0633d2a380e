"""How a layer of detected boxes looks (the Denoise dock's lesions, a box table opened in the navigator): outlines
coloured by score on one fixed range, a box drawn by hand (no score) in orange, each box labelled with its score."""

from __future__ import annotations

from typing import Any

BOX_COLORMAP = "plasma"
DRAWN_EDGE = "#f58231"  # a box drawn by hand (no score): the reviewed layer's colour of an added box
BOX_SCORE_RANGE = (0.0, 1.0)  # one colour per score, whatever the threshold shows
BOX_TEXT_COLOR = "yellow"


def box_colormap() -> Any:
    """The score colour map, drawing a box without a score (drawn by hand) in ``DRAWN_EDGE``: napari's NaN colour is
    transparent, and a drawn box was invisible."""
    from napari.utils.colormaps import ensure_colormap
    from napari.utils.colormaps.colormap import Colormap

    base = ensure_colormap(BOX_COLORMAP)
    return Colormap(colors=base.colors, controls=base.controls, interpolation=base.interpolation,
                    name="lidnet boxes", nan_color=DRAWN_EDGE)  # napari lists it by name: short  # fmt: skip


def box_style() -> dict[str, Any]:
    """Shapes layer keywords of scored boxes: outlines by the ``score`` feature, text from the ``label`` feature."""
    return {
        "edge_color": "score",
        "edge_colormap": box_colormap(),
        "edge_contrast_limits": BOX_SCORE_RANGE,
        "edge_width": 2,
        "face_color": "transparent",
        "text": {"string": "{label}", "anchor": "upper_left", "size": 9, "color": BOX_TEXT_COLOR},
    }
