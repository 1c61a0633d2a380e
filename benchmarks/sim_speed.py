"""Speed of the simulation layer at 512 x 512: phantoms/s, low-dose simulation slices/s, vs skimage radon+iradon.

Usage: PYTHONPATH=. python benchmarks/sim_speed.py [--slices 4] [--skimage-slices 1] [--threads 2]
Also prints the calibration check: liver noise SD (HU) at full dose for the default I0.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import iradon, radon

from napari_lidnet.sim import lowdose, projector
from napari_lidnet.sim.phantom import LABELS, make_phantom


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--skimage-slices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size, n = args.size, args.slices
    n_angles = projector.default_n_angles(size)
    print(f"size {size}, {n_angles} views, {projector.detector_bins(size)} detector bins, {args.threads} CPU threads")

    phantoms, dt = _timed(lambda: [make_phantom(s, size=size) for s in range(n)])
    print(f"phantom generation: {n / dt:.2f} slices/s ({dt / n:.3f} s/slice)")
    stack = np.stack([p.hu for p in phantoms])
    px = phantoms[0].spacing_mm  # same FOV for the batch (the physics does not care)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        simulate_pair_warm = lowdose.simulate_pair(stack[:1], 0.25, px, seed=0, device=dev)  # warm-up, caches
        del simulate_pair_warm
        if dev == "cuda":
            torch.cuda.synchronize()
        _, dt = _timed(lowdose.simulate_pair, stack, 0.25, px, seed=0, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] simulate_pair (1 projection + 2 noisy FBPs): {n / dt:.2f} slices/s ({dt / n:.2f} s/slice)")
        _, dt2 = _timed(lowdose.simulate_low_dose, stack, 0.25, px, seed=0, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] simulate_low_dose (noise insertion): {n / dt2:.2f} slices/s ({dt2 / n:.2f} s/slice)")
        mu = lowdose.hu_to_mu(torch.from_numpy(stack[:1]).to(dev))
        _, tf = _timed(projector.forward_project, mu, px, circle=True)
        sino = projector.forward_project(mu, px, circle=True)
        _, tb = _timed(projector.fbp, sino, size, px, circle=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] forward projection {tf:.2f} s, FBP {tb:.2f} s per slice")
        if dev == "cpu":
            ours = tf + tb

    ks = args.skimage_slices
    theta = np.arange(n_angles) * 180.0 / n_angles
    t0 = time.perf_counter()
    for k in range(ks):
        mu_np = lowdose.MU_WATER * np.clip(1 + stack[k % n] / 1000.0, 0, None)
        sk = radon(mu_np, theta, circle=True)
        iradon(sk, theta, filter_name="shepp-logan", circle=True)
    t_sk = (time.perf_counter() - t0) / ks
    print(f"skimage radon + iradon (circle, same views): {t_sk:.2f} s/slice; ours forward + FBP {ours:.2f} s/slice "
          f"-> {t_sk / ours:.1f}x faster than skimage")  # fmt: skip

    # calibration: liver noise SD at dose 1 from two independent full-dose realisations
    for seed, pix in ((0, 0.6), (1, 0.9)):
        p = make_phantom(seed, size=size, pixel_mm=pix, n_lesions=0)
        a, b = lowdose.simulate_pair(p.hu, 1.0, p.spacing_mm, seed=1, device=devices[-1])
        liver = ndimage.binary_erosion(p.labels == LABELS["liver"], iterations=5)
        sd = float(np.std((a - b)[liver]) / np.sqrt(2))
        print(f"calibration: pixel {pix} mm, I0 {lowdose.I0_DEFAULT:.2g}: liver noise SD {sd:.1f} HU at full dose, "
              f"{sd / np.sqrt(0.25):.1f} HU expected at 25% dose")  # fmt: skip


if __name__ == "__main__":
    main()
