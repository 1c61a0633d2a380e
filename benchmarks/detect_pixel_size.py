"""Detection at one pixel size (candidate R) against each slice at its own size: the rule's measurements.

Validation data only: the five real validation lesion sets of ``data/real`` (full dose, and low dose through the
default denoiser as the Denoise widget runs it) and simulated ``data/rand-val`` / ``data/test25`` (full, low,
denoised), each slice given its own pixel size. Mean FROC sensitivity (0.5-8 FP per slice), the paired gain with a
95% bootstrap interval over slices, and boxes per lesion-free ``rand-val`` slice at the shipped threshold. Rule:
``benchmarks/results/detect_pixel_size_prereg.md``.

    PYTHONPATH=. python benchmarks/detect_pixel_size.py --mm 0.7 --results benchmarks/results/detect_pixel_size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from napari_lidnet.inference import denoise, detect
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.metrics.froc import froc
from napari_lidnet.models.detector import with_detect_mm
from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import default_threshold

REAL = ("val-512-les", "val-zoom-les", "val-small-les", "val-lung-les", "val-mass-les")
SIM = ("data/rand-val", "data/test25")


def _slices(path: str, denoiser) -> list[dict]:
    """Per slice: full, low and denoised HU, boxes (N, 4), pixel size."""
    out = []
    for s in read_dataset(path):
        low = None if s.low_hu is None else np.asarray(s.low_hu, np.float32)
        out.append({"full": np.asarray(s.full_hu, np.float32), "low": low, "mm": float(s.spacing_mm),
                    "den": None if low is None else denoise(denoiser, low),
                    "boxes": np.asarray(s.boxes, float).reshape(-1, 4)})  # fmt: skip
    return out


def _detections(detector, slices: list[dict], image: str) -> list[tuple[np.ndarray, np.ndarray]]:
    dets = []
    for s in slices:
        rows = detect(detector, s[image], score_threshold=0.01, pixel_mm=(s["mm"], s["mm"]))
        dets.append((rows[:, 1:5], rows[:, 5]))
    return dets


def _paired(a: list, b: list, gts: list, n_boot: int, seed: int = 0) -> dict:
    """Mean FROC sensitivity of a and b and the paired gain b - a with a 95% bootstrap interval over slices."""
    ma, mb = froc(a, gts).mean_sensitivity, froc(b, gts).mean_sensitivity
    rng = np.random.default_rng(seed)
    gains = []
    for _ in range(n_boot):
        k = rng.integers(0, len(gts), len(gts))
        g = [gts[i] for i in k]
        gains.append(froc([b[i] for i in k], g).mean_sensitivity - froc([a[i] for i in k], g).mean_sensitivity)
    ci = [float(v) for v in np.nanpercentile(gains, [2.5, 97.5])] if gains else None
    return {"native": float(ma), "R": float(mb), "gain": float(mb - ma), "ci": ci}


def _boxes_per_negative(detector, slices: list[dict], threshold: float) -> float:
    counts = [len(detect(detector, s[k], score_threshold=threshold, pixel_mm=(s["mm"], s["mm"])))
              for s in slices if not len(s["boxes"]) for k in ("full", "low", "den") if s[k] is not None]  # fmt: skip
    return float(np.mean(counts)) if counts else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mm", type=float, default=0.7)
    ap.add_argument("--real", default="data/real")
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--results", default="benchmarks/results/detect_pixel_size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    native, card = load_model("default", "detector")
    cand = with_detect_mm(native, args.mm)
    denoiser = load_model("default", "denoiser")[0]
    report: dict = {"mm": args.mm, "threshold": default_threshold(card)}
    real = {name: _slices(f"{args.real}/{name}", denoiser) for name in REAL}
    for image in ("full", "den"):
        a, b, gts = [], [], []
        for name, slices in real.items():
            da, db = _detections(native, slices, image), _detections(cand, slices, image)
            report[f"real {name} {image}"] = _paired(da, db, [s["boxes"] for s in slices], 0)
            a, b, gts = a + da, b + db, gts + [s["boxes"] for s in slices]
        report[f"real pooled {image}"] = _paired(a, b, gts, args.boot)
        print(image, report[f"real pooled {image}"], flush=True)
    for path in SIM:
        slices = _slices(path, denoiser)
        for image in ("full", "low", "den"):
            gts = [s["boxes"] for s in slices]
            report[f"sim {Path(path).name} {image}"] = _paired(
                _detections(native, slices, image), _detections(cand, slices, image), gts, 0)  # fmt: skip
        if Path(path).name == "rand-val":
            report["rand-val boxes per lesion-free slice"] = {
                "native": _boxes_per_negative(native, slices, report["threshold"]),
                "R": _boxes_per_negative(cand, slices, report["threshold"])}  # fmt: skip
    report["seconds"] = round(time.time() - t0)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.results}.json").write_text(json.dumps(report, indent=1))
    for k, v in report.items():
        print(k, v)


if __name__ == "__main__":
    main()
