"""The tune stage with real Optuna storage and a real MLflow store: outputs, nested runs, resume (also after
SIGKILL), two workers on one study, a 2-process DDP trial, and failed trials that do not stop the study."""

from __future__ import annotations

import json
import signal
import socket
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
from medmnist_pipeline.config.io import validate
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import load_meta
from medmnist_pipeline.errors import ParamsError, PipelineError
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.stages import tune
from medmnist_pipeline.tracking import experiment_id
from medmnist_pipeline.tuning.search import open_study
from medmnist_pipeline.tuning.study_report import check_search_finished, fetch_trial_model
from medmnist_pipeline.tuning.workers import fail_stale_trials, heartbeat
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
    report = (workdir / "reports/tune/report.md").read_text()
    assert f"**Best: trial {metrics['best']['trial']}**" in report and "![slice](slice.png)" in report
    noise = "cannot decide" if metrics["noise"]["trials_within_se"] > 1 else "leads every other finished trial"
    assert noise in report and report.count("\n| ") == metrics["trials"]["complete"] + 1  # header + one row each

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

    # Every trial's model file is an artifact of its run; the best one reaches models/tuned.ckpt through MLflow
    # when this machine has no (or a wrong) copy of it.
    study = study_of(workdir)
    for trial in study.trials:  # (a pruned trial stopped before it had a model)
        logged = [a.path for a in mlflow.MlflowClient().list_artifacts(trial.user_attrs["mlflow_run_id"], "checkpoint")]
        assert logged == ([f"checkpoint/trial-{trial.number}.ckpt"] if trial.state == TrialState.COMPLETE else [])
    best, tuned = study.best_trial, (workdir / "models/tuned.ckpt").read_bytes()
    loaded = load_params(workdir / "params.yaml")
    assert fetch_trial_model(best, loaded, workdir / "a.ckpt").startswith("the local copy")
    cache = Path(best.user_attrs["model_path"])
    cache.write_bytes(b"not the model")
    assert fetch_trial_model(best, loaded, workdir / "b.ckpt").startswith("MLflow run")
    cache.unlink()
    assert fetch_trial_model(best, loaded, workdir / "c.ckpt").startswith("MLflow run")
    assert {(workdir / f"{n}.ckpt").read_bytes() for n in "abc"} == {tuned}


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
            "fixed": {"train.schedule.warmup_epochs": 1},
            "space": {"train.schedule.name": {"categorical": ["cosine", "onecycle"]}},
        }
    )
    write_params(workdir / "params.yaml", params)
    # the search goes on past the failure, stops once n_trials have failed, and the stage then fails: fewer than
    # n_trials finished, so DVC must not record it as done
    with pytest.raises(PipelineError, match=r"only 1 of tune.n_trials=2 trials finished \(2 failed\)"):
        tune.main("params.yaml")
    study = study_of(workdir)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 2 and {t.params["train.schedule.name"] for t in failed} == {"onecycle"}
    reason = "train.schedule.warmup_epochs: must be 0 with train.schedule.name: onecycle"
    assert all(reason in t.user_attrs["fail_reason"] for t in failed)
    runs = [
        r
        for r in mlflow.search_runs(experiment_names=[params["tracking"]["experiment"]], output_format="list")
        if r.info.status == "FAILED" and r.info.run_name.startswith("tune/trial")
    ]
    assert len(runs) == 2 and all("warmup_epochs" in r.data.tags["fail_reason"] for r in runs)

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
    wait_for(  # killed while training a trial (its MLflow run started, its epochs under way)
        lambda: (
            len(study_of(workdir).get_trials(states=(TrialState.COMPLETE,))) >= 1
            and any(t.intermediate_values for t in study_of(workdir).get_trials(states=(TrialState.RUNNING,)))
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
    (dead_run,) = mlflow.search_runs(  # the dead trial's MLflow run is ended too, not RUNNING forever
        experiment_names=[params["tracking"]["experiment"]],
        output_format="list",
        filter_string=f"tags.`tune.trial` = '{running[0]}'",
    )
    assert dead_run.info.status == "KILLED" and "died" in dead_run.data.tags["fail_reason"]
    assert not list((workdir / "optuna/trials").glob("*/trial-*/"))  # the dead trial's checkpoints are gone


def test_two_workers_share_one_study(project: tuple[Path, dict]) -> None:
    workdir, params = project
    params["tune"]["n_trials"] = 6
    params["tune"]["sampler"] = "random"  # every trial is a fresh draw: repeats can only come from shared seeds
    # trials of several seconds, so that the workers (~8 s to start) join before the stage has run all six
    params["tune"]["fixed"] = {**params["tune"]["fixed"], "train.max_epochs": 8, "train.early_stopping_patience": 0}
    params["tune"]["pruner"]["name"] = "none"
    write_params(workdir / "params.yaml", params)
    main = run_cli(workdir)
    wait_for(lambda: "mlflow_parent_run_id" in study_of(workdir).user_attrs)
    workers = [run_cli(workdir, "--worker") for _ in range(2)]  # both open the study at the same moment
    for worker in workers:
        finish(worker)
    finish(main)
    study = study_of(workdir)
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(6)), numbers  # none lost, none duplicated, no surplus
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    owners = {t.user_attrs["worker"] for t in study.trials}
    assert len(owners) >= 2, owners  # the workers ran trials
    configurations = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(configurations) == 6, configurations  # each process drew its own points
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert len(child_runs(params, parent)) == 6  # the workers' trials hang under the same parent run


@pytest.mark.slow  # ~1.5 min on the 2-core CPU
def test_a_killed_workers_trial_is_failed_and_replaced_by_the_stage(project: tuple[Path, dict]) -> None:
    """A worker SIGKILLed in the middle of a trial: the stage marks that trial failed (its worker died) and runs a
    replacement, so the study still ends with n_trials finished trials and the stage succeeds (nothing lost)."""
    workdir, params = project
    params["tune"]["n_trials"] = 3
    params["tune"]["pruner"]["name"] = "none"
    # trials long enough that the worker starts one before the main process has finished all three (with 6 epochs a
    # loaded machine let the main process finish them first, and the worker never had a trial to be killed in)
    params["tune"]["fixed"]["train.max_epochs"] = 40
    params["tune"]["fixed"]["train.early_stopping_patience"] = 0
    write_params(workdir / "params.yaml", params)
    main = run_cli(workdir)
    wait_for(lambda: "mlflow_parent_run_id" in study_of(workdir).user_attrs)
    worker = run_cli(workdir, "--worker")

    def workers_trial() -> list[int]:
        running = study_of(workdir).get_trials(states=(TrialState.RUNNING,))
        return [t.number for t in running if t.user_attrs.get("worker", "").endswith(f":{worker.pid}")]

    wait_for(lambda: workers_trial())
    (killed,) = workers_trial()
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    output = finish(main)
    assert f"marked trial(s) [{killed}] failed: their worker died" in output, output
    study = study_of(workdir)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1, states
    assert "died" in study.trials[killed].user_attrs["fail_reason"]
    assert json.loads((workdir / "reports/tune/metrics.json").read_text())


def test_stage_fails_when_fewer_than_n_trials_finished_before_the_timeout(tmp_path: Path, repo_params: dict) -> None:
    """E.g. n_trials failures stopped the search: the outputs would claim a search that did not happen, so the stage
    fails and DVC does not record it as done; a search cut by tune.timeout_s is what was asked for."""
    params = load_params(write_params(tmp_path / "params.yaml", tune_params(repo_params, n_trials=3)))
    study = optuna.create_study(direction="maximize")  # Optuna's in-memory storage
    for state in (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL):
        trial = study.ask()
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    with pytest.raises(PipelineError, match=r"only 2 of tune.n_trials=3 trials finished \(1 failed\)"):
        check_search_finished(study, params, timed_out=False)
    check_search_finished(study, params, timed_out=True)
    study.tell(study.ask(), 0.6)
    check_search_finished(study, params, timed_out=False)


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


def test_a_trial_whose_heartbeat_stopped_fails_and_its_run_ends(tmp_path: Path, repo_params: dict) -> None:
    """A worker on another machine that dies is noticed by its silent heartbeat (RDB storages): its trial is failed
    with the reason and its MLflow run ended KILLED by the next process that looks. Short intervals for the test."""
    params = load_params(write_params(tmp_path / "params.yaml", tiny(repo_params)))
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr("worker", "elsewhere:123")
    run = mlflow.MlflowClient().create_run(
        experiment_id(params), tags={"tune.study": "s", "tune.trial": str(trial.number)}
    )
    with heartbeat(study, trial):  # beats while the trial trains
        time.sleep(2.5)
        assert fail_stale_trials(study, params) == []
    time.sleep(3.5)  # the worker is gone: no beat for longer than the grace period
    assert fail_stale_trials(study, params) == [trial.number]
    assert fail_stale_trials(study, params) == []  # reported once
    (frozen,) = study.trials
    assert frozen.state == TrialState.FAIL and "elsewhere:123 stopped its heartbeat" in frozen.user_attrs["fail_reason"]
    ended = mlflow.MlflowClient().get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and "heartbeat" in ended.data.tags["fail_reason"]


def test_a_dead_trial_whose_run_lightning_already_finished_is_ended_killed(tmp_path: Path, repo_params: dict) -> None:
    """Lightning's MLFlowLogger ends a trial's run FINISHED when the fit returns, before the trial saves its model
    and reports to Optuna: a worker killed in that window leaves a FAILED trial behind a FINISHED run, which must be
    ended KILLED like a RUNNING one (CI caught the window: the SIGKILL test found such a run FINISHED)."""
    params = load_params(write_params(tmp_path / "params.yaml", tiny(repo_params)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.create_study(study_name="s")
    trial = study.ask()
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id(params), tags={"tune.study": "s", "tune.trial": str(trial.number)})
    client.set_terminated(run.info.run_id, status="FINISHED")  # what MLFlowLogger.finalize does after the fit
    assert fail_stale_trials(study, params) == [trial.number]
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "KILLED" and "died" in ended.data.tags["fail_reason"]


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


# --- trials over several architectures (train.model is a tagged union) --------------------------------------

ACROSS = {
    "train.model.name": {"categorical": ["convnet", "resnet18", "logreg"]},
    "train.model.freeze": {"categorical": ["none"]},  # a key of every model the search builds but logreg
}


def test_a_trial_of_another_architecture_keeps_only_the_keys_it_reads(tmp_path: Path, repo_params: dict) -> None:
    from medmnist_pipeline.config.params import check_trials_can_run
    from medmnist_pipeline.tuning.search import trial_train_params

    repo_params["tune"]["space"] = {
        "train.model.name": {"categorical": ["convnet", "resnet18"]},
        "train.model.backbone_lr_factor": {"float": [0.1, 1.0]},  # both read it
    }
    repo_params["tune"]["fixed"] = {"train.model.stem": "imagenet"}  # what the resnet18 trials read
    params = load_params(write_params(tmp_path / "params.yaml", repo_params))
    check_trials_can_run(params)
    resnet = trial_train_params(params, {"train.model.name": "resnet18", "train.model.backbone_lr_factor": 0.5})
    assert resnet.model.model_dump() == {
        "name": "resnet18",
        "init_from": None,  # train's convnet holds the transfer keys too
        "freeze": "none",
        "backbone_lr_factor": 0.5,
        "feature_cache": False,
        "stem": "imagenet",
    }
    convnet = trial_train_params(params, {"train.model.name": "convnet", "train.model.backbone_lr_factor": 0.5})
    assert convnet.model == params.train.model.model_copy(update={"backbone_lr_factor": 0.5})  # no stem
    assert resnet.optimizer == convnet.optimizer == params.train.optimizer  # the rest is train's


@pytest.mark.parametrize(
    ("fixed", "space", "message"),
    [
        ({}, ACROSS, "tune.space.train.model.freeze: not a key of model logreg (its keys: name), which the trials"),
        (
            {},
            {"train.model.name": {"categorical": ["convnet", "resnet18"]}},
            "tune.space.train.model.name: the resnet18 trials read stem, which train.model (a convnet) does not "
            "hold; set train.model.stem in tune.fixed",
        ),
        (
            {"train.model.name": "resnet50"},
            {"train.optimizer.lr": {"float": [1e-3, 1e-2]}},
            "tune.fixed.train.model.name: the resnet50 trials read stem",
        ),
        ({"train.model.pretrained": "none"}, {"train.optimizer.lr": {"float": [1e-3, 1e-2]}}, "no model the trials"),
        ({"train.max_epochs": 12}, {"train.optimizer.lr": {"float": [1e-3, 1e-2]}}, "12 is already train.max_"),
        ({"train.model.filters": 16}, {"train.optimizer.lr": {"float": [1e-3, 1e-2]}}, "16 is already train.model"),
    ],
)
def test_the_tune_stage_refuses_a_search_its_models_cannot_take(
    tmp_path: Path, repo_params: dict, fixed: dict, space: dict, message: str
) -> None:
    """Searched model keys must be read by every model the trials build, fixed ones by at least one, and each of
    them must get every key it reads; tune.fixed holds what the trials change, not a copy of train's value."""
    from medmnist_pipeline.config.params import check_trials_can_run

    repo_params["tune"].update(fixed=fixed, space=space)
    params = load_params(write_params(tmp_path / "params.yaml", repo_params))  # fine for the other stages
    with pytest.raises(ParamsError) as error:
        check_trials_can_run(params)
    assert message in str(error.value)


def test_a_searched_name_with_only_keys_every_model_reads_starts_from_train(tmp_path: Path, repo_params: dict) -> None:
    from medmnist_pipeline.config.params import check_trials_can_run
    from medmnist_pipeline.tuning.search import enqueue_train_values, trial_train_params

    repo_params["tune"]["space"] = {"train.model.name": {"categorical": ["logreg", "convnet"]}}
    params = load_params(write_params(tmp_path / "params.yaml", repo_params))
    check_trials_can_run(params)
    assert trial_train_params(params, {"train.model.name": "logreg"}).model.model_dump() == {"name": "logreg"}
    study = optuna.create_study(direction="maximize")
    assert enqueue_train_values(study, params) == {"train.model.name": "convnet"}  # trial 0: the cnn itself
    # a searched key train's own model (the convnet) lacks: no trial 0 from train's values
    repo_params["tune"]["space"] = {
        "train.model.name": {"categorical": ["resnet18", "resnet50"]},
        "train.model.stem": {"categorical": ["cifar", "imagenet"]},
    }
    params = load_params(write_params(tmp_path / "params.yaml", repo_params))
    check_trials_can_run(params)
    assert enqueue_train_values(optuna.create_study(direction="maximize"), params) is None
    trial = trial_train_params(params, {"train.model.name": "resnet50", "train.model.stem": "imagenet"})
    assert (trial.model.name, trial.model.stem, trial.model.freeze) == ("resnet50", "imagenet", "none")
