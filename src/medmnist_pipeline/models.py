"""The networks, written out (torchvision cannot be installed beside this CPU torch).

Every model is ``head(backbone(x))``: ``backbone`` maps images (B, C, H, W) to features (B, F) and ``head`` is one
``nn.Linear(F, outputs)``. Transfer learning swaps the head and may freeze the backbone.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, features: int, num_outputs: int) -> None:
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(features, num_outputs)

    def forward(self, x):
        return self.head(self.backbone(x))


def logreg(in_channels: int, image_size: int, num_outputs: int) -> Classifier:
    """Multinomial logistic regression on the pixels (L2 comes from the optimizer's weight decay)."""
    return Classifier(nn.Flatten(), in_channels * image_size * image_size, num_outputs)


def convnet(in_channels: int, num_outputs: int, filters: int, kernel_size: int, convs_per_block: int, blocks: int,
            fc_layers: int, fc_width: int, dropout: float) -> Classifier:  # fmt: skip
    """[(CONV-BN-RELU) x convs_per_block -> MAXPOOL] x blocks -> global average pool -> (FC-RELU-DROPOUT) x
    fc_layers. Filters double in each block; the global pool makes it work at every image size."""
    layers: list[nn.Module] = []
    channels = in_channels
    for b in range(blocks):
        width = filters * 2**b
        for _ in range(convs_per_block):
            layers += [nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU()]  # fmt: skip
            channels = width
        layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 7 -> 4 -> 2 -> 1, never 0
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for _ in range(fc_layers):
        layers += [nn.Linear(channels, fc_width), nn.ReLU(), nn.Dropout(dropout)]
        channels = fc_width
    return Classifier(nn.Sequential(*layers), channels, num_outputs)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3, as torchvision
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)
        self.relu3 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu3(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


def resnet(depth: int, in_channels: int, num_outputs: int, stem: str) -> Classifier:
    """ResNet-18/50. ``stem="cifar"``: 3x3 conv, stride 1, no max-pool (the form MedMNIST trains at 28 px);
    ``stem="imagenet"``: 7x7 conv stride 2 + 3x3 max-pool (torchvision's form, MedMNIST's choice at 224 px)."""
    block, counts = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3))}[depth]
    if stem == "cifar":
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    elif stem == "imagenet":
        layers = [nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                  nn.MaxPool2d(3, 2, 1)]  # fmt: skip
    else:
        raise ValueError(f"unknown ResNet stem {stem!r} (cifar or imagenet)")
    in_planes = 64
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), counts, strict=True)):
        for j in range(count):
            layers.append(block(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
            in_planes = planes * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = Classifier(nn.Sequential(*layers), in_planes, num_outputs)
    for m in model.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def build_model(name: str, in_channels: int, num_outputs: int, image_size: int, **options: Any) -> Classifier:
    """``logreg`` (no options), ``convnet`` (its keyword arguments), ``resnet18``/``resnet50`` (``stem``)."""
    if name == "logreg" and not options:
        return logreg(in_channels, image_size, num_outputs)
    if name == "convnet":
        return convnet(in_channels, num_outputs, **options)
    if name in ("resnet18", "resnet50") and set(options) <= {"stem"}:
        return resnet(int(name[6:]), in_channels, num_outputs, options.get("stem", "cifar"))
    raise ValueError(f"unknown model {name!r} with options {sorted(options)}")


def replace_head(model: Classifier, num_outputs: int) -> None:
    """A fresh head for a different number of classes, keeping the backbone's features."""
    model.head = nn.Linear(model.head.in_features, num_outputs)


def relu_modules(model: nn.Module) -> dict[str, nn.ReLU]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
