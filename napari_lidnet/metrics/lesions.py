"""One lesion, several boxes: boxes on neighbouring slices that overlap are the same lesion, as a reader follows a
lesion from slice to slice. Plain numpy; used by the findings table and by every boxes export."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .froc import box_cover_np, box_iou_np

#: boxes on neighbouring slices whose in-plane overlap (IoU) reaches this are one lesion
LESION_IOU = 0.3
#: ... and so are two whose intersection covers this share of the smaller box: on thick slices a round lesion's
#: end slice shows a small box wholly inside its neighbour's (IoU 0.15-0.29: else one lesion gets 3 numbers)
LESION_COVER = 0.5


def lesion_numbers(slices: Sequence[int], boxes: np.ndarray, iou: float = LESION_IOU) -> np.ndarray:
    """Lesion number (1, 2, ... in order of first slice, then of input order) of each box ``x1, y1, x2, y2`` on
    slice ``slices[i]``: boxes on adjacent slices whose IoU reaches ``iou``, or whose intersection covers
    ``LESION_COVER`` of the smaller one, are one lesion, and so on through the stack. A box alone is a lesion of one
    slice."""
    slices = [int(z) for z in slices]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    parent = list(range(len(slices)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_slice: dict[int, list[int]] = {}
    for i, z in enumerate(slices):
        by_slice.setdefault(z, []).append(i)
    spans = {i: {z} for i, z in enumerate(slices)}  # each group's slices (a group holds one box per slice)
    for z, here in sorted(by_slice.items()):
        above = by_slice.get(z + 1, [])
        if above:
            linked = box_iou_np(boxes[here], boxes[above]) >= iou
            covered = box_cover_np(boxes[here], boxes[above]) >= LESION_COVER
            for a, b in zip(*np.nonzero(linked | covered)):
                ra, rb = root(here[a]), root(above[b])
                if ra == rb or (not linked[a, b] and spans[ra] & spans[rb]):
                    continue  # by cover alone, never two boxes of one slice (a small lesion beside a large mass)
                parent[ra] = rb
                spans[rb] |= spans.pop(ra)
    first: dict[int, tuple[int, int]] = {}
    for i, z in enumerate(slices):
        r = root(i)
        first[r] = min(first.get(r, (z, i)), (z, i))
    number = {r: k + 1 for k, r in enumerate(sorted(first, key=first.__getitem__))}
    return np.array([number[root(i)] for i in range(len(slices))], dtype=np.int64)


def row_lesions(rows: np.ndarray, iou: float = LESION_IOU) -> np.ndarray:
    """Lesion numbers of detector rows (N, 6) ``slice, x1, y1, x2, y2, score``."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    return lesion_numbers(np.rint(rows[:, 0]).astype(int), rows[:, 1:5], iou)
