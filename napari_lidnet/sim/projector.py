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


@lru_cache(maxsize=16)
def ramp_filter(n_det: int, filter_name: str, device: str) -> torch.Tensor:
    """Frequency response (rfft bins) of the discrete ramp filter with apodisation, for zero padding to 2x.

    The ramp is the FFT of the spatial Ram-Lak kernel (h0 = 1/4, h_n = -1/(pi n)^2 for odd n, 0 for even n), which
    avoids the DC error of a sampled |f|; windows multiply it in frequency (f in cycles/pixel, up to 0.5).
    """
    if filter_name not in FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose one of {FILTERS}")
    pad = max(64, 1 << int(math.ceil(math.log2(2 * n_det))))
    n = torch.cat([torch.arange(1, pad // 2 + 1), torch.arange(pad // 2 - 1, 0, -1)]).double()
    h = torch.zeros(pad, dtype=torch.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[1:][odd] = -1.0 / (math.pi * n[odd]) ** 2
    resp = torch.fft.rfft(h).real  # ~ |f| in cycles/pixel, 1/2 at Nyquist
    f = torch.fft.rfftfreq(pad, dtype=torch.float64)  # cycles per pixel
    w = 2 * math.pi * f
    if filter_name == "shepp-logan":
        resp[1:] *= torch.sin(w[1:] / 2) / (w[1:] / 2)
    elif filter_name == "cosine":
        resp *= torch.cos(w / 2)
    elif filter_name == "hamming":
        resp *= 0.54 + 0.46 * torch.cos(w)
    elif filter_name == "hann":
        resp *= 0.5 + 0.5 * torch.cos(w)
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

    ``circle``: sample only the inscribed circle's square (None: decide from the data).
    """
    x, squeeze = _as_batch(images, "image")
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"projector needs square images, got {tuple(x.shape[-2:])}")
    x = x.float()
    size = x.shape[-1]
    n_angles = n_angles or default_n_angles(size)
    dev = str(x.device)
    geo = get_geometry(size, n_angles, dev)
    if circle is None:
        circle = is_inside_circle(x)
    # rays: detector bins within +-N/2 of the centre when circle, all n_det bins otherwise
    # circle: t and s within +-(size//2 + 1) pixels cover the circle and the bilinear footprint of its edge pixels
    n_t = min(2 * (size // 2 + 1) + 1, geo.n_det) if circle else geo.n_det
    lo = geo.n_det // 2 - n_t // 2
    # sample points (col, row) = centre + t * (cos, -sin) + s * (sin, cos), t and s in -n_t//2 .. n_t//2 pixels;
    # normalised for grid_sample (align_corners=True): g = index * 2/(size-1) - 1. Each grid component is
    # an outer sum of a t-vector and an s-vector, built in one pass into a reused buffer.
    k = 2.0 / (size - 1)
    u = (torch.arange(n_t, dtype=torch.float32, device=x.device) - n_t // 2) * k
    centre = (size // 2) * k - 1.0
    chunk = max(1, _CHUNK_ELEMENTS // (n_t * n_t))
    grid = torch.empty(chunk, n_t, n_t, 2, dtype=torch.float32, device=x.device)
    inp = x.unsqueeze(0)  # batch as channels: one grid serves all images
    out = torch.zeros(x.shape[0], n_angles, geo.n_det, dtype=torch.float32, device=x.device)
    for a0 in range(0, n_angles, chunk):
        c = geo.cos[a0 : a0 + chunk].view(-1, 1, 1)
        sn = geo.sin[a0 : a0 + chunk].view(-1, 1, 1)
        m = c.shape[0]
        g = grid[:m]
        torch.add(u.view(1, 1, -1) * c + centre, u.view(1, -1, 1) * sn, out=g[..., 0])
        torch.add(u.view(1, -1, 1) * c + centre, u.view(1, 1, -1) * -sn, out=g[..., 1])
        samp = F.grid_sample(inp, g.view(1, m * n_t, n_t, 2), mode="bilinear", padding_mode="zeros", align_corners=True)
        out[:, a0 : a0 + m, lo : lo + n_t] = samp[0].view(x.shape[0], m, n_t, n_t).sum(2)
    out *= pixel_mm
    return out[0] if squeeze else out


def filter_sinogram(sino: torch.Tensor, filter_name: str = "ram-lak") -> torch.Tensor:
    """Ramp-filter (B, n_angles, n_det) sinograms along the detector, with zero padding (pixel units)."""
    n_det = sino.shape[-1]
    resp = ramp_filter(n_det, filter_name, str(sino.device))
    pad = 2 * (resp.shape[0] - 1)
    spec = torch.fft.rfft(sino.float(), n=pad, dim=-1) * resp
    return torch.fft.irfft(spec, n=pad, dim=-1)[..., :n_det]


def back_project(filtered: torch.Tensor, size: int, circle: bool = False) -> torch.Tensor:
    """Sum over views of linearly interpolated (B, n_angles, n_det) data at each pixel: (B, size, size).

    ``circle``: fill only the inscribed circle (zeros outside).
    """
    q, squeeze = _as_batch(filtered, "sinogram")
    n_batch, n_angles, n_det = q.shape
    if n_det != detector_bins(size):
        raise ValueError(f"sinogram has {n_det} detector bins, expected {detector_bins(size)} for size {size}")
    dev = str(q.device)
    geo = get_geometry(size, n_angles, dev)
    # grid over the full square: gx = t(x, y) normalised over the detector (outer sum of an x- and a y-vector),
    # gy = the view's row; then the circle (if asked) is cut out
    sx = 2.0 / (n_det - 1)
    sy = 2.0 / (n_angles - 1) if n_angles > 1 else 0.0
    v = torch.arange(size, dtype=torch.float32, device=q.device) - size // 2
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    grid = torch.empty(chunk, size, size, 2, dtype=torch.float32, device=q.device)
    inp = q.float().unsqueeze(0)  # (1, B, n_angles, n_det)
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
    if circle:
        out *= circle_mask(size, dev)

    return out[0] if squeeze else out


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
