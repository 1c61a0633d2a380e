"""A dock's hold on the viewer: the layer events it listens to and the keys it binds, undone at once when its dock
closes, and the old -> new name of each renamed layer (napari's name event carries only the new name).

napari's X takes a plugin widget out of its dock without closing it (``remove_dock_widget``: ``setParent(None)``),
so a widget's ``closeEvent`` never runs; ``DockHome`` calls the widget's ``dock_closed`` instead, which calls
``LayerWatch.close``: nothing of a closed dock keeps listening, binding keys or running.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

#: key functions of closed docks: never put back when another dock lets go of the key
_CLOSED: weakref.WeakSet = weakref.WeakSet()


class LayerWatch:
    """Calls ``on_change(renamed)`` when a layer is added, removed, moved (``renamed`` empty) or renamed
    (``renamed``: {old name: new name}); ``connect`` and ``bind_key`` record further hook-ups for ``close``."""

    def __init__(self, viewer: Any, on_change: Callable[[dict[str, str]], None]) -> None:
        self.viewer = viewer
        self.closed = False
        self._on_change = on_change
        self._names: list[list[Any]] = []  # [layer, its name as last seen]
        self._links: list[tuple[Any, Callable]] = []
        self._keys: list[tuple[Any, str, Callable, Any]] = []  # target, key, ours, what ours replaced
        self._undo: list[tuple[Any, Callable[[], None]]] = []  # (layer, what ``close`` puts back on it)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved"):
            self.connect(getattr(events, name), self._on_list)
        for layer in viewer.layers:
            self._follow(layer)

    def connect(self, emitter: Any, callback: Callable) -> None:
        """``emitter.connect(callback)``, disconnected by ``close``."""
        emitter.connect(callback)
        self._links.append((emitter, callback))

    def on_close(self, layer: Any, undo: Callable[[], None]) -> None:
        """Call ``undo`` when the dock closes (after its events are disconnected), unless ``layer`` went first."""
        self._undo.append((layer, undo))

    def bind_key(self, target: Any, key: str, func: Callable) -> None:
        """``target.bind_key(key, func)`` (the viewer or a layer); ``close`` puts back what it replaced (another
        open dock's binding) if ``func`` is still bound."""
        replaced = target.bind_key(key, func, overwrite=True)
        self._keys.append((target, key, func, None if replaced is func else replaced))

    def _follow(self, layer: Any) -> None:
        self._names.append([layer, layer.name])
        self.connect(layer.events.name, self._on_name)

    def _on_list(self, event: Any) -> None:
        if event.type == "inserted":
            self._follow(event.value)
        elif event.type == "removed":  # != not "is not": napari gives plugins a new proxy of a layer at each access
            self._forget(event.value)
        self._on_change({})

    def _forget(self, layer: Any) -> None:
        """Let go of a removed layer (its events and key bindings), so that its data can be freed."""
        self._names = [entry for entry in self._names if entry[0] != layer]
        links = []
        for emitter, callback in self._links:
            if getattr(emitter, "source", None) is not None and emitter.source == layer:
                with contextlib.suppress(Exception):
                    emitter.disconnect(callback)
            else:
                links.append((emitter, callback))
        self._links = links
        self._keys = [entry for entry in self._keys if entry[0] != layer]
        self._undo = [entry for entry in self._undo if entry[0] != layer]  # its closures held the layer

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
        for target, key, func, replaced in reversed(self._keys):
            _CLOSED.add(func)
            with contextlib.suppress(Exception):
                current = target.bind_key(key, None)  # returns what was bound
                back = replaced if current is func else current  # ours: what it replaced; else leave theirs
                if back is not None and back not in _CLOSED:
                    target.bind_key(key, back, overwrite=True)
        for _layer, undo in self._undo:
            with contextlib.suppress(Exception):
                undo()
        self._links, self._keys, self._names, self._undo = [], [], [], []


def renamed_to(name: str, renamed: dict[str, str] | None) -> str:
    """``name`` after the renames in ``renamed`` (unchanged when it was not renamed, or nothing was)."""
    return (renamed or {}).get(name, name)
