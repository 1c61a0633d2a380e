"""Model registry: shipped defaults inside the package, user models in a per-user folder.

- shipped: ``napari_lidnet/models/weights/NAME.{safetensors,json}`` (``default_denoiser``, ``default_detector``;
  absent until trained, everything here copes with that);
- user: ``platformdirs.user_data_dir("napari-lidnet")/models``, or ``$NAPARI_LIDNET_MODEL_DIR`` when set.

A model's name is its file stem. Listing reads only the JSON cards (no torch import); broken pairs are skipped.
When a user model has the same name as a shipped one, the user model wins in ``load_model``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .weights import KINDS, read_card, weight_paths

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MODEL_DIR_ENV",
    "ModelInfo",
    "default_model",
    "list_models",
    "load_model",
    "shipped_model_dir",
    "user_model_dir",
]

MODEL_DIR_ENV = "NAPARI_LIDNET_MODEL_DIR"


@dataclass(frozen=True)
class ModelInfo:
    """A weights pair found on disk: ``path`` is the stem (``path.safetensors`` + ``path.json``)."""

    name: str
    kind: str
    path: Path
    card: dict[str, Any]
    shipped: bool


def shipped_model_dir() -> Path:
    """Folder of the weights shipped inside the package."""
    return Path(__file__).resolve().parent / "weights"


def user_model_dir(create: bool = False) -> Path:
    """Per-user model folder: ``$NAPARI_LIDNET_MODEL_DIR`` or ``user_data_dir("napari-lidnet")/models``."""
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        folder = Path(env).expanduser()
    else:
        import platformdirs

        folder = Path(platformdirs.user_data_dir("napari-lidnet")) / "models"
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def model_label(name_or_path: str | os.PathLike, card: dict) -> str:
    """How outputs name a model (layer metadata, a denoised series' description), the same in the viewer and on the
    command line: its name without the kind ("default_denoiser" -> "default") and its architecture: "default (unet)"."""
    name = Path(name_or_path).name
    for suffix in (".safetensors", ".json"):  # a weights file named with its ending
        name = name.removesuffix(suffix)
    for kind in KINDS:
        name = name.removesuffix(f"_{kind}")
    return f"{name} ({card.get('arch', '?')})"


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")


def _scan(folder: Path, shipped: bool) -> list[ModelInfo]:
    if not folder.is_dir():
        return []
    found = []
    for j_path in sorted(folder.glob("*.json")):
        w_path, _ = weight_paths(j_path)
        if not w_path.is_file():
            continue
        try:
            card = read_card(j_path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"skipping model {j_path}: {exc}", stacklevel=3)
            continue
        if not all(p.is_file() for member in card.get("pair_of") or [] for p in weight_paths(folder / member)):
            continue  # half of an exported pair whose export was killed: not a model (the next export replaces it)
        found.append(ModelInfo(j_path.stem, card["kind"], j_path.with_suffix(""), card, shipped))
    return found


def list_models(kind: str | None = None) -> list[ModelInfo]:
    """Shipped models first, then user models, each sorted by name; only ``kind`` when given."""
    _check_kind(kind)
    models = _scan(shipped_model_dir(), True) + _scan(user_model_dir(), False)
    return [m for m in models if kind is None or m.kind == kind]


def default_model(kind: str) -> ModelInfo | None:
    """The shipped ``default_<kind>``; else the most recently created user model of ``kind``; else None."""
    _check_kind(kind)
    if kind is None:
        raise ValueError("default_model needs a kind ('denoiser' or 'detector')")
    models = list_models(kind)
    for m in models:
        if m.shipped and m.name == f"default_{kind}":
            return m
    user = [m for m in models if not m.shipped]
    if not user:
        return None
    return max(user, key=lambda m: (str(m.card.get("created", "")), m.name))


def _resolve(name_or_path: str | os.PathLike, kind: str | None) -> Path:
    text = os.fspath(name_or_path)
    w_path, j_path = weight_paths(text)
    if j_path.is_file() or w_path.is_file():
        return j_path.with_suffix("")
    if text == "default" and kind is None:
        raise ValueError("'default' names a shipped pair: say which network, load_model('default', 'denoiser') or "
                         "load_model('default', 'detector')")  # fmt: skip
    if text == "default":
        info = default_model(kind)
        if info is None:
            raise FileNotFoundError(f"no {kind} model available: none shipped and none in {user_model_dir()}")
        return info.path
    candidates = [m for m in list_models(kind) if m.name == text]
    if not candidates and kind is not None:  # a pair's name: NAME finds NAME_denoiser / NAME_detector
        candidates = [m for m in list_models(kind) if m.name == f"{text}_{kind}"]
    if not candidates and Path(text).is_file():
        raise ValueError(f"{text}: not {kind or 'a'} weights of napari-lidnet (.safetensors with a .json card)")
    if not candidates and kind is not None and any(m.name == text for m in list_models(None)):
        raise ValueError(f"model {text!r} is not a {kind}; choose a {kind} (lidnet denoise/detect --model NAME)")
    if not candidates:
        names = sorted({m.name for m in list_models(kind)})
        raise FileNotFoundError(
            f"model {text!r} not found as a file or by name in {shipped_model_dir()} or {user_model_dir()}; "
            f"available: {names}"
        )
    user = [m for m in candidates if not m.shipped]
    return (user or candidates)[0].path


def load_model(
    name_or_path: str | os.PathLike, kind: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Load a model by registry name, ``"default"`` (needs ``kind``) or path; returns ``(model, card)`` in eval mode.

    Raises ``FileNotFoundError`` when nothing matches and ``ValueError`` when the model is not of ``kind``.
    """
    from .weights import load_weights

    _check_kind(kind)
    path = _resolve(name_or_path, kind)
    model, card = load_weights(path, device=device)
    if kind is not None and card["kind"] != kind:
        raise ValueError(f"{path}: is a {card['kind']} model, expected a {kind}")
    return model, card
