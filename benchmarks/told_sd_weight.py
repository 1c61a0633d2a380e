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

from real_anatomy import RealSlice, simulated_slices  # noqa: E402

from napari_lidnet.inference import denoise  # noqa: E402
from napari_lidnet.metrics.image import psnr  # noqa: E402  (over the (-160, 240) HU window)
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose  # noqa: E402
from napari_lidnet.strength import blend_weight, residual_sd  # noqa: E402

GRID = np.linspace(0.0, 1.0, 41)


def best_weight(low: np.ndarray, den: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(w, PSNR) of the best scalar share ``w`` (grid of 41 in [0, 1]) of the residual put back, against ``ref``."""
    scores = [psnr(den + np.float32(x) * (low - den), ref) for x in GRID]
    best = int(np.argmax(scores))
    return float(GRID[best]), float(scores[best])


def one_case(net: torch.nn.Module, sl: RealSlice, seed: int, dose: float) -> dict:
    """The product's weight and the best scalar weight on one simulated normal-dose slice."""
    ref = sl.hu
    low = simulate_low_dose(ref, dose, sl.pixel_mm, seed=seed).astype(np.float32)
    sd = float(np.std((low - ref)[sl.body]))
    den = np.asarray(denoise(net, low, batch_size=1))
    rsd = residual_sd(low, den)
    w = blend_weight(sd, rsd)
    best_w, psnr_best = best_weight(low, den, ref)
    return {"slice": sl.name, "pixel_mm": sl.pixel_mm, "dose": dose, "inserted_sd": sd, "residual_sd": rsd, "w": w,
            "psnr_w": psnr(den + w * (low - den), ref), "best_w": best_w, "psnr_best": psnr_best,
            "ideal_w": dose}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=6, help="simulated slices (real_anatomy.simulated_slices)")
    p.add_argument("--seed0", type=int, default=9600)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    net = load_model("default", "denoiser")[0]
    print("| slice | pixel (mm) | dose | inserted SD | residual SD | w used | PSNR | best w | PSNR | ideal w |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, sl in enumerate(simulated_slices(a.n, a.seed0)):
        for dose in (0.25, 0.1):
            r = one_case(net, sl, a.seed0 + k + 1, dose)
            print(f"| {r['slice']} | {r['pixel_mm']:.3f} | {dose} | {r['inserted_sd']:.2f} | "
                  f"{r['residual_sd']:.2f} | {r['w']:.3f} | {r['psnr_w']:.2f} | {r['best_w']:.3f} | "
                  f"{r['psnr_best']:.2f} | {r['ideal_w']:.3f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
