"""Checkpoints that are whole or absent, and a resume that survives one that is not.

Lightning 2.6 saves through fsspec's transaction: the bytes go to a file in the system temp folder that is then
moved into ``checkpoints/``; across filesystems the move is a copy, and a full disk or a kill during it leaves a
cut ``last.ckpt`` that every rerun failed to load. ``AtomicCheckpointIO`` writes a temporary file beside the final
one (same folder, so the same filesystem), fsyncs it and renames it over the final name: a reader sees the old
checkpoint or the new one, never part of one.

``resume_checkpoint`` picks what a run resumes from: a checkpoint that does not load is set aside
(``checkpoints/<run>-last.ckpt.damaged-<time>``, kept for inspection) with one line, and the run resumes from the
newest one that loads, or starts over.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medmnist_pipeline.errors import first_line, signals_deferred


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.tmp-<pid>`` in the checkpoint's folder, fsync, rename over the final name."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        with signals_deferred():  # a SIGTERM lands after the write, never inside torch.save
            final = Path(path)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as handle:
                    torch.save(checkpoint, handle)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, final)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            folder = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(folder)  # the rename itself survives a crash
            finally:
                os.close(folder)


def _loads(path: Path) -> tuple[int | None, str | None]:
    """(the checkpoint's epoch, None) when it loads, else (None, why not)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["epoch"]), None
    except Exception as exc:  # noqa: BLE001 - a cut zip, a wrong type, a missing key: all "does not load"
        return None, first_line(exc)[:160]


def _set_aside(path: Path) -> Path:
    """Beside the run's folder (``checkpoints/train-<key>-last.ckpt.damaged-<time>``), which a finished run
    removes: the damaged file stays for inspection until someone deletes it."""
    damaged = path.parent.with_name(f"{path.parent.name}-{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(damaged)
    return damaged


def resume_checkpoint(checkpoint_dir: Path, writes: bool = True) -> Path | None:
    """The checkpoint a run resumes from: ``last.ckpt``, or ``best.ckpt`` (a full checkpoint of an earlier epoch)
    when ``last.ckpt`` does not load; None to start over. A damaged file is renamed aside with one line saying so
    (only by the process that ``writes``: other DDP ranks skip it). Without a loadable ``best.ckpt`` the best
    epoch's weights are lost, so the run starts over rather than select among the later epochs only."""
    last, best = checkpoint_dir / "last.ckpt", checkpoint_dir / "best.ckpt"
    if writes:  # what a killed save left (one owner per folder: no other process is writing here)
        for stale in checkpoint_dir.glob(".*.tmp-*"):
            stale.unlink(missing_ok=True)
    if not last.is_file():
        return None
    epochs, damaged = {}, []
    for path in (last, best):
        epoch, why = _loads(path) if path.is_file() else (None, "missing")
        if why is None:
            epochs[path] = epoch
        elif why != "missing":
            damaged.append((path, why))
    if best in epochs:
        choice = last if last in epochs else best
        outcome = f"resuming from {choice.name} (epoch {epochs[choice]})"
    else:
        choice, outcome = None, "starting over" + ("" if damaged else f" ({best.name} is missing)")
    if writes:
        for path, why in damaged:
            print(f"{path} does not load ({why}): set aside as {_set_aside(path).name}; {outcome}")
        if not damaged and choice is None:
            print(f"{checkpoint_dir}: {outcome}")
    return choice


def finished_epoch(checkpoint: Path) -> int | None:
    """The last epoch a checkpoint holds, None when it does not load."""
    return _loads(checkpoint)[0] if checkpoint.is_file() else None
