"""No-reference image quality from one CT image alone: noise SD, noise correlation length, edge sharpness.

For scans without a normal-dose partner (self-supervised adaptation), where PSNR/SSIM cannot be computed.

- Flat blocks: half-overlapping square blocks fully inside the body (the largest connected region above -500 HU,
  holes filled), whose mean lies in ``FLAT_HU`` (-200..300 HU: fat, water, soft tissue), ranked by the mean
  gradient magnitude of a strongly smoothed image (sigma 3 px; it sees anatomy, hardly the noise) and the flattest
  ``fraction`` kept (and no block whose score exceeds ``FLAT_FACTOR`` x the flattest decile's).
  Choosing blocks by their smoothed structure, not by their own SD, keeps the noise estimate unbiased.
- Noise SD: the median over the flat blocks (``NOISE_BLOCK`` = 8 px) of the SD about a least-squares plane (ddof
  3). Tissue texture finer than a block counts as noise, so the blocks are small: 24 px blocks read 56 HU on a 1.5 mm
  CTA and 38 HU on skull-base slices, and were 2.8x off on average on simulated slices, 8 px 0.29x
  (``benchmarks/noise_estimate.py``). The price: a plane on a small block takes in low-frequency noise, so noise
  far smoother than CT's (Gaussian-filtered, sigma 1 px) reads 23% low; CT's ramp-filtered noise read at most 16%
  low there, on the smoothest kernels, and 18% low with a 1 mm grain on 0.43 mm pixels. Unless
  ``noise_from="slices"`` (a contiguous volume whose slices have independent noise): then the blocks hold the
  second difference across z, x_z - (x_{z-1} + x_{z+1}) / 2 scaled to one slice's SD, in which anatomy and
  texture continuous in z cancel (preferred whenever a volume allows it).
- Noise correlation length: the radially averaged autocorrelation of the flat blocks' noise (plane removed,
  zero-padded FFT, normalised by the number of pixel pairs at each lag; the median over the blocks, so that a
  few blocks crossing an edge do not count; the offset that removing each block's plane leaves at large lags,
  measured at block/4 .. block/2, taken out); the length is the lag, interpolated, beyond which |ACF| stays below
  ``threshold`` (0.1) in every direction (the largest |ACF| on each ring: FBP noise is often anisotropic, and a
  ring mean would average a strong correlation along one axis away). White noise gives about 1 px, noise filtered
  with a Gaussian of sigma s about 3 s.
- Edge sharpness (HU/mm): RMS gradient magnitude of a Gaussian derivative (sigma 1 px) divided by the pixel size,
  with the noise's share of the squared gradient (measured in the flat blocks of the same slice) taken out, over
  the centre lines of the strongest soft-tissue edges: pixels in the top ``percentile`` of a
  smoothed (sigma 3 px) gradient inside the body, away from the skin, with both sides of the edge inside the
  metric window (-160..240 HU: bone and air edges are left out, they would dominate and hardly blur), that are
  maxima across the edge (non-maximum suppression). Blurring lowers it; so does denoising
  that flattens edges, which then cannot pass for noise reduction. ``edge_locations`` of one image can be reused
  so that several versions of it are measured on the same pixels.

Volumes (z, y, x) are measured on at most ``max_slices`` evenly spaced slices. numpy/scipy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_lidnet.io.volume import square_pixel_mm
from napari_lidnet.metrics.image import METRIC_WINDOW

__all__ = [
    "FLAT_HU",
    "NO_NOISE_HU",
    "block_noise_sd",
    "body_mask",
    "correlation_length",
    "detrend_plane",
    "edge_locations",
    "edge_sharpness",
    "fill_holes",
    "flat_block_noise_sds",
    "flat_blocks",
    "flat_noise_sd",
    "noise_autocorrelation",
    "noise_sd",
    "quality_estimates",
    "sample_slices",
]

FLAT_HU: tuple[float, float] = (-200.0, 300.0)
#: noise SD (HU) in flat tissue below which there is no noise to report (lossy codecs leave exactly flat blocks)
NO_NOISE_HU = 0.5
STRUCTURE_SIGMA = 3.0  # px: smoothing of the structure map that ranks blocks by flatness
EDGE_SIGMA = 1.0  # px: Gaussian derivative of the sharpness measure
EDGE_FIND_SIGMA = 3.0  # px: smoothing of the gradient that locates the strongest edges (noise hardly moves them)
FLAT_FACTOR = 2.0  # a flat block's structure score is at most this times the flattest decile's
FLAT_FRACTION = 0.3  # at most this share of the candidate blocks is kept as flat
NOISE_BLOCK = 8  # px: blocks of the noise SD (less texture in them); the ACF and edge measures keep 24 px


def sample_slices(n: int, max_slices: int) -> list[int]:
    """At most ``max_slices`` evenly spaced slice indices of ``n`` (all when n <= max_slices)."""
    if n <= max_slices:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, max_slices)})


def _as_slices(hu: np.ndarray, max_slices: int, noise_from: str = "image") -> list[tuple[np.ndarray, np.ndarray]]:
    """(slice, its noise-bearing values) pairs: the slice itself, or (``noise_from="slices"``) the second
    difference across z, x_z - (x_{z-1} + x_{z+1}) / 2, scaled by sqrt(2/3) to the noise SD of one slice."""
    a = np.asarray(hu, dtype=np.float32)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected a (y, x) slice or a (z, y, x) volume, got shape {a.shape}")
    if noise_from == "image":
        stack = a[None] if a.ndim == 2 else a
        return [(stack[k], stack[k]) for k in sample_slices(len(stack), max_slices)]
    if noise_from != "slices":
        raise ValueError(f"noise_from must be 'image' or 'slices', got {noise_from!r}")
    if a.ndim != 3 or a.shape[0] < 3:
        raise ValueError(f"noise_from='slices' needs a volume of >= 3 contiguous slices, got shape {a.shape}")
    picks = [k + 1 for k in sample_slices(a.shape[0] - 2, max_slices)]
    return [(a[k], (a[k] - 0.5 * (a[k - 1] + a[k + 1])) * np.float32(np.sqrt(2 / 3))) for k in picks]


def body_mask(hu2d: np.ndarray, threshold: float = -500.0) -> np.ndarray:
    """The largest connected region above ``threshold`` HU, holes (lungs, bowel gas) filled."""
    labels, n = ndi.label(np.asarray(hu2d) > threshold)
    if n == 0:
        return np.zeros(np.shape(hu2d), bool)
    return fill_holes(labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndi.binary_fill_holes`` of a 2D mask in a fraction of its time: the background regions that do not reach
    the border are holes."""
    outside, _ = ndi.label(~mask)
    hole = np.ones(int(outside.max()) + 1, bool)
    hole[np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])] = False
    hole[0] = False
    return mask | hole[outside]


def _tiles(a: np.ndarray, block: int) -> np.ndarray:
    """(ny, nx, [k,] block, block) half-overlapping tiles of ``a`` (y, x[, k]) (stride block // 2), a view."""
    step = max(1, block // 2)
    return np.lib.stride_tricks.sliding_window_view(a, (block, block), axis=(0, 1))[::step, ::step]


def _cells(a: np.ndarray, block: int) -> np.ndarray:
    """The (block / 2)-px cells that the half-overlapping tiles of ``a`` (y, x) are made of, (ny, b/2, nx, b/2)."""
    step = block // 2
    ny, nx = (a.shape[0] - block) // step + 2, (a.shape[1] - block) // step + 2
    return a[: ny * step, : nx * step].reshape(ny, step, nx, step)


def _tile_sums(cells: np.ndarray) -> np.ndarray:
    """Per-tile totals from per-cell totals (ny, nx): each tile is 2 x 2 cells."""
    return cells[:-1, :-1] + cells[1:, :-1] + cells[:-1, 1:] + cells[1:, 1:]


def _tile_means(a: np.ndarray, block: int) -> np.ndarray:
    """``_tiles(a, block).mean(axis=(2, 3))`` for a (y, x) (float64): for an even block, from the sums of the
    (block / 2)-px cells that the half-overlapping tiles are made of, one pass over the slice."""
    if block % 2:
        return _tiles(a, block).mean(axis=(2, 3), dtype=np.float64)
    return _tile_sums(np.einsum("iajb->ij", _cells(a, block), dtype=np.float64)) / (block * block)


def _tile_all(mask: np.ndarray, block: int) -> np.ndarray:
    """Whether each half-overlapping tile of ``mask`` (y, x) lies wholly inside it (for an even block: from its
    cells, each 'all' once)."""
    if block % 2:
        return _tile_means(mask, block) == 1.0
    cells = _cells(mask, block).all(axis=(1, 3))
    return cells[:-1, :-1] & cells[1:, :-1] & cells[:-1, 1:] & cells[1:, 1:]


def _tile_plane_sds(a: np.ndarray, block: int) -> np.ndarray:
    """:func:`block_noise_sd`'s SD about the least-squares plane (ddof 3) of every half-overlapping tile of ``a``
    (y, x), (ny, nx), for an even ``block``, from four moments of each cell and no copy of a block: on a centred grid
    the constant and the two ramps are orthogonal, so the plane's residual sum of squares is the sum of squares
    less each one's projection."""
    step, half, n = block // 2, (block - 1) / 2, block * block
    c = _cells(np.asarray(a, np.float64), block)
    r = np.arange(step, dtype=np.float64)
    s0, s2 = np.einsum("iajb->ij", c), np.einsum("iajb,iajb->ij", c, c)
    total = _tile_sums(s0)
    ramp_x = _tile_sums(np.einsum("iajb,b->ij", c, r)) + step * (s0[:-1, 1:] + s0[1:, 1:]) - half * total
    ramp_y = _tile_sums(np.einsum("iajb,a->ij", c, r)) + step * (s0[1:, :-1] + s0[1:, 1:]) - half * total
    norm = block * float(((np.arange(block) - half) ** 2).sum())
    rss = _tile_sums(s2) - total**2 / n - (ramp_x**2 + ramp_y**2) / norm
    return np.sqrt(np.maximum(rss, 0.0) / (n - 3))


def _candidate_tiles(
    s: np.ndarray, block: int, hu_range: tuple[float, float], region: np.ndarray | None = None
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """(the crop of slice ``s`` that the tiles cover; the flat indices of the half-overlapping tiles of that crop
    that lie inside the body (or ``region``) with their mean in ``hu_range``; their structure scores)."""
    whole = (slice(None), slice(None))
    if min(s.shape) < block:
        return whole, np.zeros(0, int), np.zeros(0)
    body = body_mask(s) if region is None else np.asarray(region, bool)
    crop = _body_box(body, block)
    s, body = s[crop], body[crop]
    if min(s.shape) < block:  # a sliver of tissue at the image's edge holds no block
        return crop, np.zeros(0, int), np.zeros(0)
    inside = _tile_all(body, block)
    means = _tile_means(s, block)
    structure = _tile_means(ndi.gaussian_gradient_magnitude(s, STRUCTURE_SIGMA), block)
    keep = np.flatnonzero(inside & (means >= hu_range[0]) & (means <= hu_range[1]))
    return crop, keep, structure.ravel()[keep]


def _candidates(
    s: np.ndarray, values: np.ndarray, block: int, hu_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tiles of ``values`` (ny, nx, b, b), or (ny, nx, k, b, b) for values (y, x, k), a view; the flat indices of
    the tiles that lie inside the body of slice ``s`` with their mean in ``hu_range``; their structure scores)."""
    crop, keep, score = _candidate_tiles(s, block, hu_range)
    if min(values[crop].shape[:2]) < block:
        return np.zeros((0, 0, block, block)), keep, score
    return _tiles(values[crop], block), keep, score


def _body_box(body: np.ndarray, block: int) -> tuple[slice, slice]:
    """The body's bounding box, widened by the structure filter's reach and started on the tile grid: the same
    blocks and structure scores as on the whole slice, for less filtering (the whole slice when there is no body)."""
    if not body.any():
        return slice(None), slice(None)
    step, reach = max(1, block // 2), int(4.0 * STRUCTURE_SIGMA + 0.5) + 1  # gaussian_filter's truncate=4.0
    box = []
    for axis in (1, 0):
        idx = np.nonzero(body.any(axis=axis))[0]
        lo = max(0, idx[0] - reach) // step * step
        box.append(slice(lo, min(body.shape[1 - axis], idx[-1] + 1 + reach)))
    return box[0], box[1]


def flat_blocks(
    hu: np.ndarray,
    block: int = 24,
    hu_range: tuple[float, float] = FLAT_HU,
    fraction: float = FLAT_FRACTION,
    max_slices: int = 8,
    noise_from: str = "image",
    values: np.ndarray | None = None,
) -> np.ndarray:
    """The flattest soft-tissue blocks inside the body, (K, block, block) float64 (K = 0 when there are none): at
    most ``fraction`` of the candidates, and only those whose structure score is within ``FLAT_FACTOR`` times the
    flattest decile's (blocks crossing an organ edge are left out). Values are HU, or the z second difference
    with ``noise_from="slices"`` (blocks still chosen on the slice itself), or the same blocks of ``values`` (an
    image of ``hu``'s shape, e.g. a denoiser's residual, measured where ``hu`` is flat)."""
    pairs = _as_slices(hu, max_slices, noise_from)
    if values is not None:
        if noise_from != "image" or np.shape(values) != np.shape(hu):
            raise ValueError(f"values must have the image's shape {np.shape(hu)}, got {np.shape(values)}")
        pairs = [(s, v) for (s, _), (v, _) in zip(pairs, _as_slices(values, max_slices))]
    found = [_candidates(s, v, block, hu_range) for s, v in pairs]
    return _flattest(found, fraction)


def flat_block_noise_sds(
    hu2d: np.ndarray,
    images: list[np.ndarray],
    block: int = NOISE_BLOCK,
    hu_range: tuple[float, float] = FLAT_HU,
    region: np.ndarray | None = None,
) -> list[float]:
    """:func:`block_noise_sd` of each of ``images`` (each of the slice's shape) in the flattest blocks of the slice
    ``hu2d``, chosen once (as :func:`flat_blocks` chooses them); NaN for each when there is no flat block. An even
    ``block`` is measured from per-cell moments (:func:`_tile_plane_sds`), without copying the blocks out.
    ``region`` (even blocks): where blocks may lie instead of the body (a crop of lung alone has none)."""
    s = np.asarray(hu2d, np.float32)
    ims = [np.asarray(im, np.float32) for im in images]
    if any(im.shape != s.shape for im in ims):
        raise ValueError(f"images must have the slice's shape {s.shape}, got {[im.shape for im in ims]}")
    if block % 2:
        blocks = _flattest([_candidates(s, np.stack(ims, axis=-1), block, hu_range)], FLAT_FRACTION)
        return [block_noise_sd(blocks[:, c]) if len(blocks) else float("nan") for c in range(len(ims))]
    crop, keep, score = _candidate_tiles(s, block, hu_range, region)
    if len(keep) == 0:
        return [float("nan")] * len(ims)
    chosen = keep[_choose(score, FLAT_FRACTION)]
    return [float(np.median(_tile_plane_sds(im[crop], block).ravel()[chosen])) for im in ims]


def _choose(score: np.ndarray, fraction: float) -> np.ndarray:
    """The selection rule of :func:`flat_blocks`: positions in ``score`` (non-empty) of the chosen candidates,
    flattest first: at most ``fraction`` of them, each within ``FLAT_FACTOR`` times the flattest decile's score."""
    finite = np.flatnonzero(np.isfinite(score))  # a NaN pixel spreads NaN over its neighbours' structure scores
    if len(finite) == 0:
        return np.zeros(0, int)
    order = finite[np.argsort(score[finite], kind="stable")]
    limit = FLAT_FACTOR * float(np.percentile(score[finite], 10))
    return order[: max(1, min(int(np.ceil(fraction * len(finite))), int(np.sum(score[finite] <= limit))))]


def _flattest(found: list[tuple[np.ndarray, np.ndarray, np.ndarray]], fraction: float) -> np.ndarray:
    """The selection rule of :func:`flat_blocks` over the candidates of :func:`_candidates`: the chosen blocks,
    flattest first, (K, [k,] b, b) float64 (only they are copied out of the tiles)."""
    score = np.concatenate([f[2] for f in found])
    if len(score) == 0:
        return np.zeros((0, *found[0][0].shape[-2:]))
    chosen = _choose(score, fraction)
    k = len(chosen)
    source = np.repeat(np.arange(len(found)), [len(f[1]) for f in found])[chosen]
    local = chosen - np.concatenate([[0], np.cumsum([len(f[1]) for f in found])])[source]
    out = np.empty((k, *found[0][0].shape[2:]))
    for i, (tiles, keep, _) in enumerate(found):
        mine = source == i
        out[mine] = tiles[np.divmod(keep[local[mine]], tiles.shape[1])]
    return out


def detrend_plane(blocks: np.ndarray) -> np.ndarray:
    """Each block (..., b, b) minus its least-squares plane (in closed form: on a centred square grid the constant
    and the two ramps are orthogonal, so each is projected out on its own)."""
    b = blocks.shape[-1]
    r = np.arange(b, dtype=np.float64) - (b - 1) / 2
    norm = b * float(r @ r)
    res = blocks - blocks.mean(axis=(-2, -1), keepdims=True)
    slope_x = np.einsum("...yx,x->...", res, r)[..., None, None] / norm
    slope_y = np.einsum("...yx,y->...", res, r)[..., None, None] / norm
    return res - slope_x * r - slope_y * r[:, None]


def noise_sd(
    hu: np.ndarray,
    block: int = NOISE_BLOCK,
    hu_range: tuple[float, float] = FLAT_HU,
    max_slices: int = 8,
    noise_from: str = "image",
) -> float:
    """Noise SD (HU) in automatically found uniform soft-tissue regions; NaN when there are none.
    ``noise_from="slices"`` (contiguous volumes with independent noise per slice) measures the z second
    difference instead, which cancels tissue texture that is continuous across slices."""
    return block_noise_sd(flat_blocks(hu, block, hu_range, max_slices=max_slices, noise_from=noise_from))


def block_noise_sd(blocks: np.ndarray) -> float:
    """The median over ``blocks`` (K, b, b) of the SD about each block's least-squares plane (ddof 3); NaN if K = 0."""
    if len(blocks) == 0:
        return float("nan")
    res = detrend_plane(blocks).reshape(len(blocks), -1)
    sds = np.sqrt((res**2).sum(axis=1) / (res.shape[1] - 3))
    return float(np.median(sds))


def _radial_profile(acf: np.ndarray, max_lag: int, reduce: str) -> np.ndarray:
    """ACF (centred, 1 at lag 0 after normalising) on rings of integer radius: their mean, or their largest |ACF|."""
    n = acf.shape[0]
    if not acf[n // 2, n // 2] > 0:  # no noise in the flat regions: no correlation to speak of
        return np.full(max_lag + 1, np.nan)
    acf = acf / acf[n // 2, n // 2]
    yy, xx = np.indices(acf.shape) - n // 2
    radius = np.rint(np.hypot(yy, xx)).astype(int)
    sel = radius <= max_lag
    if reduce == "max":
        prof = np.zeros(max_lag + 1)
        np.maximum.at(prof, radius[sel], np.abs(acf[sel]))
        return prof
    if reduce != "mean":
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return np.bincount(radius[sel], acf[sel], max_lag + 1) / np.bincount(radius[sel], minlength=max_lag + 1)


def noise_autocorrelation(
    hu: np.ndarray,
    block: int = 32,
    hu_range: tuple[float, float] = FLAT_HU,
    max_slices: int = 8,
    noise_from: str = "image",
    reduce: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """(lags px, noise autocorrelation on rings of radius 0 .. ``block // 2``, 1 at lag 0): the ring mean
    (``reduce="mean"``, the radial ACF) or the largest |ACF| on each ring (``"max"``: the envelope, which sees
    anisotropic correlation that a ring mean averages away); empty when no flat region is found.
    ``noise_from`` as in :func:`noise_sd`."""
    blocks = flat_blocks(hu, block, hu_range, max_slices=max_slices, noise_from=noise_from)
    if len(blocks) == 0:
        return np.zeros(0), np.zeros(0)
    res = detrend_plane(blocks)
    n = 2 * block
    per_block = np.fft.irfft2(np.abs(np.fft.rfft2(res, s=(n, n))) ** 2, s=(n, n))
    per_block /= np.maximum(per_block[:, :1, :1], 1e-12)  # each block's ACF, 1 at lag 0
    pairs = np.fft.irfft2(np.abs(np.fft.rfft2(np.ones((block, block)), s=(n, n))) ** 2, s=(n, n))
    acf = np.fft.fftshift(np.median(per_block, axis=0) * (block * block / np.maximum(pairs, 1.0)))
    yy, xx = np.indices(acf.shape) - n // 2
    far = (np.hypot(yy, xx) >= block / 4) & (np.hypot(yy, xx) <= block / 2)
    base = float(np.mean(acf[far]))  # removing each block's plane pulls the ACF down by about this much
    acf = (acf - base) / (1.0 - base)
    return np.arange(block // 2 + 1, dtype=float), _radial_profile(acf, block // 2, reduce)


def correlation_length(
    hu: np.ndarray,
    threshold: float = 0.1,
    block: int = 32,
    hu_range: tuple[float, float] = FLAT_HU,
    max_slices: int = 8,
    noise_from: str = "image",
) -> float:
    """Noise correlation length (px): the interpolated lag at which |ACF| falls below ``threshold`` in every
    direction (the ring envelope) and stays below it for two lags; NaN when no flat region is found, 0 when the
    flat regions hold no noise. ``noise_from`` as in :func:`noise_sd`. With few flat blocks the envelope's own
    estimation noise reaches the threshold here and there: the threshold is then raised to 1.5 times that floor
    (the envelope's median over the outer half of the lags, where a CT's noise is long uncorrelated), and a lone
    ring above it further out does not count."""
    lags, acf = noise_autocorrelation(hu, block, hu_range, max_slices, noise_from, reduce="max")
    if len(acf) == 0:
        return float("nan")
    if not np.isfinite(acf[0]):  # no noise at all (0/0)
        return 0.0
    env = np.abs(acf)
    threshold = max(threshold, 1.5 * float(np.median(env[len(env) // 2 :])))
    below = env < threshold
    settled = np.flatnonzero(below[1:-1] & below[2:]) + 1  # below at this lag and the next
    last = int(settled[0]) - 1 if len(settled) else len(acf) - 1
    if last + 1 >= len(acf):
        return float(lags[-1])
    a0, a1 = abs(acf[last]), abs(acf[last + 1])
    return float(lags[last] + (a0 - threshold) / max(a0 - a1, 1e-12))


def _ridge(g: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """Non-maximum suppression (Canny): pixels whose gradient is not below its two neighbours across the edge."""
    angle = np.mod(np.rad2deg(np.arctan2(gy, gx)), 180.0)
    sector = (np.floor((angle + 22.5) / 45.0).astype(int)) % 4  # 0: along x, 1: diagonal, 2: along y, 3: anti
    pad = np.pad(g, 1, mode="edge")
    h, w = g.shape
    keep = np.zeros(g.shape, bool)
    for k, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = pad[1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == k) & (g >= ahead) & (g >= behind)
    return keep


def _edge_mask_2d(s: np.ndarray, percentile: float, margin_px: int, window: tuple[float, float] | None) -> np.ndarray:
    body = ndi.binary_erosion(body_mask(s), iterations=margin_px) if margin_px > 0 else body_mask(s)
    if window is not None:  # both sides of the edge inside the window: no bone or air edge (clipping would fool it)
        smooth = ndi.gaussian_filter(s, EDGE_SIGMA)
        span = 2 * int(np.ceil(2 * EDGE_FIND_SIGMA)) + 1
        body &= (ndi.minimum_filter(smooth, span) >= window[0]) & (ndi.maximum_filter(smooth, span) <= window[1])
    if not body.any():
        return body
    gy = ndi.gaussian_filter(s, EDGE_FIND_SIGMA, order=(1, 0))
    gx = ndi.gaussian_filter(s, EDGE_FIND_SIGMA, order=(0, 1))
    g = np.hypot(gy, gx)
    return body & (g >= np.percentile(g[body], percentile)) & (g > 0) & _ridge(g, gy, gx)


def edge_locations(
    hu: np.ndarray,
    percentile: float = 99.0,
    margin_px: int = 4,
    window: tuple[float, float] | None = METRIC_WINDOW,
    max_slices: int = 8,
) -> np.ndarray:
    """Boolean mask (shape of ``hu``) of the centre lines of the strongest edges within ``window`` (both sides):
    the top ``percentile`` of the smoothed gradient inside the body, ``margin_px`` away from the skin, thinned to
    maxima across the edge; on sampled slices only for a volume."""
    a = np.asarray(hu, dtype=np.float32)
    if a.ndim == 2:
        return _edge_mask_2d(a, percentile, margin_px, window)
    mask = np.zeros(a.shape, bool)
    for k in sample_slices(a.shape[0], max_slices):
        mask[k] = _edge_mask_2d(a[k], percentile, margin_px, window)
    return mask


def _noise_gradient_power(s: np.ndarray, g2: np.ndarray) -> float:
    """Mean squared gradient over the flattest soft-tissue blocks of slice ``s``: what noise adds to the squared
    gradient anywhere, edges included; 0 when the slice has no flat region."""
    blocks = _flattest([_candidates(s, g2, 24, FLAT_HU)], 0.3)
    return float(blocks.mean()) if len(blocks) else 0.0


def edge_sharpness(
    hu: np.ndarray,
    pixel_mm: float = 1.0,
    locations: np.ndarray | None = None,
    debias_noise: bool = True,
    **find: Any,
) -> float:
    """Edge sharpness (HU/mm): the RMS gradient magnitude (Gaussian derivative of sigma 1 px) at ``locations``
    (default: the image's own strongest soft-tissue edges, :func:`edge_locations` with ``find`` arguments), with the
    noise's share of the squared gradient (measured in the slice's flat regions) taken out when ``debias_noise``,
    so that a noisy image does not look sharper than its denoised version; NaN when there are no edges."""
    a = np.asarray(hu, dtype=np.float32)
    mask = edge_locations(a, **find) if locations is None else np.asarray(locations, bool)
    if mask.shape != a.shape:
        raise ValueError(f"edge locations of shape {mask.shape} do not match the image {a.shape}")
    stack, masks = a.reshape(-1, *a.shape[-2:]), mask.reshape(-1, *a.shape[-2:])
    power, count = 0.0, 0
    for k in np.flatnonzero(masks.any(axis=(1, 2))):
        g2 = ndi.gaussian_gradient_magnitude(stack[k], EDGE_SIGMA).astype(np.float64) ** 2
        noise = _noise_gradient_power(stack[k], g2) if debias_noise else 0.0
        n = int(masks[k].sum())
        power += n * (float(g2[masks[k]].mean()) - noise)
        count += n
    if count == 0:
        return float("nan")
    return float(np.sqrt(max(power / count, 0.0)) / pixel_mm)


def quality_estimates(
    hu: np.ndarray, pixel_mm: float | Sequence[float], locations: np.ndarray | None = None
) -> dict[str, float]:
    """Noise SD (HU), edge sharpness (HU/mm) and noise correlation length (px and mm) of one image or volume;
    ``pixel_mm`` a number or a volume's spacing (square pixels)."""
    pixel_mm = square_pixel_mm(pixel_mm)
    length = correlation_length(hu)
    return {
        "noise_sd_hu": noise_sd(hu),
        "edge_sharpness_hu_per_mm": edge_sharpness(hu, pixel_mm, locations),
        "correlation_length_px": length,
        "correlation_length_mm": length * pixel_mm,
    }


def worse_than_start(estimates: dict) -> bool:
    """Whether an adapted model's own no-reference estimates (``{"start": ..., "adapted": ...}`` as ``lidnet adapt``
    records them on its card) say it leaves more noise than its starting model and no sharper edges; False when
    they are missing. Measured on real scans, that check was right 6 times of 8 (``benchmarks/adapt_real.py``)."""
    start, adapted = (estimates or {}).get("start") or {}, (estimates or {}).get("adapted") or {}
    values = [d.get(k) for d in (start, adapted) for k in ("noise_sd_hu", "edge_sharpness_hu_per_mm")]
    if any(not isinstance(v, (int, float)) or not np.isfinite(v) for v in values):
        return False
    noise0, edges0, noise1, edges1 = (float(v) for v in values)
    return noise1 > noise0 and edges1 <= edges0


def flat_noise_sd(hu: np.ndarray, slices: list[int], denoised: np.ndarray) -> tuple[float, float]:
    """Noise SD (HU) in automatically found flat soft tissue of the input's selected slices and of the denoised ones
    (:func:`noise_sd`, at most 4 slices each), as the Denoise dock and ``lidnet denoise`` report it; NaN where no
    flat region is found."""
    src, den = np.asarray(hu), np.asarray(denoised)
    if src.ndim == 3:  # only the (at most 4) slices measured: a copy of a whole study's input cost its size again
        picks = sample_slices(len(slices), 4)
        src, den = src[np.asarray(slices)[picks]], den[picks] if den.ndim == 3 else den
    return noise_sd(src, max_slices=4), noise_sd(den, max_slices=4)
