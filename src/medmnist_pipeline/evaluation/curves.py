"""Learning curves: per epoch (one model, or several on shared axes), and against the size of the training set,
with the one-sentence reading of the size curve the evaluation report uses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medmnist_pipeline.figures import new_figure, note, save_figure

# read_size_curve: below this drop in validation error per doubling of the data, the curve counts as flat.
# One point is about the standard error of a 10 % error rate measured on 1,000 images (sqrt(.1 * .9 / 1000)
# = 0.95 points), so a smaller drop is within the noise of a single validation split.
MIN_DROP_POINTS = 1.0


def _plot_series(ax: Any, x: pd.Series, frame: pd.DataFrame, columns: Sequence[str]) -> int:
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
        if _plot_series(ax, x, history, columns):
            ax.set_xlabel("epoch")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
        else:
            note(ax, f"no {ylabel} logged")
    loss_ax.set_title("loss", fontsize=10)
    metric_ax.set_title("accuracy / AUC", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def plot_histories(histories: pd.DataFrame, title: str = "Learning curves") -> Figure:
    """Several models' per-epoch curves on shared axes: loss (train dashed, val solid), validation AUC and ACC.

    ``histories`` is a long table with a ``model`` column and ``plot_history``'s columns.
    """
    fig = new_figure(14, 4)
    axes = fig.subplots(1, 3)
    for index, (model, frame) in enumerate(histories.groupby("model", sort=False)):
        colour = f"C{index}"
        x = pd.to_numeric(frame["epoch"], errors="coerce")
        for ax, column, style in (
            (axes[0], "train_loss", "--"),
            (axes[0], "val_loss", "-"),
            (axes[1], "val_auc", "-"),
            (axes[2], "val_acc", "-"),
        ):
            if column in frame and frame[column].notna().any():
                keep = frame[column].notna()
                label = f"{model} {column.split('_')[0]}" if ax is axes[0] else model
                ax.plot(x[keep], frame[column][keep], style, color=colour, marker="o", markersize=2, label=label)
    for ax, name in zip(axes, ("loss (train --, val -)", "validation AUC", "validation ACC"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=10)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:
            note(ax, "nothing logged")
    fig.suptitle(title, fontsize=11)
    return fig


def plot_size_curve(df: pd.DataFrame, title: str = "Learning curve vs training-set size") -> Figure:
    """Train and validation error vs number of training images (log x), validation AUC on a twin axis."""
    df = df.sort_values("n_train").reset_index(drop=True)
    x = pd.to_numeric(df["n_train"], errors="coerce")
    fig = new_figure(6.5, 4.2)
    ax = fig.subplots()
    drawn = _plot_series(ax, x, df, ["train_error", "val_error"])
    ax.set_xscale("log")
    sizes = x.dropna().unique()
    ax.set_xticks(sizes, [f"{int(n):,}" for n in sizes], fontsize=8)  # the measured sizes, not powers of ten
    ax.minorticks_off()
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("error")
    handles, labels = ax.get_legend_handles_labels()
    if "val_auc" in df and df["val_auc"].notna().any():
        twin = ax.twinx()
        keep = df["val_auc"].notna()
        twin.plot(x[keep], df["val_auc"][keep], "s--", color="tab:green", markersize=3, label="val_auc")
        twin.set_ylabel("validation AUC")
        more_handles, more_labels = twin.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        # below the axes: "best" ignores the twin axis' line and would cover it
        ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
    elif not drawn:
        note(ax, "no errors logged")
    ax.set_title(title, fontsize=10)
    return fig


def read_size_curve(df: pd.DataFrame, min_drop_points: float = MIN_DROP_POINTS) -> str:
    """One sentence reading the size curve: is validation error still falling, and how big is the train/val gap?

    Errors are fractions in [0, 1]; "points" are percentage points. The slope is the least-squares drop in
    validation error per doubling of n_train over the last doubling (points with n_train >= max / 2), or
    between the last two sizes when the last doubling holds a single point. The curve counts as still falling
    when that drop is at least ``min_drop_points`` (default 1 point; see MIN_DROP_POINTS for why).
    """
    rows = df.dropna(subset=["n_train", "train_error", "val_error"]).sort_values("n_train")
    if len(rows) < 2 or rows["n_train"].nunique() < 2:
        raise ValueError("need at least two training-set sizes with train_error and val_error")
    errors = rows[["train_error", "val_error"]].to_numpy(dtype=float)
    if errors.min() < 0 or errors.max() > 1:
        raise ValueError("train_error and val_error must be fractions in [0, 1]")
    n = rows["n_train"].to_numpy(dtype=float)
    val = rows["val_error"].to_numpy(dtype=float) * 100
    gap = (rows["val_error"].iloc[-1] - rows["train_error"].iloc[-1]) * 100
    last = n >= n[-1] / 2
    if np.unique(n[last]).size < 2:
        last = np.arange(len(n)) >= len(n) - 2
    slope = np.polyfit(np.log2(n[last]), val[last], 1)[0]  # points of error per doubling (negative = falling)
    drop = -slope
    if drop >= min_drop_points:
        return (
            f"Validation error still falls by {drop:.1f} points per doubling of the data and the train/val gap "
            f"is {gap:.1f} points: more data would likely help."
        )
    trend = f"falls by only {drop:.1f}" if drop >= 0 else f"rises by {-drop:.1f}"
    return (
        f"Validation error is flat ({trend} points per doubling of the data) and the train/val gap is "
        f"{gap:.1f} points: more data is unlikely to help much."
    )


def history_frame(histories: dict[str, Sequence[dict[str, Any]]]) -> pd.DataFrame:
    """Per-epoch histories of several models (name -> rows), as one long table with a ``model`` column."""
    long = pd.concat(
        [pd.DataFrame(list(rows)).assign(model=name) for name, rows in histories.items()], ignore_index=True
    )
    return long[["model", *long.columns.drop("model")]]


def write_learning_curves(histories: pd.DataFrame, out_dir: Path, title: str) -> None:
    """``learning_curves.csv`` (wide: ``<model>_<metric>`` per epoch, a DVC plot) and ``learning_curves.png``."""
    wide = histories.pivot_table(index="epoch", columns="model", sort=False)
    wide.columns = [f"{model}_{column}" for column, model in wide.columns]
    wide.reset_index().to_csv(out_dir / "learning_curves.csv", index=False)
    save_figure(plot_histories(histories, title), out_dir / "learning_curves.png")
