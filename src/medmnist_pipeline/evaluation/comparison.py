"""Comparisons a reviewer can trust: paired differences on the same test images, DeLong's test, the majority floor,
balanced error, flags for useless models, the noise of a validation metric, a size curve read with its noise, and
the words that go with them ("cannot tell" whenever an interval includes zero).

Everything here is numpy on scores already computed; no model, no file, no plotting.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from medmnist_pipeline.config.params import BootstrapParams
from medmnist_pipeline.metadata import BINARY, MULTI_LABEL
from medmnist_pipeline.metrics import checked_scores, official_acc, official_auc, predicted_labels

METRICS: dict[str, Callable[[np.ndarray, np.ndarray, str], float]] = {"auc": official_auc, "acc": official_acc}


# ---- the floor and the ensemble ------------------------------------------------------------------------------------

FLOOR = "majority"  # the majority-class predictor's row


def majority_scores(train_labels: np.ndarray, n: int, task: str, n_columns: int) -> np.ndarray:
    """Scores (n, n_columns) of the majority-class predictor: one-hot of the most frequent training class (the lowest
    index on a tie), or all-negative (zeros) for multi-label. Its AUC is 0.5 by construction (every score tied)."""
    if task == MULTI_LABEL:
        return np.zeros((n, n_columns))
    counts = np.bincount(np.asarray(train_labels).reshape(-1).astype(int), minlength=n_columns)
    scores = np.zeros((n, n_columns))
    scores[:, int(np.argmax(counts))] = 1.0
    return scores


def ensemble_scores(scores: Sequence[np.ndarray]) -> np.ndarray:
    """The seed ensemble: the mean of the members' probabilities."""
    return np.mean(np.stack([np.asarray(s, float) for s in scores]), axis=0)


# ---- balanced error and predicted classes ---------------------------------------------------------------------------


def balanced_error(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """1 - balanced accuracy (MedMNIST-C's error): single-label, 1 - the mean recall over the classes present in
    ``y_true``; multi-label, the mean over labels of 1 - (sensitivity + specificity) / 2 (labels with one class
    present use the recall of that class)."""
    y_true, y_score = checked_scores(y_true, y_score, task)
    pred = predicted_labels(y_score, task)
    if task == MULTI_LABEL:
        per_label = [_balanced_error_1d(y_true[:, j], pred[:, j]) for j in range(y_true.shape[1])]
        return float(np.mean(per_label))
    return _balanced_error_1d(y_true, pred)


def _balanced_error_1d(y_true: np.ndarray, pred: np.ndarray) -> float:
    recalls = [np.mean(pred[y_true == c] == c) for c in np.unique(y_true)]
    return float(1 - np.mean(recalls))


# ---- paired bootstrap and DeLong ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """``a`` minus ``b`` in ``metric`` on the same test images, with a paired bootstrap interval (and DeLong's
    two-sided p-value for a binary AUC)."""

    a: str
    b: str
    metric: str
    value: float
    low: float
    high: float
    confidence: float
    p_delong: float | None = None

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` (``a`` than ``b``) when the interval excludes 0, else ``cannot tell``."""
        if not (self.low > 0 or self.high < 0) or math.isnan(self.low):
            return "cannot tell"
        return "better" if self.low > 0 else "worse"

    def sentence(self, digits: int = 3) -> str:
        """e.g. "tuned is worse than cnn in ACC: -0.032 (95% CI -0.055 to -0.010)"."""
        name = self.metric.upper()
        ci = f"{self.value:+.{digits}f} ({self.confidence:.0%} CI {self.low:+.{digits}f} to {self.high:+.{digits}f}"
        ci += f"; DeLong p = {self.p_delong:.3g})" if self.p_delong is not None else ")"
        if self.verdict == "cannot tell":
            return f"{self.a} and {self.b} cannot be told apart in {name}: {ci}, an interval that includes 0"
        return f"{self.a} is {self.verdict} than {self.b} in {name}: {ci}"


def resampled_metrics(
    y_true: np.ndarray, scores: dict[str, np.ndarray], task: str, n_resamples: int, seed: int
) -> dict[str, dict[str, np.ndarray]]:
    """Each model's AUC and ACC on the same ``n_resamples`` bootstrap resamples of the test images: the paired
    samples every difference below is read from. NaN where a resample's AUC is undefined."""
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    out = {name: {m: np.empty(n_resamples) for m in METRICS} for name in scores}
    for r in range(n_resamples):
        idx = rng.integers(0, n, n)
        for name, s in scores.items():
            for m, fn in METRICS.items():
                out[name][m][r] = fn(y_true[idx], np.asarray(s)[idx], task)
    return out


def paired_differences(
    y_true: np.ndarray,
    scores: dict[str, np.ndarray],
    task: str,
    n_resamples: int,
    seed: int,
    confidence: float = 0.95,
) -> list[Difference]:
    """AUC and ACC differences for every pair of models (in the order given: first minus later), each with a
    percentile interval over the same resamples, and DeLong's p-value for binary AUCs."""
    samples = resampled_metrics(y_true, scores, task, n_resamples, seed)
    tail = (1 - confidence) / 2 * 100
    out = []
    for a, b in combinations(scores, 2):
        for m, fn in METRICS.items():
            diff = samples[a][m] - samples[b][m]
            diff = diff[~np.isnan(diff)]
            low, high = np.percentile(diff, [tail, 100 - tail]) if len(diff) else (math.nan, math.nan)
            value = fn(y_true, scores[a], task) - fn(y_true, scores[b], task)
            p = None
            if m == "auc" and task == BINARY:
                p = delong_test(np.asarray(y_true).reshape(-1) == 1, scores[a][:, -1], scores[b][:, -1]).p_value
            out.append(Difference(a, b, m, float(value), float(low), float(high), confidence, p))
    return out


@dataclass(frozen=True)
class DeLong:
    auc_a: float
    auc_b: float
    se_difference: float
    z: float
    p_value: float


def _placements(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components by ranks (Sun and Xu 2014): for each positive, the fraction of negatives it
    outscores (ties half); for each negative, the fraction of positives that outscore it."""
    pos, neg = score[positive], score[~positive]
    rank_all = stats.rankdata(score)
    rank_pos, rank_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (rank_all[positive] - rank_pos) / len(neg)
    v01 = 1 - (rank_all[~positive] - rank_neg) / len(pos)
    return v10, v01


def delong_test(positive: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLong:
    """DeLong, DeLong and Clarke-Pearson (1988): the two correlated AUCs of two scores on the same cases, the
    standard error of their difference, and the two-sided p-value of "equal AUC"."""
    positive = np.asarray(positive, bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return DeLong(math.nan, math.nan, math.nan, math.nan, math.nan)
    v10_a, v01_a = _placements(positive, np.asarray(score_a, float))
    v10_b, v01_b = _placements(positive, np.asarray(score_b, float))
    auc_a, auc_b = float(v10_a.mean()), float(v10_b.mean())
    s10 = np.cov(np.stack([v10_a, v10_b]))
    s01 = np.cov(np.stack([v01_a, v01_b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    se = float(math.sqrt(max(var, 0.0)))
    if se == 0:  # no variance (e.g. a perfect score against a constant one): the difference is certain, or nil
        same = math.isclose(auc_a, auc_b, abs_tol=1e-12)
        return DeLong(auc_a, auc_b, 0.0, 0.0 if same else math.copysign(math.inf, auc_a - auc_b), 1.0 if same else 0.0)
    z = (auc_a - auc_b) / se
    return DeLong(auc_a, auc_b, se, float(z), float(2 * stats.norm.sf(abs(z))))


# ---- useless models -------------------------------------------------------------------------------------------------


def usefulness_flags(
    name: str,
    y_true: np.ndarray,
    y_score: np.ndarray,
    task: str,
    labels: Sequence[str],
    auc_interval: tuple[float, float] | None = None,
) -> list[str]:
    """Sentences for what makes a model useless, each with the cause to check; [] when none applies."""
    y_true, y_score = checked_scores(y_true, y_score, task)
    pred = predicted_labels(y_score, task)
    flags = []
    if task == MULTI_LABEL:
        if not pred.any():
            flags.append(
                f"{name} predicts no label for any image (all-negative, the floor): check the class weighting "
                "and that training lowered the loss"
            )
    else:
        shown = sorted(set(pred.tolist()))
        present = sorted(set(y_true.tolist()))
        if len(shown) == 1:
            flags.append(
                f"{name} predicts {quoted(labels[shown[0]])} for every image: check the class balance, the learning "
                "rate and that training lowered the loss"
            )
        elif len(set(present) - set(shown)) > 0:
            missing = [quoted(labels[c]) for c in present if c not in shown]
            flags.append(
                f"{name} predicts only {len(shown)} of the {len(present)} classes in the test set (never "
                f"{', '.join(missing)}): check the class balance and whether training stopped early"
            )
    if auc_interval is not None and auc_interval[0] <= 0.5 <= auc_interval[1]:
        flags.append(
            f"{name}'s AUC interval ({auc_interval[0]:.3f} to {auc_interval[1]:.3f}) includes 0.5: no better than "
            "chance on this test set; check the labels and that the model file is the trained one"
        )
    return flags


# ---- words ----------------------------------------------------------------------------------------------------------


def quoted(label: str) -> str:
    """A label name in double quotes, so that one containing commas reads as one name in a sentence."""
    return '"' + str(label).replace('"', "'") + '"'


def compare_words(a: float, b: float, digits: int = 3, higher_is_better: bool = True) -> str:
    """``above`` / ``below`` / ``equal at this rounding``: never "0.901 vs 0.901: above"."""
    ra, rb = round(a, digits), round(b, digits)
    if ra == rb:
        return "equal at this rounding"
    return "above" if (ra > rb) == higher_is_better else "below"


def spread(sd: float) -> str:
    """A standard deviation at 3 decimals, or its first digit when smaller: 0.0004 is not "0.000"."""
    return f"{sd:.3f}" if sd == 0 or sd >= 0.0005 or math.isnan(sd) else f"{sd:.1g}"


# ---- choosing and reporting -----------------------------------------------------------------------------------------


def validation_pick(val: dict[str, dict[str, float]]) -> str:
    """The model validation picks: the highest validation AUC, ties broken by the lower validation loss (then by
    the order given). Never looks at test."""
    return min(val, key=lambda name: (-val[name]["auc"], val[name].get("loss", math.inf)))


def tuned_vs_untuned(diffs: Sequence[Difference], tuned: str = "tuned", untuned: str = "cnn") -> str | None:
    """The sentence a reviewer looks for first: is the tuned model distinguishable from the untuned one?"""
    pair = {d.metric: d for d in diffs if {d.a, d.b} == {tuned, untuned}}
    if not pair:
        return None
    # orient every difference as tuned - untuned
    oriented = {
        m: d if d.a == tuned else Difference(tuned, untuned, m, -d.value, -d.high, -d.low, d.confidence, d.p_delong)
        for m, d in pair.items()
    }
    verdicts = {m: d.verdict for m, d in oriented.items()}
    detail = "; ".join(
        f"{m.upper()} {d.value:+.3f} ({d.confidence:.0%} CI {d.low:+.3f} to {d.high:+.3f})" for m, d in oriented.items()
    )
    if "worse" in verdicts.values() and "better" not in verdicts.values():
        worse = " and ".join(m.upper() for m, v in verdicts.items() if v == "worse")
        return f"The tuned model is worse than the untuned one in {worse} on the same test images: {detail}."
    if set(verdicts.values()) == {"cannot tell"}:
        return f"The tuned model is not distinguishable from the untuned one on the test set: {detail}."
    if "better" in verdicts.values() and "worse" not in verdicts.values():
        better = " and ".join(m.upper() for m, v in verdicts.items() if v == "better")
        return f"The tuned model is better than the untuned one in {better}: {detail}."
    return f"The tuned and untuned models trade places (one metric better, one worse): {detail}."


def compare_models(
    labels: np.ndarray,
    test_scores: dict[str, np.ndarray],
    metrics: dict[str, dict[str, Any]],
    task: str,
    label_names: Sequence[str],
    bootstrap: BootstrapParams,
    seed: int,
) -> tuple[list[Difference], list[str]]:
    """Paired comparisons of the models on the same test images (tuned, cnn, the ensembles, baseline, the floor),
    and the flags of the models that are useless whatever their numbers (judged with their test AUC interval)."""
    order = [n for n in ("tuned", "cnn", "tuned ensemble", "cnn ensemble", "baseline", FLOOR) if n in test_scores]
    chosen = {n: test_scores[n] for n in order}
    paired = paired_differences(labels, chosen, task, bootstrap.resamples, seed, bootstrap.confidence)
    flags = [
        flag
        for name in order
        if name != FLOOR
        for flag in usefulness_flags(
            name, labels, test_scores[name], task, label_names, tuple(metrics[name]["test"]["auc_ci"])
        )
    ]
    return paired, flags
