"""LIDnet losses: ROI perceptual loss is local to lesion boxes, zero on equal images, and differentiable."""

import torch

from napari_lidnet._training.losses import (
    detection_loss,
    pixel_loss,
    roi_perceptual_loss,
    rois_from_boxes,
    whole_image_perceptual_loss,
    widen_boxes,
)
from napari_lidnet.models.detector import LesionDetector


def _detector() -> LesionDetector:
    torch.manual_seed(0)
    return LesionDetector(width=8).eval()


def test_widen_and_rois():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    w = widen_boxes(b, 0.25, (64, 64))
    assert torch.allclose(w, torch.tensor([[5.0, 10.0, 35.0, 64.0]]))  # y2 clipped at the image edge
    rois = rois_from_boxes([b, torch.zeros((0, 4)), b + 1])
    assert rois.shape == (2, 5) and rois[:, 0].tolist() == [0.0, 2.0]


def test_roi_perceptual_zero_on_equal_and_local_to_boxes():
    det = _detector()
    torch.manual_seed(1)
    full = torch.randn(1, 1, 192, 192) * 0.05
    boxes = [torch.tensor([[16.0, 16.0, 40.0, 40.0]])]
    assert roi_perceptual_loss(det, full.clone(), full, boxes).item() == 0.0
    far = full.clone()
    far[..., 150:, 150:] += 0.3  # well beyond the widened box and the receptive field around it
    assert roi_perceptual_loss(det, far, full, boxes).item() < 1e-9
    near = full.clone()
    near[..., 20:36, 20:36] += 0.05
    assert roi_perceptual_loss(det, near, full, boxes).item() > 1e-4
    # the whole-image variant does see the far change
    assert whole_image_perceptual_loss(det, far, full).item() > 1e-4


def test_losses_give_gradients_to_the_denoised_image():
    det = _detector()
    full = torch.randn(2, 1, 64, 64) * 0.05
    denoised = (full + 0.02 * torch.randn_like(full)).requires_grad_(True)
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.zeros((0, 4))]
    total = (
        pixel_loss(denoised, full)
        + detection_loss(det, denoised, boxes)
        + roi_perceptual_loss(det, denoised, full, boxes)
    )
    total.backward()
    assert denoised.grad is not None and denoised.grad.abs().sum() > 0
    # no lesions in the batch: the ROI term is an exact zero that still backpropagates
    z = roi_perceptual_loss(det, denoised, full, [torch.zeros((0, 4))] * 2)
    assert z.item() == 0.0 and z.requires_grad


def test_pixel_loss_kinds():
    a, b = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0)
    assert pixel_loss(a, b, "mse").item() == 4.0 and pixel_loss(a, b, "l1").item() == 2.0
