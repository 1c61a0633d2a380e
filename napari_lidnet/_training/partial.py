"""Checkpoints inside a stage: the trained network, its optimiser, its schedule and the RNG at a step, so that a stop,
a scheduler's SIGTERM or a crash resumes inside the stage (as an uninterrupted run goes on) instead of redoing it.

Files in the run folder, without pickle: ``partial_<network>.safetensors/.json`` (:func:`save_weights`, its card
naming the stage, its length and the step) and ``partial_optim.safetensors/.json`` (Adam's moments and the RNG
state; the JSON holds the parameter groups, the schedule, the same stage/length/step and the tensors' SHA-256).
Each pair is written atomically, the network first; a resume uses them only when both name the stage to run, its
length and the same step, and the tensors match their hash: a crash between the two writes leaves a mismatch, and
the stage is then run from its start (with a note), as before this module. A resumed stage keeps the learning rate
and schedule it was saved with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from napari_lidnet.models.weights import load_weights, save_weights, weight_paths, write_atomically

__all__ = ["PARTIAL", "drop_partial", "load_partial", "save_partial", "where"]

PARTIAL = "partial"
_OPTIM = f"{PARTIAL}_optim"


def where(stage: str, n_steps: int, step: int) -> dict[str, Any]:
    """The position a partial checkpoint records: stage name, its length, the step after which it was saved."""
    return {"stage": stage, "stage_steps": int(n_steps), "step": int(step)}


def save_partial(out: Path, network: str, model: torch.nn.Module, opt: Any, sched: Any, at: dict) -> None:
    """Write the stage's state at ``at`` (:func:`where`): the network ``network`` (denoiser/detector) under
    training, then the optimiser, the schedule and the RNG."""
    from safetensors.torch import save

    save_weights(model, out / f"{PARTIAL}_{network}", {"partial": at})
    state = opt.state_dict()
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"opt.{index}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).cpu()
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    meta = {**at, "network": network, "param_groups": state["param_groups"], "schedule": sched.state_dict(),
            "sha256": hashlib.sha256(blob).hexdigest()}  # fmt: skip
    write_atomically(out / f"{_OPTIM}.safetensors", blob)
    write_atomically(out / f"{_OPTIM}.json", json.dumps(meta, indent=1).encode())


def load_partial(
    out: Path, network: str, model: torch.nn.Module, opt: Any, sched: Any, stage: str, n_steps: int
) -> tuple[int, str]:
    """Load the stage's saved state into ``model``, ``opt``, ``sched`` and the RNG when the run folder holds a
    whole one for ``stage`` of ``n_steps``. Returns the step it was saved at (0: none, start the stage) and a note
    when one was saved for this stage but cannot be used (another length, or a torn write)."""
    from safetensors.torch import load

    try:
        meta = json.loads((out / f"{_OPTIM}.json").read_text())
        blob = (out / f"{_OPTIM}.safetensors").read_bytes()
        saved, card = load_weights(out / f"{PARTIAL}_{network}")
    except (OSError, ValueError):
        return 0, ""
    if meta.get("stage") != stage:
        return 0, ""
    if meta.get("stage_steps") != n_steps:
        return 0, (f"the checkpoint at step {meta.get('step')} of {stage} was made for {meta.get('stage_steps')} "
                   f"steps, not {n_steps}: {stage} starts over")  # fmt: skip
    whole = meta.get("network") == network and card.get("partial") == where(stage, n_steps, meta.get("step", -1))
    if not whole or hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        return 0, f"the checkpoint inside {stage} is incomplete (a write was cut short): {stage} starts over"
    tensors = load(blob)
    model.load_state_dict(saved.state_dict())
    moments: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            moments.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": moments, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["schedule"])
    torch.set_rng_state(tensors["rng.cpu"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["step"]), ""


def drop_partial(out: Path) -> None:
    """Remove a stage's partial checkpoint (the stage has finished; its end-of-stage checkpoint replaces it)."""
    for path in (out / f"{_OPTIM}.safetensors", out / f"{_OPTIM}.json",
                 *(p for net in ("denoiser", "detector") for p in weight_paths(out / f"{PARTIAL}_{net}"))):  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

