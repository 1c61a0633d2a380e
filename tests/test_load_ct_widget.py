"""'Load CT' dock widget in a real headless viewer (run under xvfb-run): open, window presets linked across CT
layers, the low-dose simulation as a job (progress, time left, Cancel within one slice)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_lidnet._widgets._worker_utils import dock_threads
from napari_lidnet._widgets.load_ct import LoadCTWidget
from napari_lidnet._widgets.reading_room import ReadingRoom
from napari_lidnet.io.windowing import contrast_limits


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(w)
    yield viewer, w
    qtbot.waitUntil(lambda: not w._workers and w.sim_worker is None, timeout=20000)


def scan(w, qtbot) -> None:
    """Read the path's headers, as the path field does when left, and wait for the worker that reads them."""
    assert w.refresh_series() is not None
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)


def disk_phantom(n: int | None = None, size: int = 64) -> np.ndarray:
    """A water disk in air, (size, size) or (n, size, size)."""
    yy, xx = np.mgrid[:size, :size]
    hu = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2, 40.0, -1000.0).astype(np.float32)
    return hu if n is None else np.repeat(hu[None], n, axis=0)


def test_open_picked_series_and_apply_window(widget, two_series_dir, qtbot):
    viewer, w = widget
    d = two_series_dir
    w.path_edit.setText(str(d["root"]))
    scan(w, qtbot)
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


def test_every_stored_window_of_a_series_is_a_preset(widget, qtbot, tmp_path):
    """Regression: a real abdomen stored two windows (40/300 and 300/1500); only the first was offered.
    Each further stored window is a preset once the series is open, named with its explanation."""
    from conftest import synthetic_hu, write_series

    viewer, w = widget
    windows = {"WindowCenter": ["40", "300"], "WindowWidth": ["300", "1500"],
               "WindowCenterWidthExplanation": ["WINDOW1", "WINDOW2"]}  # fmt: skip
    write_series(tmp_path / "abdomen", synthetic_hu((3, 32, 32), seed=2), series_uid="1.2.3.61", extra=windows)
    w.path_edit.setText(str(tmp_path / "abdomen"))
    scan(w, qtbot)
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert tuple(layer.contrast_limits) == (40 - 150, 40 + 150)  # the scan's own: its first window
    presets = [w.preset_combo.itemText(i) for i in range(w.preset_combo.count())]
    assert presets.count("scan's own 2: WINDOW2") == 1
    viewer.layers.selection.active = layer
    w.preset_combo.setCurrentText("scan's own 2: WINDOW2")
    w.apply_window_button.click()
    assert tuple(layer.contrast_limits) == (300 - 750, 300 + 750)


def test_nifti_files_beside_dicom_series_are_offered_and_open(widget, two_series_dir, qtbot):
    """A folder of DICOM series and NIfTI files (a converted copy beside them): each NIfTI file is a choice of the
    picker and opens as its own volume."""
    import nibabel as nib

    viewer, w = widget
    root = two_series_dir["root"]
    hu = disk_phantom(3, 32).transpose(2, 1, 0)  # NIfTI's x, y, z
    nib.save(nib.Nifti1Image(hu.astype(np.int16), np.diag([-0.8, -0.8, 2.0, 1.0])), str(root / "conv.nii.gz"))
    w.path_edit.setText(str(root))
    scan(w, qtbot)
    labels = [w.series_combo.itemText(i) for i in range(w.series_combo.count())]
    assert w.series_combo.count() == 3 and labels[-1] == "NIfTI conv.nii.gz" and "3 series found" in w.status.text()
    w.series_combo.setCurrentIndex(2)
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    layer = viewer.layers[0]
    assert layer.data.shape == (3, 32, 32) and np.isclose(layer.data.min(), -1000) and "conv" in layer.name
    np.testing.assert_allclose(layer.scale[-2:], (0.8, 0.8))


def test_a_cd_dicomdir_lists_its_series_and_opens_the_one_picked(widget, qtbot):
    """pydicom's sample CD index (DICOMDIR: CT, CR and MR series of three patients): Load CT offers the series it
    lists, and the CT head series picked opens as a volume."""
    from pydicom.data import get_testdata_file

    viewer, w = widget
    w.path_edit.setText(get_testdata_file("DICOMDIR"))
    scan(w, qtbot)
    labels = [w.series_combo.itemText(i) for i in range(w.series_combo.count())]
    assert w.series_combo.count() > 2 and any("Routine Brain" in label for label in labels)
    w.series_combo.setCurrentIndex(next(i for i, label in enumerate(labels) if "Routine Brain" in label))
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=10000)
    assert viewer.layers[0].name == "Routine Brain" and viewer.layers[0].data.shape == (4, 16, 16)


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
    assert "select a grayscale image layer" in w.status.text()


def test_broken_dicom_message_names_file(widget, tmp_path, qtbot):
    viewer, w = widget
    (tmp_path / "cut.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    w.path_edit.setText(str(tmp_path))
    w.open_button.click()
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)
    assert "cut.dcm" in w.status.text() and len(viewer.layers) == 0


def test_simulate_low_dose_adds_noisier_layer(widget, qtbot):
    viewer, w = widget
    hu = disk_phantom()
    exposure = {"CTDIvol": 18.54, "Exposure": 253, "XRayTubeCurrent": 615, "ExposureTime": 330, "KVP": 120}
    viewer.add_image(hu, name="phantom", scale=(0.8, 0.8), contrast_limits=(-160, 240),
                     metadata={"hu": True, "source_tags": exposure})  # fmt: skip
    w.sim_layer_combo.setCurrentText("phantom")
    w.dose_spin.setValue(0.25)
    w.sim_device_combo.setCurrentText("cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # torch's own default: every core
    try:
        with qtbot.waitSignal(w.simulation_finished, timeout=60000):
            w.simulate_button.click()
        cores, n = len(os.sched_getaffinity(0)), torch.get_num_threads()
        if os.environ.get("OMP_NUM_THREADS", "").strip():  # the user's choice stands
            assert n == cores
        else:  # one core left to the viewer
            assert 1 <= n <= max(1, cores - 1), (n, cores)
    finally:
        torch.set_num_threads(threads)
    low = viewer.layers["phantom 25% dose"]  # a short name: the layer list shows it whole
    assert low.data.shape == hu.shape and tuple(low.scale) == (0.8, 0.8)
    assert tuple(low.contrast_limits) == (-160, 240)
    assert low.metadata["normal_dose"] == "phantom" and low.metadata["hu"]  # ROI compare's default reference
    # the exposure it states is the simulated one (a "SIMULATED 25%" series does not keep 18.54 mGy, 253 mAs)
    assert low.metadata["source_tags"] == {**exposure, "CTDIvol": 18.54 * 0.25, "Exposure": 63, "XRayTubeCurrent": 154}
    assert viewer.layers["phantom"].metadata["source_tags"] == exposure
    yy, xx = np.mgrid[:64, :64]
    inside = (yy - 32) ** 2 + (xx - 32) ** 2 < 15**2
    assert np.std(low.data[inside]) > np.std(hu[inside]) + 1.0
    np.testing.assert_array_equal(viewer.layers["phantom"].data, hu)
    assert [r.done for r in w.sim_records][-1] == 1 and w.sim_progress.isHidden()
    body = hu > -500  # says how much noise it added, the SD to remove to compare with the normal dose
    added = float(np.std((low.data - hu)[body]))
    assert low.metadata["simulated_added_sd"] == pytest.approx(added, rel=1e-5) and added > 1.0
    assert "HU of noise added in flat tissue to the normal dose's own 0.0 HU" in w.status.text(), w.status.text()
    assert w.status.text().endswith("(Denoise: leave 0 HU)")  # a noiseless normal dose: denoise it all


def test_the_low_dose_copy_of_fine_pixels_has_a_scanner_noise_grain(widget, qtbot):
    """Regression: the copy of a 0.5 mm slice had a bone-kernel grain (bins one pixel wide). It is now the
    noise of a scanner sampling every 1 mm (``SCANNER_SAMPLING_MM``), the same draw as the simulator's."""
    from napari_lidnet._widgets._sim_job import chunk_seed
    from napari_lidnet.sim.lowdose import SCANNER_SAMPLING_MM, simulate_low_dose

    viewer, w = widget
    hu = disk_phantom()
    viewer.add_image(hu, name="fine", scale=(0.5, 0.5), metadata={"hu": True})
    w.sim_layer_combo.setCurrentText("fine")
    w.dose_spin.setValue(0.25)
    w.sim_device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(w.simulation_finished, timeout=60000):
        w.simulate_button.click()
    low = viewer.layers["fine 25% dose"].data
    kw = {"seed": chunk_seed(w.seed_spin.value(), 0), "fast": True}
    same = simulate_low_dose(hu, 0.25, 0.5, sampling_mm=SCANNER_SAMPLING_MM, **kw)
    np.testing.assert_allclose(low, same, atol=1e-3)
    legacy = simulate_low_dose(hu, 0.25, 0.5, **kw)
    inside = np.hypot(*(np.mgrid[:64, :64] - 32)) < 15
    assert np.std((low - hu)[inside]) < 0.8 * np.std((legacy - hu)[inside])  # coarser grain, fewer HU per pixel


@pytest.mark.parametrize("dose", [0.25, 0.5])
def test_the_low_dose_copy_of_a_noisy_scan_adds_the_noise_of_that_dose(widget, qtbot, dose):
    """Regression: a real chest with 37-60 HU of its own noise got 16 HU added at "25% dose" (the
    scanner model's photon count of a phantom). The copy is calibrated to the scan's own noise: a quarter of the
    dose doubles the noise SD (adds sqrt(3) times it), half the dose adds as much as the scan has."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    viewer, w = widget
    rng = np.random.default_rng(4)
    hu = disk_phantom(size=128) + rng.normal(0, 20, (128, 128)).astype(np.float32) * (disk_phantom(size=128) > -500)
    viewer.add_image(hu, name="scan", scale=(0.7, 0.7), metadata={"hu": True})
    w.sim_layer_combo.setCurrentText("scan")
    w.dose_spin.setValue(dose)
    w.sim_device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(w.simulation_finished, timeout=60000):
        w.simulate_button.click()
    low = viewer.layers[f"scan {dose:.0%} dose"]
    own, added = flat_block_noise_sds(hu, [hu, low.data - hu])
    assert own == pytest.approx(20, rel=0.1)
    assert added == pytest.approx(own * np.sqrt(1 / dose - 1), rel=0.15), (own, added)
    assert low.metadata["simulated_noise_level"].startswith(f"calibrated to the scan's own noise: {own:.1f} HU")
    assert "calibrated to the scan's own noise" in w.status.text() and "dose adds" in w.status.text()
    # regression: it advised removing the SD added over the whole body, which removed the scan's own noise too; a
    # like-for-like comparison leaves the normal dose's own noise, measured where the "leave" strength measures
    assert f"{added:.1f} HU of noise added in flat tissue to the normal dose's own {own:.1f} HU" in w.status.text()
    assert w.status.text().endswith(f"(Denoise: leave {own:.0f} HU)"), w.status.text()


def test_simulation_shows_progress_and_cancels_within_one_slice(widget, qtbot):
    """One slice per call: the bar counts slices with the time left; Cancel frees the controls at once and the
    worker stops after the slice in hand; nothing is added."""
    viewer, w = widget
    viewer.add_image(disk_phantom(12, 96), name="volume", scale=(2.5, 0.8, 0.8), metadata={"hu": True})
    w.sim_layer_combo.setCurrentText("volume")
    w.sim_device_combo.setCurrentText("cpu")
    w.sim_chunk = 1
    seen = []

    def on_record(rec):
        seen.append((rec.done, w.sim_progress.value(), w.sim_progress.maximum(), w.sim_eta.text()))
        if rec.done == 2:
            w.cancel_simulation()
            assert w.simulate_button.isEnabled() and not w.sim_cancel_button.isEnabled()  # free at once

    worker = w.simulate()
    assert worker is not None and not w.sim_progress.isHidden() and w.sim_cancel_button.isEnabled()
    worker.yielded.connect(on_record)
    with qtbot.waitSignal(w.simulation_finished, timeout=60000):
        pass
    done = [r.done for r in w.sim_records]
    assert done[:3] == [0, 1, 2] and max(done) <= 3, done  # stopped within one slice of the cancel
    first = next(s for s in seen if s[0] == 1)
    assert first[1:3] == (1, 12) and "left" in first[3]  # per slice, with the time left
    assert [ly.name for ly in viewer.layers] == ["volume"] and "cancelled" in w.status.text()


def test_a_ct_in_mm_gets_a_scale_bar_in_mm_that_the_plugins_layers_keep(make_napari_viewer, qtbot):
    """A PACS shows a scale: the reader gives a CT napari's unit mm, the reading room shows napari's scale bar
    once (hidden by the user, it stays hidden), and the low-dose copy keeps mm (a layer in pixels beside a layer in
    mm makes napari drop the units)."""
    from pydicom.data import get_testdata_file

    viewer = make_napari_viewer()
    w = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert not viewer.scale_bar.visible  # nothing in mm yet
    (ct,) = viewer.open(get_testdata_file("CT_small.dcm"), plugin="napari-lidnet")
    assert [str(u) for u in ct.units] == ["millimeter"] * 2
    assert viewer.scale_bar.visible and viewer.scale_bar.position == "bottom_left"  # the window readout: lower right
    w.sim_layer_combo.setCurrentText(ct.name)
    w.sim_device_combo.setCurrentText("cpu")
    with qtbot.waitSignal(w.simulation_finished, timeout=60000):
        w.simulate_button.click()
    low = viewer.layers[-1]
    assert low is not ct and low.units == ct.units and [str(u) for u in viewer.layers.units] == ["millimeter"] * 2
    viewer.scale_bar.visible = False  # the user's View > Scale Bar
    viewer.open(get_testdata_file("CT_small.dcm"), plugin="napari-lidnet")
    assert not viewer.scale_bar.visible
    ReadingRoom.release(viewer, w)  # the dock closed and another opened: still hidden (the reader's choice)
    LoadCTWidget(viewer)
    viewer.open(get_testdata_file("CT_small.dcm"), plugin="napari-lidnet")
    assert not viewer.scale_bar.visible
    again = make_napari_viewer()  # a viewer whose scale bar was on before: closing the dock leaves it on
    again.scale_bar.visible = True
    w2 = LoadCTWidget(again)
    again.open(get_testdata_file("CT_small.dcm"), plugin="napari-lidnet")
    ReadingRoom.release(again, w2)
    assert again.scale_bar.visible
    third = make_napari_viewer()  # shown by the room: taken off with it
    w3 = LoadCTWidget(third)
    third.open(get_testdata_file("CT_small.dcm"), plugin="napari-lidnet")
    assert third.scale_bar.visible
    ReadingRoom.release(third, w3)
    assert not third.scale_bar.visible


def test_presets_and_drag_set_one_window_on_linked_ct_layers(widget, qtbot):
    viewer, w = widget
    a = viewer.add_image(disk_phantom(3), name="a", metadata={"hu": True})
    b = viewer.add_image(disk_phantom(3), name="b", metadata={"hu": True})
    other = viewer.add_image(np.zeros((3, 64, 64)), name="mask", contrast_limits=(0, 1))  # not a CT layer
    assert tuple(a.axis_labels) == ("z", "y", "x") and viewer.dims.axis_labels[-3:] == ("z", "y", "x")
    viewer.layers.selection.active = a
    w.preset_combo.setCurrentText("lung")
    w.apply_window_button.click()
    assert tuple(a.contrast_limits) == tuple(b.contrast_limits) == contrast_limits("lung")
    assert tuple(other.contrast_limits) == (0, 1)
    b.contrast_limits = (-100, 100)  # napari's own slider on one layer: the other follows
    assert tuple(a.contrast_limits) == (-100, 100)
    viewer.layers.selection.active = b
    ReadingRoom.install(viewer).apply_preset("bone")  # what key 3 does
    assert tuple(a.contrast_limits) == contrast_limits("bone")
    w.link_check.setChecked(False)
    b.contrast_limits = (0, 50)
    assert tuple(a.contrast_limits) == contrast_limits("bone")


def test_derived_layer_names_are_short_and_cut_between_words():
    from napari_lidnet._widgets._roles import derived_name, short_name

    assert derived_name("phantom", "25% dose") == "phantom 25% dose"
    name = derived_name("CHEST 5.0 B31f LUNG WINDOW AXIAL", "25% dose")
    assert name == "CHEST 5.0 B31f LUNG… 25% dose" and len(name) <= 30  # the tag that tells layers apart stays
    assert short_name("low-dose CT (25%)") == "low-dose CT (25%)"
    assert short_name("averyveryverylongseriesdescription") == "averyveryverylongse…"
    # the " [1]" of a second study must not be cut, nor its outputs named as the first's
    assert short_name("low-dose CT (25%) [1]") == "low-dose CT (25%) [1]"
    assert short_name("CHEST 5.0 B31f LUNG WINDOW [12]") == "CHEST 5.0 B31f LUNG… [12]"


def test_simulation_source_dose_and_a_restart_after_cancel(widget, qtbot):
    """The source is never a low-dose layer by default and one is refused (its metadata says so); dose 1.0 is
    refused; after Cancel a new run starts at once; the result's source text names the simulation."""
    viewer, w = widget
    viewer.add_image(disk_phantom(3, 64), name="CT (25%)", metadata={"hu": True, "dose": 0.25, "normal_dose": "CT"})
    viewer.add_image(disk_phantom(12, 96), name="CT", scale=(2.5, 0.8, 0.8), metadata={"hu": True, "dose": 1.0,
                                                                                           "source": "a scan"})
    assert w.sim_layer_combo.currentText() == "CT"
    w.sim_layer_combo.setCurrentText("CT (25%)")
    assert w.simulate() is None and "already low dose" in w.status.text()
    w.sim_layer_combo.setCurrentText("CT")
    w.dose_spin.setValue(1.0)
    assert w.simulate() is None and "own dose" in w.status.text()
    w.dose_spin.setValue(0.5)
    w.sim_device_combo.setCurrentText("cpu")
    w.sim_chunk = 1
    first = w.simulate()
    assert first is not None
    w.cancel_simulation()
    with qtbot.waitSignal(w.simulation_finished, timeout=60000):
        second = w.simulate()  # at once, while the cancelled run may still finish its slice
        assert second is not None and second is not first, w.status.text()
    qtbot.waitUntil(lambda: "CT 50% dose" in [ly.name for ly in viewer.layers], timeout=60000)
    new = viewer.layers["CT 50% dose"]
    assert new.metadata["dose"] == 0.5 and new.metadata["normal_dose"] == "CT"
    assert new.metadata["source"].startswith("CT at 50% dose")


def test_a_window_preset_leaves_a_colour_photo_alone(widget):
    """Regression: with an RGB photo selected, a preset set an HU window on it and turned it white."""
    viewer, w = widget
    photo = viewer.add_image(np.full((32, 32, 3), 120, np.uint8), name="photo", rgb=True)
    before = tuple(photo.contrast_limits)
    w.apply_preset()
    assert tuple(photo.contrast_limits) == before and "grayscale image" in w.status.text()


def test_an_mr_series_beside_a_ct_keeps_its_own_window_and_no_hu(widget):
    """A widget review: MR_small opened beside CT_small was marked HU, so a lung preset set on the CT turned the MR
    into a white square and the status bar read "HU" over it. Now it is not a CT layer: its own window stays."""
    from pydicom.data import get_testdata_file

    from napari_lidnet import PLUGIN

    viewer, w = widget
    with pytest.warns(UserWarning, match="modality is 'MR'"):
        (mr,) = viewer.open(get_testdata_file("MR_small.dcm"), plugin=PLUGIN)
    (ct,) = viewer.open(get_testdata_file("CT_small.dcm"), plugin=PLUGIN)
    before = tuple(mr.contrast_limits)
    assert not mr.metadata["hu"] and ct.metadata["hu"] and before[1] > 1000  # its own window, not a CT one
    viewer.layers.selection.active = ct
    w.room.apply_preset("lung")
    assert tuple(ct.contrast_limits) == contrast_limits("lung") and tuple(mr.contrast_limits) == before
    assert mr not in w.room.ct_layers()


def test_the_added_noise_of_a_study_is_measured_on_a_few_slices() -> None:
    """The SD a simulation added is read on at most 16 evenly spaced slices of a volume (the whole of a 300-slice
    study held the viewer 1.2 s for this one number): within 2% of the whole volume's for stationary noise."""
    from napari_lidnet._widgets._sim_job import added_noise_sd

    rng = np.random.default_rng(2)
    normal = np.full((120, 48, 48), -1000.0, np.float32)
    normal[:, 8:40, 8:40] = 40.0
    low = normal + rng.normal(0.0, 12.0, normal.shape).astype(np.float32)
    body = normal > -500
    whole = float(np.std((low - normal)[body]))
    assert added_noise_sd(normal, low) == pytest.approx(whole, rel=0.02)
    assert added_noise_sd(normal[0], low[0]) == pytest.approx(float(np.std((low[0] - normal[0])[body[0]])))
    assert np.isnan(added_noise_sd(normal[:, :4, :4], low[:, :4, :4]))  # no tissue: not defined


def test_the_headers_are_read_off_the_viewers_thread(widget, two_series_dir, qtbot, monkeypatch):
    """Regression: a folder entered or picked had all its headers read on the viewer's thread (0.7 s for
    300 files, 2.1 s for 1500). A worker reads them now; Open on a folder not read yet reads it, then opens the
    series chosen (the first), and Open is free again after."""
    import threading

    from napari_lidnet._widgets import load_ct

    on_main, real = [], load_ct.list_series

    def spy(path):  # the real reader, and on which thread it ran
        on_main.append(threading.current_thread() is threading.main_thread())
        return real(path)

    monkeypatch.setattr(load_ct, "list_series", spy)
    viewer, w = widget
    w.path_edit.setText(str(two_series_dir["root"]))
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1 and not w._workers, timeout=10000)
    assert on_main == [False] and w.series_combo.count() == 2 and w.open_button.isEnabled()
    assert w.status.text().startswith(f"opened {viewer.layers[0].name}")
    w.path_edit.setText(str(two_series_dir["root"] / "sub"))  # one series: the path field left, then Open at once
    assert w.refresh_series() is not None and w.open_button.isEnabled()  # the press is not lost while they are read
    w.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 2 and not w._workers, timeout=10000)
    assert viewer.layers[1].name == "chest B" and on_main == [False, False] and w.open_button.isEnabled()


def test_only_the_newest_scan_fills_the_picker(widget, two_series_dir, qtbot, monkeypatch):
    """Regression: paths A, B, then A again entered while A's first scan still ran (a slow disk): both
    scans of A filled the picker (each series twice), and the first one's end let Open run before the newest."""
    import time

    from napari_lidnet._widgets import load_ct

    real = load_ct.list_series

    def slow(path):  # the real reader on a slow disk: the first scan ends last
        time.sleep(0.6 if not slow.calls else 0.1)
        slow.calls += 1
        return real(path)

    slow.calls = 0
    monkeypatch.setattr(load_ct, "list_series", slow)
    viewer, w = widget
    for path in (two_series_dir["root"], two_series_dir["root"] / "sub", two_series_dir["root"]):
        w.path_edit.setText(str(path))
        w.refresh_series()
    qtbot.waitUntil(lambda: not w._workers, timeout=10000)
    labels = [w.series_combo.itemText(i) for i in range(w.series_combo.count())]
    assert len(labels) == 2 and len(set(labels)) == 2, labels


def test_the_docks_leave_the_viewer_a_core():
    """On a busy 2-core machine torch's threads on every core run the simulation 10-40x slower than one thread,
    and the viewer stutters. The docks' jobs take every core but one; OMP_NUM_THREADS wins."""
    assert [dock_threads(n, {}) for n in (1, 2, 4, 16)] == [1, 1, 3, 15]
    assert dock_threads(16, {}, default=8) == 8  # never more than torch's own count (its physical cores)
    assert dock_threads(8, {"OMP_NUM_THREADS": "4"}) is None and dock_threads(8, {"OMP_NUM_THREADS": " "}) == 7
