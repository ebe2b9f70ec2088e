"""Errors a user can act on. The CLI prints their message without a traceback."""

from __future__ import annotations


class PipelineError(Exception):
    """A clear, expected failure (bad data, unreachable server, ...): exit status 1."""

    exit_code = 1


class ParamsError(PipelineError):
    """params.yaml does not pass validation: exit status 2, nothing written."""

    exit_code = 2


def not_a_model_file(path: object, exc: BaseException) -> PipelineError:
    """The error for a file that ``torch.load(weights_only=True)`` refuses.

    PyTorch's own text runs to several lines and advises ``weights_only=False``, which would run whatever code
    the file holds: this project never loads a file that way, so say only what the file is not.
    """
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    reason = "it holds Python objects that are not plain tensors" if "weights_only" in str(exc) else first[:200]
    return PipelineError(f"{path}: not a model file of this project ({reason}); it was not loaded")
