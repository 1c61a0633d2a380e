"""One score threshold for the image as given and for the denoised image, or one each? Validation slices only.

The Denoise dock detects on the denoised image; ``lidnet detect`` on the image as given. On real scans the
denoised image draws several times the boxes at the one calibrated threshold (e.g. 23 against 6 on a real
chest). Would a threshold of its own for denoised images, set so that they carry no more false boxes per
lesion-free slice than the images as given (in every calibration set), be the better default? This measures, per
image type (full dose, low dose, low dose denoised by the shipped denoiser), the false boxes per lesion-free slice
and the sensitivity (IoU >= 0.5) at the shipped threshold and at that "equal rate" threshold, with 95% bootstrap
intervals over slices. Validation and calibration sets only (never pydicom's or pyradiomics' judge files).

    PYTHONPATH=. python benchmarks/threshold_by_image.py --threads 2 --results benchmarks/results/threshold_by_image
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_lidnet._training.validate import by_size, detect_rows
from napari_lidnet.inference import denoise
from napari_lidnet.metrics.bootstrap import case_bootstrap
from napari_lidnet.metrics.froc import detections_per_slice, fp_rate_at, match_detections, threshold_at_fp_rate
from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import default_threshold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import interval, parse_run_args, pooled, write_results  # noqa: E402

CALIBRATION = {"simulation (rand-val)": ["data/rand-val"],
               "real (val-512+small+zoom)": ["data/real/val-512", "data/real/val-small", "data/real/val-zoom"]}
LESIONS = {"real soft tissue": ["data/real/val-512-les", "data/real/val-small-les", "data/real/val-zoom-les"],
           "real lung nodules": ["data/real/val-lung-les"], "real masses": ["data/real/val-mass-les"],
           "simulation": ["data/rand-val", "data/test25"]}  # fmt: skip


def detections(folders: list[str], detector, denoiser) -> tuple[list[np.ndarray], dict[str, list]]:
    """Lesion boxes per slice and, per image type, (boxes, scores) per slice from score 0.01."""
    samples, gts = pooled(folders)
    low = [s.low_hu for s in samples]
    images = {"full dose": [s.full_hu for s in samples], "low dose": low,
              "denoised": by_size(low, lambda x: denoise(denoiser, x))}  # fmt: skip
    mm = [s.spacing_mm for s in samples]
    return gts, {k: detections_per_slice(detect_rows(detector, v, "cpu", mm), len(v)) for k, v in images.items()}


def fp_interval(found: list, gts: list, threshold: float, n_boot: int) -> dict:
    """False boxes per lesion-free slice at ``threshold``, with its interval over slices."""
    counts = np.array([float((sc >= threshold).sum()) for (_, sc), g in zip(found, gts) if len(g) == 0])
    return case_bootstrap(lambda c: (c @ counts) / c.sum(axis=1), len(counts), n_boot=n_boot,
                          method="percentile").as_dict()  # fmt: skip


def sensitivity_interval(found: list, gts: list, threshold: float, n_boot: int) -> dict:
    """Lesions hit at ``threshold`` over all lesions, with its interval over the slices with lesions."""
    hits, n = [], []
    for (boxes, sc), g in zip(found, gts):
        if len(g):
            keep = sc >= threshold
            hits.append(float(match_detections(boxes[keep], sc[keep], g).sum()))
            n.append(float(len(g)))
    h, m = np.array(hits), np.array(n)
    return case_bootstrap(lambda c: (c @ h) / (c @ m), len(h), n_boot=n_boot, method="percentile").as_dict()


def equal_rate_threshold(calibration: dict[str, tuple], shipped: float) -> tuple[float, dict]:
    """The lowest threshold at which, in every calibration set, denoised lesion-free slices carry no more boxes
    per slice than the images as given (full and low dose pooled) at the shipped threshold."""
    own = {}
    for name, (gts, found) in calibration.items():
        neg = [i for i, g in enumerate(gts) if len(g) == 0]
        given = fp_rate_at([found[k][i][1] for k in ("full dose", "low dose") for i in neg], shipped)
        own[name] = threshold_at_fp_rate([found["denoised"][i][1] for i in neg], given)
    return max(own.values()), own


def main() -> None:
    a = parse_run_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    t0 = time.time()
    detector, card = load_model(a.detector, kind="detector")
    denoiser, _ = load_model("default", kind="denoiser")
    shipped = default_threshold(card)
    calibration = {k: detections(v, detector, denoiser) for k, v in CALIBRATION.items()}
    lesions = {k: detections(v, detector, denoiser) for k, v in LESIONS.items()}
    equal, own = equal_rate_threshold(calibration, shipped)
    lines = [f"# {__doc__.splitlines()[0]}", "", f"Command: `PYTHONPATH=. python benchmarks/threshold_by_image.py "
             f"--threads {a.threads} --results {a.results}`; detector `{a.detector}` (shipped threshold "
             f"{shipped:.3f}), the shipped denoiser; 95% percentile bootstrap over slices ({a.n_boot}).", "",
             f"Equal-rate threshold for denoised images: **{equal:.3f}** (by set: "
             + ", ".join(f"{k} {v:.3f}" for k, v in own.items()) + ").", "",
             "| set | image | false boxes per lesion-free slice at the shipped threshold | at the equal-rate "
             "threshold (denoised row) |", "|---|---|---|---|"]  # fmt: skip
    raw: dict = {"shipped": shipped, "equal_rate": equal, "own": own, "fp": {}, "sensitivity": {}}
    for name, (gts, found) in calibration.items():
        for kind, f in found.items():
            at = fp_interval(f, gts, shipped, a.n_boot)
            eq = fp_interval(f, gts, equal, a.n_boot) if kind == "denoised" else None
            raw["fp"][f"{name} / {kind}"] = {"shipped": at, "equal_rate": eq}
            lines.append(f"| {name} | {kind} | {interval(at)} | {interval(eq) if eq else '-'} |")
    lines += ["", "| lesions | image | sensitivity at the shipped threshold | at the equal-rate threshold (denoised "
              "row) |", "|---|---|---|---|"]  # fmt: skip
    for name, (gts, found) in lesions.items():
        for kind, f in found.items():
            at = sensitivity_interval(f, gts, shipped, a.n_boot)
            eq = sensitivity_interval(f, gts, equal, a.n_boot) if kind == "denoised" else None
            raw["sensitivity"][f"{name} / {kind}"] = {"shipped": at, "equal_rate": eq}
            lines.append(f"| {name} ({sum(len(g) for g in gts)} lesions) | {kind} | {interval(at)} | "
                         f"{interval(eq) if eq else '-'} |")  # fmt: skip
    lines += ["", f"{(time.time() - t0) / 60:.1f} min."]
    write_results(a.results, lines, raw)


if __name__ == "__main__":
    main()
