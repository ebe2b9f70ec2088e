"""Plain helpers for the tests: where the real data is, writing params, synthetic MedMNIST-layout files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDMNIST_TEST_DATA", REPO.parent / "shared" / "data" / "medmnist"))


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not available (the verified MedMNIST files live in ../shared)")
    return path


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def params_error(path: Path, params: dict[str, Any]) -> str:
    """Write ``params`` to ``path`` and return the message of the ParamsError that loading it must raise."""
    from medmnist_pipeline.config.params import load_params
    from medmnist_pipeline.errors import ParamsError

    with pytest.raises(ParamsError) as error:
        load_params(write_params(path, params))
    return str(error.value)


def make_npz(
    path: Path,
    task: str = "binary-class",
    n_labels: int = 2,
    size: int = 28,
    channels: int = 1,
    counts: tuple[int, int, int] = (60, 20, 20),
    seed: int = 0,
) -> Path:
    """A small npz in the official MedMNIST layout whose images carry a learnable class signal."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        if task == "multi-label, binary-class":
            labels = (rng.random((n, n_labels)) < 0.3).astype(np.uint8)
            signal = labels[:, :1].astype(float)
        else:
            labels = rng.integers(0, n_labels, (n, 1)).astype(np.uint8)
            signal = labels / max(n_labels - 1, 1)
        shape = (n, size, size) + ((channels,) if channels == 3 else ())
        noise = rng.normal(0, 30, shape)
        brightness = (60 + 120 * signal).reshape((n,) + (1,) * (len(shape) - 1))
        arrays[f"{split}_images"] = np.clip(brightness + noise, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez_compressed(path, **arrays)
    return path


def model_params(**values: Any) -> Any:
    """A validated ``train.model`` section: the repository's params.yaml's with ``values``; another ``name`` keeps
    the keys its architecture shares with the convnet (the transfer keys) and takes its own (``stem``, ...) from
    ``values``."""
    from medmnist_pipeline.config.train import model_section

    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model"]
    return model_section(with_model(section, **values))


def with_model(section: dict[str, Any], **values: Any) -> dict[str, Any]:
    """A dumped model section with ``values`` set; switching ``name`` drops the keys the new architecture does not
    read (what a tuning trial does: config.train.merge_model_keys)."""
    from medmnist_pipeline.config.train import merge_model_keys

    return merge_model_keys(section, values)


def set_model(params: dict[str, Any], **values: Any) -> None:
    """Set ``values`` in the train section's model of a params dict (see ``with_model``)."""
    params["train"]["model"] = with_model(params["train"]["model"], **values)
