"""Real training slices with pseudo-clean targets: each normal-dose slice denoised by BM3D (clean-target training).

The shipped denoiser learns to remove all the noise from simulated pairs whose target is the noiseless
reconstruction (``lidnet simulate --target clean``). Real normal-dose slices carry noise of their own, so a network
trained on them as targets learns to keep it (real-CT candidates trained so do). Here the target is the
normal-dose slice after BM3D (the ``bm3d`` package, told the slice's own noise SD: the SD of the shipped
denoiser's residual in the slice's flat soft-tissue blocks, which tissue texture inflates far less than the image's
own SD there), and the input stays the slice's low-dose partner from the source folder
(the same normal-dose slice with noise inserted): the network sees real anatomy and is asked to remove all the noise.
Slices whose own noise exceeds ``--max-sd`` HU are left out: they are not normal-dose quality (the TCIA PET-CT
chest carries 34-84 HU), and BM3D leaves streaks at such levels.

Reads ``REAL/train`` and ``REAL/train-zoom`` (``scripts/real_ct_dataset.py``); writes ``OUT/train`` (every
``--every``-th training slice) and ``OUT/train-zoom`` (the same slices' zoomed copies, their target the pseudo-clean
slice resampled as the original was, ``real_ct_dataset.zoom_slice``), with ``scanner.csv`` rows copied and
``targets.csv`` holding the SD BM3D was told (left-out slices too). Training data only: never the evaluation scans.

    PYTHONPATH=. python scripts/pseudo_clean_dataset.py --real data/real --out data/real-pc --max-sd 25 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_anatomy import bm3d_on_body  # noqa: E402
from real_ct_dataset import zoom_slice  # noqa: E402

from napari_lidnet.inference import denoise
from napari_lidnet.io.dataset import Sample, read_dataset, write_dataset
from napari_lidnet.metrics.noreference import block_noise_sd, body_mask, flat_blocks
from napari_lidnet.models.registry import load_model

_NET: list = []


def own_noise_sd(full: np.ndarray) -> float:
    """The slice's own noise SD (HU): the shipped denoiser's residual in the slice's flat soft-tissue blocks."""
    if not _NET:
        import torch

        torch.set_num_threads(1)
        _NET.append(load_model("default", "denoiser")[0])
    den = np.asarray(denoise(_NET[0], full, batch_size=1))
    return block_noise_sd(flat_blocks(full, values=full - den))


def _one(job: tuple[Sample, Sample | None, float]) -> tuple[Sample | None, Sample | None, float]:
    s, z, max_sd = job
    full = np.asarray(s.full_hu, np.float32)
    sd = own_noise_sd(full)
    if not np.isfinite(sd) or sd > max_sd:
        return None, None, sd
    body = body_mask(full)
    target = bm3d_on_body(full, body, sd) if body.any() else full.copy()
    base = Sample(s.name, target, np.asarray(s.low_hu, np.float32), s.boxes, s.spacing_mm)
    if z is None:
        return base, None, sd
    zt = zoom_slice(target, s.spacing_mm, z.spacing_mm)
    return base, Sample(z.name, zt, np.asarray(z.low_hu, np.float32), z.boxes, z.spacing_mm), sd


def _copy_rows(src: Path, dst: Path, names: list[str]) -> None:
    with open(src / "scanner.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["file"] in set(names)]
    with open(dst / "scanner.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--real", type=Path, default=Path("data/real"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--every", type=int, default=1, help="every n-th training slice")
    p.add_argument("--max-sd", type=float, default=25.0, help="leave out slices with more noise of their own (HU)")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    if a.out.exists():
        sys.exit(f"{a.out} exists: outputs are never overwritten")
    if a.every < 1:
        sys.exit(f"--every must be >= 1, got {a.every}")
    t0 = time.time()
    train = read_dataset(a.real / "train", lazy=True)[:: a.every]
    zoom = {s.name: s for s in read_dataset(a.real / "train-zoom", lazy=True)}
    jobs = [(s, zoom.get(f"z-{s.name}"), a.max_sd) for s in train]
    with get_context("spawn").Pool(a.workers) as pool:
        done = []
        for k, (job, res) in enumerate(zip(jobs, pool.imap(_one, jobs))):
            done.append((job[0].name, *res))
            print(f"{k + 1}/{len(jobs)} {job[0].name}: own noise {res[2]:.1f} HU"
                  f"{'' if res[0] else ' (left out)'} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    kept = [d for d in done if d[1] is not None]
    cmd = "python " + " ".join(sys.argv)
    info = {
        "command": cmd,
        "source": f"{a.real}/train (every {a.every}th slice), targets BM3D-denoised (pseudo-clean)",
        "target": "pseudo-clean: bm3d.bm3d on the body's bounding box, told the SD of the shipped denoiser's "
        f"residual in the slice's flat blocks; slices above {a.max_sd} HU left out",
    }
    for folder, items, src in (
        ("train", [d[1] for d in kept], "train"),
        ("train-zoom", [d[2] for d in kept if d[2] is not None], "train-zoom"),
    ):
        out = write_dataset(a.out / folder, items, info)
        _copy_rows(a.real / src, out, [f"{s.name}.png" for s in items])
    with open(a.out / "targets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "own_noise_sd_hu", "kept"])
        w.writerows([[f"{d[0]}.png", f"{d[3]:.3f}", int(d[1] is not None)] for d in done])
    print(f"{len(kept)} of {len(done)} slices in {(time.time() - t0) / 60:.1f} min -> {a.out}")


if __name__ == "__main__":
    main()
