"""A matplotlib Qt canvas that tolerates being deleted before a queued ``draw_idle`` runs."""

from __future__ import annotations

import contextlib
import time
from typing import Any

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


def paint_theme(figure: Any, theme: str) -> None:
    """Draw ``figure`` in napari's ``theme``: the docks' panel colour behind, the theme's text colour for text, ticks
    and frames drawn in matplotlib's default black (a curve's coloured axis label keeps its colour). A white plot in
    the dark theme is a bright patch in a dark reading room; black text on the dark theme's panels does not read."""
    from matplotlib.colors import same_color
    from napari.utils.theme import available_themes, get_theme

    if theme not in available_themes():
        return
    colours = get_theme(theme)
    face, ink = colours.foreground.as_hex(), colours.text.as_hex()
    before = getattr(figure, "lidnet_ink", "black")
    figure.set_facecolor(face)
    for ax in figure.axes:
        ax.set_facecolor(face)
        for spine in ax.spines.values():
            spine.set_edgecolor(ink)
        ax.tick_params(which="both", colors=ink)
        legend = ax.get_legend()
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if legend is not None:  # its frame in the panel's colour too (white behind white text did not read)
            texts += [*legend.get_texts(), legend.get_title()]
            legend.get_frame().set_facecolor(face)
            legend.get_frame().set_edgecolor(ink)
        for text in [*texts, *figure.texts]:
            if same_color(text.get_color(), "black") or same_color(text.get_color(), before):
                text.set_color(ink)
    figure.lidnet_ink = ink  # the next theme's ink replaces this one
