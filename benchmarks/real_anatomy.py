"""The real-CT judge of the product: denoising and detection on real anatomy with simulated low dose.

The only real CT this repository may use (pydicom's test files, EVALUATION ONLY, nothing is trained or tuned on
them): ``CT_small.dcm`` (128 x 128 crop of a body slice) and the 512 x 512 CT slices stored as JPEG 2000 among
pydicom's test files. They are normal-dose references that carry their own noise (and, for the lossy JPEG 2000
file, compression smoothing): metrics against them measure agreement with a normal-dose scan, not with truth.

Per slice and seed: soft-edged lesions (8-24 px, |contrast| 20-60 HU, hypo and hyper) are inserted into soft
tissue of the normal-dose image, then low-dose noise at 25% and 10% dose from two independent models:
``ours`` (``napari_lidnet.sim.lowdose.simulate_low_dose``) and ``radon`` (``benchmarks/radon_noise.py``, skimage,
Hann filter, 720 views). The lesion-free version gets the same noise realisation (false boxes on real anatomy).
Rows: low dose, Gaussian filter (sigma picked on simulated phantoms), BM3D (given the true noise SD), RED-CNN
(when weights are given), the shipped default denoiser and every ``--denoiser``, each blind and given BM3D's oracle SD
(it then removes only that much noise and keeps the reference's own, ``napari_lidnet.strength``). Columns:
PSNR/SSIM over (-160, 240) HU against the normal-dose image, lesion CNR, seconds per 512 x 512 slice (CPU), boxes per
lesion-free slice at the default score threshold and mean FROC sensitivity (0.5-8 FP/slice, IoU >= 0.5) with the
shipped detector. 95% intervals: percentile bootstrap over (slice, seed) cases. A residual noise power spectrum
check looks for periodic (hatch) texture.

Usage:
    PYTHONPATH=. python benchmarks/real_anatomy.py [--denoiser NAME_OR_PATH ...] [--seeds 8] [--quick]

Your own scanner as the judge: ``--scans PATH ...`` (normal-dose DICOM series folders or files, NIfTI, arrays) runs
the same protocol on ``--per-scan`` evenly spaced slices of each, results in ``bench-out/your_scans/``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage, special

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radon_noise  # noqa: E402

from napari_lidnet.inference import BOX_FLOOR, denoise, detect, model_fingerprint  # noqa: E402
from napari_lidnet.io.open_ct import open_ct  # noqa: E402
from napari_lidnet.metrics.froc import froc  # noqa: E402
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr, ssim  # noqa: E402
from napari_lidnet.metrics.nps import (  # noqa: E402
    detrend,
    isolated_peak,
    largest_inscribed_square,
    phase_pattern_range,
    residual_spectrum,
)
from napari_lidnet.metrics.roi import cnr  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.models.weights import default_threshold  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose, simulate_pair  # noqa: E402
from napari_lidnet.sim.phantom import KINDS, make_phantom  # noqa: E402

DOSES = (0.25, 0.10)
MODELS = ("ours", "radon")
#: the detector sampling (mm) of the ``ours-mm`` noise model (``sim.lowdose.simulate_low_dose(sampling_mm=)``)
NOISE_SAMPLING_MM = 1.0
MODEL_LABEL = {
    "ours": "ours: simulate_low_dose (Shepp-Logan, 816 views at 512)",
    "radon": "radon: benchmarks/radon_noise.py (skimage, Hann, 720 views)",
    "ours-mm": "ours-mm: a 1 mm scanner's grain at the SD of ours (beside the judge, not for its lines)",
}
#: the Denoise & detect widget's score slider starts at 30 (%)
FP_RATES = (0.5, 1, 2, 4, 8)
JPEG2000_UIDS = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
AIR_FLOOR = -1024.0  # padding outside the scanned FOV (-2000, -3995) is set to air at this value
GAUSS_SIGMAS = tuple(np.round(np.arange(0.4, 3.01, 0.1), 2))
NPS_ROI = 64
CNR_MIN_SD = 0.5  # HU: a ring flatter than this (lossy-compressed, noise-free reference) gives no CNR
BM3D_MARGIN = 8  # px around the body's bounding box that BM3D sees


# --------------------------------------------------------------------------------------------------- data


@dataclass
class RealSlice:
    """One real normal-dose slice in HU, with its body and soft-tissue masks (``tissue_masks``: ValueError when
    it shows no body)."""

    name: str
    path: str
    hu: np.ndarray
    pixel_mm: float
    syntax: str
    body: np.ndarray = field(repr=False, default=None)
    soft: np.ndarray = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.body is None:
            self.body, self.soft = tissue_masks(self.hu)


@dataclass
class Case:
    """One (slice, seed): the slice with inserted lesions, their ground truth, and the inserted noise images."""

    sl: RealSlice
    slice_idx: int
    seed: int
    hu: np.ndarray
    boxes: np.ndarray
    lesions: list[dict]
    noise: dict[tuple[str, float], np.ndarray] = field(default_factory=dict)


class DiskCache:
    """Content-addressed results (array + seconds it took) in ``folder``; None: no caching.

    Keys hash every input (arrays by their bytes), so a changed lesion, noise or image gives a new entry.
    """

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.hits = self.computed = 0
        self.seconds_reused = 0.0
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(*parts: Any) -> str:
        """Hex digest of the parts: arrays by their bytes, everything else by its repr."""
        h = hashlib.blake2b(digest_size=16)
        for part in parts:
            h.update(np.ascontiguousarray(part).tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
        return h.hexdigest()

    def get(self, parts: tuple, compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
        """(array, seconds of the computation, as measured when it was first computed)."""
        path = None if self.folder is None else self.folder / f"{self.key(*parts)}.npz"
        if path is not None and path.exists():
            self.hits += 1
            with np.load(path) as z:
                self.seconds_reused += float(z["seconds"])
                return z["a"], float(z["seconds"])
        self.computed += 1
        t0 = time.perf_counter()
        arr = np.asarray(compute())
        seconds = time.perf_counter() - t0
        if path is not None:
            np.savez(path, a=arr, seconds=seconds)
        return arr, seconds


def find_real_files() -> list[tuple[str, str]]:
    """(path, transfer syntax name) of CT_small and of pydicom's 512 x 512 CT slices stored as JPEG 2000."""
    import pydicom
    from pydicom.data import get_testdata_file, get_testdata_files

    found = [(get_testdata_file("CT_small.dcm"), "Explicit VR Little Endian")]
    for path in sorted(get_testdata_files("*.dcm")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - pydicom's deliberately broken test files
            continue
        uid = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        if ds.get("Modality") == "CT" and ds.get("Rows") == 512 and ds.get("Columns") == 512 and uid in JPEG2000_UIDS:
            found.append((path, ds.file_meta.TransferSyntaxUID.name))
    return found


def tissue_masks(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(body, soft tissue): body = largest filled region > -500 HU; soft = Gaussian(1 px) HU in [0, 100]."""
    lab, n = ndimage.label(ndimage.binary_fill_holes(hu > -500))
    if n == 0:
        raise ValueError("no body found in the slice")
    body = lab == (1 + int(np.argmax(ndimage.sum(np.ones_like(hu), lab, range(1, n + 1)))))
    smooth = ndimage.gaussian_filter(hu.astype(np.float64), 1.0)
    soft = body & (smooth >= 0) & (smooth <= 100)
    return body, soft


def simulated_slices(n: int, seed0: int = 9100) -> list[RealSlice]:
    """``n`` simulated 512 x 512 slices (abdomen, chest, head in turn; the anatomy with texture and detail drawn as
    for training, ``randomize=True``; seeds from ``seed0``, far from the training sets'), without lesions, as
    normal-dose scans: one full-dose draw of the simulator (its own noise), the counterpart of a real slice."""
    out = []
    for k in range(n):
        kind, seed = KINDS[k % len(KINDS)], seed0 + k
        ph = make_phantom(seed, kind, size=512, n_lesions=0, randomize=True)
        full = np.maximum(simulate_pair(ph.hu, 0.25, ph.spacing_mm, seed=seed)[0], AIR_FLOOR)
        out.append(RealSlice(f"sim-{kind}-{seed}", "simulated", full.astype(np.float32), float(ph.spacing_mm),
                             "simulated"))
    return out


def load_slices() -> list[RealSlice]:
    """The real slices, read with the project's reader; padding below -1024 HU set to -1024 (air)."""
    out = []
    for path, syntax in find_real_files():
        vol = open_ct(path)[0]
        hu = np.maximum(np.asarray(vol.hu, np.float32).reshape(vol.hu.shape[-2:]), AIR_FLOOR)
        out.append(RealSlice(Path(path).name, path, hu, float(vol.spacing[-1]), syntax))
    return out


def _square(hu: np.ndarray) -> np.ndarray:
    """``hu`` made square (the radon model projects squares) by mirroring its edges: a crop that cuts the body
    goes on as tissue (air there would put a hard edge along the cut that every filter is then scored on)."""
    n = max(hu.shape)
    (r0, r1), (c0, c1) = [((n - s) // 2, n - s - (n - s) // 2) for s in hu.shape]
    return np.pad(hu, ((r0, r1), (c0, c1)), mode="symmetric")


def _scan_label(path: Path, volume: str, n_volumes: int) -> str:
    """A slice's scan as the report names it: the folder's name, or a file's with its folder's ("STS_001/CT.nii.gz"),
    plus the volume's name when the path holds several series."""
    label = path.name if path.is_dir() else "/".join(path.parts[-2:])
    return f"{label} {volume}" if n_volumes > 1 else label


def scan_slices(paths: list[Path], per_scan: int) -> tuple[list[RealSlice], list[str]]:
    """Your own normal-dose CT as the judge's real slices: ``per_scan`` evenly spaced axial slices (the end slices
    left out) of each volume the product's reader opens at ``paths`` (DICOM files or series folders, NIfTI,
    arrays). Returns (slices, notes): a volume that is not CT in HU or whose pixel size the reader had to assume (the
    noise models need it in mm), and a slice without a body, are skipped with a note."""
    from napari_lidnet.io.checks import not_ct_note
    from napari_lidnet.io.volume import known_pixel_mm

    slices, notes = [], []
    for path in paths:
        volumes = open_ct(path)
        for vol in volumes:
            stack = np.asarray(vol.hu, np.float32).reshape(-1, *vol.hu.shape[-2:])
            why = not_ct_note(str(vol.metadata.get("modality", "") or ""), stack, vol.name)
            if why is None and known_pixel_mm(vol) is None:
                why = f"{vol.name}: its pixel size is unknown (assumed 1 mm), and the noise models need it"
            if why is not None:
                notes.append(f"skipped {why}")
                continue
            n = len(stack)
            picks = range(n) if n <= per_scan else np.linspace(0, n - 1, per_scan + 2)[1:-1].round().astype(int)
            rows, cols = stack.shape[-2:]
            if rows != cols:  # the radon model projects a square: the shorter side mirrored out
                notes.append(f"{vol.name}: {rows} x {cols} slices made {max(rows, cols)} square by mirroring edges")
            for z in picks:
                hu = _square(np.maximum(stack[z], AIR_FLOOR))
                try:
                    slices.append(RealSlice(f"{_scan_label(Path(path), vol.name, len(volumes))} z{z}", str(path), hu,
                                            float(vol.spacing[-1]), "your scan"))
                except ValueError:
                    notes.append(f"skipped {vol.name} slice {z}: no body in it")
    return slices, notes


# --------------------------------------------------------------------------------------------------- lesions


def lesion_coverage(shape: tuple[int, int], les: dict) -> np.ndarray:
    """Fraction of each pixel inside a soft-edged ellipse (Gaussian edge of SD ``les['sigma']`` px)."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    dx, dy = xx - les["cx"], yy - les["cy"]
    ca, sa = np.cos(les["angle"]), np.sin(les["angle"])
    u, v = (dx * ca + dy * sa) / les["a"], (-dx * sa + dy * ca) / les["b"]
    rho = np.sqrt(u * u + v * v)
    grad = np.sqrt((u / les["a"]) ** 2 + (v / les["b"]) ** 2) / np.maximum(rho, 1e-6)
    dist = (rho - 1.0) / np.maximum(grad, 1e-6)
    return 0.5 * special.erfc(dist / (np.sqrt(2.0) * les["sigma"]))


def _draw_lesion(rng: np.random.Generator, free: np.ndarray, placed: list[dict]) -> dict | None:
    """A random lesion whose footprint lies in soft tissue (``free``'s distance map), clear of ``placed``."""
    diam = float(rng.uniform(8.0, 24.0))
    les = {
        "a": diam / 2, "b": diam / 2 * float(rng.uniform(0.75, 1.0)), "angle": float(rng.uniform(0, np.pi)),
        "sigma": float(rng.uniform(0.5, 1.5)), "contrast": float(rng.uniform(20, 60)) * float(rng.choice([-1, 1])),
    }  # fmt: skip
    need = les["a"] + 2 * les["sigma"] + 1.5
    dist = ndimage.distance_transform_edt(free)
    cand = np.argwhere(dist >= need)
    for other in placed:
        far = np.hypot(cand[:, 0] - other["cy"], cand[:, 1] - other["cx"]) >= need + other["need"] + 6
        cand = cand[far]
    if len(cand) == 0:
        return None
    cy, cx = cand[rng.integers(len(cand))]
    return {**les, "cx": float(cx), "cy": float(cy), "need": need}


def _ring(cov_all: np.ndarray, mask: np.ndarray, soft: np.ndarray, a: float) -> np.ndarray:
    """Background ring for CNR: 3 to 3 + max(5, a) px outside the lesion, in soft tissue, off every lesion."""
    d = ndimage.distance_transform_edt(~mask)
    return (d >= 3) & (d <= 3 + max(5.0, a)) & soft & (cov_all < 0.01)


def insert_lesions(sl: RealSlice, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(HU with lesions, (k, 4) boxes x1, y1, x2, y2 exclusive, lesion records with mask/ring pixel indices)."""
    placed: list[dict] = []
    for _ in range(n):
        for _attempt in range(20):
            les = _draw_lesion(rng, sl.soft, placed)
            if les is not None:
                placed.append(les)
                break
    hu = sl.hu.astype(np.float64).copy()
    covs = [lesion_coverage(hu.shape, les) for les in placed]
    cov_all = np.sum(covs, axis=0) if covs else np.zeros(hu.shape)
    boxes, records = [], []
    for les, cov in zip(placed, covs, strict=True):
        hu += les["contrast"] * cov
        mask = cov >= 0.5
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        ring = _ring(cov_all, mask, sl.soft, les["a"])
        records.append({**les, "mask": np.flatnonzero(mask), "ring": np.flatnonzero(ring), "box": boxes[-1]})
    return hu.astype(np.float32), np.array(boxes, np.float64).reshape(-1, 4), records


def inserted_noise(
    hu: np.ndarray, pixel_mm: float, model: str, dose: float, seed: int | list[int], cache: DiskCache
) -> np.ndarray:
    """The noise that one model (``ours``, ``radon`` or ``ours-mm``) inserts into a normal-dose slice to make ``dose``
    (cached: the simulators cost seconds per slice). ``ours`` is issue 11's: bins one pixel wide (``sampling_mm``
    None, pinned); ``ours-mm`` the same insertion with the grain of a scanner sampling every ``NOISE_SAMPLING_MM``,
    at the SD of ``ours`` (``benchmarks/results/noise_grain_prereg.md``: beside the judge's models, never for its
    lines)."""
    if model == "ours":
        parts = ("ours", dose, seed, pixel_mm, hu, simulate_low_dose.__defaults__)
        return cache.get(parts, lambda: simulate_low_dose(hu, dose, pixel_mm, seed=seed) - hu)[0]
    if model == "ours-mm":  # the grain of a 1 mm scanner at the noise level of ``ours`` (its SD, same draw)
        parts = (model, dose, seed, pixel_mm, hu, simulate_low_dose.__defaults__, NOISE_SAMPLING_MM, "sd-matched", 2)
        return cache.get(parts, lambda: _ours_mm(hu, pixel_mm, dose, seed, cache))[0]
    consts = (radon_noise.I0_RADON, radon_noise.N_VIEWS, radon_noise.FILTER, radon_noise.SIGMA_E2)
    parts = ("radon", dose, seed, pixel_mm, hu, consts)
    return cache.get(parts, lambda: radon_noise.insert_noise(hu, dose, pixel_mm, seed))[0]


def _ours_mm(hu: np.ndarray, pixel_mm: float, dose: float, seed: Any, cache: DiskCache) -> np.ndarray:
    """``simulate_low_dose(sampling_mm=NOISE_SAMPLING_MM)``'s noise scaled to the SD of ``ours`` (same seed) over the
    pixels ``ours`` changes: at one dose fraction the 1 mm scanner puts 2-3x less noise on fine pixels (its photons
    per mm), so the two grains are compared at one noise level, the issue's."""
    mm = simulate_low_dose(hu, dose, pixel_mm, seed=seed, sampling_mm=NOISE_SAMPLING_MM) - hu
    ours = inserted_noise(hu, pixel_mm, "ours", dose, seed, cache)
    inside = ours != 0
    return (mm * (np.std(ours[inside]) / max(float(np.std(mm[inside])), 1e-6))).astype(np.float32)


def _noise(case: Case, model: str, dose: float, k: int, cache: DiskCache) -> np.ndarray:
    """The noise of one model at one dose for a case, with the case's own seed."""
    ours = model in ("ours", "ours-mm")  # ours-mm: the same draw with the 1 mm scanner's grain
    seed = 1000 * case.seed + 10 * case.slice_idx + k if ours else [case.seed, case.slice_idx, k, 99]
    return inserted_noise(case.hu, case.sl.pixel_mm, model, dose, seed, cache)


def build_cases(slices: list[RealSlice], seeds: int, doses: tuple[float, ...], cache: DiskCache) -> list[Case]:
    """Every (slice, seed): lesions, then the noise of both models at every dose (from the lesion image)."""
    cases = []
    for seed in range(seeds):
        for i, sl in enumerate(slices):
            rng = np.random.default_rng([seed, i, 7])
            hu, boxes, lesions = insert_lesions(sl, rng, 5 if sl.hu.shape[0] >= 256 else 3)
            case = Case(sl, i, seed, hu, boxes, lesions)
            for model in MODELS:
                for k, dose in enumerate(doses):
                    case.noise[(model, dose)] = _noise(case, model, dose, k, cache)
            cases.append(case)
            print(f"  case slice {sl.name} seed {seed}: {len(boxes)} lesions", flush=True)
    return cases


# --------------------------------------------------------------------------------------------------- noise levels


def uniform_square(sl: RealSlice, cap: int = 48) -> tuple[slice, slice]:
    """A uniform square for noise SD: the largest square (side <= ``cap``) inside the eroded soft tissue."""
    mask = ndimage.binary_erosion(sl.soft, iterations=2)
    sq = largest_inscribed_square(mask)
    if sq is None:
        raise ValueError(f"{sl.name}: no soft tissue for a uniform region")
    r, c, s = sq
    off = max(0, (s - cap) // 2)
    s = min(s, cap)
    return slice(r + off, r + off + s), slice(c + off, c + off + s)


def noise_table(cases: list[Case], slices: list[RealSlice], doses: tuple[float, ...]) -> list[dict]:
    """Per slice, model and dose: SD of the inserted noise and of the low-dose image in a uniform square."""
    rows = []
    for i, sl in enumerate(slices):
        sq = uniform_square(sl)
        side = sq[0].stop - sq[0].start
        ref_sd = float(np.std(detrend(sl.hu[sq])))
        for model in MODELS:
            for dose in doses:
                mine = [c for c in cases if c.slice_idx == i]
                ins = [float(np.std(c.noise[(model, dose)][sq])) for c in mine]
                tot = [float(np.std(detrend((sl.hu + c.noise[(model, dose)])[sq]))) for c in mine]
                body = [float(np.std(c.noise[(model, dose)][sl.body])) for c in mine]
                rows.append({
                    "slice": sl.name, "model": model, "dose": dose, "square_px": side,
                    "reference_sd_hu": ref_sd, "inserted_sd_hu": float(np.mean(ins)),
                    "low_dose_sd_hu": float(np.mean(tot)), "inserted_sd_body_hu": float(np.mean(body)),
                })  # fmt: skip
    return rows


def ellipse_check(doses: tuple[float, ...], cache: DiskCache) -> list[dict]:
    """Both models on the calibration water ellipse (512 px, 0.75 mm): full-dose SD and SD inserted per dose."""
    ph = radon_noise.water_ellipse()
    px = radon_noise.CAL_PIXEL_MM
    consts = (radon_noise.I0_RADON, radon_noise.N_VIEWS, radon_noise.FILTER, radon_noise.SIGMA_E2)
    rows = []
    for dose in (0.5, *doses):
        ours = cache.get(("ellipse-ours", dose, simulate_low_dose.__defaults__),
                         lambda d=dose: simulate_low_dose(ph, d, px, seed=5) - ph)[0]  # fmt: skip
        rad = cache.get(("ellipse-radon", dose, consts), lambda d=dose: radon_noise.insert_noise(ph, d, px, 5))[0]
        rows.append({
            "dose": dose, "ours_inserted_sd_hu": radon_noise.noise_sd_full(ours),
            "radon_inserted_sd_hu": radon_noise.noise_sd_full(rad),
        })  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------------- methods


@dataclass
class Method:
    """A row: ``fn(low_hu, ctx)`` -> HU, ctx = {"dose", "true_sd" (HU, noise SD in the body), "body" (mask)}."""

    name: str
    fn: Callable[[np.ndarray, dict], np.ndarray]
    note: str = ""
    cache_tag: str | None = None  # set: outputs are cached under this tag (slow methods)


def pick_gaussian_sigma(dose: float, n_phantoms: int, cache: DiskCache) -> tuple[float, dict]:
    """Sigma (px) maximising the mean PSNR of a Gaussian filter on simulated abdomen phantoms at ``dose``."""
    pairs = []
    for k in range(n_phantoms):
        ph = make_phantom(900 + k, "abdomen", 512)
        parts = ("pair", ph.hu, ph.spacing_mm, dose, 900 + k, simulate_pair.__defaults__)
        run = lambda ph=ph, k=k: np.stack(simulate_pair(ph.hu, dose, ph.spacing_mm, seed=900 + k))  # noqa: E731
        pairs.append(cache.get(parts, run)[0])
    scores = {
        float(s): float(np.mean([psnr(ndimage.gaussian_filter(low, s), full) for full, low in pairs]))
        for s in GAUSS_SIGMAS
    }
    best = max(scores, key=scores.get)
    return best, scores


def body_crop(body: np.ndarray) -> tuple[slice, slice]:
    """The body's bounding box + BM3D_MARGIN px: where BM3D runs."""
    rows, cols = np.nonzero(body)
    r0, c0 = max(rows.min() - BM3D_MARGIN, 0), max(cols.min() - BM3D_MARGIN, 0)
    return slice(r0, rows.max() + 1 + BM3D_MARGIN), slice(c0, cols.max() + 1 + BM3D_MARGIN)


def bm3d_on_body(img: np.ndarray, body: np.ndarray, sd: float | np.ndarray) -> np.ndarray:
    """BM3D on HU/1000 over ``body_crop`` (the rest left as is), told ``sd``: the noise SD in HU (white noise), or
    the noise power spectrum of the crop in HU^2 (bm3d's convention: white noise of SD s is N s^2 everywhere)."""
    import bm3d

    box = body_crop(body)
    crop = img[box].astype(np.float64) / 1000.0
    out = np.array(img, dtype=np.float32)
    noise = sd / 1000.0 if np.isscalar(sd) else np.asarray(sd, np.float64) / 1e6
    den = bm3d.bm3d(crop, sigma_psd=noise)
    out[box] = np.asarray(den).reshape(crop.shape) * 1000.0
    return out


def bm3d_told(low: np.ndarray, ctx: dict) -> np.ndarray:
    """BM3D with the true noise SD, over the body's bounding box + BM3D_MARGIN px (air left as is)."""
    return bm3d_on_body(low, ctx["body"], ctx["true_sd"])


def _net(model: torch.nn.Module, told: bool = False) -> Callable[[np.ndarray, dict], np.ndarray]:
    """A network row; ``told``: given BM3D's oracle (the true SD of the inserted noise), it removes only that."""

    def fn(low: np.ndarray, ctx: dict) -> np.ndarray:
        return denoise(model, low, batch_size=1, remove_sd=ctx["true_sd"] if told else None)

    return fn


TOLD_NOTE = (
    "the network given BM3D's oracle, the true SD of the inserted noise in the body: it removes that much "
    "and keeps the rest (napari_lidnet.strength.keep_noise, `lidnet denoise --remove-sd HU`, the widget's 'remove' "
    "box), since the normal-dose reference has noise of its own"
)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


PACKAGES = ("pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "bm3d", "scikit-image", "scipy", "numpy", "torch")


def build_methods(args: argparse.Namespace, sigmas: dict[float, float]) -> tuple[list[Method], list[str]]:
    """The rows after "low dose"; notes for the report (e.g. no RED-CNN weights)."""
    picked = ", ".join(f"{d:g}: {s:g} px" for d, s in sigmas.items())
    methods = [
        Method("low dose", lambda low, ctx: low),
        Method("Gaussian", lambda low, ctx: ndimage.gaussian_filter(low, sigmas[ctx["dose"]]),
               f"sigma per dose picked on simulated phantoms (never on the real slices): {picked}"),
        Method("BM3D", bm3d_told, "bm3d.bm3d (profile 'np') on HU/1000 with sigma_psd = true SD of (low - full) in the "
               f"body (oracle), on the body's bounding box + {BM3D_MARGIN} px (air outside left as is)",
               "bm3d-np-" + _version("bm3d")),
    ]  # fmt: skip
    notes, nets = [], []
    for name in ["default", *args.denoiser]:
        model, card = load_model(name, "denoiser")
        model.eval()
        path = Path(name)  # a run's best_/last_ checkpoint is named after its run folder
        shown = f"{path.parent.name}/{path.name}" if path.name.startswith(("best_", "last_")) else path.name
        label = f"{'shipped default' if name == 'default' else shown} ({card.get('arch', '?')})"
        nets.append((card.get("arch"), Method(label, _net(model), f"load_model({name!r}, 'denoiser')")))
        nets.append((card.get("arch"), Method(f"{label}, told the SD", _net(model, told=True), TOLD_NOTE)))
    redcnn = [m for arch, m in nets if arch == "redcnn"]
    if not redcnn:
        notes.append("RED-CNN: no trained RED-CNN weights shipped (pass --denoiser PATH to a redcnn model)")
    methods += redcnn + [m for arch, m in nets if arch != "redcnn"]
    return methods, notes


# --------------------------------------------------------------------------------------------------- evaluation


def _detections(
    detector: torch.nn.Module, img: np.ndarray, a: argparse.Namespace, pixel_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (k, 4) and scores (k,) above BOX_FLOOR (cached by image and detector content, and by the pixel size
    for a detector that runs at its own, ``detect_mm``)."""
    img = np.ascontiguousarray(img, dtype=np.float32)
    sized = getattr(detector, "detect_mm", None) is not None
    parts = ("detect", a.detector_key, BOX_FLOOR, img, *((float(pixel_mm),) if sized else ()))
    run = lambda: detect(detector, img, score_threshold=BOX_FLOOR, batch_size=1, pixel_mm=(pixel_mm, pixel_mm))  # noqa: E731
    rows = a.cache.get(parts, run)[0]
    rows = rows.reshape(-1, 6)
    return rows[:, 1:5].astype(np.float64), rows[:, 5].astype(np.float64)


def lesion_cnrs(img: np.ndarray, lesions: list[dict]) -> list[float]:
    """|mean lesion - mean ring| / SD ring per lesion; NaN when the ring has < 30 pixels or SD < CNR_MIN_SD."""
    flat = np.asarray(img, np.float64).ravel()
    out = []
    for les in lesions:
        ring = flat[les["ring"]]
        sd = ring.std(ddof=1) if len(ring) >= 30 else 0.0
        out.append(float("nan") if sd < CNR_MIN_SD else cnr(flat[les["mask"]].mean(), ring.mean(), sd))
    return out


def case_record(out: np.ndarray, case: Case, detector: torch.nn.Module, seconds: float, a: argparse.Namespace) -> dict:
    """Metrics of one denoised lesion image against the normal-dose lesion image."""
    boxes, scores = _detections(detector, out, a, case.sl.pixel_mm)
    return {
        "slice": case.sl.name, "size": int(out.shape[0]), "seed": case.seed,
        "psnr": psnr(out, case.hu, window=METRIC_WINDOW), "ssim": ssim(out, case.hu, window=METRIC_WINDOW),
        "cnr": lesion_cnrs(out, case.lesions), "seconds": [seconds],
        "boxes": np.round(boxes, 2).tolist(), "scores": np.round(scores, 4).tolist(), "gt": case.boxes.tolist(),
    }  # fmt: skip


def _central(res: np.ndarray) -> np.ndarray:
    n = res.shape[0]
    return res[n // 4 : n // 4 + n // 2, n // 4 : n // 4 + n // 2].astype(np.float32)


def _run(method: Method, low: np.ndarray, ctx: dict, cache: DiskCache) -> tuple[np.ndarray, float]:
    """(output, seconds) of a method; slow methods go through the cache."""
    if method.cache_tag is not None:
        parts = ("method", method.cache_tag, ctx["dose"], ctx["true_sd"], np.ascontiguousarray(low, np.float32))
        return cache.get(parts, lambda: method.fn(low, ctx))
    t0 = time.perf_counter()
    out = method.fn(low, ctx)
    return out, time.perf_counter() - t0


def evaluate_method(
    method: Method, cases: list[Case], model: str, dose: float, detector: torch.nn.Module, a: argparse.Namespace
) -> tuple[list[dict], list[np.ndarray]]:
    """Records per case; residuals (denoised lesion-free - reference, central half) of the 512 slices for NPS."""
    records, residuals = [], []
    for case in cases:
        noise = case.noise[(model, dose)]
        ctx = {"dose": dose, "true_sd": float(np.std(noise[case.sl.body])), "body": case.sl.body}
        out, seconds = _run(method, case.hu + noise, ctx, a.cache)
        rec = case_record(out, case, detector, seconds, a)
        if case.seed < a.fp_seeds:
            free, seconds = _run(method, case.sl.hu + noise, ctx, a.cache)
            rec["seconds"].append(seconds)
            rec["boxes_free"] = int((_detections(detector, free, a, case.sl.pixel_mm)[1] >= a.threshold).sum())
            if case.sl.hu.shape[0] >= 256:
                residuals.append(_central(free - case.sl.hu))
        records.append(rec)
    return records, residuals


def evaluate_full_dose(
    cases: list[Case], detector: torch.nn.Module, a: argparse.Namespace, method: Method | None = None
) -> list[dict]:
    """The normal-dose images themselves (PSNR infinite), or put through ``method`` first (the product's pipeline on
    a normal-dose scan: denoise, then detect); lesion-free: one image per slice (no noise)."""
    records = []
    for case in cases:
        ctx = {"dose": 1.0, "true_sd": 0.0, "body": case.sl.body}
        out, seconds = (case.hu, float("nan")) if method is None else _run(method, case.hu, ctx, a.cache)
        rec = case_record(out, case, detector, seconds, a)
        if method is None:
            rec["psnr"], rec["ssim"] = float("inf"), 1.0
        if case.seed == 0:
            free = case.sl.hu if method is None else _run(method, case.sl.hu, ctx, a.cache)[0]
            rec["boxes_free"] = int((_detections(detector, free, a, case.sl.pixel_mm)[1] >= a.threshold).sum())
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------------- summaries


def bootstrap(stat: Callable[[np.ndarray], float], n: int, n_boot: int, seed: int = 0) -> list[float]:
    """95% percentile interval of ``stat(indices)`` over resamples of n cases with replacement."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return [float("nan"), float("nan")]
    return [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]


def _froc_inputs(recs: list[dict]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    dets = [(np.asarray(r["boxes"]).reshape(-1, 4), np.asarray(r["scores"])) for r in recs]
    return dets, [np.asarray(r["gt"]).reshape(-1, 4) for r in recs]


def summarize(recs: list[dict], n_boot: int) -> dict[str, Any]:
    """Means with 95% bootstrap intervals over (slice, seed) cases."""
    n = len(recs)
    out: dict[str, Any] = {"n_cases": n, "n_lesions": int(sum(len(r["gt"]) for r in recs))}
    for key in ("psnr", "ssim"):
        v = np.array([r[key] for r in recs])
        out[key] = float(v.mean())
        out[key + "_ci"] = bootstrap(lambda idx, v=v: float(v[idx].mean()), n, n_boot) if np.isfinite(v).all() else None
    cn = [np.asarray(r["cnr"], np.float64) for r in recs]
    out["n_cnr"] = int(np.isfinite(np.concatenate(cn)).sum())
    out["cnr"] = float(np.nanmean(np.concatenate(cn))) if out["n_cnr"] else float("nan")
    out["cnr_ci"] = bootstrap(lambda idx: float(np.nanmean(np.concatenate([cn[i] for i in idx]))), n, n_boot)
    big = [s for r in recs if r["size"] >= 256 for s in r["seconds"] if np.isfinite(s)]
    out["seconds_per_512_slice"] = float(np.mean(big)) if big else float("nan")
    dets, gts = _froc_inputs(recs)
    res = froc(dets, gts, FP_RATES)
    out["froc_mean_sens"] = res.mean_sensitivity
    out["froc_sens_at"] = dict(zip([f"{r:g}" for r in FP_RATES], map(float, res.sensitivities), strict=True))
    out["froc_mean_sens_ci"] = bootstrap(
        lambda idx: froc([dets[i] for i in idx], [gts[i] for i in idx], FP_RATES).mean_sensitivity,
        n, max(n_boot // 2, 50),
    )  # fmt: skip
    fp = np.array([r["boxes_free"] for r in recs if "boxes_free" in r], np.float64)
    out["n_free_slices"] = int(len(fp))
    out["boxes_per_free_slice"] = float(fp.mean()) if len(fp) else float("nan")
    ci = bootstrap(lambda idx: float(fp[idx].mean()), len(fp), n_boot) if len(fp) > 1 else None
    out["boxes_per_free_slice_ci"] = ci
    return out


# --------------------------------------------------------------------------------------------------- NPS check


def residual_nps(residuals: list[np.ndarray]) -> tuple[np.ndarray, dict[str, Any]]:
    """Mean 2D NPS (HU^2 px^2, cycles/px, fft-shifted) of residual images and its most isolated peak
    (``metrics.nps.residual_spectrum`` / ``isolated_peak``), and the 4 x 4 phase pattern's range in HU
    (``phase_pattern_range``: a fixed 4-pixel hatch such as a factor-4 pixel-unshuffle network may print)."""
    nps, n_rois = residual_spectrum(residuals, NPS_ROI)
    peak = isolated_peak(nps)
    info = {
        "phase_pattern_range_hu": phase_pattern_range(residuals),
        "peak_local_ratio": peak["local_ratio"],
        "peak_radial_ratio": peak["radial_ratio"],
        "at_cycles_per_px": peak["at_cycles_per_px"],
        "residual_sd_hu": float(np.sqrt(nps.sum() / NPS_ROI**2)),
        "n_images": len(residuals), "n_rois": int(n_rois),
    }  # fmt: skip
    return nps, info


def nps_figure(spectra: dict[tuple[str, str], np.ndarray], path: Path) -> str:
    """Save the log10 2D NPS panels (rows: noise models, columns: rows of the table); returns how it was written."""
    if not spectra:
        return f"not written: no slice holds a uniform soft-tissue square of {NPS_ROI} px"
    keys = list(spectra)
    models = sorted({m for m, _ in keys}, key=MODELS.index)
    names = list(dict.fromkeys(n for _, n in keys))
    logs = {k: np.log10(np.maximum(v, 1e-6)) for k, v in spectra.items()}
    lo = min(float(np.percentile(v, 1)) for v in logs.values())
    hi = max(float(v.max()) for v in logs.values())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import imageio.v3 as iio

        grid = np.block([[logs.get((m, n), np.full((NPS_ROI, NPS_ROI), lo)) for n in names] for m in models])
        iio.imwrite(path, (np.clip((grid - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8))
        return "imageio (grey levels, rows = noise models)"
    fig, axes = plt.subplots(len(models), len(names), figsize=(3.6 * len(names), 3.4 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        for j, n in enumerate(names):
            ax = axes[i][j]
            if (m, n) in logs:
                im = ax.imshow(logs[(m, n)], extent=(-0.5, 0.5, 0.5, -0.5), vmin=lo, vmax=hi, cmap="magma")
            ax.set_title(f"{n}\n{m} noise, 25% dose", fontsize=9)
            ax.set_xlabel("fx (cycles/px)", fontsize=8)
            ax.set_ylabel("fy (cycles/px)", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.8, label="log10 NPS of (output - reference), HU^2 px^2")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "matplotlib"


# --------------------------------------------------------------------------------------------------- report


def _f(v: float | None, digits: int) -> str:
    if v is None or not np.isfinite(v):
        return "inf" if v == float("inf") else "-"
    return f"{v:.{digits}f}"


def _ci(row: dict, key: str, digits: int) -> str:
    ci = row.get(key + "_ci")
    text = _f(row[key], digits)
    return text if not ci or not np.isfinite(ci[0]) else f"{text} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def table_md(rows: list[dict], threshold: float) -> list[str]:
    """One markdown table of the rows of one (noise model, dose)."""
    lines = [
        "| row | PSNR (dB) [95% CI] | SSIM [95% CI] | lesion CNR [95% CI] (n) | s / 512² slice | "
        f"boxes / lesion-free slice @{threshold:g} [95% CI] (n) | mean FROC sens [95% CI] | sens@0.5/1/2/4/8 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sens = "/".join(f"{v:.2f}" for v in r["froc_sens_at"].values())
        lines.append(
            f"| {r['name']} | {_ci(r, 'psnr', 2)} | {_ci(r, 'ssim', 4)} | {_ci(r, 'cnr', 2)} ({r['n_cnr']}) | "
            f"{_f(r['seconds_per_512_slice'], 2)} | {_ci(r, 'boxes_per_free_slice', 2)} ({r['n_free_slices']}) | "
            f"{_ci(r, 'froc_mean_sens', 3)} | {sens} |"
        )
    return lines


def noise_md(result: dict) -> list[str]:
    """Tables of the noise calibration (water ellipse) and of the noise SD on each real slice."""
    lines = ["## Noise levels", "", "Water ellipse 300 x 220 mm, 512 x 512 pixels of 0.75 mm, SD (HU) of the inserted "
             "noise in a central 64 x 64 square (dose 0.5 inserts exactly the full-dose variance):", "",
             "| dose | ours | radon |", "|---|---|---|"]  # fmt: skip
    for r in result["ellipse"]:
        lines.append(f"| {r['dose']:g} | {r['ours_inserted_sd_hu']:.2f} | {r['radon_inserted_sd_hu']:.2f} |")
    lines += ["", "Real slices: SD (HU) in the largest uniform square of soft tissue (side given, poly2-detrended for "
              "the images), mean over seeds; 'body' is the SD of the inserted noise over the body (BM3D's sigma):", "",
              "| slice | square (px) | reference SD | model | dose | inserted SD | low-dose SD | inserted SD, body |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["noise"]:
        lines.append(
            f"| {r['slice']} | {r['square_px']} | {r['reference_sd_hu']:.1f} | {r['model']} | {r['dose']:g} | "
            f"{r['inserted_sd_hu']:.1f} | {r['low_dose_sd_hu']:.1f} | {r['inserted_sd_body_hu']:.1f} |"
        )
    return lines


def by_slice_md(result: dict) -> list[str]:
    """Mean PSNR per slice (over seeds) of every row, one line per (noise model, dose, row)."""
    tables = result["tables"]
    names = next(r for r in next(iter(tables.values())) if "psnr_by_slice" in r)["psnr_by_slice"].keys()
    lines = ["## PSNR by slice (dB, mean over seeds)", "", "| noise, dose | row | " + " | ".join(names) + " |",
             "|---|---|" + "---|" * len(names)]  # fmt: skip
    for key, rows in tables.items():
        model, dose = key.split("@")
        for row in (r for r in rows if "psnr_by_slice" in r):  # the low-dose input and the methods
            cells = " | ".join(f"{row['psnr_by_slice'][n]:.2f}" for n in names)
            lines.append(f"| {model} {float(dose) * 100:g}% | {row['name']} | {cells} |")
    return lines + [""]


def nps_md(result: dict) -> list[str]:
    """Table of the residual NPS peaks at 25% dose."""
    lines = ["## Residual noise power spectrum at 25% dose", "",
             "2D NPS of (output - normal-dose reference) on the lesion-free images, central 256 x 256 of the 512 x 512 "
             "slices, 64 x 64 half-overlapping sub-ROIs (poly2-detrended, Hann-windowed), cycles/pixel. Peak: the "
             "frequency beyond the 3 lowest rings where NPS / median of its 7 x 7 neighbours is largest (a hatch or "
             "periodic texture is a narrow spike: ratio >> 2; noise alone ~1.5); 'radial' is the peak over the "
             "radial mean of its ring. 4 x 4 phase range: max - min over the 16 pixel classes (y mod 4, x mod 4) of "
             "the mean residual after removing its 8 x 8 local mean, i.e. the peak-to-peak HU of a fixed 4-pixel "
             f"pattern (noise alone: a few tenths). Figure: `{result['nps_png']}`.", "",
             "| noise | row | peak / neighbours | peak / radial mean | at (fy, fx) cycles/px | 4 x 4 phase range (HU) "
             "| residual SD (HU) | ROIs |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, info in result["nps"].items():
        model, name = key.split("|", 1)
        fy, fx = info["at_cycles_per_px"]
        lines.append(
            f"| {model} | {name} | {info['peak_local_ratio']:.2f} | {info['peak_radial_ratio']:.2f} | "
            f"({fy:+.3f}, {fx:+.3f}) | {info['phase_pattern_range_hu']:.2f} | {info['residual_sd_hu']:.1f} | "
            f"{info['n_rois']} |"
        )
    return lines


def write_markdown(result: dict, path: Path) -> None:
    """The human-readable report."""
    cfg = result["config"]
    sim = bool(cfg.get("simulated"))
    title = ("# Simulated anatomy: the real-anatomy protocol on simulated slices (its control)" if sim
             else "# Real anatomy: low-dose denoising and detection on real CT slices")  # fmt: skip
    lines = [
        title, "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}; machine: {result['machine']}; "
        f"runtime {result['runtime_s'] / 60:.1f} min (load average {result['load_average']}; "
        f"{result['cache']['computed']} results computed, {result['cache']['hits']} reused from `{cfg['out']}/cache` "
        f"(noise, BM3D outputs, detections) that had cost {result['cache']['seconds_reused'] / 60:.1f} min when "
        "first computed).  ",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in result["packages"].items()) + " (JPEG 2000 decoded by "
        "pylibjpeg-openjpeg through pydicom).", "", *result["about"], "",
        "## Simulated slices (`simulated_slices`: full-dose draws of random phantoms)" if sim
        else "## Your slices (`--scans`, normal-dose references)" if cfg.get("scans")
        else "## Real slices (pydicom test files, evaluation only)", "",
        "| file | size | pixel (mm) | transfer syntax | lesions inserted (all seeds) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for s in result["slices"]:
        lines.append(f"| {s['name']} | {s['size']} | {s['pixel_mm']:.3f} | {s['syntax']} | {s['n_lesions']} |")
    lines += ["", *noise_md(result), ""]
    lines += [f"Gaussian sigma (px), picked on {cfg['phantoms']} simulated abdomen phantom(s) per dose by PSNR against "
              "their full-dose scan (our noise model), never on the real slices: "
              + ", ".join(f"{d}: {v['sigma']:g}" for d, v in result["gaussian"].items()), ""]  # fmt: skip
    for key, rows in result["tables"].items():
        model, dose = key.split("@")
        lines += [f"## {MODEL_LABEL[model]}, {float(dose) * 100:g}% dose", "", *table_md(rows, cfg["threshold"]), ""]
    lines += by_slice_md(result) + nps_md(result) + ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    path.write_text("\n".join(lines) + "\n")


ABOUT = [
    "Normal-dose references are real scans with their own noise (and lossy JPEG 2000 smoothing for 693_J2KI.dcm): "
    "PSNR/SSIM measure agreement with a normal-dose scan, and a denoiser that also removes the reference's own "
    "noise is penalised slightly. Lesions (8-24 px, |contrast| 20-60 HU, half hypo, Gaussian edge 0.5-1.5 px) are "
    "inserted into soft tissue (Gaussian(1 px)-smoothed HU in [0, 100] over the footprint, inside the body) before "
    "noise insertion; the lesion-free image gets the same noise realisation (computed from the lesion image).",
    "",
    "Two noise models: **ours** (`simulate_low_dose`, I0 = 2.5e6 per bin and view, Shepp-Logan, 816 views at 512) and "
    "**radon** (`benchmarks/radon_noise.py`, written without napari_lidnet.sim: skimage radon/iradon, Hann filter, "
    "720 views, electronic noise 25 counts^2, I0 = {i0:.3g} calibrated to 10 HU full-dose noise in a water ellipse at "
    "0.75 mm). Both insert noise in the projections after Yu et al. 2012 (variance d(1-d)N1 + (1-d^2)sigma_e^2 on "
    "d N1) and add the reconstructed difference to the normal-dose image.",
    "",
    "PSNR/SSIM over (-160, 240) HU against the normal-dose lesion image; lesion CNR = |mean lesion - mean ring| / "
    "SD ring (ring 3 to 3+max(5, a) px outside the half-contrast outline, soft tissue only); detection with the "
    "shipped detector, boxes kept from score {floor}; boxes per lesion-free slice at the widget's default threshold "
    "{thr}; FROC sensitivity at 0.5, 1, 2, 4, 8 FP/slice (IoU >= 0.5), mean of the five. 95% intervals: percentile "
    "bootstrap over (slice, seed) cases ({boot} resamples, half that for FROC). Seconds per slice: wall time of the "
    "method alone on the 512 x 512 slices, CPU, torch threads = {threads}, with other work running on the machine.",
]


PYDICOM_CAVEATS = [
    "CT_small.dcm is a 128 x 128 crop of a body slice (spine and paraspinal muscles): the body is cut at the image "
    "edges, so both noise models project a truncated object (less attenuation, hence less inserted noise, than the "
    "whole patient would get) over the padded square; its soft tissue is small (uniform square of 15 px).",
    "693_J2KI.dcm is lossy JPEG 2000: compression removed the noise of the brain (reference SD ~0 HU) and left "
    "blocky smoothing; PSNR/SSIM there are against an almost noise-free but smoothed reference, and lesion CNR at "
    f"full dose is undefined there (ring SD < {CNR_MIN_SD} HU, left out of the full-dose mean).",
    "J2K_pixelrep_mismatch.dcm is lossless JPEG 2000 of a head (0.431 mm, gantry tilt -22 deg, irrelevant in 2D). "
    "Both 512 x 512 slices are heads: soft tissue there is brain, while the shipped networks learned abdomen phantoms.",
    "Padding outside the scanned field of view (-2000 and -3995 HU in the files) is set to -1024 HU before anything.",
]
CAVEATS = [
    "Noise insertion needs the normal-dose scan's own photon counts; both models assume the calibrated I0 for every "
    "slice (the real acquisitions' mAs and sizes differ), so the absolute noise levels are approximate.",
    "Seconds per slice are wall time on a shared 2-core machine (load average above); BM3D times of cached results "
    "are those measured when first computed.",
]


def free_stem(stem: Path) -> Path:
    """``stem``, or ``stem_2``, ``stem_3``, ... : the first whose report is not there yet (a rerun keeps the last)."""
    k, free = 1, stem
    while free.with_suffix(".md").exists() or free.with_suffix(".json").exists():
        k += 1
        free = stem.with_name(f"{stem.name}_{k}")
    return free


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-out/real_anatomy"), help="raw outputs")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/real_anatomy"), help="md/json stem")
    p.add_argument("--denoiser", action="append", default=[], help="extra denoiser (name or path), repeatable")
    p.add_argument("--detector", default="default", help="detector (name or path)")
    p.add_argument("--seeds", type=int, default=8, help="lesion placement + noise realisations per slice")
    p.add_argument("--fp-seeds", type=int, default=2, help="seeds whose lesion-free images are also evaluated")
    p.add_argument("--no-cache", action="store_true", help="recompute noise, BM3D and detections")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--phantoms", type=int, default=2, help="simulated phantoms per dose to pick the Gaussian sigma")
    p.add_argument("--threshold", type=float, default=None, help="boxes/slice threshold (default: the card's)")
    p.add_argument("--quick", action="store_true", help="2 seeds, 1 lesion-free seed, 200 resamples, 1 phantom")
    p.add_argument("--models", default=",".join(MODELS),
                   help="noise models: ours, radon (issue 11's), ours-mm (reported beside them only)")  # fmt: skip
    p.add_argument("--simulated", type=int, default=0, metavar="N",
                   help="the same protocol on N simulated slices instead of the real ones (results stem _sim)")
    p.add_argument("--scans", type=Path, nargs="+", metavar="PATH",
                   help="your own normal-dose CT instead of pydicom's slices: DICOM files or series folders, NIfTI, "
                        "arrays (results stem bench-out/your_scans/real_anatomy unless --results)")  # fmt: skip
    p.add_argument("--per-scan", type=int, default=4, help="evenly spaced slices taken from each --scans volume")
    a = p.parse_args(argv)
    if a.scans and a.simulated:
        p.error("--scans and --simulated: one source of slices")
    if a.scans and a.results == Path("benchmarks/results/real_anatomy"):
        a.results = free_stem(Path("bench-out/your_scans/real_anatomy"))
    if a.simulated and a.results == Path("benchmarks/results/real_anatomy"):
        a.results = Path("benchmarks/results/real_anatomy_sim")
    if a.quick:
        a.seeds, a.fp_seeds, a.boot, a.phantoms = 2, 1, 200, 1
    a.fp_seeds = min(a.fp_seeds, a.seeds)
    a.models = tuple(a.models.split(","))
    if not set(a.models) <= {"ours", "radon", "ours-mm"}:
        p.error("noise models among ours, radon, ours-mm")
    return a


def run_tables(
    cases: list[Case], methods: list[Method], detector: torch.nn.Module, a: argparse.Namespace
) -> tuple[dict, dict, dict, dict]:
    """Every (noise model, dose) table; raw records; 25% residual NPS spectra and their peak ratios."""
    full = evaluate_full_dose(cases, detector, a)
    shipped = next(m for m in methods if m.name.startswith("shipped default") and "told" not in m.name)
    full_denoised = evaluate_full_dose(cases, detector, a, shipped)
    full_rows = [{"name": "full dose (reference)", **summarize(full, a.boot)},
                 {"name": "full dose, then the shipped denoiser", "note": "the pair on a normal-dose scan",
                  **summarize(full_denoised, a.boot)}]  # fmt: skip
    tables, raw, spectra, nps_info = {}, {"full dose": full, "full dose|denoised": full_denoised}, {}, {}
    for model in MODELS:
        for dose in DOSES:
            rows = list(full_rows)
            for m in methods:
                t0 = time.perf_counter()
                recs, residuals = evaluate_method(m, cases, model, dose, detector, a)
                raw[f"{model}@{dose}|{m.name}"] = recs
                rows.append({"name": m.name, "note": m.note, **summarize(recs, a.boot), "psnr_by_slice": {
                    sl: float(np.mean([r["psnr"] for r in recs if r["slice"] == sl]))
                    for sl in dict.fromkeys(r["slice"] for r in recs)}})  # fmt: skip
                if dose == 0.25 and residuals:
                    spectra[(model, m.name)], nps_info[f"{model}|{m.name}"] = residual_nps(residuals)
                r = rows[-1]
                print(f"  {model} {dose:g} {m.name}: PSNR {r['psnr']:.2f} SSIM {r['ssim']:.4f} FROC "
                      f"{r['froc_mean_sens']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
            tables[f"{model}@{dose}"] = rows
    return tables, raw, spectra, nps_info


def _jsonable(o: Any) -> Any:
    """Plain JSON: numpy to Python, paths to text, NaN to null, infinities to "inf"/"-inf"."""
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None if np.isnan(o) else ("inf" if o > 0 else "-inf")
    return o


def _slice_info(slices: list[RealSlice], cases: list[Case]) -> list[dict]:
    return [
        {"name": s.name, "path": s.path, "size": s.hu.shape[0], "pixel_mm": s.pixel_mm, "syntax": s.syntax,
         "n_lesions": int(sum(len(c.boxes) for c in cases if c.sl is s))}
        for s in slices
    ]  # fmt: skip


def save_outputs(result: dict, raw: dict, spectra: dict, cases: list[Case], a: argparse.Namespace) -> None:
    """results .json/.md/_nps.png, and in --out the raw per-case records, lesions and spectra."""
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    png = a.results.with_name(a.results.name + "_nps.png")
    result["nps_png"] = str(png)
    result["nps_figure_writer"] = nps_figure(
        {k: v for k, v in spectra.items() if k[1] == "low dose" or "BM3D" in k[1] or "shipped default" in k[1]}, png
    )
    a.results.with_suffix(".json").write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
    write_markdown(result, a.results.with_suffix(".md"))
    lesions = [
        {"slice": c.sl.name, "seed": c.seed, "lesions": [{k: v for k, v in les.items() if k not in ("mask", "ring")}
                                                          for les in c.lesions]}
        for c in cases
    ]  # fmt: skip
    raw_json = json.dumps(_jsonable({"records": raw, "lesions": lesions}), allow_nan=False)
    (a.out / f"{a.results.name}_raw.json").write_text(raw_json)
    np.savez_compressed(a.out / f"{a.results.name}_nps.npz", **{f"{m}|{n}": v for (m, n), v in spectra.items()})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    global MODELS
    a = parse_args(argv)
    MODELS = a.models  # every table, figure and case of this run
    torch.set_num_threads(a.threads)
    t_start, load_start = time.perf_counter(), os.getloadavg()[1]
    a.cache = DiskCache(None if a.no_cache else a.out / "cache")
    notes_in: list[str] = []
    if a.scans:
        slices, notes_in = scan_slices(a.scans, a.per_scan)
        if not slices:
            raise SystemExit("no usable slice in " + ", ".join(map(str, a.scans)) + "; " + "; ".join(notes_in))
    else:
        slices = simulated_slices(a.simulated) if a.simulated else load_slices()
    print(*notes_in, sep="\n")
    print("slices: " + ", ".join(f"{s.name} {s.hu.shape} {s.pixel_mm:.3f} mm" for s in slices), flush=True)
    detector, det_card = load_model(a.detector, "detector")
    if a.threshold is None:
        a.threshold = default_threshold(det_card)
    a.detector_key = model_fingerprint(detector)
    gauss = {}
    for dose in DOSES:
        sigma, scores = pick_gaussian_sigma(dose, a.phantoms, a.cache)
        gauss[f"{dose:g}"] = {"sigma": sigma, "psnr_by_sigma": scores}
        print(f"Gaussian sigma at {dose:g}: {sigma:g} px", flush=True)
    methods, notes = build_methods(a, {d: gauss[f"{d:g}"]["sigma"] for d in DOSES})
    cases = build_cases(slices, a.seeds, DOSES, a.cache)
    ellipse = ellipse_check(DOSES, a.cache)
    noise = noise_table(cases, slices, DOSES)
    tables, raw, spectra, nps_info = run_tables(cases, methods, detector, a)
    result = {
        "command": "PYTHONPATH=. python " + shlex.join(["benchmarks/real_anatomy.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, 2 CPU cores, torch {torch.__version__}, threads {a.threads}",
        "runtime_s": time.perf_counter() - t_start,
        "load_average": f"5-min {load_start:.1f} at start, {os.getloadavg()[1]:.1f} at end",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items() if k != "cache"},
        "about": [t.format(i0=radon_noise.I0_RADON, floor=BOX_FLOOR, thr=a.threshold, boot=a.boot, threads=a.threads)
                  for t in ABOUT],  # fmt: skip
        "detector": {"name": a.detector, "arch": det_card.get("arch")},
        "packages": {name: _version(name) for name in PACKAGES},
        "cache": {"folder": str(a.cache.folder), "hits": a.cache.hits, "computed": a.cache.computed,
                  "seconds_reused": a.cache.seconds_reused},
        "slices": _slice_info(slices, cases), "ellipse": ellipse, "noise": noise, "gaussian": gauss,
        "tables": tables, "nps": nps_info,
        "notes": notes_in + notes + [f"{m.name}: {m.note}" for m in methods if m.note]
                 + ([] if a.scans or a.simulated else PYDICOM_CAVEATS) + CAVEATS,
    }  # fmt: skip
    save_outputs(result, raw, spectra, cases, a)
    print(f"wrote {a.results.with_suffix('.md')} in {result['runtime_s'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
