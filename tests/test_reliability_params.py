"""Malformed params files, as a new, hostile or careless user writes them, through the real command line.

Each case must be refused by the stage that reads it: exit status 2, the key named in the message, no traceback,
nothing written in the project folder (no MLflow store, no ``optuna/``, no data), and quickly. The table runs
through ``cli.main`` in this process (fast); a few cases run as real ``medmnist-pipeline`` processes to measure the
time a user waits and to check that the refusal happens before any heavy library is imported.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO
from medmnist_pipeline import cli

STAGES = ("download", "augment", "baseline", "train", "tune", "evaluate")
REPO_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
RESNET18 = {"name": "resnet18", "stem": "cifar", "init_from": None, "freeze": "none", "backbone_lr_factor": 1.0,
            "feature_cache": False}  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    key: str  # must appear in the message
    edit: Callable[[dict[str, Any]], None] | None = None  # applied to the repo's params
    text: Callable[[str], str] | bytes | None = None  # or the file's text rewritten / replaced by raw bytes
    stage: str = "train"
    albumentations: bool = False  # checking it needs albumentations itself (seconds to import, once per process)


def put(dotted: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for part in parents:
            params = params[part]
        params[last] = value

    return edit


def drop(dotted: str) -> Callable[[dict[str, Any]], None]:
    def edit(params: dict[str, Any]) -> None:
        *parents, last = dotted.split(".")
        for part in parents:
            params = params[part]
        del params[last]

    return edit


def both(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(params: dict[str, Any]) -> None:
        for e in edits:
            e(params)

    return edit


def space(entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return put("tune.space", {**REPO_PARAMS["tune"]["space"], **entry})


# a billion-fold expansion of a few lines, nested in the tracking section (not at the top level)
BOMB = "\n".join(
    f"  {name}: &{name} [" + ", ".join([f"*{prev}" if prev else "lol"] * 10) + "]"
    for prev, name in zip(
        ["", "a", "b", "c", "d", "e", "f", "g"], ["a", "b", "c", "d", "e", "f", "g", "h"], strict=True
    )
)

CUSTOM = {"path": "/nonexistent/data.npz", "task": "binary-class", "labels": ["no", "yes"]}

CASES = [
    # top level and file format
    Case("seed negative", "seed", put("seed", -1), stage="download"),
    Case("seed as text", "seed", put("seed", "42"), stage="augment"),
    Case("seed float", "seed", put("seed", 4.2)),
    Case("seed missing", "seed", drop("seed"), stage="evaluate"),
    Case("unknown section", "trian", put("trian", {"max_epochs": 3})),
    Case("section is a list", "data", put("data", [1, 2]), stage="download"),
    Case("section null", "augment", put("augment", None), stage="augment"),
    Case("file is a list", "params", text=lambda t: "- seed: 1\n"),
    Case("not YAML", "not valid YAML", text=lambda t: t + "\n  bad: [unclosed\n"),
    Case("tab indentation", "not valid YAML", text=lambda t: t.replace("  flag:", "\tflag:", 1)),
    Case("top-level alias bomb", "params", text=lambda t: "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"),
    Case("duplicate top-level key", "duplicate key 'seed'", text=lambda t: t + "\nseed: 7\n", stage="download"),
    Case(
        "duplicate nested key",
        "duplicate key 'lr'",
        text=lambda t: t.replace("    lr: 0.002\n", "    lr: 0.002\n    lr: 0.1\n"),
    ),
    Case("not UTF-8", "not UTF-8", text=b"seed: 42\ndata:\n  flag: pneumonia\xe9\n", stage="download"),
    Case(
        "alias bomb inside a value",
        "aliases expand",
        text=lambda t: t.replace("  experiment: medmnist-pipeline", "  experiment: medmnist-pipeline\n" + BOMB),
        stage="baseline",
    ),
    Case("seed beyond reseeding", "seed", put("seed", 5_000_000), stage="baseline"),
    # data
    Case("unknown flag", "data.flag", put("data.flag", "pneumonia"), stage="download"),
    Case("flag in capitals", "data.flag", put("data.flag", "PneumoniaMNIST"), stage="download"),
    Case("size not offered", "data.size", put("data.size", 32), stage="download"),
    Case("size as text", "data.size", put("data.size", "28"), stage="download"),
    Case("timeout zero", "data.download.timeout_s", put("data.download.timeout_s", 0), stage="download"),
    Case("timeout negative", "data.download.timeout_s", put("data.download.timeout_s", -5), stage="download"),
    Case("retries negative", "data.download.retries", put("data.download.retries", -1), stage="download"),
    Case("retries float", "data.download.retries", put("data.download.retries", 2.5), stage="download"),
    Case("backoff negative", "data.download.backoff_s", put("data.download.backoff_s", -1.0), stage="download"),
    Case("download typo", "data.download.retry", put("data.download.retry", 3), stage="download"),
    Case("custom without its facts", "data.custom.", put("data.flag", "custom"), stage="download"),
    Case(
        "custom with one label",
        "data.custom.labels",
        both(put("data.flag", "custom"), put("data.custom", {**CUSTOM, "labels": ["only"]})),
        stage="download",
    ),
    Case(
        "custom task unknown",
        "data.custom.task",
        both(put("data.flag", "custom"), put("data.custom", {**CUSTOM, "task": "regression"})),
        stage="download",
    ),
    Case("custom path on an official flag", "data.custom.path", put("data.custom.path", "x.npz"), stage="download"),
    Case("timeout infinite", "data.download.timeout_s", put("data.download.timeout_s", float("inf")), stage="download"),
    Case("timeout nan", "data.download.timeout_s", put("data.download.timeout_s", float("nan")), stage="download"),
    Case("backoff huge", "data.download.backoff_s", put("data.download.backoff_s", 1e300), stage="download"),
    Case(
        "binary task with four labels",
        "data.custom.labels",
        both(put("data.flag", "custom"), put("data.custom", {**CUSTOM, "labels": ["a", "b", "c", "d"]})),
        stage="download",
    ),
    Case("mirror as a number", "data.mirror", put("data.mirror", 5), stage="download"),
    # augment
    Case("copies negative", "augment.copies", put("augment.copies", -1), stage="augment"),
    Case("copies absurd", "augment.copies", put("augment.copies", 1_000_000_000), stage="augment"),
    Case("copies boolean", "augment.copies", put("augment.copies", True), stage="augment"),
    Case(
        "unknown transform",
        "augment.transforms[0]",
        put("augment.transforms", [{"Afine": {}}]),
        stage="augment",
        albumentations=True,
    ),
    Case(
        "transform argument typo",
        "augment.transforms[0].Affine",
        put("augment.transforms", [{"Affine": {"rotat": 10}}]),
        stage="augment",
        albumentations=True,
    ),
    Case(
        "transform changes the size",
        "augment.transforms",
        put("augment.transforms", [{"Resize": {"height": 32, "width": 32}}]),
        stage="augment",
        albumentations=True,
    ),
    Case("transform list item with two keys", "augment.transforms", put("augment.transforms", [{"A": {}, "B": {}}])),
    Case("transforms not a list", "augment.transforms", put("augment.transforms", {"Affine": {}}), stage="augment"),
    # tracking
    Case("empty experiment name", "tracking.experiment", put("tracking.experiment", ""), stage="baseline"),
    Case("tracking uri as a list", "tracking.uri", put("tracking.uri", ["sqlite:///x.db"]), stage="baseline"),
    # baseline
    Case("baseline is not logreg", "baseline.model.name", put("baseline.model.name", "convnet"), stage="baseline"),
    Case(
        "convnet key in the baseline",
        "baseline.model.filters: not a key of model logreg (its keys: name)",
        put("baseline.model.filters", 32),
        stage="baseline",
    ),
    Case("baseline lr zero", "baseline.optimizer.lr", put("baseline.optimizer.lr", 0), stage="baseline"),
    Case("baseline batch zero", "baseline.batch_size", put("baseline.batch_size", 0), stage="baseline"),
    Case("baseline epochs missing", "baseline.max_epochs", drop("baseline.max_epochs"), stage="baseline"),
    # train
    Case("unknown model", "train.model.name", put("train.model.name", "vit")),
    Case("filters absurd", "train.model.filters", put("train.model.filters", 1_000_000)),
    Case("epochs absurd", "train.max_epochs", put("train.max_epochs", 10**30)),
    Case("clip infinite", "train.gradient_clip", put("train.gradient_clip", float("inf"))),
    Case("filters zero", "train.model.filters", put("train.model.filters", 0)),
    Case("even kernel", "train.model.kernel_size", put("train.model.kernel_size", 4)),
    Case("too many blocks", "train.model.blocks", put("train.model.blocks", 9)),
    Case("dropout one", "train.model.dropout", put("train.model.dropout", 1.0)),
    Case("freeze without init", "train.model.freeze", put("train.model.freeze", "backbone")),
    Case("stem unknown", "train.model.stem", put("train.model", {**RESNET18, "stem": "tiny"})),
    Case("resnet key in a convnet", "train.model.stem: not a key of model convnet", put("train.model.stem", "cifar")),
    Case("name switched alone", "train.model.filters: not a key of model resnet", put("train.model.name", "resnet18")),
    Case("epochs zero", "train.max_epochs", put("train.max_epochs", 0)),
    Case("epochs as text", "train.max_epochs", put("train.max_epochs", "20")),
    Case("batch negative", "train.batch_size", put("train.batch_size", -128)),
    Case("optimizer unknown", "train.optimizer.name", put("train.optimizer.name", "lamb")),
    Case("lr huge", "train.optimizer.lr", put("train.optimizer.lr", 1e6)),
    Case("lr as text", "train.optimizer.lr", put("train.optimizer.lr", "0.002")),
    Case("momentum one", "train.optimizer.momentum", put("train.optimizer.momentum", 1.0)),
    Case("nesterov with adamw", "train.optimizer.nesterov", put("train.optimizer.nesterov", True)),
    Case("schedule unknown", "train.schedule.name", put("train.schedule.name", "linear")),
    Case("warmup with onecycle", "train.schedule.warmup_epochs", put("train.schedule.name", "onecycle")),
    Case("factor above one", "train.schedule.factor", put("train.schedule.factor", 2.0)),
    Case("clip negative", "train.gradient_clip", put("train.gradient_clip", -1.0)),
    Case("resume unknown", "train.resume", put("train.resume", "always")),
    Case("augmented as text", "train.augmented", put("train.augmented", "yes")),
    Case("translate negative", "train.batch_augment.translate", put("train.batch_augment.translate", -2)),
    Case("precision unknown", "train.trainer.precision", put("train.trainer.precision", "fp8")),
    Case("devices zero", "train.trainer.devices", put("train.trainer.devices", 0)),
    Case("strategy unknown", "train.trainer.strategy", put("train.trainer.strategy", "fsdp")),
    Case("trainer typo", "train.trainer.acelerator", put("train.trainer.acelerator", "cpu")),
    # tune
    Case("n_trials zero", "tune.n_trials", put("tune.n_trials", 0), stage="tune"),
    Case("tune timeout negative", "tune.timeout_s", put("tune.timeout_s", -1), stage="tune"),
    Case("sampler unknown", "tune.sampler", put("tune.sampler", "cmaes"), stage="tune"),
    Case("grid with a range", "tune.sampler", put("tune.sampler", "grid"), stage="tune"),
    Case("pruner unknown", "tune.pruner.name", put("tune.pruner.name", "asha"), stage="tune"),
    Case("metric unknown", "tune.metric", put("tune.metric", "val/f1"), stage="tune"),
    Case("direction against metric", "tune.direction", put("tune.direction", "minimize"), stage="tune"),
    Case("space path outside train", "tune.space", space({"evaluate.seeds": {"categorical": [[1]]}}), stage="tune"),
    Case(
        "space path unknown", "train.optimizer.rate", space({"train.optimizer.rate": {"float": [0.1, 1]}}), stage="tune"
    ),
    Case("space names a section", "train.model", space({"train.model": {"categorical": [1]}}), stage="tune"),
    Case(
        "space two kinds", "tune.space", space({"train.max_epochs": {"int": [1, 3], "categorical": [2]}}), stage="tune"
    ),
    Case(
        "space low above high",
        "train.optimizer.lr",
        space({"train.optimizer.lr": {"float": [0.1, 0.01]}}),
        stage="tune",
    ),
    Case("space log from zero", "train.optimizer.lr", space({"train.optimizer.lr": {"float": [0, 1], "log": True}})),
    Case(
        "space empty choices", "train.model.filters", space({"train.model.filters": {"categorical": []}}), stage="tune"
    ),
    Case("space empty", "tune.space", put("tune.space", {}), stage="tune"),
    Case("fixed and searched", "tune.fixed", put("tune.fixed", {"train.optimizer.lr": 0.01}), stage="tune"),
    Case(
        "fixed epochs negative",
        "tune.fixed.train.max_epochs",
        put("tune.fixed", {"train.max_epochs": -3}),
        stage="tune",
    ),
    Case(
        "fixed int as text", "tune.fixed.train.batch_size", put("tune.fixed", {"train.batch_size": "64"}), stage="tune"
    ),
    Case(
        "choice negative filters",
        "tune.space.train.model.filters",
        space({"train.model.filters": {"categorical": [-8, 16]}}),
        stage="tune",
    ),
    Case(
        "choice unknown model",
        "tune.space.train.model.name",
        space({"train.model.name": {"categorical": ["convnet", "vit"]}}),
        stage="tune",
    ),
    Case(
        "range end invalid",
        "tune.space.train.model.dropout",
        space({"train.model.dropout": {"float": [0.1, 1.5]}}),
        stage="tune",
    ),
    Case(
        "space the model ignores",
        "tune.space.train.model.dropout: not a key of model resnet18",
        put("train.model", RESNET18),
        stage="tune",
    ),
    Case(
        "space a sampled model ignores",
        "tune.space.train.model.dropout: not a key of model resnet18",
        space({"train.model.name": {"categorical": ["convnet", "resnet18"]}}),
        stage="tune",
    ),
    Case(
        "sampled model's key unset",
        "tune.space.train.model.name: the resnet18 trials read stem",
        put("tune.space", {"train.model.name": {"categorical": ["convnet", "resnet18"]}}),
        stage="tune",
    ),
    Case(
        "fixed key no trial model reads",
        "tune.fixed.train.model.stem: no model the trials build reads stem",
        put("tune.fixed", {"train.model.stem": "cifar"}),
        stage="tune",
    ),
    Case(
        "fixed copies train's value",
        "tune.fixed.train.max_epochs: 12 is already train.max_epochs's value",
        put("tune.fixed", {"train.max_epochs": 12}),
        stage="tune",
    ),
    Case("tune timeout infinite", "tune.timeout_s", put("tune.timeout_s", float("inf")), stage="tune"),
    Case("n_trials absurd", "tune.n_trials", put("tune.n_trials", 10**9), stage="tune"),
    Case("fixed path unknown", "train.epochs", put("tune.fixed", {"train.epochs": 3}), stage="tune"),
    # evaluate
    Case(
        "resamples too few", "evaluate.bootstrap.resamples", put("evaluate.bootstrap.resamples", 10), stage="evaluate"
    ),
    Case(
        "confidence above one",
        "evaluate.bootstrap.confidence",
        put("evaluate.bootstrap.confidence", 95),
        stage="evaluate",
    ),
    Case(
        "resamples absurd",
        "evaluate.bootstrap.resamples",
        put("evaluate.bootstrap.resamples", 10**12),
        stage="evaluate",
    ),
    Case("seeds beyond reseeding", "evaluate.seeds[0]", put("evaluate.seeds", [10**7]), stage="evaluate"),
    Case("seeds repeated", "evaluate.seeds", put("evaluate.seeds", [1, 1]), stage="evaluate"),
    Case("seeds negative", "evaluate.seeds[0]", put("evaluate.seeds", [-1]), stage="evaluate"),
    Case("fraction zero", "evaluate.learning_curve.fractions", put("evaluate.learning_curve.fractions", [0.0, 1.0])),
    Case("one fraction", "evaluate.learning_curve.fractions", put("evaluate.learning_curve.fractions", [0.5])),
    Case(
        "gallery zero", "evaluate.error_analysis.gallery", put("evaluate.error_analysis.gallery", 0), stage="evaluate"
    ),
    Case("bins one", "evaluate.error_analysis.calibration_bins", put("evaluate.error_analysis.calibration_bins", 1)),
]


def write_case(case: Case, folder: Path) -> Path:
    path = folder / "params.yaml"
    if isinstance(case.text, bytes):
        path.write_bytes(case.text)
    elif case.text is not None:
        path.write_text(case.text((REPO / "params.yaml").read_text()))
    else:
        params = copy.deepcopy(REPO_PARAMS)
        case.edit(params)
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project: a refused stage must leave it holding nothing but its params file. Without
    MLFLOW_TRACKING_URI the store would be <project>/mlflow.db, so a run started too early shows up here."""
    (tmp_path / ".dvc").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MEDMNIST_MIRROR", raising=False)
    return tmp_path


def test_the_table_covers_every_section_and_stage() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.stage for c in CASES} == set(STAGES)
    sections = {c.key.split(".")[0].split("[")[0] for c in CASES}
    assert {"seed", "data", "augment", "tracking", "baseline", "train", "tune", "evaluate"} <= sections


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_malformed_params_are_refused(case: Case, project: Path, capsys: pytest.CaptureFixture) -> None:
    params = write_case(case, project)
    started = time.perf_counter()
    code = cli.main([case.stage, "--params", str(params)])
    seconds = time.perf_counter() - started
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert case.key in err, err
    assert len(err) < 2000, f"a {len(err)}-character message"
    assert err.startswith(f"medmnist-pipeline {case.stage}: error: ") and "Traceback" not in err + out
    assert sorted(p.name for p in project.iterdir()) == [".dvc", "params.yaml"]
    assert not any((project / ".dvc").iterdir())
    if case.albumentations in WARM:  # the first refusal of each kind pays for its imports, once per process
        assert seconds < 2, f"refused in {seconds:.1f} s"
    WARM.add(case.albumentations)


WARM: set[bool] = set()

SUBPROCESS_CASES = ["seed negative", "unknown model", "space low above high", "copies negative", "gallery zero"]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_refusal_from_a_fresh_process_is_quick(name: str, project: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    params = write_case(case, project)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", case.stage, "--params", str(params)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 2 and case.key in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert sorted(p.name for p in project.iterdir()) == [".dvc", "params.yaml"]
    assert seconds < 2.5, f"{name}: refused after {seconds:.1f} s"
