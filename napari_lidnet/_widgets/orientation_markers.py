"""Patient-orientation letters (R/L, A/P, S/I) at the canvas edges, as every CT console shows them.

They describe the image on screen (the top visible grayscale image; none when that image has no patient geometry,
even if a CT with geometry lies under it) from the DICOM or NIfTI geometry the reader left in its metadata
(``affine_lps``) and follow what napari displays: the two displayed axes (axial, coronal or sagittal after a dims
roll), a camera that shows an axis reversed, the layer's own scale, rotation, shear and affine. Side by side (grid
mode) the letters, drawn in every cell, show only when every image shown has the same ones. They hide in 3D, and
when the image shown carries no patient geometry (an array or a PNG has none, a NIfTI header may give none: a guess
would be worse than no letter). Drawn as napari canvas text overlays, at the canvas edges, so they never cover the
middle of the image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..io.orientation import EDGES, edge_letters
from ._roles import NOISE, is_ct_image, role
from ._viewer import camera, grid, light_theme

#: canvas overlay key and position of each edge's letters
OVERLAY_KEYS = {edge: f"lidnet_orientation_{edge}" for edge in EDGES}
POSITIONS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
COLOR = "#ffb000"
COLOR_ON_LIGHT = "#8a4b00"  # on a light theme's white canvas (amber there: 1.8:1)
FONT_SIZE = 14


def letter_color(theme: str) -> str:
    """The letters' colour on the canvas of napari's ``theme``: amber on a dark canvas, dark amber on a light one."""
    return COLOR_ON_LIGHT if light_theme(theme) else COLOR


def _geometry(layer: Any) -> np.ndarray | None:
    """The layer's index -> patient LPS affine, None without one or when the file gave no orientation."""
    meta = getattr(layer, "metadata", None) or {}
    aff = np.asarray(meta.get("affine_lps", np.zeros(0)), dtype=float)
    ok = aff.shape == (4, 4) and np.all(np.isfinite(aff)) and not meta.get("orientation_unknown")
    return aff if ok else None


class OrientationMarkers:
    """The four edge letters of one viewer; ``enabled`` switches them off and on."""

    def __init__(self, viewer: Any, connect: Callable[[Any, Callable], None] | None = None) -> None:
        """``connect(emitter, callback)`` hooks up each event (default: ``emitter.connect``; the reading room passes
        its watch's, which disconnects them all when it closes)."""
        from napari.components.overlays import TextOverlay

        self.viewer = viewer
        self._connect = connect or (lambda emitter, callback: emitter.connect(callback))
        self._enabled = True
        self._turned = False  # the camera's vertical axis was reversed by _head_up
        for edge, key in OVERLAY_KEYS.items():
            viewer.canvas.overlays[key] = TextOverlay(
                text="", position=POSITIONS[edge], visible=False, font_size=FONT_SIZE, color=letter_color(viewer.theme),
                box=False,
                gridded=True,  # side by side (grid mode): each image gets its letters
            )
        layers = viewer.layers
        for emitter in (layers.events.inserted, layers.events.removed, layers.events.moved,
                        layers.selection.events.active, viewer.dims.events.order, viewer.dims.events.ndisplay,
                        viewer.dims.events.ndim, camera(viewer).events.orientation, grid(viewer).events):  # fmt: skip
            self._connect(emitter, self.update)
        self._connect(viewer.dims.events.order, self._head_up)
        self._connect(viewer.events.theme, self._on_theme)
        self._on_theme()
        self._connect(layers.events.inserted, self._on_inserted)
        for layer in layers:
            self._watch(layer)
        self.update()

    def _on_theme(self, _event: Any = None) -> None:
        """The letters' colour for the theme; on a light one, a pale backing too, so that the dark letters read where
        they lie over the image's black air as well as on the white canvas."""
        light = light_theme(self.viewer.theme)
        for key in OVERLAY_KEYS.values():
            if key in self.viewer.canvas.overlays:
                overlay = self.viewer.canvas.overlays[key]
                overlay.color = letter_color(self.viewer.theme)
                overlay.box, overlay.box_color = light, (1.0, 1.0, 1.0, 0.7)

    def _on_inserted(self, event: Any) -> None:
        self._watch(event.value)

    def _watch(self, layer: Any) -> None:
        for name in ("visible", "scale", "translate", "rotate", "shear", "affine"):
            emitter = getattr(layer.events, name, None)
            if emitter is not None:
                self._connect(emitter, self.update)

    @property
    def enabled(self) -> bool:
        return self._enabled

    def remove(self) -> None:
        """Take the letters off the canvas and undo a head-up turn of the camera made here (napari's view back)."""
        self.enabled = False
        if self._turned:
            cam = camera(self.viewer)
            cam.orientation2d = ("down", cam.orientation2d[1])
            self._turned = False
        for key in OVERLAY_KEYS.values():
            self.viewer.canvas.overlays.pop(key, None)

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = bool(on)
        self.update()

    def _shown(self) -> list[Any]:
        """The visible grayscale images, bottom to top (the removed-noise image aside: it overlays its CT)."""
        from napari.layers import Image

        return [ly for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and ly.visible and role(ly) != NOISE]  # fmt: skip

    def layer(self) -> Any | None:
        """The CT layer the letters describe: the top visible image, when it is a CT with patient geometry."""
        shown = self._shown()
        top = shown[-1] if shown else None
        return top if top is not None and is_ct_image(top) and _geometry(top) is not None else None

    def letters(self) -> dict[str, str] | None:
        """{'top', 'bottom', 'left', 'right'} -> letters for the view now, None when there is nothing to label (in
        grid mode: unless every image shown is a CT with the same letters)."""
        if self.viewer.dims.ndisplay != 2:
            return None
        if not grid(self.viewer).enabled:
            layer = self.layer()
            return None if layer is None else self._letters_of(layer)
        each = [self._letters_of(ly) if is_ct_image(ly) and _geometry(ly) is not None else None for ly in self._shown()]
        return each[0] if each and all(e is not None and e == each[0] for e in each) else None

    def _letters_of(self, layer: Any) -> dict[str, str] | None:
        dims = self.viewer.dims
        offset = dims.ndim - layer.ndim  # a layer of fewer dims sits on the viewer's last ones
        axes = [int(w) - offset for w in dims.displayed]  # (down, right) in the layer's own dims
        if min(axes) < 0:
            return None
        aff = _geometry(layer)
        origin = np.asarray(layer.world_to_data(np.zeros(layer.ndim)), dtype=float)
        vectors = []
        for axis, flipped in zip(axes, (o in ("up", "left") for o in camera(self.viewer).orientation2d)):
            step = np.zeros(layer.ndim)
            step[axis] = -1.0 if flipped else 1.0
            index = np.asarray(layer.world_to_data(step), dtype=float) - origin  # scale, rotate, affine, shear
            zyx = np.concatenate([np.zeros(3 - layer.ndim), index])  # affine_lps columns are (z, y, x)
            vectors.append(aff[:3, :3] @ zyx)
        return edge_letters(*vectors)

    def _head_up(self, event: Any = None) -> None:
        """After a roll of the axes, coronal and sagittal views show the head at the top, as consoles do: when the
        screen's vertical axis runs feet up, the camera shows it reversed; back in a view whose vertical axis is not
        S-I (axial), a reversal made here is undone. A reversal the user makes stays until the next roll."""
        letters = self.letters() if self._enabled else None
        if letters is None:
            return
        cam = camera(self.viewer)
        vertical, horizontal = cam.orientation2d
        flip = {"down": "up", "up": "down"}  # napari's default is down
        if letters["top"][:1] == "I":
            cam.orientation2d = (flip[str(vertical)], horizontal)
            self._turned = flip[str(vertical)] == "up"  # away from napari's default
        elif self._turned and letters["top"][:1] != "S":
            if str(vertical) == "up":
                cam.orientation2d = ("down", horizontal)
            self._turned = False

    def update(self, event: Any = None) -> None:
        """Redraw the letters (connected to every change of layers, displayed axes and camera orientation)."""
        letters = self.letters() if self._enabled else None
        for edge, key in OVERLAY_KEYS.items():
            overlay = self.viewer.canvas.overlays[key]
            overlay.text = letters[edge] if letters else ""
            overlay.visible = bool(letters and letters[edge])
