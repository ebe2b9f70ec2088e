"""Which process owns a trial or an unfinished run (``host:pid``), and whether that process is still alive.

A process killed with SIGKILL cannot end its MLflow run or its Optuna trial; the next process that finds them asks
this module whether the owner is gone before ending them (only owners on this machine can be checked).

``own`` gives a run folder one owner at a time (an exclusive ``flock`` on its owner file, which the kernel drops
when the process dies, however it dies)."""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medmnist_pipeline.errors import PipelineError


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


@contextmanager
def own(owner_file: Path, what: str) -> Iterator[None]:
    """Hold ``what`` (a run folder) for this process: a second process is refused with one line naming the live
    owner, instead of resuming the same checkpoints and MLflow run beside it. The lock is an exclusive ``flock``
    on ``owner_file``, which also records this process's :func:`worker_id`; the file stays when the block raises
    (``dead_here`` then tells the next run that its owner is gone) and is removed when it succeeds."""
    owner_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(owner_file, "a+")  # noqa: SIM115 - held open for the block: closing it releases the lock
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise PipelineError(
                f"{what} is in use by {owner}, still running: wait for it to end or stop it; "
                "two runs on one checkpoint folder would overwrite each other"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(worker_id())
        handle.flush()
        yield
        owner_file.unlink(missing_ok=True)
    finally:
        handle.close()
