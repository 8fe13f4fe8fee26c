"""Helper processes that end with the process that started them, so that none goes on writing after its run
was killed: the worker processes of ``build-dataset --workers N`` and the ranks ``torchrun`` starts.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Optional

POLL_S = 0.5
"""How often a process without a sentinel of its parent checks whether the parent is still there (seconds)."""

_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when the thread that started it ends (Linux)."""


def _wait_then_exit(parent: Optional[BaseProcess], parent_pid: int) -> None:
    """Return never: wait until the parent ends (its sentinel, else a changed ``os.getppid()``), then exit now."""
    if parent is not None:
        parent.join()
    else:
        while os.getppid() == parent_pid:
            time.sleep(POLL_S)
    os._exit(1)


def end_with_parent(kernel_signal: bool) -> None:
    """Make this process exit at once when its parent ends, even by SIGKILL.

    A thread waits for the parent: on its sentinel for a :mod:`multiprocessing` child (a pipe whose write end
    only the parent holds; a process handle on Windows), else by polling ``os.getppid()`` every
    :data:`POLL_S` s (POSIX). ``kernel_signal`` adds SIGKILL from the kernel on Linux (PR_SET_PDEATHSIG),
    immediate, for a child whose parent started it from a thread that lives as long as the child is needed.
    """
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None and parent.pid is not None else os.getppid()
    if kernel_signal and sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if sys.platform != "win32" and os.getppid() != parent_pid:  # it ended before we looked
        os._exit(1)
    threading.Thread(target=_wait_then_exit, args=(parent, parent_pid), name="x2ct-parent-watch", daemon=True).start()
