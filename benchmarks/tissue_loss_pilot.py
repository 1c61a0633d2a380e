"""Denoisers on a simulated validation set: PSNR in the soft-tissue window and RMSE over the whole image (HU).

The second number watches what a loss that favours soft tissue might give up elsewhere (bone, air, lung edges);
rule: ``benchmarks/results/tissue_loss_prereg.md``. Simulated data only, never the real evaluation slices.

    PYTHONPATH=. python benchmarks/tissue_loss_pilot.py default runs/tissue/A/best_denoiser \
        runs/tissue/B/best_denoiser --data data/rand-val-clean
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_lidnet.inference import denoise
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.metrics.bootstrap import paired_difference
from napari_lidnet.metrics.image import psnr
from napari_lidnet.models.registry import load_model


def measure(model: torch.nn.Module, samples: list) -> dict[str, np.ndarray]:
    """Per slice: PSNR (dB, soft-tissue window) and whole-image RMSE (HU) of the denoised low-dose image."""
    out: dict[str, list[float]] = {"psnr": [], "rmse_all": []}
    for s in samples:
        den = denoise(model, s.low_hu)
        out["psnr"].append(psnr(den, s.full_hu))
        out["rmse_all"].append(float(np.sqrt(np.mean((den.astype(np.float64) - s.full_hu) ** 2))))
    return {k: np.asarray(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("candidates", nargs="+", help="denoiser weights: 'default' or paths")
    p.add_argument("--data", required=True, help="a simulated validation dataset")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    samples = read_dataset(a.data)
    results = {name: measure(load_model(name, "denoiser")[0], samples) for name in a.candidates}
    base = results[a.candidates[0]]
    print(f"{a.data}: {len(samples)} slices; differences against {a.candidates[0]}, paired by slice (95% bootstrap)")
    for name, r in results.items():
        diff = paired_difference(r["psnr"], base["psnr"])
        lo, hi = diff.ci
        ratio = r["rmse_all"].mean() / base["rmse_all"].mean()
        print(f"{name}: PSNR {r['psnr'].mean():.3f} dB ({diff.estimate:+.3f} [{lo:+.3f}, {hi:+.3f}]); "
              f"whole-image RMSE {r['rmse_all'].mean():.2f} HU (x{ratio:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
