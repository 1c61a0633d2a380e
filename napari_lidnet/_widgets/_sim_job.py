"""The low-dose simulation job of the Load CT dock: chunks of slices in a worker, progress with the time left.

No Qt here, and torch is imported only inside functions.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ._worker_utils import Failure


@dataclass
class SimProgress:
    """One progress record of the low-dose simulation: slices done of total, seconds left (None: not known yet)."""

    done: int
    total: int
    eta_s: float | None = None
    notice: str = ""
    calibration: str = ""  # how the noise level was set (:func:`calibrated_i0`), once before the first chunk


def chunk_seed(seed: int, start: int) -> int:
    """The simulation seed of the chunk that starts at slice ``start`` (fixed chunks give fixed noise)."""
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1)[0])


def added_noise_sd(normal: np.ndarray, low: np.ndarray, max_slices: int = 16) -> float:
    """SD (HU) of what a low-dose simulation added, over the tissue (> -500 HU) of at most ``max_slices`` evenly
    spaced slices (the whole of a 600-slice study held the viewer a second or two for one number); NaN without
    tissue."""
    from ..metrics.noreference import sample_slices

    if np.ndim(normal) == 3:
        picks = sample_slices(len(normal), max_slices)
        normal, low = normal[picks], low[picks]
    normal = np.asarray(normal, np.float32)
    body = normal > -500.0
    return float(np.std((np.asarray(low, np.float32) - normal)[body])) if body.any() else float("nan")


#: below this noise SD in flat tissue (HU) an image is taken as noiseless (a phantom): the scanner model's photon
#: count is assumed, not calibrated to it
MIN_OWN_NOISE_HU = 2.0


def calibrated_i0(vol: np.ndarray, dose: float, spacing_mm: float, seed: int, **kwargs) -> tuple[float, str]:
    """(photons per detector sample and view, what was done) that make the inserted noise a ``dose`` scan's: the
    scan's own noise SD in flat tissue (``metrics.noreference.noise_sd``) times sqrt(1 / dose - 1), measured in the
    same flat blocks of a probe slice simulated at ``I0_DEFAULT`` (noise SD goes as 1 / sqrt(photons)). A scan
    without noise of its own, or without flat tissue, keeps ``I0_DEFAULT``."""
    from ..metrics.noreference import flat_block_noise_sds, noise_sd, sample_slices
    from ..sim.lowdose import I0_DEFAULT, simulate_low_dose

    own = noise_sd(vol)
    if not np.isfinite(own) or own < MIN_OWN_NOISE_HU:
        return I0_DEFAULT, "the image shows no noise of its own: the scanner model's full-dose photon count assumed"
    target = own * float(np.sqrt(1.0 / dose - 1.0))
    for k in dict.fromkeys([len(vol) // 2, *sample_slices(len(vol), 8)]):  # the middle slice first
        probe = simulate_low_dose(vol[k], dose, spacing_mm, seed=seed, **kwargs) - vol[k]
        probe_sd = flat_block_noise_sds(vol[k], [probe])[0]
        if np.isfinite(probe_sd) and probe_sd > 0:
            return (I0_DEFAULT * (probe_sd / target) ** 2,
                    f"calibrated to the scan's own noise: {own:.1f} HU in flat tissue, so {dose:.0%} dose adds "
                    f"{target:.1f} HU there")  # fmt: skip
    return I0_DEFAULT, "no flat tissue to calibrate on: the scanner model's full-dose photon count assumed"


def simulate_job(
    hu: np.ndarray, dose: float, spacing_mm: float, seed: int, device: str = "auto", chunk: int | None = None
) -> Generator[SimProgress, None, np.ndarray | Failure]:
    """Worker body: ``sim.lowdose.simulate_low_dose`` over a (z, y, x) or (y, x) image in chunks of slices, its
    photon count calibrated to the scan's own noise (:func:`calibrated_i0`), yielding :class:`SimProgress` after
    each chunk (a cancel lands between chunks). Errors become a Failure."""
    import time

    try:
        from ..models.device import pick_device
        from ..sim.lowdose import SCANNER_SAMPLING_MM, simulate_low_dose

        dev, notice = pick_device(device)
        chunk = chunk or (16 if dev.type == "cuda" else 4)
        stack = np.asarray(hu, dtype=np.float32)
        vol = stack[None] if stack.ndim == 2 else stack
        out = np.empty_like(vol)
        n = vol.shape[0]
        kw = {"device": dev, "fast": True, "sampling_mm": SCANNER_SAMPLING_MM}
        i0, how = calibrated_i0(vol, dose, spacing_mm, chunk_seed(seed, n + 1), **kw)  # a seed no chunk has
        yield SimProgress(0, n, None, notice, how)
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            part = vol[start : start + chunk]
            out[start : start + len(part)] = simulate_low_dose(
                part, dose, spacing_mm, seed=chunk_seed(seed, start), i0=i0, batch_size=len(part), **kw
            )
            done = start + len(part)
            yield SimProgress(done, n, (time.perf_counter() - t0) / done * (n - done))
        return out[0] if stack.ndim == 2 else out
    except Exception as exc:  # reported in the viewer, never raised into it
        return Failure(f"{type(exc).__name__}: {exc}")
