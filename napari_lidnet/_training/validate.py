"""Validation of a denoiser and a detector on full slices: PSNR/SSIM against full dose, FROC sensitivity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from napari_lidnet.inference import denoise, detect
from napari_lidnet.metrics.froc import detections_per_slice, froc
from napari_lidnet.metrics.image import METRIC_WINDOW, slice_quality


def _stack(slices: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """One (z, y, x) array when the slices share a size, else the list as it is."""
    return np.stack(slices) if len({a.shape for a in slices}) == 1 else list(slices)


def stack_samples(samples: list) -> tuple[Any, Any, list[np.ndarray]]:
    """(low-dose slices, full-dose slices, ground-truth boxes (N, 4) per slice) of dataset samples; slices are a
    (z, y, x) array, or a list of (y, x) arrays when their sizes differ."""
    low = _stack([s.low_hu for s in samples])
    full = _stack([s.full_hu for s in samples])
    return low, full, [np.asarray(s.boxes).reshape(-1, 4) for s in samples]


def by_size(images: Any, run: Callable[[np.ndarray], np.ndarray]) -> list[np.ndarray]:
    """``run`` over each group of same-size slices (a (k, y, x) stack); per-slice results in the input order."""
    if isinstance(images, np.ndarray):
        return list(run(images))
    out: list[Any] = [None] * len(images)
    for shape in {a.shape for a in images}:
        idx = [i for i, a in enumerate(images) if a.shape == shape]
        for i, res in zip(idx, run(np.stack([images[i] for i in idx]))):
            out[i] = res
    return out


def detect_rows(
    detector: torch.nn.Module, images: Any, device: Any, pixel_mm: Sequence[float] | None = None
) -> np.ndarray:
    """Detections of every slice as (N, 6) rows, slice column = position in ``images``; ``pixel_mm``: each slice's
    pixel size, for a detector that runs at its own (``detect_mm``)."""
    sizes = [None] * len(images) if pixel_mm is None else [float(v) for v in pixel_mm]
    if isinstance(images, np.ndarray) and len(set(sizes)) == 1:
        mm = None if sizes[0] is None else (sizes[0], sizes[0])
        return detect(detector, images, device=device, score_threshold=0.01, pixel_mm=mm)
    rows = []
    for shape, size in {(a.shape, mm) for a, mm in zip(images, sizes)}:
        idx = np.array([i for i, (a, mm) in enumerate(zip(images, sizes)) if a.shape == shape and mm == size])
        r = detect(detector, np.stack([images[i] for i in idx]), device=device, score_threshold=0.01,
                   pixel_mm=None if size is None else (size, size))  # fmt: skip
        r[:, 0] = idx[r[:, 0].astype(int)]
        rows.append(r)
    return np.vstack(rows)


def evaluate_images(
    images: Any,
    full: Any,
    gt_boxes: list[np.ndarray],
    detector: torch.nn.Module | None,
    device: torch.device | str = "cpu",
    threshold: float | None = None,
) -> dict[str, float]:
    """Quality of ``images`` (z, y, x HU, or a list of slices of several sizes) against ``full``, and the
    detector's FROC on ``images``; with ``threshold`` (the detector's default), also its operating point there:
    ``fp_per_slice`` (false boxes per slice) and ``sens_at_threshold``."""
    result = slice_quality(images, full, window=METRIC_WINDOW)
    if detector is not None and sum(len(b) for b in gt_boxes):
        rows = detect_rows(detector, images, device)
        fr = froc(detections_per_slice(rows, len(images)), gt_boxes)
        result["sensitivity"] = float(fr.mean_sensitivity)
        result.update({f"sens@{r:g}": float(s) for r, s in zip(fr.fp_rates, fr.sensitivities)})
        if threshold is not None:
            result["threshold"] = float(threshold)
            result["fp_per_slice"], result["sens_at_threshold"] = fr.at(threshold)
    return result


def evaluate_denoiser(
    denoiser: torch.nn.Module | None,
    detector: torch.nn.Module | None,
    stacked: tuple[np.ndarray, np.ndarray, list[np.ndarray]],
    device: torch.device | str = "cpu",
    threshold: float | None = None,
) -> dict[str, float]:
    """Denoise the low-dose slices of ``stacked`` (:func:`stack_samples`; kept as they are when ``denoiser`` is
    None) and evaluate them against its full-dose slices and boxes (``threshold``: :func:`evaluate_images`)."""
    low, full, gt = stacked
    images = low if denoiser is None else by_size(low, lambda x: denoise(denoiser, x, device=device))
    return evaluate_images(images, full, gt, detector, device, threshold)


def input_quality(stacked: tuple[Any, Any, list[np.ndarray]]) -> dict[str, float]:
    """What a denoiser must beat and whether the references can say it: the low-dose slices' own PSNR against the
    full-dose ones (no denoising), the full-dose slices' own noise SD in flat tissue (``noise_sd``) and the SD of
    the noise the low dose adds (low - full over the body)."""
    from napari_lidnet.metrics.noreference import noise_sd

    low, full, _ = stacked
    added = [float(np.std((a - b)[b > -500])) for a, b in zip(low, full) if (b > -500).any()]
    own = [noise_sd(b) for b in full[:8]]
    return {
        "psnr": slice_quality(low, full, window=METRIC_WINDOW)["psnr"],
        "reference_noise_hu": float(np.nanmedian(own)) if np.isfinite(own).any() else float("nan"),
        "added_noise_hu": float(np.median(added)) if added else float("nan"),
    }


def noisy_reference_note(quality: dict[str, float]) -> str:
    """A note when the full-dose references carry about as much noise as the low dose adds, or more ('' if not): a
    denoiser trained to match them learns to keep noise, and a PSNR against them rewards it."""
    own, added = quality.get("reference_noise_hu", np.nan), quality.get("added_noise_hu", np.nan)
    if not (np.isfinite(own) and np.isfinite(added)) or own < 0.8 * added:
        return ""
    than = "more than" if own > added else "about"
    return (f"the normal-dose images carry {own:.0f} HU of noise of their own, {than} the {added:.0f} HU the low "
            "dose adds: a denoiser trained to match them learns to keep noise, and PSNR "
            "against them rewards it; train on cleaner normal-dose scans, or adapt to the low-dose scans alone "
            "(self-supervised)")  # fmt: skip
