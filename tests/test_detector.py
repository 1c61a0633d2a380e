"""Lesion detector: maps and strides, target encoding/decoding round trip, loss, NMS, and a real learning test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lidnet.models.detector import (
    LesionDetector,
    build_detector,
    decode_heatmaps,
    encode_targets,
    gaussian_radius,
    with_flip_test,
)
from napari_lidnet.models.nms import box_iou, nms


def test_output_maps_strides_and_odd_sizes() -> None:
    model = LesionDetector(width=4, neck_width=8).eval()
    x = torch.zeros(2, 1, 50, 37)
    out = model(x)
    assert out["heatmap"].shape == (2, 1, 13, 10)
    assert out["size"].shape == (2, 2, 13, 10) and out["offset"].shape == (2, 2, 13, 10)
    # untrained: heatmap at the prior, sigmoid(-2.19) ~ 0.1
    assert torch.allclose(torch.sigmoid(out["heatmap"]), torch.full_like(out["heatmap"], 0.1), atol=0.01)
    feats = model.features(torch.zeros(1, 1, 64, 48))
    assert model.feature_strides == (4, 8, 16)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 12), (8, 6), (4, 3)]
    assert [f.shape[1] for f in feats] == [8, 16, 32]


def test_windowing_keeps_gradients_to_the_input() -> None:
    model = LesionDetector(width=4)
    x = (torch.randn(1, 1, 32, 32) * 0.3).requires_grad_(True)
    loss = model.loss(model(x), [torch.tensor([[4.0, 4.0, 12.0, 14.0]])])["total"]
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # soft tissue channel is tanh((HU - 40) / 200)
    w = model.window(torch.tensor([0.04, 0.24]).reshape(1, 1, 2, 1))
    torch.testing.assert_close(w[0, 0, :, 0], torch.tanh(torch.tensor([0.0, 1.0])))


def test_gaussian_radius_reference_values() -> None:
    # CenterNet's rule; r3 = (b3 + sqrt(b3^2 - 4 a3 c3)) / 2 is the smallest root here
    h = w = 10.0
    a3, b3, c3 = 2.8, -2 * 0.7 * 20, -0.3 * 100
    assert gaussian_radius(h, w) == pytest.approx((b3 + np.sqrt(b3**2 - 4 * a3 * c3)) / 2)
    assert gaussian_radius(10, 10) < gaussian_radius(20, 20)


def test_encode_then_decode_returns_exactly_the_boxes() -> None:
    boxes = [
        torch.tensor([[10.0, 12.0, 30.5, 27.0], [60.25, 40.0, 75.0, 61.0]]),
        torch.zeros(0, 4),
        torch.tensor([[3.0, 70.0, 9.0, 78.0]]),
    ]
    t = encode_targets(boxes, (24, 24), stride=4)
    assert int(t["num"]) == 3
    assert t["heatmap"].max() == 1.0 and int((t["heatmap"] == 1).sum()) == 3
    assert (t["heatmap"][1] == 0).all()
    # centre cell and sub-cell offset of the first box: cx = 20.25 / 4 = 5.0625, cy = 19.5 / 4 = 4.875
    assert t["mask"][0, 0, 4, 5] and t["heatmap"][0, 0, 4, 5] == 1
    torch.testing.assert_close(t["offset"][0, :, 4, 5], torch.tensor([0.0625, 0.875]))
    torch.testing.assert_close(t["size"][0, :, 4, 5], torch.log(torch.tensor([20.5 / 4, 15.0 / 4])))
    dets = decode_heatmaps(t["heatmap"], t["size"], t["offset"], stride=4, score_threshold=0.5)
    for (got, scores), want in zip(dets, boxes, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(scores, torch.ones(len(want)))
        order = torch.argsort(got[:, 0])
        torch.testing.assert_close(got[order], want[torch.argsort(want[:, 0])], atol=1e-4, rtol=0)


def test_loss_handles_empty_images_and_is_zero_for_perfect_maps() -> None:
    model = LesionDetector(width=4)
    boxes = [torch.tensor([[8.0, 8.0, 24.0, 20.0]]), torch.zeros(0, 4)]
    t = encode_targets(boxes, (8, 8), stride=4)
    # near-perfect logits: +20 at centres, very negative elsewhere
    logits = torch.where(t["mask"], torch.tensor(20.0), torch.tensor(-20.0))
    outputs = {"heatmap": logits, "size": t["size"].clone(), "offset": t["offset"].clone()}
    parts = model.loss(outputs, boxes)
    assert parts["total"].item() < 1e-6 and parts["size"].item() == 0 and parts["offset"].item() == 0
    # focal loss by hand on a single positive cell with logit 0 (p = 0.5): -(1-p)^2 log p
    outputs["heatmap"] = torch.where(t["mask"], torch.tensor(0.0), torch.tensor(-50.0))
    parts = model.loss(outputs, boxes)
    assert parts["heatmap"].item() == pytest.approx(0.25 * np.log(2), rel=1e-5)
    # only empty images: finite, negatives only
    empty = model.loss(model(torch.zeros(2, 1, 32, 32)), [np.zeros((0, 4)), np.zeros((0, 4))])
    assert torch.isfinite(empty["total"]) and empty["size"] == 0 and empty["heatmap"] > 0


def _nms_reference(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            b1, b2 = boxes[i].tolist(), boxes[j].tolist()
            iw = max(0.0, min(b1[2], b2[2]) - max(b1[0], b2[0]))
            ih = max(0.0, min(b1[3], b2[3]) - max(b1[1], b2[1]))
            inter = iw * ih
            union = (b1[2] - b1[0]) * (b1[3] - b1[1]) + (b2[2] - b2[0]) * (b2[3] - b2[1]) - inter
            if inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_nms_matches_brute_force(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(60, 2, generator=gen) * 50
    wh = torch.rand(60, 2, generator=gen) * 20 + 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(60, generator=gen)
    assert nms(boxes, scores, 0.5).tolist() == _nms_reference(boxes, scores, 0.5)
    assert nms(boxes, scores, 0.2).tolist() == _nms_reference(boxes, scores, 0.2)


def test_box_iou_hand_values() -> None:
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[50 / 150, 0.0, 1.0]]))
    assert nms(torch.zeros(0, 4), torch.zeros(0)).numel() == 0


def _disk_image(rng: np.random.Generator, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-tissue background with noise and 1-2 bright disks (+150 HU); boxes are the disks' bounds."""
    img = 40.0 + rng.normal(0, 20, (n, n))
    yy, xx = np.mgrid[:n, :n] + 0.5
    boxes: list[list[float]] = []
    while len(boxes) < rng.integers(1, 3):
        r = rng.uniform(4, 8)
        cx, cy = rng.uniform(r + 2, n - r - 2, 2)
        if any(abs(cx - (q[0] + q[2]) / 2) < 2 * r + 4 and abs(cy - (q[1] + q[3]) / 2) < 2 * r + 4 for q in boxes):
            continue
        boxes.append([cx - r, cy - r, cx + r, cy + r])
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += 150
    return torch.tensor(img / 1000, dtype=torch.float32)[None], torch.tensor(boxes, dtype=torch.float32)


def test_tiny_detector_learns_to_find_disks() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build_detector("centernet", width=8, neck_width=16)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    losses = []
    for _ in range(200):
        xs, bs = zip(*[_disk_image(rng) for _ in range(4)], strict=True)
        loss = model.loss(model(torch.stack(xs)), list(bs))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.4 * np.mean(losses[:20])
    model.eval()
    test_rng = np.random.default_rng(123)
    found = total = 0
    for _ in range(10):
        x, gt = _disk_image(test_rng)
        ((boxes, scores),) = model.detect(x[None], score_threshold=0.3)
        assert boxes.dtype == torch.float32 and boxes.shape[1] == 4 and scores.shape == (len(boxes),)
        if len(boxes):
            found += int((box_iou(gt, boxes).max(dim=1).values > 0.5).sum())
        assert len(boxes) <= len(gt) + 1  # at most one false positive per image
        total += len(gt)
    assert found == total, (found, total)  # every disk found with IoU > 0.5 (BatchNorm detector, width 8)


def test_flip_test_makes_detection_mirror_symmetric_and_survives_the_card(tmp_path) -> None:
    """With flip_test the scores are an average over the flip group: a mirrored image gives the same scores (the
    shipped weights without it do not); odd sizes run; the setting travels in the card."""
    from napari_lidnet.models.registry import load_model
    from napari_lidnet.models.weights import load_weights, save_weights

    shipped, _ = load_model("default", "detector")
    plain, flipped = with_flip_test(shipped, on=False), with_flip_test(shipped)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :160]
    hu = 40 + rng.normal(0, 15, yy.shape)
    for cy, cx, r, c in ((40, 50, 7, 50), (90, 120, 5, -40), (70, 30, 9, 35)):
        hu += c * ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)
    x = torch.from_numpy((hu / 1000).astype(np.float32))[None, None]

    def mirrored(det: LesionDetector) -> float:
        (_, s1), (_, s2) = det.detect(x, score_threshold=0.0)[0], det.detect(x.flip(-1), score_threshold=0.0)[0]
        return float(np.abs(s1[:5].numpy() - s2[:5].numpy()).max())

    assert mirrored(flipped) < 1e-5
    assert mirrored(plain) > 1e-3
    boxes, _ = flipped.detect(x[..., :125, :150], score_threshold=0.0)[0]
    assert len(boxes) and boxes[:, 2].max() <= 150 and boxes[:, 3].max() <= 125
    save_weights(flipped, tmp_path / "det", {})
    again, saved = load_weights(tmp_path / "det")
    assert again.flip_test and saved["config"]["flip_test"] is True
    assert not plain.flip_test and not LesionDetector(width=4).flip_test
