"""Train the shipped default models on domain-randomised data, resumably, in chunks that fit a time budget.

The chain (every step a `lidnet` command, printed and logged to RUNS/commands.log; a step whose run folder is
finished is skipped, an interrupted one resumes from its last checkpoint):

1. data: `lidnet simulate --domain random --negatives 0.3 --kinds head,chest,abdomen` (train) and a separate seed
   (test), unless --data/--test name existing datasets;
2. detector: pretrained on full-dose images (lesion-free slices included: they are the realistic negatives);
3. denoiser ("unet", blind: every slice has its own dose 5-50%, kernel, views and noise level), pixel loss, in
   chunks of --chunk-steps, each chunk starting from the previous one's best (a cosine cycle per chunk), so a run
   grows over several sessions: --start-from continues from any earlier denoiser (e.g. the shipped default);
4. LIDnet's collaborative rounds (--rounds, 0 to skip);
then `scripts/make_default_weights.py` installs the pair with the detector calibrated and every command in the cards.

Examples (CPU, this repository's 2-core machine; GPU: add --device cuda and larger chunks):

    PYTHONPATH=. python scripts/train_defaults.py --runs runs/defaults --data data/rand-train --test data/rand-test \
        --chunks 2 --chunk-steps 1200 --detector-steps 2000 --rounds 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

LIDNET = [sys.executable, "-m", "napari_lidnet.cli"]


def _run(cmd: list[str], runs: Path) -> None:
    """Run one `lidnet ...` command, echoing it and logging it (as typed) with its wall time."""
    shown = "lidnet " + shlex.join(cmd)
    print(f"$ {shown}", flush=True)
    t0 = time.time()
    subprocess.run([*LIDNET, *cmd], check=True)
    with open(runs / "commands.log", "a") as log:
        log.write(f"{shown}\t# {time.time() - t0:.0f} s\n")


def _chunk_done(folder: Path) -> bool:
    """The chunk's pretraining stage finished (its state.json lists it)."""
    state = folder / "state.json"
    return state.is_file() and "pretrain-denoiser" in json.loads(state.read_text()).get("done", [])


def _data(a: argparse.Namespace, runs: Path) -> None:
    for path, seed, n in ((a.data, a.seed, a.n_train), (a.test, a.seed + 1000, a.n_test)):
        if not (Path(path) / "dataset.json").is_file():
            _run(["simulate", "--out", path, "--n", str(n), "--domain", "random", "--negatives", "0.3",
                  "--kinds", "head,chest,abdomen", "--size", "512", "--seed", str(seed)], runs)  # fmt: skip


def _common(a: argparse.Namespace) -> list[str]:
    return ["--data", a.data, "--batch-size", str(a.batch_size), "--patch-size", str(a.patch_size),
            "--seed", str(a.seed), "--device", a.device]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/defaults")
    p.add_argument("--data", default="data/rand-train")
    p.add_argument("--test", default="data/rand-test")
    p.add_argument("--n-train", type=int, default=240)
    p.add_argument("--n-test", type=int, default=48)
    p.add_argument("--detector-steps", type=int, default=3000)
    p.add_argument("--chunks", type=int, default=2, help="denoiser chunks to run now")
    p.add_argument("--chunk-steps", type=int, default=1500)
    p.add_argument("--start-from", default=None, help="denoiser weights the first chunk starts from")
    p.add_argument("--rounds", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--part", choices=("all", "detector", "denoiser"), default="all",
                   help="run one network's steps only (two processes can then train both at once)")  # fmt: skip
    a = p.parse_args(argv)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    _data(a, runs)
    det = runs / "detector"
    if a.part == "denoiser":
        return _denoiser(a, runs, det)
    _run(["train", *_common(a), "--out", str(det), "--mode", "pixel", "--rounds", "0",
          "--pretrain-denoiser-steps", "0", "--pretrain-detector-steps", str(a.detector_steps),
          "--detector-lr", "0.002"], runs)  # fmt: skip
    return 0 if a.part == "detector" else _denoiser(a, runs, det)


def _denoiser(a: argparse.Namespace, runs: Path, det: Path) -> int:
    """The denoiser's chunks (each from the previous best) and the optional LIDnet rounds."""
    done = sorted(runs.glob("unet-*"), key=lambda f: int(f.name.split("-")[1]))
    if done and not _chunk_done(done[-1]):
        done = done[:-1]  # an interrupted chunk: run it again, the trainer resumes it
    prev = str(done[-1] / "best_denoiser") if done else a.start_from
    first = len(done) + 1
    detector = ["--init-detector", str(det / "best_detector")] if (det / "best_detector.json").is_file() else []
    for k in range(first, first + a.chunks):
        out = runs / f"unet-{k}"
        cmd = ["train", *_common(a), "--out", str(out), "--denoiser", "unet", "--mode", "pixel", "--rounds", "0",
               "--pretrain-detector-steps", "0", "--pretrain-denoiser-steps", str(a.chunk_steps), "--lr", str(a.lr),
               *detector]  # fmt: skip
        _run(cmd + (["--init-denoiser", prev, "--pretrain-from-init"] if prev else []), runs)
        prev = str(out / "best_denoiser")
    if a.rounds:
        _run(["train", *_common(a), "--out", str(runs / "lidnet"), "--denoiser", "unet", "--mode", "lidnet",
              "--rounds", str(a.rounds), "--pretrain-denoiser-steps", "0", "--pretrain-detector-steps", "0",
              "--init-denoiser", prev, "--init-detector", str(det / "best_detector")], runs)  # fmt: skip
    print(f"denoiser: {prev}\ndetector: {det / 'best_detector'}\ncommands: {runs / 'commands.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
