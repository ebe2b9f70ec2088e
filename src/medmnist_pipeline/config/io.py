"""Reading params files and turning validation errors into messages that name the full key; the strict ``Section``
base class and the bounded number types every params section is built from.

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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medmnist_pipeline.errors import ParamsError

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
# Bounds a user could mean, so that an absurd value is a params error, not a crash deep inside torch or numpy.
# Seeds: the per-epoch reseeding uses seed * 1000 + epoch + rank * 7919, which must stay below 2**32.
Seed = Annotated[int, Field(ge=0, le=1_000_000)]
Count = Annotated[int, Field(ge=0, le=10_000)]  # epochs, patience, trials, batches: far beyond any real run


class Section(BaseModel):
    """Strict: no unknown keys, no silent type coercion (``"28"`` is not 28, ``1`` is not ``true``)."""

    # allow_inf_nan=False: .inf or .nan in a float key is refused (``timeout_s: .inf`` overflowed at download)
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


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


def _no_duplicate_keys(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """DVC refuses a params file with a repeated key (``DuplicateKeyError``); PyYAML keeps the last one. Refuse it
    here too, or `dvc repro` and the stages would disagree about what the params are."""
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise DuplicateKey(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}; keep one")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


class DuplicateKey(yaml.YAMLError):
    pass


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)

# A params file has a few hundred values; aliases (``*name``) that expand to more are an "alias bomb": refuse it
# before anything is built from it (a bomb inside a value once made the error message itself 2 GB long).
MAX_YAML_VALUES = 100_000


def _expanded_size(node: yaml.Node) -> int:
    """How many values ``node`` stands for once every alias is expanded (each shared node counted once per use)."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) not in sizes:
            sizes[id(n)] = 0  # a recursive alias: counted as a leaf (SafeLoader refuses recursion for mappings)
            if isinstance(n, yaml.MappingNode):
                sizes[id(n)] = 1 + sum(size(k) + size(v) for k, v in n.value)
            elif isinstance(n, yaml.SequenceNode):
                sizes[id(n)] = 1 + sum(size(v) for v in n.value)
            else:
                sizes[id(n)] = 1
        return min(sizes[id(n)], MAX_YAML_VALUES + 1)

    return size(node)


def read_yaml(path: str | Path) -> Any:
    """The YAML file at ``path`` the way DVC reads it (YAML 1.2 floats, duplicate keys refused), in UTF-8."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found (run from the project root, or pass --params PATH)") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(
            f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise ParamsError(f"{path}: its aliases expand to more than {MAX_YAML_VALUES:,} values; refused")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {_short_yaml_error(exc)}") from None
    finally:
        loader.dispose()


def _short_yaml_error(exc: yaml.YAMLError) -> str:
    """PyYAML's message, without the quoted source lines it appends (they can be as long as the file)."""
    if isinstance(exc, DuplicateKey):
        return str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        where = f" (line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1})" if exc.problem_mark else ""
        return f"{exc.problem or exc.context}{where}"
    return str(exc)[:300]


def validate(
    model: type[BaseModel],
    raw: Any,
    source: str,
    prefix: tuple[str | int, ...] = (),
    context: dict[str, Any] | None = None,
) -> Any:
    """Validate ``raw`` against ``model``; errors name keys as ``prefix.key`` (prefix: where ``raw`` lives).
    ``context`` reaches the validators (config.load_params uses it to run the cheap checks first)."""
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        lines = [format_error(model, prefix, err) for err in exc.errors()]
        raise ParamsError(f"{source} is invalid:\n  " + "\n  ".join(dict.fromkeys(lines))) from None


def dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def format_error(model: type[BaseModel], prefix: tuple[str | int, ...], err: dict[str, Any]) -> str:
    loc, section, tag = resolve(model, tuple(err["loc"]))
    key, value, kind = dotted(prefix + loc), err.get("input"), err["type"]
    if kind == "literal_error":
        return f"{key}: {value!r} is not one of {err['ctx']['expected']}"
    if kind == "union_tag_invalid":  # a tagged union (train.model) with a tag it does not know
        return f"{key}.{_tag_key(err)}: {err['ctx']['tag']!r} is not one of {err['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":
        return f"{key}.{_tag_key(err)}: missing; the section's other keys depend on it"
    if kind == "extra_forbidden":
        _, parent, tag = resolve(model, tuple(err["loc"])[:-1])
        explain = getattr(parent, "unknown_key", None)  # a section may say why the key does not belong there
        message = explain(str(loc[-1]), tag) if explain else None
        if message:
            return f"{key}: {message}"
        allowed = _fields_at(model, tuple(err["loc"])[:-1])
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


def _tag_key(err: dict[str, Any]) -> str:
    return str(err["ctx"]["discriminator"]).strip("'")


def resolve(model: Any, loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], Any, str | None]:
    """Follow pydantic's error location ``loc`` from ``model``: the location as the params file names it (pydantic
    adds the tag of a tagged union, ``model.logreg.filters``, which is no key of the file), the section class it
    ends in (or None), and the tag of the union member chosen last (or None)."""
    out: list[str | int] = []
    tag: str | None = None
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        out.append(part)
        if not is_section(model) or not isinstance(part, str) or part not in model.model_fields:
            model = None  # list indices, dict keys: no section to follow
            continue
        field = model.model_fields[part]
        members = sections_of(field.annotation)
        if field.discriminator and parts and isinstance(parts[0], str):
            tag = str(parts.pop(0))
            model = next((m for m in members if tag in _tags(m, field.discriminator)), None)
        else:
            model = members[0] if len(members) == 1 else None
    return tuple(out), model, tag


def _tags(section: Any, discriminator: Any) -> tuple[Any, ...]:
    return typing.get_args(section.model_fields[str(discriminator)].annotation)


def _expand_keys(message: str, key: str) -> str:
    """Our validators name keys relative to their section as ``@name`` or ``@[i]``; make those full paths."""

    def full(match: re.Match) -> str:
        if match.group(1):
            return f"{key}["
        if match.group(2):  # "@:" names the key itself, not a key inside it
            return f"{key}:" if key else ":"
        return f"{key}." if key else ""

    return re.sub(r"@(?:(\[)|(:))?", full, message)


def _fields_at(model: Any, loc: tuple[str | int, ...]) -> list[str]:
    """The allowed keys of the section at ``loc`` (for 'unknown key' messages)."""
    _, section, _ = resolve(model, loc)
    return [f.alias or name for name, f in section.model_fields.items()] if is_section(section) else []


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


def sections_of(annotation: Any) -> list[Any]:
    """The section classes a field can hold: one, several for a union of sections (``train.model``: one class per
    architecture), none for a plain setting. Optional[...], list[...], dict[str, ...] and Annotated[...] are peeled."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) > 1:
                return [m for m in members if is_section(m)]
            annotation = members[0]
        elif origin in (list, dict, Annotated):
            annotation = typing.get_args(annotation)[-1 if origin is not Annotated else 0]
        else:
            return [annotation] if is_section(annotation) else []
