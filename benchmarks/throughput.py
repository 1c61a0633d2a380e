"""Volume throughput of the inference engine: slices per second for the denoiser, the detector and both.

    PYTHONPATH=. python benchmarks/throughput.py                       # CPU (2 threads), CUDA too when present
    PYTHONPATH=. python benchmarks/throughput.py --denoiser redcnn --slices 32 --devices cpu

``--denoiser``/``--detector`` take a registry name or weights path, or an architecture name for a fresh
random-init model (``fastdn``, ``redcnn``, ``dncnn``; ``centernet``); default: the shipped/user default model,
else a fresh ``fastdn`` and ``LesionDetector``. Timings are medians of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from napari_lidnet import inference as inf
from napari_lidnet.models.denoisers import DENOISERS, build_denoiser
from napari_lidnet.models.detector import DETECTORS, build_detector


def pick_model(name: str | None, kind: str) -> tuple[torch.nn.Module, str]:
    """A model by registry name/path, by architecture (fresh, random init), or the default; plus a label."""
    from napari_lidnet.models.registry import default_model, load_model

    archs, build = (DENOISERS, build_denoiser) if kind == "denoiser" else (DETECTORS, build_detector)
    if name is None:
        info = default_model(kind)
        if info is not None:
            return load_model(info.path, kind=kind)[0], info.name
        name = "fastdn" if kind == "denoiser" else "centernet"
    if name in archs:
        torch.manual_seed(0)
        return build(name).eval(), f"{name} (fresh)"
    return load_model(name, kind=kind)[0], name


def phantom_volume(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A noisy abdomen-like ellipse with a few brighter disks, HU."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (0.4 * size)) ** 2 + ((xx - size / 2) / (0.46 * size)) ** 2 < 1
    img = np.where(body, 40.0, -1000.0)
    for _ in range(4):
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 30) ** 2] = 120.0
    return (img[None] + rng.normal(0, 40, (n, size, size))).astype(np.float32)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time (s) of ``fn`` after one warm-up call."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--denoiser")
    ap.add_argument("--detector")
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 16 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when available")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    den, den_label = pick_model(args.denoiser, "denoiser")
    det, det_label = pick_model(args.detector, "detector")
    vol = phantom_volume(args.slices, args.size)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"denoiser: {den_label}; detector: {det_label}; volume {vol.shape}; CPU threads {args.threads}")
    if torch.cuda.is_available():
        print(f"CUDA device: {torch.cuda.get_device_name(0)}")
    header = f"{'device':<8}{'batch':>6}{'amp':>6}{'denoise sl/s':>14}{'detect sl/s':>13}{'both sl/s':>11}"
    print(header)
    print("-" * len(header))
    for name in devices:
        device = torch.device(name)
        amps = [False, True] if device.type == "cuda" else [False]
        batch = args.batch_size or (16 if device.type == "cuda" else 4)
        for amp in amps:
            settings = inf.InferenceSettings(batch_size=batch, amp=amp)

            def run_den(s: inf.InferenceSettings = settings, d: torch.device = device) -> object:
                return inf.run_pipeline(vol, den, None, d, settings=s)

            def run_det(s: inf.InferenceSettings = settings, d: torch.device = device) -> object:
                return inf.run_pipeline(vol, None, det, d, settings=s)

            def run_both(s: inf.InferenceSettings = settings, d: torch.device = device) -> object:
                return inf.run_pipeline(vol, den, det, d, settings=s)

            rates = [args.slices / timed(fn, args.repeats, device) for fn in (run_den, run_det, run_both)]
            print(f"{name:<8}{batch:>6}{'on' if amp else 'off':>6}{rates[0]:>14.1f}{rates[1]:>13.1f}{rates[2]:>11.1f}")


if __name__ == "__main__":
    main()
