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

from ._roles import behind_proxy

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
    layer = behind_proxy(layer)  # napari's own attribute, not through a plugin's proxy
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

    return tuple(float(v) for v in transform_color(behind_proxy(colour))[0])  # not napari's proxy


#: the current finding's outline colour: white, as wide as the others (a widened outline covered most of a small
#: lesion, its band growing with the zoom; white is not on the score colour map nor among the review's colours)
MARK_EDGE = (1.0, 1.0, 1.0, 1.0)


def mark_current(layer: Any, index: int) -> tuple[Any, int, np.ndarray] | None:
    """Draw shape ``index``'s outline on ``layer`` white (the row the reader is deciding on: on a slice with several
    boxes it looked like the others); returns what :func:`unmark` needs, or None when there is no such shape."""
    colours = np.array(layer.edge_color, dtype=float).reshape(-1, 4)
    if not 0 <= index < len(colours):
        return None
    before = colours[index].copy()
    if scored(layer):  # its own colours from here on: dim_boxes brings the score colours back on its range
        _hold_score_range(layer)
    colours[index] = MARK_EDGE
    _set_edges(layer, colours)
    return layer, index, before


def remark(mark: tuple[Any, int, np.ndarray] | None) -> tuple[Any, int, np.ndarray] | None:
    """:func:`mark_current` again after the layer was recoloured (a no-op when the mark is still there)."""
    if mark is None:
        return None
    layer, index, _ = mark
    colours = np.array(layer.edge_color, dtype=float).reshape(-1, 4)
    if index < len(colours) and np.allclose(colours[index], MARK_EDGE):
        return mark
    return mark_current(layer, index)


def unmark(mark: tuple[Any, int, np.ndarray] | None, layers: Any) -> None:
    """Undo :func:`mark_current` where the shape is still there and still marked (a new threshold rebuilds a
    layer's shapes in their score colours)."""
    if mark is None:
        return
    layer, index, before = mark
    if layer not in layers or index >= layer.nshapes:
        return
    colours = np.array(layer.edge_color, dtype=float).reshape(-1, 4)
    if np.allclose(colours[index], MARK_EDGE):
        colours[index] = before
        _set_edges(layer, colours)


def _set_edges(layer: Any, colours: np.ndarray) -> None:
    """Set each shape's outline colour; a box drawn later still takes the layer's colour for new boxes (napari
    makes the last colour set the new boxes' one), and no selected shape takes it (napari's setter of that colour
    recolours the selection: a selected box went white, or lost its mark)."""
    new_boxes, selected = layer.current_edge_color, set(layer.selected_data)
    if selected:
        layer.selected_data = set()
    layer.edge_color = colours
    layer.current_edge_color = new_boxes
    if selected:
        layer.selected_data = selected


def _hold_score_range(layer: Any) -> None:
    """Record the score colour range of a layer about to take colours of its own (``dim_boxes`` restores it)."""
    info = dict(layer.metadata.get("lidnet", {}))  # a copy: napari's Duplicate Layer shares the inner dict
    if not info.get(_FLAG):
        layer.metadata["lidnet"] = {**info, _FLAG: [float(v) for v in layer.edge_contrast_limits]}
