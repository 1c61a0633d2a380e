"""Denoising and detection on HU arrays, no Qt: slices or volumes in, HU and boxes out.

Every caller (widgets, command line, trainer validation, benchmarks) goes through this module.

- ``denoise`` / ``detect``: blocking calls with a progress callback and a cancel check between batches.
- ``iter_denoise`` / ``iter_detect`` / ``iter_pipeline``: the same work as generators that yield ``(done, total)``
  after every batch and return the result (``StopIteration.value``), for workers that stop between batches.
- ``run_to_end`` / ``map_yields``: run such a generator to its return value, or re-yield its items mapped through a
  function and return that value (``x = yield from map_yields(gen, fn)``); callers above this module use them too.
- Batches of slices; images larger than ``tile_size`` go through overlapping tiles blended with cosine ramps
  (denoising) or merged by ownership + NMS (detection). Tile starts are multiples of ``TILE_ALIGN`` so networks
  that pixel-unshuffle or downsample see the same pixel grid as on the whole image.
- Out of memory: retry the batch with half the batch size, then with tiles (halved again while possible), then on
  the CPU; every step is reported through ``notice`` (a ``RuntimeWarning`` when none is given).
- Mixed precision (``torch.autocast``, ``amp``): on CUDA float16 by default (bfloat16 is too coarse for HU); on a
  CPU with native bfloat16 (AVX512-BF16, AMX) for models that declare ``cpu_bf16`` (the unet keeps HU in and noise
  out in float32), else float32.
- ``InferenceSettings.remove_sd``: remove only that SD of noise and keep the rest (``strength.keep_noise``; a
  told model, ``UNetDenoiser(told=True)``, is given the SD instead); ``leave_sd``: leave that SD of noise in the
  output's flat tissue (``strength.leave_noise``), for a reader who finds a fully denoised image too smooth.
- Padding outside the scanner's field of view (``io.fov``) goes to the networks as air and comes back unchanged
  in the denoised image; no box is centred on it.
- ``ResultCache``: results keyed by content fingerprints of the input and the model plus the settings, so a
  re-run or a new score threshold costs nothing (detection keeps every box above ``BOX_FLOOR``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import torch

from napari_lidnet.inference.cache import ResultCache, array_fingerprint, cache_bytes, model_fingerprint
from napari_lidnet.inference.tiles import TILE_ALIGN, blend, centred_in, merge_detections, tile_spans
from napari_lidnet.io.checks import implausible_note, looks_like_yxz, nonfinite_note, not_hu_note, warn_caller
from napari_lidnet.io.fov import fill_padding
from napari_lidnet.models.device import cpu_has_bf16, resolve_device, script_notice
from napari_lidnet.models.normalize import hu_to_net, net_to_hu
from napari_lidnet.strength import check_strength, keep_noise, leave_noise

Progress = Callable[[int, int], None]
Notice = Callable[[str], None]
CancelCheck = Callable[[], bool]
SliceSelection = int | range | Sequence[int] | None
R = TypeVar("R")  # what a generator returns
Y = TypeVar("Y")  # what it yields
Z = TypeVar("Z")  # what a mapped generator yields

#: detections kept in results and caches; the display threshold filters above it
BOX_FLOOR = 0.05
MAX_BOXES_PER_SLICE = 50  #: the most boxes a slice keeps (the highest scores)
DEFAULT_TILE_SIZE = 1024
DEFAULT_OVERLAP = 128

__all__ = [
    "BOX_FLOOR",
    "Cancelled",
    "InferenceSettings",
    "PipelineResult",
    "ResultCache",
    "array_fingerprint",
    "cache_bytes",
    "denoise",
    "detect",
    "hu_array",
    "filter_boxes",
    "is_oom_error",
    "iter_denoise",
    "iter_detect",
    "iter_pipeline",
    "map_yields",
    "model_fingerprint",
    "run_pipeline",
    "run_to_end",
    "take_slices",
    "tile_spans",
]


class Cancelled(Exception):
    """Raised by the blocking calls when their cancel check returns True between two batches."""


@dataclass(frozen=True)
class InferenceSettings:
    """How to run a network. Everything here may change the result and is part of the cache keys except
    ``batch_size``, which changes it only by rounding (batched kernels sum in another order: under 1 HU with
    bfloat16 AMP on a CPU, 1e-4 HU in float32), so a cached result serves any batch size."""

    batch_size: int = 4
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    amp: bool = True
    amp_dtype: str = "float16"
    max_detections: int = MAX_BOXES_PER_SLICE
    remove_sd: float | None = None  # HU of noise the denoiser removes (strength.keep_noise); None: all
    leave_sd: float | None = None  # HU of noise left in the output (strength.leave_noise); not with remove_sd
    pixel_mm: Any = None  # (row, column) pixel size (a number or a (z, y, x) spacing is made one): detect_mm resamples

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1 or int(self.tile_size) < 1 or int(self.overlap) < 0:
            raise ValueError(f"batch size {self.batch_size} and tile size {self.tile_size} must be at least 1, the "
                             f"overlap {self.overlap} at least 0")  # fmt: skip
        if self.pixel_mm is not None:  # (row, column) from a number, a pair or a (z, y, x) spacing (hashable: a key)
            pair = [float(v) for v in np.ravel(self.pixel_mm)[-2:]]
            object.__setattr__(self, "pixel_mm", (pair[0], pair[-1]) if pair else ())  # (a frozen dataclass)
            if len(self.pixel_mm) != 2 or not all(math.isfinite(v) and v > 0 for v in self.pixel_mm):
                raise ValueError(f"pixel size {self.pixel_mm} must be positive numbers of mm")

    def key(self) -> tuple[Any, ...]:
        """The settings that change results."""
        return (self.tile_size, self.overlap, self.amp, self.amp_dtype, self.max_detections, self.remove_sd,
                self.pixel_mm, self.leave_sd)  # fmt: skip


#: the keyword names of :class:`InferenceSettings`
SETTING_NAMES = frozenset(InferenceSettings.__dataclass_fields__)

# --------------------------------------------------------------------------------------------------- helpers


def is_oom_error(exc: BaseException) -> bool:
    """True for CUDA/MPS/CPU out-of-memory errors."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


#: the lowest HU a CT scanner stores (air reads -1000; reconstructions clip at -1024): a denoised pixel is never
#: darker than this unless its input was (the network's small undershoot in air, 2% of a chest's voxels, is removed)
LOWEST_HU = -1024.0


def hu_array(data: Any) -> np.ndarray:
    """``data`` as the pipeline reads it: a NumPy array of integers or floats as it is (each batch is read as
    float32: an int16 study is not copied whole), anything else (a lazy or nested array) read as float32."""
    return data if isinstance(data, np.ndarray) and data.dtype.kind in "iuf" else np.asarray(data, dtype=np.float32)


def _as_stack(hu: np.ndarray) -> np.ndarray:
    """``hu`` (:func:`_checked_array`) as a (z, y, x) stack."""
    hu = _checked_array(hu)
    return hu[None] if hu.ndim == 2 else hu


def _checked_array(hu: Any) -> np.ndarray:
    """``hu`` as :func:`hu_array` reads it, a slice or a volume; ValueError for values that cannot be HU (boolean,
    8-bit, complex: a mask or a display image) and for a shape without pixels."""
    dtype, bad = getattr(hu, "dtype", None), False
    if isinstance(dtype, torch.dtype):  # a tensor: read as float32 below
        bad = dtype in (torch.bool, torch.uint8, torch.int8) or dtype.is_complex
    elif dtype is not None:
        bad = np.dtype(dtype).kind not in "iuf" or np.dtype(dtype).itemsize == 1
    if bad:
        raise ValueError(f"dtype {str(dtype).removeprefix('torch.')} cannot hold CT values in HU (integers of 16 "
                         "bits or more, or floats): a mask or a display image?")  # fmt: skip
    hu = hu_array(hu)
    if hu.ndim not in (2, 3):
        raise ValueError(f"expected a 2D slice or a 3D volume, got an array of shape {hu.shape}")
    if 0 in hu.shape[-2:]:  # a layer cropped to nothing: torch failed deep in the network
        raise ValueError(f"an image of shape {hu.shape} has no pixels in a slice")
    return hu


def _read_and_look(hu: Any, slices: SliceSelection) -> tuple[np.ndarray, list[int]]:
    """The (z, y, x) stack of ``hu`` and the indices of ``slices``, after :func:`say_if_odd` on them (the entry points'
    check: once per call)."""
    stack = _as_stack(hu)
    idx = _select(len(stack), slices)
    say_if_odd(stack, idx)
    return stack, idx


def say_if_odd(stack: np.ndarray, idx: Sequence[int]) -> None:
    """Warn (at the caller's line) about input the models were likely not meant to get: slices ``idx`` whose values
    are not HU (``io.checks.not_hu_note``: the first, middle and last of them are looked at), or a stack that looks
    like (y, x, z) (``io.checks.looks_like_yxz``, the rule the command line refuses by)."""
    z, y, x = stack.shape
    if looks_like_yxz((z, y, x)):  # slices of 512 x 40 px, 512 of them: a (y, x, z) array (nibabel's order)
        warn_caller(f"slices of {y} x {x} pixels, {z} of them: if the array is (y, x, z), pass "
                    "np.moveaxis(hu, -1, 0); the slices are the first axis", UserWarning)  # fmt: skip
    for i in sorted({idx[0], idx[len(idx) // 2], idx[-1]}) if len(idx) else ():
        note = not_hu_note(stack[i])
        if note:
            warn_caller(f"slice {i}: {note}; CT in HU was expected (air -1000, water 0): normalised values (HU / "
                        "1000, 0..1) give the models nonsense", UserWarning)  # fmt: skip
            return


def check_role(model: Any, role: str) -> torch.nn.Module:
    """``model``, or ValueError unless it can act as a ``role`` ("denoiser": a module that is not a detector;
    "detector": one with ``detect``), before any work: a swapped pair failed deep in the network."""
    if isinstance(model, tuple):
        raise ValueError(f"expected a {role} model, got a tuple: load_model returns (model, card), take its first item")
    is_detector = callable(getattr(model, "detect", None))
    if not isinstance(model, torch.nn.Module) or is_detector != (role == "detector"):
        given = "a lesion detector" if is_detector else f"a {type(model).__name__}"
        raise ValueError(f"expected a {role} model, got {given}: load it with load_model(name, {role!r})")
    return model


def take_slices(stack: np.ndarray, chunk: Sequence[int]) -> np.ndarray:
    """``stack[chunk]``, as a view (no copy) when the indices are consecutive."""
    chunk = list(chunk)
    if chunk and chunk == list(range(chunk[0], chunk[0] + len(chunk))):
        return stack[chunk[0] : chunk[0] + len(chunk)]
    return stack[chunk]


def _batch(stack: np.ndarray, chunk: Sequence[int]) -> np.ndarray:
    """The slices ``chunk`` of ``stack`` as float32 HU (a view when they are float32 and consecutive)."""
    return np.asarray(take_slices(stack, chunk), dtype=np.float32)


def _check_finite(stack: np.ndarray, idx: list[int]) -> None:
    """Refuse NaN or infinite pixels in the slices to process, before anything runs: a NaN spreads through the
    convolutions (one pixel removes every box of its slice); and values no CT holds (``io.checks.HU_LIMIT``: 1e30
    overflowed float32 in the networks and came back as +-2.6e30 "HU")."""
    for z in idx:
        if not np.isfinite(stack[z]).all():
            note = nonfinite_note(stack[z], f"slice {z}")
            raise ValueError(f"{note}; CT input must be finite HU (replace them, e.g. with -1024 HU, first)")
        note = implausible_note(stack[z], f"slice {z}")
        if note:
            raise ValueError(f"{note}; CT input must be HU (air -1000, water 0)")


def _select(n: int, slices: SliceSelection) -> list[int]:
    """Slice indices to process, in the order given (-1: the last, as Python counts)."""
    if slices is None:
        return list(range(n))
    idx = [int(slices)] if isinstance(slices, (int, np.integer)) else [int(i) for i in slices]
    idx = [i + n if -n <= i < 0 else i for i in idx]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"slice indices {bad[:5]} out of range for a volume of {n} slices")
    return idx


def filter_boxes(rows: np.ndarray, threshold: float) -> np.ndarray:
    """Rows ``slice, x1, y1, x2, y2, score`` with score >= threshold (float32 scores: a score shown as the
    threshold's digits counts)."""
    rows = np.asarray(rows, np.float32).reshape(-1, 6)
    return rows[rows[:, 5] >= threshold - 1e-6]


# --------------------------------------------------------------------------------------------------- the runner


class _Runner:
    """Runs one model on (B, H, W) HU stacks with batching, tiling, AMP and the out-of-memory fallbacks."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str,
        settings: InferenceSettings,
        notice: Notice | None,
    ) -> None:
        self.notice = notice or script_notice(device)
        self.device = resolve_device(device, self.notice)
        self.model = model
        self.settings = settings
        self.batch = max(1, int(settings.batch_size))
        self.tile = int(settings.tile_size)
        self.overlap = int(settings.overlap)
        params = list(model.parameters()) + list(model.buffers())
        self._home = params[0].device if params else None
        self._was_training = model.training

    def __enter__(self) -> _Runner:
        self.model.to(self.device).eval()
        if self._nhwc:
            self.model.to(memory_format=torch.channels_last)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.to(memory_format=torch.contiguous_format)  # saving (safetensors) needs contiguous weights
        self.model.train(self._was_training)
        if self._home is not None and self.device != self._home and self._home.type != "meta":
            with contextlib.suppress(RuntimeError):
                self.model.to(self._home)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.settings.amp:
            return torch.autocast("cuda", dtype=getattr(torch, self.settings.amp_dtype))
        native = self.device.type == "cpu" and getattr(self.model, "cpu_bf16", False) and cpu_has_bf16()
        if native and self.settings.amp:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _tensor(self, hu: np.ndarray) -> torch.Tensor:
        """HU (b, h, w) -> network-scale (b, 1, h, w) on the device (scaled there: one pass less on the host)."""
        arr = np.ascontiguousarray(hu, dtype=np.float32)
        if not arr.flags.writeable:  # a read-only cached result: torch only takes memory it may write
            arr = arr.copy()
        x = hu_to_net(torch.from_numpy(arr)[:, None].to(self.device))
        return x.contiguous(memory_format=torch.channels_last) if self._nhwc else x

    @property
    def _nhwc(self) -> bool:
        """Channels-last on the CPU for models that run faster so (``prefers_channels_last``: the unet, 1.35x)."""
        return self.device.type == "cpu" and bool(getattr(self.model, "prefers_channels_last", False))

    def _degrade(self, shape: tuple[int, int], exc: BaseException) -> None:
        """Next fallback after an out-of-memory error, or re-raise when none is left."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        min_tile = 2 * self.overlap + 4 * TILE_ALIGN
        current = min(self.tile, max(shape))
        smaller = max(min_tile, -(-current // 2 // TILE_ALIGN) * TILE_ALIGN)
        if self.batch > 1:
            self.batch //= 2
            self.notice(f"out of memory on {self.device}: retrying with batch size {self.batch}")
        elif smaller < current:
            self.tile = smaller
            self.notice(f"out of memory on {self.device}: retrying in tiles of {self.tile} pixels")
        elif self.device.type != "cpu":
            self.notice(f"out of memory on {self.device}: falling back to the CPU (slower)")
            self.device = torch.device("cpu")
            self.model.to(self.device)
        else:
            raise RuntimeError(
                f"out of memory on the CPU even with batch size 1 and tiles of {self.tile} pixels"
            ) from exc

    def run(self, stack: np.ndarray, fn: Callable[[torch.Tensor], Any], combine: Callable) -> list[Any]:
        """Apply ``fn`` to every image of ``stack`` (B, H, W) HU, retrying after out-of-memory errors.

        ``fn`` maps a (b, 1, h, w) network-scale tensor to a list of b per-image results; ``combine(results,
        spans, shape)`` merges per-tile results of one image (``spans`` = list of ((y0, y1), (x0, x1)))."""
        while True:
            try:
                return self._run_once(stack, fn, combine)
            except RuntimeError as exc:
                if not is_oom_error(exc):
                    raise
                self._degrade(stack.shape[-2:], exc)

    def _run_once(self, stack: np.ndarray, fn: Callable, combine: Callable) -> list[Any]:
        h, w = stack.shape[-2:]
        out: list[Any] = []
        with torch.inference_mode(), self._autocast():
            if max(h, w) <= self.tile:
                for i in range(0, len(stack), self.batch):
                    out.extend(fn(self._tensor(stack[i : i + self.batch])))
                return out
            spans = [
                (ys, xs)
                for ys in tile_spans(h, self.tile, self.overlap)
                for xs in tile_spans(w, self.tile, self.overlap)
            ]
            for image in stack:
                parts: list[Any] = []
                for i in range(0, len(spans), self.batch):
                    group = spans[i : i + self.batch]
                    shapes = {(y1 - y0, x1 - x0) for (y0, y1), (x0, x1) in group}
                    if len(shapes) == 1:
                        tiles = np.stack([image[y0:y1, x0:x1] for (y0, y1), (x0, x1) in group])
                        parts.extend(fn(self._tensor(tiles)))
                    else:  # edge tiles of other sizes go one by one
                        for (y0, y1), (x0, x1) in group:
                            parts.extend(fn(self._tensor(image[None, y0:y1, x0:x1])))
                out.append(combine(parts, spans, (h, w)))
        return out


# --------------------------------------------------------------------------------------------------- generators


def iter_denoise(
    model: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    *,
    slices: SliceSelection = None,
    settings: InferenceSettings | None = None,
    notice: Notice | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Generator form of :func:`denoise`: yields ``(done, total)`` slices after every batch, returns HU."""
    check_role(model, "denoiser")
    settings = settings or InferenceSettings()
    check_strength(settings.remove_sd, settings.leave_sd)
    stack = _as_stack(hu)
    idx = _select(len(stack), slices)
    _check_finite(stack, idx)
    out = np.empty((len(idx), *stack.shape[1:]), np.float32)

    # a told model (FFDNet-style) takes the SD itself; a blind one removes all and the rest is put back after
    told = bool(getattr(model, "told", False)) and bool(settings.remove_sd)

    def fn(x: torch.Tensor) -> list[np.ndarray]:
        y = model(x, remove_sd=settings.remove_sd) if told else model(x)
        return list(net_to_hu(y[:, 0].float()).cpu().numpy())

    def combine(parts: list, spans: list, shape: tuple[int, int]) -> np.ndarray:
        return blend(parts, spans, shape, settings.overlap)

    with _Runner(model, device, settings, notice) as runner:
        done = 0
        while done < len(idx):
            chunk = idx[done : done + runner.batch]
            given = _batch(stack, chunk)
            low, pads = fill_padding(given)
            block = out[done : done + len(chunk)]
            block[:] = _finished(runner.run(low, fn, combine), low, given, pads)
            if not told:
                block[:] = apply_strength(given, block, settings.remove_sd, settings.leave_sd)
            done += len(chunk)
            yield done, len(idx)
    if slices is None and np.ndim(hu) == 2:
        return out[0]
    return out


def _finished(den: np.ndarray, low: np.ndarray, given: np.ndarray, pads: list[np.ndarray | None]) -> np.ndarray:
    """A network's (B, H, W) output no darker than air unless the input (``low``, padding as air) was, and each
    slice's padding back as it was in ``given``."""
    out = np.maximum(den, np.minimum(low, LOWEST_HU))
    for image, source, pad in zip(out, given, pads):
        if pad is not None:
            image[pad] = source[pad]
    return out


def apply_strength(given: np.ndarray, blind: np.ndarray, remove_sd: float | None, leave_sd: float | None) -> np.ndarray:
    """A blind denoiser's (B, H, W) output ``blind`` of the slices ``given`` with the strength applied after the
    network: ``remove_sd`` HU of noise removed (``strength.keep_noise``) or ``leave_sd`` HU left
    (``strength.leave_noise``), as :func:`iter_denoise` gives it; ``blind`` itself when neither is set."""
    if remove_sd is None and leave_sd is None:
        return blind
    low, pads = fill_padding(np.asarray(given, np.float32))
    kept = leave_noise(low, keep_noise(low, blind, remove_sd), leave_sd)
    return _finished(np.asarray(kept, np.float32), low, given, pads)


def detect_scale(detector: torch.nn.Module, pixel_mm: Sequence[float] | None) -> tuple[float, float] | None:
    """(row, column) zoom that brings slices of ``pixel_mm`` to the detector's ``detect_mm``, or None (no pixel
    size given, no ``detect_mm``, or within 2% of it)."""
    target = getattr(detector, "detect_mm", None)
    if target is None or pixel_mm is None:
        return None
    size = [float(v) for v in np.ravel(pixel_mm)]
    size = size * 2 if len(size) == 1 else size  # one value: square pixels, as everywhere else
    fy, fx = (v / float(target) for v in size[-2:])
    if len(size) < 2 or not all(np.isfinite((fy, fx))) or min(fy, fx) <= 0:
        raise ValueError(f"pixel size {size} must be two positive numbers of mm")
    return None if max(abs(fy - 1), abs(fx - 1)) < 0.02 else (fy, fx)


def _zoomed(images: np.ndarray, scale: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(images resampled bilinearly by ``scale`` (pixel edges aligned), the x, y, x, y factors it applied)."""
    from scipy import ndimage as ndi

    h, w = images.shape[-2:]
    size = (max(8, round(h * scale[0])), max(8, round(w * scale[1])))
    factors = (size[0] / h, size[1] / w)
    out = ndi.zoom(images, (1, *factors), order=1, grid_mode=True, mode="nearest")
    return out.astype(np.float32, copy=False), np.array([factors[1], factors[0], factors[1], factors[0]], np.float32)


def iter_detect(
    detector: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    *,
    score_threshold: float = BOX_FLOOR,
    slices: SliceSelection = None,
    settings: InferenceSettings | None = None,
    notice: Notice | None = None,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Generator form of :func:`detect`: yields ``(done, total)`` after every batch, returns (N, 6) rows. A
    detector with ``detect_mm`` given ``settings.pixel_mm`` sees each slice resampled to that size; boxes come back
    in the slice's own pixels."""
    check_role(detector, "detector")
    settings = settings or InferenceSettings()
    stack = _as_stack(hu)
    idx = _select(len(stack), slices)
    _check_finite(stack, idx)
    scale = detect_scale(detector, settings.pixel_mm)
    max_det = settings.max_detections

    def fn(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return detector.detect(x, score_threshold=score_threshold, max_detections=max_det)

    def combine(parts: list, spans: list, shape: tuple[int, int]) -> tuple:
        return merge_detections(parts, spans, shape, max_det)

    rows: list[np.ndarray] = []
    with _Runner(detector, device, settings, notice) as runner:
        done = 0
        while done < len(idx):
            chunk = idx[done : done + runner.batch]
            images, pads = fill_padding(_batch(stack, chunk))
            images, factors = _zoomed(images, scale) if scale else (images, None)
            for z, (boxes, scores), pad in zip(chunk, runner.run(images, fn, combine), pads):
                boxes, scores = boxes.float().cpu().numpy(), scores.float().cpu().numpy()
                if factors is not None:
                    boxes = boxes / factors  # back to the slice's own pixels
                if len(boxes) and pad is not None:
                    keep = ~centred_in(boxes, pad)
                    boxes, scores = boxes[keep], scores[keep]
                if len(boxes):
                    zcol = np.full((len(boxes), 1), z, np.float32)
                    rows.append(np.hstack([zcol, boxes, scores[:, None]]))
            done += len(chunk)
            yield done, len(idx)
    return np.vstack(rows).astype(np.float32) if rows else np.zeros((0, 6), np.float32)


def run_to_end(gen: Generator[Any, Any, R], progress: Progress | None = None, cancel: CancelCheck | None = None) -> R:
    """Run a generator to the end and return its return value. With ``progress`` or ``cancel`` it must yield
    ``(done, total)``: ``progress`` gets each, and ``cancel`` is checked after each (:class:`Cancelled`)."""
    while True:
        try:
            item = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress:
            progress(*item)
        if cancel is not None and cancel():
            gen.close()
            done, total = item
            raise Cancelled(f"cancelled after {done} of {total} slices")


def map_yields(gen: Generator[Y, Any, R], fn: Callable[[Y], Z]) -> Generator[Z, None, R]:
    """Yield ``fn(item)`` for each item ``gen`` yields and return what ``gen`` returns (``x = yield from
    map_yields(...)``); ``gen`` is closed when this generator ends or is closed."""
    try:
        while True:
            try:
                item = next(gen)
            except StopIteration as stop:
                return stop.value
            yield fn(item)
    finally:
        gen.close()


def denoise(
    model: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    batch_size: int = 4,
    progress: Progress | None = None,
    *,
    slices: SliceSelection = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = True,
    cancel: CancelCheck | None = None,
    notice: Notice | None = None,
    remove_sd: float | None = None,
    leave_sd: float | None = None,
) -> np.ndarray:
    """Denoise a slice (y, x) or a volume (z, y, x); returns float32 HU of the same shape, or (k, y, x) for the
    ``slices`` selected. ``remove_sd``: SD (HU) of the noise to remove, the rest is kept (``strength``); None: all.
    ``leave_sd`` instead: SD (HU) of noise to leave in the output's flat tissue.
    Restores the model's train/eval mode (and its device after a CPU fallback)."""
    settings = InferenceSettings(
        batch_size=batch_size, tile_size=tile_size, overlap=overlap, amp=amp, remove_sd=remove_sd, leave_sd=leave_sd
    )
    hu = _checked_array(hu)  # read once (a list or a tensor): the checks and the run take the same array
    _read_and_look(hu, slices)
    gen = iter_denoise(model, hu, device, slices=slices, settings=settings, notice=notice)
    return run_to_end(gen, progress, cancel)


def detect(
    detector: torch.nn.Module,
    hu: np.ndarray,
    device: torch.device | str = "cpu",
    score_threshold: float = BOX_FLOOR,
    batch_size: int = 4,
    progress: Progress | None = None,
    *,
    slices: SliceSelection = None,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_OVERLAP,
    amp: bool = True,
    max_detections: int = MAX_BOXES_PER_SLICE,
    cancel: CancelCheck | None = None,
    notice: Notice | None = None,
    pixel_mm: Sequence[float] | None = None,
) -> np.ndarray:
    """Lesion boxes of a slice or volume as an (N, 6) array ``slice, x1, y1, x2, y2, score`` (pixels): every box
    scoring at least ``score_threshold`` (default ``BOX_FLOOR``, every candidate: the detector's calibrated
    operating point is ``models.weights.default_threshold(card)``, as the CLI and the widget use), at most
    ``max_detections`` per slice (the highest scores). ``pixel_mm``: the slices' (row, column) pixel size (or a
    (z, y, x) spacing), which a detector with ``detect_mm`` needs to see them at its size."""
    settings = InferenceSettings(batch_size=batch_size, tile_size=tile_size, overlap=overlap, amp=amp,
                                 max_detections=max_detections, pixel_mm=pixel_mm)  # fmt: skip
    hu = _checked_array(hu)  # read once (a list or a tensor): the checks and the run take the same array
    _read_and_look(hu, slices)
    gen = iter_detect(
        detector, hu, device, score_threshold=score_threshold, slices=slices, settings=settings, notice=notice
    )
    return run_to_end(gen, progress, cancel)


# --------------------------------------------------------------------------------------------------- pipeline


@dataclass
class PipelineResult:
    """Output of :func:`iter_pipeline`.

    ``denoised``: (k, y, x) HU for ``slices`` (None without a denoiser); ``boxes``: (N, 6) rows with absolute
    slice indices and every score >= ``BOX_FLOOR`` (None without a detector); ``cached``: stage -> cache hit.
    """

    slices: list[int]
    denoised: np.ndarray | None = None
    boxes: np.ndarray | None = None
    cached: dict[str, bool] = field(default_factory=dict)
    input_key: str | None = None  # the input's fingerprint in the cache's keys (``ResultCache.forget``)
    notices: list[str] = field(default_factory=list)
    device: str = "cpu"
    seconds: float = 0.0


def iter_pipeline(
    hu: np.ndarray,
    denoiser: torch.nn.Module | None,
    detector: torch.nn.Module | None,
    device: torch.device | str = "auto",
    *,
    slices: SliceSelection = None,
    settings: InferenceSettings | None = None,
    cache: ResultCache | None = None,
    notice: Notice | None = None,
) -> Generator[tuple[int, int], None, PipelineResult]:
    """Denoise, then detect lesions on the denoised slices (LIDnet's detector follows the denoised domain).

    Yields ``(done, total)`` slices over both stages; returns a :class:`PipelineResult`. With ``cache``, each stage
    is looked up by (input and model fingerprints, slices, settings, device type) first. The input is read in
    batches, never copied whole (``benchmarks/pipeline_memory.py``). A blind denoiser's strength is applied after
    both stages (:func:`apply_strength`): the detector reads the fully denoised slices it was calibrated on, and a new
    strength reuses both cached stages; a told one (``denoiser.told``) takes ``remove_sd`` in (the boxes may move)."""
    t0 = time.perf_counter()
    stages = _stages(denoiser, detector)
    final = settings or InferenceSettings()
    settings, after = _network_settings(denoiser, final)
    stack, idx = _read_and_look(hu, slices)
    result = PipelineResult(slices=idx)

    said = notice or script_notice(device)

    def tell(msg: str) -> None:
        result.notices.append(msg)
        said(msg)

    device = resolve_device(device, tell)
    result.device = str(device)
    total = len(idx) * (len(stages) + after)  # the strength step counts its slices too (and can be cancelled)
    # cache keys, only when caching (hashing a volume costs more than a GPU pass over it): the input's content
    # hash, then for the detection stage the key of the denoising that made its input (no second hash)
    result.input_key = image_key = array_fingerprint(take_slices(stack, idx)) if cache is not None else None
    for k, (stage, model) in enumerate(stages):
        key = None
        if cache is not None:
            key = (stage, image_key, tuple(idx), model_fingerprint(model), settings.key(), device.type)
        hit = cache.get(key) if cache is not None else None
        result.cached[stage] = hit is not None
        if hit is None:
            gen = _stage_generator(stage, model, stack, result, device, settings, tell)
            offset = k * len(idx)
            hit = yield from map_yields(gen, lambda item, offset=offset: (offset + item[0], total))
            if cache is not None:
                cache.put(key, hit)
        else:
            yield (k + 1) * len(idx), total
        if stage == "denoise":
            result.denoised, image_key = hit, key
        else:
            result.boxes = hit
    if after:  # after the stages: its slices are counted from there
        result.denoised = yield from _strengthened(stack, idx, result.denoised, final, cache is None, total)
    result.seconds = time.perf_counter() - t0
    return result


def _stages(denoiser: torch.nn.Module | None, detector: torch.nn.Module | None) -> list[tuple[str, torch.nn.Module]]:
    """The pipeline's stages, ("denoise", denoiser) and ("detect", detector), for the models given, each checked to
    be what its stage needs (:func:`check_role`) before any work."""
    pairs = (("denoise", denoiser, "denoiser"), ("detect", detector, "detector"))
    return [(stage, check_role(model, role)) for stage, model, role in pairs if model is not None]


def _network_settings(denoiser: torch.nn.Module | None, settings: InferenceSettings) -> tuple[InferenceSettings, bool]:
    """(the settings the networks run with, whether the strength is applied after them): a blind denoiser runs
    without it (:func:`apply_strength` follows), a told one is given it."""
    strength = check_strength(settings.remove_sd, settings.leave_sd)  # leaving 0 HU: no strength at all
    told = bool(getattr(denoiser, "told", False)) and bool(strength[0])
    after = denoiser is not None and not told and strength != (None, None)
    blind = after or denoiser is None  # without a denoiser the strength is moot: not in the detection's key
    return (replace(settings, remove_sd=None, leave_sd=None) if blind else settings), after


def _strengthened(
    stack: np.ndarray, idx: list[int], blind: np.ndarray, settings: InferenceSettings, in_place: bool, total: int
) -> Generator[tuple[int, int], None, np.ndarray]:
    """:func:`apply_strength` slice by slice (the input is never copied whole), the pipeline's last ``len(idx)`` of
    ``total`` steps, into ``blind`` itself with ``in_place``, else into a new array (a cached blind output stays as
    it is, so a run with a cache and a strength holds two outputs)."""
    out = blind if in_place else np.empty_like(blind)
    for k, i in enumerate(idx):
        out[k] = apply_strength(stack[i : i + 1], blind[k : k + 1], settings.remove_sd, settings.leave_sd)[0]
        yield total - len(idx) + k + 1, total
    return out


def _stage_generator(
    stage: str,
    model: torch.nn.Module,
    stack: np.ndarray,
    result: PipelineResult,
    device: torch.device,
    settings: InferenceSettings,
    tell: Notice,
) -> Generator[tuple[int, int], None, Any]:
    """One stage over the selected slices: denoise the input, or detect on the denoised slices (when there are)
    or on the input; detection rows carry absolute slice indices either way."""
    if stage == "denoise":
        return iter_denoise(model, stack, device, slices=result.slices, settings=settings, notice=tell)
    if result.denoised is None:
        return iter_detect(model, stack, device, slices=result.slices, settings=settings, notice=tell)
    return _absolute_slices(iter_detect(model, result.denoised, device, settings=settings, notice=tell), result.slices)


def _absolute_slices(
    gen: Generator[tuple[int, int], None, np.ndarray], idx: list[int]
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Detection rows of the k selected slices: slice column from position in the selection to volume index."""
    rows = yield from gen
    if len(rows):
        rows[:, 0] = np.asarray(idx, np.float32)[rows[:, 0].astype(int)]
    return rows


def run_pipeline(
    hu: np.ndarray,
    denoiser: torch.nn.Module | None,
    detector: torch.nn.Module | None,
    device: torch.device | str = "auto",
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
    **kwargs: Any,
) -> PipelineResult:
    """Blocking form of :func:`iter_pipeline` (same keyword arguments); the fields of :class:`InferenceSettings`
    (``batch_size``, ``remove_sd``, ``pixel_mm`` ...) may be given directly instead of ``settings``."""
    direct = {key: kwargs.pop(key) for key in list(kwargs) if key in SETTING_NAMES}
    if direct:
        if kwargs.get("settings") is not None:
            raise ValueError(f"give settings= or its fields ({', '.join(direct)}), not both")
        kwargs["settings"] = InferenceSettings(**direct)
    return run_to_end(iter_pipeline(hu, denoiser, detector, device, **kwargs), progress, cancel)
