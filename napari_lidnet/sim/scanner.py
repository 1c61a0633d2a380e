"""Scanner randomisation: dose, views, reconstruction kernel, electronic noise, slice thickness, display FOV.

``ScannerParams`` is one acquisition + reconstruction protocol; ``ScannerParams()`` is the fixed protocol of
``simulate_pair`` / ``simulate_low_dose`` defaults (816 views at 512, Shepp-Logan "standard" kernel, 10 counts^2,
the reference thickness), and ``params.kwargs()`` are the keyword arguments of those two functions. Slice thickness
acts through the photon count: a slice t mm thick collects t / REFERENCE_THICKNESS_MM times the photons of the
reference slice (I0 scale), so its noise SD scales as 1 / sqrt(t).

``sample_scanner(rng)`` draws a clinical-looking protocol: dose 5-50 % (log-uniform), 500-1200 views (at 512
pixels), a kernel from smooth to sharp (named kernels or the parametric ``apod:`` family of ``projector``),
electronic noise 0-50 counts^2 and thickness 1-5 mm. ``sample_pixel_mm(rng, kind, size)`` draws the display field
of view for a body part (head 200-250 mm, neck 220-320 mm, body 300-500 mm) within pixel sizes 0.4-1.0 mm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from napari_lidnet.sim import projector
from napari_lidnet.sim.lowdose import ELECTRONIC_NOISE_VAR, I0_DEFAULT

#: slice thickness (mm) whose photon count per bin and view is I0_DEFAULT
REFERENCE_THICKNESS_MM = 2.5
#: display field of view (mm) per body part
FOV_RANGE_MM = {"head": (200.0, 250.0), "neck": (220.0, 320.0), "chest": (300.0, 500.0), "abdomen": (300.0, 500.0)}
PIXEL_RANGE_MM = (0.4, 1.0)
#: named kernels drawn by ``sample_scanner`` (besides the parametric family), smooth to sharp
NAMED_KERNELS = ("smooth", "soft", "hamming", "cosine", "standard", "sharp", "bone")


@dataclass(frozen=True)
class ScannerParams:
    """One scan protocol. ``n_views`` None: the projector's default for the image size; ``kernel``: a
    ``projector.KERNELS`` / ``FILTERS`` name or an ``apod:<cutoff>:<order>:<boost>`` spec."""

    dose: float = 0.25
    n_views: int | None = None
    kernel: str = "standard"
    electronic_noise: float = ELECTRONIC_NOISE_VAR
    thickness_mm: float = REFERENCE_THICKNESS_MM

    def __post_init__(self) -> None:
        if not 0.0 < float(self.dose) <= 1.0:
            raise ValueError(f"dose must be in (0, 1], got {self.dose}")
        if self.n_views is not None and int(self.n_views) < 8:
            raise ValueError(f"n_views must be >= 8, got {self.n_views}")
        if not 0.0 <= float(self.electronic_noise) <= 1e4:
            raise ValueError(f"electronic_noise must be in [0, 1e4] counts^2, got {self.electronic_noise}")
        if not 0.1 <= float(self.thickness_mm) <= 20.0:
            raise ValueError(f"thickness_mm must be in [0.1, 20], got {self.thickness_mm}")
        projector.parse_kernel(self.kernel)  # ValueError if unknown

    @property
    def i0_scale(self) -> float:
        """Photon count relative to the reference slice thickness."""
        return float(self.thickness_mm) / REFERENCE_THICKNESS_MM

    def kwargs(self, i0: float = I0_DEFAULT) -> dict[str, object]:
        """Keyword arguments of ``simulate_pair`` / ``simulate_low_dose`` for this protocol."""
        return {
            "dose": float(self.dose),
            "i0": i0 * self.i0_scale,
            "electronic_noise": float(self.electronic_noise),
            "n_angles": None if self.n_views is None else int(self.n_views),
            "filter_name": self.kernel,
        }

    def record(self) -> dict[str, str]:
        """The fields as strings, for a CSV row (``from_record`` reads them back)."""
        fmt = {float: lambda v: f"{v:.6g}", type(None): lambda v: ""}
        return {k: fmt.get(type(v), str)(v) for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, row: dict[str, str]) -> ScannerParams:
        """A ScannerParams from a ``record()`` row (extra keys ignored)."""
        views = row.get("n_views", "")
        return cls(
            dose=float(row["dose"]),
            n_views=int(views) if views else None,
            kernel=row["kernel"],
            electronic_noise=float(row["electronic_noise"]),
            thickness_mm=float(row["thickness_mm"]),
        )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_kernel(rng: np.random.Generator) -> str:
    """A reconstruction kernel: half the time a named one, otherwise a random member of the ``apod:`` family
    (cutoff 0.15-0.5 cycles/pixel log-uniform, order 2-8, edge boost 0 or 0.1-1.0)."""
    if rng.random() < 0.5:
        return str(rng.choice(NAMED_KERNELS))
    cutoff = _log_uniform(rng, 0.15, 0.5)
    order = float(rng.integers(2, 9))
    boost = 0.0 if rng.random() < 0.6 else float(rng.uniform(0.1, 1.0))
    return projector.apod_spec(cutoff, order, boost)


def sample_scanner(
    rng: np.random.Generator,
    size: int = 512,
    dose_range: tuple[float, float] = (0.05, 0.5),
    views_range: tuple[int, int] = (500, 1200),
    thickness_range: tuple[float, float] = (1.0, 5.0),
    electronic_noise_range: tuple[float, float] = (0.0, 50.0),
) -> ScannerParams:
    """A random protocol. Views are for a 512 matrix, scaled by ``size / 512`` and rounded to a multiple of 4."""
    lo, hi = (max(8.0, v * size / 512) for v in views_range)
    n_views = int(4 * round(rng.uniform(lo, hi) / 4))
    return ScannerParams(
        dose=round(_log_uniform(rng, *dose_range), 4),
        n_views=max(8, n_views),
        kernel=sample_kernel(rng),
        electronic_noise=round(float(rng.uniform(*electronic_noise_range)), 2),
        thickness_mm=round(float(rng.uniform(*thickness_range)), 2),
    )


def sample_pixel_mm(rng: np.random.Generator, kind: str, size: int = 512) -> float:
    """Pixel size (mm) for a display FOV drawn in ``FOV_RANGE_MM[kind]``, clipped to ``PIXEL_RANGE_MM``.

    At 512 pixels both ranges hold; smaller matrices get larger pixels (clipped at 1 mm, so a smaller FOV).
    """
    if kind not in FOV_RANGE_MM:
        raise ValueError(f"unknown body part {kind!r}; choose one of {tuple(FOV_RANGE_MM)}")
    fov = float(rng.uniform(*FOV_RANGE_MM[kind]))
    return round(float(np.clip(fov / size, *PIXEL_RANGE_MM)), 4)
