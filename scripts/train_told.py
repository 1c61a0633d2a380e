"""Train a told denoiser (FFDNet-style: the noise SD to remove is an input) from a blind one, resumably.

Issue 11 asks for a blind denoiser or one that takes the noise level as an input, whichever measures better. A told
unet (``UNetDenoiser(told=True)``) starts as the blind model it is made from (its conditioning maps start at zero)
and learns, on pixel loss, from two kinds of patch:

- told: input a low-dose slice made by inserting noise into a normal-dose one (``--noisy``: a simulated dataset
  whose low/ was filled by ``sim.make_dataset.add_low_dose``, and optionally real normal-dose slices with inserted
  noise, ``--real``), told the SD of the inserted noise over the body, target the normal-dose image with its own
  noise: remove what was added, keep the rest, as BM3D told the SD does (a pair whose two images carry independent
  noise would teach "remove all" whatever SD is told);
- blind: a low-dose input with no SD, target the noiseless image (``--clean``, a clean-target dataset): remove all,
  as the blind model does.

Checkpoints (``last_denoiser`` safetensors + JSON card, and ``state.json``) every ``--save-every`` steps; a rerun
with the same ``--out`` continues from the last one (the optimiser's moments restart).

    PYTHONPATH=. python scripts/train_told.py --noisy data/rand-train-ins --clean data/rand-train-clean \\
        --out runs/told/told-1 --steps 3000 --lr 1e-4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.metrics.noreference import body_mask
from napari_lidnet.models.denoisers import UNetDenoiser, told_from_blind
from napari_lidnet.models.normalize import hu_to_net
from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import load_weights, save_weights


def inserted_sd(low: np.ndarray, full: np.ndarray) -> float:
    """SD (HU) of ``low - full`` over the body of ``full`` (what a user who inserted the noise would be told)."""
    body = body_mask(full)
    return float(np.std((low - full)[body])) if body.any() else float(np.std(low - full))


def load_pairs(noisy: Path, clean: Path | None, real: Path | None) -> tuple[list[dict], list[dict]]:
    """(told pairs, blind pairs): dicts of low, target (HU float32) and the told SD."""
    told, blind = [], []
    sim = {s.name: s for s in read_dataset(noisy)}
    if clean is not None:
        for s in read_dataset(clean):
            blind.append({"low": s.low_hu.astype(np.float32), "target": s.full_hu.astype(np.float32), "sd": None})
    sources = [(list(sim.values()), False)] + ([(read_dataset(real), True)] if real is not None else [])
    for source, is_real in sources:
        for s in source:
            low, full = s.low_hu.astype(np.float32), s.full_hu.astype(np.float32)
            told.append({"low": low, "target": full, "sd": inserted_sd(low, full), "real": is_real})
    return told, blind


def batch(items: list[dict], rng: np.random.Generator, n: int, patch: int) -> tuple:
    """``n`` random patches (random flips and transposes): low, target (network scale), SDs (NaN: blind)."""
    lows, targets, sds = [], [], []
    for _ in range(n):
        it = items[rng.integers(len(items))]
        h, w = it["low"].shape
        y, x = rng.integers(0, h - patch + 1), rng.integers(0, w - patch + 1)
        pair = [a[y : y + patch, x : x + patch] for a in (it["low"], it["target"])]
        if rng.random() < 0.5:
            pair = [a[:, ::-1] for a in pair]
        if rng.random() < 0.5:
            pair = [a[::-1] for a in pair]
        if rng.random() < 0.5:
            pair = [a.T for a in pair]
        lows.append(pair[0].copy())
        targets.append(pair[1].copy())
        sds.append(np.nan if it["sd"] is None else it["sd"])
    to = lambda a: hu_to_net(torch.from_numpy(np.stack(a)[:, None]))  # noqa: E731
    return to(lows), to(targets), torch.tensor(sds, dtype=torch.float32)


def start_model(init: str, out: Path) -> tuple[UNetDenoiser, int]:
    """The last checkpoint of ``out`` (and its step), else a told unet made from the blind ``init``."""
    last = out / "last_denoiser"
    if (out / "state.json").is_file():
        model, _ = load_weights(last)
        return model, int(json.loads((out / "state.json").read_text())["step"])
    try:
        return told_from_blind(load_model(init, "denoiser")[0]), 0
    except ValueError as exc:
        raise SystemExit(f"{init}: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--noisy", type=Path, required=True, help="simulated normal-dose slices with inserted noise")
    p.add_argument("--clean", type=Path, default=None, help="the clean-target dataset of the same seed (blind)")
    p.add_argument("--real", type=Path, default=None, help="real normal-dose slices with inserted noise (told)")
    p.add_argument("--real-share", type=float, default=0.5, help="share of told patches from --real")
    p.add_argument("--blind-share", type=float, default=0.5, help="share of patches that are blind")
    p.add_argument("--init", default="default", help="the blind unet to start from")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--told-lr-scale", type=float, default=10.0, help="the conditioning maps' rate over --lr")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    told, blind = load_pairs(a.noisy, a.clean, a.real)
    sim_told = [t for t in told if not t["real"]]
    real_told = [t for t in told if t["real"]]
    print(f"{len(sim_told)} simulated + {len(real_told)} real told pairs, {len(blind)} blind pairs", flush=True)
    model, step = start_model(a.init, a.out)
    model.train()
    told_params = [p for n, p in model.named_parameters() if n.startswith("told_")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("told_")]
    groups = [{"params": rest, "scale": 1.0}, {"params": told_params, "scale": a.told_lr_scale}]
    opt = torch.optim.Adam([{**g, "lr": a.lr * g["scale"]} for g in groups])
    last = a.out / "last_denoiser.json"
    commands = json.loads(last.read_text())["training"]["commands"] if last.is_file() else []
    commands.append("PYTHONPATH=. python " + shlex.join(sys.argv))
    t0, losses = time.time(), []
    while step < a.steps:
        rng = np.random.default_rng([a.seed, step])
        n_blind = int(rng.binomial(a.batch_size, a.blind_share)) if blind else 0
        n_real = int(rng.binomial(a.batch_size - n_blind, a.real_share)) if real_told else 0
        parts = [batch(src, rng, n, a.patch_size) for src, n in
                 ((blind, n_blind), (real_told, n_real), (sim_told, a.batch_size - n_blind - n_real)) if n]  # fmt: skip
        low, target, sds = (torch.cat(x) for x in zip(*parts))
        for g in opt.param_groups:  # cosine over the whole run
            g["lr"] = a.lr * g["scale"] * 0.5 * (1 + math.cos(math.pi * step / a.steps))
        told_rows = ~torch.isnan(sds)
        out = torch.empty_like(low)
        if (~told_rows).any():
            out[~told_rows] = model(low[~told_rows])
        if told_rows.any():
            out[told_rows] = model(low[told_rows], remove_sd=sds[told_rows])
        loss = torch.nn.functional.mse_loss(out, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if step % a.save_every == 0 or step == a.steps:
            card = {"training": {"init": a.init, "commands": commands, "steps": step, "note": __doc__.split("\n")[0]}}
            save_weights(model, a.out / "last_denoiser", card)
            (a.out / "state.json").write_text(json.dumps({"step": step, "loss": float(np.mean(losses[-100:]))}))
            print(f"step {step}/{a.steps}: loss {np.mean(losses[-100:]):.3e}, {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
