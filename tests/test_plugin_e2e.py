"""The installed plugin end to end, through its manifest, on the shipped default weights.

Open the sample through napari's sample menu, add the dock widgets through the manifest, denoise and detect the
whole volume, and check the result against the ground truth at the quality the shipped model card records.
"""

import numpy as np
import pytest

from napari_lidnet.layer_data import shapes_to_boxes
from napari_lidnet.metrics.froc import box_iou_np
from napari_lidnet.metrics.image import METRIC_WINDOW, psnr
from napari_lidnet.models.registry import default_model
from napari_lidnet.models.weights import default_threshold

PLUGIN = "napari-lidnet"
LOW = "low-dose CT (25%)"


def test_shipped_weights_are_in_the_package():
    for kind in ("denoiser", "detector"):
        info = default_model(kind)
        assert info is not None and info.shipped, f"no shipped default {kind}"
        assert info.card["training"]["commands"], "the card records the commands that made it"


def test_sample_denoised_and_lesions_boxed_through_the_manifest(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "abdomen_lowdose")
    assert {LOW, "full-dose CT", "lesions (ground truth)"} <= {ly.name for ly in viewer.layers}
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise and detect")
    _, roi = viewer.window.add_plugin_dock_widget(PLUGIN, "ROI compare")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Load CT")
    assert widget.image_combo.currentText() == LOW  # the image opened to denoise, not its reference
    widget.scope_combo.setCurrentText("all slices")
    widget.device_combo.setCurrentText("cpu")
    assert widget.threshold == pytest.approx(default_threshold(default_model("detector").card), abs=0.006)
    with qtbot.waitSignal(widget.job_finished, timeout=300_000):
        assert widget.run() is not None, widget.status.text()

    low = np.asarray(viewer.layers[LOW].data)
    full = np.asarray(viewer.layers["full-dose CT"].data)
    den_layer = viewer.layers[f"{LOW} denoised"]
    assert den_layer.data.shape == low.shape
    np.testing.assert_allclose(den_layer.scale, viewer.layers[LOW].scale)
    gain = np.mean(
        [
            psnr(d, f, window=METRIC_WINDOW) - psnr(x, f, window=METRIC_WINDOW)
            for d, x, f in zip(np.asarray(den_layer.data), low, full)
        ]
    )
    assert gain > 1.0, f"denoising gained only {gain:.2f} dB on the sample"

    truth = shapes_to_boxes(viewer.layers["lesions (ground truth)"])
    found = shapes_to_boxes(viewer.layers[f"{LOW} lesions"])
    assert len(found) > 0
    hits = 0
    for z, *box in truth:
        same = found[found[:, 0] == z, 1:5]
        hits += bool(len(same)) and box_iou_np(np.array([box]), same).max() >= 0.5
    card = default_model("detector").card["metrics"]["test"]["denoised"]
    # the shipped detector's held-out sensitivity at 8 FP/slice bounds what its default threshold may find
    assert len(truth) > 0 and card["sens@8"] > 0.5, card  # a bound that means something
    assert hits >= 1 and hits / len(truth) >= 0.5 * card["sens@8"], (hits, len(truth), card)

    # Flip through the dock napari made (it hands plugins proxies of its layers): one image at a time, every press,
    # and F works while the lesions layer is active (napari's Shapes layer has its own F)
    low_layer, den = viewer.layers[LOW], viewer.layers[f"{LOW} denoised"]
    widget.compare_button.click()
    seen = []
    for press in range(4):
        if press == 2:
            viewer.layers.selection.active = viewer.layers[f"{LOW} lesions"]
            key = viewer.window._qt_viewer.canvas._key_map_handler
            key.press_key("f")
            key.release_key("f")
        else:
            widget.flip_button.click()
        seen.append((low_layer.visible, den.visible))
    assert seen == [(True, False), (False, True), (True, False), (False, True)], seen

    # a current-slice run after the volume run updates that slice inside the volume's outputs (same lesions layer)
    widget.compare_button.click()
    lesions = viewer.layers[f"{LOW} lesions"]
    widget.scope_combo.setCurrentText("current slice")
    with qtbot.waitSignal(widget.job_finished, timeout=300_000):
        assert widget.run() is not None, widget.status.text()
    assert list(widget._last["result"].slices) == list(range(low.shape[0]))
    assert viewer.layers[f"{LOW} lesions"] == lesions and viewer.layers[f"{LOW} denoised"].data.shape == low.shape
    qtbot.waitUntil(lambda: not roi.busy, timeout=60_000)  # its table's work ends before the viewer does
    # (run alone, a table computation the last run scheduled outlived the test and aborted the interpreter at exit)


def test_reader_opens_dicom_through_napari(make_napari_viewer, two_series_dir):
    viewer = make_napari_viewer()
    layers = viewer.open(str(two_series_dir["root"]), plugin=PLUGIN)
    assert len(layers) == 2 and all(ly.data.dtype == np.float32 for ly in layers)
    assert layers[0].metadata["affine_lps"].shape == (4, 4)


@pytest.mark.parametrize("name", ["Denoise and detect", "ROI compare", "Fine-tune", "Load CT"])
def test_every_widget_docks_from_the_manifest(make_napari_viewer, name):
    from qtpy.QtWidgets import QWidget

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    assert isinstance(widget, QWidget)
    assert any(name in key for key in viewer.window.dock_widgets), list(viewer.window.dock_widgets)


#: controls whose text says all they do
SAY_WHAT_THEY_DO = {"File…", "Folder…", "Open", "Run", "Cancel", "Stop", "Start fine-tuning", "Advanced"}


@pytest.mark.parametrize("name", ["Load CT", "Denoise and detect", "ROI compare", "Fine-tune", "Lesion navigator"])
def test_every_control_whose_use_is_not_in_its_name_has_a_tooltip(make_napari_viewer, name):
    """Pickers, number fields, check boxes, lists and buttons (but Open, Run, Cancel ...) say on hover what they do
    and in what unit."""
    from qtpy.QtWidgets import (
        QAbstractSpinBox,
        QCheckBox,
        QComboBox,
        QLineEdit,
        QListWidget,
        QPushButton,
        QSlider,
        QToolButton,
    )

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    kinds = (QPushButton, QToolButton, QComboBox, QAbstractSpinBox, QCheckBox, QListWidget, QLineEdit, QSlider)
    silent = [
        f"{type(c).__name__} {getattr(c, 'text', lambda: '')() or c.accessibleName()!r}"
        for c in widget.findChildren(kinds)
        if not c.toolTip()
        and not (isinstance(c, QLineEdit) and isinstance(c.parent(), (QAbstractSpinBox, QComboBox)))  # their parts
        and not (isinstance(c, QPushButton | QToolButton) and c.text() in SAY_WHAT_THEY_DO)
    ]
    assert not silent, silent


def test_the_docks_plots_are_drawn_in_the_viewer_s_theme(make_napari_viewer):
    """ROI compare's and Fine-tune's plots take the theme's panel colour and text colour, and follow a change of
    theme (white plots were a bright patch in the dark theme, their black text unreadable on its panels)."""
    from matplotlib.colors import same_color
    from napari.utils.theme import get_theme

    from napari_lidnet._widgets._canvas import paint_theme

    viewer = make_napari_viewer()
    roi = viewer.window.add_plugin_dock_widget(PLUGIN, "ROI compare")[1]
    tune = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")[1]
    roi.update_plot()  # (empty bars: axes with ticks)
    for theme in ("dark", "light", "dark"):
        viewer.theme = theme
        colours = get_theme(theme)
        for figure in (roi.figure, tune.plot.figure):
            assert same_color(figure.get_facecolor(), colours.foreground.as_hex())
            ticks = figure.axes[0].yaxis.get_tick_params()
            assert same_color(ticks["labelcolor"], colours.text.as_hex())
            assert same_color(figure.axes[0].yaxis.label.get_color(), colours.text.as_hex())
    tune.plot.add_record({"stage": "estimate", "step": 5, "estimates": {  # the self-supervised run's panel, redrawn
        "input": {"noise_sd_hu": 20.0, "edge_sharpness_hu_per_mm": 90.0},
        "adapted": {"noise_sd_hu": 8.0, "edge_sharpness_hu_per_mm": 85.0}}})  # fmt: skip
    assert same_color(tune.plot.ax_val.xaxis.label.get_color(), get_theme("dark").text.as_hex())
    legend = tune.plot.ax_loss.legend(["loss"])  # a legend in the dark theme: its frame as dark as the panel
    paint_theme(tune.plot.figure, "dark")
    assert same_color(legend.get_frame().get_facecolor()[:3], get_theme("dark").foreground.as_hex())
