"""A full disk during augment and under the model file, on a real small file system (a tmpfs, mounted when the tests
run as root; skipped otherwise): a clear error, no temporary file or folder left, the MLflow run ended FAILED, and a
stage's reports untouched when its model file could not be written."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers import make_npz, write_params
from medmnist_pipeline import cli
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import allocate, atomic_file, clear_write_errors
from medmnist_pipeline.models.modelfile import ModelFile
from test_training import prepare, runs, tiny, use_custom

DISK_MB = 24


@contextmanager
def tmpfs(mount: Path, size_mb: int) -> Iterator[Path]:
    mount.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", DISK_MB) as mount:
        yield mount


def fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system is full."""
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC


def test_augment_refuses_copies_the_disk_cannot_hold(
    small_disk: Path, repo_params: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medmnist_pipeline.stages import augment, download

    monkeypatch.chdir(small_disk)
    (small_disk / ".dvc").mkdir()
    params = tiny(repo_params, copies=2)
    use_custom(params, make_npz(small_disk / "data.npz", counts=(200, 20, 20)), "binary-class", ["no", "yes"])
    write_params(small_disk / "params.yaml", params)
    download.main("params.yaml")
    augment.main("params.yaml")  # 2 copies of 200 images fit
    params["augment"]["copies"] = 1000  # 157 MB do not
    write_params(small_disk / "params.yaml", params)
    with pytest.raises(PipelineError, match=r"augment \(1000 copies of 200 images\) needs 149.5 MiB in .*disk has"):
        augment.main("params.yaml")
    assert sorted(p.name for p in (small_disk / "data").iterdir()) == ["augmented", "prepared", "raw"]  # no .tmp
    latest = max(runs(params, "augment"), key=lambda r: r.info.start_time)
    assert latest.info.status == "FAILED"


def test_a_reservation_beyond_the_free_space_is_a_clear_error(small_disk: Path) -> None:
    path = small_disk / "big.npy"
    path.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"augment: the disk holding .*big.npy is full \(No space left on device\)"):
        allocate(path, (DISK_MB + 1) << 20, "augment")


def test_a_model_file_on_a_full_disk_is_a_clear_error(small_disk: Path) -> None:
    model = ModelFile.load(Path(__file__).parent / "fixtures" / "model-v2-convnet.ckpt")
    fill(small_disk)
    path = small_disk / "cnn.ckpt"
    with (
        pytest.raises(PipelineError, match=r"^train: the model file: the disk holding .*cnn.ckpt is full \(No space"),
        clear_write_errors("train: the model file", path),
        atomic_file(path) as tmp,
    ):
        model.save(tmp)  # torch's own error would be a RuntimeError "unexpected pos"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no model file, no .part


def test_train_with_models_on_a_full_disk_keeps_its_reports(
    tmp_path: Path, repo_params: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    params = tiny(repo_params, epochs=1, copies=0)
    use_custom(params, make_npz(tmp_path / "data.npz", counts=(64, 16, 8)), "binary-class", ["no", "yes"])
    prepare(tmp_path, params)
    assert cli.main(["train"]) == 0
    reports = tmp_path / "reports" / "train"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reports.iterdir()}
    assert {"metrics.json", "history.csv", "curves.png"} <= before.keys()
    capsys.readouterr()
    with tmpfs(tmp_path / "models", 1) as models:
        fill(models)
        code = cli.main(["train"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("medmnist-pipeline train: error: train: the model file: the disk holding "), err
        assert "cnn.ckpt is full (No space left on device); nothing was kept" in err, err
        assert sorted(p.name for p in models.iterdir()) == ["filler"]
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in reports.iterdir()} == before
    assert max(runs(params, "train"), key=lambda r: r.info.start_time).info.status == "FAILED"


def test_train_with_its_mlflow_artifacts_on_a_full_disk_is_one_line(
    tmp_path: Path, repo_params: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from urllib.parse import urlparse

    monkeypatch.chdir(tmp_path)
    params = tiny(repo_params, epochs=1, copies=0)
    use_custom(params, make_npz(tmp_path / "data.npz", counts=(64, 16, 8)), "binary-class", ["no", "yes"])
    prepare(tmp_path, params)
    assert cli.main(["train"]) == 0
    (first,) = runs(params, "train")
    experiment_artifacts = Path(urlparse(first.info.artifact_uri).path).parent.parent  # <root>/<experiment id>
    capsys.readouterr()
    with tmpfs(experiment_artifacts, 1) as artifacts:
        fill(artifacts)
        code = cli.main(["train"])
        err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("medmnist-pipeline train: error: train: the disk holding "), err
    failed = "the stage's MLflow run ended FAILED: free some space and run the stage again"
    assert err.endswith(f" is full (No space left on device); {failed}\n"), err
    assert max(runs(params, "train"), key=lambda r: r.info.start_time).info.status == "FAILED"
