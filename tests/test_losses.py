"""LIDnet losses: the ROI perceptual term is local to lesion boxes and the one definition ROI compare shows; the
joint terms change the denoiser's gradient; every term is a mean of per-image values (so DDP equals one process)."""

import numpy as np
import pytest
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
from napari_lidnet.models.normalize import hu_to_net


def _detector() -> LesionDetector:
    torch.manual_seed(0)
    return LesionDetector(width=8).eval()


def _lesion_batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """(noisy, clean, boxes): bright squares on soft tissue, different lesion counts per image (0, 1 or 2)."""
    rng = np.random.default_rng(seed)
    clean = np.full((n, 1, size, size), 0.04, np.float32)
    boxes = []
    for i in range(n):
        b = []
        for _ in range(i % 3):
            x, y = rng.integers(4, size - 20, 2)
            clean[i, 0, y : y + 14, x : x + 14] = 0.16
            b.append([x, y, x + 14, y + 14])
        boxes.append(torch.tensor(b, dtype=torch.float32).reshape(-1, 4))
    noisy = clean + rng.normal(0, 0.04, clean.shape).astype(np.float32)
    return torch.from_numpy(noisy), torch.from_numpy(clean), boxes


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


def test_training_loss_and_roi_compare_share_one_definition():
    """The ROI compare value of a box (numpy, HU) is the training loss of that one box on that one image."""
    from napari_lidnet.models.roi_perceptual import roi_perceptual_distance

    det = _detector()
    rng = np.random.default_rng(3)
    ref = np.full((96, 96), 40.0, np.float32)
    ref[40:60, 36:58] = 140.0
    img = ref + rng.normal(0, 40, ref.shape).astype(np.float32)
    box = (36.0, 40.0, 58.0, 60.0)
    widget = roi_perceptual_distance(img, ref, box, det, context=1000)  # the whole slice
    x, r = (torch.from_numpy(hu_to_net(a))[None, None] for a in (img, ref))
    loss = roi_perceptual_loss(det, x, r, [torch.tensor([box])])
    assert widget > 0.01
    assert widget == pytest.approx(float(loss.detach()), rel=1e-5)
    # the default (cropped for speed) is close to the whole-slice value
    assert roi_perceptual_distance(img, ref, box, det) == pytest.approx(widget, rel=0.05)


def test_losses_are_means_of_per_image_values():
    """Each term on a batch equals the mean of the term on equal halves: DDP (gradients averaged over processes
    with equal shares) then equals one process, whatever the lesion count of each share."""
    det = _detector()
    noisy, clean, boxes = _lesion_batch(4)
    halves = [(noisy[:2], clean[:2], boxes[:2]), (noisy[2:], clean[2:], boxes[2:])]
    assert [len(b) for b in boxes] == [0, 1, 2, 0]  # the halves hold 1 and 2 lesions
    for fn in (
        lambda x, y, b: detection_loss(det, x, b),
        lambda x, y, b: roi_perceptual_loss(det, x, y, b),
        lambda x, y, b: whole_image_perceptual_loss(det, x, y),
        lambda x, y, b: pixel_loss(x, y),
    ):
        whole = float(fn(noisy, clean, boxes))
        assert whole > 0
        assert whole == pytest.approx(np.mean([float(fn(*h)) for h in halves]), rel=1e-5)


def test_joint_terms_change_the_denoisers_gradient():
    """Detection and ROI terms each move the gradient on the denoised image measurably; ROI only near lesions."""
    det = _detector()
    noisy, clean, boxes = _lesion_batch(2, seed=1)

    def grad(fn) -> torch.Tensor:
        x = noisy.clone().requires_grad_(True)
        fn(x).backward()
        return x.grad

    g_pix = grad(lambda x: pixel_loss(x, clean))
    g_det = grad(lambda x: detection_loss(det, x, boxes))
    g_roi = grad(lambda x: roi_perceptual_loss(det, x, clean, boxes))
    for g in (g_det, g_roi):
        cos = float(torch.nn.functional.cosine_similarity(g.flatten(), g_pix.flatten(), dim=0))
        assert g.abs().sum() > 0 and abs(cos) < 0.9  # not a rescaled pixel gradient
    assert g_roi[0].abs().sum() == 0  # image 0 has no lesion: no ROI gradient there
    x1, y1, x2, y2 = boxes[1][0].int().tolist()
    inside = g_roi[1, 0, y1:y2, x1:x2].abs().mean()
    assert inside > 3 * g_roi[1, 0].abs().mean()  # concentrated on the lesion


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
    with pytest.raises(ValueError, match="unknown pixel loss"):
        pixel_loss(a, b, "ssim")


def test_tissue_loss_weights_the_soft_tissue_window():
    """Target half soft tissue (40 HU), half bone (700 HU), the same error on both halves: the tissue loss equals
    MSE; the error on the tissue half alone counts 4 x as much as on the bone half alone, and a uniform image is
    plain MSE whatever it holds."""
    target = torch.full((2, 1, 4, 8), float(hu_to_net(40.0)))
    target[:, :, :, 4:] = float(hu_to_net(700.0))
    err = 0.01
    both = pixel_loss(target + err, target, "tissue")
    assert both.item() == pytest.approx(err**2, rel=1e-4)
    on_tissue, on_bone = target.clone(), target.clone()
    on_tissue[:, :, :, :4] += err
    on_bone[:, :, :, 4:] += err
    tissue, bone = pixel_loss(on_tissue, target, "tissue").item(), pixel_loss(on_bone, target, "tissue").item()
    assert tissue == pytest.approx(4 * bone, rel=1e-4)
    mse_tissue, mse_bone = pixel_loss(on_tissue, target, "mse").item(), pixel_loss(on_bone, target, "mse").item()
    assert mse_tissue == pytest.approx(mse_bone, rel=1e-4)
