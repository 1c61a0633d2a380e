"""A second, independent low-dose noise model for the real-anatomy benchmark (skimage ``radon``/``iradon``).

Written apart from ``napari_lidnet.sim`` (nothing imported from it) so that a denoiser that learned the quirks of
our own simulator is also judged on noise it never saw. Same physics family, different implementation choices:

- HU -> mu = MU_WATER (1 + HU/1000), MU_WATER = 0.0193 /mm, clipped at 0; line integrals from
  ``skimage.transform.radon`` (rotation + sum) times the pixel size, over the inscribed circle when the slice is
  air outside it (else the padded full square); 720 views over 180 degrees for a 512 x 512 slice, proportional
  to the size (180 at 128), as ours scales them (ceil(pi/2 N / 16) 16: 816 at 512, 208 at 128), so that both
  put the same photons per view and bin whatever the size.
- Expected full-dose counts N1 = I0 exp(-p) per detector bin (one pixel wide) and view.
- Noise insertion after Yu et al., Med. Phys. 39(1), 2012: the dose-d scan is the scaled counts d N1 plus
  Gaussian noise of variance d (1 - d) N1 + (1 - d^2) SIGMA_E2, i.e. the variance a dose-d scan has beyond the
  scaled full-dose noise; dp = -log(counts / (d I0)) - p; the DIFFERENCE dp is reconstructed with
  ``skimage.transform.iradon`` and the Hann-apodised ramp (ours: Shepp-Logan) and added to the image.
- Electronic noise SIGMA_E2 = 25 counts^2 (ours: 10); counts floored at 1 before the log.

Calibration (``calibrate_i0``): I0 is chosen so that a full-dose scan of a water ellipse (300 x 220 mm, 512 x 512
pixels of 0.75 mm) has a noise SD of 10 HU in a central 64 x 64 square. The full-dose noise is measured as the SD
of the noise inserted at dose 0.5, whose variance (1/d - 1) var_full equals var_full. Result: I0_RADON below.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.transform import iradon, radon

MU_WATER = 0.0193  # 1/mm, water at ~70 keV
N_VIEWS = 720  # views of a 512 x 512 slice; proportional to the size (``views_for``)
FILTER = "hann"
SIGMA_E2 = 25.0  # electronic noise variance, counts^2
COUNT_FLOOR = 1.0
AIR_HU = -900.0  # a slice below this outside its inscribed circle is projected inside the circle only
OUTSIDE_TOL = 0.001  # ... allowing this fraction of brighter pixels there (a headrest edge), set to air
CAL_PIXEL_MM = 0.75
CAL_SIZE = 512
CAL_AXES_MM = (150.0, 110.0)  # semi-axes of the calibration water ellipse
CAL_TARGET_SD = 10.0  # HU at full dose
#: full-dose photons per bin and view, from ``calibrate_i0()`` (10 HU in the water ellipse at 0.75 mm)
I0_RADON = 5.7e5

__all__ = [
    "I0_RADON", "N_VIEWS", "calibrate_i0", "insert_noise", "noise_sd_full", "project", "views_for", "water_ellipse",
]  # fmt: skip


def _angles(n_views: int) -> np.ndarray:
    return np.arange(n_views) * (180.0 / n_views)


def views_for(n: int) -> int:
    """Views for an (n, n) slice: N_VIEWS at 512, proportional to n, a multiple of 4 (at least 32)."""
    return max(32, int(round(N_VIEWS * n / 512 / 4)) * 4)


def outside_circle(n: int) -> np.ndarray:
    """Pixels of an (n, n) image outside its inscribed circle (skimage's reconstruction circle)."""
    c = np.arange(n) - n // 2
    return np.add.outer(c**2, c**2) > (n // 2) ** 2


def project(hu: np.ndarray, pixel_mm: float, n_views: int | None = None) -> np.ndarray:
    """Line integrals of mu (dimensionless) of a square (N, N) HU slice: (n_det, n_views), skimage layout.

    When the slice is air (< AIR_HU, but for OUTSIDE_TOL of the pixels) outside its inscribed circle (a scanner's
    FOV), only the circle is projected (n_det = N, mu set to 0 outside, no noise inserted there); otherwise the
    padded full square (n_det = ceil(N sqrt 2)).
    """
    hu = np.asarray(hu, dtype=np.float64)
    if hu.ndim != 2 or hu.shape[0] != hu.shape[1]:
        raise ValueError(f"expected a square (N, N) slice, got shape {hu.shape}")
    mu = np.clip(MU_WATER * (1.0 + hu / 1000.0), 0.0, None)
    out = outside_circle(hu.shape[0])
    circle = bool(np.mean(hu[out] >= AIR_HU) <= OUTSIDE_TOL)
    if circle:
        mu[out] = 0.0
    angles = _angles(n_views or views_for(hu.shape[0]))
    return radon(mu * pixel_mm, angles, circle=circle, preserve_range=True)


def insert_noise(
    hu: np.ndarray,
    dose: float,
    pixel_mm: float,
    seed: int | np.random.Generator | None = None,
    i0: float = I0_RADON,
    sigma_e2: float = SIGMA_E2,
    n_views: int | None = None,
    filter_name: str = FILTER,
    sinogram: np.ndarray | None = None,
) -> np.ndarray:
    """The noise image (HU, float32 (N, N)) that turns a normal-dose slice into a ``dose`` scan; add it to ``hu``.

    ``sinogram`` (from :func:`project` with the same ``n_views``) skips the forward projection when it is known.
    """
    if not 0.0 < dose <= 1.0:
        raise ValueError(f"dose must be in (0, 1], got {dose}")
    n = np.asarray(hu).shape[0]
    if dose == 1.0:
        return np.zeros((n, n), np.float32)
    rng = np.random.default_rng(seed)
    n_views = n_views or views_for(n)
    p = project(hu, pixel_mm, n_views) if sinogram is None else sinogram
    n1 = i0 * np.exp(-p)
    extra_sd = np.sqrt(dose * (1.0 - dose) * n1 + (1.0 - dose**2) * sigma_e2)
    counts = dose * n1 + extra_sd * rng.standard_normal(p.shape)
    dp = -np.log(np.maximum(counts, COUNT_FLOOR) / (i0 * dose)) - p
    circle = p.shape[0] == n  # see project()
    dmu_px = iradon(dp, _angles(n_views), output_size=n, filter_name=filter_name, circle=circle)
    return (dmu_px / (pixel_mm * MU_WATER) * 1000.0).astype(np.float32)


def water_ellipse(size: int = CAL_SIZE, pixel_mm: float = CAL_PIXEL_MM, axes_mm: tuple = CAL_AXES_MM) -> np.ndarray:
    """A water ellipse (0 HU) in air (-1000 HU), centred: the calibration object."""
    c = (np.arange(size) - size // 2) * pixel_mm
    y, x = np.meshgrid(c, c, indexing="ij")
    inside = (x / axes_mm[0]) ** 2 + (y / axes_mm[1]) ** 2 <= 1.0
    return np.where(inside, 0.0, -1000.0).astype(np.float32)


def noise_sd_full(noise_at_half: np.ndarray, roi: int = 64) -> float:
    """Full-dose noise SD (HU) from the noise inserted at dose 0.5 (same variance), central ``roi`` square."""
    n = noise_at_half.shape[0]
    r0 = n // 2 - roi // 2
    return float(np.std(noise_at_half[r0 : r0 + roi, r0 : r0 + roi]))


def calibrate_i0(target_sd: float = CAL_TARGET_SD, seeds: int = 2, trial_i0: float = 1e6) -> float:
    """I0 giving ``target_sd`` HU of full-dose noise in the water ellipse at 0.75 mm (variance ~ 1/I0)."""
    phantom = water_ellipse()
    sino = project(phantom, CAL_PIXEL_MM)
    var = np.mean(
        [noise_sd_full(insert_noise(phantom, 0.5, CAL_PIXEL_MM, s, i0=trial_i0, sinogram=sino)) ** 2
         for s in range(seeds)]
    )  # fmt: skip
    return float(trial_i0 * var / target_sd**2)


if __name__ == "__main__":
    i0 = calibrate_i0()
    print(f"I0 for {CAL_TARGET_SD} HU at {CAL_PIXEL_MM} mm: {i0:.3g} (log10 {math.log10(i0):.2f})")
