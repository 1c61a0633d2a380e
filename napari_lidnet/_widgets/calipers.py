"""Calipers: a Shapes layer whose lines carry their length in mm, as a reader measures on the scan.

Load CT's "Measure (mm)" opens one over the CT layer on screen (its scale and translate: data coordinates are that
image's pixel coordinates, so lengths follow its voxel size; a file without a stored spacing has 1 mm voxels, as
the loader said when it opened it) and leaves it in line mode. Over another image its scale is taken as mm when it has
one (as the lesion navigator does: ``has_voxel_size``), else lengths are in its pixels ("px"); without any image
there is nothing to measure. A line
or a path is labelled with its length, a rectangle or an ellipse with its two sides or axes, the label beside the
shape's right end, its left edge ``LABEL_GAP_PX`` screen pixels clear of it at any zoom, as a PACS writes a length
(centred on the shape, a label covered the lesion it measured; right-aligned at its end, a label longer than a short
line ran back over it); the labels follow every drawn, moved, edited or deleted shape.
Caliper layers are measurements, not regions or lesion boxes: ROI compare does not switch to them on its own, and
the lesion navigator and fine-tuning do not offer them.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._geometry import placed_like
from ._roles import CALIPERS, ROLE, behind_proxy, has_voxel_size, role
from ._viewer import camera

CALIPER_COLOR = "cyan"
LENGTH_SHAPES = ("line", "path")
SIDE_SHAPES = ("rectangle", "ellipse")
LABEL_SIZE = 10
#: the gap between a shape's right end and its label's left edge, in screen pixels
LABEL_GAP_PX = 6.0
#: a label's height and the width of one of its characters, in screen pixels (10 pt at 96 dpi; the digits and
#: " mm" measured 11 px each on the demo's picture): the label's right edge is drawn on the shape's lower right end
#: and its top there (napari's "lower_right" on a canvas whose y runs down), so it is moved right by its width and
#: the gap, and up by half its height (centred on a level line's row)
LABEL_HEIGHT_PX = LABEL_SIZE * 96 / 72
CHAR_PX = 0.8 * LABEL_HEIGHT_PX


def path_length_mm(vertices: np.ndarray, scale: Any) -> float:
    """Length in mm of the path through ``vertices`` (n, ndim) in data coordinates of a layer with ``scale`` (mm
    per data unit, per axis)."""
    vertices = np.asarray(vertices, dtype=float)
    steps = np.diff(vertices, axis=0) * np.asarray(scale, dtype=float)[-vertices.shape[1] :]
    return float(np.sqrt((steps**2).sum(axis=1)).sum())


def caliper_label(vertices: np.ndarray, shape_type: str, scale: Any, unit: str = "mm") -> str:
    """'12.3 mm' for a line or path, '12.3 x 8.1 mm' for a rectangle or ellipse (its bounding box's two sides),
    '' for anything else (``scale``: ``unit`` per data unit)."""
    if shape_type in LENGTH_SHAPES:
        return f"{path_length_mm(vertices, scale):.1f} {unit}"
    if shape_type in SIDE_SHAPES and len(vertices) >= 3:
        sides = [path_length_mm(vertices[k : k + 2], scale) for k in (0, 1)]
        return f"{max(sides):.1f} x {min(sides):.1f} {unit}"
    return ""


def relabel(layer: Any) -> None:
    """Write every shape's caliper label into the layer's ``label`` feature (and so its text): mm over an image with
    a voxel size, its pixels otherwise (``metadata["caliper_unit"]``)."""
    unit = layer.metadata.get("caliper_unit", "mm")
    scale = layer.scale if unit == "mm" else np.ones(layer.ndim)
    labels = [caliper_label(v, t, scale, unit) for v, t in zip(layer.data, layer.shape_type)]
    if list(layer.features.get("label", [])) != labels:
        layer.features = {"label": np.array(labels, dtype=object)}


def _on_data(event: Any) -> None:
    if getattr(event, "action", "changed") in ("added", "changed", "removed"):
        relabel(event.source)


def caliper_unit(image: Any) -> str:
    """'mm' over a CT layer or an image given a scale (its voxel size), 'px' over an image without one."""
    return "mm" if has_voxel_size(image) else "px"


def add_calipers(viewer: Any, image: Any) -> Any:
    """A calipers layer over ``image``, in mm when it has a voxel size (``caliper_unit``), else in its pixels."""
    unit = caliper_unit(image)
    layer = viewer.add_shapes(
        name="calipers",
        ndim=image.ndim,
        **placed_like(image),
        edge_color=CALIPER_COLOR,
        edge_width=1.5,
        face_color="transparent",
        features={"label": np.array([], dtype=object)},
        feature_defaults={"label": ""},
        text={"string": "{label}", "anchor": "lower_right", "size": LABEL_SIZE, "color": CALIPER_COLOR},
        metadata={ROLE: CALIPERS, "caliper_unit": unit},
    )
    layer.events.data.connect(_on_data)
    _follow_zoom(viewer, layer)
    return layer


def label_offset(layer: Any, viewer: Any) -> np.ndarray:
    """The layer's text translation (data units, per axis) that puts each label's left edge ``LABEL_GAP_PX`` screen
    pixels right of its shape's right end, centred on its lowest row, at the viewer's zoom (the layer's longest label
    sets the width)."""
    offset = np.zeros(layer.ndim)
    shift = viewer.dims.ndim - layer.ndim
    longest = max((len(str(t)) for t in layer.features.get("label", [])), default=0)
    screen = (-LABEL_HEIGHT_PX / 2, LABEL_GAP_PX + CHAR_PX * longest)  # down, right
    zoom = max(float(camera(viewer).zoom), 1e-9)
    for axis, px in zip((d - shift for d in viewer.dims.displayed[-2:]), screen):
        step = abs(float(layer.scale[axis])) if axis >= 0 else 0.0
        if step > 0:
            offset[axis] = px / (zoom * step)
    return offset


def _follow_zoom(viewer: Any, layer: Any) -> None:
    """Keep ``layer``'s labels at their screen offset as the view zooms or turns (until it leaves the viewer)."""
    ref = weakref.ref(behind_proxy(layer))
    emitters = (camera(viewer).events.zoom, viewer.dims.events.order)

    def place(_event: Any = None) -> None:
        target = ref()
        if target is None or target not in viewer.layers:
            for emitter in emitters:
                emitter.disconnect(place)
            return
        target.text.translation = label_offset(target, viewer)

    for emitter in emitters:
        emitter.connect(place)
    layer.events.data.connect(place, position="last")  # after relabel: a longer label moves further right
    place()


def measure(viewer: Any, image: Any) -> Any | None:
    """The calipers layer for ``image``'s geometry (the newest one, else a new one), active, in line mode; None
    without an image."""
    if image is None:
        return None
    scale = np.asarray(image.scale, dtype=float)
    same = [
        ly
        for ly in viewer.layers
        if role(ly) == CALIPERS and ly.ndim == image.ndim and np.allclose(ly.scale, scale)
        and ly.metadata.get("caliper_unit") == caliper_unit(image)
    ]  # fmt: skip
    layer = same[-1] if same else add_calipers(viewer, image)
    viewer.layers.selection.active = layer
    layer.mode = "add_line"
    return layer
