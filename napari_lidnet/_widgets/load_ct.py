"""'Load CT' dock widget: open a DICOM series / DeepLesion PNG / array, window presets, simulated low dose.

The widget is thin: reading and simulation run in napari thread workers that return data; the callbacks here
(GUI thread) turn results into layers and messages. No torch at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..io.open_ct import list_series, open_ct
from ..io.windowing import DEFAULT_PRESET, WINDOW_PRESETS, contrast_limits
from ..layer_data import volume_layer_tuples

if TYPE_CHECKING:
    import napari


class _UserError:
    """A user-caused failure returned (not raised) by a worker, shown as a message."""

    def __init__(self, message: str) -> None:
        self.message = message


def _open_task(path: str, series_uid: str | None) -> Any:
    try:
        return open_ct(path, series_uid=series_uid)
    except (ValueError, OSError) as exc:
        return _UserError(str(exc))


def _simulate_task(hu: np.ndarray, dose: float, spacing_mm: float, seed: int) -> Any:
    try:
        from ..sim.lowdose import simulate_low_dose
    except ImportError as exc:
        return _UserError(f"low-dose simulation is not available ({exc})")
    try:
        return simulate_low_dose(hu, dose, spacing_mm, seed=seed)
    except ValueError as exc:
        return _UserError(str(exc))


class LoadCTWidget(QWidget):
    """Open CT into the viewer, set display windows, and simulate low-dose partners of open images."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._scanned_path: str | None = None
        self._scan_ok = False
        self._workers: list[Any] = []

        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        for w in (self._create_open_box(), self._create_window_box(), self._create_simulate_box(), self.status):
            layout.addWidget(w)
        layout.addStretch(1)
        self._connect_signals()
        self._refresh_layers()

    def _create_open_box(self) -> QGroupBox:
        """'Open CT': path with File/Folder buttons, series picker, Open."""
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("DICOM file or folder, DeepLesion PNG, .npy/.npz/.tif")
        self.file_button = QPushButton("File…")
        self.folder_button = QPushButton("Folder…")
        self.series_combo = QComboBox()
        self.series_combo.setEnabled(False)
        self.open_button = QPushButton("Open")
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.file_button)
        path_row.addWidget(self.folder_button)
        open_box = QGroupBox("Open CT")
        open_form = QFormLayout(open_box)
        open_form.addRow("Path", path_row)
        open_form.addRow("Series", self.series_combo)
        open_form.addRow(self.open_button)
        return open_box

    def _create_window_box(self) -> QGroupBox:
        """'Window': preset picker and the button that applies it to the selected layer."""
        self.preset_combo = QComboBox()
        self.preset_combo.addItems(list(WINDOW_PRESETS))
        self.preset_combo.setCurrentText(DEFAULT_PRESET)
        self.apply_window_button = QPushButton("Apply to selected layer")
        win_box = QGroupBox("Window")
        win_form = QFormLayout(win_box)
        win_form.addRow("Preset", self.preset_combo)
        win_form.addRow(self.apply_window_button)
        return win_box

    def _create_simulate_box(self) -> QGroupBox:
        """'Simulate low dose': normal-dose layer, dose fraction, seed, Simulate."""
        self.sim_layer_combo = QComboBox()
        self.dose_spin = QDoubleSpinBox()
        self.dose_spin.setRange(0.05, 1.0)
        self.dose_spin.setSingleStep(0.05)
        self.dose_spin.setDecimals(2)
        self.dose_spin.setValue(0.25)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.simulate_button = QPushButton("Simulate low dose")
        sim_box = QGroupBox("Simulate low dose")
        sim_form = QFormLayout(sim_box)
        sim_form.addRow("Normal-dose image", self.sim_layer_combo)
        sim_form.addRow("Dose fraction", self.dose_spin)
        sim_form.addRow("Seed", self.seed_spin)
        sim_form.addRow(self.simulate_button)
        return sim_box

    def _connect_signals(self) -> None:
        """Wire the buttons, the path field and the preset picker, and follow the viewer's layer list."""
        self.file_button.clicked.connect(self._browse_file)
        self.folder_button.clicked.connect(self._browse_folder)
        self.path_edit.editingFinished.connect(self.refresh_series)
        self.open_button.clicked.connect(self.open)
        self.apply_window_button.clicked.connect(self.apply_preset)
        self.preset_combo.activated.connect(lambda _i: self.apply_preset())
        self.simulate_button.clicked.connect(self.simulate)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)

    # ------------------------------------------------------------------ messages
    def _info(self, text: str) -> None:
        self.status.setStyleSheet("")
        self.status.setText(text)

    def _error(self, text: str) -> None:
        self.status.setStyleSheet("color: #e05050;")
        self.status.setText(text)
        show_error(text)

    # ------------------------------------------------------------------ open
    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open CT file")
        if path:
            self.path_edit.setText(path)
            self.refresh_series()

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path:
            self.path_edit.setText(path)
            self.refresh_series()

    def refresh_series(self) -> bool:
        """Scan the path's DICOM headers and offer a series picker when there are several; False on error."""
        path = self.path_edit.text().strip()
        if path == self._scanned_path:
            return self._scan_ok
        self._scanned_path = path
        self._scan_ok = False
        self.series_combo.clear()
        self.series_combo.setEnabled(False)
        if not path:
            return False
        if not Path(path).exists():
            self._error(f"{path}: no such file or folder")
            return False
        try:
            infos = list_series(path)
        except (ValueError, OSError) as exc:
            self._error(str(exc))
            return False
        self._scan_ok = True
        for info in infos:
            self.series_combo.addItem(info.label(), info.uid)
        self.series_combo.setEnabled(len(infos) > 1)
        if len(infos) > 1:
            self._info(f"{len(infos)} series found; pick one and press Open")
        else:
            self._info("")
        return True

    def open(self) -> None:
        """Read the chosen input in a worker and add its layers."""
        path = self.path_edit.text().strip()
        if not path:
            self._error("enter a file or folder to open")
            return
        if not self.refresh_series():
            return
        uid = self.series_combo.currentData() if self.series_combo.count() > 1 else None
        self.open_button.setEnabled(False)
        self._info(f"opening {Path(path).name} …")
        self._start(_open_task, (path, uid), self._on_opened, self.open_button)

    def _on_opened(self, result: Any) -> None:
        if isinstance(result, _UserError):
            self._error(result.message)
            return
        names, notes = [], []
        for vol in result:
            for data, kwargs, kind in volume_layer_tuples(vol, self.preset_combo.currentText()):
                layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
                names.append(layer.name)
            notes.extend(vol.metadata.get("warnings", []))
        text = f"opened {', '.join(names)}"
        self._info(text + ("\n" + "\n".join(notes) if notes else ""))

    # ------------------------------------------------------------------ window
    def apply_preset(self) -> None:
        """Set the selected image layer's contrast limits to the preset window (data untouched)."""
        layer = self.viewer.layers.selection.active
        if not isinstance(layer, Image):
            self._error("select an image layer to apply a window preset")
            return
        preset = self.preset_combo.currentText()
        lo, hi = contrast_limits(preset)
        rng_lo, rng_hi = layer.contrast_limits_range
        layer.contrast_limits_range = (min(rng_lo, lo), max(rng_hi, hi))
        layer.contrast_limits = (lo, hi)
        self._info(f"{layer.name}: {preset} window [{lo:g}, {hi:g}] HU")

    # ------------------------------------------------------------------ simulate
    def _refresh_layers(self, event: Any = None) -> None:
        current = self.sim_layer_combo.currentText()
        self.sim_layer_combo.clear()
        names = [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image) and not lyr.rgb]
        self.sim_layer_combo.addItems(names)
        if current in names:
            self.sim_layer_combo.setCurrentText(current)

    def simulate(self) -> None:
        """Simulate a low-dose partner of the chosen image layer in a worker."""
        name = self.sim_layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            self._error("open a normal-dose CT image first")
            return
        layer = self.viewer.layers[name]
        hu = np.asarray(layer.data, dtype=np.float32)
        if hu.ndim not in (2, 3):
            self._error(f"{name}: expected a 2D or 3D CT image in HU, got shape {hu.shape}")
            return
        dose, seed = float(self.dose_spin.value()), int(self.seed_spin.value())
        spacing = float(layer.scale[-1])
        self.simulate_button.setEnabled(False)
        self._info(f"simulating {dose:.0%} dose of {name} …")

        def done(result: Any) -> None:
            if isinstance(result, _UserError):
                self._error(result.message)
                return
            new = self.viewer.add_image(
                np.asarray(result, dtype=np.float32),
                name=f"{name} (low dose {dose:.0%})",
                scale=layer.scale,
                translate=layer.translate,
                contrast_limits=layer.contrast_limits,
                colormap="gray",
                metadata={**layer.metadata, "simulated_dose": dose, "simulated_seed": seed, "normal_dose": name},
            )
            self._info(f"added {new.name}")
            show_info(f"added {new.name}")

        self._start(_simulate_task, (hu, dose, spacing, seed), done, self.simulate_button)

    # ------------------------------------------------------------------ workers
    def _start(self, func: Any, args: tuple, on_result: Any, button: QPushButton) -> None:
        def failed(exc: Exception) -> None:
            self._error(f"{type(exc).__name__}: {exc}")

        worker = create_worker(func, *args, _connect={"returned": on_result, "errored": failed}, _start_thread=False)
        self._workers.append(worker)

        def finished() -> None:
            button.setEnabled(True)
            if worker in self._workers:
                self._workers.remove(worker)

        worker.finished.connect(finished)
        worker.start()
