"""Whole folders of DICOM series in one command, one output per series, resumable.

Each series' output is written under a temporary name and renamed when complete, so an output that exists is
finished: a re-run skips it, and a run interrupted half-way redoes only what was not finished (leftover partial
outputs are removed first). Output names are stable: ``<description>_<last 12 characters of the series UID>``.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

PARTIAL = ".partial-"
Progress = Callable[[int, int, str], None]


@dataclass
class BatchReport:
    """What a batch run did: outputs written now, outputs found finished and skipped."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def output_name(description: str, uid: str) -> str:
    """A file-system-safe, stable name for one series' output."""
    desc = re.sub(r"[^A-Za-z0-9._-]+", "_", description).strip("_")[:40] or "series"
    return f"{desc}_{uid[-12:].replace('.', '_')}"


def _as_is(item):
    return item


class _SeriesReader:
    """A map-style dataset of series to process: item i is (i, volume), read in a DataLoader worker."""

    def __init__(self, todo: list, root: Path) -> None:
        self.todo, self.root = todo, root

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int):
        from napari_lidnet.io.dicom_read import read_series

        return i, read_series(self.todo[i][1], source=self.root)


def _prepare_out_dir(root: str | Path, out_dir: Path) -> None:
    """Refuse an output inside the input; create it; remove what an interrupted run left half-written."""
    if out_dir.resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"{out_dir} lies inside the input folder {root}; choose an output folder outside it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f"{PARTIAL}*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _plan(scan: Any, out_dir: Path, task: str, report: BatchReport, progress: Progress | None) -> list:
    """(final output, headers, description) of every series still to do; finished ones go to ``report.skipped``."""
    todo = []
    for uid, headers in sorted(scan.series.items()):
        desc = str(headers[0].ds.get("SeriesDescription", "") or "")
        name = output_name(desc, uid)
        final = out_dir / (name if task == "denoise" else f"{name}.csv")
        if final.exists():
            report.skipped.append(final)
            if progress:
                progress(len(report.skipped), len(scan.series), f"{final.name} (already complete)")
        else:
            todo.append((final, headers, desc))
    return todo


def _write_one(
    task: str, vol: Any, partial: Path, model: Any, device: Any, threshold: float, desc: str, model_name: str
) -> None:
    """Denoise a series into a DICOM folder, or detect its lesions into a CSV, at ``partial``."""
    from napari_lidnet.inference import denoise, detect
    from napari_lidnet.io.boxes_io import write_boxes_csv
    from napari_lidnet.io.dicom_write import denoised_description, write_dicom_series

    if task == "denoise":
        hu = denoise(model, vol.hu, device=device)
        description = denoised_description(desc, model_name)
        write_dicom_series(replace(vol, hu=hu.astype(np.float32)), partial, series_description=description)
    else:
        write_boxes_csv(partial, detect(model, vol.hu, device=device, score_threshold=threshold))


def run_batch(
    root: str | Path,
    out_dir: str | Path,
    task: str,
    model,
    device="cpu",
    threshold: float = 0.3,
    model_name: str = "default",
    progress: Progress | None = None,
    workers: int = 0,
) -> BatchReport:
    """Denoise (``task="denoise"``: a DICOM series folder per input series) or detect (``"detect"``: a CSV per
    series) every image series under ``root`` into ``out_dir``; finished outputs are skipped.

    ``workers`` DataLoader processes read and decode the next series while the model runs on the current one.
    ``progress(done, total, name)`` is called after each series, skipped ones included.
    """
    from torch.utils.data import DataLoader

    from napari_lidnet.io.dicom_read import scan_dicom

    if task not in ("denoise", "detect"):
        raise ValueError(f"unknown batch task {task!r}; use 'denoise' or 'detect'")
    if workers < 0:
        raise ValueError("workers must be >= 0")
    scan = scan_dicom(root)
    if not scan.series:
        raise ValueError(f"{root}: no DICOM image series found")
    out_dir = Path(out_dir)
    _prepare_out_dir(root, out_dir)
    report = BatchReport()
    todo = _plan(scan, out_dir, task, report, progress)
    reader = _SeriesReader(todo, Path(root))
    loader = DataLoader(reader, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_as_is)
    for i, vol in loader:
        final, _headers, desc = todo[i]
        partial = out_dir / f"{PARTIAL}{final.name}"
        _write_one(task, vol, partial, model, device, threshold, desc, model_name)
        os.replace(partial, final)
        report.written.append(final)
        if progress:
            progress(len(report.skipped) + len(report.written), len(scan.series), final.name)
    return report
