"""SIGTERM and SIGINT on real stage processes (issue 20, point 2): one line naming the epoch and the checkpoint, exit
status 143 / 130, the MLflow run KILLED, and a rerun that resumes after the last finished epoch, logging no epoch
twice."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from optuna.trial import TrialState

from helpers import make_npz, write_params
from medmnist_pipeline.stages import train
from medmnist_pipeline.training.checkpoints import finished_epoch
from test_training import prepare, tiny, use_custom
from test_tune import child_runs, study_of, tune_params


def start_cli(workdir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_epoch(workdir: Path, pattern: str, epoch: int, process: subprocess.Popen, timeout_s: float = 300) -> None:
    """Until a checkpoint matching ``pattern`` holds ``epoch`` (checkpoints are written atomically: whole or absent)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert process.poll() is None, process.communicate()
        for path in workdir.glob(pattern):
            done = finished_epoch(path)
            if done is not None and done >= epoch:
                return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout_s} s")


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)],  # (the suite's 15 minutes)
    ids=["TERM", "INT"],
)
# (~60 s each on the loaded 2-core CPU)
def test_signal_to_train_ends_with_one_line_and_the_rerun_resumes_after_the_last_epoch(
    workdir: Path, repo_params: dict, capsys: pytest.CaptureFixture, signum: int, status: int
) -> None:
    epochs = 6
    params = tiny(repo_params, epochs=epochs)
    use_custom(params, make_npz(workdir / "data.npz", counts=(600, 100, 8)), "binary-class", ["no", "yes"])
    prepare(workdir, params)
    process = start_cli(workdir, "train")
    wait_for_epoch(workdir, "checkpoints/train-*/last.ckpt", 1, process)
    sent = time.perf_counter()
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    stop_s = time.perf_counter() - sent
    assert process.returncode == status, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    (last,) = workdir.glob("checkpoints/train-*/last.ckpt")  # kept
    done = finished_epoch(last)
    line = err.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(
        rf"medmnist-pipeline train: interrupted by {name} at epoch \d+; rerun resumes from "
        rf"{re.escape(str(last.relative_to(workdir)))} \(epoch {done} done\)",
        line,
    ), err
    (id_file,) = workdir.glob("checkpoints/train-*.mlflow_run_id")
    run_id = id_file.read_text().strip()
    assert mlflow.get_run(run_id).info.status == "KILLED"
    print(f"stopped {stop_s:.1f} s after {name}", file=sys.__stderr__)  # (with -s: the README's measured time)

    capsys.readouterr()
    train.main("params.yaml")
    out = capsys.readouterr().out
    assert f"resuming the interrupted run from {last}" in out
    run = mlflow.get_run(run_id)
    assert run.info.status == "FINISHED"
    trained = json.loads((workdir / "reports/train/metrics.json").read_text())["epochs"]  # (early stopping)
    assert trained > done + 1
    for metric in ("val/auc", "train/loss"):  # every epoch once: the rerun began at done + 1
        steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, metric)]
        assert len(steps) == len(set(steps)) == trained, (metric, steps)


def start_train_twice_test_params(workdir: Path, repo_params: dict, epochs: int) -> None:
    params = tiny(repo_params, epochs=epochs)
    params["train"]["early_stopping_patience"] = 0
    use_custom(params, make_npz(workdir / "data.npz", counts=(600, 100, 8)), "binary-class", ["no", "yes"])
    prepare(workdir, params)


# (~60 s)
@pytest.mark.slow  # ~60 s: two training processes
def test_a_second_train_on_the_same_run_folder_is_refused_and_the_first_goes_on(
    workdir: Path, repo_params: dict
) -> None:
    # long enough that the first is still training when the second (which checks after its imports and data
    # loading, 25-30 s) gets there on an idle machine too; it is stopped once the second has been refused
    start_train_twice_test_params(workdir, repo_params, epochs=400)
    first = start_cli(workdir, "train")
    wait_for_epoch(workdir, "checkpoints/train-*/last.ckpt", 0, first)
    started = time.perf_counter()
    second = start_cli(workdir, "train")
    _, err = second.communicate(timeout=300)
    refused_s = time.perf_counter() - started
    assert second.returncode == 1, err
    (folder,) = workdir.glob("checkpoints/train-*/")
    (line,) = err.strip().splitlines()
    assert re.fullmatch(
        rf"medmnist-pipeline train: error: checkpoints/{folder.name} is in use by [^:]+:{first.pid}, still running: "
        r"wait for it to end or stop it; two runs on one checkpoint folder would overwrite each other",
        line,
    ), err
    assert first.poll() is None  # unaffected: still training
    print(f"second train refused in {refused_s:.1f} s", file=sys.__stderr__)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err  # it went on until stopped, and stopped as any stage does
    assert "interrupted by SIGTERM" in err.strip().splitlines()[-1]
    assert list(workdir.glob("checkpoints/train-*/last.ckpt"))  # the first's checkpoint, for its rerun


WRAPPER = """
import os, subprocess, sys, time
# stands in for `dvc repro`: starts the stage with DVC_STAGE set, as DVC does, and waits for it
child = subprocess.Popen([sys.executable, "-m", "medmnist_pipeline", "train"], stdout=subprocess.DEVNULL,
                         stderr=open("stage.err", "w"), env={**os.environ, "DVC_STAGE": "train"})
print(child.pid, flush=True)
child.wait()
"""


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # (a zombie: ended)
    except FileNotFoundError:
        return True


# (~40 s)
@pytest.mark.slow  # a training process under a stand-in for dvc (the suite's 15 minutes)
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_stage_process_stops_when_its_parent_dies(workdir: Path, repo_params: dict) -> None:
    start_train_twice_test_params(workdir, repo_params, epochs=30)
    wrapper = subprocess.Popen([sys.executable, "-c", WRAPPER], cwd=workdir, stdout=subprocess.PIPE, text=True)
    stage = int(wrapper.stdout.readline())
    wait_for_epoch(workdir, "checkpoints/train-*/last.ckpt", 0, wrapper)
    wrapper.send_signal(signal.SIGTERM)  # what `kill <dvc pid>` does to dvc: it dies, its stage would train on
    wrapper.wait()
    killed = time.perf_counter()
    while not gone(stage) and time.perf_counter() - killed < 60:
        time.sleep(0.1)
    stop_s = time.perf_counter() - killed
    assert gone(stage), "the stage outlived its parent by 60 s"
    last = (workdir / "stage.err").read_text().rstrip("\n").splitlines()[-1]
    assert last.startswith("medmnist-pipeline train: interrupted by SIGTERM at epoch "), last
    (id_file,) = workdir.glob("checkpoints/train-*.mlflow_run_id")
    assert mlflow.get_run(id_file.read_text().strip()).info.status == "KILLED"
    print(f"stage stopped {stop_s:.1f} s after its parent died", file=sys.__stderr__)


# (~20 s)
def test_sigterm_to_tune_ends_the_stage_run_and_the_running_trial_killed(workdir: Path, repo_params: dict) -> None:
    params = tune_params(repo_params)
    use_custom(params, make_npz(workdir / "data.npz", counts=(96, 48, 8)), "binary-class", ["no", "yes"])
    (workdir / ".dvc").mkdir()  # the project root (the study journal lives there)
    prepare(workdir, params)
    params["tune"]["n_trials"] = 3
    params["tune"]["pruner"]["name"] = "none"
    params["tune"]["fixed"]["train.max_epochs"] = 6
    write_params(workdir / "params.yaml", params)
    process = start_cli(workdir, "tune")
    wait_for_epoch(workdir, "optuna/trials/*/trial-*/last.ckpt", 1, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err
    line = err.rstrip("\n").splitlines()[-1]
    match = re.fullmatch(
        r"medmnist-pipeline tune: interrupted by SIGTERM in trial (\d+) at epoch \d+; "
        r"a rerun continues the study with a new trial",
        line,
    )
    assert match, err
    trial = int(match[1])
    runs = mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]], output_format="list", filter_string="tags.stage = 'tune'"
    )
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "KILLED"
    statuses = {int(r.data.tags["tune.trial"]): r.info.status for r in child_runs(params, parent.info.run_id)}
    assert statuses[trial] == "KILLED"
    assert all(status == "FINISHED" for number, status in statuses.items() if number != trial)
    study = study_of(workdir)
    assert study.trials[trial].state == TrialState.FAIL
    assert study.trials[trial].user_attrs["fail_reason"] == "interrupted by SIGTERM"
