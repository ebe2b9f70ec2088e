"""A trained model as an MLflow PyTorch model (raw pixels in, class probabilities out, with its signature): logged
by the train stage with its run, and the model validation picks registered by evaluate with the alias
``candidate``."""

from __future__ import annotations

from typing import Any

from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.tracking import quiet_mlflow


def log_pytorch_model(model: ModelFile, registered_model_name: str | None = None) -> Any:
    """The model as an MLflow PyTorch model that takes raw pixel values (0-255, float32, N x C x H x W) and
    returns class probabilities, with an input example and the signature inferred from it."""
    import logging

    import mlflow.pytorch
    import numpy as np
    import torch

    from medmnist_pipeline.models.modelfile import ProbabilityModel

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


CANDIDATE_ALIAS = "candidate"


def registered_name(meta: DatasetMeta) -> str:
    return f"medmnist-{meta.flag}-{meta.size}"


def register_pick(picked: ModelFile, meta: DatasetMeta) -> tuple[str, str]:
    """Log the model validation picked in the active (evaluate) run, register it as a new version of the dataset's
    model and point the ``candidate`` alias at that version."""
    name = registered_name(meta)
    info = log_pytorch_model(picked, name)
    version = str(info.registered_model_version)
    quiet_mlflow().MlflowClient().set_registered_model_alias(name, CANDIDATE_ALIAS, version)
    return name, version
