"""Which process owns a trial or an unfinished run (``host:pid``), and whether that process is still alive.

A process killed with SIGKILL cannot end its MLflow run or its Optuna trial; the next process that finds them asks
this module whether the owner is gone before ending them (only owners on this machine can be checked)."""

from __future__ import annotations

import os
import socket


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_here(owner: str) -> bool:
    """True when ``owner`` (a :func:`worker_id`) was a process of this machine that has ended."""
    host, _, pid = owner.rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not alive(int(pid))
