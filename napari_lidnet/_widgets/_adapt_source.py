"""The Fine-tune widget's third source: low-dose image layers alone -> ``_training.selfsup.adapt_job``.

The reader keeps a volume's metadata on its layer (slice positions, DICOM files, warnings, slice thickness, the
LPS affine), so :func:`volume_of_layer` rebuilds the CTVolume that ``adapt_data.slice_positions`` and the guard rails
read. :func:`adapt_request` checks everything a run needs (model name, starting model, ``prepare_adapt``) before a
worker starts; :class:`NoReferencePlot` is the run panel's plot, which also draws the self-supervised loss and the
no-reference estimates (noise SD, edge sharpness) of the input, the starting model and the adapted model. No torch
import here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._training.adapt_data import prepare_adapt
from .._training.finetune import model_name_problems
from .._training.selfsup import adapt_job, estimates_line
from ..io.checks import ct_problem
from ..io.volume import CTVolume
from ..layer_data import volume_from_layer
from ._canvas import paint_theme
from ._roles import is_denoised, recorded_dose
from .layer_inputs import inputs_from_layers
from .loss_plot import TrainingPlot

#: (key, label) of the source in the data source picker
ADAPT_SOURCE = ("adapt", "low-dose scans only (self-supervised)")
#: (key, label) of the self-supervised schemes (``adapt_data.SCHEMES``), the measured choice first
SCHEME_ITEMS = (
    ("neighbours", "neighbouring slices (recommended)"),
    ("blindspot", "blind spot (experimental)"),
)
SCHEME_TIPS = {
    "neighbours": "the mean of the slices above and below is the target: needs >= 3 contiguous slices",
    "blindspot": "works on single slices; degraded the shipped denoiser in the benchmark: use only without neighbours",
}
#: the advanced settings that the self-supervised source does not use (disabled while it is chosen)
UNUSED_SETTINGS = (
    "mode_combo",
    "insert_spin",
    "rounds_spin",
    "den_steps_spin",
    "det_steps_spin",
    "det_weight_spin",
    "roi_weight_spin",
    "lr_spin",
    "val_spin",
    "box_threshold_spin",
)
SELFSUP_SERIES = "D self-supervised"
WIDGET_COMMAND = "napari LIDnet Fine-tune widget: low-dose scans only (self-supervised)"


def adapt_default(key: str) -> Any:
    """``adapt_job``'s default for ``key`` (steps, lr, ...): the widget starts where the CLI does."""
    return inspect.signature(adapt_job).parameters[key].default


def volume_of_layer(layer: Any, hu: np.ndarray | None = None) -> CTVolume:
    """The CTVolume an image layer shows (``layer_data.volume_from_layer``): its pixels (``hu`` when already read),
    scale as spacing, its reader's geometry, name and metadata (where the reader keeps slice positions)."""
    data = np.asarray(layer.data if hu is None else hu, np.float32)
    spacing = tuple(abs(float(s)) or 1.0 for s in layer.scale)
    return volume_from_layer(data, spacing, tuple(layer.translate), dict(layer.metadata or {}), layer.name)


@dataclass
class AdaptRequest:
    """A checked self-supervised run: the volumes, the new model's name and ``adapt_job``'s keyword arguments."""

    name: str
    volumes: list[CTVolume]
    kwargs: dict[str, Any] = field(default_factory=dict)


def adapt_request(
    layers: Sequence[Any],
    shapes_layer: Any | None,
    current_slice: int | None,
    name: str,
    settings: dict[str, Any],
    all_layers: Sequence[Any] = (),
) -> tuple[AdaptRequest | None, list[str]]:
    """The run ``settings`` describe (scheme, steps, lr, from_model, patch_size, batch_size, device, seed) on the
    image ``layers`` with optional lesion boxes from ``shapes_layer``, or (None, every problem found): nothing is
    started, read or written when the data, the name or the starting model cannot work."""
    problems = list(model_name_problems(name))
    if not settings.get("from_model"):
        problems.append("choose a starting denoiser: self-supervised adaptation fine-tunes a trained model")
    if settings["patch_size"] % 16:
        problems.append(f"patch size {settings['patch_size']} must be a multiple of 16")
    if not layers:
        return None, [*problems, "tick at least one low-dose image layer (open a CT series)"]
    for ly in layers:  # it learns the noise of the scans it sees: a normal-dose or denoised one teaches the wrong one
        dose, denoised = recorded_dose(ly), is_denoised(ly)
        if denoised or (dose is not None and dose >= 1.0):
            problems.append(f"{ly.name}: its metadata says {'denoised' if denoised else 'normal dose'}; tick the "
                            "low-dose scans to adapt to")  # fmt: skip
    inputs, notes = inputs_from_layers(layers, shapes_layer, current_slice, all_layers)
    problems.extend(notes)
    volumes = [volume_of_layer(ly, np.asarray(item.full_hu, np.float32)) for ly, item in zip(layers, inputs)]
    for vol in volumes:  # as the other sources and `lidnet adapt` refuse them: another modality, not HU, NaN
        problem = ct_problem(vol.hu, str(vol.metadata.get("modality", "") or ""), repr(vol.name))
        if problem:
            problems.append(problem)
    boxes = None if shapes_layer is None else [item.boxes for item in inputs]
    try:
        prepare_adapt(volumes, settings["scheme"], settings["patch_size"], boxes)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        return None, problems
    kwargs = {key: settings[key] for key in ("scheme", "steps", "lr", "patch_size", "batch_size", "device", "seed")}
    kwargs.update(from_model=settings["from_model"], boxes=boxes, command=WIDGET_COMMAND)
    return AdaptRequest(name.strip(), volumes, kwargs), []


def estimate_text(rec: dict[str, Any]) -> str:
    """One line of an ``estimate`` record: noise SD and edge sharpness of each image measured."""
    return f"no-reference estimates at step {rec.get('step', 0)}: {estimates_line(rec.get('estimates') or {})}"


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


class NoReferencePlot(TrainingPlot):
    """The training plot, which also takes ``selfsup.adapt_job``'s records: the self-supervised loss per step in
    the top panel; in the bottom one, instead of validation, the no-reference noise SD (HU, left axis) and edge
    sharpness (HU/mm, right axis) of the starting model (step 0) and the adapted model as it trains, the input's
    as dotted lines. Loss points keep the parent's throttled redraw; an estimate (a few per run) redraws at once."""

    def __init__(self, parent: Any = None, interval_ms: int = 500) -> None:
        #: which (input / start / adapted) -> [(step, noise SD HU, edge sharpness HU/mm)], None where not measurable
        self.estimates: dict[str, list[tuple[int, float | None, float | None]]] = {}
        super().__init__(parent, interval_ms)

    def clear(self) -> None:
        """Forget every series (a new run starts)."""
        self.estimates.clear()
        super().clear()

    def add_record(self, rec: dict[str, Any]) -> None:
        """Take one progress record of the trainer or of the self-supervised run."""
        stage = str(rec.get("stage", ""))
        if stage == "adapt":
            value = _finite((rec.get("losses") or {}).get("selfsup"))
            if value is not None and value > 0:
                self.losses.setdefault(SELFSUP_SERIES, []).append((int(rec.get("step", 0)), value))
                self._dirty = True
        elif stage in ("estimate", "finished", "stopped") and rec.get("estimates"):
            self._add_estimates(int(rec.get("step", 0)), rec["estimates"])
        else:
            super().add_record(rec)

    def _add_estimates(self, step: int, estimates: dict[str, dict[str, Any]]) -> None:
        added = False
        for which, est in estimates.items():
            at = 0 if which in ("input", "start") else step
            series = self.estimates.setdefault(which, [])
            if all(s != at for s, _, _ in series):
                series.append((at, _finite(est.get("noise_sd_hu")), _finite(est.get("edge_sharpness_hu_per_mm"))))
                added = True
        if added:
            self.redraw()

    def redraw(self) -> None:
        """Draw both panels; with estimates, the bottom panel shows them instead of validation."""
        super().redraw()
        if self.estimates:
            self._draw_estimates()
            paint_theme(self.figure, self.theme)  # clear() gave the panels matplotlib's colours back
            self.canvas.draw_idle()

    def _draw_estimates(self) -> None:
        est = self.estimates
        model = sorted(est.get("start", []) + est.get("adapted", []))
        panels = ((self.ax_val, 1, "tab:blue", "noise SD"), (self.ax_sens, 2, "tab:orange", "edges"))
        for ax, k, colour, label in panels:
            ax.clear()
            pts = [(p[0], p[k]) for p in model if p[k] is not None]
            if pts:
                ax.plot(*zip(*pts), "o-" if k == 1 else "s--", color=colour, ms=3, label=f"{label} (model)")
            inputs = [p[k] for p in est.get("input", []) if p[k] is not None]
            for value in inputs:
                ax.axhline(value, color=colour, ls=":", lw=1, label=f"{label} (input)")
            top = max([v for _, v in pts] + inputs, default=0.0)
            if top > 0:  # from zero: a change of a tenth of an HU must not look like a trend
                ax.set_ylim(0, 1.15 * top)
            ax.tick_params(labelsize=7)
        self.ax_sens.yaxis.set_label_position("right")  # clear() moved the twin axis' label to the left
        self.ax_val.set_ylabel("noise SD (HU)", color="tab:blue", fontsize=8)
        self.ax_sens.set_ylabel("edge sharpness (HU/mm)", color="tab:orange", fontsize=8)
        self.ax_val.set_xlabel("step (dotted: the low-dose input)", fontsize=8)
