"""The reading room at 1600 x 1000 in a shown headless viewer (run under xvfb-run): every LIDnet dock opened
through the manifest settles as a tab (forms on the right, tables at the bottom), the canvas keeps at least 60%
of the width, right-drag and number keys set one window/level on the CT layers, the status bar reads HU, and the
README's pictures (layout, comparison, navigator) are taken at the window's size."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QDockWidget

from napari_lidnet import demo
from napari_lidnet._widgets._docking import AREAS, at_home, dock_of, shows_whole_scene
from napari_lidnet.io.windowing import contrast_limits

WIDTH, HEIGHT = 1600, 1000
SCALE = (2.5, 0.7, 0.7)


def ct_volume(n: int = 4, size: int = 96, seed: int = 0) -> np.ndarray:
    """Soft tissue with two bright disks, in air, with noise (HU)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((n, size, size), -1000.0, np.float32)
    body = ((yy - size / 2) / (0.42 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 < 1
    hu[:, body] = 40.0
    hu[:, (yy - 40) ** 2 + (xx - 35) ** 2 < 36] = 120.0
    return hu + rng.normal(0, 30, hu.shape).astype(np.float32)


@pytest.fixture
def room(make_napari_viewer, qtbot, model_dir: Path):
    """A shown 1600 x 1000 viewer with a CT, its simulated-looking low-dose partner and every LIDnet dock."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(WIDTH, HEIGHT)
    full = viewer.add_image(ct_volume(seed=1), name="Chest 5mm", scale=SCALE, metadata={"hu": True})
    low = viewer.add_image(ct_volume(seed=2), name="Chest 5mm 25% dose", scale=SCALE,
                           metadata={"hu": True, "normal_dose": "Chest 5mm"})  # fmt: skip
    widgets = demo.open_reading_room(viewer)
    main = viewer.window._qt_window
    qtbot.waitUntil(lambda: all(main.dockWidgetArea(dock_of(w)) == _area(w) for w in widgets.values()), timeout=5000)
    qtbot.wait(50)
    return viewer, widgets, full, low


def _area(widget):
    return AREAS[widget.lidnet_home]


def test_docks_are_tabs_and_the_canvas_keeps_the_width(room) -> None:
    viewer, widgets, *_ = room
    main = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    assert (main.width(), main.height()) == (WIDTH, HEIGHT)  # opening every dock does not grow the window
    assert canvas.width() >= 0.6 * main.width(), (canvas.width(), main.width())
    assert canvas.height() >= 0.5 * main.height()
    right = [dock_of(widgets[k]) for k in ("load", "denoise", "finetune")]
    bottom = [dock_of(widgets[k]) for k in ("navigator", "roi")]
    assert set(main.tabifiedDockWidgets(right[0])) == set(right[1:])
    assert set(main.tabifiedDockWidgets(bottom[0])) == set(bottom[1:])
    assert [d.windowTitle() for d in right] == ["Load CT", "Denoise", "Fine-tune"]  # short tab names
    bar = dock_of(widgets["denoise"]).titleBarWidget().title  # the title over the form, whole in the column
    assert bar.text() == "Denoise and detect" and bar.sizeHint().width() < dock_of(widgets["denoise"]).width()
    for key in ("load", "finetune", "denoise", "navigator", "roi"):  # whichever tab is in front
        demo.raise_tab(widgets[key])
        assert canvas.width() >= 0.6 * main.width(), (key, canvas.width())
        assert (main.width(), main.height()) == (WIDTH, HEIGHT), key
    assert dock_of(widgets["denoise"]).width() <= 300
    demo.raise_tab(widgets["finetune"])  # its layer list spans the column (beside a label it was 74 px: "low-dos…")
    assert widgets["finetune"].data_box.image_list.width() >= 0.7 * dock_of(widgets["finetune"]).width()
    from qtpy.QtWidgets import QAbstractSpinBox, QApplication, QLineEdit, QPushButton

    widgets["finetune"].advanced_button.click()  # the rate must not read "0.00", nor the name its end
    QApplication.processEvents()
    fields = [*widgets["finetune"].findChildren(QAbstractSpinBox), *widgets["finetune"].findChildren(QLineEdit)]
    cut = [(type(f).__name__, f.text() if hasattr(f, "text") else "", f.width(), f.sizeHint().width()) for f in fields
           if f.isVisible() and not isinstance(f.parent(), QAbstractSpinBox) and f.width() < f.sizeHint().width()]
    assert not cut, cut  # every number and name shown whole
    roi = widgets["roi"]
    assert dock_of(roi).height() >= 250 and roi.table.viewport().height() >= 150  # a table one can read
    assert roi.canvas.height() >= 150 and roi.table.width() >= 400
    assert all(isinstance(d, QDockWidget) for d in right + bottom)
    assert viewer.dims.axis_labels == ("z", "y", "x")
    uid = "1.2.276.0.7230010.3.1.3.296485376.1.1521713419.1802493"  # a load note with a
    for key in ("load", "denoise", "finetune", "navigator", "roi"):  # UID must not push Load CT's buttons out of view
        demo.raise_tab(widgets[key])
        dock = dock_of(widgets[key])
        before = widgets[key].minimumSizeHint().width()
        widgets[key].status.setText(f"series 'Plain' ({uid}) {uid}{uid}")
        QApplication.processEvents()
        assert widgets[key].minimumSizeHint().width() <= max(before, dock.width()), key
        assert (main.width(), main.height()) == (WIDTH, HEIGHT), key
    buttons = [b for b in widgets["load"].findChildren(QPushButton) if b.isVisible()]
    demo.raise_tab(widgets["load"])
    QApplication.processEvents()
    assert all(b.mapTo(widgets["load"], b.rect().topRight()).x() <= widgets["load"].width() for b in buttons)


def _canvas_drag(viewer, start: tuple[int, int], end: tuple[int, int], button: int = 2) -> None:
    """A real mouse drag through napari's vispy canvas (press, move, release)."""
    scene = viewer.window._qt_viewer.canvas._scene_canvas
    press = scene.events.mouse_press(pos=start, button=button, modifiers=())
    scene.events.mouse_move(pos=end, button=button, modifiers=(), press_event=press)
    scene.events.mouse_release(pos=end, button=button, modifiers=(), press_event=press)


def test_every_dock_fits_a_laptop_screen_and_an_error_scrolls_into_view(room, qtbot) -> None:
    """With every dock open the window can be as short as a 1366 x 768 or 1280 x 720 screen (the navigator's buttons
    made it 798 px at least, napari's status bar and the lower dock tabs below the screen); a dock's error line
    below the fold is scrolled into view, in a red that reads on the theme."""
    from napari_lidnet._widgets._docking import ERROR_ON_DARK, ERROR_ON_LIGHT

    viewer, widgets, _full, _low = room
    main = viewer.window._qt_window
    assert main.minimumSizeHint().height() <= 680, main.minimumSizeHint()
    navigator = widgets["navigator"]
    dock_of(navigator).raise_()
    qtbot.waitUntil(lambda: navigator.buttons["next"].visibleRegion().boundingRect().width() > 0, timeout=3000)
    for button in [*navigator.buttons.values(), navigator.boxes_combo, navigator.image_combo]:  # whole, not cut
        assert button.visibleRegion().boundingRect().size() == button.size(), button.toolTip()
    tune = widgets["finetune"]
    main.resize(1280, 680)
    dock_of(tune).raise_()
    qtbot.wait(100)
    tune.name_edit.setText("bad name!")
    tune.start()
    qtbot.waitUntil(lambda: tune.status.visibleRegion().boundingRect().height() > 0, timeout=3000)
    assert ERROR_ON_DARK in tune.status.styleSheet()
    viewer.theme = "light"
    tune.start()
    assert ERROR_ON_LIGHT in tune.status.styleSheet()
    viewer.theme = "dark"


@pytest.mark.parametrize("zoomed_in", [False, True])
def test_an_image_wholly_on_screen_stays_so_when_the_docks_open(make_napari_viewer, qtbot, zoomed_in) -> None:
    """A 512 x 512 slice opened first fills the canvas (napari fits it); opening the docks from the Plugins menu
    takes a column and a row from the canvas: the slice is fitted again (Home), not cropped until Home is pressed.
    A view the user zoomed into is left as the user set it."""
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(WIDTH, HEIGHT)
    viewer.add_image(ct_volume(n=3, size=512), name="CT", scale=SCALE, metadata={"hu": True})
    qtbot.wait(50)
    assert shows_whole_scene(viewer)
    if zoomed_in:
        viewer.camera.zoom *= 3
    zoom, before = viewer.camera.zoom, viewer.canvas.size
    widgets = demo.open_reading_room(viewer)
    main = viewer.window._qt_window
    qtbot.waitUntil(lambda: all(main.dockWidgetArea(dock_of(w)) == _area(w) for w in widgets.values()), timeout=5000)
    qtbot.wait(100)
    after = viewer.canvas.size
    assert after[0] < before[0] and after[1] < before[1], (before, after)  # the docks took room from the canvas
    if zoomed_in:
        assert viewer.camera.zoom == pytest.approx(zoom)
        assert not shows_whole_scene(viewer)
    else:
        assert shows_whole_scene(viewer), (viewer.camera.zoom, viewer.camera.center, after)
        assert viewer.camera.zoom < zoom and at_home(viewer)  # fitted to the canvas the docks left, not smaller


def test_right_drag_and_keys_set_one_window_and_status_reads_hu(room, qtbot) -> None:
    viewer, widgets, full, low = room
    canvas = viewer.window._qt_viewer.canvas.native
    zoom = viewer.camera.zoom
    lo, hi = full.contrast_limits
    centre = (canvas.width() // 2, canvas.height() // 2)
    _canvas_drag(viewer, centre, (centre[0] + 200, centre[1]))  # right: twice the width, same level
    assert viewer.camera.zoom == pytest.approx(zoom)  # the drag did not zoom
    new_lo, new_hi = full.contrast_limits
    assert new_hi - new_lo == pytest.approx(2 * (hi - lo), rel=0.01)
    assert (new_lo + new_hi) / 2 == pytest.approx((lo + hi) / 2, abs=0.01 * (hi - lo))
    assert tuple(low.contrast_limits) == tuple(full.contrast_limits)  # linked

    canvas.setFocus()
    viewer.layers.selection.active = low
    QTest.keyClick(canvas, Qt.Key.Key_2)  # lung
    qtbot.waitUntil(lambda: tuple(full.contrast_limits) == contrast_limits("lung"), timeout=2000)
    assert tuple(low.contrast_limits) == contrast_limits("lung")

    status = low.get_status(viewer.dims.point, world=True)  # what napari puts in the status bar
    viewer.status = status
    assert viewer.status["coordinates"].endswith(" HU")


def test_pictures_of_the_layout_the_comparison_and_the_navigator(room, qtbot, tmp_path: Path) -> None:
    viewer, widgets, full, low = room
    den = widgets["denoise"]
    den.image_combo.setCurrentText(low.name)
    den.device_combo.setCurrentText("cpu")
    den.select_model("tiny")
    den.set_threshold(0.05)
    with qtbot.waitSignal(den.job_finished, timeout=60000):
        assert den.run() is not None
    assert widgets["navigator"].table.rowCount() > 0  # the new detections are up for review
    demo.draw_rois(viewer, widgets["roi"], 1, full.name)
    paths = demo.take_pictures(viewer, widgets, tmp_path, lambda w: qtbot.waitUntil(lambda: not w.busy, timeout=20000))
    assert [p.name for p in paths] == list(demo.PICTURES)
    from imageio.v3 import imread

    pictures = [imread(p) for p in paths]
    for pic in pictures:
        assert pic.shape[:2] == (HEIGHT, WIDTH)
        assert pic[200:700, 400:1200].std() > 5  # the canvas shows an image, not an empty frame
    assert not np.array_equal(pictures[0], pictures[1])  # the comparison is a different view
    nav = widgets["navigator"]
    assert any(f.status == "accepted" for f in nav.findings)


def test_docks_opened_before_the_window_is_shown_settle_as_tabs(make_napari_viewer, qtbot, model_dir: Path) -> None:
    """Regression: a script made its viewer with show=False, opened every dock and then showed the
    window: the forms stood one under another in a 50 px column and the tables side by side, none tabbed (a dock
    of a hidden window counted as closed)."""
    viewer = make_napari_viewer(show=False)
    viewer.window.resize(WIDTH, HEIGHT)
    viewer.add_image(ct_volume(seed=1), name="Chest 5mm", scale=SCALE, metadata={"hu": True})
    widgets = demo.open_reading_room(viewer)
    qtbot.wait(50)
    viewer.window.show()
    main = viewer.window._qt_window
    right = [dock_of(widgets[k]) for k in ("load", "denoise", "finetune")]
    bottom = [dock_of(widgets[k]) for k in ("navigator", "roi")]
    qtbot.waitUntil(lambda: set(main.tabifiedDockWidgets(right[0])) == set(right[1:])
                    and set(main.tabifiedDockWidgets(bottom[0])) == set(bottom[1:]), timeout=5000)  # fmt: skip
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: canvas.width() >= 0.6 * main.width(), timeout=5000)
    assert dock_of(widgets["denoise"]).width() >= 200
    left = Qt.DockWidgetArea.LeftDockWidgetArea  # a dock the reader moves stays there when the window shows again
    main.addDockWidget(left, dock_of(widgets["roi"]))
    viewer.window._qt_window.hide()
    viewer.window.show()
    qtbot.wait(100)
    assert main.dockWidgetArea(dock_of(widgets["roi"])) == left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a display is an X or Wayland server on Linux only")
def test_the_demo_without_a_display_says_so_in_one_line_and_never_overwrites(tmp_path, monkeypatch, capsys) -> None:
    """Regression: `python -m napari_lidnet.demo --headless` without a display aborted with Qt's page
    of text (exit 134), and a second headless run overwrote the first one's outputs in its --out folder."""
    for key in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(key, raising=False)
    out = tmp_path / "demo-out"
    assert demo.main(["--headless", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo: no display to open napari on") and "xvfb-run" in err and "\n" not in err
    assert not out.exists()
    assert demo.display_problem({"DISPLAY": ":99"}) == ""
    assert demo.free_folder(out) == out  # new
    out.mkdir()
    assert demo.free_folder(out) == out  # empty
    (out / "report.md").write_text("an earlier run")
    (tmp_path / "demo-out-2").mkdir()
    (tmp_path / "demo-out-2" / "report.md").write_text("another")
    assert demo.free_folder(out) == tmp_path / "demo-out-3"
    assert "holds earlier outputs (never overwritten): writing" in capsys.readouterr().err
