"""MLflow tracking: where runs are stored, and one run per stage with flattened params, tags and artifacts."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from medmnist_pipeline.config import Params, TrackingParams
from medmnist_pipeline.paths import MLFLOW_DB, MLRUNS, project_root

if TYPE_CHECKING:  # torch stays unimported for the light commands
    from medmnist_pipeline.modelfile import ModelFile


def tracking_uri(params: Params) -> str:
    return uri_of(params.tracking)


def uri_of(tracking: TrackingParams | None) -> str:
    """``MLFLOW_TRACKING_URI`` (e.g. a team server) > ``tracking.uri`` > ``sqlite:///<root>/mlflow.db``."""
    configured = tracking.uri if tracking is not None else None
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or f"sqlite:///{project_root() / MLFLOW_DB}"


def _mlflow() -> Any:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no per-call store chatter in stage output
    return mlflow


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def experiment_id(params: Params) -> str:
    """Create the experiment on first use. For the default local store, artifacts go beside the database
    (an absolute path, so runs from DVC's temporary experiment copies land there too)."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    local = not (os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri)
    location = (project_root() / MLRUNS).as_uri() if local else None
    try:  # the kind tag makes MLflow 3's UI open the experiment on its runs, not on the GenAI traces overview
        return mlflow.create_experiment(
            params.tracking.experiment,
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
        )
    except Exception:  # noqa: BLE001 - another worker created it between our two calls
        return mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id


def existing_run(params: Params, run_id: str | None) -> str | None:
    """``run_id`` if that run is in the current store (a study may outlive an MLflow store), else None."""
    if not run_id:
        return None
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri(params))
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"size": 28}}`` -> ``{"data.size": 28}``: the same keys as params.yaml paths, in every run."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty).lower()}


def dataset_tags(meta: Any) -> dict[str, str]:
    return {
        "dataset.flag": meta.flag,
        "dataset.size": str(meta.size),
        "dataset.md5": meta.md5,
        "dataset.task": meta.task,
    }


@contextmanager
def stage_run(
    stage: str,
    params: Params,
    sections: Sequence[str],
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one stage: params of the sections it reads, tags that say what and where.

    ``run_id`` continues an interrupted run instead of starting a new one. An exception inside the block ends
    the run as FAILED (MLflow's own context manager does that).
    """
    mlflow = _mlflow()
    exp_id = experiment_id(params)
    all_tags = {"stage": stage, **git_tags(), **(tags or {})}
    if os.environ.get("DVC_EXP_NAME"):
        all_tags["dvc.exp_name"] = os.environ["DVC_EXP_NAME"]
    if run_id:
        context = mlflow.start_run(run_id=run_id, tags=all_tags)
    else:
        context = mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags)
    with context as run:
        dumped = params.model_dump(by_alias=True)
        flat = flatten({s: dumped[s] for s in sections})
        if run_id:  # a continued run keeps the params it was started with (MLflow params are write-once)
            flat = {k: v for k, v in flat.items() if k not in run.data.params}
        mlflow.log_params(flat)
        yield run


def log_pytorch_model(model: ModelFile, registered_model_name: str | None = None) -> Any:
    """The model as an MLflow PyTorch model that takes raw pixel values (0-255, float32, N x C x H x W) and
    returns class probabilities, with an input example and the signature inferred from it."""
    import logging

    import mlflow.pytorch
    import numpy as np
    import torch

    from medmnist_pipeline.modelfile import ProbabilityModel

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # its import (by mlflow.pytorch) resets INFO
    wrapped = ProbabilityModel(model.network(), model.task)
    example = np.zeros((2, model.in_channels, model.image_size, model.image_size), np.float32)
    # metadata: what a caller needs to feed the model and name its outputs (medmnist-pipeline predict reads it)
    metadata = {
        "labels": list(model.labels),
        "task": model.task,
        "image_size": model.image_size,
        "in_channels": model.in_channels,
        "dataset": model.dataset.flag,
    }
    return mlflow.pytorch.log_model(
        wrapped,
        name="model",
        input_example=example,
        metadata=metadata,
        registered_model_name=registered_model_name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
