"""Whole folders of DICOM series and NIfTI files in one command, one output per series or file, resumable.

Each series' output is written under a temporary name and renamed when complete, so an output that exists is
finished: a re-run skips it, and a run interrupted half-way redoes only what was not finished (leftover partial
outputs are removed first). Output names are stable and unique: ``<description>_<12 hex digits of the SHA-256 of
the series UID>`` (for a NIfTI file: its name and its path under the input folder; its denoised output is a
``.nii.gz``); two inputs that would still share a name are refused before anything is written. A series that
cannot be read is reported in ``BatchReport.failed`` (``Failed.fix``: the file whose content fails every re-run)
while the others are processed; one that holds NaN, is not CT in HU (another modality, or values that do not look
like HU), or was written by this program (a denoised series: it would be denoised twice), in
``BatchReport.left_out``, for good; an output written with a caveat (slices that reached the box cap), in
``BatchReport.notes``. One run at a time writes an output folder (a lock held for the whole run): a
second run there is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_lidnet.io.arrays import ARRAY_SUFFIXES
from napari_lidnet.io.atomic import remove_stale_partials, write_atomically
from napari_lidnet.io.checks import CT_MODALITIES, NotHU, ct_problem, one_line, os_reason
from napari_lidnet.io.dicom_read import written_here
from napari_lidnet.io.folder_lock import FolderInUse, FolderLock
from napari_lidnet.io.nifti import is_nifti, is_our_denoised, nifti_stem
from napari_lidnet.io.reader_workers import reader_worker_init
from napari_lidnet.models.weights import FALLBACK_THRESHOLD
from napari_lidnet.strength import check_strength

if TYPE_CHECKING:
    import torch

    from napari_lidnet.io.volume import CTVolume

PARTIAL = ".partial-"
MARKER = ".lidnet-batch"  # in a batch output folder: the task and settings that write there (a re-run finishes it)
SOURCES = ".lidnet-batch-sources.json"  # output name -> a stamp of the source it was written from
LOCK = ".lidnet-batch.lock"  # locked (io.folder_lock) by the run writing the folder; the system lets go when it ends
_OUTPUT_NAME = re.compile(r".+_[0-9a-f]{12}(\.csv|\.nii\.gz)?")  # as output_name names outputs (and their suffix)
Progress = Callable[[int, int, str], None]


@dataclass
class BatchReport:
    """What a batch run did: outputs written now, outputs found finished and skipped, series not processed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # one ``Failed`` line per series not processed, naming it and why
    left_out: list[str] = field(default_factory=list)  # one line per series left out for good (not CT in HU, ours)
    notes: list[str] = field(default_factory=list)  # one line per output written with a caveat (``box_cap_note``)
    not_read: list[str] = field(default_factory=list)  # one line per folder of PNG slices or arrays passed by


def output_name(description: str, uid: str) -> str:
    """A file-system-safe, stable name for one series' output: its description (letters of any script, digits,
    '.', '-', '_'; at most 40) and 12 hex digits of the SHA-256 of its full series UID."""
    desc = re.sub(r"[^\w.-]+", "_", unicodedata.normalize("NFC", description)).strip("._-")
    desc = desc[:40].rstrip("._-") or "series"
    return f"{desc}_{hashlib.sha256(uid.encode()).hexdigest()[:12]}"


def _as_is(item: Any) -> Any:
    return item


class _SeriesReader:
    """A map-style dataset of series to process: item i is (i, volume or the one-line reason it cannot be read),
    read in a DataLoader worker."""

    def __init__(self, todo: list, root: Path, base: Path) -> None:
        self.todo, self.root, self.base = todo, root, base  # base: the folder NIfTI paths are named under

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        from napari_lidnet.io.dicom_read import read_series
        from napari_lidnet.io.nifti import read_nifti

        _final, source, desc, key = self.todo[i]
        nifti = isinstance(source, Path)
        what = source.relative_to(self.base).as_posix() if nifti else f"series {desc!r} ({key})"
        try:
            vol = read_nifti(source) if nifti else read_series(source, source=self.root)
        except NotHU as exc:  # a label map: not CT for good, left out like another modality, named as they are
            return i, LeftOut(one_line(f"{what}: {exc.reason}"))
        except (ValueError, OSError) as exc:
            return i, Failed.of(what, exc, source)
        problem = ct_problem(vol.hu, str(vol.metadata.get("modality", "") or ""), what)  # a re-run reads the same
        return (i, LeftOut(one_line(problem))) if problem else (i, vol)


class LeftOut(str):
    """Why a series is left out for good (it is not CT in HU), as opposed to a failure a re-run may mend."""


class Failed(str):
    """One line naming a series not processed and why. ``fix``: the file (or the series' folder) whose content is
    the cause (pixel data that cannot be read, a malformed value): a re-run fails the same way until it is fixed or
    removed; None for an error of the file system (a file gone, no permission, an I/O error): a re-run may mend it."""

    fix: Path | None = None

    @classmethod
    def of(cls, what: str, exc: BaseException, source: Any) -> Failed:
        """The failure of input ``what`` (its NIfTI path, or its DICOM headers: ``source``) on ``exc``."""
        msg = one_line(str(exc))
        named_already = msg.startswith(what) or (isinstance(source, Path) and msg.startswith(str(source)))
        line = cls(msg if named_already else f"{what}: {msg}")
        if not any(isinstance(e, OSError) and e.errno is not None for e in (exc, exc.__cause__)):
            files = [source] if isinstance(source, Path) else [h.path for h in source]
            named = [f for f in files if msg.startswith(f"{f}:")]  # the file the reader's message names
            line.fix = named[0] if named else files[0] if len(files) == 1 else files[0].parent
        return line


def batch_settings(
    task: str, model: Any, threshold: float, remove_sd: float | None, leave_sd: float | None = None
) -> dict[str, Any]:
    """What a batch run's outputs depend on besides its inputs: the model's content hash, and the score threshold
    (detect) or the noise SD removed (denoise). Recorded in the ``MARKER`` file; a re-run must match them."""
    from napari_lidnet.inference import model_fingerprint

    settings: dict[str, Any] = {"model": model_fingerprint(model) if model is not None else None}
    if task == "detect":
        settings["threshold"] = float(threshold)
    else:
        settings["remove-sd"] = remove_sd
        if leave_sd is not None:  # absent otherwise: a run of an earlier version resumes
            settings["leave-sd"] = leave_sd
    return settings


def _read_marker(marker: Path) -> tuple[str | None, dict[str, Any] | None]:
    """(task, settings) of an earlier batch run's marker; settings None for a marker of an earlier version."""
    if not marker.is_file():
        return None, None
    lines = marker.read_text().splitlines()
    try:
        settings = json.loads(lines[1]) if len(lines) > 1 else None
    except ValueError:
        settings = None
    return (lines[0].strip() if lines else None), settings


def _changed(earlier: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings that differ, as 'key earlier (now ...)'; '' when none."""
    diff = [k for k in {**earlier, **now} if earlier.get(k) != now.get(k)]  # a key of one run only differs too
    def shown(k: str, v: Any) -> Any:  # no --remove-sd removes all the noise; no --leave-sd leaves none
        return f"{v:.3g}" if isinstance(v, float) else ("none" if k == "leave-sd" else "all") if v is None else v

    return ", ".join("another model" if k == "model" else f"{k} {shown(k, earlier.get(k))} (now {shown(k, now.get(k))})"
                     for k in diff)  # fmt: skip


def _prepare_out_dir(root: str | Path, out_dir: Path, task: str, settings: dict[str, Any]) -> tuple[bool, FolderLock]:
    """Refuse an output inside the input or around it, or a folder holding another task's batch run (its ``MARKER``
    file), the same task's run with other ``settings``, files this task's batch would not write, or a run still
    writing (``_lock``); create it, lock it and mark it; remove what an interrupted run left half-written.
    (whether this call created the folder, the lock to ``_release``)."""
    if out_dir.resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"{out_dir} lies inside the input folder {root}; choose an output folder outside it")
    if Path(root).resolve().is_relative_to(out_dir.resolve()):
        raise ValueError(f"the input {root} lies inside the output folder {out_dir}; choose an output folder "
                         "outside it")  # fmt: skip
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder; choose a folder for the outputs")
    marker = out_dir / MARKER
    earlier, earlier_settings = _read_marker(marker)
    changed = _changed(earlier_settings, settings) if earlier == task and earlier_settings is not None else ""
    if changed:
        raise ValueError(f"{out_dir} holds a batch {task} run made with other settings ({changed}); outputs never "
                         f"mix: choose a new folder, or run again with that run's settings to finish it")  # fmt: skip
    other = _not_batch_outputs(out_dir, task, earlier == task) if out_dir.is_dir() else []
    if (earlier and earlier != task) or other:
        what = f"a batch {earlier} run" if earlier and earlier != task else f"other files: {other[0]}"
        raise ValueError(f"{out_dir} is not empty (it holds {what}); outputs never mix: choose a new folder, or "
                         f"the folder of an earlier batch {task} run to finish it")  # fmt: skip
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = _lock(out_dir)  # before anything is written or removed: another run's partial outputs are its own
    try:
        marker.write_text(f"{task}\n{json.dumps(settings, sort_keys=True)}\n")
        for stale in out_dir.glob(f"{PARTIAL}*"):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
        remove_stale_partials(out_dir)  # what a killed run's writers left under their temporary names
    except BaseException:
        _release(out_dir, lock, created)
        raise
    return created, lock


def _not_batch_outputs(out_dir: Path, task: str, marked: bool) -> list[str]:
    """Names in ``out_dir`` that a batch ``task`` run would not have written (hidden files aside): loose DICOM files
    of another output; and, in a folder without this task's marker (``marked``: with it, an output of an earlier
    version keeps its older name), anything not named as ``output_name`` names outputs, so a folder of the user's
    own folders or CSV files (an archive) is never taken for a batch output folder."""
    written = {"denoise": lambda p: p.is_dir() or is_nifti(p), "detect": lambda p: p.suffix.lower() == ".csv"}[task]
    return [p.name for p in sorted(out_dir.iterdir()) if not p.name.startswith(".")
            and not (written(p) and (marked or _OUTPUT_NAME.fullmatch(p.name)))]  # fmt: skip


def _lock(out_dir: Path) -> FolderLock:
    """Lock ``out_dir`` for this run (its ``LOCK`` file, removed when let go); a folder that another batch run is
    writing is refused."""
    try:
        return FolderLock(out_dir, LOCK, remove=True)
    except FolderInUse as exc:
        raise ValueError(f"{out_dir} is being written by another batch run ({exc.holder}); outputs never mix: wait "
                         "for it to end, or choose another output folder") from None  # fmt: skip


def _release(out_dir: Path, lock: FolderLock, created: bool) -> None:
    """The end of a run: one that wrote nothing leaves nothing (the folder it created, else its marker); then the
    lock file is removed and let go."""
    try:
        if out_dir.is_dir() and not any(p.name not in (MARKER, LOCK) for p in out_dir.iterdir()):
            if created:
                shutil.rmtree(out_dir)
            else:
                (out_dir / MARKER).unlink(missing_ok=True)
    finally:
        lock.close()


def _inputs(series: dict, niftis: list[Path], root: Path) -> list[tuple[str, Any, str, str]]:
    """(key, source, description, modality) of every input: DICOM series (source: their headers) by UID, then NIfTI
    files (source: the path) by their path under ``root``. A series or file this program denoised has modality
    "ours"."""
    items = []
    for uid, headers in sorted(series.items()):
        ds0 = headers[0].ds
        modality = "ours" if written_here(ds0) else str(ds0.get("Modality", "") or "")
        items.append((uid, headers, str(ds0.get("SeriesDescription", "") or ""), modality))
    for path in niftis:
        modality = "ours" if is_our_denoised(path) else "CT"
        items.append((path.relative_to(root).as_posix(), path, nifti_stem(path), modality))
    return items


def _stamp(source: Any) -> str:
    """What a source is now: its files' names and sizes (a DICOM series' headers, or a NIfTI file's path), so a
    series topped up after an incomplete transfer, or a file replaced, is seen (not skipped as done);
    not their folders or times, so an archive moved or copied is the same archive."""
    paths = [Path(source)] if isinstance(source, Path) else [Path(h.path) for h in source]
    parts = []
    for p in paths:
        try:
            parts.append((p.name, p.stat().st_size))
        except OSError:
            parts.append((p.name, -1))
    return hashlib.sha1(json.dumps(sorted(parts)).encode()).hexdigest()


def _stamps(out_dir: Path) -> dict[str, str]:
    """The source stamps recorded in ``out_dir`` (empty for a folder of an earlier version: its outputs count as
    done, as before)."""
    try:
        stamps = json.loads((out_dir / SOURCES).read_text())
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def _record_stamp(final: Path, source: Any) -> None:
    """Record the stamp of the source ``final`` was written from (rewritten whole, atomically)."""
    stamps = {**_stamps(final.parent), final.name: _stamp(source)}
    write_atomically(final.parent / SOURCES, json.dumps(stamps, indent=1, sort_keys=True).encode())


def _plan(items: list, out_dir: Path, task: str, report: BatchReport, progress: Progress | None) -> list:
    """(final output, source, description, key) of every input still to do; finished ones go to ``report.skipped``,
    non-CT ones and ours to ``report.left_out``. Refuses two inputs that would share an output name."""
    todo, names, stamps = [], {}, _stamps(out_dir)
    for key, source, desc, modality in items:
        name = output_name(desc, key)
        if name.casefold() in names:
            raise ValueError(f"series {names[name.casefold()]} and {key} would both be written as {name}; nothing done")
        names[name.casefold()] = key
        suffix = ".csv" if task == "detect" else ".nii.gz" if isinstance(source, Path) else ""
        final = out_dir / f"{name}{suffix}"
        if modality == "ours" and task == "denoise":  # its boxes are what a detect run is for
            report.left_out.append(f"series {desc!r} ({key}): written by napari-lidnet; not denoised again")
        elif modality not in (*CT_MODALITIES, "ours"):
            report.left_out.append(f"series {desc!r} ({key}): modality {modality!r} is not CT; not processed")
        elif final.exists() and final.name in stamps and stamps[final.name] != _stamp(source):
            report.left_out.append(f"{final.name}: its source ({desc!r}, {key}) changed since it was written; left "
                                   "as it is (outputs never overwrite): move it away and run again to redo it")
        elif final.exists():
            report.skipped.append(final)
            if progress:
                progress(len(report.skipped), len(items), f"{final.name} (already complete)")
        else:
            todo.append((final, source, desc, key))
    return todo


def denoise_into(
    out: Path, vol: CTVolume, model: torch.nn.Module, device: torch.device | str, model_name: str,
    remove_sd: float | None = None, progress: Callable[[int, int], None] | None = None, leave_sd: float | None = None,
) -> np.ndarray:  # fmt: skip
    """Denoise ``vol`` (``remove_sd``: that noise SD only, or ``leave_sd`` left; ``progress(done, total)`` per slice)
    into ``out``: a NIfTI file for a .nii/.nii.gz name, else a new DICOM series folder, described as the input's
    series (or its name) denoised by ``model_name``; returns the denoised HU."""
    from napari_lidnet.inference import denoise
    from napari_lidnet.io.dicom_write import denoised_description, strength_note, write_dicom_series
    from napari_lidnet.io.nifti import write_nifti

    hu = denoise(model, vol.hu, device=device, progress=progress, remove_sd=remove_sd, leave_sd=leave_sd)
    if is_nifti(out):
        note = f"LIDnet {model_name}{strength_note(remove_sd, leave_sd)}"
        write_nifti(out, replace(vol, hu=hu), denoised=True, note=note)
        return hu
    source = vol.metadata.get("series_description", vol.name)
    how = (source, model_name, remove_sd, leave_sd)
    write_dicom_series(replace(vol, hu=hu), out, series_description=denoised_description(*how),
                       derivation=denoised_description(*how, whole=True))  # fmt: skip
    return hu


def detect_into(
    out: Path, vol: CTVolume, model: torch.nn.Module, device: torch.device | str, threshold: float,
    about: dict[str, Any] | None = None, progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect the lesions of ``vol`` (boxes scoring at least ``threshold``) into the CSV or JSON file ``out``
    (``about`` goes into a JSON); returns the boxes (``inference.detect``'s rows) and each one's lesion number."""
    from napari_lidnet.inference import detect
    from napari_lidnet.io.boxes_io import write_volume_boxes
    from napari_lidnet.io.volume import known_pixel_mm
    from napari_lidnet.metrics.lesions import row_lesions

    rows = detect(model, vol.hu, device=device, score_threshold=threshold, progress=progress,
                  pixel_mm=known_pixel_mm(vol))  # fmt: skip
    lesions = row_lesions(rows)
    write_volume_boxes(out, rows, vol, lesions, about)
    return rows, lesions


def box_cap_note(rows: np.ndarray) -> str:
    """A note when some slices hold the most boxes a slice keeps (their lowest scores left out); '' otherwise."""
    from napari_lidnet.inference import MAX_BOXES_PER_SLICE as cap

    full = int((np.bincount(np.asarray(rows)[:, 0].astype(int)) >= cap).sum()) if len(rows) else 0
    if not full:
        return ""
    return (f"{full} slice(s) reached {cap} boxes, the most a slice keeps (the highest scores); boxes scoring "
            "lower there are left out")  # fmt: skip


def _write_one(
    task: str, vol: CTVolume, partial: Path, model: torch.nn.Module, device: torch.device | str, threshold: float,
    model_name: str, strength: tuple[float | None, float | None] = (None, None),
) -> str:  # fmt: skip
    """Denoise a series into a DICOM folder (a NIfTI file), or detect its lesions into a CSV, at ``partial``;
    returns a note on the output ('' for none)."""
    if task == "denoise":
        denoise_into(partial, vol, model, device, model_name, strength[0], leave_sd=strength[1])
        return ""
    return box_cap_note(detect_into(partial, vol, model, device, threshold)[0])


def _find_inputs(root: Path) -> tuple[dict, list[Path], list[str]]:
    """(DICOM series by UID, NIfTI files, folders of images a batch run does not read) under ``root``, a folder or
    one file; ValueError when there is nothing to read."""
    from napari_lidnet.io.dicom_scan import folder_files, scan_dicom

    if root.is_file() and is_nifti(root):
        return {}, [root], []
    from napari_lidnet.io.open_ct import input_kind

    if root.is_file() and input_kind(root) != "dicom":
        raise ValueError(f"{root}: --all-series reads the DICOM series and NIfTI files under a folder (or one such "
                         "file); for this file leave --all-series out")  # fmt: skip
    files = folder_files(root) if root.is_dir() else []
    niftis = [p for p in files if is_nifti(p)]
    others = _not_read(root, files)
    try:
        return scan_dicom(root).series, niftis, others
    except ValueError as exc:
        if niftis:
            return {}, niftis, others  # a folder of NIfTI files only
        if others:
            raise ValueError(f"{root}: no DICOM series or NIfTI file, which --all-series reads; {others[0]}") from exc
        raise


#: inputs ``lidnet denoise`` reads one file or folder at a time, and a batch run does not
NOT_BATCHED = {".png": "PNG slice", **dict.fromkeys(ARRAY_SUFFIXES, "array")}


def _not_read(root: Path, files: list[Path]) -> list[str]:
    """One line per folder under ``root`` holding PNG slices (DeepLesion) or arrays, which a batch run passes by."""
    found: dict[Path, dict[str, int]] = {}
    for p in files:
        kind = NOT_BATCHED.get(p.suffix.lower())
        if kind and not p.name.startswith("."):
            counts = found.setdefault(p.parent, {})
            counts[kind] = counts.get(kind, 0) + 1
    lines = []
    for folder, counts in found.items():
        what = ", ".join(f"{n} {kind}" + "s" * (n > 1) for kind, n in counts.items())
        lines.append(f"{folder.relative_to(root).as_posix()}: {what} not read (--all-series reads DICOM and NIfTI; "
                     "run `lidnet denoise` on that folder or file without it)")  # fmt: skip
    return lines


def run_batch(
    root: str | Path,
    out_dir: str | Path,
    task: str,
    model: torch.nn.Module,
    device: torch.device | str = "cpu",
    threshold: float = FALLBACK_THRESHOLD,
    model_name: str = "default",
    progress: Progress | None = None,
    workers: int = 0,
    remove_sd: float | None = None,
    leave_sd: float | None = None,
) -> BatchReport:
    """Denoise (``task="denoise"``: a DICOM series folder per input series, a .nii.gz per NIfTI file) or detect
    (``"detect"``: a CSV per input) every image series and NIfTI file under ``root`` into ``out_dir``; finished
    outputs are skipped.

    ``workers`` DataLoader processes read and decode the next series while the model runs on the current one.
    ``progress(done, total, name)`` is called after each series, skipped and failed ones included.
    ``remove_sd``: denoise removes only that noise SD (HU) and keeps the rest (``strength``); None: all.
    ``leave_sd`` instead: that noise SD is left in each output's flat tissue. ``threshold``: the boxes' score
    threshold; pass the detector's calibrated one, ``models.weights.default_threshold(card)``, as the command line
    does (the default, ``FALLBACK_THRESHOLD``, is for a detector without a calibration).
    """
    from torch.utils.data import DataLoader

    if task not in ("denoise", "detect"):
        raise ValueError(f"unknown batch task {task!r}; use 'denoise' or 'detect'")
    if workers < 0:
        raise ValueError("workers must be >= 0")
    remove_sd, leave_sd = check_strength(remove_sd, leave_sd)
    root = Path(root)
    base = root if root.is_dir() else root.parent  # NIfTI outputs are named by their path under it
    series, niftis, not_read = _find_inputs(root)
    items = _inputs(series, niftis, base)
    out_dir = Path(out_dir)
    report = BatchReport(not_read=not_read)
    todo = _plan(items, out_dir, task, report, progress)  # refuses name collisions before anything is written
    created, lock = _prepare_out_dir(root, out_dir, task, batch_settings(task, model, threshold, remove_sd, leave_sd))
    try:
        reader = _SeriesReader(todo, root, base)
        loader = DataLoader(
            reader, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is,
            worker_init_fn=reader_worker_init if workers else None,
        )  # fmt: skip
        for i, vol in loader:
            if isinstance(vol, LeftOut):
                report.left_out.append(str(vol))
            elif isinstance(vol, Failed):
                report.failed.append(vol)
            else:
                _run_one(task, vol, todo[i], report, model, device, threshold, model_name, (remove_sd, leave_sd))
            if progress:
                done = len(report.skipped) + len(report.written) + len(report.failed) + len(report.left_out)
                progress(done, len(items), todo[i][0].name)
    finally:
        _release(out_dir, lock, created)  # nothing written: nothing left
    return report


def _run_one(
    task: str, vol: CTVolume, item: tuple, report: BatchReport, model: torch.nn.Module, device: torch.device | str,
    threshold: float, model_name: str, strength: tuple[float | None, float | None],
) -> None:  # fmt: skip
    """Write one series' output (``item``: as ``_plan`` lists it) under its partial name, then rename it; a
    ValueError fails only this series."""
    final, source, desc, key = item
    partial = final.parent / f"{PARTIAL}{final.name}"
    try:
        note = _write_one(task, vol, partial, model, device, threshold, model_name, strength)
    except ValueError as exc:
        report.failed.append(Failed.of(f"series {desc!r} ({key})", exc, source))
        return
    except OSError as exc:  # the output's file system (full, read-only now): every later series would fail too
        reason = os_reason(exc) or one_line(str(exc))
        raise ValueError(f"writing {final.name} (series {desc!r}) failed: {reason}; {len(report.written)} written "
                         f"before it in {final.parent}: mend that, then run again to finish") from exc  # fmt: skip
    os.replace(partial, final)
    _record_stamp(final, source)
    report.written.append(final)
    if note:
        report.notes.append(f"{final.name}: {note}")
