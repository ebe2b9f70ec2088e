"""The Lightning Trainer from ``train.trainer`` and the run's settings, after checking that this machine can run them;
and the launch rank, which decides whether a process writes outputs."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from medmnist_pipeline.config.train import TrainerParams, TrainParams
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.training.callbacks import Diagnostics, History, LossGuard

# Lightning's "GPU available"/"Tip" lines repeat for every run and trial; fit() prints one device line instead.
for _name in ("lightning.pytorch", "pytorch_lightning"):  # mlflow.pytorch imports the latter
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")  # torch 2.13 vs lightning 2.6
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")  # ours, on purpose


def launch_rank() -> int:
    """This process's global rank before Lightning starts (torchrun/SLURM set RANK; Lightning's ddp relaunch sets
    LOCAL_RANK and NODE_RANK). Non-zero ranks train but write no outputs and open no MLflow run."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0)) * 10_000


def check_hardware(trainer: TrainerParams) -> None:
    """Clear errors for settings this machine cannot run, before any work starts."""
    gpus = torch.cuda.device_count()
    if trainer.accelerator == "gpu" and gpus < trainer.devices:
        raise PipelineError(
            f"trainer.accelerator is gpu with trainer.devices: {trainer.devices}, but this machine "
            f"has {gpus} CUDA device(s); use accelerator: cpu or auto"
        )
    on_cpu = trainer.accelerator == "cpu" or (trainer.accelerator == "auto" and gpus == 0)
    if on_cpu and trainer.precision == "16-mixed":
        raise PipelineError("trainer.precision: 16-mixed needs a GPU; on CPU use 32 or bf16-mixed")
    if on_cpu and trainer.precision == "bf16-mixed" and not torch.backends.mkldnn.is_available():
        raise PipelineError("trainer.precision: bf16-mixed is not supported by this CPU build; use 32")
    if (
        trainer.accelerator != "cpu"
        and gpus
        and trainer.precision == "bf16-mixed"
        and not torch.cuda.is_bf16_supported()
    ):
        raise PipelineError("trainer.precision: bf16-mixed is not supported by this GPU; use 16-mixed or 32")
    if trainer.devices * trainer.num_nodes > 1 and trainer.strategy == "auto":
        raise PipelineError("trainer.strategy: choose ddp, ddp_spawn or ddp_fork to train on several devices")


def build_trainer(
    params: TrainParams, checkpoint_dir: Path, logger: Any, extra_callbacks: list | None = None, progress: bool = True
) -> pl.Trainer:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from medmnist_pipeline.training.checkpoints import AtomicCheckpointIO
    from medmnist_pipeline.training.selection import BestCheckpoint

    t = params.trainer
    check_hardware(t)
    callbacks = [
        # The best epoch by validation AUC (ties: lower validation loss), and every epoch's state for resuming
        # (Lightning 2.6's save_last only writes when the monitored metric improved, which would lose epochs).
        BestCheckpoint(dirpath=checkpoint_dir, filename="best", enable_version_counter=False),
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_top_k=1, enable_version_counter=False),
        History(),
        LossGuard(),
        *(extra_callbacks or []),
    ]
    if logger:  # (it refuses to run without one, e.g. on the ranks that do not log)
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if params.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor="val/auc", mode="max", patience=params.early_stopping_patience))
    if params.diagnostics:
        callbacks.append(Diagnostics())
    if progress:
        callbacks.append(RichProgressBar(leave=True))
    return pl.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        accumulate_grad_batches=t.accumulate_grad_batches,
        max_epochs=params.max_epochs,
        gradient_clip_val=params.gradient_clip or None,
        overfit_batches=params.overfit_batches,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        logger=logger,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # whole or absent: a temporary file in the same folder, renamed
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
