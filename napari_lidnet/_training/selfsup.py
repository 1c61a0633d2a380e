"""Self-supervised fine-tuning of a denoiser on low-dose scans alone (no normal-dose partner).

FBP correlates CT noise between neighbouring pixels, so Noise2Void's one-pixel blind spot sees the noise it must
predict. Two schemes that respect correlated noise:

- ``neighbours`` (scheme A, the default; Noise2Noise across slices, as in Noise2Sim for CT): input slice z, target
  the mean of slices z-1 and z+1: independent noise realisations of nearly the same anatomy. Pixels where the two
  neighbours disagree beyond their noise (anatomy changing in z) are down-weighted. Needs >= 3 contiguous slices;
  runs are split where a gap exceeds ``GAP_FACTOR`` x the median spacing.
- ``blindspot`` (scheme B): sparse random centres (dart throwing, no regular grid) get a blind zone of radius R =
  the noise correlation length measured on the scan itself (``metrics.noreference.correlation_length``: across
  slices when the volume allows, else within the image), filled with the ring mean around it plus the texture of
  another zone; Huber loss on the centres only. Works on single slices.

Chosen by measurement (``benchmarks/adapt_benchmark.py``, results in ``benchmarks/results/adapt_cpu.md``): scheme A
closes about all of the supervised fine-tuning gain on an unseen protocol; scheme B does not work with the shipped
residual, pixel-unshuffling ``fastdn`` within hundreds of steps (it degrades the model), though it does denoise with
a plain CNN trained from scratch. B stays for single slices, with that warning.

Lesion boxes (optional, LIDnet's spirit without a detector): patches are centred near a lesion with probability
``lesion_fraction`` and the loss inside the boxes is weighted ``1 + roi_weight``.

``adapt_job`` is the whole run as a generator (the CLI, the widget, the benchmark and the tests run the same code):

- ``{"stage": "prepare", "message"}``: checks, notes (runs split, correlation length), loading;
- ``{"stage": "estimate", "step", "total_steps", "estimates": {"input", "start"} at step 0, then {"adapted"}}``,
  each ``{"noise_sd_hu", "edge_sharpness_hu_per_mm", "correlation_length_px", "correlation_length_mm",
  "noise_from"}`` (``metrics.noreference``, on the same few slices, edges at the input's strongest edges);
- ``{"stage": "adapt", "step", "total_steps", "losses": {"selfsup"}, "eta_s"}`` after every step;
- ``{"stage": "export", "message"}``, then ``{"stage": "finished" | "stopped", "step", "total_steps", "message",
  "estimates": {"input", "start", "adapted"}, "loss": {"before", "after"}, "exported": [paths]}``;

and returns an :class:`AdaptOutcome`. It exports ``NAME_denoiser`` into the user model folder (never over an
existing model) with a card recording the data, the scheme, the settings and the no-reference quality of the
input, the starting model and the adapted model. torch is imported only inside functions.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_lidnet._training.adapt_data import MIN_RUN, AdaptData, prepare_adapt
from napari_lidnet._training.adapt_patches import make_patches
from napari_lidnet.io.json_text import finite
from napari_lidnet.metrics.noreference import (
    correlation_length,
    edge_locations,
    noise_sd,
    quality_estimates,
    worse_than_start,
)

__all__ = [
    "AdaptOutcome",
    "adapt_job",
    "adapt_summary",
    "denoiser_outputs",
    "estimate_slices",
    "estimates_line",
    "eval_loss",
    "train_steps",
]

ESTIMATE_SLICES = 3  # slices (each with its two neighbours when possible) of the no-reference estimates


# ----------------------------------------------------------------------------------------------- training loop


def _weighted_loss(model: Any, batch: tuple[np.ndarray, ...], device: Any, huber_hu: float | None = None) -> Any:
    """Weighted MSE (network scale), or Huber with its quadratic zone up to ``huber_hu`` HU."""
    import torch
    import torch.nn.functional as F

    from napari_lidnet.models.normalize import hu_to_net

    x, t, w = (torch.from_numpy(a).to(device) for a in batch)
    out = model(hu_to_net(x))
    if huber_hu:
        per_pixel = F.smooth_l1_loss(out, hu_to_net(t), reduction="none", beta=float(hu_to_net(huber_hu)))
    else:
        per_pixel = (out - hu_to_net(t)) ** 2
    return (w * per_pixel).sum() / w.sum().clamp_min(1e-6)


def eval_loss(model: Any, batch: tuple[np.ndarray, ...], device: Any, huber_hu: float | None = None) -> float:
    """The scheme's loss of ``model`` on a fixed batch, in eval mode."""
    import torch

    was = model.training
    model.eval()
    with torch.no_grad():
        value = float(_weighted_loss(model, batch, device, huber_hu))
    model.train(was)
    return value


def train_steps(
    model: Any,
    patches: Any,
    steps: int,
    *,
    lr: float = 5e-4,
    batch_size: int = 4,
    device: Any = "cpu",
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[dict[str, Any], None, int]:
    """Adam on ``patches.batch`` for ``steps`` steps, yielding ``{"stage": "adapt", "step", "total_steps",
    "losses": {"selfsup"}, "eta_s"}`` after each; ``should_stop`` is checked before every step. Returns the number
    of steps done."""
    import torch

    should_stop = should_stop or (lambda: False)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0, done = time.monotonic(), 0
    for step in range(1, steps + 1):
        if should_stop():
            break
        loss = _weighted_loss(model, patches.batch(rng, batch_size), device, patches.huber_hu)
        if not torch.isfinite(loss):
            raise ValueError(f"the loss became {float(loss)} at step {step}: lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step
        eta = (time.monotonic() - t0) / step * (steps - step)
        losses = {"selfsup": float(loss.detach())}
        yield {"stage": "adapt", "step": step, "total_steps": steps, "losses": losses, "eta_s": eta}
    model.eval()
    return done


# ----------------------------------------------------------------------------------------------- quality estimates


def estimate_slices(data: AdaptData) -> tuple[np.ndarray, bool]:
    """(a (k, y, x) stack of the largest volume, whether it is made of contiguous triplets) for the no-reference
    estimates: up to ``ESTIMATE_SLICES`` slices with their neighbours when a run allows, else single slices."""
    v = int(np.argmax([s.shape[0] for s in data.stacks]))
    stack = data.stacks[v]
    a, b = max(data.runs[v], key=lambda r: r[1] - r[0])
    if b - a >= MIN_RUN:
        centres = np.unique(np.linspace(a + 1, b - 2, ESTIMATE_SLICES).round().astype(int))
        return np.concatenate([stack[c - 1 : c + 2] for c in centres]), True
    picks = np.unique(np.linspace(0, len(stack) - 1, ESTIMATE_SLICES).round().astype(int))
    return stack[picks], False


def _estimates(hu: np.ndarray, pixel_mm: float, triplets: bool, edges: np.ndarray) -> dict[str, float]:
    """No-reference estimates of ``hu``; with triplets, noise SD and correlation length across slices."""
    est = quality_estimates(hu, pixel_mm, edges)
    if triplets:
        groups = hu.reshape(-1, 3, *hu.shape[1:])
        est["noise_sd_hu"] = _nanmedian([noise_sd(g, noise_from="slices") for g in groups])
        est["correlation_length_px"] = _nanmedian([correlation_length(g, noise_from="slices") for g in groups])
        est["correlation_length_mm"] = est["correlation_length_px"] * pixel_mm
    est["noise_from"] = "slices" if triplets else "image"
    return est


def _nanmedian(values: list[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return float(np.median(kept)) if kept else float("nan")


def denoiser_outputs(model: Any, hu: np.ndarray, device: Any) -> np.ndarray:
    """``model`` applied to a (k, y, x) HU stack (``inference.denoise``, no mixed precision)."""
    from napari_lidnet.inference import denoise

    return denoise(model, hu, device=device, amp=False)


# ----------------------------------------------------------------------------------------------- the job


@dataclass
class AdaptOutcome:
    """How a run ended: ``status`` finished | stopped; ``exported`` the new model's files."""

    status: str
    message: str
    name: str
    exported: list[str] = field(default_factory=list)
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)  # input / start / adapted
    loss_before: float | None = None
    loss_after: float | None = None
    steps_done: int = 0
    seconds: float = 0.0
    card: dict[str, Any] = field(default_factory=dict)


def _target_path(name: str) -> Any:
    """``user_model_dir()/NAME_denoiser`` (ValueError: a bad name; FileExistsError: a denoiser of that name is there;
    NAME_detector may be: ``lidnet calibrate`` makes the pair)."""
    from napari_lidnet._training.export import check_export_name
    from napari_lidnet.models.registry import user_model_dir

    return user_model_dir() / f"{check_export_name(name, kinds=('denoiser',))}_denoiser"


def _start_model(from_model: Any, device: Any) -> tuple[Any, str]:
    """(a trainable copy of the starting denoiser on ``device``, how to name it in the card)."""
    from napari_lidnet.models.denoisers import check_trainable_blind

    if hasattr(from_model, "parameters"):
        check_trainable_blind(from_model, "the starting denoiser")
        return copy.deepcopy(from_model).to(device), f"in-memory {getattr(from_model, 'arch', 'denoiser')}"
    from napari_lidnet.models.registry import load_model

    model, card = load_model(from_model, kind="denoiser", device=device)
    check_trainable_blind(model, os.fspath(from_model))
    return model, str(card.get("name") or os.fspath(from_model))


@dataclass
class _Run:
    """What one run carries between its parts."""

    data: AdaptData
    settings: dict[str, Any]
    device: Any = None
    model: Any = None
    from_name: str = ""
    est_stack: np.ndarray | None = None
    triplets: bool = False
    edges: np.ndarray | None = None
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)


def _measure(run: _Run, which: str) -> dict[str, Any]:
    """Estimates of the model's output on the estimate slices (``which`` names them in the record)."""
    out = denoiser_outputs(run.model, run.est_stack, run.device)
    run.estimates[which] = _estimates(out, run.data.pixel_mm, run.triplets, run.edges)
    return run.estimates[which]


def _setup(run: _Run, from_model: Any) -> Generator[dict[str, Any], None, None]:
    """Load the model and measure the input and the starting model, yielding records."""
    from napari_lidnet.models.device import pick_device

    run.device, notice = pick_device(run.settings["device"])
    if notice:
        yield {"stage": "prepare", "message": notice}
    yield {"stage": "prepare", "message": f"loading {from_model if isinstance(from_model, str) else 'the model'}"}
    run.model, run.from_name = _start_model(from_model, run.device)
    run.est_stack, run.triplets = estimate_slices(run.data)
    run.edges = edge_locations(run.est_stack, max_slices=len(run.est_stack))
    run.estimates["input"] = _estimates(run.est_stack, run.data.pixel_mm, run.triplets, run.edges)
    _measure(run, "start")
    yield {"stage": "estimate", "step": 0, "total_steps": run.settings["steps"], "estimates": dict(run.estimates)}


def _card(run: _Run, outcome: AdaptOutcome, name: str, command: str) -> dict[str, Any]:
    s, data = run.settings, run.data
    selfsup = {
        "scheme": data.scheme,
        "steps": s["steps"],
        "steps_done": outcome.steps_done,
        "stopped_early": outcome.status == "stopped",
        **{k: s[k] for k in ("batch_size", "patch_size", "lr", "seed", "roi_weight", "lesion_fraction")},
        "consistency_weighting": bool(s["consistency"]) and data.scheme == "neighbours",
        "device": str(run.device),
        "from_model": run.from_name,
        "data": data.describe(),
        "n_training_slices": len(data.items),
        "lesion_boxes": sum(len(b) for b in data.boxes.values()),
        "roi": "patches near lesions, loss inside boxes x (1 + roi_weight)" if data.boxes else "no boxes given",
        "blind_radius_px": data.blind_radius,
        "correlation_length_px": data.correlation_length_px,
        "loss": {"before": outcome.loss_before, "after": outcome.loss_after},
        "notes": data.notes,
    }
    return {
        "name": f"{name}_denoiser",
        "training": {"selfsup": selfsup, "command": command},
        "metrics": {"noreference": finite(run.estimates)},  # no flat region, no edges: null
    }


def _train(run: _Run, should_stop: Callable[[], bool], outcome: AdaptOutcome) -> Generator[dict, None, None]:
    """Train, with a fixed-batch loss before/after and estimates every ``estimate_every`` steps."""
    s = run.settings
    patches = make_patches(
        run.data, s["patch_size"], s["consistency"], lesion_fraction=s["lesion_fraction"], roi_weight=s["roi_weight"]
    )
    fixed = patches.batch(np.random.default_rng([s["seed"], 2]), max(8, s["batch_size"]))
    outcome.loss_before = eval_loss(run.model, fixed, run.device, patches.huber_hu)
    every = s["estimate_every"] or max(1, s["steps"] // 5)
    loop = train_steps(
        run.model,
        patches,
        s["steps"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        device=run.device,
        seed=s["seed"],
        should_stop=should_stop,
    )
    for rec in loop:
        outcome.steps_done = rec["step"]
        yield rec
        if rec["step"] % every == 0 and rec["step"] < s["steps"] and not should_stop():
            yield {
                "stage": "estimate",
                "step": rec["step"],
                "total_steps": s["steps"],
                "estimates": {"adapted": _measure(run, "adapted")},
            }
    outcome.loss_after = eval_loss(run.model, fixed, run.device, patches.huber_hu)


def adapt_job(
    volumes: Any,
    name: str,
    *,
    scheme: str = "neighbours",
    steps: int = 300,
    from_model: Any = "default",
    boxes: Any = None,
    device: str = "auto",
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
    batch_size: int = 4,
    patch_size: int = 96,
    lr: float = 5e-4,
    blind_radius: int | None = None,
    roi_weight: float = 1.0,
    consistency: bool = True,
    lesion_fraction: float = 0.5,
    estimate_every: int = 0,
    command: str = "",
) -> Generator[dict[str, Any], None, AdaptOutcome]:
    """Fine-tune ``from_model`` (registry name, path, "default" or a module) on low-dose ``volumes`` alone and
    export it as ``NAME_denoiser`` in the user model folder (never over an existing model).

    Yields ``prepare`` / ``estimate`` / ``adapt`` records and a last ``finished`` | ``stopped`` record; returns an
    :class:`AdaptOutcome`. Raises ValueError (before any training) when the data or the name cannot work. A Stop
    before the first step exports nothing; a later Stop exports the model as trained so far (card: stopped_early).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t0 = time.monotonic()
    should_stop = should_stop or (lambda: False)
    target = _target_path(name)
    yield {"stage": "prepare", "message": "checking the data"}
    data = prepare_adapt(volumes, scheme, patch_size, boxes, blind_radius)
    for note in data.notes:
        yield {"stage": "prepare", "message": note}
    settings = dict(
        steps=steps,
        batch_size=batch_size,
        patch_size=patch_size,
        lr=lr,
        seed=seed,
        device=device,
        roi_weight=roi_weight,
        lesion_fraction=lesion_fraction,
        estimate_every=estimate_every,
        consistency=consistency,
    )
    run = _Run(data, settings)
    yield from _setup(run, from_model)
    outcome = AdaptOutcome("finished", "", target.name.removesuffix("_denoiser"))
    yield from _train(run, should_stop, outcome)
    yield from _finish(run, outcome, target, command)
    outcome.seconds = time.monotonic() - t0
    return outcome


def _finish(run: _Run, outcome: AdaptOutcome, target: Any, command: str) -> Generator[dict, None, None]:
    """Measure the adapted model, export it (unless no step was done) and yield the last record."""
    from napari_lidnet._training.export import free_name, renamed_note
    from napari_lidnet.models.weights import save_weights, weight_paths

    steps = run.settings["steps"]
    stopped = outcome.steps_done < steps
    outcome.status = "stopped" if stopped else "finished"
    if outcome.steps_done == 0:
        outcome.message = "stopped before the first step: nothing was saved (the starting model stays)"
    else:
        _measure(run, "adapted")
        name_asked = outcome.name
        outcome.name = free_name(name_asked, ("denoiser",))  # NAME-2 when another run took NAME meanwhile
        target = target.with_name(f"{outcome.name}_denoiser")
        yield {"stage": "export", "message": f"saving {target.name}"}
        outcome.card = save_weights(run.model.cpu(), target, _card(run, outcome, outcome.name, command))
        outcome.exported = [str(p) for p in weight_paths(target)]
        outcome.message = f"saved {target.name}" + renamed_note(name_asked, outcome.name)
        if stopped:
            outcome.message += f" (stopped early after {outcome.steps_done} of {steps} steps)"
    outcome.estimates = dict(run.estimates)
    yield {
        "stage": outcome.status,
        "step": outcome.steps_done,
        "total_steps": steps,
        "message": outcome.message,
        "estimates": outcome.estimates,
        "loss": {"before": outcome.loss_before, "after": outcome.loss_after},
        "exported": outcome.exported,
    }


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, float) and math.isfinite(value) else "n/a"


def estimates_line(estimates: dict[str, dict[str, Any]]) -> str:
    """The no-reference estimates of a record on one line: ``noise SD 40.1 HU, edges 73.6 HU/mm (input); ...``."""
    return "; ".join(
        f"noise SD {_fmt(e.get('noise_sd_hu'), '.1f')} HU, edges {_fmt(e.get('edge_sharpness_hu_per_mm'), '.1f')} "
        f"HU/mm ({which})"
        for which, e in estimates.items()
    )


def adapt_summary(outcome: AdaptOutcome) -> str:
    """One paragraph for the CLI and the widget: what was saved, and the no-reference quality of the input, the
    starting model and the adapted model (noise SD, edge sharpness), and the self-supervised loss."""
    text = outcome.message
    est = outcome.estimates
    order = [k for k in ("input", "start", "adapted") if k in est]
    if order:
        noise = " -> ".join(f"{_fmt(est[k].get('noise_sd_hu'), '.1f')} ({k})" for k in order)
        edges = " -> ".join(f"{_fmt(est[k].get('edge_sharpness_hu_per_mm'), '.1f')} ({k})" for k in order)
        text += f"; noise SD {noise} HU; edge sharpness {edges} HU/mm"
    if outcome.loss_before is not None and outcome.loss_after is not None:
        text += f"; self-supervised loss {outcome.loss_before:.3g} -> {outcome.loss_after:.3g}"
    if outcome.seconds:
        text += f" ({outcome.seconds:.0f} s)"
    return text + _worse_note(est)


def _worse_note(est: dict) -> str:
    """A caveat when the adapted model leaves more noise than the starting one and no sharper edges, both measured
    without a reference (``metrics.noreference.worse_than_start``): the starting model is then the better choice."""
    if not worse_than_start(est):
        return ""
    noise = (est["start"]["noise_sd_hu"], est["adapted"]["noise_sd_hu"])
    return (f". Note: the adapted model leaves more noise ({noise[0]:.1f} -> {noise[1]:.1f} HU) and no sharper "
            "edges than the starting one: keep using the starting model, or adapt for more steps")  # fmt: skip
