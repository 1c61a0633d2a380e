"""Dock widget: denoise a CT image layer with LIDnet and show detected lesions as Shapes boxes.

Thin by design (DESIGN.md): it gathers inputs, runs ``_worker_utils.inference_job`` in a napari generator worker
(progress per batch of slices, Cancel stops within one batch, the viewer stays responsive) and turns the returned
arrays into layers on the GUI thread. Output layers are never the input layer, and re-running replaces them.
"Compare" shows input and output side by side with one window/level (``compare.CompareView``); "Flip" (key F)
shows one then the other in place. A model pair is listed once by its name (``NAME`` for ``NAME_denoiser`` and
``NAME_detector``); choosing it for one network chooses its partner for the other. torch is not imported at
module level. The output layers are ``_denoise_outputs``', the exports ``_denoise_export``'s.
"""

from __future__ import annotations

import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from ._debounce import debounce_timer
from ._denoise_export import DenoiseExports
from ._denoise_outputs import DenoiseOutputs, threshold_text
from ._docking import DockHome, add_tips, scroll_layout, show_message, wrapping_label
from ._layer_watch import LayerWatch, renamed_to
from ._roles import (
    behind_proxy,
    current_slice,
    fill_models,
    grayscale_images,
    normal_dose_of,
    pair_name,
    pixel_mm,
    slice_not_shown,
)
from ._worker_utils import (
    Failure,
    JobOutput,
    ModelStore,
    Progress,
    fill_devices,
    inference_job,
    share_cores,
)
from .compare import FLIP_KEY, CompareView, thin_note
from .reading_room import ReadingRoom

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

TITLE = "Denoise"  # the dock's tab
NONE_ITEM = "(none)"
BROWSE_ITEM = "Browse..."
SCOPES = ("all slices", "current slice")
#: score threshold slider: integer percent, from the detection floor (inference.BOX_FLOOR) to 0.95
THRESHOLD_RANGE = (5, 95)
#: largest noise SD (HU) the strength box takes; 0 shows "all noise". Load CT advises removing the SD its low dose
#: added over the body: 224 HU on a real chest with 59 HU of its own at 25% (200 was too small), more at 10%
REMOVE_SD_MAX = 1000.0
#: the strength box's modes: the noise SD to remove (BM3D's sigma), or the noise SD to leave in the output
STRENGTH_MODES = ("remove", "leave")


def _replaced_note(last: dict | None, layer: Any, res: Any) -> str | None:
    """What a run on ``layer`` replaces on screen of ``last`` (that layer's previous result) when it could not be
    folded into it: a "current slice" run after a run of other slices, or after a volume run with other models or
    strength; None when the new run covers what was there."""
    if last is None or last["layer"] != layer or layer.ndim != 3:
        return None
    old, new = {int(i) for i in last["result"].slices}, {int(i) for i in res.slices}
    if old <= new:
        return None
    if len(old) >= layer.data.shape[0]:
        return "replaces the all-slices result on screen (other models or strength)"
    what = f"slice{'s' * (len(old) > 1)} {', '.join(map(str, sorted(old)))}"
    return f"replaces the result of {what} (run all slices to keep every slice)"


class DenoiseDetectWidget(DenoiseOutputs, DenoiseExports, QWidget):
    """Denoise + detect on the selected CT image layer; outputs "<name> denoised", "<name> lesions" and optionally
    "<name> removed noise". Public methods (``run``, ``cancel``, ``refresh_models``, ``export_dicom``,
    ``export_boxes``, ``set_threshold``) take plain values so scripts and tests need no dialogs.

    ``job_finished`` is emitted on the GUI thread after a run ends (done, failed or cancelled) and its outputs are
    in the viewer; connect before ``run()`` to wait on it without a race."""

    job_finished = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.export_worker: Any = None  # a DICOM export writing in the background
        self.batch_size = 4
        self._store = ModelStore()
        self._cache: Any = None  # inference.ResultCache, created on the first run (torch import)
        self._last: dict[str, Any] | None = None
        self._source_gone = ""  # the last run's image was deleted: what it had made ("denoised" or "boxes")
        self._cached_inputs: dict[str, weakref.ref] = {}  # an input's fingerprint in the cache's keys -> its image
        self._outputs: list[list[Any]] = []  # [source layer, role, output layer, the name it was given]
        self._followed: weakref.WeakSet = weakref.WeakSet()  # sources whose moves the outputs follow
        self._volumes: list[dict[str, Any]] = []  # the last whole-volume result of each source layer
        self._replacing = False  # a run is replacing one of its outputs (not the reader deleting it)
        self._pending: dict[str, Any] = {}
        self._summary = ""  # the last run's status line without its lesion count (the slider rewrites that)
        self._status_base = self._status_shown = ""  # a run's status line without and with its slice note
        self.compare = CompareView(napari_viewer, self)
        self._build_ui()
        self.refresh_layers()
        self.refresh_models()
        self.watch = LayerWatch(napari_viewer, self._on_layers_changed)
        self._flip_key = lambda _target: self.flip()  # one function, so closing the dock unbinds exactly it
        self.watch.bind_key(self.viewer, FLIP_KEY, self._flip_key)
        for layer in self.viewer.layers:
            self._bind_flip(layer)
        self.watch.connect(self.viewer.layers.events.inserted, lambda event: self._bind_flip(event.value))
        self.watch.connect(self.viewer.dims.events.current_step, self._on_step)
        DockHome(self, "right", TITLE)

    def _bind_flip(self, layer: Any) -> None:
        """F flips on every layer: a Shapes layer's own F (napari's "move to front") would win while it is active,
        e.g. the lesions layer after the navigator's keys."""
        self.watch.bind_key(layer, FLIP_KEY, self._flip_key)

    def dock_closed(self) -> None:
        """The dock was closed: a running job is cancelled (its results dropped), the comparison left, and the
        widget stops listening to the viewer and unbinds its keys."""
        self._threshold_timer.stop()
        self.watch.close()
        self.compare.close()
        ReadingRoom.release(self.viewer, self)
        if self.worker is not None:
            self.worker.quit()

    # ------------------------------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        """The form (image, models, device, scope, threshold), run row, progress, compare row and exports."""
        self._create_form_fields()
        self._create_run_row()
        self._create_compare_row()
        self.export_dicom_button = QPushButton("Export denoised...")
        self.export_dicom_button.clicked.connect(self._export_dicom_dialog)
        self.export_boxes_button = QPushButton("Export boxes CSV/JSON...")
        self.export_boxes_button.clicked.connect(self._export_boxes_dialog)
        form = QFormLayout()
        for label, field in (("image", self.image_combo), ("denoiser", self.denoiser_combo),
                             ("detector", self.detector_combo), ("device", self.device_combo),
                             ("scope", self.scope_combo)):  # fmt: skip
            form.addRow(label, field)
        row = QHBoxLayout()
        row.addWidget(self.threshold_slider)
        row.addWidget(self.threshold_label)
        form.addRow("score threshold", row)
        form.addRow(self.strength_mode, self.strength_spin)
        form.addRow("", self.noise_check)
        exports = QVBoxLayout()
        exports.addWidget(self.export_dicom_button)
        exports.addWidget(self.export_boxes_button)
        layout = scroll_layout(self)
        layout.addLayout(form)
        layout.addLayout(self._run_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addLayout(self._compare_row)
        layout.addLayout(exports)
        layout.addStretch(1)
        self._on_threshold(self.threshold_slider.value())
        self._update_export_buttons()
        self._add_tips()

    def _add_tips(self) -> None:
        """Tooltips of the controls whose use is not in their name."""
        add_tips(
            (self.image_combo, "the CT image (HU) to process; pick a study (or its denoised layer) for Compare, Flip"),
            (self.denoiser_combo, "the denoising network: the shipped default, your fine-tuned models, or Browse... "
                                  "for a model file (.safetensors or .json); (none): detect on the input"),
            (self.detector_combo, "the lesion detector (its boxes go on '<image> lesions'); (none): denoise only"),
            (self.device_combo, "auto: a GPU when there is one, else the CPU"),
            (self.scope_combo, "current slice: the axial slice on screen, in seconds; all slices: the whole volume; "
                               "both run in the background (Cancel stops them)"),
            (self.export_dicom_button, "the denoised volume as a new DICOM series, written in the background (a "
                                       "NIfTI file when the source was NIfTI); never over existing files"),
            (self.export_boxes_button, "the detector's boxes at or above the threshold, unreviewed (the Lesion "
                                       "navigator exports a review), with lesion numbers; mm, positions where known"),
        )  # fmt: skip

    def _create_form_fields(self) -> None:
        """Image and model pickers, device, scope, score threshold and the removed-noise switch."""
        self.image_combo = QComboBox()
        self.denoiser_combo = QComboBox()
        self.detector_combo = QComboBox()
        for combo, kind in ((self.denoiser_combo, "denoiser"), (self.detector_combo, "detector")):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.activated.connect(lambda _i, c=combo, k=kind: self._on_model_activated(c, k))
        self.image_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.device_combo = QComboBox()
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        self._exact_threshold: float | None = None  # ``set_threshold``'s value, finer than the slider's steps
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setRange(*THRESHOLD_RANGE)
        self.threshold_slider.setValue(30)
        self.threshold_label = QLabel()
        self._threshold_timer = debounce_timer(self, self._apply_threshold)  # a dragged slider: boxes follow once
        self.threshold_slider.valueChanged.connect(self._on_threshold)
        self.detector_combo.currentIndexChanged.connect(self._threshold_from_detector)
        self.noise_check = QCheckBox("show removed noise")
        self.noise_check.setToolTip(
            "lay what the denoiser took out over the CT: blue where it lowered HU, red where it raised them, "
            "transparent where it removed nothing; speckle is noise, a coherent outline is anatomy it removed"
        )
        self.noise_check.toggled.connect(self._on_noise_toggled)
        self.strength_mode = QComboBox()
        self.strength_mode.addItems(STRENGTH_MODES)
        self.strength_mode.setToolTip(
            "remove: take out that SD of noise, as BM3D's sigma; leave: keep that SD of noise in the output's flat "
            "tissue (a fully denoised image can look too smooth to read; normal-dose scans show about 10 HU)"
        )
        self.strength_spin = QDoubleSpinBox()
        self.strength_spin.setRange(0.0, REMOVE_SD_MAX)
        self.strength_spin.setSingleStep(1.0)
        self.strength_spin.setDecimals(1)
        self.strength_spin.setSuffix(" HU SD")
        self.strength_mode.currentTextChanged.connect(self._on_strength_mode)
        self._on_strength_mode(self.strength_mode.currentText())

    def _on_strength_mode(self, mode: str) -> None:
        """The spin box's text at 0 and its tip follow the mode ("all noise" removed either way)."""
        self.strength_spin.setSpecialValueText("all noise" if mode == "remove" else "none (all removed)")
        self.strength_spin.setToolTip(
            "how much noise to remove, as the SD it has (like BM3D's sigma), e.g. what a dose reduction added; "
            "the rest of the scan's noise is kept. The output is the least-squares estimate of the scan without "
            "that noise (a Wiener blend), so it shows less noise than sqrt(total^2 - removed^2). "
            "'all noise': the network removes all it sees" if mode == "remove" else
            "how much noise to leave in the output, as the SD measured in its flattest soft tissue (the status "
            "line reads it after the run); the network's output is blended with the input, slice by slice"
        )  # fmt: skip

    def _create_run_row(self) -> None:
        """Run and Cancel, the progress bar and the message line."""
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setFormat("%p%")
        self.status = wrapping_label()
        self._run_row = QHBoxLayout()
        self._run_row.addWidget(self.run_button)
        self._run_row.addWidget(self.cancel_button)

    def _create_compare_row(self) -> None:
        """'Compare' (side by side, one window/level) and 'Flip' (in place, key F), on after a denoising run."""
        self.compare_button = QPushButton("Compare")
        self.compare_button.setCheckable(True)
        self.compare_button.setToolTip("input and denoised side by side, linked, with one window/level")
        self.compare_button.toggled.connect(self.set_compare)
        self.flip_button = QPushButton("Flip (F)")
        self.flip_button.setToolTip("show input and denoised one after the other, in place")
        self.flip_button.clicked.connect(self.flip)
        self._compare_row = QHBoxLayout()
        self._compare_row.addWidget(self.compare_button)
        self._compare_row.addWidget(self.flip_button)

    @property
    def remove_sd(self) -> float | None:
        """SD (HU) of the noise the denoiser removes, the rest is kept; None: all the noise (the spin box at 0) or
        the "leave" mode."""
        return self._strength("remove")

    @property
    def leave_sd(self) -> float | None:
        """SD (HU) of noise left in the output in the "leave" mode; None: the "remove" mode or 0 (all removed)."""
        return self._strength("leave")

    def _strength(self, mode: str) -> float | None:
        """The strength box's SD in ``mode``; None at 0 or in the other mode."""
        value = self.strength_spin.value()
        return None if value <= 0 or self.strength_mode.currentText() != mode else float(value)

    def set_remove_sd(self, value: float | None) -> None:
        """Set the noise SD to remove (None or 0: all noise); takes effect at the next Run."""
        self._set_strength("remove", value)

    def set_leave_sd(self, value: float | None) -> None:
        """Set the noise SD to leave in the output (None or 0: none, all removed); takes effect at the next Run."""
        self._set_strength("leave", value)

    def _set_strength(self, mode: str, value: float | None) -> None:
        self.strength_mode.setCurrentText(mode)
        self.strength_spin.setValue(0.0 if value is None else float(value))

    @property
    def threshold(self) -> float:
        """Current score threshold (0.05 to 0.95): the value last set (a detector's calibrated 0.49575, as
        ``lidnet detect`` applies it) while the slider stays on its step, else the slider's step."""
        step, exact = self.threshold_slider.value(), self._exact_threshold
        return exact if exact is not None and round(exact * 100) == step else step / 100.0

    def set_threshold(self, value: float) -> None:
        """Move the score threshold slider to ``value`` (kept exactly, not rounded to the slider's step); the boxes
        are re-filtered from the cached detections at once."""
        self._exact_threshold = float(value)
        step = round(float(value) * 100)
        if self.threshold_slider.value() == step:
            self._on_threshold(step)  # the same step, maybe another value: the label and the boxes follow
        else:
            self.threshold_slider.setValue(step)
        if self._threshold_timer.isActive():
            self._apply_threshold()

    def _message(self, text: str, error: bool = False) -> None:
        """The status line; an error also as a napari notification. Routine news stays in the status line: napari
        dismisses a toast only while its window is active, so it stayed over the window/level readout."""
        show_message(self.status, text, error, self.viewer.theme)
        if error:
            from napari.utils.notifications import show_error

            show_error(f"LIDnet: {text}")

    def _slice_note(self) -> str:
        """"denoised: slice 40 only; slice 20 on screen was not run" while the viewer shows another slice than the
        one a "current slice" run's outputs hold (there the input shows through its empty output); else ""."""
        only = self._only_slice() if self._last is not None else None
        src = self._last["layer"] if only is not None else None
        if src is None or src not in self.viewer.layers or slice_not_shown(self.viewer, src):
            return ""
        now = current_slice(self.viewer, src)
        res = self._last["result"]
        made = " and ".join(w for w, r in (("denoised", res.denoised), ("boxes", res.boxes)) if r is not None)
        return f"{made}: slice {only} only; slice {now} on screen was not run" if now != only else ""

    def _noted(self, text: str) -> str:
        """``text`` (a run's status line) with :meth:`_slice_note`, remembered so that scrolling updates the note."""
        self._status_base, note = text, self._slice_note()
        self._status_shown = f"{text}; {note}" if note else text
        return self._status_shown

    def _on_step(self, _event: Any = None) -> None:
        """The viewer moved to another slice: the run's status line gains or drops its slice note (a status line
        that says something else since is left alone)."""
        if self._status_shown and self.status.text() == self._status_shown:
            text = self._noted(self._status_base)
            if text != self.status.text():
                self.status.setText(text)

    # ---------------------------------------------------------------------------------------------- choices
    def _image_layers(self) -> list[Image]:
        return grayscale_images(self.viewer, ndims=None)  # a 4D image is listed, and refused with why

    def _on_layers_changed(self, renamed: dict[str, str] | None = None) -> None:
        self.refresh_layers(renamed)
        if self._replacing:  # a run replacing its own output: the comparison carries on with the new one
            return
        layers = self.viewer.layers
        pair = self.compare.pair
        if pair is not None and not all(ly in layers for ly in pair):  # one of the pair was deleted
            self.set_compare(False)
        elif self.compare.side_by_side and (added := [ly.name for ly in layers if ly.visible and ly not in pair]):
            self._end_side_by_side(added[0])  # napari's grid gives every shown layer a cell: calipers for one image
        # a deleted image's results are let go of (its volume, the record of its outputs, the last run and the
        # cached results), so its data can be freed (they held twice the study)
        self._volumes = [v for v in self._volumes if v["layer"] in layers]
        self._outputs = [e for e in self._outputs if e[0] in layers]
        if self._last is not None and self._last["layer"] not in layers:
            self._source_gone = "denoised" if self._last["result"].denoised is not None else "boxes"
            self._last = None
            self._update_export_buttons()
        gone = [fp for fp, image in self._cached_inputs.items() if image() is None or image() not in layers]
        for fp in gone:
            del self._cached_inputs[fp]
            if self._cache is not None:
                self._cache.forget(fp)  # a deleted image's results, not the other studies'

    def _end_side_by_side(self, added: str) -> None:
        self.set_compare(False)
        self._message(f"side by side ended: {added!r} was added (the grid would show it in a cell of its own, not "
                      "over the image); Flip (F) compares in place")  # fmt: skip

    def refresh_layers(self, renamed: dict[str, str] | None = None) -> None:
        """Refill the image choices; keeps the current choice (under its new name after a rename), else prefers
        the active layer, else the topmost low-dose image that names its normal dose."""
        current = renamed_to(self.image_combo.currentText(), renamed)
        names = [ly.name for ly in self._image_layers()]
        active = self.viewer.layers.selection.active
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        elif active is not None and active.name in names:
            self.image_combo.setCurrentText(active.name)
        else:  # a low-dose image over its reference (the sample): the one to denoise, not the first listed
            low = [ly.name for ly in self._image_layers() if ly.metadata.get("normal_dose")]
            if low:
                self.image_combo.setCurrentText(low[-1])
        self.image_combo.blockSignals(False)

    def refresh_models(self) -> None:
        """Refill both model choices from the registry (shipped defaults, user models) plus browsed files;
        keeps the current choices when they still exist, else selects the default model of each kind."""
        detector_before = self.detector_combo.currentData() if self.detector_combo.count() else "(empty)"
        for kind, combo in (("denoiser", self.denoiser_combo), ("detector", self.detector_combo)):
            browsed = [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())
                       if combo.itemData(i) and str(combo.itemText(i)).startswith("file: ")]  # fmt: skip
            problem = fill_models(combo, kind, [(NONE_ITEM, None)], [*browsed, (BROWSE_ITEM, None)])
            if problem:
                self.status.setText(problem)
        if self.detector_combo.currentData() != detector_before:
            self._threshold_from_detector()
        if self.denoiser_combo.currentData() is None and self.detector_combo.currentData() is None:
            self.status.setText(
                "no LIDnet weights found (none shipped, none in the user model folder): browse to a "
                "weights file or fine-tune a model"
            )
        fill_devices(self.device_combo)

    def add_model_file(self, path: str | Path, kind: str) -> bool:
        """Add a weights file (``.safetensors`` or ``.json`` of a pair) to the ``kind`` choices and select it.
        Checks the card now; returns False (with a message) when it is not a ``kind`` model."""
        from ..models.weights import read_card, weight_paths

        combo = self.denoiser_combo if kind == "denoiser" else self.detector_combo
        try:
            card = read_card(path)
            if card["kind"] != kind:
                raise ValueError(f"{path}: is a {card['kind']} model, expected a {kind}")
            w_path, _ = weight_paths(path)
            if not w_path.is_file():
                raise FileNotFoundError(f"weights file not found: {w_path}")
        except (OSError, ValueError) as exc:
            self._message(str(exc), error=True)
            return False
        stem = str(w_path.with_suffix(""))
        combo.insertItem(combo.count() - 1, f"file: {Path(stem).name}", stem)
        combo.setCurrentIndex(combo.count() - 2)
        return True

    def select_model(self, name: str, kinds: tuple[str, ...] = ("denoiser", "detector")) -> bool:
        """Choose the pair called ``name`` (``NAME_denoiser`` and/or ``NAME_detector``, or files named ``NAME``) in
        the pickers of ``kinds`` (default both); True when at least one was found."""
        found = False
        for combo, kind in ((self.denoiser_combo, "denoiser"), (self.detector_combo, "detector")):
            if kind not in kinds:
                continue
            for i in range(combo.count()):
                data = combo.itemData(i)
                if data and pair_name(Path(str(data)).name, kind) == name:
                    combo.setCurrentIndex(i)
                    found = True
                    break
        return found

    def _on_model_activated(self, combo: QComboBox, kind: str) -> None:
        """A model picked for one network brings its partner (same pair name) into the other picker."""
        if combo.currentText() == BROWSE_ITEM:
            self._maybe_browse(combo, kind)
            return
        data = combo.currentData()
        other = self.detector_combo if combo is self.denoiser_combo else self.denoiser_combo
        other_kind = "detector" if kind == "denoiser" else "denoiser"
        if not data or other.currentData() is None and other.currentText() == NONE_ITEM:
            return
        name = pair_name(Path(str(data)).name, kind)
        for i in range(other.count()):
            if other.itemData(i) and pair_name(Path(str(other.itemData(i))).name, other_kind) == name:
                other.setCurrentIndex(i)
                return

    def _maybe_browse(self, combo: QComboBox, kind: str) -> None:
        if combo.currentText() != BROWSE_ITEM:
            return
        path, _ = QFileDialog.getOpenFileName(self, f"LIDnet {kind} weights", "", "weights (*.safetensors *.json)")
        if not path or not self.add_model_file(path, kind):
            combo.setCurrentIndex(0)

    # --------------------------------------------------------------------------------------------------- run
    def _source_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return next((ly for ly in self._image_layers() if ly.name == name), None)

    def _scope_slices(self, layer: Any) -> list[int] | None:
        """The slices to run: None for all, the one on screen for "current slice"; [] (said why) when the view shows
        no one axial slice (a sagittal view's "current slice" would be one taken from the hidden slider)."""
        if layer.ndim < 3 or self.scope_combo.currentText() != "current slice":
            return None
        hidden = slice_not_shown(self.viewer, layer)
        if hidden:
            self._message(f"no current slice: {hidden}; show the axial slices (2D), or run the whole volume", True)
            return []
        return [current_slice(self.viewer, layer)]

    def run(self) -> Any:
        """Start denoising/detection on the chosen layer; returns the worker (None when nothing started)."""
        if self.worker is not None:
            self._message("already running: cancel it first", error=True)
            return None
        layer = self._source_layer()
        if layer is None:
            self._message("no CT image layer: open a CT series or add the sample data first", error=True)
            return None
        if layer.ndim not in (2, 3):  # the pixels are checked by the worker (``input_problem``), off this thread
            self._message(f"layer {layer.name!r} has {layer.ndim} dimensions; expected a 2D slice or 3D volume", True)
            return None
        den, det = self.denoiser_combo.currentData(), self.detector_combo.currentData()
        if den is None and det is None:
            self._message("choose a denoiser and/or a detector (no weights found? browse to a weights file)", True)
            return None
        slices = self._scope_slices(layer)
        if slices == []:
            return None
        if self._cache is None:
            from ..inference import ResultCache

            self._cache = ResultCache()
        from napari.qt.threading import create_worker

        remove_sd, leave_sd = self.remove_sd, self.leave_sd
        self._pending = {"layer": layer, "slices": slices, "remove_sd": remove_sd, "leave_sd": leave_sd}
        share_cores()
        worker = create_worker(
            inference_job,
            layer.data,
            den,
            det,
            self.device_combo.currentText() or "auto",
            slices,
            self._store,
            self._cache,
            self.batch_size,
            (remove_sd, leave_sd),
            pixel_mm(layer),  # the detector's size
            (str(layer.metadata.get("modality", "") or ""), repr(layer.name)),
            _start_thread=False,
        )
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        n = 1 if slices is not None or layer.ndim == 2 else layer.data.shape[0]
        passes = [p for p, m in (("denoise", den), ("detect", det)) if m is not None]
        self.progress.setRange(0, n * len(passes))
        self.progress.setFormat(f"%p% of {n} slice{'s' * (n > 1)} ({' + '.join(passes)})")
        self.progress.setValue(0)
        self.status.setText(f"running on {layer.name!r}...")
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running job within one batch; nothing is added to the viewer."""
        if self.worker is not None:
            self.worker.quit()
            self.status.setText("cancelling...")

    def _on_progress(self, rec: Progress) -> None:
        if rec.stage == "running":
            self.progress.setRange(0, rec.total)
            self.progress.setValue(rec.done)
        for text in rec.notices:  # informative (e.g. "no GPU found"): the status line, not a pop-up
            self.status.setText(f"LIDnet: {text}")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled: no layers added")  # the reader pressed Cancel: no pop-up over the image
        self.progress.setValue(0)  # not a run's share left standing as if it went on
        self.progress.setFormat("%p%")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.job_finished.emit()

    def _on_returned(self, out: JobOutput | Failure) -> None:
        pending, self._pending = self._pending, {}  # not held after the run: the image may be deleted and freed
        if self.watch.closed:  # the dock was closed while the job ran: nothing is added to the viewer
            return
        fill_devices(self.device_combo)  # the run loaded torch: a GPU can be listed now
        if isinstance(out, Failure):
            self._message(out.message, error=True)
            return
        layer = pending.get("layer")
        if layer is None or layer not in self.viewer.layers:
            self._message("the input layer was removed while running; results dropped", error=True)
            return
        res = out.result
        first = res.slices[0] if pending.get("slices") else 0
        labels = (out.denoiser_label, out.detector_label)
        remove_sd, leave_sd = pending.get("remove_sd"), pending.get("leave_sd")
        merged = self._into_volume(layer, res, labels, (remove_sd, leave_sd))
        replaced = _replaced_note(self._previous(layer), layer, res) if merged is None else None
        same = merged is not None and self._last is not None and self._last["layer"] == layer
        edits = self._last.get("edits") if same else None  # the same lesions layer: the reader's edits stay
        self._source_gone = ""
        if res.input_key:
            self._cached_inputs[res.input_key] = weakref.ref(behind_proxy(layer))
        self._last = {"layer": layer, "result": merged or res, "first": 0 if merged else first, "labels": labels,
                      "remove_sd": remove_sd, "leave_sd": leave_sd, "merged": merged is not None, "edits": edits}
        if layer.ndim == 3 and list(self._last["result"].slices) == list(range(layer.data.shape[0])):
            self._volumes = [v for v in self._volumes if v["layer"] != layer]  # deleted images: _on_layers_changed
            self._volumes.append({**self._last, "data_id": id(layer.data)})
        self._show_denoised()
        self._show_noise()
        self._show_boxes(rebuild=merged is None)  # merged: the same lesions layer, so the review carries on
        self._update_export_buttons()
        cached = [k for k, v in res.cached.items() if v]
        n = len(res.slices)
        text = f"done on {layer.name!r} ({res.device}) in {res.seconds:.1f} s ({n} slice{'s' if n != 1 else ''})"
        if cached:
            text += f"; from cache: {', '.join(cached)}"
        if replaced:
            text += f"; {replaced}"
        if out.noise_sd is not None:
            from ..metrics.noreference import NO_NOISE_HU

            before, after = out.noise_sd
            if not np.isfinite(before):
                text += "; no flat soft tissue found to measure the noise in"
            elif before < NO_NOISE_HU:  # nothing to measure: a lossy-compressed or already processed image
                text += f"; no measurable noise in flat tissue (SD {before:.1f} HU: lossy or processed?)"
            else:
                text += f"; noise SD in flat tissue {before:.1f} -> {after:.1f} HU"
        self._summary = text
        if res.boxes is not None:
            text += f"; {self.shown_text}"
        self.status.setText(self._noted(text))

    def _previous(self, layer: Any) -> dict | None:
        """``layer``'s result on screen: the last run's when it ran on ``layer``, else its last volume run's."""
        if self._last is not None and self._last["layer"] == layer:
            return self._last
        return next((v for v in self._volumes if v["layer"] == layer), None)

    def _into_volume(self, layer: Any, res: Any, labels: tuple, strength: tuple) -> Any | None:
        """A "current slice" run folded into the last whole-volume result of the same layer (whatever ran on other
        layers since), models and strength: that slice's denoised image and boxes replaced, every other slice's kept
        (a new result; the old is not changed). None when there is no such volume result (the run's own outputs
        then replace the previous ones)."""
        # == not "is": napari gives plugins a new proxy of a layer at each access
        last = next((v for v in self._volumes if v["layer"] == layer), None)
        if last is None or layer.ndim != 3 or (last["labels"], last["remove_sd"], last.get("leave_sd")) != (
            labels, *strength
        ):
            return None
        if last.get("data_id") != id(layer.data):  # the image's data were replaced since: that volume is stale
            return None
        prev, depth = last["result"], layer.data.shape[0]
        if len(res.slices) >= depth or list(prev.slices) != list(range(depth)):
            return None
        if (prev.denoised is None) != (res.denoised is None) or (prev.boxes is None) != (res.boxes is None):
            return None
        denoised = None
        if prev.denoised is not None:
            denoised = np.array(prev.denoised, copy=True)
            denoised[res.slices] = res.denoised
        boxes = None
        if prev.boxes is not None:
            old = np.asarray(prev.boxes, np.float32).reshape(-1, 6)
            old = old[~np.isin(old[:, 0].astype(int), res.slices)]
            boxes = np.concatenate([old, np.asarray(res.boxes, np.float32).reshape(-1, 6)])
            boxes = boxes[np.argsort(boxes[:, 0], kind="stable")]
        return replace(res, slices=list(prev.slices), denoised=denoised, boxes=boxes)

    # ------------------------------------------------------------------------------------- threshold
    def _on_threshold(self, value: int) -> None:
        """The slider moved: its label now; the boxes when the event loop next runs (``_apply_threshold``), so a
        drag over many steps while napari redraws thousands of boxes refilters once, not once per step."""
        self.threshold_label.setText(threshold_text(self.threshold))
        if self._last is not None or self._source_gone:
            self._threshold_timer.start()

    def _apply_threshold(self) -> None:
        """Show the boxes at the slider's threshold, and their count in the status line."""
        self._threshold_timer.stop()
        if self._source_gone:  # the image is gone, not the boxes' layer: say which
            self.status.setText("the image the boxes were found on was removed: its boxes layer keeps the threshold "
                                "it had; run again on an image to review new boxes")  # fmt: skip
        if self._last is not None:
            self._show_boxes(threshold_only=True)
            shown = self.shown_text
            if self._live("lesions") is None and self._last["result"].boxes is not None:
                shown += " (their layer was deleted: run again to show them)"
            self.status.setText(self._noted(f"{self._summary}; {shown}" if self._summary else shown))  # it stays

    def _threshold_from_detector(self, _index: int = -1) -> None:
        """Move the threshold to the chosen detector's calibrated default (its card), with the rate it means."""
        from ..models.weights import FALLBACK_THRESHOLD, default_threshold, read_card

        data = self.detector_combo.currentData()
        try:
            card = read_card(data) if data else None
        except (OSError, ValueError):
            card = None
        cal = (card or {}).get("calibration")
        threshold = default_threshold(card)
        self.set_threshold(threshold)
        if isinstance(cal, dict) and threshold != FALLBACK_THRESHOLD:
            tip = (f"calibrated default {threshold_text(threshold)}: about {cal.get('fp_per_image', '?')} false "
                   f"boxes per lesion-free slice {_calibration_source(cal)}")  # fmt: skip
        else:
            tip = f"this detector has no calibration; default {FALLBACK_THRESHOLD:.2f}"
        self.threshold_slider.setToolTip(tip)

    def _on_noise_toggled(self, checked: bool) -> None:
        if self._last is not None:
            self._show_noise()

    # ----------------------------------------------------------------------------------------------- compare
    def output(self, role: str) -> Any | None:
        """The last run's output layer of ``role`` ('denoised', 'lesions', 'removed noise'), None when absent."""
        entry = self._entry(role)
        return entry[2] if entry is not None and entry[2] in self.viewer.layers else None

    def _compare_pair(self) -> tuple[Any, Any] | None:
        """(input, denoised) of the image picked in the dock (or of the denoised layer picked), when a run made
        one, else of the last run."""
        layers = self.viewer.layers
        made = [(e[0], e[2]) for e in self._outputs if e[1] == "denoised" and e[0] in layers and e[2] in layers]
        picked = self._source_layer()
        pair = next((p for p in made if picked is not None and picked in p), None)
        if pair is not None:
            return pair
        den = self.output("denoised")
        src = self._last["layer"] if self._last is not None else None
        return (src, den) if den is not None and src in layers else None

    def _no_pair(self, what: str) -> None:
        """Say why there is nothing to ``what`` (compare, flip)."""
        gone = self._source_gone == "denoised" or (self._last is not None and self._last["result"].denoised is not None)
        self._message(f"the denoised layer or its input was deleted: run again to {what}" if gone
                      else f"run the denoiser first: there is nothing to {what}", error=True)  # fmt: skip

    def set_compare(self, on: bool) -> bool:
        """Input and denoised side by side with one window/level (on), or the view as before (off)."""
        pair = self._compare_pair() if on else None
        if on and pair is None:
            self._no_pair("compare")
        elif on and self.viewer.dims.ndisplay == 3:  # three volume renderings a third of the canvas wide each
            self._message("side by side compares slices: switch the view to 2D (Flip, F, works in 3D too)", True)
            pair = None
        if on and pair is not None:  # a simulated low dose's normal dose beside them (a research scan's truth)
            self.compare.show(*pair, normal_dose_of(pair[0], self.viewer.layers))
            note = thin_note(*pair)
            if note:  # in the status line: a longer caption would cover the orientation letters
                self._message(note)
        else:
            self.compare.close()
        self.compare_button.blockSignals(True)
        self.compare_button.setChecked(pair is not None)
        self.compare_button.blockSignals(False)
        return pair is not None

    def flip(self) -> Any | None:
        """Show the other one of input and denoised in place (key F); returns the layer now shown."""
        pair = self._compare_pair()
        if pair is None:
            self._no_pair("flip")
            return None
        if self.compare.pair != pair:
            self.compare.pair = pair
        shown = self.compare.flip()
        self.compare_button.blockSignals(True)
        self.compare_button.setChecked(False)
        self.compare_button.blockSignals(False)
        return shown

def _calibration_source(cal: dict) -> str:
    """Where a detector's threshold was calibrated, for the threshold tooltip."""
    data = cal.get("data") if isinstance(cal.get("data"), dict) else {}
    origin = cal.get("inherited_from")
    inherited = f"for the weights this detector was trained from ({origin})" if origin else ""
    if "input" in data:  # lidnet calibrate on a site's own scans
        return f"on {data.get('slices', '?')} slices of your scans ({data['input']})" + (
            f", {inherited}" if inherited else "")  # fmt: skip
    if inherited:
        return f"{inherited}: `lidnet calibrate` sets one for it on your own lesion-free scans"
    return ("on the detector's calibration sets (`lidnet calibrate` sets it on your own lesion-free scans)"
            + _rates_by_set(cal))


def _rates_by_set(cal: dict) -> str:
    """The calibration's false boxes per lesion-free slice by set and by image (as given / denoised), for the
    threshold tooltip: the dock detects on the denoised image, which on real scans draws several times the boxes of
    the image as given (the shipped card's real validation slices); empty without them."""
    parts = []
    for name, rec in (cal.get("sets") or {}).items():
        by = rec.get("fp_per_image_by_type") if isinstance(rec, dict) else None
        if isinstance(by, dict) and by:
            rates = ", ".join(f"{kind} {float(v):.2f}" for kind, v in by.items() if isinstance(v, int | float))
            parts.append(f"{name}: {rates}")
    return ("; by set (the dock detects on the denoised image when a denoiser is chosen): " + "; ".join(parts)
            if parts else "")
