"""napari's File > Save Selected Layers for CT: an image in HU as a NIfTI file with its voxel size and patient
geometry (napari's own TIFF writer keeps neither: it reopened at 1 px), a box layer as the lesion-box table (CSV or
JSON, sides in mm, scores kept) that the Denoise dock exports. Never over an existing file."""

from __future__ import annotations

from typing import Any

import numpy as np


def write_ct_nifti(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """An image layer (``data`` in HU, napari's ``attributes``: scale, translate, metadata, name) as NIfTI."""
    from .io.nifti import write_nifti
    from .layer_data import volume_from_layer

    meta = dict(attributes.get("metadata") or {})
    if not meta.get("hu"):
        raise ValueError(f"{attributes.get('name', 'this layer')}: not CT in HU (save it with napari's writers)")
    hu = np.asarray(data[0] if attributes.get("multiscale") else data, np.float32)
    volume = volume_from_layer(hu, tuple(attributes["scale"]), tuple(attributes["translate"]), meta,
                               str(attributes.get("name", "")))  # fmt: skip
    made_by = (meta.get("lidnet") or {}).get("denoiser")
    return [str(write_nifti(path, volume, denoised=bool(made_by), note=f"LIDnet {made_by}" if made_by else ""))]


def write_boxes(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A box layer as ``slice, x1, y1, x2, y2, score`` rows (pixels) with sides in mm (CSV, or JSON by its name)."""
    from .io.boxes_io import write_boxes_csv
    from .layer_data import shapes_to_boxes

    boxes = shapes_to_boxes(list(data))
    features = attributes.get("features")
    scores = np.full(len(boxes), np.nan)
    if features is not None and "score" in features and len(features) == len(boxes):
        scores = np.asarray(features["score"], float)
    scale = tuple(float(s) for s in attributes.get("scale", (1.0, 1.0)))
    known = any(s != 1.0 for s in scale) and not (attributes.get("metadata") or {}).get("spacing_assumed")
    rows = np.column_stack([boxes, scores]) if len(boxes) else np.zeros((0, 6))
    about = {"layer": attributes.get("name"), "saved_with": "napari File > Save Selected Layers"}
    return [str(write_boxes_csv(path, rows, pixel_mm=scale[-2:] if known else None, about=about))]
