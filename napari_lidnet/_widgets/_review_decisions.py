"""What a reader decided in the Lesion navigator, read for fine-tuning from the layers (no navigator needed).

A reviewed layer holds the kept boxes and records the rejected detections in its metadata (``rejected``: slice and
box as detected; ``kept``: each kept box with its detection; ``boxes_layer``: the boxes layer reviewed last, and
``pending``: its undecided boxes at the last decision, read when that layer is gone). Fine-tuning always uses the
slices of the rejected boxes (as background; ``TrainConfig.hard_negatives`` can draw patches on them), and leaves
out the slices whose detections the reader has not decided: an undecided detection may be a lesion, and a slice
without a kept box would teach it as background. Boxes go through world coordinates into the pixels of the image
being trained on, as the kept boxes do (``_geometry.shapes_in_image``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..layer_data import ANNOTATIONS, boxes_to_shapes, shapes_to_boxes
from ..metrics.froc import box_iou_np
from ._geometry import centres_inside, pixel_map, shapes_in_image
from ._roles import DETECTIONS, REVIEWED, lidnet_info, role

#: boxes layers a navigator reviews on an image: the detector's, and a scan's own annotations
REVIEWABLE = (DETECTIONS, ANNOTATIONS)

#: a detection counts as decided when a decided box on its slice overlaps it this much (the navigator's match)
DECIDED_IOU = 0.5


def _stored_boxes(reviewed: Any, image: Any, key: str, slice_at: int = 0) -> np.ndarray:
    """Boxes the reviewed layer's metadata keeps under ``key`` (each entry's first five numbers: slice, x1, y1, x2,
    y2 in its image's pixels, whose napari frame the layer shares; the slice at ``slice_at`` instead when the entry
    has it: a kept box's detection's) as (N, 5) boxes in ``image``'s pixels; an entry that is not numbers is passed
    over."""
    rows = []
    for entry in lidnet_info(reviewed).get(key) or []:
        try:
            values = np.asarray(entry, float).ravel()
            row = np.array([values[slice_at if len(values) > slice_at else 0], *values[1:5]])
        except (TypeError, ValueError, IndexError):
            continue
        if row.shape == (5,) and np.isfinite(row).all():
            rows.append(row)
    if not rows:
        return np.zeros((0, 5), np.float32)
    to_pixels = pixel_map(reviewed, image)
    return shapes_to_boxes([to_pixels(v) for v in boxes_to_shapes(np.stack(rows), reviewed.ndim)])


def _layer_boxes(layer: Any, image: Any) -> np.ndarray:
    """A Shapes layer's boxes as (N, 5) boxes in ``image``'s pixels (its lines and paths, which the navigator does
    not review, left out)."""
    return shapes_in_image(layer, image)[0]


def _undecided(detections: np.ndarray, decided: np.ndarray) -> list[int]:
    """Slices of the detections that no decided box on the same slice overlaps (IoU >= ``DECIDED_IOU``)."""
    out = set()
    for z, *box in detections:
        same = decided[np.rint(decided[:, 0]) == np.rint(z)][:, 1:]
        if not len(same) or box_iou_np(np.asarray([box]), same).max() < DECIDED_IOU:
            out.add(int(np.rint(z)))
    return sorted(out)


def _same_source(detections: Any, reviewed: Any) -> bool:
    """Whether a detections layer was found on the image that ``reviewed`` reviews: the same fingerprint, else (a
    layer made before fingerprints) the same image name."""
    det, rev = lidnet_info(detections), lidnet_info(reviewed)
    if det.get("source_key") and rev.get("source_key"):
        return det["source_key"] == rev["source_key"]
    return bool(det.get("source_layer")) and det.get("source_layer") == rev.get("source_layer")


def review_decisions(reviewed: Any, image: Any, layers: Sequence[Any]) -> tuple[np.ndarray, list[int]]:
    """(the boxes the reader rejected, as (N, 5) ``slice, x1, y1, x2, y2`` in ``image``'s pixels; the slices of
    ``image`` that hold a box of the reviewed boxes layer (the detector's, or the scan's own annotations), among
    ``layers``, that is neither kept nor rejected). Nothing for a layer that is not a navigator's reviewed layer."""
    none = np.zeros((0, 5), np.float32)
    if role(reviewed) != REVIEWED:
        return none, []
    shape = tuple(image.data.shape)
    rejected = _stored_boxes(reviewed, image, "rejected")
    rejected = rejected[centres_inside(rejected, shape)]  # another image's, where several share the layer
    name = lidnet_info(reviewed).get("boxes_layer")
    same = [ly for ly in layers if role(ly) in REVIEWABLE and _same_source(ly, reviewed)]
    last = [ly for ly in same if ly.name == name]
    if last or not name:  # the boxes layer reviewed last, else (a review that did not record it) every one
        detections = np.concatenate([none, *(_layer_boxes(ly, image) for ly in last or same)])
    else:  # that layer is gone (or renamed): its boxes as they stood at the last decision
        detections = _stored_boxes(reviewed, image, "pending")
    detections = detections[centres_inside(detections, shape)]
    decided = np.concatenate([rejected, _stored_boxes(reviewed, image, "kept", slice_at=9),
                              _layer_boxes(reviewed, image)])  # fmt: skip
    return rejected, _undecided(detections, decided)
