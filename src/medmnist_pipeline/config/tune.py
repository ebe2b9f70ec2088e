"""The ``tune`` section of params.yaml, and the checks of its search against the train schema: every value a trial
can get must be a valid train value, and every searched model key one that every model the trials build reads.

A trial's model section is ``train.model`` with the trial's ``train.model.*`` values (tune.fixed, then the sampled
ones; ``config.train.merge_model_keys``): when they switch ``name`` to another architecture, the keys it does not read
are dropped and the keys it reads come from them or from ``train.model`` (``check_trial_models`` refuses a search that
leaves one unset, before any trial runs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medmnist_pipeline.config.io import Count, Section, sections_of
from medmnist_pipeline.config.train import MODEL_KEYS, TrainParams
from medmnist_pipeline.errors import ParamsError

MODEL_PATH = "train.model."


class Distribution(Section):
    """One search dimension: exactly one of ``float: [low, high]``, ``int: [low, high]`` or
    ``categorical: [choices]``; ``log: true`` samples float/int ranges log-uniformly (false when omitted)."""

    float_: list[float] | None = Field(None, alias="float", min_length=2, max_length=2)
    int_: list[int] | None = Field(None, alias="int", min_length=2, max_length=2)
    categorical: list[Any] | None = Field(None, min_length=1)
    log: bool = False

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [k for k in ("float_", "int_", "categorical") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of float: [low, high], int: [low, high], categorical: [...]")
        bounds = self.float_ or self.int_
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be below high (got {bounds})")
        if self.log and (bounds is None or bounds[0] <= 0):
            raise ValueError("@log: true needs a float or int range with low > 0")
        return self


class PrunerParams(Section):
    """Read by ``tuning.search.pruner_for``."""

    name: Literal["median", "hyperband", "none"]
    startup_trials: Count  # median: trials that are never pruned, to learn what "median" means
    warmup_epochs: Count  # median: epochs before pruning starts; hyperband: its minimum resource - 1


class TuneParams(Section):
    """``tune``: read by ``tuning.search`` (space, fixed, sampler, pruner, metric, storage, n_trials, timeout_s) and
    ``tuning.workers`` (several workers on one study)."""

    n_trials: Annotated[
        int, Field(ge=1, le=10_000)
    ]  # finished (completed or pruned) trials wanted in the study, across all workers
    timeout_s: (
        Annotated[float, Field(gt=0, le=30 * 86_400)] | None
    )  # stop starting new trials after this long; null = no limit
    sampler: Literal["tpe", "random", "grid"]
    pruner: PrunerParams
    metric: Literal["val/auc", "val/acc", "val/loss"]
    direction: Literal["maximize", "minimize"]
    # null: an Optuna journal file at <project root>/optuna/journal.log (safe for several workers on one
    # machine); or any SQLAlchemy URL (postgresql://... for workers on several machines; sqlite:///... too).
    storage: str | None
    fixed: dict[str, Any]  # train.* paths overridden in every trial (e.g. fewer epochs than the final train)
    space: Annotated[dict[str, Distribution], Field(min_length=1)]  # train.* path -> distribution

    @model_validator(mode="after")
    def _consistent(self) -> TuneParams:
        wanted = "minimize" if self.metric == "val/loss" else "maximize"
        if self.direction != wanted:
            raise ValueError(f"@direction: {self.metric} should be {wanted}d, not {self.direction}d")
        if self.sampler == "grid":
            loose = [p for p, d in self.space.items() if d.categorical is None]
            if loose:
                raise ValueError(f"@sampler: grid needs categorical dimensions only; {loose[0]} is a range")
        for where, keys in (("fixed", self.fixed), ("space", self.space)):
            for key in keys:
                if not key.startswith("train."):
                    raise ValueError(f"@{where}: {key!r} must be a path in the train section (train.optimizer.lr, ...)")
                problem = _path_problem(TrainParams, key.split(".")[1:])
                if problem:
                    raise ValueError(f"@{where}: {key!r}: {problem}")
        overlap = set(self.fixed) & set(self.space)
        if overlap:
            raise ValueError(f"@fixed: {sorted(overlap)[0]} is also searched in tune.space; keep it in one place")
        return self


def _path_problem(model: type[BaseModel], parts: list[str]) -> str | None:
    """Why ``parts`` is not a leaf key of ``model`` (a tuning path must name one setting). Under ``model``, a key of
    any architecture is a path (which models read it is check_trial_models's question)."""
    sections: list[Any] = [model]
    for part in parts:
        holding = [s for s in sections if part in s.model_fields]
        if not holding:
            allowed = ", ".join(_keys(sections)) or "none (a setting has no sub-keys)"
            return f"no key {part!r} there (allowed: {allowed})"
        sections = [m for s in holding for m in sections_of(s.model_fields[part].annotation)]
    if sections:
        return f"names a whole section; name one of its keys ({', '.join(_keys(sections))})"
    return None


def _keys(sections: list[Any]) -> list[str]:
    return list(dict.fromkeys(key for s in sections for key in s.model_fields))


def check_tune_against_train(tune: TuneParams, train: TrainParams) -> None:
    """Every value a trial can get is a valid value of its train key, checked now, not trial after trial:
    tune.fixed values, categorical choices and both ends of each range. (Combinations that break a cross-key rule,
    such as onecycle with warmup epochs, stay trial failures: a search may well mix them.)"""
    for key, value in tune.fixed.items():
        _check_trial_value(key, value, f"@tune.fixed.{key}")
    for key, dist in tune.space.items():
        values = dist.categorical if dist.categorical is not None else (dist.float_ or dist.int_)
        for value in values:
            _check_trial_value(key, value, f"@tune.space.{key}")


def _check_trial_value(key: str, value: Any, where: str) -> None:
    """``value`` against the type and bounds of the train key ``key`` (a path checked by TuneParams); a model key
    that several architectures hold (``name``: each its own names) takes a value any of them accepts."""
    from pydantic import TypeAdapter, ValidationError

    sections: list[Any] = [TrainParams]
    *parents, last = key.split(".")[1:]
    for part in parents:
        sections = [m for s in sections if part in s.model_fields for m in sections_of(s.model_fields[part].annotation)]
    problems = []
    for section in sections:
        if last not in section.model_fields:
            continue
        field = section.model_fields[last]
        annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        adapter = TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))
        try:
            adapter.validate_python(value)
            return
        except ValidationError as exc:
            problems.append(exc.errors()[0])
    if all(p["type"] == "literal_error" for p in problems):  # name: one list of every architecture's names
        expected = ", ".join(p["ctx"]["expected"].replace(" or ", ", ") for p in problems)
        raise ValueError(f"{where}: {value!r} is not one of {expected}")
    raise ValueError(f"{where}: {value!r} is not a valid value here ({problems[0]['msg'].lower()})")


def trial_model_names(tune: TuneParams, train: TrainParams) -> list[str]:
    """The architectures the trials build: the searched names, else tune.fixed's or train's."""
    searched = tune.space.get(MODEL_PATH + "name")
    if searched is not None and searched.categorical is not None:
        return list(searched.categorical)
    return [tune.fixed.get(MODEL_PATH + "name", train.model.name)]


def check_trial_models(tune: TuneParams, train: TrainParams) -> None:
    """Every model the trials build gets a whole section, and the search changes it (made by the tune stage only,
    so that a train section switched to another architecture still trains before its tune section follows):

    - a searched ``train.model.<key>`` is a key of every model the trials build (a ResNet has no filters: searching
      them would train identical models);
    - a ``tune.fixed`` ``train.model.<key>`` is a key of at least one of them (``stem`` for the resnet18 trials of a
      search over ``name``);
    - each of them reads no key that neither train.model, tune.fixed nor tune.space sets (``merge_model_keys``)."""
    names = trial_model_names(tune, train)
    source = "tune.space" if MODEL_PATH + "name" in tune.space else "tune.fixed"
    for path in tune.space:
        key = path.removeprefix(MODEL_PATH)
        if path.startswith(MODEL_PATH) and key != "name":
            for name in names:
                if key not in MODEL_KEYS[name]:
                    raise ParamsError(
                        f"tune.space.{path}: not a key of model {name} (its keys: {', '.join(MODEL_KEYS[name])}), "
                        "which the trials build; searching it would train identical models"
                    )
    for path in tune.fixed:
        key = path.removeprefix(MODEL_PATH)
        if path.startswith(MODEL_PATH) and key != "name" and not any(key in MODEL_KEYS[n] for n in names):
            raise ParamsError(
                f"tune.fixed.{path}: no model the trials build reads {key} (they build {', '.join(names)})"
            )
    given = {p.removeprefix(MODEL_PATH) for p in [*tune.fixed, *tune.space] if p.startswith(MODEL_PATH)}
    for name in names:
        unset = [k for k in MODEL_KEYS[name] if k not in given and k not in type(train.model).model_fields]
        if unset:
            raise ParamsError(
                f"{source}.{MODEL_PATH}name: the {name} trials read {', '.join(unset)}, which train.model "
                f"(a {train.model.name}) does not hold; set {MODEL_PATH}{unset[0]} in tune.fixed"
            )


def check_fixed_changes_train(tune: TuneParams, train: TrainParams) -> None:
    """tune.fixed holds what the trials change, never a copy of train's own value (two places to keep equal)."""
    dumped = train.model_dump()
    for path, value in tune.fixed.items():
        current: Any = dumped
        for part in path.split(".")[1:]:
            current = current.get(part, _ABSENT) if isinstance(current, dict) else _ABSENT
        if current is not _ABSENT and type(current) is type(value) and current == value:
            raise ParamsError(
                f"tune.fixed.{path}: {value!r} is already {path}'s value; remove it (tune.fixed holds only what the "
                "trials change)"
            )


_ABSENT = object()
