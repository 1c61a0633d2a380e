"""LIDnet vs pixel fine-tunes of the default denoiser, on enough simulated lesions to bound the difference.

The sets the defaults were chosen on hold 25 lesions each: they tie everything. This measures the same runs (groups
of training seeds) on larger held-out simulated sets: per slice PSNR (-160..240 HU) against full dose, and the fixed
detector's mean FROC sensitivity (0.5-8 FP/slice, IoU >= 0.5) on the denoised slices; each group's seeds averaged,
with 95% BCa intervals resampling slices, and paired differences (the same slices for both sides).

    PYTHONPATH=. python benchmarks/lidnet_default_power.py --data data/rand-power-909 data/rand-power-910 \
        --group lidnet=runs/lidnet-default/lidnet-s{0,1,2}/best_denoiser \
        --group pixel=runs/lidnet-default/pixel-s{0,1,2}/best_denoiser --group unet-5=<unet-5 weights> \
        --results benchmarks/results/lidnet_default_power
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_lidnet.inference import denoise
from napari_lidnet.metrics.bootstrap import froc_ci, froc_difference, mean_ci, paired_difference
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr
from napari_lidnet.models.registry import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import froc_of, interval, parse_run_args, pooled, write_results  # noqa: E402


def measure(stem: str, low: list[np.ndarray], full: list[np.ndarray], gts: list[np.ndarray], detector) -> dict:
    """Per-slice PSNR and the FROC cases of one denoiser's outputs (``"low dose"``: the slices as they are)."""
    model = None if stem == "low dose" else load_model(stem, "denoiser")[0]
    images = low if model is None else [denoise(model, x) for x in low]
    return {"psnr": np.array([psnr(x, f, window=METRIC_WINDOW) for x, f in zip(images, full)]),
            "cases": froc_of(detector, images, gts)}  # fmt: skip


def tables(groups: dict[str, list[dict]], pairs: list[tuple[str, str]], n_boot: int) -> tuple[list[str], dict]:
    """Markdown rows and the raw intervals: each group, then each paired difference."""
    out: dict = {"groups": {}, "differences": {}}
    lines = ["| denoiser | seeds | PSNR (dB) | mean FROC sensitivity |", "|---|---|---|---|"]
    for name, recs in groups.items():
        p = mean_ci(np.mean([r["psnr"] for r in recs], 0), n_boot=n_boot).as_dict()
        s = froc_ci([r["cases"] for r in recs], n_boot=n_boot).as_dict()
        out["groups"][name] = {"psnr": p, "sensitivity": s}
        lines.append(f"| {name} | {len(recs)} | {interval(p, 2)} | {interval(s, 3)} |")
    lines += ["", "| paired difference | PSNR (dB) | mean FROC sensitivity |", "|---|---|---|"]
    for a, b in pairs:
        pa, pb = (np.mean([r["psnr"] for r in groups[g]], 0) for g in (a, b))
        p = paired_difference(pa, pb, n_boot=n_boot).as_dict()
        s = froc_difference([r["cases"] for r in groups[a]], [r["cases"] for r in groups[b]], n_boot=n_boot).as_dict()
        out["differences"][f"{a} - {b}"] = {"psnr": p, "sensitivity": s}
        lines.append(f"| {a} - {b} | {interval(p, 3, sign=True)} | {interval(s, 3, sign=True)} |")
    return lines, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", required=True, help="simulated dataset folders (pooled)")
    p.add_argument("--group", action="append", required=True, help="NAME=stem[,stem...] (one stem per seed)")
    a = parse_run_args(p)
    t0 = time.perf_counter()
    samples, gts = pooled(a.data)
    low, full = [s.low_hu for s in samples], [s.full_hu for s in samples]
    detector = load_model(a.detector, "detector")[0]
    spec = {"low dose": ["low dose"], **{g.split("=", 1)[0]: g.split("=", 1)[1].split(",") for g in a.group}}
    groups = {name: [measure(stem, low, full, gts, detector) for stem in stems] for name, stems in spec.items()}
    names = list(spec)[1:]
    pairs = [(x, y) for i, x in enumerate(names) for y in names[i + 1 :]] + [(n, "low dose") for n in names]
    lines, raw = tables(groups, pairs, a.n_boot)
    head = [f"# {__doc__.splitlines()[0]}", "", f"Data: {', '.join(a.data)}: {len(samples)} slices, "
            f"{sum(len(g) for g in gts)} lesions; detector `{a.detector}` fixed; groups: "
            + "; ".join(f"{n} = {', '.join(f'`{s}`' for s in st)}" for n, st in spec.items()) + ".", "",
            f"Values: estimate [95% BCa interval, {a.n_boot} resamples of slices]; "
            f"{time.perf_counter() - t0:.0f} s.", ""]  # fmt: skip
    write_results(a.results, head + lines, {"spec": spec, **raw})


if __name__ == "__main__":
    main()
