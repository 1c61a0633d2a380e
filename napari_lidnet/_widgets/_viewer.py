"""Viewer parts that napari 0.9 moved (``viewer.scene.camera``, ``viewer.canvas.grid``), taken from where the
installed napari keeps them (the old attributes still work there, with a DeprecationWarning)."""

from __future__ import annotations

from typing import Any


def camera(viewer: Any) -> Any:
    """The viewer's camera model."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def grid(viewer: Any) -> Any:
    """The viewer's grid-mode model."""
    found = getattr(getattr(viewer, "canvas", None), "grid", None)
    return found if found is not None else viewer.grid


def light_theme(theme: str) -> bool:
    """Whether napari's ``theme`` draws light panels (its "light" theme, or a custom one like it)."""
    from napari.utils.theme import available_themes, get_theme

    if theme not in available_themes():
        return False
    red, green, blue = get_theme(theme).background.as_rgb_tuple()[:3]
    return 0.299 * red + 0.587 * green + 0.114 * blue > 128


def viewbox_size(viewer: Any) -> tuple[float, float]:
    """The canvas's size in screen pixels (rows, columns), of one panel when side by side (napari's grid)."""
    return tuple(float(v) for v in viewer.canvas.viewbox_size(viewer.layers))

