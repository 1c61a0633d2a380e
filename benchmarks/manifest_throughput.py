"""Training throughput from a slice manifest whose low-dose partners are simulated (DeepLesion-style archive).

    PYTHONPATH=. python benchmarks/manifest_throughput.py                 # 6 slices of 512 x 512, 3 epochs
    PYTHONPATH=. python benchmarks/manifest_throughput.py --slices 8 --size 256 --epochs 4 --trainer-steps 12

Writes a small DeepLesion-like tree (16-bit PNG key slices + DL_info.csv) into a temporary folder, indexes it at
``--dose`` (no low-dose files: every low dose is simulated), then measures training slices per second (one slice
read per patch) through the trainer's data path (``read_manifest`` + ``_training.patches.patch_batches``), epoch by
epoch, and optionally through ``Trainer`` itself (pixel-loss steps from a new manifest file, run twice: cold,
then warm). Before the low-dose
cache every patch re-simulated its slice; with it, the first epoch simulates each slice once and later epochs read
the cache (``<manifest>.lowdose/``). Uses only APIs that existed before the cache, so it runs on older trees too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
    "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
    "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test\n"
)


def make_archive(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` key slices (an elliptic body, soft-tissue texture, one bright lesion each) with a DL_info.csv."""
    from napari_lidnet.io.png16 import write_png_hu

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    lines = [HEADER]
    for k in range(n):
        hu = np.full((size, size), -1000.0, np.float32)
        body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.46) ** 2 < 1
        hu[body] = 40 + 15 * rng.standard_normal(body.sum())
        cx, cy, r = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65), rng.uniform(0.03, 0.06)
        hu[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += 80
        series = root / "Images_png" / f"{k + 1:06d}_01_01"
        series.mkdir(parents=True, exist_ok=True)
        write_png_hu(series / "100.png", np.rint(hu))
        x1, y1, x2, y2 = ((cx - r) * size, (cy - r) * size, (cx + r) * size, (cy + r) * size)
        lines.append(
            f'{k + 1:06d}_01_01_100.png,{k + 1},1,1,100,"0, 0, 0, 0","{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}",'
            f'"5, 5","0.5, 0.5, 0.5",2,0,"99, 101","0.7, 0.7, 5","{size}, {size}","-175, 275",F,50,1\n'
        )
    (root / "DL_info.csv").write_text("".join(lines))
    return root


def data_path(manifest: Path, epochs: int, patch: int, batch: int) -> list[dict[str, float]]:
    """Slices/s through read_manifest + patch_batches, one record per epoch (each slice drawn once per epoch)."""
    from napari_lidnet._training.patches import patch_batches
    from napari_lidnet.datasets.manifest import read_manifest

    out = []
    for epoch in range(epochs):
        slices = read_manifest(manifest)  # as a new run (or a resumed one) reads it
        n_batches = max(1, len(slices) // batch)
        t0 = time.perf_counter()
        n = sum(len(b.low) for b in patch_batches(slices, patch, batch, n_batches, seed=epoch))
        seconds = time.perf_counter() - t0
        out.append({"epoch": epoch + 1, "slices": n, "seconds": seconds, "slices_per_s": n / seconds})
    return out


def trainer_path(manifest: Path, run: Path, steps: int, patch: int, batch: int) -> dict[str, float]:
    """Slices/s of ``Trainer`` pixel-loss steps (fastdn, width 16) from the manifest file."""
    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.trainer import Trainer

    cfg = TrainConfig(
        out=str(run), data=str(manifest), mode="pixel", pretrain_denoiser_steps=steps, pretrain_detector_steps=0,
        rounds=0, batch_size=batch, patch_size=patch, denoiser_kwargs={"width": 16}, val_fraction=0.0, device="cpu",
    )  # fmt: skip
    t0 = time.perf_counter()
    records = [r for r in Trainer(cfg).run() if "losses" in r]
    seconds = time.perf_counter() - t0
    return {"steps": len(records), "slices": len(records) * batch, "seconds": seconds,
            "slices_per_s": len(records) * batch / seconds}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dose", type=float, default=0.25)
    p.add_argument("--trainer-steps", type=int, default=0, help="also time this many Trainer steps (0: skip)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from napari_lidnet.datasets.manifest import index_archive

    with tempfile.TemporaryDirectory() as tmp:
        root = make_archive(Path(tmp) / "DeepLesion", a.slices, a.size)
        manifest = index_archive(root, Path(tmp) / "index" / "m.jsonl", dose=a.dose, seed=0)
        result = {"slices": a.slices, "size": a.size, "dose": a.dose, "patch": a.patch, "batch": a.batch,
                  "data_path": data_path(manifest, a.epochs, a.patch, a.batch)}  # fmt: skip
        if a.trainer_steps:  # a new manifest (cold cache), then a second run on it (warm: a resumed or repeated run)
            fresh = index_archive(root, Path(tmp) / "index2" / "m.jsonl", dose=a.dose, seed=1)
            result["trainer"] = [
                trainer_path(fresh, Path(tmp) / f"run{k}", a.trainer_steps, a.patch, a.batch) for k in (1, 2)
            ]
    for rec in result["data_path"]:
        print(f"epoch {rec['epoch']}: {rec['slices']} slices in {rec['seconds']:.2f} s = {rec['slices_per_s']:.2f}/s")
    for k, t in enumerate(result.get("trainer", []), 1):
        print(
            f"Trainer run {k}: {t['steps']} steps, {t['slices']} slices in {t['seconds']:.2f} s = "
            f"{t['slices_per_s']:.2f}/s"
        )
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
