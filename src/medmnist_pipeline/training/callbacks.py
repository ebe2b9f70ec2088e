"""Lightning callbacks of every training run: the per-epoch history, the loss guard, the optional diagnostics, and
the per-epoch reseeding that makes a resumed run draw the same random numbers as an uninterrupted one."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.models.conventions import normalize
from medmnist_pipeline.models.networks import relu_modules


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
            expected = math.log(2) if module.multi_label else math.log(len(module.labels))
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
                f"(now {module.optimizer_params.lr:g})."
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
        x = normalize(data.val_images(data.eval_batch_size).to(module.device))
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


class ReseedEachEpoch(pl.Callback):
    """Seed the global RNGs (dropout, on-device augmentation) from (seed, epoch) at each epoch start, so that a
    run resumed from a checkpoint draws the same numbers as one that never stopped."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        pl.seed_everything(self.seed * 1_000 + trainer.current_epoch + trainer.global_rank * 7_919, verbose=False)
