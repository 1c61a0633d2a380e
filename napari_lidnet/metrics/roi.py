"""Image quality inside regions of interest: exact masks, statistics, SNR/CNR and reference comparisons.

Pure numpy/skimage (no Qt, no torch). Vertices are pixel coordinates (row, col) of the image they refer to;
pixel ``i`` has its centre at ``i`` (napari's convention), and a pixel belongs to a region when its centre does.
A region's box, for the ROI perceptual distance, is the pixel-edge box of its pixels (:func:`region_box`:
x2/y2 exclusive edges, the convention of every box in the product; ``layer_data`` converts Shapes and boxes).

Choices (also in the docstrings below):

- SD is the sample standard deviation (``ddof=1``); SNR = mean / SD, for regions above 0 HU only (HU is relative
  to water: for air, fat or water the ratio means nothing; the row says so and gives SD and CNR).
- CNR = |mean_roi - mean_bg| / SD_bg, with the background region measured on the same image.
- RMSE, PSNR and SSIM against a reference are computed on images clipped to a display window (default soft
  tissue, -160..240 HU) with ``data_range`` = window width; with ``window=None`` nothing is clipped and
  ``data_range`` = max - min of the reference slice.
- SSIM is the mean over the region's pixels of the SSIM map (skimage's definition, 7x7 uniform windows) of the
  whole slice, each pixel's window centred on it (a pixel within 3 px of the image's edge left out): the region's
  mean of skimage's ``structural_similarity(..., full=True)`` map, not skimage's SSIM of the cropped arrays.
- Windowing, data range and the RMSE rule are those of ``metrics.image`` (one definition for the product).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_lidnet.metrics.image import METRIC_WINDOW, clip_to_window, data_range_of, psnr_from_mse, ssim_map

#: shape types that enclose an area; napari's "line" and "path" do not
AREA_SHAPES = ("rectangle", "ellipse", "polygon")
SSIM_WIN = 7

#: keys of a row of ``compare_regions``, in table order
ROW_KEYS = (
    "region",
    "image",
    "slice",
    "mean",
    "sd",
    "n",
    "snr",
    "cnr",
    "rmse",
    "psnr",
    "ssim",
    "roi_perceptual",
    "note",
)

PerceptualFn = Callable[[np.ndarray, np.ndarray, tuple[float, float, float, float]], float]


@dataclass
class Placement:
    """Where a region lies on one image: slice index (None for a 2D image) and (n, 2) pixel (row, col); for a slice
    placed through world coordinates, that slice's world position and the image's slice spacing (mm); what the
    placement needs said on that image's row (``note``)."""

    slice_index: int | None
    vertices: np.ndarray
    slice_mm: float | None = None
    spacing_mm: float | None = None
    note: str = ""


@dataclass
class Region:
    """A region of interest.

    Attributes:
        name: label shown in tables.
        shape_type: "rectangle", "ellipse" or "polygon" (napari names).
        vertices: (n, 2) pixel (row, col) on the grid of ``image_shape``; for a rectangle or ellipse, the 4
            corners of its (possibly rotated) bounding box, as napari stores them.
        slice_index: slice of a 3D image the region lies on; None for 2D.
        image_shape: shape of the image the vertices refer to; an image of another shape gets a note.
        placements: per-image overrides (image name -> Placement), for images on other pixel grids
            (the widget maps shapes through world coordinates into each image).
        note: text carried into every row of this region.
    """

    name: str
    shape_type: str
    vertices: np.ndarray
    slice_index: int | None = None
    image_shape: tuple[int, ...] | None = None
    placements: dict[str, Placement] = field(default_factory=dict)
    note: str = ""

    def placement(self, image_name: str) -> Placement:
        return self.placements.get(image_name, Placement(self.slice_index, np.asarray(self.vertices, float)))


# ----------------------------------------------------------------------------------------------------- masks


def _pixel_grid(image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0 : image_shape[0], 0 : image_shape[1]].astype(np.float64)


def _is_axis_aligned(v: np.ndarray) -> bool:
    rows, cols = np.unique(np.round(v[:, 0], 6)), np.unique(np.round(v[:, 1], 6))
    return len(rows) <= 2 and len(cols) <= 2


def shape_mask(shape_type: str, vertices: np.ndarray, image_shape: Sequence[int]) -> np.ndarray:
    """Boolean mask of the pixels whose centres lie inside a shape.

    Args:
        shape_type: "rectangle" (4 corners; axis-aligned ones cover rows ``r0 <= r < r1`` and columns
            ``c0 <= c < c1``, so integer corners give exactly (r1 - r0) x (c1 - c0) pixels, like the boxes'
            exclusive x2/y2 edges), "ellipse" (4 corners of its bounding box, possibly rotated; closed test
            ``|u| <= 1``) or "polygon" (a centre on its edge counts on the top and left sides only, as the
            rectangle's edges do, so a polygon drawn on a rectangle's corners holds the same pixels).
        vertices: (n, 2) pixel (row, col).
        image_shape: (rows, cols) of the mask (extra leading dimensions are ignored).

    Raises:
        ValueError: an unknown shape type or too few vertices.
    """
    shape2 = (int(image_shape[-2]), int(image_shape[-1]))
    # to a micro-pixel: a corner drawn on a pixel edge comes back from world coordinates as 50.00000000000001,
    # which the half-open edge test would count as the next pixel (a 5 x 5 region measured as 36 pixels)
    v = np.round(np.asarray(vertices, dtype=np.float64).reshape(-1, 2), 6)
    if shape_type not in AREA_SHAPES:
        raise ValueError(f"shape type {shape_type!r} encloses no area (use one of {AREA_SHAPES})")
    if shape_type == "polygon":
        if len(v) < 3:
            raise ValueError(f"polygon needs at least 3 vertices, got {len(v)}")
        if np.linalg.matrix_rank(v - v.mean(axis=0), tol=1e-6) < 2:  # points on one line enclose nothing (a
            return np.zeros(shape2, dtype=bool)  # bow-tie's lobes cancel in the signed area: not this test)
        return _polygon_mask(v, shape2)
    if len(v) != 4:
        raise ValueError(f"{shape_type} needs the 4 corners of its bounding box, got {len(v)} vertices")
    rr, cc = _pixel_grid(shape2)
    if shape_type == "rectangle":
        if _is_axis_aligned(v):
            (r0, c0), (r1, c1) = v.min(axis=0), v.max(axis=0)
            return (rr >= r0) & (rr < r1) & (cc >= c0) & (cc < c1)
        return _polygon_mask(v, shape2)  # turned: the polygon's rule, so either shape on its corners is the same
    centre = v.mean(axis=0)
    axes = np.stack([(v[1] - v[0]) / 2, (v[3] - v[0]) / 2], axis=1)  # semi-axis vectors
    u = _solve(axes, rr - centre[0], cc - centre[1])
    return u[0] ** 2 + u[1] ** 2 <= 1.0 + 1e-9  # the 4 extreme pixels lie on |u| = 1: rounding must not drop them


def _polygon_mask(v: np.ndarray, shape2: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside the polygon ``v`` (n, 2) by the crossing rule with half-open edges: each edge counts for
    rows ``min <= r < max`` and for centres strictly left of it, so centres on the top and left sides are inside,
    those on the bottom and right sides are not (the rectangle's convention); any self-intersection even-odd."""
    mask = np.zeros(shape2, dtype=bool)
    r0, c0 = np.maximum(np.floor(v.min(axis=0)).astype(int), 0)
    r1, c1 = np.minimum(np.ceil(v.max(axis=0)).astype(int) + 1, shape2)
    if r1 <= r0 or c1 <= c0:
        return mask
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64)
    inside = np.zeros(rr.shape, dtype=bool)
    for (ya, xa), (yb, xb) in zip(v, np.roll(v, -1, axis=0)):
        if ya == yb:
            continue
        spans = (np.minimum(ya, yb) <= rr) & (rr < np.maximum(ya, yb))
        inside ^= spans & (cc < xa + (rr - ya) * (xb - xa) / (yb - ya))
    mask[r0:r1, c0:c1] = inside
    return mask


def _solve(m: np.ndarray, dr: np.ndarray, dc: np.ndarray) -> np.ndarray:
    """Coordinates of (dr, dc) in the basis of the columns of ``m``; degenerate bases give nothing inside."""
    if abs(np.linalg.det(m)) < 1e-12:
        return np.full((2, *dr.shape), np.inf)
    inv = np.linalg.inv(m)
    return np.stack([inv[0, 0] * dr + inv[0, 1] * dc, inv[1, 0] * dr + inv[1, 1] * dc])


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, c0, r1, c1) bounding box of a mask, exclusive r1/c1; None when empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def region_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel-edge box ``(x1, y1, x2, y2)`` (x2/y2 exclusive) of a mask's pixels; None when empty."""
    box = mask_bbox(mask)
    if box is None:
        return None
    r0, c0, r1, c1 = box
    return float(c0), float(r0), float(c1), float(r1)


# ------------------------------------------------------------------------------------------------ statistics


def region_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``mask`` as booleans (a 0/1 or label mask: nonzero is inside), or ValueError when its shape is not ``shape``
    (an integer mask would otherwise index pixels by their numbers)."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"mask shape {mask.shape} differs from the image's {tuple(shape)}")
    return mask.astype(bool, copy=False)


def region_stats(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """(mean, SD, n) of the pixels in ``mask`` (nonzero: inside); SD is the sample SD (ddof=1), NaN for fewer than 2
    pixels."""
    image = np.asarray(image, dtype=np.float64)
    vals = image[region_mask(mask, image.shape)]
    n = int(vals.size)
    mean = float(vals.mean()) if n else math.nan
    sd = float(vals.std(ddof=1)) if n > 1 else math.nan
    return mean, sd, n


def snr(mean: float, sd: float) -> float:
    """SNR = mean / SD (NaN when SD is 0 or NaN)."""
    return mean / sd if sd and np.isfinite(sd) else math.nan


def cnr(mean_roi: float, mean_bg: float, sd_bg: float) -> float:
    """CNR = |mean_roi - mean_bg| / SD_bg (noise of the background region; NaN when SD_bg is 0 or NaN)."""
    return abs(mean_roi - mean_bg) / sd_bg if sd_bg and np.isfinite(sd_bg) else math.nan


def _window(x: np.ndarray, ref: np.ndarray, window: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray, float]:
    """Clipped images and data range; ``window=None``: raw HU and the range of the whole reference slice."""
    if window is None:
        ref = np.asarray(ref, np.float64)
        return np.asarray(x, np.float64), ref, data_range_of(ref)
    return *clip_to_window(x, ref, window), data_range_of(ref, None, window)


def region_rmse_psnr(
    image: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray,
    window: tuple[float, float] | None = METRIC_WINDOW,
) -> tuple[float, float]:
    """(RMSE in HU, PSNR in dB) over the mask, both on window-clipped images; data_range = window width.

    ``window=None``: no clipping, data_range = max - min of the whole reference slice.
    PSNR = 10 log10(data_range^2 / MSE); identical regions give RMSE 0 and PSNR inf.
    """
    x, ref, data_range = _window(image, reference, window)
    mask = region_mask(mask, x.shape)
    mse = float(np.mean((x[mask] - ref[mask]) ** 2)) if mask.any() else math.nan
    if not np.isfinite(mse):
        return math.nan, math.nan
    return math.sqrt(mse), psnr_from_mse(mse, data_range)


def region_ssim(
    image: np.ndarray,
    reference: np.ndarray,
    mask: np.ndarray,
    window: tuple[float, float] | None = METRIC_WINDOW,
) -> float:
    """SSIM inside a region: the mean over the region's pixels of the SSIM map (7x7 uniform windows, skimage's
    defaults), each pixel's window centred on it, so a lesion-sized region is measured on all its pixels (a pixel
    within 3 px of the image's edge, whose window would leave the image, is left out).

    Windowing and data_range as in :func:`region_rmse_psnr`. Equals the region's mean of skimage's
    ``structural_similarity(..., full=True)`` map of the whole slice. Raises ValueError when no pixel of the
    region has its whole window inside the image.
    """
    image, reference = np.asarray(image), np.asarray(reference)
    if image.ndim != 2 or image.shape != reference.shape:
        raise ValueError(f"region SSIM takes one slice and its reference: shapes {image.shape}, {reference.shape}")
    mask = region_mask(mask, image.shape)
    box = mask_bbox(mask)
    if box is None:
        raise ValueError("empty region")
    pad = (SSIM_WIN - 1) // 2
    r0, c0, r1, c1 = box
    r0, c0 = max(r0 - pad, 0), max(c0 - pad, 0)  # the crop holds every region pixel's window
    r1, c1 = min(r1 + pad, mask.shape[0]), min(c1 + pad, mask.shape[1])
    inner = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    inner[pad : r1 - r0 - pad, pad : c1 - c0 - pad] = True
    sel = mask[r0:r1, c0:c1] & inner
    if not sel.any():
        raise ValueError(f"no pixel of the region has its whole {SSIM_WIN}x{SSIM_WIN} SSIM window inside the image")
    data_range = data_range_of(np.asarray(reference, np.float64), None, window)  # whole slice, as for PSNR
    x, ref, _ = _window(image[r0:r1, c0:c1], reference[r0:r1, c0:c1], window)
    return float(ssim_map(x, ref, data_range, SSIM_WIN)[sel].mean(dtype=np.float64))


def line_profile(
    plane: np.ndarray, mask: np.ndarray, margin: float = 0.5
) -> tuple[np.ndarray, np.ndarray, float]:
    """Horizontal profile through the centre row of a region's bounding box.

    Returns (columns, values, centre) over the bounding box widened by ``margin`` x its width on each side (clipped
    to the image), ``centre`` the column of the box's centre (where a plot's 0 goes, also when the widened span was
    clipped at an image edge). Empty arrays and centre 0 when the mask is empty.
    """
    box = mask_bbox(mask)
    if box is None:
        return np.zeros(0), np.zeros(0), 0.0
    r0, c0, r1, c1 = box
    row = (r0 + r1 - 1) // 2
    extra = int(round(margin * (c1 - c0)))
    lo, hi = max(0, c0 - extra), min(plane.shape[-1], c1 + extra)
    cols = np.arange(lo, hi)
    return cols, np.asarray(plane[row, lo:hi], dtype=np.float64), (c0 + c1 - 1) / 2


# ----------------------------------------------------------------------------------------------- comparisons


def region_plane(
    image: Any, region: Region, image_name: str
) -> tuple[np.ndarray | None, np.ndarray | None, int | None, str]:
    """The 2D plane and mask of ``region`` on one image: (plane, mask, slice, note); None/None with a note when
    the region cannot be placed (other image shape, slice out of range, empty or outside the image); a plane, a mask
    and a note when it is only partly inside."""
    if region.shape_type not in AREA_SHAPES:
        return None, None, None, f"{region.shape_type} encloses no area; ignored"
    shape = tuple(int(s) for s in image.shape)
    if len(shape) not in (2, 3):
        return None, None, None, f"image of shape {shape} is not 2D or 3D"
    if image_name not in region.placements and region.image_shape is not None:
        if tuple(region.image_shape) != shape:
            return None, None, None, f"image shape {shape} differs from the region's image {region.image_shape}"
    place = region.placement(image_name)
    sl = None
    if len(shape) == 3:
        if place.slice_index is None:
            return None, None, None, "3D image but the region has no slice"
        sl = int(place.slice_index)
        if not 0 <= sl < shape[0]:
            return None, None, sl, f"slice {sl} outside the image (0..{shape[0] - 1})"
        plane = np.asarray(image[sl], dtype=np.float32)
    else:
        plane = np.asarray(image, dtype=np.float32)
    try:
        mask = shape_mask(region.shape_type, place.vertices, plane.shape)
    except ValueError as exc:
        return None, None, sl, str(exc)
    if not mask.any():
        return None, None, sl, "region is empty or outside the image"
    v = np.asarray(place.vertices, dtype=float)[:, -2:]
    if np.any(v < -1.0) or np.any(v > np.asarray(plane.shape)):  # more than half a pixel past the edge
        return plane, mask, sl, f"region extends past the image edge: only the {int(mask.sum())} px inside are measured"
    return plane, mask, sl, ""


def _same_pixels(a: Placement, b: Placement) -> bool:
    return a.vertices.shape == b.vertices.shape and np.allclose(a.vertices, b.vertices, atol=0.5)


def _same_slice_place(a: Placement, b: Placement) -> bool:
    """Whether two world-placed slices lie at one position with one slice spacing (a "current slice" output and
    its source)."""
    if None in (a.slice_mm, b.slice_mm, a.spacing_mm, b.spacing_mm):
        return False
    step = max(abs(a.spacing_mm), abs(b.spacing_mm), 1e-6)
    return abs(a.spacing_mm - b.spacing_mm) <= 1e-3 * step and abs(a.slice_mm - b.slice_mm) <= 0.01 * step


def _reference_plane(
    ref_img: Any, region: Region, name: str, reference: str, image: Any, notes: list[str]
) -> np.ndarray | None:
    """The reference's plane under ``region`` as placed on ``image``, or None with a note. Images of one shape
    compare slice for slice; an image of fewer slices on the reference's in-plane grid (a "current slice" output)
    compares with the reference slice at the same world position and slice spacing, when the region was placed
    through world coordinates on both (``Placement.slice_mm``)."""
    a, b = region.placement(name), region.placement(reference)
    same_shape = tuple(ref_img.shape) == tuple(image.shape)
    fewer = len(ref_img.shape) == len(image.shape) == 3 and tuple(ref_img.shape[-2:]) == tuple(image.shape[-2:])
    if not same_shape and not (fewer and _same_slice_place(a, b)):
        notes.append(f"shape {tuple(image.shape)} differs from reference {tuple(ref_img.shape)}: no comparison")
        return None
    if not _same_pixels(a, b) or (same_shape and a.slice_index != b.slice_index):
        notes.append("image and reference lie on different grids (scale/translate): no comparison")
        return None
    sl = b.slice_index if len(ref_img.shape) == 3 else None
    if sl is not None and not 0 <= sl < ref_img.shape[0]:
        notes.append(f"slice {sl} outside the reference (0..{ref_img.shape[0] - 1}): no comparison")
        return None
    if sl is not None and sl != a.slice_index:
        notes.append(f"compared with slice {sl} of the reference")
    return np.asarray(ref_img[sl] if sl is not None else ref_img, dtype=np.float32)


def _empty_row(region: Region, image_name: str) -> dict[str, Any]:
    row: dict[str, Any] = {k: math.nan for k in ROW_KEYS}
    row.update(region=region.name, image=image_name, slice=None, n=0, note="")
    return row


def compare_regions(
    images: dict[str, Any],
    regions: list[Region],
    reference: str | None = None,
    background: int | None = None,
    window: tuple[float, float] | None = METRIC_WINDOW,
    perceptual: PerceptualFn | None = None,
) -> list[dict[str, Any]]:
    """One row per region x image (a single row with a note for a line or path) with mean, SD, n, SNR, CNR and,
    against ``reference``, RMSE, PSNR, SSIM and the ROI perceptual distance
    (``perceptual(plane, ref_plane, (x1, y1, x2, y2)) -> float``).

    Never raises for user errors: a region that is empty, outside the image or on an image of another shape, an
    image that does not match the reference, a missing background region, a region too small for SSIM all give
    NaN values and a clear text in the row's ``note``. ``background`` indexes ``regions``; CNR uses that region
    on the same image. See the module docstring for the formulas and windows.
    """
    rows: list[dict[str, Any]] = []
    if reference is None:
        ref_note = "RMSE/PSNR/SSIM: no reference chosen"
    elif reference not in images:
        ref_note = f"reference {reference!r} is not among the images"
        reference = None
    else:
        ref_note = ""
    bg_region = None
    bg_note = "CNR: no background region chosen"
    if background is not None:
        if 0 <= background < len(regions) and regions[background].shape_type in AREA_SHAPES:
            bg_region, bg_note = regions[background], ""
        else:
            bg_note = f"CNR: background region {background} does not exist or has no area"
    for ri, region in enumerate(regions):
        if region.shape_type not in AREA_SHAPES:  # lines and paths: one row that says so
            row = _empty_row(region, "")
            row["note"] = "; ".join(n for n in (region.note, f"{region.shape_type} encloses no area; ignored") if n)
            rows.append(row)
            continue
        for name, image in images.items():
            row = _empty_row(region, name)
            placed = region.placements.get(name)
            notes = [n for n in (region.note, placed.note if placed is not None else "") if n]
            try:
                _fill_row(row, notes, ri, region, name, image, images, reference, bg_region, background,
                          window, perceptual)  # fmt: skip
            except Exception as exc:  # never raise for a row: report it
                notes.append(f"error: {exc}")
            if ref_note and row["n"]:
                notes.append(ref_note)
            if bg_note and row["n"]:
                notes.append(bg_note)
            row["note"] = "; ".join(n for n in notes if n)
            rows.append(row)
    return rows


def _outside_window(values: np.ndarray, window: tuple[float, float] | None) -> float:
    """Share of finite ``values`` outside ``window`` (0 for no window or no finite value)."""
    values = values[np.isfinite(values)]
    if window is None or values.size == 0:
        return 0.0
    return float(np.mean((values < window[0]) | (values > window[1])))


#: each slice's noise SD in flat tissue (``_own_noise``), kept while the table is recomputed for edits
_NOISE_CACHE: dict[tuple, float] = {}
#: a reference noisier than this (HU SD in flat tissue) and twice the image's is said in the image's rows
NOISY_REFERENCE_HU = 3.0


def _own_noise(plane: np.ndarray) -> float:
    """The flat-tissue noise SD (HU) of one slice (``noreference.noise_sd``; NaN without flat tissue), cached."""
    from napari_lidnet.metrics.noreference import noise_sd

    key = (plane.shape, hashlib.sha1(np.ascontiguousarray(plane, np.float32).tobytes()).hexdigest())
    if key not in _NOISE_CACHE:
        if len(_NOISE_CACHE) >= 64:
            _NOISE_CACHE.clear()
        _NOISE_CACHE[key] = noise_sd(plane)
    return _NOISE_CACHE[key]


def _fill_comparison(
    row: dict[str, Any], notes: list[str], plane: np.ndarray, ref_plane: np.ndarray, mask: np.ndarray,
    window: tuple[float, float] | None, clipped: float,
) -> None:  # fmt: skip
    """RMSE, PSNR and SSIM of one region against the reference (``clipped``: the share of it outside the window),
    and a note when the reference's slice is at least twice as noisy as the image's (flat tissue of each, the
    whole slice): then the metrics favour an image that keeps noise."""
    row["rmse"], row["psnr"] = region_rmse_psnr(plane, ref_plane, mask, window)
    if row["rmse"] > 0:
        ref_noise, own = _own_noise(ref_plane), _own_noise(plane)
        if ref_noise >= NOISY_REFERENCE_HU and ref_noise >= 2 * own:  # False for NaN
            notes.append(f"the reference is noisier than this image ({ref_noise:.0f} vs {own:.0f} HU SD in flat "
                         "tissue): RMSE/PSNR/SSIM against it favour noisy images; compare SDs too")  # fmt: skip
    if clipped > 0.5:
        notes.append(f"{100 * clipped:.0f}% of the reference in the region is outside the PSNR/SSIM window "
                     f"{window[0]:g}..{window[1]:g} HU, clipped there: pick a window that holds it")  # fmt: skip
    try:
        row["ssim"] = region_ssim(plane, ref_plane, mask, window)
    except ValueError as exc:
        notes.append(f"SSIM: {exc}")


def _fill_row(
    row: dict[str, Any],
    notes: list[str],
    ri: int,
    region: Region,
    name: str,
    image: Any,
    images: dict[str, Any],
    reference: str | None,
    bg_region: Region | None,
    background: int | None,
    window: tuple[float, float] | None,
    perceptual: PerceptualFn | None,
) -> None:
    plane, mask, sl, note = region_plane(image, region, name)
    row["slice"] = sl
    if plane is None:
        notes.append(note)
        return
    if note:
        notes.append(note)
    bad = int(np.count_nonzero(~np.isfinite(plane[mask])))
    if bad:
        notes.append(f"{bad} NaN or infinite pixel(s) in the region: statistics are not defined")
    row["mean"], row["sd"], row["n"] = region_stats(plane, mask)
    row["snr"] = snr(row["mean"], row["sd"]) if row["mean"] > 0 else math.nan
    if row["mean"] <= 0:
        notes.append(f"SNR not given: mean {row['mean']:.0f} HU (HU is relative to water; read SD or CNR)")
    elif row["sd"] == 0:  # otherwise a blank SNR cell says nothing
        notes.append("SNR not given: SD 0 (a uniform region: no noise to compare the mean with)")
    if bg_region is not None:
        if ri == background:
            notes.append("background region")
        bplane, bmask, _, bnote = region_plane(image, bg_region, name)
        if bplane is None:
            notes.append(f"CNR: background region: {bnote}")
        else:
            bmean, bsd, _ = region_stats(bplane, bmask)
            row["cnr"] = cnr(row["mean"], bmean, bsd)
    if reference is None:
        return
    ref_plane = _reference_plane(images[reference], region, name, reference, image, notes)
    if ref_plane is None:
        return
    clipped = _outside_window(ref_plane[mask], window)
    if clipped == 1.0:  # both images clipped to the window's edge there: an RMSE of 0, a PSNR of inf, mean nothing
        notes.append(f"the reference in the region is all outside the PSNR/SSIM window {window[0]:g}..{window[1]:g} "
                     "HU: RMSE/PSNR/SSIM not given; pick a window that holds it")  # fmt: skip
    else:
        _fill_comparison(row, notes, plane, ref_plane, mask, window, clipped)
    if perceptual is not None:
        try:
            row["roi_perceptual"] = float(perceptual(plane, ref_plane, region_box(mask)))
        except Exception as exc:  # a model failure becomes a note
            notes.append(f"ROI perceptual: {exc}")
