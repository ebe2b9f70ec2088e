"""Calibration and coverage of a model's test predictions: the reliability diagram with its expected calibration
error, and accuracy against coverage (how many images can be answered at a given accuracy when the least confident
are left to a person). Conventions as in analysis.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from medmnist_pipeline.evaluation.analysis import check_inputs, is_multilabel
from medmnist_pipeline.figures import new_figure, note
from medmnist_pipeline.metadata import MULTI_LABEL
from medmnist_pipeline.metrics import predicted_labels

# --------------------------------------------------------------------------------------------------------------
# 4. Calibration
# --------------------------------------------------------------------------------------------------------------


def reliability(y_true: Any, y_score: Any, task: str, n_bins: int = 15) -> dict[str, Any]:
    """Equal-width reliability bins over [0, 1] and the expected calibration error.

    Single-label: the confidence is the top-class probability and a bin's accuracy the share of correct argmaxes.
    Multi-label: every (sample, label) probability counts, and a bin's "accuracy" is its share of positives (the
    reliability diagram of a binary probability). Bins are right-closed, (lo, hi], with 0 in the first bin.
    ECE = sum over bins of (count / total) * |accuracy - mean confidence|. Empty bins hold NaN and weigh nothing.
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if multilabel:
        confidence, hit = y_score.ravel(), y_true.ravel().astype(float)
    else:
        confidence, hit = y_score.max(axis=1), (y_score.argmax(axis=1) == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins become NaN on purpose
        bin_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        bin_accuracy = np.bincount(bins, weights=hit, minlength=n_bins) / count
    filled = count > 0
    weights = count[filled] / max(count.sum(), 1)
    gaps = np.abs(bin_accuracy[filled] - bin_confidence[filled])
    ece = float(np.sum(weights * gaps)) if filled.any() else float("nan")  # no predictions: undefined, not 0
    return {
        "bin_edges": edges,
        "bin_confidence": bin_confidence,
        "bin_accuracy": bin_accuracy,
        "bin_count": count,
        "ece": ece,
        "multilabel": multilabel,
    }


def plot_reliability(rel: dict[str, Any], title: str = "Reliability") -> Figure:
    """Accuracy per bin as bars against the diagonal of perfect calibration, with the confidence histogram below."""
    edges, count = rel["bin_edges"], rel["bin_count"]
    centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = new_figure(5.5, 6)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="0.5", label="perfect calibration")
    filled = count > 0
    top.bar(
        centres[filled],
        rel["bin_accuracy"][filled],
        width=width[filled],
        edgecolor="black",
        alpha=0.75,
        label="fraction positive" if rel["multilabel"] else "accuracy",
    )
    top.plot(
        rel["bin_confidence"][filled],
        rel["bin_accuracy"][filled],
        "o-",
        color="tab:red",
        markersize=3,
        label="same, at each bin's mean confidence",
    )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("fraction positive" if rel["multilabel"] else "accuracy")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(centres, count, width=width, color="0.6", edgecolor="black")
    bottom.set_ylabel("count")
    bottom.set_xlabel(
        "predicted probability (every sample x label)" if rel["multilabel"] else "confidence (top-class probability)"
    )
    top.set_title(f"{title} - ECE = {rel['ece']:.3f}", fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------------------
# 5. Coverage: how many images can be answered at a given accuracy
# --------------------------------------------------------------------------------------------------------------


def _confidence_and_accuracy(
    y_true: np.ndarray, y_score: np.ndarray, multilabel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample confidence and correctness (multi-label: mean over labels of max(p, 1-p), share of right labels)."""
    if multilabel:
        right = predicted_labels(y_score, MULTI_LABEL) == y_true
        return np.maximum(y_score, 1 - y_score).mean(axis=1), right.mean(axis=1)
    return y_score.max(axis=1), (y_score.argmax(axis=1) == y_true).astype(float)


def coverage_curve(y_true: Any, y_score: Any, task: str) -> dict[str, np.ndarray]:
    """Accuracy of the most confident fraction of images, for every coverage 1/N, 2/N, ..., 1.

    Images are sorted by confidence, most confident first (a stable sort: ties keep their input order).
    ``threshold[i]`` is the confidence of the last image answered at ``coverage[i]``, i.e. the cut-off to use.
    Multi-label accuracy is per image the share of its labels predicted right (Hamming accuracy): exact match
    over 14 labels would be near zero and hide the ordering.
    """
    multilabel = is_multilabel(task)
    y_true, y_score = check_inputs(y_true, y_score, task)
    confidence, correct = _confidence_and_accuracy(y_true, y_score, multilabel)
    order = np.argsort(-confidence, kind="stable")
    answered = np.arange(1, len(order) + 1)
    return {
        "coverage": answered / len(order),
        "accuracy": np.cumsum(correct[order]) / answered,
        "threshold": confidence[order],
    }


def coverage_at_accuracy(curve: dict[str, np.ndarray], target: float) -> float:
    """The largest coverage whose accuracy is at least ``target`` (1e-12 slack for float rounding); 0.0 if none."""
    reached = curve["accuracy"] >= target - 1e-12
    return float(curve["coverage"][reached].max()) if reached.any() else 0.0


def plot_coverage(
    curve: dict[str, np.ndarray], title: str = "Accuracy vs coverage", targets: Sequence[float] = (0.9, 0.95, 0.99)
) -> Figure:
    """Accuracy of the answered images vs the fraction answered, with the coverage reachable at each target."""
    fig = new_figure(5.5, 4)
    ax = fig.subplots()
    ax.set_title(title, fontsize=10)
    if len(curve["coverage"]) == 0:
        note(ax, "no predictions")
        return fig
    ax.plot(curve["coverage"], curve["accuracy"], color="tab:blue")
    ax.axhline(curve["accuracy"][-1], ls="--", color="0.5", lw=1, label=f"all answered: {curve['accuracy'][-1]:.3f}")
    for target in targets:
        cov = coverage_at_accuracy(curve, target)
        if cov > 0:
            ax.plot([cov], [target], "o", markersize=5, label=f"accuracy {target:.2f}: {cov:.0%} answered")
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("fraction of test images answered (most confident first)")
    ax.set_ylabel("accuracy of answered images")
    ax.legend(fontsize=8, loc="lower left")
    return fig
