"""One run at a time in a folder (``io.folder_lock``): refused in this process and in another one, naming the
holder; let go when closed or when the holder dies, and not kept by a process forked from the holder."""

import os
import signal
import subprocess
import sys
import time

import pytest

from napari_lidnet.io.folder_lock import FolderInUse, FolderLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: only this process is refused")

HOLD = ("import sys, time; from pathlib import Path; from napari_lidnet.io.folder_lock import FolderLock; "
        "lock = FolderLock(Path(sys.argv[1]), '.lock'); print('locked', flush=True); time.sleep(120)")  # fmt: skip


def test_a_second_lock_in_this_process_is_refused_until_the_first_is_closed(tmp_path):
    with FolderLock(tmp_path / "new" / "run", ".lock") as first:  # the folder is created
        assert first.path.read_text().startswith(f"pid {os.getpid()} on ")
        with pytest.raises(FolderInUse, match=rf"^pid {os.getpid()}, this process$"):
            FolderLock(tmp_path / "new" / "run", ".lock")
        with FolderLock(tmp_path / "new" / "run", ".other"):  # another lock file of the same folder is free
            pass
    FolderLock(tmp_path / "new" / "run", ".lock").close()
    assert (tmp_path / "new" / "run" / ".lock").exists()  # kept unless ``remove``
    with FolderLock(tmp_path, ".lock", remove=True) as lock:
        assert lock.path.exists()
    assert not lock.path.exists()
    lock.close()  # twice: nothing more to do


def test_a_lock_held_by_another_process_is_refused_naming_it_and_freed_when_it_dies(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderInUse) as caught:
            FolderLock(tmp_path, ".lock")
        assert caught.value.holder.startswith(f"pid {holder.pid} on ")
    finally:
        holder.kill()  # SIGKILL: no clean-up, the system lets go
        holder.wait()
    FolderLock(tmp_path, ".lock").close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_process_forked_from_the_holder_does_not_keep_the_folder_locked(tmp_path):
    """As DataLoader workers are forked after a run took its lock: once the run is gone, the folder is free."""
    lock = FolderLock(tmp_path, ".lock")
    child = os.fork()
    if child == 0:  # pragma: no cover - the child only sleeps
        time.sleep(60)
        os._exit(0)
    try:
        lock.close()  # the run ends; its forked worker lives on
        FolderLock(tmp_path, ".lock").close()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_threads_of_one_process_asking_at_once_get_the_folder_once(tmp_path):
    """Record locks do not exclude their own process: the in-process check decides, and two threads asking at the
    same moment must not both pass it."""
    import threading

    start, got, refused, locks = threading.Barrier(8), [], [], []

    def ask() -> None:
        start.wait()
        try:
            locks.append(FolderLock(tmp_path, ".lock"))
            got.append(1)
        except FolderInUse:
            refused.append(1)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 1 and len(refused) == 7
    locks[0].close()
