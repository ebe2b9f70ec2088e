"""The download and augment stages as a user runs them: every output written, every run tracked in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np

from helpers import make_npz, shared_file, write_params
from medmnist_pipeline.stages import augment, download


def runs_of(experiment: str, stage: str) -> list:
    found = mlflow.search_runs(
        experiment_names=[experiment], filter_string=f"tags.stage = '{stage}'", output_format="list"
    )
    return found


def test_download_and_augment_write_outputs_and_runs(workdir: Path, repo_params: dict, monkeypatch) -> None:
    monkeypatch.setenv("MEDMNIST_MIRROR", str(shared_file("breastmnist.npz").parent))
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    repo_params["data"]["flag"] = "breastmnist"
    repo_params["augment"]["copies"] = 2
    repo_params["tracking"]["experiment"] = experiment
    write_params(workdir / "params.yaml", repo_params)

    download.main("params.yaml")
    augment.main("params.yaml")

    assert (workdir / "data/raw/breastmnist.npz").is_file()
    summary = json.loads((workdir / "reports/data/summary.json").read_text())
    assert summary["train"] == {"count": 546, "classes": {"malignant": 147, "normal, benign": 399}}
    assert summary["test"]["count"] == 156
    augmented = np.load(workdir / "data/augmented/train_images.npy", mmap_mode="r")
    assert augmented.shape == (2, 546, 28, 28) and augmented.dtype == np.uint8
    for png in ("reports/data/samples.png", "reports/augment/preview.png"):
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (down,), (aug,) = runs_of(experiment, "download"), runs_of(experiment, "augment")
    assert down.info.status == aug.info.status == "FINISHED"
    assert down.data.params["data.flag"] == "breastmnist" and "seed" not in down.data.params
    assert aug.data.params["augment.copies"] == "2" and aug.data.params["seed"] == "42"
    assert json.loads(aug.data.params["augment.transforms"]) == repo_params["augment"]["transforms"]
    for run in (down, aug):
        assert run.data.tags["dataset.md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
        assert run.data.tags["dataset.flag"] == "breastmnist"
    assert down.data.metrics["n_train"] == 546 and aug.data.metrics["augment_images_per_s"] > 0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(down.info.run_id, "data")}
    assert artifacts == {"data/samples.png", "data/summary.json"}


def test_custom_multilabel_data_without_augmentation(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "mine.npz", task="multi-label, binary-class", n_labels=14, counts=(40, 10, 10))
    repo_params["data"]["flag"] = "custom"
    repo_params["data"]["custom"] = {
        "path": str(source),
        "task": "multi-label, binary-class",
        "labels": [f"finding {i}" for i in range(14)],
    }
    repo_params["augment"]["copies"] = 0
    repo_params["tracking"]["experiment"] = f"test-{uuid.uuid4().hex[:8]}"
    write_params(workdir / "params.yaml", repo_params)

    download.main("params.yaml")
    augment.main("params.yaml")

    meta = json.loads((workdir / "data/prepared/meta.json").read_text())
    assert meta["flag"] == "custom" and meta["n_channels"] == 1 and len(meta["labels"]) == 14
    summary = json.loads((workdir / "reports/data/summary.json").read_text())
    assert sum(summary["train"]["classes"].values()) == int(np.load(source)["train_labels"].sum())
    assert np.load(workdir / "data/augmented/train_images.npy").shape == (0, 40, 28, 28)


def test_a_failing_stage_leaves_no_output_and_a_failed_run(workdir: Path, repo_params: dict) -> None:
    experiment = f"test-{uuid.uuid4().hex[:8]}"
    repo_params["tracking"]["experiment"] = experiment
    repo_params["data"]["download"] = {"timeout_s": 2, "retries": 0, "backoff_s": 0}
    repo_params["data"]["mirror"] = str(workdir / "empty-mirror")
    write_params(workdir / "params.yaml", repo_params)
    # The official URL through a proxy on a closed loopback port: the download fails at once, nothing leaves
    # this machine.
    env = {**os.environ, "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    result = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", "download"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "could not download https://zenodo.org/records/10519652/files/pneumoniamnist.npz" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (workdir / "data/prepared").exists() and list((workdir / "data/raw").glob("*")) == []
    (run,) = runs_of(experiment, "download")
    assert run.info.status == "FAILED"


def test_help_is_instant_because_nothing_heavy_is_imported() -> None:
    code = (
        "import sys\nfrom medmnist_pipeline import cli\ntry:\n    cli.main(['download', '--help'])\n"
        "except SystemExit:\n    pass\n"
        "heavy = ['torch', 'lightning', 'mlflow', 'albumentations', 'pydantic', 'numpy']\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert "--params PARAMS" in result.stdout
