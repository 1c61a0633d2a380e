"""Where the plugin's docks live: forms tabbed in one narrow right column, tables and plots tabbed at the bottom.

napari docks every plugin widget on the right, one under the other, whatever the plugin asks; each LIDnet widget
therefore moves its own dock once it is docked (``DockHome``): into its home area, tabified with the LIDnet docks
already there, at a width (right) or height (bottom) that leaves the canvas most of the window. Forms scroll inside
their dock (``scroll_layout``), so a tall form never makes the window grow. A dock that settles shrinks the canvas:
a view that showed the whole image (or napari's Home) is fitted again (``keep_fitted``), so none of it is hidden.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFormLayout,
    QFrame,
    QLabel,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_lidnet import PLUGIN

from ._viewer import light_theme

AREAS = {"right": Qt.DockWidgetArea.RightDockWidgetArea, "bottom": Qt.DockWidgetArea.BottomDockWidgetArea}
#: initial size of the home areas (px): the right column's width, the bottom area's height
RIGHT_WIDTH = 280
BOTTOM_HEIGHT = 300
#: attributes a LIDnet widget carries: its home area, and the short title of its tab
HOME_ATTR = "lidnet_home"
TITLE_ATTR = "lidnet_title"
#: an error message's colour on a light and on a dark dock (4.5:1 or more against each background)
ERROR_ON_LIGHT, ERROR_ON_DARK = "#b3261e", "#ff7b72"
#: characters a combo box shows at least (longer entries are elided, the popup shows them whole)
COMBO_CHARS = 12
#: seconds after a dock settles during which a canvas resize refits an image that was wholly shown
REFIT_WINDOW_S = 2.0


class _DownScrollArea(QScrollArea):
    """A scroll area that scrolls down only and is as wide as its content needs (a plain one, its horizontal bar off,
    cut the content at the right: half a button, a picker's arrow). The width follows the content's layout (napari's
    style is applied after the dock is built)."""

    def setWidget(self, widget: QWidget) -> None:  # noqa: N802 (Qt name)
        super().setWidget(widget)
        widget.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            QTimer.singleShot(0, self._fit)  # once the content is laid out (not in the middle of it)
        return super().eventFilter(watched, event)

    def showEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        self._fit()
        super().showEvent(event)

    def _fit(self) -> None:
        content = self.widget()
        if content is not None:
            bar = self.verticalScrollBar()
            bar_width = max(bar.sizeHint().width(), bar.width())
            width = content.minimumSizeHint().width() + bar_width + 2 * self.frameWidth()
            if width != self.minimumWidth():
                self.setMinimumWidth(width)
                content.layout().update()  # laid out again at the width it is given (it kept the narrower one)


def scroll_layout(widget: QWidget, keep_width: bool = False) -> QVBoxLayout:
    """Give ``widget`` a frameless vertical scroll area and return the layout of the scrolled content;
    ``keep_width``: never narrower than the content."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = _DownScrollArea(widget) if keep_width else QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    body = QWidget()
    area.setWidget(body)
    outer.addWidget(area)
    return QVBoxLayout(body)


class _StatusLabel(QLabel):
    """A dock's status line: any new text is plain (an error's red is :func:`show_message`'s, for its text only)."""

    def setText(self, text: str) -> None:  # noqa: N802 (Qt name)
        if self.styleSheet():
            self.setStyleSheet("")
        super().setText(text)


def wrapping_label(text: str = "") -> QLabel:
    """A word-wrapped label that never widens its dock: a token it cannot break (a series UID, a path) is cut at
    the dock's edge (otherwise a load note quoting a UID pushes Load CT's fields and buttons out of view)."""
    label = _StatusLabel(text)
    label.setWordWrap(True)
    policy = label.sizePolicy()
    policy.setHorizontalPolicy(QSizePolicy.Policy.Ignored)
    label.setSizePolicy(policy)
    return label


def add_tips(*pairs: tuple[QWidget, str]) -> None:
    """Give each (control, text) pair its tooltip: what the control does, where its name does not say."""
    for control, tip in pairs:
        control.setToolTip(tip)


def show_message(label: QLabel, text: str, error: bool = False, theme: str = "dark") -> None:
    """``text`` on a dock's status ``label``, in red for an error (a red that reads on napari's ``theme``), and
    scrolled into view: on a short screen a dock's status line can lie below the fold."""
    label.setText(text)
    label.setStyleSheet(f"color: {ERROR_ON_LIGHT if light_theme(theme) else ERROR_ON_DARK};" if error else "")
    area = ancestor(label, QScrollArea)
    if area is not None:
        area.ensureWidgetVisible(label)


def compact(widget: QWidget) -> None:
    """Fit a form into a narrow column: labels go above fields that do not fit beside them, combo boxes elide."""
    for form in widget.findChildren(QFormLayout):
        if form.rowWrapPolicy() != QFormLayout.RowWrapPolicy.WrapAllRows:  # a form that wraps every row keeps it
            form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(COMBO_CHARS)


def ancestor(widget: QWidget, kind: type) -> Any:
    """The nearest widget of ``kind`` that holds ``widget``, or None."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, kind):
        parent = parent.parentWidget()
    return parent


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock holding ``widget``, or None when it is not docked."""
    return ancestor(widget, QDockWidget)


def lidnet_docks(main: QMainWindow, area: str) -> list[QDockWidget]:
    """Open (not closed) LIDnet docks of ``main`` in ``area``, in creation order."""
    return [
        d
        for d in main.findChildren(QDockWidget)
        if getattr(d.widget(), HOME_ATTR, None) == area
        and main.dockWidgetArea(d) == AREAS[area]
        and not d.isFloating()
        and d.toggleViewAction().isChecked()
    ]


def _short_title_bar(dock: QDockWidget) -> None:
    """The dock's title bar without napari's ' (napari-lidnet)' suffix, which the narrow column cut mid-word; the
    full name stays its tooltip."""
    label = getattr(dock.titleBarWidget(), "title", None)  # napari's QtCustomTitleBar keeps its QLabel here
    name = str(getattr(dock, "name", "") or "")
    short = name.removesuffix(f" ({PLUGIN})")
    if isinstance(label, QLabel) and short and label.text() != short:
        label.setText(short)
        label.setToolTip(name)


def settle(widget: QWidget) -> bool:
    """Move ``widget``'s dock to its home area, tabbed with the other LIDnet docks there; True when it moved."""
    area = getattr(widget, HOME_ATTR, None)
    dock = dock_of(widget)
    main = dock.parentWidget() if dock is not None else None
    if area not in AREAS or not isinstance(main, QMainWindow):
        return False
    title = getattr(widget, TITLE_ATTR, "")
    if title and dock.windowTitle() != title:
        dock.setWindowTitle(title)  # the tab's text; napari's menus keep the dock's full name
    _short_title_bar(dock)
    others = [d for d in lidnet_docks(main, area) if d is not dock]
    if main.dockWidgetArea(dock) == AREAS[area] and (not others or dock in main.tabifiedDockWidgets(others[0])):
        return False
    main.addDockWidget(AREAS[area], dock)
    if others:
        main.tabifyDockWidget(others[0], dock)
    dock.show()
    dock.raise_()
    if area == "right":
        main.resizeDocks([dock], [RIGHT_WIDTH], Qt.Orientation.Horizontal)
    else:
        main.resizeDocks([dock], [BOTTOM_HEIGHT], Qt.Orientation.Vertical)
    return True


def shows_whole_scene(viewer: Any) -> bool:
    """Whether the 2D canvas shows every layer's whole extent (False in 3D, in grid mode or with no layers)."""
    if viewer is None or not len(viewer.layers) or viewer.dims.ndisplay != 2 or viewer.grid.enabled:
        return False
    extent = np.asarray(viewer.layers.extent.world, float)[:, list(viewer.dims.displayed)]
    half = np.asarray(viewer.canvas.size, float) / max(float(viewer.camera.zoom), 1e-12) / 2
    centre = np.asarray(viewer.camera.center, float)[-2:]
    slack = 1e-6 * np.maximum(np.ptp(extent, axis=0), 1.0)
    return bool(np.all(extent[0] >= centre - half - slack) and np.all(extent[1] <= centre + half + slack))


def _camera(viewer: Any) -> tuple[float, ...]:
    return (*(float(v) for v in viewer.camera.center), float(viewer.camera.zoom))


def at_home(viewer: Any) -> bool:
    """Whether the view is napari's Home (``fit_to_view``) for the canvas as it is: the view a user has not zoomed
    or panned (checked by fitting and putting the camera back when it differed)."""
    if viewer is None or not len(viewer.layers):
        return False
    before = _camera(viewer)
    viewer.fit_to_view()
    if np.allclose(_camera(viewer), before, rtol=1e-4, atol=1e-6):
        return True
    viewer.camera.center, viewer.camera.zoom = before[:-1], before[-1]
    return False


def keep_fitted(viewer: Any, window_s: float = REFIT_WINDOW_S) -> None:
    """For ``window_s`` seconds, fit the view again (napari's Home) whenever the canvas is resized, as long as the
    camera is where the last fit left it: docks settling take room from a canvas (and give some back) while the
    user has not yet touched the view. A camera moved in between ends it."""
    until = time.monotonic() + window_s
    fitted = [_camera(viewer)]

    def refit(event: Any = None) -> None:
        if time.monotonic() > until or not np.allclose(_camera(viewer), fitted[0], rtol=1e-4, atol=1e-6):
            viewer.canvas.events.size.disconnect(refit)
            return
        viewer.fit_to_view()
        fitted[0] = _camera(viewer)

    viewer.canvas.events.size.connect(refit)
    QTimer.singleShot(0, refit)


class DockHome(QObject):
    """Keeps a LIDnet widget's dock in its home area: settles it whenever the widget is (re)docked; when a docked
    widget loses its dock (napari's X takes it out without closing it), calls the widget's ``dock_closed``."""

    def __init__(self, widget: QWidget, area: str, title: str = "") -> None:
        super().__init__(widget)
        if area not in AREAS:
            raise ValueError(f"unknown dock area {area!r}; expected one of {sorted(AREAS)}")
        self._widget = widget
        self._docked = widget.parentWidget() is not None
        self._closed = False
        self._watching = False
        setattr(widget, HOME_ATTR, area)
        setattr(widget, TITLE_ATTR, title)
        if area == "right":
            compact(widget)
        widget.installEventFilter(self)
        QTimer.singleShot(0, self.settle)

    def settle(self) -> None:
        """Settle now (a deleted widget is ignored); a view that showed the whole image, or was at napari's Home, is
        at Home once the dock has taken its room (``keep_fitted``)."""
        with contextlib.suppress(RuntimeError):  # the widget was deleted before the timer fired
            self._watch_window()
            viewer = getattr(self._widget, "viewer", None)
            home = viewer is not None and (shows_whole_scene(viewer) or at_home(viewer))
            if settle(self._widget) and home:
                keep_fitted(viewer)

    def _watch_window(self) -> None:
        """Watch the main window once it is known: docks opened while it was hidden (a script's show=False viewer)
        count as closed, none tabbed, so each settles again when the window is first shown."""
        dock = dock_of(self._widget)
        main = dock.parentWidget() if dock is not None else None
        if isinstance(main, QMainWindow) and not self._watching:  # a flag: a reference would keep the viewer alive
            main.installEventFilter(self)
            self._watching = True

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        """A parent change (docking) schedules a settle once napari has placed the dock; losing the parent after
        being docked is the dock's closing. The main window's showing settles again."""
        if obj is not self._widget:
            if event.type() == QEvent.Type.Show:  # the first showing only: a dock the user moved since stays put
                obj.removeEventFilter(self)
                if not self._closed:
                    QTimer.singleShot(0, self.settle)
            return False
        if event.type() == QEvent.Type.ParentChange:
            if self._widget.parentWidget() is not None:
                if self._closed:  # a closed widget docked again (scripts): it no longer follows the viewer
                    self._widget.setEnabled(False)
                    self._widget.setToolTip("this panel was closed: open a new one from the Plugins menu")
                self._docked = True
                QTimer.singleShot(0, self.settle)
            elif self._docked:
                self._docked, self._closed = False, True
                closed = getattr(self._widget, "dock_closed", None)
                if callable(closed):
                    closed()
        return False
