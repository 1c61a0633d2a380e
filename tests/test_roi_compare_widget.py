"""ROI comparison dock widget in a real headless napari viewer (run under xvfb-run)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_lidnet._widgets.roi_compare import COLUMNS, ROICompareWidget, format_value, write_csv
from napari_lidnet.metrics.roi import Region, compare_regions

COL = {key: i for i, (key, _) in enumerate(COLUMNS)}


def corners(r0, c0, r1, c1):
    return np.array([[r0, c0], [r1, c0], [r1, c1], [r0, c1]], dtype=float)


def table_rows(widget):
    """(region, image) -> {key: raw value} from the table's cells; checks the text shown matches the value."""
    out = {}
    t = widget.table
    for r in range(t.rowCount()):
        row = {}
        for key, c in COL.items():
            item = t.item(r, c)
            value = item.data(Qt.ItemDataRole.UserRole)
            assert item.text() == format_value(value)
            row[key] = value
        out[(row["region"], row["image"])] = row
    return out


def wait_new(qtbot, widget, gen, timeout=15000):
    qtbot.waitUntil(lambda: widget.generation > gen and widget._worker is None, timeout=timeout)


@pytest.fixture
def images2d():
    rng = np.random.default_rng(0)
    clean = np.full((128, 128), 40.0, np.float32)
    yy, xx = np.mgrid[:128, :128]
    clean[(yy - 64) ** 2 + (xx - 64) ** 2 < 20**2] = 100.0
    noisy = clean + rng.normal(0, 20, clean.shape).astype(np.float32)
    return clean, noisy


def test_table_matches_pure_functions_refreshes_and_exports(make_napari_viewer, qtbot, tmp_path, images2d):
    clean, noisy = images2d
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="noisy")
    viewer.add_image(clean, name="clean")
    coarse = noisy[::2, ::2].copy()
    viewer.add_image(coarse, name="coarse", scale=(2, 2))  # same world extent, half the pixels
    widget = ROICompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    shapes = viewer.add_shapes(name="regions")
    widget.reference_combo.setCurrentText("clean")
    gen = widget.generation
    shapes.add_rectangles(np.array([[5, 10], [40, 60]]))  # away from the disc
    shapes.add_ellipses(np.array([[64, 64], [20, 20]]))  # centre and radii -> bounding box 44..84
    qtbot.waitUntil(lambda: widget.generation > gen and widget.table.rowCount() == 6, timeout=10000)

    regions = [Region("#0", "rectangle", corners(5, 10, 40, 60)), Region("#1", "ellipse", corners(44, 44, 84, 84))]
    expect = compare_regions({"noisy": noisy, "clean": clean}, regions, reference="clean", window=(-160, 240))
    got = table_rows(widget)
    for e in expect:
        g = got[(e["region"], e["image"])]
        for key in ("mean", "sd", "snr", "rmse", "psnr", "ssim"):
            assert g[key] == pytest.approx(e[key], rel=1e-6, nan_ok=True), key
        assert g["note"] == e["note"]
    assert got[("#0", "noisy")]["sd"] == pytest.approx(20, rel=0.06)
    assert got[("#1", "clean")]["mean"] == pytest.approx(100.0, rel=0.03)
    # the scaled image: world rectangle 5..40 x 10..60 is pixels 2.5..20 x 5..30 -> centres 3..19 x 5..29
    c0 = got[("#0", "coarse")]
    assert c0["mean"] == pytest.approx(float(coarse[3:20, 5:30].mean()), rel=1e-5)
    assert "differs from reference" in c0["note"] and math.isnan(c0["rmse"])

    # background region -> CNR
    gen = widget.generation
    widget.set_background(1)
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)
    m_bg, s_bg = got[("#1", "noisy")]["mean"], got[("#1", "noisy")]["sd"]
    assert got[("#0", "noisy")]["cnr"] == pytest.approx(abs(got[("#0", "noisy")]["mean"] - m_bg) / s_bg)
    assert "background region" in got[("#1", "noisy")]["note"]

    # move the rectangle: the table follows
    gen = widget.generation
    shapes.data = [corners(70, 70, 110, 120), shapes.data[1]]
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)
    m = np.zeros_like(clean, bool)
    m[70:110, 70:120] = True
    assert got[("#0", "noisy")]["mean"] == pytest.approx(float(noisy[m].mean()), rel=1e-5)

    # uncheck an image: its rows go
    gen = widget.generation
    widget.image_list.findItems("coarse", Qt.MatchFlag.MatchExactly)[0].setCheckState(Qt.CheckState.Unchecked)
    wait_new(qtbot, widget, gen)
    assert widget.table.rowCount() == 4

    # plots run on every kind without raising
    for kind in range(widget.plot_kind.count()):
        widget.plot_kind.setCurrentIndex(kind)
    assert widget.figure.axes[0].lines  # the NPS curves

    out = widget.write_csv(tmp_path / "roi.csv")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and rows[0]["region"] == "#0" and rows[0]["image"] == "noisy"
    assert float(rows[0]["mean"]) == pytest.approx(got[("#0", "noisy")]["mean"])
    assert rows[0]["slice"] == ""


def test_volume_regions_slices_lines_and_perceptual(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    rng = np.random.default_rng(1)
    vol = (np.arange(5, dtype=np.float32)[:, None, None] * 10 + rng.normal(0, 5, (5, 64, 64))).astype(np.float32)
    ref = np.broadcast_to(np.arange(5, dtype=np.float32)[:, None, None] * 10, vol.shape).copy()
    viewer = make_napari_viewer()
    viewer.add_image(vol, name="low")
    viewer.add_image(ref, name="full")
    widget = ROICompareWidget(viewer)
    shapes = viewer.add_shapes(ndim=3, name="boxes")
    gen = widget.generation
    shapes.add_rectangles(np.array([[2, 10, 10], [2, 10, 40], [2, 40, 40], [2, 40, 10]]))
    shapes.add_lines(np.array([[2, 5, 5], [2, 20, 20]]))
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)
    assert got[("#0", "low")]["slice"] == 2
    assert got[("#0", "low")]["mean"] == pytest.approx(float(vol[2, 10:40, 10:40].mean()), rel=1e-5)
    assert got[("#0", "low")]["sd"] == pytest.approx(5, rel=0.1)
    assert got[("#1", "")]["note"] == "line encloses no area; ignored"

    # a 2D shape over the volume takes the viewer's current slice
    flat = viewer.add_shapes(name="flat")
    widget.shapes_combo.setCurrentText("flat")
    viewer.dims.set_current_step(0, 3)
    gen = widget.generation
    flat.add_rectangles(np.array([[20, 20], [30, 30]]))
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)
    assert got[("#0", "low")]["slice"] == 3
    assert "slice 3 (the viewer's current slice)" in got[("#0", "low")]["note"]
    assert got[("#0", "low")]["mean"] == pytest.approx(float(vol[3, 20:30, 20:30].mean()), rel=1e-5)

    # ROI perceptual distance: a note without detector weights, a value once a user detector exists
    from napari_lidnet.models import roi_perceptual
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.registry import MODEL_DIR_ENV, default_model
    from napari_lidnet.models.weights import save_weights

    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    roi_perceptual.clear_cache()
    try:
        widget.reference_combo.setCurrentText("full")
        gen = widget.generation
        widget.perceptual_check.setChecked(True)
        wait_new(qtbot, widget, gen, timeout=60000)
        low = table_rows(widget)[("#0", "low")]
        if default_model("detector") is None:
            assert "ROI perceptual: no detector weights" in low["note"] and math.isnan(low["roi_perceptual"])
        save_weights(LesionDetector(width=8), tmp_path / "tiny_detector")
        roi_perceptual.clear_cache()
        gen = widget.generation
        widget.refresh()
        wait_new(qtbot, widget, gen, timeout=60000)
        got = table_rows(widget)
        assert got[("#0", "low")]["roi_perceptual"] > 0 and got[("#0", "full")]["roi_perceptual"] == 0
        assert "ROI perceptual" not in got[("#0", "low")]["note"]
    finally:
        roi_perceptual.clear_cache()


def test_write_csv_function(tmp_path):
    rows = [{"region": "#0", "image": "a", "slice": 2, "mean": 1.5, "sd": math.nan, "psnr": math.inf, "note": "x"}]
    path = write_csv(tmp_path / "t.csv", rows)
    text = path.read_text().splitlines()
    assert text[0].startswith("region,image,slice,mean,sd,n,snr")
    assert text[1].split(",")[:5] == ["#0", "a", "2", "1.5", ""] and "inf" in text[1]


def test_regions_follow_the_user_and_reference_follows_the_metadata(make_napari_viewer, qtbot, images2d):
    """The regions are the Shapes layer the user drew on last, never the detector's boxes by default; the
    reference is the normal-dose image the low-dose layer names; "New ROI layer" draws transparent, coloured,
    labelled regions."""
    clean, noisy = images2d
    viewer = make_napari_viewer()
    viewer.add_image(clean, name="Chest 5mm", metadata={"hu": True})
    viewer.add_image(noisy, name="Chest 5mm 25% dose", metadata={"hu": True, "normal_dose": "Chest 5mm"})
    widget = ROICompareWidget(viewer)
    assert widget.reference_combo.currentText() == "Chest 5mm"  # recorded by the simulation, not "(none)"

    detections = viewer.add_shapes(
        [corners(10, 10, 30, 30)], name="Chest 5mm lesions", metadata={"lidnet_role": "detections"}
    )
    assert widget.shapes_combo.currentData() is None and widget.rows == []  # not computed, not chosen
    texts = [widget.shapes_combo.itemText(i) for i in range(widget.shapes_combo.count())]
    assert "raw detections: Chest 5mm lesions" in texts  # choosable, and says what it is

    mine = viewer.add_shapes(name="my regions")
    viewer.add_shapes(name="newer")
    assert widget.shapes_combo.currentData() == "newer"  # a new user layer: the user is about to draw on it
    gen = widget.generation
    mine.add_rectangles(np.array([[5, 10], [40, 60]]))  # drawing on a layer makes it the source
    wait_new(qtbot, widget, gen)
    assert widget.shapes_combo.currentData() == "my regions" and {r["region"] for r in widget.rows} == {"#0"}
    detections.add_rectangles(np.array([[50, 50], [60, 60]]))  # the detector's layer never takes over
    assert widget.shapes_combo.currentData() == "my regions"

    widget.reference_combo.setCurrentText("(none)")
    widget.reference_combo.activated.emit(0)  # the user's pick stays
    viewer.add_image(noisy, name="third", metadata={"hu": True})
    assert widget.reference_combo.currentText() == "(none)"

    roi = widget.new_roi_layer()
    assert widget.shapes_combo.currentData() == roi.name and roi.mode == "add_rectangle"
    assert viewer.layers.selection.active is roi and roi.metadata["lidnet_role"] == "roi"
    gen = widget.generation
    roi.add_rectangles(np.array([[5, 10], [40, 60]]))
    roi.add_ellipses(np.array([[64, 64], [20, 20]]))
    wait_new(qtbot, widget, gen)
    assert list(roi.features["name"]) == ["R1", "R2"]  # a label per region, shown as text
    assert list(roi.text.values) == ["R1", "R2"]
    np.testing.assert_allclose(roi.face_color[:, 3], 0)  # transparent: the lesion stays visible
    assert not np.allclose(roi.edge_color[0], roi.edge_color[1])  # a colour per region
    assert {r["region"] for r in widget.rows} == {"#0 R1", "#1 R2"}
