"""Tuning spread over machines, against real servers: the README's "Parallel workers" recipe, run as written.

A real PostgreSQL (Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` in a temporary folder, on 127.0.0.1,
as an unprivileged user when the tests run as root) holds the Optuna study and the MLflow backend store; a real
``mlflow server`` with served artifacts is the tracking server. Three clones of a tiny project stand for three
machines: they share nothing but the two servers (each has its own copy of the data, its own ``optuna/`` and
``models/``). The ``tune`` stage runs in clone A, ``medmnist-pipeline tune --worker`` in clones B and C, and one
worker is SIGKILLed in the middle of a trial. The test checks what a user relies on: exactly ``n_trials`` trials
finished, none lost or duplicated, no configuration tried twice, the dead worker's trial FAILED and its MLflow run
ended KILLED, every trial's run on the server with its model file, ``models/tuned.ckpt`` the best trial's model as
MLflow serves it, and ``evaluate`` runs on the result.

Skips, with the reason, when PostgreSQL or psycopg (the driver) is not installed (CI installs both: ``.ci/run``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from helpers import make_npz, write_params
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.data.dataset import load_meta
from medmnist_pipeline.stages import augment, baseline, download, evaluate, train
from medmnist_pipeline.tuning.search import open_study
from medmnist_pipeline.ui import server_command, stop, wait_until_ready
from test_training import tiny, use_custom
from test_ui_browser import free_port

pytestmark = pytest.mark.multi_machine

N_TRIALS = 6
TIMEOUT_S = 420


def postgres_bin() -> Path:
    """Debian's layout (/usr/lib/postgresql/<version>/bin, newest first), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True)
    initdb = found[0] if found else shutil.which("initdb")
    if not initdb:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)")
    return Path(initdb).parent


def as_postgres_user(owned: Path) -> list[str]:
    """initdb and postgres refuse to run as root: run them as ``nobody``, owner of their folder."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
    shutil.chown(owned, "nobody")
    return [runuser, "-u", "nobody", "--"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server on 127.0.0.1 with two databases, ``optuna`` and ``mlflow``; yields the URL
    prefix ``postgresql://postgres@127.0.0.1:<port>`` (trust authentication: a test server on loopback only)."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e '.[dev]')")
    bindir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="medmnist-pg-"))  # not under pytest's root-only tmp: nobody must enter
    run_as = as_postgres_user(folder)
    data, port = folder / "data", free_port()

    def pg(*args: str) -> None:
        result = subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}{result.stderr}"

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"), "-w", "start")
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user="postgres", autocommit=True) as connection:
                connection.execute("CREATE DATABASE optuna")
                connection.execute("CREATE DATABASE mlflow")
            yield f"postgresql://postgres@127.0.0.1:{port}"
        finally:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` with the PostgreSQL backend store and served artifacts (the README's command)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(folder / "server.log", "w") as log:
        proc = subprocess.Popen(
            server_command(f"{postgres}/mlflow", "127.0.0.1", port, folder / "artifacts"),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until_ready(proc, base), (folder / "server.log").read_text()[-3000:]
        yield base
    finally:
        stop(proc)


def project_params(repo_params: dict, postgres: str) -> dict:
    params = tiny(repo_params, epochs=2)
    use_custom(params, Path("source.npz"), "binary-class", ["no", "yes"])  # relative: the same file in every clone
    params["tune"].update(
        {
            "n_trials": N_TRIALS,
            "timeout_s": None,
            "sampler": "tpe",
            "pruner": {"name": "none", "startup_trials": 1, "warmup_epochs": 0},
            "storage": f"{postgres}/optuna",
            "fixed": {"train.max_epochs": 6, "train.early_stopping_patience": 0},
            "space": {
                "train.optimizer.lr": {"float": [1e-3, 1e-2], "log": True},
                "train.model.filters": {"categorical": [4, 8]},
            },
        }
    )
    params["evaluate"].update(
        {"bootstrap": {"resamples": 100, "confidence": 0.95}, "seeds": [], "learning_curve": {"fractions": []}}
    )
    return params


def cli(clone: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", *args],
        cwd=clone,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, name: str) -> str:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{output[-5000:]}"
    return output


def wait_for(condition, what: str, procs: list[subprocess.Popen]) -> object:
    deadline = time.monotonic() + TIMEOUT_S
    while not (found := condition()):
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{' '.join(proc.args[2:])} exited {proc.returncode} before {what}:\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return found


def test_three_machines_two_servers_one_killed_worker(
    tmp_path: Path, repo_params: dict, postgres: str, tracking_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)  # every process of every "machine" (README)
    params = project_params(repo_params, postgres)
    # trials long enough (a few seconds each) that both workers join before the stage has run them all
    source = make_npz(tmp_path / "source.npz", counts=(384, 64, 32))
    clones = {name: tmp_path / f"machine-{name}" for name in "ABC"}
    for clone in clones.values():  # each machine: its own checkout and its own copy of the data, prepared there
        (clone / ".dvc").mkdir(parents=True)
        shutil.copy(source, clone / "source.npz")
        write_params(clone / "params.yaml", params)
        monkeypatch.chdir(clone)
        download.main("params.yaml")
        augment.main("params.yaml")
    monkeypatch.chdir(clones["A"])
    baseline.main("params.yaml")  # what evaluate compares the tuned model with
    train.main("params.yaml")

    # one connection for the test's own look at the study (its name depends on the prepared data and params only)
    study = open_study(load_params(clones["A"] / "params.yaml"), load_meta(clones["A"] / "data/prepared"))
    stage = cli(clones["A"], "tune")
    wait_for(lambda: "mlflow_parent_run_id" in study.user_attrs, "the stage started its study", [stage])
    workers = {name: cli(clones[name], "tune", "--worker") for name in "BC"}
    owner = {str(stage.pid): "A"} | {str(p.pid): name for name, p in workers.items()}

    def ran_by(trial: optuna.trial.FrozenTrial) -> str | None:
        return owner.get(trial.user_attrs.get("worker", "").rpartition(":")[2])

    def worker_mid_trial() -> tuple[str, optuna.trial.FrozenTrial] | None:
        """A worker training a trial, once both workers hold a trial: the survivor must have one to finish (a worker
        that started too late to get any made this test fail in CI)."""
        trials = study.get_trials()
        if {ran_by(t) for t in trials} >= set(workers):
            for trial in trials:
                name = ran_by(trial)
                if trial.state == TrialState.RUNNING and name in workers and trial.intermediate_values:
                    return name, trial  # training, past its first epoch
        assert len(trials) < N_TRIALS or any(t.state == TrialState.RUNNING for t in trials), (
            f"the stage ran every trial before both workers joined: {[(t.number, ran_by(t)) for t in trials]}"
        )
        return None

    killed, dead_trial = wait_for(worker_mid_trial, "a worker in the middle of a trial", [stage, *workers.values()])
    workers[killed].send_signal(signal.SIGKILL)
    workers[killed].wait()
    survivor = "C" if killed == "B" else "B"
    stage_output = finish(stage, "the tune stage")
    finish(workers[survivor], f"worker {survivor}")

    # The study: exactly n_trials finished, the dead one failed, none lost, duplicated, left running or repeated.
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == N_TRIALS, [(t.number, t.state.name) for t in trials]
    assert [t.number for t in trials] == list(range(len(trials)))
    assert [(t.number, t.state) for t in trials if t not in finished] == [(dead_trial.number, TrialState.FAIL)]
    assert "died" in trials[dead_trial.number].user_attrs["fail_reason"]
    ran = {ran_by(t) for t in finished}
    assert {"A", survivor} <= ran, ran  # the stage and the surviving worker both ran trials

    # The tracking server: every trial's run under the tune run, with its model file; the dead trial's run KILLED.
    client = mlflow.MlflowClient(tracking_server)
    parent = study.user_attrs["mlflow_parent_run_id"]
    for trial in finished:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
            f"checkpoint/trial-{trial.number}.ckpt"
        ]
    (dead_run,) = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.`tune.trial` = '{dead_trial.number}'"
    )
    assert dead_run.info.status == "KILLED" and "died" in dead_run.data.tags["fail_reason"]
    assert dead_run.info.end_time is not None

    # models/tuned.ckpt is the best trial's model, as the server serves it (fetched when it ran on another machine).
    best = study.best_trial
    served = mlflow.artifacts.download_artifacts(
        run_id=best.user_attrs["mlflow_run_id"],
        artifact_path=f"checkpoint/trial-{best.number}.ckpt",
        dst_path=str(tmp_path / "served"),
        tracking_uri=tracking_server,
    )
    assert (clones["A"] / "models/tuned.ckpt").read_bytes() == Path(served).read_bytes()
    expected_source = "the local copy" if ran_by(best) == "A" else f"MLflow run {best.user_attrs['mlflow_run_id']}"
    assert f"trial {best.number}'s model, from {expected_source}" in stage_output, stage_output[-3000:]
    for name, clone in clones.items():  # nothing shared: each machine holds only the model files it trained
        local = {p.name for p in clone.glob("optuna/trials/*/trial-*.ckpt")}
        assert local <= {f"trial-{t.number}.ckpt" for t in trials if ran_by(t) == name}, (name, local)

    evaluate.main("params.yaml")
    assert (clones["A"] / "reports/evaluate/report.md").is_file()

    configurations = {tuple(sorted(t.params.items())) for t in finished}
    if len(configurations) != N_TRIALS:
        raise AssertionError(f"a configuration was tried twice: {[t.params for t in finished]}")
