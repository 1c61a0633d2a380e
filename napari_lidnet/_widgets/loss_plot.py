"""Live plot of a training run: per-step losses of both networks, validation PSNR and lesion sensitivity.

Fed with the trainer's progress records (``_training.trainer.Trainer.run``) on the GUI thread; redraws at most
every ``interval_ms`` (a validation record redraws at once), so a fast run does not spend its time drawing.
"""

from __future__ import annotations

import math
import time
from typing import Any

from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from napari_lidnet._widgets._canvas import PlotCanvas

#: loss keys drawn (the joint "total" is left out: it is dominated by the pixel term)
PLOTTED_LOSSES = ("pixel", "detection", "roi_perceptual", "whole_perceptual")


def loss_series_name(stage: str, key: str) -> str:
    """Legend name of a loss, the network that trains first: ``denoiser: detection`` is the denoiser's joint-loss
    term (the detector's loss on the denoised image), ``detector: detection`` the detector's own training loss."""
    net = "detector" if stage.endswith("detector") else "denoiser"
    return f"{net}: {key.replace('_', ' ').replace('roi', 'ROI')}"


class TrainingPlot(QWidget):
    """Two panels: losses per step (log scale) and validation PSNR (dB, left) / sensitivity (right) per step."""

    def __init__(self, parent: QWidget | None = None, interval_ms: int = 500) -> None:
        super().__init__(parent)
        self.figure = Figure(figsize=(4, 3.6), tight_layout=True)
        self.canvas = PlotCanvas(self.figure)
        self.canvas.setMinimumHeight(220)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self.ax_loss = self.figure.add_subplot(2, 1, 1)
        self.ax_val = self.figure.add_subplot(2, 1, 2)
        self.ax_sens = self.ax_val.twinx()
        self.losses: dict[str, list[tuple[int, float]]] = {}
        self.validation: list[tuple[int, str, dict[str, float]]] = []
        self.n_draws = 0
        self._dirty = False
        self._last_redraw = 0.0
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._maybe_redraw)
        self._timer.start()
        self.redraw()

    def clear(self) -> None:
        """Forget every series (a new run starts)."""
        self.losses.clear()
        self.validation.clear()
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
        """Draw both panels from the stored series (cheap enough for a few thousand points)."""
        self._dirty = False
        self._last_redraw = time.monotonic()
        self.n_draws += 1
        ax = self.ax_loss
        ax.clear()
        for name, pts in sorted(self.losses.items()):
            xs, ys = zip(*pts)
            ax.plot(xs, ys, lw=1, label=name)
        ax.set_ylabel("loss")
        if self.losses:
            ax.set_yscale("log")
            ncols = 2 if len(self.losses) > 1 else 1  # above the panel: a legend inside covers the curves
            ax.legend(fontsize=6.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=ncols, frameon=False)
        ax.tick_params(labelsize=7)
        self.ax_val.clear()
        self.ax_sens.clear()
        psnr = [(s, v["psnr"]) for s, _, v in self.validation if "psnr" in v]
        sens = [(s, v["sensitivity"]) for s, _, v in self.validation if "sensitivity" in v]
        if psnr:
            self.ax_val.plot(*zip(*psnr), "o-", color="tab:blue", label="PSNR")
        if sens:
            self.ax_sens.plot(*zip(*sens), "s--", color="tab:orange", label="sensitivity")
            self.ax_sens.set_ylim(-0.02, 1.02)
        self.ax_val.set_ylabel("val PSNR (dB)", color="tab:blue", fontsize=8)
        self.ax_sens.set_ylabel("sensitivity", color="tab:orange", fontsize=8)
        self.ax_sens.yaxis.set_label_position("right")  # clear() on a twin axis moves its label to the left
        self.ax_val.set_xlabel("step", fontsize=8)
        for a in (self.ax_val, self.ax_sens):
            a.tick_params(labelsize=7)
        self.canvas.draw_idle()
