"""RoIAlign against a direct loop reference of the same definition (torchvision's), analytic ramps, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lidnet.models.roi_align import roi_align


def _bilinear(img: np.ndarray, y: float, x: float) -> float:
    h, w = img.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[y0, x0]
        + (1 - ly) * lx * img[y0, x1]
        + ly * (1 - lx) * img[y1, x0]
        + ly * lx * img[y1, x1]
    )


def _reference(feat: np.ndarray, rois: np.ndarray, scale: float, out: tuple[int, int], sr: int, aligned: bool):
    oh, ow = out
    res = np.zeros((len(rois), feat.shape[1], oh, ow))
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois):
        sx, sy = x1 * scale - off, y1 * scale - off
        rw, rh = x2 * scale - off - sx, y2 * scale - off - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / ow, rh / oh
        for c in range(feat.shape[1]):
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0
                    for iy in range(sr):
                        y = sy + i * bh + (iy + 0.5) * bh / sr
                        for ix in range(sr):
                            x = sx + j * bw + (ix + 0.5) * bw / sr
                            acc += _bilinear(feat[int(b), c], y, x)
                    res[k, c, i, j] = acc / (sr * sr)
    return res


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sr", [1, 2, 3])
def test_matches_loop_reference(aligned: bool, sr: int) -> None:
    rng = np.random.default_rng(sr)
    feat = rng.normal(size=(2, 3, 9, 11)).astype(np.float32)
    rois = np.array(
        [
            [0, 4.0, 6.0, 30.0, 20.0],  # inside
            [1, -10.0, -6.0, 12.0, 9.0],  # crosses the top-left edge (zeros beyond one cell)
            [1, 30.0, 20.0, 60.0, 50.0],  # crosses bottom-right (clamped to the last cell)
            [0, 10.0, 10.0, 10.5, 10.2],  # tiny box
            [1, 3.3, 2.7, 17.9, 33.1],
        ],
        dtype=np.float32,
    )
    got = roi_align(torch.from_numpy(feat), torch.from_numpy(rois), 0.25, (4, 5), sr, aligned)
    want = _reference(feat, rois, 0.25, (4, 5), sr, aligned)
    assert got.shape == (5, 3, 4, 5)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_linear_ramp_gives_bin_centres() -> None:
    """Bilinear sampling of a linear map is exact, so each bin averages to the ramp at the bin centre."""
    h, w, stride = 32, 40, 4
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    feat = torch.stack([2.0 * xx - 3.0 * yy + 5.0, xx]).unsqueeze(0)
    x1, y1, x2, y2 = 20.0, 30.0, 100.0, 90.0  # input pixels; feature coords (x * 0.25 - 0.5) stay inside
    out = roi_align(feat, torch.tensor([[0.0, x1, y1, x2, y2]]), 1 / stride, (7, 7), 2, True)[0]
    j = torch.arange(7, dtype=torch.float32)
    cx = x1 / stride - 0.5 + (j + 0.5) * (x2 - x1) / stride / 7
    cy = y1 / stride - 0.5 + (j + 0.5) * (y2 - y1) / stride / 7
    torch.testing.assert_close(out[0], 2.0 * cx[None, :] - 3.0 * cy[:, None] + 5.0)
    torch.testing.assert_close(out[1], cx[None, :].expand(7, 7))


def test_gradients_flow_to_features() -> None:
    feat = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 2.0, 3.0, 20.0, 18.0], [1, -3.0, 1.0, 9.0, 30.0]])
    assert torch.autograd.gradcheck(lambda f: roi_align(f, rois, 0.25, (3, 3), 2), (feat,))
    # interior box: every bin's sample weights sum to one
    feat32 = torch.randn(1, 4, 16, 16, requires_grad=True)
    roi_align(feat32, torch.tensor([[0, 8.0, 8.0, 40.0, 48.0]]), 0.25, (5, 5)).sum().backward()
    assert feat32.grad.sum().item() == pytest.approx(4 * 25, rel=1e-5)


def test_empty_and_bad_inputs() -> None:
    feat = torch.zeros(1, 3, 8, 8)
    assert roi_align(feat, torch.zeros(0, 5), 0.25, 7).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="rois must be"):
        roi_align(feat, torch.zeros(3, 4), 0.25)
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(feat, torch.zeros(1, 5), 0.25, sampling_ratio=0)
