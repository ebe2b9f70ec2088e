"""Best epoch: highest validation AUC, ties broken by the lower validation loss, in the checkpoint and the history."""

from __future__ import annotations

import lightning.pytorch as pl
import pandas as pd
import torch

from medmnist_pipeline.training.selection import BestCheckpoint, best_epoch

# epoch:      0    1    2    3    4
AUC = [0.50, 0.90, 0.90, 0.80, 0.90]
LOSS = [1.00, 0.80, 0.30, 0.20, 0.40]  # epoch 2 ties epoch 1 on AUC with a far lower loss; epoch 4 ties, higher loss


class Scripted(pl.LightningModule):
    """Logs the scripted validation metrics; its one weight records the epoch it was saved at."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        with torch.no_grad():
            self.w.fill_(self.current_epoch)
        return self.w.sum() * 0

    def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
        e = self.current_epoch
        self.log("val/auc", AUC[e])
        self.log("val/loss", LOSS[e])

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):  # noqa: ANN201
        return [torch.zeros(1)]

    def val_dataloader(self):  # noqa: ANN201
        return [torch.zeros(1)]


def test_checkpoint_keeps_the_tied_epoch_with_the_lower_loss(tmp_path) -> None:  # noqa: ANN001
    checkpoint = BestCheckpoint(dirpath=tmp_path, filename="best", enable_version_counter=False)
    trainer = pl.Trainer(
        max_epochs=5,
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
    )
    trainer.fit(Scripted())
    saved = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["state_dict"]["w"].item() == 2  # not epoch 1 (earliest tie), not epoch 4 (tie, higher loss)
    assert abs(checkpoint.best_loss - 0.3) < 1e-6


def test_best_epoch_in_a_history_follows_the_same_rule() -> None:
    history = pd.DataFrame({"epoch": range(5), "val_auc": AUC, "val_loss": LOSS})
    assert best_epoch(history) == 2
    assert best_epoch(history.assign(val_auc=[0.5, float("nan"), 0.6, 0.6, 0.6])) == 3
