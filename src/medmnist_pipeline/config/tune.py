"""The ``tune`` section of params.yaml, and the checks of its search against the train schema: every value a trial
can get must be a valid train value, and every searched model option one that the searched models use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from medmnist_pipeline.config.io import Count, Section, is_section, unwrap
from medmnist_pipeline.config.train import TrainParams

if TYPE_CHECKING:  # (config imports this module)
    pass


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
    name: Literal["median", "hyperband", "none"]
    startup_trials: Count  # median: trials that are never pruned, to learn what "median" means
    warmup_epochs: Count  # median: epochs before pruning starts; hyperband: its minimum resource - 1


class TuneParams(Section):
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
        for key in [*self.fixed, *self.space]:
            if not key.startswith("train."):
                raise ValueError(f"@space: {key!r} must be a path in the train section (train.optimizer.lr, ...)")
            problem = _path_problem(TrainParams, key.split(".")[1:])
            if problem:
                raise ValueError(f"@space: {key!r}: {problem}")
        overlap = set(self.fixed) & set(self.space)
        if overlap:
            raise ValueError(f"@fixed: {sorted(overlap)[0]} is also searched in tune.space; keep it in one place")
        return self


def _path_problem(model: type[BaseModel], parts: list[str]) -> str | None:
    """Why ``parts`` is not a leaf key of ``model`` (a tuning path must name one setting)."""
    for _i, part in enumerate(parts):
        if not is_section(model) or part not in model.model_fields:
            allowed = ", ".join(model.model_fields) if is_section(model) else "none (a setting has no sub-keys)"
            return f"no key {part!r} there (allowed: {allowed})"
        model = unwrap(model.model_fields[part].annotation)
    if is_section(model):
        return f"names a whole section; name one of its keys ({', '.join(model.model_fields)})"
    return None


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
    """``value`` against the type and bounds of the train key ``key`` (a path checked by TuneParams)."""
    from pydantic import TypeAdapter, ValidationError

    model: Any = TrainParams
    *parents, last = key.split(".")[1:]
    for part in parents:
        model = unwrap(model.model_fields[part].annotation)
    field = model.model_fields[last]
    annotation = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    adapter = TypeAdapter(annotation, config=ConfigDict(strict=True, allow_inf_nan=False))
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        raise ValueError(f"{where}: {value!r} is not a valid value here ({exc.errors()[0]['msg'].lower()})") from None
