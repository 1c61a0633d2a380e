"""Whole-file writes that survive a crash: a fsynced temporary file in the same folder, renamed into place.

Readers see the old file or the new one, never a part. Used for weights and their cards, training state and
checkpoints, dataset cards and manifests. Exports that never overwrite open their file with :func:`open_new`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Any

__all__ = ["check_new", "check_writable", "fsync_dir", "open_new", "write_atomically", "write_temp"]


def write_temp(folder: Path, stem: str, data: bytes) -> Path:
    """Write ``data`` to a new fsynced temporary file ``.stem.*.tmp`` in ``folder`` (mode 0666 less the umask)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files (shared installs read them)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file renamed over it: the old file or the new one,
    never a part."""
    path = Path(path)
    os.replace(write_temp(path.parent, path.name, data), path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the file system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(out: Path) -> None:
    """PermissionError (before any work) when the nearest existing folder of ``out`` cannot be written."""
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise PermissionError(13, "Permission denied (cannot write here)", str(parent))
    try:  # os.access says yes to root everywhere: a file made and gone at once is the real test
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise PermissionError(exc.errno or 13, f"cannot write here ({exc.strerror or exc})", str(parent)) from None


def _exists_error(path: Path) -> FileExistsError:
    return FileExistsError(f"{path} already exists; outputs never overwrite: choose a new name")


def check_new(path: str | os.PathLike) -> Path:
    """``path`` as a Path; FileExistsError (before any work) when something is already there."""
    path = Path(path)
    if path.exists():
        raise _exists_error(path)
    return path


def open_new(path: str | os.PathLike, **kwargs: Any) -> IO[str]:
    """Open a new text file for writing (``open`` keyword arguments: ``newline``, ``encoding``...); FileExistsError
    when ``path`` exists, even when it appeared a moment ago (an exclusive open: outputs never overwrite)."""
    path = check_new(path)
    try:
        return path.open("x", **kwargs)
    except FileExistsError:
        raise _exists_error(path) from None
