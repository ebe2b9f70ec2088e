"""Anonymous memory (RSS less file-backed and shared-memory pages) of a process or a process tree, as Linux reports
it: what a memory budget bounds. Pages of a memory-mapped split are file-backed and do not count; the OS shares
them between processes and reclaims them under pressure."""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from pathlib import Path


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators do not keep freed batches this way
        return None


def trim_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc's ``malloc_trim``); call it once a batch has been freed.

    Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which batch-sized
    blocks come from the heap, where small long-lived allocations between them keep the freed space from being
    returned. Measured scoring 48,000 32 px RGB images in batches of 512: +380 MiB without a trim, +58 MiB with one
    per batch. A fixed 1 MiB mmap threshold bounded memory too, but for the whole process: every activation was then
    a fresh mmap, and CPU inference (and any training after it in the process) ran 2x slower. Returns whether it
    applied (glibc only)."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0) >= 0)


def anon_bytes(pid: int | str = "self") -> int:
    """RssAnon of one process (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children, workers, DDP ranks)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*") if Path(f"/proc/{current}/task").exists() else []:
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


class PeakAnon:
    """Samples anonymous memory every ``interval_s`` in a thread while the block runs.

    ``tree=True``: the sum over ``pid`` and its descendants at each sample (``total``) and the largest single
    process (``largest``); otherwise the process alone. Sampling can miss a spike shorter than the interval.
    """

    def __init__(self, pid: int | None = None, tree: bool = False, interval_s: float = 0.02) -> None:
        self.pid, self.tree, self.interval_s = pid or os.getpid(), tree, interval_s
        self.total = self.largest = 0
        self.by_pid: dict[int, int] = {}  # each process's own peak
        self.first_by_pid: dict[int, int] = {}  # ... and its first sample (a forked child: about its size at fork)
        self._stop = threading.Event()

    def sample(self) -> None:
        pids = descendants(self.pid) if self.tree else [self.pid]
        sizes = [anon_bytes(p) for p in pids]
        for pid, size in zip(pids, sizes, strict=True):
            self.by_pid[pid] = max(self.by_pid.get(pid, 0), size)
            self.first_by_pid.setdefault(pid, size)
        self.total, self.largest = max(self.total, sum(sizes)), max(self.largest, max(sizes, default=0))

    def growth(self, pid: int) -> int:
        """How far one process grew above its first sample."""
        return self.by_pid[pid] - self.first_by_pid[pid]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> PeakAnon:
        self.sample()
        self._thread = threading.Thread(target=self._run, name="peak-anon", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
