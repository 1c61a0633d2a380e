"""LIDnet's losses for the denoiser D, given a frozen lesion detector T.

    L_D = pixel(D(x_low), x_full) + a * det(T(D(x_low)), boxes) + b * roi_perceptual(T, D(x_low), x_full, boxes)

The ROI perceptual term compares T's backbone features of the denoised and full-dose images only inside lesion boxes
(widened by a context margin), ROI-aligned to a fixed grid at each chosen feature level. The whole-image perceptual
loss (the plain variant the paper argues against) is kept for the ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_lidnet.models.roi_align import roi_align


def pixel_loss(denoised: torch.Tensor, full: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """MSE or L1 between denoised and full-dose images (network scale)."""
    if kind == "mse":
        return F.mse_loss(denoised, full)
    if kind == "l1":
        return F.l1_loss(denoised, full)
    raise ValueError(f"unknown pixel loss {kind!r}; use 'mse' or 'l1'")


def widen_boxes(boxes: torch.Tensor, margin: float, size: tuple[int, int]) -> torch.Tensor:
    """Boxes grown by ``margin`` times their size on every side, clipped to the image (h, w)."""
    w = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0)
    h = (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    grown = boxes + torch.stack([-w, -h, w, h], 1) * margin
    limit = boxes.new_tensor([size[1], size[0], size[1], size[0]])
    return torch.minimum(grown.clamp(min=0.0), limit)


def rois_from_boxes(boxes: list[torch.Tensor]) -> torch.Tensor:
    """Per-image box lists -> (K, 5) ``[batch_index, x1, y1, x2, y2]``."""
    rows = [torch.cat([b.new_full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes) if len(b)]
    if not rows:
        return torch.zeros((0, 5))
    return torch.cat(rows, 0)


def relative_feature_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean squared feature difference over the reference features' mean energy: scale-free, 0 when equal."""
    return F.mse_loss(a, b) / (b.pow(2).mean() + eps)


def roi_perceptual_loss(
    detector: torch.nn.Module,
    denoised: torch.Tensor,
    full: torch.Tensor,
    boxes: list[torch.Tensor],
    margin: float = 0.25,
    levels: tuple[int, ...] = (0, 1),
    output_size: int = 7,
) -> torch.Tensor:
    """Relative squared distance of detector features inside (widened) lesion boxes, averaged over levels.

    Returns a zero that still carries a graph when the batch has no lesions.
    """
    size = tuple(denoised.shape[-2:])
    rois = rois_from_boxes([widen_boxes(b, margin, size) for b in boxes]).to(denoised.device)
    if len(rois) == 0:
        return denoised.sum() * 0.0
    feats_d = detector.features(denoised)
    with torch.no_grad():
        feats_f = detector.features(full)
    total = denoised.new_zeros(())
    for level in levels:
        scale = 1.0 / detector.feature_strides[level]
        a = roi_align(feats_d[level], rois, scale, (output_size, output_size))
        b = roi_align(feats_f[level], rois, scale, (output_size, output_size))
        total = total + relative_feature_distance(a, b)
    return total / len(levels)


def whole_image_perceptual_loss(
    detector: torch.nn.Module, denoised: torch.Tensor, full: torch.Tensor, levels: tuple[int, ...] = (0, 1)
) -> torch.Tensor:
    """Plain perceptual loss: the same detector features compared over the whole image (ablation)."""
    feats_d = detector.features(denoised)
    with torch.no_grad():
        feats_f = detector.features(full)
    return sum(relative_feature_distance(feats_d[lv], feats_f[lv]) for lv in levels) / len(levels)


def detection_loss(detector: torch.nn.Module, images: torch.Tensor, boxes: list[torch.Tensor]) -> torch.Tensor:
    """The detector's own training loss on ``images`` (gradients flow to the images)."""
    return detector.loss(detector(images), boxes)["total"]
