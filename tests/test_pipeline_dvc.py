"""The real pipeline through real DVC in a temporary git repository: `dvc repro`, a no-op second `dvc repro`,
and `dvc exp run --temp`, whose runs must land in the project's own MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_repro_noop_and_temp_experiment(tmp_path: Path, repo_params: dict) -> None:
    repo_params["data"]["flag"] = "breastmnist"
    repo_params["augment"]["copies"] = 1
    project, env = new_project(tmp_path, repo_params)

    first = sh("dvc", "repro", cwd=project, env=env)
    assert "Running stage 'download'" in first.stdout and "Running stage 'augment'" in first.stdout
    for output in ("data/raw/breastmnist.npz", "data/prepared/train_images.npy", "data/augmented/train_images.npy",
                   "reports/data/summary.json", "reports/data/samples.png", "reports/augment/preview.png"):
        assert (project / output).is_file(), output
    runs = tracked_runs(project)
    assert sorted(r.data.tags["stage"] for r in runs) == ["augment", "download"]
    assert all(Path(r.info.artifact_uri.removeprefix("file://")).is_relative_to(project / "mlruns") for r in runs)

    second = sh("dvc", "repro", cwd=project, env=env)
    assert "Data and pipelines are up to date." in second.stdout
    assert len(tracked_runs(project)) == 2

    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "pipeline ran", cwd=project, env=env)
    sh("dvc", "exp", "run", "--temp", "-S", "augment.copies=2", cwd=project, env=env)
    runs = tracked_runs(project)
    (exp_run,) = [r for r in runs if r.data.tags.get("dvc.exp_name")]
    assert exp_run.data.tags["stage"] == "augment" and exp_run.data.params["augment.copies"] == "2"
    assert Path(exp_run.info.artifact_uri.removeprefix("file://")).is_relative_to(project / "mlruns")
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))  # nothing stranded in the temp copy
