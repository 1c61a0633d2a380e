"""Shared by the benchmarks that compare models on pooled simulated sets: the data, interval cells, the results."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet._training.validate import detect_rows
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.metrics.bootstrap import FrocCases, froc_cases
from napari_lidnet.metrics.froc import detections_per_slice


def pooled(folders: list[str]) -> tuple[list[Any], list[np.ndarray]]:
    """The samples of dataset ``folders`` in order, and each one's (N, 4) lesion boxes."""
    samples = [s for d in folders for s in read_dataset(d)]
    return samples, [np.asarray(s.boxes, np.float32).reshape(-1, 4) for s in samples]


def froc_of(detector: Any, images: list[np.ndarray], gts: list[np.ndarray]) -> FrocCases:
    """The FROC cases of ``detector`` on ``images`` (boxes kept from score 0.01), matched to ``gts`` once."""
    return froc_cases(detections_per_slice(detect_rows(detector, images, "cpu"), len(images)), gts)


def interval(r: dict, digits: int = 3, sign: bool = False) -> str:
    """``estimate [low, high]`` of a ``BootstrapResult.as_dict()``."""
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    return f"{f.format(r['estimate'])} [{f.format(r['ci_low'])}, {f.format(r['ci_high'])}]"


def parse_run_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse ``p`` with the arguments every comparison here takes (``--detector``, ``--n-boot``, ``--threads``,
    ``--results``); refuse an existing result before any work and set the torch threads."""
    import torch

    p.add_argument("--detector", default="default")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, required=True, help="stem of the .md and .json written")
    a = p.parse_args()
    refuse_existing(a.results)
    torch.set_num_threads(a.threads)
    return a


def refuse_existing(stem: Path) -> None:
    """Outputs never overwrite: stop before any work when ``stem.md`` exists."""
    if stem.with_suffix(".md").exists():
        raise SystemExit(f"{stem.with_suffix('.md')} exists; outputs never overwrite")


def write_results(stem: Path, lines: list[str], raw: dict) -> None:
    """``stem.md`` (the lines) and ``stem.json`` (the raw numbers), then the lines on stdout."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=1))
    print("\n".join(lines))


def run_meta(script: str, threads: int, wall: float, load0: float, scope: str, note: str) -> dict[str, Any]:
    """What a results file records of its run: command, date, machine, torch, threads, wall time, load, scope."""
    import torch

    return {
        "command": f"PYTHONPATH=. .venv/bin/python benchmarks/{script} " + shlex.join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "torch": torch.__version__, "threads": threads,
        "wall_s": round(wall, 1),
        "load": f"{load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (1-min load average, other jobs included)",
        "scope": scope, "note": note,
    }  # fmt: skip
