"""napari layers -> fine-tuning inputs: image layers and a Shapes layer of lesion boxes -> ``CTInput``.

Duck-typed on napari's layer API (``data``, ``scale``, ``data_to_world``/``world_to_data``); no Qt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_lidnet._training.local_data import CTInput
from napari_lidnet.layer_data import ANNOTATED

from ._geometry import centres_inside, shapes_in_image
from ._review_decisions import review_decisions
from ._roles import ANNOTATIONS, DETECTIONS, REVIEWED, lidnet_info, pixel_mm, role, source_key


def _layer_spacing_mm(layer: Any) -> float:
    """In-plane pixel size of an image layer (its columns'), 1.0 when it has none."""
    return (pixel_mm(layer) or (1.0, 1.0))[1]


def layer_hu(layer: Any) -> np.ndarray:
    """A layer's pixels as an array in their own numeric type (an int16 study is not copied to float32 on the GUI
    thread: training takes float32 slice by slice); anything else as float32."""
    data = np.asarray(layer.data)
    return data if data.dtype.kind in "iuf" else data.astype(np.float32)


def inputs_from_layers(
    image_layers: Sequence[Any],
    shapes_layer: Any | None = None,
    current_slice: int | None = None,
    all_layers: Sequence[Any] = (),
) -> tuple[list[CTInput], list[str]]:
    """Normal-dose image layers (2D/3D, HU) -> inputs; boxes from ``shapes_layer`` (None: detect them later); a
    navigator's reviewed layer brings its rejected boxes and the slices with undecided detections among
    ``all_layers`` too (``_review_decisions``).

    With several images, a box belongs to the image that holds its centre; a box inside none is reported. Images
    that overlap on the canvas (DeepLesion key slices all sit at the origin) cannot share one boxes layer: a box
    would belong to each of them (a second slice would be trained with the first one's lesion, its own as
    background). An annotated layer (``<image> lesions (annotated)``) then stands for each image's own, found
    among ``all_layers``; other boxes layers are refused.
    """
    problems: list[str] = []
    inputs = []
    claimed: set[int] = set()
    n_shapes = len(shapes_layer.data) if shapes_layer is not None else 0
    own = _own_annotations(image_layers, shapes_layer, all_layers, problems)
    for layer in image_layers:
        hu = layer_hu(layer)
        boxes, rejected, undecided = None, None, []
        source = "none"
        if own is not None:
            if own.get(layer.name) is None:
                boxes, source = np.zeros((0, 5), np.float32), "none"
                if own:  # an image with no annotations of its own would train as lesion-free
                    problems.append(f"{layer.name!r} has no '{layer.name} {ANNOTATED}' layer: with images that "
                                    "overlap on the canvas each needs its own; untick it, or tick it alone")
            else:
                boxes, notes = shapes_in_image(own[layer.name], layer, current_slice)
                problems.extend(n for n in notes if n not in problems)
                source = box_source(own[layer.name])
        elif shapes_layer is not None:
            all_boxes, notes = shapes_in_image(shapes_layer, layer, current_slice)
            problems.extend(n for n in notes if n not in problems)
            mine = np.flatnonzero(centres_inside(all_boxes, hu.shape) | (len(image_layers) == 1))
            claimed.update(mine)
            boxes = all_boxes[mine].reshape(-1, 5)
            source = box_source(shapes_layer)
            rejected, undecided = review_decisions(shapes_layer, layer, all_layers)
        inputs.append(CTInput(layer.name, hu, _layer_spacing_mm(layer), boxes=boxes, box_source=source,
                              rejected=rejected, undecided=undecided))  # fmt: skip
    if own is None and shapes_layer is not None and len(image_layers) > 1 and len(claimed) < n_shapes:
        lost = n_shapes - len(claimed)
        problems.append(f"{lost} box(es) of {shapes_layer.name!r} lie outside every chosen image")
    return inputs, problems


#: where a boxes layer's boxes came from, by its role, as a model card records it
BOX_SOURCES = {ANNOTATIONS: "annotations", REVIEWED: "reviewed detections", DETECTIONS: "raw detections, unreviewed"}


def box_source(shapes_layer: Any) -> str:
    """"annotations (name)", "reviewed detections (name)", "raw detections, unreviewed (name)", or, for a layer the
    reader drew, "drawn (name)"."""
    return f"{BOX_SOURCES.get(role(shapes_layer), 'drawn')} ({shapes_layer.name})"


def _overlapping(layers: Sequence[Any]) -> tuple[str, str] | None:
    """Two of ``layers`` whose extents on the canvas overlap (in y and x, and z where both have it), or None."""
    for i, a in enumerate(layers):
        for b in layers[i + 1 :]:
            ea, eb = np.asarray(a.extent.world, float), np.asarray(b.extent.world, float)
            n = min(ea.shape[1], eb.shape[1])
            lo, hi = np.maximum(ea[0, -n:], eb[0, -n:]), np.minimum(ea[1, -n:], eb[1, -n:])
            if np.all(lo < hi):
                return a.name, b.name
    return None


def _own_annotations(
    image_layers: Sequence[Any], shapes_layer: Any | None, all_layers: Sequence[Any], problems: list[str]
) -> dict[str, Any] | None:
    """For overlapping images and one boxes layer: each image's own annotated layer (None where it has none), or
    a problem when the boxes layer is not an annotated one; None when the images do not overlap."""
    if shapes_layer is None or len(image_layers) < 2 or (pair := _overlapping(image_layers)) is None:
        return None
    if not str(shapes_layer.name).endswith(ANNOTATED):
        problems.append(f"{pair[0]!r} and {pair[1]!r} overlap on the canvas, so a box of {shapes_layer.name!r} "
                        "would belong to both: tick one image per boxes layer, or images that each have their own "
                        f"'{ANNOTATED}' layer")  # fmt: skip
        return {}
    return {ly.name: _annotations_of(ly, all_layers) for ly in image_layers}


def _annotations_of(image: Any, layers: Sequence[Any]) -> Any | None:
    """``image``'s own annotated layer: the one that records its fingerprint (a reader's), else the one named after
    it; None when it has none."""
    key = source_key(image)
    annotated = [ly for ly in layers if str(ly.name).endswith(ANNOTATED)]
    return next((ly for ly in annotated if lidnet_info(ly).get("source_key") == key), None) or next(
        (ly for ly in annotated if ly.name == f"{image.name} {ANNOTATED}"), None
    )


def grid_differences(a: Any, b: Any) -> list[str]:
    """Which of scale, translate, rotate, shear and affine differ between two layers (to 1e-3)."""
    names = ("scale", "translate", "rotate", "shear")
    off = [n for n in names if not np.allclose(np.asarray(getattr(a, n)), np.asarray(getattr(b, n)), atol=1e-3)]
    if not np.allclose(np.asarray(a.affine.affine_matrix), np.asarray(b.affine.affine_matrix), atol=1e-3):
        off.append("affine")
    return off


def paired_input(
    low_layer: Any, full_layer: Any, shapes_layer: Any | None, current_slice: int | None = None,
    all_layers: Sequence[Any] = (),
) -> tuple[CTInput, list[str]]:  # fmt: skip
    """A low-dose layer, its full-dose reference and (optionally) a Shapes layer of lesion boxes -> one input; a
    problem when the two do not lie on one grid in the viewer (other pixel size, position or orientation: their
    pixels would be paired with another place's)."""
    inputs, problems = inputs_from_layers([full_layer], shapes_layer, current_slice, all_layers)
    off = grid_differences(low_layer, full_layer)
    if off:
        problems = [*problems, f"{low_layer.name!r} and {full_layer.name!r} do not lie on one grid in the viewer "
                               f"({', '.join(off)} differ): pick the low-dose image of that scan"]  # fmt: skip
    item = inputs[0]
    item.low_hu = layer_hu(low_layer)
    item.name, item.full_name = low_layer.name, full_layer.name
    return item, problems
