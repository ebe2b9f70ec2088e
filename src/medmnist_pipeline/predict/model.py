"""The model ``predict`` runs: a model file of this project or an MLflow model URI, resolved in the project's
tracking store, as one ``Model`` whatever way it was stored."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medmnist_pipeline.errors import PipelineError, first_line

MLFLOW_SCHEMES = ("runs:/", "models:/")


@dataclass
class Model:
    """What prediction needs from a model, whichever way it was stored."""

    source: str
    labels: list[str]
    task: str
    image_size: int
    in_channels: int
    scores: Callable[[Any], np.ndarray]  # uint8 tensor (N, C, H, W) -> probabilities (N, len(labels))


def is_mlflow_uri(spec: str) -> bool:
    return spec.startswith(MLFLOW_SCHEMES)


def tracking_store(params_path: str | Path | None) -> str:
    """The MLflow store that MLflow URIs are resolved in: ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` of the params
    file > ``sqlite:///<project root>/mlflow.db`` (the stages' own rule, ``tracking.tracking_uri``). ``params_path``
    None means ``params.yaml`` if there is one; only its ``tracking`` section is read and validated."""
    from medmnist_pipeline.config.params import TrackingParams, load_section
    from medmnist_pipeline.tracking import default_uri, relocate_local_store, uri_of

    path = Path(params_path or "params.yaml")
    read = params_path is not None or path.is_file()
    uri = uri_of(load_section(path, "tracking", TrackingParams) if read else None)
    if uri == default_uri():
        relocate_local_store()  # a moved project's runs:/ URIs find their artifacts
    return uri


def _device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(spec: str, params_path: str | Path | None = None, batch_size: int = 256) -> Model:
    """A model file of this project, or an MLflow model URI resolved in :func:`tracking_store`."""
    if is_mlflow_uri(spec):
        return _load_mlflow_model(spec, tracking_store(params_path), batch_size)
    from medmnist_pipeline.models.modelfile import ModelFile, predict_scores

    model = ModelFile.load(spec)
    net = model.network().to(_device())
    return Model(
        spec,
        list(model.labels),
        model.task,
        model.image_size,
        model.in_channels,
        lambda x: predict_scores(net, x, model.task, batch_size),
    )


def _load_mlflow_model(uri: str, store: str, batch_size: int) -> Model:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is for notes and errors
    import logging

    import mlflow
    import mlflow.pytorch
    import torch

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    local = Path(store.removeprefix("sqlite:///").split("?")[0]) if store.startswith("sqlite:///") else None
    if local is not None and not local.is_file():  # MLflow would create an empty store and then find nothing
        raise PipelineError(
            f"{uri}: no MLflow store at {local} (run from the project root, pass --params, or set MLFLOW_TRACKING_URI)"
        )
    mlflow.set_tracking_uri(store)
    try:
        metadata = mlflow.models.get_model_info(uri).metadata or {}
    except Exception as exc:  # noqa: BLE001 - MlflowException (no such run/model/alias), missing artifact, no server
        raise PipelineError(f"{uri}: cannot load this MLflow model from {store}: {first_line(exc)}") from None
    missing = [k for k in ("labels", "task", "image_size", "in_channels") if k not in metadata]
    if missing:
        raise PipelineError(f"{uri}: not a medmnist-pipeline model (its MLflow metadata has no {', '.join(missing)})")
    try:
        module = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - as above
        raise PipelineError(f"{uri}: cannot load this MLflow model from {store}: {first_line(exc)}") from None
    # MLflow 3 saves PyTorch models with torch.export (pt2) by default: an exported program is already in eval
    # mode, cannot be switched or moved to another device, and its weights are on the CPU it was logged from.

    @torch.no_grad()
    def scores(x: torch.Tensor) -> np.ndarray:  # the logged model takes raw pixels 0-255 as float32
        return torch.cat([module(x[i : i + batch_size].float()).float() for i in range(0, len(x), batch_size)]).numpy()

    return Model(
        uri,
        [str(v) for v in metadata["labels"]],
        str(metadata["task"]),
        int(metadata["image_size"]),
        int(metadata["in_channels"]),
        scores,
    )
