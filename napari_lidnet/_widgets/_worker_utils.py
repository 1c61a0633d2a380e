"""Plain-Python helpers of the dock widgets: model store, the denoise/detect and low-dose simulation worker
generators, layer geometry.

No Qt here, and torch is imported only inside functions: workers run these; the widget turns results into layers.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.volume import CTVolume, n_slices, slice_metadata


@dataclass
class Failure:
    """What a worker returns instead of raising (so the viewer never sees an exception)."""

    message: str


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


def model_label(path: str | Path, card: dict) -> str:
    """Short description of a model for layer metadata and DICOM SeriesDescription."""
    return f"{Path(path).name} ({card.get('arch', '?')})"


def flat_noise_sd(hu: np.ndarray, slices: list[int], denoised: np.ndarray) -> tuple[float, float]:
    """Noise SD (HU) in automatically found flat soft tissue of the input's selected slices and of the denoised ones
    (``metrics.noreference.noise_sd``, at most 4 slices each); NaN where no flat region is found."""
    from ..metrics.noreference import noise_sd, sample_slices

    src, den = np.asarray(hu), np.asarray(denoised)
    if src.ndim == 3:  # only the (at most 4) slices measured: a copy of a whole study's input cost its size again
        picks = sample_slices(len(slices), 4)
        src, den = src[np.asarray(slices)[picks]], den[picks] if den.ndim == 3 else den
    return noise_sd(src, max_slices=4), noise_sd(den, max_slices=4)


def inference_job(
    hu: np.ndarray,
    denoiser_path: str | None,
    detector_path: str | None,
    device: str,
    slices: list[int] | None,
    store: ModelStore,
    cache: Any,
    batch_size: int = 4,
    remove_sd: float | None = None,
    pixel_mm: tuple[float, float] | None = None,
) -> Generator[Progress, None, JobOutput | Failure]:
    """Worker body: load the models, run :func:`inference.iter_pipeline`, yield :class:`Progress` after every batch.

    Every error becomes a returned :class:`Failure` (a RuntimeError escaping a napari generator worker would be
    swallowed as "aborted" without a ``finished`` signal).
    """
    notices: list[str] = []
    try:
        yield Progress(0, 1, stage="loading models")
        from ..inference import InferenceSettings, iter_pipeline, map_yields

        den = det = None
        den_label = det_label = None
        if denoiser_path:
            den, card = store.get(denoiser_path, "denoiser")
            den_label = model_label(denoiser_path, card)
        if detector_path:
            det, card = store.get(detector_path, "detector")
            det_label = model_label(detector_path, card)
        settings = InferenceSettings(batch_size=batch_size, remove_sd=remove_sd, pixel_mm=pixel_mm)
        gen = iter_pipeline(hu, den, det, device, slices=slices, settings=settings, cache=cache, notice=notices.append)
        result = yield from map_yields(gen, lambda item: Progress(*item, _take(notices), stage="running"))
        noise = None
        if result.denoised is not None:
            noise = flat_noise_sd(hu, result.slices, result.denoised)
        return JobOutput(result, den_label, det_label, noise)
    except Exception as exc:  # reported in the viewer, never raised into it
        return Failure(f"{type(exc).__name__}: {exc}")


def _take(items: list[str]) -> list[str]:
    """The items of ``items``, which is emptied."""
    out = items[:]
    items.clear()
    return out


def slice_translate(scale: tuple[float, ...], translate: tuple[float, ...], z0: int) -> tuple[float, ...]:
    """Translate of a layer holding slices ``z0...`` of a volume with ``scale``/``translate`` (data units)."""
    t = list(translate)
    t[0] = float(t[0]) + z0 * float(scale[0])
    return tuple(t)


def metadata_for_slices(metadata: dict[str, Any], first_slice: int, n: int) -> dict[str, Any]:
    """Copy of a source layer's metadata for a layer of ``n`` slices from ``first_slice``: ``affine_lps`` moved
    along the slice axis, ``image_position_patient`` updated and per-slice lists cut, so later exports place it
    correctly."""
    meta = slice_metadata(metadata, first_slice, n)
    aff = meta.get("affine_lps")
    if first_slice and aff is not None and np.shape(aff) == (4, 4):
        aff = np.array(aff, dtype=float)
        aff[:3, 3] += first_slice * aff[:3, 0]
        meta["affine_lps"] = aff
        meta["image_position_patient"] = [float(v) for v in aff[:3, 3]]
    return meta


def volume_from_layer(
    hu: np.ndarray,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    metadata: dict[str, Any],
    name: str,
    first_slice: int = 0,
) -> CTVolume:
    """A CTVolume for ``hu`` = slices ``first_slice...`` of a source layer (``scale``, ``translate``, ``metadata``).

    Direction and origin come from ``metadata["affine_lps"]`` when the source came from this plugin's reader,
    else from scale/translate with an identity direction. Other metadata (DICOM source tags) is kept.
    """
    meta = {k: v for k, v in metadata.items() if k not in ("affine_lps", "lidnet")}
    meta = slice_metadata(meta, first_slice, n_slices(hu))
    spacing = tuple(float(s) for s in scale)
    aff = metadata.get("affine_lps")
    if aff is None or np.shape(aff) != (4, 4):
        origin = slice_translate(spacing, translate, first_slice) if hu.ndim == 3 else tuple(translate)
        return CTVolume(hu, spacing, tuple(float(t) for t in origin), None, name=name, metadata=meta)
    aff = np.asarray(aff, dtype=float)
    spacing3 = spacing if hu.ndim == 3 else (1.0, *spacing)  # a slice's affine keeps a unit z column
    direction = np.zeros((3, 3))
    for col, axis in enumerate((2, 1, 0)):  # affine columns are the z, y, x array axes
        direction[:, axis] = aff[:3, col] / spacing3[col]
    origin_zyx = tuple((aff[:3, 3] + first_slice * aff[:3, 0])[::-1])
    return CTVolume(hu, spacing, origin_zyx[3 - hu.ndim :], direction, name=name, metadata=meta)


@dataclass
class SimProgress:
    """One progress record of the low-dose simulation: slices done of total, seconds left (None: not known yet)."""

    done: int
    total: int
    eta_s: float | None = None
    notice: str = ""


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


def simulate_job(
    hu: np.ndarray, dose: float, spacing_mm: float, seed: int, device: str = "auto", chunk: int | None = None
) -> Generator[SimProgress, None, np.ndarray | Failure]:
    """Worker body: ``sim.lowdose.simulate_low_dose`` over a (z, y, x) or (y, x) image in chunks of slices,
    yielding :class:`SimProgress` after each chunk (a cancel lands between chunks). Errors become a Failure."""
    import time

    try:
        from ..models.device import pick_device
        from ..sim.lowdose import simulate_low_dose

        dev, notice = pick_device(device)
        chunk = chunk or (16 if dev.type == "cuda" else 4)
        stack = np.asarray(hu, dtype=np.float32)
        vol = stack[None] if stack.ndim == 2 else stack
        out = np.empty_like(vol)
        n = vol.shape[0]
        yield SimProgress(0, n, None, notice)
        t0 = time.perf_counter()
        for start in range(0, n, chunk):
            part = vol[start : start + chunk]
            out[start : start + len(part)] = simulate_low_dose(
                part, dose, spacing_mm, seed=chunk_seed(seed, start), device=dev, batch_size=len(part), fast=True
            )
            done = start + len(part)
            yield SimProgress(done, n, (time.perf_counter() - t0) / done * (n - done))
        return out[0] if stack.ndim == 2 else out
    except Exception as exc:  # reported in the viewer, never raised into it
        return Failure(f"{type(exc).__name__}: {exc}")
