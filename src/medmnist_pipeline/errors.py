"""Errors a user can act on. The CLI prints their message without a traceback."""


class PipelineError(Exception):
    """A clear, expected failure (bad data, unreachable server, ...): exit status 1."""

    exit_code = 1


class ParamsError(PipelineError):
    """params.yaml does not pass validation: exit status 2, nothing written."""

    exit_code = 2
