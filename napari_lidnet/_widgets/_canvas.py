"""A matplotlib Qt canvas that tolerates being deleted before a queued ``draw_idle`` runs."""

from __future__ import annotations

import contextlib

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg


class PlotCanvas(FigureCanvasQTAgg):
    """FigureCanvasQTAgg whose deferred draw is a no-op once Qt has deleted the widget (a dock closed mid-run)."""

    def draw(self) -> None:
        with contextlib.suppress(RuntimeError):  # "wrapped C/C++ object ... has been deleted"
            super().draw()
