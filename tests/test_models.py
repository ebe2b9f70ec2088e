"""The networks: output shapes at every MedMNIST size, the backbone/head split for transfer learning, the ReLU
modules the diagnostics hook into, the published parameter counts, and argument checking."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from helpers import model_params
from medmnist_pipeline.config.train import MODEL_KEYS, model_section
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.networks import ConvNet, LogReg, ResNet, relu_modules, replace_head


def build(name: str, channels: int, outputs: int, size: int, **options) -> nn.Module:
    return build_model(model_params(name=name, **options), channels, outputs, size)


SMALL_CONVNET = dict(filters=4, kernel_size=3, convs_per_block=2, blocks=4, fc_layers=1, fc_width=8, dropout=0.1)

# (name, options) per size; resnet50 runs at 224 px only once (it is the slow one on CPU), and the cifar stem (no
# downsampling) only at the sizes MedMNIST uses it for.
CASES = [
    (name, options, size, channels)
    for size in (28, 64, 128, 224)
    for channels in (1, 3)
    for name, options in [
        ("logreg", {}),
        ("convnet", SMALL_CONVNET),
        ("resnet18", {"stem": "imagenet"}),
        *([("resnet18", {"stem": "cifar"}), ("resnet50", {"stem": "cifar"})] if size == 28 else []),
        *([("resnet50", {"stem": "imagenet"})] if size == 28 or (size == 224 and channels == 3) else []),
    ]
]


@pytest.mark.parametrize(
    ("name", "options", "size", "channels"), CASES, ids=[f"{n}-{o.get('stem', '')}-{s}px-{c}ch" for n, o, s, c in CASES]
)
def test_every_model_maps_images_to_outputs(name: str, options: dict, size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = build(name, channels, 5, size, **options)
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        out = model(x)  # training mode: BatchNorm must cope with the smallest maps too
        model.eval()
        features = model.backbone(x)
        assert torch.equal(model(x), model.head(features))
    assert out.shape == (2, 5)
    assert features.shape == (2, model.head.in_features)
    assert torch.isfinite(out).all()


def test_convnet_layout() -> None:
    model = ConvNet(3, 4, filters=8, kernel_size=5, convs_per_block=3, blocks=3, fc_layers=2, fc_width=16, dropout=0.2)
    convs = [m for m in model.backbone.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8] * 3 + [16] * 3 + [32] * 3  # filters double each block
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)  # 'same' padding
    assert len(model.backbone.blocks) == 3
    assert all(isinstance(block[-1], nn.MaxPool2d) for block in model.backbone.blocks)
    fcs = [m for m in model.backbone.fc if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(32, 16), (16, 16)]
    assert model.head.in_features == 16
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.2 for m in model.modules()) == 2


def test_convnet_survives_five_blocks_at_28_px() -> None:
    """The configuration allows 5 blocks; without ceil-mode pooling a 28 px map would reach 0x0 (28-14-7-3-1-0)."""
    options = dict(SMALL_CONVNET, blocks=5)
    assert build("convnet", 1, 2, 28, **options)(torch.randn(2, 1, 28, 28)).shape == (2, 2)


def test_logreg_is_one_linear_map_of_the_pixels() -> None:
    model = LogReg(3, 28, 7)
    assert isinstance(model.backbone, nn.Flatten)
    assert (model.head.in_features, model.head.out_features) == (3 * 28 * 28, 7)
    assert sum(p.numel() for p in model.parameters()) == 3 * 28 * 28 * 7 + 7


@pytest.mark.parametrize(
    ("name", "options"), [("logreg", {}), ("convnet", SMALL_CONVNET), ("resnet18", {"stem": "cifar"})]
)
def test_replace_head_keeps_the_backbone(name: str, options: dict) -> None:
    model = build(name, 1, 3, 28, **options).double()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    old_head = model.head
    replace_head(model, 6)
    assert model.head is not old_head
    assert (model.head.in_features, model.head.out_features) == (old_head.in_features, 6)
    assert model.head.weight.dtype == torch.float64  # same dtype/device as the head it replaces
    after = model.backbone.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model(torch.randn(2, 1, 28, 28, dtype=torch.float64)).shape == (2, 6)
    assert {k for k in model.state_dict() if k.startswith("head.")} == {"head.weight", "head.bias"}


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: LogReg(1, 28, 2), 0),
        # 2 per conv block x 2 blocks + 1 in the FC layer
        (
            lambda: ConvNet(
                1, 2, filters=4, kernel_size=3, convs_per_block=2, blocks=2, fc_layers=1, fc_width=8, dropout=0.0
            ),
            5,
        ),
        (lambda: ResNet(18, 1, 2, "cifar"), 1 + 8 * 2),  # stem + 8 basic blocks x 2
        (lambda: ResNet(50, 1, 2, "imagenet"), 1 + 16 * 3),  # stem + 16 bottlenecks x 3
    ],
    ids=["logreg", "convnet", "resnet18", "resnet50"],
)
def test_relu_modules_finds_every_relu_and_each_fires_once(make: Callable[[], nn.Module], expected: int) -> None:
    model = make()
    relus = relu_modules(model)
    assert len(relus) == expected
    assert all(isinstance(m, nn.ReLU) for m in relus.values())
    assert relus == {n: m for n, m in model.named_modules() if isinstance(m, nn.ReLU)}
    calls: dict[str, int] = dict.fromkeys(relus, 0)
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls[n] + 1)) for n, m in relus.items()]
    with torch.no_grad():
        model(torch.randn(2, 1, 28, 28))
    for hook in hooks:
        hook.remove()
    assert set(calls.values()) <= {1}  # one module per activation, so per-ReLU dead-unit counts are meaningful


def test_convnet_relus_are_named_by_block() -> None:
    model = ConvNet(1, 2, filters=4, kernel_size=3, convs_per_block=1, blocks=2, fc_layers=1, fc_width=8, dropout=0.0)
    assert list(relu_modules(model)) == ["backbone.blocks.0.2", "backbone.blocks.1.2", "backbone.fc.1"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_published_models() -> None:
    assert n_params(ResNet(18, 3, 10, "cifar")) == 11_173_962  # kuangliu/pytorch-cifar ResNet18
    assert n_params(ResNet(18, 3, 1000, "imagenet")) == 11_689_512  # torchvision resnet18
    assert n_params(ResNet(50, 3, 1000, "imagenet")) == 25_557_032  # torchvision resnet50


def test_resnet_state_dict_uses_torchvision_names() -> None:
    """So torchvision weights load after renaming 'fc.' to 'head.' and prefixing 'backbone.'."""
    keys18 = ResNet(18, 3, 1000, "imagenet").state_dict().keys()
    keys50 = ResNet(50, 3, 1000, "imagenet").state_dict().keys()
    assert (len(keys18), len(keys50)) == (122, 320)  # torchvision's resnet18/50 state_dict sizes
    for key in (
        "backbone.conv1.weight",
        "backbone.bn1.running_var",
        "backbone.layer2.0.downsample.0.weight",
        "backbone.layer4.1.bn2.num_batches_tracked",
        "head.weight",
    ):
        assert key in keys18
    for key in (
        "backbone.layer1.0.downsample.1.weight",
        "backbone.layer3.5.conv3.weight",
        "backbone.layer4.2.bn3.bias",
    ):
        assert key in keys50


def test_resnet_stems() -> None:
    cifar, imagenet = ResNet(18, 1, 2, "cifar"), ResNet(18, 1, 2, "imagenet")
    assert (cifar.backbone.conv1.kernel_size, cifar.backbone.conv1.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    assert (imagenet.backbone.conv1.kernel_size, imagenet.backbone.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(imagenet.backbone.maxpool, nn.MaxPool2d)
    # the stem's output resolution: 28 -> 28 (cifar) and 28 -> 14 -> 7 (imagenet)
    x = torch.randn(2, 1, 28, 28)
    assert cifar.backbone[:3](x).shape[-1] == 28 and imagenet.backbone[:4](x).shape[-1] == 7


def test_resnet_initialisation_is_torchvisions() -> None:
    torch.manual_seed(0)
    model = ResNet(18, 3, 2, "cifar")
    conv = model.backbone.layer4[1].conv2  # 512 -> 512, 3x3: kaiming normal, fan_out: std = sqrt(2 / (512 * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 1) and torch.all(bn.bias == 0) for bn in bns)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "vgg16"}, "name"),
        ({"kernel_size": 4}, "odd"),
        ({"dropout": 1.0}, "dropout"),
        ({"name": "resnet18", "stem": "vit"}, "stem"),
        ({"filters": 0}, "filters"),
    ],
)
def test_model_options_are_checked_once_by_params_validation(change: dict, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        model_params(**change)


OWN_KEYS = {
    "logreg": {},
    "convnet": SMALL_CONVNET,
    "resnet18": {"stem": "cifar"},
    "resnet50": {"stem": "cifar"},
    **{f"efficientnet_lite{i}": {"pretrained": "none", "input_size": 32} for i in range(3)},
}
# a valid value of every key some architecture reads
ANY_VALUE = {**SMALL_CONVNET, "stem": "cifar", "pretrained": "none", "input_size": 32, "init_from": None,
             "freeze": "none", "backbone_lr_factor": 1.0, "feature_cache": False}  # fmt: skip


@pytest.mark.parametrize("name", sorted(MODEL_KEYS))
def test_each_architecture_holds_exactly_its_keys_and_refuses_the_others(name: str) -> None:
    from pydantic import ValidationError

    section = model_params(name=name, **OWN_KEYS[name])
    assert tuple(section.model_dump()) == MODEL_KEYS[name]
    assert build_model(section, 1, 2, 28) is not None  # build_model gets the typed section and reads every key
    foreign = [key for key in ANY_VALUE if key not in MODEL_KEYS[name]]
    assert foreign and (name == "logreg") == (len(foreign) == len(ANY_VALUE))  # logreg reads no transfer key
    for key in foreign:
        with pytest.raises(ValidationError, match=key):
            model_section({**section.model_dump(), key: ANY_VALUE[key]})


def test_unknown_resnet_depth_raises_value_error() -> None:
    with pytest.raises(ValueError, match="depth"):
        ResNet(34, 3, 2, "cifar")
