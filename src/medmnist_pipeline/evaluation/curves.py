"""Learning curves of the evaluated models: several models' per-epoch curves on shared axes, and the curve against
the size of the training set with its reading (a fitted slope with an interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from medmnist_pipeline.figures import new_figure, note, note_figure, save_figure
from medmnist_pipeline.training.curves import plot_series


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
    drawn = plot_series(ax, x, df, ["train_error", "val_error"])
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


def write_size_curve(sizes: pd.DataFrame, out_dir: Path) -> str | None:
    """``size_curve.csv`` and ``size_curve.png``; returns the curve read with its noise (``size_reading``), or None
    with fewer than two sizes."""
    sizes.to_csv(out_dir / "size_curve.csv", index=False)
    figure = (
        plot_size_curve(sizes, "Training-set size curve (tuned configuration)")
        if len(sizes)
        else note_figure("not computed: evaluate.learning_curve.fractions is []")
    )
    save_figure(figure, out_dir / "size_curve.png")
    return size_reading(sizes) if len(sizes) >= 2 else None


def size_reading(sizes: pd.DataFrame) -> str:
    """The size curve read with its noise: a fitted slope per doubling with an interval, and the final gap."""
    slope = size_slope(sizes["fraction"].tolist(), sizes["val_error"].tolist())
    last = sizes.sort_values("fraction").iloc[-1]
    gap = 100 * (last["val_error"] - last["train_error"])
    return (
        f"{slope.sentence()} Train/val error gap at the full training set: {gap:.1f} points "
        "(errors at each run's AUC-selected epoch)."
    )


@dataclass(frozen=True)
class SizeSlope:
    """Least-squares slope of error against log2(training fraction): change in error per doubling of the data."""

    slope: float
    low: float
    high: float
    points: int
    confidence: float

    def sentence(self, what: str = "validation error") -> str:
        if math.isnan(self.low):
            return f"Cannot tell how {what} changes with more data: {self.points} points are too few for an interval."
        per = (
            f"{100 * self.slope:+.1f} points per doubling ({self.confidence:.0%} CI {100 * self.low:+.1f} to "
            f"{100 * self.high:+.1f}, {self.points} runs)"
        )
        if self.low <= 0 <= self.high:
            return f"Cannot tell whether more data would lower {what}: {per}; the interval includes 0."
        if self.high < 0:
            return f"{what.capitalize()} falls with more data: {per}; more data would likely help."
        return f"{what.capitalize()} rises with more data: {per}; check the runs (more data should not hurt)."


def size_slope(fractions: Sequence[float], errors: Sequence[float], confidence: float = 0.95) -> SizeSlope:
    """Fit error = a + b log2(fraction) over all runs (several seeds per fraction are separate points) and give b
    with its t interval; the interval is NaN with fewer than 3 points or one fraction only."""
    x = np.log2(np.asarray(fractions, float))
    y = np.asarray(errors, float)
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 2 or np.ptp(x) == 0:
        return SizeSlope(math.nan, math.nan, math.nan, n, confidence)
    fit = stats.linregress(x, y)
    if n < 3:
        return SizeSlope(float(fit.slope), math.nan, math.nan, n, confidence)
    half = stats.t.ppf(0.5 + confidence / 2, n - 2) * fit.stderr
    return SizeSlope(float(fit.slope), float(fit.slope - half), float(fit.slope + half), n, confidence)
