"""Checks every CT input passes before its pixels are read or used: shape, size, dtype, finite values.

Shapes and dtypes are checked from file headers, before anything is allocated; values (NaN, infinity, a blank
image) after reading. Messages are one line and name the input.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: largest rows or columns of a CT slice this plugin processes (clinical CT: 512, up to 2048 for micro-CT)
MAX_SIDE = 8192
#: largest number of voxels of one volume (8 GiB as float32 HU)
MAX_VOXELS = 2**31


def one_line(text: str) -> str:
    """``text`` with its lines joined by '; ' (for messages that must stay one line)."""
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_text(exc: BaseException) -> str:
    """One line for an error shown to a user: an OSError as 'PATH: reason', a ValueError as its message, anything
    else (a fault of ours or a library's) as 'Type: message'."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return one_line(f"{exc.filename}{other}: {exc.strerror}")
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    if isinstance(exc, OSError) and os_reason(exc):  # re-raised by a library with a traceback in its text
        return one_line(os_reason(exc))
    text = one_line(str(exc))
    if isinstance(exc, (ValueError, OSError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def os_reason(exc: BaseException) -> str | None:
    """The system's reason for an OSError (``[Errno 28]``'s "No space left on device", with its file when it names
    one), also when a library re-raised it with its own text (pydicom adds the tag and a traceback); else None."""
    seen: BaseException | None = exc
    for _ in range(5):  # the error, then what it was raised from
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.strerror:
            return f"{seen.filename}: {seen.strerror}" if seen.filename is not None else seen.strerror
        seen = seen.__cause__ or seen.__context__
    return None


class NotHU(ValueError):
    """An image that cannot be CT in HU whatever is done to it (8-bit, boolean, not numbers): a batch leaves it out
    with a note, as it leaves out other non-CT images, instead of failing the run (nnU-Net's labelsTr beside
    imagesTr failed every --all-series run). The message is ``what: reason``; ``reason`` alone names no file."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason

    def __reduce__(self) -> tuple:  # a reader process hands it back whole
        return type(self), (self.what, self.reason)


def check_image_shape(shape: Sequence[int], dtype: Any, what: str) -> None:
    """Refuse (ValueError) an image that is not a 2D slice or 3D volume of numbers of a processable size;
    :class:`NotHU` for one whose type cannot hold HU."""
    shape = tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if dtype.kind not in "iuf":
        raise NotHU(what, f"dtype {dtype} is not numbers in HU (expected integer or float)")
    if dtype.itemsize == 1:
        raise NotHU(what, f"dtype {dtype} (8 bits) cannot hold HU (-1024..3071); a label map or display image?")
    if len(shape) not in (2, 3):
        raise ValueError(f"{what}: shape {shape}; expected a 2D slice (y, x) or a 3D volume (z, y, x)")
    if min(shape) < 1:
        raise ValueError(f"{what}: image is empty (shape {shape})")
    if max(shape[-2:]) > MAX_SIDE:
        rows, cols = shape[-2:]
        raise ValueError(f"{what}: slices of {rows} x {cols} pixels are larger than {MAX_SIDE} x {MAX_SIDE}")
    if int(np.prod(shape)) > MAX_VOXELS:
        gib = int(np.prod(shape)) * 4 / 2**30
        raise ValueError(f"{what}: {shape} is {gib:.0f} GiB as float32 HU, over the {MAX_VOXELS * 4 >> 30} GiB limit")


def nonfinite_note(hu: np.ndarray, what: str) -> str | None:
    """A one-line description of NaN or infinite pixels in ``hu`` (count and the first one), or None."""
    finite = np.isfinite(hu)
    if finite.all():
        return None
    bad = np.logical_not(finite)
    n_nan, n_bad = int(np.isnan(hu).sum()), int(bad.sum())
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), hu.shape))
    kinds = " and ".join(k for k, n in (("NaN", n_nan), ("infinite", n_bad - n_nan)) if n)
    return f"{what}: {n_bad} of {hu.size} pixels are {kinds} (first at index {first})"


#: no CT value in HU lies beyond +-this: 16-bit stored pixels with a scanner's unit rescale read -33792..64511 HU
#: (an unmarked 63536 padding: +62512), extended-scale metal up to about 31000 and padding down to -3024; 1e30 is
#: a broken conversion, and the networks overflow float32 on it
HU_LIMIT = 1e5


def implausible_note(hu: np.ndarray, what: str) -> str | None:
    """A one-line note when finite pixels of ``hu`` lie beyond +-``HU_LIMIT`` (no CT holds them), or None."""
    values = np.asarray(hu)
    if values.dtype.kind in "iu" and values.dtype.itemsize <= 2:  # 16-bit integers cannot reach it
        return None
    if values.size and -HU_LIMIT <= float(values.min()) and float(values.max()) <= HU_LIMIT:
        return None
    bad = np.isfinite(values) & (np.abs(values) > HU_LIMIT)
    if not bad.any():  # NaN or infinity: nonfinite_note says so
        return None
    far = values[bad]
    first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), values.shape))
    return (f"{what}: {far.size} of {values.size} pixels lie beyond +-{HU_LIMIT:g} HU ({float(far.min()):g} to "
            f"{float(far.max()):g}, first at index {first}), which no CT holds")  # fmt: skip


def constant_note(hu: np.ndarray, what: str) -> str | None:
    """A one-line note when every (finite) pixel of ``hu`` has the same value, or None."""
    if hu.size and np.isfinite(hu).all() and float(hu.min()) == float(hu.max()):
        return f"{what}: every pixel is {float(hu.flat[0]):g} HU (a blank image)"
    return None


#: CT in HU shows air (-1000) or fat (-100) somewhere; an image with nothing below this is not CT in HU
LOWEST_CT_HU = -50.0
#: modalities processed (OT: secondary captures of CT; empty: the tag is missing, or not DICOM)
CT_MODALITIES = ("CT", "OT", "")


def not_ct_note(modality: str, hu: np.ndarray, what: str) -> str | None:
    """Why an image is not CT in HU (another modality; or, when nothing says CT, no pixel below
    ``LOWEST_CT_HU``: MR, or stored values without their rescale to HU), or None."""
    if modality not in CT_MODALITIES:
        return f"{what}: modality {modality!r} is not CT; the LIDnet models are made for CT in HU"
    if modality == "CT":
        return None
    values = np.asarray(hu)
    if np.issubdtype(values.dtype, np.floating):
        finite = np.isfinite(values)
        if not finite.any():  # not one finite pixel: the reader says so (numpy's nanmin would warn too)
            return None
        lo = float(np.min(values, where=finite, initial=np.inf))
        hi = float(np.max(values, where=finite, initial=-np.inf))
    else:  # stored integers (a lazily read int16 study): all finite
        lo, hi = float(values.min()), float(values.max())
    if lo <= LOWEST_CT_HU:
        return None
    return (
        f"{what}: no pixel below {LOWEST_CT_HU:g} HU (values {lo:g} to {hi:g}), so it is not CT in HU: CT shows air or "
        "fat; another modality, or stored values without their rescale to HU, would give the models nonsense"
    )


def ct_problem(hu: np.ndarray, modality: str, what: str) -> str | None:
    """Why ``hu`` is not CT the models process, in one line, else None: another modality (said first: an MR series
    is not "CT with NaN"), NaN or infinite pixels, values no CT holds (``HU_LIMIT``), a blank image, or (where
    nothing says CT) values that are not HU. The command line, batch runs and the Denoise dock refuse with it."""
    if modality not in CT_MODALITIES:
        return not_ct_note(modality, hu, what)
    note = nonfinite_note(hu, what) or implausible_note(hu, what) or constant_note(hu, what)
    if note:
        return f"{note}; CT input must be finite HU with some contrast"
    return not_ct_note(modality, hu, what)


def note_image_problems(volume: Any) -> list[str]:
    """Warn about (and add to ``volume.metadata['warnings']``) NaN, infinite, impossible (``HU_LIMIT``) or constant
    pixels; the image is kept so that the user can see it. Returns the notes added."""
    what = str(volume.metadata.get("source") or volume.name)
    found = (nonfinite_note(volume.hu, what), implausible_note(volume.hu, what), constant_note(volume.hu, what))
    notes = [n for n in found if n]
    for note in notes:
        volume.metadata.setdefault("warnings", []).append(note)
        warnings.warn(note, UserWarning, stacklevel=3)
    return notes


def warn_caller(msg: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` pointing at the first line outside this package (the script's own call), not at ours."""
    package = Path(__file__).resolve().parents[1]
    level, frame = 2, sys._getframe(1)  # stacklevel 2: the frame that called this function
    while frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(msg, category, stacklevel=level)


def looks_like_yxz(shape: Sequence[int]) -> bool:
    """Whether a 3D array's shape reads as (y, x, z), nibabel's and MATLAB's order, rather than (z, y, x): its last
    axis at most a quarter of each of the other two (512 x 512 x 16, 128 x 128 x 12), while CT slices are about
    square. The Python API warns about it; the command line refuses it unless ``--axes`` says which order it is."""
    return len(shape) == 3 and 4 * int(shape[2]) <= min(int(shape[0]), int(shape[1]))


#: values that all lie within +-this are not HU: HU / 1000 of a CT lies in -1..3, and tissue with its noise spans
#: more than 8 HU
NOT_HU_RANGE = 4.0


def not_hu_note(values: np.ndarray) -> str | None:
    """"values from a to b" when the finite ``values`` all lie within +-``NOT_HU_RANGE`` and are not all one value
    (HU / 1000, or 0..1: not CT in HU), else None."""
    values = np.asarray(values, np.float32)
    values = values[np.isfinite(values)]
    if values.size and values.max() > values.min() and np.abs(values).max() <= NOT_HU_RANGE:
        return f"values from {values.min():g} to {values.max():g}"
    return None
