"""What a layer is to LIDnet, read from its metadata, and the short names of the layers the plugin adds.

Roles (``layer.metadata["lidnet_role"]``): ``detections`` (the detector's raw boxes), ``reviewed`` (boxes a reader
accepted, edited or drew in the lesion navigator), ``roi`` (regions made with ROI compare's "New ROI layer"),
``noise`` (the removed-noise image), ``calipers`` (measurements: lines labelled in mm), ``annotations`` (a scan's own
lesion boxes: the sample's ground truth, DeepLesion's). CT images in HU carry
``metadata["hu"] = True``; a simulated low-dose image names its normal-dose source in ``metadata["normal_dose"]``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from napari_lidnet.layer_data import ANNOTATIONS, ROLE, data_key

DETECTIONS, REVIEWED, ROI, NOISE, CALIPERS = "detections", "reviewed", "roi", "noise", "calipers"
#: Shapes roles that are not regions or lesion boxes a person drew: never picked for one on their own
NOT_DRAWN_BOXES = (DETECTIONS, CALIPERS)
#: Shapes roles offered as regions but not picked for them on their own (a scan's 16 annotations made 48 rows)
NOT_PICKED_REGIONS = (*NOT_DRAWN_BOXES, ANNOTATIONS)
#: longest base name kept whole in a derived layer's name (napari's layer list shows about 24 characters)
NAME_LIMIT = 20


def lidnet_info(layer: Any) -> dict[str, Any]:
    """What the plugin recorded on a layer it made (``metadata["lidnet"]``: source, models, run...), {} for others."""
    info = (getattr(layer, "metadata", None) or {}).get("lidnet")
    return info if isinstance(info, dict) else {}


def role(layer: Any) -> str:
    """The layer's LIDnet role, '' for a layer the user made (older detector layers count as detections)."""
    meta = getattr(layer, "metadata", None) or {}
    if meta.get(ROLE):
        return str(meta[ROLE])
    lid = lidnet_info(layer)
    return DETECTIONS if "detector" in lid and "denoiser" not in lid else ""


def is_shapes(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)


def grayscale_images(viewer: Any, ndims: tuple[int, ...] | None = (2, 3)) -> list[Any]:
    """The viewer's image layers a dock works on, in layer order: grayscale, one resolution (no pyramid), not the
    removed-noise overlay; of ``ndims`` dimensions (None: any, for a dock that explains why it refuses one)."""
    from napari.layers import Image

    return [ly for ly in viewer.layers if isinstance(ly, Image) and not ly.rgb and not ly.multiscale
            and role(ly) != NOISE and (ndims is None or ly.ndim in ndims)]  # fmt: skip


def current_slice(viewer: Any, layer: Any) -> int | None:
    """The index of ``layer``'s slice under the viewer's current point (clipped to the volume); None in 2D."""
    if layer.ndim < 3:
        return None
    z = float(np.asarray(layer.world_to_data(viewer.dims.point[-layer.ndim :]))[0])
    return int(np.clip(round(z), 0, layer.data.shape[0] - 1))


def slice_not_shown(viewer: Any, layer: Any) -> str | None:
    """Why the viewer shows no one axial slice of the volume ``layer`` (3D rendering, or a view whose plane holds
    the slice axis: sagittal or coronal), in words; None when it does (or ``layer`` is 2D)."""
    if layer.ndim < 3:
        return None
    if viewer.dims.ndisplay == 3:
        return "the view is 3D"
    if viewer.dims.ndim - layer.ndim in viewer.dims.displayed:
        return "the view shows the slices side on (sagittal or coronal)"
    return None


def is_ct_image(layer: Any) -> bool:
    """A grayscale image in HU (read, simulated or denoised by the plugin); not the removed-noise image."""
    from napari.layers import Image

    if not isinstance(layer, Image) or layer.rgb or role(layer) == NOISE:
        return False
    return bool((layer.metadata or {}).get("hu"))


def has_voxel_size(layer: Any) -> bool:
    """Whether the layer's scale is a voxel size in mm: a CT layer whose reader found its pixel size (not assumed:
    a DICOM without PixelSpacing, an array file), or an image someone gave a scale other than 1 (an image with
    neither is measured in its pixels, "px")."""
    if is_ct_image(layer):
        return not (getattr(layer, "metadata", None) or {}).get("spacing_assumed")
    return bool(np.any(np.asarray(getattr(layer, "scale", [1.0])) != 1.0))


def behind_proxy(obj: Any) -> Any:
    """The napari object behind a plugin's proxy (napari hands a dock a proxy of its viewer, and a new proxy of a
    layer at each access: neither ``id()`` nor a weak reference of the proxy lasts), else ``obj`` itself."""
    return getattr(obj, "__wrapped__", obj)


def pixel_mm(layer: Any) -> tuple[float, float] | None:
    """An image layer's in-plane pixel size (rows, columns) in mm; None when it has none (:func:`has_voxel_size`)."""
    if not has_voxel_size(layer):
        return None
    dy, dx = (abs(float(v)) for v in layer.scale[-2:])
    return (dy, dx) if dy > 0 and dx > 0 else None


def places_patient(layer: Any) -> bool:
    """Whether the layer's source places it in the patient (a DICOM geometry with an orientation): its positions are
    patient LPS mm, not the viewer's world."""
    meta = getattr(layer, "metadata", None) or {}
    known = not meta.get("spacing_assumed")  # positions on a made-up 1 mm pixel are not the patient's
    return meta.get("affine_lps") is not None and not meta.get("orientation_unknown") and known


def recorded_dose(layer: Any) -> float | None:
    """The dose fraction the layer's metadata records (1.0 normal dose; simulated and sample layers), else None."""
    dose = (getattr(layer, "metadata", None) or {}).get("dose")
    return float(dose) if isinstance(dose, (int, float)) and not isinstance(dose, bool) else None


def simulated_label(metadata: dict | None) -> str | None:
    """"SIMULATED 25% dose seed 3" for an image made by the viewer's low-dose simulation (or denoised from one,
    whose metadata it keeps), None for others: said first in what is exported from it, so that no one reads it as a
    scan of the patient at that dose."""
    dose = (metadata or {}).get("simulated_dose")
    if dose is None:
        return None
    return f"SIMULATED {float(dose):.0%} dose seed {(metadata or {}).get('simulated_seed', '?')}"


def is_denoised(layer: Any) -> bool:
    """Whether the layer is the plugin's denoised output (its metadata names the denoiser)."""
    return "denoiser" in lidnet_info(layer)


def is_reduced_dose(layer: Any) -> bool:
    """Whether the layer's metadata says it is not a normal-dose scan: a dose fraction below 1 (simulated or the
    sample's low dose), a recorded normal-dose source, or the plugin's denoised output."""
    dose = recorded_dose(layer)
    meta = getattr(layer, "metadata", None) or {}
    return (dose is not None and dose < 1.0) or bool(meta.get("normal_dose")) or is_denoised(layer)


def normal_dose_of(layer: Any, layers: Any) -> Any | None:
    """The normal-dose layer recorded in ``layer``'s metadata (simulated from it, or denoised from one that was):
    the image of the recorded fingerprint (``normal_dose_key``: another study's image of the same name is not it, a
    renamed one still is), else, where none was recorded, the image of the recorded name."""
    meta = getattr(layer, "metadata", None) or {}
    key, name = meta.get("normal_dose_key"), meta.get("normal_dose")
    from napari.layers import Image

    images = [ly for ly in layers if ly != layer and isinstance(ly, Image)]
    if key:  # CT layers of the key's shape only: a lazy overlay is not computed to fingerprint it
        shape = str(key).split(":")[0]
        same = [ly for ly in images if is_ct_image(ly) and "x".join(map(str, ly.data.shape)) == shape]
        return next((ly for ly in same if source_key(ly) == key), None)
    return next((ly for ly in images if name and ly.name == name), None)


def short_name(name: str, limit: int = NAME_LIMIT) -> str:
    """``name`` cut at a word boundary to at most ``limit`` characters (an ellipsis marks the cut); napari's " [1]"
    of a second layer of the same name is kept, so two studies' outputs keep apart."""
    if len(name) <= limit:
        return name
    match = re.search(r" \[\d+\]$", name)
    if match:
        return short_name(name[: match.start()], limit) + match.group()
    head = name[: limit - 1]
    if name[limit - 1] != " " and " " in head[limit // 2 :]:  # the cut would split a word: drop that word
        head = head.rsplit(" ", 1)[0]
    return head.rstrip(" -_(,") + "…"


def derived_name(source: str, tag: str) -> str:
    """Name of a layer made from ``source``: its short name plus a short ``tag`` ('25%', 'denoised', ...)."""
    return f"{short_name(source)} {tag}"


def pair_name(stem: str, kind: str) -> str:
    """The name a user gave a model pair: ``NAME`` for the files ``NAME_denoiser`` / ``NAME_detector``."""
    suffix = f"_{kind}"
    return stem[: -len(suffix)] if stem.endswith(suffix) and len(stem) > len(suffix) else stem


def model_item(name: str, kind: str, shipped: bool) -> str:
    """A model picker's entry: the pair name and where the model lives."""
    return f"{pair_name(name, kind)} ({'shipped' if shipped else 'user'})"


#: what a model picker adds to a model that its own check found worse than its start (``selection.worse_reason``)
WORSE_MARK = " - worse than its start by its own check"


def _model_label(info: Any, kind: str) -> str:
    """A model's picker entry; a model that its own check found worse than the model it started from says so
    (an adapted model's no-reference check, a trained one's validation score: ``metrics.selection.worse_reason``,
    from its card)."""
    from ..metrics.selection import worse_reason

    return model_item(info.name, kind, info.shipped) + (WORSE_MARK if worse_reason(info.card) is not None else "")


def fill_models(combo: Any, kind: str, before: list[tuple] = (), after: list[tuple] = (), fallback: int = 0) -> str:
    """Refill a model picker (a QComboBox): the ``(text, data)`` items ``before``, the registry's ``kind`` models
    (shipped first; data: the weights path), the items ``after``. The choice stays where it was (a model by its
    path, an item without data by its text), else goes to the default model, else to item ``fallback``. No signal
    is sent while it refills. Returns why the registry could not be listed, else ""."""
    from ..models.registry import default_model, list_models

    current = (combo.currentText(), combo.currentData()) if combo.count() else None
    problem, models, default = "", [], None
    try:
        models, default = list_models(kind), default_model(kind)
    except Exception as exc:  # a broken user folder must not break the dock
        problem = f"could not list {kind} models: {exc}"
    items = [*before, *((_model_label(m, kind), str(m.path)) for m in models), *after]
    combo.blockSignals(True)
    combo.clear()
    for text, data in items:
        combo.addItem(text, data)
    paths = [data for _, data in items]
    if current is not None and current[1] is not None and current[1] in paths:
        combo.setCurrentIndex(paths.index(current[1]))
    elif current is not None and current[1] is None and (None, current[0]) in [(d, t) for t, d in items]:
        combo.setCurrentIndex([(d, t) for t, d in items].index((None, current[0])))
    elif default is not None and str(default.path) in paths:
        combo.setCurrentIndex(paths.index(str(default.path)))
    else:
        combo.setCurrentIndex(fallback % max(len(items), 1))
    combo.blockSignals(False)
    return problem


def source_key(layer: Any) -> str:
    """A fingerprint of an image layer's data (``layer_data.data_key``): the plugin's outputs record it, so another
    image that took the same name is never taken for their source."""
    return data_key(layer.data)


def reviewed_of(layers: Any, image: Any) -> list[Any]:
    """The reviewed layers (Lesion navigator) that record ``image``'s fingerprint (:func:`source_key`) as source."""
    key = source_key(image)
    return [ly for ly in layers if role(ly) == REVIEWED and lidnet_info(ly).get("source_key") == key]
