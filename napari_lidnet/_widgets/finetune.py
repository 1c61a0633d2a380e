"""Dock widget: one-click collaborative fine-tuning (LIDnet) of the denoiser and the detector on local data.

Thin by design (DESIGN.md): it gathers inputs, checks them (every problem listed in one message, nothing started),
and runs ``_training.finetune.finetune_job`` in a napari generator worker. The worker yields the trainer's
progress records; the callbacks here (GUI thread) move the progress bars, feed the live plot and, when the run
ends, tell the denoise widgets in the viewer that a new model exists. Stop sets the trainer's ``should_stop`` flag,
so the run ends at the next step and the best checkpoint so far is still published. Runs live in
``registry.user_model_dir().parent / "runs"``, never in the working directory. torch is not imported at module level.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._training.finetune import (
    ONE_CLICK_DEFAULTS,
    FinetuneOutcome,
    FinetuneRequest,
    default_model_name,
    model_name_problems,
    new_run_dir,
    outcome_summary,
)
from .._training.local_data import AUTO_BOX_THRESHOLD, CTInput, check_inputs, format_problems
from .layer_inputs import inputs_from_layers, paired_input
from .loss_plot import TrainingPlot

if TYPE_CHECKING:
    import napari

#: (key, label) of the data sources
SOURCES = (
    ("layers", "normal-dose image layers (simulate low dose)"),
    ("paired", "paired low-dose / full-dose layers"),
    ("dicom", "DICOM folder (normal dose, simulate low dose)"),
    ("dataset", "dataset folder (lidnet simulate)"),
)
DETECT_ITEM = "(detect with the starting detector)"
SCRATCH_ITEM = "(from scratch)"
LOSS_MODES = (("lidnet", "LIDnet: pixel + detection + ROI perceptual"), ("pixel", "denoiser alone (pixel loss)"))


def _spin(lo: float, hi: float, value: float, decimals: int | None = None, step: float | None = None) -> Any:
    """A QSpinBox (``decimals`` None) or QDoubleSpinBox with range and value."""
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    return box


def refresh_denoise_widgets(viewer: Any, select: str | None = None) -> int:
    """Call ``refresh_models()`` on every DenoiseDetectWidget docked in ``viewer`` (and select the models named
    ``select``_denoiser/_detector when given); returns how many widgets were refreshed."""
    from .denoise_detect import DenoiseDetectWidget

    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None) if window is not None else None
    found: list[DenoiseDetectWidget] = []
    for widget in list(docks.values()) if docks is not None else []:
        widget = getattr(widget, "native", widget)
        if isinstance(widget, DenoiseDetectWidget):
            found.append(widget)
        elif isinstance(widget, QWidget):
            found.extend(widget.findChildren(DenoiseDetectWidget))
    for w in dict.fromkeys(found):
        w.refresh_models()
        if select:
            for kind in ("denoiser", "detector"):
                combo = getattr(w, f"{kind}_combo", None)
                if combo is None:
                    continue
                for i in range(combo.count()):
                    if combo.itemData(i) and Path(str(combo.itemData(i))).name == f"{select}_{kind}":
                        combo.setCurrentIndex(i)
    return len(found)


class FineTuneWidget(QWidget):
    """Fine-tune both LIDnet networks on the user's own data in the background.

    Public methods take plain values so scripts and tests need no dialogs: ``start()`` returns the worker (None
    when the data checks fail; the message is in ``status``), ``stop()`` ends the run at the next step.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.outcome: FinetuneOutcome | None = None
        self.run_dir: Path | None = None
        self.records: list[dict[str, Any]] = []
        self._stop_event = threading.Event()
        self._build_ui()
        self.refresh_layers()
        self.refresh_models()
        for event in ("inserted", "removed", "moved"):
            getattr(self.viewer.layers.events, event).connect(self.refresh_layers)

    # ------------------------------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        d = ONE_CLICK_DEFAULTS
        # --- data
        self.source_combo = QComboBox()
        for key, label in SOURCES:
            self.source_combo.addItem(label, key)
        self.pages = QStackedWidget()
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(90)
        self.boxes_combo = QComboBox()
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("normal-dose images", self.image_list)
        form.addRow("lesion boxes", self.boxes_combo)
        self.pages.addWidget(page)
        self.low_combo, self.full_combo, self.paired_boxes_combo = QComboBox(), QComboBox(), QComboBox()
        page = QWidget()
        form = QFormLayout(page)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("low dose", self.low_combo)
        form.addRow("full dose", self.full_combo)
        form.addRow("lesion boxes", self.paired_boxes_combo)
        self.pages.addWidget(page)
        self.dicom_edit, self.dataset_edit = QLineEdit(), QLineEdit()
        self.dicom_edit.setPlaceholderText("folder of DICOM series (normal dose)")
        self.dataset_edit.setPlaceholderText("folder with dataset.json, full/, low/, lesions.csv")
        for edit in (self.dicom_edit, self.dataset_edit):
            button = QPushButton("Folder…")
            button.clicked.connect(lambda _=False, e=edit: self._browse(e))
            page = QWidget()
            row = QHBoxLayout(page)
            row.setContentsMargins(0, 0, 0, 0)
            row.addWidget(edit, 1)
            row.addWidget(button)
            self.pages.addWidget(page)
        self.source_combo.currentIndexChanged.connect(self._on_source)
        self.dose_spin = _spin(0.05, 1.0, 0.25, 2, 0.05)
        data_box = QGroupBox("Data")
        data_form = QFormLayout(data_box)
        data_form.addRow("source", self.source_combo)
        data_form.addRow(self.pages)
        data_form.addRow("dose fraction", self.dose_spin)

        # --- model
        self.name_edit = QLineEdit(default_model_name())
        self.start_denoiser_combo, self.start_detector_combo = QComboBox(), QComboBox()
        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        model_form.addRow("new model name", self.name_edit)
        model_form.addRow("start denoiser", self.start_denoiser_combo)
        model_form.addRow("start detector", self.start_detector_combo)

        # --- advanced (collapsed)
        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced = QWidget()
        self.advanced.setVisible(False)
        self.advanced_button.toggled.connect(self._toggle_advanced)
        self.mode_combo = QComboBox()
        for key, label in LOSS_MODES:
            self.mode_combo.addItem(label, key)
        self.rounds_spin = _spin(1, 100, d["rounds"])
        self.den_steps_spin = _spin(0, 10000, d["denoiser_steps"])
        self.det_steps_spin = _spin(0, 10000, d["detector_steps"])
        self.det_weight_spin = _spin(0.0, 10.0, d["det_weight"], 3, 0.05)
        self.roi_weight_spin = _spin(0.0, 10.0, d["roi_weight"], 3, 0.05)
        for box in (self.det_weight_spin, self.roi_weight_spin):
            box.setToolTip("weight relative to the pixel loss at the start of each round (0: off)")
        self.lr_spin = _spin(1e-6, 1e-2, d["lr"], 6, 1e-4)
        self.patch_spin = _spin(32, 512, d["patch_size"], None, 16)
        self.batch_spin = _spin(1, 64, d["batch_size"])
        self.val_spin = _spin(0.0, 0.9, d["val_fraction"], 2, 0.05)
        self.box_threshold_spin = _spin(0.05, 0.99, AUTO_BOX_THRESHOLD, 2, 0.05)
        self.device_combo = QComboBox()
        self.seed_spin = _spin(0, 2**31 - 1, d["seed"])
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(0, 0, 0, 0)
        adv.addRow("losses", self.mode_combo)
        adv.addRow("rounds", self.rounds_spin)
        adv.addRow("denoiser steps / round", self.den_steps_spin)
        adv.addRow("detector steps / round", self.det_steps_spin)
        adv.addRow("detection loss weight", self.det_weight_spin)
        adv.addRow("ROI perceptual weight", self.roi_weight_spin)
        adv.addRow("learning rate", self.lr_spin)
        adv.addRow("patch size", self.patch_spin)
        adv.addRow("batch size", self.batch_spin)
        adv.addRow("validation split", self.val_spin)
        adv.addRow("auto-box score threshold", self.box_threshold_spin)
        adv.addRow("device", self.device_combo)
        adv.addRow("seed", self.seed_spin)

        # --- run
        self.start_button = QPushButton("Start fine-tuning")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        self.stage_label = QLabel("")
        self.stage_bar = QProgressBar()
        self.stage_bar.setFormat("%v / %m steps")
        self.overall_bar = QProgressBar()
        self.overall_bar.setFormat("overall %p%")
        self.eta_label = QLabel("")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = TrainingPlot(self)

        layout = QVBoxLayout(self)
        for w in (data_box, model_box, self.advanced_button, self.advanced):
            layout.addWidget(w)
        layout.addLayout(buttons)
        for w in (self.stage_label, self.stage_bar, self.overall_bar, self.eta_label, self.status, self.plot):
            layout.addWidget(w)
        self._on_source()

    def _toggle_advanced(self, on: bool) -> None:
        self.advanced.setVisible(on)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def _browse(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder")
        if path:
            edit.setText(path)

    def _on_source(self, _index: int = 0) -> None:
        self.pages.setCurrentIndex(self.source_combo.currentIndex())
        self.dose_spin.setEnabled(self.source in ("layers", "dicom"))

    @property
    def source(self) -> str:
        return str(self.source_combo.currentData())

    def set_source(self, key: str) -> None:
        """Choose the data source by key: layers, paired, dicom or dataset."""
        self.source_combo.setCurrentIndex([k for k, _ in SOURCES].index(key))

    def _message(self, text: str, error: bool = False) -> None:
        self.status.setStyleSheet("color: #e05050;" if error else "")
        self.status.setText(text)
        from napari.utils.notifications import show_error, show_info

        (show_error if error else show_info)(f"LIDnet fine-tuning: {text}")

    # ---------------------------------------------------------------------------------------------- choices
    def _images(self) -> list[Any]:
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not ly.rgb and not ly.multiscale]

    def _shapes(self) -> list[Any]:
        from napari.layers import Shapes

        return [ly for ly in self.viewer.layers if isinstance(ly, Shapes)]

    def refresh_layers(self, event: Any = None) -> None:
        """Refill the layer pickers, keeping current choices (a new pick prefers full-dose-looking names)."""
        images = [ly.name for ly in self._images()]
        checked = set(self.checked_images()) & set(images)
        if not checked:  # first pick: a full-dose-looking layer, or the only image
            guess = next((n for n in images if _looks_full_dose(n)), images[0] if len(images) == 1 else None)
            checked = {guess} if guess else set()
        self.image_list.clear()
        for name in images:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.image_list.addItem(item)
        shapes = [ly.name for ly in self._shapes()]
        for combo in (self.boxes_combo, self.paired_boxes_combo):
            _refill(combo, [DETECT_ITEM, *shapes], prefer=shapes[0] if shapes else DETECT_ITEM)
        _refill(self.low_combo, images, prefer=next((n for n in images if _looks_low_dose(n)), None))
        _refill(self.full_combo, images, prefer=next((n for n in images if _looks_full_dose(n)), None))

    def checked_images(self) -> list[str]:
        """Names of the ticked normal-dose image layers."""
        return [
            self.image_list.item(i).text()
            for i in range(self.image_list.count())
            if self.image_list.item(i).checkState() == Qt.CheckState.Checked
        ]

    def set_images(self, names: list[str]) -> None:
        """Tick exactly the image layers in ``names``."""
        for i in range(self.image_list.count()):
            item = self.image_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def refresh_models(self) -> None:
        """Refill the starting-model pickers from the registry (shipped first); default: the shipped model, else
        the newest user model, else from scratch."""
        from ..models.registry import default_model, list_models

        for kind, combo in (("denoiser", self.start_denoiser_combo), ("detector", self.start_detector_combo)):
            current = combo.currentData()
            combo.clear()
            try:
                models, default = list_models(kind), default_model(kind)
            except Exception as exc:  # a broken user folder must not break the widget
                models, default = [], None
                self.status.setText(f"could not list {kind} models: {exc}")
            for info in models:
                combo.addItem(f"{info.name} ({'shipped' if info.shipped else 'user'})", str(info.path))
            combo.addItem(SCRATCH_ITEM, None)
            paths = [combo.itemData(i) for i in range(combo.count())]
            if current in paths and current is not None:
                combo.setCurrentIndex(paths.index(current))
            elif default is not None:
                combo.setCurrentIndex(paths.index(str(default.path)))
            else:
                combo.setCurrentIndex(combo.count() - 1)
        if self.device_combo.count() == 0:
            from ..models.device import device_choices

            self.device_combo.addItems(device_choices())

    # ------------------------------------------------------------------------------------------------ request
    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _current_slice(self, layer: Any) -> int | None:
        if layer.ndim < 3:
            return None
        point = self.viewer.dims.point[-layer.ndim :]
        z = float(np.asarray(layer.world_to_data(point))[0])
        return int(np.clip(round(z), 0, layer.data.shape[0] - 1))

    def _boxes_layer(self, combo: QComboBox) -> Any:
        return None if combo.currentText() == DETECT_ITEM else self._layer(combo.currentText())

    def settings(self) -> dict[str, Any]:
        """TrainConfig fields chosen in the widget (besides ``out``)."""
        return {
            "mode": self.mode_combo.currentData(),
            "init_denoiser": self.start_denoiser_combo.currentData(),
            "init_detector": self.start_detector_combo.currentData(),
            "rounds": self.rounds_spin.value(),
            "denoiser_steps": self.den_steps_spin.value(),
            "detector_steps": self.det_steps_spin.value(),
            "det_weight": self.det_weight_spin.value(),
            "roi_weight": self.roi_weight_spin.value(),
            "lr": self.lr_spin.value(),
            "detector_lr": self.lr_spin.value(),
            "patch_size": self.patch_spin.value(),
            "batch_size": self.batch_spin.value(),
            "val_fraction": self.val_spin.value(),
            "device": self.device_combo.currentText() or "auto",
            "seed": self.seed_spin.value(),
        }

    def build_request(self) -> tuple[FinetuneRequest | None, list[str]]:
        """The run the widget describes, or (None, problems) listing everything that is missing or wrong."""
        from .._training.finetune import one_click_config

        problems = model_name_problems(self.name_edit.text())
        settings = self.settings()
        need_lesions = settings["mode"] != "pixel"
        patch = settings["patch_size"]
        if patch % 16:
            problems.append(f"patch size {patch} must be a multiple of 16")
        inputs: list[CTInput] = []
        folder = None
        source = self.source
        if source == "layers":
            layers = [self._layer(n) for n in self.checked_images()]
            layers = [ly for ly in layers if ly is not None]
            if not layers:
                problems.append("tick at least one normal-dose image layer (open a CT or the sample data)")
            else:
                shapes = self._boxes_layer(self.boxes_combo)
                inputs, notes = inputs_from_layers(layers, shapes, self._current_slice(layers[0]))
                problems.extend(notes)
        elif source == "paired":
            low, full = self._layer(self.low_combo.currentText()), self._layer(self.full_combo.currentText())
            if low is None or full is None:
                problems.append("choose a low-dose and a full-dose image layer")
            elif low is full:
                problems.append("the low-dose and full-dose layers must be different layers")
            else:
                shapes = self._boxes_layer(self.paired_boxes_combo)
                item, notes = paired_input(low, full, shapes, self._current_slice(full))
                inputs, problems = [item], problems + notes
        else:
            edit = self.dicom_edit if source == "dicom" else self.dataset_edit
            folder = edit.text().strip()
            if not folder:
                problems.append(f"choose a {'DICOM' if source == 'dicom' else 'dataset'} folder")
            elif not Path(folder).is_dir():
                problems.append(f"{folder}: no such folder")
            elif source == "dataset" and not (Path(folder) / "dataset.json").is_file():
                problems.append(f"{folder}: not a dataset folder (no dataset.json; make one with 'lidnet simulate')")
        if inputs:
            problems.extend(check_inputs(inputs, patch, need_lesions, settings["val_fraction"]))
            if need_lesions and any(i.boxes is None for i in inputs) and not settings["init_detector"]:
                problems.append(
                    "no lesion boxes: draw rectangles on a Shapes layer and pick it, or start from a trained detector"
                )
        if problems:
            return None, problems
        name = self.name_edit.text().strip()
        try:
            config = one_click_config(new_run_dir(name), **settings)
        except ValueError as exc:
            return None, [str(exc)]
        request = FinetuneRequest(
            name=name,
            config=config,
            inputs=inputs or None,
            dicom_folder=folder if source == "dicom" else None,
            dataset_dir=folder if source == "dataset" else None,
            dose=float(self.dose_spin.value()),
            box_threshold=float(self.box_threshold_spin.value()),
            source=source,
        )
        return request, []

    # ---------------------------------------------------------------------------------------------------- run
    def start(self) -> Any:
        """Check the data and start the run in a worker; returns the worker, or None (message in ``status``)."""
        if self.worker is not None:
            self._message("a fine-tuning run is already going: stop it first", error=True)
            return None
        request, problems = self.build_request()
        if request is None:
            self._message(format_problems(problems), error=True)
            return None
        from napari.qt.threading import create_worker

        from .._training.finetune import finetune_job

        self._stop_event.clear()
        self.outcome = None
        self.records = []
        self.plot.clear()
        self.run_dir = Path(request.config.out)
        worker = create_worker(finetune_job, request, self._stop_event.is_set, _start_thread=False)
        worker.yielded.connect(self._on_record)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: self._message(f"{type(exc).__name__}: {exc}", error=True))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 0)  # busy until the first step
        self.stage_label.setText("preparing data")
        self.eta_label.setText("")
        self._message(f"fine-tuning {request.name!r} ({request.config.rounds} rounds) …")
        worker.start()
        return worker

    def stop(self) -> None:
        """Ask the run to end at the next step; the best checkpoint so far is saved as the new model."""
        if self.worker is not None:
            self._stop_event.set()
            self.stop_button.setEnabled(False)
            self.status.setText("stopping at the next step …")

    def _on_record(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        stage = rec.get("stage")
        if "total_steps" in rec:
            self.overall_bar.setRange(0, max(int(rec["total_steps"]), 1))
            self.overall_bar.setValue(int(rec.get("step", 0)))
        if stage in ("prepare", "setup", "export"):
            self.stage_label.setText(rec.get("message", ""))
        elif stage == "validate":
            val = rec.get("val") or {}
            parts = [f"PSNR {val['psnr']:.2f} dB"] if "psnr" in val else []
            parts += [f"sensitivity {val['sensitivity']:.2f}"] if "sensitivity" in val else []
            best = " (best so far)" if rec.get("is_best") else ""
            self.status.setText(f"validation after {rec.get('after')}: {', '.join(parts)}{best}")
            self.plot.add_record(rec)
        elif stage in ("stopped", "finished"):
            self.stage_label.setText(stage)
        elif "stage_step" in rec:
            self.stage_label.setText(f"{stage}: step {rec['stage_step']} of {rec['stage_total']}")
            self.stage_bar.setRange(0, int(rec["stage_total"]))
            self.stage_bar.setValue(int(rec["stage_step"]))
            eta = rec.get("eta_s")
            if eta is not None:
                self.eta_label.setText(f"about {eta / 60:.1f} min left" if eta >= 60 else f"about {eta:.0f} s left")
            self.plot.add_record(rec)

    def _on_returned(self, outcome: FinetuneOutcome) -> None:
        self.outcome = outcome
        if outcome.status in ("invalid", "failed"):
            self._message(outcome.message, error=True)
            return
        text = outcome_summary(outcome)
        if outcome.exported:
            name = Path(outcome.exported[0]).name.rsplit("_", 1)[0]
            n = refresh_denoise_widgets(self.viewer, select=name)
            self.refresh_models()
            self.name_edit.setText(default_model_name() if self.name_edit.text() == name else self.name_edit.text())
            if n:
                text += "; selected in the denoise widget (the shipped default stays first in its list)"
        self._message(text)

    def _on_finished(self) -> None:
        self.worker = None
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        for bar in (self.stage_bar, self.overall_bar):
            if bar.maximum() == 0:
                bar.setRange(0, 1)
        self.eta_label.setText("")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        """Closing the widget stops a running job at its next step."""
        self._stop_event.set()
        super().closeEvent(event)


def _looks_full_dose(name: str) -> bool:
    low = name.lower()
    return ("full" in low or "normal" in low) and "denoised" not in low


def _looks_low_dose(name: str) -> bool:
    low = name.lower()
    return ("low" in low or "%" in low) and "denoised" not in low


def _refill(combo: QComboBox, items: list[str], prefer: str | None = None) -> None:
    """Replace a combo's items, keeping the current text when it is still there, else ``prefer``."""
    current = combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    elif prefer in items:
        combo.setCurrentText(prefer)
    combo.blockSignals(False)
