"""Calipers: a Shapes layer whose lines carry their length in mm, as a reader measures on the scan.

Load CT's "Measure (mm)" opens one over the CT layer on screen (its scale and translate: data coordinates are that
image's pixel coordinates, so lengths follow its voxel size; a file without a stored spacing has 1 mm voxels, as
the loader said when it opened it) and leaves it in line mode. Over another image its scale is taken as mm when it has
one (as the lesion navigator does: ``has_voxel_size``), else lengths are in its pixels ("px"); without any image
there is nothing to measure. A line
or a path is labelled with its length, a rectangle or an ellipse with its two sides or axes, the label centred
``LABEL_OFFSET_PX`` screen pixels below the shape's middle at any zoom (anchored at a corner of the shape's bounds,
a label longer than a short line ran away from it, over whatever lay beside); the labels follow every drawn, moved,
edited or deleted shape.
Caliper layers are measurements, not regions or lesion boxes: ROI compare does not switch to them on its own, and
the lesion navigator and fine-tuning do not offer them.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from ._roles import CALIPERS, ROLE, behind_proxy, has_voxel_size, role
from ._viewer import camera

CALIPER_COLOR = "cyan"
LENGTH_SHAPES = ("line", "path")
SIDE_SHAPES = ("rectangle", "ellipse")
LABEL_SIZE = 10
#: the label's centre below its shape's middle, in screen pixels: its top edge a few pixels clear of a level line
LABEL_OFFSET_PX = 12.0


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
        scale=image.scale,
        translate=image.translate,
        affine=image.affine.affine_matrix,
        edge_color=CALIPER_COLOR,
        edge_width=1.5,
        face_color="transparent",
        features={"label": np.array([], dtype=object)},
        feature_defaults={"label": ""},
        text={"string": "{label}", "anchor": "center", "size": LABEL_SIZE, "color": CALIPER_COLOR},
        metadata={ROLE: CALIPERS, "caliper_unit": unit},
    )
    layer.events.data.connect(_on_data)
    _follow_zoom(viewer, layer)
    return layer


def label_offset(layer: Any, viewer: Any) -> np.ndarray:
    """The layer's text translation (data units, per axis) that puts each label ``LABEL_OFFSET_PX`` screen pixels
    below its shape's middle at the viewer's zoom, on the displayed axes."""
    offset = np.zeros(layer.ndim)
    axis = viewer.dims.displayed[-2] - (viewer.dims.ndim - layer.ndim)  # the screen's vertical axis
    step = abs(float(layer.scale[axis])) if axis >= 0 else 0.0
    if step > 0:
        offset[axis] = LABEL_OFFSET_PX / (max(float(camera(viewer).zoom), 1e-9) * step)
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
