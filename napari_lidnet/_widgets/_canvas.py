"""A matplotlib Qt canvas that tolerates being deleted before a queued ``draw_idle`` runs."""

from __future__ import annotations

import contextlib
import time

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg


class PlotCanvas(FigureCanvasQTAgg):
    """FigureCanvasQTAgg whose deferred draw is a no-op once Qt has deleted the widget (a dock closed mid-run);
    ``last_draw_s`` is how long the last draw took on the GUI thread."""

    last_draw_s: float = 0.0

    def draw(self) -> None:
        t0 = time.perf_counter()
        with contextlib.suppress(RuntimeError):  # "wrapped C/C++ object ... has been deleted"
            super().draw()
        self.last_draw_s = time.perf_counter() - t0
