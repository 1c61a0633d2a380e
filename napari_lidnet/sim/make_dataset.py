"""Build lidnet dataset folders: simulated phantoms (``simulate_dataset``) or low-dose partners for real slices."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from napari_lidnet.io import dataset as ds
from napari_lidnet.io.png16 import write_png_hu
from napari_lidnet.sim.lowdose import I0_DEFAULT, simulate_low_dose, simulate_pair
from napari_lidnet.sim.phantom import KINDS, make_phantom

#: progress(done, total): called after each slice
Progress = Callable[[int, int], None]


def _command(out_dir: Path, n: int, dose: float, seed: int, kind: str, size: int) -> str:
    return shlex.join(
        ["lidnet", "simulate", "--out", str(out_dir), "--n", str(n), "--dose", str(dose), "--seed", str(seed),
         "--kind", kind, "--size", str(size)]
    )  # fmt: skip


def simulate_dataset(
    out_dir: str | Path,
    n: int,
    dose: float,
    seed: int,
    kind: str = "abdomen",
    size: int = 512,
    progress: Progress | None = None,
    device: str = "cpu",
) -> Path:
    """Write ``n`` simulated slices (phantom -> full-dose and ``dose`` scans) with lesion boxes; returns the folder.

    Slice i uses phantom seed and noise seed derived from (seed, i), so any slice can be regenerated alone.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 slices, got {n}")
    if kind not in KINDS:
        raise ValueError(f"unknown phantom kind {kind!r}; choose one of {KINDS}")
    if not 0 < float(dose) <= 1:
        raise ValueError(f"dose must be in (0, 1] (fraction of the normal dose), got {dose}")
    out = ds.prepare_folder(out_dir)
    children = np.random.SeedSequence(seed).spawn(n)

    def samples() -> Iterator[ds.Sample]:
        for i, child in enumerate(children):
            phantom_seed, noise_seed = (int(v) for v in child.generate_state(2, np.uint32))
            ph = make_phantom(phantom_seed, kind=kind, size=size)
            full, low = simulate_pair(ph.hu, dose, ph.spacing_mm, seed=noise_seed, device=device)
            yield ds.Sample(f"sim_{i:05d}", full, low, ph.boxes, ph.spacing_mm)
            if progress is not None:
                progress(i + 1, n)

    info = {
        "dose": float(dose),
        "seed": int(seed),
        "kind": kind,
        "size": int(size),
        "source": "simulated phantoms (napari_lidnet.sim)",
        "i0": I0_DEFAULT,
        "command": _command(out, n, dose, seed, kind, size),
    }
    return ds.write_dataset(out, samples(), info)


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
