"""Is the product's remaining gap to BM3D (told the SD) the blend's spectral shape or the network's blind output?

Diagnostic only (validation slices, nothing tuned). Reuses the benchmark's slices, seeds and cache
(``told_sd_estimators.validation_slices`` with --every 4 --n-sim 12 --seed0 9700; seeds 7000 + 10k + 2m + j;
noise and BM3D from bench-out/told_sd/cache, read only: a miss is computed and stored under ``--out``/cache).

Per case (slice x noise model x dose), with d = blind output, r = low - d, E = ref - d:
  P        product told the SD: denoise(net, low, batch_size=1, remove_sd=sd)
  scal     best scalar blend d + w r, w on a grid of 0.005 in [0, 1] then 0.0005 around the best (oracle, by PSNR)
  orW      oracle radial spectral blend, W per radial bin by least squares over the whole slice (Parseval, closed
           form per bin), clipped to [0, 1]
  orM      the same, W fitted by bounded least squares (scipy lsq_linear, 0 <= W <= 1) only on the pixels whose
           reference lies in the PSNR window (-160..240 HU), closer to what PSNR scores
  white    non-oracle: S_r(b) = mean over bin b of |FFT(r * body)|^2 / N; told noise white with variance sd^2 on
           the body -> S_n = sd^2 * N_body / N in every bin; W = clip(1 - S_n / S_r, 0, 1)
  nps      semi-oracle: as white, S_n(b) from the true inserted noise's spectrum (|FFT(n * body)|^2 / N per bin):
           told the noise's shape as well as its SD (what bm3d's sigma_psd could be told)
  bm3d     BM3D told the SD (cache key ("bm3d-told", low, sd), real_anatomy.bm3d_on_body)
  sureW    SURE per radial bin, the told noise white (rule and outcome: results/spectral_sure_prereg.md)
  sureF    the same with the input's own noise texture (radial NPS of its flattest 16 px blocks)
Radial bins: 20 bins of 0.025 cycles/px on 0..0.5 plus the corners (> 0.5) as a 21st.

    PYTHONPATH=. python benchmarks/spectral_blend.py --n-sim 12 [--results benchmarks/results/spectral_blend]

A diagnostic; results and reading in
``benchmarks/results/spectral_blend.md``; it led to ``benchmarks/results/noise_grain_prereg.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import lsq_linear

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_anatomy import DiskCache, bm3d_on_body, inserted_noise, tissue_masks  # noqa: E402
from real_val_bm3d import scan_group  # noqa: E402
from told_sd_estimators import DOSES, MODELS, validation_slices  # noqa: E402

from napari_lidnet.inference import denoise  # noqa: E402
from napari_lidnet.metrics.bootstrap import mean_ci  # noqa: E402
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr, ssim  # noqa: E402
from napari_lidnet.metrics.noreference import body_mask, detrend_plane, flat_blocks  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402

OUT = Path("bench-out/spectral_blend")  # cache spill, nps.json and results.json (--out)
NBIN = 21
ERR_EDGES = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # coarse bins (cycles/px) of the error spectra
ROWS = ("bm3d", "blind", "P", "scal", "orW", "orM", "white", "nps", "sureW", "sureF")
SSIM_ROWS = ("bm3d", "P", "sureW", "sureF")
_NET: list[torch.nn.Module] = []


class ReadOnlyCache(DiskCache):
    """The benchmark's cache read as is; a miss is computed (timed) and stored in a second folder, never the first."""

    def __init__(self, main: Path, spill: Path) -> None:
        super().__init__(spill)
        self.main = main
        self.missed: list[tuple[str, float]] = []

    def get(self, parts: tuple, compute):  # type: ignore[override]
        path = self.main / f"{self.key(*parts)}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["a"], float(z["seconds"])
        arr, sec = super().get(parts, compute)
        if self.computed:
            self.missed.append((str(parts[0]), sec))
            self.computed = 0
        return arr, sec


def radial_bins(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per FFT coefficient, radial frequency in cycles/px)."""
    fy, fx = np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1])
    rho = np.hypot(fy[:, None], fx[None, :])
    return np.minimum((rho / 0.025).astype(int), NBIN - 1), rho


def bin_mean(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.bincount(idx.ravel(), values.ravel(), NBIN) / np.maximum(np.bincount(idx.ravel(), None, NBIN), 1)


def radial_error(out: np.ndarray, ref: np.ndarray, rho: np.ndarray) -> list[float]:
    """MSE contributions (HU^2, summing to the windowed MSE of PSNR) per coarse radial band of the windowed error."""
    lo, hi = METRIC_WINDOW
    e = np.clip(out, lo, hi).astype(np.float64) - np.clip(ref, lo, hi)
    p = np.abs(np.fft.fft2(e)) ** 2 / e.size**2
    band = np.digitize(rho, ERR_EDGES) - 1
    return [float(p[band == b].sum()) for b in range(len(ERR_EDGES) - 1)]


def best_scalar(low: np.ndarray, d: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    r = low - d
    grid = np.linspace(0, 1, 201)
    s = [psnr(d + np.float32(w) * r, ref) for w in grid]
    w0 = grid[int(np.argmax(s))]
    fine = np.clip(w0 + np.linspace(-0.005, 0.005, 21), 0, 1)
    s2 = [psnr(d + np.float32(w) * r, ref) for w in fine]
    k = int(np.argmax(s2))
    return float(fine[k]), float(s2[k])


def spectral_rows(low, d, ref, body, sd, noise) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    """The spectral blends (outputs) and their weights per radial bin."""
    r = (low - d).astype(np.float64)
    idx, _ = radial_bins(r.shape)
    R = np.fft.fft2(r)
    E = np.fft.fft2(ref.astype(np.float64) - d)
    num = np.bincount(idx.ravel(), (E * np.conj(R)).real.ravel(), NBIN)
    den = np.bincount(idx.ravel(), (np.abs(R) ** 2).ravel(), NBIN)
    W = {"orW": np.clip(num / np.maximum(den, 1e-12), 0, 1)}
    # windowed bounded least squares on the band images
    bands = np.stack([np.fft.ifft2(R * (idx == b)).real for b in range(NBIN)], axis=-1)
    lo, hi = METRIC_WINDOW
    m = (ref >= lo) & (ref <= hi)
    fit = lsq_linear(bands[m], (ref.astype(np.float64) - d)[m], bounds=(0.0, 1.0), method="bvls")
    W["orM"] = fit.x
    n_pix, n_body = r.size, int(body.sum())
    s_r = bin_mean(np.abs(np.fft.fft2(r * body)) ** 2 / n_pix, idx)
    W["white"] = np.clip(1 - (sd**2 * n_body / n_pix) / np.maximum(s_r, 1e-12), 0, 1)
    s_n = bin_mean(np.abs(np.fft.fft2(noise.astype(np.float64) * body)) ** 2 / n_pix, idx)
    W["nps"] = np.clip(1 - s_n / np.maximum(s_r, 1e-12), 0, 1)
    outs = {}
    for k, w in W.items():
        outs[k] = (d + (bands @ w if k == "orM" else np.fft.ifft2(R * w[idx]).real)).astype(np.float32)
    weights = {k: [float(x) for x in w] for k, w in W.items()}
    weights.update({"s_r": [float(x) for x in s_r], "s_white": [float(sd**2 * n_body / n_pix)] * NBIN,
                    "s_n": [float(x) for x in s_n]})
    return outs, weights


# ---------------------------------------------------------------- SURE per radial bin (spectral_sure_prereg.md)
def noise_texture(low: np.ndarray) -> np.ndarray:
    """The input's noise power spectrum shape on the slice's FFT grid, mean 1: the radial NPS of its flattest
    soft-tissue blocks (16 px, plane removed) per distinct radius, interpolated in radius (held
    at the ends); flat (white) when the slice has fewer than 8 such blocks."""
    lo = np.asarray(low, np.float64)
    _, rho = radial_bins(lo.shape)
    blocks = flat_blocks(lo, block=16)
    if len(blocks) < 8:
        return np.ones(lo.shape)
    p = (np.abs(np.fft.fft2(detrend_plane(blocks))) ** 2).mean(axis=0)
    f = np.fft.fftfreq(16)
    r = np.round(np.hypot(f[:, None], f[None, :]), 9).ravel()
    radii, inv = np.unique(r, return_inverse=True)
    prof = np.bincount(inv, p.ravel()) / np.bincount(inv)
    keep = radii > 0
    shape = np.interp(rho, radii[keep], prof[keep])
    return shape / shape.mean() if shape.mean() > 0 else np.ones(lo.shape)


def sure_band_blend(
    low: np.ndarray,
    denoised: np.ndarray,
    remove_sd: float,
    denoise_fn: Callable[[np.ndarray], np.ndarray],
    texture: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """``denoised`` with a share ``W_b`` of the residual put back per radial frequency bin, each ``W_b`` minimising
    Stein's unbiased estimate of the MSE to the image without ``remove_sd`` HU of noise of the given ``texture``
    (NPS shape, mean 1; None: white): ``1 - W_b = (T_b - D_b) / R_b`` with R_b the residual's power in the bin,
    T_b the told noise's, D_b = tr(P_b Sigma J) of the network (``denoise_fn``, one probe at ``0.1`` of a noise
    draw); all three over the body. One 2D slice."""
    lo = np.asarray(low, np.float64)
    de = np.asarray(denoised, np.float64)
    idx, _ = radial_bins(lo.shape)
    body = body_mask(de)
    if remove_sd <= 0 or not body.any():
        return np.asarray(low if remove_sd <= 0 else denoised, np.float32)
    shape = np.ones(lo.shape) if texture is None else np.asarray(texture, np.float64)
    g = np.random.default_rng(seed).standard_normal(lo.shape)
    n = np.fft.ifft2(np.fft.fft2(g) * np.sqrt(shape)).real
    n *= remove_sd / max(float(n[body].std()), 1e-12)
    probe = np.asarray(denoise_fn((lo + 0.1 * n).astype(np.float32)), np.float64)
    bins = lambda v: np.bincount(idx.ravel(), v.ravel(), NBIN) / lo.size  # noqa: E731
    nf = np.fft.fft2(n * body)
    rf = np.fft.fft2((lo - de) * body)
    t = bins(np.abs(nf) ** 2)
    d = bins((np.conj(nf) * np.fft.fft2((probe - de) * body)).real) / 0.1
    r = bins(np.abs(rf) ** 2)
    w = np.clip(1 - (t - d) / np.maximum(r, 1e-12), 0.0, 1.0)
    return (de + np.fft.ifft2(np.fft.fft2(lo - de) * w[idx]).real).astype(np.float32)


def one_slice(job: tuple[int, dict, str]) -> list[dict]:
    k, sl, cache_dir = job
    torch.set_num_threads(1)
    if not _NET:
        _NET.append(load_model("default", "denoiser")[0])
    net = _NET[0]
    cache = ReadOnlyCache(Path(cache_dir), OUT / "cache")
    ref, body = sl["hu"], tissue_masks(sl["hu"])[0]
    _, rho = radial_bins(ref.shape)
    recs = []
    for m, model in enumerate(MODELS):
        for j, dose in enumerate(DOSES):
            t0 = time.time()
            seed = 7000 + 10 * k + 2 * m + j
            noise = inserted_noise(ref, sl["pixel_mm"], model, dose, seed, cache)
            low = (ref + noise).astype(np.float32)
            sd = float(np.std((low - ref)[body]))
            n_miss = len(cache.missed)
            bm3d = cache.get(("bm3d-told", low, sd), lambda low=low, sd=sd: bm3d_on_body(low, body, sd))[0]
            bm3d_missed = cache.missed[n_miss:]
            d = np.asarray(denoise(net, low, batch_size=1))
            P = np.asarray(denoise(net, low, batch_size=1, remove_sd=sd))
            w_scal, p_scal = best_scalar(low, d, ref)
            outs, weights = spectral_rows(low, d, ref, body, sd, noise)
            r = (low - d).astype(np.float64)
            w_prod = float(((P - d) * r).sum() / (r * r).sum())
            fn = lambda a: np.asarray(denoise(net, a, batch_size=1))  # noqa: E731
            outs["sureW"] = sure_band_blend(low, d, sd, fn, None, seed)
            outs["sureF"] = sure_band_blend(low, d, sd, fn, noise_texture(low), seed)
            imgs = {"bm3d": bm3d, "blind": d, "P": P, **outs}
            rec = {"k": k, "set": sl["set"], "slice": sl["name"], "group": scan_group(sl["name"]),
                   "pixel_mm": float(sl["pixel_mm"]), "model": model, "dose": dose, "sd": sd,
                   "w_scal": w_scal, "w_prod": w_prod, "psnr_scal": p_scal, "weights": weights,
                   "bm3d_computed_s": [s for _, s in bm3d_missed], "misses": list(cache.missed)}
            for row, img in imgs.items():
                rec[f"psnr_{row}"] = psnr(img, ref)
            for row in SSIM_ROWS:
                rec[f"ssim_{row}"] = ssim(imgs[row], ref)
            rec["err_bands"] = {row: radial_error(imgs[row], ref, rho)
                                for row in ("bm3d", "blind", "P", "orM", "white")}
            rec["err_bands"]["scal"] = radial_error(d + np.float32(w_scal) * (low - d), ref, rho)
            rec["seconds"] = time.time() - t0
            recs.append(rec)
    print(f"  [{k}] {sl['name']}: " + ", ".join(
        f"{r['model']} {r['dose']}: P {r['psnr_P'] - r['psnr_bm3d']:+.2f} orM {r['psnr_orM'] - r['psnr_bm3d']:+.2f} "
        f"sureF {r['psnr_sureF'] - r['psnr_bm3d']:+.2f}" for r in recs) + f" ({sum(r['seconds'] for r in recs):.0f} s)",
        flush=True)
    return recs


# ---------------------------------------------------------------- noise texture (NPS) of a few slices
def nps_shape(blocks: np.ndarray) -> tuple[np.ndarray, float]:
    """Radial NPS (share of the variance per radial bin, 0.05 cycles/px wide, last bin = corners) of plane-
    detrended blocks, and the variance."""
    b = detrend_plane(blocks)
    p = (np.abs(np.fft.fft2(b)) ** 2).mean(axis=0) / b.shape[-1] ** 2
    fy = np.fft.fftfreq(b.shape[-1])
    rho = np.hypot(fy[:, None], fy[None, :])
    idx = np.minimum((rho / 0.05).astype(int), 10)
    tot = np.bincount(idx.ravel(), p.ravel(), 11)
    centroid = float((p * rho).sum() / p.sum())
    return tot / tot.sum(), centroid


def nps_report(slices: list[tuple[int, dict]], cache_dir: str) -> list[dict]:
    cache = ReadOnlyCache(Path(cache_dir), OUT / "cache")
    hp = lambda a: a - ndimage.gaussian_filter(a.astype(np.float64), 2.0)  # noqa: E731
    out = []
    for k, sl in slices:
        ref = sl["hu"].astype(np.float64)
        rec = {"slice": sl["name"], "pixel_mm": float(sl["pixel_mm"])}
        # the same flat soft-tissue blocks (32 px, chosen on the reference) for every signal
        own = flat_blocks(ref, block=32, fraction=0.3)
        own_hp = flat_blocks(ref, block=32, fraction=0.3, values=hp(ref))
        rec["n_blocks"] = len(own)
        sig = {"own (ref, plane-detrended)": own, "own hp: ref - G2(ref)": own_hp}
        for m, model in enumerate(MODELS):
            n = inserted_noise(sl["hu"], sl["pixel_mm"], model, 0.25, 7000 + 10 * k + 2 * m, cache).astype(np.float64)
            sig[f"{model} 25%"] = flat_blocks(ref, block=32, fraction=0.3, values=n)
            sig[f"{model} 25% hp"] = flat_blocks(ref, block=32, fraction=0.3, values=hp(n))
        for name, blocks in sig.items():
            shape, cen = nps_shape(blocks)
            rec[name] = {"shape": [float(x) for x in shape], "centroid_cyc_px": cen,
                         "centroid_cyc_mm": cen / float(sl["pixel_mm"]),
                         "sd": float(np.sqrt(np.mean(detrend_plane(blocks) ** 2)))}
        out.append(rec)
    return out


# ---------------------------------------------------------------- summaries
def ci_diff(sel: list[dict], row: str) -> tuple[float, float, float]:
    diffs = np.array([r[f"psnr_{row}"] - r["psnr_bm3d"] for r in sel])
    if len(diffs) < 2:
        return float(diffs.mean()), float("nan"), float("nan")
    ci = mean_ci(diffs, n_boot=2000, seed=0).ci
    return float(diffs.mean()), float(ci[0]), float(ci[1])


def table(recs: list[dict]) -> list[str]:
    head = ("| group | dose | noise | n | BM3D | blind d | P | best scalar (w) | orW | orM | white | nps | "
            "P-BM3D | orM-BM3D [95% CI] | orW-BM3D [95% CI] | white-BM3D [95% CI] |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    groups: list[tuple[str, callable]] = [
        ("ALL val-zoom (0.4-0.8 mm)", lambda r: r["set"] == "real validation" and "0.4-0.8" in r["group"]),
        ("ALL real native", lambda r: r["set"] == "real validation" and "0.4-0.8" not in r["group"]),
        ("simulation", lambda r: r["set"] == "simulation")]
    for g in sorted({r["group"] for r in recs if r["set"] != "simulation"}, key=lambda s: ("0.4" not in s, s)):
        groups.append((g, lambda r, g=g: r["group"] == g))
    for name, f in groups:
        for dose in DOSES:
            for model in MODELS:
                sel = [r for r in recs if f(r) and r["dose"] == dose and r["model"] == model]
                if not sel:
                    continue
                mean = lambda key, sel=sel: float(np.mean([r[key] for r in sel]))  # noqa: E731
                cells = [f"{mean('psnr_' + x):.2f}" for x in ("bm3d", "blind", "P")]
                cells.append(f"{mean('psnr_scal'):.2f} ({mean('w_scal'):.2f})")
                cells += [f"{mean('psnr_' + x):.2f}" for x in ("orW", "orM", "white", "nps")]
                cells.append(f"{mean('psnr_P') - mean('psnr_bm3d'):+.2f}")
                for row in ("orM", "orW", "white"):
                    mu, lo, hi = ci_diff(sel, row)
                    cells.append(f"{mu:+.2f} [{lo:+.2f}, {hi:+.2f}]")
                lines.append(f"| {name} | {dose:g} | {model} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def weight_table(recs: list[dict]) -> list[str]:
    """Mean W per radial bin (every second bin shown) for the fine-pixel head and the native head."""
    show = list(range(0, NBIN, 2))
    lines = ["| group | noise, dose | row | " + " | ".join(f"{0.025 * b:.3f}" for b in show) + " |",
             "|" + "---|" * (3 + len(show))]
    for g in ("dicom2stl-head at 0.4-0.8 mm", "dicom2stl-head", "totalseg-chest at 0.4-0.8 mm", "totalseg-chest"):
        for model in MODELS:
            sel = [r for r in recs if r["group"] == g and r["model"] == model and r["dose"] == 0.25]
            if not sel:
                continue
            for row in ("orW", "orM", "white", "nps"):
                w = np.mean([r["weights"][row] for r in sel], axis=0)
                lines.append(f"| {g} | {model} 0.25 | W {row} | " + " | ".join(f"{w[b]:.2f}" for b in show) + " |")
            lines.append(f"| {g} | {model} 0.25 | scalar best / product | "
                         f"{np.mean([r['w_scal'] for r in sel]):.2f} / {np.mean([r['w_prod'] for r in sel]):.2f} |"
                         + " |" * (len(show) - 1))
            s = np.mean([np.array(r["weights"]["s_r"]) / r["weights"]["s_white"][0] for r in sel], axis=0)
            lines.append(f"| {g} | {model} 0.25 | S_r / S_white | " + " | ".join(f"{s[b]:.2f}" for b in show) + " |")
            s = np.mean([np.array(r["weights"]["s_n"]) / r["weights"]["s_white"][0] for r in sel], axis=0)
            lines.append(f"| {g} | {model} 0.25 | S_noise / S_white | " + " | ".join(f"{s[b]:.2f}" for b in show)
                         + " |")
    return lines


def err_table(recs: list[dict]) -> list[str]:
    bands = [f"{ERR_EDGES[i]:g}-{ERR_EDGES[i + 1]:g}" for i in range(len(ERR_EDGES) - 1)]
    lines = ["| group | noise, dose | row | " + " | ".join(bands) + " | total MSE |", "|" + "---|" * (4 + len(bands))]
    for g in ("dicom2stl-head at 0.4-0.8 mm", "dicom2stl-head", "ALL val-zoom", "ALL native"):
        for model in MODELS:
            for dose in (0.25,):
                if g == "ALL val-zoom":
                    f = lambda r: r["set"] == "real validation" and "0.4-0.8" in r["group"]  # noqa: E731
                elif g == "ALL native":
                    f = lambda r: r["set"] == "real validation" and "0.4-0.8" not in r["group"]  # noqa: E731
                else:
                    f = lambda r, g=g: r["group"] == g  # noqa: E731
                sel = [r for r in recs if f(r) and r["model"] == model and r["dose"] == dose]
                if not sel:
                    continue
                for row in ("bm3d", "blind", "P", "scal", "orM", "white"):
                    e = np.mean([r["err_bands"][row] for r in sel], axis=0)
                    lines.append(f"| {g} | {model} {dose:g} | {row} | " + " | ".join(f"{x:.2f}" for x in e)
                                 + f" | {e.sum():.2f} |")
    return lines


def nps_table(nps: list[dict]) -> list[str]:
    edges = [f"{0.05 * b:.2f}" for b in range(10)] + [">0.5"]
    lines = ["| slice (pixel) | signal | SD (HU) | centroid cyc/px (cyc/mm) | share of variance per radial bin, from "
             + " / ".join(edges) + " cycles/px |", "|---|---|---|---|---|"]
    for rec in nps:
        for name, v in rec.items():
            if not isinstance(v, dict):
                continue
            lines.append(f"| {rec['slice']} ({rec['pixel_mm']:.2f} mm, {rec['n_blocks']} blocks) | {name} | "
                         f"{v['sd']:.1f} | {v['centroid_cyc_px']:.3f} ({v['centroid_cyc_mm']:.3f}) | "
                         + " ".join(f"{x:.2f}" for x in v["shape"]) + " |")
    return lines


SETS = (("val-zoom", lambda r: r["set"] == "real validation" and "0.4-0.8" in r["group"]),
        ("real native", lambda r: r["set"] == "real validation" and "0.4-0.8" not in r["group"]),
        ("simulation", lambda r: r["set"] == "simulation"),
        ("head at 0.4-0.8 mm", lambda r: r["group"] == "dicom2stl-head at 0.4-0.8 mm"))


def cells_by_set(recs: list[dict]):
    """(set name, dose, noise model, the cases) for each cell of the paired tables that has cases."""
    for name, f in SETS:
        for dose in DOSES:
            for model in MODELS:
                sel = [r for r in recs if f(r) and r["dose"] == dose and r["model"] == model]
                if sel:
                    yield name, dose, model, sel


def paired_cell(sel: list[dict], row: str) -> str:
    """Mean PSNR of ``row`` minus P over the cases, with its 95% bootstrap interval over slices."""
    diffs = np.array([r[f"psnr_{row}"] - r["psnr_P"] for r in sel])
    lo, hi = mean_ci(diffs, n_boot=2000, seed=0).ci if len(sel) > 1 else (np.nan, np.nan)
    return f"{diffs.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"


def vs_product(recs: list[dict]) -> list[str]:
    """Each blend minus the product's told output P, paired by case, 95% bootstrap over slices."""
    rows = ("scal", "orM", "white", "nps", "bm3d")
    lines = ["| set | dose | noise | n | " + " | ".join(f"{r} - P [95% CI]" for r in rows) + " |",
             "|" + "---|" * (4 + len(rows))]
    for name, dose, model, sel in cells_by_set(recs):
        cells = [paired_cell(sel, row) for row in rows]
        lines.append(f"| {name} | {dose:g} | {model} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def sure_table(recs: list[dict]) -> list[str]:
    """The rule of ``spectral_sure_prereg.md``: each SURE row minus P (PSNR, SSIM), paired, per cell."""
    lines = ["| set | dose | noise | n | P-BM3D | sureW - P [95% CI] | sureF - P [95% CI] | SSIM P / BM3D | "
             "SSIM sureW - P | SSIM sureF - P |", "|" + "---|" * 10]
    for name, dose, model, sel in cells_by_set(recs):
        cells = [f"{np.mean([r['psnr_P'] - r['psnr_bm3d'] for r in sel]):+.2f}"]
        cells += [paired_cell(sel, row) for row in ("sureW", "sureF")]
        ssims = [np.mean([r[f"ssim_{x}"] for r in sel]) for x in ("P", "bm3d")]
        cells.append(f"{ssims[0]:.3f} / {ssims[1]:.3f}")
        cells += [f"{np.mean([r[f'ssim_{row}'] - r['ssim_P'] for r in sel]):+.4f}" for row in ("sureW", "sureF")]
        lines.append(f"| {name} | {dose:g} | {model} | {len(sel)} | " + " | ".join(cells) + " |")
    return lines


def render(recs: list[dict], nps: list[dict], minutes: float, argv: list[str]) -> list[str]:
    misses = [m for r in recs for m in r["misses"]]
    bm3d_s = [s for r in recs for s in r["bm3d_computed_s"]]
    return ["# Spectral vs scalar blend of the residual, against BM3D told the SD (validation slices)", "",
            f"Command: `PYTHONPATH=. python benchmarks/spectral_blend.py "
            f"{' '.join(argv)}`; {minutes:.1f} min wall on 2 CPU cores, 2 workers. Cache misses: "
            f"{len(misses)} ({len(bm3d_s)} BM3D computed, {sum(bm3d_s):.0f} s total). PSNR over -160..240 HU "
            "(napari_lidnet.metrics.image.psnr). Rows: see the script's docstring (orW: oracle W per radial bin, "
            "LS over the whole slice; orM: oracle, bounded LS on pixels with the reference in the window; white: "
            "W = clip(1 - S_white/S_r) with S_white = sd^2 N_body/N and S_r the radial mean of |FFT(r*body)|^2/N; "
            "nps: the same with the true inserted noise's spectrum). Differences to BM3D: mean over slices "
            "(one case per slice per row), 95% percentile bootstrap over slices (2000, seed 0).", "",
            *table(recs), "", "## SURE per radial bin (rule: spectral_sure_prereg.md), paired with P", "",
            *sure_table(recs), "", "## Each blend minus the product's told output P (paired, dB)", "",
            *vs_product(recs), "", "## Mean W per radial bin (cycles/px), 25% dose", "", *weight_table(recs), "",
            "## Windowed error power per radial band (cycles/px; HU^2, sums to the PSNR MSE), 25% dose", "",
            *err_table(recs), "", "## Noise texture: radial NPS in flat soft tissue (32 px blocks chosen on the "
            "reference, plane removed)", "", *nps_table(nps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/spectral_blend"), help="md stem")
    p.add_argument("--real", type=Path, default=Path("data/pypi-ct"))
    p.add_argument("--cache", type=Path, default=Path("bench-out/told_sd/cache"))
    p.add_argument("--n-sim", type=int, default=6, help="simulated slices used (of the benchmark's 12)")
    p.add_argument("--native-every", type=int, default=1, help="every n-th native real slice of the benchmark's")
    p.add_argument("--limit", type=int, default=0, help="debug: first n jobs only")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--from-json", type=Path, help="re-render results.md from an earlier results.json")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.from_json:
        js = json.loads(a.from_json.read_text())
        md = render(js["cases"], js["nps"], js["minutes"], js.get("argv", []))
        a.results.with_suffix(".md").write_text("\n".join(md) + "\n")
        print("\n".join(md))
        return
    t0 = time.time()
    slices = validation_slices(a.real, 4, 12, 9700)  # the benchmark's list: k fixes the seeds
    zoom = [(k, s) for k, s in enumerate(slices) if s["name"].startswith("val-zoom/")]
    native = [(k, s) for k, s in enumerate(slices)
              if s["set"] == "real validation" and not s["name"].startswith("val-zoom/")]
    sim = [(k, s) for k, s in enumerate(slices) if s["set"] == "simulation"][: a.n_sim]
    chosen = zoom + sim + native[:: a.native_every]
    if a.limit:
        chosen = chosen[: a.limit]
    print(f"{len(zoom)} zoom, {len(sim)} sim, {len(native[::a.native_every])} native slices; "
          f"slices loaded in {time.time() - t0:.0f} s", flush=True)
    heads = [(k, s) for k, s in zoom if "dicom2stl-head" in s["name"]][:2]
    heads += [(k, s) for k, s in native if "dicom2stl-head" in s["name"]][:2]
    nps = nps_report(heads, str(a.cache))
    (OUT / "nps.json").write_text(json.dumps(nps, indent=1))
    print("\n".join(nps_table(nps)), flush=True)
    jobs = [(k, s, str(a.cache)) for k, s in chosen]
    with get_context("spawn").Pool(a.workers) as pool:
        recs = [r for chunk in pool.imap_unordered(one_slice, jobs) for r in chunk]
    minutes = (time.time() - t0) / 60
    (OUT / "results.json").write_text(json.dumps({"minutes": minutes, "argv": sys.argv[1:], "cases": recs,
                                                  "nps": nps}, indent=1))
    md = render(recs, nps, minutes, sys.argv[1:])
    a.results.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
