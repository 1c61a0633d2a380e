"""Rejected detections dimmed on the detector's boxes layer: a faint grey outline and no score label, so the image
shows what is still to decide and nothing bright sits over a box the reader dismissed.

Only the Denoise dock's layers are dimmed (outlines coloured by their ``score`` feature, one text colour): their
colours come back from that feature when a box is no longer rejected, and the navigator undims a layer it stops
reviewing (``dim_boxes(layer, none)``), so no hidden label moves to another box when the layer changes later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers.utils.color_encoding import ConstantColorEncoding, ManualColorEncoding

DIM_EDGE = (0.6, 0.6, 0.6, 0.35)
HIDDEN = (0.0, 0.0, 0.0, 0.0)
_FLAG = "dimmed_from_score"  # in the layer's "lidnet" metadata: the score colour range it had before dimming


def scored(layer: Any) -> bool:
    """Whether the layer's outlines follow its ``score`` feature (now, or before ``dim_boxes`` changed them) and its
    text has one colour (or ``dim_boxes``'s)."""
    if "score" not in layer.features or not isinstance(layer.text.color, (ConstantColorEncoding, ManualColorEncoding)):
        return False
    if layer.metadata.get("lidnet", {}).get(_FLAG):
        return True
    return layer.edge_color_mode == "colormap" and getattr(layer, "_edge_color_property", None) == "score"


def dim_boxes(layer: Any, dimmed: np.ndarray) -> None:
    """Draw the shapes where ``dimmed`` is True faint grey without their text; the others in their score colour
    (on the layer's colour range before any dimming) and the layer's text colour. Does nothing on a layer not
    coloured by score."""
    if not scored(layer):
        return
    dimmed = np.asarray(dimmed, bool)
    info = dict(layer.metadata.get("lidnet", {}))  # a copy: napari's Duplicate Layer shares the inner dict
    was = info.get(_FLAG)
    if not dimmed.any() and not was:
        return
    limits = tuple(was) if isinstance(was, (list, tuple)) else tuple(layer.edge_contrast_limits)
    layer.edge_color = "score"  # back to the colormap: each shape's score colour ...
    layer.edge_contrast_limits = limits  # ... on the range it had (napari rescales to the scores shown)
    layer.refresh_colors()
    text_colour = _text_default(layer)
    if not dimmed.any():
        layer.text.color = ConstantColorEncoding(constant=text_colour)
        info.pop(_FLAG, None)
        layer.metadata["lidnet"] = info
        layer.refresh_text()
        return
    edges = np.array(layer.edge_color, dtype=float)
    edges[dimmed[: len(edges)]] = DIM_EDGE
    layer.edge_color = edges
    texts = np.tile(np.asarray(_rgba(text_colour)), (layer.nshapes, 1))
    texts[dimmed[: len(texts)]] = HIDDEN
    layer.text.color = ManualColorEncoding(array=texts, default=text_colour)
    layer.metadata["lidnet"] = {**info, _FLAG: [float(v) for v in limits]}
    layer.refresh_text()


def _text_default(layer: Any) -> Any:
    enc = layer.text.color
    if isinstance(enc, ConstantColorEncoding):
        return enc.constant
    return getattr(enc, "default", "yellow")


def _rgba(colour: Any) -> tuple[float, ...]:
    from napari.utils.colormaps.standardize_color import transform_color

    return tuple(float(v) for v in transform_color(colour)[0])


#: the current finding's outline, this many times as wide as the others (on whichever layer holds it)
CURRENT_WIDTH = 3.0


def mark_current(layer: Any, index: int) -> tuple[Any, int, float, float] | None:
    """Widen shape ``index``'s outline on ``layer`` (the row the reader is deciding on: on a slice with several
    boxes it looked like the others); returns what :func:`unmark` needs, or None when there is no such shape."""
    widths = [float(w) for w in layer.edge_width]
    if not 0 <= index < len(widths):
        return None
    before = widths[index]
    widths[index] = before * CURRENT_WIDTH
    layer.edge_width = widths
    return layer, index, before, widths[index]


def unmark(mark: tuple[Any, int, float, float] | None, layers: Any) -> None:
    """Undo :func:`mark_current` where the shape is still there and still as it was marked (a new threshold
    rebuilds a layer's shapes at their usual width)."""
    if mark is None:
        return
    layer, index, before, marked = mark
    if layer not in layers or index >= layer.nshapes:
        return
    widths = [float(w) for w in layer.edge_width]
    if np.isclose(widths[index], marked):
        widths[index] = before
        layer.edge_width = widths
