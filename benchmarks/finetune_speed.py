"""Fine-tuning speed on the CPU: steps per second of a collaborative round, and the default one-click run.

    PYTHONPATH=. .venv/bin/python benchmarks/finetune_speed.py [--threads 2] [--steps 6] [--skip-one-click]

1. A LIDnet round (denoiser under the joint loss with the detector frozen, then the detector on denoised patches)
   on 256x256 patches, batch 4, default architectures: steps per second of each network's update and of the round.
2. The default one-click run of the fine-tuning widget on the sample data (``_sample_data.sample_abdomen``): the
   full-dose layer as the normal-dose input (25% dose simulated), the ground-truth Shapes layer as lesion boxes,
   ``ONE_CLICK_DEFAULTS``; wall time (must stay under 5 minutes) and validation PSNR before/after.

Starting models: the registry's defaults when there are any; else (no shipped weights yet) a denoiser and a detector
pretrained here on a *different* phantom (another seed), standing in for "a model trained elsewhere" (time printed
separately, not part of the one-click time). Everything is written under a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _sample_layers(n_slices: int, size: int) -> tuple:
    """(full-dose Image layer, ground-truth Shapes layer, low-dose HU) of the plugin's sample data (no viewer)."""
    from napari.layers import Image, Shapes

    from napari_lidnet._sample_data import FULL_NAME, LOW_NAME, sample_abdomen

    tuples = sample_abdomen(n_slices=n_slices, size=size)
    full = next(Image(d, **k) for d, k, t in tuples if k["name"] == FULL_NAME)
    low = next(d for d, k, t in tuples if k["name"] == LOW_NAME)
    shapes = next(Shapes(d, **k) for d, k, t in tuples if t == "shapes")
    return full, shapes, low


def pretrain_elsewhere(model_dir: Path, steps: int, patch: int) -> float:
    """Pretrain starting models on a different phantom (seed 7, 25% dose pair) and save them; returns seconds."""
    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.trainer import Trainer
    from napari_lidnet.io.dataset import Sample
    from napari_lidnet.models.weights import load_weights, save_weights
    from napari_lidnet.sim.lowdose import simulate_pair
    from napari_lidnet.sim.phantom import make_phantom

    t0 = time.perf_counter()
    samples = []
    for seed in (7, 8, 9, 10):
        ph = make_phantom(seed, "abdomen", size=256)
        full, low = simulate_pair(ph.hu, 0.25, ph.spacing_mm, seed=seed)
        samples.append(Sample(f"elsewhere{seed}", full, low, ph.boxes, ph.spacing_mm))
    out = Path(tempfile.mkdtemp(prefix="lidnet-pretrain-"))
    cfg = TrainConfig(
        out=str(out),
        mode="pixel",
        pretrain_denoiser_steps=steps,
        pretrain_detector_steps=steps,
        rounds=0,
        patch_size=patch,
        batch_size=4,
        val_fraction=0.0,
        device="cpu",
    )
    trainer = Trainer(cfg, samples)
    for _ in trainer.run():
        pass
    trainer._save("best", {})
    for kind in ("denoiser", "detector"):
        model, _ = load_weights(out / f"best_{kind}")
        save_weights(model, model_dir / f"elsewhere_{kind}", {"training": {"note": "benchmark starting model"}})
    return time.perf_counter() - t0


def round_speed(samples: list, model_dir: Path, steps: int, patch: int = 256, batch: int = 4) -> dict[str, float]:
    """Steps per second of the denoiser (joint loss) and detector updates of one collaborative round."""
    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.trainer import Trainer

    cfg = TrainConfig(
        out=tempfile.mkdtemp(prefix="lidnet-bench-"),
        init_denoiser=str(model_dir / "start_denoiser"),
        init_detector=str(model_dir / "start_detector"),
        rounds=1,
        denoiser_steps=steps + 1,
        detector_steps=steps + 1,
        batch_size=batch,
        patch_size=patch,
        val_fraction=0.0,
        device="cpu",
    )
    times: dict[str, list[float]] = {}
    t = time.perf_counter()
    for rec in Trainer(cfg, samples).run():
        now = time.perf_counter()
        if "stage_step" in rec and rec["stage_step"] > 1:  # the first step of a stage warms up
            times.setdefault(rec["stage"].split("-")[1], []).append(now - t)
        t = now
    den, det = sum(times["denoiser"]) / steps, sum(times["detector"]) / steps
    return {"denoiser_steps_per_s": 1 / den, "detector_steps_per_s": 1 / det, "round_steps_per_s": 2 / (den + det)}


def one_click(image: object, shapes: object, start: tuple[str, str]) -> tuple[float, object]:
    """The widget's default run (same job, same defaults) on the sample data; returns (seconds, outcome)."""
    from napari_lidnet._training import finetune as fj
    from napari_lidnet._widgets import layer_inputs as li

    t0 = time.perf_counter()
    inputs, problems = li.inputs_from_layers([image], shapes)
    assert not problems, problems
    name = "bench-" + time.strftime("%H%M%S")
    cfg = fj.one_click_config(fj.new_run_dir(name), init_denoiser=start[0], init_detector=start[1], device="cpu")
    req = fj.FinetuneRequest(name, cfg, inputs=inputs, dose=0.25, source="layers")
    job = fj.finetune_job(req)
    last_stage = None
    while True:
        try:
            rec = next(job)
        except StopIteration as stop:
            outcome = stop.value
            break
        if rec["stage"] != last_stage:
            print(f"  {time.perf_counter() - t0:6.1f} s  {rec['stage']}  {rec.get('message', '')}", flush=True)
            last_stage = rec["stage"]
    return time.perf_counter() - t0, outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per network for the round speed")
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--skip-one-click", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    home = Path(tempfile.mkdtemp(prefix="lidnet-finetune-bench-"))
    os.environ["NAPARI_LIDNET_MODEL_DIR"] = str(home / "models")
    from napari_lidnet.models.registry import default_model, load_model
    from napari_lidnet.models.weights import save_weights

    model_dir = home / "models"
    model_dir.mkdir(parents=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; work folder {home}")
    if default_model("denoiser") and default_model("detector"):
        start = ("default", "default")
        print("starting models: the registry defaults")
    else:
        secs = pretrain_elsewhere(model_dir, args.pretrain_steps, 128)
        start = ("elsewhere_denoiser", "elsewhere_detector")
        print(f"starting models: pretrained here on other phantoms ({args.pretrain_steps} steps each, {secs:.0f} s)")
    for kind, name in zip(("denoiser", "detector"), start):
        save_weights(load_model(name, kind=kind)[0], model_dir / f"start_{kind}")

    t = time.perf_counter()
    image, shapes, low = _sample_layers(6, 512)
    print(f"sample data ready in {time.perf_counter() - t:.1f} s")
    from napari_lidnet._training import finetune as fj
    from napari_lidnet._training import local_data as ld
    from napari_lidnet._widgets import layer_inputs as li

    inputs, _ = li.inputs_from_layers([image], shapes)
    full = inputs[0].full_hu
    samples = ld.make_samples([ld.CTInput("sample", full, 0.75, low_hu=low, boxes=inputs[0].boxes)], 0.25)
    speed = round_speed(samples, model_dir, args.steps)
    print(
        "collaborative round, 256x256 patches, batch 4, CPU: "
        f"denoiser {speed['denoiser_steps_per_s']:.2f} steps/s, detector {speed['detector_steps_per_s']:.2f} steps/s, "
        f"round {speed['round_steps_per_s']:.2f} steps/s"
    )
    if args.skip_one_click:
        return
    d = fj.ONE_CLICK_DEFAULTS
    print(
        f"one-click run: {d['rounds']} rounds x ({d['denoiser_steps']} denoiser + {d['detector_steps']} detector)"
        f" steps, patch {d['patch_size']}, batch {d['batch_size']}, 25% dose simulated from the full-dose sample"
    )
    seconds, outcome = one_click(image, shapes, start)
    s, b = outcome.start_metrics or {}, outcome.best_metrics or {}
    print(f"one-click run: {outcome.status} in {seconds:.0f} s ({seconds / 60:.2f} min); {fj.outcome_summary(outcome)}")
    if "psnr" in s and "psnr" in b:
        print(f"validation PSNR {s['psnr']:.2f} -> {b['psnr']:.2f} dB ({b['psnr'] - s['psnr']:+.2f} dB)")
    print(f"under 5 minutes: {seconds < 300}; PSNR improved: {b.get('psnr', 0) > s.get('psnr', 1e9)}")


if __name__ == "__main__":
    main()
