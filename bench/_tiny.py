"""Tiny mode for the benches (``--tiny``): synthetic data of the right shape and, for the benches that run from a
prepared project, a small project built in a temporary folder, so that every bench runs end to end in seconds on a
CPU. ``tests/test_bench.py`` runs each bench this way, so a bench cannot rot unnoticed. The numbers a tiny run prints
mean nothing; only that the bench ran to its result line.

Params come from the repository's own ``params.yaml`` (validated by the stages that read them), with small settings
on top, so they cannot drift from the schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
LABELS = ["normal", "pneumonia"]


def synthetic_images(n: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images in the MedMNIST layout ((N, H, W) grey, (N, H, W, 3) RGB) and (N, 1) binary labels, with a
    class signal (brightness) so that training learns something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, 1)).astype(np.uint8)
    shape = (n, size, size) + ((3,) if channels == 3 else ())
    brightness = (60 + 120 * labels[:, 0]).reshape((n,) + (1,) * (len(shape) - 1))
    images = np.clip(brightness + rng.normal(0, 40, shape), 0, 255).astype(np.uint8)
    return images, labels


def synthetic_npz(path: Path, counts: tuple[int, int, int] = (192, 64, 64), size: int = 28) -> Path:
    """A binary-class grey npz in the official MedMNIST layout ({train,val,test}_{images,labels})."""
    arrays = {}
    for seed, (split, n) in enumerate(zip(("train", "val", "test"), counts, strict=True)):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = synthetic_images(n, size, seed=seed)
    np.savez_compressed(path, **arrays)
    return path


def repo_params() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = value


def tiny_params(source: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """The repository's params.yaml on the synthetic data, with small, fast settings and ``changes`` (dotted keys)."""
    params = repo_params()
    params["data"].update(flag="custom", size=28, mirror=None)
    params["data"]["custom"] = {"path": str(source), "task": "binary-class", "labels": LABELS}
    params["augment"]["copies"] = 1
    params["tracking"]["experiment"] = f"bench-tiny-{uuid.uuid4().hex[:8]}"
    for section in ("baseline", "train"):
        params[section].update(max_epochs=2, batch_size=32, early_stopping_patience=0)
        params[section]["trainer"].update(accelerator="cpu", precision=32)
    params["train"]["model"].update(name="convnet", filters=8, convs_per_block=1, blocks=2, fc_width=16)
    params["train"]["schedule"]["warmup_epochs"] = 0
    params["tune"]["fixed"] = {"train.max_epochs": 2, "train.early_stopping_patience": 0, "train.trainer.precision": 32}
    params["evaluate"]["robustness"] = {"corruptions": ["brightness_down", "gaussian_noise"], "severities": [1, 5]}
    for key, value in (changes or {}).items():
        set_key(params, key, value)
    return params


@contextmanager
def chdir(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def tiny_project(folder: Path, changes: dict[str, Any] | None = None) -> Path:
    """A project folder whose data/prepared and data/augmented exist: the download and augment stages, run in-process
    on the synthetic npz (what ``dvc repro augment`` does in a real project)."""
    from medmnist_pipeline.stages import augment, download

    folder.mkdir(parents=True, exist_ok=True)
    params = tiny_params(synthetic_npz(folder / "source.npz"), changes)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with chdir(folder):
        download.main("params.yaml")
        augment.main("params.yaml")
    return folder
