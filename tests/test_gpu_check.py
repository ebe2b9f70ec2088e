"""bench/gpu_check.sh, the GPU check in one call: its dry mode (the same steps on the CPU at tiny sizes) does every
step and writes the results file; its params overrides still fit the schema; every wheel it carries is pinned."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE_OUTPUTS = ["data", "models", "reports", "mlflow.db", "mlruns", "optuna", "checkpoints", "params.yaml"]


def git_status() -> str | None:
    """What git sees changed or new (ignored files too) where a stage run in the repository would write."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        return None
    cmd = ["git", "status", "--porcelain", "--ignored", "--", *STAGE_OUTPUTS]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout


def test_every_carried_wheel_is_pinned_in_the_lock() -> None:
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    names = re.search(r"^NAMES=\((.*?)^\)", script, re.S | re.M).group(1).split()
    lock = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in (REPO / "constraints.txt").read_text().split()
    }
    assert "pydantic" in names and "optuna" in names and "mlflow-skinny" in names
    assert [n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in lock] == []


@pytest.mark.parametrize("mode", ["device", "dry"])
def test_the_overrides_fit_the_params_schema(mode: str, tmp_path: Path) -> None:
    result = gpu_check_module().write_params(tmp_path, mode, None)  # load_params validates the written file
    assert result["missing"] == []
    assert result["applied"]["train.trainer.accelerator"] == ("gpu" if mode == "device" else "cpu")


@pytest.mark.slow  # ~4 min on the loaded 2-core CPU: five CLI stages and two throughput runs
def test_dry_run_does_every_step_and_writes_nothing_into_the_repo(tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = git_status()
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    results = json.loads((out / "gpu_check.json").read_text())
    statuses = {step["name"]: step["status"] for step in results["steps"]}
    expected = ["environment", "device", "throughput_28px", "params", "download", "augment", "baseline", "train"]
    expected += ["tune", "throughput_32px"]
    assert statuses == dict.fromkeys(expected, "done"), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0
    steps = {step["name"]: step for step in results["steps"]}
    assert set(steps["throughput_28px"]["result"]["variants"]) == {
        "reference",
        "fp32",
        "bf16",
        "bf16_cl",
        "bf16_cl_compile",
    }
    assert steps["train"]["metrics"]["epochs"] == 1 and 0.0 <= steps["train"]["metrics"]["val"]["auc"] <= 1.0
    assert steps["tune"]["metrics"]["trials"]["complete"] + steps["tune"]["metrics"]["trials"]["pruned"] == 2
    assert any(run.endswith("FINISHED") for run in results["mlflow_runs"])
    summary = (out / "gpu_check.md").read_text()
    assert "| tune | done |" in summary and "dry mode" in summary
    assert (out / "gpu_check.log").stat().st_size > 0
    assert not Path(results["project"].split(" ")[0]).exists()  # the temporary project folder is removed
    assert git_status() == before  # the stages wrote nothing into the repository's data, models, reports, stores
