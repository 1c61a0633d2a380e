"""Compare candidate weights on simulated validation datasets: how each chunk of the defaults was kept or dropped.

Denoisers: PSNR, SSIM and detection (with a fixed reference detector) of their outputs on each dataset's low-dose
slices. Detectors: mean FROC sensitivity on the full-dose, low-dose and denoised (fixed reference denoiser) slices.
Never point it at the real evaluation slices: they judge the shipped models, they do not choose them.

    PYTHONPATH=. python scripts/compare_candidates.py denoiser runs/defaults/unet-4/best_denoiser \
        runs/defaults/unet-5/best_denoiser --data data/rand-val-ins data/rand-val
"""

from __future__ import annotations

import argparse
import json

import torch

from napari_lidnet._training.validate import evaluate_denoiser, evaluate_images, stack_samples
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.models.detector import with_flip_test
from napari_lidnet.models.registry import load_model


def compare(
    kind: str, candidates: list[str], datasets: list[str], reference: str = "default", flip_test: bool = False
) -> list[dict]:
    """One row per (dataset, candidate): the candidate's metrics, the other network being ``reference`` (a name,
    "default" or a weights path). ``flip_test``: candidate detectors average four flipped views, as shipped."""
    ref = load_model(reference, "detector" if kind == "denoiser" else "denoiser")[0]
    models = {name: load_model(name, kind)[0] for name in candidates}
    if flip_test and kind == "detector":
        models = {name: with_flip_test(m) for name, m in models.items()}
    rows = []
    for path in datasets:
        stacked = stack_samples(read_dataset(path))
        for name, model in models.items():
            if kind == "denoiser":
                metrics = evaluate_denoiser(model, ref, stacked)
            else:
                low, full, boxes = stacked
                metrics = {
                    "full": evaluate_images(full, full, boxes, model)["sensitivity"],
                    "low": evaluate_denoiser(None, model, stacked)["sensitivity"],
                    "denoised": evaluate_denoiser(ref, model, stacked)["sensitivity"],
                }
            rows.append({"data": path, "candidate": name, **{k: round(float(v), 4) for k, v in metrics.items()}})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("kind", choices=("denoiser", "detector"))
    p.add_argument("candidates", nargs="+", help="weights stems")
    p.add_argument("--data", nargs="+", required=True, help="validation datasets (never the evaluation scans)")
    p.add_argument("--reference", default="default", help="the other network (default: the shipped one)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--flip-test", action="store_true", help="candidate detectors average four flipped views")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    for row in compare(a.kind, a.candidates, a.data, a.reference, a.flip_test):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
