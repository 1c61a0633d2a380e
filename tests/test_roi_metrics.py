"""ROI masks and statistics against their formulas and against skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_lidnet.metrics.roi import (
    Placement,
    Region,
    cnr,
    compare_regions,
    line_profile,
    region_rmse_psnr,
    region_ssim,
    region_stats,
    shape_mask,
    snr,
)


def rect(r0, c0, r1, c1):
    return np.array([[r0, c0], [r1, c0], [r1, c1], [r0, c1]], dtype=float)


def test_rectangle_mask_exact_area_and_half_open_edges():
    m = shape_mask("rectangle", rect(10, 20, 40, 70), (100, 100))
    assert m.sum() == 30 * 50
    assert m[10, 20] and m[39, 69] and not m[40, 20] and not m[10, 70] and not m[9, 20]


def test_rotated_rectangle_area():
    # a 60 x 40 rectangle rotated by 30 degrees about (100, 100)
    t = np.deg2rad(30)
    u, v = np.array([np.cos(t), np.sin(t)]) * 60, np.array([-np.sin(t), np.cos(t)]) * 40
    p0 = np.array([100.0, 100.0]) - (u + v) / 2
    m = shape_mask("rectangle", np.array([p0, p0 + u, p0 + u + v, p0 + v]), (200, 200))
    assert m.sum() == pytest.approx(2400, rel=0.02)


@pytest.mark.parametrize("a,b", [(30, 30), (40, 25)])
def test_ellipse_area_from_bounding_box_corners(a, b):
    m = shape_mask("ellipse", rect(100 - a, 100 - b, 100 + a, 100 + b), (200, 200))
    assert m.sum() == pytest.approx(math.pi * a * b, rel=0.01)
    assert m[100, 100] and m[100 - a + 1, 100] and not m[100 - a - 1, 100] and not m[100, 100 + b + 1]


def test_rotated_ellipse_area():
    t = np.deg2rad(45)
    u, v = np.array([np.cos(t), np.sin(t)]) * 80, np.array([-np.sin(t), np.cos(t)]) * 40
    p0 = np.array([100.0, 100.0]) - (u + v) / 2
    m = shape_mask("ellipse", np.array([p0, p0 + u, p0 + u + v, p0 + v]), (200, 200))
    assert m.sum() == pytest.approx(math.pi * 40 * 20, rel=0.02)


def test_polygon_area_shoelace():
    tri = np.array([[10, 10], [90, 20], [50, 95]], dtype=float)
    shoelace = 0.5 * abs(np.cross(tri[1] - tri[0], tri[2] - tri[0]))
    m = shape_mask("polygon", tri, (100, 100))
    assert m.sum() == pytest.approx(shoelace, rel=0.02)


def test_a_polygon_on_a_rectangles_corners_holds_the_rectangles_pixels():
    """Regression: the same four corners drawn as a rectangle (810 px) and as a polygon (868 px): the polygon
    counted the pixel centres on all four sides. Both now hold the centres on the top and left sides only, also
    rotated in order, and a concave polygon's notch is left out."""
    corners = rect(40, 60, 67, 90)  # rows 40..67, columns 60..90 on pixel centres
    want = shape_mask("rectangle", corners, (128, 128))
    assert want.sum() == 27 * 30
    for k in range(4):
        np.testing.assert_array_equal(shape_mask("polygon", np.roll(corners, k, axis=0), (128, 128)), want)
        np.testing.assert_array_equal(shape_mask("polygon", np.roll(corners[::-1], k, axis=0), (128, 128)), want)
    turned = np.array([[10.3, 40.0], [40.0, 70.7], [70.7, 40.0], [40.0, 10.3]])  # the review: edge pixels swapped
    for k in range(4):
        np.testing.assert_array_equal(shape_mask("rectangle", np.roll(turned, k, axis=0), (128, 128)),
                                      shape_mask("polygon", turned, (128, 128)))  # fmt: skip
    bowtie = np.array([[10, 10], [30, 30], [30, 10], [10, 30]], float)  # equal lobes: zero signed area
    assert shape_mask("polygon", bowtie, (40, 40)).sum() > 150
    notch = np.array([[10, 10], [10, 30], [30, 30], [30, 20], [20, 20], [20, 10]], float)  # an L
    m = shape_mask("polygon", notch, (40, 40))
    assert m.sum() == 20 * 20 - 10 * 10 and m[10, 10] and not m[25, 15] and m[25, 25] and not m[30, 25]


def test_unknown_shape_and_bad_vertices_raise():
    with pytest.raises(ValueError, match="no area"):
        shape_mask("line", np.zeros((2, 2)), (10, 10))
    with pytest.raises(ValueError, match="4 corners"):
        shape_mask("ellipse", np.zeros((2, 2)), (10, 10))


def test_region_sd_of_uniform_noise_patch():
    rng = np.random.default_rng(0)
    img = np.full((128, 128), 50.0) + rng.normal(0, 20.0, (128, 128))
    mask = shape_mask("ellipse", rect(14, 14, 114, 114), img.shape)
    mean, sd, n = region_stats(img, mask)
    assert n == mask.sum() > 7000
    assert sd == pytest.approx(20.0, rel=0.03)
    assert mean == pytest.approx(50.0, abs=1.0)
    assert sd == pytest.approx(np.std(img[mask], ddof=1))


def test_a_label_mask_measures_the_pixels_it_marks_as_a_boolean_mask_does():
    """A 0/1 uint8 mask (a label image) is the region, not a list of pixel numbers; a mask of another shape is
    refused in one line."""
    rng = np.random.default_rng(2)
    img = rng.normal(40.0, 10.0, (64, 64))
    ref = img + rng.normal(0.0, 5.0, img.shape)
    labels = np.zeros(img.shape, np.uint8)
    labels[20:36, 24:40] = 1
    inside = labels.astype(bool)
    assert region_stats(img, labels) == region_stats(img, inside)
    assert region_stats(img, labels)[2] == 256
    assert region_rmse_psnr(img, ref, labels) == region_rmse_psnr(img, ref, inside)
    assert region_ssim(img, ref, labels) == region_ssim(img, ref, inside)
    with pytest.raises(ValueError, match=r"mask shape \(32, 32\) differs from the image's \(64, 64\)"):
        region_stats(img, inside[:32, :32])


def test_snr_cnr_formulas_and_rows():
    rng = np.random.default_rng(1)
    img = np.zeros((100, 100)) + rng.normal(0, 10.0, (100, 100))
    img[10:40, 10:40] += 100.0
    regions = [
        Region("lesion", "rectangle", rect(10, 10, 40, 40)),
        Region("bg", "rectangle", rect(50, 50, 90, 90)),
    ]
    rows = compare_regions({"img": img}, regions, background=1)
    m_roi, s_roi, _ = region_stats(img, shape_mask("rectangle", regions[0].vertices, img.shape))
    m_bg, s_bg, _ = region_stats(img, shape_mask("rectangle", regions[1].vertices, img.shape))
    assert snr(m_roi, s_roi) == pytest.approx(m_roi / s_roi)
    assert cnr(m_roi, m_bg, s_bg) == pytest.approx(abs(m_roi - m_bg) / s_bg)
    assert rows[0]["snr"] == pytest.approx(m_roi / s_roi)
    assert rows[0]["cnr"] == pytest.approx(abs(m_roi - m_bg) / s_bg)
    assert rows[0]["cnr"] == pytest.approx(10.0, rel=0.1)  # contrast 100 over noise 10
    assert rows[1]["cnr"] == 0.0 and "background region" in rows[1]["note"]
    assert rows[0]["note"] == "RMSE/PSNR/SSIM: no reference chosen"  # why those columns are blank
    assert compare_regions({"img": img, "ref": img}, regions, "ref", background=1)[0]["note"] == ""


def test_snr_is_not_given_for_air_fat_or_water():
    """Regression: an ROI in air read "SNR -52". HU is relative to water, so mean / SD means nothing at
    or below 0 HU: the row leaves SNR blank and says why; tissue above 0 HU keeps it."""
    rng = np.random.default_rng(2)
    img = rng.normal(0, 20.0, (60, 60))
    img[:, :20] += -1000.0  # air
    img[:, 20:40] += -100.0  # fat
    img[:, 40:] += 60.0  # liver
    regions = [Region(name, "rectangle", rect(5, x0, 55, x0 + 15)) for name, x0 in (("air", 2), ("fat", 22),
                                                                                   ("liver", 42))]  # fmt: skip
    air, fat, liver = compare_regions({"img": img}, regions)
    for row in (air, fat):
        assert np.isnan(row["snr"]) and "SNR not given: mean" in row["note"] and np.isfinite(row["sd"])
    assert liver["snr"] == pytest.approx(liver["mean"] / liver["sd"]) and "SNR not" not in liver["note"]
    assert liver["snr"] == pytest.approx(3.0, rel=0.15)


def test_psnr_ssim_in_rectangle_match_skimage_on_crop():
    rng = np.random.default_rng(2)
    ref = rng.uniform(-100, 200, (80, 90)).astype(np.float32)
    img = ref + rng.normal(0, 30, ref.shape).astype(np.float32)
    img[0, 0] = 2000  # outside the window and the region
    mask = shape_mask("rectangle", rect(12, 15, 60, 70), ref.shape)
    cx, cr = np.clip(img[12:60, 15:70], -160, 240), np.clip(ref[12:60, 15:70], -160, 240)
    rmse, psnr = region_rmse_psnr(img, ref, mask)
    assert psnr == pytest.approx(peak_signal_noise_ratio(cr, cx, data_range=400.0), abs=1e-4)
    assert rmse == pytest.approx(np.sqrt(np.mean((cx.astype(float) - cr) ** 2)), rel=1e-6)
    ssim = region_ssim(img, ref, mask)  # each region pixel's 7x7 window, as in the whole slice's SSIM map
    full = structural_similarity(np.clip(img, -160, 240), np.clip(ref, -160, 240), data_range=400.0, full=True)[1]
    assert ssim == pytest.approx(full[mask].mean(), abs=1e-6)
    # no window: data range of the reference slice, no clipping
    _, psnr_raw = region_rmse_psnr(img, ref, mask, window=None)
    dr = float(ref.max() - ref.min())
    expect = peak_signal_noise_ratio(ref[12:60, 15:70], img[12:60, 15:70], data_range=dr)
    assert psnr_raw == pytest.approx(expect, abs=1e-4)
    ssim_raw = region_ssim(img, ref, mask, window=None)
    assert ssim_raw == pytest.approx(structural_similarity(img, ref, data_range=dr, full=True)[1][mask].mean())


def test_ssim_of_a_lesion_sized_region_uses_all_its_pixels():
    """Regression: a 10x10 region's SSIM averaged 16 of its 100 pixels (those 3 px inside its
    own bounding box), so it described the region's centre. Every pixel counts now, each with its own window;
    only pixels whose window leaves the image are left out."""
    rng = np.random.default_rng(7)
    ref = rng.uniform(-100, 200, (64, 64))
    img = ref.copy()
    img[20:25, 20:30] += rng.normal(0, 60, (5, 10))  # the region's upper half is noisy
    mask = shape_mask("rectangle", rect(20, 20, 30, 30), ref.shape)
    assert mask.sum() == 100
    full = structural_similarity(np.clip(img, -160, 240), np.clip(ref, -160, 240), data_range=400.0, full=True)[1]
    assert region_ssim(img, ref, mask) == pytest.approx(full[mask].mean(), abs=1e-9)
    assert abs(region_ssim(img, ref, mask) - full[23:27, 23:27].mean()) > 0.01  # not the centre's 16 pixels
    edge = shape_mask("rectangle", rect(0, 10, 6, 20), ref.shape)  # rows 3-5 have their whole window
    assert region_ssim(img, ref, edge) == pytest.approx(full[3:6, 10:20].mean(), abs=1e-9)


def test_ssim_ellipse_uses_mask_and_identity_is_one():
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 50, (64, 64))
    mask = shape_mask("ellipse", rect(5, 5, 60, 60), ref.shape)
    assert region_ssim(ref, ref, mask) == pytest.approx(1.0)
    noisy = ref + rng.normal(0, 50, ref.shape)
    assert region_ssim(noisy, ref, mask) < 0.9
    with pytest.raises(ValueError, match="no pixel of the region has its whole 7x7 SSIM window inside the image"):
        region_ssim(noisy, ref, shape_mask("rectangle", rect(0, 0, 3, 30), ref.shape))


def test_compare_regions_reference_rows_and_bad_inputs_give_notes():
    rng = np.random.default_rng(4)
    clean = np.zeros((5, 64, 64), np.float32)
    clean[:, 20:40, 20:40] = 60
    noisy = clean + rng.normal(0, 15, clean.shape).astype(np.float32)
    other = np.zeros((32, 32), np.float32)
    regions = [
        Region("r", "rectangle", rect(10, 10, 50, 50), slice_index=2, image_shape=clean.shape),
        Region("outside", "rectangle", rect(100, 100, 120, 120), slice_index=2),
        Region("bad slice", "rectangle", rect(10, 10, 20, 20), slice_index=9),
        Region("tiny", "rectangle", rect(0, 10, 3, 13), slice_index=2),
        Region("line", "line", np.array([[0, 0], [5, 5]], float), slice_index=2),
    ]
    rows = compare_regions({"noisy": noisy, "clean": clean, "other": other}, regions, reference="clean")
    by = {(r["region"], r["image"]): r for r in rows}
    assert len(rows) == 13
    r = by[("r", "noisy")]
    m = shape_mask("rectangle", regions[0].vertices, (64, 64))
    assert r["slice"] == 2
    assert r["mean"] == pytest.approx(noisy[2][m].mean(), rel=1e-5)
    assert r["rmse"] == pytest.approx(region_rmse_psnr(noisy[2], clean[2], m)[0])
    assert r["ssim"] == pytest.approx(region_ssim(noisy[2], clean[2], m))
    assert "CNR: no background region" in r["note"] and math.isnan(r["cnr"])
    c = by[("r", "clean")]
    assert c["rmse"] == 0 and c["psnr"] == math.inf and c["ssim"] == pytest.approx(1.0)
    assert "differs from the region's image" in by[("r", "other")]["note"]
    assert math.isnan(by[("r", "other")]["mean"])
    assert "outside the image" in by[("outside", "noisy")]["note"]
    assert "slice 9 outside" in by[("bad slice", "noisy")]["note"]
    assert "SSIM" in by[("tiny", "noisy")]["note"] and not math.isnan(by[("tiny", "noisy")]["rmse"])
    assert by[("line", "")]["note"] == "line encloses no area; ignored"
    # a missing background index and a missing reference become notes too
    rows = compare_regions({"noisy": noisy}, regions[:1], reference="nope", background=7)
    assert "reference 'nope'" in rows[0]["note"] and "background region 7" in rows[0]["note"]
    assert math.isnan(rows[0]["rmse"]) and math.isnan(rows[0]["cnr"])


def test_placements_map_region_per_image_and_perceptual_callback():
    rng = np.random.default_rng(5)
    fine = rng.normal(0, 10, (64, 64)).astype(np.float32)
    coarse = fine[::2, ::2].copy()
    reg = Region("r", "rectangle", rect(8, 8, 40, 40), image_shape=(64, 64))
    reg.placements["coarse"] = Placement(None, rect(4, 4, 20, 20))
    seen = []

    def perceptual(x, ref, box):
        seen.append(box)
        return float(np.mean((x - ref) ** 2))

    rows = compare_regions({"fine": fine, "coarse": coarse}, [reg], reference="fine", perceptual=perceptual)
    assert rows[0]["n"] == 32 * 32 and rows[1]["n"] == 16 * 16
    assert rows[1]["mean"] == pytest.approx(coarse[4:20, 4:20].mean(), rel=1e-5)
    assert "differs from reference" in rows[1]["note"]
    assert rows[0]["roi_perceptual"] == 0.0 and seen == [(8, 8, 40, 40)]


def test_one_slice_output_compares_with_the_reference_slice_at_its_place():
    """A "current slice" output (1 slice) and the full reference, placed through world coordinates: the output's
    slice 0 is compared with the reference's slice under it; without world placements the shapes differ."""
    rng = np.random.default_rng(6)
    full = rng.normal(40, 10, (5, 48, 48)).astype(np.float32)
    one = full[3:4] + rng.normal(0, 20, (1, 48, 48)).astype(np.float32)
    box = rect(8, 8, 40, 40)
    reg = Region("r", "rectangle", box, slice_index=3)
    reg.placements.update(one=Placement(0, box, 7.5, 2.5), full=Placement(3, box, 7.5, 2.5))
    rows = {r["image"]: r for r in compare_regions({"one": one, "full": full}, [reg], reference="full")}
    mask = shape_mask("rectangle", box, (48, 48))
    want = region_rmse_psnr(one[0], full[3], mask)
    assert rows["one"]["slice"] == 0 and "compared with slice 3 of the reference" in rows["one"]["note"]
    assert (rows["one"]["rmse"], rows["one"]["psnr"]) == pytest.approx(want, rel=1e-6)
    assert rows["full"]["psnr"] == math.inf or rows["full"]["rmse"] == 0
    reg.placements["one"] = Placement(0, box + 4, 7.5, 2.5)  # in-plane elsewhere: another grid
    rows = compare_regions({"one": one, "full": full}, [reg], reference="full")
    assert "different grids" in rows[0]["note"] and math.isnan(rows[0]["psnr"])
    for elsewhere in (Placement(0, box, 8.5, 2.5), Placement(0, box, 7.5, 1.0)):  # another position or spacing
        reg.placements["one"] = elsewhere
        rows = compare_regions({"one": one, "full": full}, [reg], reference="full")
        assert "differs from reference" in rows[0]["note"] and math.isnan(rows[0]["psnr"])
    plain = Region("r", "rectangle", box, slice_index=0)  # no world placements: shapes are compared as they are
    rows = compare_regions({"one": one, "full": full}, [plain], reference="full")
    assert "differs from reference" in rows[0]["note"] and math.isnan(rows[0]["rmse"])


def test_line_profile_through_centre():
    img = np.arange(100 * 100, dtype=float).reshape(100, 100)
    mask = shape_mask("rectangle", rect(20, 40, 40, 60), img.shape)
    cols, vals, centre = line_profile(img, mask)
    assert cols[0] == 30 and cols[-1] == 69 and centre == 49.5  # columns 40-59
    np.testing.assert_array_equal(vals, img[29, 30:70])
    cols, _, centre = line_profile(img, shape_mask("rectangle", rect(20, 80, 40, 95), img.shape))
    assert cols[-1] == 99 and centre == 87  # widened past the edge, clipped: 0 stays the region's centre (80-94)


def test_roi_perceptual_distance_properties(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from napari_lidnet.models import registry
    from napari_lidnet.models import roi_perceptual as rp
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import save_weights

    torch.manual_seed(0)
    det = LesionDetector(width=8)
    rng = np.random.default_rng(6)
    ref = np.full((128, 128), 40.0, np.float32)
    ref[50:80, 50:80] = 90.0
    box = (48.0, 48.0, 82.0, 82.0)
    assert rp.roi_perceptual_distance(ref, ref, box, det) == 0.0
    noise = rng.normal(0, 1, ref.shape).astype(np.float32)
    d = [rp.roi_perceptual_distance(ref + s * noise, ref, box, det) for s in (10, 40, 160)]
    assert 0 < d[0] < d[1] < d[2]
    far = ref.copy()
    far[:, 124:] += 500 * noise[:, 124:]  # beyond the widened box and its context: does not count
    assert rp.roi_perceptual_distance(far, ref, box, det) == 0.0
    assert det.training  # mode restored
    region = Region("lesion", "rectangle", rect(48, 48, 82, 82))  # pixel-edge box (48, 48, 82, 82)
    rows = compare_regions({"n": ref + 40 * noise, "ref": ref}, [region], "ref", perceptual=rp.make_perceptual_fn(det))
    assert rows[0]["roi_perceptual"] == pytest.approx(d[1], rel=1e-5) and rows[1]["roi_perceptual"] == 0.0
    # the default detector, both ways, whatever is installed: none at all gives a note, a user detector a value
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(registry, "shipped_model_dir", lambda: empty)
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(tmp_path / "user"))
    rows = compare_regions({"n": ref + 40 * noise, "ref": ref}, [region], "ref", perceptual=rp.make_perceptual_fn())
    assert "no detector weights" in rows[0]["note"] and math.isnan(rows[0]["roi_perceptual"])
    save_weights(det, tmp_path / "user" / "mine_detector")
    rows = compare_regions({"n": ref + 40 * noise, "ref": ref}, [region], "ref", perceptual=rp.make_perceptual_fn())
    assert rows[0]["roi_perceptual"] == pytest.approx(d[1], rel=1e-5) and rows[0]["note"].startswith("CNR")


def test_boxes_shapes_and_masks_share_one_convention():
    """A pixel-edge box (x2/y2 exclusive) becomes a napari rectangle whose mask is exactly the pixels whose centres
    (i + 0.5 in box coordinates) lie in the box, and a region's box is the pixel-edge box of its pixels."""
    from napari_lidnet.layer_data import boxes_to_shapes, shapes_to_boxes

    box = np.array([[10.4, 20.0, 30.6, 35.5]])  # x1, y1, x2, y2
    (corners,) = boxes_to_shapes(box, 2)
    mask = shape_mask("rectangle", corners, (64, 64))
    cols, rows = np.arange(64) + 0.5, np.arange(64) + 0.5
    want = ((rows >= 20.0) & (rows < 35.5))[:, None] & ((cols >= 10.4) & (cols < 30.6))[None, :]
    np.testing.assert_array_equal(mask, want)  # columns 10..30, rows 20..34
    from napari_lidnet.metrics.roi import region_box

    np.testing.assert_allclose(shapes_to_boxes([corners])[0, 1:], box[0], atol=1e-5)
    assert region_box(mask) == (10.0, 20.0, 31.0, 35.0)
    # one pixel: box (5, 7, 6, 8) is napari's pixel (row 7, col 5), drawn from 6.5 to 7.5 and 4.5 to 5.5
    (one,) = boxes_to_shapes(np.array([[2, 5, 7, 6, 8]], float), 3)
    np.testing.assert_allclose(one[:, 0], 2.0)
    np.testing.assert_allclose(one[:, 1:].min(0), [6.5, 4.5])
    np.testing.assert_allclose(one[:, 1:].max(0), [7.5, 5.5])


def test_ellipse_keeps_the_pixels_on_its_boundary():
    """The closed test |u| <= 1 in exact integer arithmetic: floating-point rounding dropped the 4 extreme pixels."""
    m = shape_mask("ellipse", rect(300, 150, 360, 230), (512, 512))  # centre (330, 190), semi-axes 30 and 40
    rr, cc = np.mgrid[0:512, 0:512]
    exact = (rr - 330) ** 2 * 40**2 + (cc - 190) ** 2 * 30**2 <= (30 * 40) ** 2
    np.testing.assert_array_equal(m, exact)


def test_a_region_past_the_image_edge_is_measured_inside_and_says_so():
    img = np.random.default_rng(5).normal(40, 10, (64, 64)).astype(np.float32)
    regions = [Region("edge", "rectangle", rect(50, 50, 80, 80)), Region("inside", "rectangle", rect(0, 0, 64, 64))]
    rows = {r["region"]: r for r in compare_regions({"ct": img}, regions)}
    assert rows["edge"]["n"] == 14 * 14 and rows["edge"]["mean"] == pytest.approx(img[50:, 50:].mean(), rel=1e-5)
    assert "past the image edge: only the 196 px inside are measured" in rows["edge"]["note"]
    assert "past the image edge" not in rows["inside"]["note"]  # the whole image, edges on the pixel borders


def test_a_region_outside_the_psnr_window_says_so():
    """PSNR/SSIM clip both images to the window: a region of lung or bone there compares clipped constants, and the
    row says so (a mixed region stays quiet while most of it is inside)."""
    rng = np.random.default_rng(6)
    ref = np.full((64, 64), 40.0, np.float32)
    ref[:, 32:] = -850.0  # lung on the right half
    images = {"ref": ref, "low": ref + rng.normal(0, 20, ref.shape).astype(np.float32)}
    regions = [Region("lung", "rectangle", rect(8, 40, 24, 56)), Region("mixed", "rectangle", rect(8, 20, 24, 36)),
               Region("tissue", "rectangle", rect(8, 4, 24, 20))]  # fmt: skip
    rows = {r["region"]: r for r in compare_regions(images, regions, reference="ref", window=(-160.0, 240.0))}
    lung = rows["lung"]  # not RMSE 0, PSNR inf, SSIM 1 for images that differ there
    assert "the reference in the region is all outside the PSNR/SSIM window -160..240 HU" in lung["note"]
    assert all(np.isnan(lung.get(k, np.nan)) for k in ("rmse", "psnr", "ssim")) and np.isfinite(lung["sd"])
    mostly = next(r for r in compare_regions(images, [Region("edge", "rectangle", rect(8, 26, 24, 42))], "ref",
                                             window=(-160.0, 240.0)) if r["image"] == "low")  # 10 of 16 columns lung
    assert "62% of the reference in the region is outside" in mostly["note"] and np.isfinite(mostly["psnr"])
    assert "PSNR/SSIM window" not in rows["mixed"]["note"] and "PSNR/SSIM window" not in rows["tissue"]["note"]
    lung_window = compare_regions(images, regions[:1], reference="ref", window=(-1000.0, 200.0))
    assert "PSNR/SSIM window" not in lung_window[0]["note"]


def test_a_reference_noisier_than_the_image_is_said():
    """Regression: against a normal-dose chest with 37 HU of its own noise, the low-dose copy scored
    PSNR 32.6 dB and the fully denoised image 21.2: the metrics rewarded keeping noise, without a word. A row now
    says when the reference's slice is at least twice as noisy as the image's (flat tissue of each): the denoised
    image's rows, not the low-dose copy's (noisier than its reference) nor an image as noisy as it (a note
    from the region's error alone would fire on independent images)."""
    rng = np.random.default_rng(7)
    clean = np.full((128, 128), 40.0, np.float32)
    clean[40:80, 40:80] = 90.0
    noisy_ref = clean + rng.normal(0, 30, clean.shape).astype(np.float32)
    images = {"ref": noisy_ref, "denoised": clean + rng.normal(0, 3, clean.shape).astype(np.float32),
              "low": noisy_ref + rng.normal(0, 15, clean.shape).astype(np.float32),
              "other": clean + rng.normal(0, 25, clean.shape).astype(np.float32)}  # fmt: skip
    regions = [Region("tissue", "rectangle", rect(10, 10, 110, 110)), Region("small", "rectangle", rect(5, 5, 20, 20))]
    rows = compare_regions(images, regions, "ref")
    said = {(r["region"], r["image"]) for r in rows if "the reference is noisier than this image (30 vs 3" in r["note"]}
    assert said == {("tissue", "denoised"), ("small", "denoised")}, [(r["image"], r["note"]) for r in rows]
    clean_ref = {"ref": clean, "denoised": images["denoised"]}
    assert "noisier" not in compare_regions(clean_ref, regions[:1], "ref")[1]["note"]


def test_a_uniform_region_says_why_it_has_no_snr():
    """Regression: a region of SD 0 left the SNR cell blank without a word, and the table printed 0 as
    "0" beside "0.005372" and "4.62"."""
    from napari_lidnet._widgets._roi_table import format_value

    flat = np.full((32, 32), 40.0, np.float32)
    (row,) = compare_regions({"flat": flat}, [Region("r", "rectangle", rect(4, 4, 20, 20))])
    assert math.isnan(row["snr"]) and "SNR not given: SD 0" in row["note"], row["note"]
    assert [format_value(v) for v in (0.0, 0.005372, 4.62, 123456.0, 7)] == ["0.00", "0.00537", "4.62", "1.23e+05", "7"]
