"""Build lidnet dataset folders: simulated phantoms (``simulate_dataset``) or low-dose partners for real slices.

``simulate_dataset(..., domain="random")`` randomises every slice (domain randomisation, so models learn CT rather
than this simulator): its body part from a mix (head / chest / abdomen), the display FOV and pixel size, contrast,
the detailed anatomy of ``sim.detail``, and the scanner (``scanner.sample_scanner``: dose, views, kernel,
electronic noise, slice thickness). ``negatives`` makes that fraction of slices lesion-free. Each slice's
parameters go to ``scanner.csv`` beside ``slices.csv`` (the dataset reader ignores it; ``read_scanner_csv``).
``lesions="hard"`` draws the hard lesion profile (``sim.lesions``); ``dataset.json`` records the profile and
``lesion_info.csv`` (``LESION_INFO_CSV``, hard profile only) each box's kind, family, contrast and diameter.
``target="clean"`` writes the noiseless reconstruction (same views, kernel and pixel grid) as the full-dose image,
so that a denoiser trained on the pairs learns to remove all the noise, not to reproduce a normal-dose scan's own;
its low-dose images are those of the noisy-target dataset of the same seed.
"""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet.io import dataset as ds
from napari_lidnet.io.png16 import write_png_hu
from napari_lidnet.sim.lesions import check_profile
from napari_lidnet.sim.lowdose import I0_DEFAULT, simulate_low_dose, simulate_pair
from napari_lidnet.sim.phantom import KINDS, Phantom, make_phantom
from napari_lidnet.sim.projector import default_n_angles
from napari_lidnet.sim.scanner import ScannerParams, sample_scanner

#: progress(done, total): called after each slice
Progress = Callable[[int, int], None]
DOMAINS = ("fixed", "random")
#: what the full-dose image of a simulated pair is: a normal-dose scan with its noise, or the noiseless one
TARGETS = ("noisy", "clean")
#: body parts of a random-domain dataset, drawn in these proportions
RANDOM_KINDS = ("head", "chest", "abdomen")
SCANNER_CSV = "scanner.csv"
LESION_INFO_CSV = "lesion_info.csv"
_LESION_COLUMNS = ["file", "x1", "y1", "x2", "y2", "kind", "family", "contrast_hu", "diameter_mm"]
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


def _phantom(plan: _Plan, size: int, lesions: str = "standard") -> Phantom:
    return make_phantom(
        plan.phantom_seed, kind=plan.kind, size=size, n_lesions=0 if plan.negative else None,
        contrast_enhanced=None if plan.randomize else False, randomize=plan.randomize, lesions=lesions,
    )  # fmt: skip


def _lesion_rows(name: str, ph: Phantom) -> list[dict[str, str]]:
    """One ``lesion_info.csv`` row per box of the phantom, in the order of lesions.csv."""
    return [
        {"file": f"{name}.png", **{k: f"{v:g}" for k, v in zip(("x1", "y1", "x2", "y2"), box)}, "kind": kind,
         "family": fam, "contrast_hu": f"{c:.2f}", "diameter_mm": f"{d:.2f}"}
        for box, kind, fam, c, d in zip(ph.boxes, ph.lesion_kinds, ph.lesion_families, ph.lesion_contrast_hu,
                                        ph.lesion_diameter_mm, strict=True)
    ]  # fmt: skip


def _record(name: str, plan: _Plan, ph: Phantom, size: int) -> dict[str, str]:
    sc = plan.scanner
    views = sc.n_views if sc.n_views is not None else default_n_angles(size)
    return {
        "file": f"{name}.png", "kind": plan.kind, "pixel_mm": f"{ph.spacing_mm:.6g}",
        "contrast": str(int(ph.contrast_enhanced)), "negative": str(int(plan.negative)),
        "n_boxes": str(len(ph.boxes)), **sc.record(),
        "n_views": str(views), "i0": f"{I0_DEFAULT * sc.i0_scale:.6g}",
    }  # fmt: skip


#: slice sizes (pixels) a simulated dataset may have: a CT slice is 512, micro-CT up to 2048
SIZE_RANGE = (32, 2048)


def _check_args(
    n: int, dose: float, kind: str, domain: str, negatives: float, kinds: Sequence[str], target: str = "noisy",
    size: int = 512,
) -> None:  # fmt: skip
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(f"size must be {SIZE_RANGE[0]}-{SIZE_RANGE[1]} pixels, got {size}")
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
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


def _info(
    out: Path, n: int, dose: float, seed: int, kind: str, size: int, domain: str, negatives: float,
    kinds: Sequence[str], lesions: str, target: str = "noisy",
) -> dict:  # fmt: skip
    """The dataset card (``dataset.json``) of a simulated dataset, with the command that makes it."""
    extra = [] if domain == "fixed" else ["--domain", domain, "--kinds", ",".join(kinds)]
    extra += [] if not negatives else ["--negatives", str(negatives)]
    extra += [] if lesions == "standard" else ["--lesions", lesions]
    extra += [] if target == "noisy" else ["--target", target]
    info = {
        "dose": float(dose) if domain == "fixed" else None,
        "seed": int(seed),
        "kind": kind if domain == "fixed" else "mixed",
        "size": int(size),
        "source": "simulated phantoms (napari_lidnet.sim)",
        "i0": I0_DEFAULT,
        "domain": domain,
        "negatives": float(negatives),
        "lesions": lesions,
        "target": target,
        "command": _command(out, n, dose, seed, kind, size, extra),
    }
    if lesions != "standard":
        info["lesion_info"] = LESION_INFO_CSV
    if domain == "random":
        info.update({"kinds": list(kinds), "dose_range": [0.05, 0.5], "scanner": SCANNER_CSV})
    return info


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
    lesions: str = "standard",
    target: str = "noisy",
) -> Path:
    """Write ``n`` simulated slices (phantom -> full-dose and low-dose scans) with lesion boxes; returns the folder.

    ``domain="fixed"``: every slice a ``kind`` phantom scanned at ``dose`` with the default protocol (as before).
    ``domain="random"``: each slice draws its body part from ``kinds``, a random FOV / pixel size, contrast and
    detailed anatomy, and a random scanner (``dose`` is then unused: 5-50 % per slice); the full-dose reference and
    the low-dose image of a pair share the slice's views, kernel and thickness. ``negatives``: fraction of slices
    drawn without lesions. Per-slice parameters: ``scanner.csv``. Slice i depends on (seed, i) only. The next
    slice's phantom is drawn in a thread while the current one is scanned. ``lesions``: the lesion profile,
    ``"standard"`` or ``"hard"`` (then also ``lesion_info.csv``); a seed gives the same anatomy and noise for both.
    ``target``: ``"noisy"`` (a normal-dose scan) or ``"clean"`` (the noiseless reconstruction) as the full-dose image.
    """
    _check_args(n, dose, kind, domain, negatives, kinds, target, size)
    check_profile(lesions)
    out = ds.prepare_folder(out_dir)
    plans = _plans(n, dose, seed, kind, size, domain, negatives, tuple(kinds))
    rows: list[dict[str, str]] = []
    lesion_rows: list[dict[str, str]] = []

    def samples() -> Iterator[ds.Sample]:
        with ThreadPoolExecutor(max_workers=1) as pool:
            nxt = pool.submit(_phantom, plans[0], size, lesions)
            for i, plan in enumerate(plans):
                ph = nxt.result()
                if i + 1 < n:
                    nxt = pool.submit(_phantom, plans[i + 1], size, lesions)
                full, low = simulate_pair(ph.hu, spacing_mm=ph.spacing_mm, seed=plan.noise_seed, device=device,
                                          clean_full=target == "clean", **plan.scanner.kwargs())  # fmt: skip
                rows.append(_record(f"sim_{i:05d}", plan, ph, size))
                lesion_rows.extend(_lesion_rows(f"sim_{i:05d}", ph))
                yield ds.Sample(f"sim_{i:05d}", full, low, ph.boxes, ph.spacing_mm)
                if progress is not None:
                    progress(i + 1, n)

    info = _info(out, n, dose, seed, kind, size, domain, negatives, kinds, lesions, target)
    ds.write_dataset(out, samples(), info)
    _write_csv(out / SCANNER_CSV, rows)
    if lesions != "standard":
        _write_csv(out / LESION_INFO_CSV, lesion_rows, _LESION_COLUMNS)
    return out


def _write_csv(path: Path, rows: list[dict[str, str]], columns: Sequence[str] = tuple(_COLUMNS)) -> None:
    from napari_lidnet.io.atomic import write_atomically

    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(columns))
    w.writeheader()
    w.writerows(rows)
    write_atomically(path, text.getvalue().encode())


def read_scanner_csv(dataset_dir: str | Path) -> dict[str, dict[str, str]]:
    """Per-slice simulation parameters of a simulated dataset, keyed by slice name (without .png); {} if none."""
    path = Path(dataset_dir) / SCANNER_CSV
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["file"].removesuffix(".png"): row for row in csv.DictReader(f)}


def read_lesion_info(dataset_dir: str | Path) -> list[dict[str, str]]:
    """Rows of a hard-profile dataset's ``lesion_info.csv`` (one per box, in lesions.csv order); [] if none."""
    path = Path(dataset_dir) / LESION_INFO_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _protocols(path: Path, dose: float | None, names: list[str]) -> Callable[[str], dict[str, Any]]:
    """``simulate_low_dose`` keyword arguments per slice name: ``dose`` with the default protocol, or (None) each
    slice's row of scanner.csv (ValueError naming a slice without one)."""
    if dose is not None:
        return lambda _name: {"dose": float(dose)}
    rows = read_scanner_csv(path)
    missing = [n for n in names if n not in rows]
    if missing:
        raise ValueError(f"{path}: no scanner.csv row for {missing[0]} (per-slice protocols need --domain random)")
    return lambda name: ScannerParams.from_record(rows[name]).kwargs()


def add_low_dose(
    dataset_dir: str | Path,
    dose: float | None,
    seed: int,
    progress: Progress | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    fast: bool = False,
) -> int:
    """Fill low/ of a dataset that has only full/ (e.g. converted DeepLesion slices) by noise insertion.

    ``dose=None``: each slice's own protocol (dose, views, kernel, electronic noise, thickness) from the dataset's
    ``scanner.csv`` (a ``--domain random`` dataset): low-dose partners that contain the full-dose image's own noise,
    as a real low-dose scan made from a normal-dose one would. Slices that already have a low-dose partner are kept
    unless ``overwrite``. ``fast``: ``simulate_low_dose``'s fast path (the same noise statistics, ~6x less CPU).
    Returns the number written.
    """
    path = Path(dataset_dir)
    info = ds.read_info(path)
    samples = ds.read_dataset(path, lazy=True)
    protocol = _protocols(path, dose, [s.name for s in samples])
    todo = [s for s in samples if overwrite or s.low_path is None]  # type: ignore[attr-defined]
    (path / "low").mkdir(exist_ok=True)
    children = np.random.SeedSequence(seed).spawn(len(samples))
    index = {s.name: i for i, s in enumerate(samples)}
    for done, s in enumerate(todo, start=1):
        noise_seed = int(children[index[s.name]].generate_state(1, np.uint32)[0])
        kwargs = {"seed": noise_seed, "device": device, "fast": fast, **protocol(s.name)}
        low = simulate_low_dose(s.full_hu, spacing_mm=s.spacing_mm, **kwargs)
        write_png_hu(path / "low" / f"{s.name}.png", low)
        if progress is not None:
            progress(done, len(todo))
    source = f"projection-domain noise insertion (simulate_low_dose, i0={I0_DEFAULT:g})"
    info.update(
        {
            "dose": None if dose is None else float(dose),
            "low_dose_seed": int(seed),
            "low_dose_source": source
            + (", each slice's protocol from scanner.csv" if dose is None else "")
            + (", fast path" if fast else ""),
        }
    )
    ds.write_json(path / "dataset.json", info)
    return len(todo)
