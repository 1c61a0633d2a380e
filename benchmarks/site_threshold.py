"""Site threshold after a one-click fine-tune: does the threshold that ``finetune._site_calibration`` sets again on the
run's held-out lesion-free slices (ca6daa2; ``calibrate_detector`` pooled over full dose, low dose and denoised at
the inherited 0.5 false boxes per slice) keep its promise on UNSEEN slices of the same scans better than the
threshold the fine-tuned detector inherited from its start? Verdict (2026-12-07): no; the re-set was reverted
(d6a500c), so this script runs only on a checkout of ca6daa2 (results in ``results/site_threshold.md``).

Protocol (fixed and written down before any result was seen, also in ``results/site_threshold_prereg.md``):

- Data: real normal-dose CT from ``real_ct_sources.TRAINING`` only (never pydicom's CT files, never pyradiomics'
  lung1 / lung2). platipy-chest: the central contiguous block of 64 of its 130 slices; lungdx-chest: all its 64
  slices (every one has body: at least 22% of its pixels above -500 HU). HU floored at -1024. The first 32 slices
  of each block are the site's fine-tune input, the last 32 are unseen.
- Lesions: ``sim.insert.insert_lesions`` (soft-tissue masses, 1-2 per slice, seeded by [9400, volume, block slice])
  on the slices 2, 6, 10, ... (one in four) of each half; every other slice is lesion-free (real normal anatomy).
  In the fine-tune input the boxes given are the inserted ones (as a reader would draw them).
- Two fine-tune input designs. "quarter" (the brief's): the first half with its 8 lesion slices (2, 6, ..., 30).
  A dry run of the product's data rules before any training (``local_data.near_lesion_slices``: an unannotated
  slice next to a lesion slice is left out; ``split.split_samples`` with the one-click 0.2 / 0.2, at most 8 / 8)
  says that this leaves 16 slices (8 lesion, 8 lesion-free) and a held-out part (validation + test) of 6 slices,
  3 of them lesion-free, for every seed: fewer than ``MIN_SITE_SLICES`` (8), so the re-set cannot happen and the
  fine-tuned detector keeps its inherited threshold; it is run and reported as such. "eighth" (added so that the
  change can be measured at all): the same first half with lesions on its slices 2, 10, 18, 26 only (the same
  lesions as "quarter" there; 6, 14, 22, 30 stay normal): 24 slices remain (4 lesion), the held-out part has 10
  slices, 8 of them lesion-free, for every seed (the dry run), so the re-set happens. The unseen half is the same
  in both designs (lesions on its slices 2, 6, ..., 30: 8 lesion slices, 24 lesion-free).
- Fine-tune: the product's one-click run as the widget starts it: ``FinetuneRequest(name, one_click_config(
  new_run_dir(name), init_denoiser / init_detector = the shipped defaults' paths, device "cpu", seed s),
  inputs=[CTInput(name, full-dose first half, pixel mm, boxes=inserted)], dose=0.25)`` driven to the end through
  ``finetune_job``, models exported to a temporary model folder (``MODEL_DIR_ENV``) and loaded back. Recorded:
  ``outcome.calibration`` (threshold, previous_threshold, n_negative_slices, its rates on the held-out slices), the
  held-out slices, wall seconds. Seeds 0, 1, 2 per design and volume (fewer if one run takes more than 5 min: said
  in the results). 2 torch threads, one run at a time.
- Evaluation on the unseen half at 25% dose (``simulate_low_dose``, seed 9500 + volume, the same for every row).
  Rows: the shipped starting pair at its card's threshold; the fine-tuned pair at the inherited threshold
  (``previous_threshold``; without a re-set, the card's, which is then the same); the fine-tuned pair at the re-set
  threshold (``default_threshold`` of the exported card). The pipeline as the viewer runs it: ``inference.denoise``
  with the row's denoiser, then ``inference.detect`` with the row's detector on the denoised slices (pixel size
  given; every box from score 0.01, the calibration's own floor, then the row's threshold; the viewer keeps boxes
  from ``BOX_FLOOR`` 0.05, and a threshold below it is said). Per row: false boxes per lesion-free slice (every box
  there is false), and sensitivity at the threshold on the lesion slices (``metrics.froc.match_detections`` hits /
  lesions); also the false boxes per lesion-free slice on the full-dose unseen images as given (no denoising) at
  both thresholds. Descriptive, outside the rule: the same on the low-dose unseen images (no denoising) and the
  rate pooled over the three image types (what the calibration promises: 0.5 pooled).
- Statistics: means over (seed, unseen slice) cases; 95% percentile bootstrap intervals (2000 resamples, slices
  resampled within each (volume, seed) stratum): FP per lesion-free slice per row, sensitivity per row, and the
  paired differences re-set minus inherited (FP/slice, sensitivity = (hits re-set - hits inherited) / lesions).
- Question and reading rule (fixed before the run): the re-set threshold "keeps its promise" on a volume if the
  unseen denoised lesion-free slices' FP/slice at it (mean over the volume's seeds that re-set) lies within
  [0.25, 1.0] (the target is 0.5) and is closer to 0.5 than the inherited threshold's on the same cases; also
  reported: the sensitivity change re-set minus inherited with its interval. The same rule pooled over volumes and
  seeds, and per (volume, seed) descriptively. Read on the runs where the re-set happened (the "eighth" design,
  per the dry run); a design or volume without a re-set is reported as "no re-set", not as a pass or a fail.

Usage (the data archives are fetched once into --downloads):
    PYTHONPATH=. .venv/bin/python benchmarks/site_threshold.py --volumes lungdx-chest --seeds 0 --designs eighth \
        --results benchmarks/results/site_threshold_pilot --note "timing pilot"
    PYTHONPATH=. .venv/bin/python benchmarks/site_threshold.py
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hard_negatives import insert_on, overlaps_none, start_pair  # noqa: E402
from real_ct_sources import TRAINING, fetch, read_source  # noqa: E402
from results_io import refuse_existing, run_meta, write_results  # noqa: E402

from napari_lidnet._training.calibrate import MIN_SITE_SLICES  # noqa: E402
from napari_lidnet._training.finetune import (  # noqa: E402
    FinetuneOutcome,
    FinetuneRequest,
    finetune_job,
    new_run_dir,
    one_click_config,
)
from napari_lidnet._training.local_data import CTInput, near_lesion_slices  # noqa: E402
from napari_lidnet._training.split import split_samples  # noqa: E402
from napari_lidnet.inference import BOX_FLOOR, denoise, detect, map_yields, run_to_end  # noqa: E402
from napari_lidnet.metrics.froc import match_detections  # noqa: E402
from napari_lidnet.models.registry import default_model, load_model  # noqa: E402
from napari_lidnet.models.weights import default_threshold  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose  # noqa: E402

VOLUMES = ("platipy-chest", "lungdx-chest")
DESIGNS = {"quarter": 4, "eighth": 8}  # fine-tune input: lesions on every k-th slice of the first half, from 2
BLOCK = 64
HALF = BLOCK // 2
LESION_OFFSET, LESION_STEP = 2, 4  # lesion slices of each half: 2, 6, 10, ...
BODY_HU, BODY_SHARE = -500.0, 0.10  # a slice "has enough body": at least this share of pixels above this HU
DOSE = 0.25
AIR = -1024.0
MAX_LESIONS = 2
SCORE_FLOOR = 0.01  # the calibration's floor (``calibrate._per_slice``)
TARGET, LOW_OK, HIGH_OK = 0.5, 0.25, 1.0
N_BOOT = 2000
TYPES = ("denoised", "full", "low")
WORK = Path("/tmp/site_threshold")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"), help="where the archives are (fetched)")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/site_threshold"), help="md/json stem")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tune seeds")
    p.add_argument("--volumes", default=",".join(VOLUMES), help=f"a subset of {', '.join(VOLUMES)}")
    p.add_argument("--designs", default=",".join(DESIGNS), help=f"a subset of {', '.join(DESIGNS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=WORK, help="temporary model folder and runs go under here")
    p.add_argument("--note", default="", help="what this run is (a pilot, a supplementary run)")
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.volumes = [v for v in a.volumes.split(",") if v.strip()]
    a.designs = [d for d in a.designs.split(",") if d.strip()]
    if not set(a.volumes) <= set(VOLUMES) or not set(a.designs) <= set(DESIGNS) or not a.seeds:
        p.error(f"volumes among {', '.join(VOLUMES)}, designs among {', '.join(DESIGNS)}; at least one seed")
    return a


# --------------------------------------------------------------------------------------------------- data


def load_block(name: str, downloads: Path) -> dict[str, Any]:
    """The central contiguous ``BLOCK`` slices of a source among those with enough body, HU floored at air."""
    src = next(s for s in TRAINING if s.name == name)
    hu, px = read_source(src, fetch(src, downloads))
    hu = np.asarray(hu, np.float32)
    body = np.flatnonzero((hu > BODY_HU).mean(axis=(1, 2)) >= BODY_SHARE)
    lo, hi = int(body.min()), int(body.max()) + 1  # the body's run of slices (its ends)
    if hi - lo < BLOCK or not np.all((hu[lo:hi] > BODY_HU).mean(axis=(1, 2)) >= BODY_SHARE):
        raise ValueError(f"{name}: no contiguous run of {BLOCK} slices with enough body")
    z0 = lo + (hi - lo - BLOCK) // 2
    block = np.maximum(hu[z0 : z0 + BLOCK], AIR)
    if block.shape[1] != block.shape[2]:
        raise ValueError(f"{name}: slices {block.shape[1:]} are not square (insert_lesions needs square arrays)")
    return {"name": name, "hu": block, "pixel_mm": float(px), "z0": int(z0), "source_shape": list(hu.shape)}


def lesion_slices(step: int = LESION_STEP) -> list[int]:
    """Lesion slices of a half (its own index): 2, 2 + step, ..."""
    return list(range(LESION_OFFSET, HALF, step))


def with_lesions(vol: dict[str, Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The block with 1-``MAX_LESIONS`` soft-tissue lesions inserted on the lesion slices of both halves (seeded per
    block slice), and their (M, 5) ``slice, x1, y1, x2, y2`` boxes (slice index within the block)."""
    return insert_on(vol, [*lesion_slices(), *(HALF + z for z in lesion_slices())], [9400, k])


def finetune_input(vol: dict[str, Any], full: np.ndarray, truth: np.ndarray, design: str) -> CTInput:
    """The first half as the site gives it: lesions on every ``DESIGNS[design]``-th slice from 2 (the others of the
    one-in-four slices are the normal ones), their boxes as drawn."""
    keep = lesion_slices(DESIGNS[design])
    img = vol["hu"][:HALF].copy()
    img[keep] = full[keep]
    boxes = truth[np.isin(truth[:, 0], keep)].copy()
    return CTInput(f"{vol['name']}-site", img, vol["pixel_mm"], boxes=boxes, box_source="drawn")


def dry_split(item: CTInput, config: Any) -> dict[str, Any]:
    """What the product's rules make of ``item`` before training: the slices left out next to lesions, and the
    split's training and held-out (validation + test) slices (``split_samples`` as ``Trainer`` calls it)."""
    marked = np.unique(np.rint(item.boxes[:, 0]).astype(int))
    out = set(near_lesion_slices(marked, item.n_slices))
    names = [SimpleNamespace(name=f"x#{z}", z=z) for z in range(item.n_slices) if z not in out]
    train, val, test = split_samples(names, config.val_fraction, config.seed, config.val_max_slices,
                                     config.test_fraction, config.test_max_slices)  # fmt: skip
    held = sorted(s.z for s in (*val, *test))
    free = [z for z in held if z not in set(marked.tolist())]
    return {"left_out": sorted(out), "n_samples": len(names), "train": sorted(s.z for s in train), "held_out": held,
            "held_out_lesion_free": free, "re_set_expected": len(free) >= MIN_SITE_SLICES}  # fmt: skip


# --------------------------------------------------------------------------------------------------- fine-tune


def finetune(name: str, item: CTInput, seed: int) -> dict[str, Any]:
    """The one-click fine-tune as the widget starts it (shipped defaults as the start, device cpu), driven to the
    end; the exported pair loaded back, with the re-set and the inherited threshold."""
    start = {f"init_{kind}": str(default_model(kind).path) for kind in ("denoiser", "detector")}  # as the dock
    config = one_click_config(new_run_dir(name), **start, device="cpu", seed=seed)
    dry = dry_split(item, config)
    req = FinetuneRequest(name=name, config=config, inputs=[item], dose=DOSE, command="benchmarks/site_threshold.py")
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    outcome = run_to_end(map_yields(finetune_job(req), records.append))
    wall = time.perf_counter() - t0
    if outcome.status != "finished" or len(outcome.exported) != 2:
        raise RuntimeError(f"{name}: fine-tune {outcome.status}: {outcome.message}")
    paths = {k: next(p for p in outcome.exported if p.endswith(f"_{k}.safetensors")) for k in ("denoiser", "detector")}
    den, _ = load_model(paths["denoiser"].removesuffix(".safetensors"), "denoiser", device="cpu")
    det, card = load_model(paths["detector"].removesuffix(".safetensors"), "detector", device="cpu")
    cal = outcome.calibration
    card_t = default_threshold(card)
    inherited = float(cal["previous_threshold"]) if cal else card_t
    fin = card.get("training", {}).get("finetune", {})
    cal_info = None
    if cal:
        cal_info = {
            k: cal.get(k)
            for k in (
                "threshold",
                "previous_threshold",
                "n_negative_slices",
                "fp_per_image",
                "fp_per_image_by_type",
                "sensitivity_by_type",
                "n_lesions",
                "on",
            )
        }
        cal_info["card_threshold"] = card_t
        cal_info["card_has_it"] = (card.get("calibration") or {}).get("threshold") == cal.get("threshold")
    n_free = len(dry["held_out_lesion_free"])
    dry["matches_run"] = (cal["n_negative_slices"] == n_free) if cal else not dry["re_set_expected"]
    return {
        "denoiser": den.eval(), "detector": det.eval(), "reset": card_t, "inherited": inherited,
        "info": {"wall_s": round(wall, 1), "status": outcome.status, "n_slices": fin.get("n_slices"),
                 "n_lesions": fin.get("n_lesions"), "left_out": (fin.get("images") or [{}])[0].get("left_out_slices"),
                 "dry": dry, "calibration": cal_info, "card_threshold": card_t, "inherited_threshold": inherited,
                 "improved": outcome.improved, "start_val": outcome.start_metrics, "best_val": outcome.best_metrics,
                 "start_test": outcome.start_test_metrics, "best_test": outcome.best_test_metrics,
                 "notes": outcome.notes, "message": outcome.message,
                 "export_records": [r.get("message") for r in records if r.get("stage") == "export"]},
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------- evaluation


def scored(pair: dict[str, Any], images: dict[str, np.ndarray], pixel_mm: float) -> dict[str, np.ndarray]:
    """Every box from ``SCORE_FLOOR`` on each image type of the unseen half: denoised (the row's denoiser on the low
    dose, as the viewer runs it), full dose and low dose as given."""
    t = {"denoised": denoise(pair["denoiser"], images["low"], device="cpu"), "full": images["full"],
         "low": images["low"]}  # fmt: skip
    return {k: detect(pair["detector"], v, device="cpu", score_threshold=SCORE_FLOOR, pixel_mm=(pixel_mm, pixel_mm))
            for k, v in t.items()}  # fmt: skip


def at_threshold(rows: dict[str, np.ndarray], truth: np.ndarray, t: float) -> dict[str, Any]:
    """Per unseen slice at threshold ``t``: false boxes (IoU < 0.1 with every lesion; on lesion-free slices every
    box), hits and lesions, per image type."""
    out: dict[str, Any] = {"threshold": float(t)}
    for kind, r in rows.items():
        r = r[r[:, 5] >= t]
        fp, hits, lesions = [], [], []
        for z in range(HALF):
            mine, gt = r[r[:, 0] == z], truth[truth[:, 0] == z][:, 1:]
            fp.append(int(overlaps_none(mine[:, 1:5], gt).sum()))
            hits.append(int(match_detections(mine[:, 1:5], mine[:, 5], gt).sum()))
            lesions.append(len(gt))
        out[kind] = {"fp": fp, "hits": hits, "lesions": lesions}
    return out


def bootstrap(strata: list[np.ndarray], stat: Callable[[np.ndarray], float], seed: int = 0) -> dict[str, Any]:
    """``stat`` of the concatenated case rows of ``strata``, and its 95% percentile interval (rows resampled with
    replacement within each stratum)."""
    strata = [s for s in strata if len(s)]
    if not strata:
        return {"mean": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    est = stat(np.concatenate(strata))
    rng = np.random.default_rng(seed)
    boots = np.array([stat(np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata]))
                      for _ in range(N_BOOT)])  # fmt: skip
    boots = boots[np.isfinite(boots)]
    return {"mean": float(est), "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "n": int(sum(len(s) for s in strata))}  # fmt: skip


def _mean(x: np.ndarray) -> float:
    return float(x[:, 0].mean())


def _ratio(x: np.ndarray) -> float:
    return float(x[:, 0].sum() / x[:, 1].sum()) if x[:, 1].sum() else float("nan")


def fp_cases(ev: dict[str, Any], kind: str) -> np.ndarray:
    """(n, 1) false boxes of the lesion-free slices."""
    d = ev[kind]
    return np.array([[f] for f, n in zip(d["fp"], d["lesions"], strict=True) if n == 0], float).reshape(-1, 1)


def sens_cases(ev: dict[str, Any], kind: str = "denoised") -> np.ndarray:
    """(n, 2) hits and lesions of the lesion slices."""
    d = ev[kind]
    return np.array([[h, n] for h, n in zip(d["hits"], d["lesions"], strict=True) if n], float).reshape(-1, 2)


def pooled_fp_cases(ev: dict[str, Any]) -> np.ndarray:
    """(n, 1) false boxes of the lesion-free slices, summed over the three image types / 3 (the pooled rate)."""
    return sum(fp_cases(ev, k) for k in TYPES) / len(TYPES)


def row_stats(evs: list[dict[str, Any]]) -> dict[str, Any]:
    """FP per lesion-free slice per image type (+ pooled) and the denoised sensitivity over ``evs`` (one stratum
    each)."""
    out = {f"fp_{k}": bootstrap([fp_cases(e, k) for e in evs], _mean) for k in TYPES}
    out["fp_pooled"] = bootstrap([pooled_fp_cases(e) for e in evs], _mean)
    out["sensitivity"] = bootstrap([sens_cases(e) for e in evs], _ratio)
    out["sensitivity_full"] = bootstrap([sens_cases(e, "full") for e in evs], _ratio)
    return out


def diff_stats(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Re-set minus inherited, paired over the same cases: FP/slice (denoised, full) and sensitivity (denoised)."""
    out = {
        f"fp_{k}": bootstrap([fp_cases(r, k) - fp_cases(i, k) for r, i in pairs], _mean) for k in ("denoised", "full")
    }
    sens = []
    for r, i in pairs:
        a, b = sens_cases(r), sens_cases(i)
        sens.append(np.column_stack([a[:, 0] - b[:, 0], a[:, 1]]))
    out["sensitivity"] = bootstrap(sens, _ratio)
    return out


def reading(reset_fp: float, inherited_fp: float) -> dict[str, Any]:
    """The rule: the re-set FP/slice (denoised, unseen) within [0.25, 1.0] and closer to 0.5 than the inherited's."""
    within = LOW_OK <= reset_fp <= HIGH_OK
    closer = abs(reset_fp - TARGET) < abs(inherited_fp - TARGET)
    return {"within": within, "closer": closer, "keeps": within and closer,
            "text": "keeps its promise" if within and closer else "does not keep its promise ("
            + "; ".join(w for w, ok in ((f"outside [{LOW_OK}, {HIGH_OK}]", within),
                                        ("not closer to 0.5 than the inherited", closer)) if not ok) + ")"}  # fmt: skip


# --------------------------------------------------------------------------------------------------- the run


def run(a: argparse.Namespace) -> dict[str, Any]:
    start = start_pair(a)
    data, runs, evals = [], {}, {}
    for name in a.volumes:
        k = VOLUMES.index(name)
        vol = load_block(name, a.downloads)
        px = vol["pixel_mm"]
        t0 = time.perf_counter()
        full, truth = with_lesions(vol, k)
        unseen_truth = truth[truth[:, 0] >= HALF].copy()
        unseen_truth[:, 0] -= HALF
        low = simulate_low_dose(full[HALF:], DOSE, px, seed=9500 + k).astype(np.float32)
        images = {"full": full[HALF:], "low": low}
        print(f"{name}: block {vol['z0']}-{vol['z0'] + BLOCK - 1}, {len(truth)} lesions, unseen low dose in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        t0 = time.perf_counter()
        start_rows = scored(start, images, px)
        evals[name] = {"start": at_threshold(start_rows, unseen_truth, start["threshold"])}
        evals[name]["start"]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"  start pair at {start['threshold']:.3f}: {brief(evals[name]['start'])}", flush=True)
        runs[name] = {}
        for design in a.designs:
            item0 = finetune_input(vol, full, truth, design)
            data.append({"volume": name, "design": design, "source_shape": vol["source_shape"],
                         "block": [vol["z0"], vol["z0"] + BLOCK - 1], "pixel_mm": px,
                         "input_lesion_slices": sorted({int(z) for z in item0.boxes[:, 0]}),
                         "input_lesions": int(len(item0.boxes)), "unseen_lesions": int(len(unseen_truth)),
                         "unseen_lesion_slices": sorted({int(z) for z in unseen_truth[:, 0]}),
                         "unseen_lesion_free": int(HALF - len({int(z) for z in unseen_truth[:, 0]}))})  # fmt: skip
            for seed in a.seeds:
                item = finetune_input(vol, full, truth, design)
                tag = f"{design}-s{seed}"
                pair = finetune(f"st-{name}-{tag}", item, seed)
                t0 = time.perf_counter()
                rows = scored(pair, images, px)
                ev = {"reset": at_threshold(rows, unseen_truth, pair["reset"]),
                      "inherited": at_threshold(rows, unseen_truth, pair["inherited"])}  # fmt: skip
                evals[name][tag] = ev
                runs[name][tag] = {**pair["info"], "eval_s": round(time.perf_counter() - t0, 1)}
                cal = pair["info"]["calibration"]
                print(f"  {tag}: fine-tune {pair['info']['wall_s']} s; held-out lesion-free "
                      f"{len(pair['info']['dry']['held_out_lesion_free'])}; "
                      + (f"re-set {cal['previous_threshold']:.3f} -> {cal['threshold']:.3f} on "
                         f"{cal['n_negative_slices']} slices" if cal else f"no re-set ({pair['reset']:.3f})")
                      + f"; inherited: {brief(ev['inherited'])}; re-set: {brief(ev['reset'])}", flush=True)  # fmt: skip
                del pair, rows
    return {"data": data, "runs": runs, "evals": evals, "start_threshold": start["threshold"],
            "summary": summarise(a, runs, evals)}  # fmt: skip


def brief(ev: dict[str, Any]) -> str:
    fp = {k: float(fp_cases(ev, k).mean()) for k in ("denoised", "full")}
    s = sens_cases(ev)
    return f"FP/slice denoised {fp['denoised']:.2f}, full {fp['full']:.2f}; sensitivity {_ratio(s):.3f}"


def summarise(a: argparse.Namespace, runs: dict, evals: dict) -> dict[str, Any]:
    """Row statistics, differences and the rule's reading per (design, volume), per (design, volume, seed) and pooled
    over volumes and seeds (over the runs that re-set)."""
    out: dict[str, Any] = {"start": {v: row_stats([evals[v]["start"]]) for v in a.volumes}}
    out["start"]["pooled"] = row_stats([evals[v]["start"] for v in a.volumes])
    for design in a.designs:
        d: dict[str, Any] = {}
        cells = [(v, s) for v in a.volumes for s in a.seeds]
        reset = [(v, s) for v, s in cells if runs[v][f"{design}-s{s}"]["calibration"]]
        groups = {**{v: [(v, s) for s in a.seeds] for v in a.volumes}, "pooled": cells}
        for key, members in groups.items():
            rs = [c for c in members if c in reset]
            evs = [evals[v][f"{design}-s{s}"] for v, s in members]
            g = {
                "runs": len(members),
                "re_set_runs": len(rs),
                "inherited": row_stats([e["inherited"] for e in evs]),
                "reset": row_stats([e["reset"] for e in evs]),
            }
            if rs:
                evr = [evals[v][f"{design}-s{s}"] for v, s in rs]
                inh, rst = row_stats([e["inherited"] for e in evr]), row_stats([e["reset"] for e in evr])
                g["on_re_set_runs"] = {
                    "inherited": inh,
                    "reset": rst,
                    "diff": diff_stats([(e["reset"], e["inherited"]) for e in evr]),
                    "reading": reading(rst["fp_denoised"]["mean"], inh["fp_denoised"]["mean"]),
                }
            d[key] = g  # fmt: skip
        d["per_seed"] = {}
        for v, s in cells:
            e = evals[v][f"{design}-s{s}"]
            fr, fi = (float(fp_cases(e[t], "denoised").mean()) for t in ("reset", "inherited"))
            d["per_seed"][f"{v} seed {s}"] = {"fp_reset": fr, "fp_inherited": fi,
                                              "reading": reading(fr, fi) if (v, s) in reset else None}  # fmt: skip
        out[design] = d
    return out


# --------------------------------------------------------------------------------------------------- report


def _ci(r: dict[str, Any], digits: int = 3, sign: bool = False) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(r['mean'])} [{f.format(r['ci'][0])}, {f.format(r['ci'][1])}]"


def protocol_lines() -> list[str]:
    doc = __doc__.split("Protocol (", 1)[1].split("\nUsage", 1)[0]
    return ["## Protocol (" + doc.split("\n", 1)[0], *doc.split("\n", 1)[1].strip("\n").splitlines()]


def verdict_lines(a: argparse.Namespace, res: dict[str, Any]) -> list[str]:
    lines = []
    for design in a.designs:
        for key in [*a.volumes, "pooled"]:
            g = res["summary"][design][key]
            where = "pooled over volumes and seeds" if key == "pooled" else key
            o = g.get("on_re_set_runs")
            if not o:
                lines.append(
                    f"- {design}, {where}: **no re-set** in any of its {g['runs']} runs (held-out part with "
                    f"fewer than {MIN_SITE_SLICES} lesion-free slices): the threshold stayed inherited."
                )
                continue
            lines.append(
                f"- {design}, {where} ({g['re_set_runs']} of {g['runs']} runs re-set): **{o['reading']['text']}**: "
                f"unseen denoised FP/slice at the re-set threshold {_ci(o['reset']['fp_denoised'])}, at the "
                f"inherited {_ci(o['inherited']['fp_denoised'])}; sensitivity change re-set minus inherited "
                f"{_ci(o['diff']['sensitivity'], sign=True)}."
            )
    return lines


def report(a: argparse.Namespace, res: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "# Site threshold after a one-click fine-tune: re-set vs inherited threshold on unseen slices, 25% dose", "",
        f"Command: `{meta['command']}`  ",
        f"Date {meta['date']}, {meta['machine']}, torch {meta['torch']}, {a.threads} torch threads, CPU; machine load "
        f"{meta['load']}; whole run {meta['wall_s'] / 60:.1f} min wall.", "",
        f"Volumes: {', '.join(a.volumes)}; designs: {', '.join(a.designs)}; seeds: {', '.join(map(str, a.seeds))}. "
        f"{meta['scope']}", "",
        *([f"**Note:** {a.note}", ""] if a.note else []),
        "## Verdict (the pre-registered rule: re-set FP/slice on unseen denoised lesion-free slices within "
        f"[{LOW_OK}, {HIGH_OK}] and closer to {TARGET} than the inherited threshold's)", "",
        *verdict_lines(a, res), "",
        "## Data", "",
        "| volume | design | source shape | block (z) | pixel mm | fine-tune input lesion slices (lesions) | unseen "
        "lesion slices (lesions) / lesion-free slices |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for d in res["data"]:
        lines.append(
            f"| {d['volume']} | {d['design']} | {' x '.join(map(str, d['source_shape']))} | {d['block'][0]}-"
            f"{d['block'][1]} | {d['pixel_mm']:.3g} | {d['input_lesion_slices']} ({d['input_lesions']}) | "
            f"{len(d['unseen_lesion_slices'])} ({d['unseen_lesions']}) / {d['unseen_lesion_free']} |"
        )
    lines += ["", "## Fine-tune runs", "",
              "Held-out = the trainer's validation + test slices (from the product's split, checked against the run's "
              "re-set count); calibration rates = the record's own FP/slice per image type on those held-out "
              "lesion-free slices at the re-set threshold.", "",
              "| volume | run | wall s | slices (lesions) | held-out slices (lesion-free) | inherited -> re-set "
              "threshold (on n slices) | calibration rates full / low / denoised | improved | eval s |",
              "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in a.volumes:
        for tag, r in res["runs"][v].items():
            cal, dry = r["calibration"], r["dry"]
            if cal:
                by = cal["fp_per_image_by_type"]
                thr = f"{cal['previous_threshold']:.3f} -> {cal['threshold']:.3f} ({cal['n_negative_slices']})"
                rates = " / ".join(f"{by.get(k, float('nan')):.2f}" for k in ("full dose", "low dose", "denoised"))
            else:
                thr, rates = f"{r['inherited_threshold']:.3f} (no re-set)", "-"
            lines.append(
                f"| {v} | {tag} | {r['wall_s']} | {r['n_slices']} ({r['n_lesions']}) | {len(dry['held_out'])} "
                f"({len(dry['held_out_lesion_free'])}) | {thr} | {rates} | {r['improved']} | {r['eval_s']} |"
            )
    lines += ["", "## Unseen half: rows (mean [95% bootstrap] over (seed, slice) cases)", "",
              "FP = boxes per lesion-free unseen slice (24 per volume and seed); sensitivity = match_detections hits "
              "(IoU >= 0.5) / lesions on the 8 lesion slices, on the denoised images. Fine-tuned rows: all runs of "
              "the design (without a re-set the two thresholds are the same).", "",
              "| design | volume | row | threshold(s) | FP/slice denoised | sensitivity denoised | FP/slice full dose "
              "| FP/slice low dose | FP/slice pooled (3 types) | sensitivity full dose |",
              "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    summ = res["summary"]

    def row(design: str, key: str, label: str, thr: str, s: dict[str, Any]) -> str:
        return (
            f"| {design} | {key} | {label} | {thr} | {_ci(s['fp_denoised'])} | {_ci(s['sensitivity'])} | "
            f"{_ci(s['fp_full'])} | {_ci(s['fp_low'])} | {_ci(s['fp_pooled'])} | {_ci(s['sensitivity_full'])} |"
        )

    for key in [*a.volumes, "pooled"]:
        lines.append(row("-", key, "shipped start pair", f"{res['start_threshold']:.3f}", summ["start"][key]))
    for design in a.designs:
        for key in [*a.volumes, "pooled"]:
            members = a.volumes if key == "pooled" else [key]
            rr = [res["runs"][v][f"{design}-s{s}"] for v in members for s in a.seeds]
            inh = ", ".join(sorted({f"{r['inherited_threshold']:.3f}" for r in rr}))
            rst = ", ".join(f"{r['card_threshold']:.3f}" for r in rr)
            g = summ[design][key]
            lines.append(row(design, key, "fine-tuned, inherited", inh, g["inherited"]))
            lines.append(row(design, key, "fine-tuned, re-set", rst, g["reset"]))
    lines += ["", "## Re-set minus inherited, paired (runs that re-set only)", "",
              "| design | volume | runs | FP/slice denoised | FP/slice full dose | sensitivity denoised |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for design in a.designs:
        for key in [*a.volumes, "pooled"]:
            g = summ[design][key]
            o = g.get("on_re_set_runs")
            if o:
                diff = o["diff"]
                lines.append(
                    f"| {design} | {key} | {g['re_set_runs']} of {g['runs']} "
                    f"| {_ci(diff['fp_denoised'], sign=True)} | {_ci(diff['fp_full'], sign=True)} "
                    f"| {_ci(diff['sensitivity'], sign=True)} |"
                )
            else:
                lines.append(f"| {design} | {key} | 0 of {g['runs']} | no re-set | - | - |")
    lines += ["", "## Per (volume, seed), descriptive: unseen denoised FP/slice, inherited -> re-set", ""]
    for design in a.designs:
        for cell, p in summ[design]["per_seed"].items():
            rd = p["reading"]["text"] if p["reading"] else "no re-set"
            lines.append(f"- {design}, {cell}: {p['fp_inherited']:.3f} -> {p['fp_reset']:.3f} ({rd})")
    low = [f"{v} {t}" for v in a.volumes for t, r in res["runs"][v].items() if r["card_threshold"] < BOX_FLOOR]
    lines += [
        "",
        f"Thresholds below the viewer's BOX_FLOOR {BOX_FLOOR}: {', '.join(low) if low else 'none'} (this "
        f"evaluation keeps boxes from {SCORE_FLOOR}, as the calibration does).",
        "",
    ]
    return [*lines, *protocol_lines(), ""]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if "calibration" not in FinetuneOutcome.__dataclass_fields__:
        sys.exit("this benchmark measures the threshold re-set of ca6daa2, reverted after it (d6a500c): run it on a "
                 "checkout of ca6daa2")
    refuse_existing(a.results)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    res = run(a)
    wall = time.perf_counter() - t0
    full_design = set(a.volumes) == set(VOLUMES) and set(a.designs) == set(DESIGNS) and set(a.seeds) >= {0, 1, 2}
    scope = ("The protocol's design (both volumes, both input designs, seeds 0, 1, 2)." if full_design
             else "This run cuts the protocol's design (volumes, designs or seeds).")  # fmt: skip
    meta = run_meta("site_threshold.py", a.threads, wall, load0, scope, a.note)
    lines = report(a, res, meta)
    write_results(a.results, lines, {"meta": meta, **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
