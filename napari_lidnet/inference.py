"""Denoising and detection on HU arrays, no Qt: slices or volumes in, HU and boxes out.

Every caller (widgets, command line, trainer validation, benchmarks) goes through these two functions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from napari_lidnet.models.normalize import hu_to_net, net_to_hu

Progress = Callable[[int, int], None]


def _as_stack(hu: np.ndarray) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or a 3D volume, got an array of shape {hu.shape}")
    return hu[None] if hu.ndim == 2 else hu


@torch.inference_mode()
def denoise(
    model: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    progress: Progress | None = None,
) -> np.ndarray:
    """Denoise a slice (y, x) or a volume (z, y, x) slice by slice; returns float32 HU of the same shape."""
    stack = _as_stack(hu)
    out = np.empty_like(stack)
    model = model.to(device).eval()
    for start in range(0, len(stack), batch_size):
        x = torch.from_numpy(hu_to_net(stack[start : start + batch_size]))[:, None].to(device)
        out[start : start + len(x)] = net_to_hu(model(x)[:, 0].float().cpu().numpy())
        if progress:
            progress(min(start + batch_size, len(stack)), len(stack))
    return out.reshape(np.shape(hu))


@torch.inference_mode()
def detect(
    detector: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.05,
    batch_size: int = 4,
    progress: Progress | None = None,
) -> np.ndarray:
    """Lesion boxes of a slice or volume as an (N, 6) array ``slice, x1, y1, x2, y2, score`` (pixels)."""
    stack = _as_stack(hu)
    detector = detector.to(device).eval()
    rows = []
    for start in range(0, len(stack), batch_size):
        x = torch.from_numpy(hu_to_net(stack[start : start + batch_size]))[:, None].to(device)
        for i, (boxes, scores) in enumerate(detector.detect(x, score_threshold=score_threshold)):
            if len(boxes):
                z = np.full((len(boxes), 1), start + i, np.float32)
                rows.append(
                    np.hstack([z, boxes.float().cpu().numpy(), scores.float().cpu().numpy()[:, None]])
                )
        if progress:
            progress(min(start + batch_size, len(stack)), len(stack))
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 6), np.float32)
