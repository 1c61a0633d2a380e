"""The Denoise dock's output layers: the denoised image, the removed-noise overlay and the lesion boxes, placed like
their source, each replacing the dock's previous output of its role for that source (a layer the reader renamed is
theirs), the boxes filtered by the score threshold.

``DenoiseOutputs`` is a part of ``denoise_detect.DenoiseDetectWidget`` (which holds the viewer, the last result and
the comparison these methods use), kept apart so each file holds one thing.
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.volume import n_slices
from ..layer_data import metadata_for_slices, removed_noise_layer, slice_translate
from ..metrics.lesions import row_lesions
from ._box_style import BOX_SCORE_RANGE, BOX_TEXT_COLOR, box_style
from ._hand_edits import DRAWN_BOX, HandEdits
from ._roles import DETECTIONS, NOISE, ROLE, behind_proxy, derived_name, lidnet_info, pixel_mm, source_key

#: an image output's name's end when it holds one slice of its source (``_output_name``)
_ONE_SLICE = re.compile(r" \(slice \d+\)$")
#: what places an output where its source lies (``_geometry``); the outputs follow each as it changes
PLACEMENT = ("scale", "translate", "affine", "units")

if TYPE_CHECKING:
    from napari.layers import Shapes


def threshold_text(threshold: float) -> str:
    """A score threshold as the dock shows it: "0.50" on the slider's steps, "0.496" between them (a detector's
    calibrated one, applied exactly)."""
    return f"{threshold:.2f}" if abs(threshold * 100 - round(threshold * 100)) < 1e-9 else f"{threshold:.3f}"


def _without_slice(name: str) -> str:
    """An output's name without its "(slice N)" end."""
    return _ONE_SLICE.sub("", name)


class DenoiseOutputs:
    """The output-layer half of the Denoise dock (see the module's docstring)."""

    def _entry(self, role: str) -> list[Any] | None:
        """[source, role, output, given name] of the current source's output of ``role``, or None."""
        src = self._last["layer"] if self._last is not None else None
        return next((e for e in self._outputs if e[0] == src and e[1] == role), None)

    def _live(self, role: str) -> Any | None:
        """The current source's output of ``role`` while it is in the viewer under the name it was given (a layer
        the reader renamed is theirs to keep: runs and the threshold leave it alone)."""
        entry = self._entry(role)
        if entry is None or entry[2] not in self.viewer.layers or entry[2].name != entry[3]:
            return None
        return entry[2]

    def _earlier_output(self, name: str) -> Any | None:
        """A layer named ``name``, or named so but for another slice ("... (slice 40)"), that this plugin made from
        the current source before this widget knew of it (a dock closed and opened again), so a new run replaces it
        as it replaces its own (not ``name [1]``, nor a stale slice's layer beside the new one). A one-slice run
        never replaces a result of more slices (the closed dock's whole volume): it goes beside it."""
        base, known, key = _without_slice(name), [e[2] for e in self._outputs], source_key(self._last["layer"])
        one = self._only_slice() is not None
        for layer in self.viewer.layers:
            info = lidnet_info(layer)
            if _without_slice(layer.name) != base or layer in known or info.get("source_key") != key:
                continue
            held = info.get("slices")
            if not one or (isinstance(held, list) and len(held) == 1):
                return layer
        return None

    def _boxes_name(self) -> str:
        """"<source> lesions"; for a one-slice run beside a whole-volume boxes layer of that name that it does not
        replace (a closed dock's), "<source> lesions (slice 40)", as its image."""
        name = derived_name(self._last["layer"].name, "lesions")
        if self._only_slice() is None:
            return name
        old = self._live("lesions") or self._earlier_output(name)
        clash = any(ly.name == name and behind_proxy(ly) is not behind_proxy(old) for ly in self.viewer.layers)
        return self._output_name("lesions") if clash else name

    def _place(self, role: str, data: Any, kwargs: dict[str, Any], layer_type: str) -> Any:
        """Add an output layer, replacing this widget's previous output of the same role for the same source (a
        comparison showing the old one goes on with the new one). A slice folded into the volume on screen refills
        that volume's image layer instead (removing a layer costs napari a garbage collection)."""
        live = self._live(role)
        if self._last.get("merged") and layer_type == "image" and live is not None and live.data.shape == data.shape:
            live.data = data
            live.metadata = kwargs["metadata"]
            for key in PLACEMENT:  # where the source lies now (it may have been moved)
                setattr(live, key, kwargs[key])
            return live
        old, index = live or self._earlier_output(kwargs["name"]), None
        pair, entry = self.compare.pair, self._entry(role)
        self._outputs = [e for e in self._outputs if e is not entry]
        self._replacing = True
        try:
            if old is not None:
                index = self.viewer.layers.index(old)
                self.viewer.layers.remove(old)
            new = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
            if old is not None:  # a rerun's output looks as the reader left the last one (not as Compare did)
                _keep_look(old, new, self.compare.shown(old))
            if index is None and layer_type == "image":
                index = self._above_images(new)
            if index is not None:
                self.viewer.layers.move(self.viewer.layers.index(new), index)
        finally:
            self._replacing = False
        first = None if layer_type == "shapes" else self._last["first"]  # where its slices start in the source
        self._outputs.append([self._last["layer"], role, new, new.name, first])
        self._follow(self._last["layer"])
        if pair is not None and old is not None and old in pair:
            self.compare.pair = tuple(new if ly == old else ly for ly in pair)
            if self.compare.side_by_side:
                self.compare.show(*self.compare.pair, self.compare.reference)
        elif self.compare.side_by_side and new.visible:  # an output beside the pair (boxes, removed noise)
            self._end_side_by_side(new.name)
        return new

    def _follow(self, src: Any) -> None:
        """The outputs of ``src`` move with it when its scale, translate or affine change (napari's transform
        mode, the console), so the boxes stay on the slices they were found on."""
        if behind_proxy(src) in self._followed:
            return
        self._followed.add(behind_proxy(src))
        for name in PLACEMENT:
            self.watch.connect(getattr(src.events, name), lambda _event=None, s=src: self._moved_source(s))

    def _moved_source(self, src: Any) -> None:
        """Every output of ``src`` (not only the last run's) to where ``src`` lies now."""
        for entry in self._outputs:
            if entry[0] == src and entry[2] in self.viewer.layers and entry[2].name == entry[3]:
                for key, value in self._geometry(entry[4], src).items():
                    setattr(entry[2], key, value)

    def _above_images(self, new: Any) -> int | None:
        """Where a first image output goes: above every image (another scan above the source would hide it), below
        the reader's calipers, regions and boxes (added on top, the denoised image would hide the reader's calipers)."""
        from napari.layers import Image

        layers = self.viewer.layers
        images = [k for k, ly in enumerate(layers) if isinstance(ly, Image) and ly != new]
        return max(images) + 1 if images else None

    def _drop(self, role: str) -> None:
        old, entry = self._live(role), self._entry(role)
        self._outputs = [e for e in self._outputs if e is not entry]
        if old is not None:
            self.viewer.layers.remove(old)

    def _geometry(self, first: int | None, src: Any = None) -> dict[str, Any]:
        """Where an output of ``src`` (default: the last run's image) lies: its scale, affine, units (mm on a CT),
        and its translate moved to slice ``first`` (None: the whole volume)."""
        src = src if src is not None else self._last["layer"]
        translate = tuple(src.translate)
        if first is not None and src.ndim == 3:
            translate = slice_translate(tuple(src.scale), translate, first)
        return {"scale": tuple(src.scale), "translate": translate, "affine": src.affine.affine_matrix,
                "units": tuple(src.units)}  # fmt: skip

    def _only_slice(self) -> int | None:
        """The slice a "current slice" run's outputs hold (one slice of a volume, not folded into a volume result
        on screen), else None."""
        src, slices = self._last["layer"], list(self._last["result"].slices)
        return int(slices[0]) if src.ndim == 3 and len(slices) == 1 and src.data.shape[0] > 1 else None

    def _output_name(self, tag: str) -> str:
        """An image output's name: "<source> denoised", or "<source> denoised (slice 40)" when it holds one slice (on
        the others the layer, listed as shown, is empty and the input shows through)."""
        only = self._only_slice()
        return derived_name(self._last["layer"].name, tag if only is None else f"{tag} (slice {only})")

    def _denoised_array(self) -> np.ndarray | None:
        res = self._last["result"]
        if res.denoised is None:
            return None
        return res.denoised[0] if self._last["layer"].ndim == 2 else res.denoised

    def _show_denoised(self) -> None:
        data = self._denoised_array()
        if data is None:
            self._drop("denoised")
            return
        src = self._last["layer"]
        meta = {
            **metadata_for_slices(dict(src.metadata), self._last["first"], n_slices(data)),
            "hu": True,
            "lidnet": {
                "source_layer": src.name,
                "source_key": source_key(src),
                "denoiser": self._last["labels"][0],
                "remove_sd": self._last["remove_sd"],
                "leave_sd": self._last.get("leave_sd"),
                "slices": list(self._last["result"].slices),
            },
        }
        kwargs = {
            "name": self._output_name("denoised"),
            "contrast_limits": tuple(src.contrast_limits),
            "colormap": src.colormap.name,
            "metadata": meta,
            **self._geometry(self._last["first"]),
        }
        self._place("denoised", data, kwargs, "image")

    def _show_noise(self) -> None:
        data = self._denoised_array() if self._last is not None else None
        if data is None or not self.noise_check.isChecked():
            self._drop("removed noise")
            return
        src = self._last["layer"]
        original = src.data
        if src.ndim == 3:  # the run's slices: a view when they are consecutive (a whole volume is not copied)
            from ..inference import take_slices

            original = take_slices(original, self._last["result"].slices)
        noise, styling = removed_noise_layer(original, data)  # a volume's: computed as each slice is shown
        kwargs = {
            "name": self._output_name("removed noise"),
            **styling,
            "metadata": {ROLE: NOISE, "lidnet": {"source_layer": src.name, "source_key": source_key(src),
                                                 "slices": list(self._last["result"].slices)}},
            **self._geometry(self._last["first"]),
        }
        self._place("removed noise", noise, kwargs, "image")

    @property
    def shown_boxes(self) -> np.ndarray:
        """(N, 6) ``slice, x1, y1, x2, y2, score`` of the boxes shown (score >= threshold), absolute slices, with
        the reader's hand edits (deleted out, moved where put; drawn boxes, scoreless, the navigator exports)."""
        if self._last is None or self._last["result"].boxes is None:
            return np.zeros((0, 6), np.float32)
        rows, edits = self._detected_rows(), self._last.get("edits")
        if edits is None:
            return rows
        layer = self._live("lesions")
        if layer is not None:
            edits.read(layer)  # edits made since the layer was last drawn
        return edits.rows(rows)  # as the reader left them on the layer

    def _result_rows(self) -> np.ndarray:
        """Every ``slice, x1, y1, x2, y2, score`` row the detector gave in the last run."""
        return np.asarray(self._last["result"].boxes, np.float32).reshape(-1, 6)

    def _detected_rows(self) -> np.ndarray:
        """The detector's rows with score >= threshold, before any hand edit."""
        from ..inference import filter_boxes

        return filter_boxes(self._result_rows(), self.threshold)

    @property
    def shown_text(self) -> str:
        """The boxes shown, counted as ``lidnet detect`` counts them: "23 boxes (21 lesions) with score >= 0.50"
        (boxes that overlap on neighbouring slices are one lesion, as in the navigator)."""
        rows = self.shown_boxes
        lesions = int(row_lesions(rows).max(initial=0)) if len(rows) else 0
        boxes = f"{len(rows)} box{'es' if len(rows) != 1 else ''}"
        edits = self._last.get("edits") if self._last is not None else None
        summary = edits.summary() if edits is not None else ""
        note = f" ({summary})" if summary else ""
        at = threshold_text(self.threshold)
        return f"{boxes} ({lesions} lesion{'s' if lesions != 1 else ''}) with score >= {at}{note}"

    def _show_boxes(self, rebuild: bool = False, threshold_only: bool = False) -> None:
        if self._last is None:
            return
        if self._last["result"].boxes is None:
            self._drop("lesions")
            return
        src = self._last["layer"]
        rows = self._detected_rows()
        rows = rows[np.argsort(-rows[:, 5], kind="stable")]  # highest first: a raised threshold cuts the tail, and
        ndim = src.ndim  # napari's cut feature table already holds the right scores (the navigator reads once)
        layer: Shapes | None = self._live("lesions")
        if threshold_only and layer is None:  # the reader deleted or renamed the lesions layer: not brought back
            return
        if rebuild or self._last.get("edits") is None:  # a run's own layer: nothing edited on it yet
            self._last["edits"] = HandEdits()
        edits = self._last["edits"]
        if not rebuild and layer is not None:
            edits.read(layer)  # what the reader drew, moved or deleted on it since it was last drawn
        shapes, features = edits.apply(rows, ndim, self._result_rows())
        if not rebuild and layer is not None:
            layer.data = shapes
            layer.features = features
            layer.feature_defaults = DRAWN_BOX  # a box drawn on it: no detector score, no detection
            layer.text.color = BOX_TEXT_COLOR  # one colour again (the navigator dims its rejections after this)
            layer.edge_color = "score"
            layer.edge_contrast_limits = BOX_SCORE_RANGE  # napari rescales to the shown scores otherwise
            layer.refresh_colors()
            return
        kwargs = {
            "name": self._boxes_name(),
            "ndim": ndim,
            "shape_type": [kind for _, kind in shapes],  # a drawn ellipse or path stays one
            "features": features,
            **box_style(),
            "feature_defaults": DRAWN_BOX,
            "metadata": {ROLE: DETECTIONS, "lidnet": {"source_layer": src.name, "source_key": source_key(src),
                                                      "detector": self._last["labels"][1], "run": uuid.uuid4().hex,
                                                      "pixel_mm": pixel_mm(src),  # None: not measured
                                                      "slices": list(self._last["result"].slices)}},
            **self._geometry(None),
        }
        layer = self._place("lesions", [s for s, _ in shapes], kwargs, "shapes")
        self.watch.connect(layer.events.features, lambda _event: self._on_boxes_features(layer))

    def _on_boxes_features(self, layer: Any) -> None:
        """napari's paste (Ctrl+V) gives a pasted box every feature of its original, its score and detection key
        included (and says so with a features event only): the copy is made a drawn box (no score)."""
        if self._last is not None and self._last.get("edits") is not None:
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._unscore_copies(layer))  # after napari has drawn the pasted shapes

    def _unscore_copies(self, layer: Any) -> None:
        edits = self._last.get("edits") if self._last is not None else None
        if edits is None or layer not in self.viewer.layers or "detection" not in layer.features:
            return
        copies = edits.copies(layer)
        if copies:
            features = layer.features.copy()
            for key, value in DRAWN_BOX.items():
                features.loc[copies, key] = value
            layer.features = features
            layer.refresh_text()
            layer.refresh_colors()


#: what the reader may have changed on an output layer that a rerun keeps
_LOOK = ("opacity", "blending")


def _keep_look(old: Any, new: Any, visible: bool) -> None:
    """``new`` (a rerun's output) takes ``old``'s display settings: opacity, ``visible`` (the reader's); an image its
    colour map and gamma, a box layer its line width and text size."""
    from napari.layers import Image, Shapes

    both = [kind for kind in (Image, Shapes) if isinstance(old, kind) and isinstance(new, kind)]  # proxies too
    if not both:
        return
    for name in (*_LOOK, *(("colormap", "gamma") if both[0] is Image else ())):
        setattr(new, name, getattr(old, name))
    new.visible = visible
    if both[0] is Shapes:
        new.current_edge_width = old.current_edge_width  # the layer controls' width
        if new.nshapes:
            new.edge_width = [old.current_edge_width] * new.nshapes
        new.text.size = old.text.size
