"""LIDnet's ROI perceptual distance: one definition for the training loss and for ROI compare (torch, lazily).

For one region, a pixel-edge box ``x1, y1, x2, y2`` (x2/y2 exclusive, docs/CONTRACTS.md), on an image x with
reference r::

    d(x, r, box) = mean over levels l in ROI_LEVELS of  mean((A_l(x) - A_l(r))^2) / (mean(A_l(r)^2) + eps)

A_l is the frozen lesion detector's backbone feature map at level l (stride s_l), ROI-aligned
(``models.roi_align.roi_align``) to ROI_OUTPUT x ROI_OUTPUT cells over the box widened by ROI_MARGIN times its size
on every side (clipped to the image). The distance is relative (scale-free; 0 when the features are equal).

- :func:`roi_distances`: the definition, batched (torch; gradients reach the image, not the reference);
- ``_training.losses.roi_perceptual_loss``: the sum of a batch's distances over the number of images;
- :func:`roi_perceptual_distance`: the same on two numpy HU slices and one box (the ROI compare column).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

_DEFAULT: dict[str, Any] = {}
_LOCK = threading.Lock()

NO_WEIGHTS = "no detector weights"
#: backbone levels compared (strides 4 and 8 of ``LesionDetector.feature_strides``)
ROI_LEVELS = (0, 1)
#: context around a box, as a fraction of its size on every side
ROI_MARGIN = 0.25
#: ROI-align cells per side
ROI_OUTPUT = 7
EPS = 1e-6


def widen_boxes(boxes: Any, margin: float, size: tuple[int, int]) -> Any:
    """(K, 4) boxes (torch) grown by ``margin`` times their size on every side, clipped to the image (h, w)."""
    import torch

    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    grown = boxes + torch.stack([-w, -h, w, h], 1) * margin
    limit = boxes.new_tensor([size[1], size[0], size[1], size[0]])
    return torch.minimum(grown.clamp(min=0.0), limit)


def rois_from_boxes(boxes: Sequence[Any]) -> Any:
    """Per-image box lists (torch) -> (K, 5) ``[batch_index, x1, y1, x2, y2]``."""
    import torch

    rows = [torch.cat([b.new_full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes) if len(b)]
    if not rows:
        return torch.zeros((0, 5))
    return torch.cat(rows, 0)


def roi_distances(
    detector: Any,
    images: Any,
    references: Any,
    boxes: Sequence[Any],
    margin: float = ROI_MARGIN,
    levels: Sequence[int] = ROI_LEVELS,
    output_size: int = ROI_OUTPUT,
) -> Any:
    """(K,) ROI perceptual distances (module docstring) of every box of ``boxes`` (one (N_i, 4) list per image)
    between ``images`` and ``references`` (B, 1, H, W) network scale. ``detector`` is used as it is (freeze it:
    eval mode); gradients flow to ``images`` only. An empty (0,) tensor when there is no box."""
    import torch

    from napari_lidnet.models.roi_align import roi_align

    size = tuple(images.shape[-2:])
    rois = rois_from_boxes([widen_boxes(b.to(images.device), margin, size) for b in boxes]).to(images.device)
    if len(rois) == 0:
        return images.new_zeros((0,))
    feats_x = detector.features(images)
    with torch.no_grad():
        feats_r = detector.features(references)
    total = images.new_zeros((len(rois),))
    for level in levels:
        scale = 1.0 / detector.feature_strides[level]
        a = roi_align(feats_x[level].float(), rois, scale, (output_size, output_size)).flatten(1)
        b = roi_align(feats_r[level].float(), rois, scale, (output_size, output_size)).flatten(1)
        total = total + (a - b).pow(2).mean(1) / (b.pow(2).mean(1) + EPS)
    return total / len(levels)


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
    context: int | None = 32,
) -> float:
    """:func:`roi_distances` of two (H, W) HU slices inside one pixel-edge ``box`` (x1, y1, x2, y2).

    For speed both slices are cropped to the widened box plus ``context`` pixels (crop origin on a multiple of the
    coarsest stride, so the feature grids stay aligned); ``context=None`` uses the whole slices. The widening is
    clipped to the slice, not to the crop. The detector runs in eval mode, without gradients; its mode is restored.
    """
    import torch

    from napari_lidnet.io.fov import air_filled
    from napari_lidnet.models.normalize import hu_to_net

    image_hu, reference_hu = np.asarray(image_hu, np.float32), np.asarray(reference_hu, np.float32)
    if image_hu.shape != reference_hu.shape or image_hu.ndim != 2:
        raise ValueError(f"need two 2D slices of one shape, got {image_hu.shape} and {reference_hu.shape}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"empty box {box}")
    wide = widen_boxes(torch.tensor([[x1, y1, x2, y2]]), ROI_MARGIN, image_hu.shape)[0].tolist()
    y0, ye, x0, xe = 0, image_hu.shape[0], 0, image_hu.shape[1]
    if context is not None:
        y0, ye, x0, xe = _crop_window(wide, image_hu.shape, context, max(int(s) for s in detector.feature_strides))
    param = next(detector.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    crops = [air_filled(a)[y0:ye, x0:xe] for a in (image_hu, reference_hu)]  # padding: air, as in inference
    batch = torch.from_numpy(hu_to_net(np.stack(crops)[:, None]))
    x, ref = batch[:1].to(device), batch[1:].to(device)
    # the box in crop coordinates, widened already: margin 0 below (the same region as on the whole slice)
    shifted = torch.tensor([[wide[0] - x0, wide[1] - y0, wide[2] - x0, wide[3] - y0]], device=device)
    was_training = detector.training
    detector.eval()
    try:
        with torch.no_grad():
            return float(roi_distances(detector, x, ref, [shifted], margin=0.0)[0])
    finally:
        detector.train(was_training)


def default_detector() -> tuple[Any | None, str]:
    """The default detector of ``models.registry`` (shipped ``default_detector``, else the newest user detector), or
    (None, "no detector weights"). Loaded once per weights file: a newer default (a fine-tune saved one) or a
    rewritten file is loaded when it appears."""
    from napari_lidnet.models.registry import default_model, load_model
    from napari_lidnet.models.weights import weight_paths

    with _LOCK:
        try:
            info = default_model("detector")
            w_path = None if info is None else weight_paths(info.path)[0]
            key = None if w_path is None else (str(w_path), w_path.stat().st_mtime_ns)
            if "model" not in _DEFAULT or _DEFAULT.get("key") != key:
                model = None if info is None else load_model(info.path, kind="detector")[0]
                _DEFAULT.update(key=key, model=model, note="" if model is not None else NO_WEIGHTS)
        except Exception as exc:  # weights file unreadable or architecture unknown: said, and tried again next time
            _DEFAULT.clear()
            return None, f"{NO_WEIGHTS} ({exc})"
        return _DEFAULT["model"], _DEFAULT["note"]


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
