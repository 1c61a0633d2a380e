"""Lesion navigator dock: the detector's boxes as a table a reader steps through, accepts, rejects or edits.

The table lists one row per box (slice, centre in mm, long and short axis in mm, mean HU, score, status) and sorts
on any column; selecting a row moves the viewer to the box's slice and centres it. Accept (A) and Reject (R) act on
the selected row and move on to the next pending one; Edit (E) keeps the row (N / P step without deciding). Kept
boxes live on a layer of their own, "<image> reviewed" (role ``reviewed``): Edit selects the box there so its
corners can be dragged, and a box drawn on that layer by hand joins the table as "added". The reviewed boxes export
to CSV/JSON (every row with its status) and to a DICOM Comprehensive SR (kept boxes, referencing the source slices
when the image came from DICOM). Sizes and HU come from ``findings`` (plain numpy); the dock lives in the bottom area.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..findings import KEPT, Finding, centre_world, lesion_groups, measure, write_findings
from ..io.boxes_io import slice_columns
from ..io.volume import n_slices, per_slice
from ..layer_data import PIXEL_CENTRE_SHIFT
from ..metrics.froc import box_iou_np
from ._box_marks import dim_boxes, scored
from ._docking import DockHome
from ._geometry import pixel_map
from ._layer_watch import LayerWatch, renamed_to
from ._roles import (
    CALIPERS,
    DETECTIONS,
    REVIEWED,
    ROLE,
    derived_name,
    grayscale_images,
    has_voxel_size,
    is_ct_image,
    is_shapes,
    lidnet_info,
    role,
    source_key,
)
from ._viewer import camera
from .reading_room import ReadingRoom

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
STATUS_COLORS = {"pending": "#c8c8c8", "accepted": "#3cb44b", "edited": "#42d4f4", "added": "#f58231",
                 "rejected": "#e05050"}  # fmt: skip
REVIEWED_COLOR = "#3cb44b"
#: features of a box drawn by hand on the reviewed layer (no finding yet)
DRAWN_DEFAULTS = {"finding": -1, "status": "added", "score": np.nan}
NONE = "(none)"


class SortItem(QTableWidgetItem):
    """A table cell that sorts on its raw value (numbers as numbers), not on its text."""

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        try:
            return float(a) < float(b)
        except (TypeError, ValueError):
            return str(a) < str(b)


#: (slice, y, x, 1) pixel-edge coordinate -> napari data coordinate (pixel centres at integers)
_EDGE_TO_CENTRE = np.eye(4)
_EDGE_TO_CENTRE[1:3, 3] = PIXEL_CENTRE_SHIFT


def index_to_world(layer: Any) -> np.ndarray:
    """4x4 matrix taking (slice, y, x, 1) pixel-edge coordinates of ``layer`` (pixel k spans [k, k+1) in y and x;
    2D: the slice is ignored) to world (z, y, x) mm, through napari's own data -> world transform."""
    nd = layer.ndim
    origin = np.asarray(layer.data_to_world(np.zeros(nd)), dtype=float)
    cols = [np.asarray(layer.data_to_world(np.eye(nd)[i]), dtype=float) - origin for i in range(nd)]
    mat = np.eye(4)
    for k, col in enumerate(cols):
        mat[3 - nd : 3, 3 - nd + k] = col[-nd:]
    mat[3 - nd : 3, 3] = origin[-nd:]
    if nd == 2:
        mat[0, 0] = 0.0
    return mat @ _EDGE_TO_CENTRE


_ZYX_FROM_XYZ = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)


def index_to_patient(layer: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(4x4 matrix taking (slice, y, x, 1) pixel-edge coordinates to patient LPS (z, y, x) mm, per-slice offsets
    or None) from the DICOM geometry the reader left in the layer's metadata (``affine_lps``: any orientation;
    ``slice_ipp``: each slice's own position, gaps kept); napari's world coordinates for layers without it."""
    aff = layer.metadata.get("affine_lps")
    if aff is None or np.shape(aff) != (4, 4):
        return index_to_world(layer), None
    aff = np.asarray(aff, dtype=float)
    ipp = per_slice(layer.metadata, "slice_ipp", n_slices(layer.data))
    offsets = None if ipp is None else (np.asarray(ipp, dtype=float).reshape(-1, 3) - aff[:3, 3])[:, ::-1]
    return _ZYX_FROM_XYZ @ aff @ _EDGE_TO_CENTRE, offsets


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    return float(box_iou_np(np.asarray([a], float), np.asarray([b], float))[0, 0])


def corners_in_image(
    shapes: Any, index: int, image: Any, data: list | None = None, to_pixels: Callable | None = None,
) -> tuple[int, np.ndarray]:  # fmt: skip
    """(slice, (4, 2) row/col pixel-edge corners) of shape ``index`` of ``shapes`` in ``image``'s pixels (through
    world coordinates, then from napari's pixel-centre coordinates to pixel edges as ``layer_data`` does). ``data``
    and ``to_pixels`` (``pixel_map``): ``shapes.data`` and the map, made once by a caller looping over every shape
    (napari rebuilds that list at each access)."""
    verts = np.asarray((shapes.data if data is None else data)[index], dtype=float)
    pix = (to_pixels or pixel_map(shapes, image))(verts)
    z = int(np.rint(pix[:, 0].mean())) if image.ndim == 3 else 0
    return z, pix[:4, -2:] - PIXEL_CENTRE_SHIFT


def _stamp(shapes: Any) -> bytes:
    """A digest of a Shapes layer's vertices, shape types and scores: equal when nothing a review reads changed."""
    digest = hashlib.blake2b(digest_size=16)
    for verts in shapes.data:
        digest.update(np.ascontiguousarray(verts, dtype=np.float64).tobytes())
    digest.update("|".join(shapes.shape_type).encode())
    if "score" in shapes.features:
        digest.update(shapes.features["score"].to_numpy(np.float64).tobytes())
    return digest.digest()


def _over(entry: list, findings: list[Finding]) -> Finding | None:
    """The finding over a stored box ``[slice, x1, y1, x2, y2]`` (same slice, IoU >= 0.5, the best), or None."""
    z, *bounds = entry
    best = max((f for f in findings if f.slice == int(z)), key=lambda f: box_iou(f.bounds, bounds), default=None)
    return best if best is not None and box_iou(best.bounds, bounds) >= 0.5 else None


def _press(func: Any) -> Any:
    """A key binding (napari passes the viewer or layer) that calls ``func()``; one object per key, so closing the
    dock unbinds exactly it."""

    def press(_target: Any) -> None:
        func()

    press.__name__ = f"lidnet_review_{func.__name__}"
    return press


class LesionNavigatorWidget(QWidget):
    """Review detections: a sortable table, jump to a box, accept / reject / edit, reviewed layer and exports.

    Public methods take plain values (``load``, ``select``, ``accept``, ``reject``, ``edit``, ``export``);
    ``review_changed`` is emitted after every change of a finding's status or box."""

    review_changed = Signal()

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        ReadingRoom.install(napari_viewer, self)
        self._findings: list[Finding] = []
        self._reload_timer = QTimer(self)  # boxes, then their scores: one read once napari has announced both
        self._reload_timer.setSingleShot(True)
        self._reload_timer.setInterval(0)
        self._reload_timer.timeout.connect(self._reload)
        self.boxes_layer: Any = None
        self.image_layer: Any = None
        self.reviewed_layer: Any = None
        self._syncing = False
        self._dimming = False
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._origin: dict[int, tuple] = {}  # finding id -> its detection's key (slice, corners)
        self._parked: dict[tuple, Finding] = {}  # rejected findings whose detection left the layer, by key
        self._read_stamp: bytes = b""  # the boxes and scores last read (_stamp)
        self.watch = LayerWatch(napari_viewer, self._on_renamed)
        self._create_ui()
        self._create_shortcuts()
        self._watch_viewer()
        self.refresh_layers()
        if self.boxes_combo.currentText() != NONE and role(self._layer(self.boxes_combo.currentText())) == DETECTIONS:
            self.load()  # opened after a detection run: its boxes are what the picker shows, ready to review
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
                 ("previous", "Previous (P)"), ("next", "Next (N)"))  # fmt: skip
        for k, (key, text) in enumerate(names):
            self.buttons[key] = button = QPushButton(text)
            grid.addWidget(button, k // 2, k % 2)
        self.buttons["export"].setToolTip("CSV or JSON (every row with its status) or DICOM SR (.dcm: kept boxes)")
        for key in ("accept_lesion", "reject_lesion"):
            self.buttons[key].setToolTip("every box of the selected row's lesion: its overlapping boxes on "
                                         "neighbouring slices (the 'lesion' column)")  # fmt: skip
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("boxes", self.boxes_combo)
        form.addRow("image", self.image_combo)
        side = QVBoxLayout()
        side.addLayout(form)
        side.addLayout(grid)
        side.addWidget(self.status)
        side.addStretch(1)
        panel = QWidget()
        panel.setLayout(side)
        panel.setMaximumWidth(340)
        layout = QHBoxLayout(self)
        layout.addWidget(panel)
        layout.addWidget(self._create_table(), stretch=1)

    def _create_table(self) -> QTableWidget:
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels([h for _, h in COLUMNS])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setSortingEnabled(True)
        self.table.sortItems(0, Qt.SortOrder.AscendingOrder)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.currentCellChanged.connect(self._on_current_changed)
        return self.table

    def _create_shortcuts(self) -> None:
        """Buttons and their keys: while the navigator has the focus, and on the image (see ``_bind_review_keys``)."""
        actions = {"accept": (self.accept, "A"), "reject": (self.reject, "R"), "edit": (self.edit, "E"),
                   "accept_lesion": (self.accept_lesion, "Shift+A"), "reject_lesion": (self.reject_lesion, "Shift+R"),
                   "previous": (self.previous, "P"), "next": (self.next, "N"),
                   "export": (self._export_dialog, None)}  # fmt: skip
        self._review_keys = {}
        for key, (func, shortcut) in actions.items():
            self.buttons[key].clicked.connect(lambda _=False, f=func: f())
            if shortcut:
                sc = QShortcut(QKeySequence(shortcut), self)
                sc.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
                sc.activated.connect(func)
                self._review_keys[shortcut.replace("+", "-") if "+" in shortcut else shortcut.lower()] = _press(func)
        self._bind_review_keys(self.viewer)

    def _bind_review_keys(self, target: Any) -> None:
        """The review keys on the canvas too: on the viewer (any layer without its own binding of the key) and on
        the lesions and reviewed layers, where they replace napari's shape keys (R would start drawing a rectangle
        and the next click add a box; the toolbar still draws)."""
        for key, press in self._review_keys.items():
            self.watch.bind_key(target, key, press)

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
        if layer == self.boxes_layer:  # the detections are gone; the kept boxes stay (on the reviewed layer)
            self.boxes_layer = None
            self.findings = [f for f in self.findings if f.kept]
            self._fill_table()
            kept = f"; the {len(self.findings)} accepted stay listed" if self.findings else ""
            self._say(f"'{layer.name}' was removed: nothing left to review{kept}; pick another boxes layer")
        self.refresh_layers()

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
        if not same:
            self._origin, self._parked = {}, {}
        if boxes is not None and boxes != self.boxes_layer:
            self._disconnect_boxes()
            self.watch.connect(boxes.events.data, self._on_boxes_data)
            self.watch.connect(boxes.events.features, self._on_boxes_data)  # scores set after the boxes
            self.watch.connect(boxes.events.edge_color, self._dim_rejected)  # the dock recolours by score
            self._bind_review_keys(boxes)
        self.boxes_layer, self.image_layer = boxes, image
        for combo, layer in ((self.boxes_combo, boxes), (self.image_combo, image)):
            combo.blockSignals(True)
            combo.setCurrentText(layer.name if layer is not None else NONE)
            combo.blockSignals(False)
        self._read_stamp = _stamp(boxes) if boxes is not None else b""
        new = self._read_findings(boxes, image) if boxes is not None and image is not None else []
        self.findings = self._merge(new, self.findings if same else [])
        self._measure([f for f in self.findings if not f.measures])  # the same detection keeps its measures
        self.reviewed_layer = self._find_reviewed()
        if not same:
            self._adopt_reviewed()
        else:  # detections back over the threshold: a kept box without one takes it, a rejected one is rejected
            self._absorb_kept()
            self._restore_rejected(self._stored("rejected"))
        self._sync_from_reviewed()
        self._fill_table()
        self._say(f"{len(self.findings)} boxes to review on {image.name}" if image is not None and boxes is not None
                  else "choose a layer of boxes (run the detector) and its image")  # fmt: skip
        return len(self.findings)

    def _merge(self, new: list[Finding], old: list[Finding]) -> list[Finding]:
        """New findings take the id, status and box of the old finding from the same detection; kept findings
        whose detection left stay; the others are parked, so a detection that comes back keeps its id (exports cite
        it) and is still rejected if it was."""
        by_origin = {**self._parked, **{self._origin[f.id]: f for f in old if f.id in self._origin}}
        next_id = max((f.id for f in [*old, *self._parked.values()]), default=-1) + 1
        origin: dict[int, tuple] = {}
        for f in new:
            key = self._key(f)
            prev = by_origin.pop(key, None)
            if prev is not None:  # the same detection: the review (and any edit of the box) carries over
                f.id, f.status, f.corners, f.slice = prev.id, prev.status, prev.corners, prev.slice
                f.measures = prev.measures
            else:
                f.id, next_id = next_id, next_id + 1
            origin[f.id] = key
        carried = [f for f in old if f.kept and f.id not in origin]  # kept, and gone from the layer (or drawn)
        self._parked = {k: f for k, f in by_origin.items() if not f.kept}  # rejected or pending: same id on return
        self._origin = origin | {f.id: self._origin[f.id] for f in carried if f.id in self._origin}
        return sorted({f.id: f for f in [*new, *carried]}.values(), key=lambda f: f.id)

    def _disconnect_boxes(self) -> None:
        self._undim()
        if self.boxes_layer is not None:
            for emitter, slot in ((self.boxes_layer.events.data, self._on_boxes_data),
                                  (self.boxes_layer.events.features, self._on_boxes_data),
                                  (self.boxes_layer.events.edge_color, self._dim_rejected)):  # fmt: skip
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

    def _read_findings(self, boxes: Any, image: Any) -> list[Finding]:
        feats = boxes.features
        scores = feats["score"].to_numpy(float) if "score" in feats else None
        out, data, to_pixels = [], boxes.data, pixel_map(boxes, image)
        for i, kind in enumerate(boxes.shape_type):
            if kind in ("line", "path"):
                continue
            z, corners = corners_in_image(boxes, i, image, data, to_pixels)
            out.append(Finding(len(out), z, corners, None if scores is None else float(scores[i])))
        return out  # measured by load, those the merge did not carry over

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
        t.setHorizontalHeaderLabels([h.replace("(mm)", f"({unit})") for _, h in COLUMNS])
        ids = slice_columns(image.metadata or {}, n_slices(image.data)) if image else {}
        instances = ids.get("instance_number")  # a multi-frame source's frames are not instance numbers
        lesions = lesion_groups(self.findings)
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
                if key == "status":
                    item.setForeground(_color(STATUS_COLORS.get(f.status, "#c8c8c8")))
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
        if layer is not None and layer in self.viewer.layers and scored(layer):
            self._dim(layer, np.zeros(layer.nshapes, bool))

    def _dim(self, layer: Any, dimmed: np.ndarray) -> None:
        self._dimming = True  # dim_boxes recolours the layer: its edge_color event comes back here
        try:
            dim_boxes(layer, dimmed)
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
        """Show the slice of finding ``fid`` and centre the view on its box."""
        f, image = self.finding(fid), self.image_layer
        if f is None or image is None:
            return
        centre = centre_world(f, index_to_world(image))  # where napari shows it (the table's centre is the patient's)
        world = centre[3 - image.ndim :]  # the image's own world axes, on the viewer's last ones
        dims, offset = self.viewer.dims, self.viewer.dims.ndim - image.ndim
        for axis in dims.not_displayed:  # axial, coronal or sagittal: every slider moves to the box
            if axis >= offset:
                dims.set_point(axis, float(world[axis - offset]))
        shown = [float(world[d - offset]) if d >= offset else float(dims.point[d]) for d in dims.displayed]
        camera(self.viewer).center = tuple(shown)

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
            self._decided(f"finding {f.id} {f.status}")

    def reject(self, fid: int | None = None) -> None:
        """Dismiss finding ``fid`` (default: the selected row); its box leaves the reviewed layer."""
        f = self._target(fid)
        if f is not None:
            f.status = "rejected"
            self._decided(f"finding {f.id} {f.status}")

    def edit(self, fid: int | None = None) -> None:
        """Keep finding ``fid`` and select its box on the reviewed layer, ready to drag its corners."""
        f = self._target(fid)
        if f is None:
            return
        if f.status not in KEPT:
            f.status = "accepted"
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
        neighbouring slices (``findings.lesion_groups``); move on to the next pending."""
        self._decide_lesion(fid, keep=True)

    def reject_lesion(self, fid: int | None = None) -> None:
        """Dismiss every finding of the lesion of finding ``fid`` (default: the selected row)."""
        self._decide_lesion(fid, keep=False)

    def _decide_lesion(self, fid: int | None, keep: bool) -> None:
        f = self._target(fid)
        if f is None:
            return
        lesions = lesion_groups(self.findings)
        members = [g for g in self.findings if lesions[g.id] == lesions[f.id]]
        for g in members:
            g.status = (g.status if g.status in KEPT else "accepted") if keep else "rejected"
        what = "kept" if keep else "rejected"
        self._decided(f"lesion {lesions[f.id]}: {len(members)} finding{'s' if len(members) > 1 else ''} {what}")

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

    # -------------------------------------------------------------------------------------- reviewed layer
    def _find_reviewed(self) -> Any | None:
        """The image's reviewed layer: the one that records the image's fingerprint (whatever either is called
        now), else one named after the image (made before fingerprints)."""
        if self.image_layer is None:
            return None
        key = source_key(self.image_layer)
        reviewed = [ly for ly in self.viewer.layers if role(ly) == REVIEWED]
        mine = [ly for ly in reviewed if lidnet_info(ly).get("source_key") == key]
        name = derived_name(self.image_layer.name, "reviewed")
        # made before fingerprints; one with another image's fingerprint is that image's
        unmarked = [ly for ly in reviewed if ly.name == name and not lidnet_info(ly).get("source_key")]
        layer = (mine or unmarked or [None])[0]
        if layer is not None:
            self._connect_reviewed(layer)
        return layer

    def _connect_reviewed(self, layer: Any) -> None:
        if layer not in self._watched:
            self.watch.connect(layer.events.data, self._on_reviewed_data)
            self._bind_review_keys(layer)
            self._watched.add(layer)

    def _new_reviewed(self) -> Any:
        image = self.image_layer
        layer = self.viewer.add_shapes(
            name=derived_name(image.name, "reviewed"),
            ndim=image.ndim,
            scale=image.scale,
            translate=image.translate,
            rotate=image.rotate,
            shear=image.shear,
            affine=image.affine.affine_matrix,
            edge_width=2,
            face_color="transparent",
            edge_color=STATUS_COLORS["added"],
            features={"finding": np.zeros(0, int), "status": np.zeros(0, str), "score": np.zeros(0, float)},
            feature_defaults=DRAWN_DEFAULTS,
            text={"string": "{status}", "anchor": "lower_left", "size": 9, "color": REVIEWED_COLOR},
            metadata={ROLE: REVIEWED, "lidnet": {"source_layer": image.name, "source_key": source_key(image)}},
        )
        self._connect_reviewed(layer)
        return layer

    def _vertices(self, f: Finding) -> np.ndarray:
        """Napari data vertices of a finding on the reviewed layer (placed like its image)."""
        c = np.asarray(f.corners, dtype=float) + PIXEL_CENTRE_SHIFT
        if self.image_layer.ndim == 3:
            return np.column_stack([np.full(len(c), float(f.slice)), c])
        return c

    def _write_reviewed(self) -> None:
        """Rewrite the reviewed layer from the kept findings (made on the first decision); the rejected boxes go in
        its metadata, so a reload, another run or a reopened navigator still knows them."""
        kept = [f for f in self.findings if f.kept]
        if self.reviewed_layer is None or self.reviewed_layer not in self.viewer.layers:
            if not kept and not any(f.status == "rejected" for f in self.findings):
                return
            self.reviewed_layer = self._new_reviewed()
        layer = self.reviewed_layer
        self._store_decisions()
        self._syncing = True
        try:
            layer.data = [(self._vertices(f), "rectangle") for f in kept]
            layer.features = self._reviewed_table([f.id for f in kept])
            layer.feature_defaults = DRAWN_DEFAULTS  # a box drawn by hand is a new finding
            layer.edge_color = [STATUS_COLORS[f.status] for f in kept] if kept else STATUS_COLORS["added"]
            layer.current_edge_color = STATUS_COLORS["added"]
            layer.refresh_text()
        finally:
            self._syncing = False

    def _stored(self, key: str) -> list:
        """A list the reviewed layer's metadata keeps (``rejected``, ``kept``); empty when there is none."""
        return list(lidnet_info(self.reviewed_layer).get(key) or [])

    def _store_decisions(self) -> None:
        """The decisions in the reviewed layer's metadata, so a reload, another run or a reopened navigator still
        knows them. ``rejected``: each rejected finding's detection box (as detected, not as edited), plus the
        earlier rejections that no finding here stands for (another run, a threshold move, deleted detections); a
        finding over an earlier one decides for it. ``kept``: each kept box that came from a detection, as
        ``[slice, detection's x1, y1, x2, y2, kept box's x1, y1, x2, y2]``, so a box the reader shrank still finds
        its detection."""
        now = [[f.slice, *(self._kept_detection(f) or f.bounds)] for f in self.findings if f.status == "rejected"]
        here = [f for f in self.findings if f.score is not None]
        earlier = [r for r in self._stored("rejected") if _over(r, here) is None]
        kept = [(f, self._kept_detection(f)) for f in self.findings if f.kept]
        layer = self.reviewed_layer
        layer.metadata = {**(layer.metadata or {}), "lidnet": {
            **lidnet_info(layer), "rejected": earlier + now,
            "kept": [[f.slice, *d, *f.bounds] for f, d in kept if d is not None]}}  # fmt: skip

    def _kept_detection(self, f: Finding) -> tuple | None:
        """The detection box of a finding: its own detection's, else the one stored for it when it was carried over
        (kept through later edits), else the one stored for its box, else None."""
        if f.id in self._origin:
            return self._detected_bounds(f)
        return f.detection or self._stored_detection(f.slice, f.bounds)

    def _stored_detection(self, z: int, bounds: tuple) -> tuple | None:
        """The detection box stored for the kept box ``bounds`` on slice ``z`` (the same box), or None."""
        for entry in self._stored("kept"):
            if int(entry[0]) == int(z) and box_iou(tuple(entry[5:9]), tuple(bounds)) >= 0.99:
                return tuple(float(v) for v in entry[1:5])
        return None

    def _detected_bounds(self, f: Finding) -> tuple[float, float, float, float]:
        """The finding's box as its detection drew it (an edit moves the corners, not the detection)."""
        key = self._origin.get(f.id)
        if key is None:
            return f.bounds
        c = np.asarray(key[1:], float).reshape(-1, 2)
        return float(c[:, 1].min()), float(c[:, 0].min()), float(c[:, 1].max()), float(c[:, 0].max())

    def _on_reviewed_data(self, event: Any = None) -> None:
        if self._syncing or getattr(event, "action", "changed") not in ("added", "changed", "removed"):
            return
        self._sync_from_reviewed()
        if self.reviewed_layer is not None:
            self._store_decisions()  # a kept box deleted on the layer is a rejection too
        self._fill_table()
        self.review_changed.emit()

    def _sync_from_reviewed(self) -> None:
        """Read the reviewed layer back: moved corners -> 'edited', drawn boxes -> 'added', deleted -> 'rejected'."""
        layer, image = self.reviewed_layer, self.image_layer
        if layer is None or image is None or layer not in self.viewer.layers:
            return
        ids = [int(v) for v in layer.features["finding"]] if "finding" in layer.features else [-1] * layer.nshapes
        ids += [-1] * (layer.nshapes - len(ids))
        by_id = {f.id: f for f in self.findings}
        changed, seen, data, to_pixels = [], set(), layer.data, pixel_map(layer, image)
        for i in range(layer.nshapes):
            z, corners = corners_in_image(layer, i, image, data, to_pixels)
            f = by_id.get(ids[i])
            if f is None:
                taken = [*by_id, *(g.id for g in self._parked.values())]  # hidden detections keep their ids
                f = Finding(max(taken, default=-1) + 1, z, corners, None, "added")
                by_id[f.id] = f
                self.findings.append(f)
                ids[i] = f.id
            elif not np.allclose(f.corners, corners, atol=0.05) or f.slice != z:
                f.corners, f.slice = corners, z
                f.status = "edited" if f.status != "added" else "added"
            else:
                seen.add(f.id)
                continue
            seen.add(f.id)
            changed.append(f)
        for f in self.findings:
            if f.kept and f.id not in seen:
                f.status = "rejected"
        self.findings = [f for f in self.findings if not (f.status == "rejected" and f.score is None)]
        self._measure(changed)
        self._label_reviewed(ids)

    def _adopt_reviewed(self) -> None:
        """A new layer of boxes (another run) on an image already reviewed: each box of the reviewed layer stays
        what the reader made it (accepted, edited, added, with its score). A new detection over it (same slice, IoU
        >= 0.5) takes its status and box instead of coming back pending beside it; the others come along under new
        ids. The reviewed layer is relabelled with the ids of this run."""
        layer, image = self.reviewed_layer, self.image_layer
        if layer is None or image is None or layer not in self.viewer.layers:
            return
        if layer.nshapes:
            self._adopt_kept(layer, image)
        self._restore_rejected(self._stored("rejected"))  # after the kept boxes: a kept one wins an overlap

    def _adopt_kept(self, layer: Any, image: Any) -> None:
        """The reviewed layer's boxes into this run's findings (see ``_adopt_reviewed``)."""
        feats = layer.features
        statuses = list(feats["status"]) if "status" in feats else ["added"] * layer.nshapes
        scores = list(feats["score"]) if "score" in feats else [np.nan] * layer.nshapes
        next_id, ids, data = max((f.id for f in self.findings), default=-1) + 1, [], layer.data
        to_pixels = pixel_map(layer, image)
        for i in range(layer.nshapes):
            z, corners = corners_in_image(layer, i, image, data, to_pixels)
            kept = Finding(-1, z, corners, None if not np.isfinite(scores[i]) else float(scores[i]), str(statuses[i]))
            detection = self._stored_detection(z, kept.bounds)  # a shrunk box: its detection's
            match = _over([z, *(detection or kept.bounds)], [f for f in self.findings if f.status == "pending"])
            if match is not None:
                match.status, match.corners = kept.status, kept.corners
                ids.append(match.id)
            else:
                kept.id, next_id = next_id, next_id + 1
                self.findings.append(kept)
                ids.append(kept.id)
                kept.detection = detection
        self._measure([f for f in self.findings if f.id in ids])
        self._label_reviewed(ids)

    def _absorb_kept(self) -> None:
        """A kept box with no detection in this layer (carried over from another run) takes a pending detection
        over it (same slice, IoU >= 0.5) as its own, instead of the box showing twice."""
        for kept in [f for f in self.findings if f.kept and f.id not in self._origin]:
            where = [kept.slice, *(self._kept_detection(kept) or kept.bounds)]
            match = _over(where, [f for f in self.findings if f.status == "pending"])
            if match is not None and match.id in self._origin:
                self._origin[kept.id] = self._origin.pop(match.id)
                kept.detection = None
                self.findings.remove(match)

    def _restore_rejected(self, rejected: list) -> None:
        """Pending findings over a box the reader rejected before (same slice, IoU >= 0.5) are rejected again."""
        for entry in rejected:
            match = _over(entry, [f for f in self.findings if f.status == "pending"])
            if match is not None:
                match.status = "rejected"

    def _reviewed_table(self, ids: list[int]) -> Any:
        """The reviewed layer's features: each box's finding id, status and detector score (NaN when drawn)."""
        import pandas as pd

        by_id = {f.id: f for f in self.findings}
        found = [by_id.get(i) for i in ids]
        scores = [np.nan if f is None or f.score is None else f.score for f in found]
        return pd.DataFrame({
            "finding": np.asarray(ids, dtype=int),
            "status": np.asarray([f.status if f else "added" for f in found], dtype=object),
            "score": np.asarray(scores, dtype=float),
        })  # typed: an empty table must still take a status string

    def _label_reviewed(self, ids: list[int]) -> None:
        layer = self.reviewed_layer
        self._syncing = True
        try:
            layer.features = self._reviewed_table(ids)
            statuses = list(layer.features["status"])
            layer.feature_defaults = DRAWN_DEFAULTS
            if statuses:
                layer.edge_color = [STATUS_COLORS.get(st, STATUS_COLORS["added"]) for st in statuses]
            layer.refresh_text()
        finally:
            self._syncing = False

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
            out = self._write_sr(path) if path.suffix.lower() == ".dcm" else self._write_table(path)
        except (OSError, ValueError) as exc:
            self._say(f"export failed: {exc}")
            return None
        self._say(f"wrote {out}")
        return out

    def _write_table(self, path: Path) -> Path:
        image = self.image_layer
        unit = "mm" if has_voxel_size(image) else "px"  # as the table shows them
        info = {"image": image.name, "boxes": getattr(self.boxes_layer, "name", None),
                "spacing_mm": [float(s) for s in image.scale] if unit == "mm" else None,
                "units": f"pixels (boxes), {unit} (sizes; centre: patient LPS z, y, x for DICOM, else viewer world)",
                }  # fmt: skip
        ids = slice_columns(image.metadata or {}, n_slices(image.data))
        return write_findings(path, self.findings, info, ids, unit=unit)

    def _write_sr(self, path: Path) -> Path:
        from ..io.dicom_sr import SRRegion, instance_refs, write_sr

        image = self.image_layer
        meta = image.metadata or {}
        files = list(meta.get("files") or [])
        n = n_slices(image.data)
        frames = per_slice(meta, "frame_numbers", n)
        if len(files) == 1 and n > 1 and frames is None:  # one multi-frame file without functional groups
            files, frames = files * n, list(range(1, n + 1))
        uids, sop_class = per_slice(meta, "sop_instance_uids", n), str(meta.get("sop_class_uid") or "")
        if uids and all(uids) and sop_class:  # the reader's own record: no file read again
            refs = [(sop_class, uid) for uid in uids]
        else:
            unique = list(dict.fromkeys(files))  # a multi-frame file is read once
            found = dict(zip(unique, instance_refs(unique)))
            refs = [found[f] for f in files] if len(files) == n else []
        lesions = lesion_groups(self.findings)
        mm = 1.0 if has_voxel_size(image) else float("nan")  # sizes in pixels are not reported as mm
        regions = [
            SRRegion(f.slice, f.corners, f.measures["long_mm"] * mm, f.measures["short_mm"] * mm,
                     f.measures["mean_hu"], f.score, f.status, f"finding {f.id} (slice {f.slice})", lesions[f.id])
            for f in self.findings
            if f.kept
        ]  # fmt: skip
        if not regions:
            raise ValueError("no kept boxes: accept or draw at least one before writing a report")
        return write_sr(path, regions, refs, meta.get("source_tags") or {}, str(meta.get("series_uid") or ""),
                        f"LIDnet reviewed lesions: {image.name}", frames,
                        source=str(meta.get("series_uid") or meta.get("source") or ""))  # fmt: skip

    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export the review", "", "DICOM SR (*.dcm);;CSV (*.csv);;JSON (*.json)"
        )
        if path:
            self.export(path)

    def _say(self, text: str) -> None:
        self.status.setText(text)


def _color(hex_color: str) -> Any:
    from qtpy.QtGui import QColor

    return QColor(hex_color)
