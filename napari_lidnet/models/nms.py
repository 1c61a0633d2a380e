"""Box IoU and greedy non-maximum suppression in pure torch (boxes ``x1, y1, x2, y2``)."""

from __future__ import annotations

import torch

__all__ = ["box_area", "box_iou", "nms"]


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (N, 4) boxes; degenerate boxes have area 0."""
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of (N, 4) and (M, 4) boxes -> (N, M); 0 where the union is empty."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5) -> torch.Tensor:
    """Greedy NMS: indices of the kept boxes, by decreasing score.

    A box is dropped when its IoU with a higher-scoring kept box is > ``iou_threshold`` (torchvision's rule).
    Ties in score keep the earlier box first (stable sort).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    iou = box_iou(boxes[order], boxes[order])
    n = order.numel()
    keep: list[int] = []
    iou_cpu = iou.cpu()
    supp = torch.zeros(n, dtype=torch.bool)
    for i in range(n):
        if supp[i]:
            continue
        keep.append(i)
        supp |= iou_cpu[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]
