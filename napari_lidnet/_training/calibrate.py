"""Detector score calibration: the threshold that means a chosen false-positive rate on lesion-free slices.

A detector's raw score depends on what it was trained on; a radiologist needs the default threshold to mean the
same thing on any scan ("about r false boxes per slice"). ``calibrate_detector`` runs the detector over the
lesion-free slices of a dataset (simulated negatives: ``lidnet simulate --negatives F``; never the evaluation
scans) as the widgets show them: the full-dose image, the low-dose image and, when a denoiser is given, the
denoised low-dose image. Every box there is a false positive; the threshold is the lowest score at which the pooled
images carry at most ``fp_per_image`` boxes on average (``metrics.froc.threshold_at_fp_rate``). The record it
returns (threshold, the rate per image type at that threshold, and the sensitivity on the dataset's lesion slices
there) goes into the detector's card as ``"calibration"``; ``models.weights.default_threshold`` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from napari_lidnet.inference import denoise
from napari_lidnet.metrics.froc import froc, threshold_at_fp_rate
from napari_lidnet.models.weights import FALLBACK_THRESHOLD

from .validate import by_size, detect_rows, detections_per_slice

DEFAULT_FP_PER_IMAGE = 0.5  # false boxes per lesion-free slice at the default threshold


def _per_slice(detector: torch.nn.Module, images: list[np.ndarray], device: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, scores) of every slice, kept from score 0.01."""
    if not images:
        return []
    return detections_per_slice(detect_rows(detector, images, device), len(images))


def _images(samples: Sequence[Any], denoiser: torch.nn.Module | None, device: Any) -> dict[str, list[np.ndarray]]:
    """The image types the widgets show: full dose, low dose and (with a denoiser) denoised low dose."""
    out = {"full dose": [s.full_hu for s in samples]}
    low = [s.low_hu for s in samples if s.low_hu is not None]
    if len(low) == len(samples) and low:
        out["low dose"] = low
        if denoiser is not None:
            out["denoised"] = by_size(low, lambda x: denoise(denoiser, x, device=device))
    return out


def calibrate_detector(
    detector: torch.nn.Module,
    samples: Sequence[Any],
    denoiser: torch.nn.Module | None = None,
    fp_per_image: float = DEFAULT_FP_PER_IMAGE,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Calibrate ``detector`` on dataset ``samples`` (``io.dataset.Sample``: full_hu, low_hu, boxes).

    Returns ``{"threshold", "fp_per_image", "n_negative_slices", "fp_per_image_by_type", "sensitivity_by_type",
    "n_lesions", "rule"}``; raises ValueError when the samples hold no lesion-free slice.
    """
    negatives = [s for s in samples if len(np.asarray(s.boxes).reshape(-1, 4)) == 0]
    positives = [s for s in samples if len(np.asarray(s.boxes).reshape(-1, 4)) > 0]
    if not negatives:
        raise ValueError("calibration needs lesion-free slices (simulate some with --negatives, e.g. 0.3)")
    neg = {k: _per_slice(detector, v, device) for k, v in _images(negatives, denoiser, device).items()}
    threshold = threshold_at_fp_rate([sc for found in neg.values() for _, sc in found], fp_per_image)
    fp_by_type = {k: float(np.mean([(sc >= threshold).sum() for _, sc in found])) for k, found in neg.items()}
    sens_by_type: dict[str, float] = {}
    for k, imgs in _images(positives, denoiser, device).items():
        found = [(b[sc >= threshold], sc[sc >= threshold]) for b, sc in _per_slice(detector, imgs, device)]
        fr = froc(found, [np.asarray(s.boxes).reshape(-1, 4) for s in positives], fp_rates=())
        sens_by_type[k] = float(fr.sensitivity[-1]) if fr.n_lesions else float("nan")
    return {
        "threshold": float(threshold),
        "fp_per_image": float(fp_per_image),
        "n_negative_slices": len(negatives),
        "fp_per_image_by_type": fp_by_type,
        "sensitivity_by_type": sens_by_type,
        "n_lesions": int(sum(len(np.asarray(s.boxes).reshape(-1, 4)) for s in positives)),
        "fallback_threshold": FALLBACK_THRESHOLD,
        "rule": "lowest score with at most fp_per_image boxes per lesion-free slice, pooled over the image types",
    }
