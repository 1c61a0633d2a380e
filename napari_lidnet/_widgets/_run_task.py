"""A training run in the napari window's task list: closing the window stops it as Stop does and waits for its
model to be saved.

napari lists a window's running tasks when the user closes it (asking to confirm) and cancels each on closing. Its
own registration of a worker cancels by quitting it at its next progress record, before the run saves anything;
this one sets the run's stop flag and waits for the job to return (the best checkpoint so far saved as a model).
The task list is napari's window API for plugins (``Window._register_task_status``); where a napari lacks it,
nothing is registered and closing the dock still stops the run.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from ._roles import behind_proxy

#: how long closing the window waits for a stopped run to save its model (one step, then the export)
CLOSE_WAIT_S = 120.0


def _window(viewer: Any) -> Any:
    """The napari window behind the viewer a dock holds (its plugin proxy warns at each private attribute read and
    will refuse them), or None."""
    return getattr(behind_proxy(viewer), "window", None)


def register_run(viewer: Any, description: str, stop: threading.Event, done: threading.Event) -> Any:
    """Register a running job with ``viewer``'s window; cancelling it sets ``stop`` and waits up to
    ``CLOSE_WAIT_S`` for ``done``. Returns the task id (None where the window has no task list)."""
    register = getattr(_window(viewer), "_register_task_status", None)
    if register is None:
        return None
    from napari.utils.task_status import Status

    def cancel() -> bool:
        stop.set()
        return wait_painting(done, CLOSE_WAIT_S)

    text = f"{description}: closing stops it and saves the best model so far"
    return register("LIDnet", Status.BUSY, text, cancel_callback=cancel)


def wait_painting(done: threading.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``done`` on the GUI thread while Qt keeps painting and delivering the worker's
    signals (no input events: the closing window takes no clicks), so the window is not "not responding" while a
    stopped run saves its model. True once ``done`` is set."""
    import time

    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not done.wait(0.02):
        if time.monotonic() > end:
            return False
        QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    return True


def finish_run(viewer: Any, task: Any) -> None:
    """Mark a registered run as completed (nothing to do for None or a window already gone)."""
    if task is None:
        return
    from napari.utils.task_status import Status

    with contextlib.suppress(AttributeError, RuntimeError):  # the window was closed meanwhile
        _window(viewer)._update_task_status(task, Status.COMPLETED, "")
