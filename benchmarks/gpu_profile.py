"""Where the time of GPU inference goes: one batch of 16 x 512x512 slices, each part timed alone (CUDA only).

PYTHONPATH=. python benchmarks/gpu_profile.py
"""

from __future__ import annotations

import statistics
import time

import torch

from benchmarks.throughput import phantom_volume, pick_model
from napari_lidnet import inference as inf
from napari_lidnet.models.detector import decode_heatmaps


def timed_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def main() -> None:
    dev = torch.device("cuda")
    den = pick_model(None, "denoiser")[0].to(dev).eval()
    det = pick_model(None, "detector")[0].to(dev).eval()
    vol = phantom_volume(16, 512)
    x = torch.from_numpy(vol)[:, None].to(dev) / 100.0
    settings = inf.InferenceSettings(batch_size=16, amp=False)
    rows = {
        "h2d 16 MB (pageable)": lambda: torch.from_numpy(vol).to(dev),
        "d2h 16 MB": lambda: x.cpu(),
        "array_fingerprint 16 MB": lambda: inf.array_fingerprint(vol),
        "model_fingerprint (denoiser on GPU)": lambda: inf.model_fingerprint(den),
        "model_fingerprint (detector on GPU)": lambda: inf.model_fingerprint(det),
    }
    with torch.inference_mode():
        out = det(x)
        heat, size, off = torch.sigmoid(out["heatmap"].float()), out["size"].float(), out["offset"].float()
        rows |= {
            "denoiser forward": lambda: den(x),
            "detector forward": lambda: det(x),
            "decode_heatmaps (16 images)": lambda: decode_heatmaps(
                heat, size, off, det.output_stride, (512, 512), 0.05
            ),
            "detect() = forward + decode": lambda: det.detect(x),
        }
    rows |= {
        "inf.denoise": lambda: inf.denoise(den, vol, dev, batch_size=16, amp=False),
        "inf.detect": lambda: inf.detect(det, vol, dev, batch_size=16, amp=False),
        "run_pipeline denoise": lambda: inf.run_pipeline(vol, den, None, dev, settings=settings),
        "run_pipeline detect": lambda: inf.run_pipeline(vol, None, det, dev, settings=settings),
        "run_pipeline both": lambda: inf.run_pipeline(vol, den, det, dev, settings=settings),
        "run_pipeline both, new cache (viewer)": lambda: inf.run_pipeline(
            vol, den, det, dev, settings=settings, cache=inf.ResultCache()
        ),
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, batch of 16 x 512x512")
    for name, fn in rows.items():
        if "forward" in name or "decode" in name or "detect()" in name:
            with torch.inference_mode():
                ms = timed_ms(fn)
        else:
            ms = timed_ms(fn)
        print(f"{name:<40}{ms:9.2f} ms")


if __name__ == "__main__":
    main()
