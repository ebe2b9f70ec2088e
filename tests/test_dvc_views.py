"""`dvc exp show` stays readable: real DVC on a git project holding the repository's dvc.yaml, params.yaml and its
committed reports (no stage runs), and the exact command the README documents."""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

WIDTH = 120


def sh(*args: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if not (REPO / "reports" / "evaluate" / "metrics.json").is_file():
        pytest.skip("the committed reports are not in this checkout")
    project = tmp_path_factory.mktemp("views")
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(REPO / name, project / name)
    shutil.copytree(REPO / "reports", project / "reports")
    env = {**os.environ, "COLUMNS": str(WIDTH), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh("git", "init", "-q", "-b", "main", cwd=project, env=env)
    sh("dvc", "init", "-q", cwd=project, env=env)
    sh("git", "add", "-A", cwd=project, env=env)
    sh("git", "commit", "-qm", "results", cwd=project, env=env)
    # a second revision with a long name, as an experiment's row would have: the table must still fit
    sh("git", "checkout", "-qb", "lr-doubled-with-adamw-7", cwd=project, env=env)
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(re.sub(r"(\n    lr: )[0-9.e-]+", r"\g<1>0.004", params, count=1))
    sh("git", "commit", "-qam", "lr", cwd=project, env=env)
    return project, env


def documented_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- exp-show -->", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    return shlex.split(block.strip())


def test_documented_exp_show_puts_params_beside_test_metrics_in_120_columns(project) -> None:
    folder, env = project
    command = documented_command()
    assert command[:3] == ["dvc", "exp", "show"]
    table = sh(*command, "--no-pager", "-a", cwd=folder, env=env)
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= WIDTH, table
    header = lines[1].split()
    assert header == [
        "Experiment",
        "cnn.test.auc",
        "tuned.test.acc",
        "tuned.test.auc",
        "train.model.name",
        "train.optimizer.lr",
    ], table
    assert "…" not in table
    assert any("0.004" in line for line in lines) and any("0.002" in line for line in lines)


def test_metrics_hold_what_people_compare_test_metrics_first(project) -> None:
    folder, env = project
    rows = list(csv.reader(io.StringIO(sh("dvc", "exp", "show", "--csv", cwd=folder, env=env))))
    header = rows[0]
    first_metric = next(i for i, name in enumerate(header) if "." in name or ":" in name)
    assert ".test." in header[first_metric], header
    assert not [name for name in header if "classes" in name or "count" in name], header  # data summary is no metric
    metrics = sh("dvc", "metrics", "show", "--json", cwd=folder, env=env)
    assert "summary.json" not in metrics and "reports/evaluate/metrics.json" in metrics
