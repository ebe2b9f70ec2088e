"""The official MedMNIST metrics (``medmnist.evaluator.getACC``/``getAUC`` of medmnist 3.0.2) in numpy, the one rule
for predicted labels, and bootstrap intervals (training wraps them in a torchmetrics ``Metric``: classifier.py).

- ACC: binary, positive-class score > threshold; multi-class and ordinal, argmax; multi-label, the mean over labels
  of the per-label accuracy at score > threshold.
- AUC: binary, of the positive-class score; multi-class and ordinal, the unweighted mean of the one-vs-rest AUCs
  over all score columns; multi-label, the mean of the per-label AUCs.

Labels are 0/1 (binary, multi-label) or 0..C-1 (multi-class, ordinal). An AUC is undefined where ``y_true`` holds
only one class: such an AUC is NaN instead of an error, and so is a mean that includes one (a multi-class AUC with a
class absent from ``y_true``): the official code returns the same with the scikit-learn pinned here (1.9.1), whose
``roc_auc_score`` warns and returns NaN there.

The AUC is computed from ranks (Mann-Whitney U, ties counted half): equal to scikit-learn's ``roc_auc_score`` up to
float rounding (~1e-16), and ~25x faster on 624 samples, which is what makes the bootstrap cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medmnist_pipeline.metadata import BINARY, MULTI_LABEL, TASKS, THRESHOLD


def checked_scores(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) labels for single-label tasks, (N, L) for multi-label; (N, C) scores."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    if task != MULTI_LABEL:
        y_true = y_true.reshape(len(y_true), -1)
        if y_true.shape[1] != 1:
            raise ValueError(f"{task}: y_true must have shape (N,) or (N, 1), got {y_true.shape}")
        y_true = y_true[:, 0]
    if y_score.ndim != 2 or len(y_score) != len(y_true):
        raise ValueError(f"y_score must have shape (N, C) with N = {len(y_true)}, got {y_score.shape}")
    return y_true, y_score


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of one score against boolean labels; NaN when only one class is present (or a score is NaN,
    where scikit-learn would raise)."""
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(score).any():
        return float("nan")
    # average 1-based rank of each group of tied scores; the positives' rank sum gives U
    _, group, counts = np.unique(score, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2
    u = avg_rank[group[positive]].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def official_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """``medmnist.evaluator.getAUC``. ``y_true``: (N,) or (N, 1) labels, (N, L) if multi-label; ``y_score``: (N, C)."""
    y_true, y_score = checked_scores(y_true, y_score, task)
    if task == BINARY:
        return binary_auc(y_true == 1, y_score[:, -1])
    if task == MULTI_LABEL:
        per_column = [binary_auc(y_true[:, i] == 1, y_score[:, i]) for i in range(y_score.shape[1])]
    else:  # multi-class and ordinal: one-vs-rest over every score column
        per_column = [binary_auc(y_true == i, y_score[:, i]) for i in range(y_score.shape[1])]
    return float(np.mean(per_column))  # NaN if any column's AUC is


def predicted_labels(y_score: np.ndarray, task: str, threshold: float = THRESHOLD) -> np.ndarray:
    """The one rule for predicted labels, the official ACC's: (N,) classes (binary: the positive score above
    ``threshold``; multi-class and ordinal: the argmax), or (N, L) 0/1 for multi-label (each score above it)."""
    y_score = np.asarray(y_score)
    if task == BINARY:
        return (y_score[:, -1] > threshold).astype(int)
    if task == MULTI_LABEL:
        return (y_score > threshold).astype(int)
    return np.argmax(y_score, axis=-1)


def official_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = THRESHOLD) -> float:
    """``medmnist.evaluator.getACC``; shapes as in ``official_auc``. For multi-label, every label has N samples, so
    the mean of per-label accuracies is the overall mean."""
    y_true, y_score = checked_scores(y_true, y_score, task)
    return float(np.mean(predicted_labels(y_score, task, threshold) == y_true))


def bootstrap_values(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    metric: Callable[[np.ndarray, np.ndarray, str], float],
    n_resamples: int,
    seed: int,
) -> np.ndarray:
    """``metric`` on ``n_resamples`` bootstrap resamples of the images (seeded), NaN resamples dropped.

    One resample at a time keeps the memory at O(N) on large test sets; the cost is the metric's.
    """
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = np.array(
        [metric(y_true[idx], y_score[idx], task) for idx in (rng.integers(0, n, n) for _ in range(n_resamples))]
    )
    return values[~np.isnan(values)]


def bootstrap_ci(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    metric: Callable[[np.ndarray, np.ndarray, str], float],
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, y_score, task)`` over resampled test images.

    Resamples where the metric is NaN (e.g. an AUC with a class missing) are skipped; (NaN, NaN) if all are.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = bootstrap_values(y_true, y_score, task, metric, n_resamples, seed)
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def mean_log_loss(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """The training loss on probabilities: cross-entropy of the true class, or binary cross-entropy per label."""
    y_true, y_score = checked_scores(y_true, y_score, task)
    p = np.clip(np.asarray(y_score, float), 1e-7, 1 - 1e-7)
    if task == MULTI_LABEL:
        return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
    return float(-np.mean(np.log(p[np.arange(len(y_true)), y_true.astype(int)])))
