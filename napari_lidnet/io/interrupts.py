"""A second Ctrl-C held back while a checkpoint is being written (review 2026-12-06: one that cut a write short
tore the checkpoint that the first Ctrl-C's message said was kept)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_state = {"depth": 0, "pending": False}


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Inside, :func:`interrupt_now` waits: KeyboardInterrupt is raised when the (outermost) block ends."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        if _state["depth"] == 0 and _state["pending"]:
            _state["pending"] = False
            raise KeyboardInterrupt


def interrupt_now() -> None:
    """Raise KeyboardInterrupt now, or, inside :func:`uninterrupted`, when it ends."""
    if _state["depth"]:
        _state["pending"] = True
        return
    raise KeyboardInterrupt
