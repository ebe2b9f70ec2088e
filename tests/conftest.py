"""Shared fixtures: real files, a real MLflow store, synthetic MedMNIST-layout npz files, params from the repo's own.

The verified official files are read from ``../shared/data/medmnist`` (or ``MEDMNIST_TEST_DATA``); tests that need
them skip cleanly when that folder is absent. Nothing here mocks a library.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, make_npz

# Before anything imports albumentations, mlflow or dvc: no network checks, no telemetry.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.pop("MEDMNIST_MIRROR", None)  # each test chooses its own sources


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One real sqlite MLflow store for the session (creating one costs ~3 s)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return uri


@pytest.fixture
def repo_params() -> dict[str, Any]:
    """The repository's own params.yaml as a dict (tests override what they need)."""
    return copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty project folder to run stages in (they read and write relative paths, as under DVC)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def npz_factory(tmp_path: Path) -> Callable[..., Path]:
    def factory(name: str = "synthetic.npz", **kwargs: Any) -> Path:
        return make_npz(tmp_path / name, **kwargs)

    return factory
