"""Faults a hostile or unlucky user meets, each kept fixed: atomic writers, a full disk, parallel tune workers
that must not repeat each other, a tune stage that must not pass with missing trials, nested runs' experiment tag."""

from __future__ import annotations

import errno
from pathlib import Path

import optuna
import pytest

from medmnist_pipeline.errors import PipelineError, not_a_model_file
from medmnist_pipeline.files import atomic_dir, atomic_file, check_free_space, write_error
from medmnist_pipeline.tracking import experiment_tags
from medmnist_pipeline.tuning.search import sampler_seed


def test_atomic_file_removes_its_temporary_file_when_the_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(IsADirectoryError), atomic_file(tmp_path / "out.csv") as tmp:
        tmp.write_text("a,b\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    assert not any((tmp_path / "out.csv").iterdir())


def test_atomic_dir_removes_its_temporary_folder_when_the_rename_fails(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file where the folder goes: the final rename fails")
    with pytest.raises(NotADirectoryError), atomic_dir(tmp_path / "out") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_free_space_check_names_the_sizes(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1 << 20, "augment")
    with pytest.raises(PipelineError, match=r"augment needs 1024.0 TiB in .* but its disk has .* free"):
        check_free_space(tmp_path / "not-yet", 1 << 50, "augment")


def test_write_errors_are_one_line() -> None:
    full = write_error(OSError(errno.ENOSPC, "No space left on device"), "augment", "data/augmented")
    assert str(full) == "augment: the disk holding data/augmented is full (No space left on device); nothing was kept"


def test_weights_only_refusal_is_one_line_without_unsafe_advice(tmp_path: Path) -> None:
    import argparse
    import pickle

    import torch

    path = tmp_path / "evil.ckpt"
    torch.save({"object": argparse.Namespace(a=1)}, path)  # any class outside torch's allow-list
    with pytest.raises(pickle.UnpicklingError) as refused:
        torch.load(path, weights_only=True)
    message = str(not_a_model_file(path, refused.value)).removeprefix(f"{path}: ")
    assert (
        message
        == "not a model file of this project (it holds Python objects that are not plain tensors); it was not loaded"
    )


def test_each_worker_and_restart_samples_its_own_points_while_one_process_repeats() -> None:
    assert sampler_seed(0, 0, 0) == sampler_seed(0, 0, 0)  # the same fresh single-process study: the same points
    seeds = {sampler_seed(0, trials, worker) for trials in (0, 1, 5) for worker in (0, 4242, 4243)}
    assert len(seeds) == 9
    assert sampler_seed(2**32 - 1, 10**6, 2**22) >= 0  # any valid seed, study length and pid


def test_random_sampler_streams_differ_between_workers() -> None:
    def points(seed: int) -> list[float]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        return [study.ask().suggest_float("lr", 1e-4, 1e-1, log=True) for _ in range(3)]

    stage, worker = points(sampler_seed(7, 1, 0)), points(sampler_seed(7, 1, 999))
    assert points(sampler_seed(7, 1, 0)) == stage and not set(stage) & set(worker)


def test_nested_runs_carry_the_dvc_experiment_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "bold-lark")
    assert experiment_tags() == {"dvc.exp_name": "bold-lark"}


def test_custom_labels_that_the_data_never_uses_are_refused_at_download(tmp_path: Path) -> None:
    from helpers import make_npz
    from medmnist_pipeline.config.params import DataParams
    from medmnist_pipeline.data.dataset import expected_meta, fetch, prepare

    source = make_npz(tmp_path / "binary.npz", task="binary-class", n_labels=2)
    custom = {"path": str(source), "task": "multi-class", "labels": ["a", "b", "c"]}  # three names on 0/1 data
    params = DataParams.model_validate(
        {
            "flag": "custom",
            "size": 28,
            "mirror": None,
            "download": {"timeout_s": 5, "retries": 0, "backoff_s": 0},
            "custom": custom,
        }
    )
    path, md5 = fetch(params, tmp_path / "raw", log=print)
    (tmp_path / "prepared").mkdir()
    with pytest.raises(
        PipelineError, match=r"names 3 classes for task 'multi-class', but the training labels never use 'c'"
    ):
        prepare(path, expected_meta(params, path, md5), tmp_path / "prepared")
