"""napari's File > Save for CT, under extensions of their own: an image in HU as ``.nii.gz``/``.nii`` with its
voxel size and patient geometry (napari's TIFF keeps neither: it reopens at 1 px), a box layer as
``.boxes.csv``, the lesion-box table the Denoise dock exports (sides in mm, scores). Never over an existing file.

Every other save stays napari's: a plain ``.csv``, ``.tif``, ``.png`` or a name without a suffix, Save All to a
folder, and the save dialog's default choice. npe2 offers writers in the order of its sort key, fewer layer-type
constraints first, so a writer with one constraint (``image``) comes before napari's when its plugin is indexed
first, and then answers every name without a suffix and is the dialog's preselected filter. The optional second
constraint in the manifest (``graph?``: no layer napari draws here) puts these writers after napari's own
(``tests/test_writers.py`` saves through both registration orders)."""

from __future__ import annotations

from typing import Any

import numpy as np

BOXES_SUFFIX = ".boxes.csv"
NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _one_layer(layer_data: list[tuple[Any, dict[str, Any], str]], kind: str) -> tuple[Any, dict[str, Any]]:
    """The data and attributes of the single ``kind`` layer being saved (ValueError for anything else)."""
    kinds = [layer_type for _, _, layer_type in layer_data]
    if kinds != [kind]:
        raise ValueError(f"LIDnet's {kind} writer saves one {kind} layer at a time, not {', '.join(kinds) or 'none'}")
    data, attributes, _ = layer_data[0]
    return data, attributes


def _named(path: str, suffixes: tuple[str, ...]) -> str:
    """``path`` with this writer's suffix (the save dialog hands over the name as typed: ``x`` or ``x.csv`` when the
    LIDnet filter was picked)."""
    if path.lower().endswith(suffixes):
        return path
    if suffixes == (BOXES_SUFFIX,) and path.lower().endswith(".csv"):
        path = path[: -len(".csv")]
    return path + suffixes[0]


def write_ct_nifti(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[str]:
    """A CT image layer (HU, as the plugin's reader and docks make them) as NIfTI with its geometry."""
    from .io.nifti import write_nifti
    from .layer_data import volume_from_layer

    data, attributes = _one_layer(layer_data, "image")
    meta = dict(attributes.get("metadata") or {})
    name = str(attributes.get("name") or "this layer")
    if not meta.get("hu") or attributes.get("rgb"):
        raise ValueError(f"{name}: not a CT image in HU (save it with napari's own writers: .tif)")
    hu = np.asarray(data[0] if attributes.get("multiscale") else data, np.float32)
    volume = volume_from_layer(hu, tuple(attributes["scale"]), tuple(attributes["translate"]), meta, name)
    made_by = (meta.get("lidnet") or {}).get("denoiser")
    out = write_nifti(_named(path, NIFTI_SUFFIXES), volume, denoised=bool(made_by),
                      note=f"LIDnet {made_by}" if made_by else "")  # fmt: skip
    return [str(out)]


def write_boxes(path: str, layer_data: list[tuple[Any, dict[str, Any], str]]) -> list[str]:
    """A layer of rectangles as ``slice, x1, y1, x2, y2, score`` rows (pixels), with sides in mm where the layer
    records its image's measured pixel size (the Denoise dock's boxes, a reader's annotations; not a drawn layer)."""
    from .io.boxes_io import write_boxes_csv
    from .layer_data import shapes_to_boxes

    data, attributes = _one_layer(layer_data, "shapes")
    others = sorted(set(attributes.get("shape_type") or []) - {"rectangle"})
    if others:
        raise ValueError(f"{attributes.get('name', 'this layer')}: a box table holds rectangles only, not "
                         f"{', '.join(others)} (save it with napari's own writer: .csv)")  # fmt: skip
    boxes = shapes_to_boxes(list(data))
    features = attributes.get("features")
    scores = np.full(len(boxes), np.nan)
    if features is not None and "score" in features and len(features) == len(boxes):
        scores = np.asarray(features["score"], float)
    pixel = ((attributes.get("metadata") or {}).get("lidnet") or {}).get("pixel_mm")  # measured, as its image says
    rows = np.column_stack([boxes, scores]) if len(boxes) else np.zeros((0, 6))
    about = {"layer": attributes.get("name"), "saved_with": "napari File > Save"}
    out = write_boxes_csv(_named(path, (BOXES_SUFFIX,)), rows, pixel_mm=pixel, about=about)
    return [str(out)]
