"""How far the no-reference noise SD (``metrics.noreference.noise_sd``) is from the truth, by block size.

The noise SD that the Denoise widget shows (input -> denoised), the one `lidnet adapt` writes on its card and the
Fine-tune widget plots, is the median SD of the flattest soft-tissue blocks. Tissue texture finer than a block counts
as noise, so the block size sets how much texture leaks in. On real scans 24 px blocks read 56 HU of
noise on a 1.5 mm CTA and 38 HU on skull-base slices of a 1 mm head whose mid-brain slices read 9.

Simulated slices (truth known): the low-dose image of a clean-target dataset (``lidnet simulate --target clean``),
whose noise is ``low - clean`` exactly. The truth is the SD of that noise over the body's soft tissue (-200..300 HU
of the clean image). Per block size: the relative error of the estimate on each slice, its median, mean |error| and
worst case, and the mean |error| difference to 24 px with a 95% bootstrap interval over slices.

Real slices (truth unknown): the normal-dose validation blocks of the PyPI scans (``data/real/val-512``,
``val-small``; never pydicom's or pyradiomics' evaluation scans). Per scan: the median estimate and the spread
across its slices (coefficient of variation). A scan's noise changes little from slice to slice (tube-current
modulation aims at that), so a smaller spread means less texture read as noise.

    PYTHONPATH=. python benchmarks/noise_estimate.py [--sim data/rand-train-clean --every 4] [--real data/real]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_anatomy import bootstrap  # noqa: E402

from napari_lidnet.io.dataset import read_dataset  # noqa: E402
from napari_lidnet.metrics.noreference import body_mask, noise_sd  # noqa: E402

BLOCKS = (8, 12, 16, 24)
SOFT_HU = (-200.0, 300.0)


def simulated_errors(path: Path, every: int) -> tuple[dict[int, list[float]], list[float]]:
    """Relative error of the estimate per block size on every ``every``-th slice, and the true SDs."""
    errors: dict[int, list[float]] = {b: [] for b in BLOCKS}
    truths = []
    for s in read_dataset(path, lazy=True)[::every]:
        low, clean = np.asarray(s.low_hu, np.float32), np.asarray(s.full_hu, np.float32)
        soft = body_mask(clean) & (clean > SOFT_HU[0]) & (clean < SOFT_HU[1])
        truth = float(np.std((low - clean)[soft]))
        truths.append(truth)
        for b in BLOCKS:
            errors[b].append(noise_sd(low, block=b) / truth - 1.0)
    return errors, truths


def real_spread(real: Path) -> dict[str, dict[int, list[float]]]:
    """Per scan and block size, the estimates of its normal-dose validation slices."""
    out: dict[str, dict[int, list[float]]] = collections.defaultdict(lambda: {b: [] for b in BLOCKS})
    for name in ("val-512", "val-small"):
        for s in read_dataset(real / name, lazy=True):
            hu = np.asarray(s.full_hu, np.float32)
            scan = f"{s.name.rsplit('-', 1)[0]} ({s.spacing_mm:.2f} mm)"
            for b in BLOCKS:
                out[scan][b].append(noise_sd(hu, block=b))
    return dict(out)


def markdown(errors: dict[int, list[float]], truths: list[float], spread: dict, header: list[str]) -> list[str]:
    ref = np.abs(np.array(errors[24]))
    lines = [*header, "", "## Simulated slices: relative error of the estimate (truth: SD of low - clean)", "",
             f"{len(truths)} slices, true SD {min(truths):.1f}-{max(truths):.1f} HU (median {np.median(truths):.1f}).",
             "", "| block (px) | median error | mean abs error | worst | mean abs error - 24 px [95% CI] |",
             "|---|---|---|---|---|"]  # fmt: skip
    for b in BLOCKS:
        e = np.array(errors[b])
        d = np.abs(e) - ref
        lo, hi = bootstrap(lambda i, d=d: float(d[i].mean()), len(d), 2000)
        lines.append(f"| {b} | {np.median(e):+.3f} | {np.mean(np.abs(e)):.3f} | {e[np.argmax(np.abs(e))]:+.3f} | "
                     f"{d.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] |")  # fmt: skip
    lines += ["", "## Real normal-dose slices: median estimate (HU) / spread across the scan's slices (CV)", "",
              "| scan | slices | " + " | ".join(f"{b} px" for b in BLOCKS) + " |",
              "|---|---|" + "---|" * len(BLOCKS)]  # fmt: skip
    for scan, per in spread.items():
        cells = [f"{np.nanmedian(v):.1f} / {np.nanstd(v) / np.nanmean(v):.2f}" for v in (per[b] for b in BLOCKS)]
        lines.append(f"| {scan} | {len(per[BLOCKS[0]])} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sim", type=Path, default=Path("data/rand-train-clean"), help="a clean-target dataset")
    p.add_argument("--every", type=int, default=4)
    p.add_argument("--real", type=Path, default=Path("data/real"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/noise_estimate"))
    a = p.parse_args()
    md, js = a.results.with_suffix(".md"), a.results.with_suffix(".json")
    if md.exists() or js.exists():
        sys.exit(f"{md} exists: results are never overwritten (pass another --results)")
    t0 = time.time()
    errors, truths = simulated_errors(a.sim, a.every)
    spread = real_spread(a.real)
    header = ["# No-reference noise SD: error by block size", "",
              f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`; {datetime.date.today()}, "
              f"{(time.time() - t0) / 60:.1f} min on this 2-core CPU."]  # fmt: skip
    lines = markdown(errors, truths, spread, header)
    md.write_text("\n".join(lines) + "\n")
    js.write_text(json.dumps({"truths": truths, "errors": errors, "real": spread}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
