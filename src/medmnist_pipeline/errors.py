"""Errors a user can act on. The CLI prints their message without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """A clear, expected failure (bad data, unreachable server, ...): exit status 1."""

    exit_code = 1


class ParamsError(PipelineError):
    """params.yaml does not pass validation: exit status 2, nothing written."""

    exit_code = 2


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
