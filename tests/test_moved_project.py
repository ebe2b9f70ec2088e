"""A project folder moved elsewhere keeps showing its artifacts: the default store records absolute artifact paths
(``<root>/mlruns/...``), so after a move the UI used to list nothing. Real store, real move, the real
``medmnist-pipeline ui`` server, and the REST calls the UI's artifact view makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest

from helpers import make_npz, write_params
from medmnist_pipeline.stages import download
from medmnist_pipeline.tracking import relocate_local_store
from test_training import tiny, use_custom
from test_ui_browser import answers, free_port


def rest(base: str, endpoint: str, **query: str) -> dict:
    with urllib.request.urlopen(f"{base}{endpoint}?{urllib.parse.urlencode(query)}", timeout=30) as response:
        return json.loads(response.read())


def test_a_moved_project_shows_its_artifacts_in_the_ui(
    tmp_path: Path, repo_params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the project's own default store, as a user has it
    before = tmp_path / "before" / "project"
    (before / ".dvc").mkdir(parents=True)
    monkeypatch.chdir(before)
    params = tiny(repo_params)
    use_custom(params, make_npz(before / "source.npz", counts=(40, 20, 20)), "binary-class", ["no", "yes"])
    write_params(before / "params.yaml", params)
    download.main("params.yaml")  # one run, with reports/data/* as artifacts under before/mlruns

    after = tmp_path / "after" / "moved"
    after.parent.mkdir()
    shutil.move(before, after)
    monkeypatch.chdir(after)
    assert not before.exists()

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    ui = subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", "ui", "--port", str(port)],
        cwd=after,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not answers(f"{base}/health"):
            assert ui.poll() is None and time.monotonic() < deadline, "the UI did not start"
            time.sleep(0.5)
        experiment = rest(
            base, "/ajax-api/2.0/mlflow/experiments/get-by-name", experiment_name=params["tracking"]["experiment"]
        )
        request = urllib.request.Request(
            f"{base}/ajax-api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment["experiment"]["experiment_id"]]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            (run,) = json.loads(response.read())["runs"]
        run_id = run["info"]["run_id"]
        listed = rest(base, "/ajax-api/2.0/mlflow/artifacts/list", run_id=run_id, path="data")
        names = {Path(f["path"]).name for f in listed.get("files", [])}
        assert {"summary.json", "samples.png"} <= names, listed
        assert str(after / "mlruns") in run["info"]["artifact_uri"]
        with urllib.request.urlopen(
            f"{base}/get-artifact?{urllib.parse.urlencode({'path': 'data/summary.json', 'run_uuid': run_id})}",
            timeout=30,
        ) as response:
            assert response.read() == (after / "reports/data/summary.json").read_bytes()
    finally:
        ui.send_signal(signal.SIGINT)
        output, _ = ui.communicate(timeout=60)
    assert "the project has moved" in output, output

    # the stages' own lookups (runs:/ URIs, evaluate) resolve in the moved store too, and nothing moves twice
    assert relocate_local_store() == 0
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="data/summary.json", tracking_uri=f"sqlite:///{after / 'mlflow.db'}"
    )
    assert Path(local).read_bytes() == (after / "reports/data/summary.json").read_bytes()


def test_a_copied_project_points_at_its_own_copy_and_other_locations_stay(tmp_path: Path, repo_params: dict) -> None:
    """A copy (the original still there) takes its own mlruns/; an absolute location a user chose is not touched."""
    import sqlite3

    original = tmp_path / "original"
    (original / ".dvc").mkdir(parents=True)
    (original / "mlruns").mkdir()
    elsewhere = tmp_path / "team-artifacts" / "mlruns"
    elsewhere.mkdir(parents=True)
    db = original / "mlflow.db"
    with sqlite3.connect(db) as c:  # the two tables with locations, as MLflow lays them out
        c.execute("CREATE TABLE experiments (experiment_id INTEGER, artifact_location TEXT)")
        c.execute("CREATE TABLE runs (run_uuid TEXT, artifact_uri TEXT)")
        c.executemany(
            "INSERT INTO experiments VALUES (?, ?)", [(1, f"{original}/mlruns/1"), (2, (elsewhere / "2").as_uri())]
        )
        c.executemany(
            "INSERT INTO runs VALUES (?, ?)",
            [("a", f"{original}/mlruns/1/a/artifacts"), ("b", f"{(elsewhere / '2/b/artifacts').as_uri()}")],
        )
    c.close()
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    assert relocate_local_store(original) == 0  # the original is where its store says
    assert relocate_local_store(copy) == 2
    with sqlite3.connect(copy / "mlflow.db") as c:
        assert dict(c.execute("SELECT run_uuid, artifact_uri FROM runs")) == {
            "a": f"{copy}/mlruns/1/a/artifacts",
            "b": (elsewhere / "2/b/artifacts").as_uri(),
        }
    c.close()
