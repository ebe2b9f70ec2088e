"""Errors a user can act on. The CLI prints their message without a traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator


class PipelineError(Exception):
    """A clear, expected failure (bad data, unreachable server, ...): exit status 1."""

    exit_code = 1


class ParamsError(PipelineError):
    """params.yaml does not pass validation: exit status 2, nothing written."""

    exit_code = 2


class Interrupted(BaseException):
    """SIGTERM or SIGINT reached a stage: raised where the stage was (not an ``Exception``: no ``except Exception``
    on the way treats it as a failure to record and carry on). MLflow runs end KILLED on the way out
    (``tracking.stage_run``), the checkpoint of the last finished epoch stays, and the CLI prints one line and exits
    128 + the signal's number (143, 130). ``where`` says what a rerun does (set by ``fit``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.where = ""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


_critical = [0]  # depth of the sections a signal must not cut (signals_deferred)
_pending: list[int] = []  # a signal that arrived inside one, raised as the outermost section ends


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """A section a signal must not cut, e.g. a checkpoint or model file being written: torch.save cut by an
    exception leaves its writer in a state whose own error ("unexpected pos") would replace the interruption. A
    SIGTERM/SIGINT arriving inside raises :class:`Interrupted` as soon as the section ends."""
    _critical[0] += 1
    try:
        yield
    finally:
        _critical[0] -= 1
    if not _critical[0] and _pending:
        raise Interrupted(_pending.pop())


def interrupt_on_signals() -> None:
    """SIGTERM (a scheduler's preemption, ``kill``, a parent dying) and SIGINT (Ctrl-C) raise :class:`Interrupted`
    once; a second signal during the cleanup is ignored, so the runs still end KILLED (SIGKILL still stops it).
    Lightning's own SIGTERM handler, installed during ``fit``, calls this one after its own (which would only stop
    at the next batch and exit 0), and restores it after."""
    fired: list[int] = []

    def handler(signum: int, _frame: object) -> None:
        if not fired:
            fired.append(signum)
            if _critical[0]:  # inside signals_deferred: raised when the section ends
                _pending.append(signum)
                return
            raise Interrupted(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def stop_with_parent(poll_s: float = 1.0) -> threading.Thread:
    """SIGTERM to this process once its parent has died (it is then adopted: its parent id changes), e.g. a
    ``dvc repro`` that got SIGTERM itself and would otherwise leave the stage training, orphaned.

    A watching thread rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: that signal fires when the parent *thread*
    that started the process ends, not the parent process (a false stop under a multithreaded parent such as a
    queue worker), and exists on Linux only. The thread costs one ``getppid`` a second and stops the stage within
    ``poll_s``; the SIGTERM goes through the stage's own handler (runs KILLED, one line, exit 143)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="stop-with-parent", daemon=True)
    thread.start()
    return thread


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): libraries' messages run to
    many lines, and a user reads one."""
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0] if str(text).strip() else type(exc).__name__


def not_a_model_file(path: object, exc: BaseException) -> PipelineError:
    """The error for a file that ``torch.load(weights_only=True)`` refuses.

    PyTorch's own text runs to several lines and advises ``weights_only=False``, which would run whatever code
    the file holds: this project never loads a file that way, so say only what the file is not.
    """
    pickled = "weights_only" in str(exc)
    reason = "it holds Python objects that are not plain tensors" if pickled else first_line(exc)[:200]
    return PipelineError(f"{path}: not a model file of this project ({reason}); it was not loaded")
