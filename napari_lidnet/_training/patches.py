"""Random training patches from a dataset folder, biased towards lesions, with their boxes cropped along."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_lidnet.models.normalize import hu_to_net


@dataclass
class PatchBatch:
    """A batch at network scale: low-dose input, full-dose target, lesion boxes per patch (pixels, patch frame)."""

    low: torch.Tensor
    full: torch.Tensor
    boxes: list[torch.Tensor]

    def shard(self, rank: int, world_size: int) -> PatchBatch:
        """The ``rank``-th of ``world_size`` equal slices of the batch (itself when world_size is 1)."""
        if world_size == 1:
            return self
        n = len(self.low) // world_size
        part = slice(rank * n, (rank + 1) * n)
        return PatchBatch(self.low[part], self.full[part], self.boxes[part])

    def to(self, device: torch.device | str) -> PatchBatch:
        return PatchBatch(self.low.to(device), self.full.to(device), [b.to(device) for b in self.boxes])


def crop_boxes(boxes: np.ndarray, x0: int, y0: int, size: int, min_visible: float = 0.6) -> np.ndarray:
    """Boxes shifted into a crop at (x0, y0); kept if at least ``min_visible`` of their area lies inside."""
    if len(boxes) == 0:
        return np.zeros((0, 4), np.float32)
    b = boxes.astype(np.float32) - np.array([x0, y0, x0, y0], np.float32)
    clipped = np.clip(b, 0, size)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = inside >= min_visible * np.maximum(area, 1e-6)
    return clipped[keep]


class PatchSampler:
    """Draws seeded random patches; with probability ``lesion_fraction`` a patch is centred near a lesion."""

    def __init__(self, samples: list, patch_size: int, seed: int = 0, lesion_fraction: float = 0.7) -> None:
        if not samples:
            raise ValueError("no training slices: the dataset is empty")
        small = [s.name for s in samples if min(s.full_hu.shape) < patch_size]
        if small:
            raise ValueError(f"patch size {patch_size} is larger than slice(s) {small[:3]}")
        self.samples = samples
        self.patch_size = patch_size
        self.lesion_fraction = lesion_fraction
        self.rng = np.random.default_rng(seed)
        self.with_lesions = [i for i, s in enumerate(samples) if len(s.boxes)]

    def _corner(self, shape: tuple[int, int], boxes: np.ndarray, around_lesion: bool) -> tuple[int, int]:
        h, w = shape
        p = self.patch_size
        if around_lesion and len(boxes):
            x1, y1, x2, y2 = boxes[self.rng.integers(len(boxes))]
            cx = (x1 + x2) / 2 + self.rng.uniform(-0.3, 0.3) * p
            cy = (y1 + y2) / 2 + self.rng.uniform(-0.3, 0.3) * p
            x0, y0 = int(round(cx - p / 2)), int(round(cy - p / 2))
        else:
            x0, y0 = int(self.rng.integers(0, w - p + 1)), int(self.rng.integers(0, h - p + 1))
        return int(np.clip(y0, 0, h - p)), int(np.clip(x0, 0, w - p))

    def batch(self, batch_size: int) -> PatchBatch:
        """One batch of ``batch_size`` patches (random flips keep boxes consistent)."""
        p = self.patch_size
        lows, fulls, boxes = [], [], []
        for _ in range(batch_size):
            around = bool(self.with_lesions) and self.rng.random() < self.lesion_fraction
            idx = self.rng.choice(self.with_lesions) if around else self.rng.integers(len(self.samples))
            s = self.samples[idx]
            y0, x0 = self._corner(s.full_hu.shape, s.boxes, around)
            low = s.low_hu[y0 : y0 + p, x0 : x0 + p]
            full = s.full_hu[y0 : y0 + p, x0 : x0 + p]
            b = crop_boxes(np.asarray(s.boxes).reshape(-1, 4), x0, y0, p)
            if self.rng.random() < 0.5:  # horizontal flip
                low, full = low[:, ::-1], full[:, ::-1]
                b = np.stack([p - b[:, 2], b[:, 1], p - b[:, 0], b[:, 3]], 1) if len(b) else b
            lows.append(hu_to_net(np.ascontiguousarray(low, dtype=np.float32)))
            fulls.append(hu_to_net(np.ascontiguousarray(full, dtype=np.float32)))
            boxes.append(torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4))
        return PatchBatch(torch.from_numpy(np.stack(lows))[:, None], torch.from_numpy(np.stack(fulls))[:, None], boxes)
