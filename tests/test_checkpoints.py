"""Checkpoints are whole or absent, and a damaged one never blocks a resume (issue 20, point 1)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import make_npz
from medmnist_pipeline.paths import model_file
from medmnist_pipeline.stages import train
from medmnist_pipeline.training.checkpoints import AtomicCheckpointIO, resume_checkpoint
from test_training import prepare, start_train_cli, tiny, use_custom


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def fake_checkpoint(path: Path, epoch: int) -> None:
    AtomicCheckpointIO().save_checkpoint({"epoch": epoch, "state_dict": {"w": torch.zeros(4)}}, path)


# (~60 s on the loaded 2-core CPU)
def test_cut_last_checkpoint_of_a_killed_run_is_set_aside_and_the_rerun_completes(
    workdir: Path, repo_params: dict, capsys: pytest.CaptureFixture
) -> None:
    params = tiny(repo_params, epochs=3)
    use_custom(params, make_npz(workdir / "data.npz", counts=(600, 100, 8)), "binary-class", ["no", "yes"])
    prepare(workdir, params)
    process = start_train_cli(workdir)
    deadline = time.time() + 300
    while not list(workdir.glob("checkpoints/train-*/last.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    (last,) = workdir.glob("checkpoints/train-*/last.ckpt")
    truncate(last)  # what a copy cut by a full disk or a kill left before checkpoints were written atomically
    capsys.readouterr()
    train.main("params.yaml")  # no "failed finding central directory" traceback
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if "does not load" in x]
    assert (
        str(last) in line and "set aside as" in line and ("resuming from best.ckpt" in line or "starting over" in line)
    )
    (damaged,) = workdir.glob("checkpoints/train-*-last.ckpt.damaged-*")  # kept for inspection
    assert damaged.stat().st_size > 0
    assert model_file("train").is_file()


def test_cut_best_checkpoint_starts_over_and_cut_last_resumes_from_best(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "checkpoints" / "train-abc"
    fake_checkpoint(folder / "last.ckpt", 5)
    fake_checkpoint(folder / "best.ckpt", 3)
    assert resume_checkpoint(folder) == folder / "last.ckpt"
    truncate(folder / "last.ckpt")
    assert resume_checkpoint(folder) == folder / "best.ckpt"
    (line,) = capsys.readouterr().out.splitlines()
    assert re.fullmatch(
        rf"{folder / 'last.ckpt'} does not load \(.*central directory.*\): set aside as "
        r"train-abc-last\.ckpt\.damaged-\d{8}T\d{6}; resuming from best\.ckpt \(epoch 3\)",
        line,
    )

    fake_checkpoint(folder / "last.ckpt", 5)
    truncate(folder / "best.ckpt")
    assert resume_checkpoint(folder) is None  # the best epoch's weights are gone: select among every epoch again
    (line,) = capsys.readouterr().out.splitlines()
    assert "best.ckpt does not load" in line and line.endswith("; starting over")
    assert len(list(folder.parent.glob("train-abc-*.damaged-*"))) == 2
    assert not (folder / "best.ckpt").exists()


def test_checkpoint_writes_ignore_tmpdir_and_leave_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-folder"))  # the system temp folder plays no part
    path = tmp_path / "ckpt" / "last.ckpt"
    for epoch in range(3):
        fake_checkpoint(path, epoch)
        assert torch.load(path, weights_only=True)["epoch"] == epoch
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


SAVER = """
import sys, torch
from medmnist_pipeline.training.checkpoints import AtomicCheckpointIO
io, epoch = AtomicCheckpointIO(), 0
while True:
    io.save_checkpoint({"epoch": epoch, "w": torch.full((4_000_000,), float(epoch))}, sys.argv[1])
    print(epoch, flush=True)
    epoch += 1
"""


# (~15 s)
@pytest.mark.slow  # a training process killed during a save (the suite's 15 minutes)
def test_a_kill_during_save_never_leaves_a_partial_file_under_the_final_name(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    for attempt in range(3):
        saver = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(SAVER), str(path)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(1 + attempt):
            saver.stdout.readline()  # a save finished; the next one is under way
        time.sleep(0.01 * attempt)
        saver.send_signal(signal.SIGKILL)
        saver.wait()
        state = torch.load(path, weights_only=True)  # the final name always holds a whole checkpoint
        assert float(state["w"][0]) == state["epoch"]
    # a killed save can leave its temporary file; the next resume removes it
    assert resume_checkpoint(tmp_path) is None  # (no best.ckpt here: starting over)
    assert not list(tmp_path.glob(".*.tmp-*"))
