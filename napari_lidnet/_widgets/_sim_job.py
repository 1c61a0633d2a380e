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


def flat_noise_sds(normal: np.ndarray, low: np.ndarray, max_slices: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(the normal dose's own noise SD, the SD a low-dose simulation added), HU, in the flat tissue of each of at most
    ``max_slices`` evenly spaced slices (``metrics.noreference.flat_block_noise_sds``: where the Denoise dock's
    "leave" strength measures noise); NaN for a slice without flat tissue."""
    from ..metrics.noreference import flat_block_noise_sds, sample_slices

    normal3 = np.asarray(normal, np.float32).reshape((-1, *np.shape(normal)[-2:]))
    low3 = np.asarray(low, np.float32).reshape(normal3.shape)
    sds = [flat_block_noise_sds(normal3[k], [normal3[k], low3[k] - normal3[k]]) for k in
           sample_slices(len(normal3), max_slices)]  # fmt: skip
    return np.array([s[0] for s in sds]), np.array([s[1] for s in sds])


def simulate_job(
    hu: np.ndarray, dose: float, spacing_mm: float, seed: int, device: str = "auto", chunk: int | None = None
) -> Generator[SimProgress, None, np.ndarray | Failure]:
    """Worker body: ``sim.lowdose.simulate_low_dose`` over a (z, y, x) or (y, x) image in chunks of slices, its
    photon count calibrated to the scan's own noise and each slice's noise to that slice's own at ``dose``
    (``_training.noise_level.dose_calibration``), yielding :class:`SimProgress` after each chunk (a cancel lands
    between chunks). Errors become a Failure."""
    import time

    try:
        from .._training.noise_level import at_own_noise, dose_calibration, insertion_kwargs
        from ..models.device import pick_device
        from ..sim.lowdose import simulate_low_dose

        dev, notice = pick_device(device)
        chunk = chunk or (16 if dev.type == "cuda" else 4)
        stack = np.asarray(hu, dtype=np.float32)
        vol = stack[None] if stack.ndim == 2 else stack
        out = np.empty_like(vol)
        n = vol.shape[0]
        kw = insertion_kwargs(dev)
        i0, own, how = dose_calibration(vol, dose, spacing_mm, chunk_seed(seed, n + 1), **kw)  # a seed no chunk has
        yield SimProgress(0, n, None, notice, how)
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            part = vol[start : start + chunk]
            low = simulate_low_dose(part, dose, spacing_mm, seed=chunk_seed(seed, start), i0=i0, batch_size=len(part),
                                    **kw)  # fmt: skip
            for j, (full, one) in enumerate(zip(part, low)):
                out[start + j] = at_own_noise(full, one, dose, own[start + j])
            done = start + len(part)
            yield SimProgress(done, n, (time.perf_counter() - t0) / done * (n - done))
        return out[0] if stack.ndim == 2 else out
    except Exception as exc:  # reported in the viewer, never raised into it
        return Failure.of(exc)
