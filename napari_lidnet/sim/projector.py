"""Parallel-beam forward projection and filtered back projection in torch (CPU or CUDA, batched).

Geometry (the conventions of ``skimage.transform.radon``, so the two agree):

- image (B, N, N), pixel centres at ``col - N//2`` and ``row - N//2`` (pixel units), pixel size ``pixel_mm``;
- view angles ``theta_k = k * pi / n_angles``, k = 0 .. n_angles-1 (half rotation suffices for parallel beam);
- detector coordinate of a point: ``t = x cos(theta) - y sin(theta)`` with x = column and y = row offsets, so
  ``theta = 0`` integrates along the columns (down the rows); ``n_det`` bins of one pixel width, centre bin
  ``n_det // 2``; ``n_det`` is the smallest odd number >= N * sqrt(2), so every ray through the image is seen.
- sinogram layout (B, n_angles, n_det), values are line integrals: the sum of bilinear samples along the ray, one
  per pixel length, times ``pixel_mm`` (so mu in 1/mm gives dimensionless line integrals).

Default number of views: ``ceil(pi/2 * N / 16) * 16`` (816 for N = 512). A parallel-beam scan of an object of
diameter N pixels is angularly Nyquist-sampled with pi/2 * N views (Natterer, *The Mathematics of Computerized
Tomography*, ch. III.2); clinical scanners use ~1000 views per rotation in a fan geometry, which rebins to about
this many parallel views. Fewer views give streaks; more only cost time.

When the image is zero outside its inscribed circle (CT reconstruction FOV: the phantoms and air-padded scans),
forward projection samples only the N x N square that covers the circle and back projection fills only the circle
(``circle=True``, about 2x faster); otherwise the whole padded diagonal square is sampled. Back projection takes
four views through one sampling grid when their number is a multiple of 4, and on CPU works in tiles of pixels x
views whose samples stay in cache. ``offset=0.5`` (``fbp``, ``back_project``) puts the views at (k + 1/2) pi / n.
``forward_project_coarse`` + ``resample_sinogram``: line integrals from a blurred, subsampled image on a coarse
grid, for what varies slowly across a sinogram (the variance map of the fast noise insertion in ``sim.lowdose``).

Per-geometry constants (angles, ramp filters, sampling offsets) are cached keyed by (N, n_angles, device, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

FILTERS = ("ram-lak", "shepp-logan", "cosine", "hamming", "hann")

#: named reconstruction kernels, smooth to sharp: a FILTERS name or an ``"apod:<cutoff>:<order>:<boost>"`` spec
KERNELS = {
    "smooth": "apod:0.18:3:0",
    "soft": "hann",
    "standard": "shepp-logan",
    "sharp": "apod:0.50:6:0.3",
    "bone": "apod:0.45:8:0.9",
}

#: sample points per grid_sample call: small chunks keep the grids in cache (measured fastest on CPU)
_CHUNK_ELEMENTS = 1 << 20
#: back projection on CPU: pixels per tile and samples per grid_sample call (see ``_accumulate_views``)
_BP_TILE_PIXELS = 4096
_BP_TILE_POINTS = 1 << 16


def default_n_angles(size: int) -> int:
    """Views for Nyquist angular sampling of an object of diameter ``size`` pixels: ceil(pi/2*size), to 16."""
    return int(math.ceil(math.pi / 2 * size / 16) * 16)


def detector_bins(size: int) -> int:
    """Smallest odd number of one-pixel detector bins covering the image diagonal."""
    n = int(math.ceil(size * math.sqrt(2)))
    return n + 1 - n % 2


@dataclass
class Geometry:
    """Cached constants for one (size, n_angles, device) parallel-beam geometry; views at (k + offset) * pi / n."""

    size: int
    n_angles: int
    device: torch.device
    offset: float = 0.0
    n_det: int = 0
    cos: torch.Tensor = field(default=None, repr=False)
    sin: torch.Tensor = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.n_det = detector_bins(self.size)
        theta = (torch.arange(self.n_angles, dtype=torch.float64) + self.offset) * (math.pi / self.n_angles)
        self.cos = torch.cos(theta).to(self.device, torch.float32)
        self.sin = torch.sin(theta).to(self.device, torch.float32)

    @property
    def angles_deg(self) -> torch.Tensor:
        """View angles in degrees (for comparison with skimage)."""
        return (torch.arange(self.n_angles, dtype=torch.float64) + self.offset) * (180.0 / self.n_angles)


@lru_cache(maxsize=16)
def get_geometry(size: int, n_angles: int, device: str, offset: float = 0.0) -> Geometry:
    """The cached geometry for an image size, view count, device string and view offset (in views)."""
    return Geometry(size, n_angles, torch.device(device), offset)


@lru_cache(maxsize=8)
def circle_mask(size: int, device: str) -> torch.Tensor:
    """(size, size) float mask of the inscribed circle (radius size/2 about the centre pixel)."""
    v = torch.arange(size, dtype=torch.float32) - size // 2
    return ((v.view(-1, 1) ** 2 + v.view(1, -1) ** 2) <= (size / 2.0) ** 2).float().to(device)


def apod_spec(cutoff: float, order: float, boost: float = 0.0) -> str:
    """The kernel name of a parametric apodised ramp (see ``apod_window``), rounded to 3 decimals."""
    return f"apod:{cutoff:.3f}:{order:.3g}:{boost:.3f}"


def apod_window(f: torch.Tensor, cutoff: float, order: float, boost: float) -> torch.Tensor:
    """Butterworth roll-off 1 / (1 + (f / cutoff)^(2 order)) times edge enhancement 1 + boost sin^2(pi f).

    ``f`` in cycles/pixel (Nyquist 0.5); ``cutoff`` is where the window is 1/2 (about the MTF50 of the kernel);
    ``boost`` > 0 lifts mid-high frequencies (bone / lung kernels, edge overshoot).
    """
    return (1.0 + boost * torch.sin(math.pi * f) ** 2) / (1.0 + (f / cutoff) ** (2.0 * order))


def parse_kernel(name: str) -> tuple[str, tuple[float, float, float] | None]:
    """(FILTERS name, None) or ("apod", (cutoff, order, boost)) for a kernel name; ValueError if unknown."""
    name = KERNELS.get(name, name)
    if name in FILTERS:
        return name, None
    parts = name.split(":") if isinstance(name, str) else []
    if len(parts) in (3, 4) and parts[0] == "apod":
        try:
            cutoff, order, boost = (float(v) for v in (*parts[1:], "0")[:3])
        except ValueError:
            parts = []
        else:
            if 0.02 <= cutoff <= 1.0 and 0.5 <= order <= 20 and 0.0 <= boost <= 3.0:
                return "apod", (cutoff, order, boost)
    raise ValueError(
        f"unknown FBP filter {name!r}; choose one of {FILTERS}, a kernel of {tuple(KERNELS)} "
        "or 'apod:<cutoff 0.02-1>:<order 0.5-20>:<boost 0-3>'"
    )


@lru_cache(maxsize=32)
def ramp_filter(n_det: int, filter_name: str, device: str, band: float = 1.0) -> torch.Tensor:
    """Frequency response (rfft bins) of the discrete ramp filter with apodisation, for zero padding to 2x.

    The ramp is the FFT of the spatial Ram-Lak kernel (h0 = 1/4, h_n = -1/(pi n)^2 for odd n, 0 for even n), which
    avoids the DC error of a sampled |f|; windows multiply it in frequency (f in cycles/pixel, up to 0.5).
    ``filter_name``: one of FILTERS, a KERNELS name, or an ``apod:`` spec (``apod_window``). ``band`` < 1: the
    data of a scanner that samples every ``1 / band`` bins, filtered at its sampling and linearly interpolated to
    the bins (``lowdose``'s ``sampling_mm``: the noise of a detector coarser than the pixels): its response
    repeats with period ``band`` (the samples' spectrum), the window at the folded frequency, times the scanner's
    interpolation (sinc^2 at its sampling) over the bins' own (``back_project`` interpolates between bins), so
    that the response tends to the plain one as ``band`` tends to 1.
    """
    if not 0.0 < band <= 1.0:
        raise ValueError(f"band must be in (0, 1], got {band}")
    base, apod = parse_kernel(filter_name)
    pad = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
    n = torch.cat([torch.arange(1, pad // 2 + 1), torch.arange(pad // 2 - 1, 0, -1)]).double()
    h = torch.zeros(pad, dtype=torch.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[1:][odd] = -1.0 / (math.pi * n[odd]) ** 2
    resp = torch.fft.rfft(h).real  # ~ |f| in cycles/pixel, 1/2 at Nyquist
    f = torch.fft.rfftfreq(pad, dtype=torch.float64)  # cycles per pixel
    if band < 1.0:  # per scanner sample: folded into its Nyquist band, the ramp taken there
        fk = f / band
        folded = (fk - torch.round(fk)).abs()
        ramp = torch.from_numpy(np.interp(folded * band, f, resp))
        # the scanner's linear interpolation (sinc^2 at its sampling) in place of the bins' own (back_project's)
        resp, f = ramp * torch.sinc(fk) ** 2 / torch.sinc(f) ** 2, folded
    w = 2 * math.pi * f
    if base == "shepp-logan":
        resp[f > 0] *= torch.sin(w[f > 0] / 2) / (w[f > 0] / 2)
    elif base == "cosine":
        resp *= torch.cos(w / 2)
    elif base == "hamming":
        resp *= 0.54 + 0.46 * torch.cos(w)
    elif base == "hann":
        resp *= 0.5 + 0.5 * torch.cos(w)
    elif apod is not None:
        resp *= apod_window(f, *apod)
    return resp.to(device, torch.float32)


def _as_batch(x: torch.Tensor, what: str) -> tuple[torch.Tensor, bool]:
    if x.ndim == 2:
        return x.unsqueeze(0), True
    if x.ndim != 3:
        raise ValueError(f"{what} must be (H, W) or (B, H, W), got shape {tuple(x.shape)}")
    return x, False


def is_inside_circle(images: torch.Tensor, tol: float = 0.0) -> bool:
    """Whether every image of a (B, N, N) batch is (nearly) zero outside its inscribed circle."""
    outside = circle_mask(images.shape[-1], str(images.device)) == 0
    return bool((images[..., outside].abs() <= tol).all())


def forward_project(
    images: torch.Tensor, pixel_mm: float = 1.0, n_angles: int | None = None, circle: bool | None = None
) -> torch.Tensor:
    """Line integrals of (B, N, N) or (N, N) images: (B, n_angles, n_det) sinograms (units of image x mm).

    ``circle``: sample only the inscribed circle's square (None: decide from the data); then, with a multiple of 4
    views, four views share one sampling grid (``_sym_maps``: same result to float rounding, faster on CPU).
    """
    x, squeeze = _as_batch(images, "image")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"projector needs square images, got {tuple(x.shape[-2:])}")
    x = x.float()
    size = x.shape[-1]
    n_angles = n_angles or default_n_angles(size)
    geo = get_geometry(size, n_angles, str(x.device))
    if circle is None:
        circle = is_inside_circle(x)
    # rays: detector bins within +-N/2 of the centre when circle, all n_det bins otherwise
    # circle: t and s within +-(size//2 + 1) pixels cover the circle and the bilinear footprint of its edge pixels
    n_t = min(2 * (size // 2 + 1) + 1, geo.n_det) if circle else geo.n_det
    lo = geo.n_det // 2 - n_t // 2
    out = torch.zeros(x.shape[0], n_angles, geo.n_det, dtype=torch.float32, device=x.device)
    if circle and n_angles % 4 == 0 and n_angles >= 8:
        _forward_sym(x, geo, n_t, out[..., lo : lo + n_t])
    else:
        _forward_views(x.unsqueeze(0), geo, torch.arange(n_angles, device=x.device), n_t, out[..., lo : lo + n_t])
    out *= pixel_mm
    return out[0] if squeeze else out


def _forward_views(inp: torch.Tensor, geo: Geometry, idx: torch.Tensor, n_t: int, out: torch.Tensor) -> None:
    """Ray sums of the (1, C, N, N) images at views ``idx`` into ``out`` (C, len(idx), n_t), bilinear sampling.

    Sample points (col, row) = centre + t * (cos, -sin) + s * (sin, cos), t and s in -n_t//2 .. n_t//2 pixels;
    normalised for grid_sample (align_corners=True): g = index * 2/(size-1) - 1. Each grid component is an outer
    sum of a t-vector and an s-vector, built in one pass into a reused buffer.
    """
    size, n_ch = inp.shape[-1], inp.shape[1]
    k = 2.0 / (size - 1)
    u = (torch.arange(n_t, dtype=torch.float32, device=inp.device) - n_t // 2) * k
    centre = (size // 2) * k - 1.0
    chunk = max(1, _CHUNK_ELEMENTS // (n_t * n_t))
    grid = torch.empty(chunk, n_t, n_t, 2, dtype=torch.float32, device=inp.device)
    for a0 in range(0, idx.numel(), chunk):
        views = idx[a0 : a0 + chunk]
        c = geo.cos[views].view(-1, 1, 1)
        sn = geo.sin[views].view(-1, 1, 1)
        m = c.shape[0]
        g = grid[:m]
        torch.add(u.view(1, 1, -1) * c + centre, u.view(1, -1, 1) * sn, out=g[..., 0])
        torch.add(u.view(1, -1, 1) * c + centre, u.view(1, 1, -1) * -sn, out=g[..., 1])
        samp = F.grid_sample(inp, g.view(1, m * n_t, n_t, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
        out[:, a0 : a0 + m] = samp[0].view(n_ch, m, n_t, n_t).sum(2)


def _forward_sym(x: torch.Tensor, geo: Geometry, n_t: int, out: torch.Tensor) -> None:
    """``_forward_views`` of n % 4 == 0 views: base views k <= n/4 of the four transformed images (see ``_sym_maps``).

    View alpha of image f equals base view theta of f(M^T x): the transposes / flips of the image (on an odd grid, so
    exact about the centre) become channels sharing one grid. ``out``: (B, n_angles, n_t).
    """
    n_batch, size, n = x.shape[0], x.shape[-1], geo.n_angles
    views = _sym_maps(n, size, str(x.device))[0]
    odd = size + 1 - size % 2
    f = F.pad(x, (0, odd - size, 0, odd - size))  # offsets -size//2 .. +size//2 on both axes
    # f_g[y, x] = f at M^T (x, y): M^T = M for the transpose-flip and the flip; the rotation's M^T is (y, -x)
    ft = f.transpose(-1, -2)
    imgs = torch.cat([f, ft.flip(-1, -2), ft.flip(-1), f.flip(-1)])
    sino = torch.empty(4 * n_batch, views.shape[1], n_t, dtype=torch.float32, device=x.device)
    geo_odd = Geometry(odd, n, x.device) if odd != size else geo
    _forward_views(imgs.unsqueeze(0), geo_odd, torch.arange(views.shape[1], device=x.device), n_t, sino)
    sino = sino.view(4, n_batch, -1, n_t)
    for g in range(4):
        ok = views[g] >= 0
        out[:, views[g][ok]] = sino[g][:, ok]


def coarse_views(n_angles: int, step: int) -> int:
    """Views of a ``forward_project_coarse`` sinogram: n_angles / step rounded up to a multiple of 4, at least 8."""
    return max(8, 4 * math.ceil(n_angles / (4 * step)))


def _triangle_blur(x: torch.Tensor, step: int) -> torch.Tensor:
    """(B, N, N) images convolved with a separable triangle of half-width ``step`` pixels (unit sum, zero padding)."""
    w = step - torch.arange(1 - step, step, dtype=x.dtype, device=x.device).abs()
    w = w / w.sum()
    y = F.conv2d(x.unsqueeze(1), w.view(1, 1, 1, -1), padding=(0, step - 1))
    return F.conv2d(y, w.view(1, 1, -1, 1), padding=(step - 1, 0))[:, 0]


def downsample(images: torch.Tensor, step: int) -> torch.Tensor:
    """(B, N, N) images blurred with a triangle of half-width ``step`` and sampled every ``step`` pixels about the
    centre pixel: (B, M, M), M = 2 (N//2 // step + 1) + 1, its centre pixel M//2 on the centre pixel N//2 (zeros
    beyond the image), so its projections line up with the full image's at ``step`` times the pixel size."""
    x, squeeze = _as_batch(images, "image")
    c, half = x.shape[-1] // 2, x.shape[-1] // 2 // step + 1
    blurred = F.pad(_triangle_blur(x.float(), step), (2 * step,) * 4)
    idx = c + 2 * step + step * torch.arange(-half, half + 1, device=x.device)
    out = blurred[:, idx][:, :, idx]
    return out[0] if squeeze else out


def forward_project_coarse(
    images: torch.Tensor, pixel_mm: float = 1.0, n_angles: int | None = None, step: int = 2, circle: bool | None = None
) -> torch.Tensor:
    """Line integrals of (B, N, N) images on a grid ``step`` times coarser in views, detector bins and samples along
    the ray (about step^3 times less work than ``forward_project``): ``forward_project`` of ``downsample(images)``.

    For what varies slowly across a sinogram (the expected counts that set the variance of inserted noise):
    (B, n_c, n_tc) with views theta_k = k * pi / n_c, n_c = ``coarse_views(n_angles, step)``, and bins at
    t = step * (i - n_tc // 2) pixels covering those of ``forward_project``; ``resample_sinogram`` interpolates it
    to any views and the one-pixel bins.
    """
    x, _ = _as_batch(images, "image")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"projector needs square images, got {tuple(x.shape[-2:])}")
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step!r}")
    n_c = coarse_views(n_angles or default_n_angles(x.shape[-1]), int(step))
    return forward_project(downsample(images, int(step)), pixel_mm * step, n_c, circle=circle)


def resample_sinogram(coarse: torch.Tensor, step: int, theta: torch.Tensor, n_det: int) -> torch.Tensor:
    """Bilinear interpolation of a (B, n_c, n_tc) ``forward_project_coarse`` sinogram at the view angles ``theta``
    (radians, within [-pi / n_c, pi]) and ``n_det`` one-pixel bins: (B, len(theta), n_det).

    Views wrap around with the detector reversed (view theta + pi is view theta at -t); bins beyond the coarse
    ones are zero.
    """
    n_c, n_tc = coarse.shape[-2:]
    lo, hi = float(theta.min()), float(theta.max())
    if lo < -math.pi / n_c - 1e-6 or hi > math.pi + 1e-6:
        raise ValueError(f"view angles must lie in [-pi/{n_c}, pi], got {lo:.4f} .. {hi:.4f}")
    ext = torch.cat([coarse[..., -1:, :].flip(-1), coarse, coarse[..., :1, :].flip(-1)], dim=-2)  # views -1 .. n_c
    x, squeeze = _as_batch(ext, "sinogram")
    dev = x.device
    t = (torch.arange(n_det, dtype=torch.float32, device=dev) - n_det // 2) / step + n_tc // 2
    gx = t * (2.0 / (n_tc - 1)) - 1.0
    gy = (theta.to(torch.float32).to(dev) * (n_c / math.pi) + 1.0) * (2.0 / (n_c + 1)) - 1.0
    grid = torch.stack(torch.broadcast_tensors(gx.view(1, -1), gy.view(-1, 1)), dim=-1)
    out = F.grid_sample(x.unsqueeze(0), grid.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0, 0] if squeeze else out[0]


def filter_sinogram(sino: torch.Tensor, filter_name: str = "ram-lak", band: float = 1.0) -> torch.Tensor:
    """Ramp-filter (B, n_angles, n_det) sinograms along the detector, with zero padding (pixel units); ``band``:
    see :func:`ramp_filter`."""
    n_det = sino.shape[-1]
    resp = ramp_filter(n_det, filter_name, str(sino.device), band)
    pad = 2 * (resp.shape[0] - 1)
    spec = torch.fft.rfft(sino.float(), n=pad, dim=-1) * resp
    return torch.fft.irfft(spec, n=pad, dim=-1)[..., :n_det]


def back_project(filtered: torch.Tensor, size: int, circle: bool = False, offset: float = 0.0) -> torch.Tensor:
    """Sum over views of linearly interpolated (B, n_angles, n_det) data at each pixel: (B, size, size).

    ``circle``: fill only the inscribed circle (zeros outside). With a multiple of 4 views, views are taken four at
    a time through one sampling grid (``_back_project_sym``: the same result to float rounding, ~1.7x faster on
    CPU), over the disc only when ``circle``. ``offset``: views at (k + offset) * pi / n_angles, 0 <= offset < 1
    (0.5: no view along the pixel grid's axes).
    """
    q, squeeze = _as_batch(filtered, "sinogram")
    n_angles, n_det = q.shape[1:]
    if n_det != detector_bins(size):
        raise ValueError(f"sinogram has {n_det} detector bins, expected {detector_bins(size)} for size {size}")
    if not 0.0 <= offset < 1.0:
        raise ValueError(f"view offset must be in [0, 1) views, got {offset}")
    if n_angles % 4 == 0 and n_angles >= 8 and offset in (0.0, 0.5):
        out = _back_project_sym(q.float(), size, offset, square=not circle)
    else:
        out = _back_project_direct(q.float(), size, offset)
    if circle:
        out *= circle_mask(size, str(q.device))
    return out[0] if squeeze else out


def _accumulate_views(inp: torch.Tensor, xy: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Sum over the rows r of ``inp`` (1, C, R, n_det) of row r linearly interpolated at t = x cos_r - y sin_r
    (bin n_det // 2 + t) for the pixel offsets ``xy`` (2, P): (C, P).

    On CPU each grid_sample call covers a tile of _BP_TILE_PIXELS pixels x rows (_BP_TILE_POINTS samples), so
    its output stays in cache (~2x faster than whole images); other devices take whole images per call.
    """
    n_ch, n_rows, n_det = inp.shape[1:]
    n_pix, dev = xy.shape[1], inp.device
    sx = 2.0 / (n_det - 1)
    gy = torch.arange(n_rows, dtype=torch.float32, device=dev) * (2.0 / max(n_rows - 1, 1)) - 1.0
    c, s, off = cos.view(-1, 1) * sx, sin.view(-1, 1) * -sx, (n_det // 2) * sx - 1.0
    if dev.type == "cpu":
        p_tile = min(n_pix, _BP_TILE_PIXELS)
        r_tile = max(1, _BP_TILE_POINTS // p_tile)
    else:
        p_tile, r_tile = n_pix, max(1, _CHUNK_ELEMENTS // n_pix)
    acc = torch.zeros(n_ch, n_pix, dtype=torch.float32, device=dev)
    grid = torch.empty(r_tile * p_tile * 2, dtype=torch.float32, device=dev)
    for p0 in range(0, n_pix, p_tile):
        x, y = xy[0, p0 : p0 + p_tile].view(1, -1), xy[1, p0 : p0 + p_tile].view(1, -1)
        for r0 in range(0, n_rows, r_tile):
            r1 = min(n_rows, r0 + r_tile)
            g = grid[: (r1 - r0) * x.shape[1] * 2].view(1, r1 - r0, x.shape[1], 2)
            torch.add(x * c[r0:r1] + off, y * s[r0:r1], out=g[0, ..., 0])
            g[0, ..., 1] = gy[r0:r1].view(-1, 1)
            samp = F.grid_sample(inp, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            acc[:, p0 : p0 + x.shape[1]] += samp[0].sum(1)
    return acc


def _back_project_direct(q: torch.Tensor, size: int, offset: float = 0.0) -> torch.Tensor:
    """Back projection of every view over the full square (any number of views)."""
    n_batch, n_angles, _ = q.shape
    geo = get_geometry(size, n_angles, str(q.device), offset)
    v = torch.arange(size, dtype=torch.float32, device=q.device) - size // 2
    yy, xx = torch.meshgrid(v, v, indexing="ij")
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)])
    return _accumulate_views(q.unsqueeze(0), xy, geo.cos, geo.sin).view(n_batch, size, size)


@lru_cache(maxsize=8)
def _sym_maps(
    n_angles: int, size: int, device: str, half: bool = False, square: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views and pixel maps of the 4-fold symmetric back projection (n_angles % 4 == 0).

    Base view k (0 <= k <= n/4) at theta serves views k, n/2 - k, n/2 + k and n - k (pi/2 - theta, pi/2 + theta,
    pi - theta): view alpha at pixel x equals base view theta at pixel M x (M a 90-degree rotation, transpose or
    flip, exact about the centre pixel). Pixels are those of the inscribed disc of radius size/2 + 1, or with
    ``square`` of the square of offsets -size//2 .. size//2 (sets closed under M), as a list. Returns view indices
    (4, n/4 + 1) with -1 where a view would be counted twice (k = 0 and k = n/4), the (x, y) offsets (2, P) of the
    listed pixels, the list position of M x (4, P) per map, and the flat index of each listed pixel in the
    (size, size) image (-1 for those outside it). ``half``: views at (k + 1/2) pi / n, base views k < n/4 serving
    k, n/2 - 1 - k, n/2 + k and n - 1 - k (none counted twice).
    """
    n, m = n_angles, n_angles // 4
    if half:
        k = torch.arange(m)
        views = torch.stack([k, n // 2 - 1 - k, n // 2 + k, n - 1 - k])
    else:
        k = torch.arange(m + 1)
        views = torch.stack([k, n // 2 - k, n // 2 + k, n - k])
        views[2, 0] = views[3, 0] = -1  # k = 0: n/2 + 0 is n/2 - 0, and n - 0 is view 0
        views[1, m] = views[3, m] = -1  # k = n/4: n/2 - n/4 is n/4, and n - n/4 is n/2 + n/4
    c = size // 2 + 1
    y, x = torch.meshgrid(torch.arange(-c, c + 1), torch.arange(-c, c + 1), indexing="ij")
    if square:
        keep = (x.abs() < c) & (y.abs() < c)
    else:
        keep = (x**2 + y**2).double() <= (size / 2.0 + 1.0) ** 2
    x, y = x[keep], y[keep]
    pos = torch.full((2 * c + 1, 2 * c + 1), -1, dtype=torch.long)
    pos[y + c, x + c] = torch.arange(x.numel())
    perm = torch.stack([pos[yy + c, xx + c] for xx, yy in [(x, y), (-y, -x), (-y, x), (-x, y)]])
    cols, rows = x + size // 2, y + size // 2
    inside = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    flat = torch.where(inside, rows * size + cols, torch.full_like(cols, -1))
    xy = torch.stack([x, y]).float()
    return views.to(device), xy.to(device), perm.to(device), flat.to(device)


def _back_project_sym(q: torch.Tensor, size: int, offset: float = 0.0, square: bool = False) -> torch.Tensor:
    """Back projection of n_angles % 4 == 0 views, four views per bilinear sampling grid (see ``_sym_maps``).

    Computes the disc of radius size/2 + 1 (zeros beyond it; ``back_project`` cuts it to size/2) or, with
    ``square``, every pixel.
    """
    n_batch, n_angles, n_det = q.shape
    dev = str(q.device)
    views, xy, perm, flat = _sym_maps(n_angles, size, dev, offset == 0.5, square)
    m1, n_pix = views.shape[1], xy.shape[1]
    geo = get_geometry(size, n_angles, dev, offset)
    padded = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # index -1: a zero view
    inp = padded[:, views.reshape(-1)].view(n_batch, 4, m1, n_det).transpose(0, 1).reshape(1, -1, m1, n_det)
    acc = _accumulate_views(inp, xy, geo.cos[:m1], geo.sin[:m1]).view(4, n_batch, n_pix)
    disc = acc[0] + acc[1][:, perm[1]] + acc[2][:, perm[2]] + acc[3][:, perm[3]]
    out = torch.zeros(n_batch, size * size, dtype=torch.float32, device=q.device)
    ok = flat >= 0
    out[:, flat[ok]] = disc[:, ok]
    return out.view(n_batch, size, size)


def fbp(
    sino: torch.Tensor,
    size: int,
    pixel_mm: float = 1.0,
    filter_name: str = "ram-lak",
    circle: bool = False,
    offset: float = 0.0,
    band: float = 1.0,
) -> torch.Tensor:
    """Filtered back projection of line-integral sinograms from ``forward_project``: (B, size, size).

    Scale: f = pi / (n_angles * pixel_mm) * sum_views (ramp * p)(t), the discrete inverse Radon transform.
    ``offset``: views at (k + offset) * pi / n_angles (see ``back_project``); ``band``: see :func:`ramp_filter`.
    """
    q, squeeze = _as_batch(sino, "sinogram")
    img = back_project(filter_sinogram(q, filter_name, band), size, circle=circle, offset=offset)
    img *= math.pi / (q.shape[1] * pixel_mm)
    return img[0] if squeeze else img
