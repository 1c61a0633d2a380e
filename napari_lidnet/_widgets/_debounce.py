"""One Qt timer for work that should run once after a burst of changes (a slider dragged, napari announcing new
boxes and then their scores, a region drawn): each change restarts it, the work runs when it fires."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import QTimer


def debounce_timer(parent: Any, slot: Callable[[], Any], interval_ms: int = 0) -> QTimer:
    """A single-shot timer owned by ``parent`` that calls ``slot`` ``interval_ms`` after its last ``start()`` (0:
    when the event loop next runs, after the changes already queued)."""
    timer = QTimer(parent)
    timer.setSingleShot(True)
    timer.setInterval(interval_ms)
    timer.timeout.connect(slot)
    return timer
