"""napari's status-bar hint of a layer names its tool keys ("use <R> for add rectangles"). Where a LIDnet dock binds
those keys on the layer (R rejects a finding, 7 sets the abdomen window), the hint said what the key no longer does:
it is mended to drop those and say what they do now, again each time napari writes it (at every mode change)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


def napari_key(key: str) -> str:
    """A key as napari's hints write it: 'r' -> 'R', 'Shift-A' -> 'Shift+A'."""
    return "+".join(part.upper() if len(part) == 1 else part for part in key.split("-"))


def mend_help(layer: Any, keys: Iterable[str], hint: str) -> None:
    """``layer.help`` without napari's hints for ``keys`` and with ``hint`` (no ', ' in it) once."""
    taken = {napari_key(k) for k in keys}
    parts = [p for p in str(layer.help or "").split(", ") if p and not _names(p, taken)]
    if hint not in parts:
        parts.append(hint)
    text = ", ".join(parts)
    if text != layer.help:
        layer.help = text


def keep_help_mended(watch: Any, layer: Any, keys: Iterable[str], hint: str) -> None:
    """Mend ``layer``'s hint now and whenever napari writes it again, until the dock's ``watch`` (its
    ``LayerWatch``) closes: then ``hint`` goes (napari names its own keys again at the next mode change)."""
    keys = list(keys)
    watch.connect(layer.events.help, lambda _event=None: mend_help(layer, keys, hint))
    watch.on_close(layer, lambda: _unmend(layer, hint))
    mend_help(layer, keys, hint)


def _unmend(layer: Any, hint: str) -> None:
    layer.help = ", ".join(p for p in str(layer.help or "").split(", ") if p and p != hint)


def _names(part: str, keys: set[str]) -> bool:
    match = re.match(r"use <([^>]+)> for ", part)
    return bool(match) and match.group(1) in keys
