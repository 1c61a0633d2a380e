"""The experiment that justifies the product: is a denoiser trained inside LIDnet better than the same denoiser
trained on pixel loss alone, in PSNR/SSIM and in detection sensitivity?

The detector is pretrained once on full-dose images (`lidnet train --mode pixel --rounds 0`); for each (denoiser,
dose) the denoiser is pretrained on pixel loss, then branches from it with the same number of denoiser steps:
``pixel`` (baseline), ``lidnet``, and for the ablation ``lidnet-noroi`` and ``lidnet-wholeperc``. Every branch is
evaluated on a held-out simulated test set: PSNR/SSIM against full dose over the (-160, 240) HU window, and FROC
sensitivity (IoU >= 0.5) measured with the *fixed* pretrained detector (trained on full dose only: the fair
comparison between denoisers) and with the branch's own co-trained detector.

Usage (data folders from `lidnet simulate`):
    PYTHONPATH=. python benchmarks/reproduce_lidnet.py --out bench-out/reproduce \
        --exp fastdn:0.25:data/train25:data/test25:all --exp fastdn:0.10:data/train10:data/test10:main
Writes ``results.json`` and ``results.md`` in --out; each training run's folder is kept there (resumable).
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch

from napari_lidnet._training.validate import evaluate_images, stack_samples
from napari_lidnet.cli import main as lidnet
from napari_lidnet.inference import denoise
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.models.weights import load_weights

BRANCHES = {"main": ("pixel", "lidnet"), "all": ("pixel", "lidnet", "lidnet-noroi", "lidnet-wholeperc")}


def run_train(**options) -> float:
    """Run ``lidnet train`` in-process with ``--key value`` options; returns the wall time in seconds."""
    args = ["train"]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    print("$ lidnet " + shlex.join(args), flush=True)
    t0 = time.perf_counter()
    code = lidnet(args)
    if code:
        raise SystemExit(f"lidnet train failed with exit code {code}")
    return time.perf_counter() - t0


def evaluate(run: Path | None, test: tuple, ref_detector) -> dict:
    """Metrics of a run's best denoiser (None: the low-dose input itself) on ``test = stack_samples(...)``."""
    low, full, gt = test
    images = low if run is None else denoise(load_weights(run / "best_denoiser")[0], low, batch_size=2)
    out = {"fixed_detector": evaluate_images(images, full, gt, ref_detector)}
    if run is not None and (run / "best_detector.json").exists():
        own = load_weights(run / "best_detector")[0]
        out["own_detector"] = {k: v for k, v in evaluate_images(images, full, gt, own).items() if "sens" in k}
    return out


def pretrain_detector(root: Path, train_dir: str, a: argparse.Namespace) -> Path:
    """The detector pretrained on full-dose images once, shared by every experiment (same phantoms)."""
    run = root / "detector-pretrain"
    run_train(
        data=train_dir, out=run, mode="pixel", rounds=0, pretrain_denoiser_steps=0,
        pretrain_detector_steps=a.detector_pretrain_steps, detector_lr=a.detector_lr, batch_size=a.batch_size,
        patch_size=a.patch_size,
        seed=a.seed, device=a.device,
    )  # fmt: skip
    return run / "best_detector"


def experiment(spec: str, root: Path, detector: Path, a: argparse.Namespace) -> dict:
    """Pretrain one denoiser at one dose, then train each branch from it and evaluate them all."""
    arch, dose, train_dir, test_dir, which = spec.split(":")
    tag = f"{arch}-{float(dose):g}"
    slow = arch != "fastdn"
    common = dict(
        data=train_dir, denoiser=arch, seed=a.seed, batch_size=a.batch_size, device=a.device,
        patch_size=a.slow_patch_size if slow else a.patch_size, init_detector=detector,
    )  # fmt: skip
    pre = root / f"{tag}-pretrain"
    timings = {
        "pretrain": run_train(
            **common,
            out=pre,
            mode="pixel",
            rounds=0,
            pretrain_detector_steps=0,
            pretrain_denoiser_steps=a.slow_steps if slow else a.pretrain_steps,
        )  # fmt: skip
    }
    runs = {}
    for mode in BRANCHES[which]:
        runs[mode] = root / f"{tag}-{mode}"
        timings[mode] = run_train(
            **common, out=runs[mode], mode=mode, rounds=a.rounds, init_denoiser=pre / "best_denoiser",
            pretrain_denoiser_steps=0, pretrain_detector_steps=0, detector_steps=a.detector_steps,
            denoiser_steps=a.slow_round_steps if slow else a.denoiser_steps,
            det_weight=a.det_weight, roi_weight=a.roi_weight,
        )  # fmt: skip
    test = stack_samples(read_dataset(test_dir)[: a.max_test])
    ref = load_weights(detector)[0]
    results = {"low dose": evaluate(None, test, ref), "pretrained (pixel)": evaluate(pre, test, ref)}
    results.update({mode: evaluate(run, test, ref) for mode, run in runs.items()})
    _low, full, gt = test
    results["full dose"] = {"fixed_detector": evaluate_images(full, full, gt, ref)}
    return {
        "denoiser": arch, "dose": float(dose), "train": train_dir, "test": test_dir, "n_test": len(full),
        "n_lesions": int(sum(len(g) for g in gt)), "results": results, "train_time_s": timings,
    }  # fmt: skip


def table(exp: dict) -> str:
    lines = [
        f"### {exp['denoiser']} at {exp['dose']:.0%} dose ({exp['n_test']} test slices, {exp['n_lesions']} lesions)",
        "",
        "| image | PSNR (dB) | SSIM | sens@0.5 | sens@1 | sens@2 | sens@4 | sens@8 | mean sens | mean sens, own det. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in exp["results"].items():
        f = r["fixed_detector"]
        own = r.get("own_detector", {}).get("sensitivity")
        cells = [
            f"{f['psnr']:.2f}",
            f"{f['ssim']:.4f}",
            *(f"{f.get(f'sens@{k}', float('nan')):.3f}" for k in ("0.5", "1", "2", "4", "8")),
            f"{f.get('sensitivity', float('nan')):.3f}",
            "" if own is None else f"{own:.3f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-out/reproduce")
    p.add_argument(
        "--exp",
        action="append",
        required=True,
        help="ARCH:DOSE:TRAIN_DIR:TEST_DIR:main|all (main: pixel vs lidnet; all: + ablations)",
    )
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--detector-pretrain-steps", type=int, default=4000)
    p.add_argument("--detector-lr", type=float, default=2e-3)
    p.add_argument("--detector", default=None, help="reuse this pretrained detector (weights path stem)")
    p.add_argument("--max-test", type=int, default=None, help="evaluate on the first N test slices only")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--denoiser-steps", type=int, default=100)
    p.add_argument("--detector-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--slow-patch-size", type=int, default=64, help="patch size for RED-CNN/DnCNN on the CPU")
    p.add_argument("--slow-steps", type=int, default=200, help="pretraining steps of RED-CNN/DnCNN")
    p.add_argument("--slow-round-steps", type=int, default=50, help="denoiser steps per round of RED-CNN/DnCNN")
    p.add_argument("--det-weight", type=float, default=0.1)
    p.add_argument("--roi-weight", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    detector = Path(a.detector) if a.detector else pretrain_detector(root, a.exp[0].split(":")[2], a)
    exps = [experiment(spec, root, detector, a) for spec in a.exp]
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "exp")}
    (root / "results.json").write_text(json.dumps({"settings": settings, "experiments": exps}, indent=1))
    md = ["FROC sensitivities with the fixed full-dose detector (IoU >= 0.5); PSNR/SSIM over (-160, 240) HU.", ""]
    md += [table(e) + "\n" for e in exps]
    (root / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
