"""LIDnet's ROI perceptual distance between an image and its reference inside a region (torch, imported lazily).

Distance = mean over backbone levels l of mean((A_l(x) - A_l(ref))^2), where A_l is the lesion detector's
feature map at stride s_l, ROI-aligned (``models.roi_align.roi_align``) over the region's bounding box to
``output_size`` x ``output_size`` cells. Inputs are HU; the network sees HU / 1000 (``models.normalize``).
Both images are cropped to the box plus ``context`` pixels (crop origin on a multiple of the coarsest stride, so
the feature grids stay aligned) to keep it fast on a CPU; features near the crop border see padding instead of
the rest of the slice, identically for image and reference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

_DEFAULT: dict[str, Any] = {}
_LOCK = threading.Lock()

NO_WEIGHTS = "no detector weights"


def _crop_window(box: tuple[float, float, float, float], shape: tuple[int, int], context: int, align: int):
    x1, y1, x2, y2 = box
    y0 = max(0, int(math.floor((y1 - context) / align)) * align)
    x0 = max(0, int(math.floor((x1 - context) / align)) * align)
    ye = min(shape[0], int(math.ceil(y2 + context)))
    xe = min(shape[1], int(math.ceil(x2 + context)))
    return y0, ye, x0, xe


def roi_perceptual_distance(
    image_hu: np.ndarray,
    reference_hu: np.ndarray,
    box: tuple[float, float, float, float],
    detector: Any,
    output_size: int = 7,
    context: int = 32,
) -> float:
    """ROI perceptual distance (see module docstring) of two (H, W) HU slices inside ``box``.

    Args:
        image_hu, reference_hu: same-shape 2D arrays in HU.
        box: (x1, y1, x2, y2) pixels, x2/y2 exclusive edges.
        detector: a ``LesionDetector`` (``features(x)``, ``feature_strides``); used in eval mode, no gradients.
        output_size: ROI-align cells per side.
        context: pixels of surrounding image kept around the box.
    """
    import torch

    from napari_lidnet.models.normalize import hu_to_net
    from napari_lidnet.models.roi_align import roi_align

    image_hu, reference_hu = np.asarray(image_hu, np.float32), np.asarray(reference_hu, np.float32)
    if image_hu.shape != reference_hu.shape or image_hu.ndim != 2:
        raise ValueError(f"need two 2D slices of one shape, got {image_hu.shape} and {reference_hu.shape}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty box {box}")
    strides = tuple(int(s) for s in detector.feature_strides)
    y0, ye, x0, xe = _crop_window((x1, y1, x2, y2), image_hu.shape, context, max(strides))
    batch = np.stack([image_hu[y0:ye, x0:xe], reference_hu[y0:ye, x0:xe]])[:, None]
    param = next(detector.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.from_numpy(hu_to_net(batch)).to(device)
    rois = torch.tensor(
        [[0, x1 - x0, y1 - y0, x2 - x0, y2 - y0], [1, x1 - x0, y1 - y0, x2 - x0, y2 - y0]],
        dtype=torch.float32,
        device=device,
    )
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            feats = detector.features(x)
            dists = []
            for f, s in zip(feats, strides, strict=True):
                a = roi_align(f.float(), rois, 1.0 / s, output_size)
                dists.append(torch.mean((a[0] - a[1]) ** 2))
    finally:
        detector.train(was_training)
    return float(torch.stack(dists).mean())


def default_detector() -> tuple[Any | None, str]:
    """The default detector of ``models.registry`` (shipped ``default_detector``, else the newest user detector),
    loaded once and cached, or (None, "no detector weights")."""
    with _LOCK:
        if "model" not in _DEFAULT:
            try:
                from napari_lidnet.models.registry import default_model, load_model

                info = default_model("detector")
                model = None if info is None else load_model(info.path, kind="detector")[0]
            except Exception as exc:  # weights file unreadable or architecture unknown
                model, note = None, f"{NO_WEIGHTS} ({exc})"
            else:
                note = "" if model is not None else NO_WEIGHTS
            _DEFAULT["model"], _DEFAULT["note"] = model, note
        return _DEFAULT["model"], _DEFAULT["note"]


def clear_cache() -> None:
    """Forget the cached default detector (after a new model was trained or installed)."""
    with _LOCK:
        _DEFAULT.clear()


def make_perceptual_fn(
    detector: Any | None = None,
) -> Callable[[np.ndarray, np.ndarray, tuple[float, float, float, float]], float]:
    """A ``perceptual(plane, ref_plane, box) -> float`` for ``metrics.roi.compare_regions``.

    With no detector it uses the shipped one; when there are no weights the function raises
    ``ValueError("no detector weights")``, which ``compare_regions`` turns into a note.
    """

    def fn(plane: np.ndarray, ref: np.ndarray, box: tuple[float, float, float, float]) -> float:
        model = detector
        if model is None:
            model, note = default_detector()
            if model is None:
                raise ValueError(note or NO_WEIGHTS)
        with _LOCK:  # one model, possibly shared by worker threads
            return roi_perceptual_distance(plane, ref, box, model)

    return fn
