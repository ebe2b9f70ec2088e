"""The official MedMNIST metrics (``medmnist.evaluator.getACC``/``getAUC`` of medmnist 3.0.2), in numpy for reports
and as a torchmetrics ``Metric`` for training.

- AUC: binary, of the positive-class score; multi-class and ordinal, the unweighted mean of one-vs-rest AUCs;
  multi-label, the mean of the per-label AUCs.
- ACC: binary, positive score > 0.5; multi-class and ordinal, argmax; multi-label, the mean over labels of the
  per-label accuracy at > 0.5.

Where a class (or label) is absent from ``y_true`` its AUC is undefined: it is left out of the mean (the official
code raises), and the AUC is NaN when no class is left.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torchmetrics import Metric

MULTI_LABEL = "multi-label, binary-class"


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per-label sigmoid for multi-label data, softmax over classes otherwise (binary models have 2 outputs)."""
    return torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=-1)


def _single_label(y_true: np.ndarray) -> np.ndarray:
    return np.asarray(y_true).reshape(len(y_true), -1)[:, 0]


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def official_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    y_score = np.asarray(y_score, dtype=np.float64)
    if task == MULTI_LABEL:
        per_label = [_auc(y_true[:, i], y_score[:, i]) for i in range(y_score.shape[1])]
    elif task == "binary-class":
        return _auc(_single_label(y_true), y_score[:, -1])
    else:
        y = _single_label(y_true)
        per_label = [_auc((y == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: nothing defined
        return float(np.nanmean(per_label))


def official_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    y_score = np.asarray(y_score)
    if task == MULTI_LABEL:
        return float(np.mean((y_score > threshold) == (np.asarray(y_true) > 0.5)))
    y = _single_label(y_true)
    if task == "binary-class":
        return float(np.mean((y_score[:, -1] > threshold) == (y == 1)))
    return float(np.mean(np.argmax(y_score, axis=-1) == y))


class OfficialMetrics(Metric):
    """Accumulates scores and targets (gathered across DDP ranks) and computes the official ACC and AUC once
    per epoch, so the numbers are exactly the evaluator's."""

    full_state_update = False

    def __init__(self, task: str) -> None:
        super().__init__()
        self.task = task
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach().float())
        self.targets.append(targets.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        scores = _cat(self.scores).cpu().numpy()
        targets = _cat(self.targets).cpu().numpy()
        if targets.ndim == 1:
            targets = targets[:, None]
        return {"acc": torch.tensor(official_acc(targets, scores, self.task)),
                "auc": torch.tensor(official_auc(targets, scores, self.task))}  # fmt: skip


def _cat(state: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    return torch.cat(state) if isinstance(state, list) else state


def bootstrap_ci(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    metric: Callable[[np.ndarray, np.ndarray, str], float],
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap over test images; resamples where the metric is undefined are skipped."""
    rng = np.random.default_rng(seed)
    n = len(y_true)
    values = [metric(y_true[idx], y_score[idx], task) for idx in rng.integers(0, n, (n_resamples, n))]
    values = np.asarray([v for v in values if np.isfinite(v)])
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
