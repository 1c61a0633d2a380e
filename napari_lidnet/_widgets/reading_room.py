"""Reading-room habits for a viewer: one window/level for every CT layer, right-drag window/level, presets on the
number keys, z/y/x axis labels, HU in the status bar (of the CT under the cursor whatever layer is active),
patient-orientation letters at the canvas edges and a scale bar in mm.

Installed once per viewer by every LIDnet widget (``ReadingRoom.install``) and taken out when the last of them
closes (``ReadingRoom.release``): the viewer then has napari's own keys, mouse and status bar back. CT layers are
images in HU (``_roles.is_ct_image``); while ``linked`` is on, a window set on one of them (by a drag, a key, a
preset button or napari's own contrast slider) is set on all of them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Generator
from typing import Any

import numpy as np

from ..io.windowing import window_limits
from ._key_help import keep_help_mended
from ._layer_watch import LayerWatch
from ._roles import behind_proxy, is_ct_image
from ._viewer import grid
from .orientation_markers import OrientationMarkers

#: number key -> window preset
PRESET_KEYS = {"1": "soft tissue", "2": "lung", "3": "bone", "4": "brain", "5": "liver", "6": "mediastinum",
               "7": "abdomen"}  # fmt: skip
#: right-drag sensitivity: pixels of horizontal drag that double the width / of vertical drag that move the level by
#: one width
DRAG_PX_PER_WIDTH = 200.0
AXIS_LABELS = {2: ("y", "x"), 3: ("z", "y", "x")}
HINT = "right-drag on the image: window (left-right) and level (up-down); keys 1-7: " + ", ".join(
    f"{k} {v}" for k, v in PRESET_KEYS.items()
)
#: the status bar's hint on a layer whose number keys set the window
PRESET_HINT = "LIDnet: <1>-<7> set the window"

_ROOMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: viewers whose reader hid the scale bar a reading room showed: no later room shows it again
_BAR_HIDDEN: weakref.WeakSet = weakref.WeakSet()
#: the canvas overlay that shows the window and level
READOUT = "lidnet window"
#: where the scale bar goes when the room shows it (the window readout holds the lower right corner)
SCALE_BAR_POSITION = "bottom_left"


class ReadingRoom:
    """The viewer-wide window/level link, mouse and key bindings, axis labels and HU status of one viewer."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.linked = True
        self._syncing = False
        self._scale_bar: bool | None = None  # None: not shown yet; True: shown by the room (taken off at close)
        self._owners: weakref.WeakSet = weakref.WeakSet()
        self.watch = LayerWatch(viewer, lambda _renamed: None)  # every hook-up, undone by close
        self.watch.connect(viewer.layers.events.inserted, self._on_inserted)
        self.watch.connect(viewer.layers.events.removed, self._on_removed)
        viewer.mouse_drag_callbacks.append(self._window_drag)
        self.watch.connect(viewer.events.status, self._on_status)
        for key, preset in PRESET_KEYS.items():
            self.watch.bind_key(viewer, key, self._preset_key(preset))
        for layer in viewer.layers:
            self._adopt(layer)
        self.orientation = OrientationMarkers(viewer, self.watch.connect)

    @classmethod
    def install(cls, viewer: Any, owner: Any = None) -> ReadingRoom:
        """The viewer's reading room, made on first use; ``owner`` (a LIDnet widget) holds it until it calls
        ``release``."""
        room = _ROOMS.get(behind_proxy(viewer))  # each dock holds its own proxy of the viewer
        if room is None:
            room = _ROOMS[behind_proxy(viewer)] = cls(viewer)
        if owner is not None:
            room._owners.add(owner)
        return room

    @classmethod
    def release(cls, viewer: Any, owner: Any) -> None:
        """``owner``'s dock closed; when no other LIDnet widget holds the room, take it out of the viewer."""
        room = _ROOMS.get(behind_proxy(viewer))
        if room is None:
            return
        room._owners.discard(owner)
        if not room._owners:
            del _ROOMS[behind_proxy(viewer)]
            room.close()

    def close(self) -> None:
        """Unbind the keys, disconnect the events and the right-drag, remove the orientation letters and undo their
        head-up turn of the camera, and take the window readout off the canvas (it would no longer follow)."""
        self.watch.close()
        if self._window_drag in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._window_drag)
        self.orientation.remove()
        self.viewer.canvas.overlays.pop(READOUT, None)
        if self._scale_bar:
            self.viewer.scale_bar.visible = False

    # ------------------------------------------------------------------------------------------------ layers
    def ct_layers(self) -> list[Any]:
        """The CT layers of the viewer (images in HU)."""
        return [ly for ly in self.viewer.layers if is_ct_image(ly)]

    def _on_inserted(self, event: Any) -> None:
        self._adopt(event.value)

    def _adopt(self, layer: Any) -> None:
        """Bind the preset keys on image, Shapes and Points layers (their own number keys would win while they are
        active: napari's shape and point modes, where '3' deletes the selected shape and '1' the selected points;
        a Labels layer keeps its tool keys, none of which deletes); label the axes of a CT layer and follow its
        contrast limits."""
        from napari.layers import Image, Points, Shapes

        if isinstance(layer, (Image, Points, Shapes)):
            for key, preset in PRESET_KEYS.items():
                self.watch.bind_key(layer, key, self._preset_key(preset))
            keep_help_mended(self.watch, layer, PRESET_KEYS, PRESET_HINT)
        if not is_ct_image(layer):
            return
        default = tuple(str(i) for i in range(-layer.ndim, 0))
        if layer.ndim in AXIS_LABELS and tuple(layer.axis_labels) == default:
            layer.axis_labels = AXIS_LABELS[layer.ndim]
        self.watch.connect(layer.events.contrast_limits, self._on_limits)
        self.show_window()
        self._show_scale_bar(layer)

    def _show_scale_bar(self, layer: Any) -> None:
        """napari's scale bar, reading mm, the first time a CT in mm is on the viewer (a PACS shows one); hidden
        afterwards (View > Scale Bar), it stays hidden, whatever docks close and open."""
        viewer = behind_proxy(self.viewer)
        if self._scale_bar is not None or viewer in _BAR_HIDDEN or {str(u) for u in layer.units} != {"millimeter"}:
            return
        bar = self.viewer.scale_bar
        self._scale_bar = not bar.visible
        if self._scale_bar:
            bar.position, bar.visible = SCALE_BAR_POSITION, True
            self.watch.connect(bar.events.visible, self._on_bar_toggled)

    def _on_bar_toggled(self, _event: Any = None) -> None:
        if not self.viewer.scale_bar.visible:  # the reader hid the bar the room showed: the viewer remembers
            _BAR_HIDDEN.add(behind_proxy(self.viewer))
            self._scale_bar = False

    def _on_removed(self, _event: Any) -> None:
        self.show_window()  # the readout of a CT layer still there, or none

    def _preset_key(self, preset: str) -> Any:
        def apply(_target: Any) -> None:
            self.apply_preset(preset)

        apply.__name__ = f"window_{preset.replace(' ', '_')}"
        return apply

    # -------------------------------------------------------------------------------------------- windowing
    def apply_preset(self, preset: str, layer: Any = None) -> None:
        """Set a named window on ``layer`` (default: the active or top CT layer) and the layers linked to it."""
        layer = layer or self.target_ct()
        if layer is not None:
            self.set_limits(layer, window_limits(preset, layer.metadata))

    def set_window(self, layer: Any, level: float, width: float) -> None:
        """Set window ``level``/``width`` (HU) on ``layer`` and, when linked, on every CT layer."""
        width = max(float(width), 1.0)
        self.set_limits(layer, (level - width / 2, level + width / 2))

    def set_limits(self, layer: Any, limits: tuple[float, float]) -> None:
        """Set contrast limits on ``layer`` and its linked layers, widening their ranges when needed."""
        targets = self.ct_layers() if self.linked and is_ct_image(layer) else [layer]
        self._syncing = True
        try:
            for ly in targets:
                lo, hi = float(limits[0]), float(limits[1])
                r_lo, r_hi = ly.contrast_limits_range
                if lo < r_lo or hi > r_hi:
                    ly.contrast_limits_range = (min(r_lo, lo), max(r_hi, hi))
                ly.contrast_limits = (lo, hi)
        finally:
            self._syncing = False
        self.show_window(layer)

    def _on_limits(self, event: Any) -> None:
        layer = getattr(event, "source", None)
        if self._syncing or layer is None or layer not in self.viewer.layers:
            return
        if self.linked:
            self.set_limits(layer, tuple(layer.contrast_limits))
        else:
            self.show_window(layer)

    def show_window(self, layer: Any = None) -> None:
        """The window and level in HU of ``layer`` (default: the active or top CT layer) in the canvas's lower right
        corner, as a PACS shows them, updated as they change (by key, drag, preset or napari's slider)."""
        layer = layer if is_ct_image(layer) else self.target_ct()
        overlays = self.viewer.canvas.overlays
        if READOUT not in overlays:  # an overlay of its own: napari's text overlay is the user's
            from napari.components.overlays import TextOverlay

            overlays[READOUT] = TextOverlay(position="bottom_right")  # clear of the orientation letters
        overlay = overlays[READOUT]
        overlay.text = window_text(tuple(layer.contrast_limits)) if layer is not None else ""
        overlay.visible = bool(overlay.text)

    def target_ct(self) -> Any | None:
        """The active CT layer, else the top visible one (None without CT layers)."""
        active = self.viewer.layers.selection.active
        if is_ct_image(active):
            return active
        visible = [ly for ly in self.ct_layers() if ly.visible]
        return visible[-1] if visible else None

    def layer_at(self, position: Any, viewbox: Any = None) -> Any | None:
        """The top visible CT layer under a world ``position`` (in grid mode: in the ``viewbox`` cell)."""
        layers = self.viewer.layers
        candidates = [ly for ly in layers if is_ct_image(ly) and ly.visible]
        if grid(self.viewer).enabled and viewbox is not None:
            inside = set(grid(self.viewer).contents_at(tuple(viewbox), layers))
            candidates = [ly for ly in candidates if layers.index(ly) in inside]
        for ly in reversed(candidates):
            if voxel_at(ly, position) is not None:
                return ly
        return candidates[-1] if candidates else None

    def _window_drag(self, viewer: Any, event: Any) -> Generator[None, None, None] | None:
        """Right-drag: left-right changes the window width, up-down the level (of the CT layer under the cursor)."""
        if event.type != "mouse_press" or event.button != 2:
            return None
        layer = self.layer_at(event.position, getattr(event, "viewbox", None))
        if layer is None:
            return None
        return self._drag_window(layer, event)

    def _drag_window(self, layer: Any, event: Any) -> Generator[None, None, None]:
        lo, hi = (float(v) for v in layer.contrast_limits)
        level0, width0 = (lo + hi) / 2, max(hi - lo, 1.0)
        start = np.asarray(event.pos, dtype=float)
        event.handled = True  # the camera does not zoom on this drag
        yield
        while event.type == "mouse_move":
            dx, dy = np.asarray(event.pos, dtype=float) - start
            width = width0 * 2.0 ** (dx / DRAG_PX_PER_WIDTH)
            self.set_window(layer, level0 + dy * width0 / DRAG_PX_PER_WIDTH, width)
            event.handled = True
            yield
        event.handled = True

    # ------------------------------------------------------------------------------------------------ status
    def _on_status(self, event: Any) -> None:
        """Append 'HU' to the value of a CT layer in the status bar (napari shows the bare number)."""
        status = self.viewer.status
        if isinstance(status, dict) and self._active_in_other_cell(status):  # napari's value is not under the cursor
            status = {**status, "coordinates": _VALUE.sub("", str(status.get("coordinates", "")), count=1)}
            new = self._ct_under_cursor(status) or status
        else:
            new = hu_status(status, {ly.name for ly in self.ct_layers()})
        if new is None and isinstance(status, dict):
            new = self._ct_under_cursor(status)
        if new is not None:
            self.viewer.status = new

    def _active_in_other_cell(self, status: dict) -> bool:
        """Side by side (grid mode): whether the layer whose value napari shows is in another cell than the cursor
        (napari shows the active layer's value wherever the cursor is)."""
        viewbox, layers = self.viewer.cursor.viewbox, self.viewer.layers
        name = status.get("layer_name")
        done = str(status.get("coordinates", "")).endswith("HU")  # the status this room set
        if done or not grid(self.viewer).enabled or viewbox is None or name not in layers:
            return False
        return layers.index(name) not in set(grid(self.viewer).contents_at(tuple(viewbox), layers))

    def _ct_under_cursor(self, status: dict) -> dict | None:
        """While another layer is active (drawing a region, a caliper): the status with the HU of the top visible
        CT layer under the cursor added, as a reader checks tissue while drawing; None when there is none."""
        coords = str(status.get("coordinates", ""))
        if not coords or coords.endswith("HU"):
            return None
        bare = coords.removesuffix(NO_SHAPE)  # napari's "no shape under the cursor" on a Shapes layer
        position = self.viewer.cursor.position
        layer = self.layer_at(position, self.viewer.cursor.viewbox)  # side by side: the image in the cursor's cell
        idx = None if layer is None else voxel_at(layer, position)
        if idx is None:
            return {**status, "coordinates": bare} if bare != coords else None
        return {**status, "coordinates": f"{bare}; {layer.name}: {float(layer.data[idx]):.1f} HU"}


def window_text(limits: tuple[float, float]) -> str:
    """'W 400  L 40' (HU) of contrast limits (low, high) in HU, as a PACS writes it."""
    lo, hi = (float(v) for v in limits)
    return f"W {hi - lo:.0f}  L {(hi + lo) / 2:.0f}"


def voxel_at(layer: Any, position: Any) -> tuple[int, ...] | None:
    """The index of ``layer``'s voxel at world ``position`` (through its scale, translate and affine), None outside
    the layer."""
    idx = np.asarray(layer.world_to_data(np.asarray(position, dtype=float)[-layer.ndim :]), dtype=float)
    shape = np.asarray(layer.data.shape[-layer.ndim :])
    if np.any(idx < -0.5) or np.any(idx > shape - 0.5):
        return None
    return tuple(int(i) for i in np.clip(np.rint(idx), 0, shape - 1))


#: the value napari shows for a Shapes layer with no shape under the cursor
NO_SHAPE = ": [, ]"
_VALUE = re.compile(r"(: -?\d[\d.eE+-]*)(?!\s*HU)")


def hu_status(status: Any, ct_names: set[str]) -> Any | None:
    """``status`` with ' HU' after the value of a CT layer, or None when nothing changes."""
    if isinstance(status, dict):
        coords = str(status.get("coordinates", ""))
        name = str(status.get("layer_name", ""))
        if name in ct_names and coords and not coords.endswith("HU") and _VALUE.search(coords):
            return {**status, "coordinates": f"{coords} HU"}
        return None
    if isinstance(status, str) and ct_names:
        names = "|".join(re.escape(n) for n in sorted(ct_names, key=len, reverse=True))
        new = re.sub(rf"((?:{names}): -?\d[\d.eE+-]*)(?!\s*HU)", r"\1 HU", status)
        return new if new != status else None
    return None
