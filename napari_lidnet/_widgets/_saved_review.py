"""The navigator's Open…: a saved review (its CSV/JSON: every box with its status; its DICOM SR: the kept ones) or a
box table (the Denoise dock's, ``lidnet detect``'s, File > Save's ``.boxes.csv``) back onto the picked image, as a
layer of boxes drawn as the Denoise dock draws its lesions, with the file's statuses, finding ids and lesion numbers.
Reading and placing the table on the image's slices is ``io.saved_boxes``.

``SavedReview`` is a part of ``navigator.LesionNavigatorWidget`` (which holds the viewer, the pickers, the findings
and the table these methods read and write), kept apart so each file holds one thing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..findings import KEPT, Finding
from ..io.saved_boxes import place_boxes, read_saved_boxes
from ..layer_data import ROLE, boxes_to_shapes
from ._box_style import box_style
from ._geometry import corner_vertices, placed_like
from ._hand_edits import DRAWN_BOX
from ._roles import DETECTIONS, lidnet_info, pixel_mm, reviewed_of, source_key


class SavedReview:
    """The Open… half of the navigator (see the module's docstring)."""

    def open_boxes(self, path: str | Path) -> int | None:
        """Open a saved review (the Export's CSV/JSON, or its SR's kept boxes) or a box table onto the picked image
        as a layer of boxes to review, each finding's saved status restored; its boxes find their slices by what the
        table and the image both record (``io.saved_boxes.place_boxes``). Returns the number of boxes, or None after
        saying why nothing was opened (a table of another image, an image already under review)."""
        image = self._layer(self.image_combo.currentText())
        if image is None:
            self._say("pick the image the saved boxes belong to, then open them")
            return None
        if any(ly.nshapes or lidnet_info(ly).get("rejected") for ly in reviewed_of(self.viewer.layers, image)):
            self._say(f"{image.name} has a review in this viewer: export it to keep it, then remove its reviewed "
                      "layer, before opening another")  # fmt: skip
            return None
        try:
            saved = read_saved_boxes(path)
            rows, note = place_boxes(saved, image.data.shape, image.metadata or {}, pixel_mm(image))
        except ValueError as exc:
            self._say(f"not opened: {exc}")
            return None
        data, kwargs = opened_boxes_layer(rows, image, Path(path).name, saved.corners)
        layer = self.viewer.add_shapes(data, **kwargs)
        if layer != self.boxes_layer or image != self.image_layer:  # the navigator loads a new layer of detections
            self.load(layer, image)  # by itself, on the image it names; another of that name may come first
        self._take_saved_numbers(saved.ids, saved.lesions)
        restored = self._restore_statuses(saved.statuses or ())
        if restored:
            self._write_reviewed()
        self._fill_table()
        if restored:
            self.review_changed.emit()
            self.next(pending_only=True)
        self._say(f"{len(rows)} boxes from {Path(path).name} on {image.name} ({note}){restored}")
        return len(rows)

    def _by_shape(self) -> dict[int, Finding]:
        """Shape index in the boxes layer -> its finding."""
        return {i: f for f in self.findings if (i := self._shape_index.get(f.id)) is not None}

    def _take_saved_numbers(self, ids: tuple[int, ...] | None, lesions: tuple[int, ...] | None) -> None:
        """The opened boxes (one per shape) take the finding ids and lesion numbers their file gives (ids cited by
        a report stay the same), where it gives them; ids only when they are distinct."""
        by_shape = self._by_shape()
        if ids is not None and len(set(ids)) == len(ids) == len(by_shape) and min(ids) >= 0:
            new = {by_shape[i].id: ids[i] for i in by_shape}
            for f in self.findings:
                f.id = new[f.id]
            self._origin, self._moved_key, self._shape_index, self._lesions = (
                {new[k]: v for k, v in table.items() if k in new}
                for table in (self._origin, self._moved_key, self._shape_index, self._lesions))  # fmt: skip
            self.findings = sorted(self.findings, key=lambda f: f.id)
        if lesions is not None and len(lesions) == len(by_shape):
            self._lesions = {by_shape[i].id: lesions[i] for i in by_shape}

    def _restore_statuses(self, statuses: tuple[str, ...]) -> str:
        """Give each finding of the opened layer its saved status (``statuses``, one per shape); what was restored,
        in words ('' when nothing was decided: the reviewed layer has nothing to show)."""
        by_shape = self._by_shape()
        for i, status in enumerate(statuses):
            if i in by_shape and status != "pending":
                by_shape[i].status = status
                if status == "rejected":
                    self._alone.add(by_shape[i].id)
        counts = Counter(f.status for f in self.findings)
        if not statuses or counts["pending"] == len(self.findings):
            return ""
        kept = sum(counts[s] for s in KEPT)
        return f"; the saved review: {kept} kept, {counts['rejected']} rejected, {counts['pending']} pending"

    def _open_dialog(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self, "Open a review or a box table", "",
                                              "reviews and box tables (*.csv *.json *.dcm)")  # fmt: skip
        if path:
            self.open_boxes(path)


def opened_boxes_layer(
    rows: np.ndarray, image: Any, name: str, corners: np.ndarray | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:  # fmt: skip
    """Shapes data and keywords of (N, 6) ``slice, x1, y1, x2, y2, score`` rows (pixel edges, already placed on
    ``image``'s slices) as a layer of boxes to review on ``image``, named ``name`` (the file's); ``corners`` (N, 4, 2)
    (row, col): each box as saved (a turned box stays turned), else the upright boxes."""
    rows = np.asarray(rows, dtype=float).reshape(-1, 6)
    if corners is None:
        shapes = boxes_to_shapes(rows[:, :5] if image.ndim == 3 else rows[:, 1:5], image.ndim)
    else:
        shapes = [corner_vertices(z, c, image.ndim) for z, c in zip(rows[:, 0], corners)]
    scores = rows[:, 5]
    features = {
        "score": scores,
        "label": [f"{s:.2f}" if np.isfinite(s) else DRAWN_BOX["label"] for s in scores],
    }
    info = {"source_layer": image.name, "source_key": source_key(image), "pixel_mm": pixel_mm(image), "opened": name}
    return shapes, {
        "name": name,
        "ndim": image.ndim,
        "shape_type": "rectangle",
        "features": features,
        **box_style(),
        "feature_defaults": {"score": np.nan, "label": DRAWN_BOX["label"]},
        "metadata": {ROLE: DETECTIONS, "lidnet": info},
        **placed_like(image),
    }
