"""Make the shipped default weights from `lidnet train` runs, with their provenance in the cards.

The runs are the ones `benchmarks/reproduce_lidnet.py` trains (fastdn at 25% dose): the detector pretrained on
full-dose images, the denoiser pretrained on pixel loss, then LIDnet's collaborative rounds. This script copies
that run's best denoiser and detector into ``napari_lidnet/models/weights/`` as ``default_denoiser`` and
``default_detector``, adding the exact commands, the data seeds and the held-out test metrics to each card.

    PYTHONPATH=. python scripts/make_default_weights.py --runs bench-out/reproduce --test data/test25
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_lidnet._training.validate import evaluate_images, stack_samples
from napari_lidnet.inference import denoise
from napari_lidnet.io.dataset import read_dataset, read_info
from napari_lidnet.models.registry import shipped_model_dir
from napari_lidnet.models.weights import load_weights, save_weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="bench-out/reproduce")
    p.add_argument("--branch", default="fastdn-0.25-lidnet")
    p.add_argument("--test", default="data/test25")
    a = p.parse_args()
    runs = Path(a.runs)
    run = runs / a.branch
    branch_pre = a.branch.rsplit("-", 1)[0] + "-pretrain"  # e.g. fastdn-0.25-pretrain
    chain = ("/detector-pretrain", f"/{branch_pre}", f"/{a.branch}")
    log = runs.parent / "reproduce1.log"
    lines = log.read_text().splitlines() if log.exists() else []
    commands = [
        ln[2:] for ln in lines if ln.startswith("$ lidnet") and ln.split("--out ")[1].split()[0].endswith(chain)
    ]
    den, den_card = load_weights(run / "best_denoiser")
    det, det_card = load_weights(run / "best_detector")
    low, full, gt = stack_samples(read_dataset(a.test))
    metrics = {
        "test_data": {"path": a.test, **{k: read_info(a.test).get(k) for k in ("command", "seed", "dose", "n")}},
        "low_dose": evaluate_images(low, full, gt, det),
        "denoised": evaluate_images(denoise(den, low), full, gt, det),
    }
    train = den_card["training"]["config"]["data"]
    provenance = {
        "commands": [
            read_info(train).get("command"),
            *commands,
            f"python scripts/make_default_weights.py --runs {a.runs} --branch {a.branch} --test {a.test}",
        ],
        "train_data": train,
    }
    out = shipped_model_dir()
    for kind, model, card in (("denoiser", den, den_card), ("detector", det, det_card)):
        card = {**card, "name": f"default_{kind}", "metrics": {**card.get("metrics", {}), "test": metrics}}
        card["training"] = {**card["training"], **provenance}
        save_weights(model, out / f"default_{kind}", card)
        print(f"wrote {out / f'default_{kind}'}.safetensors")
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
