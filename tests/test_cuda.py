"""On a CUDA GPU (skipped elsewhere): the shipped models, the low-dose simulator and the trainer give what the CPU
gives. CI has no GPU; these run on a lent GPU machine (see the README's GPU section)."""

import numpy as np
import pytest
import torch

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.trainer import Trainer
from napari_lidnet.inference import denoise, detect
from napari_lidnet.io.dataset import Sample
from napari_lidnet.models.registry import load_model
from napari_lidnet.sim.lowdose import simulate_low_dose
from napari_lidnet.sim.phantom import make_phantom

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=4, size=512)


def test_shipped_models_give_the_cpu_result(phantom):
    low = simulate_low_dose(phantom.hu, 0.25, phantom.spacing_mm, seed=1)
    torch.backends.cudnn.allow_tf32 = False  # compare arithmetic, not TF32 rounding
    denoiser, _ = load_model("default", kind="denoiser")
    on_cpu = denoise(denoiser, low, device="cpu")
    on_gpu = denoise(denoiser.cuda(), low, device="cuda")
    error = np.abs(on_gpu - on_cpu)
    assert error.max() < 1.0 and error.mean() < 0.1  # HU (noise SD ~7 HU): float32 sums in another order
    detector, _ = load_model("default", kind="detector")
    rows_cpu = detect(detector, on_cpu, device="cpu", score_threshold=0.2)
    rows_gpu = detect(detector.cuda(), on_cpu, device="cuda", score_threshold=0.2)
    assert len(rows_cpu[rows_cpu[:, 5] > 0.3]) > 0
    for a, b in ((rows_cpu, rows_gpu), (rows_gpu, rows_cpu)):  # every confident box has its twin on the other side
        for row in a[a[:, 5] > 0.3]:
            twin = b[np.argmax(_iou(row[1:5], b[:, 1:5]))]
            assert _iou(row[1:5], twin[None, 1:5])[0] > 0.98 and abs(twin[5] - row[5]) < 0.01, (row, twin)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


@pytest.mark.parametrize("fast", [False, True])
def test_low_dose_noise_on_the_gpu_has_the_cpu_statistics(phantom, fast):
    diff = {}
    for device in ("cpu", "cuda"):
        low = simulate_low_dose(phantom.hu, 0.25, phantom.spacing_mm, seed=2, device=device, fast=fast)
        diff[device] = low - phantom.hu
    body = phantom.hu > -500
    sd_cpu, sd_gpu = diff["cpu"][body].std(), diff["cuda"][body].std()
    assert abs(sd_gpu / sd_cpu - 1) < 0.05 and abs(diff["cuda"][body].mean()) < 2.0


def test_trainer_runs_on_the_gpu(tmp_path, phantom):
    rng = np.random.default_rng(0)
    samples = [
        Sample(f"s{i}", phantom.hu, phantom.hu + rng.normal(0, 30, phantom.hu.shape).astype(np.float32),
               np.asarray(phantom.boxes, np.float32), phantom.spacing_mm)
        for i in range(4)
    ]  # fmt: skip
    cfg = TrainConfig(
        out=str(tmp_path / "run"), mode="lidnet", pretrain_denoiser_steps=20, pretrain_detector_steps=10, rounds=1,
        denoiser_steps=5, detector_steps=5, batch_size=8, patch_size=128, val_fraction=0.25, device="cuda",
    )  # fmt: skip
    records = list(Trainer(cfg, samples).run())
    assert records[-1]["stage"] == "finished" and records[-1]["best"]["psnr"] > records[-1]["start"]["psnr"]
    model, card = load_model(str(tmp_path / "run" / "best_denoiser"), kind="denoiser")
    assert next(model.parameters()).device.type == "cpu" and card["training"]["config"]["device"] == "cuda"
