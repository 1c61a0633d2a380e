"""A second Ctrl-C held back while a checkpoint is being written (one that cut a write short would tear the
checkpoint that the first Ctrl-C's message says is kept)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_state = {"depth": 0, "pending": False}


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Inside, :func:`interrupt_now` waits: KeyboardInterrupt is raised when the (outermost) block ends, unless it
    ends with an error of its own (a full disk), which is then raised instead."""
    _state["depth"] += 1
    try:
        yield
    except BaseException:  # an error of the write itself goes on as it is, with its own message
        _state["depth"] -= 1
        if _state["depth"] == 0:
            _state["pending"] = False
        raise
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
