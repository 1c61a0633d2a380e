"""Is "told the SD" keeping the right share of the noise? Simulation only, where the answer is known.

The setting of the real-anatomy judge, on simulated anatomy: a normal-dose reference with its own noise (a full-dose
draw of the simulator), low dose made by noise insertion (``simulate_low_dose``), the denoiser told the SD of the
inserted noise over the body. ``napari_lidnet.strength`` keeps the share ``w = 1 - sd**2 / residual_sd**2`` of the
residual; with the same noise texture, the ideal share is var(reference noise) / var(all noise): 1/4 at 25% dose and
1/10 at 10% (the inserted variance is (1/d - 1) times the reference's, so the share is d). Rows: the weight the
product uses and the best scalar weight (grid of 41) by PSNR against the reference, over the (-160, 240) HU window.

    PYTHONPATH=. python benchmarks/told_sd_weight.py [--n 6] [--seed0 9600] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from real_anatomy import tissue_masks  # noqa: E402

from napari_lidnet.inference import denoise  # noqa: E402
from napari_lidnet.metrics.image import psnr  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose, simulate_pair  # noqa: E402
from napari_lidnet.sim.phantom import make_phantom  # noqa: E402
from napari_lidnet.strength import blend_weight, residual_sd  # noqa: E402

KINDS = ("head", "abdomen", "chest")
WINDOW = (-160.0, 240.0)


def _psnr(a: np.ndarray, ref: np.ndarray) -> float:
    return psnr(a, ref, window=WINDOW)


def one_case(net: torch.nn.Module, kind: str, seed: int, dose: float) -> dict:
    """The product's weight and the best scalar weight on one simulated slice."""
    ph = make_phantom(seed, kind, size=512, n_lesions=0, randomize=True)
    ref = np.maximum(simulate_pair(ph.hu, 0.25, ph.spacing_mm, seed=seed)[0], -1024).astype(np.float32)
    low = simulate_low_dose(ref, dose, ph.spacing_mm, seed=seed + 1).astype(np.float32)
    body, _ = tissue_masks(ref)
    sd = float(np.std((low - ref)[body]))
    den = np.asarray(denoise(net, low, batch_size=1))
    rsd = residual_sd(low, den)
    w = blend_weight(sd, rsd)
    grid = np.linspace(0.0, 1.0, 41)
    scores = [_psnr(den + x * (low - den), ref) for x in grid]
    best = int(np.argmax(scores))
    return {"kind": kind, "seed": seed, "pixel_mm": float(ph.spacing_mm), "dose": dose, "inserted_sd": sd,
            "residual_sd": rsd, "w": w, "psnr_w": _psnr(den + w * (low - den), ref), "best_w": float(grid[best]),
            "psnr_best": scores[best], "ideal_w": dose}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=6, help="simulated slices (head, abdomen, chest in turn)")
    p.add_argument("--seed0", type=int, default=9600)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = load_model("default", "denoiser")[0]
    print("| slice | pixel (mm) | dose | inserted SD | residual SD | w used | PSNR | best w | PSNR | ideal w |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in range(a.n):
        for dose in (0.25, 0.1):
            r = one_case(net, KINDS[k % len(KINDS)], a.seed0 + k, dose)
            print(f"| {r['kind']}-{r['seed']} | {r['pixel_mm']:.3f} | {dose} | {r['inserted_sd']:.2f} | "
                  f"{r['residual_sd']:.2f} | {r['w']:.3f} | {r['psnr_w']:.2f} | {r['best_w']:.3f} | "
                  f"{r['psnr_best']:.2f} | {r['ideal_w']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
