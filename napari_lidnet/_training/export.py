"""Publish a run's best checkpoint as a named model in the user's model folder."""

from __future__ import annotations

import re
from pathlib import Path


def valid_model_name(name: str) -> str:
    """A model name safe as a file name, or ValueError saying why not."""
    name = name.strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ValueError(f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting alphanumeric")
    return name


def export_run(
    run_dir: str | Path, name: str, command: str = "", overwrite: bool = False, card_extra: dict | None = None
) -> list[Path]:
    """Copy ``best_denoiser``/``best_detector`` of a run into the user model folder as ``NAME_denoiser``/
    ``NAME_detector`` (atomic writes; an existing model is kept unless ``overwrite``). ``card_extra`` entries are
    merged into each card's top level (``training`` entries into its ``training`` section)."""
    from napari_lidnet.models.registry import user_model_dir
    from napari_lidnet.models.weights import load_weights, save_weights

    name = valid_model_name(name)
    run_dir = Path(run_dir)
    dest = user_model_dir()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ("denoiser", "detector"):
        src = run_dir / f"best_{kind}"
        if not src.with_suffix(".safetensors").exists():
            raise FileNotFoundError(f"{src}.safetensors: the run has no best {kind} checkpoint yet")
        target = dest / f"{name}_{kind}"
        if target.with_suffix(".json").exists() and not overwrite:
            raise FileExistsError(f"a model named {name!r} already exists in {dest}; choose another name")
        model, card = load_weights(src)
        extra = dict(card_extra or {})
        training = {**card.get("training", {}), **extra.pop("training", {}), "command": command}
        card = {**card, **extra, "name": f"{name}_{kind}", "training": training}
        save_weights(model, target, card)
        written.append(target.with_suffix(".safetensors"))
    return written
