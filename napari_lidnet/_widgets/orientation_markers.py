"""Patient-orientation letters (R/L, A/P, S/I) at the canvas edges, as every CT console shows them.

They describe the CT layer in view (the active one, else the top visible CT layer) from the DICOM geometry the reader
left in its metadata (``affine_lps``) and follow what napari displays: the two displayed axes (axial, coronal or
sagittal after a dims roll), a camera that shows an axis reversed, a negative layer scale. They hide in 3D, and when
no CT layer carries patient geometry (an array or a PNG has none: a guess would be worse than no letter). Drawn as
napari canvas text overlays, at the canvas edges, so they never cover the middle of the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io.orientation import EDGES, edge_letters
from ._roles import is_ct_image

#: canvas overlay key and position of each edge's letters
OVERLAY_KEYS = {edge: f"lidnet_orientation_{edge}" for edge in EDGES}
POSITIONS = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
COLOR = "#ffb000"
FONT_SIZE = 14


def _geometry(layer: Any) -> np.ndarray | None:
    aff = np.asarray((getattr(layer, "metadata", None) or {}).get("affine_lps", np.zeros(0)), dtype=float)
    return aff if aff.shape == (4, 4) and np.all(np.isfinite(aff)) else None


class OrientationMarkers:
    """The four edge letters of one viewer; ``enabled`` switches them off and on."""

    def __init__(self, viewer: Any) -> None:
        from napari.components.overlays import TextOverlay

        self.viewer = viewer
        self._enabled = True
        for edge, key in OVERLAY_KEYS.items():
            viewer.canvas.overlays[key] = TextOverlay(
                text="", position=POSITIONS[edge], visible=False, font_size=FONT_SIZE, color=COLOR, box=False,
                gridded=True,  # side by side (grid mode): each image gets its letters
            )
        layers = viewer.layers
        for emitter in (layers.events.inserted, layers.events.removed, layers.events.moved,
                        layers.selection.events.active, viewer.dims.events.order, viewer.dims.events.ndisplay,
                        viewer.dims.events.ndim, viewer.camera.events.orientation):  # fmt: skip
            emitter.connect(self.update)
        layers.events.inserted.connect(lambda event: self._watch(event.value))
        for layer in layers:
            self._watch(layer)
        self.update()

    def _watch(self, layer: Any) -> None:
        layer.events.visible.connect(self.update)

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        self._enabled = bool(on)
        self.update()

    def layer(self) -> Any | None:
        """The CT layer the letters describe: the active one, else the top visible one with patient geometry."""
        candidates = [ly for ly in self.viewer.layers if is_ct_image(ly) and ly.visible and _geometry(ly) is not None]
        active = self.viewer.layers.selection.active
        if active in candidates:
            return active
        return candidates[-1] if candidates else None

    def letters(self) -> dict[str, str] | None:
        """{'top', 'bottom', 'left', 'right'} -> letters for the view now, None when there is nothing to label."""
        layer = self.layer()
        dims = self.viewer.dims
        if layer is None or dims.ndisplay != 2:
            return None
        offset = dims.ndim - layer.ndim  # a layer of fewer dims sits on the viewer's last ones
        down, right = (int(w) - offset for w in dims.displayed)
        if min(down, right) < 0:
            return None
        scale = np.asarray(layer.scale, dtype=float)
        vertical, horizontal = (str(v) for v in getattr(self.viewer.camera, "orientation2d", ("down", "right")))
        shift = 3 - layer.ndim  # affine_lps columns are (z, y, x) even for a single slice
        return edge_letters(
            _geometry(layer),
            down + shift,
            right + shift,
            flip_down=(vertical == "up") != (scale[down] < 0),
            flip_right=(horizontal == "left") != (scale[right] < 0),
        )

    def update(self, event: Any = None) -> None:
        """Redraw the letters (connected to every change of layers, displayed axes and camera orientation)."""
        letters = self.letters() if self._enabled else None
        for edge, key in OVERLAY_KEYS.items():
            overlay = self.viewer.canvas.overlays[key]
            overlay.text = letters[edge] if letters else ""
            overlay.visible = bool(letters and letters[edge])
