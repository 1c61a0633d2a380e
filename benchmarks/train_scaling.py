"""Training throughput under torchrun: slices (training patches) per second with 1, 2, ... processes.

    PYTHONPATH=. python benchmarks/train_scaling.py                        # CPU: 1 and 2 gloo processes
    PYTHONPATH=. python benchmarks/train_scaling.py --procs 1 2 4 8 --device cpu
    PYTHONPATH=. python benchmarks/train_scaling.py --procs 1 --device cuda    # one GPU

Every run is ``torchrun --standalone --nproc-per-node N`` on this file, which trains one collaborative LIDnet
round (the joint denoiser step, then the detector step) from the shipped default weights on a simulated
dataset, with ``--batch-per-proc`` patches per process and step (weak scaling: the global batch grows with N,
as in data-parallel training). Rank 0 times the steps after ``--warmup`` of each stage and prints JSON; the
parent prints slices/s and the ratio against the first entry of ``--procs`` (same machine, same call).
Each process uses ``--threads`` torch threads, so N processes use N x threads cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKER_ENV = "LIDNET_SCALING_JOB"


def worker(a: argparse.Namespace) -> None:
    """One torchrun process: train a round, rank 0 reports timings of the steady-state steps."""
    import torch

    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.distributed import init_from_env, shutdown
    from napari_lidnet._training.trainer import Trainer

    torch.set_num_threads(a.threads)
    rank, world = init_from_env(a.device)
    cfg = TrainConfig(
        out=a.run, data=a.data, mode="lidnet", init_denoiser="default", init_detector="default", rounds=1,
        denoiser_steps=a.steps, detector_steps=a.steps, batch_size=a.batch_per_proc * world,
        patch_size=a.patch, val_fraction=0.0, device=a.device, workers=a.workers,
    )  # fmt: skip
    times: dict[str, list[float]] = {}
    last = time.perf_counter()
    for rec in Trainer(cfg).run():
        if cfg.device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if "stage_step" in rec and rec["stage_step"] > a.warmup:
            times.setdefault(rec["stage"].split("-")[1], []).append(now - last)
        last = now
    if rank == 0:
        per_step = {k: sum(v) / len(v) for k, v in times.items()}
        print("RESULT " + json.dumps({"world": world, "batch": cfg.batch_size, "per_step_s": per_step}), flush=True)
    shutdown()


def ensure_data(folder: Path, n: int, size: int) -> Path:
    from napari_lidnet.io.dataset import is_dataset
    from napari_lidnet.sim.make_dataset import simulate_dataset

    if not is_dataset(folder):
        simulate_dataset(folder, n=n, dose=0.25, seed=0, size=size)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--batch-per-proc", type=int, default=4)
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--slices", type=int, default=12, help="simulated training slices")
    p.add_argument("--size", type=int, default=256, help="simulated slice size")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "train-scaling"))
    p.add_argument("--json", default=None, help="also write the results here")
    if WORKER_ENV in os.environ:  # a torchrun process (torchrun's parser would take our options for its own)
        return worker(argparse.Namespace(**json.loads(os.environ[WORKER_ENV])))
    a = p.parse_args()

    out = Path(a.out)
    data = ensure_data(out / f"data-{a.slices}x{a.size}", a.slices, a.size)
    rows = []
    for n in a.procs:
        run = out / f"run-{a.device}-{n}-{time.time_ns()}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), __file__]
        job = {**vars(a), "data": str(data), "run": str(run)}
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(a.threads),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            WORKER_ENV: json.dumps(job),
        }
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{n} process(es) failed:\n{done.stderr[-3000:]}")
        res = json.loads(lines[-1][7:])
        step_s = sum(res["per_step_s"].values()) / len(res["per_step_s"])  # mean of the two step kinds
        res["slices_per_s"] = {k: res["batch"] / v for k, v in res["per_step_s"].items()}
        res["slices_per_s"]["round"] = res["batch"] / step_s
        rows.append(res)
    base = rows[0]["slices_per_s"]["round"]
    print(f"device {a.device}, {a.threads} thread(s) per process, {a.batch_per_proc} patches of {a.patch}^2 "
          f"per process and step, the shipped pair, one LIDnet round")  # fmt: skip
    print("| processes | global batch | denoiser step (slices/s) | detector step (slices/s) | round (slices/s) "
          f"| vs {a.procs[0]} |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = r["slices_per_s"]
        print(f"| {r['world']} | {r['batch']} | {s['denoiser']:.1f} | {s['detector']:.1f} | {s['round']:.1f} "
              f"| {s['round'] / base:.2f}x |")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
