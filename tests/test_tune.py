"""The tune stage with real Optuna storage and a real MLflow store: outputs, nested runs, resume (also after
SIGKILL), two workers on one study, a 2-process DDP trial, and failed trials that do not stop the study."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from helpers import make_npz, params_error, write_params
from medmnist_pipeline.config import TrainParams, load_params
from medmnist_pipeline.config_io import validate
from medmnist_pipeline.data import load_meta
from medmnist_pipeline.errors import ParamsError, PipelineError
from medmnist_pipeline.modelfile import ModelFile
from medmnist_pipeline.stages import tune
from medmnist_pipeline.tuning import open_study
from test_training import prepare, tiny, use_custom


def tune_params(params: dict[str, Any], n_trials: int = 4, epochs: int = 3) -> dict[str, Any]:
    params = tiny(params)
    params["tune"].update(
        {
            "n_trials": n_trials,
            "timeout_s": None,
            "pruner": {"name": "median", "startup_trials": 1, "warmup_epochs": 0},
            "fixed": {"train.max_epochs": epochs, "train.early_stopping_patience": 0},
            "space": {
                "train.optimizer.lr": {"float": [1e-3, 1e-2], "log": True},
                "train.model.filters": {"categorical": [8, 16]},
            },
        }
    )
    return params


@pytest.fixture
def project(workdir: Path, repo_params: dict) -> tuple[Path, dict]:
    source = make_npz(workdir / "data.npz", counts=(96, 48, 8))
    params = tune_params(repo_params)
    use_custom(params, source, "binary-class", ["no", "yes"])
    (workdir / ".dvc").mkdir()  # the project root (the study journal lives there)
    prepare(workdir, params)
    return workdir, params


def study_of(workdir: Path) -> optuna.Study:
    return open_study(load_params(workdir / "params.yaml"), load_meta(workdir / "data/prepared"))


def child_runs(params: dict, parent_id: str) -> list:
    return mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]],
        output_format="list",
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
    )


def test_tune_writes_outputs_and_nests_trial_runs(project: tuple[Path, dict]) -> None:
    workdir, params = project
    tune.main("params.yaml")

    metrics = json.loads((workdir / "reports/tune/metrics.json").read_text())
    assert sum(metrics["trials"].values()) == 4 and metrics["trials"]["complete"] >= 1
    trials = pd.read_csv(workdir / "reports/tune/trials.csv")
    assert list(trials["number"]) == [0, 1, 2, 3]
    assert {"state", "value", "duration", "train.optimizer.lr", "train.model.filters"} <= set(trials.columns)
    best = yaml.safe_load((workdir / "reports/tune/best_params.yaml").read_text())["train"]
    best_section = validate(TrainParams, best, source="best_params.yaml")
    assert best_section.max_epochs == 3 and best_section.model.filters in (8, 16)
    assert ModelFile.load(workdir / "models/tuned.ckpt").model.filters == best["model"]["filters"]
    for plot in ("optimization_history", "parallel_coordinate", "slice"):
        assert (workdir / f"reports/tune/{plot}.png").stat().st_size > 1000

    (parent,) = mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]],
        output_format="list",
        filter_string="tags.stage = 'tune' and attributes.run_name = 'tune'",
    )
    assert parent.info.status == "FINISHED" and parent.data.metrics["best/value"] == metrics["best"]["val/auc"]
    children = child_runs(params, parent.info.run_id)
    assert len(children) == 4
    state_by_trial = dict(zip(trials["number"], trials["state"], strict=True))
    for child in children:
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[state_by_trial[int(child.data.tags["tune.trial"])]]
        assert child.info.status == expected
        assert "train.optimizer.lr" in child.data.params
    assert any(c.data.metrics.get("val/auc") is not None for c in children)  # per-epoch metrics in each trial


def test_rerun_resumes_the_same_study_and_a_changed_search_starts_a_new_one(project: tuple[Path, dict]) -> None:
    workdir, params = project
    params["tune"]["n_trials"] = 2
    write_params(workdir / "params.yaml", params)
    tune.main("params.yaml")
    first = study_of(workdir)
    before = [(t.number, t.value) for t in first.trials]
    params["tune"]["n_trials"] = 3  # not part of the study's identity: the same study continues
    write_params(workdir / "params.yaml", params)
    tune.main("params.yaml")
    again = study_of(workdir)
    assert again.study_name == first.study_name and len(again.trials) == 3
    assert [(t.number, t.value) for t in again.trials[:2]] == before
    params["tune"]["space"]["train.model.filters"] = {"categorical": [8, 12]}
    write_params(workdir / "params.yaml", params)
    assert study_of(workdir).study_name != first.study_name


def test_failed_trials_are_recorded_and_the_study_goes_on(project: tuple[Path, dict]) -> None:
    workdir, params = project
    params["tune"].update(
        {
            "sampler": "grid",
            "n_trials": 2,
            "fixed": {"train.max_epochs": 2, "train.schedule.warmup_epochs": 1},
            "space": {"train.schedule.name": {"categorical": ["cosine", "onecycle"]}},
        }
    )
    write_params(workdir / "params.yaml", params)
    tune.main("params.yaml")
    trials = pd.read_csv(workdir / "reports/tune/trials.csv")
    failed = trials[trials["state"] == "FAIL"]
    assert len(failed) == 1 and failed["train.schedule.name"].item() == "onecycle"
    assert "train.schedule.warmup_epochs: must be 0 with train.schedule.name: onecycle" in failed["fail_reason"].item()
    (run,) = [
        r
        for r in mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]], output_format="list")
        if r.info.status == "FAILED"
    ]
    assert "warmup_epochs" in run.data.tags["fail_reason"]

    params["tune"]["space"] = {"train.schedule.name": {"categorical": ["onecycle"]}}  # nothing can complete
    write_params(workdir / "params.yaml", params)
    with pytest.raises(PipelineError, match="no tuning trial completed"):
        tune.main("params.yaml")


def run_cli(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", "tune", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def wait_for(condition, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


def test_sigkill_loses_no_completed_trial(project: tuple[Path, dict]) -> None:
    workdir, params = project
    params["tune"]["n_trials"] = 4
    params["tune"]["pruner"]["name"] = "none"
    params["tune"]["fixed"]["train.max_epochs"] = 6
    write_params(workdir / "params.yaml", params)
    process = run_cli(workdir)
    wait_for(
        lambda: (
            len(study_of(workdir).get_trials(states=(TrialState.COMPLETE,))) >= 1
            and study_of(workdir).get_trials(states=(TrialState.RUNNING,))
        )
    )
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {t.number: t.value for t in study_of(workdir).get_trials(states=(TrialState.COMPLETE,))}
    running = [t.number for t in study_of(workdir).get_trials(states=(TrialState.RUNNING,))]
    assert before and running

    output = finish(run_cli(workdir))
    assert f"marked trial(s) {running} failed" in output
    study = study_of(workdir)
    assert {t.number: t.value for t in study.trials if t.number in before} == before
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 4
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == running
    assert "died" in study.trials[running[0]].user_attrs["fail_reason"]


def test_two_workers_share_one_study(project: tuple[Path, dict]) -> None:
    workdir, params = project
    params["tune"]["n_trials"] = 6
    write_params(workdir / "params.yaml", params)
    main = run_cli(workdir)
    wait_for(lambda: "mlflow_parent_run_id" in study_of(workdir).user_attrs)
    worker = run_cli(workdir, "--worker")
    finish(worker)
    finish(main)
    study = study_of(workdir)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(6)), numbers  # none lost, none duplicated, no surplus
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2, workers  # both processes ran trials
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert len(child_runs(params, parent)) == 6  # the worker's trials hang under the same parent run


def test_a_two_process_ddp_trial(project: tuple[Path, dict], tmp_path: Path) -> None:
    workdir, params = project
    params["tune"].update({"n_trials": 1, "storage": f"sqlite:///{tmp_path / 'optuna.db'}"})
    params["tune"]["fixed"].update(
        {"train.trainer.devices": 2, "train.trainer.strategy": "ddp_fork", "train.trainer.deterministic": False}
    )
    write_params(workdir / "params.yaml", params)
    tune.main("params.yaml")
    (trial,) = study_of(workdir).trials
    assert trial.state == TrialState.COMPLETE and len(trial.intermediate_values) == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"space": {"train.optimizer.lrr": {"float": [0.1, 0.2]}}}, "no key 'lrr' there (allowed: name, lr,"),
        ({"space": {"train.optimizer": {"float": [0.1, 0.2]}}}, "names a whole section"),
        ({"space": {"optimizer.lr": {"float": [0.1, 0.2]}}}, "must be a path in the train section"),
        ({"space": {"train.optimizer.lr": {"float": [0.2, 0.1]}}}, "low must be below high"),
        ({"space": {"train.optimizer.lr": {"float": [0.0, 0.1], "log": True}}}, "log: true needs"),
        ({"space": {"train.optimizer.lr": {"float": [0.1, 0.2], "int": [1, 2]}}}, "give exactly one of"),
        ({"sampler": "grid"}, "tune.sampler: grid needs categorical dimensions only"),
        ({"direction": "minimize"}, "tune.direction: val/auc should be maximized"),
    ],
)
def test_bad_tune_params(tmp_path: Path, repo_params: dict, change: dict, message: str) -> None:
    repo_params["tune"].update(change)
    error = params_error(tmp_path / "params.yaml", repo_params)
    assert message in error and "tune." in error


@pytest.mark.parametrize(
    ("fixed", "message"),
    [
        ({"train.trainer.devices": 2, "train.trainer.strategy": "ddp"}, "trials cannot use train.trainer.strategy ddp"),
        ({"train.trainer.devices": 2, "train.trainer.strategy": "ddp_fork"}, "need an RDB storage"),
    ],
)
def test_multi_device_trials_are_checked_by_the_tune_stage(
    project: tuple[Path, dict], fixed: dict, message: str
) -> None:
    workdir, params = project
    params["tune"]["fixed"].update(fixed)
    write_params(workdir / "params.yaml", params)
    load_params(workdir / "params.yaml")  # fine for the other stages: train itself may use DDP
    with pytest.raises(ParamsError, match=message):
        tune.main("params.yaml")
    assert not (workdir / "reports" / "tune").exists()
