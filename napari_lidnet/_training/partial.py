"""Checkpoints inside a stage: the trained network, its optimiser, its schedule and the RNG at a step, so that a stop,
a scheduler's SIGTERM or a crash resumes inside the stage (as an uninterrupted run goes on) instead of redoing it.

Files in the run folder, without pickle, in two slots (``a``, ``b``): ``partial_<slot>_<network>.safetensors/.json``
(:func:`save_weights`, its card naming the stage, its length and the step) and ``partial_<slot>_optim.safetensors/
.json`` (Adam's moments and the RNG state; the JSON holds the parameter groups, the schedule, the same stage/length/
step and the tensors' SHA-256). A checkpoint is written into the slot that does not hold the newest whole one, so a
kill (or a second Ctrl-C) mid-write leaves that one as it was: writing over the only set in place would lose the
whole stage's steps. A resume takes the newest slot (the single set of earlier versions, ``partial_
<network>``/``partial_optim``, counts as a third) whose files all name the stage to run, its length
and the same step, with tensors matching their hash; when a slot for the stage exists and none is whole, the stage
is run from its start (with a note). A resumed stage keeps the learning rate and schedule it was saved with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from napari_lidnet.models.weights import load_weights, save_weights, weight_paths, write_atomically

__all__ = ["PARTIAL", "SLOTS", "drop_partial", "load_partial", "partial_meta", "save_partial", "where"]

PARTIAL = "partial"
SLOTS = ("a", "b")
#: the slots a resume looks in: the two, and the one set of earlier versions (a run folder from before them)
READ_SLOTS = (*SLOTS, "")


def _names(slot: str, network: str) -> tuple[str, str]:
    """(network weights stem, optimiser stem) of one slot ("": the earlier versions' names)."""
    prefix = f"{PARTIAL}_{slot}_" if slot else f"{PARTIAL}_"
    return f"{prefix}{network}", f"{prefix}optim"


def where(stage: str, n_steps: int, step: int) -> dict[str, Any]:
    """The position a partial checkpoint records: stage name, its length, the step after which it was saved."""
    return {"stage": stage, "stage_steps": int(n_steps), "step": int(step)}


def _meta(out: Path, slot: str) -> dict[str, Any]:
    try:
        meta = json.loads((out / f"{_names(slot, '')[1]}.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def save_partial(
    out: Path, network: str, model: torch.nn.Module, opt: Any, sched: Any, at: dict,
    settings: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write the stage's state at ``at`` (:func:`where`) into the slot not holding the newest whole checkpoint: the
    network ``network`` (denoiser/detector) under training, then the optimiser, the schedule, the RNG and the
    stage's ``settings`` (batch and patch size, losses: :func:`partial_meta` gives them back)."""
    from safetensors.torch import save

    newest = _newest_whole(out, network, at["stage"], at["stage_steps"])
    slot = SLOTS[1] if newest is not None and newest[0] == SLOTS[0] else SLOTS[0]
    weights, optim = _names(slot, network)
    for path in (out / f"{optim}.json", out / f"{optim}.safetensors"):  # the slot is torn from here on: said so
        path.unlink(missing_ok=True)
    save_weights(model, out / weights, {"partial": at})
    state = opt.state_dict()
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"opt.{index}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).cpu()
    blob = save({k: v.contiguous() for k, v in tensors.items()})
    meta = {**at, "network": network, "param_groups": state["param_groups"], "schedule": sched.state_dict(),
            "settings": settings or {}, "sha256": hashlib.sha256(blob).hexdigest()}  # fmt: skip
    write_atomically(out / f"{optim}.safetensors", blob)
    write_atomically(out / f"{optim}.json", json.dumps(meta, indent=1).encode())


def _whole(out: Path, slot: str, network: str, stage: str, n_steps: int) -> tuple[dict, bytes, Any] | None:
    """(meta, optimiser tensors, network) of a slot whose files are whole and name ``stage`` of ``n_steps``."""
    meta = _meta(out, slot)
    if meta.get("stage") != stage or meta.get("stage_steps") != n_steps or meta.get("network") != network:
        return None
    weights, optim = _names(slot, network)
    try:
        blob = (out / f"{optim}.safetensors").read_bytes()
        saved, card = load_weights(out / weights)
    except (OSError, ValueError):
        return None
    if card.get("partial") != where(stage, n_steps, meta.get("step", -1)):
        return None
    return (meta, blob, saved) if hashlib.sha256(blob).hexdigest() == meta.get("sha256") else None


def _newest_whole(out: Path, network: str, stage: str, n_steps: int) -> tuple[str, tuple] | None:
    found = [(slot, w) for slot in READ_SLOTS if (w := _whole(out, slot, network, stage, n_steps)) is not None]
    return max(found, key=lambda f: int(f[1][0]["step"])) if found else None


def partial_meta(out: Path, network: str, stage: str, n_steps: int) -> dict[str, Any]:
    """The record of the newest whole checkpoint inside ``stage`` of ``n_steps``: its ``step`` and the ``settings``
    the stage was trained with (a resumed stage goes on with them); {} when there is none (the stage starts over)."""
    newest = _newest_whole(out, network, stage, n_steps)
    return dict(newest[1][0]) if newest is not None else {}


def load_partial(
    out: Path, network: str, model: torch.nn.Module, opt: Any, sched: Any, stage: str, n_steps: int
) -> tuple[int, str]:
    """Load the stage's saved state into ``model``, ``opt``, ``sched`` and the RNG from the newest whole slot for
    ``stage`` of ``n_steps``. Returns the step it was saved at (0: none, start the stage) and a note when one was
    saved for this stage but none can be used (another length, or torn writes)."""
    from safetensors.torch import load

    newest = _newest_whole(out, network, stage, n_steps)
    if newest is None:
        metas = [m for m in (_meta(out, slot) for slot in READ_SLOTS) if m.get("stage") == stage]
        other = next((m for m in metas if m.get("stage_steps") != n_steps), None)
        if other is not None:
            return 0, (f"the checkpoint at step {other.get('step')} of {stage} was made for "
                       f"{other.get('stage_steps')} steps, not {n_steps}: {stage} starts over")  # fmt: skip
        if metas or any((out / f"{_names(slot, network)[0]}.json").exists() for slot in READ_SLOTS):
            return 0, f"the checkpoint inside {stage} is incomplete (a write was cut short): {stage} starts over"
        return 0, ""
    meta, blob, saved = newest[1]
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
    """Remove a stage's partial checkpoints (the stage has finished; its end-of-stage checkpoint replaces them)."""
    for slot in READ_SLOTS:
        optim = _names(slot, "")[1]
        paths = [out / f"{optim}.safetensors", out / f"{optim}.json"]
        paths += [p for net in ("denoiser", "detector") for p in weight_paths(out / _names(slot, net)[0])]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
