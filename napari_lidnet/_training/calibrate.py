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
from napari_lidnet.metrics.froc import detections_per_slice, fp_rate_at, froc, threshold_at_fp_rate
from napari_lidnet.models.weights import FALLBACK_THRESHOLD

from .validate import by_size, detect_rows

DEFAULT_FP_PER_IMAGE = 0.5  # false boxes per lesion-free slice at the default threshold
MIN_SITE_SLICES = 8  # fewest slices of a site's own scans that ``calibrate_on_scans`` takes


def _per_slice(
    detector: torch.nn.Module, images: list[np.ndarray], device: Any, pixel_mm: Sequence[float] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(boxes, scores) of every slice, kept from score 0.01 (``pixel_mm``: each slice's pixel size)."""
    if not images:
        return []
    return detections_per_slice(detect_rows(detector, images, device, pixel_mm), len(images))


def _images(samples: Sequence[Any], denoiser: torch.nn.Module | None, device: Any) -> dict[str, list[np.ndarray]]:
    """The image types the widgets show: full dose, low dose and (with a denoiser) denoised low dose."""
    out = {"full dose": [s.full_hu for s in samples]}
    low = [s.low_hu for s in samples if s.low_hu is not None]
    if len(low) == len(samples) and low:
        out["low dose"] = low
        if denoiser is not None:
            out["denoised"] = by_size(low, lambda x: denoise(denoiser, x, device=device))
    return out


def _threshold_record(
    neg: dict[str, list[tuple[np.ndarray, np.ndarray]]], fp_per_image: float, threshold: float | None = None
) -> dict[str, Any]:
    """The threshold pooled over the image types of lesion-free slices (or the one given), and the rate per type
    there."""
    if threshold is None:
        threshold = threshold_at_fp_rate([sc for found in neg.values() for _, sc in found], fp_per_image)
    return {
        "threshold": float(threshold),
        "fp_per_image": float(fp_per_image),
        "n_negative_slices": len(next(iter(neg.values()), [])),
        "fp_per_image_by_type": {k: fp_rate_at([sc for _, sc in f], threshold) for k, f in neg.items()},
    }


def _negative_detections(detector: torch.nn.Module, samples: Sequence[Any], denoiser: Any, device: Any) -> dict:
    """Detections on the lesion-free slices of ``samples``, per image type; ValueError when there are none."""
    negatives = [s for s in samples if len(np.asarray(s.boxes).reshape(-1, 4)) == 0]
    if not negatives:
        raise ValueError("calibration needs lesion-free slices (simulate some with --negatives, e.g. 0.3)")
    mm = [s.spacing_mm for s in negatives]
    return {k: _per_slice(detector, v, device, mm) for k, v in _images(negatives, denoiser, device).items()}


def calibrate_detector(
    detector: torch.nn.Module,
    samples: Sequence[Any],
    denoiser: torch.nn.Module | None = None,
    fp_per_image: float = DEFAULT_FP_PER_IMAGE,
    device: torch.device | str = "cpu",
    threshold: float | None = None,
    also: Sequence[Sequence[Any]] = (),
) -> dict[str, Any]:
    """Calibrate ``detector`` on dataset ``samples`` (``io.dataset.Sample``: full_hu, low_hu, boxes).

    Returns ``{"threshold", "fp_per_image", "n_negative_slices", "fp_per_image_by_type", "sensitivity_by_type",
    "n_lesions", "rule"}``; raises ValueError when the samples hold no lesion-free slice. With ``threshold`` the
    record measures that threshold (rates and sensitivities there) instead of choosing one. ``also``: more sets of
    lesion-free slices (real normal-dose scans beside simulated ones, say): the threshold then holds on every set,
    each pooled over its image types, and ``"sets"`` gives each set's rates there and the threshold it alone would
    have set (``"own_threshold"``), ``samples`` first.
    """
    negs = [_negative_detections(detector, x, denoiser, device) for x in (samples, *also)]
    own = [_threshold_record(n, fp_per_image)["threshold"] for n in negs]
    record = _threshold_record(negs[0], fp_per_image, max(own) if threshold is None else threshold)
    threshold = record["threshold"]
    positives = [s for s in samples if len(np.asarray(s.boxes).reshape(-1, 4)) > 0]
    sens_by_type: dict[str, float] = {}
    mm = [s.spacing_mm for s in positives]
    for k, imgs in _images(positives, denoiser, device).items():
        found = [(b[sc >= threshold], sc[sc >= threshold]) for b, sc in _per_slice(detector, imgs, device, mm)]
        fr = froc(found, [np.asarray(s.boxes).reshape(-1, 4) for s in positives], fp_rates=())
        sens_by_type[k] = float(fr.sensitivity[-1]) if fr.n_lesions else float("nan")
    rule = "lowest score with at most fp_per_image boxes per lesion-free slice, pooled over the image types"
    if also:
        record["sets"] = [{**_threshold_record(n, fp_per_image, threshold), "own_threshold": t}
                          for n, t in zip(negs, own, strict=True)]  # fmt: skip
        rule += ", in every set"
    return {
        **record,
        "sensitivity_by_type": sens_by_type,
        "n_lesions": int(sum(len(np.asarray(s.boxes).reshape(-1, 4)) for s in positives)),
        "fallback_threshold": FALLBACK_THRESHOLD,
        "rule": rule,
    }


def calibrate_on_scans(
    detector: torch.nn.Module,
    slices: Sequence[np.ndarray],
    denoiser: torch.nn.Module | None = None,
    fp_per_image: float = DEFAULT_FP_PER_IMAGE,
    device: torch.device | str = "cpu",
    previous: float | None = None,
    pixel_mm: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Calibrate ``detector`` on a site's own lesion-free slices (HU, 2D; ``pixel_mm``: each one's pixel size), as
    given and (with ``denoiser``) denoised.

    A threshold learned on simulated anatomy does not transfer to a real scanner's anatomy (README, real anatomy);
    normal scans of the site do. Every box on them counts as a false positive, so slices with lesions only make the
    threshold stricter. With ``previous`` (the threshold in use) the record also gives the boxes per slice it drew
    there. Raises ValueError for fewer than ``MIN_SITE_SLICES`` slices.
    """
    if len(slices) < MIN_SITE_SLICES:
        raise ValueError(f"calibration needs at least {MIN_SITE_SLICES} lesion-free slices, got {len(slices)}")
    images = {"as given": list(slices)}
    if denoiser is not None:
        images["denoised"] = by_size(images["as given"], lambda x: denoise(denoiser, x, device=device))
    neg = {k: _per_slice(detector, v, device, pixel_mm) for k, v in images.items()}
    record = _threshold_record(neg, fp_per_image)
    if previous is not None:
        record["fp_per_image_at_previous"] = fp_rate_at([sc for f in neg.values() for _, sc in f], previous)
        record["previous_threshold"] = float(previous)
    return {**record, "fallback_threshold": FALLBACK_THRESHOLD, "rule": "lowest score with at most fp_per_image "
            "boxes per slice of the site's lesion-free scans, pooled over the image types"}  # fmt: skip
