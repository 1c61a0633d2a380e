"""Live plot of a training run: per-step losses of both networks, validation PSNR and lesion sensitivity.

Fed with the trainer's progress records (``_training.trainer.Trainer.run``) on the GUI thread; redraws at most
every ``interval_ms`` (a validation record redraws at once), so a fast run does not spend its time drawing.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_lidnet._widgets._canvas import PlotCanvas, paint_theme

#: loss keys drawn (the joint "total" is left out: it is dominated by the pixel term)
PLOTTED_LOSSES = ("pixel", "detection", "roi_perceptual", "whole_perceptual")


def loss_series_name(stage: str, key: str) -> str:
    """Legend name of a loss, the network that trains first: ``denoiser: detection`` is the denoiser's joint-loss
    term (the detector's loss on the denoised image), ``detector: detection`` the detector's own training loss."""
    net = "detector" if stage.endswith("detector") else "denoiser"
    return f"{net}: {key.replace('_', ' ').replace('roi', 'ROI')}"


class TrainingPlot(QWidget):
    """Two panels: losses per step (log scale) and validation PSNR (dB, left) / sensitivity (right) per step.

    The curves are drawn once and then given their new points (no panel cleared and rebuilt); the layout is worked out
    again only when a curve joins the legend: a draw holds the GUI thread, and the viewer stutters meanwhile."""

    def __init__(self, parent: QWidget | None = None, interval_ms: int = 500) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(4, 3.6))
        self.canvas = PlotCanvas(self.figure)
        self.canvas.setMinimumHeight(220)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax_loss = self.figure.add_subplot(2, 1, 1)
        self.ax_val = self.figure.add_subplot(2, 1, 2)
        self.ax_sens = self.ax_val.twinx()
        self._style_axes()
        self.theme = "dark"  # napari's default; the dock passes the viewer's (``set_theme``)
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.validation: list[tuple[int, str, dict[str, float]]] = []
        self._lines: dict[str, Any] = {}
        self.n_draws = 0
        self._dirty = False
        self._last_redraw = 0.0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._maybe_redraw)
        self._timer.start()
        self.redraw()

    def _style_axes(self) -> None:
        """Labels, tick sizes and the (empty) validation curves: set once."""
        self.ax_loss.set_ylabel("loss")
        self.ax_val.set_ylabel("val PSNR (dB)", color="tab:blue", fontsize=8)
        self.ax_sens.set_ylabel("sensitivity", color="tab:orange", fontsize=8)
        self.ax_sens.yaxis.set_label_position("right")
        self.ax_sens.set_ylim(-0.02, 1.02)
        self.ax_val.set_xlabel("step", fontsize=8)
        for a in (self.ax_loss, self.ax_val, self.ax_sens):
            a.tick_params(labelsize=7)
        (self._psnr_line,) = self.ax_val.plot([], [], "o-", color="tab:blue", label="PSNR")
        (self._sens_line,) = self.ax_sens.plot([], [], "s--", color="tab:orange", label="sensitivity")
        self.figure.tight_layout()

    def clear(self) -> None:
        """Forget every series (a new run starts)."""
        self.losses.clear()
        self.validation.clear()
        for line in self._lines.values():
            line.remove()
        self._lines.clear()
        legend = self.ax_loss.get_legend()
        if legend is not None:
            legend.remove()
        self.ax_loss.set_yscale("linear")
        self.redraw()

    def add_record(self, rec: dict[str, Any]) -> None:
        """Take one progress record: a training step adds loss points, a validation adds PSNR/sensitivity."""
        stage = str(rec.get("stage", ""))
        step = int(rec.get("step", 0))
        if stage == "validate":
            self.validation.append((step, str(rec.get("after", "")), dict(rec.get("val") or {})))
            self.redraw()
            return
        for key, value in (rec.get("losses") or {}).items():
            if key in PLOTTED_LOSSES and value is not None and math.isfinite(value) and value > 0:
                self.losses.setdefault(loss_series_name(stage, key), []).append((step, float(value)))
                self._dirty = True

    def _maybe_redraw(self) -> None:
        """Redraw new points, but keep plotting under a tenth of the GUI thread's time (a slow draw waits longer)."""
        wait = max(self._timer.interval() / 1000, 9 * self.canvas.last_draw_s)
        if self._dirty and time.monotonic() - self._last_redraw >= wait:
            self.redraw()

    def redraw(self) -> None:
        """Give the curves their stored points (a new series gets a curve and a legend entry) and draw."""
        self._dirty = False
        self._last_redraw = time.monotonic()
        self.n_draws += 1
        new = sorted(set(self.losses) - set(self._lines))
        for name in sorted(self.losses):
            if name in new:
                (self._lines[name],) = self.ax_loss.plot([], [], lw=1, label=name)
            self._lines[name].set_data(*zip(*self.losses[name]))
        if new:  # above the panel: a legend inside covers the curves
            self.ax_loss.set_yscale("log")
            self.ax_loss.yaxis.set_minor_locator(NullLocator())  # dozens of minor ticks made each draw slow
            handles = [self._lines[name] for name in sorted(self._lines)]
            legend = self.ax_loss.legend(handles=handles, fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0),
                                         ncols=1, frameon=False)  # fmt: skip
            legend.set_in_layout(False)  # in the layout, a wide legend squeezed the panels to a few pixels
        psnr = [(s, v["psnr"]) for s, _, v in self.validation if "psnr" in v]
        sens = [(s, v["sensitivity"]) for s, _, v in self.validation if "sensitivity" in v]
        self._psnr_line.set_data(*(zip(*psnr) if psnr else ([], [])))
        self._sens_line.set_data(*(zip(*sens) if sens else ([], [])))
        for ax in (self.ax_loss, self.ax_val, self.ax_sens):
            ax.relim()
            ax.autoscale_view(scaley=ax is not self.ax_sens)  # sensitivity keeps 0..1; its steps widen the x-axis
        if new:
            self._layout()
            paint_theme(self.figure, self.theme)  # the new legend entries too
        self.canvas.draw_idle()

    def set_theme(self, theme: str) -> None:
        """Draw the plot in napari's ``theme`` (the dock follows the viewer's)."""
        self.theme = theme
        paint_theme(self.figure, theme)
        self.canvas.draw_idle()

    def _layout(self) -> None:
        """The panels laid out for the canvas as it is, with room above the loss panel for its legend (one column:
        two were wider than the reading room's column)."""
        with contextlib.suppress(ValueError, np.linalg.LinAlgError):  # a canvas too small to lay out: as it was
            self.figure.tight_layout()
            legend = self.ax_loss.get_legend()
            if legend is not None and self.figure.bbox.height > 0:
                height = legend.get_window_extent(self.canvas.get_renderer()).height / self.figure.bbox.height
                self.figure.subplots_adjust(top=max(self.figure.subplotpars.top - height, 0.45))

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        """A resized column lays the panels out again (the legend's share of the height changes)."""
        super().resizeEvent(event)
        self._layout()
        self.canvas.draw_idle()
