"""Test-time flips for a detector: mean FROC sensitivity with and without, paired, on simulated sets.

For each dataset and image type (full dose, low dose, low dose denoised by the shipped denoiser) the detector's
weights run without ``flip_test`` and with it (four views averaged, ``models.detector.LesionDetector``); mean FROC
sensitivity (0.5-8 FP/slice, IoU >= 0.5) with 95% BCa intervals resampling slices, and the paired difference.
Simulated data only: the rule is `benchmarks/results/detector_flips_prereg.md`.

    PYTHONPATH=. python benchmarks/detector_flips.py --set power=data/rand-power-909,data/rand-power-910 \
        --set rand-val=data/rand-val --set test25=data/test25 --results benchmarks/results/detector_flips
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from napari_lidnet.inference import denoise
from napari_lidnet.metrics.bootstrap import froc_ci, froc_difference
from napari_lidnet.models.detector import with_flip_test
from napari_lidnet.models.registry import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_io import froc_of, interval, parse_run_args, pooled, write_results  # noqa: E402


def compare(name: str, folders: list[str], detectors: dict, denoiser, n_boot: int) -> tuple[list[str], dict]:
    """Table rows and raw intervals of one dataset: each image type, each detector, and with - without."""
    samples, gts = pooled(folders)
    low = [s.low_hu for s in samples]
    images = {"full dose": [s.full_hu for s in samples], "low dose": low,
              "denoised": [denoise(denoiser, x) for x in low]}  # fmt: skip
    rows, raw = [], {}
    for kind, imgs in images.items():
        cases = {k: froc_of(d, imgs, gts) for k, d in detectors.items()}
        res = {k: froc_ci(c, n_boot=n_boot).as_dict() for k, c in cases.items()}
        res["difference"] = froc_difference(cases["flips"], cases["as is"], n_boot=n_boot).as_dict()
        raw[kind] = res
        rows.append(f"| {name} | {kind} | {interval(res['as is'])} | {interval(res['flips'])} | "
                    f"{interval(res['difference'], sign=True)} |")  # fmt: skip
    n_les = sum(len(g) for g in gts)
    return rows, {"slices": len(samples), "lesions": n_les, "folders": folders, **raw}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--set", action="append", required=True, help="NAME=folder[,folder...] (simulated datasets)")
    p.add_argument("--denoiser", default="default")
    a = parse_run_args(p)
    t0 = time.perf_counter()
    detector = load_model(a.detector, "detector")[0]
    detectors = {"as is": with_flip_test(detector, on=False), "flips": with_flip_test(detector)}
    denoiser = load_model(a.denoiser, "denoiser")[0]
    lines = ["| set | images | as is | four flips | flips - as is |", "|---|---|---|---|---|"]
    raw = {}
    for spec in a.set:
        name, folders = spec.split("=", 1)
        rows, raw[name] = compare(name, folders.split(","), detectors, denoiser, a.n_boot)
        lines += rows
    sizes = "; ".join(f"{n}: {r['slices']} slices, {r['lesions']} lesions" for n, r in raw.items())
    head = [f"# {__doc__.splitlines()[0]}", "", f"Detector `{a.detector}`, denoiser `{a.denoiser}`; {sizes}. Mean FROC "
            f"sensitivity, estimate [95% BCa interval, {a.n_boot} resamples of slices]; "
            f"{time.perf_counter() - t0:.0f} s.", ""]  # fmt: skip
    write_results(a.results, head + lines, raw)


if __name__ == "__main__":
    main()
