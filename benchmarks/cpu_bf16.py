"""Does the unet keep its quality when inference runs its inner levels in bfloat16 on the CPU?

Usage: ``PYTHONPATH=. python benchmarks/cpu_bf16.py --results benchmarks/results/cpu_bf16 [--n 12] [--threads 2]``

Simulated slices only (abdomen, chest, head in turn, ``randomize=True`` domains, seeds 9000+; never pydicom's real
slices), 25% and 10% dose (``simulate_low_dose(fast=True)``). The shipped denoiser runs in float32 and under CPU
bfloat16 autocast (as ``inference`` runs it on a CPU with native bfloat16: head and tail float32, the rest
bfloat16), in the same process; per dose: the PSNR change (-160..240 HU against the noiseless phantom) with a 95%
bootstrap interval over slices, and the RMS difference of the two outputs. Then the median time of each on a
512 x 512 slice. Rule fixed before the run (``results/cpu_bf16_prereg.md``): adopted when the mean PSNR change is
at least -0.02 dB at both doses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_io import interval, refuse_existing, write_results
from benchmarks.speed import time_model
from napari_lidnet.metrics.bootstrap import mean_ci
from napari_lidnet.models.device import cpu_has_bf16
from napari_lidnet.models.registry import load_model
from napari_lidnet.sim.lowdose import simulate_low_dose
from napari_lidnet.sim.phantom import make_phantom

DOSES = (0.25, 0.1)


def psnr(img: np.ndarray, ref: np.ndarray) -> float:
    """PSNR (dB) over the -160..240 HU window."""
    a, b = np.clip(img, -160, 240), np.clip(ref, -160, 240)
    return float(10 * np.log10(400.0**2 / np.mean((a - b) ** 2)))


def run(model: torch.nn.Module, hu: np.ndarray, bf16: bool) -> np.ndarray:
    """The model on one HU slice, channels-last as inference runs it, in float32 or with bfloat16 inside."""
    x = torch.from_numpy(hu.astype(np.float32) / 1000.0)[None, None].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return model(x)[0, 0].float().numpy() * 1000.0


def median_s(model: torch.nn.Module, bf16: bool, runs: int = 9) -> float:
    """Median time of ``run`` on a 512 x 512 slice of noise (``speed.time_model``: two warm-up runs first)."""
    hu = np.random.default_rng(0).normal(0.0, 50.0, (512, 512))
    return time_model(lambda _x: run(model, hu, bf16), torch.zeros(1), runs, torch.device("cpu"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, help="stem of the .md and .json written")
    p.add_argument("--n", type=int, default=12, help="simulated slices per dose")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    stem = Path(a.results)
    refuse_existing(stem)
    torch.set_num_threads(a.threads)
    model, _card = load_model("default", kind="denoiser")
    model = model.to(memory_format=torch.channels_last)
    raw: dict = {"n": a.n, "native_bf16": cpu_has_bf16(), "doses": {}}
    lines = ["# The unet under CPU bfloat16 autocast vs float32 (simulated slices)", "",
             "| dose | low dose PSNR | float32 PSNR | bfloat16 - float32 (dB, 95% CI) | worst slice | RMS diff (HU) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for dose in DOSES:
        rows = []
        for i in range(a.n):
            ph = make_phantom(9000 + i, ("abdomen", "chest", "head")[i % 3], size=512, randomize=True)
            low = simulate_low_dose(ph.hu, dose, ph.spacing_mm, seed=i, fast=True)
            f32, b16 = run(model, low, False), run(model, low, True)
            rms = float(np.sqrt(np.mean((b16 - f32) ** 2)))
            rows.append((psnr(low, ph.hu), psnr(f32, ph.hu), psnr(b16, ph.hu), rms))
        r = np.array(rows)
        delta = mean_ci(r[:, 2] - r[:, 1]).as_dict()
        raw["doses"][str(dose)] = {"rows": rows, "delta": delta}
        lines.append(f"| {dose:.0%} | {r[:, 0].mean():.2f} | {r[:, 1].mean():.2f} | {interval(delta, 4, True)} | "
                     f"{(r[:, 2] - r[:, 1]).min():+.4f} | {r[:, 3].mean():.3f} |")  # fmt: skip
    t32, t16 = median_s(model, False), median_s(model, True)
    raw.update(float32_s=t32, bfloat16_s=t16)
    native = "native" if raw["native_bf16"] else "emulated (no AVX512-BF16/AMX: slower)"
    lines += ["", f"512 x 512 slice, {torch.get_num_threads()} threads: float32 {t32:.4f} s, bfloat16 inside "
              f"{t16:.4f} s ({t32 / t16:.2f}x; bfloat16 {native})."]  # fmt: skip
    ok = all(v["delta"]["estimate"] >= -0.02 for v in raw["doses"].values())
    lines.append(f"Rule (mean change >= -0.02 dB at both doses): {'met' if ok else 'not met'}.")
    write_results(stem, lines, raw)


if __name__ == "__main__":
    main()
