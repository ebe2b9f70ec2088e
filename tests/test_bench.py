"""Benches that cannot rot: every ``bench/*.py`` script runs end to end in its ``--tiny`` mode (synthetic data, a few
batches; ``bench/_tiny.py``) as its own process, from a temporary folder, and prints its result line. The numbers
are not checked: speed is measured by the benches themselves, never asserted here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO

BENCH = REPO / "bench"

# script -> its result line (bench/README.md); slow: over about 20 s in tiny mode on the loaded 2-core CPU, where a
# stage or training run in a fresh process pays for importing Lightning and MLflow and creating a tracking store
RESULT_LINES = {
    "train_throughput.py": r"^speedup: \d+\.\d+x$",
    "feature_cache.py": r"^speedup: \d+\.\d+x$",
    "data_path.py": r"^ratio: mapped / in-RAM speed 28 px \d+\.\d+$",
    "stage_memory.py": r"^peak: baseline \d+\.\d+ GiB \(largest process \d+\.\d+ GiB\)$",
    "augmedmnistc.py": r"^mean_error: AugMedMNIST-C - plain = [-+]\d+\.\d+ \[.*\] \(95% Welch t\): ",
    "transfer_experiment.py": r"^\| custom \| EfficientNet-Lite0, feature extraction \| 28 \| 1 \| ",
    "tune_metric_choice.py": r"^both rules pick the same trial in [01] of 1 seeds$",
}
SLOW = {"stage_memory.py", "augmedmnistc.py", "transfer_experiment.py", "tune_metric_choice.py"}
# run elsewhere: the GPU check's scripts, by tests/test_gpu_check.py through `bash bench/gpu_check.sh --dry`
COVERED_ELSEWHERE = {"gpu_check.py", "gpu_throughput.py"}


def test_every_bench_script_has_a_tiny_run_here() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")} - COVERED_ELSEWHERE
    assert scripts == set(RESULT_LINES), "a bench script without its --tiny run in tests/test_bench.py (or vice versa)"


@pytest.mark.parametrize(
    "script",
    [pytest.param(s, marks=[pytest.mark.slow]) for s in sorted(RESULT_LINES)],  # all: the suite's 15 min
)
def test_bench_runs_in_tiny_mode_and_prints_its_result(script: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the repository, not even bench/__pycache__
        "TMPDIR": str(tmp_path),  # the benches' temporary projects and data, removed with the test's folder
    }
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--tiny"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(RESULT_LINES[script], done.stdout, re.MULTILINE), done.stdout[-4000:]
