"""Checking and preparing npz files: the real official files, synthetic files of every task type, and bad files
that must fail with a message naming what is wrong (and leave no output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import make_npz, shared_file
from medmnist_pipeline.config.params import DataParams
from medmnist_pipeline.data.dataset import DatasetMeta, class_counts, expected_meta, load_meta, load_split, prepare
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import atomic_dir, md5sum


def official(flag: str) -> DataParams:
    return DataParams.model_validate(
        {
            "flag": flag,
            "size": 28,
            "mirror": None,
            "download": {"timeout_s": 5, "retries": 0, "backoff_s": 0},
            "custom": {"path": None, "task": None, "labels": None},
        }
    )


def custom(path: Path, task: str, labels: list[str], size: int = 28) -> DataParams:
    return DataParams.model_validate(
        {
            "flag": "custom",
            "size": size,
            "mirror": None,
            "download": {"timeout_s": 5, "retries": 0, "backoff_s": 0},
            "custom": {"path": str(path), "task": task, "labels": labels},
        }
    )


@pytest.mark.parametrize(
    ("flag", "counts", "train_classes"),
    [
        ("pneumoniamnist", {"train": 4708, "val": 524, "test": 624}, {"normal": 1214, "pneumonia": 3494}),
        ("breastmnist", {"train": 546, "val": 78, "test": 156}, {"malignant": 147, "normal, benign": 399}),
    ],
)
def test_real_official_files_prepare_to_memory_maps(
    tmp_path: Path, flag: str, counts: dict, train_classes: dict
) -> None:
    source = shared_file(f"{flag}.npz")
    meta = prepare(source, expected_meta(official(flag), source, md5sum(source)), tmp_path)
    assert load_meta(tmp_path) == meta and meta.n_channels == 1 and meta.n_samples == counts
    images, labels = load_split(tmp_path, "train")
    assert isinstance(images, np.memmap) and images.dtype == np.uint8 and images.shape == (counts["train"], 28, 28)
    assert class_counts(labels, meta) == train_classes
    with np.load(source, allow_pickle=False) as npz:  # byte-identical to the official arrays
        assert np.array_equal(images, npz["train_images"]) and np.array_equal(labels, npz["train_labels"])


@pytest.mark.parametrize(
    ("task", "labels", "channels", "size"),
    [
        ("multi-class", ["a", "b", "c", "d"], 3, 28),
        ("multi-label, binary-class", [f"l{i}" for i in range(14)], 1, 28),
        ("ordinal-regression", ["0", "1", "2", "3", "4"], 3, 64),
        ("binary-class", ["no", "yes"], 1, 128),
    ],
)
def test_custom_files_of_every_task_type(tmp_path: Path, task: str, labels: list, channels: int, size: int) -> None:
    source = make_npz(
        tmp_path / "c.npz", task=task, n_labels=len(labels), channels=channels, size=size, counts=(30, 10, 10)
    )
    out = tmp_path / "prepared"
    out.mkdir()
    meta = prepare(source, expected_meta(custom(source, task, labels, size), source, md5sum(source)), out)
    assert meta.n_channels == channels and meta.n_samples == {"train": 30, "val": 10, "test": 10}
    assert meta.md5 == md5sum(source)
    images, y = load_split(out, "val")
    assert images.shape == (10, size, size) + ((3,) if channels == 3 else ())
    assert y.shape == (10, len(labels) if task.startswith("multi-label") else 1)


def rewrite(source: Path, target: Path, **changes: np.ndarray | None) -> Path:
    with np.load(source, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(target, **arrays)
    return target


BAD_FILES = [
    ({"val_labels": None}, "missing arrays val_labels"),
    ({"train_images": np.zeros((30, 28, 28), np.float32)}, "train_images: dtype float32, expected uint8"),
    ({"train_images": np.zeros((30, 32, 32), np.uint8)}, "train_images: shape (30, 32, 32), expected (N, 28, 28)"),
    ({"train_labels": np.full((30, 1), 7, np.uint8)}, "train_labels: values from 7 to 7, expected 0..1"),
    ({"train_labels": np.zeros((29, 1), np.uint8)}, "train has 30 images but 29 labels"),
    ({"test_labels": np.zeros((10, 1), np.float64)}, "test_labels: dtype float64, expected integers"),
    ({"val_labels": np.zeros((10, 3), np.uint8)}, "val_labels: shape (10, 3), expected (N, 1)"),
    ({"test_images": np.zeros((10, 28, 28, 3), np.uint8)}, "test_images has 3 channels, the other splits 1"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_files_fail_clearly_and_leave_no_output(tmp_path: Path, changes: dict, message: str) -> None:
    source = rewrite(make_npz(tmp_path / "good.npz", counts=(30, 10, 10)), tmp_path / "bad.npz", **changes)
    params = custom(source, "binary-class", ["no", "yes"])
    with pytest.raises(PipelineError) as error, atomic_dir(tmp_path / "prepared") as out:
        prepare(source, expected_meta(params, source, md5sum(source)), out)
    assert message in str(error.value)
    assert not (tmp_path / "prepared").exists() and not (tmp_path / ".prepared.tmp").exists()


def test_official_split_sizes_are_enforced(tmp_path: Path) -> None:
    source = make_npz(tmp_path / "breastmnist.npz", counts=(30, 10, 10))  # right layout, wrong counts
    meta = expected_meta(official("breastmnist"), source, md5sum(source))
    with pytest.raises(PipelineError, match=r"train has 30 images, the official breastmnist has 546"):
        prepare(source, meta, tmp_path)


def test_pickled_and_non_npz_files_are_refused(tmp_path: Path) -> None:
    meta = DatasetMeta("custom", 28, "binary-class", ["a", "b"], 0, {}, "", "x.npz")
    np.save(tmp_path / "objects.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "text.npz").write_text("hello")
    for name in ("objects.npy", "text.npz"):
        with pytest.raises(PipelineError, match=rf"{name}: not a readable npz archive"):
            prepare(tmp_path / name, meta, tmp_path)
