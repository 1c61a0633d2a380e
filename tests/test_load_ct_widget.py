"""'Load CT' dock widget in a real headless viewer (run under xvfb-run)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from napari_lidnet._widgets.load_ct import LoadCTWidget
from napari_lidnet.io.windowing import contrast_limits


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(w)
    yield viewer, w
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)


def test_open_picked_series_and_apply_window(widget, two_series_dir, qtbot):
    viewer, w = widget
    d = two_series_dir
    w.path_edit.setText(str(d["root"]))
    w.refresh_series()
    assert w.series_combo.isEnabled() and w.series_combo.count() == 2
    w.series_combo.setCurrentIndex([w.series_combo.itemData(i) for i in range(2)].index(d["uid_b"]))
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert layer.name == "chest B"
    np.testing.assert_array_equal(layer.data, d["hu_b"][::-1])
    assert tuple(layer.contrast_limits) == contrast_limits("soft tissue")
    assert "opened chest B" in w.status.text()
    assert w.sim_layer_combo.currentText() == "chest B"

    before = np.array(layer.data, copy=True)
    viewer.layers.selection.active = layer
    w.preset_combo.setCurrentText("lung")
    w.apply_window_button.click()
    assert tuple(layer.contrast_limits) == contrast_limits("lung")
    np.testing.assert_array_equal(layer.data, before)


def test_bad_path_shows_message_and_adds_nothing(widget, tmp_path, qtbot):
    viewer, w = widget
    w.path_edit.setText(str(tmp_path / "nowhere"))
    w.open_button.click()
    assert "no such file or folder" in w.status.text()
    (tmp_path / "notes.txt").write_text("x")
    w.path_edit.setText(str(tmp_path / "notes.txt"))
    w.open_button.click()
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)
    assert "not a CT file this plugin reads" in w.status.text()
    assert len(viewer.layers) == 0
    w.apply_window_button.click()
    assert "select an image layer" in w.status.text()


def test_broken_dicom_message_names_file(widget, tmp_path, qtbot):
    viewer, w = widget
    (tmp_path / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    w.path_edit.setText(str(tmp_path))
    w.open_button.click()
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)
    assert "cut.dcm" in w.status.text() and len(viewer.layers) == 0


@pytest.mark.skipif(importlib.util.find_spec("napari_lidnet.sim.lowdose") is None, reason="sim.lowdose not yet")
def test_simulate_low_dose_adds_noisier_layer(widget, qtbot):
    viewer, w = widget
    yy, xx = np.mgrid[:64, :64]
    hu = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 40.0, -1000.0).astype(np.float32)
    viewer.add_image(hu, name="phantom", scale=(0.8, 0.8), contrast_limits=(-160, 240))
    w.sim_layer_combo.setCurrentText("phantom")
    w.dose_spin.setValue(0.25)
    w.simulate_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=60000)
    low = viewer.layers["phantom (low dose 25%)"]
    assert low.data.shape == hu.shape and tuple(low.scale) == (0.8, 0.8)
    assert tuple(low.contrast_limits) == (-160, 240)
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 < 15**2
    assert np.std(low.data[inside]) > np.std(hu[inside]) + 1.0
    np.testing.assert_array_equal(viewer.layers["phantom"].data, hu)
