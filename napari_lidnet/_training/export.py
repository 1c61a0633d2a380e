"""Publish a run's best checkpoint as a named model in the user's model folder."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

KINDS = ("denoiser", "detector")
MAX_NAME = 64  # characters of a model's name


def valid_model_name(name: str) -> str:
    """A model name safe as a file name, or ValueError saying why not."""
    name = name.strip()
    if not re.fullmatch(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_NAME - 1}}}", name):
        raise ValueError(f"model name {name!r}: use 1-64 ASCII letters (a-z, A-Z), digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    if name.lower() == "default" or name.lower().startswith("default_"):
        raise ValueError(f"model name {name!r} is the shipped models'; choose another name")
    return name


def check_export_name(name: str, kinds: tuple[str, ...] = KINDS) -> str:
    """The valid ``name``, or an error before anything is trained or written: FileExistsError when a model of
    that name (of ``kinds``: by default its denoiser or its detector, either file of the pair) is already in the user
    model folder. A calibration saves only ``NAME_detector`` and an adaptation only ``NAME_denoiser``, so the two
    make one pair under one name."""
    from napari_lidnet.io.atomic import check_writable
    from napari_lidnet.models.registry import user_model_dir

    name, dest = valid_model_name(name), user_model_dir()
    taken = _taken(dest, name, kinds)
    if taken:
        raise FileExistsError(f"a model named {name!r} already exists ({taken[0]}); choose another name")
    check_writable(dest / f"{name}_{kinds[0]}")  # the model folder (or the nearest that exists) takes files
    return name


def free_name(name: str, kinds: tuple[str, ...] = KINDS) -> str:
    """The valid ``name``, or ``NAME-2``, ``NAME-3`` ... while a model of that name (of ``kinds``) is in the user
    model folder (another run took the name while this one trained). ValueError: a bad name."""
    from napari_lidnet.models.registry import user_model_dir

    base = candidate = valid_model_name(name)
    k = 1
    while _taken(user_model_dir(), candidate, kinds):
        k += 1
        candidate = f"{base[: MAX_NAME - len(f'-{k}')]}-{k}"  # a long name is cut to keep the suffix in the limit
    return candidate


def renamed_note(asked: str, saved: str) -> str:
    """' (NAME was taken while this run trained)' when the model was saved under another name than asked, else ''."""
    return f" ({asked.strip()!r} was taken while this run trained)" if saved != asked.strip() else ""


def _taken(dest: Path, name: str, kinds: tuple[str, ...]) -> list[Path]:
    """The files of the models ``NAME_<kind>`` in ``dest`` (none when they are what a killed export left: those are
    replaced, not taken)."""
    from napari_lidnet.models.weights import weight_paths

    if _half_pair(dest, name):
        return []
    return [p for kind in kinds for p in weight_paths(dest / f"{name}_{kind}") if p.exists()]


def _half_pair(dest: Path, name: str) -> list[Path]:
    """The files of ``NAME_*`` in ``dest`` when they are an exported pair with a member missing (an export killed
    between its two writes: no model, see ``registry._scan``), else []."""
    from napari_lidnet.models.weights import read_card, weight_paths

    pair = [f"{name}_{kind}" for kind in KINDS]
    present = [m for m in pair if weight_paths(dest / m)[1].is_file()]
    if len(present) != 1:
        return []
    try:
        marked = read_card(dest / present[0]).get("pair_of") == pair
    except (OSError, ValueError):
        return []
    return [p for p in weight_paths(dest / present[0]) if p.exists()] if marked else []


def trained_kinds(run_dir: Path) -> list[str]:
    """The networks of a run worth exporting: those it trained (a stage of theirs ran steps) or started from a
    model (``init_*``); a network left at its random start (``--pretrain-detector-steps 0`` in a pixel run) is
    not one (otherwise an export would publish such a detector as a model). A card without the record counts."""
    from napari_lidnet.models.weights import read_card

    kinds = []
    for kind in KINDS:
        training = read_card(run_dir / f"best_{kind}").get("training") or {}
        steps = training.get("stage_steps")
        started = (training.get("config") or {}).get(f"init_{kind}")
        if steps is None or started or any(n for stage, n in steps.items() if stage.endswith(kind)):
            kinds.append(kind)
    return kinds


def export_run(
    run_dir: str | Path, name: str, command: str = "", card_extra: dict | None = None
) -> list[Path]:
    """Copy ``best_denoiser``/``best_detector`` of a run into the user model folder as ``NAME_denoiser``/
    ``NAME_detector`` (atomic writes; never over an existing model). ``card_extra`` entries are
    merged into each card's top level (``training`` entries into its ``training`` section).

    Both names and both sources are checked before anything is written, and a failure while writing the second
    pair removes the first: an export leaves both pairs or neither.
    """
    from napari_lidnet.models.registry import user_model_dir
    from napari_lidnet.models.weights import load_weights, save_weights, weight_paths

    name = check_export_name(name)
    run_dir = Path(run_dir)
    for kind in KINDS:
        src = weight_paths(run_dir / f"best_{kind}")[0]
        if not src.exists():
            raise FileNotFoundError(f"{src}: the run has no best {kind} checkpoint yet")
    kinds = trained_kinds(run_dir)
    if not kinds:
        raise ValueError(f"{run_dir}: the run trained neither network and started from no model: nothing to export")
    dest = user_model_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for stale in _half_pair(dest, name):
        stale.unlink()
    written: list[Path] = []
    try:
        for kind in kinds:
            model, card = load_weights(run_dir / f"best_{kind}")
            extra = dict(card_extra or {})
            training = {**card.get("training", {}), **extra.pop("training", {}), "command": command}
            card = {**card, **extra, "name": f"{name}_{kind}", "training": training}
            if len(kinds) == len(KINDS):
                card["pair_of"] = [f"{name}_{k}" for k in KINDS]
            target = dest / f"{name}_{kind}"
            save_weights(model, target, card)
            written.append(weight_paths(target)[0])
    except BaseException:
        for w_path in written:
            for p in weight_paths(w_path):
                with contextlib.suppress(OSError):
                    p.unlink()
        raise
    return written


def export_detector(model: Any, card: dict, name: str, card_extra: dict) -> Path:
    """Save ``model`` as the user model ``NAME_detector`` with ``card`` updated by ``card_extra`` (atomic; never
    over an existing model of that name); the card's training record stays that of the source model."""
    from napari_lidnet.models.registry import user_model_dir
    from napari_lidnet.models.weights import save_weights, weight_paths

    name = check_export_name(name, kinds=("detector",))
    target = user_model_dir(create=True) / f"{name}_detector"
    own = {k: v for k, v in card.items() if k != "pair_of"}  # a model of its own: it outlives its source's pair
    save_weights(model, target, {**own, **card_extra, "name": f"{name}_detector"})
    return weight_paths(target)[0]
