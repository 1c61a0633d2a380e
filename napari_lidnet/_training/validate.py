"""Validation of a denoiser and a detector on full slices: PSNR/SSIM against full dose, FROC sensitivity."""

from __future__ import annotations

import numpy as np
import torch

from napari_lidnet.inference import denoise, detect
from napari_lidnet.metrics.froc import froc
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr, ssim

#: HU window over which PSNR and SSIM are computed (abdominal soft tissue, data range 400 HU)


def detections_per_slice(rows: np.ndarray, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(N, 6) ``slice, x1, y1, x2, y2, score`` rows -> per-slice (boxes, scores) for FROC."""
    out = []
    for i in range(n):
        r = rows[rows[:, 0] == i]
        out.append((r[:, 1:5], r[:, 5]))
    return out


def stack_samples(samples: list) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(low-dose (z, y, x), full-dose (z, y, x), ground-truth boxes (N, 4) per slice) of dataset samples."""
    low = np.stack([s.low_hu for s in samples])
    full = np.stack([s.full_hu for s in samples])
    return low, full, [np.asarray(s.boxes).reshape(-1, 4) for s in samples]


def evaluate_images(
    images: np.ndarray,
    full: np.ndarray,
    gt_boxes: list[np.ndarray],
    detector: torch.nn.Module | None,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Quality of ``images`` (z, y, x HU) against ``full``, and the detector's FROC on ``images``."""
    result = {
        "psnr": float(np.mean([psnr(a, b, window=METRIC_WINDOW) for a, b in zip(images, full)])),
        "ssim": float(np.mean([ssim(a, b, window=METRIC_WINDOW) for a, b in zip(images, full)])),
    }
    if detector is not None and sum(len(b) for b in gt_boxes):
        rows = detect(detector, images, device=device, score_threshold=0.01)
        fr = froc(detections_per_slice(rows, len(images)), gt_boxes)
        result["sensitivity"] = float(fr.mean_sensitivity)
        result.update({f"sens@{r:g}": float(s) for r, s in zip(fr.fp_rates, fr.sensitivities)})
    return result


def evaluate_denoiser(
    denoiser: torch.nn.Module | None,
    detector: torch.nn.Module | None,
    stacked: tuple[np.ndarray, np.ndarray, list[np.ndarray]],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Denoise the low-dose slices of ``stacked`` (:func:`stack_samples`; kept as they are when ``denoiser`` is
    None) and evaluate them against its full-dose slices and boxes."""
    low, full, gt = stacked
    images = low if denoiser is None else denoise(denoiser, low, device=device)
    return evaluate_images(images, full, gt, detector, device)
