"""LIDnet's losses for the denoiser D, given a frozen lesion detector T.

    L_D = pixel(D(x_low), x_full) + a * det(T(D(x_low)), boxes) + b * roi_perceptual(T, D(x_low), x_full, boxes)

The ROI perceptual term is ``models.roi_perceptual`` (the one definition ROI compare shows too): T's backbone
features of the denoised and full-dose images compared only inside (widened) lesion boxes. The whole-image
perceptual loss (the plain variant the paper argues against) is kept for the ablation.

Every term is a mean over the images of the batch of a per-image value, so under DDP (equal shares per process,
gradients averaged) a step equals the single-process step over the same global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from napari_lidnet.metrics.image import METRIC_WINDOW
from napari_lidnet.models.normalize import HU_SCALE
from napari_lidnet.models.roi_perceptual import ROI_LEVELS, ROI_MARGIN, roi_distances, rois_from_boxes, widen_boxes

__all__ = [
    "detection_loss",
    "PIXEL_LOSSES",
    "pixel_loss",
    "relative_feature_distance",
    "roi_perceptual_loss",
    "rois_from_boxes",
    "whole_image_perceptual_loss",
    "widen_boxes",
]


#: "tissue" pixel loss: weight of the pixels whose target lies in the soft-tissue window, relative to the rest
TISSUE_WEIGHT = 4.0
PIXEL_LOSSES = ("mse", "l1", "tissue")


def pixel_loss(denoised: torch.Tensor, full: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """MSE or L1 between denoised and full-dose images (network scale); ``"tissue"``: MSE with the pixels whose
    target lies in the soft-tissue window (``METRIC_WINDOW``, where noise is read and PSNR/SSIM are measured)
    weighted ``TISSUE_WEIGHT`` times the rest (bone, air, lung), normalised by the weights per image."""
    if kind == "mse":
        return F.mse_loss(denoised, full)
    if kind == "l1":
        return F.l1_loss(denoised, full)
    if kind == "tissue":
        lo, hi = (v / HU_SCALE for v in METRIC_WINDOW)
        weight = 1.0 + (TISSUE_WEIGHT - 1.0) * ((full >= lo) & (full <= hi)).to(full.dtype)
        return ((weight * (denoised - full).pow(2)).flatten(1).sum(1) / weight.flatten(1).sum(1)).mean()
    raise ValueError(f"unknown pixel loss {kind!r}; use one of {', '.join(PIXEL_LOSSES)}")


def relative_feature_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image (first axis): mean squared feature difference over the reference's mean energy (0 when equal)."""
    a, b = a.flatten(1), b.flatten(1)
    return (a - b).pow(2).mean(1) / (b.pow(2).mean(1) + eps)


def roi_perceptual_loss(
    detector: torch.nn.Module,
    denoised: torch.Tensor,
    full: torch.Tensor,
    boxes: Sequence[torch.Tensor],
    margin: float = ROI_MARGIN,
    levels: Sequence[int] = ROI_LEVELS,
) -> torch.Tensor:
    """Sum of the ROI perceptual distances (``models.roi_perceptual.roi_distances``) of every lesion box of the
    batch, over the number of images. A zero that still carries a graph when the batch has no lesion."""
    d = roi_distances(detector, denoised, full, boxes, margin, tuple(levels))
    if len(d) == 0:
        return denoised.sum() * 0.0
    return d.sum() / len(denoised)


def whole_image_perceptual_loss(
    detector: torch.nn.Module, denoised: torch.Tensor, full: torch.Tensor, levels: Sequence[int] = ROI_LEVELS
) -> torch.Tensor:
    """Plain perceptual loss (ablation): the same relative feature distance over the whole image, per image, at the
    same levels, averaged over the images."""
    feats_d = detector.features(denoised)
    with torch.no_grad():
        feats_f = detector.features(full)
    per_image = sum(relative_feature_distance(feats_d[lv].float(), feats_f[lv].float()) for lv in levels)
    return (per_image / len(levels)).mean()


def detection_loss(detector: torch.nn.Module, images: torch.Tensor, boxes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The detector's own training loss on each image (normalised by that image's lesions), averaged over the
    images; gradients flow to the images."""
    out = detector(images)
    per_image = [
        detector.loss({k: v[i : i + 1] for k, v in out.items()}, [boxes[i]])["total"] for i in range(len(images))
    ]
    return torch.stack(per_image).mean()
