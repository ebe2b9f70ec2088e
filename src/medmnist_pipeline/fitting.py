"""One training run from params, as the baseline and train stages (and tuning trials) need it: resumable
checkpoints, an MLflow run with per-epoch metrics, and outputs written only once the run has succeeded."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch

from medmnist_pipeline.config import Params, TrainParams
from medmnist_pipeline.data import DatasetMeta, load_meta
from medmnist_pipeline.files import atomic_file
from medmnist_pipeline.paths import AUGMENTED_DIR, PREPARED_DIR
from medmnist_pipeline.tracking import dataset_tags, stage_run, tracking_uri
from medmnist_pipeline.training import (
    Classifier,
    MedMNISTData,
    build_classifier,
    build_trainer,
    export_model,
    launch_rank,
)

CHECKPOINTS_DIR = Path("checkpoints")  # resumable state of unfinished runs; not a DVC output, so it survives repro


@dataclass
class FitResult:
    module: Classifier  # with the best epoch's weights
    history: pd.DataFrame  # one row per epoch: epoch, train_loss, train_acc, train_auc, val_loss, val_acc, val_auc, lr
    best: dict[str, float]  # the best epoch's validation metrics: epoch, loss, acc, auc
    seconds: float

    @property
    def val(self) -> dict[str, float]:
        """The best epoch's validation acc, auc and loss (what an exported model records)."""
        return {k: self.best[k] for k in ("acc", "auc", "loss")}


def run_key(section: TrainParams, seed: int, meta: DatasetMeta, augment: Any) -> str:
    """Identifies a run's inputs: a checkpoint is resumed only by a run with exactly the same inputs."""
    inputs = {
        "train": section.model_dump(),
        "seed": seed,
        "data": meta.md5,
        "size": meta.size,
        "augment": augment.model_dump() if section.augmented else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def fit(
    section: TrainParams,
    seed: int,
    meta: DatasetMeta,
    checkpoint_dir: Path,
    logger: Any,
    callbacks: list | None = None,
    train_fraction: float = 1.0,
    progress: bool = True,
) -> FitResult:
    """Train on the training split, select the epoch with the best validation AUC; never touches test."""
    resume_from = checkpoint_dir / "last.ckpt"
    if section.resume == "never":
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    data = MedMNISTData(
        PREPARED_DIR, AUGMENTED_DIR if section.augmented else None, section.batch_size, seed, train_fraction
    )
    module = build_classifier(section, meta)
    trainer = build_trainer(section, checkpoint_dir, logger, [*(callbacks or []), ReseedEachEpoch(seed)], progress)
    if progress:
        t = section.trainer
        print(
            f"training {section.model.name} on {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}"
            f" x {trainer.num_devices * trainer.num_nodes} ({t.strategy}, precision {t.precision}), "
            f"{section.max_epochs} epochs max"
        )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data, ckpt_path=resume_from if resume_from.is_file() else None)
    seconds = time.perf_counter() - started

    # The checkpoints hold what every strategy agrees on (with ddp_spawn the callbacks ran in child processes).
    best_path = checkpoint_dir / "best.ckpt"
    module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    last = torch.load(resume_from, map_location="cpu", weights_only=True)
    rows = next(state["rows"] for key, state in last["callbacks"].items() if key == "History")
    history = pd.DataFrame(rows).rename(columns=lambda c: c.replace("/", "_"))
    best_row = history.loc[history["val_auc"].idxmax()]
    best = {
        "epoch": int(best_row["epoch"]),
        "loss": float(best_row["val_loss"]),
        "acc": float(best_row["val_acc"]),
        "auc": float(best_row["val_auc"]),
    }
    return FitResult(module, history, best, seconds)


class ReseedEachEpoch(pl.Callback):
    """Seed the global RNGs (dropout, on-device augmentation) from (seed, epoch) at each epoch start, so that a
    run resumed from a checkpoint draws the same numbers as one that never stopped."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed * 1_000 + trainer.current_epoch + trainer.global_rank * 7_919, verbose=False)


def train_stage(stage: str, params: Params, section: TrainParams, model_path: Path, reports_dir: Path) -> None:
    """The baseline and train stages: fit, then write the model, validation metrics, history and curves."""
    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from medmnist_pipeline.analysis import plot_history, save_figure

    meta = load_meta(PREPARED_DIR)
    checkpoint_dir = CHECKPOINTS_DIR / f"{stage}-{run_key(section, params.seed, meta, params.augment)}"
    if launch_rank() != 0:  # a worker started by Lightning's ddp launcher, torchrun or SLURM: train only
        fit(section, params.seed, meta, checkpoint_dir, logger=False, progress=False)
        return

    run_id_file = checkpoint_dir.with_name(checkpoint_dir.name + ".mlflow_run_id")
    resumed_run = (
        run_id_file.read_text().strip()
        if (checkpoint_dir / "last.ckpt").is_file() and run_id_file.is_file() and section.resume == "auto"
        else None
    )
    sections = ["seed", stage] + (["augment"] if section.augmented else [])
    with stage_run(stage, params, sections, tags=dataset_tags(meta), run_id=resumed_run) as run:
        run_id_file.parent.mkdir(parents=True, exist_ok=True)
        run_id_file.write_text(run.info.run_id)
        if resumed_run:
            print(f"resuming the interrupted run from {checkpoint_dir / 'last.ckpt'} (MLflow run {resumed_run})")
        logger = MLFlowLogger(
            experiment_name=params.tracking.experiment, tracking_uri=tracking_uri(params), run_id=run.info.run_id
        )
        result = fit(section, params.seed, meta, checkpoint_dir, logger)

        reports_dir.mkdir(parents=True, exist_ok=True)
        metrics = {
            "val": result.val,
            "best_epoch": result.best["epoch"],
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
        }
        (reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        result.history.to_csv(reports_dir / "history.csv", index=False)
        save_figure(
            plot_history(result.history, f"{stage}: {section.model.name} on {meta.flag} {meta.size}px"),
            reports_dir / "curves.png",
        )
        with atomic_file(model_path) as tmp:
            export_model(result.module, meta, metrics["val"], tmp, result.history, run.info.run_id)

        mlflow.log_metrics(
            {
                "best/val_auc": result.best["auc"],
                "best/val_acc": result.best["acc"],
                "best/epoch": result.best["epoch"],
                "train_seconds": result.seconds,
            }
        )
        mlflow.log_artifacts(str(reports_dir), artifact_path=stage)
        mlflow.log_artifact(str(model_path), artifact_path="checkpoint")
        log_pytorch_model(result.module.net, result.module.task, list(result.module.hparams.labels), meta)
        print(
            f"{stage}: best validation AUC {result.best['auc']:.4f}, ACC {result.best['acc']:.4f} at epoch "
            f"{result.best['epoch']} ({result.seconds:.0f} s) -> {model_path}; MLflow run {run.info.run_id}"
        )
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    run_id_file.unlink(missing_ok=True)


def log_pytorch_model(
    net: torch.nn.Module, task: str, labels: list[str], meta: DatasetMeta, registered_model_name: str | None = None
) -> Any:
    """The model as an MLflow PyTorch model that takes raw pixel values (0-255, float32, N x C x H x W) and
    returns class probabilities, with an input example and the signature inferred from it."""
    import logging

    import mlflow.pytorch
    import numpy as np

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # its import (by mlflow.pytorch) resets INFO

    from medmnist_pipeline.training import ProbabilityModel

    wrapped = ProbabilityModel(getattr(net, "_orig_mod", net).cpu().eval(), task)
    example = np.zeros((2, meta.n_channels, meta.size, meta.size), np.float32)
    # metadata: what a caller needs to feed the model and name its outputs (medmnist-pipeline predict reads it)
    metadata = {
        "labels": list(labels),
        "task": task,
        "image_size": meta.size,
        "in_channels": meta.n_channels,
        "dataset": meta.flag,
    }
    return mlflow.pytorch.log_model(
        wrapped,
        name="model",
        input_example=example,
        metadata=metadata,
        registered_model_name=registered_model_name,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )
