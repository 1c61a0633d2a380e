"""ROI comparison dock widget in a real headless napari viewer (run under xvfb-run)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_lidnet._widgets._roi_observer import DASH, HOW_TO, OBSERVER_COLUMNS, add_observer
from napari_lidnet._widgets._roi_table import COLUMNS, format_value, write_csv
from napari_lidnet._widgets.roi_compare import ROICompareWidget
from napari_lidnet.metrics.observer import region_detectability
from napari_lidnet.metrics.roi import Region, compare_regions, shape_mask

COL = {key: i for i, (key, _) in enumerate(COLUMNS)}
OBSERVED = dict(OBSERVER_COLUMNS)


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
            if key in OBSERVED:  # text, tooltip and value (test_observer_column checks these)
                row[key] = (item.text(), item.toolTip(), value)
                continue
            if key == "area_mm2":  # a pixel count where the image has no voxel size
                row[key], row["area_text"] = value, item.text()
                continue
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
    assert not widget.table.tabKeyNavigation()  # Tab leaves the table for the plot pickers (no keyboard trap)

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
    # the region's area: the scaled image's pixels are 2 x 2 mm (17 x 25 of them); the others have no voxel size
    assert c0["area_mm2"] == pytest.approx(4.0 * 17 * 25) and c0["area_text"] == format_value(4.0 * 17 * 25)
    assert math.isnan(got[("#0", "noisy")]["area_mm2"]) and got[("#0", "noisy")]["area_text"] == f"{35 * 50} px"

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
    headers = [widget.table.horizontalHeaderItem(i).text() for i in range(widget.table.columnCount())]
    assert {"mean HU", "SD (HU)", "RMSE (HU)", "PSNR (dB)"} <= set(headers)  # units on screen

    # plots run on every kind without raising
    for kind in range(widget.plot_kind.count()):
        widget.plot_kind.setCurrentIndex(kind)
    assert widget.figure.axes[0].lines  # the NPS curves

    out = widget.write_csv(tmp_path / "roi.csv")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and rows[0]["region"] == "#0" and rows[0]["image"] == "noisy"
    assert float(rows[0]["mean_hu"]) == pytest.approx(got[("#0", "noisy")]["mean"])  # the unit in the header
    assert rows[0]["slice"] == ""
    # what the numbers were computed against travels with them
    assert rows[0]["reference"] == widget.reference_combo.currentText() and rows[0]["reference"]
    lo, hi = widget.window()
    assert rows[0]["window_hu"] == f"{lo:g}..{hi:g}" and rows[0]["pixel_mm"] == ""  # no voxel size: not "1 x 1"
    assert rows[0]["area_mm2"] == "" and rows[0]["n"] == str(40 * 50)  # no voxel size: the pixel count only
    with pytest.raises(FileExistsError):
        widget.write_csv(out)  # outputs never overwrite
    with pytest.raises(ValueError, match=r"roi.txt: give a .csv file"):
        widget.write_csv(tmp_path / "roi.txt")  # a CSV under another type's name: refused, nothing written
    assert not (tmp_path / "roi.txt").exists()


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
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.registry import MODEL_DIR_ENV, default_model
    from napari_lidnet.models.weights import save_weights

    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    widget.reference_combo.setCurrentText("full")
    gen = widget.generation
    widget.perceptual_check.setChecked(True)
    wait_new(qtbot, widget, gen, timeout=60000)
    low = table_rows(widget)[("#0", "low")]
    if default_model("detector") is None:
        assert "ROI perceptual: no detector weights" in low["note"] and math.isnan(low["roi_perceptual"])
    save_weights(LesionDetector(width=8), tmp_path / "tiny_detector")
    gen = widget.generation
    widget.refresh()
    wait_new(qtbot, widget, gen, timeout=60000)
    got = table_rows(widget)
    assert got[("#0", "low")]["roi_perceptual"] > 0 and got[("#0", "full")]["roi_perceptual"] == 0
    assert "ROI perceptual" not in got[("#0", "low")]["note"]


def test_current_slice_output_compares_with_the_full_reference(make_napari_viewer, qtbot):
    """A one-slice layer placed at slice 3 of a scaled volume (as the Denoise dock's "current slice" output) gets
    RMSE/PSNR against the reference's slice 3 under a 2D region drawn there."""
    rng = np.random.default_rng(2)
    full = rng.normal(40, 10, (5, 64, 64)).astype(np.float32)
    one = full[3:4] + rng.normal(0, 15, (1, 64, 64)).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_image(full, name="full", scale=(2.5, 0.7, 0.7))
    viewer.add_image(one, name="one", scale=(2.5, 0.7, 0.7), translate=(3 * 2.5, 0, 0))
    widget = ROICompareWidget(viewer)
    widget.reference_combo.setCurrentText("full")
    viewer.dims.set_current_step(0, 3)
    flat = viewer.add_shapes(name="flat")
    gen = widget.generation
    flat.add_rectangles(np.array([[10 * 0.7, 10 * 0.7], [40 * 0.7, 40 * 0.7]]))
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)[("#0", "one")]
    err = one[0, 10:40, 10:40] - full[3, 10:40, 10:40]
    assert got["slice"] == 0 and "compared with slice 3 of the reference" in got["note"]
    assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-4)
    thin = viewer.add_image(np.concatenate([one, one]), name="thin", scale=(1.0, 0.7, 0.7),
                            translate=(3 * 2.5, 0, 0))  # 1 mm slices there: another grid  # fmt: skip
    gen = widget.generation
    widget.refresh()
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)[("#0", thin.name)]
    assert "differs from reference" in got["note"] and math.isnan(got["rmse"])


def test_write_csv_function(tmp_path):
    rows = [{"region": "#0", "image": "a", "slice": 2, "mean": 1.5, "sd": math.nan, "psnr": math.inf, "note": "x"}]
    path = write_csv(tmp_path / "t.csv", rows)
    text = path.read_text().splitlines()
    assert text[0].startswith("region,image,slice,mean_hu,sd_hu,n,snr,cnr,rmse_hu,psnr_db")  # units in the header
    tail = ",note,area_mm2,cho_d,cho_d_low,cho_d_high,cho_auc,cho_auc_low,cho_auc_high,cho_note,reference,window_hu"
    assert text[0].endswith(tail + ",background,lesion,pixel_mm")
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
    assert viewer.layers.selection.active == roi and roi.metadata["lidnet_role"] == "roi"
    gen = widget.generation
    roi.add_rectangles(np.array([[5, 10], [40, 60]]))
    roi.add_ellipses(np.array([[64, 64], [20, 20]]))
    wait_new(qtbot, widget, gen)
    assert list(roi.features["name"]) == ["R1", "R2"]  # a label per region, shown as text
    assert list(roi.text.values) == ["R1", "R2"]
    np.testing.assert_allclose(roi.face_color[:, 3], 0)  # transparent: the lesion stays visible
    assert not np.allclose(roi.edge_color[0], roi.edge_color[1])  # a colour per region
    assert {r["region"] for r in widget.rows} == {"#0 R1", "#1 R2"}


def test_observer_column(make_napari_viewer, qtbot, tmp_path):
    """A faint disc (20 HU, radius 6 px) in white noise of SD 30 HU: with a lesion ellipse and a background
    rectangle picked, the CHO d' column appears per image, equals region_detectability on the same masks, grows
    where the noise is lower and not where the image is only blurred; no pair -> a dash; a tiny background -> why."""
    from matplotlib.container import BarContainer
    from scipy.ndimage import gaussian_filter

    n = 200
    yy, xx = np.mgrid[:n, :n]
    clean = np.full((n, n), 40.0, np.float32)
    clean[(yy - 50) ** 2 + (xx - 60) ** 2 <= 36] += 20.0
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 30, (n, n)).astype(np.float32)
    images = {
        "low dose": clean + noise,
        "denoised": clean + gaussian_filter(noise, 1.0),  # an edge-preserving denoiser: noise smoothed, disc kept
        "blurred": gaussian_filter(clean + noise, 1.5),  # linear smoothing: lower SD, no more information
        "full dose": clean + rng.normal(0, 8, (n, n)).astype(np.float32),
    }
    viewer = make_napari_viewer()
    for name, image in images.items():
        viewer.add_image(image, name=name)
    widget = ROICompareWidget(viewer)
    widget.reference_combo.setCurrentText("full dose")
    shapes = viewer.add_shapes(name="regions")
    gen = widget.generation
    shapes.add_ellipses(np.array([[50, 60], [8, 8]]))  # #0: the lesion, bounding box rows 42..58, cols 52..68
    shapes.add_rectangles(np.array([[90, 10], [190, 190]]))  # #1: plain background
    shapes.add_rectangles(np.array([[150, 100], [180, 130]]))  # #2: too small for the observer
    qtbot.waitUntil(lambda: widget.generation > gen and widget.table.rowCount() == 12, timeout=10000)
    for cells in table_rows(widget).values():  # no pair yet: a dash that says how to get a value
        assert cells["cho_d"][0] == DASH and HOW_TO in cells["cho_d"][1]
    widget.set_lesion(0)
    gen = widget.generation
    widget.set_background(1)
    wait_new(qtbot, widget, gen, timeout=60000)
    got = table_rows(widget)

    lesion = shape_mask("ellipse", corners(42, 52, 58, 68), (n, n))
    background = shape_mask("rectangle", corners(90, 10, 190, 190), (n, n))
    d = {}
    for name, image in images.items():
        text, tip, value = got[("#0", name)]["cho_d"]
        direct = region_detectability(image, lesion, background)
        assert value == pytest.approx(direct.d_prime, rel=1e-6) and math.isfinite(value)
        assert text == f"{direct.d_prime:.2f} [{direct.d_ci[0]:.2f}, {direct.d_ci[1]:.2f}]"
        assert "#1" in tip and "95%" in tip
        auc_text, _, auc = got[("#0", name)]["cho_auc"]
        assert auc == pytest.approx(direct.auc) and auc_text.startswith(f"{direct.auc:.3f} [")
        assert got[("#1", name)]["cho_d"][0] == DASH and "lesion region #0" in got[("#1", name)]["cho_d"][1]
        d[name] = direct
    assert d["low dose"].d_prime < d["denoised"].d_prime < d["full dose"].d_prime
    assert d["low dose"].d_ci[0] <= d["blurred"].d_prime <= d["low dose"].d_ci[1]  # CNR would call it better
    assert got[("#0", "blurred")]["cnr"] > 2 * got[("#0", "low dose")]["cnr"]
    widget.plot_kind.setCurrentText("bars")
    widget.metric_combo.setCurrentIndex(widget.metric_combo.findData("cho_d"))  # d' bars with their intervals
    bars = {c.get_label(): c for c in widget.figure.axes[0].containers if isinstance(c, BarContainer)}
    assert bars["denoised"].patches[0].get_height() == pytest.approx(d["denoised"].d_prime)
    assert bars["denoised"].errorbar is not None and widget.figure.axes[0].get_ylabel() == "d' (CHO)"

    rows = {(r["region"], r["image"]): r for r in csv.DictReader(widget.write_csv(tmp_path / "roi.csv").open())}
    assert float(rows[("#0", "denoised")]["cho_d"]) == pytest.approx(d["denoised"].d_prime)
    assert float(rows[("#0", "denoised")]["cho_d_low"]) == pytest.approx(d["denoised"].d_ci[0])
    assert rows[("#1", "denoised")]["cho_d"] == ""

    gen = widget.generation
    widget.set_background(2)
    wait_new(qtbot, widget, gen, timeout=60000)
    text, tip, value = table_rows(widget)[("#0", "low dose")]["cho_d"]
    assert text.startswith("background region too small:") and text == tip
    assert math.isnan(value)

    gen = widget.generation
    widget.set_background(0)  # the lesion is no background
    wait_new(qtbot, widget, gen)
    text, tip, _ = table_rows(widget)[("#0", "low dose")]["cho_d"]
    assert text == DASH and "same region" in tip


def test_observer_rows_on_a_volume():
    """The worker's observer keys on a volume: the lesion's slice is judged; a background on another slice, NaN
    pixels or a noise-free image give a reason instead of a number."""
    rng = np.random.default_rng(3)
    vol = rng.normal(40, 30, (3, 160, 160)).astype(np.float32)
    yy, xx = np.mgrid[:160, :160]
    vol[1][(yy - 20) ** 2 + (xx - 20) ** 2 <= 36] += 20.0
    lesion = Region("#0", "ellipse", corners(12, 12, 28, 28), slice_index=1)
    background = Region("#1", "rectangle", corners(40, 5, 155, 155), slice_index=1)
    elsewhere = Region("#2", "rectangle", corners(40, 5, 155, 155), slice_index=2)
    regions = [lesion, background, elsewhere]
    images = {"vol": vol, "flat": np.full_like(vol, 40.0), "nan": vol.copy()}
    images["nan"][1, 0, 159] = np.nan
    rows = compare_regions(images, regions)
    by = {(r["region"], r["image"]): r for r in add_observer(rows, images, regions, 0, 1, n_boot=20)}
    direct = region_detectability(vol[1], shape_mask("ellipse", lesion.vertices, (160, 160)),
                                  shape_mask("rectangle", background.vertices, (160, 160)), n_boot=20)  # fmt: skip
    assert by[("#0", "vol")]["cho_d"] == pytest.approx(direct.d_prime) and by[("#0", "vol")]["cho_note"] == ""
    assert math.isnan(by[("#1", "vol")]["cho_d"]) and "lesion region #0" in by[("#1", "vol")]["cho_hint"]
    assert "no noise" in by[("#0", "flat")]["cho_note"] and "NaN" in by[("#0", "nan")]["cho_note"]
    by = {(r["region"], r["image"]): r for r in add_observer(rows, images, regions, 0, 2, n_boot=20)}
    assert by[("#0", "vol")]["cho_note"].startswith("lesion (slice 1) and background (slice 2) differ")
    assert math.isnan(by[("#0", "vol")]["cho_d"])
    by = {(r["region"], r["image"]): r for r in add_observer(rows, images, regions, None, 1)}
    assert by[("#0", "vol")]["cho_hint"].startswith("no lesion region chosen")


def test_regions_on_pixel_edges_count_their_pixels_and_flat_shapes_none() -> None:
    """An ROI review: on a scaled, translated image a 5 x 5 px rectangle drawn on pixel edges came back from world
    coordinates a hair past them and measured 36 pixels (a 30 x 56 one 1595 instead of 1680); a polygon through
    three points on one line measured 3 pixels; a noise-free background gave d' = 1.7e17."""
    from napari.layers import Image, Shapes

    from napari_lidnet._widgets._roi_regions import regions_from_shapes

    geo = {"scale": (2.5, 0.7, 0.7), "translate": (10, -30, -30)}
    image = Image(np.zeros((4, 96, 96), np.float32), name="a", **geo)
    shapes = Shapes(ndim=3, **geo)
    shapes.add_rectangles(np.array([[2, 50, 20], [2, 50, 76], [2, 80, 76], [2, 80, 20]], float))
    shapes.add_rectangles(np.array([[2, 10, 10], [2, 10, 15], [2, 15, 15], [2, 15, 10]], float))
    rows = compare_regions({"a": image.data}, regions_from_shapes(shapes, {"a": image}))
    assert [r["n"] for r in rows] == [1680, 25]
    assert not shape_mask("polygon", np.array([[2.0, 2.0], [6.0, 6.0], [10.0, 10.0]]), (16, 16)).any()
    flat = np.full((64, 64), 40.0)
    lesion = shape_mask("ellipse", np.array([[28.0, 28.0], [28.0, 36.0], [36.0, 36.0], [36.0, 28.0]]), flat.shape)
    with pytest.raises(ValueError, match="no noise"):
        region_detectability(flat, lesion, ~lesion, n_boot=5)


def test_findings_of_an_image_without_voxel_size_are_exported_in_pixels(tmp_path) -> None:
    from napari_lidnet.findings import Finding, write_findings

    finding = Finding(id=0, slice=0, corners=np.array([[0, 2, 2], [0, 2, 12], [0, 12, 12], [0, 12, 2]], float))
    path = write_findings(tmp_path / "f.csv", [finding], unit="px")
    header = path.read_text().splitlines()[0].split(",")
    assert "long_px" in header and not any(h.endswith("_mm") for h in header)


def test_the_background_choice_follows_its_region_when_another_is_deleted(make_napari_viewer, qtbot) -> None:
    """An ROI review: the pickers kept a position in the list, so deleting the region before the background made
    the lesion the background (CNR 0 everywhere). Now the choice follows the region's label; a deleted choice is
    no choice."""
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).normal(40, 10, (64, 64)).astype(np.float32), name="img",
                     metadata={"hu": True})  # fmt: skip
    widget = ROICompareWidget(viewer)
    roi = widget.new_roi_layer()
    gen = widget.generation
    for r0 in (4, 24, 44):
        roi.add_rectangles(np.array([[r0, 4], [r0 + 14, 40]]))
    wait_new(qtbot, widget, gen)
    widget.set_lesion(1)  # R2
    widget.set_background(2)  # R3
    gen = widget.generation
    roi.selected_data = {0}
    roi.remove_selected()  # R1 goes: R2 and R3 are now #0 and #1
    wait_new(qtbot, widget, gen)
    assert widget.lesion_combo.currentText() == "#0 R2" and widget.background_combo.currentText() == "#1 R3"
    gen = widget.generation
    roi.selected_data = {1}
    roi.remove_selected()  # the background itself goes
    wait_new(qtbot, widget, gen)
    assert widget.background_combo.currentData() is None and widget.lesion_combo.currentText() == "#0 R2"


def test_a_ct_whose_pixel_size_was_assumed_is_measured_in_pixels(make_napari_viewer, qtbot) -> None:
    """A DICOM without PixelSpacing is read at an assumed 1 mm (metadata ``spacing_assumed``; its slice spacing
    known, so its scale is not all 1): the region's area is its pixel count, not "mm²" of a guessed size."""
    viewer = make_napari_viewer()
    ct = viewer.add_image(np.full((2, 40, 50), 40.0, np.float32), name="ct", scale=(2.5, 1.0, 1.0),
                          metadata={"hu": True, "spacing_assumed": True})  # fmt: skip
    shapes = viewer.add_shapes(name="regions", ndim=3, scale=ct.scale)
    widget = ROICompareWidget(viewer)
    qtbot.addWidget(widget)
    gen = widget.generation
    shapes.add_rectangles(np.array([[0, 5, 5], [0, 5, 25], [0, 15, 25], [0, 15, 5]], float))
    wait_new(qtbot, widget, gen)
    row = table_rows(widget)[("#0", "ct")]
    assert math.isnan(row["area_mm2"]) and row["area_text"] == "200 px"
    ct.metadata = {**ct.metadata, "spacing_assumed": False}  # the reader found it: mm² (1 x 1 mm pixels)
    gen = widget.generation
    widget.refresh()
    wait_new(qtbot, widget, gen)
    assert table_rows(widget)[("#0", "ct")]["area_mm2"] == pytest.approx(200.0)


def test_each_row_says_only_its_own_placement_and_a_mirrored_copy_is_named() -> None:
    """Regression: a 2D region over three 3D images gave every row the slice notes of all three ("slice 3;
    slice -8; slice -3"); and a copy of a series stored with its columns reversed (a feet-first or prone storage,
    shown as stored) was measured at the region's viewer place, on other anatomy, without a word."""
    from napari.layers import Image, Shapes

    from napari_lidnet._widgets._roi_regions import regions_from_shapes
    from napari_lidnet.io.volume import CTVolume

    hu = np.random.default_rng(5).normal(40.0, 30.0, (6, 32, 32)).astype(np.float32)
    mirror = np.diag([-1.0, 1.0, 1.0])  # rows run to the patient's right: columns stored reversed
    vols = (CTVolume(hu, (2.5, 0.7, 0.7), (10.0, -30.0, -30.0), name="plain"),
            CTVolume(hu[:, :, ::-1], (2.5, 0.7, 0.7), (10.0, -30.0, -8.3), mirror, name="flipped"),
            CTVolume(hu[3:], (2.5, 0.7, 0.7), (17.5, -30.0, -30.0), name="later"))  # fmt: skip
    layers = {}
    for vol in vols:
        kwargs = vol.layer_kwargs()
        layers[kwargs.pop("name")] = Image(vol.hu, **kwargs)
    shapes = Shapes(ndim=2, scale=(0.7, 0.7), translate=(-30.0, -30.0))
    shapes.add_rectangles(np.array([[5, 5], [5, 12], [12, 12], [12, 5]], float))
    regions = regions_from_shapes(shapes, layers, world_point=(20.0, 0.0, 0.0))
    rows = {r["image"]: r for r in compare_regions({k: ly.data for k, ly in layers.items()}, regions)}
    assert "slice 4 (the viewer" in rows["plain"]["note"] and "slice 1" not in rows["plain"]["note"]
    assert "slice 1 (the viewer" in rows["later"]["note"] and "slice 4" not in rows["later"]["note"]
    assert rows["later"]["mean"] == pytest.approx(rows["plain"]["mean"])  # the same anatomy on both grids
    assert "columns reversed against 'plain'" in rows["flipped"]["note"]
    assert "reversed" not in rows["plain"]["note"] + rows["later"]["note"]


def test_a_region_picked_by_index_is_the_one_there_now(make_napari_viewer, qtbot, images2d) -> None:
    """A region deleted and another drawn since the last refresh: picking index 1 picks the new region there, not
    the deleted one the picker still listed at that index."""
    _clean, noisy = images2d
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="noisy")
    widget = ROICompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    shapes = viewer.add_shapes(name="regions", features={"name": np.array([], dtype=object)})
    for name, corners in (("R1", [[50, 50], [80, 80]]), ("R2", [[5, 5], [30, 30]])):
        shapes.feature_defaults["name"] = name
        shapes.add_rectangles(np.array(corners))
    widget.refresh()
    shapes.selected_data = {0}
    shapes.remove_selected()  # R2 is #0 now
    shapes.feature_defaults["name"] = "R3"
    shapes.add_rectangles(np.array([[90, 90], [120, 120]]))  # R3 is #1
    widget.set_background(1)
    assert widget.background_combo.currentData() == 1 and "R3" in widget.background_combo.currentText()
    widget.refresh()
    assert "R3" in widget.background_combo.currentText()


def test_a_background_picked_right_after_drawing_is_kept(make_napari_viewer, qtbot, images2d) -> None:
    """Regression: two regions drawn and the background picked before the table's first refresh: the pickers were
    still empty, so "(none)" was kept silently and every CNR cell stayed blank. The pickers list "(none)" from the
    start and a region drawn since the last refresh can be picked at once."""
    _clean, noisy = images2d
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="noisy")
    widget = ROICompareWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.background_combo.currentText() == widget.lesion_combo.currentText() == "(none)"
    shapes = viewer.add_shapes(name="regions")
    shapes.add_rectangles(np.array([[50, 50], [80, 80]]))
    shapes.add_rectangles(np.array([[5, 5], [30, 30]]))
    gen = widget.generation
    widget.set_background(1)  # before the debounced refresh has listed the regions
    assert widget.background_combo.currentData() == 1
    wait_new(qtbot, widget, gen)
    got = table_rows(widget)
    assert np.isfinite(got[("#0", "noisy")]["cnr"]) and "background region" in got[("#1", "noisy")]["note"]


def test_a_scans_own_annotations_are_offered_not_picked(make_napari_viewer, qtbot) -> None:
    """Regression: on the sample ROI compare picked the 16 ground-truth boxes before anything was drawn
    (48 rows, its bar labels overprinted into one strip). They are offered; picked once the reader edits them, and a
    drawn ROI layer is picked as before. Many regions' labels stand upright, at most 20 of them."""
    from napari_lidnet._sample_data import TRUTH_NAME, sample_abdomen
    from napari_lidnet.layer_data import ANNOTATIONS, ROLE

    viewer = make_napari_viewer()
    for data, kwargs, kind in sample_abdomen():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    truth = viewer.layers[TRUTH_NAME]
    assert truth.metadata[ROLE] == ANNOTATIONS
    widget = ROICompareWidget(viewer)
    offered = [widget.shapes_combo.itemData(i) for i in range(widget.shapes_combo.count())]
    assert TRUTH_NAME in offered and widget.default_regions_layer() is None
    truth.data = [truth.data[0] + [0, 1, 1], *truth.data[1:]]  # the reader moves one: now theirs to compare
    assert widget.shapes_combo.currentData() == TRUTH_NAME and widget.default_regions_layer() == TRUTH_NAME
    regions = widget.new_roi_layer()
    assert widget.shapes_combo.currentData() == regions.name
    widget.set_regions_layer(TRUTH_NAME)
    gen = widget.generation
    widget.refresh()
    wait_new(qtbot, widget, gen, timeout=60000)
    widget.plot_kind.setCurrentText("bars")
    widget.update_plot()
    labels = [t.get_text() for t in widget.figure.axes[0].get_xticklabels()]
    assert len(labels) == 16 and sum(bool(t) for t in labels) <= 20 and labels[0]
    assert all(t.get_rotation() == 90 for t in widget.figure.axes[0].get_xticklabels())


def test_the_regions_fall_back_to_the_layer_drawn_on_before(make_napari_viewer, qtbot, images2d):
    """When the regions layer goes, the regions are the layer the user drew on before it, not the newest Shapes
    layer (the dock keeps that order by the layers behind napari's proxies, which are new at each access)."""
    clean, _ = images2d
    viewer = make_napari_viewer()
    viewer.add_image(clean, name="ct", metadata={"hu": True})
    widget = ROICompareWidget(viewer)
    first, second = viewer.add_shapes(name="first"), viewer.add_shapes(name="second")
    viewer.add_shapes(name="untouched")
    first.add_rectangles(np.array([[5, 10], [40, 60]]))
    second.add_rectangles(np.array([[5, 10], [40, 60]]))
    assert widget.shapes_combo.currentData() == "second"
    viewer.layers.remove(second)
    assert widget.shapes_combo.currentData() == "first"


def test_the_navigator_s_reviewed_boxes_do_not_take_over_the_regions(make_napari_viewer, qtbot, images2d):
    """Regression: one Accept in the navigator (which writes its reviewed layer) switched ROI compare
    from the reader's two regions to the reviewed layer's box."""
    clean, _ = images2d
    viewer = make_napari_viewer()
    viewer.add_image(clean, name="ct", metadata={"hu": True})
    widget = ROICompareWidget(viewer)
    mine = viewer.add_shapes(name="my regions")
    mine.add_rectangles(np.array([[5, 10], [40, 60]]))
    mine.add_rectangles(np.array([[50, 50], [70, 70]]))
    reviewed = viewer.add_shapes(name="ct reviewed", metadata={"lidnet_role": "reviewed"})
    reviewed.data = [corners(10, 10, 30, 30)]  # as the navigator writes a kept box
    assert widget.shapes_combo.currentData() == "my regions"
    viewer.layers.remove(mine)
    assert widget.shapes_combo.currentData() is None  # the reviewed boxes are offered, not picked on their own


def test_the_reference_is_the_recorded_normal_dose_image_not_one_of_its_name(make_napari_viewer, images2d):
    """Regression: a second study's low dose took the first study's normal dose (recorded by name) as
    its reference, and a renamed normal dose was lost. The fingerprint recorded beside the name decides."""
    from napari_lidnet._widgets._roles import normal_dose_of
    from napari_lidnet.layer_data import data_key

    clean, noisy = images2d
    viewer = make_napari_viewer()
    full1 = viewer.add_image(clean, name="full", metadata={"hu": True})
    low1 = viewer.add_image(noisy, name="low", metadata={"hu": True, "normal_dose": "full",
                                                         "normal_dose_key": data_key(clean)})  # fmt: skip
    full2 = viewer.add_image(clean + 7.0, name="full", metadata={"hu": True})  # napari calls it "full [1]"
    low2 = viewer.add_image(noisy + 7.0, name="low", metadata={"hu": True, "normal_dose": "full",
                                                               "normal_dose_key": data_key(clean + 7.0)})  # fmt: skip
    assert normal_dose_of(low2, viewer.layers) == full2 and normal_dose_of(low1, viewer.layers) == full1
    widget = ROICompareWidget(viewer)
    assert widget.default_reference() == full2.name
    full1.name = "study 1 normal dose"
    assert normal_dose_of(low1, viewer.layers) == full1  # renamed, still its reference
    viewer.layers.remove(full2)
    assert normal_dose_of(low2, viewer.layers) is None  # gone: not the other study's "full"
    # not every image is fingerprinted: the Denoise dock's lazy removed-noise overlay would be computed whole
    import dask.array as da

    computed = []

    def block(b):
        computed.append(1)
        return b

    lazy = da.zeros((3, *clean.shape), chunks=(1, *clean.shape), dtype=np.float32).map_blocks(block)
    viewer.add_image(lazy, name="removed noise", metadata={"lidnet_role": "noise", "hu": True})
    shown = len(computed)  # napari draws the slice on screen
    assert normal_dose_of(low2, viewer.layers) is None and len(computed) == shown
