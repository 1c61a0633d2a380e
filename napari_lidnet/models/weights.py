"""Weights files: ``NAME.safetensors`` (tensors) + ``NAME.json`` (the card), written atomically.

The card::

    {"format": "napari-lidnet-weights", "version": 1, "kind": "denoiser" | "detector", "arch": "fastdn",
     "config": {constructor kwargs}, "training": {...}, "metrics": {...}, "created": ISO time,
     "package_version": "0.1.0", "sha256": hex digest of the .safetensors file}

A detector's card may carry ``"calibration": {"threshold": t, "fp_per_image": r, ...}``: the score threshold at
which lesion-free images of the calibration set carried ``r`` boxes on average (``_training.calibrate``); the
widgets and the CLI start from it (``default_threshold``).

torch is imported only inside the functions that need it, so reading cards (``read_card``) stays cheap.
Loading rebuilds the architecture from ``arch`` + ``config`` and reads tensors with safetensors only (no pickle);
the digest ties the two files together, so a torn pair is reported instead of silently mixing models.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_lidnet.io.atomic import fsync_dir, write_atomically, write_temp

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "KINDS",
    "FALLBACK_THRESHOLD",
    "build_model",
    "default_threshold",
    "load_weights",
    "model_kind",
    "read_card",
    "save_weights",
    "weight_paths",
    "write_atomically",
]

CARD_FORMAT = "napari-lidnet-weights"
CARD_VERSION = 1
KINDS = ("denoiser", "detector")
FALLBACK_THRESHOLD = 0.3  # score threshold of a detector whose card has no calibration


def _archs() -> dict[str, dict[str, type]]:
    from .denoisers import DENOISERS
    from .detector import DETECTORS

    return {"denoiser": DENOISERS, "detector": DETECTORS}


def weight_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for ``NAME``, ``NAME.safetensors`` or ``NAME.json``."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def model_kind(model: nn.Module) -> tuple[str, str]:
    """``(kind, arch)`` of a registered denoiser or detector model."""
    for kind, archs in _archs().items():
        for arch, cls in archs.items():
            if type(model) is cls:
                return kind, arch
    raise ValueError(f"{type(model).__name__} is not a registered denoiser or detector")


def build_model(kind: str, arch: str, config: dict[str, Any] | None = None) -> nn.Module:
    """Instantiate ``arch`` of ``kind`` ("denoiser" or "detector") with its constructor kwargs."""
    archs = _archs()
    if kind not in archs:
        raise ValueError(f"unknown model kind {kind!r}; expected 'denoiser' or 'detector'")
    if arch not in archs[kind]:
        raise ValueError(f"unknown {kind} architecture {arch!r}; known: {sorted(archs[kind])}")
    try:
        return archs[kind][arch](**(config or {}))
    except TypeError as exc:
        raise ValueError(f"bad config for {kind} {arch!r}: {exc}") from exc


def _package_version() -> str:
    from .. import __version__

    return __version__


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"card value of type {type(obj).__name__} is not JSON serialisable")


def save_weights(model: nn.Module, path: str | os.PathLike, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``path.safetensors`` and ``path.json`` atomically; returns the completed card.

    ``card`` may hold only ``training``/``metrics``/extra keys; format, version, kind, arch, config, created,
    package_version and sha256 are filled in from the model. Both files are written to temporary files in the
    same folder, fsynced and renamed over the old ones; if anything fails, the previous pair stays intact.
    """
    from safetensors.torch import save

    kind, arch = model_kind(model)
    full = {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "kind": kind,
        "arch": arch,
        "config": dict(getattr(model, "config", {})),
        "training": {},
        "metrics": {},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "package_version": _package_version(),
    }
    full.update({k: v for k, v in (card or {}).items() if k not in ("format", "version", "kind", "arch", "config")})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in a random order, so equal weights got other bytes (and sha256)
    tag = json.dumps({"arch": arch, "format": CARD_FORMAT, "kind": kind}, sort_keys=True)
    blob = save(tensors, metadata={"lidnet": tag})
    full["sha256"] = hashlib.sha256(blob).hexdigest()
    card_bytes = (json.dumps(full, indent=2, default=_jsonable) + "\n").encode()

    w_path, j_path = weight_paths(path)
    folder = w_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    tmp_w = tmp_j = backup = None
    try:
        tmp_w = write_temp(folder, w_path.name, blob)
        tmp_j = write_temp(folder, j_path.name, card_bytes)
        backup = _backup(w_path)  # the old weights stay until the card is in place too
        os.replace(tmp_w, w_path)
        tmp_w = None
        try:
            os.replace(tmp_j, j_path)
            tmp_j = None
        except BaseException:
            if backup is not None:
                os.replace(backup, w_path)
                backup = None
            else:
                with contextlib.suppress(OSError):
                    os.unlink(w_path)
            raise
        fsync_dir(folder)
        _clear_leftovers(w_path, j_path)  # the pair is whole: what killed saves of it left is of no use now
    finally:
        for leftover in (tmp_w, tmp_j, backup):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
    return full


def _backup(w_path: Path) -> Path | None:
    """A hidden copy (a hard link where the file system has them) of the weights a save replaces; None if none."""
    if not w_path.exists():
        return None
    backup = w_path.parent / f".{w_path.name}.{uuid.uuid4().hex}.bak"
    try:
        os.link(w_path, backup)
    except OSError:  # no hard links on this file system
        shutil.copy2(w_path, backup)
    return backup


def _clear_leftovers(w_path: Path, j_path: Path) -> None:
    """Remove the temporary files and backups that killed saves of this pair left (each up to a weights file in
    size; otherwise they stay for good)."""
    import glob

    for pattern in (f".{glob.escape(w_path.name)}.*.bak", f".{glob.escape(w_path.name)}.*.tmp",
                    f".{glob.escape(j_path.name)}.*.tmp"):  # fmt: skip
        for leftover in w_path.parent.glob(pattern):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _backup_matching(w_path: Path, digest: str) -> bytes | None:
    """The bytes of the backup a save keeps of the old weights until the new card is in place, when they match
    ``digest`` (the old card's): a save killed (kill -9, power loss) between renaming its weights and its card
    leaves the new weights beside the old card, and the old pair is still whole through this backup."""
    import glob

    for bak in sorted(w_path.parent.glob(f".{glob.escape(w_path.name)}.*.bak")):
        try:
            blob = bak.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(blob).hexdigest() == digest:
            return blob
    return None


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check the JSON card of a weights pair (``FileNotFoundError``/``ValueError`` naming the file)."""
    w_path, j_path = weight_paths(path)
    if not j_path.is_file():
        raise FileNotFoundError(f"weights card not found: {j_path}")
    try:
        card = json.loads(j_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{j_path}: not a readable JSON weights card ({exc})") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ValueError(f"{j_path}: not a napari-lidnet weights card (format must be {CARD_FORMAT!r})")
    if card.get("version") != CARD_VERSION:
        raise ValueError(f"{j_path}: unsupported card version {card.get('version')!r} (expected {CARD_VERSION})")
    for key in ("kind", "arch"):
        if not isinstance(card.get(key), str):
            raise ValueError(f"{j_path}: card has no {key!r}")
    if not isinstance(card.get("config", {}), dict):
        raise ValueError(f"{j_path}: card 'config' must be a JSON object")
    return card


def default_threshold(card: dict[str, Any] | None) -> float:
    """The default score threshold of a detector: its card's calibrated one, else ``FALLBACK_THRESHOLD``."""
    cal = (card or {}).get("calibration")
    try:
        t = float(cal["threshold"]) if isinstance(cal, dict) else FALLBACK_THRESHOLD
    except (KeyError, TypeError, ValueError):
        return FALLBACK_THRESHOLD
    return t if 0.0 < t <= 1.0 else FALLBACK_THRESHOLD


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model described by ``path.json`` and load ``path.safetensors`` into it (eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from napari_lidnet.models.device import resolve_device

    w_path, j_path = weight_paths(path)
    card = read_card(path)
    if not w_path.is_file():
        raise FileNotFoundError(f"weights file not found: {w_path}")
    try:
        model = build_model(card["kind"], card["arch"], card.get("config"))
    except ValueError as exc:
        raise ValueError(f"{j_path}: {exc}") from exc
    blob = w_path.read_bytes()
    digest = card.get("sha256")
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
        blob = _backup_matching(w_path, digest)  # a save killed between its two renames: the old pair is kept
        if blob is None:
            raise ValueError(f"{w_path}: contents do not match the sha256 in {j_path.name} (from different saves?)")
    try:
        tensors = load(blob)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"{w_path}: not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if tuple(expected[k].shape) != tuple(tensors[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            shapes = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:5]]
            parts.append(f"shape mismatch {shapes}")
        raise ValueError(f"{w_path}: tensors do not fit {card['kind']} {card['arch']!r}: " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)
    return model.to(resolve_device(device)).eval(), card  # "cuda" without one: the CPU, said (torch would fail)
