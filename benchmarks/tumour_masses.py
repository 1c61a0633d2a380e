"""Do tumour-like masses in training raise the detector's score on real lung tumours? Arms against a control.

The rule was written before the arms were trained (``benchmarks/results/tumour_masses_prereg.md``). Every detector
(test-time flips, as shipped; told the pixel size as the CLI tells it) runs on every normal-dose slice of the six
real lung cancers (pyradiomics' lung1 / lung2, ``real_chest.load_volumes``; pycerr's pat1-4,
``real_tumours.load_tumours``; evaluation only) and of radiomicsj's three sarcomas (reported, not judged). Per tumour
slice the *tumour score* (``disease_negatives.tumour_scores``); each arm minus the control, paired by slice, with a
95% bootstrap interval over the lung tumour slices and the per-patient means. Shipping line 1 (validation, not a
judge): Lung_Dx-A0001's own mass, a training chest whose disease slices are left out of every set
(``real_ct_sources.Source.disease``): per slice 40-52 the highest score of a box centred in ``MASS_REGION``.

    PYTHONPATH=. .venv/bin/python benchmarks/tumour_masses.py --control runs/disease/det-clean/last_detector \
        --arms runs/tumour/det-att-s7/last_detector,runs/tumour/det-att-s8/last_detector
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
from disease_negatives import tumour_scores  # noqa: E402
from real_chest import detection_row, load_volumes  # noqa: E402
from real_ct_sources import TRAINING, fetch, read_source  # noqa: E402
from real_tumours import NO_CARD_THRESHOLD, load_tumours, volume_detections  # noqa: E402
from results_io import refuse_existing  # noqa: E402

from napari_lidnet.metrics.bootstrap import mean_ci  # noqa: E402

#: Lung_Dx-A0001's mass: slices (first, last) and the region (x1, y1, x2, y2 px) a box's centre must lie in
MASS_SLICES = (40, 52)
MASS_REGION = (300, 220, 430, 370)


def mass_scores(dets: list[tuple]) -> np.ndarray:
    """Per mass slice, the highest score of a box centred in ``MASS_REGION`` (0 if none)."""
    x1, y1, x2, y2 = MASS_REGION
    out = []
    for boxes, scores in dets:
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        inside = (cx >= x1) & (cx < x2) & (cy >= y1) & (cy < y2)
        out.append(float(np.max(np.asarray(scores)[inside])) if inside.any() else 0.0)
    return np.array(out)


def load_all(downloads: Path) -> tuple[list[dict], list[dict], dict]:
    """(the six lung cancers, the three sarcomas, Lung_Dx-A0001's mass slices as a volume)."""
    tumours = load_tumours(downloads)
    lungs = load_volumes(downloads) + [v for v in tumours if v["name"].startswith("pycerr")]
    sarcomas = [v for v in tumours if v["name"].startswith("radiomicsj")]
    src = next(s for s in TRAINING if s.name == "lungdx-chest")
    hu, pixel = read_source(src, fetch(src, downloads))
    first, last = MASS_SLICES
    mass = {"name": src.name, "hu": np.maximum(hu[first : last + 1], ra.AIR_FLOOR).astype(np.float32), "pixel": pixel}
    return lungs, sarcomas, mass


def run_detector(stem: str, vols: list[dict], mass: dict, cache: ra.DiskCache) -> dict:
    """Per volume: the detections; and the mass slices' region scores."""
    per = volume_detections(stem, [*vols, mass], cache)[0]
    return {"per": per, "mass": mass_scores(per.pop(mass["name"]))}


def paired(arm: dict, ctrl: dict, lungs: list[dict], n_boot: int) -> dict:
    """Arm - control tumour score over the lung tumour slices (interval) and per patient."""
    per_patient, diffs = {}, []
    for v in lungs:
        d = tumour_scores(arm["per"][v["name"]], v["gt"]) - tumour_scores(ctrl["per"][v["name"]], v["gt"])
        per_patient[v["name"]] = float(d.mean())
        diffs.append(d)
    d = np.concatenate(diffs)
    ci = mean_ci(d, n_boot=n_boot, seed=0)
    return {"mean": float(d.mean()), "ci": [float(ci.ci[0]), float(ci.ci[1])], "n": len(d),
            "ahead": int((d > 0).sum()), "behind": int((d < 0).sum()), "per_patient": per_patient}  # fmt: skip


def answer(pairs: list[dict]) -> str:
    """The rule's answer from each arm's paired result."""
    if all(p["ci"][0] > 0 and sum(v > 0 for v in p["per_patient"].values()) >= 4 for p in pairs):
        return "yes"
    if all(p["ci"][1] < 0 for p in pairs):
        return "the reverse"
    return "no effect seen"


def summary(stem: str, res: dict, vols: list[dict], thr: float) -> dict:
    """Pooled tumour score and detection row of one detector over ``vols``."""
    dets = [d for v in vols for d in res["per"][v["name"]]]
    gts = [g for v in vols for g in v["gt"]]
    return {"tumour_score": float(tumour_scores(dets, gts).mean()), **detection_row(dets, gts, thr, 1000)}


def report(a: argparse.Namespace, stems: list[str], res: dict, lungs: list, sarcomas: list, pairs: dict) -> list:
    """The markdown."""
    lines = ["# Tumour-like masses for the detector: real lung cancers at full dose", "",
             f"Command: `PYTHONPATH=. .venv/bin/python benchmarks/tumour_masses.py {' '.join(sys.argv[1:])}`. Rule: "
             "`tumour_masses_prereg.md`. Flips on, pixel size passed, threshold "
             f"{NO_CARD_THRESHOLD} for every detector (the shipped card's).", "",
             f"**Answer: {answer(list(pairs.values()))}**", "",
             "| arm - control | tumour score (lung cancers) | slices ahead / behind | per patient |",
             "|---|---|---|---|"]  # fmt: skip
    for stem, p in pairs.items():
        pp = ", ".join(f"{k} {v:+.3f}" for k, v in p["per_patient"].items())
        lines.append(f"| {stem} | {p['mean']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}] (n {p['n']}) | "
                     f"{p['ahead']} / {p['behind']} | {pp} |")  # fmt: skip
    lines += ["", "| detector | lung cancers: tumour score | boxed (IoU >= 0.1) | mean FROC | boxes per tumour-free "
              "slice | sarcomas: tumour score | boxed | Lung_Dx-A0001 mass: mean region score (slices 40-52) |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for stem in stems:
        lu, sa = (summary(stem, res[stem], vols, NO_CARD_THRESHOLD) for vols in (lungs, sarcomas))
        lines.append(f"| {stem} | {lu['tumour_score']:.3f} | {lu['tumour_touched']:.2f} | {lu['mean_froc']:.3f} | "
                     f"{lu['boxes_per_free_slice']:.2f} | {sa['tumour_score']:.3f} | {sa['tumour_touched']:.2f} | "
                     f"{res[stem]['mass'].mean():.3f} |")  # fmt: skip
    lines += ["", "Line 1 (validation): slices of Lung_Dx-A0001's mass where each arm's region score is above the "
              "shipped's / the control's:"]
    for stem in stems[2:]:
        m = res[stem]["mass"]
        lines.append(f"- {stem}: {int((m > res[stems[0]]['mass']).sum())} / {int((m > res[stems[1]]['mass']).sum())}"
                     f" of {len(m)} (per slice {', '.join(f'{x:.2f}' for x in m)})")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--control", required=True, help="the control detector (runs/disease/det-clean/last_detector)")
    p.add_argument("--arms", required=True, help="arm detector stems, comma-separated")
    p.add_argument("--shipped", default="default")
    p.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"))
    p.add_argument("--cache", type=Path, default=Path("bench-out/tumour_masses/cache"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/tumour_masses"))
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    refuse_existing(a.results)
    torch.set_num_threads(a.threads)
    lungs, sarcomas, mass = load_all(a.downloads)
    cache = ra.DiskCache(a.cache)
    stems = [a.shipped, a.control, *a.arms.split(",")]
    res = {}
    for stem in stems:
        res[stem] = run_detector(stem, lungs + sarcomas, mass, cache)
        print(f"{stem}: lung cancers {summary(stem, res[stem], lungs, NO_CARD_THRESHOLD)['tumour_score']:.3f}, "
              f"mass {res[stem]['mass'].mean():.3f}", flush=True)  # fmt: skip
    pairs = {s: paired(res[s], res[a.control], lungs, a.n_boot) for s in stems[2:]}
    lines = report(a, stems, res, lungs, sarcomas, pairs)
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    a.results.with_suffix(".json").write_text(json.dumps({
        "stems": stems, "pairs": pairs, "mass": {s: res[s]["mass"].tolist() for s in stems},
        "tumour_scores": {s: {v["name"]: tumour_scores(res[s]["per"][v["name"]], v["gt"]).tolist()
                              for v in lungs + sarcomas} for s in stems}}, indent=1))  # fmt: skip
    print("\n".join(lines))


if __name__ == "__main__":
    main()
