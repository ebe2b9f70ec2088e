"""The networks, written out (torchvision cannot be installed beside this CPU torch).

Every model is ``head(backbone(x))``: ``backbone`` maps images (B, C, H, W) to features (B, F) and ``head`` is one
``nn.Linear(F, num_outputs)``. Transfer learning loads a backbone, may freeze it, and re-creates the head when the
number of classes differs (``replace_head``).

Every ReLU is its own ``nn.ReLU`` module, used once, so that a forward hook on it (``relu_modules``) sees exactly one
activation: the training diagnostics count dead units per ReLU that way.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn


class Network(nn.Module):
    """``forward(x) = head(backbone(x))``; subclasses set both attributes.

    ``frozen_backbone`` (set by ``freeze_backbone``): the backbone stays in eval mode whatever ``train()`` says."""

    backbone: nn.Module
    head: nn.Linear
    frozen_backbone: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> Network:
        super().train(mode)
        if self.frozen_backbone:  # Lightning calls train() on the whole module at every epoch's start
            self.backbone.eval()
        return self


class LogReg(Network):
    """Multinomial logistic regression on the raw pixels (its L2 penalty is the optimizer's weight decay)."""

    def __init__(self, in_channels: int, image_size: int, num_outputs: int) -> None:
        super().__init__()
        self.backbone = nn.Flatten()
        self.head = nn.Linear(in_channels * image_size * image_size, num_outputs)


class ConvNet(Network):
    """[(CONV-BN-RELU) x convs_per_block -> MAXPOOL] x blocks -> global average pool -> (FC-RELU-DROPOUT) x fc_layers.

    Filters double in each block. The global pool makes the network independent of the image size; the pools use
    ``ceil_mode`` so that even 5 blocks on 28 px images never pool a map down to zero (28-14-7-4-2-1).
    The conv blocks are ``backbone.blocks[i]`` (each an ``nn.Sequential``), the FC layers ``backbone.fc``.
    """

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        filters: int,
        kernel_size: int,
        convs_per_block: int,
        blocks: int,
        fc_layers: int,
        fc_width: int,
        dropout: float,
    ) -> None:
        super().__init__()
        conv_blocks, channels = [], in_channels
        for b in range(blocks):
            width, layers = filters * 2**b, []
            for _ in range(convs_per_block):
                # no conv bias: the BatchNorm that follows has its own shift
                layers += [
                    nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            conv_blocks.append(nn.Sequential(*layers))
        fc: list[nn.Module] = []
        for _ in range(fc_layers):
            fc += [nn.Linear(channels, fc_width), nn.ReLU(), nn.Dropout(dropout)]
            channels = fc_width
        self.backbone = nn.Sequential(
            OrderedDict(
                blocks=nn.Sequential(*conv_blocks),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                fc=nn.Sequential(*fc),
            )
        )
        self.head = nn.Linear(channels, num_outputs)


# --- ResNet -------------------------------------------------------------------------------------------------
# Module names follow torchvision (conv1, bn1, layer1..4, downsample), so the backbone's state_dict keys are
# torchvision's with a "backbone." prefix (and "fc." is "head."). Unlike torchvision, each ReLU is a separate module.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_planes, planes, stride)
        self.relu2 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision, "v1.5")
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = _downsample(in_planes, planes * self.expansion, stride)
        self.relu3 = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + self.downsample(x))


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """The projection shortcut (1x1 conv + BN) where the shape changes, the identity elsewhere."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


RESNET_LAYOUTS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(Network):
    """ResNet-18/50 (He et al. 2016).

    ``stem="cifar"``: 3x3 conv, stride 1, no max-pool: the form MedMNIST trains at 28 px (kuangliu's pytorch-cifar).
    ``stem="imagenet"``: 7x7 conv stride 2 + 3x3/2 max-pool: torchvision's form, MedMNIST's choice at 224 px.
    """

    def __init__(self, depth: int, in_channels: int, num_outputs: int, stem: str) -> None:
        super().__init__()
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth!r}")
        if stem == "cifar":
            layers = OrderedDict(conv1=nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False))
        elif stem == "imagenet":
            layers = OrderedDict(conv1=nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False))
        else:
            raise ValueError(f"ResNet stem must be 'cifar' or 'imagenet', got {stem!r}")
        layers.update(bn1=nn.BatchNorm2d(64), relu=nn.ReLU(inplace=False))
        if stem == "imagenet":
            layers["maxpool"] = nn.MaxPool2d(3, 2, 1)
        block, counts = RESNET_LAYOUTS[depth]
        in_planes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
            stage = []
            for j in range(count):  # the first block of layers 2-4 halves the resolution
                stage.append(block(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes * block.expansion
            layers[f"layer{i + 1}"] = nn.Sequential(*stage)
        layers.update(avgpool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten())
        self.backbone = nn.Sequential(layers)
        self.head = nn.Linear(in_planes, num_outputs)
        for m in self.modules():  # torchvision's initialisation (the head keeps nn.Linear's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


# --- construction and transfer ------------------------------------------------------------------------------


def freeze_backbone(net: Network) -> None:
    """Feature extraction: no gradients for the backbone, and eval mode for it from now on (``Network.train``), so
    its BatchNorm keeps its running statistics and its dropout is off: the features depend on the image alone."""
    net.backbone.requires_grad_(False)
    net.frozen_backbone = True
    net.train(net.training)


def param_groups(net: Network, lr: float, backbone_lr_factor: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the head at ``lr`` first (the history's ``lr``), then the backbone at
    ``lr * backbone_lr_factor`` (frozen parameters left out); one group when the factor is 1 (the MLflow metric stays
    ``train/lr``; with two, ``train/lr/head`` and ``train/lr/backbone``). Fine-tuning a pretrained backbone with a
    small factor keeps its features from being overwritten by the large early gradients of the random head
    (catastrophic forgetting)."""
    if backbone_lr_factor == 1.0:
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    groups = [
        {"name": "head", "params": [p for p in net.head.parameters() if p.requires_grad], "lr": lr},
        {
            "name": "backbone",
            "params": [p for p in net.backbone.parameters() if p.requires_grad],
            "lr": lr * backbone_lr_factor,
        },
    ]
    return [g for g in groups if g["params"]]


def replace_head(model: Network, num_outputs: int) -> None:
    """A freshly initialised head for ``num_outputs`` classes on the same features (same device and dtype)."""
    old = model.head
    model.head = nn.Linear(old.in_features, num_outputs, device=old.weight.device, dtype=old.weight.dtype)


def relu_modules(model: nn.Module) -> dict[str, nn.ReLU]:
    """Every ``nn.ReLU`` of any model, by its qualified name (e.g. ``backbone.blocks.0.2``), for forward hooks."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
