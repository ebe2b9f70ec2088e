"""A full disk during augment, on a real small file system (a tmpfs, mounted when the tests run as root; skipped
otherwise): a clear error before anything is written, no temporary folder left, the MLflow run ended FAILED."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import make_npz, write_params
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import allocate
from test_training import runs, tiny, use_custom

DISK_MB = 24


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


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
