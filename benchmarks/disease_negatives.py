"""Does a real cancer taught as background suppress real tumours? Detectors on pyradiomics' real chests, full dose.

The rule was written before the arms were trained (``benchmarks/results/disease_negatives_prereg.md``). Each
detector (test-time flips, as shipped) runs on every normal-dose slice of lung1 / lung2 (``real_chest.py``'s
volumes and tumour boxes; evaluation only). Per tumour slice, the *tumour score*: the highest score of a box with
IoU >= 0.1 with a tumour box (0 if none from ``BOX_FLOOR`` up). The second detector minus the third (C - D), paired
by slice, with a 95% bootstrap interval over the tumour slices; beside it each detector's mean FROC sensitivity and
boxes per tumour-free slice at ``--threshold``.

    PYTHONPATH=. .venv/bin/python benchmarks/disease_negatives.py \
        --detectors default,runs/disease/det-clean/last_detector,runs/disease/det-back/last_detector
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_anatomy as ra  # noqa: E402
from real_chest import detection_row, detections, load_volumes  # noqa: E402
from results_io import refuse_existing  # noqa: E402

from napari_lidnet.inference import model_fingerprint  # noqa: E402
from napari_lidnet.metrics.bootstrap import mean_ci  # noqa: E402
from napari_lidnet.metrics.froc import box_iou_np  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402


def tumour_scores(dets: list[tuple], gts: list[np.ndarray]) -> np.ndarray:
    """Per tumour slice, the highest score of a box overlapping a tumour box (IoU >= 0.1); 0 when none does."""
    out = []
    for (boxes, scores), gt in zip(dets, gts, strict=True):
        if len(gt):
            touch = (box_iou_np(np.asarray(boxes, np.float32).reshape(-1, 4), gt) >= 0.1).any(axis=1)
            out.append(float(np.max(scores[touch])) if touch.any() else 0.0)
    return np.array(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", required=True, help="three detector stems: the shipped one, C, D (comma-separated)")
    p.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"))
    p.add_argument("--cache", type=Path, default=Path("bench-out/real_chest/cache"))
    p.add_argument("--threshold", type=float, default=0.496, help="the shipped card's threshold, for every detector")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/disease_negatives"))
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    refuse_existing(a.results)
    torch.set_num_threads(a.threads)
    stems = a.detectors.split(",")
    vols, cache = load_volumes(a.downloads), ra.DiskCache(a.cache)
    gts = [g for v in vols for g in v["gt"]]
    rows, scores = {}, {}
    for stem in stems:
        det = load_model(stem, "detector")[0]
        det.flip_test = True
        dets = [d for v in vols for d in detections(det, model_fingerprint(det), v["hu"], cache)]
        scores[stem], rows[stem] = tumour_scores(dets, gts), detection_row(dets, gts, a.threshold, 2000)
        print(f"{stem}: tumour score {scores[stem].mean():.3f}, FROC {rows[stem]['mean_froc']:.3f}, "
              f"{rows[stem]['boxes_per_free_slice']:.2f} boxes per tumour-free slice", flush=True)  # fmt: skip
    diff = scores[stems[1]] - scores[stems[2]]
    ci = mean_ci(diff, n_boot=2000, seed=0)
    answer = "yes" if ci.ci[0] > 0 else ("the reverse" if ci.ci[1] < 0 else "no effect seen")
    lines = ["# A real cancer among the negatives: detectors on pyradiomics' real chests at full dose", "",
             f"Command: `PYTHONPATH=. .venv/bin/python benchmarks/disease_negatives.py {' '.join(sys.argv[1:])}`. "
             "Rule: `disease_negatives_prereg.md`. lung1 / lung2, every normal-dose slice, flips as shipped.", "",
             f"**C - D tumour score: {diff.mean():+.3f} [{ci.ci[0]:+.3f}, {ci.ci[1]:+.3f}]** over {len(diff)} tumour "
             f"slices (C ahead on {int((diff > 0).sum())}, behind on {int((diff < 0).sum())}): **{answer}**.", "",
             f"| detector | mean tumour score | tumour slices boxed at {a.threshold:g} (IoU >= 0.1) | mean FROC "
             "(0.5-8 FP/slice) | boxes per tumour-free slice |", "|---|---|---|---|---|"]  # fmt: skip
    for stem in stems:
        r = rows[stem]
        lines.append(f"| {stem} | {scores[stem].mean():.3f} | {r['tumour_touched']:.2f} | {r['mean_froc']:.3f} | "
                     f"{r['boxes_per_free_slice']:.2f} [{r['boxes_ci'][0]:.2f}, {r['boxes_ci'][1]:.2f}] |")
    a.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    a.results.with_suffix(".json").write_text(json.dumps(
        {"stems": stems, "tumour_scores": {s: v.tolist() for s, v in scores.items()}, "rows": rows}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
