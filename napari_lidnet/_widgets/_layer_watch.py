"""A dock's hold on the viewer: the layer events it listens to and the keys it binds, undone at once when its dock
closes, and the old -> new name of each renamed layer (napari's name event carries only the new name).

napari's X takes a plugin widget out of its dock without closing it (``remove_dock_widget``: ``setParent(None)``),
so a widget's ``closeEvent`` never runs; ``DockHome`` calls the widget's ``dock_closed`` instead, which calls
``LayerWatch.close``: nothing of a closed dock keeps listening, binding keys or running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any


class LayerWatch:
    """Calls ``on_change(renamed)`` when a layer is added, removed, moved (``renamed`` empty) or renamed
    (``renamed``: {old name: new name}); ``connect`` and ``bind_key`` record further hook-ups for ``close``."""

    def __init__(self, viewer: Any, on_change: Callable[[dict[str, str]], None]) -> None:
        self.viewer = viewer
        self.closed = False
        self._on_change = on_change
        self._names: list[list[Any]] = []  # [layer, its name as last seen]
        self._links: list[tuple[Any, Callable]] = []
        self._keys: list[tuple[Any, str, Callable]] = []
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved"):
            self.connect(getattr(events, name), self._on_list)
        for layer in viewer.layers:
            self._follow(layer)

    def connect(self, emitter: Any, callback: Callable) -> None:
        """``emitter.connect(callback)``, disconnected by ``close``."""
        emitter.connect(callback)
        self._links.append((emitter, callback))

    def bind_key(self, target: Any, key: str, func: Callable) -> None:
        """``target.bind_key(key, func)`` (the viewer or a layer), unbound by ``close`` if still ``func``."""
        target.bind_key(key, func, overwrite=True)
        self._keys.append((target, key, func))

    def _follow(self, layer: Any) -> None:
        self._names.append([layer, layer.name])
        self.connect(layer.events.name, self._on_name)

    def _on_list(self, event: Any) -> None:
        if event.type == "inserted":
            self._follow(event.value)
        elif event.type == "removed":  # != not "is not": napari gives plugins a new proxy of a layer at each access
            self._names = [entry for entry in self._names if entry[0] != event.value]
        self._on_change({})

    def _on_name(self, _event: Any = None) -> None:
        renamed = {}
        for entry in self._names:
            if entry[0].name != entry[1]:
                renamed[entry[1]] = entry[0].name
                entry[1] = entry[0].name
        if renamed:
            self._on_change(renamed)

    def close(self) -> None:
        """Disconnect every event and unbind every key this watch made (a key rebound since by someone else stays)."""
        self.closed = True
        for emitter, callback in self._links:
            with contextlib.suppress(Exception):  # a layer already gone, or a Qt object deleted
                emitter.disconnect(callback)
        for target, key, func in self._keys:
            with contextlib.suppress(Exception):
                current = target.bind_key(key, None)  # returns what was bound
                if current is not None and current is not func:
                    target.bind_key(key, current, overwrite=True)
        self._links, self._keys, self._names = [], [], []


def renamed_to(name: str, renamed: dict[str, str]) -> str:
    """``name`` after the renames in ``renamed`` (unchanged when it was not renamed)."""
    return renamed.get(name, name)
