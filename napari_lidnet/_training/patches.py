"""Random training patches from a dataset folder, biased towards lesions, with their boxes cropped along."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_lidnet.io.fov import air_filled
from napari_lidnet.io.reader_workers import end_with_parent
from napari_lidnet.models.normalize import hu_to_net
from napari_lidnet.sim.insert import insert_lesions, lung_mask


@dataclass
class PatchBatch:
    """A batch at network scale: low-dose input, full-dose target, lesion boxes per patch (pixels, patch frame)."""

    low: torch.Tensor
    full: torch.Tensor
    boxes: list[torch.Tensor]

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


def check_patch_settings(slices: list, patch_size: int, batch_size: int, world_size: int = 1) -> None:
    """Raise ValueError when ``slices`` cannot give batches of ``batch_size`` patches of ``patch_size`` over
    ``world_size`` processes (slice sizes from ``.shape``: no pixel is read)."""
    if not slices:
        raise ValueError("no training slices: the dataset is empty")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split over {world_size} processes")
    small = [s.name for s in slices if min(s.shape) < patch_size]
    if small:
        raise ValueError(f"patch size {patch_size} is larger than slice(s) {', '.join(small[:3])}")


class PatchDataset(torch.utils.data.Dataset):
    """Item ``i``: a random patch of slice ``i % n`` (each slice appears ``repeat`` times), seeded by (seed, i).

    A patch is centred near one of the slice's lesions with probability ``lesion_fraction``, else near one of the
    boxes a reader rejected there (``Sample.rejected``: hard negatives) with probability ``hard_fraction``; it
    receives synthetic lesions (``sim.insert``) with probability ``insert_fraction`` and is flipped at random, boxes
    cropped along.
    Pixels are read when the item is drawn (lazily, in DataLoader workers when there are any), and an item depends
    only on its index, so every worker and rank layout draws the same patches.
    """

    def __init__(
        self,
        slices: list,
        patch_size: int,
        seed: int,
        repeat: int = 1,
        lesion_fraction: float = 0.7,
        insert_fraction: float = 0.0,
        insert_lung: float = 0.0,
        insert_max_mm: float = 0.0,
        hard_fraction: float = 0.0,
        insert_attached: float = 0.0,
    ):
        self.slices, self.patch_size, self.seed = slices, patch_size, seed
        self.repeat, self.lesion_fraction, self.insert_fraction = repeat, lesion_fraction, insert_fraction
        self.insert_lung, self.insert_max_mm, self.hard_fraction = insert_lung, insert_max_mm, hard_fraction
        self.insert_attached = insert_attached

    def __len__(self) -> int:
        return len(self.slices) * self.repeat

    def _corner(
        self, rng: np.random.Generator, shape: tuple[int, int], boxes: np.ndarray, rejected: np.ndarray
    ) -> tuple[int, int]:
        """Top-left (y0, x0) of the patch: near a lesion, near a rejected box (drawn only where the slice has
        one, so runs without rejections draw the same patches as before), else anywhere."""
        h, w = shape
        p = self.patch_size
        near = None
        if len(boxes) and rng.random() < self.lesion_fraction:
            near = boxes
        elif len(rejected) and self.hard_fraction and rng.random() < self.hard_fraction:
            near = rejected
        if near is not None:
            x1, y1, x2, y2 = near[rng.integers(len(near))]
            cx = (x1 + x2) / 2 + rng.uniform(-0.3, 0.3) * p
            cy = (y1 + y2) / 2 + rng.uniform(-0.3, 0.3) * p
            x0, y0 = int(round(cx - p / 2)), int(round(cy - p / 2))
        else:
            x0, y0 = int(rng.integers(0, w - p + 1)), int(rng.integers(0, h - p + 1))
        return int(np.clip(y0, 0, h - p)), int(np.clip(x0, 0, w - p))

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        s = self.slices[index % len(self.slices)]
        p = self.patch_size
        boxes = np.asarray(s.boxes, np.float32).reshape(-1, 4)
        full_img = air_filled(s.full_hu)
        rejected = np.asarray(s.rejected, np.float32).reshape(-1, 4)
        y0, x0 = self._corner(rng, full_img.shape, boxes, rejected)
        full = full_img[y0 : y0 + p, x0 : x0 + p]
        low = air_filled(s.low_hu)[y0 : y0 + p, x0 : x0 + p]
        b = crop_boxes(boxes, x0, y0, p)
        if self.insert_fraction and rng.random() < self.insert_fraction:
            where = lung_mask(full_img, s.spacing_mm)[y0 : y0 + p, x0 : x0 + p] if self.insert_lung else None
            full, low, b = insert_lesions(
                full, low, b, s.spacing_mm, rng, lung=self.insert_lung, lung_where=where, max_mm=self.insert_max_mm,
                attached=self.insert_attached,
            )
        if rng.random() < 0.5:  # horizontal flip
            low, full = low[:, ::-1], full[:, ::-1]
            b = np.stack([p - b[:, 2], b[:, 1], p - b[:, 0], b[:, 3]], 1) if len(b) else b
        return hu_to_net(np.ascontiguousarray(low, np.float32)), hu_to_net(np.ascontiguousarray(full, np.float32)), b


def collate_patches(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> PatchBatch:
    low = torch.from_numpy(np.stack([i[0] for i in items]))[:, None]
    full = torch.from_numpy(np.stack([i[1] for i in items]))[:, None]
    return PatchBatch(low, full, [torch.as_tensor(i[2], dtype=torch.float32).reshape(-1, 4) for i in items])


def lesion_patch(s: Any, box_index: int, patch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, full, boxes) of the patch of slice ``s`` centred on its box ``box_index`` (network scale; every box
    that overlaps the patch, clipped to it)."""
    p = patch_size
    boxes = np.asarray(s.boxes, np.float32).reshape(-1, 4)
    full_img = air_filled(s.full_hu)
    h, w = full_img.shape
    x1, y1, x2, y2 = boxes[box_index]
    y0 = int(np.clip(round((y1 + y2) / 2 - p / 2), 0, h - p))
    x0 = int(np.clip(round((x1 + x2) / 2 - p / 2), 0, w - p))
    b = crop_boxes(boxes, x0, y0, p, min_visible=0.0)
    b = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
    low = np.ascontiguousarray(air_filled(s.low_hu)[y0 : y0 + p, x0 : x0 + p], np.float32)
    full = np.ascontiguousarray(full_img[y0 : y0 + p, x0 : x0 + p], np.float32)
    return hu_to_net(low), hu_to_net(full), b


def calibration_batch(
    slices: list, patch_size: int, n: int, seed: int, insert: bool = False, insert_lung: float = 0.0,
    insert_max_mm: float = 0.0, insert_attached: float = 0.0,
) -> PatchBatch:
    """A fixed batch of up to ``n`` patches, each centred on a lesion: lesions drawn once (seeded) from all the boxes
    of ``slices``, so every process and every round sees the same patches. Slices without boxes (a normal-dose
    archive) and ``insert``: seeded patches with simulated lesions inserted (as training inserts them) instead.
    Raises ValueError when there is no lesion either way."""
    lesions = [(i, k) for i, s in enumerate(slices) for k in range(len(np.asarray(s.boxes).reshape(-1, 4)))]
    if not lesions and insert:
        return _inserted_batch(slices, patch_size, n, seed, insert_lung, insert_max_mm, insert_attached)
    if not lesions:
        raise ValueError("no lesion boxes in the training slices to calibrate the loss weights on")
    pick = sorted(np.random.default_rng([seed, 7919]).permutation(len(lesions))[:n])
    return collate_patches([lesion_patch(slices[lesions[j][0]], lesions[j][1], patch_size) for j in pick])


def _inserted_batch(
    slices: list, patch_size: int, n: int, seed: int, lung: float, max_mm: float, attached: float = 0.0
) -> PatchBatch:
    """Up to ``n`` seeded training patches that received at least one inserted lesion (20 tries per patch)."""
    data = PatchDataset(
        slices, patch_size, seed + 7919, insert_fraction=1.0, insert_lung=lung, insert_max_mm=max_mm,
        insert_attached=attached,
    )  # fmt: skip
    items: list = []
    for index in range(20 * n):
        item = data[index]
        if len(item[2]):
            items.append(item)
        if len(items) == n:
            break
    if not items:
        raise ValueError("no simulated lesion could be inserted into the training slices (no soft tissue?)")
    return collate_patches(items)


def _reader_ignores_stops(_worker_id: int) -> None:
    """A reader worker ignores Ctrl-C and SIGTERM: a scheduler (or a terminal) signals the whole process group, and
    a worker killed by it made the trainer raise mid-step instead of stopping after the step with a checkpoint; the
    trainer ends its workers itself, and they end when it dies (killed, it left them blocked on a full pipe)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    end_with_parent()


def patch_batches(
    slices: list,
    patch_size: int,
    batch_size: int,
    n_batches: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 0,
    insert_fraction: float = 0.0,
    insert_lung: float = 0.0,
    insert_max_mm: float = 0.0,
    hard_fraction: float = 0.0,
    insert_attached: float = 0.0,
) -> Iterator[PatchBatch]:
    """This process's share of ``n_batches`` global batches of ``batch_size`` patches.

    A DistributedSampler deals a seeded permutation of the patch items round-robin to the ranks: global batch k is
    items ``perm[k*B:(k+1)*B]`` for every world size, so DDP over ``world_size`` processes sees the same global
    batches as one process. The items are enough for all ``n_batches`` (one epoch), each slice equally often.
    ``insert_fraction``: share of patches that receive synthetic lesions, ``insert_lung`` the chance that each is a
    lung nodule, ``insert_max_mm`` > 0 their largest diameter, ``insert_attached`` the chance that a lung lesion is
    a tumour-like mass (``PatchDataset``, ``sim.insert``); ``hard_fraction``
    the share of a slice's other patches centred near a box a reader rejected there.
    """
    from torch.utils.data import DataLoader, DistributedSampler

    check_patch_settings(slices, patch_size, batch_size, world_size)
    needed = n_batches * batch_size + world_size  # the sampler's drop_last keeps len - world_size at least
    repeat = max(1, -(-needed // len(slices)))
    dataset = PatchDataset(
        slices, patch_size, seed, repeat, insert_fraction=insert_fraction, insert_lung=insert_lung,
        insert_max_mm=insert_max_mm, hard_fraction=hard_fraction, insert_attached=insert_attached,
    )  # fmt: skip
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(
        dataset,
        batch_size=batch_size // world_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_patches,
        drop_last=True,
        prefetch_factor=4 if workers else None,
        worker_init_fn=_reader_ignores_stops if workers else None,
    )
    batches = iter(loader)
    try:
        for k, batch in enumerate(batches):
            if k == n_batches:
                return
            yield batch
    except Exception as exc:
        raise _reader_error(exc) from None
    finally:  # end the readers now: they ignore SIGTERM, so left for exit they kept a failed run from ending
        getattr(batches, "_shutdown_workers", lambda: None)()


def _reader_error(exc: Exception) -> Exception:
    """The error a reader worker raised, with its own message: torch re-raises it as "Caught ValueError in DataLoader
    worker process 0." and the worker's whole traceback, which made a 3000-character "one line"."""
    text = str(exc)
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return exc
    last = text.rstrip().splitlines()[-1]
    message = last.split(": ", 1)[1] if last.startswith(f"{type(exc).__name__}: ") else last
    try:
        return type(exc)(message)
    except TypeError:  # an exception type that takes other arguments: the message as a ValueError
        return ValueError(message)
