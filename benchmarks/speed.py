"""Inference speed of the denoisers and the detector on one 512x512 slice.

Usage: ``PYTHONPATH=. python benchmarks/speed.py [--device cuda] [--threads 2] [--runs 7] [--size 512]
[--models redcnn,dncnn,fastdn,unet,unet-fp32,detector,detector-flips] [--bm3d]``

Every model runs as ``inference`` runs it: channels-last where it prefers it, and the unet's inner levels in
bfloat16 on a CPU with native bfloat16 (``models.device.cpu_has_bf16``); ``unet-fp32`` is the unet in float32.

Median of ``--runs`` timed runs after two warm-up runs, in ``torch.inference_mode``; RED-CNN gets fewer runs on the
CPU (it takes seconds). Prints a table, the RED-CNN / fastdn ratio measured in the same run, and fastdn + detector
against the 0.3 s per-slice target; ``--bm3d`` also times BM3D (the `bm3d` package, CPU) on the same slice with
10 HU of noise and prints its ratio to the default architecture (unet) measured in the same process, blind and
told the SD to remove (``strength.keep_noise`` timed on the same slice, and on a simulated abdomen with that noise:
its search for flat tissue costs most on a field of noise, which is body everywhere).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.device import cpu_has_bf16

TARGET_S = 0.3


def time_model(fn, x: torch.Tensor, runs: int, device: torch.device) -> float:
    """Median wall time of ``fn(x)`` in seconds (synchronising CUDA)."""

    def once() -> float:
        t0 = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    with torch.inference_mode():
        once()
        once()
        return statistics.median(once() for _ in range(runs))


def _bfloat16(fn):
    """``fn`` under CPU bfloat16 autocast, as ``inference`` runs a model that declares ``cpu_bf16``."""

    def run(x: torch.Tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(x)

    return run


def _bm3d_ratio(x: torch.Tensor, unet_s: float, runs: int) -> dict[str, float]:
    """Median BM3D time on the slice (HU scale, 10 HU noise, told its SD) and its ratio to the unet's."""
    import bm3d

    img = x[0, 0].cpu().numpy().astype(np.float64) * 200.0  # 0.05 net scale -> 10 HU of noise
    t = []
    for _ in range(max(1, min(runs, 3))):
        t0 = time.perf_counter()
        bm3d.bm3d(img, sigma_psd=10.0)
        t.append(time.perf_counter() - t0)
    bm = statistics.median(t)
    told = unet_s + _strength_s(img, x, runs)
    body = unet_s + _strength_s(_phantom_slice(img), x, runs)
    print(f"BM3D {bm:.2f} s per slice; BM3D / unet: {bm / unet_s:.0f}x; BM3D / (unet told the SD to remove, "
          f"{told:.4f} s): {bm / told:.0f}x; on a simulated abdomen instead of a field of noise ({body:.4f} s): "
          f"{bm / body:.0f}x")  # fmt: skip
    return {"bm3d": bm, "bm3d_over_unet": bm / unet_s, "unet_told_sd": told, "bm3d_over_unet_told": bm / told,
            "unet_told_sd_phantom": body, "bm3d_over_unet_told_phantom": bm / body}  # fmt: skip


def _phantom_slice(noise: np.ndarray) -> np.ndarray:
    """A simulated 512 x 512 abdomen (air around the body) plus the slice's noise: telling the SD costs a search for
    flat tissue inside the body, which a field of noise (all of it "body") makes as long as it can be."""
    from napari_lidnet.sim.phantom import make_phantom

    hu = make_phantom(0, "abdomen", size=noise.shape[0]).hu
    return hu + noise.astype(hu.dtype)


def _strength_s(img, x: torch.Tensor, runs: int) -> float:
    """Median time of ``strength.keep_noise`` (what ``--remove-sd`` adds to a denoising) on the slice."""
    from napari_lidnet.strength import keep_noise

    half = 0.5 * img
    return time_model(lambda _x: keep_noise(img, half, 5.0), x, runs, torch.device("cpu"))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models", default="redcnn,dncnn,fastdn,unet,detector", help="comma-separated subset")
    parser.add_argument("--bm3d", action="store_true", help="time BM3D on the same slice (CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = torch.zeros(1, 1, args.size, args.size, device=device)
    x.normal_(0.0, 0.05)

    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    detectors = {"detector": LesionDetector(), "detector-flips": LesionDetector(flip_test=True)}  # shipped: flips
    models = {name: detectors.get(name) or build_denoiser(name.removesuffix("-fp32")) for name in wanted}
    times: dict[str, float] = {}
    heavy_runs = args.runs if device.type == "cuda" else 3
    print(f"device={device} threads={torch.get_num_threads()} slice={args.size}x{args.size} torch={torch.__version__}")
    print(f"{'model':<10}{'params':>12}{'median s':>12}  precision")
    for name, model in models.items():
        model = model.to(device).eval()
        xin = x
        if device.type == "cpu" and getattr(model, "prefers_channels_last", False):  # as inference runs it
            model, xin = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        fn = model.detect if name in detectors else model
        bf16 = device.type == "cpu" and getattr(model, "cpu_bf16", False) and cpu_has_bf16() and "fp32" not in name
        if bf16:
            fn = _bfloat16(fn)
        runs = heavy_runs if name in ("redcnn", "dncnn") else args.runs
        times[name] = time_model(fn, xin, runs, device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name:<10}{n_params:>12,}{times[name]:>12.4f}  {'bfloat16 inside' if bf16 else 'float32'}")
    result = dict(times)
    if "redcnn" in times and "fastdn" in times:
        result["ratio"] = times["redcnn"] / times["fastdn"]
        print(f"RED-CNN / fastdn speed ratio: {result['ratio']:.1f}x")
    if args.bm3d and "unet" in times:
        result.update(_bm3d_ratio(x, times["unet"], args.runs))
    if "fastdn" in times and "detector" in times:
        result["total"] = total = times["fastdn"] + times["detector"]
        verdict = "meets" if total < TARGET_S else "misses"
        print(f"fastdn + detector: {total:.4f} s per slice ({verdict} the {TARGET_S} s target)")
    return result


if __name__ == "__main__":
    main()
