"""Error analysis for the evaluation report: confusion, per-class metrics, calibration, coverage, galleries, curves.

Pure functions of predictions (numpy, scikit-learn, pandas, matplotlib only: no torch, Lightning or MLflow), so
they can be tested on hand-computed toys and reused on any saved predictions.

Conventions shared by every function:

* ``task`` is one of the four MedMNIST task strings; ``"ordinal-regression"`` is treated as multi-class.
* Single-label tasks: ``y_true`` holds (N,) class indices ((N, 1) as stored in MedMNIST files is accepted) and
  ``y_score`` (N, C) softmax rows (C = 2 for binary); the prediction is the argmax.
* Multi-label: ``y_true`` is (N, L) 0/1 and ``y_score`` (N, L) sigmoid outputs; a label is predicted positive when
  ``p > 0.5`` (the rule of the official MedMNIST evaluator and of torchmetrics).
* Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas, never through pyplot: no window,
  no global pyplot state to leak, no ``matplotlib.use`` side effect on the caller. ``save_figure`` writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from medmnist_pipeline.figures import new_figure, note, save_figure  # noqa: F401 - save_figure: callers' one import
from medmnist_pipeline.metadata import MULTI_LABEL, TASKS, THRESHOLD
from medmnist_pipeline.metrics import predicted_labels

NAME_MAX = 20  # label names longer than this are cut with an ellipsis on figures


# --------------------------------------------------------------------------------------------------------------
# Input checks and small shared helpers
# --------------------------------------------------------------------------------------------------------------


def is_multilabel(task: str) -> bool:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return task == MULTI_LABEL


def check_inputs(
    y_true: Any, y_score: Any, task: str, label_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes once, so every function below can assume clean arrays."""
    multilabel = is_multilabel(task)
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=float)
    if y_score.ndim != 2:
        raise ValueError(f"y_score must be (N, C), got shape {y_score.shape}")
    n, c = y_score.shape
    if multilabel:
        if y_true.shape != y_score.shape:
            raise ValueError(f"multi-label y_true {y_true.shape} and y_score {y_score.shape} must have the same shape")
        y_true = y_true.astype(int)
    else:
        if y_true.ndim == 2 and y_true.shape[1] == 1:  # MedMNIST stores labels as (N, 1)
            y_true = y_true[:, 0]
        if y_true.shape != (n,):
            raise ValueError(f"y_true must be (N,) = ({n},) class indices, got shape {y_true.shape}")
        y_true = y_true.astype(int)
        if n and (y_true.min() < 0 or y_true.max() >= c):
            raise ValueError(f"class indices must lie in [0, {c}), got [{y_true.min()}, {y_true.max()}]")
    if label_names is not None and len(label_names) != c:
        raise ValueError(f"{len(label_names)} label names for {c} score columns")
    return y_true, y_score


def _row_normalise(counts: np.ndarray) -> np.ndarray:
    """Rows divided by their sums; an empty row (class absent from y_true) stays all zeros rather than NaN."""
    sums = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros(counts.shape, dtype=float), where=sums > 0)


def _short(name: str, limit: int = NAME_MAX) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _heatmap(ax: Any, values: np.ndarray, fmt: str, rows: Sequence[str], cols: Sequence[str], vmax: float) -> None:
    """Cells coloured and written with ``values``; white digits on dark cells so they stay readable."""
    ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax if vmax > 0 else 1, aspect="auto")
    size = max(5.0, 9.0 - 0.3 * values.shape[1])  # rows get a fixed height per label, so columns set the room
    for (i, j), value in np.ndenumerate(values):
        dark = value > 0.6 * vmax
        ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=size, color="white" if dark else "black")
    short_cols = [_short(c) for c in cols]
    rotate = max(map(len, short_cols)) > 3  # long names would overlap if written horizontally
    ax.set_xticks(
        range(len(cols)),
        short_cols,
        fontsize=8,
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows], fontsize=8)


# --------------------------------------------------------------------------------------------------------------
# 1-3. Confusion matrices, per-class report, most confused pairs
# --------------------------------------------------------------------------------------------------------------


def confusion(y_true: Any, y_score: Any, task: str, label_names: Sequence[str]) -> dict[str, Any]:
    """Counts and row-normalised confusion matrices.

    Single-label: ``counts[i, j]`` = images of true class i predicted as j, shape (C, C).
    Multi-label: one 2x2 matrix per label at p > 0.5, shape (L, 2, 2), rows true 0/1, columns predicted 0/1
    (scikit-learn's ``[[TN, FP], [FN, TP]]``). ``normalized`` divides each row by its sum (recall per true row).
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task, label_names)
    y_pred = predicted_labels(y_score, task)
    if multilabel:
        counts = multilabel_confusion_matrix(y_true, y_pred, labels=range(y_score.shape[1]))
    else:
        counts = confusion_matrix(y_true, y_pred, labels=range(y_score.shape[1]))
    return {
        "counts": counts,
        "normalized": _row_normalise(counts),
        "label_names": list(label_names),
        "multilabel": multilabel,
    }


def plot_confusion(conf: dict[str, Any], title: str = "Confusion matrix") -> Figure:
    """Counts (left) and row-normalised (right) side by side, from the dict ``confusion`` returns.

    Multi-label: one row per label with the four cells of its 2x2 matrix (TN, FP, FN, TP) as columns, and their
    rates (specificity, FPR, FNR, recall) on the right: 14 tiny 2x2 grids would be unreadable.
    """
    counts, norm, names = conf["counts"], conf["normalized"], conf["label_names"]
    if conf["multilabel"]:
        count_cells = counts.reshape(len(names), 4)
        rate_cells = norm.reshape(len(names), 4)
        fig = new_figure(10, 0.32 * len(names) + 1.6)
        left, right = fig.subplots(1, 2)
        _heatmap(left, count_cells, "d", names, ["TN", "FP", "FN", "TP"], count_cells.max())
        _heatmap(right, rate_cells, ".2f", names, ["TNR", "FPR", "FNR", "TPR"], 1.0)
        for ax in (left, right):
            ax.set_xlabel("cell of the label's 2x2 matrix (threshold 0.5)")
    else:
        side = max(3.8, 0.5 * len(names) + 2.2)
        fig = new_figure(2 * side, side)
        left, right = fig.subplots(1, 2)
        _heatmap(left, counts, "d", names, names, counts.max())
        _heatmap(right, norm, ".2f", names, names, 1.0)
        for ax in (left, right):
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
    left.set_title("counts", fontsize=9)
    right.set_title("row-normalised (share of each true class)", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def per_class_report(y_true: Any, y_score: Any, task: str, label_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (per label for multi-label), one row each, indexed by name.

    Undefined ratios (a class never predicted, or absent) are reported as 0, as scikit-learn's zero_division=0.
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task, label_names)
    y_pred = predicted_labels(y_score, task)
    labels = None if multilabel else list(range(y_score.shape[1]))  # keep classes absent from this split
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    frame = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "support": support},
        index=pd.Index(list(label_names), name="label"),
    )
    return frame


def most_confused_pairs(conf_counts: Any, label_names: Sequence[str], k: int = 5) -> list[tuple[str, str, int]]:
    """The k largest off-diagonal cells of a (C, C) count matrix as ``(true name, predicted name, count)``.

    Empty cells are left out (a pair never confused is not a finding), so fewer than k may come back.
    Ties keep row-major order (true class, then predicted class), so the result is deterministic.
    """
    counts = np.asarray(conf_counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(label_names):
        raise ValueError(
            f"need a square (C, C) single-label count matrix for {len(label_names)} names, got shape {counts.shape}"
        )
    off = counts.astype(int).copy()
    np.fill_diagonal(off, 0)
    flat = off.ravel()
    order = np.argsort(-flat, kind="stable")
    pairs = []
    for index in order[: max(k, 0)]:
        if flat[index] <= 0:
            break
        i, j = divmod(int(index), counts.shape[0])
        pairs.append((label_names[i], label_names[j], int(flat[index])))
    return pairs


# --------------------------------------------------------------------------------------------------------------
# 6. Ranking curves: ROC / PR for binary tasks, per-label AUC for multi-label
# --------------------------------------------------------------------------------------------------------------


def plot_roc_pr(y_true: Any, y_score: Any, title: str = "Binary classifier") -> Figure:
    """ROC (with AUC) and precision-recall (with average precision) side by side, scored by ``y_score[:, 1]``."""
    y_true, y_score = check_inputs(y_true, y_score, "binary-class")
    if y_score.shape[1] != 2:
        raise ValueError(f"binary y_score must be (N, 2), got {y_score.shape}")
    positive = y_score[:, 1]
    fig = new_figure(10, 4.5)
    roc_ax, pr_ax = fig.subplots(1, 2)
    if len(np.unique(y_true)) < 2:  # both curves are undefined with a single class
        note(roc_ax, "ROC needs both classes in y_true")
        note(pr_ax, "PR needs both classes in y_true")
    else:
        fpr, tpr, _ = roc_curve(y_true, positive)
        roc_ax.plot(fpr, tpr, label=f"AUC = {roc_auc_score(y_true, positive):.3f}")
        roc_ax.plot([0, 1], [0, 1], "--", color="0.5", label="chance")
        roc_ax.set_xlabel("false positive rate")
        roc_ax.set_ylabel("true positive rate")
        precision, recall, _ = precision_recall_curve(y_true, positive)
        pr_ax.step(recall, precision, where="post", label=f"AP = {average_precision_score(y_true, positive):.3f}")
        pr_ax.axhline(y_true.mean(), ls="--", color="0.5", label=f"prevalence = {y_true.mean():.3f}")
        pr_ax.set_xlabel("recall")
        pr_ax.set_ylabel("precision")
        for ax in (roc_ax, pr_ax):
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
    roc_ax.set_title("ROC", fontsize=10)
    pr_ax.set_title("precision-recall", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return fig


def per_label_auc(y_true: Any, y_score: Any, label_names: Sequence[str]) -> pd.Series:
    """ROC AUC per label; NaN where the label has only one class in y_true (AUC undefined)."""
    y_true, y_score = check_inputs(y_true, y_score, MULTI_LABEL, label_names)
    aucs = [
        roc_auc_score(y_true[:, j], y_score[:, j]) if len(np.unique(y_true[:, j])) == 2 else np.nan
        for j in range(y_score.shape[1])
    ]
    return pd.Series(aucs, index=list(label_names), name="auc", dtype=float)


def plot_per_label_auc(y_true: Any, y_score: Any, label_names: Sequence[str], title: str = "AUC per label") -> Figure:
    """Horizontal bars of per-label AUC, best at the top; labels with undefined AUC are listed as n/a."""
    aucs = per_label_auc(y_true, y_score, label_names).sort_values(ascending=True, na_position="first")
    fig = new_figure(6.5, 0.3 * len(aucs) + 1.5)
    ax = fig.subplots()
    positions = np.arange(len(aucs))
    ax.barh(positions, aucs.fillna(0).to_numpy(), color="tab:blue")
    for y, value in zip(positions, aucs.to_numpy(), strict=True):
        ax.text(
            value + 0.01 if np.isfinite(value) else 0.01,
            y,
            f"{value:.3f}" if np.isfinite(value) else "n/a",
            va="center",
            fontsize=7,
        )
    ax.axvline(0.5, ls="--", color="0.5", lw=1, label="chance")
    if aucs.notna().any():
        ax.axvline(aucs.mean(), ls=":", color="tab:red", lw=1, label=f"macro mean {aucs.mean():.3f}")
    ax.set_yticks(positions, [_short(name) for name in aucs.index], fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("ROC AUC")
    # below the whole axes, x-label included: constrained layout makes room for an "outside" figure legend, where a
    # legend anchored under the axes covered the x-label on multi-class figures
    fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncol=2)
    ax.set_title(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------------------
# 7. Galleries: the most confidently wrong and the least confidently right images
# --------------------------------------------------------------------------------------------------------------


def worst_errors(y_true: Any, y_score: Any, task: str, k: int = 16) -> np.ndarray:
    """Indices of up to k most confidently wrong predictions, worst first.

    Single-label: wrong argmax, sorted by the predicted class's probability, descending.
    Multi-label: images with any label wrong (p > 0.5 vs y), sorted by their largest |p - y|, descending.
    Ties keep input order. Fewer than k (possibly none) come back when there are fewer errors.
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task)
    if multilabel:
        wrong = (predicted_labels(y_score, MULTI_LABEL) != y_true).any(axis=1)
        badness = np.abs(y_score - y_true).max(axis=1)
    else:
        wrong = y_score.argmax(axis=1) != y_true
        badness = y_score.max(axis=1)
    candidates = np.flatnonzero(wrong)
    return candidates[np.argsort(-badness[candidates], kind="stable")][: max(k, 0)]


def uncertain_correct(y_true: Any, y_score: Any, task: str, k: int = 16) -> np.ndarray:
    """Indices of up to k correct predictions with the lowest confidence, least confident first.

    Single-label: right argmax, sorted by the predicted class's probability, ascending.
    Multi-label: images with every label right, sorted by their largest |p - y| descending, i.e. the label that
    came closest to flipping (the mirror of ``worst_errors``). Ties keep input order.
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task)
    if multilabel:
        right = (predicted_labels(y_score, MULTI_LABEL) == y_true).all(axis=1)
        sureness = -np.abs(y_score - y_true).max(axis=1)
    else:
        right = y_score.argmax(axis=1) == y_true
        sureness = y_score.max(axis=1)
    candidates = np.flatnonzero(right)
    return candidates[np.argsort(sureness[candidates], kind="stable")][: max(k, 0)]


def gallery_captions(
    y_true: Any, y_score: Any, task: str, label_names: Sequence[str], indices: Sequence[int]
) -> list[str]:
    """Captions for ``plot_gallery``: "true: pneumonia\\npred: normal (0.97)".

    Multi-label: the positive labels on each side ("-" for none), then the label furthest from its truth with
    its target and probability ("mass: y=0, p=0.93").
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task, label_names)
    captions = []
    for i in indices:
        if multilabel:
            true = ", ".join(label_names[j] for j in np.flatnonzero(y_true[i])) or "-"
            pred = ", ".join(label_names[j] for j in np.flatnonzero(y_score[i] > THRESHOLD)) or "-"
            j = int(np.abs(y_score[i] - y_true[i]).argmax())
            captions.append(
                f"true: {_short(true, 24)}\npred: {_short(pred, 24)}\n"
                f"{_short(label_names[j], 14)}: y={y_true[i, j]}, p={y_score[i, j]:.2f}"
            )
        else:
            pred = int(y_score[i].argmax())
            captions.append(
                f"true: {_short(label_names[y_true[i]])}\npred: {_short(label_names[pred])} ({y_score[i, pred]:.2f})"
            )
    return captions


def plot_gallery(
    images: np.ndarray, indices: Sequence[int], captions: Sequence[str], title: str, columns: int = 6
) -> Figure:
    """A grid of ``images[indices]`` (uint8, grey in the gray colour map or RGB), one caption under each.

    No indices gives a valid one-panel figure that says "none", so a report never misses its image.
    """
    indices = [int(i) for i in indices]
    if len(captions) != len(indices):
        raise ValueError(f"{len(captions)} captions for {len(indices)} images")
    if not indices:
        fig = new_figure(4, 2)
        note(fig.subplots(), "none")
        fig.suptitle(title, fontsize=10)
        return fig
    cols = min(columns, len(indices))
    rows = -(-len(indices) // cols)  # ceiling division
    caption_lines = max(caption.count("\n") + 1 for caption in captions)
    fig = new_figure(2.0 * cols, (1.9 + 0.17 * caption_lines) * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()  # unused cells of the last row stay blank
    for ax, index, caption in zip(axes, indices, captions, strict=False):
        image = np.asarray(images[index])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
