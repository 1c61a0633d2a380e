"""Make the shipped default weights from `lidnet train` runs, with their provenance in the cards.

Takes a trained denoiser and detector (weights stems), calibrates the detector's score threshold on the
lesion-free slices of a calibration dataset (``_training.calibrate``: simulated, never an evaluation scan), measures
both on a held-out test dataset, and writes ``default_denoiser`` / ``default_detector`` with the commands that made
them (from ``commands.log`` of `scripts/train_defaults.py`) into ``--out``: a new folder, or the package's weights
folder with ``--out shipped`` (the old pair is replaced only there, and only on request).

    PYTHONPATH=. python scripts/make_default_weights.py --denoiser runs/defaults/unet-2/best_denoiser \
        --detector runs/defaults/detector/best_detector --calibrate data/rand-val --test data/rand-test \
        --log runs/defaults/commands.log --out shipped

``--denoiser-only``: replace the denoiser alone; the detector's weights and threshold stay as they are, and its card
records the rates and sensitivities of that threshold on the calibration data with the new denoiser, and the new
test metrics. Several ``--calibrate`` sets (e.g. simulated and real lesion-free slices): the threshold must hold on
each. ``--detector-only``: recalibrate and write the detector alone, its training record kept and the log's and this
command appended; the denoiser stays as it is. When the run's chain of ``--init-*`` weights starts from the shipped
default and the trained model's card has no record of its own, that default's commands head the new card (unless
the log already carries them; log lines already in the record are not repeated). ``--flip-test``: the detector
averages four flipped views (``LesionDetector(flip_test=True)``), calibrated so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_lidnet._training.calibrate import DEFAULT_FP_PER_IMAGE, calibrate_detector
from napari_lidnet._training.validate import evaluate_denoiser, stack_samples
from napari_lidnet.io.dataset import read_dataset, read_info
from napari_lidnet.models.detector import with_flip_test
from napari_lidnet.models.registry import shipped_model_dir
from napari_lidnet.models.weights import load_weights, read_card, save_weights

#: first line of a log that already carries the init weights' record
INIT_HEADER = "# the init weights' record"


def _test_metrics(den, det, test: str) -> dict:
    stacked = stack_samples(read_dataset(test))
    info = read_info(test)
    return {
        "test_data": {"path": test, **{k: info.get(k) for k in ("command", "seed", "dose", "n")}},
        "low_dose": evaluate_denoiser(None, det, stacked),
        "denoised": evaluate_denoiser(den, det, stacked),
    }


def init_history(card: dict, kind: str) -> list[str]:
    """The shipped ``default_<kind>``'s commands when the chain of ``init_<kind>`` weights behind ``card`` starts
    from "default" (each run's init read from its card), under a header line; empty when it starts elsewhere or a
    link has no card. "default" is read as what is shipped now: make the weights before shipping anything else."""
    config = card.get("training", {}).get("config", {})
    for _ in range(64):
        init = config.get(f"init_{kind}")
        if init == "default":
            shipped = read_card(shipped_model_dir() / f"default_{kind}")
            return [f"{INIT_HEADER} (the default {kind} shipped before), then this chain:",
                    *shipped.get("training", {}).get("commands", [])]  # fmt: skip
        if not init:
            return []
        try:
            config = read_card(init).get("training", {}).get("config", {})
        except (OSError, ValueError):
            return []
    return []


def calibrate_sets(det, den, sets: list[str], fp_per_image: float, kept: float | None) -> dict:
    """The threshold (``kept``, or the lowest at which every calibration set carries at most ``fp_per_image`` boxes
    per lesion-free slice; folders joined by '+' are pooled into one set) and its rates on each set."""
    samples = [[x for d in s.split("+") for x in read_dataset(d)] for s in sets]
    record = calibrate_detector(det, samples[0], den, fp_per_image, threshold=kept, also=samples[1:])
    record["data"] = {"path": sets[0], "command": read_info(sets[0].split("+")[0]).get("command")}
    if "sets" in record:
        record["sets"] = dict(zip(sets, record["sets"], strict=True))
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--denoiser", required=True, help="weights stem of the trained denoiser")
    p.add_argument("--detector", required=True, help="weights stem of the trained detector")
    p.add_argument(
        "--calibrate",
        required=True,
        nargs="+",
        help="datasets with lesion-free slices for the threshold (A+B pools two folders into one set)",
    )
    p.add_argument("--fp-per-image", type=float, default=DEFAULT_FP_PER_IMAGE)
    p.add_argument("--test", required=True, help="held-out dataset for the card's metrics")
    p.add_argument("--log", default=None, help="commands.log of scripts/train_defaults.py")
    p.add_argument("--note", default="", help="a sentence for the cards (e.g. how long, on what)")
    p.add_argument("--out", required=True, help="new folder, or 'shipped' for the package's weights folder")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--denoiser-only", action="store_true", help="write the denoiser; keep the detector as it is")
    only.add_argument("--detector-only", action="store_true", help="write the detector; keep the denoiser as it is")
    p.add_argument("--flip-test", action="store_true", help="the detector averages four flipped views")
    a = p.parse_args()
    out = shipped_model_dir() if a.out == "shipped" else Path(a.out)
    if a.out != "shipped" and out.exists() and any(out.iterdir()):
        raise SystemExit(f"make_default_weights: {out} is not empty; outputs never overwrite: choose a new folder")
    den, den_card = load_weights(a.denoiser)
    det, det_card = load_weights(a.detector)
    if a.flip_test:
        det = with_flip_test(det)
        det_card = {**det_card, "config": det.config}
    kept = det_card.get("calibration", {}).get("threshold") if a.denoiser_only else None
    calibration = calibrate_sets(det, den, a.calibrate, a.fp_per_image, kept)
    if kept is not None:
        calibration["kept"] = "threshold kept from the card's calibration; rates and sensitivities with this denoiser"
    metrics = _test_metrics(den, det, a.test)
    logged = Path(a.log).read_text().splitlines() if a.log else []
    options = [f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(v) if isinstance(v, list) else v}")
               for k, v in vars(a).items() if v not in (None, "", False)]  # fmt: skip
    this = " ".join(["python scripts/make_default_weights.py", *options])
    # the denoiser's record needs its training data's command; a detector alone does not (its data may be gone)
    commands = []
    if not a.detector_only:
        data_command = read_info(den_card["training"]["config"]["data"]).get("command")
        known = data_command is not None and any(line.startswith(data_command) for line in logged)
        inherited = [] if any(line.startswith(INIT_HEADER) for line in logged) else init_history(den_card, "denoiser")
        commands = [*inherited, *([] if known else [data_command]), *logged, this]  # the log may record it already
    kinds = (("denoiser", den, den_card),) if not a.detector_only else ()
    for kind, model, card in (*kinds, ("detector", det, det_card)):
        card = {**card, "name": f"default_{kind}", "metrics": {**card.get("metrics", {}), "test": metrics}}
        if a.detector_only:  # its own record goes on (or the shipped one it was trained from)
            history = card.get("training", {}).get("commands", []) or init_history(card, "detector")
            new = [line for line in logged if not any(h.startswith(line) for h in history)]
            card["training"] = {**card.get("training", {}), "commands": [*history, *new, this], "note": a.note}
        elif not (a.denoiser_only and kind == "detector"):  # a kept detector keeps its own training record
            card["training"] = {**card.get("training", {}), "commands": commands, "note": a.note}
        if kind == "detector":
            card["calibration"] = calibration
        save_weights(model, out / f"default_{kind}", card)
        print(f"wrote {out / f'default_{kind}'}.safetensors")
    print(json.dumps({"calibration": calibration, "test": metrics}, indent=1))


if __name__ == "__main__":
    main()
