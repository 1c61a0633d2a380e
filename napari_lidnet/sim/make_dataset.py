"""Build lidnet dataset folders: simulated phantoms (``simulate_dataset``) or low-dose partners for real slices.

``simulate_dataset(..., domain="random")`` randomises every slice (domain randomisation, so models learn CT rather
than this simulator): its body part from a mix (head / chest / abdomen), the display FOV and pixel size, contrast,
the detailed anatomy of ``sim.detail``, and the scanner (``scanner.sample_scanner``: dose, views, kernel,
electronic noise, slice thickness). ``negatives`` makes that fraction of slices lesion-free. Each slice's
parameters go to ``scanner.csv`` beside ``slices.csv`` (the dataset reader ignores it; ``read_scanner_csv``).
"""

from __future__ import annotations

import csv
import shlex
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_lidnet.io import dataset as ds
from napari_lidnet.io.png16 import write_png_hu
from napari_lidnet.sim.lowdose import I0_DEFAULT, simulate_low_dose, simulate_pair
from napari_lidnet.sim.phantom import KINDS, Phantom, make_phantom
from napari_lidnet.sim.projector import default_n_angles
from napari_lidnet.sim.scanner import ScannerParams, sample_scanner

#: progress(done, total): called after each slice
Progress = Callable[[int, int], None]
DOMAINS = ("fixed", "random")
#: body parts of a random-domain dataset, drawn in these proportions
RANDOM_KINDS = ("head", "chest", "abdomen")
SCANNER_CSV = "scanner.csv"
_COLUMNS = [
    "file", "kind", "pixel_mm", "contrast", "negative", "n_boxes",
    "dose", "n_views", "kernel", "electronic_noise", "thickness_mm", "i0",
]  # fmt: skip


def _command(out_dir: Path, n: int, dose: float, seed: int, kind: str, size: int, extra: Sequence[str] = ()) -> str:
    return shlex.join(
        ["lidnet", "simulate", "--out", str(out_dir), "--n", str(n), "--dose", str(dose), "--seed", str(seed),
         "--kind", kind, "--size", str(size), *extra]
    )  # fmt: skip


@dataclass
class _Plan:
    """One slice: phantom and noise seeds, body part, scanner protocol, lesion-free or not, randomised or not."""

    phantom_seed: int
    noise_seed: int
    kind: str
    scanner: ScannerParams
    negative: bool
    randomize: bool


def _plans(
    n: int, dose: float, seed: int, kind: str, size: int, domain: str, negatives: float, kinds: Sequence[str]
) -> list[_Plan]:
    """Per-slice seeds and parameters, derived from (seed, i) only, so any slice can be regenerated alone."""
    plans = []
    for child in np.random.SeedSequence(seed).spawn(n):
        phantom_seed, noise_seed, domain_seed = (int(v) for v in child.generate_state(3, np.uint32))
        rng = np.random.default_rng(domain_seed)
        negative = bool(rng.random() < negatives)
        if domain == "random":
            k = str(rng.choice(list(kinds)))
            sc = sample_scanner(rng, size=size)
        else:
            k, sc = kind, ScannerParams(dose=float(dose))
        plans.append(_Plan(phantom_seed, noise_seed, k, sc, negative, domain == "random"))
    return plans


def _phantom(plan: _Plan, size: int) -> Phantom:
    return make_phantom(
        plan.phantom_seed, kind=plan.kind, size=size, n_lesions=0 if plan.negative else None,
        contrast_enhanced=None if plan.randomize else False, randomize=plan.randomize,
    )  # fmt: skip


def _record(name: str, plan: _Plan, ph: Phantom, size: int) -> dict[str, str]:
    sc = plan.scanner
    views = sc.n_views if sc.n_views is not None else default_n_angles(size)
    return {
        "file": f"{name}.png", "kind": plan.kind, "pixel_mm": f"{ph.spacing_mm:.6g}",
        "contrast": str(int(ph.contrast_enhanced)), "negative": str(int(plan.negative)),
        "n_boxes": str(len(ph.boxes)), **sc.record(),
        "n_views": str(views), "i0": f"{I0_DEFAULT * sc.i0_scale:.6g}",
    }  # fmt: skip


def _check_args(n: int, dose: float, kind: str, domain: str, negatives: float, kinds: Sequence[str]) -> None:
    if n < 1:
        raise ValueError(f"n must be >= 1 slices, got {n}")
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if not 0 < float(dose) <= 1:
        raise ValueError(f"dose must be in (0, 1] (fraction of the normal dose), got {dose}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose one of {DOMAINS}")
    if not 0.0 <= float(negatives) <= 1.0:
        raise ValueError(f"negatives must be a fraction in [0, 1], got {negatives}")
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")


def simulate_dataset(
    out_dir: str | Path,
    n: int,
    dose: float,
    seed: int,
    kind: str = "abdomen",
    size: int = 512,
    progress: Progress | None = None,
    device: str = "cpu",
    *,
    domain: str = "fixed",
    negatives: float = 0.0,
    kinds: Sequence[str] = RANDOM_KINDS,
) -> Path:
    """Write ``n`` simulated slices (phantom -> full-dose and low-dose scans) with lesion boxes; returns the folder.

    ``domain="fixed"``: every slice a ``kind`` phantom scanned at ``dose`` with the default protocol (as before).
    ``domain="random"``: each slice draws its body part from ``kinds``, a random FOV / pixel size, contrast and
    detailed anatomy, and a random scanner (``dose`` is then unused: 5-50 % per slice); the full-dose reference and
    the low-dose image of a pair share the slice's views, kernel and thickness. ``negatives``: fraction of slices
    drawn without lesions. Per-slice parameters: ``scanner.csv``. Slice i depends on (seed, i) only. The next
    slice's phantom is drawn in a thread while the current one is scanned.
    """
    _check_args(n, dose, kind, domain, negatives, kinds)
    out = ds.prepare_folder(out_dir)
    plans = _plans(n, dose, seed, kind, size, domain, negatives, tuple(kinds))
    rows: list[dict[str, str]] = []

    def samples() -> Iterator[ds.Sample]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(_phantom, plans[0], size)
            for i, plan in enumerate(plans):
                ph = nxt.result()
                if i + 1 < n:
                    nxt = pool.submit(_phantom, plans[i + 1], size)
                full, low = simulate_pair(ph.hu, spacing_mm=ph.spacing_mm, seed=plan.noise_seed, device=device,
                                          **plan.scanner.kwargs())  # fmt: skip
                rows.append(_record(f"sim_{i:05d}", plan, ph, size))
                yield ds.Sample(f"sim_{i:05d}", full, low, ph.boxes, ph.spacing_mm)
                if progress is not None:
                    progress(i + 1, n)

    extra = [] if domain == "fixed" else ["--domain", domain, "--kinds", ",".join(kinds)]
    extra += [] if not negatives else ["--negatives", str(negatives)]
    info = {
        "dose": float(dose) if domain == "fixed" else None,
        "seed": int(seed),
        "kind": kind if domain == "fixed" else "mixed",
        "size": int(size),
        "source": "simulated phantoms (napari_lidnet.sim)",
        "i0": I0_DEFAULT,
        "domain": domain,
        "negatives": float(negatives),
        "command": _command(out, n, dose, seed, kind, size, extra),
    }
    if domain == "random":
        info.update({"kinds": list(kinds), "dose_range": [0.05, 0.5], "scanner": SCANNER_CSV})
    ds.write_dataset(out, samples(), info)
    _write_scanner_csv(out / SCANNER_CSV, rows)
    return out


def _write_scanner_csv(path: Path, rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def read_scanner_csv(dataset_dir: str | Path) -> dict[str, dict[str, str]]:
    """Per-slice simulation parameters of a simulated dataset, keyed by slice name (without .png); {} if none."""
    path = Path(dataset_dir) / SCANNER_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["file"].removesuffix(".png"): row for row in csv.DictReader(f)}


def add_low_dose(
    dataset_dir: str | Path,
    dose: float,
    seed: int,
    progress: Progress | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> int:
    """Fill low/ of a dataset that has only full/ (e.g. converted DeepLesion slices) by noise insertion.

    Slices that already have a low-dose partner are kept unless ``overwrite``. Returns the number written.
    """
    path = Path(dataset_dir)
    info = ds.read_info(path)
    samples = ds.read_dataset(path, lazy=True)
    todo = [s for s in samples if overwrite or s.low_path is None]  # type: ignore[attr-defined]
    (path / "low").mkdir(exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(len(samples))
    index = {s.name: i for i, s in enumerate(samples)}
    for done, s in enumerate(todo, start=1):
        noise_seed = int(children[index[s.name]].generate_state(1, np.uint32)[0])
        low = simulate_low_dose(s.full_hu, dose, s.spacing_mm, seed=noise_seed, device=device)
        write_png_hu(path / "low" / f"{s.name}.png", low)
        if progress is not None:
            progress(done, len(todo))
    info.update(
        {
            "dose": float(dose),
            "low_dose_seed": int(seed),
            "low_dose_source": f"projection-domain noise insertion (simulate_low_dose, i0={I0_DEFAULT:g})",
        }
    )
    ds.write_json(path / "dataset.json", info)
    return len(todo)
