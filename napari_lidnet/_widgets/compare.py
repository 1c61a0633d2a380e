"""Input and output of a denoising run side by side (napari grid mode, one row) with one window/level, or flipped
in place (one shown at a time, in the same spot). Leaving the comparison restores what was shown before."""

from __future__ import annotations

from typing import Any

from ._viewer import camera, grid
from .reading_room import ReadingRoom

FLIP_KEY = "f"


class CompareView:
    """Side-by-side and flip views of a (before, after) pair of image layers of one viewer."""

    def __init__(self, viewer: Any, owner: Any = None) -> None:
        self.viewer = viewer
        self.room = ReadingRoom.install(viewer, owner)
        self.pair: tuple[Any, Any] | None = None
        self._saved: dict[str, Any] | None = None
        self._followed: tuple[Any, ...] | None = None  # the images whose windows follow each other now
        self._third: list[Any] = []  # side by side: the reference beside the pair

    @property
    def reference(self) -> Any | None:
        """The third panel beside the pair (None: the pair alone)."""
        return next((ly for ly in self._third if ly in self.viewer.layers), None)

    def shown(self, layer: Any) -> bool:
        """Whether ``layer`` is shown as the reader left it: its visibility before the comparison hid or showed it."""
        return bool(self._saved["visible"].get(layer, layer.visible)) if self._saved is not None else layer.visible

    @property
    def side_by_side(self) -> bool:
        """Whether the pair is shown in the grid now."""
        return self._saved is not None and bool(grid(self.viewer).enabled)

    def _remember(self) -> None:
        if self._saved is None:
            grid_, camera_ = grid(self.viewer), camera(self.viewer)
            self._saved = {
                "visible": {ly: ly.visible for ly in self.viewer.layers},
                "grid": (grid_.enabled, tuple(grid_.shape), grid_.stride),
                "camera": (tuple(camera_.center), camera_.zoom, tuple(camera_.angles)),
                "names": {},
            }

    def _valid(self) -> bool:
        return self.pair is not None and all(ly in self.viewer.layers for ly in self.pair)

    def show(self, before: Any, after: Any, reference: Any = None) -> None:
        """Show ``before`` (left) and ``after`` (right) alone, side by side, with ``before``'s window on both; a
        ``reference`` (the normal dose a simulated low dose came from) as a third panel, in layer order."""
        self._remember()
        self.pair = (before, after)
        shown = [before, after] if reference is None or reference in self.pair else [before, after, reference]
        for ly in self.viewer.layers:
            self._keep_visibility(ly)
            ly.visible = ly in shown
        layers = self.viewer.layers
        layout = grid(self.viewer)
        layout.shape = (1, len(shown))
        layout.stride = 1 if layers.index(before) < layers.index(after) else -1
        layout.enabled = True
        self.viewer.reset_view(layers=shown)  # the images whole, side by side (hidden layers aside)
        self._third = shown[2:]
        for ly in shown:  # each image's name over it (also while flipping), tiled with the orientation letter
            self._saved["names"].setdefault(ly, (ly.name_overlay.visible, ly.name_overlay.position))
            ly.name_overlay.visible, ly.name_overlay.position = True, "top_center"
        self.link_windows()

    def link_windows(self) -> None:
        """One window/level for the pair (and the reference beside it): ``before``'s limits on each (and on every
        linked CT layer); until the comparison ends, a window set on one is set on the others, whatever Load CT's
        "link" box says."""
        if not self._valid():
            return
        before = self.pair[0]
        followed = (*self.pair, *(ly for ly in self._third if ly in self.viewer.layers))
        for ly in followed:
            if tuple(ly.contrast_limits) != tuple(before.contrast_limits) or ly is before:
                self.room.set_limits(ly, tuple(before.contrast_limits))
        if self._followed != followed:
            self._unfollow()
            for ly in followed:
                ly.events.contrast_limits.connect(self._copy_window)
            self._followed = followed

    def _copy_window(self, event: Any) -> None:
        if self._followed is None:
            return
        source = event.source
        for ly in self._followed:
            if ly != source and tuple(ly.contrast_limits) != tuple(source.contrast_limits):
                ly.contrast_limits = tuple(source.contrast_limits)

    def _unfollow(self) -> None:
        for ly in self._followed or ():
            ly.events.contrast_limits.disconnect(self._copy_window)
        self._followed = None

    def flip(self) -> Any | None:
        """Show the other image of the pair in place (the grid closes); returns the layer now shown."""
        if not self._valid():
            return None
        self._remember()
        from_grid = bool(grid(self.viewer).enabled)
        if from_grid:  # from side by side: the same spot at the same zoom (a finding in view stays)
            cam = camera(self.viewer)
            centre, zoom = tuple(cam.center), cam.zoom
            grid(self.viewer).enabled = False
            cam.center, cam.zoom = centre, zoom
        before, after = self.pair
        shown = before if after.visible else after
        for ly in self.viewer.layers:  # == not "is": napari gives plugins a new proxy of a layer at each access
            self._keep_visibility(ly)  # boxes, calipers, regions: from side by side (which hid them) as before the
            drawn = self._saved["visible"][ly] if from_grid else ly.visible  # comparison; else as the reader left them
            ly.visible = ly == shown or (drawn and ly not in self.pair and not self._is_image(ly))
        self.link_windows()
        return shown

    def _keep_visibility(self, layer: Any) -> None:
        """Remember ``layer``'s visibility before the comparison first changes it (a layer added during the
        comparison, e.g. calipers or regions, comes back as it was made)."""
        self._saved["visible"].setdefault(layer, layer.visible)

    @staticmethod
    def _is_image(layer: Any) -> bool:
        from napari.layers import Image

        return isinstance(layer, Image)

    def close(self) -> None:
        """Leave the comparison: the grid and every layer's visibility as they were before."""
        self._unfollow()
        self._third = []
        if self._saved is None:
            return
        enabled, shape, stride = self._saved["grid"]
        layout = grid(self.viewer)
        layout.enabled, layout.shape, layout.stride = enabled, shape, stride
        for ly, visible in self._saved["visible"].items():
            if ly in self.viewer.layers:
                ly.visible = visible
        cam = camera(self.viewer)
        cam.center, cam.zoom, cam.angles = self._saved["camera"]
        for ly, (visible, position) in self._saved["names"].items():
            ly.name_overlay.visible, ly.name_overlay.position = visible, position
        self._saved = None


def _slices(layer: Any) -> int:
    return int(layer.data.shape[0]) if layer.ndim == 3 else 1


def thin_note(before: Any, after: Any) -> str:
    """Said when ``after`` covers fewer slices than ``before`` (a "current slice" run): elsewhere its panel is
    blank, which would otherwise read as a failed denoiser; '' otherwise."""
    n, k = _slices(before), _slices(after)
    return f"side by side: denoised on {k} of {n} slices, blank elsewhere (run all slices for them)" if k < n else ""
