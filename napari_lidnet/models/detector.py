"""One-class anchor-free lesion detector (CenterNet style: "Objects as Points", Zhou et al. 2019).

Input: (B, 1, H, W) network scale (HU / 1000). The detector windows its input itself with smooth clamps
(``tanh``), so gradients of the detection loss and of the ROI perceptual loss reach the denoiser that produced it:
channel k = ``tanh((HU - level_k) / (width_k / 2))``; defaults: soft tissue (40, 400) and a wide window (0, 2000).

Backbone: stem (stride 2) and three stages with residual blocks, strides 4, 8, 16 (``features``); a small FPN
(top-down, nearest upsampling, added laterals) back to stride 4; three heads at stride 4:

- ``heatmap``: centre logits (1 channel, bias initialised to -2.19, prior 0.1);
- ``size``: log of the box width and height in output cells: ``log((x2 - x1) / stride), log((y2 - y1) / stride)``;
- ``offset``: sub-cell centre offset in [0, 1): ``cx / stride - floor(cx / stride)`` (same for y).

A box centre ``cx = (x1 + x2) / 2`` in pixel-edge coordinates (x2 exclusive) falls into cell ``floor(cx / stride)``;
decoding inverts this exactly: ``cx = (ix + offset_x) * stride``, ``w = exp(size_w) * stride``.
BatchNorm, not GroupNorm: in eval mode (frozen, as in the denoiser's joint loss) every feature depends only on its
receptive field, so the ROI perceptual loss is truly local to the lesion boxes and a patch gives the same features
as the whole slice around it; GroupNorm would normalise over the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .nms import nms
from .normalize import HU_SCALE

__all__ = ["DETECTORS", "LesionDetector", "build_detector", "decode_heatmaps", "encode_targets", "gaussian_radius"]

HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1, CenterNet's initialisation


def _norm(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _norm(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            _norm(c),
            nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False),
            _norm(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


def _head(cin: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(cin, cin, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1))
    nn.init.normal_(head[2].weight, std=0.001)
    nn.init.constant_(head[2].bias, bias)
    return head


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius rule (``gaussian_radius`` of the reference code, kept as published)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2**2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def encode_targets(
    gt_boxes: Sequence[torch.Tensor | np.ndarray],
    out_shape: tuple[int, int],
    stride: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Dense CenterNet targets for a batch of box lists (pixels ``x1, y1, x2, y2``).

    Returns ``heatmap`` (B,1,h,w) with a Gaussian (CenterNet radius, sigma = (2r+1)/6) of peak exactly 1 at each
    centre cell, ``size`` and ``offset`` (B,2,h,w) set at centre cells, ``mask`` (B,1,h,w) bool of centre cells
    and ``num`` (number of boxes in the batch).
    """
    h, w = out_shape
    b = len(gt_boxes)
    heat = torch.zeros(b, 1, h, w, device=device)
    size = torch.zeros(b, 2, h, w, device=device)
    offset = torch.zeros(b, 2, h, w, device=device)
    mask = torch.zeros(b, 1, h, w, dtype=torch.bool, device=device)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=device, dtype=torch.float32)[None, :]
    num = 0
    for i, boxes in enumerate(gt_boxes):
        arr = boxes.detach().cpu().numpy() if torch.is_tensor(boxes) else boxes
        for x1, y1, x2, y2 in np.asarray(arr, dtype=np.float64).reshape(-1, 4).tolist():
            bw, bh = (x2 - x1) / stride, (y2 - y1) / stride
            if bw <= 0 or bh <= 0:
                continue
            cx, cy = (x1 + x2) / 2 / stride, (y1 + y2) / 2 / stride
            ix, iy = min(max(math.floor(cx), 0), w - 1), min(max(math.floor(cy), 0), h - 1)
            r = max(0, int(gaussian_radius(bh, bw)))
            sigma = (2 * r + 1) / 6
            d2 = (xs - ix) ** 2 + (ys - iy) ** 2
            g = torch.exp(-d2 / (2 * sigma * sigma))
            g = g * (((xs - ix).abs() <= r) & ((ys - iy).abs() <= r))
            heat[i, 0] = torch.maximum(heat[i, 0], g)
            size[i, :, iy, ix] = torch.tensor([math.log(bw), math.log(bh)], device=device)
            offset[i, :, iy, ix] = torch.tensor([cx - ix, cy - iy], device=device, dtype=torch.float32)
            mask[i, 0, iy, ix] = True
            num += 1
    return {"heatmap": heat, "size": size, "offset": offset, "mask": mask, "num": torch.tensor(num)}


def decode_heatmaps(
    heat: torch.Tensor,
    size: torch.Tensor,
    offset: torch.Tensor,
    stride: int,
    image_size: tuple[int, int] | None = None,
    score_threshold: float = 0.05,
    max_detections: int = 50,
    iou_threshold: float = 0.5,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Boxes from centre probabilities (not logits) and size/offset maps.

    3x3 max-pool peak picking, top-k (2 x ``max_detections``), score threshold, decode to input pixels, clip to
    ``image_size`` (H, W) when given, NMS at ``iou_threshold``, at most ``max_detections`` per image.
    Returns per image ``(boxes (N,4) float32, scores (N,))`` on the CPU, by decreasing score.
    """
    b, _, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    k = min(2 * max_detections, h * w)
    scores, idx = peaks.reshape(b, -1).topk(k, dim=1)
    results = []
    for i in range(b):
        keep = scores[i] >= score_threshold
        sc, ind = scores[i][keep], idx[i][keep]
        iy, ix = (ind // w).float(), (ind % w).float()
        off = offset[i].reshape(2, -1)[:, ind]
        wh = size[i].reshape(2, -1)[:, ind].clamp(max=20.0).exp() * stride
        cx, cy = (ix + off[0]) * stride, (iy + off[1]) * stride
        boxes = torch.stack([cx - wh[0] / 2, cy - wh[1] / 2, cx + wh[0] / 2, cy + wh[1] / 2], dim=1)
        if image_size is not None:
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, image_size[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, image_size[0])
        kept = nms(boxes, sc, iou_threshold)[:max_detections]
        results.append((boxes[kept].float().cpu(), sc[kept].float().cpu()))
    return results


class LesionDetector(nn.Module):
    """CenterNet-style one-class lesion detector; see the module docstring for the maps and their encoding.

    Args:
        width: stem channels; the stages have 2, 4 and 8 times as many (strides 4, 8, 16).
        neck_width: FPN and head channels (default 2 * width).
        windows: (level, width) HU windows, one input channel each (smooth clamp by tanh).
        size_weight, offset_weight: weights of the L1 size and offset losses in ``total``.
        flip_test: ``detect`` averages the centre probabilities and sizes of four views (the image, flipped left-right,
            up-down and both) in the image frame, offsets from the image itself: 4x the time, steadier scores.
        detect_mm: the pixel size (mm) at which inference runs this detector: ``inference.detect`` given a slice's
            pixel size resamples it to this size and maps the boxes back (None: every slice at its own size).
    """

    arch = "centernet"
    feature_strides = (4, 8, 16)
    output_stride = 4

    def __init__(
        self,
        width: int = 16,
        neck_width: int | None = None,
        windows: Sequence[Sequence[float]] = ((40.0, 400.0), (0.0, 2000.0)),
        size_weight: float = 1.0,
        offset_weight: float = 1.0,
        flip_test: bool = False,
        detect_mm: float | None = None,
    ) -> None:
        super().__init__()
        if detect_mm is not None and not detect_mm > 0:
            raise ValueError(f"detect_mm must be a positive pixel size in mm or None, got {detect_mm!r}")
        neck_width = neck_width or 2 * width
        windows = [[float(v) for v in win] for win in windows]
        self.config = {
            "width": width,
            "neck_width": neck_width,
            "windows": windows,
            "size_weight": size_weight,
            "offset_weight": offset_weight,
            "flip_test": bool(flip_test),
            "detect_mm": None if detect_mm is None else float(detect_mm),
        }
        self.size_weight, self.offset_weight, self.flip_test = size_weight, offset_weight, bool(flip_test)
        self.detect_mm = self.config["detect_mm"]
        win = torch.tensor(windows, dtype=torch.float32)
        self.register_buffer("win_level", win[:, 0].reshape(1, -1, 1, 1), persistent=False)
        self.register_buffer("win_half", (win[:, 1] / 2).reshape(1, -1, 1, 1), persistent=False)
        c = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(_conv(len(windows), c[0], 2), _conv(c[0], c[0]))
        self.stages = nn.ModuleList([nn.Sequential(_conv(c[i], c[i + 1], 2), _ResBlock(c[i + 1])) for i in range(3)])
        self.lateral = nn.ModuleList([nn.Conv2d(ci, neck_width, 1) for ci in c[1:]])
        self.smooth = _conv(neck_width, neck_width)
        self.heatmap_head = _head(neck_width, 1, HEATMAP_PRIOR_BIAS)
        self.size_head = _head(neck_width, 2)
        self.offset_head = _head(neck_width, 2, 0.5)

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """Network scale (B,1,H,W) -> smooth-windowed channels (B,len(windows),H,W) in (-1, 1)."""
        return torch.tanh((x * HU_SCALE - self.win_level) / self.win_half)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        m = self.feature_strides[-1]
        pad_h, pad_w = (-x.shape[-2]) % m, (-x.shape[-1]) % m
        return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else x

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone maps at ``feature_strides`` (4, 8, 16) of the input padded (bottom/right) to a multiple of 16."""
        f = self.stem(self.window(self._pad(x)))
        feats = []
        for stage in self.stages:
            f = stage(f)
            feats.append(f)
        return feats

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = -(-x.shape[-2] // self.output_stride), -(-x.shape[-1] // self.output_stride)
        c4, c8, c16 = self.features(x)
        p = self.lateral[2](c16)
        p = self.lateral[1](c8) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        p = self.lateral[0](c4) + F.interpolate(p, scale_factor=2.0, mode="nearest")
        p = self.smooth(p)[..., :h, :w]
        return {"heatmap": self.heatmap_head(p), "size": self.size_head(p), "offset": self.offset_head(p)}

    def loss(
        self, outputs: dict[str, torch.Tensor], gt_boxes: Sequence[torch.Tensor | np.ndarray]
    ) -> dict[str, torch.Tensor]:
        """CenterNet loss: focal loss on Gaussian centre heatmaps (alpha 2, beta 4), L1 on log-size and offset at
        centre cells, each normalised by the number of boxes (at least 1). Images without boxes contribute only
        negative heatmap terms. Returns ``total``, ``heatmap``, ``size``, ``offset`` (scalar tensors)."""
        logits = outputs["heatmap"]
        t = encode_targets(gt_boxes, tuple(logits.shape[-2:]), self.output_stride, logits.device)
        n = t["num"].clamp(min=1).float().to(logits.device)
        logits = logits.float()
        p = torch.sigmoid(logits)
        pos = t["mask"]
        pos_term = F.logsigmoid(logits) * (1 - p) ** 2
        neg_term = F.logsigmoid(-logits) * p**2 * (1 - t["heatmap"]) ** 4
        hm = -(torch.where(pos, pos_term, neg_term)).sum() / n
        m = pos.expand(-1, 2, -1, -1)
        size_l = (outputs["size"].float() - t["size"]).abs()[m].sum() / n
        off_l = (outputs["offset"].float() - t["offset"]).abs()[m].sum() / n
        total = hm + self.size_weight * size_l + self.offset_weight * off_l
        return {"total": total, "heatmap": hm, "size": size_l, "offset": off_l}

    @torch.no_grad()
    def detect(
        self,
        x: torch.Tensor,
        score_threshold: float = 0.05,
        max_detections: int = 50,
        iou_threshold: float = 0.5,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Lesion boxes per image: ``(boxes (N,4) float32 pixels x1,y1,x2,y2, scores (N,))`` on the CPU.

        Does not change the train/eval mode; call ``eval()`` first (BatchNorm uses its running statistics then)."""
        heat, size, offset = self._maps(x)
        return decode_heatmaps(
            heat,
            size,
            offset,
            self.output_stride,
            image_size=tuple(x.shape[-2:]),
            score_threshold=score_threshold,
            max_detections=max_detections,
            iou_threshold=iou_threshold,
        )

    def _maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centre probabilities, log-sizes and offsets of ``x``; with ``flip_test`` the first two are averaged over
        the four flipped views (the input padded to a multiple of 16 first, so every view shares one grid)."""
        h, w = -(-x.shape[-2] // self.output_stride), -(-x.shape[-1] // self.output_stride)
        xp = self._pad(x) if self.flip_test else x
        out = self(xp)
        heat, size = torch.sigmoid(out["heatmap"].float()), out["size"].float()
        if self.flip_test:
            for dims in ((-1,), (-2,), (-2, -1)):
                o = self(xp.flip(dims))
                heat = heat + torch.sigmoid(o["heatmap"].float()).flip(dims)
                size = size + o["size"].float().flip(dims)
            heat, size = heat / 4, size / 4
        return heat[..., :h, :w], size[..., :h, :w], out["offset"].float()[..., :h, :w]


def with_flip_test(detector: LesionDetector, on: bool = True) -> LesionDetector:
    """A copy of ``detector`` (the same weights, in eval mode) that averages the four flipped views (or, with
    ``on=False``, does not)."""
    out = LesionDetector(**{**detector.config, "flip_test": on}).eval()
    out.load_state_dict(detector.state_dict())
    return out


def with_detect_mm(detector: LesionDetector, detect_mm: float | None) -> LesionDetector:
    """A copy of ``detector`` (the same weights, in eval mode) that inference runs at ``detect_mm`` pixels."""
    out = LesionDetector(**{**detector.config, "detect_mm": detect_mm}).eval()
    out.load_state_dict(detector.state_dict())
    return out


DETECTORS: dict[str, type[nn.Module]] = {"centernet": LesionDetector}


def build_detector(arch: str = "centernet", **kwargs: Any) -> nn.Module:
    """Build the detector registered as ``arch`` with its constructor keyword arguments."""
    try:
        cls = DETECTORS[arch]
    except KeyError:
        raise ValueError(f"unknown detector architecture {arch!r}; known: {sorted(DETECTORS)}") from None
    return cls(**kwargs)
