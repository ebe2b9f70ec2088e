"""Writing outputs so that a crash or a bad input never leaves a partial file that looks like a result."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medmnist_pipeline.errors import PipelineError

# Room kept free beyond an output's own size: metadata, the preview figure, MLflow's store and the OS itself.
FREE_SPACE_MARGIN_BYTES = 16 << 20


def md5sum(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.md5()  # noqa: S324 - MedMNIST publishes MD5 checksums
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; it replaces ``target`` only if the block finishes without error."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; it is renamed to ``target`` only if the block finishes without error.

    The temporary file is removed whenever ``target`` is not written, including when the final rename fails
    (``target`` is a folder, or another file system's mount point).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        yield tmp
        if target.is_dir():  # os.replace's own error for this case names only the temporary file
            raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(target))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- disk space ---------------------------------------------------------------------------------------------


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Refuse to start writing ``needed_bytes`` into ``folder`` when its file system has less room than that."""
    folder = Path(folder)
    probe = next((d for d in (folder, *folder.parents) if d.exists()), Path("."))
    free = shutil.disk_usage(probe).free
    if needed_bytes + FREE_SPACE_MARGIN_BYTES > free:
        raise PipelineError(
            f"{what} needs {_size(needed_bytes)} in {folder}, but its disk has {_size(free)} free; "
            "free some space or lower the output's size"
        )


def allocate(path: str | Path, nbytes: int, what: str) -> None:
    """Reserve ``nbytes`` for ``path`` on disk before it is memory-mapped.

    A write into a memory map whose file system is full kills the process with SIGBUS, which nothing can catch;
    reserving the blocks first turns a full disk into an ``ENOSPC`` here, as a clear error.
    """
    try:
        _reserve(path, nbytes)
    except OSError as exc:
        raise write_error(exc, what, path) from None


def _reserve(path: str | Path, nbytes: int) -> None:
    with open(path, "r+b") as f:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, nbytes)


@contextmanager
def clear_write_errors(what: str, path: str | Path) -> Iterator[None]:
    """Turn a failed write inside the block (disk full, read-only, quota) into a one-line PipelineError; use it
    around an ``atomic_dir``/``atomic_file`` block, which has already removed what was half-written."""
    try:
        yield
    except OSError as exc:
        raise write_error(exc, what, path) from None


def write_error(exc: OSError, what: str, path: str | Path) -> PipelineError:
    """A one-line error for a failed write: the disk is full, or the path cannot be written."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return PipelineError(f"{what}: the disk holding {path} is full ({exc.strerror}); nothing was kept")
    return PipelineError(f"{what}: cannot write {path} ({exc.strerror or exc}); nothing was kept")


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError  # unreachable


def allocate_npy(path: str | Path, shape: tuple[int, ...], dtype: str = "uint8"):
    """A writable memory map of a new ``.npy`` file whose disk blocks are reserved up front.

    Without the reservation the file is sparse, and a full disk shows up later as SIGBUS on some write into the
    map (the process dies with no message); here it is a PipelineError naming the file and the size, at once.
    """
    import numpy as np

    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        _reserve(path, out.offset + out.nbytes)
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise PipelineError(
            f"{path}: cannot reserve {size / 2**20:,.1f} MiB on disk ({exc.strerror}); "
            "free some space and run the stage again"
        ) from None
    return out
