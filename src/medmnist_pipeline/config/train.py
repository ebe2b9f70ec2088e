"""The training sections of params.yaml: ``baseline`` and ``train`` share this one schema (one training core), except
for ``model``, a tagged union keyed on ``name``: each architecture's section holds exactly the keys it reads.

- ``logreg``: name (no backbone: nothing to transfer, freeze or cache). The baseline's only model.
- ``convnet``: the architecture keys (filters ... dropout) and the transfer keys.
- ``resnet18``/``resnet50``: stem and the transfer keys.
- ``efficientnet_lite0/1/2``: pretrained, input_size and the transfer keys.

The transfer keys (``init_from``, ``freeze``, ``backbone_lr_factor``, ``feature_cache``) belong to every model with a
backbone (``BackboneModel``). A key of another architecture is refused by name
(``baseline.model.filters: not a key of model logreg (its keys: name)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medmnist_pipeline.config.io import Count, Section


class ModelSection(Section):
    """What every ``model`` section has: the architecture's ``name`` (the union's tag)."""

    name: str

    @classmethod
    def unknown_key(cls, key: str, tag: str | None) -> str | None:
        """The message for ``key`` in this section when it is a key of another architecture (config.io asks)."""
        if any(key in keys for keys in MODEL_KEYS.values()):
            name = tag or cls.names()[0]
            return f"not a key of model {name} (its keys: {', '.join(cls.model_fields)})"
        return None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return cls.model_fields["name"].annotation.__args__  # the Literal's values


class LogRegParams(ModelSection):
    """Multinomial logistic regression on the pixels: a linear head on a flatten, no backbone to transfer."""

    name: Literal["logreg"]


class BackboneModel(ModelSection):
    """A model with a backbone: the transfer-learning keys, read by models.build.initial_model (init_from, freeze)
    and training (backbone_lr_factor: the optimizer's param groups; feature_cache: the datamodule)."""

    init_from: str | None  # a models/*.ckpt of this project (e.g. trained on another flag): transfer learning
    freeze: Literal["none", "backbone"]  # backbone: feature extraction (only the head trains)
    backbone_lr_factor: Annotated[float, Field(gt=0, le=1)]  # backbone lr = optimizer.lr x this; head: optimizer.lr
    feature_cache: bool  # with freeze: backbone, the head trains on features computed once per image and copy

    def has_pretrained_backbone(self) -> bool:
        return False

    @model_validator(mode="after")
    def _transfer(self) -> BackboneModel:
        if self.freeze == "backbone" and self.init_from is None and not self.has_pretrained_backbone():
            raise ValueError(
                "@freeze: 'backbone' needs @init_from (a trained checkpoint to keep) or a pretrained backbone "
                "(@name: efficientnet_lite0 with @pretrained: imagenet or a weights file)"
            )
        if self.feature_cache and self.freeze != "backbone":
            raise ValueError("@feature_cache: true needs @freeze: backbone (features of a training backbone change)")
        return self


class ConvNetParams(BackboneModel):
    """[(CONV-BN-RELU) x convs_per_block -> POOL] x blocks -> (FC-RELU-DROPOUT) x fc_layers -> head"""

    name: Literal["convnet"]
    filters: Annotated[int, Field(ge=1, le=1024)]  # in the first block; doubles in each block after it
    kernel_size: Annotated[int, Field(ge=1, le=7)]
    convs_per_block: Annotated[int, Field(ge=1, le=16)]
    blocks: Annotated[int, Field(ge=1, le=5)]
    fc_layers: Annotated[int, Field(ge=0, le=16)]
    fc_width: Annotated[int, Field(ge=1, le=16384)]
    dropout: Annotated[float, Field(ge=0, lt=1)]

    @model_validator(mode="after")
    def _odd_kernel(self) -> ConvNetParams:
        if self.kernel_size % 2 == 0:
            raise ValueError(f"@kernel_size: {self.kernel_size} must be odd (same padding)")
        return self


class ResNetParams(BackboneModel):
    name: Literal["resnet18", "resnet50"]
    stem: Literal["cifar", "imagenet"]  # 3x3 stride 1 (MedMNIST's 28 px form) or 7x7/2 + maxpool


class EfficientNetParams(BackboneModel):
    """ImageNet-pretrained EfficientNet-Lite (models/pretrained.py)."""

    name: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    # imagenet (the weights file its pip package installed) | none | path to a weights file
    pretrained: Annotated[str, Field(min_length=1)]
    input_size: Annotated[int, Field(ge=16, le=1024)]  # px the batch is resized to (bilinear)

    def has_pretrained_backbone(self) -> bool:
        return self.pretrained != "none"


MODEL_SECTIONS: tuple[type[ModelSection], ...] = (LogRegParams, ConvNetParams, ResNetParams, EfficientNetParams)
# Which section class each architecture name selects, and the keys it holds (name included).
MODEL_CLASSES: dict[str, type[ModelSection]] = {name: cls for cls in MODEL_SECTIONS for name in cls.names()}
MODEL_KEYS: dict[str, tuple[str, ...]] = {name: tuple(cls.model_fields) for name, cls in MODEL_CLASSES.items()}

ModelParams = Annotated[
    LogRegParams | ConvNetParams | ResNetParams | EfficientNetParams,
    Field(discriminator="name"),
]


def merge_model_keys(section: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``section`` (a dumped model section) with ``values`` (key -> value) set, holding the keys its architecture
    reads: when ``values`` switch the name, the keys the new architecture does not read are dropped (a convnet's
    filters for a resnet18) and each key it reads comes from ``values`` or, when the old architecture shares it (the
    transfer keys), from ``section``. A tuning trial's model section (``tune.fixed`` and its sampled values on
    ``train.model``). An unknown name keeps every key: validation names the problem."""
    merged = {**section, **values}
    keys = MODEL_KEYS.get(merged.get("name"))  # type: ignore[arg-type]
    return merged if keys is None else {key: merged[key] for key in keys if key in merged}


def model_section(raw: Any) -> ModelSection:
    """A validated model section of any architecture (the tagged union on its own)."""
    from pydantic import TypeAdapter

    return TypeAdapter(ModelParams).validate_python(raw)


class OptimizerParams(Section):
    """Read by ``training.classifier.build_optimization``."""

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
    """Read by ``training.classifier.build_optimization``."""

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
    """Read by ``training.trainer.build_trainer`` (and ``check_hardware``)."""

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
    """``baseline`` and ``train``: read by ``training.fit.fit`` (augmented, batch_size, resume; the model through
    ``training.classifier.build_classifier``, the epochs, patience and clipping through ``training.trainer``)."""

    model: ModelParams  # the architecture's own section (the union above)
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
        cached = isinstance(self.model, BackboneModel) and self.model.feature_cache
        if cached and (self.batch_augment.flip or self.batch_augment.translate):
            raise ValueError(
                "@batch_augment: flip and translate must be off with model.feature_cache: true (cached features "
                "cannot be flipped or shifted; the augment stage's copies are cached one by one instead)"
            )
        return self


class BaselineParams(TrainParams):
    """The ``baseline`` section: the training core of ``train``, with logistic regression as its only model."""

    model: LogRegParams
