"""Dock widget: compare image quality of every open image inside regions drawn on a Shapes layer.

Regions (rectangles, ellipses, polygons; lines and paths are listed with a note) are mapped from the Shapes layer's
data coordinates through world coordinates into each image's pixel grid, so shapes drawn over scaled or translated
images land on the right pixels. On a 3D image a 3D shape lives on its own slice; a 2D shape uses the viewer's
current slice (the note says so). The table refreshes 300 ms after the last edit of the regions; 3D volumes and
the ROI perceptual distance are computed off the GUI thread. Errors become notes in the table, never dialogs.
torch is imported only when the ROI perceptual distance is switched on. With a Lesion and a Background region
picked, a model observer judges every image too (``_roi_observer``: CHO d' and AUC, computed in the worker).

The widget follows the user: the regions are the Shapes layer the user drew on last ("New ROI layer" makes one:
transparent faces, a colour and a label per region); the detector's boxes are regions only when picked by hand;
the reference is the normal-dose image a simulated or denoised layer records in its metadata. It lives in the
bottom dock area: pickers, table and plots side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_lidnet._widgets._canvas import PlotCanvas, paint_theme
from napari_lidnet._widgets._debounce import debounce_timer
from napari_lidnet._widgets._docking import DockHome, add_tips, wrapping_label
from napari_lidnet._widgets._geometry import placed_like
from napari_lidnet._widgets._layer_watch import LayerWatch, renamed_to
from napari_lidnet._widgets._roi_observer import HOW_TO, OBSERVER_COLUMNS, observer_cell, pair_problem
from napari_lidnet._widgets._roi_regions import regions_from_shapes, short_label
from napari_lidnet._widgets._roi_table import (
    BAR_METRICS,
    COLUMN_INDEX,
    COLUMNS,
    HEADER_TIPS,
    compute_rows,
    finite,
    format_value,
    pixels_only,
    write_csv,
)
from napari_lidnet._widgets._roles import (
    DETECTIONS,
    NOT_DRAWN_BOXES,
    NOT_PICKED_REGIONS,
    REVIEWED,
    ROI,
    ROLE,
    behind_proxy,
    grayscale_images,
    normal_dose_of,
    pixel_mm,
    role,
)
from napari_lidnet._widgets._save_dialog import check_suffix, save_path
from napari_lidnet._widgets._worker_utils import share_cores
from napari_lidnet._widgets.reading_room import ReadingRoom
from napari_lidnet.io.windowing import WINDOW_PRESETS, contrast_limits
from napari_lidnet.layer_data import ANNOTATIONS
from napari_lidnet.metrics.nps import region_nps
from napari_lidnet.metrics.roi import (
    AREA_SHAPES,
    ROW_KEYS,
    Region,
    line_profile,
    region_plane,
)

TITLE = "ROI compare"  # the dock's tab
COMPUTING = "computing..."
NO_REGIONS = "Press \"New ROI layer\" and draw rectangles, ellipses or polygons (or pick a layer)."
PLOT_KINDS = ("bars", "line profile", "noise power spectrum")
NONE = "(none)"
REFERENCE_RANGE = "reference range"
DEBOUNCE_MS = 300
#: edge colours of the regions of a new ROI layer, one per region in turn
ROI_COLORS = ("#ffe119", "#42d4f4", "#f58231", "#3cb44b", "#f032e6", "#4363d8", "#bfef45", "#fabed4")
DETECTIONS_PREFIX = "raw detections: "
#: Shapes roles whose edits are not the user's regions (the detector's, calipers, the navigator's own writes)
NOT_THE_USERS = (*NOT_DRAWN_BOXES, REVIEWED)
#: Shapes roles never picked as the regions on their own
NOT_PICKED = (*NOT_PICKED_REGIONS, REVIEWED)


class ROICompareWidget(QWidget):
    """Region-of-interest comparison of the open images: table, plots and CSV export."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        ReadingRoom.install(napari_viewer, self)
        self.rows: list[dict[str, Any]] = []
        self.regions: list[Region] = []
        self.generation = 0  # increases with every finished computation (tests wait on it)
        self._images: dict[str, Any] = {}
        self._shapes = None
        self._worker = None
        self._pending = False
        self._syncing = False
        self._touched: dict[int, int] = {}  # id(shapes layer behind its proxy) -> order of its last edit or insertion
        self._reference_chosen = False  # the user picked the reference: stop defaulting it
        self.status = wrapping_label()
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._create_input_panel())
        split.addWidget(self._create_table())
        split.addWidget(self._create_plots())
        split.setSizes([320, 640, 420])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(split)
        self._timer = debounce_timer(self, self.refresh, DEBOUNCE_MS)  # the table: once after the last change
        self._connect_signals()
        self._watch_viewer()
        DockHome(self, "bottom", TITLE)

    def _create_input_panel(self) -> QScrollArea:
        """Pickers, buttons and the message line in a scrolling column (the table and plots keep the width)."""
        form, buttons = self._create_inputs()
        panel = QWidget()
        col = QVBoxLayout(panel)
        col.setContentsMargins(0, 0, 0, 0)
        col.addLayout(buttons)
        col.addLayout(form)
        col.addWidget(self.status)
        col.addStretch(1)
        area = QScrollArea()
        area.setWidgetResizable(True)
        area.setWidget(panel)
        area.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustIgnored)
        return area

    def _create_inputs(self) -> tuple[QFormLayout, QGridLayout]:
        """The form of pickers (regions, images, reference, background, window, perceptual) and the button row."""
        self.shapes_combo = QComboBox()
        self.shapes_combo.setToolTip("the Shapes layer you drew on last; the detector's boxes only when picked here")
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(90)
        self.reference_combo = QComboBox()
        self.lesion_combo = QComboBox()
        self.lesion_combo.setToolTip(
            "the region around the lesion: with a Background region, the table gets a model observer's d' and AUC "
            "of this lesion on every image"
        )
        self.background_combo = QComboBox()
        self.background_combo.setToolTip(
            "plain tissue: the noise for CNR, and for the observer's d' (draw it a few lesion sizes wide, on the "
            "lesion's slice)"
        )
        self.window_combo = QComboBox()
        self.window_combo.addItems([*WINDOW_PRESETS, REFERENCE_RANGE])
        self.perceptual_check = QCheckBox("ROI perceptual distance (lesion detector)")
        self.new_roi_button = QPushButton("New ROI layer")
        self.new_roi_button.setToolTip("a Shapes layer for regions: transparent, a colour and a label per region")
        self.refresh_button = QPushButton("Refresh")
        self.export_button = QPushButton("Export CSV")
        add_tips(
            (self.image_list, "the images to measure in every region (tick them); the same regions on each"),
            (self.reference_combo, "the image the others are compared with (RMSE, PSNR, SSIM): a normal dose"),
            (self.window_combo, "the HU window RMSE, PSNR and SSIM are computed in (values outside it clipped); "
                                "reference range: no clipping, the reference slice's own range"),
            (self.perceptual_check, "run the lesion detector to compare its features inside each region with the "
                                    "Reference's (LIDnet's ROI perceptual loss); takes a few seconds"),
            (self.refresh_button, "measure again (the table follows the regions and images as they change)"),
            (self.export_button, "the table as a new CSV file, each row with its reference, window and pixel size"),
        )  # fmt: skip
        form = QFormLayout()
        form.addRow("Regions", self.shapes_combo)
        form.addRow("Images", self.image_list)
        form.addRow("Reference", self.reference_combo)
        form.addRow("Lesion", self.lesion_combo)
        form.addRow("Background", self.background_combo)
        form.addRow("PSNR/SSIM window", self.window_combo)
        form.addRow(self.perceptual_check)
        for combo in (self.lesion_combo, self.background_combo):  # "(none)" before any region is drawn
            self._fill_region_combo(combo, [])
        buttons = QGridLayout()  # two rows: one row of three was cut off in a bottom dock at 1600 x 1000
        buttons.addWidget(self.new_roi_button, 0, 0, 1, 2)
        buttons.addWidget(self.refresh_button, 1, 0)
        buttons.addWidget(self.export_button, 1, 1)
        return form, buttons

    def _create_table(self) -> QTableWidget:
        """The read-only results table, one column per ``COLUMNS`` entry."""
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([h for _, h in COLUMNS])
        for key, _ in OBSERVER_COLUMNS:
            self.table.horizontalHeaderItem(COLUMN_INDEX[key]).setToolTip(
                "channelized Hotelling observer (Laguerre-Gauss channels): how detectable the Lesion region is "
                "against the noise of the Background region on each image, with its 95% interval"
            )
        for key, tip in HEADER_TIPS.items():
            self.table.horizontalHeaderItem(COLUMN_INDEX[key]).setToolTip(tip)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setTabKeyNavigation(False)  # Tab goes on to the plot pickers below (arrow keys move in it)
        self.table.setSortingEnabled(False)
        return self.table

    def _create_plots(self) -> QWidget:
        """The plot panel: kind, metric and region pickers above a matplotlib canvas."""
        self.plot_kind = QComboBox()
        self.plot_kind.addItems(PLOT_KINDS)
        self.metric_combo = QComboBox()
        for key in BAR_METRICS:
            self.metric_combo.addItem(dict(COLUMNS)[key], key)
        self.plot_region = QComboBox()
        self.plot_kind.setToolTip("bars: one measure of every region and image; line profile: HU along the row "
                                  "through the region's centre, half its width beyond each side; noise power "
                                  "spectrum: inside the region")
        self.metric_combo.setToolTip("the measure the bars show")
        self.plot_region.setToolTip("the region the profile or NPS is drawn for")
        self.figure = Figure(figsize=(4, 3), tight_layout=True)
        self.canvas = PlotCanvas(self.figure)
        plot_box = QWidget()
        pl = QVBoxLayout(plot_box)
        pl.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        for w in (self.plot_kind, self.metric_combo, self.plot_region):
            row.addWidget(w)
        pl.addLayout(row)
        pl.addWidget(self.canvas)
        return plot_box

    def _connect_signals(self) -> None:
        """Wire the widget's own controls: input changes schedule a refresh, plot choices redraw the plot."""
        self.shapes_combo.currentIndexChanged.connect(self._on_shapes_changed)
        self.image_list.itemChanged.connect(self.schedule_refresh)
        for combo in (self.reference_combo, self.lesion_combo, self.background_combo, self.window_combo):
            combo.currentIndexChanged.connect(self.schedule_refresh)
        self.perceptual_check.toggled.connect(self.schedule_refresh)
        self.refresh_button.clicked.connect(self.refresh)
        self.export_button.clicked.connect(self._export_clicked)
        self.new_roi_button.clicked.connect(lambda _=False: self.new_roi_layer())
        self.reference_combo.activated.connect(self._on_reference_chosen)
        for combo in (self.plot_kind, self.metric_combo, self.plot_region):
            combo.currentIndexChanged.connect(self.update_plot)

    def _watch_viewer(self) -> None:
        """Follow the viewer: layer list changes, layer renames and data edits, and the current slice."""
        layers = self.viewer.layers
        self.watch = LayerWatch(self.viewer, self._on_layers_changed)  # added, removed, moved, renamed
        self.watch.connect(layers.events.inserted, self._on_layer_inserted)
        self.watch.connect(self.viewer.dims.events.current_step, self._on_step)
        self.watch.connect(self.viewer.events.theme, lambda _event: self.update_plot())
        paint_theme(self.figure, self.viewer.theme)  # the empty plot too
        for layer in layers:
            self._watch(layer)
        self._sync_layers()

    def dock_closed(self) -> None:
        """The dock was closed: nothing is recomputed any more (a computation under way is dropped), and the widget
        stops listening to the viewer."""
        self.watch.close()
        self._timer.stop()
        ReadingRoom.release(self.viewer, self)

    # ------------------------------------------------------------------------------------------- layer lists

    def _image_layers(self) -> list[Any]:
        return grayscale_images(self.viewer)  # not the removed-noise overlay: it is no image of the patient

    def _shapes_layers(self) -> list[Any]:
        from napari.layers import Shapes

        return [lay for lay in self.viewer.layers if isinstance(lay, Shapes)]

    def _watch(self, layer: Any) -> None:
        from napari.layers import Image, Shapes

        if isinstance(layer, Image):
            self.watch.connect(layer.events.data, self.schedule_refresh)
        if isinstance(layer, Shapes):
            self.watch.connect(layer.events.data, self._on_shapes_edited)

    def _on_layer_inserted(self, event: Any) -> None:
        """A new layer: watched; a new user Shapes layer becomes the regions' source (the user is about to draw)."""
        from napari.layers import Shapes

        layer = event.value
        self._watch(layer)
        if role(layer) != ANNOTATIONS:  # a scan's own boxes count once the user edits them
            self._touch(layer)
        if isinstance(layer, Shapes) and role(layer) not in NOT_PICKED:  # a person's regions
            self.set_regions_layer(layer.name)

    def _on_layers_changed(self, renamed: dict[str, str] | None = None) -> None:
        """Any change of the layer list (``renamed``: {old: new} names after a rename)."""
        self._sync_layers(renamed)
        self.schedule_refresh()

    def _touch(self, layer: Any) -> None:
        """Remember ``layer`` as the Shapes layer the user worked on last (not detector or caliper layers)."""
        from napari.layers import Shapes

        if isinstance(layer, Shapes) and role(layer) not in NOT_THE_USERS:
            self._touched[id(behind_proxy(layer))] = max(self._touched.values(), default=0) + 1

    def _touch_order(self, layer: Any) -> int:
        """When the user last worked on ``layer`` (higher is later), 0 never."""
        return self._touched.get(id(behind_proxy(layer)), 0)

    def _on_shapes_edited(self, event: Any) -> None:
        """A drawn, moved or deleted shape: its layer becomes the regions' source (following the user)."""
        layer = getattr(event, "source", None)
        if getattr(event, "action", "changed") not in ("added", "changed", "removed") or layer is None:
            return
        if role(layer) in NOT_THE_USERS or layer == self._shapes:  # the navigator writes its boxes
            return
        self._touch(layer)
        self.set_regions_layer(layer.name)

    def set_regions_layer(self, name: str | None) -> None:
        """Use the Shapes layer called ``name`` as the regions (None: no regions)."""
        idx = self.shapes_combo.findData(name) if name else 0
        self.shapes_combo.setCurrentIndex(max(idx, 0))

    def default_regions_layer(self) -> str | None:
        """The user's Shapes layer edited (or added) last; never the detector's boxes or calipers, nor a scan's own
        annotations until the user edits them; None if none."""
        layers = self._shapes_layers()
        user = [
            (self._touch_order(lay), k, lay)
            for k, lay in enumerate(layers)
            if role(lay) not in NOT_PICKED or (role(lay) == ANNOTATIONS and self._touch_order(lay))
        ]
        return max(user, key=lambda t: t[:2])[2].name if user else None

    def default_reference(self) -> str | None:
        """The normal-dose image a shown image records as its source (simulated or denoised from it), if open."""
        for lay in reversed(self._image_layers()):
            full = normal_dose_of(lay, self.viewer.layers)
            if full is not None:
                return full.name
        return None

    def _on_reference_chosen(self, index: int) -> None:
        self._reference_chosen = True

    def _sync_shapes_combo(self, renamed: dict[str, str] | None) -> None:
        """(none), then every Shapes layer; the detector's layers are marked as raw detections."""
        current = self.shapes_combo.currentData()
        current = renamed_to(current, renamed)
        self.shapes_combo.clear()
        self.shapes_combo.addItem(NONE, None)
        for lay in self._shapes_layers():
            text = DETECTIONS_PREFIX + lay.name if role(lay) == DETECTIONS else lay.name
            self.shapes_combo.addItem(text, lay.name)
        names = [lay.name for lay in self._shapes_layers()]
        target = current if current in names else self.default_regions_layer()
        self.shapes_combo.setCurrentIndex(max(self.shapes_combo.findData(target), 0) if target else 0)

    def _sync_layers(self, renamed: dict[str, str] | None = None) -> None:
        """Refill the layer pickers, keeping the current choices under the layers' new names (checked images stay
        checked, new ones are)."""
        self._syncing = True
        try:
            self._sync_shapes_combo(renamed)
            states = {
                renamed_to(self.image_list.item(i).text(), renamed): self.image_list.item(i).checkState()
                for i in range(self.image_list.count())
            }
            self.image_list.clear()
            names = [lay.name for lay in self._image_layers()]
            for name in names:
                item = QListWidgetItem(name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(states.get(name, Qt.CheckState.Checked))
                self.image_list.addItem(item)
            ref = renamed_to(self.reference_combo.currentText(), renamed)
            self.reference_combo.clear()
            self.reference_combo.addItems([NONE, *names])
            if not (self._reference_chosen and ref in (NONE, *names)):
                ref = self.default_reference() or (ref if ref in names else NONE)
            self.reference_combo.setCurrentText(ref)
        finally:
            self._syncing = False
        self._connect_shapes()

    def _on_shapes_changed(self, index: int = -1) -> None:
        if not self._syncing:
            self._connect_shapes()
            self.schedule_refresh()

    def _connect_shapes(self) -> None:
        name = self.shapes_combo.currentData()
        layer = next((lay for lay in self._shapes_layers() if lay.name == name), None)
        if layer == self._shapes:  # == not "is": napari proxies its layers
            return
        if self._shapes is not None:
            for ev in (self._shapes.events.data, self._shapes.events.set_data):
                ev.disconnect(self.schedule_refresh)
        self._shapes = layer
        if layer is not None:
            self.watch.connect(layer.events.data, self.schedule_refresh)
            self.watch.connect(layer.events.set_data, self.schedule_refresh)

    # ----------------------------------------------------------------------------------------------- new ROIs
    def new_roi_layer(self) -> Any:
        """Add a Shapes layer for regions over the reference (or first) image: transparent faces, a colour and a
        label (R1, R2, ...) per region; it becomes the regions' source, ready to draw rectangles."""
        layers = {lay.name: lay for lay in self._image_layers()}
        image = layers.get(self.reference_combo.currentText()) or next(iter(layers.values()), None)
        geo = {} if image is None else placed_like(image)
        n = 1 + sum(role(lay) == ROI for lay in self._shapes_layers())
        layer = self.viewer.add_shapes(
            name=f"ROI {n}",
            ndim=image.ndim if image is not None else 2,
            face_color="transparent",
            edge_width=2,
            features={"name": np.array([], dtype=object)},
            feature_defaults={"name": "R1"},
            edge_color="name",
            edge_color_cycle=list(ROI_COLORS),
            text={"string": "{name}", "anchor": "upper_right", "size": 10, "color": "white"},
            metadata={ROLE: ROI},
            **geo,
        )
        layer.events.data.connect(self._name_next_region)
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        self.set_regions_layer(layer.name)
        return layer

    @staticmethod
    def _name_next_region(event: Any) -> None:
        """After a region is drawn on a new ROI layer, the next one gets the next label (and colour)."""
        layer = getattr(event, "source", None)
        if layer is None or getattr(event, "action", "") != "added":
            return
        used = {str(v) for v in layer.features["name"]} if "name" in layer.features else set()
        k = 1
        while f"R{k}" in used:
            k += 1
        layer.feature_defaults = {"name": f"R{k}"}

    def _sync_region_combos(self, regions: list[Region]) -> None:
        """Lesion, background and plot-region choices follow the regions; each keeps its choice while it exists."""
        for combo in (self.lesion_combo, self.background_combo):
            self._fill_region_combo(combo, regions)
        cur = self.plot_region.currentText()
        self.plot_region.blockSignals(True)
        self.plot_region.clear()
        self.plot_region.addItems([r.name for r in regions if r.shape_type in AREA_SHAPES])
        if cur:
            self.plot_region.setCurrentText(cur)
        self.plot_region.blockSignals(False)

    @staticmethod
    def _fill_region_combo(combo: QComboBox, regions: list[Region]) -> None:
        """(none) + area regions by index (silently); keeps the chosen region while it exists: by its label (R1,
        R2, ...: a region deleted before it shifts the indices) when labels are unique, else by its index."""
        chosen = combo.currentData()
        label = short_label(combo.currentText()) if chosen is not None else None
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(NONE, None)
        for i, reg in enumerate(regions):
            if reg.shape_type in AREA_SHAPES:
                combo.addItem(reg.name, i)
        labels = [short_label(combo.itemText(k)) for k in range(1, combo.count())]
        if label not in labels:  # none chosen, or the chosen region is gone: no choice rather than another region
            combo.setCurrentIndex(0)
        elif len(set(labels)) == len(labels):
            combo.setCurrentIndex(labels.index(label) + 1)
        else:  # labels repeat: the index decides, as before
            combo.setCurrentIndex(max(combo.findData(chosen), 0))
        combo.blockSignals(False)

    def set_background(self, index: int | None) -> None:
        """Choose the background region by its index in the Shapes layer (None: no background)."""
        self._pick(self.background_combo, index)

    def set_lesion(self, index: int | None) -> None:
        """Choose the lesion region (for the model observer) by its index in the Shapes layer (None: none)."""
        self._pick(self.lesion_combo, index)

    def _pick(self, combo: QComboBox, index: int | None) -> None:
        """Select region ``index`` in ``combo``, listed as the regions are now: one drawn since the last refresh
        (otherwise a background picked right after drawing it is silently empty), or one that took the index
        of a region deleted since (the old one was picked)."""
        if index is not None:
            self._inputs()  # lists the regions as they are now
        combo.setCurrentIndex(max(combo.findData(index), 0) if index is not None else 0)

    # ------------------------------------------------------------------------------------------- computation

    def _on_step(self, event: Any = None) -> None:
        if self._shapes is not None and self._shapes.ndim < 3 and any(lay.ndim == 3 for lay in self._image_layers()):
            self.schedule_refresh()

    @property
    def busy(self) -> bool:
        """Whether a refresh is scheduled or computing (the table is about to change)."""
        return self._worker is not None or self._timer.isActive()

    def schedule_refresh(self, *args: Any) -> None:
        """Restart the debounce timer; the table is recomputed 300 ms after the last call (never once the dock is
        closed)."""
        if not self._syncing and not self.watch.closed:
            self._timer.start()

    def window(self) -> tuple[float, float] | None:
        """PSNR/SSIM window (low, high) HU, or None for the reference's range."""
        text = self.window_combo.currentText()
        return None if text == REFERENCE_RANGE else contrast_limits(text)

    def _inputs(self) -> tuple[dict[str, Any], list[Region], str | None, int | None, int | None, dict[str, float]]:
        """Images (name -> array), regions, reference, background and lesion indices, as the pickers say, and each
        image's pixel area (mm²; NaN without a voxel size)."""
        layers = {lay.name: lay for lay in self._image_layers()}
        checked = [
            self.image_list.item(i).text()
            for i in range(self.image_list.count())
            if self.image_list.item(i).checkState() == Qt.CheckState.Checked
        ]
        ref = self.reference_combo.currentText()
        ref = ref if ref in layers else None
        names = [n for n in checked if n in layers]
        if ref is not None and ref not in names:
            names.append(ref)
        image_layers = {n: layers[n] for n in names}
        regions = (
            [] if self._shapes is None else regions_from_shapes(self._shapes, image_layers, self.viewer.dims.point)
        )
        self._sync_region_combos(regions)
        images = {n: (lay.data[0] if lay.multiscale else lay.data) for n, lay in image_layers.items()}
        areas = {n: math.prod(pixel_mm(lay) or [math.nan]) for n, lay in image_layers.items()}
        return images, regions, ref, self.background_combo.currentData(), self.lesion_combo.currentData(), areas

    def refresh(self) -> None:
        """Recompute the table now: inline for 2D images, in a napari thread worker for 3D, the ROI
        perceptual distance or the model observer (a refresh asked for meanwhile runs when the worker is done)."""
        self._timer.stop()
        if self._worker is not None:
            self._pending = True
            return
        images, regions, ref, bg, lesion, areas = self._inputs()
        self._images, self.regions = images, regions
        perceptual = self.perceptual_check.isChecked()
        args = (images, regions, ref, bg, self.window(), perceptual, lesion)
        if self._shapes is None:
            self.status.setText(NO_REGIONS)
        checked = [n for n in images if self._is_checked(n)]
        observer = not pair_problem(regions, lesion, bg)
        if not (perceptual or observer) and all(np.ndim(im) == 2 for im in images.values()):
            self._show(compute_rows(*args), checked, areas)
            return
        from napari.qt.threading import create_worker

        self.status.setText(COMPUTING)
        share_cores()
        worker = create_worker(
            compute_rows,
            *args,
            _connect={
                "returned": lambda rows: self._show(rows, checked, areas),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self._worker = worker

    def _is_checked(self, name: str) -> bool:
        items = self.image_list.findItems(name, Qt.MatchFlag.MatchExactly)
        return bool(items) and items[0].checkState() == Qt.CheckState.Checked

    def _on_error(self, exc: Exception) -> None:
        self.status.setText(f"could not compute the table: {exc}")
        self.rows = [{**{k: math.nan for k in ROW_KEYS}, "region": "", "image": "", "note": f"error: {exc}"}]
        self._fill_table()
        self.generation += 1

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            self.refresh()

    def _show(self, rows: list[dict[str, Any]], checked: list[str], areas: dict[str, float]) -> None:
        """Show the computed rows of the checked images, each with its region's area (pixels x pixel area, mm²;
        NaN for an image without a voxel size, shown as its pixel count)."""
        if self.watch.closed:
            return
        self.rows = [
            {**r, "area_mm2": r["n"] * areas.get(r["image"], math.nan) if r["n"] else math.nan}
            for r in rows
            if not r["image"] or r["image"] in checked
        ]
        try:
            self._fill_table()
        except RuntimeError:  # the dock was closed while the rows were computed: nothing left to show them in
            return
        n_reg = sum(r.shape_type in AREA_SHAPES for r in self.regions)
        if self._shapes is not None:
            self.status.setText(f"{n_reg} region(s) x {len(checked)} image(s)")
        elif self.status.text() == COMPUTING:  # the regions (or every layer) went while computing
            self.status.setText(NO_REGIONS)
        self.update_plot()
        self.generation += 1

    def _fill_table(self) -> None:
        """One table row per result row; each cell keeps its raw value (``UserRole``) under the text shown."""
        observed = dict(OBSERVER_COLUMNS)
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            for c, (key, _) in enumerate(COLUMNS):
                value = row.get(key)
                if key in observed:
                    text, tip = observer_cell(row, key) if row.get("image") else ("", HOW_TO)
                elif key == "area_mm2" and pixels_only(row):
                    text, tip = f"{row['n']} px", "this image has no voxel size: its area in pixels"
                else:
                    text, tip = format_value(value), (str(value or "") if key == "note" else "")
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value)
                if tip:
                    item.setToolTip(tip)
                self.table.setItem(r, c, item)
        self.table.resizeColumnsToContents()

    # --------------------------------------------------------------------------------------------------- plot

    def update_plot(self, *args: Any) -> None:
        """Redraw the plot: per-region bars of a metric, a line profile or the NPS of the chosen region."""
        kind = self.plot_kind.currentText()
        self.metric_combo.setVisible(kind == "bars")
        self.plot_region.setVisible(kind != "bars")
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        try:
            if kind == "bars":
                self._plot_bars(ax)
            else:
                self._plot_region_curves(ax, kind)
        except Exception as exc:  # a plot never breaks the widget
            ax.text(0.5, 0.5, f"cannot plot: {exc}", ha="center", va="center", transform=ax.transAxes, wrap=True)
        paint_theme(self.figure, self.viewer.theme)
        self.canvas.draw_idle()

    def _plot_bars(self, ax: Any) -> None:
        key = self.metric_combo.currentData()
        regions = list(dict.fromkeys(r["region"] for r in self.rows if r["image"]))
        images = list(dict.fromkeys(r["image"] for r in self.rows if r["image"]))
        width = 0.8 / max(len(images), 1)
        for j, img in enumerate(images):
            found = [next((r for r in self.rows if r["region"] == reg and r["image"] == img), {}) for reg in regions]
            vals = np.array([finite(r.get(key)) for r in found])
            err = None
            if key == "cho_d":  # the observer's 95% interval as an error bar
                low, high = (np.array([finite(r.get(f"{key}_{e}")) for r in found]) for e in ("low", "high"))
                err = np.nan_to_num(np.stack([vals - low, high - vals]).clip(min=0))
            x = np.arange(len(regions)) + (j - (len(images) - 1) / 2) * width
            ax.bar(x, vals, width, yerr=err, label=img)
        ax.set_xticks(np.arange(len(regions)), _tick_labels(regions))
        if sum(len(r) for r in regions) > MAX_FLAT_LABELS:  # side by side they overprinted into one grey strip
            ax.tick_params(axis="x", labelrotation=90, labelsize="x-small")
        ax.set_ylabel(dict(COLUMNS)[key])
        if images:  # above the axes (inside, it covered the bars), one name per row when names are long
            ncols = 1 if max(len(i) for i in images) > 12 else min(len(images), 3)
            ax.legend(fontsize="x-small", loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=ncols, frameon=False)

    def _pixel_mm(self, name: str) -> tuple[float, float] | None:
        """The pixel size in mm of the image called ``name``; None when it has none (plots in px)."""
        lay = next((lay for lay in self._image_layers() if lay.name == name), None)
        return None if lay is None else pixel_mm(lay)

    def _plot_region_curves(self, ax: Any, kind: str) -> None:
        region = next((r for r in self.regions if r.name == self.plot_region.currentText()), None)
        if region is None:
            ax.text(0.5, 0.5, "no region", ha="center", va="center", transform=ax.transAxes)
            return
        problems = []
        for name, image in self._images.items():
            if not self._is_checked(name):
                continue
            plane, mask, _, note = region_plane(image, region, name)
            if plane is None:
                problems.append(f"{name}: {note}")
                continue
            mm = self._pixel_mm(name)
            (dy, dx), unit = mm or (1.0, 1.0), "mm" if mm else "px"
            if kind == "line profile":
                cols, vals, centre = line_profile(plane, mask)
                ax.plot((cols - centre) * dx, vals, label=name)
                ax.set_xlabel(f"position along the centre row ({unit} from the region centre)")
                ax.set_ylabel("HU")
            else:
                try:
                    res = region_nps(plane, mask, (dy, dx))
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
                    continue
                ax.plot(res.f, res.nps, label=name)
                ax.set_xlabel(f"spatial frequency ({unit}$^{{-1}}$)")
                ax.set_ylabel(f"NPS (HU$^2$ {unit}$^2$)")
        ax.set_title(region.name, fontsize="small")
        if ax.lines:
            ax.legend(fontsize="small")
        if problems:
            ax.text(0.01, 0.99, "\n".join(problems), va="top", fontsize="x-small", transform=ax.transAxes)

    # ---------------------------------------------------------------------------------------------------- CSV

    def write_csv(self, path: str | Path) -> Path:
        """Write the current table to a new file ``path`` (CSV), each row with the reference, the PSNR/SSIM window,
        the background and lesion regions and its image's pixel size; refused while the table is being recomputed
        (its numbers would not be those of the settings written beside them)."""
        if self.busy:
            raise ValueError("the table is being recomputed for the new settings: export again when it is done")
        check_suffix(path, [".csv"], "the ROI table")

        def picked(combo: QComboBox) -> str:
            return combo.currentText() if combo.currentData() is not None else ""

        window = self.window()
        reference = self.reference_combo.currentText()
        context = {
            "reference": "" if reference == NONE else reference,
            "window_hu": "reference range" if window is None else f"{window[0]:g}..{window[1]:g}",
            "background": picked(self.background_combo),
            "lesion": picked(self.lesion_combo),
        }
        rows = []
        for row in self.rows:
            mm = self._pixel_mm(row.get("image", "")) if row.get("image") else None
            rows.append({**row, **context, "pixel_mm": "" if mm is None else f"{mm[0]:g} x {mm[1]:g}"})
        return write_csv(path, rows)

    def _export_clicked(self) -> None:
        path = save_path(self, "Export ROI table", "CSV (*.csv)", "roi_compare.csv")  # an existing file is refused
        if path:
            try:
                self.write_csv(path)
                self.status.setText(f"wrote {path}")
            except (OSError, ValueError) as exc:  # FileExistsError included: outputs never overwrite
                self.status.setText(f"could not write {path}: {exc}")


#: characters of region names that fit side by side under the bars; more: turned upright, at most MAX_TICKS shown
MAX_FLAT_LABELS, MAX_TICKS = 40, 20


def _tick_labels(regions: list[str]) -> list[str]:
    """The bars' labels: every region's name, or every k-th one's when there are more than ``MAX_TICKS``."""
    step = max(1, math.ceil(len(regions) / MAX_TICKS))
    return [name if k % step == 0 else "" for k, name in enumerate(regions)]
