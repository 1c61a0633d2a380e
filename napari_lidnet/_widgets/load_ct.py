"""'Load CT' dock widget: open a DICOM series / DeepLesion PNG / array, window presets, simulated low dose.

The widget is thin: reading runs in a napari thread worker that returns data; the low-dose simulation is a
generator worker (``_sim_job.simulate_job``: chunks of slices on the chosen device, progress with the time
left, Cancel between chunks). The callbacks here (GUI thread) turn results into layers and messages. The dock lives
in the right-hand column of LIDnet forms (``_docking``). No torch at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from .._training.report import time_left_text
from ..io.checks import error_text
from ..io.dicom_values import at_dose
from ..io.open_ct import list_series, open_ct
from ..io.volume import n_slices
from ..io.windowing import SCAN_WINDOW, WINDOW_PRESETS, stored_presets
from ..layer_data import volume_layer_tuples
from ._docking import DockHome, scroll_layout, show_message, wrapping_label
from ._geometry import placed_like
from ._layer_watch import LayerWatch, renamed_to
from ._roles import derived_name, grayscale_images, is_ct_image, is_reduced_dose, source_key
from ._sim_job import SimProgress, added_noise_sd, flat_noise_sds, simulate_job
from ._worker_utils import Failure, share_cores
from .calipers import measure
from .reading_room import HINT, ReadingRoom

TITLE = "Load CT"  # the dock's tab
#: devices offered for the simulation ('auto': a GPU when there is one)
SIM_DEVICES = ("auto", "cpu", "cuda")

if TYPE_CHECKING:
    import napari


def _open_task(path: str, series_uid: str | None) -> Any:
    try:
        return open_ct(path, series_uid=series_uid)
    except (ValueError, OSError) as exc:
        return Failure.of(exc)


def _scan_task(path: str) -> Any:
    """The series of ``path`` (``list_series``: DICOM series, NIfTI files), or the reason it has none."""
    try:
        return list_series(path)
    except (ValueError, OSError) as exc:
        return Failure.of(exc)


def _advice(own: np.ndarray, added: np.ndarray) -> str:
    """The noise a simulation added in flat tissue, and how to compare its denoised image with the normal dose like
    with like: leave the normal dose's own noise in flat tissue (``flat_noise_sds``; the Denoise dock's "leave"
    strength measures the output there)."""
    both = np.isfinite(own) & np.isfinite(added)
    if not both.any():
        return "no flat tissue to measure the noise in"
    mine, more = float(np.median(own[both])), float(np.median(added[both]))
    return (f"{more:.1f} HU of noise added in flat tissue to the normal dose's own {mine:.1f} HU (medians of "
            f"{int(both.sum())} slices); to compare with the normal dose like with like, leave its noise in the "
            f"denoised image (Denoise: leave {mine:.0f} HU)")


class LoadCTWidget(QWidget):
    """Open CT into the viewer, set display windows, and simulate low-dose partners of open images.

    ``simulation_finished`` is emitted on the GUI thread when a simulation ends (done, failed or cancelled)."""

    simulation_finished = Signal()

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.room = ReadingRoom.install(napari_viewer, self)
        self._scanned_path: str | None = None
        self._scan_ok = self._scanning = self._open_pending = False
        self._scan_id = 0  # the newest scan's number
        self._workers: list[Any] = []
        self.sim_worker: Any = None
        self.sim_chunk: int | None = None  # slices per simulation call (None: 4 on the CPU, 16 on a GPU)
        self.sim_records: list[SimProgress] = []

        self.status = wrapping_label()
        layout = scroll_layout(self)
        for w in (self._create_open_box(), self._create_window_box(), self._create_simulate_box(), self.status):
            layout.addWidget(w)
        layout.addStretch(1)
        self._connect_signals()
        self._refresh_layers()
        DockHome(self, "right", TITLE)

    def _create_open_box(self) -> QGroupBox:
        """'Open CT': path with File/Folder buttons, series picker, Open."""
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("DICOM file or folder, NIfTI, DeepLesion PNG, .npy/.npz/.tif")
        self.file_button = QPushButton("File…")
        self.folder_button = QPushButton("Folder…")
        self.series_combo = QComboBox()
        self.series_combo.setEnabled(False)
        self.open_button = QPushButton("Open")
        self.path_edit.setToolTip("a DICOM file or folder (every series found is listed), a DICOMDIR, a NIfTI file, "
                                  "a DeepLesion PNG slice or folder, or an .npy/.npz/.tif array in HU")
        self.series_combo.setToolTip("the series of the folder to open (filled once a folder with several is given)")
        self.open_button.setToolTip("open the path as CT layers (HU, voxel size in mm, the scan's own window)")
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
        self.preset_combo.addItems([SCAN_WINDOW, *WINDOW_PRESETS])
        self.preset_combo.setCurrentText(SCAN_WINDOW)
        self.preset_combo.setToolTip(f"'{SCAN_WINDOW}': the window stored in the DICOM series, else soft tissue; "
                                     f"'{SCAN_WINDOW} 2', ...: its further stored windows (listed once opened)")
        self.apply_window_button = QPushButton("Apply to selected layer")
        self.apply_window_button.setToolTip("set the preset's window on the selected CT layer (and those linked to it)")
        self.link_check = QCheckBox("one window/level for all CT layers")
        self.link_check.setChecked(self.room.linked)
        self.link_check.setToolTip("a window set on one CT layer (drag, key, preset, slider) is set on all of them")
        self.orientation_check = QCheckBox("orientation letters")
        self.orientation_check.setChecked(self.room.orientation.enabled)
        self.orientation_check.setToolTip("R/L, A/P, S/I at the canvas edges: the patient's directions (DICOM)")
        self.orientation_check.toggled.connect(self._on_orientation_toggled)
        self.measure_button = QPushButton("Measure (mm)")
        self.measure_button.setToolTip("calipers on the CT layer on screen: each line drawn shows its length in mm")
        self.measure_button.clicked.connect(self.measure)
        hint = wrapping_label(HINT)
        hint.setStyleSheet("color: gray;")
        win_box = QGroupBox("Window")
        win_form = QFormLayout(win_box)
        win_form.addRow("Preset", self.preset_combo)
        win_form.addRow(self.apply_window_button)
        win_form.addRow(self.link_check)
        win_form.addRow(self.orientation_check)
        win_form.addRow(self.measure_button)
        win_form.addRow(hint)
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
        self.sim_layer_combo.setToolTip("the normal-dose CT layer to simulate a low-dose copy of")
        self.dose_spin.setToolTip("the low dose as a fraction of the scan's (0.25: a quarter dose, about twice the "
                                  "noise SD)")
        self.seed_spin.setToolTip("the noise's seed: the same seed gives the same low-dose image")
        self.sim_device_combo = QComboBox()
        self.sim_device_combo.addItems(SIM_DEVICES)
        self.sim_device_combo.setToolTip("auto: a GPU when there is one, else the CPU")
        self.simulate_button = QPushButton("Simulate low dose")
        self.simulate_button.setToolTip("projection-domain noise insertion (a scanner's photon and electronic noise, "
                                        "calibrated to the scan's own noise), in the background")
        self.sim_cancel_button = QPushButton("Cancel")
        self.sim_cancel_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.simulate_button)
        buttons.addWidget(self.sim_cancel_button)
        self.sim_progress = QProgressBar()
        self.sim_progress.setFormat("%v / %m slices")
        self.sim_progress.setVisible(False)
        self.sim_eta = QLabel("")
        sim_box = QGroupBox("Simulate low dose")
        sim_form = QFormLayout(sim_box)
        sim_form.addRow("Normal dose", self.sim_layer_combo)
        sim_form.addRow("Dose fraction", self.dose_spin)
        sim_form.addRow("Seed", self.seed_spin)
        sim_form.addRow("Device", self.sim_device_combo)
        sim_form.addRow(buttons)
        sim_form.addRow(self.sim_progress)
        sim_form.addRow(self.sim_eta)
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
        self.sim_cancel_button.clicked.connect(self.cancel_simulation)
        self.link_check.toggled.connect(self._on_link_toggled)
        self.watch = LayerWatch(self.viewer, self._refresh_layers)  # added, removed, moved, renamed

    # ------------------------------------------------------------------ messages
    def _info(self, text: str) -> None:
        show_message(self.status, text, theme=self.viewer.theme)

    def _error(self, text: str) -> None:
        show_message(self.status, text, error=True, theme=self.viewer.theme)
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

    def refresh_series(self, then_open: bool = False) -> Any:
        """Read the path's DICOM headers in a worker (a study of thousands of files holds the viewer for seconds
        otherwise) and offer a series picker when there are several; with ``then_open``, open the chosen one once
        they are read (Open pressed while they are being read waits for them). Returns the worker, None when the
        path was read already or is being read (or is not there: said)."""
        path = self.path_edit.text().strip()
        if path == self._scanned_path:
            if then_open and self._scanning:
                self._open_pending = True
            elif then_open and self._scan_ok:
                self._open_chosen()
            return None
        self._scanned_path, self._scan_ok, self._open_pending, self._scanning = path, False, then_open, False
        self.series_combo.clear()
        self.series_combo.setEnabled(False)
        if not path:
            return None
        if not Path(path).exists():
            self._error(f"{path}: no such file or folder")
            return None
        self._scanning, self._scan_id = True, self._scan_id + 1
        scan = self._scan_id  # only the newest scan counts (a path entered again starts another)
        self._info(f"reading the headers in {Path(path).name} …")
        return self._start(_scan_task, (path,), lambda result: self._on_scanned(scan, result), None,
                           lambda: self._scan_ended(scan))  # fmt: skip

    def _scan_ended(self, scan: int) -> None:
        """Scan ``scan`` ended (or failed): Open, when it was pressed meanwhile."""
        if scan != self._scan_id:  # another scan started meanwhile: it decides
            return
        self._scanning = False
        if self._open_pending and self._scan_ok:
            self._open_chosen()
        self._open_pending = False

    def _on_scanned(self, scan: int, result: Any) -> None:
        if scan != self._scan_id:  # another scan started meanwhile
            return
        if isinstance(result, Failure):
            self._error(result.message)
            return
        infos, niftis = result  # each NIfTI file is one choice
        self._scan_ok = True
        for info in infos:
            self.series_combo.addItem(info.label(), info.uid)
        for file in niftis:
            self.series_combo.addItem(f"NIfTI {file.name}", file)
        n = len(infos) + len(niftis)
        self.series_combo.setEnabled(n > 1)
        self._info(f"{n} series found; pick one and press Open" if n > 1 else "")

    def open(self) -> None:
        """Read the chosen input in a worker and add its layers (its headers first, when not read yet)."""
        if not self.path_edit.text().strip():
            self._error("enter a file or folder to open")
            return
        self.refresh_series(then_open=True)

    def _open_chosen(self) -> None:
        path = self.path_edit.text().strip()
        choice = self.series_combo.currentData()
        uid = choice if self.series_combo.count() > 1 and isinstance(choice, str) else None
        if isinstance(choice, Path):  # a NIfTI file of the folder
            path = str(choice)
        self.open_button.setEnabled(False)
        self._info(f"opening {Path(path).name} …")
        self._start(_open_task, (path, uid), self._on_opened, self.open_button)

    def _on_opened(self, result: Any) -> None:
        if isinstance(result, Failure):
            self._error(result.message)
            return
        names, notes = [], []
        for vol in result:
            for data, kwargs, kind in volume_layer_tuples(vol, self.preset_combo.currentText()):
                layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
                names.append(layer.name)
            notes.extend(vol.metadata.get("warnings", []))
            listed = {self.preset_combo.itemText(i) for i in range(self.preset_combo.count())}
            self.preset_combo.addItems([p for p in stored_presets(vol.metadata) if p not in listed])
        text = f"opened {', '.join(names)}"
        self._info(text + ("\n" + "\n".join(notes) if notes else ""))

    # ------------------------------------------------------------------ window
    def apply_preset(self) -> None:
        """Set the preset window on the selected image layer (and the CT layers linked to it); data untouched."""
        active = self.viewer.layers.selection.active
        layer = active if isinstance(active, Image) and not active.rgb else self.room.target_ct()  # as keys 1-7
        if layer is None:
            self._error("open a CT (or select a grayscale image layer) to apply a window preset")
            return
        preset = self.preset_combo.currentText()
        self.room.apply_preset(preset, layer)
        lo, hi = layer.contrast_limits
        self._info(f"{layer.name}: {preset} window [{lo:g}, {hi:g}] HU")

    def _on_link_toggled(self, on: bool) -> None:
        self.room.linked = bool(on)

    def measure(self) -> Any:
        """The calipers layer over the CT layer on screen (else the top visible image, in its pixels), active and in
        line mode (see ``calipers``); None, with a message, when there is no image to measure on."""
        images = [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.visible and not ly.rgb]
        image = self.room.target_ct() or (images[-1] if images else None)
        layer = measure(self.viewer, image)
        if layer is None:
            self._error("nothing to measure on: open a CT (or an image) first")
        elif layer.metadata.get("caliper_unit") != "mm":
            self._info(f"'{image.name}' has no voxel size (not a CT layer, no scale): the calipers measure its pixels")
        elif not is_ct_image(image):
            self._info(f"'{image.name}' is not a CT layer: the calipers take its scale as mm")
        return layer

    def _on_orientation_toggled(self, on: bool) -> None:
        self.room.orientation.enabled = bool(on)

    # ------------------------------------------------------------------ simulate
    def dock_closed(self) -> None:
        """The dock was closed: a simulation under way is cancelled (nothing added) and the widget stops listening."""
        self.watch.close()
        self.cancel_simulation()
        ReadingRoom.release(self.viewer, self)

    def _refresh_layers(self, renamed: dict[str, str] | None = None) -> None:
        current = renamed_to(self.sim_layer_combo.currentText(), renamed)
        self.sim_layer_combo.clear()
        images = grayscale_images(self.viewer, ndims=None)
        self.sim_layer_combo.addItems([lyr.name for lyr in images])
        normal = [lyr.name for lyr in images if not is_reduced_dose(lyr)]  # never a low-dose layer by default
        pick = current if current in normal else (normal[0] if normal else "")
        if pick:
            self.sim_layer_combo.setCurrentText(pick)

    def simulate(self) -> Any:
        """Simulate a low-dose partner of the chosen image layer in a worker; returns the worker (None: refused)."""
        name = self.sim_layer_combo.currentText()
        if self.sim_worker is not None and not self.sim_worker.abort_requested:
            self._error("a simulation is running: cancel it first")
            return None
        if not name or name not in self.viewer.layers:
            self._error("open a normal-dose CT image first")
            return None
        layer = self.viewer.layers[name]
        if is_reduced_dose(layer):
            self._error(f"{name} is already low dose or denoised (its metadata says so): simulate from its normal dose")
            return None
        if float(self.dose_spin.value()) >= 1.0:
            self._error("dose 1.0 is the scan's own dose: choose a fraction below 1")
            return None
        hu = np.asarray(layer.data, dtype=np.float32)
        if hu.ndim not in (2, 3):
            self._error(f"{name}: expected a 2D or 3D CT image in HU, got shape {hu.shape}")
            return None
        dose, seed = float(self.dose_spin.value()), int(self.seed_spin.value())
        args = (hu, dose, float(layer.scale[-1]), seed, self.sim_device_combo.currentText(), self.sim_chunk)
        share_cores()
        worker = create_worker(simulate_job, *args, _start_thread=False)
        worker.yielded.connect(lambda rec, w=worker: self._on_sim_progress(rec) if w is self.sim_worker else None)
        worker.returned.connect(lambda out: self._on_simulated(out, layer, dose, seed))
        worker.finished.connect(lambda w=worker: self._on_sim_finished(w))  # a cancelled one may end after a new start
        self.sim_worker = worker
        self.sim_records = []
        self._sim_busy(True, n_slices(hu))
        self._info(f"simulating {dose:.0%} dose of {name} …")
        worker.start()
        return worker

    def cancel_simulation(self) -> None:
        """Stop the simulation: the controls are free at once, the worker stops after the slices in hand."""
        if self.sim_worker is None:
            return
        self.sim_worker.quit()
        self._sim_busy(False)
        self._info("simulation cancelled: no layer added")

    def _sim_busy(self, busy: bool, total: int = 1) -> None:
        self.simulate_button.setEnabled(not busy)
        self.sim_cancel_button.setEnabled(busy)
        self.sim_progress.setVisible(busy)
        self.sim_progress.setRange(0, max(total, 1))
        self.sim_progress.setValue(0)
        self.sim_eta.setText("")

    def _on_sim_progress(self, rec: SimProgress) -> None:
        self.sim_records.append(rec)
        if self.sim_worker is None or self.sim_worker.abort_requested:
            return
        self.sim_progress.setRange(0, rec.total)
        self.sim_progress.setValue(rec.done)
        if rec.eta_s is not None and rec.done < rec.total:
            self.sim_eta.setText(f"about {time_left_text(rec.eta_s)} left")
        if rec.notice:
            self._info(rec.notice)
        if rec.calibration:
            self._info(f"simulating: {rec.calibration} …")

    def _on_simulated(self, result: Any, layer: Any, dose: float, seed: int) -> None:
        if self.watch.closed:
            return
        if isinstance(result, Failure):
            self._error(result.message)
            return
        if layer not in self.viewer.layers:
            self._error(f"{layer.name} was removed while simulating; result dropped")
            return
        added = added_noise_sd(np.asarray(layer.data), np.asarray(result))
        own, flat = flat_noise_sds(np.asarray(layer.data), np.asarray(result))
        how = next((r.calibration for r in self.sim_records if r.calibration), "")
        meta = {**layer.metadata, "hu": True, "dose": dose, "simulated_dose": dose, "simulated_seed": seed,
                "normal_dose": layer.name, "normal_dose_key": source_key(layer), "simulated_added_sd": added,
                "simulated_noise_level": how,
                "source": f"{layer.name} at {dose:.0%} dose (napari_lidnet.sim, seed {seed})"}  # fmt: skip
        if isinstance(meta.get("source_tags"), dict):  # its exposure is the simulated one
            meta["source_tags"] = at_dose(meta["source_tags"], dose)
        if isinstance(meta.get("slice_tags"), list):
            meta["slice_tags"] = [at_dose(t, dose) if isinstance(t, dict) else t for t in meta["slice_tags"]]
        new = self.viewer.add_image(
            np.asarray(result, dtype=np.float32),
            name=derived_name(layer.name, f"{dose:.0%} dose"),
            **placed_like(layer),
            contrast_limits=layer.contrast_limits,
            colormap="gray",
            metadata=meta,
        )
        self._info(f"added {new.name} (low-dose partner of {layer.name}; {how}): {_advice(own, flat)}")

    def _on_sim_finished(self, worker: Any = None) -> None:
        if worker is not None and worker is not self.sim_worker:
            return  # a cancelled run ending after the next one started
        self.sim_worker = None
        self._sim_busy(False)
        self.simulation_finished.emit()

    # ------------------------------------------------------------------ workers
    def _start(self, func: Any, args: tuple, on_result: Any, button: QPushButton | None, then: Any = None) -> Any:
        """Run ``func(*args)`` in a worker: ``on_result`` gets what it returns, ``button`` (if any) is enabled again
        when it ends, then ``then()`` runs (connected before the start: a quick worker cannot end unheard)."""

        def failed(exc: Exception) -> None:
            self._error(error_text(exc))

        worker = create_worker(func, *args, _connect={"returned": on_result, "errored": failed}, _start_thread=False)
        self._workers.append(worker)

        def finished() -> None:
            if button is not None:
                button.setEnabled(True)
            if worker in self._workers:
                self._workers.remove(worker)

        worker.finished.connect(finished)
        if then is not None:
            worker.finished.connect(then)
        worker.start()
        return worker
