"""The reader's hand edits on the Denoise dock's lesions layer, kept while the layer is redrawn: a box drawn on it (no
detector score), a detection moved or resized, a detection deleted. The layer is redrawn from the run's boxes at
every threshold move; without these edits a drawn box would vanish and a moved one jump back, without a word."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..layer_data import boxes_to_shapes, shapes_to_boxes

#: features of a box drawn by hand on the lesions layer: no detector score, no detection; labelled "drawn"
DRAWN_BOX = {"score": np.nan, "slice": -1, "detection": "", "label": "drawn"}


def detection_keys(rows: np.ndarray) -> list[str]:
    """A key per ``slice, x1, y1, x2, y2, score`` row (slice and corners to 0.01 px): one detection's key at every
    threshold, and in a volume whose other slices were run again."""
    return [f"{int(r[0])}:{r[1]:.2f}:{r[2]:.2f}:{r[3]:.2f}:{r[4]:.2f}" for r in np.asarray(rows, float)]


class HandEdits:
    """What the reader changed on one run's lesions layer (:meth:`read`), put back on each redraw (:meth:`apply`)."""

    def __init__(self) -> None:
        self.moved: dict[str, tuple[np.ndarray, str]] = {}  # detection key -> (vertices, shape type) now
        self.deleted: set[str] = set()
        self.drawn: list[tuple[np.ndarray, str]] = []
        self._written: dict[str, np.ndarray] = {}  # detection key -> vertices as last drawn

    def read(self, layer: Any) -> None:
        """Take in the boxes drawn, moved and deleted on ``layer`` since :meth:`apply` drew it."""
        if "detection" not in layer.features:
            return
        keys, shapes, own = self._layer_owners(layer)
        present, drawn = set(), []
        for i, (key, verts, kind) in enumerate(zip(keys, shapes, layer.shape_type)):
            if own.get(key) != i:  # drawn by hand (DRAWN_BOX's empty key), or a copy pasted with its detection's
                drawn.append((verts, kind))
                continue
            present.add(key)
            if not _same(verts, self._written[key]):
                self.moved[key] = (verts, kind)
        self.deleted |= set(self._written) - present
        self.drawn = drawn

    def _layer_owners(self, layer: Any) -> tuple[list[str], list[np.ndarray], dict[str, int]]:
        """(each shape's detection key, its vertices, detection key -> the shape that is that detection: where it
        was drawn if a shape is still there, else the first with its key; napari's copy and paste gives the copy
        every feature of the box, its key included)."""
        keys = layer.features["detection"].astype(str).tolist()
        shapes = [np.array(verts, dtype=float) for verts in layer.data]
        own: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in self._written:
                continue
            was = self._written[key]
            if key not in own or (not _same(shapes[own[key]], was) and _same(shapes[i], was)):
                own[key] = i
        return keys, shapes, own

    def copies(self, layer: Any) -> list[int]:
        """Indices of the shapes on ``layer`` that carry a detection's key without being that detection (pasted)."""
        keys, _, own = self._layer_owners(layer)
        return [i for i, key in enumerate(keys) if key in self._written and own.get(key) != i]

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """The detector's ``slice, x1, y1, x2, y2, score`` rows as the reader left them: the deleted left out, the
        moved at their new place (drawn boxes have no score: the navigator's review exports them)."""
        out, keys = self._not_deleted(np.asarray(rows, np.float32).reshape(-1, 6))
        out = out.copy()
        for i, key in enumerate(keys):
            if key in self.moved:
                box = shapes_to_boxes([self.moved[key][0]])[0]
                out[i, :5] = box if self.moved[key][0].shape[1] >= 3 else [out[i, 0], *box[1:]]
        return out

    def _not_deleted(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The rows the reader did not delete, and their detection keys."""
        keys = detection_keys(rows)
        kept = [k not in self.deleted for k in keys]
        return rows[kept], [k for k, s in zip(keys, kept) if s]

    def summary(self) -> str:
        """'hand edits: 1 deleted, 1 moved, 1 drawn' ('' with none)."""
        parts = [f"{n} {what}" for n, what in ((len(self.deleted), "deleted"), (len(self.moved), "moved"),
                                                (len(self.drawn), "drawn")) if n]  # fmt: skip
        return f"hand edits: {', '.join(parts)}" if parts else ""

    def apply(self, rows: np.ndarray, ndim: int, all_rows: np.ndarray) -> tuple[list[tuple[np.ndarray, str]], Any]:
        """(shapes, features) of the boxes ``rows`` (those over the threshold, of ``all_rows``) with the edits: the
        deleted left out, the moved where the reader put them, the drawn added (a moved box whose detection a new
        run replaced stays, as drawn)."""
        import pandas as pd

        rows, keys = self._not_deleted(rows)
        boxes = rows[:, :5] if ndim == 3 else rows[:, 1:5]
        shapes = [self.moved.get(k, (s, "rectangle")) for k, s in zip(keys, boxes_to_shapes(boxes, ndim))]
        self._written = {k: np.array(v, dtype=float) for k, (v, _) in zip(keys, shapes)}
        known = set(detection_keys(all_rows))
        extra = [*self.drawn, *(v for k, v in self.moved.items() if k not in known and k not in self.deleted)]
        slices = [int(np.rint(np.mean(np.asarray(v)[:, 0]))) if ndim == 3 else 0 for v, _ in extra]
        features = pd.DataFrame({
            "score": pd.Series([*rows[:, 5].astype(float), *[np.nan] * len(extra)], dtype=float),
            "slice": pd.Series([*rows[:, 0].astype(int), *slices], dtype=int),
            "detection": pd.Series([*keys, *[""] * len(extra)], dtype=object),  # text even when there is none
            "label": pd.Series([*(f"{v:.2f}" for v in rows[:, 5]), *["drawn"] * len(extra)], dtype=object),
        })  # fmt: skip
        return [*shapes, *extra], features


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b))
