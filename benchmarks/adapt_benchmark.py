"""Self-supervised adaptation to an unseen scanner: scheme A (neighbouring slices) vs scheme B (blind spots wider
than the measured noise correlation length), against the supervised upper bound and the shipped default.

A simulated abdomen volume (``sim.phantom.make_phantom_volume``) goes through the scanner model at 10% dose with a
protocol the shipped denoiser never saw (``ScannerParams``: "sharp" kernel, 600 views, 0.625 mm slice thickness;
the default was trained at 25% dose, standard kernel, 816 views, 2.5 mm, 512 px). At 256 px the pixels are
1.25 mm, which alone would make the noise per pixel about 5x lower in variance than a 512-px 0.7-mm scan; the thin
slice (a quarter of the photons of 2.5 mm) brings it back to a realistic 10%-dose level (~30 HU) and makes the
shipped denoiser clearly under-denoise. Slices stay 2.5 mm apart, so scheme A's neighbours differ in anatomy as in
a routine series. Methods, all starting from the shipped default denoiser, same steps / batch / patch / learning
rate / seed:

- ``default``: the shipped denoiser as is;
- ``supervised``: fine-tuned with the true full-dose images (``adapt_patches.PairPatches``, same loop): the upper bound;
- ``A neighbours``, ``B blindspot``: ``selfsup.adapt_job`` on the low-dose volume alone (exported, loaded back);
  ``A neighbours unweighted`` (``--methods``): scheme A without its consistency weighting.

Judged on held-out slices (another phantom seed, same protocol; nothing of it trains): PSNR / SSIM over
(-160, 240) HU against the full-dose image, PSNR against the noise-free phantom, the fraction of the supervised
gap closed ((PSNR - PSNR_default) / (PSNR_supervised - PSNR_default)), edge sharpness relative to the full-dose
image at the full-dose image's strongest edges (``metrics.noreference``, noise share taken out), and the
no-reference noise SD. Target: a scheme closes >= 70% of the gap and keeps >= 95% of the edge sharpness of the
full-dose image (literal) and of the starting model (what adapting costs). CPU seconds of each training (process
time, all threads; inflated when other jobs load the machine, whose load is recorded) and wall seconds.

Real anatomy (``--real``): pydicom's real CT slices (EVALUATION ONLY: ``CT_small.dcm``, a 128 x 128 body crop,
and two 512 x 512 head slices stored as JPEG 2000) with the same low dose inserted by ``simulate_low_dose``,
denoised by every model, PSNR/SSIM against the real slice. They are single slices: scheme A cannot train on them,
and nothing trains on them here.

Usage:
    PYTHONPATH=. .venv/bin/python benchmarks/adapt_benchmark.py       # 1.5 min on 2 idle cores, ~6 when busy
    PYTHONPATH=. .venv/bin/python benchmarks/adapt_benchmark.py --methods default supervised "A neighbours" \\
        "A neighbours unweighted" "B blindspot" --tag cpu                       # the recorded CPU run
    PYTHONPATH=. .venv/bin/python benchmarks/adapt_benchmark.py --slices 100 --size 512 --pixel-mm 0.7 \\
        --thickness-mm 2.5 --test-slices 16 --steps 2000 --batch 16 --patch 128 --device cuda --tag gpu
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_lidnet._training.adapt_data import prepare_adapt
from napari_lidnet._training.adapt_patches import PairPatches
from napari_lidnet._training.selfsup import adapt_job, train_steps
from napari_lidnet.inference import denoise, map_yields, run_to_end
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.metrics.image import psnr, ssim
from napari_lidnet.metrics.noreference import edge_locations, edge_sharpness, noise_sd
from napari_lidnet.models.device import pick_device
from napari_lidnet.models.registry import MODEL_DIR_ENV, load_model
from napari_lidnet.sim.lowdose import simulate_low_dose, simulate_pair
from napari_lidnet.sim.phantom import make_phantom_volume
from napari_lidnet.sim.scanner import ScannerParams

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("default", "supervised", "A neighbours", "A neighbours unweighted", "B blindspot")
DEFAULT_METHODS = ("default", "supervised", "A neighbours", "B blindspot")
TARGET_GAP, TARGET_EDGE = 0.70, 0.95


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=24, help="slices of the training volume")
    ap.add_argument("--test-slices", type=int, default=8, help="held-out slices (another phantom)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--pixel-mm", type=float, default=1.25, help="pixel size (1.25 mm at 256 px: an adult FOV)")
    ap.add_argument("--slice-mm", type=float, default=2.5)
    ap.add_argument("--dose", type=float, default=0.10)
    ap.add_argument("--kernel", default="sharp")
    ap.add_argument("--views", type=int, default=600)
    ap.add_argument(
        "--thickness-mm",
        type=float,
        default=0.625,
        help="slice thickness: photons, hence noise (0.625 mm: 2x 2.5 mm's)",
    )
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    ap.add_argument("--real", action=argparse.BooleanOptionalAction, default=True, help="evaluate on CT_small.dcm")
    ap.add_argument("--tag", default="cpu", help="results file name: adapt_<tag>.md/json")
    ap.add_argument("--no-write", action="store_true")
    return ap.parse_args(argv)


def protocol(args: argparse.Namespace) -> ScannerParams:
    """The benchmark's scan protocol."""
    return ScannerParams(dose=args.dose, n_views=args.views, kernel=args.kernel, thickness_mm=args.thickness_mm)


def simulate(args: argparse.Namespace, seed: int, n: int) -> dict[str, Any]:
    """A phantom volume and its full- / low-dose scans under the benchmark protocol."""
    pv = make_phantom_volume(seed, n, "abdomen", size=args.size, slice_mm=args.slice_mm, pixel_mm=args.pixel_mm)
    kw = protocol(args).kwargs()
    device = "cuda" if str(args.device).startswith("cuda") and torch.cuda.is_available() else "cpu"
    full, low = simulate_pair(pv.hu, spacing_mm=pv.spacing_mm[1], seed=seed, device=device, **kw)
    return {"phantom": pv.hu, "full": full, "low": low, "spacing": pv.spacing_mm, "seed": seed}


@contextlib.contextmanager
def timed(record: dict[str, Any]):
    """Adds cpu_s (process time, all threads) and wall_s to ``record``."""
    c0, w0 = time.process_time(), time.perf_counter()
    yield
    record["cpu_s"] = round(time.process_time() - c0, 1)
    record["wall_s"] = round(time.perf_counter() - w0, 1)


def train_supervised(train: dict[str, Any], args: argparse.Namespace, device: Any) -> tuple[Any, dict[str, Any]]:
    """The default denoiser fine-tuned on (low, full) pairs with the same loop and settings."""
    info: dict[str, Any] = {}
    with timed(info):
        model, _ = load_model("default", "denoiser", device=device)
        data = prepare_adapt(CTVolume(train["low"], train["spacing"], name="train"), "blindspot", args.patch, None, 1)
        patches = PairPatches(data, [train["full"]], args.patch)
        loop = train_steps(model, patches, args.steps, lr=args.lr, batch_size=args.batch, device=device, seed=args.seed)
        losses = [rec["losses"]["selfsup"] for rec in loop]
    info["loss_first10"], info["loss_last10"] = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    return model.eval(), info


def _say_prepare(rec: dict) -> None:
    """Print an adaptation record's set-up lines."""
    if rec["stage"] == "prepare":
        print("   ", rec["message"], flush=True)


def train_selfsup(
    train: dict[str, Any], args: argparse.Namespace, scheme: str, device: Any, consistency: bool = True
) -> tuple[Any, dict[str, Any]]:
    """``adapt_job`` on the low-dose volume alone; the exported model loaded back."""
    info: dict[str, Any] = {}
    vol = CTVolume(train["low"], train["spacing"], name="train-low")
    with timed(info):
        job = adapt_job(
            [vol],
            f"bench-{scheme}-{int(consistency)}",
            scheme=scheme,
            steps=args.steps,
            device=str(device),
            seed=args.seed,
            batch_size=args.batch,
            patch_size=args.patch,
            lr=args.lr,
            consistency=consistency,
            estimate_every=args.steps,
            command="benchmarks/adapt_benchmark.py",
        )
        outcome = run_to_end(map_yields(job, _say_prepare))
    model, card = load_model(outcome.exported[0].removesuffix(".safetensors"), "denoiser", device=device)
    sup = card["training"]["selfsup"]
    info.update(
        loss_before=outcome.loss_before,
        loss_after=outcome.loss_after,
        blind_radius_px=sup["blind_radius_px"],
        correlation_length_px=sup["correlation_length_px"],
        noreference=card["metrics"]["noreference"],
    )
    return model, info


def evaluate(out: np.ndarray, test: dict[str, Any], edges: np.ndarray) -> dict[str, float]:
    """Full-reference and no-reference quality of a denoised held-out stack."""
    px = float(test["spacing"][1])
    ref_edges = edge_sharpness(test["full"], px, edges)
    return {
        "psnr": psnr(out, test["full"]),
        "ssim": ssim(out, test["full"]),
        "psnr_phantom": psnr(out, test["phantom"]),
        "edge_rel_full": edge_sharpness(out, px, edges) / ref_edges,
        "noise_sd_est": noise_sd(out, block=24, noise_from="slices"),  # as recorded
    }


REAL_FILES = ("CT_small.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm")
AIR_FLOOR = -1024.0  # padding outside the scanned FOV (-2000, -3995) is set to air


def real_slices() -> list[tuple[str, np.ndarray, float]]:
    """(file, HU, pixel mm) of pydicom's real CT slices (EVALUATION ONLY): a 128 x 128 body crop and two 512 x 512
    head slices (JPEG 2000 lossless and lossy); those that cannot be decoded here are skipped."""
    import warnings

    from pydicom.data import get_testdata_file

    from napari_lidnet.io.open_ct import open_ct

    found = []
    for name in REAL_FILES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                vol = open_ct(get_testdata_file(name))[0]
        except Exception as exc:  # noqa: BLE001 - a missing JPEG 2000 decoder skips that file
            print(f"    skipping {name}: {exc}", flush=True)
            continue
        found.append((name, np.maximum(vol.hu.astype(np.float32), AIR_FLOOR), float(vol.spacing[-1])))
    return found


def real_anatomy(models: dict[str, Any], args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """Real slices at the benchmark's dose / protocol (2 noise draws each): PSNR / SSIM of every model against the
    real normal-dose slice (which carries its own noise), edge sharpness relative to it, no-reference noise SD."""
    kw = protocol(args).kwargs()
    out: dict[str, Any] = {}
    for name, hu, px in real_slices():
        lows = np.stack([simulate_low_dose(hu, spacing_mm=px, seed=s, **kw) for s in range(2)])
        ref = np.stack([hu] * len(lows))
        edges = np.stack([edge_locations(hu, margin_px=2)] * len(lows))
        ref_sharp = edge_sharpness(ref, px, edges)
        outs = {"low dose": lows, **{m: denoise(mod, lows, device=device, amp=False) for m, mod in models.items()}}
        out[name] = {
            "shape": list(hu.shape),
            "pixel_mm": px,
            "rows": {
                m: {
                    "psnr": psnr(o, ref),
                    "ssim": ssim(o, ref),
                    "edge_rel_full": edge_sharpness(o, px, edges) / ref_sharp,
                    "noise_sd_est": noise_sd(o, block=24),
                }
                for m, o in outs.items()
            },
        }
    return out


def gap_fractions(rows: dict[str, dict[str, float]]) -> None:
    """Adds ``gap_closed`` to every row (needs the default and supervised rows)."""
    if "default" not in rows or "supervised" not in rows:
        return
    base, top = rows["default"]["psnr"], rows["supervised"]["psnr"]
    for row in rows.values():
        row["gap_closed"] = (row["psnr"] - base) / (top - base) if top != base else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)[0]
    os.environ[MODEL_DIR_ENV] = tempfile.mkdtemp(prefix="lidnet-adapt-bench-")
    t0 = time.perf_counter()
    train = simulate(args, args.seed + 3, args.slices)
    test = simulate(args, args.seed + 103, args.test_slices)
    sim_s = time.perf_counter() - t0
    print(f"simulated {args.slices} + {args.test_slices} slices in {sim_s:.0f} s", flush=True)
    edges = edge_locations(test["full"], max_slices=args.test_slices)
    models, rows, training = {}, {"low dose": evaluate(test["low"], test, edges)}, {}
    for method in args.methods:
        print(f"{method} ...", flush=True)
        if method == "default":
            models[method], training[method] = load_model("default", "denoiser", device=device)[0], {}
        elif method == "supervised":
            models[method], training[method] = train_supervised(train, args, device)
        else:
            scheme = method.split()[1]
            models[method], training[method] = train_selfsup(train, args, scheme, device, "unweighted" not in method)
        rows[method] = evaluate(denoise(models[method], test["low"], device=device, amp=False), test, edges)
        print(f"    {json.dumps({k: round(v, 3) for k, v in rows[method].items()})} {training[method]}", flush=True)
    gap_fractions(rows)
    result = {"rows": rows, "training": training, "sim_s": round(sim_s, 1)}
    if args.real:
        result["real"] = real_anatomy(models, args, device)
    return result


def verdict(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per scheme: the gap closed, and the edge sharpness relative to the full-dose image (the literal target), to
    the starting model (what adapting costs) and to the supervised model (what self-supervision costs)."""
    out = {}
    for m, r in rows.items():
        if not m.startswith(("A ", "B ")) or "gap_closed" not in r:
            continue
        g, e = r["gap_closed"], r["edge_rel_full"]
        e0, e1 = e / rows["default"]["edge_rel_full"], e / rows["supervised"]["edge_rel_full"]
        out[m] = {
            "gap_closed": g,
            "edge_rel_full": e,
            "edge_rel_default": e0,
            "edge_rel_supervised": e1,
            "meets_target_vs_full": bool(g >= TARGET_GAP and e >= TARGET_EDGE),
            "meets_target_vs_start": bool(g >= TARGET_GAP and e0 >= TARGET_EDGE),
            "meets_target_vs_supervised": bool(g >= TARGET_GAP and e1 >= TARGET_EDGE),
        }
    return out


def markdown(meta: dict[str, Any], result: dict[str, Any]) -> str:
    lines = [
        f"# Self-supervised adaptation benchmark ({meta['tag']})",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date {meta['date']}, {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
        f"device {meta['device']}; machine load {meta['load']}.  ",
        f"Protocol: {meta['protocol']}.  ",
        f"Training volume {meta['train']}; held-out volume {meta['test']} (another phantom seed, never trained on).",
        "",
        "| method | PSNR (dB) | SSIM | PSNR vs phantom | gap closed | edge sharpness / full dose | noise SD est (HU) "
        "| train CPU s | train wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in result["rows"].items():
        t = result["training"].get(m, {})
        gap = f"{100 * r['gap_closed']:.0f}%" if "gap_closed" in r else "-"
        lines.append(
            f"| {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['psnr_phantom']:.2f} | {gap} | {r['edge_rel_full']:.3f} "
            f"| {r['noise_sd_est']:.1f} | {t.get('cpu_s', '-')} | {t.get('wall_s', '-')} |"
        )
    lines += [
        "",
        "Target: >= 70% of the supervised gap, losing <= 5% edge sharpness; measured against the full-dose image "
        "(literal), the starting model (what adapting costs) and the supervised model (what self-supervision costs: "
        "the supervised model, trained on the full-dose images, loses edge sharpness too as it removes more noise).",
        "",
    ]
    yes = {True: "meets", False: "misses"}
    for m, v in result.get("verdict", {}).items():
        lines.append(
            f"- {m}: gap closed {100 * v['gap_closed']:.0f}%; edges {v['edge_rel_full']:.3f} of full dose "
            f"({yes[v['meets_target_vs_full']]}), {v['edge_rel_default']:.3f} of the starting model "
            f"({yes[v['meets_target_vs_start']]}), {v['edge_rel_supervised']:.3f} of the supervised model "
            f"({yes[v['meets_target_vs_supervised']]})"
        )
    if result.get("real"):
        lines += [
            "",
            "The real slices are normal-dose scans with their own noise (CT_small: a noisy 128 x 128 crop, where every "
            "denoiser scores below the noisy input because removing the reference's own noise counts as error): "
            "compare the models with each other, not with the low-dose row.",
        ]
    for name, real in result.get("real", {}).items():
        lines += [
            "",
            f"Real anatomy, {name} ({real['shape'][0]} x {real['shape'][1]} px, {real['pixel_mm']:.3g} mm; EVALUATION "
            "ONLY, a single slice: scheme A cannot train on it, nothing trains on it), 2 noise draws at the same "
            "protocol; the reference is the real normal-dose slice with its own noise:",
            "",
            "| model | PSNR (dB) | SSIM | edge sharpness / real slice | noise SD est (HU) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['edge_rel_full']:.3f} | {r['noise_sd_est']:.1f} |"
            for m, r in real["rows"].items()
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_start = os.getloadavg()[0]
    result = run(args)
    result["verdict"] = verdict(result["rows"])
    meta = {
        "tag": args.tag,
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/adapt_benchmark.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "load": f"{load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end (1-min load average, other jobs included)",
        "device": args.device,
        "protocol": f"{100 * args.dose:g}% dose, kernel {args.kernel}, {args.views} views, {args.thickness_mm} mm "
        "slice thickness (the shipped denoiser: 25% dose, standard kernel, 816 views, 2.5 mm, 512 px)",
        "train": f"{args.slices} x {args.size} x {args.size} px, {args.pixel_mm} mm pixels, {args.slice_mm} mm slices",
        "test": f"{args.test_slices} slices",
        "settings": {k: getattr(args, k) for k in ("steps", "batch", "patch", "lr", "seed")},
    }
    text = markdown(meta, result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"adapt_{args.tag}.md").write_text(text)
        (RESULTS / f"adapt_{args.tag}.json").write_text(json.dumps({"meta": meta, **result}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
