"""The real pipeline through real DVC in a temporary git repository: `dvc repro`, a no-op second `dvc repro`,
and `dvc exp run --temp`, whose runs must land in the project's own MLflow store."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from helpers import REPO, shared_file, write_params

pytestmark = pytest.mark.e2e


def sh(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def new_project(root: Path, params: dict) -> tuple[Path, dict[str, str]]:
    """A fresh clone-like project: the repo's dvc.yaml and sources, tiny params, git + dvc initialised."""
    project = root / "project"
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", project / "dvc.yaml")
    shutil.copy(REPO / ".gitignore", project / ".gitignore")
    write_params(project / "params.yaml", params)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's default store
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MEDMNIST_MIRROR"] = str(shared_file("breastmnist.npz").parent)
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", cwd=project, env=env)
    sh("dvc", "init", "-q", cwd=project, env=env)
    sh("dvc", "config", "core.analytics", "false", cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "init", cwd=project, env=env)
    return project, env


def tracked_runs(project: Path) -> list:
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    try:
        return mlflow.search_runs(search_all_experiments=True, output_format="list")
    finally:
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])


STAGES = ["download", "augment", "baseline", "train", "tune", "evaluate"]

# Loaded by every Python process DVC starts (PYTHONPATH): records which stage opens a file of the test split.
SPY = """
import os, sys
def _spy(event, args):
    if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        name = os.fsdecode(args[0])
        if os.path.basename(name).startswith("test_") and "prepared" in name and \\
                os.path.basename(sys.argv[0]) == "medmnist-pipeline":  # not DVC hashing its outputs
            with open(os.environ["TEST_SPLIT_LOG"], "a") as log:
                log.write(" ".join(sys.argv[1:2]) + "\\n")
sys.addaudithook(_spy)
"""


def tiny_pipeline(params: dict) -> dict:
    """Every stage on BreastMNIST-28 (546 training images) in seconds."""
    params["data"]["flag"] = "breastmnist"
    params["augment"]["copies"] = 1
    for section in ("baseline", "train"):
        params[section].update({"max_epochs": 2, "early_stopping_patience": 0})
    params["train"]["model"].update({"filters": 8, "blocks": 2, "fc_width": 16})
    params["tune"].update(
        {"n_trials": 2, "timeout_s": None, "fixed": {}}  # trials train as train does (2 epochs, no early stopping)
    )
    params["evaluate"].update(
        {
            "bootstrap": {"resamples": 200, "confidence": 0.95},
            "seeds": [],
            "learning_curve": {"fractions": [0.5, 1.0]},
            "robustness": {"corruptions": ["speckle_noise", "brightness_down"], "severities": [1, 5]},
        }
    )
    return params


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """One tiny project through a first `dvc repro` of all six stages, shared by the walkthrough below (in order)."""
    import copy

    import yaml

    tmp = tmp_path_factory.mktemp("pipeline")
    params = tiny_pipeline(copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text())))
    project, env = new_project(tmp, params)
    spy = tmp / "spy"
    spy.mkdir()
    (spy / "sitecustomize.py").write_text(SPY)
    log = tmp / "test_split_opens.log"
    pythonpath = os.pathsep.join(filter(None, [str(spy), env.get("PYTHONPATH")]))  # keep a caller's source path
    first = sh("dvc", "repro", cwd=project, env=env | {"PYTHONPATH": pythonpath, "TEST_SPLIT_LOG": str(log)})
    (project / "first_repro.log").write_text(first.stdout)
    return project, env, log


def ran(output: str) -> list[str]:
    return [stage for stage in STAGES if f"Running stage '{stage}'" in output]


def set_param(project: Path, env: dict[str, str], key: str, value: str) -> None:
    sh(
        sys.executable,
        "-c",
        "import sys, yaml; p = yaml.safe_load(open('params.yaml')); section, *path, leaf = "
        "sys.argv[1].split('.'); d = p[section]\nfor k in path: d = d[k]\nd[leaf] = yaml.safe_load(sys.argv[2]); "
        "yaml.safe_dump(p, open('params.yaml', 'w'), sort_keys=False)",
        key,
        value,
        cwd=project,
        env=env,
    )


def commit(project: Path, env: dict[str, str], message: str) -> None:
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", message, cwd=project, env=env)


def test_first_repro_runs_every_stage_and_only_evaluate_reads_test(pipeline) -> None:
    project, env, log = pipeline
    assert ran((project / "first_repro.log").read_text()) == STAGES
    for output in (
        "data/raw/breastmnist.npz",
        "data/augmented/train_images.npy",
        "reports/augment/preview.png",
        "models/baseline.ckpt",
        "models/cnn.ckpt",
        "models/tuned.ckpt",
        "reports/tune/trials.csv",
        "reports/evaluate/metrics.json",
        "reports/evaluate/report.md",
        "reports/evaluate/size_curve.png",
    ):
        assert (project / output).is_file(), output
    runs = tracked_runs(project)
    assert {r.data.tags["stage"] for r in runs} == set(STAGES)
    assert all(Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(project / "mlruns") for r in runs)
    # Only download (which writes the split) and evaluate ever open test_images.npy / test_labels.npy.
    assert set(log.read_text().split()) == {"download", "evaluate"}


def test_nothing_changed_nothing_runs(pipeline) -> None:
    project, env, _ = pipeline
    count = len(tracked_runs(project))
    assert "Data and pipelines are up to date." in sh("dvc", "repro", cwd=project, env=env).stdout
    assert len(tracked_runs(project)) == count
    commit(project, env, "pipeline ran")


def test_a_params_edit_reruns_only_the_stages_that_read_it(pipeline) -> None:
    project, env, _ = pipeline
    set_param(project, env, "data.flag", "pneumoniamnist")
    # --dry lists the stages whose own inputs changed: download, whose new outputs then re-run the rest
    assert ran(sh("dvc", "repro", "--dry", cwd=project, env=env).stdout)[0] == "download"
    sh("git", "checkout", "params.yaml", cwd=project, env=env)

    set_param(project, env, "tune.n_trials", "3")
    stages = ran(sh("dvc", "repro", cwd=project, env=env).stdout)
    assert stages[0] == "tune" and set(stages) <= {"tune", "evaluate"}
    commit(project, env, "three trials")


def test_experiments_compare_side_by_side(pipeline) -> None:
    project, env, _ = pipeline
    result = sh("dvc", "exp", "run", "-S", "train.optimizer.lr=0.003", cwd=project, env=env)
    assert ran(result.stdout)[0] == "train" and "baseline" not in ran(result.stdout)
    rows = list(csv.DictReader(io.StringIO(sh("dvc", "exp", "show", "--csv", cwd=project, env=env).stdout)))
    assert {"0.002", "0.003"} <= {row["train.optimizer.lr"] for row in rows}, rows
    assert all(row["tuned.test.auc"] not in ("", "-") for row in rows), rows  # test metrics side by side
    runs = tracked_runs(project)
    (exp_train,) = [r for r in runs if r.data.tags.get("dvc.exp_name") and r.data.tags["stage"] == "train"]
    assert exp_train.data.params["train.optimizer.lr"] == "0.003"

    out = project.parent / "plots_diff"
    sh("dvc", "plots", "diff", "HEAD", "-o", str(out), cwd=project, env=env)
    pngs = list((out / "static").glob("*.png"))
    assert any("confusion" in p.name for p in pngs) and any("curves" in p.name for p in pngs), pngs
    sh("git", "checkout", "--", ".", cwd=project, env=env)  # back to the committed experiment
    sh("dvc", "checkout", "--force", cwd=project, env=env)


def test_queued_experiments_land_in_the_project_store(pipeline) -> None:
    project, env, _ = pipeline
    before = len(tracked_runs(project))
    for resamples in ("300", "400"):
        sh("dvc", "exp", "run", "--queue", "-S", f"evaluate.bootstrap.resamples={resamples}", cwd=project, env=env)
    sh("dvc", "queue", "start", cwd=project, env=env)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = sh("dvc", "queue", "status", cwd=project, env=env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    runs = tracked_runs(project)
    evaluate_runs = [
        r
        for r in runs
        if r.data.tags["stage"] == "evaluate" and r.data.params.get("evaluate.bootstrap.resamples") in ("300", "400")
    ]
    assert len(evaluate_runs) == 2 and len(runs) > before
    assert all(r.data.tags.get("dvc.exp_name") for r in evaluate_runs)
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing stranded in the temp copies


def test_a_dvc_remote_restores_everything(pipeline) -> None:
    project, env, _ = pipeline
    sh("git", "checkout", "--", ".", cwd=project, env=env)
    sh("dvc", "checkout", cwd=project, env=env)
    remote = project.parent / "remote"
    sh("dvc", "remote", "add", "-d", "shared", str(remote), cwd=project, env=env)
    sh("dvc", "push", cwd=project, env=env)
    for path in ("data", "models", ".dvc/cache"):
        shutil.rmtree(project / path)
    sh("dvc", "pull", cwd=project, env=env)
    assert (project / "models/tuned.ckpt").is_file() and (project / "data/prepared/train_images.npy").is_file()
    assert "Data and pipelines are up to date." in sh("dvc", "repro", cwd=project, env=env).stdout
