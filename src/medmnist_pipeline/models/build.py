"""The one place a ``train.model`` section becomes a network: ``build_model`` (the architecture, also used to load a
saved model) and ``initial_model`` (what a training run starts from: ``init_from`` weights, frozen backbone)."""

from __future__ import annotations

from typing import Protocol

import torch

from medmnist_pipeline.config.train import (
    BackboneModel,
    ConvNetParams,
    EfficientNetParams,
    LogRegParams,
    ModelSection,
    ResNetParams,
)
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.models.networks import ConvNet, LogReg, Network, ResNet, freeze_backbone, replace_head


class StartingWeights(Protocol):
    """What ``initial_model`` reads of an ``init_from`` model file (a ``modelfile.ModelFile``, which builds its own
    networks here: named by its shape, not imported, so the two modules do not import each other)."""

    model: ModelSection
    state_dict: dict[str, torch.Tensor]
    labels: tuple[str, ...]
    task: str


def build_model(model: ModelSection, in_channels: int, num_outputs: int, image_size: int) -> Network:
    """The network ``model`` (a validated ``train.model`` section, one class per architecture) describes."""
    if isinstance(model, EfficientNetParams):
        from medmnist_pipeline.models.pretrained import build_pretrained  # imports the package code only when used

        return build_pretrained(model.name, in_channels, num_outputs, model.input_size, model.pretrained)
    if isinstance(model, LogRegParams):
        return LogReg(in_channels, image_size, num_outputs)
    if isinstance(model, ConvNetParams):
        return ConvNet(
            in_channels,
            num_outputs,
            filters=model.filters,
            kernel_size=model.kernel_size,
            convs_per_block=model.convs_per_block,
            blocks=model.blocks,
            fc_layers=model.fc_layers,
            fc_width=model.fc_width,
            dropout=model.dropout,
        )
    if isinstance(model, ResNetParams):
        return ResNet(int(model.name.removeprefix("resnet")), in_channels, num_outputs, model.stem)
    raise TypeError(f"no network for a {type(model).__name__}")


def initial_model(
    model: ModelSection,
    in_channels: int,
    labels: tuple[str, ...],
    task: str,
    image_size: int,
    init_from: StartingWeights | None,
) -> Network:
    """The network a training run starts from: ``build_model``, then the backbone of ``init_from`` (the model file
    ``model.init_from`` names, loaded by the caller), and its head too when that model had as many labels and the
    same task; then (``model.freeze: backbone``) the backbone frozen, an ``init_from`` file's or a pretrained
    package's. A logreg has no backbone, hence none of these keys."""
    net = build_model(model, in_channels, len(labels), image_size)
    if not isinstance(model, BackboneModel):
        return net
    if init_from is not None:
        if init_from.model.name != model.name:
            raise PipelineError(
                f"model.init_from: {model.init_from} holds a {init_from.model.name}, but model.name is {model.name}"
            )
        weights = init_from.state_dict
        net.load_state_dict({k: v for k, v in weights.items() if not k.startswith("head.")}, strict=False)
        if len(init_from.labels) == len(labels) and init_from.task == task:
            net.head.load_state_dict({k.removeprefix("head."): v for k, v in weights.items() if k.startswith("head.")})
        else:
            replace_head(net, len(labels))
    if model.freeze == "backbone":
        freeze_backbone(net)
    return net
