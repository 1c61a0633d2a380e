"""Hard negatives in the one-click fine-tune: do the boxes a reader rejected in the Lesion navigator, taught as
hard negatives (``CTInput.rejected`` -> ``Sample.rejected`` -> ``PatchDataset``, ``TrainConfig.hard_negatives``),
leave the fine-tuned pair with fewer false positives on held-out real slices of the same scan, without losing
sensitivity? Verdict: no benefit shown, so the product's default ``hard_negatives`` is 0 since this benchmark (the
protocol below keeps its words of before the run); arm B is given 0.5 explicitly (``HARD``).

Protocol (fixed and written down before any result was seen, also in ``results/hard_negatives_prereg.md``):

- Data: real normal-dose CT from ``real_ct_sources.TRAINING`` only (never pydicom's CT files, never pyradiomics'
  lung1 / lung2: the reserved judges): lungdx-chest (64 x 512^2, central contiguous block of 32 slices) and
  totalseg-abdomen (20 x 512^2, all 20), platipy-chest (central 32 of 130) when time allows. HU floored at
  -1024. The first half of each block is the site's training scan, the second half is held out.
- Lesions (the truth): ``sim.insert.insert_lesions`` (soft-tissue masses, at most 2 per slice, seeded by
  [9100, volume, slice]) tried on every normal-dose slice of both halves; their boxes are the true lesions.
- The review, as a radiologist would make it: 25% dose of the training half (``sim.lowdose.simulate_low_dose``,
  seed 9200 + volume), denoised and detected as ``lidnet detect --denoise-first`` / the Denoise dock do
  (``inference.denoise`` with the shipped default denoiser, then ``inference.detect`` with the shipped default
  detector at its card's threshold, pixel size given). Kept = every inserted lesion box of the training half (the
  reader keeps the true ones and draws the missed ones); rejected = detections whose IoU is < 0.1 with every
  inserted lesion of their slice.
- Arms (everything else the same): A "ignored": ``CTInput(name, full-dose training half with lesions, pixel mm,
  boxes=kept)`` with ``rejected=None`` (before the change); B "hard negatives": the same with
  ``rejected=<rejected boxes>`` and ``TrainConfig.hard_negatives`` 0.5 (its default). The product's one-click
  fine-tune as the widget runs it: ``FinetuneRequest(inputs, one_click_config(new_run_dir(name), init_denoiser /
  init_detector = the shipped defaults' paths, device "cpu", seed s), dose 0.25)`` through ``finetune_job`` driven to
  the end, models exported to a temporary model folder (``MODEL_DIR_ENV``) and loaded back. Seeds 0, 1, 2 per arm
  and volume (fewer if one run takes more than 4 min: said in the results). 2 torch threads, one run at a time;
  wall seconds of every run recorded.
- Evaluation on the held-out half: 25% dose with another seed (9300 + volume; the same for every row), denoised by
  the row's denoiser, detected by the row's detector (boxes kept from ``inference.BOX_FLOOR``). Rows: the shipped
  starting pair (reference), A and B per seed. Per held-out slice at the row detector's default threshold (its
  card, ``models.weights.default_threshold``; the results say whether the fine-tune changed it): false positives
  = detections whose IoU is < 0.1 with every inserted lesion of the slice; hits = ``metrics.froc.match_detections``
  at its default (IoU >= 0.5 with a not yet matched lesion, greedy by score; the product's FROC criterion; it has
  no centre-inside rule); sensitivity = hits / lesions. Threshold-free: mean FROC sensitivity over 0.125, 0.25,
  0.5, 1, 2, 4, 8 FP/slice (``metrics.froc.froc``) over the held-out slices, per row.
- Statistics: per volume and pooled over volumes, paired differences B - A over (seed, held-out slice) cases: FP per
  slice (mean of the per-case differences) and sensitivity at the threshold ((hits B - hits A) / lesions over the
  cases), each with a 95% percentile bootstrap interval (2000 resamples; slices resampled with replacement within
  each (volume, seed) stratum); mean FROC sensitivity difference B - A per (volume, seed), and its mean.
- Decision rule: keep the default ``hard_negatives`` 0.5 if the pooled FP/slice difference B - A has its 95%
  interval entirely below 0 AND the pooled sensitivity difference mean is >= -0.03; otherwise "no benefit shown"
  (the product then sets ``hard_negatives`` to 0 and keeps the slice inclusion).

Usage (fetches the archives once into --downloads; on 2 cores a fine-tune took 14-19 s (1-min load 1.2-2.1), the
pre-registered run 3.5 min, the supplementary one 12.6 min; the timing pilot, on a machine loaded by other jobs, 262 s):
    PYTHONPATH=. .venv/bin/python benchmarks/hard_negatives.py --seeds 0,1 --volumes lungdx-chest,totalseg-abdomen
    PYTHONPATH=. .venv/bin/python benchmarks/hard_negatives.py --seeds 0,1,2,3,4,5 \
        --volumes lungdx-chest,totalseg-abdomen,platipy-chest --results benchmarks/results/hard_negatives_supplement
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_ct_sources import TRAINING, fetch, read_source  # noqa: E402
from results_io import refuse_existing, run_meta, write_results  # noqa: E402

from napari_lidnet._training.finetune import (  # noqa: E402
    FinetuneRequest,
    finetune_job,
    new_run_dir,
    one_click_config,
)
from napari_lidnet._training.local_data import CTInput  # noqa: E402
from napari_lidnet._training.split import split_samples  # noqa: E402
from napari_lidnet.inference import BOX_FLOOR, denoise, detect, map_yields, run_to_end  # noqa: E402
from napari_lidnet.metrics.froc import box_iou_np, froc, match_detections  # noqa: E402
from napari_lidnet.models.registry import MODEL_DIR_ENV, default_model, load_model  # noqa: E402
from napari_lidnet.models.weights import default_threshold  # noqa: E402
from napari_lidnet.sim.insert import insert_lesions  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose  # noqa: E402

VOLUMES = ("lungdx-chest", "totalseg-abdomen", "platipy-chest")
BLOCK = 32
DOSE = 0.25
AIR = -1024.0
MAX_LESIONS = 2
FP_IOU = 0.1  # a detection overlapping no inserted lesion this much is a false positive (and rejected in review)
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
N_BOOT = 2000
SENS_MARGIN = -0.03  # the rule: pooled sensitivity difference mean at least this
ARMS = ("A", "B")
ARM_LABEL = {"start": "shipped start pair", "A": "A ignored (rejected=None)", "B": "B hard negatives (0.5)"}
#: arm B's share of a slice's non-lesion patches centred on a rejected box (the default when this was run)
HARD = 0.5
WORK = Path("/tmp/hard_negatives")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--downloads", type=Path, default=WORK / "pypi-ct", help="where the archives are fetched")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/hard_negatives"), help="md/json stem")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated fine-tune seeds (each arm, each volume)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--volumes", default="lungdx-chest,totalseg-abdomen", help=f"a subset of {', '.join(VOLUMES)}")
    p.add_argument("--work", type=Path, default=WORK, help="temporary model folder and runs go under here")
    p.add_argument("--note", default="", help="what this run is (e.g. a supplementary run outside the protocol)")
    a = p.parse_args(argv)
    a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.volumes = [v for v in a.volumes.split(",") if v.strip()]
    if not set(a.volumes) <= set(VOLUMES) or not a.seeds:
        p.error(f"volumes among {', '.join(VOLUMES)}; at least one seed")
    return a


# --------------------------------------------------------------------------------------------------- data


def load_block(name: str, downloads: Path) -> dict[str, Any]:
    """The central contiguous block of a source (at most ``BLOCK`` slices, HU floored at air), its pixel size and
    its halves (training scan, held out)."""
    src = next(s for s in TRAINING if s.name == name)
    hu, px = read_source(src, fetch(src, downloads))
    n = min(BLOCK, len(hu))
    z0 = (len(hu) - n) // 2
    block = np.maximum(np.asarray(hu[z0 : z0 + n], np.float32), AIR)
    if block.shape[1] != block.shape[2]:
        raise ValueError(f"{name}: slices {block.shape[1:]} are not square (insert_lesions needs square arrays)")
    return {"name": name, "hu": block, "pixel_mm": float(px), "z0": int(z0), "source_shape": list(hu.shape),
            "train": np.arange(n // 2), "held": np.arange(n // 2, n)}  # fmt: skip


def insert_on(vol: dict[str, Any], slices: Any, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The block with up to ``MAX_LESIONS`` soft-tissue lesions inserted on ``slices`` (each seeded by
    ``[*seed, slice]``), and their (M, 5) ``slice, x1, y1, x2, y2`` boxes (slice index within the block)."""
    out, boxes = vol["hu"].copy(), []
    for z in slices:
        full = vol["hu"][z]
        f, _low, b = insert_lesions(full, full.copy(), np.zeros((0, 4), np.float32), vol["pixel_mm"],
                                    np.random.default_rng([*seed, z]), max_lesions=MAX_LESIONS)  # fmt: skip
        out[z] = f
        boxes.extend([z, *box] for box in b)
    return out, np.asarray(boxes, np.float32).reshape(-1, 5)


def with_lesions(vol: dict[str, Any], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every slice of the block with lesions inserted (:func:`insert_on`, seeds ``[9100, k, slice]``)."""
    return insert_on(vol, range(len(vol["hu"])), [9100, k])


def overlaps_none(det: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Which (N, 4) detections have IoU < ``FP_IOU`` with every (M, 4) true box of their slice."""
    det = np.asarray(det, np.float64).reshape(-1, 4)
    truth = np.asarray(truth, np.float64).reshape(-1, 4)
    if not len(det):
        return np.zeros(0, bool)
    if not len(truth):
        return np.ones(len(det), bool)
    return box_iou_np(det, truth).max(axis=1) < FP_IOU


def pipeline_rows(denoiser: Any, detector: Any, low: np.ndarray, pixel_mm: float) -> np.ndarray:
    """``lidnet detect --denoise-first`` / the Denoise dock: denoise all the noise, detect on the denoised images
    (every box from ``BOX_FLOOR``; the threshold is applied by the caller)."""
    den = denoise(denoiser, low, device="cpu")
    return detect(detector, den, device="cpu", score_threshold=BOX_FLOOR, pixel_mm=(pixel_mm, pixel_mm))


def review(full: np.ndarray, truth: np.ndarray, pixel_mm: float, k: int, start: dict[str, Any]) -> dict[str, Any]:
    """The reader's review of the training half: kept = the inserted lesions; rejected = the start pair's
    detections (at its default threshold, on 25% dose) that overlap no inserted lesion."""
    t0 = time.perf_counter()
    low = simulate_low_dose(full, DOSE, pixel_mm, seed=9200 + k).astype(np.float32)
    rows = pipeline_rows(start["denoiser"], start["detector"], low, pixel_mm)
    rows = rows[rows[:, 5] >= start["threshold"]]
    rejected = []
    for z in range(len(full)):
        mine = rows[rows[:, 0] == z]
        false = overlaps_none(mine[:, 1:5], truth[truth[:, 0] == z][:, 1:])
        rejected.extend(mine[false, :5].tolist())
    rejected_arr = np.asarray(rejected, np.float32).reshape(-1, 5)
    hits = sum(
        int(match_detections(rows[rows[:, 0] == z, 1:5], rows[rows[:, 0] == z, 5], truth[truth[:, 0] == z, 1:]).sum())
        for z in range(len(full))
    )
    return {"kept": truth, "rejected": rejected_arr, "n_detections": int(len(rows)), "hits": hits,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


# --------------------------------------------------------------------------------------------------- fine-tune


def trained_slices(n: int, left_out: list[int], config: Any) -> list[int]:
    """The slices of an ``n``-slice input that the trainer's split (``split.split_samples``, as ``Trainer`` calls
    it) puts in the training part, given the slices ``iter_samples`` left out."""
    names = [SimpleNamespace(name=f"x#{z}", z=z) for z in range(n) if z not in set(left_out or [])]
    train, _, _ = split_samples(names, config.val_fraction, config.seed, config.val_max_slices, config.test_fraction,
                                config.test_max_slices)  # fmt: skip
    return sorted(s.z for s in train)


def finetune(name: str, item: CTInput, seed: int, hard: float) -> dict[str, Any]:
    """The one-click fine-tune as the widget starts it (shipped defaults as the starting pair, device cpu), driven to
    the end; the exported pair loaded back."""
    start = {f"init_{kind}": str(default_model(kind).path) for kind in ("denoiser", "detector")}  # as the dock
    settings = {**start, "device": "cpu", "seed": seed, "hard_negatives": hard}
    config = one_click_config(new_run_dir(name), **settings)
    req = FinetuneRequest(name=name, config=config, inputs=[item], dose=DOSE, command="benchmarks/hard_negatives.py")
    t0, cpu0 = time.perf_counter(), time.process_time()
    records: list[dict[str, Any]] = []
    outcome = run_to_end(map_yields(finetune_job(req), records.append))  # every record kept, the outcome returned
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if outcome.status != "finished" or len(outcome.exported) != 2:
        raise RuntimeError(f"{name}: fine-tune {outcome.status}: {outcome.message}")
    paths = {k: next(p for p in outcome.exported if p.endswith(f"_{k}.safetensors")) for k in ("denoiser", "detector")}
    den, _ = load_model(paths["denoiser"].removesuffix(".safetensors"), "denoiser", device="cpu")
    det, card = load_model(paths["detector"].removesuffix(".safetensors"), "detector", device="cpu")
    fin = card.get("training", {}).get("finetune", {})
    left_out = (fin.get("images") or [{}])[0].get("left_out_slices") or []
    trained = trained_slices(item.n_slices, left_out, config)
    rejected = np.zeros((0, 5)) if item.rejected is None else np.asarray(item.rejected).reshape(-1, 5)
    prepare = [r["message"] for r in records if r.get("stage") == "prepare"]
    return {
        "denoiser": den.eval(), "detector": det.eval(), "threshold": default_threshold(card),
        "calibration_in_card": "calibration" in card,
        "info": {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "status": outcome.status,
                 "n_slices": fin.get("n_slices"), "n_lesions": fin.get("n_lesions"),
                 "n_rejected": fin.get("n_rejected"), "left_out": left_out, "trained_slices": trained,
                 "rejected_in_training_part": int(np.isin(np.rint(rejected[:, 0]), trained).sum()),
                 "start_val": outcome.start_metrics, "best_val": outcome.best_metrics,
                 "start_test": outcome.start_test_metrics, "best_test": outcome.best_test_metrics,
                 "improved": outcome.improved, "notes": outcome.notes, "message": outcome.message,
                 "prepare": prepare},
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------- evaluation


def evaluate(pair: dict[str, Any], low: np.ndarray, truth: np.ndarray, pixel_mm: float) -> dict[str, Any]:
    """Per held-out slice: FP (IoU < 0.1 with every lesion), hits (``match_detections``) and lesions at the pair's
    default threshold; the mean FROC sensitivity over ``FROC_RATES`` (every box from the floor)."""
    t0 = time.perf_counter()
    rows = pipeline_rows(pair["denoiser"], pair["detector"], low, pixel_mm)
    fp, hits, lesions, dets, gts = [], [], [], [], []
    for z in range(len(low)):
        mine, gt = rows[rows[:, 0] == z], truth[truth[:, 0] == z][:, 1:]
        dets.append((mine[:, 1:5], mine[:, 5]))
        gts.append(gt)
        at = mine[mine[:, 5] >= pair["threshold"]]
        fp.append(int(overlaps_none(at[:, 1:5], gt).sum()))
        hits.append(int(match_detections(at[:, 1:5], at[:, 5], gt).sum()))
        lesions.append(len(gt))
    fr = froc(dets, gts, fp_rates=FROC_RATES)
    return {"threshold": pair["threshold"], "fp": fp, "hits": hits, "lesions": lesions,
            "froc_mean_sensitivity": fr.mean_sensitivity, "froc_sensitivities": fr.sensitivities.tolist(),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def row_summary(ev: dict[str, Any]) -> dict[str, float]:
    fp, hits, les = (np.asarray(ev[k], float) for k in ("fp", "hits", "lesions"))
    return {"fp_per_slice": float(fp.mean()), "sensitivity": float(hits.sum() / max(les.sum(), 1)),
            "froc_mean_sensitivity": float(ev["froc_mean_sensitivity"]), "n_slices": len(fp),
            "n_lesions": int(les.sum())}  # fmt: skip


def paired(strata: list[dict[str, np.ndarray]], seed: int = 0) -> dict[str, Any]:
    """B - A over (stratum, slice) cases: FP/slice (mean of differences) and sensitivity ((hits B - hits A) /
    lesions), each with a 95% percentile bootstrap interval, slices resampled within each stratum."""

    def stats(idx: list[np.ndarray]) -> tuple[float, float]:
        dfp = np.concatenate([s["dfp"][i] for s, i in zip(strata, idx, strict=True)])
        dh = sum(float(s["dhits"][i].sum()) for s, i in zip(strata, idx, strict=True))
        les = sum(float(s["lesions"][i].sum()) for s, i in zip(strata, idx, strict=True))
        return float(dfp.mean()), (dh / les if les else float("nan"))

    full = stats([np.arange(len(s["dfp"])) for s in strata])
    rng = np.random.default_rng(seed)
    boots = np.array([stats([rng.integers(0, len(s["dfp"]), len(s["dfp"])) for s in strata]) for _ in range(N_BOOT)])
    out = {}
    for j, key in enumerate(("fp_per_slice", "sensitivity")):
        v = boots[:, j][np.isfinite(boots[:, j])]
        out[key] = {"mean": full[j], "ci": [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]}
    out["n_cases"] = int(sum(len(s["dfp"]) for s in strata))
    out["fewer_fp_cases"] = int(sum(int((s["dfp"] < 0).sum()) for s in strata))
    out["more_fp_cases"] = int(sum(int((s["dfp"] > 0).sum()) for s in strata))
    return out


def strata_of(evals: dict[str, Any], volumes: list[str], seeds: list[int]) -> list[dict[str, np.ndarray]]:
    out = []
    for v in volumes:
        for s in seeds:
            a, b = evals[v][f"A{s}"], evals[v][f"B{s}"]
            out.append({"dfp": np.asarray(b["fp"], float) - np.asarray(a["fp"], float),
                        "dhits": np.asarray(b["hits"], float) - np.asarray(a["hits"], float),
                        "lesions": np.asarray(a["lesions"], float)})  # fmt: skip
    return out


def verdict(pooled: dict[str, Any]) -> str:
    fp_ok = pooled["fp_per_slice"]["ci"][1] < 0
    sens_ok = pooled["sensitivity"]["mean"] >= SENS_MARGIN
    if fp_ok and sens_ok:
        return "keep hard_negatives 0.5 (fewer false positives shown, sensitivity kept)"
    why = [] if fp_ok else ["the FP/slice interval does not lie entirely below 0"]
    why += [] if sens_ok else [f"the sensitivity difference is below {SENS_MARGIN}"]
    return "no benefit shown (" + "; ".join(why) + "): set hard_negatives to 0, keep the slice inclusion"


# --------------------------------------------------------------------------------------------------- the run


def start_pair(a: argparse.Namespace) -> dict[str, Any]:
    """The shipped pair and the detector's threshold, with a temporary model folder under ``a.work`` for the
    fine-tuned models (never the user's) and ``a.threads`` torch threads."""
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ[MODEL_DIR_ENV] = tempfile.mkdtemp(prefix="models-", dir=a.work)
    start = {"denoiser": load_model("default", "denoiser", device="cpu")[0].eval()}
    det, card = load_model("default", "detector", device="cpu")
    return {**start, "detector": det.eval(), "threshold": default_threshold(card)}


def run(a: argparse.Namespace) -> dict[str, Any]:
    start = start_pair(a)
    data, reviews, runs, evals, summary = [], {}, {}, {}, {}
    for name in a.volumes:
        k = VOLUMES.index(name)
        vol = load_block(name, a.downloads)
        px = vol["pixel_mm"]
        t0 = time.perf_counter()
        full, truth = with_lesions(vol, k)
        tr, held = vol["train"], vol["held"]
        train_truth = truth[np.isin(truth[:, 0], tr)]
        held_truth = truth[np.isin(truth[:, 0], held)].copy()
        held_truth[:, 0] -= held[0]
        held_low = simulate_low_dose(full[held], DOSE, px, seed=9300 + k).astype(np.float32)
        print(f"{name}: lesions inserted, held-out low dose in {time.perf_counter() - t0:.0f} s", flush=True)
        rv = review(full[tr], train_truth, px, k, start)
        reviews[name] = rv
        print(f"  review: {rv['n_detections']} detections at {start['threshold']:.3f}, {rv['hits']} hits, "
              f"{len(rv['rejected'])} rejected, {len(rv['kept'])} kept ({rv['seconds']} s)", flush=True)  # fmt: skip
        data.append({"volume": name, "source_shape": vol["source_shape"], "block": [vol["z0"], vol["z0"] + len(full)],
                     "pixel_mm": px, "train_slices": len(tr), "held_out_slices": len(held),
                     "kept_boxes": int(len(rv["kept"])), "rejected_boxes": int(len(rv["rejected"])),
                     "rejected_slices": int(len(np.unique(rv["rejected"][:, 0]))),
                     "review_detections": rv["n_detections"], "review_hits": rv["hits"],
                     "held_out_lesions": int(len(held_truth))})  # fmt: skip
        evals[name] = {"start": evaluate(start, held_low, held_truth, px)}
        print(f"  start pair: {row_summary(evals[name]['start'])}", flush=True)
        runs[name] = {}
        for seed in a.seeds:
            for arm in ARMS:
                item = CTInput(f"{name}-train", full[tr].copy(), px, boxes=rv["kept"].copy(),
                               box_source="drawn (reviewed)",
                               rejected=rv["rejected"].copy() if arm == "B" else None)  # fmt: skip
                tag = f"{arm}{seed}"
                pair = finetune(f"hn-{name}-{tag}", item, seed, HARD)  # no effect in A: rejected=None
                ev = evaluate(pair, held_low, held_truth, px)
                evals[name][tag] = ev
                runs[name][tag] = {
                    **pair["info"],
                    "threshold": pair["threshold"],
                    "calibration_in_card": pair["calibration_in_card"],
                    "eval_s": ev["seconds"],
                }
                print(f"  {tag}: fine-tune {pair['info']['wall_s']} s wall; n_rejected {pair['info']['n_rejected']}; "
                      f"threshold {pair['threshold']:.3f}; {row_summary(ev)}", flush=True)  # fmt: skip
                del pair
        st = strata_of(evals, [name], a.seeds)
        froc_d = [evals[name][f"B{s}"]["froc_mean_sensitivity"] - evals[name][f"A{s}"]["froc_mean_sensitivity"]
                  for s in a.seeds]  # fmt: skip
        summary[name] = {**paired(st), "froc_diff_per_seed": froc_d, "froc_diff_mean": float(np.mean(froc_d))}
    pooled = paired(strata_of(evals, a.volumes, a.seeds))
    froc_all = [d for v in a.volumes for d in summary[v]["froc_diff_per_seed"]]
    pooled.update(froc_diff_per_case=froc_all, froc_diff_mean=float(np.mean(froc_all)))
    # descriptive, not in the rule: the (volume, seed) pairs where a rejected box fell in the split's training part
    # (elsewhere B trains exactly as A: the same patches, bitwise the same weights)
    acting = [(v, s) for v in a.volumes for s in a.seeds if runs[v][f"B{s}"]["rejected_in_training_part"]]
    pooled_acting = None
    if acting:
        st = [strata_of(evals, [v], [s])[0] for v, s in acting]
        pooled_acting = {**paired(st), "pairs": [f"{v} seed {s}" for v, s in acting]}
    return {"data": data, "runs": runs, "evals": evals, "summary": summary, "pooled": pooled,  # fmt: skip
            "pooled_acting": pooled_acting,
            "start_threshold": start["threshold"],
            "reviews": {v: {"rejected": r["rejected"].tolist(), "kept": r["kept"].tolist()}
                        for v, r in reviews.items()}}  # fmt: skip


# --------------------------------------------------------------------------------------------------- report


def _ci(r: dict[str, Any], digits: int = 3) -> str:
    f = f"{{:+.{digits}f}}"
    return f"{f.format(r['mean'])} [{f.format(r['ci'][0])}, {f.format(r['ci'][1])}]"


def protocol_lines() -> list[str]:
    doc = __doc__.split("Protocol (", 1)[1].split("\nUsage", 1)[0]
    return ["## Protocol (" + doc.split("\n", 1)[0], *doc.split("\n", 1)[1].strip("\n").splitlines()]


def report(a: argparse.Namespace, res: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    lines = [
        "# Hard negatives in the one-click fine-tune (rejected navigator boxes), real CT, held-out slices, 25% dose",
        "", f"Command: `{meta['command']}`  ",
        f"Date {meta['date']}, {meta['machine']}, torch {meta['torch']}, {a.threads} torch threads, CPU; machine "
        f"load {meta['load']}; whole run {meta['wall_s'] / 60:.1f} min wall.", "",
        f"Volumes: {', '.join(a.volumes)}; seeds: {', '.join(map(str, a.seeds))}. {meta['scope']}", "",
        *([f"**Note:** {a.note}", ""] if a.note else []),
        f"**Verdict (the pre-registered rule): {verdict(res['pooled'])}.**", "",
        "## Data and the review", "",
        "| volume | source shape | block (z) | pixel mm | train / held-out slices | review detections (start pair, "
        "threshold) | of them hits | rejected boxes (slices) | kept boxes | held-out lesions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for d in res["data"]:
        lines.append(f"| {d['volume']} | {' x '.join(map(str, d['source_shape']))} "
                     f"| {d['block'][0]}-{d['block'][1] - 1} | {d['pixel_mm']:.3g} | {d['train_slices']} / "
                     f"{d['held_out_slices']} | {d['review_detections']} "
                     f"({res['start_threshold']:.3f}) | {d['review_hits']} | {d['rejected_boxes']} "
                     f"({d['rejected_slices']}) | {d['kept_boxes']} | {d['held_out_lesions']} |")  # fmt: skip
    lines += ["", "## Held-out slices: rows at each detector's default threshold", "",
              "FP = detections with IoU < 0.1 with every inserted lesion; sensitivity = match_detections hits (IoU >= "
              "0.5) / lesions; FROC = mean sensitivity over 0.125-8 FP/slice. Fine-tuned rows: mean over seeds "
              "(per-seed values in brackets).", "",
              "| volume | row | threshold | FP/slice | sensitivity | FROC mean sensitivity |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for v in a.volumes:
        ev = res["evals"][v]
        s0 = row_summary(ev["start"])
        lines.append(
            f"| {v} | {ARM_LABEL['start']} | {ev['start']['threshold']:.3f} | {s0['fp_per_slice']:.3f} "
            f"| {s0['sensitivity']:.3f} ({s0['n_lesions']} lesions) | {s0['froc_mean_sensitivity']:.3f} |"
        )
        for arm in ARMS:
            rows = [row_summary(ev[f"{arm}{s}"]) for s in a.seeds]
            thr = sorted({round(ev[f"{arm}{s}"]["threshold"], 3) for s in a.seeds})

            def cell(key: str, rows: list = rows) -> str:
                vals = [r[key] for r in rows]
                return f"{np.mean(vals):.3f} ({', '.join(f'{x:.3f}' for x in vals)})"

            lines.append(
                f"| {v} | {ARM_LABEL[arm]} | {', '.join(map(str, thr))} | {cell('fp_per_slice')} "
                f"| {cell('sensitivity')} | {cell('froc_mean_sensitivity')} |"
            )
    lines += ["", "## Paired differences B - A over (seed, held-out slice) cases: mean [95% bootstrap]", "",
              "| volume | cases | FP/slice B - A | cases B fewer / more FP | sensitivity B - A | FROC mean sens. B - A "
              "per seed (mean) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for v in a.volumes:
        s = res["summary"][v]
        per_seed = ", ".join(f"{x:+.3f}" for x in s["froc_diff_per_seed"])
        lines.append(f"| {v} | {s['n_cases']} | {_ci(s['fp_per_slice'])} | {s['fewer_fp_cases']} / "
                     f"{s['more_fp_cases']} | {_ci(s['sensitivity'])} | {per_seed} "
                     f"({s['froc_diff_mean']:+.3f}) |")  # fmt: skip
    p = res["pooled"]
    lines.append(
        f"| **pooled** | {p['n_cases']} | {_ci(p['fp_per_slice'])} | {p['fewer_fp_cases']} / "
        f"{p['more_fp_cases']} | {_ci(p['sensitivity'])} | ({p['froc_diff_mean']:+.3f}) |"
    )
    q = res.get("pooled_acting")
    n_pairs = len(a.volumes) * len(a.seeds)
    lines += ["", f"Descriptive, not in the rule: pairs (volume, seed) where a rejected box fell in the training part "
              f"of the fine-tune's split: {len(q['pairs']) if q else 0} of {n_pairs}"
              + (f" ({', '.join(q['pairs'])}); over their cases, FP/slice B - A {_ci(q['fp_per_slice'])}, "
                 f"sensitivity B - A {_ci(q['sensitivity'])} ({q['n_cases']} cases, B fewer / more FP in "
                 f"{q['fewer_fp_cases']} / {q['more_fp_cases']}). In the other pairs B trained exactly as A." if q
                 else ": B trained exactly as A everywhere.")]  # fmt: skip
    lines += ["", "## Fine-tune runs", "",
              "Slices: given to the trainer (its split keeps validation and test parts and their neighbours out of "
              "training); rejected: in the card, and on the slices the split put in the training part (only those "
              "can act); threshold: the exported card's default (calibration in the card?).", "",
              "| volume | run | wall s | CPU s | slices (trained on) | lesions | rejected (in training part) | "
              "left out | threshold | val before -> after (PSNR, sensitivity) | eval s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in a.volumes:
        for tag, r in res["runs"][v].items():
            sv, bv = r.get("start_val") or {}, r.get("best_val") or {}
            val = (
                f"{sv.get('psnr', float('nan')):.2f} -> {bv.get('psnr', float('nan')):.2f} dB, "
                f"{sv.get('sensitivity', float('nan')):.3f} -> {bv.get('sensitivity', float('nan')):.3f}"
            )
            cal = "yes" if r["calibration_in_card"] else "no"
            lines.append(f"| {v} | {tag} | {r['wall_s']} | {r['cpu_s']} | {r['n_slices']} "
                         f"({len(r['trained_slices'])}) | {r['n_lesions']} | {r['n_rejected']} "
                         f"({r['rejected_in_training_part']}) | {r['left_out']} | {r['threshold']:.3f} ({cal}) "
                         f"| {val} | {r['eval_s']} |")  # fmt: skip
    return [*lines, "", *protocol_lines(), ""]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    refuse_existing(a.results)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    res = run(a)
    wall = time.perf_counter() - t0
    design = (set(a.volumes) >= {"lungdx-chest", "totalseg-abdomen"}, set(a.seeds) >= {0, 1, 2})
    scope = ("The protocol's design (lungdx-chest and totalseg-abdomen, seeds 0, 1, 2)" + (" or more." if all(design)
             else "; this run cuts it (volumes or seeds), keeping the paired design."))  # fmt: skip
    meta = run_meta("hard_negatives.py", a.threads, wall, load0, scope, a.note)
    lines = report(a, res, meta)
    write_results(a.results, lines, {"meta": meta, "verdict": verdict(res["pooled"]), **res})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
