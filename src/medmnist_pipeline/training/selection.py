"""Choosing the best epoch: the highest validation AUC, and on an exact tie the lower validation loss.

Lightning's ``ModelCheckpoint`` keeps the earliest of equal values, so a later epoch with the same AUC (common on
small validation sets, where AUC moves in steps of 1 / (positives x negatives)) but a far lower loss and better
accuracy was dropped. ``BestCheckpoint`` and ``best_epoch`` apply the same rule, so the saved weights and the
reported best epoch always agree.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

MONITOR, TIE_BREAKER = "val/auc", "val/loss"


def best_epoch(history: pd.DataFrame, auc: str = "val_auc", loss: str = "val_loss") -> int:
    """Row label of the best epoch in a per-epoch history: highest AUC, then lowest loss, then earliest."""
    ranked = history.assign(_auc=history[auc].fillna(-math.inf), _loss=history[loss].fillna(math.inf))
    return ranked.sort_values(["_auc", "_loss"], ascending=[False, True], kind="stable").index[0]


class BestCheckpoint(ModelCheckpoint):
    """``best.ckpt``: the epoch with the highest ``val/auc``; an equal ``val/auc`` with a lower ``val/loss`` replaces
    it. The tie-breaking loss is part of the callback's state, so a resumed run keeps applying the rule."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(monitor=MONITOR, mode="max", save_top_k=1, **kwargs)
        self.best_loss = math.inf

    def _save_monitor_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        current, loss = monitor_candidates.get(MONITOR), monitor_candidates.get(TIE_BREAKER)
        best = self.best_k_models.get(self.best_model_path)
        tie = current is not None and best is not None and bool(torch.eq(current, best))
        if tie and loss is not None and float(loss) < self.best_loss:
            if trainer.strategy.reduce_boolean_decision(True):
                self._update_best_and_save(current, trainer, monitor_candidates)
                self.best_loss = float(loss)
            return
        before = self.best_model_score
        super()._save_monitor_checkpoint(trainer, monitor_candidates)
        if self.best_model_score is not before and loss is not None:  # a new best was saved
            self.best_loss = float(loss)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_loss": self.best_loss}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.best_loss = state_dict.get("best_loss", math.inf)
