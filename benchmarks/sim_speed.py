"""Speed of the simulation layer at 512 x 512: phantoms/s, low-dose simulation slices/s, vs skimage radon+iradon.

Usage: PYTHONPATH=. python benchmarks/sim_speed.py [--slices 4] [--skimage-slices 1] [--threads 2] [--random]
         [--montage docs/sim-randomized.png]
Also prints the calibration check: liver noise SD (HU) at full dose for the default I0, and the speed of detailed,
randomised phantoms and of a random-domain dataset slice. ``--montage`` draws randomised head / chest / abdomen
slices (full and low dose, a smooth and a sharp kernel) to a PNG and exits.
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


def montage(path: str, size: int = 512) -> None:
    """Randomised head / chest / abdomen slices: full and low dose with a smooth and a sharp kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_lidnet.sim.scanner import sample_scanner

    rows = [("head", 11, (40, 100)), ("chest", 12, (-500, 1500)), ("abdomen", 13, (50, 400))]
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.4))
    for r, (kind, seed, (level, width)) in enumerate(rows):
        p = make_phantom(seed, kind=kind, size=size, randomize=True, contrast_enhanced=None, n_lesions=2)
        while kind == "head" and (p.labels == LABELS["wm"]).mean() < 0.08:  # show the ventricle level
            seed += 100
            p = make_phantom(seed, kind=kind, size=size, randomize=True, contrast_enhanced=None, n_lesions=2)
        sc = sample_scanner(np.random.default_rng(seed), size=size)
        for c, kernel in enumerate(("smooth", "bone")):
            kw = {**sc.kwargs(), "filter_name": kernel}
            full, low = lowdose.simulate_pair(p.hu, spacing_mm=p.spacing_mm, seed=seed, **kw)
            for k, (img, what) in enumerate(((full, "full dose"), (low, f"{sc.dose:.0%} dose"))):
                ax = axes[r, 2 * c + k]
                ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
                for x1, y1, x2, y2 in p.boxes:
                    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="tab:red", lw=0.8))
                ax.set_title(f"{kind}, {kernel} kernel, {what}\n{p.spacing_mm * size:.0f} mm FOV, {sc.n_views} views, "
                             f"{sc.thickness_mm:.1f} mm", fontsize=9)  # fmt: skip
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"wrote {path}")


def _random_speed(size: int, n: int) -> None:
    """Detailed randomised phantoms and random-domain pairs (each slice its own protocol)."""
    from napari_lidnet.sim.scanner import sample_scanner

    for kind in ("head", "chest", "abdomen"):
        _, dt = _timed(lambda k=kind: [make_phantom(s, kind=k, size=size, randomize=True) for s in range(n)])
        print(f"randomised {kind} phantom: {dt / n:.3f} s/slice")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for s in range(n):
        p = make_phantom(s, kind="chest", size=size, randomize=True)
        lowdose.simulate_pair(p.hu, spacing_mm=p.spacing_mm, seed=s, **sample_scanner(rng, size=size).kwargs())
    print(f"random-domain slice (phantom + pair, own protocol): {(time.perf_counter() - t0) / n:.2f} s/slice")


def _skimage(stack: np.ndarray, ks: int, n_angles: int, ours: float) -> None:
    theta = np.arange(n_angles) * 180.0 / n_angles
    t0 = time.perf_counter()
    for k in range(ks):
        mu_np = lowdose.MU_WATER * np.clip(1 + stack[k % len(stack)] / 1000.0, 0, None)
        sk = radon(mu_np, theta, circle=True)
        iradon(sk, theta, filter_name="shepp-logan", circle=True)
    t_sk = (time.perf_counter() - t0) / ks
    print(f"skimage radon + iradon (circle, same views): {t_sk:.2f} s/slice; ours forward + FBP {ours:.2f} s/slice "
          f"-> {t_sk / ours:.1f}x faster than skimage")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--skimage-slices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--random", action="store_true", help="also time randomised phantoms and random-domain pairs")
    ap.add_argument("--montage", default=None, help="write the randomised-slice montage PNG here and exit")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.montage:
        montage(args.montage, args.size)
        return
    if args.random:
        _random_speed(args.size, args.slices)
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

    _skimage(stack, args.skimage_slices, n_angles, ours)

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
