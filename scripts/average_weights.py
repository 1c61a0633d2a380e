"""Average the weights of several denoisers of one architecture (a uniform "model soup") into a new weights pair.

Fine-tuned runs from a common ancestor usually lie in one basin, where the mean of their weights generalises at
least as well as each of them; whether it does here is measured like any candidate
(`benchmarks/results/clean_target_prereg.md`). The card records the inputs (name, sha256) and the command.

    PYTHONPATH=. python scripts/average_weights.py runs/clean/lidnet-clean-5h/best_denoiser \
        runs/clean/lidnet-clean-4b/best_denoiser --out runs/soup/s2/best_denoiser
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import save_weights, weight_paths


def average(paths: list[str], out: str, command: str = "") -> dict:
    """Save the mean of the denoisers ``paths`` at ``out`` (refused if it exists); returns the card."""
    if any(p.exists() for p in weight_paths(out)):
        raise FileExistsError(f"{out}: weights exist there; choose a new name")
    loaded = [load_model(p, "denoiser") for p in paths]
    models, cards = [m for m, _ in loaded], [c for _, c in loaded]
    if len({(c["arch"], str(c["config"])) for c in cards}) != 1:
        raise ValueError("the denoisers differ in architecture or configuration; only like weights average")
    states = [m.state_dict() for m in models]
    mean = {k: torch.stack([s[k].float() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}
    soup = models[0]
    soup.load_state_dict(mean)
    sources = [{"name": str(p), "sha256": c.get("sha256")} for p, c in zip(paths, cards)]
    training = {"soup_of": sources, "commands": [command] if command else []}
    return save_weights(soup, out, {"training": training})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("denoisers", nargs="+", help="weights paths (without suffix) or model names")
    ap.add_argument("--out", required=True, help="weights path of the average (without suffix)")
    args = ap.parse_args(argv)
    if len(args.denoisers) < 2:
        ap.error("give at least two denoisers")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", "scripts/average_weights.py", *(argv if argv is not None else sys.argv[1:])])
    card = average(args.denoisers, args.out, command)
    print(f"{args.out}: mean of {len(args.denoisers)} denoisers, sha256 {card['sha256'][:12]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
