"""Reading params files and turning validation errors into messages that name the full key.

Generic over any pydantic section (the schema itself lives in config.py): ``read_yaml`` reads a file the way DVC
does, ``validate`` validates a mapping and raises one ParamsError that lists every problem, e.g.
``data.size: 100 is not one of 28, 64, 128 or 224``.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from medmnist_pipeline.errors import ParamsError


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where ``1e-3`` is a string; DVC (YAML 1.2) reads it as a float. Agree with DVC."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root, or pass --params PATH)") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def validate(model: type[BaseModel], raw: Any, source: str, prefix: tuple[str | int, ...] = ()) -> Any:
    """Validate ``raw`` against ``model``; errors name keys as ``prefix.key`` (prefix: where ``raw`` lives)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [format_error(model, prefix, err) for err in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(dict.fromkeys(lines))) from None


def dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_error(model: type[BaseModel], prefix: tuple[str | int, ...], err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    key, value, kind = dotted(prefix + loc), err.get("input"), err["type"]
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {err['ctx']['expected']}"
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        return f"{key}: unknown key (allowed: {', '.join(allowed)}){hint}"
    if kind == "missing":
        return f"{key}: missing; every key must be set explicitly in params.yaml"
    if kind == "value_error":
        # Our own checks write keys relative to their section as "@key"; expand them to full paths.
        msg = str(err["ctx"]["error"])
        return _expand_keys(msg, key) if "@" in msg else f"{key}: {msg}"
    return f"{key}: {err['msg'].lower()} (got {value!r})"


def _expand_keys(message: str, key: str) -> str:
    """Our validators name keys relative to their section as ``@name`` or ``@[i]``; make those full paths."""

    def full(match: re.Match) -> str:
        return f"{key}[" if match.group(1) else (f"{key}." if key else "")

    return re.sub(r"@(\[)?", full, message)


def _fields_at(model: Any, loc: tuple[str | int, ...]) -> list[str]:
    """The allowed keys of the section at ``loc`` (for 'unknown key' messages)."""
    for part in loc:
        if not is_section(model):
            return []
        if isinstance(part, str) and part in model.model_fields:  # other parts: list indices, dict keys
            model = unwrap(model.model_fields[part].annotation)
    return [f.alias or name for name, f in model.model_fields.items()] if is_section(model) else []


def is_section(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, BaseModel)


def unwrap(annotation: Any) -> Any:
    """Peel Optional[...], list[...], dict[str, ...] and Annotated[...] down to the section model inside."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin in (list, dict, Annotated):
            annotation = typing.get_args(annotation)[-1 if origin is not Annotated else 0]
        else:
            return annotation
