"""The LightningModule: a network from ``train.model``, the loss and metrics its task type needs, the per-batch
scaling and augmentation on the device, and the optimizer and schedule from ``train.optimizer``/``train.schedule``.

It is handed typed params sections (lightning-hydra-template's way) and keeps a plain dumped copy only for
``save_hyperparameters``, so Lightning checkpoints stay loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from medmnist_pipeline.config.train import (
    BackboneModel,
    BatchAugmentParams,
    ModelSection,
    OptimizerParams,
    ScheduleParams,
    TrainParams,
)
from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.metadata import MULTI_LABEL, TASKS
from medmnist_pipeline.metrics import official_acc, official_auc
from medmnist_pipeline.models.build import initial_model
from medmnist_pipeline.models.conventions import normalize, scores_from_logits
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.models.networks import Network, param_groups


def shift_and_flip(
    x: torch.Tensor, flip: bool, translate: int, generator: torch.Generator | None = None
) -> torch.Tensor:
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
        net: Network,
        model: ModelSection,
        optimizer: OptimizerParams,
        schedule: ScheduleParams,
        batch_augment: BatchAugmentParams,
        meta: DatasetMeta,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        sections = {"model": model, "optimizer": optimizer, "schedule": schedule, "batch_augment": batch_augment}
        self.save_hyperparameters({k: v.model_dump() for k, v in sections.items()}, logger=False)
        self.model_params, self.optimizer_params, self.schedule_params = model, optimizer, schedule
        self.batch_augment = batch_augment
        self.task, self.labels = meta.task, tuple(meta.labels)
        self.in_channels, self.image_size, self.channels_last = meta.n_channels, meta.size, channels_last
        self.net = net
        self.multi_label = self.task == MULTI_LABEL
        self.loss_fn = nn.BCEWithLogitsLoss() if self.multi_label else nn.CrossEntropyLoss()
        self.train_metrics, self.val_metrics = OfficialMetrics(self.task), OfficialMetrics(self.task)
        self.train_loss = MeanMetric()
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.head(x) if x.ndim == 2 else self.net(x)  # (B, F): cached features (model.feature_cache)

    def on_fit_start(self) -> None:
        model = self.model_params
        if isinstance(model, BackboneModel) and model.feature_cache:  # the frozen backbone runs once per image here
            from medmnist_pipeline.models.pretrained import compute_features

            backbone, data = getattr(self.net, "_orig_mod", self.net).backbone, self.trainer.datamodule
            data.use_features(lambda images: compute_features(backbone, images, data.eval_batch_size))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, labels = batch
        if images.ndim == 2:  # cached features: nothing to scale or augment
            return images, labels
        x = normalize(images)
        augment = self.batch_augment
        if self.trainer.training and (augment.flip or augment.translate):
            x = shift_and_flip(x, augment.flip, augment.translate)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise DivergedError(self.current_epoch, self.optimizer_params.lr, loss.item())
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
        model = self.model_params
        return build_optimization(
            self.net,
            model.backbone_lr_factor if isinstance(model, BackboneModel) else 1.0,  # (logreg: no backbone)
            self.optimizer_params,
            self.schedule_params,
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
    net: Network,
    backbone_lr_factor: float,
    optimizer: OptimizerParams,
    schedule: ScheduleParams,
    max_epochs: int,
    total_steps: int,
) -> dict[str, Any]:
    lr, wd = optimizer.lr, optimizer.weight_decay
    params = param_groups(getattr(net, "_orig_mod", net), lr, backbone_lr_factor)  # (unwrap torch.compile)
    if optimizer.name == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=wd)
    elif optimizer.name == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    elif optimizer.name == "sgd":
        opt = torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=optimizer.momentum, nesterov=optimizer.nesterov)
    else:
        opt = torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=optimizer.momentum)

    kind, factor = schedule.name, schedule.factor
    if kind == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="max", factor=factor, patience=schedule.patience
        )
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/auc", "interval": "epoch", "name": "train/lr"},
        }
    if kind == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in params], total_steps=max(1, int(total_steps))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "train/lr"}}

    steps_per_epoch = max(1, int(total_steps) // max_epochs)
    warmup = schedule.warmup_epochs * steps_per_epoch

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


def build_classifier(section: TrainParams, meta: DatasetMeta, channels_last: bool = False) -> Classifier:
    """A fresh Classifier for this dataset, with the network ``train.model`` starts from (``initial_model``)."""
    model = section.model
    init_from = ModelFile.load(model.init_from) if isinstance(model, BackboneModel) and model.init_from else None
    net = initial_model(section.model, meta.n_channels, tuple(meta.labels), meta.task, meta.size, init_from)
    s = section
    module = Classifier(net, s.model, s.optimizer, s.schedule, s.batch_augment, meta, channels_last)
    if section.trainer.compile:
        module.net = torch.compile(module.net)
    return module


class OfficialMetrics(Metric):
    """The official ACC and AUC over a whole epoch, for a LightningModule.

    It keeps every score and target (gathered across DDP ranks by concatenation) and computes the numpy functions of
    metrics.py once in ``compute``, so the numbers are exactly the evaluator's. A val split of MedMNIST is at most
    ~100k x 14 floats, so keeping it all is cheap. The results are float32 tensors (the default dtype, which every
    accelerator supports); an undefined AUC is ``tensor(nan)``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, task: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.task = task
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """``scores``: (B, C) probabilities; ``targets``: (B,) or (B, 1) class indices, (B, L) 0/1 for multi-label."""
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().long().reshape(len(targets), -1))

    def compute(self) -> dict[str, torch.Tensor]:
        scores = dim_zero_cat(self.scores).cpu().numpy()
        targets = dim_zero_cat(self.targets).cpu().numpy()
        return {
            "acc": torch.tensor(official_acc(targets, scores, self.task)),
            "auc": torch.tensor(official_auc(targets, scores, self.task)),
        }
