"""Plain-Python helpers of the Denoise dock: its model store and its denoise/detect worker generator (the low-dose
simulation's is ``_sim_job``; layer geometry is ``layer_data``'s).

No Qt here, and torch is imported only inside functions: workers run these; the widget turns results into layers.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


def dock_threads(cores: int, env: dict[str, str], default: int | None = None) -> int | None:
    """Torch threads for the docks' jobs: all the cores but one, which the viewer keeps to draw while a job runs
    (on a busy 2-core machine the low-dose simulation runs 10-40x and denoising 2-4x slower on torch's 2 threads
    than on 1), never more than torch's own ``default`` (its physical cores); None where the
    user chose (``OMP_NUM_THREADS`` set: theirs stands)."""
    if env.get("OMP_NUM_THREADS", "").strip():
        return None
    return max(1, min(cores - 1, default or cores))


_TORCH_DEFAULT: list[int] = []  # torch's own thread count, read before the first change


def share_cores() -> None:
    """Set torch's threads to :func:`dock_threads` of this process's cores, before a dock starts a job."""
    import os

    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = dock_threads(cores, dict(os.environ), _TORCH_DEFAULT[0])
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass
class Failure:
    """What a worker returns instead of raising (so the viewer never sees an exception)."""

    message: str

    @classmethod
    def of(cls, exc: BaseException) -> Failure:
        """The failure of ``exc``, in one line (``io.checks.error_text``)."""
        from ..io.checks import error_text

        return cls(error_text(exc))


@dataclass
class JobOutput:
    """What a worker returns on success: the pipeline result plus the model descriptions for layer metadata."""

    result: Any  # inference.PipelineResult
    denoiser_label: str | None
    detector_label: str | None
    noise_sd: tuple[float, float] | None = None  # HU in flat tissue (no-reference), input and denoised


@dataclass
class Progress:
    """One progress record yielded by the worker: slices done/total and notices since the last record."""

    done: int
    total: int
    notices: list[str] = field(default_factory=list)
    stage: str = ""


class ModelStore:
    """Loaded models by weights path, reloaded when the file changes (mtime); safe to use from a worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], tuple[float, Any, dict]] = {}

    def get(self, path: str | Path, kind: str) -> tuple[Any, dict]:
        """``(model, card)`` for the weights at ``path`` (a stem, .safetensors or .json); raises on bad files."""
        from ..models.registry import load_model
        from ..models.weights import weight_paths

        w_path, _ = weight_paths(path)
        if not w_path.is_file():
            raise FileNotFoundError(f"weights file not found: {w_path}")
        mtime = w_path.stat().st_mtime_ns
        key = (str(w_path), kind)
        with self._lock:
            hit = self._models.get(key)
            if hit is not None and hit[0] == mtime:
                return hit[1], hit[2]
            model, card = load_model(w_path, kind=kind)
            self._models[key] = (mtime, model, card)
            return model, card


def input_problem(data: Any, slices: list[int] | None, modality: str, what: str) -> tuple[np.ndarray, str | None]:
    """``(hu, problem)``: a layer's ``data`` as an array (a NumPy array of numbers as it is: no float32 copy of an
    int16 study; a lazy array read) and why the models do not run on it (``io.checks.ct_problem``, on the slices
    to process), else None. Run by the worker: a study's checks and reads stay off the viewer's thread."""
    from ..inference import hu_array
    from ..io.checks import ct_problem

    hu = hu_array(data)
    given = hu[np.asarray(slices)] if slices is not None and hu.ndim == 3 else hu
    return hu, ct_problem(given, modality, what)


def inference_job(
    data: Any,
    denoiser_path: str | None,
    detector_path: str | None,
    device: str,
    slices: list[int] | None,
    store: ModelStore,
    cache: Any,
    batch_size: int = 4,
    strength: tuple[float | None, float | None] = (None, None),
    pixel_mm: tuple[float, float] | None = None,
    source: tuple[str, str] = ("", "the image"),
) -> Generator[Progress, None, JobOutput | Failure]:
    """Worker body: check the image (:func:`input_problem`; ``source`` is its modality and name), load the models,
    run :func:`inference.iter_pipeline`, yield :class:`Progress` after every batch.

    Every error, and an image the models do not take, becomes a returned :class:`Failure` (a RuntimeError escaping
    a napari generator worker would be swallowed as "aborted" without a ``finished`` signal).
    """
    notices: list[str] = []
    try:
        yield Progress(0, 1, stage="checking the image")
        hu, problem = input_problem(data, slices, *source)
        if problem:
            return Failure(problem)
        yield Progress(0, 1, stage="loading models")
        from ..inference import InferenceSettings, iter_pipeline, map_yields
        from ..models.registry import model_label

        den = det = None
        den_label = det_label = None
        if denoiser_path:
            den, card = store.get(denoiser_path, "denoiser")
            den_label = model_label(denoiser_path, card)
        if detector_path:
            det, card = store.get(detector_path, "detector")
            det_label = model_label(detector_path, card)
        remove_sd, leave_sd = strength
        settings = InferenceSettings(batch_size=batch_size, remove_sd=remove_sd, leave_sd=leave_sd, pixel_mm=pixel_mm)
        gen = iter_pipeline(hu, den, det, device, slices=slices, settings=settings, cache=cache, notice=notices.append)
        result = yield from map_yields(gen, lambda item: Progress(*item, _take(notices), stage="running"))
        noise = None
        if result.denoised is not None:
            from ..metrics.noreference import flat_noise_sd

            noise = flat_noise_sd(hu, result.slices, result.denoised)
        return JobOutput(result, den_label, det_label, noise)
    except Exception as exc:  # reported in the viewer, never raised into it
        return Failure.of(exc)


def _take(items: list[str]) -> list[str]:
    """The items of ``items``, which is emptied."""
    out = items[:]
    items.clear()
    return out


def fill_devices(combo: Any) -> None:
    """A device picker's choices: auto and cpu, and the GPUs once torch is loaded (by a run; "auto" takes a GPU
    anyway). Listing them imports torch: on napari's GUI thread that held the viewer 1-5 s as a dock opened, and a
    worker importing it could abort napari's exit."""
    if combo.count() == 0:
        combo.addItems(["auto", "cpu"])
    if "torch" in sys.modules:
        from ..models.device import device_choices

        have = {combo.itemText(i) for i in range(combo.count())}
        combo.addItems([c for c in device_choices() if c not in have])
