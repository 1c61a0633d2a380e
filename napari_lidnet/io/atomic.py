"""Whole-file writes that survive a crash: a fsynced temporary file in the same folder, renamed into place.

Readers see the old file or the new one, never a part. Used for weights and their cards, training state and
checkpoints, dataset cards and manifests. Outputs that never overwrite are written under a hidden temporary name and
appear whole or not at all (:func:`new_file`, :func:`new_folder`): otherwise `lidnet denoise` killed mid-write
would leave a DICOM folder of 3 of 12 slices that looks like a whole, shorter series.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["check_new", "check_writable", "fsync_dir", "new_file", "new_folder", "open_new", "write_atomically",
           "write_temp"]  # fmt: skip

#: the mark of a temporary name (``.NAME.partial-PID``): what a killed write leaves is hidden, and recognised
PARTIAL_MARK = ".partial-"


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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write names no file: the one meant
            exc.filename = str(folder / stem)
        raise
    return Path(tmp)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file renamed over it: the old file or the new one,
    never a part."""
    path = Path(path)
    tmp = write_temp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:  # a folder in the way, a read-only target: the temporary file goes too
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the file system allows it."""
    _fsync(folder)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk where the file system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_writable(out: Path) -> None:
    """PermissionError (before any work) when the nearest existing folder of ``out`` (``out`` itself when it is an
    existing folder: an empty read-only one was refused only after the work) cannot be written."""
    parent = out.resolve() if out.is_dir() else out.resolve().parent
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


@contextlib.contextmanager
def open_new(path: str | os.PathLike, **kwargs: Any) -> Iterator[IO[str]]:
    """Open a new text file for writing (``open`` keyword arguments: ``newline``, ``encoding``...), written under a
    temporary name and given its name when the block ends (:func:`new_file`); FileExistsError when ``path`` exists,
    even when it appeared a moment ago: outputs never overwrite."""
    with new_file(path) as tmp, open(tmp, "x", **kwargs) as fh:
        yield fh


def partial_name(out: Path) -> Path:
    """A hidden temporary name beside ``out`` (``.NAME.partial-PID.TOKEN`` and its suffixes): the process that
    writes it, and a random token, so a reused process id or a second thread never meets it."""
    return out.with_name(f".{out.name}{PARTIAL_MARK}{os.getpid()}.{uuid.uuid4().hex[:8]}{''.join(out.suffixes)}")


def publish(tmp: Path, out: Path) -> None:
    """Give the written file ``tmp`` its name ``out``, never replacing a file that appeared there meanwhile."""
    _fsync(tmp)
    try:
        os.link(tmp, out)  # fails, replacing nothing, when out exists
    except FileExistsError:
        raise _exists_error(out) from None
    except OSError:  # a file system without hard links
        check_new(out)
        os.replace(tmp, out)
    else:
        tmp.unlink()


@contextlib.contextmanager
def _named_as(tmp: Path, out: Path) -> Iterator[None]:
    """An OSError about the temporary ``tmp`` (or a file in it), or about no file, names ``out`` instead: the name
    the user gave."""
    try:
        yield
    except OSError as exc:
        cause = exc.__cause__
        if exc.errno is None and isinstance(cause, OSError) and cause.errno is not None:
            exc = cause  # a library's rewrapping lost the errno (pydicom: "With tag (7FE0,0010) got exception: ...")
        if exc.errno is None:  # a message of its own (outputs never overwrite)
            raise
        if exc.filename is None:  # a failed write names no file
            exc.filename = str(out)
        elif str(exc.filename).startswith(str(tmp)):
            exc.filename = str(out) + str(exc.filename)[len(str(tmp)):]
        raise exc from None


@contextlib.contextmanager
def new_file(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside the new file ``out`` to write; when the block ends it becomes ``out``, and on
    an error (or a kill) no file is under ``out``."""
    out = check_new(out)
    remove_stale_partials(out.parent, out.name)  # only its own name's: another machine's write may share the folder
    tmp = partial_name(out)
    try:
        with _named_as(tmp, out):
            yield tmp
            publish(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def new_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to write a set of files into; when the block ends they are in ``out_dir``, and on an
    error (or a kill) none of them is there. A new folder is renamed into place whole; into an existing empty one
    (a USB stick's root) the files are moved one by one, each refusing a name taken meanwhile (a kill during those
    milliseconds leaves part of the set). The caller has checked that ``out_dir`` is new or empty."""
    out_dir = Path(out_dir)
    existing = out_dir.is_dir()
    remove_stale_partials(out_dir if existing else out_dir.parent, None if existing else out_dir.name)
    tmp = out_dir / partial_name(out_dir).name if existing else partial_name(out_dir)
    tmp.mkdir(parents=not existing)
    try:
        with _named_as(tmp, out_dir):
            yield tmp
            for f in os.listdir(tmp):
                _fsync(tmp / f)
            fsync_dir(tmp)
            if existing:
                for f in sorted(os.listdir(tmp)):
                    publish(tmp / f, out_dir / f)
            else:
                os.rename(tmp, out_dir)  # a folder made there meanwhile: refused unless it is empty
            fsync_dir(out_dir if existing else out_dir.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_partial(path: Path) -> bool:
    """Whether ``path`` is a temporary name of this module (a hidden ``.NAME.partial-PID...``)."""
    return path.name.startswith(".") and PARTIAL_MARK in path.name


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) there sends a Ctrl-C event: every leftover is taken as in use
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale_partials(folder: Path, name: str | None = None) -> None:
    """Remove what killed writes left in ``folder`` (of ``name`` only, when given): the temporary files and folders
    of processes no longer running."""
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            if not is_partial(p) or (name is not None and not p.name.startswith(f".{name}{PARTIAL_MARK}")):
                continue
            pid = p.name.rsplit(PARTIAL_MARK, 1)[1].split(".", 1)[0]  # the last mark: names may hold one too
            if pid.isdigit() and not _pid_alive(int(pid)):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
