"""Does the shipped denoiser gain from test-time views (flips, transposes) on real anatomy? Validation data only.

The rule was written before the run (``benchmarks/results/denoiser_views_prereg.md``). Each slice of
``told_sd_estimators``' cases (the same slices, seeds and cached noise as ``real_val_bm3d.py``) is denoised blind in
each of the 8 views of the square's symmetry group (flips, then a transpose), each output mapped back; V1 is the
slice itself (the product today), V4 the mean of the four flips, V8 the mean of all eight. Each mean gets the
product's told-the-SD blend (``apply_strength``); gains over V1 are paired by case, averaged per slice, with 95%
bootstrap intervals over slices.

    PYTHONPATH=. python benchmarks/denoiser_views.py --real data/pypi-ct --workers 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_anatomy import DiskCache, bm3d_on_body  # noqa: E402
from real_val_bm3d import default_net, noisy_cases, scan_group  # noqa: E402
from results_io import refuse_existing  # noqa: E402
from told_sd_estimators import DOSES, MODELS, add_case_args, run_cases  # noqa: E402

from napari_lidnet.inference import apply_strength, denoise  # noqa: E402
from napari_lidnet.metrics.bootstrap import mean_ci  # noqa: E402
from napari_lidnet.metrics.image import psnr, ssim  # noqa: E402

#: (flipped axes, transposed after): the first four are V4, all eight V8
VIEWS = [((), False), ((1,), False), ((0,), False), ((0, 1), False),
         ((), True), ((1,), True), ((0,), True), ((0, 1), True)]  # fmt: skip
SETS = {"V1": 1, "V4": 4, "V8": 8}


def forward(img: np.ndarray, view: tuple[tuple[int, ...], bool]) -> np.ndarray:
    axes, transposed = view
    out = np.flip(img, axes) if axes else img
    return np.ascontiguousarray(out.T if transposed else out)


def backward(img: np.ndarray, view: tuple[tuple[int, ...], bool]) -> np.ndarray:
    axes, transposed = view
    out = img.T if transposed else img
    return np.ascontiguousarray(np.flip(out, axes) if axes else out)


def one_slice(job: tuple) -> list[dict]:
    """Every (noise model, dose) case of one slice: PSNR/SSIM of V1, V4, V8 told the SD and blind, and BM3D."""
    k, sl, cache_dir, _ = job
    net, cache, ref = default_net(), DiskCache(Path(cache_dir)), sl["hu"]
    recs = []
    for model, dose, low, sd, body in noisy_cases(k, sl, cache, MODELS):
        t0 = time.perf_counter()
        outs = [backward(np.asarray(denoise(net, forward(low, v), batch_size=1)), v) for v in VIEWS]
        seconds = (time.perf_counter() - t0) / len(VIEWS)
        rec = {"set": sl["set"], "group": scan_group(sl["name"]), "slice": sl["name"], "model": model,
               "dose": dose, "inserted_sd": sd, "seconds_per_view": seconds}  # fmt: skip
        bm3d = cache.get(("bm3d-told", low, sd), lambda low=low, sd=sd, body=body: bm3d_on_body(low, body, sd))[0]
        rec["psnr_bm3d"], rec["ssim_bm3d"] = psnr(bm3d, ref), ssim(bm3d, ref)
        for name, n in SETS.items():
            blind = np.mean(outs[:n], axis=0).astype(np.float32)
            told = apply_strength(low[None], blind[None], sd, None)[0]
            rec[f"psnr_{name}"], rec[f"ssim_{name}"] = psnr(told, ref), ssim(told, ref)
            rec[f"psnr_{name}_blind"] = psnr(blind, ref)
        recs.append(rec)
    print(f"  {sl['name']}: " + ", ".join(f"{r['model']} {r['dose']}: {r['psnr_V8'] - r['psnr_V1']:+.2f} dB"
                                          for r in recs), flush=True)  # fmt: skip
    return recs


def gain(recs: list[dict], key: str) -> dict:
    """``key`` of the candidate minus V1's (``key`` names the candidate's column), averaged per slice, then over
    slices with a 95% bootstrap interval."""
    base = key.replace("V4", "V1").replace("V8", "V1")
    by_slice: dict[str, list[float]] = {}
    for r in recs:
        by_slice.setdefault(r["slice"], []).append(r[key] - r[base])
    diffs = np.array([np.mean(v) for v in by_slice.values()])
    low, high = mean_ci(diffs, n_boot=2000, seed=0).ci if len(diffs) > 1 else (float("nan"), float("nan"))
    return {"mean": float(diffs.mean()), "low": float(low), "high": float(high), "slices": len(diffs)}


def cells(recs: list[dict]) -> list[tuple[str, str, float, list[dict]]]:
    """(set or group label, noise model, dose, its records) for each data set, then each real scan group."""
    out = []
    for key in ("set", "group"):
        for g in sorted({r[key] for r in recs}):
            if key == "group" and g == "simulation":
                continue
            for dose in DOSES:
                for model in MODELS:
                    sel = [r for r in recs if r[key] == g and r["dose"] == dose and r["model"] == model]
                    if sel:
                        out.append((g if key == "set" else f"real: {g}", model, dose, sel))
    return out


def verdict(recs: list[dict], cand: str) -> tuple[bool, list[str]]:
    """The rule of ``denoiser_views_prereg.md`` for candidate ``cand`` ("V4" or "V8"): passed, and the reasons not."""
    why = [] if any(r["set"] == "real validation" for r in recs) else ["rule 1: no real validation slice"]
    for label, model, dose, sel in cells(recs):
        g, s = gain(sel, f"psnr_{cand}"), gain(sel, f"ssim_{cand}")["mean"]
        where = f"{label} {model} {dose:g}"
        if label == "real validation" and (g["mean"] < 0.10 or not g["low"] > 0):
            why.append(f"rule 1: {where} {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]")
        if label == "simulation" and g["mean"] < -0.02:
            why.append(f"rule 2: {where} {g['mean']:+.3f}")
        if label.startswith("real: ") and g["mean"] < -0.05:
            why.append(f"rule 3: {where} {g['mean']:+.3f}")
        if not label.startswith("real: ") and s < -0.0005:
            why.append(f"rule 4: {where} SSIM {s:+.4f}")
    return not why, why


def table(recs: list[dict]) -> list[str]:
    lines = ["| data set | noise | dose | cases | PSNR V1 / V4 / V8 / BM3D told (dB) | V4 - V1 | V8 - V1 | "
             "V8 - V1 blind | SSIM V8 - V1 |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for label, model, dose, sel in cells(recs):
        means = " / ".join(f"{np.mean([r[f'psnr_{c}'] for r in sel]):.2f}" for c in ("V1", "V4", "V8", "bm3d"))
        g4, g8, gb = (gain(sel, k) for k in ("psnr_V4", "psnr_V8", "psnr_V8_blind"))
        ci = lambda g: f"{g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"  # noqa: E731
        lines.append(f"| {label} | {model} | {dose:g} | {len(sel)} | {means} | {ci(g4)} | {ci(g8)} | {ci(gb)} | "
                     f"{gain(sel, 'ssim_V8')['mean']:+.4f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_args(p)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/denoiser_views"))
    a = p.parse_args()
    refuse_existing(a.results)
    recs, minutes = run_cases(a, one_slice, None)
    command = "PYTHONPATH=. python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:])
    decisions = []
    for cand in ("V8", "V4"):
        ok, why = verdict(recs, cand)
        decisions.append(f"- **{cand}: {'passes' if ok else 'fails'}**" + ("" if ok else ": " + "; ".join(why)))
    per_view = np.median([r["seconds_per_view"] for r in recs])
    md = [f"# The denoiser's test-time views on the validation slices ({datetime.date.today()})", "",
          f"Command: `{command}`; {minutes:.0f} min on this CPU (median {per_view:.3f} s per view and slice, one "
          "thread). Rule: `denoiser_views_prereg.md`. Told the true SD of the inserted noise unless \"blind\"; "
          "PSNR over -160..240 HU against the normal-dose slice; gains paired by case, averaged per slice, 95% "
          "bootstrap intervals over slices.", "", "## Verdict", "", *decisions, "", *table(recs)]  # fmt: skip
    a.results.with_suffix(".md").write_text("\n".join(md) + "\n")
    a.results.with_suffix(".json").write_text(json.dumps({"cases": recs}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
