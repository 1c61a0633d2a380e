"""Lesion navigator dock: the detector's boxes as a table a reader steps through, accepts, rejects or edits.

The table lists one row per box (slice, centre in mm, long and short axis in mm, mean HU, score, status) and sorts
on any column; selecting a row moves the viewer to the box's slice, centres it and zooms to it (``_framing``).
Accept (A) and Reject (R) act on the selected row and move on to the next pending one; Edit (E) keeps the row (N / P
step without deciding). Kept boxes live on a layer of their own, "<image> reviewed" (role ``reviewed``): Edit selects
the box there so its corners can be dragged, and a box drawn on that layer by hand joins the table as "added". The
reviewed boxes export to CSV/JSON (every row with its status) and to a DICOM Comprehensive SR (kept boxes,
referencing the source slices when the image came from DICOM). Sizes and HU come from ``findings`` (plain numpy); the
dock lives in the bottom area. The reviewed layer's bookkeeping is ``_reviewed_layer``, the exports
``_review_export``, Open… (a saved review or box table back on its image) ``_saved_review``, the geometry
``_geometry``.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from ..findings import KEPT, Finding, centre_world, lesion_groups, measure
from ..io.boxes_io import slice_columns
from ..io.volume import n_slices
from ..layer_data import ANNOTATED, RECIST_LONG, RECIST_SHORT
from ._box_marks import dim_boxes, mark_current, remark, scored, unmark
from ._debounce import debounce_timer
from ._docking import DockHome, add_tips, scroll_layout, wrapping_label
from ._framing import finding_zoom
from ._geometry import corners_in_image, index_to_patient, index_to_world, pixel_map
from ._key_help import keep_help_mended
from ._layer_watch import LayerWatch, renamed_to
from ._review_export import write_review_sr, write_review_table
from ._reviewed_layer import STATUS_COLORS, ReviewedLayer
from ._roles import (
    CALIPERS,
    DETECTIONS,
    REVIEWED,
    grayscale_images,
    has_voxel_size,
    is_ct_image,
    is_shapes,
    lidnet_info,
    places_patient,
    reviewed_of,
    role,
    source_key,
)
from ._save_dialog import check_suffix, save_path
from ._saved_review import SavedReview
from ._viewer import camera, grid
from .compare import FLIP_KEY
from .reading_room import PRESET_KEYS, ReadingRoom

TITLE = "Navigator"  # the dock's tab
#: (key, header) of the table's columns
COLUMNS = (
    ("id", "#"),
    ("lesion", "lesion"),  # boxes on neighbouring slices that overlap are one lesion (findings.lesion_groups)
    ("slice", "slice (inst.)"),  # the index, and the DICOM InstanceNumber a PACS shows when the series has one
    ("centre", "centre z, y, x (mm)"),
    ("long_mm", "long (mm)"),
    ("short_mm", "short (mm)"),
    ("mean_hu", "mean HU"),
    ("score", "score"),
    ("status", "status"),
)
#: what the size and HU columns measure (the box's sides are easily read as the lesion's axes)
HEADER_TIPS = {
    "long_mm": "the box's long side: an upright box around an oblique lesion understates its long axis (up to "
    "1.4x); Edit, then turn and fit the box on the reviewed layer to measure the lesion",
    "short_mm": "the box's short side (see long)",
    "mean_hu": "mean HU of every pixel inside the box, lesion and surroundings",
}
#: where the centre column's positions are: the patient's (a DICOM geometry), else the viewer's world
CENTRE_TIPS = {
    True: "the box centre in patient LPS coordinates, as the scanner's positions give them",
    False: "the box centre in the viewer's world coordinates: the source gives no patient position (not LPS)",
}
NONE = "(none)"

#: the status bar's hint on the boxes layers while the review keys are bound there
REVIEW_HINT = "LIDnet: <A> accept; <R> reject; <E> edit; <N>/<P> next/previous finding"


def _header(key: str, header: str, unit: str, placed: bool) -> str:
    """A column's header in the table's unit; the centre's says "viewer" where the source places nothing."""
    header = header.replace("(mm)", f"({unit})")
    return header.replace(")", ", viewer)") if key == "centre" and not placed else header


class SortItem(QTableWidgetItem):
    """A table cell that sorts on its raw value (numbers as numbers), not on its text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        try:
            return float(a) < float(b)
        except (TypeError, ValueError):
            return str(a) < str(b)


def _stamp(shapes: Any) -> bytes:
    """A digest of a Shapes layer's vertices, shape types and scores: equal when nothing a review reads changed."""
    digest = hashlib.blake2b(digest_size=16)
    for verts in shapes.data:
        digest.update(np.ascontiguousarray(verts, dtype=np.float64).tobytes())
    digest.update("|".join(shapes.shape_type).encode())
    if "score" in shapes.features:
        digest.update(shapes.features["score"].to_numpy(np.float64).tobytes())
    return digest.digest()


def _press(func: Any) -> Any:
    """A key binding (napari passes the viewer or layer) that calls ``func()``; one object per key, so closing the
    dock unbinds exactly it."""

    def press(_target: Any) -> None:
        func()

    press.__name__ = f"lidnet_review_{func.__name__}"
    return press


class LesionNavigatorWidget(ReviewedLayer, SavedReview, QWidget):
    """Review detections: a sortable table, jump to a box, accept / reject / edit, reviewed layer and exports.

    Public methods take plain values (``load``, ``select``, ``accept``, ``reject``, ``edit``, ``export``);
    ``review_changed`` is emitted after every change of a finding's status or box."""

    review_changed = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        ReadingRoom.install(napari_viewer, self)
        self._findings: list[Finding] = []
        self._reload_timer = debounce_timer(self, self._reload)  # boxes, then their scores: one read of both
        self.boxes_layer: Any = None
        self.image_layer: Any = None
        self.reviewed_layer: Any = None
        self._syncing = False
        self._dimming = False
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._origin: dict[int, tuple] = {}  # finding id -> its detection's key (slice, corners)
        self._moved_key: dict[int, str] = {}  # finding id -> the Denoise dock's detection key of its box (a box moved
        # by hand on the lesions layer is the same finding: hand_edits.detection_keys)
        self._moved_kept = False  # the last merge moved a kept box (its reviewed-layer box is rewritten)
        self._lesions: dict[int, int] = {}  # finding id -> the lesion number shown (kept across edits)
        self._alone: set[int] = set()  # ids rejected one by one (Reject), which accepting their lesion leaves so
        self._kept_alone: set[int] = set()  # ids accepted one by one (Accept, Edit), which rejecting the lesion leaves
        self._parked: dict[tuple, Finding] = {}  # rejected findings whose detection left the layer, by key
        self._read_stamp: bytes = b""  # the boxes and scores last read (_stamp)
        self._shape_index: dict[int, int] = {}  # finding id -> its shape in the boxes layer
        self._mark: Any = None  # the current finding's white outline (_box_marks.mark_current)
        self.watch = LayerWatch(napari_viewer, self._on_renamed)
        self._create_ui()
        self._create_shortcuts()
        self._watch_viewer()
        self.refresh_layers()
        if self.boxes_combo.currentText() != NONE and role(self._layer(self.boxes_combo.currentText())) == DETECTIONS:
            self.load()  # opened after a detection run: its boxes are what the picker shows, ready to review
        elif (reviewed := self._reviewed_image()) is not None:  # its detections deleted, the dock reopened: the
            self._load_review(reviewed)  # review is in the viewer, otherwise unreachable
        DockHome(self, "bottom", TITLE)

    @property
    def findings(self) -> list[Finding]:
        """The boxes under review, as the boxes layer holds them now (a reload still pending is done first)."""
        if self._reload_timer.isActive():
            self._reload()
        return self._findings

    @findings.setter
    def findings(self, value: list[Finding]) -> None:
        self._findings = value

    def dock_closed(self) -> None:
        """The dock was closed: the widget stops listening to the viewer's layers, unbinds its review keys and
        undims the boxes it dimmed."""
        self._reload_timer.stop()
        self._undim()
        self.watch.close()
        ReadingRoom.release(self.viewer, self)

    # ------------------------------------------------------------------------------------------------------ UI
    def _create_ui(self) -> None:
        """Pickers and buttons on the left, the table filling the rest."""
        self.boxes_combo, self.image_combo = QComboBox(), QComboBox()
        for combo in (self.boxes_combo, self.image_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(22)
            combo.activated.connect(lambda _i: self.load())
        self.buttons = {}
        grid = QGridLayout()
        names = (("accept", "Accept (A)"), ("reject", "Reject (R)"), ("accept_lesion", "Accept lesion (⇧A)"),
                 ("reject_lesion", "Reject lesion (⇧R)"), ("edit", "Edit (E)"), ("export", "Export…"),
                 ("previous", "Previous (P)"), ("next", "Next (N)"), ("open", "Open…"))  # fmt: skip
        for k, (key, text) in enumerate(names):
            self.buttons[key] = button = QPushButton(text)
            grid.addWidget(button, k // 2, k % 2)
        self._add_tips()
        for key in ("accept_lesion", "reject_lesion"):
            self.buttons[key].setToolTip("every box of the selected row's lesion: its overlapping boxes on "
                                         "neighbouring slices (the 'lesion' column)")  # fmt: skip
        self.status = wrapping_label()
        form = QFormLayout()
        form.addRow("boxes", self.boxes_combo)
        form.addRow("image", self.image_combo)
        panel = QWidget()
        side = scroll_layout(panel, keep_width=True)  # scrolls on a short screen instead of making the window taller
        side.addLayout(form)
        side.addLayout(grid)
        side.addWidget(self.status)
        side.addStretch(1)
        layout = QHBoxLayout(self)
        layout.addWidget(panel)
        layout.addWidget(self._create_table(), stretch=1)

    def _add_tips(self) -> None:
        """Tooltips of the pickers and buttons."""
        b = self.buttons
        add_tips(
            (b["accept"], "keep the selected box as a finding (its box goes on the reviewed layer), then the next box "
                          "to decide"),
            (b["reject"], "not a lesion: left out of the kept findings (dimmed on the detector's layer), then the "
                          "next box to decide"),
            (b["edit"], "keep it and fit its box by hand on the reviewed layer (sizes follow the box)"),
            (b["previous"], "the row above (from the first: the last), its box centred and zoomed to"),
            (b["next"], "the row below (from the last: the first), its box centred and zoomed to"),
            (b["export"], "CSV or JSON (every row with its status) or DICOM SR (.dcm: kept boxes)"),
            (b["open"], "a review exported here (CSV/JSON: every box with its status; DICOM SR: the kept ones) or "
                        "a box table (the Denoise dock's, lidnet detect's, File > Save's .boxes.csv) onto the picked "
                        "image; slices matched by DICOM instance, DeepLesion slice number or patient position where "
                        "both record them, else by slice number"),
            (self.boxes_combo, "the boxes to review: a detection run's lesions layer, or any layer of boxes"),
            (self.image_combo, "the image the boxes lie on: sizes in mm, mean HU and positions are read on it"),
        )  # fmt: skip

    def _create_table(self) -> QTableWidget:
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([h for _, h in COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.sortItems(0, Qt.SortOrder.AscendingOrder)
        self.table.verticalHeader().setVisible(False)
        self.table.setTabKeyNavigation(False)  # Tab leaves the table (arrow keys move in it)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.currentCellChanged.connect(self._on_current_changed)
        return self.table

    def _create_shortcuts(self) -> None:
        """Buttons and their keys: while the navigator has the focus, and on the image (see ``_bind_review_keys``)."""
        actions = {"accept": (self.accept, "A"), "reject": (self.reject, "R"), "edit": (self.edit, "E"),
                   "accept_lesion": (self.accept_lesion, "Shift+A"), "reject_lesion": (self.reject_lesion, "Shift+R"),
                   "previous": (self.previous, "P"), "next": (self.next, "N"),
                   "export": (self._export_dialog, None), "open": (self._open_dialog, None)}  # fmt: skip
        self._review_keys = {}
        for key, (func, shortcut) in actions.items():
            self.buttons[key].clicked.connect(lambda _=False, f=func: f())
            if shortcut:
                sc = QShortcut(QKeySequence(shortcut), self)
                sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
                sc.activated.connect(func)
                self._review_keys[shortcut.replace("+", "-") if "+" in shortcut else shortcut.lower()] = _press(func)
        for key in (*PRESET_KEYS, FLIP_KEY.upper()):  # the canvas's keys with the table in focus (its type-to-search
            sc = QShortcut(QKeySequence(key), self)  # took a window preset's digit for a row number)
            sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            sc.activated.connect(lambda k=key: self._canvas_key(k))
        self._bind_review_keys(self.viewer)

    def _canvas_key(self, key: str) -> None:
        """Do what ``key`` does on the canvas (a window preset, Flip): the function bound to it on the viewer."""
        from napari.utils.key_bindings import KeyBinding

        func = self.viewer.keymap.get(KeyBinding.from_str(key))
        if func is not None:
            func(self.viewer)

    def _bind_review_keys(self, target: Any) -> None:
        """The review keys on the canvas too: on the viewer (any layer without its own binding of the key) and on
        the lesions and reviewed layers, where they replace napari's shape keys (R would start drawing a rectangle
        and the next click add a box; the toolbar still draws)."""
        for key, press in self._review_keys.items():
            self.watch.bind_key(target, key, press)
        if target is not self.viewer:  # napari's hint on the layer named R as "add rectangles"
            keep_help_mended(self.watch, target, self._review_keys, REVIEW_HINT)

    def _watch_viewer(self) -> None:
        events = self.viewer.layers.events
        self.watch.connect(events.inserted, self._on_inserted)
        self.watch.connect(events.removed, self._on_removed)

    def _on_renamed(self, renamed: dict[str, str]) -> None:
        self.refresh_layers(renamed)  # any change of the layer list (moved, renamed; the handlers below do the rest)

    # ---------------------------------------------------------------------------------------------- choices
    def _box_layers(self) -> list[Any]:
        """Shapes layers to review: detection runs first (newest first), then copies of them, then the others (not
        reviewed layers or calipers)."""
        shapes = [ly for ly in self.viewer.layers if is_shapes(ly) and role(ly) not in (REVIEWED, CALIPERS)]
        dets = [ly for ly in shapes if role(ly) == DETECTIONS][::-1]
        copies = [ly for ly in dets if self._is_copy(ly) and ly.name.endswith(" copy")]  # napari names its copies
        return [ly for ly in dets if ly not in copies] + copies + [ly for ly in shapes if role(ly) != DETECTIONS]

    def refresh_layers(self, renamed: dict[str, str] | None = None) -> None:
        """Refill the pickers, keeping current choices (under their new names after a rename)."""
        for combo, names in ((self.boxes_combo, [ly.name for ly in self._box_layers()]),
                             (self.image_combo, [ly.name for ly in self._images()])):  # fmt: skip
            current = renamed_to(combo.currentText(), renamed)
            combo.blockSignals(True)
            combo.clear()
            combo.addItems([NONE, *names])
            combo.setCurrentText(current if current in names else (names[0] if names else NONE))
            combo.blockSignals(False)

    def _on_inserted(self, event: Any) -> None:
        layer = event.value
        self.refresh_layers()
        if is_shapes(layer) and role(layer) == DETECTIONS and not self._is_copy(layer):  # a new run: review it
            self.load(layer)

    def _is_copy(self, layer: Any) -> bool:
        """Whether ``layer`` is a copy (napari's Duplicate Layer) of a detection run already in the viewer."""
        run = lidnet_info(layer).get("run")
        return bool(run) and any(ly != layer and lidnet_info(ly).get("run") == run for ly in self.viewer.layers)

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        # == not "is": napari gives plugins a new proxy of a layer at each access
        if layer == self.image_layer:  # no review on an image that is gone: the picker says so, jumps stop
            self._undim()
            self.image_layer = None
            self.refresh_layers()
            self.image_combo.blockSignals(True)
            self.image_combo.setCurrentText(NONE)
            self.image_combo.blockSignals(False)
            self._say(f"'{layer.name}' was removed: pick the image these boxes belong to")
            return
        if layer == self.reviewed_layer:
            self.reviewed_layer = None
        was_reviewed = layer == self.boxes_layer
        if was_reviewed:  # the detections are gone; the kept boxes stay (on the reviewed layer)
            self.boxes_layer = None
            self.findings = [f for f in self.findings if f.kept]
            self._fill_table()
            kept = f"; the {len(self.findings)} accepted stay listed" if self.findings else ""
            self._say(f"'{layer.name}' was removed: nothing left to review{kept}; pick another boxes layer")
        self.refresh_layers()
        if was_reviewed:  # the picker names no other layer as if it were the one reviewed
            self.boxes_combo.blockSignals(True)
            self.boxes_combo.setCurrentText(NONE)
            self.boxes_combo.blockSignals(False)

    def _load_review(self, image: Any) -> None:
        """Review ``image`` with the boxes layer picked when it is that image's own (its detections or its
        annotations), else its reviewed layer alone (not another scan's boxes that the picker shows)."""
        picked = self._layer(self.boxes_combo.currentText())
        own = picked is not None and (lidnet_info(picked).get("source_key") == source_key(image)
                                      or lidnet_info(picked).get("source_layer") == image.name
                                      or picked.name == f"{image.name} {ANNOTATED}")  # fmt: skip
        if not own:
            self.boxes_combo.blockSignals(True)
            self.boxes_combo.setCurrentText(NONE)
            self.boxes_combo.blockSignals(False)
        self.load(picked if own else None, image)

    def _reviewed_image(self) -> Any | None:
        """The first image with a reviewed layer of its own (the navigator's kept boxes), or None."""
        return next((ly for ly in self._images() if reviewed_of(self.viewer.layers, ly)), None)

    def _images(self) -> list[Any]:
        """Grayscale 2D/3D images (``grayscale_images``), CT layers first."""
        images = grayscale_images(self.viewer)
        return [ly for ly in images if is_ct_image(ly)] + [ly for ly in images if not is_ct_image(ly)]

    def _layer(self, name: str) -> Any | None:
        return next((ly for ly in self.viewer.layers if ly.name == name), None)

    def _image_for(self, boxes: Any) -> Any | None:
        """The image the boxes were found on (the detections' source), else the picked one, else the top CT."""
        src = lidnet_info(boxes).get("source_layer")
        images = self._images()
        for candidate in (self._layer(src) if src else None, self._layer(self.image_combo.currentText())):
            if candidate is not None and candidate in images:
                return candidate
        return images[0] if images else None

    # --------------------------------------------------------------------------------------------- findings
    def load(self, boxes: Any = None, image: Any = None) -> int:
        """Review the boxes of ``boxes`` (default: the picked layer) on ``image`` (default: the boxes' source).
        Reloading the same layer (a new score threshold) keeps each box's id and status, and keeps the boxes
        already kept even when they left the layer. Returns the number of findings."""
        self._reload_timer.stop()  # read now: what a pending reload would have read
        boxes = boxes if boxes is not None else self._layer(self.boxes_combo.currentText())
        image = image if image is not None else self._image_for(boxes)
        if boxes is not None and image is not None and boxes.ndim < image.ndim:  # would land on a made-up slice
            self._say(f"{boxes.name!r} is 2D and {image.name!r} is a volume: its boxes lie on no slice of it; pick "
                      "a 2D image, or draw the boxes on the volume")  # fmt: skip
            return len(self.findings)
        same = boxes is not None and boxes == self.boxes_layer and image == self.image_layer
        if not same:  # another run: its ids start again, so the marks (and lesion numbers) of the last one go
            self._origin, self._parked, self._alone, self._lesions = {}, {}, set(), {}
            self._kept_alone = set()
        elif all(f.status == "pending" for f in self.findings):  # a threshold tried before the review began: its
            self._lesions = {}  # boxes numbered afresh, as the Denoise dock's export numbers them (otherwise the
            # two exports give one lesion two numbers); once the reader decides, each lesion keeps its number
        if boxes is not None and boxes != self.boxes_layer:
            self._connect_boxes(boxes)
        self.boxes_layer, self.image_layer = boxes, image
        for combo, layer in ((self.boxes_combo, boxes), (self.image_combo, image)):
            combo.blockSignals(True)
            combo.setCurrentText(layer.name if layer is not None else NONE)
            combo.blockSignals(False)
        self._read_stamp = _stamp(boxes) if boxes is not None else b""
        new, shapes = self._read_findings(boxes, image) if boxes is not None and image is not None else ([], [])
        shape_of = {id(f): i for f, i in zip(new, shapes)}
        keys = _layer_keys(boxes, new, shapes)
        self._moved_kept = False
        self.findings = self._merge(new, self.findings if same else [], keys)
        self._moved_key = {f.id: keys[id(f)] for f in new if keys.get(id(f))}
        self._shape_index = {f.id: shape_of[id(f)] for f in new}
        self._measure([f for f in self.findings if not f.measures])  # the same detection keeps its measures
        self.reviewed_layer = self._find_reviewed()
        if not same:
            self._adopt_reviewed()
        else:  # detections back over the threshold: a kept box without one takes it, a rejected one is rejected
            self._absorb_kept()
            self._restore_rejected(self._stored("rejected"))
            if self._moved_kept:  # a kept box moved on the lesions layer: the reviewed layer takes it where it is
                self._write_reviewed()
        self._sync_from_reviewed()
        recist = self._recist_sizes(boxes)  # after the kept boxes are adopted (measured again by their sides)
        self._fill_table()
        self._mark_again()  # a new threshold renumbers the shapes (the mark sat on another box)
        if image is not None and boxes is not None:
            sizes = (f"; long/short of {recist} box(es): the table's RECIST diameters (DeepLesion pads its boxes 5 px "
                     "each side)") if recist else ""  # fmt: skip
            self._say(f"{len(self.findings)} boxes to review on {image.name}{sizes}")
        elif image is not None and self.findings:
            self._say(f"the review of {image.name}: {len(self.findings)} kept boxes on "
                      f"{self.reviewed_layer.name if self.reviewed_layer is not None else 'its reviewed layer'} (its "
                      "detections were removed: run the detector to review more)")  # fmt: skip
        else:
            self._say("choose a layer of boxes (run the detector) and its image")
        return len(self.findings)

    def _merge(self, new: list[Finding], old: list[Finding], keys: dict[int, str] | None = None) -> list[Finding]:
        """New findings take the id, status and box of the old finding from the same detection; kept findings
        whose detection left stay; the others are parked, so a detection that comes back keeps its id (exports cite
        it) and is still rejected if it was. ``keys``: the Denoise dock's detection key of each new finding (by
        ``id()``): a box the reader moved on the lesions layer keeps its id and status (a kept one: edited)."""
        by_origin = {**self._parked, **{self._origin[f.id]: f for f in old if f.id in self._origin}}
        moved_from = {self._moved_key[g.id]: g for g in old if g.id in self._moved_key}
        next_id = max((f.id for f in [*old, *self._parked.values()]), default=-1) + 1
        origin: dict[int, tuple] = {}
        for f in new:
            key = self._key(f)
            prev = by_origin.pop(key, None)
            was = moved_from.get((keys or {}).get(id(f), ""))
            if prev is not None:  # the same detection: the review (and any edit of the box) carries over
                f.id, f.status, f.corners, f.slice = prev.id, prev.status, prev.corners, prev.slice
                f.measures = prev.measures
            elif was is not None and self._origin.get(was.id) in by_origin:  # moved by hand: its box as it is now
                by_origin.pop(self._origin[was.id])
                f.id, f.status = was.id, "edited" if was.status == "accepted" else was.status
                self._moved_kept = self._moved_kept or was.kept  # its box on the reviewed layer follows
            else:
                f.id, next_id = next_id, next_id + 1
            origin[f.id] = key
        carried = [f for f in old if f.kept and f.id not in origin]  # kept, and gone from the layer (or drawn)
        self._parked = {k: f for k, f in by_origin.items() if not f.kept}  # rejected or pending: same id on return
        self._origin = origin | {f.id: self._origin[f.id] for f in carried if f.id in self._origin}
        return sorted({f.id: f for f in [*new, *carried]}.values(), key=lambda f: f.id)

    def _box_links(self, boxes: Any) -> list[tuple[Any, Any]]:
        """(event, handler) of what the navigator follows on a boxes layer."""
        return [(boxes.events.data, self._on_boxes_data),
                (boxes.events.features, self._on_boxes_data),  # scores set after the boxes
                (boxes.events.edge_color, self._dim_rejected),  # the dock recolours by score
                (boxes.selected_data.events.items_changed, self._follow_selection)]  # fmt: skip

    def _connect_boxes(self, boxes: Any) -> None:
        """Follow a new boxes layer (and let go of the last one)."""
        self._disconnect_boxes()
        for emitter, slot in self._box_links(boxes):
            self.watch.connect(emitter, slot)
        self._bind_review_keys(boxes)

    def _disconnect_boxes(self) -> None:
        self._undim()
        if self.boxes_layer is not None:
            for emitter, slot in self._box_links(self.boxes_layer):
                try:
                    emitter.disconnect(slot)
                except (TypeError, ValueError, RuntimeError):
                    pass

    def _on_boxes_data(self, event: Any = None) -> None:
        """Reload after the boxes or their scores changed, once: new boxes fire a data event (their scores not yet
        set), then a features event for the resized table, then one for the scores set after them; the reload
        waits for the event loop (or the next read of ``findings``) and reads them all at once."""
        if getattr(event, "action", "changed") in ("added", "removed", "changed") and self.boxes_layer is not None:
            self._reload_timer.start()

    def _reload(self) -> None:
        """The pending reload: read the boxes layer again unless napari only re-announced what was read."""
        self._reload_timer.stop()
        if self.boxes_layer is not None and _stamp(self.boxes_layer) != self._read_stamp:
            self.load(self.boxes_layer, self.image_layer)

    @staticmethod
    def _key(f: Finding) -> tuple:
        return (f.slice, *np.round(np.asarray(f.corners, float).reshape(-1), 1))

    def _read_findings(self, boxes: Any, image: Any) -> tuple[list[Finding], list[int]]:
        """The layer's boxes as findings, and each one's shape in the layer (the current one is marked there)."""
        feats = boxes.features
        scores = feats["score"].to_numpy(float) if "score" in feats else None
        out, data, to_pixels = [], boxes.data, pixel_map(boxes, image)
        shapes: list[int] = []
        for i, kind in enumerate(boxes.shape_type):
            if kind in ("line", "path"):
                continue
            z, corners = corners_in_image(boxes, i, image, data, to_pixels)
            score = None if scores is None or not np.isfinite(scores[i]) else float(scores[i])  # NaN: drawn by hand
            out.append(Finding(len(out), z, corners, score))
            shapes.append(i)
        return out, shapes  # measured by load, those the merge did not carry over

    def _recist_sizes(self, boxes: Any) -> int:
        """Long/short axes from the layer's measured diameters (``layer_data.RECIST_LONG``: DeepLesion's) for the
        boxes that carry them, instead of the box's sides (a 4.9 mm lesion showed as 11.9 mm); how many."""
        feats = getattr(boxes, "features", {})
        if boxes is None or RECIST_LONG not in feats or RECIST_SHORT not in feats:
            return 0
        longs, shorts = feats[RECIST_LONG].to_numpy(float), feats[RECIST_SHORT].to_numpy(float)
        n = 0
        for f in self.findings:
            i = self._shape_index.get(f.id)
            if i is not None and i < len(longs) and np.isfinite(longs[i]) and f.status != "edited":
                f.measures.update(long_mm=float(longs[i]), short_mm=float(shorts[i]))
                n += 1
        return n

    def _measure(self, findings: list[Finding]) -> None:
        image = self.image_layer
        if image is None:
            return
        hu = np.asarray(image.data, dtype=np.float32)
        hu = hu[None] if image.ndim == 2 else hu
        spacing = tuple(float(s) for s in image.scale)
        to_patient, offsets = index_to_patient(image)
        for f in findings:
            measure(f, hu, spacing, to_patient, offsets)

    def finding(self, fid: int) -> Finding | None:
        """The finding with id ``fid``."""
        return next((f for f in self.findings if f.id == fid), None)

    # ------------------------------------------------------------------------------------------------ table
    def _fill_table(self) -> None:
        current = self.current_id()
        t = self.table
        t.setSortingEnabled(False)
        t.setRowCount(len(self.findings))
        image = self.image_layer
        unit = "mm" if image is None or has_voxel_size(image) else "px"  # a CT layer, or an image given a scale
        placed = image is None or places_patient(image)
        t.setHorizontalHeaderLabels([_header(key, h, unit, placed) for key, h in COLUMNS])
        tips = {**HEADER_TIPS, "centre": CENTRE_TIPS[placed]}
        for c, (key, _) in enumerate(COLUMNS):
            if key in tips:
                t.horizontalHeaderItem(c).setToolTip(tips[key])
        ids = slice_columns(image.metadata or {}, n_slices(image.data)) if image else {}
        instances = ids.get("instance_number")  # a multi-frame source's frames are not instance numbers
        lesions = self.lesion_numbers()
        sizes = Counter(lesions.values())
        for r, f in enumerate(self.findings):
            for c, (key, _) in enumerate(COLUMNS):
                value, text = self._cell(f, key)
                if key == "lesion":
                    n = lesions[f.id]
                    value, text = n, f"{n} ({sizes[n]} sl.)" if sizes[n] > 1 else f"{n}"
                if key == "slice" and instances and 0 <= f.slice < len(instances) and instances[f.slice]:
                    text = f"{f.slice} ({instances[f.slice]})"
                item = SortItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value)
                if key == "status":  # a swatch of its boxes' colour: the text keeps the theme's (legible in both)
                    item.setData(Qt.ItemDataRole.DecorationRole, _color(STATUS_COLORS.get(f.status, "#c8c8c8")))
                t.setItem(r, c, item)
        t.setSortingEnabled(True)
        t.resizeColumnsToContents()
        if current is not None:
            self._select_row_of(current, jump=False)
        self._dim_rejected()

    def _dim_rejected(self, event: Any = None) -> None:
        """The table's rejections on the detector's layer: those boxes faint grey, without their score."""
        layer, image = self.boxes_layer, self.image_layer
        if self._dimming or layer is None or image is None or layer not in self.viewer.layers or not scored(layer):
            return
        rejected = {self._origin.get(f.id) for f in self.findings if f.status == "rejected"} - {None}
        dimmed, data = np.zeros(layer.nshapes, bool), layer.data if rejected else []
        to_pixels = pixel_map(layer, image) if rejected else None
        for i, kind in enumerate(layer.shape_type if rejected else ()):  # nothing rejected: nothing to place
            if kind not in ("line", "path"):
                z, corners = corners_in_image(layer, i, image, data, to_pixels)
                dimmed[i] = self._key(Finding(-1, z, corners)) in rejected
        self._dim(layer, dimmed)

    def _undim(self) -> None:
        """The boxes layer as the Denoise dock drew it: the navigator stops reviewing it."""
        layer = self.boxes_layer
        if self._mark is not None and self._mark[0] is layer:
            self._set_mark(None)
        if layer is not None and layer in self.viewer.layers and scored(layer):
            self._dim(layer, np.zeros(layer.nshapes, bool))

    def _dim(self, layer: Any, dimmed: np.ndarray) -> None:
        self._dimming = True  # dim_boxes recolours the layer: its edge_color event comes back here
        try:
            dim_boxes(layer, dimmed)
            if self._mark is not None and self._mark[0] is layer:  # the score colours again: marked again
                self._mark = remark(self._mark)
        finally:
            self._dimming = False

    @staticmethod
    def _cell(f: Finding, key: str) -> tuple[Any, str]:
        m = f.measures
        if key == "lesion":
            return 0, ""  # filled from the groups of every finding (_fill_table)
        if key == "centre":
            zyx = (m.get("centre_z_mm", np.nan), m.get("centre_y_mm", np.nan), m.get("centre_x_mm", np.nan))
            return zyx[0], ", ".join(f"{v:.1f}" for v in zyx)
        if key in ("long_mm", "short_mm", "mean_hu"):
            v = m.get(key, np.nan)
            return v, "" if not np.isfinite(v) else f"{v:.1f}" if key != "mean_hu" else f"{v:.0f}"
        if key == "score":
            return (-1.0 if f.score is None else f.score), ("" if f.score is None else f"{f.score:.2f}")
        value = getattr(f, key)
        return value, str(value)

    def row_ids(self) -> list[int]:
        """Finding ids in the table's current (sorted) row order."""
        return [int(self.table.item(r, 0).data(Qt.ItemDataRole.UserRole)) for r in range(self.table.rowCount())]

    def current_id(self) -> int | None:
        """Id of the selected row's finding (None when no row is selected)."""
        row = self.table.currentRow()
        item = self.table.item(row, 0) if row >= 0 else None
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def _select_row_of(self, fid: int, jump: bool = True) -> None:
        ids = self.row_ids()
        if fid in ids:
            self.table.blockSignals(not jump)
            self.table.setCurrentCell(ids.index(fid), 0)
            self.table.blockSignals(False)

    def _on_current_changed(self, row: int, *_args: Any) -> None:
        fid = self.current_id()
        if fid is not None:
            self.jump(fid)

    def select(self, fid: int) -> None:
        """Select the row of finding ``fid`` and jump to its box."""
        self._select_row_of(fid)
        self.jump(fid)

    # ------------------------------------------------------------------------------------------------ review
    def jump(self, fid: int) -> None:
        """Show the slice of finding ``fid``, centre the view on its box and zoom to it (``_framing``)."""
        f, image = self.finding(fid), self.image_layer
        if f is None or image is None:
            return
        self._set_mark(f)
        to_world = index_to_world(image)
        centre = centre_world(f, to_world)  # where napari shows it (the table's centre is the patient's)
        world = centre[3 - image.ndim :]  # the image's own world axes, on the viewer's last ones
        dims, offset = self.viewer.dims, self.viewer.dims.ndim - image.ndim
        for axis in dims.not_displayed:  # axial, coronal or sagittal: every slider moves to the box
            if axis >= offset:
                dims.set_point(axis, float(world[axis - offset]))
        shown = [float(world[d - offset]) if d >= offset else float(dims.point[d]) for d in dims.displayed]
        camera(self.viewer).center = tuple(shown)
        zoom = finding_zoom(self.viewer, image, _corners_world(f, to_world)[:, 3 - image.ndim :], to_world)
        if zoom is not None:
            camera(self.viewer).zoom = zoom
        boxes = self.boxes_layer if self.boxes_layer is not None else self.reviewed_layer
        if grid(self.viewer).enabled and boxes is not None and not boxes.visible:  # Compare shows the images alone
            self._say(f"finding {f.id} is at the centre of both panels; side by side shows the images alone, so its "
                      "box is hidden: F flips the two in place with the boxes drawn")  # fmt: skip

    def _set_mark(self, f: Finding | None) -> None:
        """Mark ``f``'s box (None: no box), the last one back to its colour."""
        self._dimming = True  # recolours: the boxes layer's edge_color event comes back here
        try:
            unmark(self._mark, self.viewer.layers)
            self._mark = self._mark_finding(f) if f is not None else None
        finally:
            self._dimming = False

    def _mark_again(self) -> None:
        """The current finding's box marked again (its layer was recoloured: the reviewed layer's statuses)."""
        fid = self.current_id()
        self._set_mark(self.finding(fid) if fid is not None else None)

    def _mark_finding(self, f: Finding) -> Any:
        """Mark the outline of ``f``'s box: on the reviewed layer when kept, else on the detections."""
        reviewed = self.reviewed_layer
        if f.kept and reviewed is not None and "finding" in reviewed.features:
            ids = list(reviewed.features["finding"])
            return mark_current(reviewed, ids.index(f.id)) if f.id in ids else None
        index = self._shape_index.get(f.id)
        return mark_current(self.boxes_layer, index) if index is not None and self.boxes_layer is not None else None

    def _follow_selection(self, _event: Any = None) -> None:
        """A box the reader picked on the canvas (napari's select tool) becomes the current row, so that A, R and E
        decide on the box picked, not on the row selected before."""
        if self._dimming:  # the mark's recolouring clears and restores the selection
            return
        for layer in (self.boxes_layer, self.reviewed_layer):
            if layer is None or layer != self.viewer.layers.selection.active or len(layer.selected_data) != 1:
                continue
            fid = self._finding_of_shape(layer, next(iter(layer.selected_data)))
            if fid is not None and fid != self.current_id():
                self._select_row_of(fid, jump=False)  # the box is in view: the camera stays
                self._set_mark(self.finding(fid))
            return

    def _finding_of_shape(self, layer: Any, index: int) -> int | None:
        """The finding whose box is shape ``index`` of ``layer`` (the boxes or the reviewed layer), else None."""
        if layer == self.boxes_layer:
            return next((fid for fid, i in self._shape_index.items() if i == index), None)
        ids = list(layer.features["finding"]) if "finding" in layer.features else []
        return int(ids[index]) if index < len(ids) and self.finding(int(ids[index])) is not None else None

    def _target(self, fid: int | None) -> Finding | None:
        """The finding to decide on, or None after saying why (no row selected, or no image to place it on)."""
        if self.image_layer is None and self.findings:
            self._say("the image of these boxes was removed: pick it in 'image' before deciding")
            return None
        f = self.finding(fid if fid is not None else (self.current_id() if self.current_id() is not None else -1))
        if f is None:
            self._say("select a row first")
        return f

    def accept(self, fid: int | None = None) -> None:
        """Keep finding ``fid`` (default: the selected row) on the reviewed layer; move on to the next pending."""
        f = self._target(fid)
        if f is not None:
            f.status = f.status if f.status in KEPT else "accepted"
            self._alone.discard(f.id)
            self._kept_alone.add(f.id)
            self._decided(f"finding {f.id} {f.status}")

    def reject(self, fid: int | None = None) -> None:
        """Dismiss finding ``fid`` (default: the selected row); its box leaves the reviewed layer."""
        f = self._target(fid)
        if f is not None:
            f.status = "rejected"
            self._alone.add(f.id)
            self._kept_alone.discard(f.id)
            self._decided(f"finding {f.id} {f.status}")

    def edit(self, fid: int | None = None) -> None:
        """Keep finding ``fid`` and select its box on the reviewed layer, ready to drag its corners."""
        f = self._target(fid)
        if f is None:
            return
        if f.status not in KEPT:
            f.status = "accepted"
        self._alone.discard(f.id)
        self._kept_alone.add(f.id)
        self._write_reviewed()
        layer = self.reviewed_layer
        index = list(layer.features["finding"]).index(f.id)
        self.viewer.layers.selection.active = layer
        layer.mode = "select"
        layer.selected_data = {index}
        self._fill_table()
        self._say(f"finding {f.id}: drag its corners on {layer.name}; the table follows")
        self.review_changed.emit()

    def accept_lesion(self, fid: int | None = None) -> None:
        """Keep every finding of the lesion of finding ``fid`` (default: the selected row): its overlapping boxes on
        neighbouring slices (``findings.lesion_groups``), except those rejected one by one (Reject) before (a wrong
        box on one slice stays rejected; the row acted on is kept; a lesion rejected as a whole comes back whole);
        move on to the next pending."""
        self._decide_lesion(fid, keep=True)

    def reject_lesion(self, fid: int | None = None) -> None:
        """Dismiss every finding of the lesion of finding ``fid`` (default: the selected row), except those kept one
        by one before (Accept, Edit, a box moved or drawn by hand: the reader's own decision stays; the row acted on
        is rejected)."""
        self._decide_lesion(fid, keep=False)

    def lesion_numbers(self) -> dict[int, int]:
        """Finding id -> lesion number, as shown: each lesion keeps its number across edits (``lesion_groups``
        with the numbers shown before)."""
        self._lesions = lesion_groups(self.findings, previous=self._lesions)
        return self._lesions

    def _decide_lesion(self, fid: int | None, keep: bool) -> None:
        f = self._target(fid)
        if f is None:
            return
        lesions = self.lesion_numbers()
        members = [g for g in self.findings if lesions[g.id] == lesions[f.id]]
        held = [g for g in members if g is not f and (self._rejected_by_hand(g) if keep else self._kept_by_hand(g))]
        for g in members:
            if g in held:
                continue
            if keep:
                g.status = g.status if g.status in KEPT else self._kept_status(g)
                self._alone.discard(g.id)
            else:
                g.status = "rejected"
                self._kept_alone.discard(g.id)
        n, done, other = len(members) - len(held), *(("kept", "rejected") if keep else ("rejected", "kept"))
        what = f"lesion {lesions[f.id]}: {n} finding{'s' if n > 1 else ''} {done}"
        if held:
            slices = ", ".join(str(g.slice) for g in held)
            what += f" ({len(held)} {other} before stay{'s' if len(held) == 1 else ''} {other}: slice {slices})"
        self._decided(what)

    def _rejected_by_hand(self, g: Finding) -> bool:
        return g.status == "rejected" and g.id in self._alone

    def _kept_by_hand(self, g: Finding) -> bool:
        """Kept by the reader's own hand: accepted or edited one by one, or a box moved or drawn on the layer."""
        return g.status in ("edited", "added") or (g.status == "accepted" and g.id in self._kept_alone)

    def _kept_status(self, g: Finding) -> str:
        """The status a finding kept again takes: "edited" when its box is no longer its detection's."""
        moved = g.id in self._origin and self._key(g) != self._origin[g.id]
        return "edited" if moved else "accepted"

    def _decided(self, what: str) -> None:
        self._write_reviewed()
        self._fill_table()
        self.review_changed.emit()
        kept = sum(x.kept for x in self.findings)
        pending = sum(x.status == "pending" for x in self.findings)
        self._say(f"{what}; {kept} kept, {pending} pending")
        self.next(pending_only=True)

    def next(self, pending_only: bool = False) -> None:
        """Select the next row (the next pending one with ``pending_only``)."""
        self._step(+1, pending_only)

    def previous(self) -> None:
        """Select the previous row."""
        self._step(-1, False)

    def _step(self, direction: int, pending_only: bool) -> None:
        ids = self.row_ids()
        if not ids:
            return
        cur = self.current_id()
        start = ids.index(cur) if cur in ids else -1
        for k in range(1, len(ids) + 1):
            fid = ids[(start + direction * k) % len(ids)]
            if not pending_only or self.finding(fid).status == "pending":
                self.select(fid)
                return

    # ------------------------------------------------------------------------------------------------ export
    def export(self, path: str | Path) -> Path | None:
        """Write the review: ``.dcm`` a DICOM Comprehensive SR of the kept boxes, ``.json``/``.csv`` every finding
        with its status. Never overwrites; returns the file, or None after showing why nothing was written."""
        path = Path(path)
        if self.findings and self.image_layer is None:
            self._say("the image of these boxes was removed: pick it in 'image' to export")
            return None
        if not self.findings:
            self._say("nothing to export: load a layer of boxes first")
            return None
        try:
            check_suffix(path, [".dcm", ".csv", ".json"], "DICOM SR, CSV or JSON")
            lesions = self.lesion_numbers()
            out = (write_review_sr(path, self.findings, self.image_layer, lesions) if path.suffix.lower() == ".dcm"
                   else write_review_table(path, self.findings, self.image_layer, self.boxes_layer, lesions))
        except (OSError, ValueError) as exc:
            self._say(f"export failed: {exc}")
            return None
        self._say(f"wrote {out}")
        return out

    def _export_dialog(self) -> None:
        path = save_path(self, "Export the review", "DICOM SR (*.dcm);;CSV (*.csv);;JSON (*.json)")
        if path:
            self.export(path)

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _corners_world(f: Finding, to_world: np.ndarray) -> np.ndarray:
    """The corners of ``f``'s box in world (z, y, x) through a 4x4 (slice, y, x, 1) -> world matrix."""
    corners = np.asarray(f.corners, dtype=float).reshape(-1, 2)
    index = np.column_stack([np.full(len(corners), float(f.slice)), corners, np.ones(len(corners))])
    return (index @ np.asarray(to_world, dtype=float).T)[:, :3]


def _color(hex_color: str) -> Any:
    from qtpy.QtGui import QColor

    return QColor(hex_color)


def _layer_keys(boxes: Any, findings: list[Finding], shapes: list[int]) -> dict[int, str]:
    """The Denoise dock's detection key of each finding's box (by ``id()``; its lesions layer's ``detection``
    feature), {} for other layers."""
    feats = getattr(boxes, "features", None)
    if feats is None or "detection" not in feats:
        return {}
    column = [str(v) for v in feats["detection"]]
    return {id(f): column[i] for f, i in zip(findings, shapes) if i < len(column) and column[i]}
