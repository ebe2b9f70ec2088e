"""A training run's per-epoch curves (``reports/<stage>/curves.png``): loss, accuracy and AUC per epoch, from the
history its ``History`` callback recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medmnist_pipeline.figures import new_figure, note


def plot_series(ax: Any, x: pd.Series, frame: pd.DataFrame, columns: Sequence[str]) -> int:
    """Plot each present column against x, skipping its NaNs (Lightning logs train and val on separate rows)."""
    drawn = 0
    for column in columns:
        if column not in frame:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        keep = values.notna() & x.notna()
        if keep.any():
            ax.plot(x[keep], values[keep], "o-", markersize=3, label=column)
            drawn += 1
    return drawn


def plot_history(history: pd.DataFrame, title: str = "Training history") -> Figure:
    """Loss (left) and accuracy/AUC (right) per epoch; missing or all-NaN columns are simply left out."""
    if "epoch" in history:
        x = pd.to_numeric(history["epoch"], errors="coerce")
    else:  # the row number is the best stand-in for a log without epochs
        x = pd.Series(np.arange(len(history)), index=history.index)
    fig = new_figure(10, 4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for ax, columns, ylabel in (
        (loss_ax, ["train_loss", "val_loss"], "loss"),
        (metric_ax, ["train_acc", "val_acc", "val_auc"], "metric"),
    ):
        if plot_series(ax, x, history, columns):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        else:
            note(ax, f"no {ylabel} logged")
    loss_ax.set_title("loss", fontsize=10)
    metric_ax.set_title("accuracy / AUC", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig
