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
(``circle=True``, about 2x faster); otherwise the whole padded diagonal square is sampled.

Per-geometry constants (angles, ramp filters, sampling offsets) are cached keyed by (N, n_angles, device, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

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


def default_n_angles(size: int) -> int:
    """Views for Nyquist angular sampling of an object of diameter ``size`` pixels: ceil(pi/2*size), to 16."""
    return int(math.ceil(math.pi / 2 * size / 16) * 16)


def detector_bins(size: int) -> int:
    """Smallest odd number of one-pixel detector bins covering the image diagonal."""
    n = int(math.ceil(size * math.sqrt(2)))
    return n + 1 - n % 2


@dataclass
class Geometry:
    """Cached constants for one (size, n_angles, device) parallel-beam geometry."""

    size: int
    n_angles: int
    device: torch.device
    n_det: int = 0
    cos: torch.Tensor = field(default=None, repr=False)
    sin: torch.Tensor = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.n_det = detector_bins(self.size)
        theta = torch.arange(self.n_angles, dtype=torch.float64) * (math.pi / self.n_angles)
        self.cos = torch.cos(theta).to(self.device, torch.float32)
        self.sin = torch.sin(theta).to(self.device, torch.float32)

    @property
    def angles_deg(self) -> torch.Tensor:
        """View angles in degrees (for comparison with skimage)."""
        return torch.arange(self.n_angles, dtype=torch.float64) * (180.0 / self.n_angles)


@lru_cache(maxsize=16)
def get_geometry(size: int, n_angles: int, device: str) -> Geometry:
    """The cached geometry for an image size, view count and device string."""
    return Geometry(size, n_angles, torch.device(device))


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
def ramp_filter(n_det: int, filter_name: str, device: str) -> torch.Tensor:
    """Frequency response (rfft bins) of the discrete ramp filter with apodisation, for zero padding to 2x.

    The ramp is the FFT of the spatial Ram-Lak kernel (h0 = 1/4, h_n = -1/(pi n)^2 for odd n, 0 for even n), which
    avoids the DC error of a sampled |f|; windows multiply it in frequency (f in cycles/pixel, up to 0.5).
    ``filter_name``: one of FILTERS, a KERNELS name, or an ``apod:`` spec (``apod_window``).
    """
    base, apod = parse_kernel(filter_name)
    pad = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
    n = torch.cat([torch.arange(1, pad // 2 + 1), torch.arange(pad // 2 - 1, 0, -1)]).double()
    h = torch.zeros(pad, dtype=torch.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[1:][odd] = -1.0 / (math.pi * n[odd]) ** 2
    resp = torch.fft.rfft(h).real  # ~ |f| in cycles/pixel, 1/2 at Nyquist
    f = torch.fft.rfftfreq(pad, dtype=torch.float64)  # cycles per pixel
    w = 2 * math.pi * f
    if base == "shepp-logan":
        resp[1:] *= torch.sin(w[1:] / 2) / (w[1:] / 2)
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


def filter_sinogram(sino: torch.Tensor, filter_name: str = "ram-lak") -> torch.Tensor:
    """Ramp-filter (B, n_angles, n_det) sinograms along the detector, with zero padding (pixel units)."""
    n_det = sino.shape[-1]
    resp = ramp_filter(n_det, filter_name, str(sino.device))
    pad = 2 * (resp.shape[0] - 1)
    spec = torch.fft.rfft(sino.float(), n=pad, dim=-1) * resp
    return torch.fft.irfft(spec, n=pad, dim=-1)[..., :n_det]


def back_project(filtered: torch.Tensor, size: int, circle: bool = False) -> torch.Tensor:
    """Sum over views of linearly interpolated (B, n_angles, n_det) data at each pixel: (B, size, size).

    ``circle``: fill only the inscribed circle (zeros outside); then, with a multiple of 4 views, only the disc is
    computed and views are taken four at a time through one sampling grid (``_back_project_sym``: the same result
    to float rounding, ~1.7x faster on CPU).
    """
    q, squeeze = _as_batch(filtered, "sinogram")
    n_angles, n_det = q.shape[1:]
    if n_det != detector_bins(size):
        raise ValueError(f"sinogram has {n_det} detector bins, expected {detector_bins(size)} for size {size}")
    if circle and n_angles % 4 == 0 and n_angles >= 8:
        out = _back_project_sym(q.float(), size)
    else:
        out = _back_project_direct(q.float(), size)
    if circle:
        out *= circle_mask(size, str(q.device))
    return out[0] if squeeze else out


def _back_project_direct(q: torch.Tensor, size: int) -> torch.Tensor:
    """Back projection with one bilinear grid_sample per view (any number of views)."""
    n_batch, n_angles, n_det = q.shape
    geo = get_geometry(size, n_angles, str(q.device))
    # grid over the full square: gx = t(x, y) normalised over the detector (outer sum of an x- and a y-vector),
    # gy = the view's row
    sx = 2.0 / (n_det - 1)
    sy = 2.0 / (n_angles - 1) if n_angles > 1 else 0.0
    v = torch.arange(size, dtype=torch.float32, device=q.device) - size // 2
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    grid = torch.empty(chunk, size, size, 2, dtype=torch.float32, device=q.device)
    inp = q.unsqueeze(0)  # (1, B, n_angles, n_det)
    out = torch.zeros(n_batch, size, size, dtype=torch.float32, device=q.device)
    for a0 in range(0, n_angles, chunk):
        a1 = min(n_angles, a0 + chunk)
        m = a1 - a0
        c = geo.cos[a0:a1].view(-1, 1, 1) * sx
        sn = geo.sin[a0:a1].view(-1, 1, 1) * sx
        g = grid[:m]
        torch.add(v.view(1, 1, -1) * c + ((n_det // 2) * sx - 1.0), v.view(1, -1, 1) * -sn, out=g[..., 0])
        rows = torch.arange(a0, a1, dtype=torch.float32, device=q.device) * sy - 1.0
        g[..., 1] = rows.view(-1, 1, 1)
        samp = F.grid_sample(
            inp, g.view(1, m * size, size, 2), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out += samp[0].view(n_batch, m, size, size).sum(1)
    return out


@lru_cache(maxsize=8)
def _sym_maps(n_angles: int, size: int, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views and pixel maps of the 4-fold symmetric back projection (n_angles % 4 == 0).

    Base view k (0 <= k <= n/4) at theta serves views k, n/2 - k, n/2 + k and n - k (pi/2 - theta, pi/2 + theta,
    pi - theta): view alpha at pixel x equals base view theta at pixel M x (M a 90-degree rotation, transpose or
    flip, exact about the centre pixel). Pixels are those of the inscribed disc of radius size/2 + 1 (a set closed
    under M), as a list. Returns view indices (4, n/4 + 1) with -1 where a view would be counted twice (k = 0 and
    k = n/4), the (x, y) offsets (2, P) of the listed pixels, the list position of M x (4, P) per map, and the flat
    index of each listed pixel in the (size, size) image (-1 for those outside it).
    """
    n, m = n_angles, n_angles // 4
    k = torch.arange(m + 1)
    views = torch.stack([k, n // 2 - k, n // 2 + k, n - k])
    views[2, 0] = views[3, 0] = -1  # k = 0: n/2 + 0 is n/2 - 0, and n - 0 is view 0
    views[1, m] = views[3, m] = -1  # k = n/4: n/2 - n/4 is n/4, and n - n/4 is n/2 + n/4
    c = size // 2 + 1
    y, x = torch.meshgrid(torch.arange(-c, c + 1), torch.arange(-c, c + 1), indexing="ij")
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


def _back_project_sym(q: torch.Tensor, size: int) -> torch.Tensor:
    """Back projection of n_angles % 4 == 0 views, four views per bilinear sampling grid (see ``_sym_maps``).

    Only the inscribed disc is computed: the image is zero outside radius size/2 + 1 (cut to size/2 by ``circle``;
    without ``circle``, pixels in the square's corners are left at zero, where the scan has no complete data).
    """
    n_batch, n_angles, n_det = q.shape
    dev = str(q.device)
    views, xy, perm, flat = _sym_maps(n_angles, size, dev)
    m1, n_pix = views.shape[1], xy.shape[1]
    geo = get_geometry(size, n_angles, dev)
    padded = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)  # index -1: a zero view
    inp = padded[:, views.reshape(-1)].view(n_batch, 4, m1, n_det).transpose(0, 1).reshape(1, -1, m1, n_det)
    sx = 2.0 / (n_det - 1)
    sy = 2.0 / (m1 - 1)
    chunk = max(1, _CHUNK_ELEMENTS // n_pix)
    grid = torch.empty(chunk, n_pix, 2, dtype=torch.float32, device=q.device)
    acc = torch.zeros(4 * n_batch, n_pix, dtype=torch.float32, device=q.device)
    for a0 in range(0, m1, chunk):
        a1 = min(m1, a0 + chunk)
        c = geo.cos[a0:a1].view(-1, 1) * sx
        sn = geo.sin[a0:a1].view(-1, 1) * sx
        g = grid[: a1 - a0]
        torch.add(xy[0].view(1, -1) * c + ((n_det // 2) * sx - 1.0), xy[1].view(1, -1) * -sn, out=g[..., 0])
        g[..., 1] = (torch.arange(a0, a1, dtype=torch.float32, device=q.device) * sy - 1.0).view(-1, 1)
        samp = F.grid_sample(inp, g.unsqueeze(0), mode="bilinear", padding_mode="zeros", align_corners=True)
        acc += samp[0].sum(1)
    acc = acc.view(4, n_batch, n_pix)
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
) -> torch.Tensor:
    """Filtered back projection of line-integral sinograms from ``forward_project``: (B, size, size).

    Scale: f = pi / (n_angles * pixel_mm) * sum_views (ramp * p)(t), the discrete inverse Radon transform.
    """
    q, squeeze = _as_batch(sino, "sinogram")
    img = back_project(filter_sinogram(q, filter_name), size, circle=circle)
    img *= math.pi / (q.shape[1] * pixel_mm)
    return img[0] if squeeze else img
