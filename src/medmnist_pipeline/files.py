"""Writing outputs so that a crash or a bad input never leaves a partial file that looks like a result."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; it is renamed to ``target`` only if the block finishes without error."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def allocate_npy(path: str | Path, shape: tuple[int, ...], dtype: str = "uint8"):
    """A writable memory map of a new ``.npy`` file whose disk blocks are reserved up front.

    Without the reservation the file is sparse, and a full disk shows up later as SIGBUS on some write into the
    map (the process dies with no message); here it is a PipelineError naming the file and the size, at once.
    """
    import numpy as np

    from medmnist_pipeline.errors import PipelineError

    try:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, out.offset + out.nbytes)
    except OSError as exc:
        Path(path).unlink(missing_ok=True)
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        raise PipelineError(
            f"{path}: cannot reserve {size / 2**20:,.1f} MiB on disk ({exc.strerror}); "
            "free some space and run the stage again"
        ) from None
    return out
