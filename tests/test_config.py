"""params.yaml validation: every bad value is caught on load with one message naming the full key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO, params_error, write_params
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.errors import ParamsError


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        params = params[part]
    params[last] = value


def drop_key(params: dict[str, Any], dotted: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        params = params[part]
    del params[last]


BAD_VALUES = [
    ("data.size", 100, "data.size: 100 is not one of 28, 64, 128 or 224"),
    ("data.size", "28", "data.size: '28' is not one of"),
    ("data.flag", "pneumonia", "data.flag: 'pneumonia' is not one of 'pathmnist'"),
    ("seed", -1, "seed: input should be greater than or equal to 0"),
    ("seed", "42", "seed: input should be a valid integer"),
    ("seed", 1.5, "seed: input should be a valid integer"),
    ("augment.copies", True, "augment.copies: input should be a valid integer"),
    ("data.download.timeout_s", 0, "data.download.timeout_s: input should be greater than 0"),
    ("data.download.retries", -2, "data.download.retries: input should be greater than or equal to 0"),
    ("tracking.experiment", "", "tracking.experiment: string should have at least 1 character"),
    ("data.mirror", 5, "data.mirror: input should be a valid string"),
    (
        "augment.transforms",
        [{"HorizontalFlp": {"p": 0.5}}],
        "augment.transforms[0].HorizontalFlp: unknown transform; did you mean HorizontalFlip",
    ),
    (
        "augment.transforms",
        [{"Affine": {"rotatee": 10}}],
        "augment.transforms[0].Affine: unknown argument 'rotatee' (allowed: scale,",
    ),
    ("augment.transforms", [{"HorizontalFlip": {"p": 2}}], "augment.transforms[0].HorizontalFlip: bad arguments: p"),
    ("augment.transforms", [{"Normalize": {}}], "augment.transforms[0].Normalize: produces float tensors"),
    (
        "augment.transforms",
        [{"RandomCrop": {"height": 20, "width": 20}}],
        "augment.transforms: must keep uint8 images of shape (28, 28), but produces uint8 (20, 20)",
    ),
    ("augment.transforms", [{"HorizontalFlip": {}, "VerticalFlip": {}}], "must be a single 'TransformName: {args}'"),
    ("augment.transforms", [["HorizontalFlip"]], "augment.transforms[0]: input should be a valid dictionary"),
    ("data.custom.path", "x.npz", "data.custom.path is only used with data.flag: custom"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_VALUES, ids=[f"{k}={v!r}" for k, v, _ in BAD_VALUES])
def test_bad_value_is_named(tmp_path: Path, repo_params: dict, key: str, value: Any, message: str) -> None:
    set_key(repo_params, key, value)
    assert message in params_error(tmp_path / "params.yaml", repo_params)


def test_unknown_key_lists_allowed_keys_and_suggests(tmp_path: Path, repo_params: dict) -> None:
    repo_params["data"]["sizee"] = 28
    with pytest.raises(
        ParamsError,
        match=r"data\.sizee: unknown key \(allowed: flag, size, mirror, download, "
        r"custom\); did you mean 'size'\?",
    ):
        load_params(write_params(tmp_path / "params.yaml", repo_params))


def test_unknown_section(tmp_path: Path, repo_params: dict) -> None:
    repo_params["trian"] = {}
    with pytest.raises(ParamsError, match=r"trian: unknown key \(allowed: seed, data, augment, loader, tracking"):
        load_params(write_params(tmp_path / "params.yaml", repo_params))


@pytest.mark.parametrize("key", ["data.mirror", "tracking", "augment.copies"])
def test_missing_key_is_an_error_not_a_hidden_default(tmp_path: Path, repo_params: dict, key: str) -> None:
    drop_key(repo_params, key)
    with pytest.raises(ParamsError, match=rf"{key}: missing; every key must be set explicitly"):
        load_params(write_params(tmp_path / "params.yaml", repo_params))


def test_custom_data_needs_path_task_and_labels(tmp_path: Path, repo_params: dict) -> None:
    repo_params["data"]["flag"] = "custom"
    with pytest.raises(ParamsError, match=r"data.flag is 'custom', so data.custom.labels must be set"):
        load_params(write_params(tmp_path / "params.yaml", repo_params))
    repo_params["data"]["custom"] = {"path": "x.npz", "task": "regression", "labels": ["a", "b"]}
    with pytest.raises(ParamsError, match=r"data.custom.task: 'regression' is not one of 'binary-class'"):
        load_params(write_params(tmp_path / "params.yaml", repo_params))


def test_every_problem_is_reported_at_once(tmp_path: Path, repo_params: dict) -> None:
    repo_params["seed"] = -1
    repo_params["data"]["size"] = 100
    message = params_error(tmp_path / "params.yaml", repo_params)
    assert "seed:" in message and "data.size:" in message


def test_not_yaml_and_not_found(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "broken.yaml")
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ParamsError, match="expected a mapping of sections"):
        load_params(tmp_path / "list.yaml")


def test_repo_params_are_valid_and_exponents_are_floats(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    assert params.data.flag == "pneumoniamnist"
    # PyYAML alone reads `1e-3` as a string (YAML 1.1); DVC reads it as a float. We agree with DVC.
    text = (REPO / "params.yaml").read_text().replace("timeout_s: 60 ", "timeout_s: 1e-3 ")
    assert load_params(write_params_text(tmp_path / "p.yaml", text)).data.download.timeout_s == 0.001


def write_params_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_exits_2_with_one_message_and_writes_nothing(tmp_path: Path, repo_params: dict) -> None:
    repo_params["data"]["size"] = 100
    write_params(tmp_path / "params.yaml", repo_params)
    for stage in ("download", "augment"):
        result = subprocess.run(
            [sys.executable, "-m", "medmnist_pipeline", stage], cwd=tmp_path, capture_output=True, text=True
        )
        assert result.returncode == 2, result.stderr
        assert "data.size: 100 is not one of 28, 64, 128 or 224" in result.stderr
        assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_loader_and_augment_mode_are_validated(tmp_path: Path, repo_params: dict) -> None:
    repo_params["loader"]["memory_budget_mb"] = 0
    repo_params["augment"]["mode"] = "lazy"
    with pytest.raises(ParamsError) as error:
        load_params(write_params(tmp_path / "params.yaml", repo_params))
    assert "loader.memory_budget_mb: input should be greater than 0" in str(error.value)
    assert "augment.mode: 'lazy' is not one of 'materialised' or 'online'" in str(error.value)


# --- model: a tagged union keyed on name ----------------------------------------------------------------------

RESNET18 = "{name: resnet18, stem: cifar, init_from: null, freeze: none, backbone_lr_factor: 1.0, feature_cache: false}"


def test_baseline_holds_only_what_logistic_regression_reads() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.baseline.model.model_dump() == {"name": "logreg"}
    assert "filters" in params.train.model.model_dump() and "stem" not in params.train.model.model_dump()


def test_a_convnet_key_under_logreg_exits_2_naming_the_key(tmp_path: Path, repo_params: dict) -> None:
    repo_params["baseline"]["model"]["filters"] = 32
    write_params(tmp_path / "params.yaml", repo_params)
    result = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", "baseline"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert "baseline.model.filters: not a key of model logreg (its keys: name)\n" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"stem": "cifar"}, "train.model.stem: not a key of model convnet (its keys: name, init_from, freeze, "),
        ({"pretrained": "none"}, "train.model.pretrained: not a key of model convnet"),
        ({"name": "resnet18"}, "train.model.filters: not a key of model resnet18 (its keys: name, init_from, freeze, "),
        ({"name": "vit"}, "train.model.name: 'vit' is not one of 'logreg', 'convnet', 'resnet18', 'resnet50', "),
        ({"filtres": 8}, "train.model.filtres: unknown key (allowed: name, init_from, "),
    ],
)
def test_a_key_of_another_architecture_is_refused_by_name(
    tmp_path: Path, repo_params: dict, model: dict, message: str
) -> None:
    repo_params["train"]["model"].update(model)
    error = params_error(tmp_path / "params.yaml", repo_params)
    assert message in error
    if "filtres" in message:
        assert "did you mean 'filters'?" in error


def test_a_model_section_without_name_or_with_a_missing_key(tmp_path: Path, repo_params: dict) -> None:
    del repo_params["train"]["model"]["name"]
    assert "train.model.name: missing" in params_error(tmp_path / "params.yaml", repo_params)
    repo_params["train"]["model"] = {"name": "resnet18", "stem": "cifar"}
    assert "train.model.freeze: missing; every key must be set explicitly" in params_error(
        tmp_path / "params.yaml", repo_params
    )


def test_dvc_set_param_switches_the_architecture_by_replacing_the_section(tmp_path: Path) -> None:
    """What `dvc exp run -S` does to params.yaml (DVC's own apply_overrides, Hydra's grammar), then our reader.
    `~train.model` then `+train.model={...}` replaces the section (README "Models"). A plain `train.model={...}`
    merges into the convnet's section: DVC refuses it (stem is no key there), and `++` (merge, adding keys) keeps
    the convnet's keys, which our reader refuses by name."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    apply_overrides(path, ["~train.model", f"+train.model={RESNET18}"])
    params = load_params(path)
    assert params.train.model.model_dump() == {
        "name": "resnet18",
        "init_from": None,
        "freeze": "none",
        "backbone_lr_factor": 1.0,
        "feature_cache": False,
        "stem": "cifar",
    }
    assert params.baseline == load_params(REPO / "params.yaml").baseline
    apply_overrides(path, ["train.model.stem=imagenet", "train.model.freeze=none"])  # a key of the new section
    assert load_params(path).train.model.stem == "imagenet"

    path.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(InvalidArgumentError):
        apply_overrides(path, [f"train.model={RESNET18}"])
    apply_overrides(path, [f"++train.model={RESNET18}"])
    with pytest.raises(ParamsError, match="train.model.filters: not a key of model resnet18"):
        load_params(path)
