"""The params.yaml schema: the single source of truth, validated on load by every stage.

Every key is required and explicit in params.yaml (no hidden defaults here); unknown keys, wrong types and
impossible values stop the stage with one readable message naming the full key, e.g.
``data.size: 100 is not one of 28, 64, 128 or 224``.

This module holds ``Params`` (the whole file) and the data, augment, loader, tracking and evaluate sections; the
training sections are in train.py, the tune section in tune.py, reading files and errors by key in io.py. The checks
that only the tune stage makes (``check_trials_can_run``) are here, where the tune and train sections meet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from medmnist_pipeline.config.io import NonNegativeInt, PositiveInt, Section, Seed, read_yaml, validate
from medmnist_pipeline.config.train import BaselineParams, TrainParams
from medmnist_pipeline.config.tune import (
    TuneParams,
    check_fixed_changes_train,
    check_trial_models,
    check_tune_against_train,
)
from medmnist_pipeline.errors import ParamsError
from medmnist_pipeline.metadata import DATASETS, MULTI_LABEL, TASKS

Flag = Literal[
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
    "custom",
]
# --- data ---------------------------------------------------------------------------------------------------


class DownloadParams(Section):
    """Read by ``data.dataset.download``: only when the file is neither present nor in the mirror."""

    timeout_s: Annotated[float, Field(gt=0, le=3600)]
    retries: Annotated[int, Field(ge=0, le=20)]
    backoff_s: Annotated[float, Field(ge=0, le=600)]  # wait before the first retry; doubles each time


class CustomDataParams(Section):
    """Bring your own data: an npz in the MedMNIST layout, with the facts the official table would give."""

    path: str | None
    task: Literal[TASKS] | None  # type: ignore[valid-type]
    labels: list[str] | None


class DataParams(Section):
    """``data``: read by ``data.dataset.fetch`` and ``expected_meta`` (the download stage)."""

    flag: Flag
    size: Literal[28, 64, 128, 224]
    mirror: str | None
    download: DownloadParams
    custom: CustomDataParams

    @model_validator(mode="after")
    def _custom_needs_its_facts(self) -> DataParams:
        filled = {k: v for k, v in self.custom.model_dump().items() if v is not None}
        if self.flag == "custom":
            missing = sorted({"path", "task", "labels"} - set(filled))
            if missing:
                raise ValueError(f"@flag is 'custom', so @custom.{missing[0]} must be set")
            if self.custom.task != MULTI_LABEL and len(self.custom.labels) < 2:
                raise ValueError("@custom.labels: a classification task needs at least 2 label names")
            if self.custom.task == "binary-class" and len(self.custom.labels) != 2:
                raise ValueError(
                    f"@custom.labels: task binary-class has exactly 2 labels, got {len(self.custom.labels)} "
                    "(use multi-class, or multi-label, binary-class for several yes/no labels)"
                )
        elif filled:
            raise ValueError(
                f"@custom.{sorted(filled)[0]} is only used with @flag: custom (@flag is {self.flag!r}); set it to null"
            )
        return self


# --- augment ------------------------------------------------------------------------------------------------


class AugmentParams(Section):
    """``augment``: read by ``transforms.augmentation`` (the augment stage; ``data.batches`` in online mode)."""

    copies: Annotated[int, Field(ge=0, le=1000)]  # the augment stage also checks the disk has room for them
    # materialised: the augment stage writes the copies (small splits; every core); online: training makes copy
    # e mod copies of each image in DataLoader workers (large splits: no copies x split on disk). Same pixels.
    mode: Literal["materialised", "online"]
    # A list of one-key mappings, ``- TransformName: {arg: value}``, applied in order (albumentations.Compose).
    transforms: list[dict[str, dict[str, Any]]]
    # AugMedMNIST-C: after the transforms, each image under one of these MedMNIST-C corruptions at a random
    # severity (checked against the dataset's channels in Params); [] = off
    corruptions: list[str]

    @model_validator(mode="after")
    def _corruptions_are_materialised(self) -> AugmentParams:
        if self.corruptions and self.mode == "online":
            raise ValueError(
                "@corruptions: AugMedMNIST-C corruptions are applied to materialised copies only; "
                "use @mode: materialised or corruptions: []"
            )
        return self

    @field_validator("transforms", mode="after")
    @classmethod
    def _transforms_exist(
        cls, transforms: list[dict[str, dict[str, Any]]], info: ValidationInfo
    ) -> list[dict[str, dict[str, Any]]]:
        for i, item in enumerate(transforms):
            if len(item) != 1:
                raise ValueError(f"item {i} must be a single 'TransformName: {{args}}' mapping, got keys {list(item)}")
        if not _deep(info):
            return transforms
        from medmnist_pipeline.transforms.augmentation import (
            check_transform,  # lazy: albumentations takes ~3 s to import
        )

        for i, item in enumerate(transforms):
            ((name, args),) = item.items()
            problem = check_transform(name, args)
            if problem:
                raise ValueError(f"@[{i}].{name}: {problem}")
        return transforms


# --- loader -------------------------------------------------------------------------------------------------


class LoaderParams(Section):
    """``loader``: how images reach every stage that reads them, in bounded memory at every size; read by
    ``data.datamodule.MedMNISTData`` (and through it ``data.batches``)."""

    memory_budget_mb: PositiveInt  # splits that fit are held in RAM (or on the GPU); larger ones stay memory-mapped
    workers: NonNegativeInt  # DataLoader processes for online augmentation (0: in the training process)


# --- tracking -----------------------------------------------------------------------------------------------


class TrackingParams(Section):
    """``tracking``: read by ``tracking.uri_of`` and ``tracking.experiment_id``."""

    # null: sqlite:///<repo root>/mlflow.db. The MLFLOW_TRACKING_URI environment variable overrides both.
    uri: str | None
    experiment: Annotated[str, Field(min_length=1)]


# --- evaluate -----------------------------------------------------------------------------------------------


class BootstrapParams(Section):
    """Read by ``evaluation.scoring.metrics_with_ci`` and ``evaluation.comparison.compare_models``."""

    resamples: Annotated[int, Field(ge=100, le=100_000)]  # resamples of the test images for each interval
    confidence: Annotated[float, Field(gt=0.5, lt=1)]  # e.g. 0.95


class LearningCurveParams(Section):
    """Read by ``evaluation.retrains.size_curve``."""

    # stratified fractions of the training split to retrain the tuned configuration on; [] = no size curve
    fractions: list[Annotated[float, Field(gt=0, le=1)]]

    @field_validator("fractions")
    @classmethod
    def _distinct(cls, fractions: list[float]) -> list[float]:
        if len(set(fractions)) != len(fractions):
            raise ValueError(f"{fractions} repeats a fraction")
        if len(fractions) == 1:
            raise ValueError("a curve needs at least two fractions (or [] for none)")
        return fractions


class ErrorAnalysisParams(Section):
    """Read by ``evaluation.scoring.error_analysis``."""

    gallery: Annotated[int, Field(ge=1, le=60)]  # images in each gallery (worst errors, uncertain correct)
    calibration_bins: Annotated[int, Field(ge=2, le=100)]  # reliability diagram bins


class RobustnessParams(Section):
    """Read by ``evaluation.robustness.robustness_of_models``."""

    # MedMNIST-C corruption names (corruptions.known_corruptions()) and severities 1-5; checked in Params, where the
    # dataset's channels are known. [] = off
    corruptions: list[str]
    severities: list[int]


class EvaluateParams(Section):
    """``evaluate``: the evaluate stage (stages/evaluate.py); ``seeds`` by ``evaluation.retrains.seed_retrains``."""

    bootstrap: BootstrapParams
    # retrain the cnn and the tuned configuration with each seed: mean ± sd and the seed ensemble; [] = off
    seeds: Annotated[list[Seed], Field(max_length=100)]
    learning_curve: LearningCurveParams
    error_analysis: ErrorAnalysisParams
    robustness: RobustnessParams

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds} repeats a seed")
        return seeds


# --- the whole file -----------------------------------------------------------------------------------------


class Params(Section):
    seed: Seed
    data: DataParams
    augment: AugmentParams
    loader: LoaderParams
    tracking: TrackingParams
    baseline: BaselineParams  # the training core of train, with model logreg only
    train: TrainParams
    tune: TuneParams
    evaluate: EvaluateParams

    @model_validator(mode="after")
    def _trials_are_valid_train_sections(self) -> Params:
        check_tune_against_train(self.tune, self.train)
        return self

    @model_validator(mode="after")
    def _corruptions_apply(self, info: ValidationInfo) -> Params:
        if not _deep(info):
            return self
        from medmnist_pipeline.transforms.corruptions import SEVERITIES, check_corruptions

        channels = DATASETS[self.data.flag].n_channels if self.data.flag != "custom" else None
        for key, names, severities in (
            ("@augment", self.augment.corruptions, list(SEVERITIES)),
            ("@evaluate.robustness", self.evaluate.robustness.corruptions, self.evaluate.robustness.severities),
        ):
            problem = check_corruptions(key, names, severities, self.data.flag, channels)
            if problem:
                raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _transforms_keep_shape(self, info: ValidationInfo) -> Params:
        if not _deep(info):
            return self
        # Augmented images are stored as uint8 arrays of the original shape: try the pipeline once on a blank
        # image of the configured size so that Normalize, Resize or a crop fail here, not halfway through a stage.
        from medmnist_pipeline.transforms.augmentation import check_pipeline_output

        channels = DATASETS[self.data.flag].n_channels if self.data.flag != "custom" else None
        problem = check_pipeline_output(self.augment.transforms, self.data.size, channels)
        if problem:
            raise ValueError(f"@augment.transforms: {problem}")
        return self


# --- loading ---------------------------------------------------------------------------------------------


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError with every problem, each naming its full key.

    Two passes: the schema, bounds and cross-checks first (milliseconds), then the augmentation pipeline, which
    imports albumentations (seconds): a bad file is refused before anything heavy is imported.
    """
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections (seed, data, ...), got {type(raw).__name__}")
    validate(Params, raw, source=str(path), context={DEEP: False})
    return validate(Params, raw, source=str(path), context={DEEP: True})


DEEP = "albumentations"  # validation context key: False skips the checks that import albumentations


def _deep(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get(DEEP, True))


def load_section(path: str | Path, name: str, model: type[BaseModel]) -> Any:
    """One section of a YAML file (``{name: {...}}``), validated on its own: the tune stage's best_params.yaml, or
    the tracking section for commands (predict, ui) that must work while another section is being edited."""
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get(name), dict):
        raise ParamsError(f"{path}: expected a mapping with a {name} section")
    return validate(model, raw[name], source=str(path), prefix=(name,))


def check_trials_can_run(params: Params) -> None:
    """Checks that only matter to the tune stage (a train section made for DDP, or switched to another architecture
    before tune.space follows, is fine for `train` itself)."""
    check_trial_models(params.tune, params.train)
    check_fixed_changes_train(params.tune, params.train)
    trainer = params.train.trainer
    fixed = params.tune.fixed
    devices = fixed.get("train.trainer.devices", trainer.devices)
    nodes = fixed.get("train.trainer.num_nodes", trainer.num_nodes)
    strategy = fixed.get("train.trainer.strategy", trainer.strategy)
    if not (isinstance(devices, int) and isinstance(nodes, int)) or devices * nodes <= 1:
        return
    if strategy == "ddp":
        raise ParamsError(
            "tune.fixed: trials cannot use train.trainer.strategy ddp (its relaunched processes "
            "would run their own study.optimize); set train.trainer.strategy to ddp_spawn or "
            "ddp_fork in tune.fixed for multi-device trials"
        )
    if not (params.tune.storage or "").startswith(("sqlite", "postgresql", "mysql")):
        raise ParamsError(
            "tune.storage: multi-device trials need an RDB storage (sqlite:///..., postgresql://...) "
            "for Optuna's pruning callback under DDP"
        )
