"""The navigator's reviewed layer, "<image> reviewed" (role ``reviewed``): the boxes the reader kept, written from the
findings and read back when the reader moves, draws or deletes one there; the decisions (rejected detections, the
detection behind each kept box) stored in its metadata, so a reload, another run or a reopened navigator knows them.

``ReviewedLayer`` is a part of ``navigator.LesionNavigatorWidget`` (which holds the viewer, the findings and the table
these methods read and write), kept apart so each file holds one thing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..findings import Finding
from ..metrics.froc import box_iou_np
from ._geometry import corner_vertices, corners_in_image, pixel_map, placed_like
from ._roles import REVIEWED, ROLE, behind_proxy, derived_name, lidnet_info, reviewed_of, role, source_key

STATUS_COLORS = {"pending": "#c8c8c8", "accepted": "#3cb44b", "edited": "#42d4f4", "added": "#f58231",
                 "rejected": "#e05050"}  # fmt: skip
REVIEWED_COLOR = "#3cb44b"
#: features of a box drawn by hand on the reviewed layer (no finding yet)
DRAWN_DEFAULTS = {"finding": -1, "status": "added", "score": np.nan}


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two ``x1, y1, x2, y2`` boxes."""
    return float(box_iou_np(np.asarray([a], float), np.asarray([b], float))[0, 0])


def finding_over(entry: list, findings: list[Finding]) -> Finding | None:
    """The finding over a stored box ``[slice, x1, y1, x2, y2]`` (same slice, IoU >= 0.5, the best), or None."""
    z, *bounds = entry
    best = max((f for f in findings if f.slice == int(z)), key=lambda f: box_iou(f.bounds, bounds), default=None)
    return best if best is not None and box_iou(best.bounds, bounds) >= 0.5 else None


class ReviewedLayer:
    """The reviewed-layer half of the navigator (see the module's docstring)."""

    def _find_reviewed(self) -> Any | None:
        """The image's reviewed layer: the one that records the image's fingerprint (whatever either is called
        now), else one named after the image (made before fingerprints)."""
        if self.image_layer is None:
            return None
        reviewed = [ly for ly in self.viewer.layers if role(ly) == REVIEWED]
        mine = reviewed_of(reviewed, self.image_layer)
        name = derived_name(self.image_layer.name, "reviewed")
        # made before fingerprints; one with another image's fingerprint is that image's
        unmarked = [ly for ly in reviewed if ly.name == name and not lidnet_info(ly).get("source_key")]
        layer = (mine or unmarked or [None])[0]
        if layer is not None:
            self._connect_reviewed(layer)
        return layer

    def _connect_reviewed(self, layer: Any) -> None:
        if behind_proxy(layer) not in self._watched:
            self.watch.connect(layer.events.data, self._on_reviewed_data)
            self.watch.connect(layer.selected_data.events.items_changed, self._follow_selection)
            self._bind_review_keys(layer)
            self._watched.add(behind_proxy(layer))

    def _new_reviewed(self) -> Any:
        image = self.image_layer
        layer = self.viewer.add_shapes(
            name=derived_name(image.name, "reviewed"),
            ndim=image.ndim,
            **placed_like(image),
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
        return corner_vertices(f.slice, f.corners, self.image_layer.ndim)

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
        self._mark_again()

    def _stored(self, key: str) -> list:
        """A list the reviewed layer's metadata keeps (``rejected``, ``kept``); empty when there is none."""
        return list(lidnet_info(self.reviewed_layer).get(key) or [])

    def _store_decisions(self) -> None:
        """The decisions in the reviewed layer's metadata, so a reload, another run or a reopened navigator still knows
        them (and ``boxes_layer``, the boxes layer reviewed last, with its boxes still ``pending``). ``rejected``: each
        rejected finding's detection box (as detected, not as edited), plus the earlier rejections that no finding here
        stands for (another run, a threshold move, deleted detections); a finding over an earlier one decides for it.
        ``kept``: each kept box that came from a detection, as ``[slice, detection's x1, y1, x2, y2, kept box's x1, y1,
        x2, y2, detection's slice]``, so a box the reader shrank, or moved to another slice, still finds its
        detection."""
        now = [[f.slice, *(self._kept_detection(f) or f.bounds)] for f in self.findings if f.status == "rejected"]
        here = [f for f in self.findings if f.score is not None]
        earlier = [r for r in self._stored("rejected") if finding_over(r, here) is None]
        kept = [(f, self._kept_detection(f), self._detection_slice(f)) for f in self.findings if f.kept]
        layer = self.reviewed_layer
        boxes = {"boxes_layer": self.boxes_layer.name, "pending": [[f.slice, *f.bounds] for f in self.findings
                 if f.status == "pending"]} if self.boxes_layer is not None else {}  # fmt: skip
        layer.metadata = {**(layer.metadata or {}), "lidnet": {
            **lidnet_info(layer), "rejected": earlier + now, **boxes,
            "kept": [[f.slice, *d, *f.bounds, z] for f, d, z in kept if d is not None]}}  # fmt: skip

    def _kept_detection(self, f: Finding) -> tuple | None:
        """The detection box of a finding: its own detection's, else the one stored for it when it was carried over
        (kept through later edits), else the one stored for its box, else None."""
        if f.id in self._origin:
            return self._detected_bounds(f)
        return f.detection or self._stored_detection(f.slice, f.bounds)

    def _detection_slice(self, f: Finding) -> int:
        """The slice of a kept finding's detection: its own detection's, else the one stored for its box (an entry
        written before the slice was stored: the box's), else the box's."""
        if f.id in self._origin:
            return int(self._origin[f.id][0])
        entry = self._stored_kept(f.slice, f.bounds)
        return int(entry[9]) if entry is not None and len(entry) > 9 else f.slice

    def _stored_detection(self, z: int, bounds: tuple) -> tuple | None:
        """The detection box stored for the kept box ``bounds`` on slice ``z`` (the same box), or None."""
        entry = self._stored_kept(z, bounds)
        return None if entry is None else tuple(float(v) for v in entry[1:5])

    def _stored_kept(self, z: int, bounds: tuple) -> list | None:
        """The ``kept`` entry stored for the kept box ``bounds`` on slice ``z`` (the same box), or None."""
        for entry in self._stored("kept"):
            if int(entry[0]) == int(z) and box_iou(tuple(entry[5:9]), tuple(bounds)) >= 0.99:
                return entry
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
            if f.kept and f.id not in seen:  # deleted on the layer: rejected on its own, as Reject does
                f.status = "rejected"
                self._alone.add(f.id)
        self.findings = [f for f in self.findings if not (f.status == "rejected" and f.score is None)]
        self._alone &= {f.id for f in self.findings} | {f.id for f in self._parked.values()}  # a dropped id is reused
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
            match = finding_over([z, *(detection or kept.bounds)], [f for f in self.findings if f.status == "pending"])
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
            match = finding_over(where, [f for f in self.findings if f.status == "pending"])
            if match is not None and match.id in self._origin:
                self._origin[kept.id] = self._origin.pop(match.id)
                kept.detection = None
                self.findings.remove(match)

    def _restore_rejected(self, rejected: list) -> None:
        """Pending findings over a box the reader rejected before (same slice, IoU >= 0.5) are rejected again."""
        for entry in rejected:
            match = finding_over(entry, [f for f in self.findings if f.status == "pending"])
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
        self._mark_again()  # the statuses' colours went over the current box's mark
