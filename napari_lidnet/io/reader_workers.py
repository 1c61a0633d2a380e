"""Reader worker processes (torch DataLoader workers) that end when the process that started them dies."""

from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def end_with_parent() -> None:
    """Have the kernel kill this process when its parent dies (Linux; elsewhere nothing). Under the forkserver start
    method the parent is the fork server, which ends with the run (comparing with the run's own process would make
    every worker exit at once).

    A DataLoader worker watches its parent only while it waits for work: killed with SIGKILL, the parent would leave a
    worker that had read ahead blocked for good on a full pipe (e.g. a batch run's series reader)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()  # the run's process (fork, spawn) or the fork server that lives as long as it
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)


def reader_worker_init(_worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: the worker ends with its parent."""
    end_with_parent()
