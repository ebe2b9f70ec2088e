"""Statistics of a search on the validation split: how noisy each trial's validation metric is, and which trials
that noise cannot tell apart from the best one."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medmnist_pipeline.metrics import bootstrap_values, mean_log_loss, official_acc, official_auc


def bootstrap_se(
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    metric: Callable[[np.ndarray, np.ndarray, str], float],
    n_resamples: int,
    seed: int,
) -> float:
    """Standard error of ``metric`` on these images: the sd of its bootstrap distribution (NaN resamples skipped)."""
    values = bootstrap_values(y_true, y_score, task, metric, n_resamples, seed)
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class SearchNoise:
    """Which finished trials lie within one validation standard error of the best one."""

    best: int
    within_noise: list[int]
    se: float
    metric: str

    @property
    def can_decide(self) -> bool:
        return len(self.within_noise) <= 1

    def sentence(self) -> str:
        if self.can_decide:
            return (
                f"The best trial ({self.best}) leads every other finished trial by more than the validation noise of "
                f"{self.metric} (bootstrap SE {self.se:.4f})."
            )
        others = [t for t in self.within_noise if t != self.best]
        which = f"trial {others[0]} lies" if len(others) == 1 else f"trials {', '.join(map(str, others))} lie"
        return (
            f"The search cannot decide: {which} within one validation standard "
            f"error ({self.metric} bootstrap SE {self.se:.4f}) of the best trial ({self.best}); validation cannot "
            "tell them apart, so the pick among them is noise."
        )


def search_noise(values: dict[int, float], se: float, metric: str, maximize: bool) -> SearchNoise:
    """The trials (number -> value at each trial's best epoch) whose value is within ``se`` of the best one."""
    finite = {t: v for t, v in values.items() if not math.isnan(v)}
    best = (max if maximize else min)(finite, key=finite.get)
    within = sorted(t for t, v in finite.items() if abs(v - finite[best]) <= se)
    return SearchNoise(best, within, se, metric)


VALIDATION_METRICS = {"val/auc": official_auc, "val/acc": official_acc, "val/loss": mean_log_loss}
