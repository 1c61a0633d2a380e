"""What the ``lidnet`` commands share: reading and checking an input, the output checks, the model and threshold
options, argument types, progress lines and the Ctrl-C / SIGTERM handling of long runs."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_lidnet.io.atomic import check_writable

if TYPE_CHECKING:
    from napari_lidnet.io.volume import CTVolume


def check_new_output(out: Path, input_path: str | None = None, folder: bool = False) -> None:
    """Refuse, before any work, an output that exists (a ``folder`` output may be an empty folder), one inside the
    input folder, or one whose folder is missing or cannot be written."""
    if out.exists() and not (folder and out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; outputs never overwrite: choose a new path")
    if input_path is not None and Path(input_path).is_dir():
        if out.resolve().is_relative_to(Path(input_path).resolve()):
            raise ValueError(f"{out} lies inside the input folder {input_path}; choose an output outside it")
    parent = out.resolve().parent
    if not folder and not parent.is_dir():
        raise FileNotFoundError(f"{parent}: folder does not exist (create it first)")
    check_writable(out)


def check_ct(vol: Any, path: str) -> None:
    """Refuse a volume that is not CT the models process (``io.checks.ct_problem``)."""
    from napari_lidnet.io.checks import ct_problem

    problem = ct_problem(vol.hu, str(vol.metadata.get("modality", "") or ""), path)
    if problem:
        raise ValueError(problem)


#: the reader's ``format`` of array files, whose axis order nothing records (DICOM and NIfTI are read as (z, y, x))
ARRAY_FORMATS = ("npy", "npz", "tif", "tiff")


def apply_axes(vol: CTVolume, axes: str | None, path: str) -> CTVolume:
    """``vol`` in (z, y, x) order as ``--axes`` says (``yxz``: its last axis moved first, voxel size too); refused
    without ``--axes`` when a bare array looks like (y, x, z) (``io.checks.looks_like_yxz``), and ``--axes`` for any
    input other than a 3D array file without patient geometry."""
    import dataclasses

    import numpy as np

    from napari_lidnet.io.checks import looks_like_yxz

    bare = vol.metadata.get("format") in ARRAY_FORMATS and vol.hu.ndim == 3 and vol.metadata.get("orientation_unknown")
    if axes is not None and not bare:
        raise ValueError(f"--axes orders a 3D array file (.npy, .npz, .tif) without patient geometry; {path} is read "
                         "in (z, y, x) order: leave --axes out")  # fmt: skip
    if axes is None and bare and looks_like_yxz(vol.hu.shape):
        a, b, c = vol.hu.shape
        raise ValueError(f"{path}: shape {vol.hu.shape} looks like (y, x, z), {c} slices of {a} x {b} pixels: add "
                         f"--axes yxz to take its last axis as the slices, or --axes zyx to process {a} slices of "
                         f"{b} x {c} as stored")  # fmt: skip
    if axes == "zyx":  # said so: the Python API's "if the array is (y, x, z)" warning is not for this run
        warnings.filterwarnings("ignore", message=r"slices of .* if the array is \(y, x, z\)")
    if axes != "yxz":
        return vol
    spacing = (vol.spacing[2], vol.spacing[0], vol.spacing[1])
    return dataclasses.replace(vol, hu=np.ascontiguousarray(np.moveaxis(vol.hu, -1, 0)), spacing=spacing)


def axes_back(hu: Any, spacing: tuple[float, ...], axes: str | None) -> tuple[Any, tuple[float, ...]]:
    """A (z, y, x) result and its voxel size in the input file's order again (``--axes yxz``: slices last)."""
    import numpy as np

    if axes != "yxz":
        return hu, spacing
    return np.moveaxis(hu, 0, -1), (spacing[1], spacing[2], spacing[0])


def _key(vol: Any) -> str:
    """The key ``--series`` takes for ``vol``: its SeriesInstanceUID, or the reader's stand-in for a series without."""
    return str(vol.metadata.get("series_key") or vol.metadata.get("series_uid", "") or "")


def _named(message: str, vol: Any) -> bool:
    """Whether a reader's message names the series of ``vol`` (by its label or its ``--series`` key)."""
    from napari_lidnet.io.dicom_read import series_label

    meta = vol.metadata
    desc, uid = str(meta.get("series_description", "") or ""), str(meta.get("series_uid", "") or "")
    label = series_label(desc, uid) if (desc or uid) else ""
    return bool(label and label in message) or bool(_key(vol) and _key(vol) in message)


def _about_others(message: str, chosen: Any, others: list) -> bool:
    """Whether a reader's warning is about a series other than ``chosen``: one of ``others``, or one it skipped;
    a message naming ``chosen`` (or naming no series) is not."""
    if not others or _named(message, chosen):
        return False
    return any(_named(message, v) for v in others) or "series '" in message  # one the reader skipped, too


def _every_volume(path: str) -> list:
    """Every DICOM series and NIfTI file under the folder ``path`` (otherwise a folder of normals is calibrated on
    its DICOM series alone, the NIfTI head beside it left out without a word), else what ``open_ct`` reads.
    Hidden files and this program's own denoised NIfTI outputs are not inputs; what cannot be read is said and
    left out while anything else is read."""
    from napari_lidnet.io.dicom_scan import folder_files
    from napari_lidnet.io.nifti import is_nifti, is_our_denoised, read_nifti
    from napari_lidnet.io.open_ct import open_ct

    found = folder_files(Path(path)) if Path(path).is_dir() else []
    niftis = [f for f in found if is_nifti(f) and not f.name.startswith(".")]
    ours = [f for f in niftis if is_our_denoised(f)]
    if ours:
        warnings.warn(f"{len(ours)} NIfTI file(s) this program denoised left out ({ours[0].name}, ...)", stacklevel=2)
    readers = [lambda: open_ct(path), *(lambda f=f: [read_nifti(f)] for f in niftis if f not in ours)]
    volumes, problems = [], []
    for read in readers:
        try:
            volumes.extend(read())
        except ValueError as exc:
            problems.append(exc)
    if not volumes:
        raise problems[0]
    for exc in problems if niftis else ():  # a folder of NIfTI files only: the DICOM reader's "no series" is moot
        if "NIfTI file(s)" not in str(exc):
            warnings.warn(f"left out: {exc}", stacklevel=2)
    return volumes


def open_checked(path: str, series_uid: str | None = None, every: bool = False) -> list:
    """The CT volumes at ``path`` (series ``series_uid``), the first checked by ``check_ct``; with ``every``, all
    of them, those that are not CT left out with a note (refused when none is). Without ``every`` the series of a
    CT modality come first (largest first within each group), and the reader's warnings about the other series are
    counted in one line, not shown. The reader's warnings are shown only when the input is usable."""
    from napari_lidnet.io.checks import CT_MODALITIES
    from napari_lidnet.io.open_ct import open_ct

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volumes = _every_volume(path) if every and series_uid is None else open_ct(path, series_uid)
    if not every:
        volumes.sort(key=lambda v: (str(v.metadata.get("modality", "") or "CT") not in CT_MODALITIES, -v.hu.size))
    kept, refused = [], []
    for vol in volumes if every else volumes[:1]:
        try:
            check_ct(vol, path)
            kept.append(vol)
        except ValueError as exc:
            refused.append((vol.name, exc))
    if not kept:
        raise refused[0][1]
    hidden = 0
    for w in caught:
        if not every and _about_others(str(w.message), volumes[0], volumes[1:]):
            hidden += 1
            continue
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if hidden:
        note = f"{hidden} warning(s) about the other series of {path} not shown (only the largest CT one is processed)"
        warnings.warn(note, UserWarning, stacklevel=2)
    for name, exc in refused:
        warnings.warn(f"left out {name}: {exc}", UserWarning, stacklevel=2)
    return kept if every else volumes


def open_single(path: str, series_uid: str | None = None) -> CTVolume:
    """The largest CT volume at ``path`` (a CT modality first), or series ``series_uid``, checked by ``check_ct``."""
    volumes = open_checked(path, series_uid)
    if len(volumes) > 1:
        names = ", ".join(f"{v.name} ({_key(v)})" for v in volumes)
        patients = {str((v.metadata.get("source_tags") or {}).get("PatientID", "")) for v in volumes} - {""}
        whose = f" of {len(patients)} patients" if len(patients) > 1 else ""  # a tree may hold two
        print(f"{path} holds {len(volumes)} series{whose}: {names}; using the largest CT series, {volumes[0].name!r} "
              "(--series UID picks another)", file=sys.stderr)  # fmt: skip
    return volumes[0]


def print_progress(done: int, total: int, verb: str = "") -> None:
    """``[verb ]done/total slices`` on one rewritten line on a terminal; in a log, a line per tenth of the work."""
    text = f"{verb} {done}/{total} slices" if verb else f"{done}/{total} slices"
    if sys.stderr.isatty():
        print(f"\r{text}", end="" if done < total else "\n", file=sys.stderr, flush=True)
    elif done == total or new_tenth(done, total):
        print(text, file=sys.stderr, flush=True)


def new_tenth(done: int, total: int) -> bool:
    """Whether ``done`` of ``total`` starts a new tenth of the work (a log line per tenth)."""
    return (10 * done) // max(total, 1) > (10 * (done - 1)) // max(total, 1)


def threshold_note(name: str, card: dict[str, Any]) -> str:
    """Where the score threshold of the exported detector ``name`` (its ``card``) comes from, and how to set one
    for the user's own scans."""
    from napari_lidnet.models.weights import FALLBACK_THRESHOLD

    cal = card.get("calibration") or {}
    how = f"set one for your scans: lidnet calibrate SCANS --from {name} --name {name}-site"
    if cal.get("inherited_from"):
        return (f"note: {name}_detector keeps the score threshold {cal['threshold']:.3f} calibrated for the weights it "
                f"started from ({cal['inherited_from']}); {how}")  # fmt: skip
    if not cal:
        return f"note: {name}_detector has no calibrated score threshold ({FALLBACK_THRESHOLD} is used); {how}"
    return f"{name}_detector: score threshold {cal['threshold']:.3f}"


def load_model_arg(name: str | None, kind: str, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model on its device, the device, its card) of ``--model`` (None: the shipped default), with a warning when
    its card says it ended worse than it started."""
    from napari_lidnet.metrics.selection import worse_reason
    from napari_lidnet.models.device import pick_device
    from napari_lidnet.models.registry import load_model

    model, card = load_model(name or "default", kind=kind)  # an unknown name fails in one line, before the device
    dev, notice = pick_device(device)
    if notice:
        print(notice, file=sys.stderr)
    worse = worse_reason(card)
    if worse:
        print(f"warning: {name or 'default'}: {worse}", file=sys.stderr)
    return model.to(dev), dev, card


def threshold_arg(args: argparse.Namespace, card: dict[str, Any]) -> float:
    """``--threshold`` if given, else the detector card's calibrated one (the Denoise widget's default)."""
    from napari_lidnet.models.weights import default_threshold

    return default_threshold(card) if args.threshold is None else args.threshold


def score_arg(text: str) -> float:
    """argparse type: a detection score threshold in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a score threshold is a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {text}")
    return value


def int_in(lo: int, hi: int) -> Any:
    """argparse type: an integer in [lo, hi] (argparse names the option in its one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"an integer in [{lo}, {hi}] is expected, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


SEED = int_in(0, 2**32 - 1)


def device_arg(text: str) -> str:
    """argparse type: a device this machine has (``auto`` picks the best one; a device asked for by name that is
    not here is refused rather than run on the CPU unasked)."""
    if text.lower() == "auto":
        return text
    from napari_lidnet.models.device import pick_device

    try:
        notice = pick_device(text)[1]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if notice:
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine; use cpu or auto")
    return text


def add_split(p: Any) -> None:
    """The ``--split`` option of ``index`` and ``train``."""
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="train",
        help="the official part of an archive that has one (DeepLesion's Train_Val_Test column); others: all",
    )


def add_all_series(p: Any, each: str) -> None:
    """The ``--all-series`` and ``--workers`` options of ``denoise`` and ``detect`` (``each``: what is written)."""
    p.add_argument("--all-series", action="store_true", help=f"every DICOM series and NIfTI file under INPUT, {each}")
    p.add_argument("--workers", type=int, default=2, help="with --all-series: processes reading series ahead")


def stop_status(flag: Any) -> tuple[int, str]:
    """The exit status and word of a run that ``ctrl_c_stops`` stopped: 143 "terminated (SIGTERM)" for a SIGTERM (a
    scheduler, ``timeout``, ``kill``: 128 + 15, as the other commands exit), else 130 "interrupted" (Ctrl-C)."""
    import signal

    if getattr(flag, "signum", None) == signal.SIGTERM:
        return 143, "terminated (SIGTERM)"
    return 130, "interrupted"


@contextlib.contextmanager
def ctrl_c_stops(flag: Any, escalate: bool = True) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) or SIGTERM sets ``flag`` (a threading.Event: the run stops after its
    current step and saves what it has); a second one interrupts at once if ``escalate`` (after the checkpoint being
    written, if any: ``io.interrupts``). Outside the main thread
    nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from napari_lidnet.io.interrupts import interrupt_now

    def on_sigint(signum: int, frame: Any) -> None:
        if flag.is_set() and escalate:
            interrupt_now()  # at once, or once the checkpoint being written is whole
            return
        flag.signum = signum  # which one stopped it: the exit status says (stop_status)
        flag.set()

    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
