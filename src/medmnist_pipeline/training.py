"""The training core shared by baseline, train, tune and evaluate: in-memory data, the LightningModule,
the Trainer built from params, and the exported model format.

Fast by design: each split is one uint8 tensor in memory; a batch is one indexing operation; scaling to floats and
the optional flip/shift happen on the batch, on the device. Epoch ``e`` reads augmented copy ``e mod K``.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from medmnist_pipeline.config import TrainParams
from medmnist_pipeline.data import DatasetMeta, load_split
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.metrics import OfficialMetrics, scores_from_logits
from medmnist_pipeline.models import build_model, relu_modules, replace_head

# Lightning's "GPU available"/"Tip" lines repeat for every run and trial; fit() prints one device line instead.
for _name in ("lightning.pytorch", "pytorch_lightning"):  # mlflow.pytorch imports the latter
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")  # torch 2.13 vs lightning 2.6
warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer`")  # ours, on purpose

MODEL_FORMAT = "medmnist-pipeline/model-v1"


# --- data ---------------------------------------------------------------------------------------------------


def as_tensors(images: np.ndarray, labels: np.ndarray, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W[, C]) -> uint8 (N, C, H, W) in RAM; labels -> float (N, L) for multi-label, else long (N,)."""
    x = torch.from_numpy(np.array(images))  # a copy in RAM (the source may be a read-only memory map)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(np.asarray(labels))
    return x, (y.float() if multi_label else y[:, 0].long())


class Batches:
    """One epoch of ``(images[idx], labels[idx])`` batches over ``order``: no Dataset, no collate, no workers."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int, drop_last: bool
    ) -> None:
        self.images, self.labels, self.order, self.batch_size = images, labels, order, batch_size
        self.drop_last = drop_last and len(order) > batch_size

    def __len__(self) -> int:
        n = len(self.order) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self):
        for i in range(len(self)):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


class MedMNISTData(pl.LightningDataModule):
    """Train and validation splits (never test) as tensors; each rank reads its own shard (DDP-correct)."""

    def __init__(
        self, prepared_dir: Path, augmented_dir: Path | None, batch_size: int, seed: int, train_fraction: float = 1.0
    ) -> None:
        super().__init__()
        self.prepared_dir, self.augmented_dir = Path(prepared_dir), augmented_dir
        self.batch_size, self.seed, self.train_fraction = batch_size, seed, train_fraction
        self.meta: DatasetMeta | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        from medmnist_pipeline.data import load_meta

        self.meta = load_meta(self.prepared_dir)
        multi = self.meta.multi_label
        self.train_x, self.train_y = as_tensors(*load_split(self.prepared_dir, "train"), multi)
        self.val_x, self.val_y = as_tensors(*load_split(self.prepared_dir, "val"), multi)
        self.copies = torch.empty(0)
        if self.augmented_dir is not None:
            copies = np.load(Path(self.augmented_dir) / "train_images.npy", mmap_mode="r")
            if len(copies):
                self.copies = torch.stack([as_tensors(c, np.zeros((len(c), 1), np.int64), False)[0] for c in copies])
        self.train_subset = torch.arange(len(self.train_x))
        if self.train_fraction < 1.0:
            self.train_subset = stratified_subset(self.train_y, self.train_fraction, self.seed)

    def _shard(self, order: torch.Tensor, equal: bool) -> torch.Tensor:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if equal:  # every rank must run the same number of training steps, or DDP hangs
            order = order[: len(order) // world * world]
        return order[rank::world]

    def train_dataloader(self) -> Batches:
        # Called every epoch (reload_dataloaders_every_n_epochs=1): the order and the copy depend only on
        # (seed, epoch), so an interrupted run resumes exactly where it was.
        epoch = self.trainer.current_epoch if self.trainer else 0
        images = self.copies[epoch % len(self.copies)] if len(self.copies) else self.train_x
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.train_subset[torch.randperm(len(self.train_subset), generator=generator)]
        return Batches(images, self.train_y, self._shard(order, equal=True), self.batch_size, drop_last=True)

    def val_dataloader(self) -> Batches:
        order = self._shard(torch.arange(len(self.val_x)), equal=False)  # metrics gather every sample once
        return Batches(self.val_x, self.val_y, order, self.batch_size * 2, drop_last=False)


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-stratified random fraction of the samples (by first label for multi-label data)."""
    key = labels[:, 0].long() if labels.ndim == 2 else labels
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for value in key.unique():
        members = (key == value).nonzero()[:, 0]
        take = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(picked).sort().values


# --- model --------------------------------------------------------------------------------------------------


CONVNET_OPTIONS = ("filters", "kernel_size", "convs_per_block", "blocks", "fc_layers", "fc_width", "dropout")


def network(model: dict[str, Any], in_channels: int, num_outputs: int, image_size: int) -> nn.Module:
    """The network that ``train.model`` describes (each architecture takes only its own keys)."""
    if model["name"] == "convnet":
        options = {k: model[k] for k in CONVNET_OPTIONS}
    elif model["name"].startswith("resnet"):
        options = {"stem": model["stem"]}
    else:
        options = {}
    return build_model(model["name"], in_channels, num_outputs, image_size, **options)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1], the MedMNIST experiments' Normalize(mean=0.5, std=0.5)."""
    return images.float().div_(127.5).sub_(1.0)


def shift_and_flip(x: torch.Tensor, flip: bool, translate: int, generator: torch.Generator | None = None):
    """Random horizontal flip and integer shift of a whole batch at once (zero padding)."""
    n = x.shape[0]
    if flip:
        mask = torch.rand(n, device=x.device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if translate:
        h, w = x.shape[-2:]
        shifts = torch.randint(-translate, translate + 1, (n, 2), device=x.device, generator=generator).float()
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, 0, 2], theta[:, 1, 2] = -2 * shifts[:, 0] / w, -2 * shifts[:, 1] / h
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x


class Classifier(pl.LightningModule):
    """Describes the model and the steps; the task type (from the dataset) picks the loss and the scores."""

    def __init__(
        self,
        model: dict[str, Any],
        task: str,
        labels: list[str],
        in_channels: int,
        image_size: int,
        optimizer: dict[str, Any],
        schedule: dict[str, Any],
        batch_augment: dict[str, Any],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # stage runs log the flattened params.yaml instead
        self.net = network(model, in_channels, len(labels), image_size)
        self.task, self.multi_label = task, task == "multi-label, binary-class"
        self.loss_fn = nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()
        self.train_metrics, self.val_metrics = OfficialMetrics(task), OfficialMetrics(task)
        self.train_loss = MeanMetric()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        x = normalize(images)
        if self.trainer.training and (self.hparams.batch_augment["flip"] or self.hparams.batch_augment["translate"]):
            x = shift_and_flip(x, self.hparams.batch_augment["flip"], self.hparams.batch_augment["translate"])
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise DivergedError(self.current_epoch, self.hparams.optimizer["lr"], loss.item())
        self.train_metrics.update(scores_from_logits(logits.detach().float(), self.task), y)
        self.train_loss.update(loss.detach(), weight=len(x))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_metrics.update(scores_from_logits(logits.float(), self.task), y)
        self.log("val/loss", self.loss_fn(logits, y), on_step=False, on_epoch=True, sync_dist=True, batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        # Validation runs after the epoch's last training batch, so the epoch's training numbers are complete
        # here too; logging them together means the History row is whole before the checkpoint is written.
        val = self.val_metrics.compute()  # already gathered across ranks
        self.log_dict({"val/acc": val["acc"], "val/auc": val["auc"]})
        self.val_metrics.reset()
        if self.train_metrics.update_count:  # (only fit() updates it)
            train = self.train_metrics.compute()
            self.log_dict(
                {"train/loss": self.train_loss.compute(), "train/acc": train["acc"], "train/auc": train["auc"]}
            )
            self.train_metrics.reset()
            self.train_loss.reset()

    def configure_optimizers(self) -> Any:
        return build_optimization(
            self.net,
            self.hparams.optimizer,
            self.hparams.schedule,
            self.trainer.max_epochs,
            self.trainer.estimated_stepping_batches,
        )


class DivergedError(PipelineError):
    def __init__(self, epoch: int, lr: float, loss: float) -> None:
        super().__init__(
            f"training diverged in epoch {epoch}: the loss became {loss}. Lower the learning rate "
            f"(optimizer.lr is {lr:g}; try {lr / 10:g}) or enable gradient_clip."
        )


def build_optimization(
    net: nn.Module, optimizer: dict[str, Any], schedule: dict[str, Any], max_epochs: int, total_steps: int
) -> dict[str, Any]:
    params = [p for p in net.parameters() if p.requires_grad]
    name, lr, wd = optimizer["name"], optimizer["lr"], optimizer["weight_decay"]
    if name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    elif name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    elif name == "sgd":
        opt = torch.optim.SGD(
            params, lr=lr, weight_decay=wd, momentum=optimizer["momentum"], nesterov=optimizer["nesterov"]
        )
    else:
        opt = torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=optimizer["momentum"])

    kind, factor = schedule["name"], schedule["factor"]
    if kind == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=factor, patience=schedule["patience"]
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/auc", "interval": "epoch", "name": "train/lr"},
        }
    if kind == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, int(total_steps)))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    steps_per_epoch = max(1, int(total_steps) // max_epochs)
    warmup = schedule["warmup_epochs"] * steps_per_epoch

    def lr_factor(step: int) -> float:  # per optimizer step: warmup, then the schedule over what is left
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if kind == "multistep":
            return factor ** ((progress >= 0.5) + (progress >= 0.75))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}


# --- callbacks ----------------------------------------------------------------------------------------------


class History(pl.Callback):
    """Per-epoch metrics as rows; saved in checkpoints, so a resumed run keeps the epochs it already did."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # (runs before ModelCheckpoint's own on_validation_end, so last.ckpt holds this epoch's row)
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/", "diag/")) and "initial" not in k
        }
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        row = {"epoch": trainer.current_epoch, **metrics, "lr": lr}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class LossGuard(pl.Callback):
    """Stop a run whose training loss explodes (> 3x its first epoch), and log the first loss beside the loss
    a random classifier would have (ln C; ln 2 per label for multi-label), so a bad start is visible at once."""

    def __init__(self) -> None:
        self.first_epoch_loss: float | None = None
        self.logged_initial = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if not self.logged_initial and trainer.current_epoch == 0 and batch_idx == 0:
            expected = math.log(2) if module.multi_label else math.log(len(module.hparams.labels))
            module.log_dict(
                {"train/initial_loss": float(outputs["loss"]), "train/initial_loss_expected": expected},
                on_step=True,
                on_epoch=False,
            )
            self.logged_initial = True

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
        if self.first_epoch_loss is None:
            self.first_epoch_loss = loss
        elif loss > 3 * self.first_epoch_loss:
            raise PipelineError(
                f"training loss exploded in epoch {trainer.current_epoch}: {loss:.4g} is more than 3x "
                f"the first epoch's {self.first_epoch_loss:.4g}. Lower optimizer.lr "
                f"(now {module.hparams['optimizer']['lr']:g})."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"first_epoch_loss": self.first_epoch_loss, "logged_initial": self.logged_initial}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.first_epoch_loss, self.logged_initial = state_dict["first_epoch_loss"], state_dict["logged_initial"]


class Diagnostics(pl.Callback):
    """The practical-methodology checks: global gradient norm, and per block the fraction of ReLU units that
    never fire on a validation batch (dead units point to a bad initialisation or a too-high learning rate)."""

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        norms = [p.grad.detach().norm() for p in module.parameters() if p.grad is not None]
        if norms:
            module.log("diag/grad_norm", torch.stack(norms).norm(), on_step=False, on_epoch=True)

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        data = trainer.datamodule
        x = normalize(data.val_x[: 2 * data.batch_size].to(module.device))
        fired: dict[str, torch.Tensor] = {}
        hooks = [
            relu.register_forward_hook(lambda m, i, out, name=name: fired.__setitem__(name, (out > 0).any(0)))
            for name, relu in relu_modules(module.net).items()
        ]
        with torch.no_grad():
            module.net(x)
        for hook in hooks:
            hook.remove()
        for name, alive in fired.items():
            # a unit = a channel (conv) or a neuron (linear) that is zero for every image of the batch
            units = alive.reshape(alive.shape[0], -1).any(1) if alive.ndim > 1 else alive
            module.log(f"diag/dead_relu/{name}", 1.0 - units.float().mean())


# --- trainer ------------------------------------------------------------------------------------------------


def launch_rank() -> int:
    """This process's global rank before Lightning starts (torchrun/SLURM set RANK; Lightning's ddp relaunch sets
    LOCAL_RANK and NODE_RANK). Non-zero ranks train but write no outputs and open no MLflow run."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0)) * 10_000


def check_hardware(trainer: Any) -> None:
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

    t = params.trainer
    check_hardware(t)
    callbacks = [
        # The best epoch by validation AUC, and every epoch's state for resuming (Lightning 2.6's save_last only
        # writes when the monitored metric improved, which would lose epochs on resume).
        ModelCheckpoint(
            dirpath=checkpoint_dir, filename="best", monitor="val/auc", mode="max", enable_version_counter=False
        ),
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
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )


def build_classifier(params: TrainParams, meta: DatasetMeta, channels_last: bool = False) -> Classifier:
    """A fresh Classifier for this dataset; with ``model.init_from``, start from another run's weights."""
    module = Classifier(
        params.model.model_dump(),
        meta.task,
        list(meta.labels),
        meta.n_channels,
        meta.size,
        params.optimizer.model_dump(),
        params.schedule.model_dump(),
        params.batch_augment.model_dump(),
        channels_last,
    )
    if params.model.init_from:
        source = load_exported(params.model.init_from)
        if source["model"]["name"] != params.model.name:
            raise PipelineError(
                f"model.init_from: {params.model.init_from} holds a {source['model']['name']}, "
                f"but model.name is {params.model.name}"
            )
        weights = {k: v for k, v in source["state_dict"].items() if not k.startswith("head.")}
        module.net.load_state_dict(weights, strict=False)
        if len(source["labels"]) == len(meta.labels) and source["task"] == meta.task:
            module.net.head.load_state_dict(
                {k[5:]: v for k, v in source["state_dict"].items() if k.startswith("head.")}
            )
        else:
            replace_head(module.net, len(meta.labels))
        if params.model.freeze == "backbone":
            for p in module.net.backbone.parameters():
                p.requires_grad_(False)
    if params.trainer.compile:
        module.net = torch.compile(module.net)
    return module


# --- exported models ----------------------------------------------------------------------------------------


def export_model(
    module: Classifier,
    meta: DatasetMeta,
    val_metrics: dict[str, float],
    path: Path,
    history: pd.DataFrame,
    run_id: str | None,
) -> None:
    """A small file for inference and transfer learning: weights and plain facts only (with the per-epoch history
    and the MLflow run that trained it, for the evaluation report); loads with ``torch.load(weights_only=True)``."""
    net = getattr(module.net, "_orig_mod", module.net)  # unwrap torch.compile
    h = module.hparams
    torch.save(
        {
            "format": MODEL_FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
            "model": dict(h.model),
            "task": h.task,
            "labels": list(h.labels),
            "in_channels": h.in_channels,
            "image_size": h.image_size,
            "dataset": {"flag": meta.flag, "size": meta.size, "md5": meta.md5},
            "val": dict(val_metrics),
            "mlflow_run_id": run_id,
            "history": [
                {k: (None if pd.isna(v) else float(v) if k != "epoch" else int(v)) for k, v in row.items()}
                for row in history.to_dict("records")
            ],
        },
        path,
    )


def load_exported(path: str | Path) -> dict[str, Any]:
    try:
        exported = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PipelineError(f"{path}: no such model file") from None
    except Exception as exc:  # noqa: BLE001 - unpickling errors of every kind mean the same
        raise PipelineError(f"{path}: not a model file of this project ({exc})") from None
    if not isinstance(exported, dict) or exported.get("format") != MODEL_FORMAT:
        raise PipelineError(f"{path}: not a model file of this project (expected format {MODEL_FORMAT})")
    return exported


def network_from_export(exported: dict[str, Any]) -> nn.Module:
    net = network(exported["model"], exported["in_channels"], len(exported["labels"]), exported["image_size"])
    net.load_state_dict(exported["state_dict"])
    return net.eval()


class ProbabilityModel(nn.Module):
    """For serving: raw pixel values (0-255, float, N x C x H x W) in, class probabilities out."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return scores_from_logits(self.net(pixels.float().div(127.5).sub(1.0)), self.task)


@torch.no_grad()
def predict_scores(net: nn.Module, images: torch.Tensor, task: str, batch_size: int = 512) -> np.ndarray:
    """Class probabilities (N, C) for uint8 images (N, C, H, W)."""
    device = next(net.parameters()).device
    out = [
        scores_from_logits(net(normalize(images[i : i + batch_size].to(device))).float(), task).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy()
