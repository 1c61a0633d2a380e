"""Does a threshold calibrated on a site's own lesion-free scans hold on that site's other scans?

`lidnet calibrate` sets a detector's threshold where a site's lesion-free slices (as given and denoised, pooled)
carry at most 0.5 boxes each. This benchmark splits a lesion-free dataset of one "site" (a simulated protocol, or any
dataset folder a lab has) at random into a calibration part and a held-out part, many times, and reports the boxes
per held-out slice at the site-calibrated threshold and at the detector card's own threshold (calibrated elsewhere).
Never point it at the real evaluation slices: they judge, they do not calibrate.

    lidnet simulate --out data/site-head --n 48 --size 512 --domain random --kinds head --negatives 1 --seed 707
    PYTHONPATH=. python benchmarks/site_calibration.py --data data/site-head \
        --detector default --detector bench-out/candidate-det8/default_detector
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from napari_lidnet._training.calibrate import DEFAULT_FP_PER_IMAGE
from napari_lidnet._training.validate import detect_rows
from napari_lidnet.inference import denoise
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.metrics.froc import detections_per_slice, fp_rate_at, threshold_at_fp_rate
from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import default_threshold


def slice_scores(detector: torch.nn.Module, images: np.ndarray) -> list[np.ndarray]:
    """Scores (from 0.01) of every box on each image."""
    return [sc for _, sc in detections_per_slice(detect_rows(detector, images, "cpu"), len(images))]


def split_rates(scores: list[list[np.ndarray]], n_cal: int, repeats: int, rate: float, seed: int = 0) -> dict:
    """Random calibration/held-out splits of the slices; ``scores[t][i]``: image type t of slice i."""
    n = len(scores[0])
    rng = np.random.default_rng(seed)
    thresholds, held = [], []
    for _ in range(repeats):
        order = rng.permutation(n)
        cal, test = order[:n_cal], order[n_cal:]
        t = threshold_at_fp_rate([s[i] for s in scores for i in cal], rate)
        thresholds.append(t)
        held.append(fp_rate_at([s[i] for s in scores for i in test], t))
    return {"thresholds": thresholds, "held_out_rate": held}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="lesion-free dataset folder of one site (its low-dose images)")
    p.add_argument("--detector", action="append", default=[], help="detector name or path, repeatable")
    p.add_argument("--denoiser", default="default")
    p.add_argument("--n-cal", type=int, default=16, help="slices per calibration part")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/site_calibration"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    samples = [s for s in read_dataset(a.data) if len(np.asarray(s.boxes).reshape(-1, 4)) == 0]
    given = np.stack([s.low_hu for s in samples]).astype(np.float32)
    denoised = denoise(load_model(a.denoiser, "denoiser")[0], given)
    rows = []
    for name in a.detector or ["default"]:
        det, card = load_model(name, "detector")
        scores = [slice_scores(det, given), slice_scores(det, denoised)]
        res = split_rates(scores, a.n_cal, a.repeats, DEFAULT_FP_PER_IMAGE)
        held = np.array(res["held_out_rate"])
        card_t = default_threshold(card)
        rows.append({"detector": name, "card_threshold": card_t, "card_rate": fp_rate_at(sum(scores, []), card_t),
                     "site_threshold_median": float(np.median(res["thresholds"])),
                     "held_out_mean": float(held.mean()), "held_out_p2_5": float(np.percentile(held, 2.5)),
                     "held_out_p97_5": float(np.percentile(held, 97.5))})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    command = "PYTHONPATH=. python " + shlex.join(["benchmarks/site_calibration.py", *(argv or sys.argv[1:])])
    result = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"), "data": a.data,
              "n_slices": len(samples), "n_cal": a.n_cal, "repeats": a.repeats, "rows": rows}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Site calibration: a threshold set on a site's lesion-free scans, checked on its other scans",
        "",
        f"Command: `{command}`  ",
        f"Date: {result['date']}; {len(samples)} lesion-free slices of `{a.data}` (low dose as given, and denoised, "
        f"pooled); {a.repeats} random splits into {a.n_cal} calibration slices and {len(samples) - a.n_cal} held out.",
        "",
        "| detector | card threshold | boxes per slice at it | site threshold (median) | boxes per held-out slice "
        "at the site threshold: mean [2.5%, 97.5% of splits] |",
        "|---|---|---|---|---|",
        *[f"| {r['detector']} | {r['card_threshold']:.3f} | {r['card_rate']:.2f} | {r['site_threshold_median']:.3f} "
          f"| {r['held_out_mean']:.2f} [{r['held_out_p2_5']:.2f}, {r['held_out_p97_5']:.2f}] |" for r in rows],
    ]  # fmt: skip
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
