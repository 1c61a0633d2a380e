"""One run at a time in a folder: an exclusive lock on a file in it, held until closed or the process ends.

The lock is a POSIX record lock (``fcntl.lockf``): it belongs to the process, so DataLoader workers forked after it
is taken do not keep the folder locked once the run has died, and the system lets go of it however the run ends
(a crash, Ctrl-C, SIGKILL). Record locks do not exclude the process that holds them, so the folders locked in this
process are remembered too. Where there is no ``fcntl`` (Windows) only a second run in this process is refused:
one run per folder is then the user's care.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import TracebackType


class FolderInUse(RuntimeError):
    """The folder is locked by another run; ``holder`` names it ("pid N on HOST", or "another process")."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class FolderLock:
    """An exclusive lock on ``folder / filename`` for this run (the folder is created if missing); the file holds
    "pid N on HOST" of the run holding it. Raises :class:`FolderInUse` when another run holds it. ``remove``: the
    file is removed when the lock is let go (:meth:`close`, or leaving the ``with`` block)."""

    held: set[Path] = set()  # the lock files held in this process
    _guard = threading.Lock()  # two threads of this process asking at once: one gets the folder

    def __init__(self, folder: Path, filename: str, remove: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.remove = folder.resolve() / filename, remove
        with self._guard:
            if self.path in self.held:
                raise FolderInUse(f"pid {os.getpid()}, this process")
            self.fd = _lock(self.path)
            self.held.add(self.path)

    def close(self) -> None:
        """Let go of the lock (removing its file first if ``remove``: a run waiting on the old file retries)."""
        with self._guard:
            self.held.discard(self.path)
        if self.fd is not None:
            if self.remove:
                self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _lock(path: Path) -> int | None:
    """Lock ``path`` (created if missing) and write this process into it; its descriptor, None without ``fcntl``."""
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: another process holds it
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise FolderInUse(holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino  # not the file of a run that just removed it
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)
