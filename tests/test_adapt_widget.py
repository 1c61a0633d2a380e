"""The Fine-tune widget's source "low-dose scans only (self-supervised)" in a headless viewer (run under xvfb-run):
a real short run that exports a model, Stop mid-run, and input the guard rails refuse before anything starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_finetune_widget import make_widget, wait_done

from napari_lidnet._training.selfsup import AdaptOutcome
from napari_lidnet._widgets.finetune import NO_BOXES_ITEM, FineTuneWidget
from napari_lidnet.layer_data import boxes_to_shapes
from napari_lidnet.models.registry import list_models
from napari_lidnet.models.weights import load_weights

SLICE_MM, LESION_SLICE = 2.5, 3


@pytest.fixture(scope="module")
def low_dose() -> tuple[np.ndarray, float, np.ndarray]:
    """(7, 96, 96) simulated low-dose abdomen (the same anatomy on every slice, independent noise), its pixel
    size and lesion boxes (N, 5) on slice ``LESION_SLICE``."""
    from napari_lidnet.sim.lowdose import simulate_low_dose
    from napari_lidnet.sim.phantom import make_phantom

    ph = make_phantom(0, "abdomen", size=96)
    hu = simulate_low_dose(np.repeat(ph.hu[None], 7, axis=0), 0.1, ph.spacing_mm, seed=1)
    boxes = np.hstack([np.full((len(ph.boxes), 1), LESION_SLICE, np.float32), ph.boxes])
    return hu.astype(np.float32), float(ph.spacing_mm), boxes


def add_scan(viewer, hu: np.ndarray, pixel_mm: float, name: str = "low-dose scan", **metadata):
    return viewer.add_image(hu, name=name, scale=(SLICE_MM, pixel_mm, pixel_mm), metadata={"hu": True, **metadata})


def adapt_widget(viewer, qtbot, name: str, steps: int) -> FineTuneWidget:
    widget = make_widget(viewer, qtbot, name)
    widget.set_source("adapt")
    widget.start_denoiser_combo.setCurrentText("tiny (user)")  # small and fast for the test
    widget.adapt_steps_spin.setValue(steps)
    return widget


def model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_adapts_on_low_dose_layers_and_exports_the_named_model(
    make_napari_viewer, qtbot, model_dir: Path, low_dose
) -> None:
    hu, pixel_mm, boxes = low_dose
    viewer = make_napari_viewer()
    add_scan(viewer, hu, pixel_mm)
    geo = {"scale": (SLICE_MM, pixel_mm, pixel_mm)}
    viewer.add_shapes(boxes_to_shapes(boxes, 3), shape_type="rectangle", name="lesions", **geo)
    widget = adapt_widget(viewer, qtbot, "site-c", steps=10)
    # defaults: the low-dose layer, the hand-drawn boxes; what this source does not use is off
    assert widget.data_box.adapt_images() == ["low-dose scan"]
    assert widget.adapt_boxes_combo.currentText() == "lesions"
    assert widget.scheme_combo.currentData() == "neighbours"
    assert not widget.rounds_spin.isEnabled() and not widget.start_detector_combo.isEnabled()
    assert widget.patch_spin.isEnabled() and widget.start_button.text() == "Start adapting"
    widget.start_button.click()
    worker = widget.worker
    assert worker is not None, widget.status.text()
    wait_done(widget, qtbot, worker)
    out = widget.outcome
    assert isinstance(out, AdaptOutcome) and out.status == "finished", widget.status.text()
    # exported under the typed name in the user folder, with what it saw and measured on its card
    model, card = load_weights(model_dir / "site-c_denoiser")
    sup = card["training"]["selfsup"]
    assert sup["steps_done"] == 10 and sup["lesion_boxes"] == len(boxes) and sup["scheme"] == "neighbours"
    assert sup["data"][0]["name"] == "low-dose scan" and sup["data"][0]["shape"] == [7, 96, 96]
    assert sup["data"][0]["pixel_mm"] == pytest.approx(pixel_mm)
    assert "site-c_denoiser" in {m.name for m in list_models("denoiser")}
    # the plot got the loss of every step and the no-reference estimates before, during and after
    assert [s for s, _ in widget.plot.losses["D self-supervised"]] == list(range(1, 11))
    est = widget.plot.estimates
    assert [s for s, _, _ in est["input"]] == [0] and [s for s, _, _ in est["start"]] == [0]
    assert [s for s, _, _ in est["adapted"]] == [2, 4, 6, 8, 10]
    assert all(np.isfinite(p[1:]).all() for series in est.values() for p in series)
    assert widget.overall_bar.value() == widget.overall_bar.maximum() == 10
    # the summary of adapt_summary, the new model offered as a start, the name renewed for the next click
    text = widget.status.text()
    assert text.startswith("saved site-c_denoiser; noise SD ") and "(adapted) HU/mm" in text, text
    assert "site-c (user)" in [
        widget.start_denoiser_combo.itemText(i) for i in range(widget.start_denoiser_combo.count())
    ]
    assert widget.name_edit.text() != "site-c"
    # the other sources get their settings back
    widget.set_source("layers")
    assert widget.rounds_spin.isEnabled() and widget.start_detector_combo.isEnabled()


def test_stop_mid_run_saves_a_whole_model_and_returns_to_idle(
    make_napari_viewer, qtbot, model_dir: Path, low_dose
) -> None:
    hu, pixel_mm, _ = low_dose
    viewer = make_napari_viewer()
    add_scan(viewer, hu, pixel_mm)
    widget = adapt_widget(viewer, qtbot, "halfway", steps=400)
    assert widget.adapt_boxes_combo.currentText() == NO_BOXES_ITEM

    def on_record(rec: dict) -> None:
        if rec["stage"] == "adapt" and rec["step"] == 3:
            widget.stop_button.click()

    worker = widget.start()
    assert worker is not None, widget.status.text()
    worker.yielded.connect(on_record)
    wait_done(widget, qtbot, worker)
    out = widget.outcome
    assert out.status == "stopped" and 3 <= out.steps_done < 400, widget.status.text()
    # a whole pair, loadable, and no temporary or partial file next to it
    assert model_files(model_dir) == sorted(
        [f"tiny_{k}.{e}" for k in ("denoiser", "detector") for e in ("json", "safetensors")]
        + ["halfway_denoiser.json", "halfway_denoiser.safetensors"]
    )
    card = load_weights(model_dir / "halfway_denoiser")[1]
    assert card["training"]["selfsup"]["stopped_early"] and card["training"]["selfsup"]["steps_done"] == out.steps_done
    assert "stopped early after" in widget.status.text()
    # idle again: Start on, Stop off, no busy bar, ready for the next run
    assert widget.worker is None and widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert widget.stage_label.text() == "stopped: saved as halfway" and widget.overall_bar.maximum() == 400


def test_input_the_guard_rails_refuse_starts_nothing(make_napari_viewer, qtbot, model_dir: Path, low_dose) -> None:
    hu, pixel_mm, _ = low_dose
    viewer = make_napari_viewer()
    add_scan(viewer, hu[:2], pixel_mm, name="two slices low")
    widget = adapt_widget(viewer, qtbot, "thin", steps=5)
    before = model_files(model_dir)
    assert widget.start() is None
    text = widget.status.text()
    assert "\n" not in text and text.startswith("cannot adapt on this data: two slices low: "), text
    assert "needs >= 3 contiguous slices, this input has 2" in text
    assert widget.worker is None and widget.start_button.isEnabled() and not widget.records
    # slice positions the reader stored on the layer are used: a gap splits the series into runs of 2
    viewer.layers.clear()
    add_scan(viewer, hu[:6], pixel_mm, name="gappy low", slice_positions_mm=[0.0, 2.5, 10.0, 12.5, 20.0, 22.5])
    assert widget.start() is None
    assert "gappy low: slice gaps of up to 7.5 mm" in widget.status.text(), widget.status.text()
    # a layer recorded as normal dose (the sample's full-dose CT) would teach the wrong noise: refused
    viewer.layers.clear()
    add_scan(viewer, hu[:6], pixel_mm, name="full-dose CT", dose=1.0)
    widget.data_box.set_adapt_images(["full-dose CT"])
    assert widget.start() is None
    assert "full-dose CT: its metadata says normal dose" in widget.status.text(), widget.status.text()
    # an image that is not CT in HU (otherwise it trains and saves a model): refused, as the other
    # sources and `lidnet adapt` refuse it
    viewer.layers.clear()
    add_scan(viewer, np.abs(hu[:6]) + 1.0, pixel_mm, name="positive only")
    widget.data_box.set_adapt_images(["positive only"])
    assert widget.start() is None
    assert "'positive only': no pixel below -50 HU" in widget.status.text(), widget.status.text()
    # no starting denoiser: said, nothing started
    widget.start_denoiser_combo.setCurrentIndex(widget.start_denoiser_combo.count() - 1)
    assert widget.start() is None and "choose a starting denoiser" in widget.status.text()
    assert widget.worker is None and model_files(model_dir) == before


def test_an_adapted_model_its_own_check_calls_worse_is_noted_once_and_not_selected(
    make_napari_viewer, qtbot, model_dir: Path
) -> None:
    """Regression: an adapted model whose own no-reference check found it worse was said
    twice (its .safetensors and .json each read) and selected in the Denoise dock (``worse`` read a field that an
    adapt outcome does not have)."""
    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget
    from napari_lidnet.models.denoisers import UNetDenoiser
    from napari_lidnet.models.weights import save_weights, weight_paths

    viewer = make_napari_viewer()
    denoise = DenoiseDetectWidget(viewer)
    viewer.window.add_dock_widget(denoise)
    before = denoise.denoiser_combo.currentText()
    card = {"kind": "denoiser", "metrics": {"noreference": {
        "start": {"noise_sd_hu": 10.0, "edge_sharpness_hu_per_mm": 50.0},
        "adapted": {"noise_sd_hu": 14.0, "edge_sharpness_hu_per_mm": 40.0}}}}  # fmt: skip
    save_weights(UNetDenoiser(width=4, levels=2), model_dir / "site_denoiser", card)
    widget = FineTuneWidget(viewer)
    qtbot.addWidget(widget)
    exported = [str(p) for p in weight_paths(model_dir / "site_denoiser")]
    widget._on_returned(AdaptOutcome("finished", "adapted", "site", exported=exported, card=card))
    text = widget.status.text()
    assert text.count("no-reference check found it worse") == 1 and "not selected" in text, text
    assert denoise.denoiser_combo.currentText() == before
