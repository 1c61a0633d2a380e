"""RoIAlign (He et al., Mask R-CNN 2017) in pure torch, same definition as ``torchvision.ops.roi_align``.

A box in input pixels (x2/y2 exclusive edges) maps to feature coordinates ``x * spatial_scale`` (minus 0.5 with
``aligned=True``, so that feature cell j is centred on input position (j + 0.5) / spatial_scale). Each of the
``oh x ow`` bins is the mean of ``sampling_ratio^2`` bilinear samples at the centres of a regular sub-grid.
A sample farther than one cell outside the map ([-1, H] x [-1, W]) is 0; others are clamped to the map edge.
Differentiable with respect to the features (gather + weighted sum).
"""

from __future__ import annotations

import torch

__all__ = ["roi_align"]


def roi_align(
    features: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    output_size: int | tuple[int, int] = (7, 7),
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool (B, C, H, W) features inside ``rois`` (K, 5) ``[batch_idx, x1, y1, x2, y2]`` -> (K, C, oh, ow).

    ``spatial_scale`` is 1 / stride of the feature map; ``sampling_ratio`` (> 0) samples per bin and axis.
    """
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    oh, ow = output_size
    if sampling_ratio <= 0:
        raise ValueError(f"sampling_ratio must be positive, got {sampling_ratio}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must be (K, 5) [batch_idx, x1, y1, x2, y2], got shape {tuple(rois.shape)}")
    b, c, h, w = features.shape
    k = rois.shape[0]
    if k == 0:
        return features.new_zeros(0, c, oh, ow)
    rois = rois.to(device=features.device, dtype=torch.float32)
    sr = sampling_ratio
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    rw = rois[:, 3] * spatial_scale - offset - x1
    rh = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    # sample positions: bin p, sub-sample i -> start + (p + (i + 0.5) / sr) * bin_size
    fy = (torch.arange(oh * sr, device=features.device, dtype=torch.float32) + 0.5) / sr
    fx = (torch.arange(ow * sr, device=features.device, dtype=torch.float32) + 0.5) / sr
    ys = y1[:, None] + fy[None, :] * (rh / oh)[:, None]  # (K, oh*sr)
    xs = x1[:, None] + fx[None, :] * (rw / ow)[:, None]  # (K, ow*sr)

    def axis_weights(p: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        valid = (p >= -1.0) & (p <= n)
        p = p.clamp(min=0.0)
        lo = p.floor().long().clamp(max=n - 1)
        hi = (lo + 1).clamp(max=n - 1)
        p = torch.where(lo >= n - 1, lo.float(), p)
        frac = p - lo.float()
        return lo, hi, (1 - frac) * valid, frac * valid

    y_lo, y_hi, wy_lo, wy_hi = axis_weights(ys, h)
    x_lo, x_hi, wx_lo, wx_hi = axis_weights(xs, w)
    flat = features.permute(0, 2, 3, 1).reshape(b * h * w, c)
    base = rois[:, 0].long()[:, None, None] * (h * w)  # (K, 1, 1)
    out = 0.0
    for yi, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
        for xi, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
            idx = base + yi[:, :, None] * w + xi[:, None, :]  # (K, oh*sr, ow*sr)
            wgt = (wy[:, :, None] * wx[:, None, :]).to(features.dtype)
            out = out + flat.index_select(0, idx.reshape(-1)).reshape(k, oh * sr, ow * sr, c) * wgt[..., None]
    out = out.reshape(k, oh, sr, ow, sr, c).mean(dim=(2, 4))
    return out.permute(0, 3, 1, 2).contiguous()
