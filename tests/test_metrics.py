"""The official MedMNIST metrics: hand-worked cases for every task type, agreement with medmnist's own evaluator,
the torchmetrics version against the numpy one, the bootstrap interval, and undefined AUCs."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np
import pytest
import torch

from medmnist_pipeline.metrics import (
    bootstrap_ci,
    official_acc,
    official_auc,
)
from medmnist_pipeline.models.conventions import scores_from_logits
from medmnist_pipeline.training.classifier import OfficialMetrics

TASKS = ["binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression"]


def binary_scores(p: list[float]) -> np.ndarray:
    """(N, 2) softmax-style scores from the positive-class probability."""
    p = np.asarray(p)
    return np.stack([1 - p, p], axis=1)


# --- hand-worked cases --------------------------------------------------------------------------------------


def test_binary_by_hand() -> None:
    y = np.array([0, 0, 1, 1])
    s = binary_scores([0.1, 0.6, 0.4, 0.8])
    # ACC: predictions (p > 0.5) = [0, 1, 0, 1] vs [0, 0, 1, 1] -> 2 of 4 right
    assert official_acc(y, s, "binary-class") == 0.5
    # AUC: positive scores {0.4, 0.8} vs negative {0.1, 0.6}: 0.4>0.1, 0.4<0.6, 0.8>0.1, 0.8>0.6 -> 3 of 4 pairs
    assert official_auc(y, s, "binary-class") == 0.75
    # (N, 1) labels, as stored in the npz files, give the same numbers
    assert official_auc(y[:, None], s, "binary-class") == 0.75


def test_binary_ties_and_threshold_by_hand() -> None:
    y = np.array([[0], [0], [1], [1]])
    s = binary_scores([0.1, 0.5, 0.5, 0.8])
    # ACC: 0.5 is not > 0.5, so predictions [0, 0, 0, 1] -> 3 of 4 right
    assert official_acc(y, s, "binary-class") == 0.75
    # threshold 0.3: predictions [0, 1, 1, 1] -> 3 of 4 right; threshold 0.05: all 1 -> 2 of 4
    assert official_acc(y, s, "binary-class", threshold=0.3) == 0.75
    assert official_acc(y, s, "binary-class", threshold=0.05) == 0.5
    # AUC: pos {0.5, 0.8} vs neg {0.1, 0.5}: 0.5>0.1 (1), 0.5=0.5 (a tie counts 1/2), 0.8>both (2) -> 3.5 / 4
    assert official_auc(y, s, "binary-class") == 0.875


def test_multi_class_by_hand() -> None:
    y = np.array([0, 1, 2, 2, 1])
    s = np.array(
        [
            [0.7, 0.2, 0.1],  # argmax 0, right
            [0.3, 0.4, 0.3],  # 1, right
            [0.2, 0.5, 0.3],  # 1, wrong (2)
            [0.1, 0.1, 0.8],  # 2, right
            [0.5, 0.3, 0.2],  # 0, wrong (1)
        ]
    )
    # ACC = 3/5
    assert official_acc(y, s, "multi-class") == pytest.approx(0.6, abs=1e-15)
    # one-vs-rest AUCs:
    #   class 0: pos {0.7} vs neg {0.3, 0.2, 0.1, 0.5}: 4/4 = 1
    #   class 1: pos {0.4, 0.3} vs neg {0.2, 0.5, 0.1}: 0.4 beats 0.2, 0.1; 0.3 beats 0.2, 0.1 -> 4/6 = 2/3
    #   class 2: pos {0.3, 0.8} vs neg {0.1, 0.3, 0.2}: 0.3 -> 1 + 1/2 (tie) + 1; 0.8 -> 3 -> 5.5/6 = 11/12
    #   mean = (12/12 + 8/12 + 11/12) / 3 = 31/36
    assert official_auc(y, s, "multi-class") == pytest.approx(31 / 36, abs=1e-15)


def test_ordinal_regression_is_scored_as_multi_class_by_hand() -> None:
    y = np.array([[0], [1], [2], [2]])
    s = np.array(
        [
            [0.6, 0.0, 0.4],  # argmax 0, right (an expected value, 0.8, would round to 1: the benchmark uses argmax)
            [0.2, 0.6, 0.2],  # 1, right
            [0.1, 0.2, 0.7],  # 2, right
            [0.4, 0.3, 0.3],  # 0, wrong
        ]
    )
    # ACC = 3/4
    assert official_acc(y, s, "ordinal-regression") == 0.75
    #   class 0: pos {0.6} vs neg {0.2, 0.1, 0.4}: 1
    #   class 1: pos {0.6} vs neg {0.0, 0.2, 0.3}: 1
    #   class 2: pos {0.7, 0.3} vs neg {0.4, 0.2}: 0.7 -> 2, 0.3 -> 1 -> 3/4
    #   mean = (1 + 1 + 3/4) / 3 = 11/12
    assert official_auc(y, s, "ordinal-regression") == pytest.approx(11 / 12, abs=1e-15)


def test_multi_label_by_hand() -> None:
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.7], [0.3, 0.45], [0.2, 0.1]])
    # ACC at > 0.5: predictions [[1,0], [0,1], [0,0], [0,0]]
    #   label 0: [1,0,0,0] vs [1,0,1,0] -> 3/4; label 1: [0,1,0,0] vs [0,1,1,0] -> 3/4; mean 3/4
    assert official_acc(y, s, "multi-label, binary-class") == 0.75
    # at > 0.4: label 0 predicts [1,0,0,0] (0.4 is not > 0.4) -> 3/4; label 1 [0,1,1,0] -> 4/4; mean 7/8
    assert official_acc(y, s, "multi-label, binary-class", threshold=0.4) == 0.875
    # AUC label 0: pos {0.9, 0.3} vs neg {0.4, 0.2}: 0.9 -> 2, 0.3 -> 1 -> 3/4
    #     label 1: pos {0.7, 0.45} vs neg {0.2, 0.1}: 4/4; mean 7/8
    assert official_auc(y, s, "multi-label, binary-class") == 0.875


def test_scores_from_logits() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [2.0, -1.0]])
    # softmax of (0, ln 3) = (1/4, 3/4)
    assert torch.allclose(scores_from_logits(logits, "binary-class")[0], torch.tensor([0.25, 0.75]))
    for task in ("binary-class", "multi-class", "ordinal-regression"):
        assert torch.allclose(scores_from_logits(logits, task).sum(-1), torch.ones(2))
    # per-label sigmoid: sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4
    assert torch.allclose(scores_from_logits(logits, "multi-label, binary-class")[0], torch.tensor([0.5, 0.75]))


def test_bad_task_and_shapes_raise_value_error() -> None:
    y, s = np.array([0, 1]), binary_scores([0.2, 0.7])
    with pytest.raises(ValueError, match="unknown task"):
        official_acc(y, s, "regression")
    with pytest.raises(ValueError, match="unknown task"):
        OfficialMetrics("multiclass")
    with pytest.raises(ValueError, match="y_true"):
        official_auc(np.array([[0, 1], [1, 0]]), s, "multi-class")
    with pytest.raises(ValueError, match="y_score"):
        official_auc(y, s[:1], "binary-class")


# --- agreement with medmnist's evaluator --------------------------------------------------------------------


@pytest.fixture(scope="module")
def evaluator(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """medmnist.evaluator, imported with HOME pointed at a temporary folder: importing medmnist creates
    ~/.medmnist, and these tests must not touch the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        reason = "medmnist not installed (pip install --no-deps medmnist==3.0.2)"
        return pytest.importorskip("medmnist.evaluator", reason=reason)


def random_case(task: str, seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Labels as stored in the npz files and probability-like scores, rounded to create ties."""
    rng = np.random.default_rng(seed)
    if task == "multi-label, binary-class":
        y = rng.integers(0, 2, (n, 4))
        s = rng.random((n, 4))
    else:
        classes = 2 if task == "binary-class" else 5
        y = rng.integers(0, classes, (n, 1))
        s = rng.random((n, classes)) + np.eye(classes)[y[:, 0]] * 0.3  # some signal, so AUCs are not all ~0.5
        s /= s.sum(1, keepdims=True)
    return y, s.round(2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("task", TASKS)
def test_agrees_with_the_official_evaluator(evaluator: ModuleType, task: str, seed: int) -> None:
    y, s = random_case(task, seed)
    assert official_auc(y, s, task) == pytest.approx(evaluator.getAUC(y, s, task), abs=1e-12)
    assert official_acc(y, s, task) == pytest.approx(evaluator.getACC(y, s, task), abs=1e-12)
    assert official_acc(y, s, task, threshold=0.3) == pytest.approx(evaluator.getACC(y, s, task, 0.3), abs=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
def test_an_absent_class_gives_nan_like_the_official_evaluator(evaluator: ModuleType) -> None:
    y, s = random_case("multi-class", 0)
    y[y == 3] = 4  # class 3 never occurs: its one-vs-rest AUC, and so the mean, is undefined
    assert math.isnan(evaluator.getAUC(y, s, "multi-class"))
    assert math.isnan(official_auc(y, s, "multi-class"))


# --- the torchmetrics version -------------------------------------------------------------------------------


def as_training_targets(y: np.ndarray, task: str) -> torch.Tensor:
    """Targets the way the training step holds them: (B,) class indices, or (B, L) floats for BCE."""
    return torch.tensor(y, dtype=torch.float32) if task == "multi-label, binary-class" else torch.tensor(y[:, 0])


@pytest.mark.parametrize("task", TASKS)
def test_official_metrics_in_batches_equal_the_numpy_functions(task: str) -> None:
    y, s = random_case(task, 3, n=250)
    s = s.astype(np.float32)
    metric = OfficialMetrics(task)
    for lo, hi in [(0, 7), (7, 128), (128, 250)]:  # uneven batches, as the last one of an epoch is
        metric.update(torch.from_numpy(s[lo:hi]), as_training_targets(y[lo:hi], task))
    result = metric.compute()
    # the same numbers, as float32 tensors (the default dtype, which every accelerator supports)
    assert result == {"acc": torch.tensor(official_acc(y, s, task)), "auc": torch.tensor(official_auc(y, s, task))}
    # after reset it starts over: a part of the data gives that part's numbers
    metric.reset()
    metric.update(torch.from_numpy(s[:100]), as_training_targets(y[:100], task))
    assert metric.compute()["auc"] == torch.tensor(official_auc(y[:100], s[:100], task))


def test_official_metrics_auc_is_nan_for_one_class() -> None:
    metric = OfficialMetrics("binary-class")
    metric.update(torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([1, 1]))
    result = metric.compute()
    assert result["acc"].item() == 0.5
    assert torch.isnan(result["auc"])


@pytest.mark.parametrize(
    ("task", "y", "s"),
    [
        ("binary-class", np.array([[1], [1], [1]]), binary_scores([0.2, 0.6, 0.9])),
        ("multi-class", np.array([0, 0, 2]), np.full((3, 3), 1 / 3)),  # class 1 absent
        ("ordinal-regression", np.array([2, 2, 2]), np.full((3, 3), 1 / 3)),
        ("multi-label, binary-class", np.array([[0, 1], [1, 1]]), np.array([[0.2, 0.9], [0.8, 0.6]])),  # label 1 all 1
    ],
)
def test_auc_is_nan_when_undefined(task: str, y: np.ndarray, s: np.ndarray) -> None:
    assert math.isnan(official_auc(y, s, task))
    assert not math.isnan(official_acc(y, s, task))


def test_auc_of_nan_scores_is_nan() -> None:
    assert math.isnan(official_auc(np.array([0, 1]), np.array([[0.5, np.nan], [0.5, 0.5]]), "binary-class"))


# --- bootstrap ----------------------------------------------------------------------------------------------


def pneumonia_like(n: int = 624, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """PneumoniaMNIST's test-set size, binary, a model with AUC around 0.8."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * (2 * y[:, 0] - 1))))
    return y, binary_scores(p)


@pytest.mark.parametrize("metric", [official_acc, official_auc])
def test_bootstrap_ci_contains_the_estimate_and_is_reproducible(metric) -> None:
    y, s = pneumonia_like()
    point = metric(y, s, "binary-class")
    low, high = bootstrap_ci(y, s, "binary-class", metric, n_resamples=1000, seed=7)
    assert low < point < high
    assert 0.02 < high - low < 0.2  # about 4 standard errors of a proportion-like metric on 624 images
    assert bootstrap_ci(y, s, "binary-class", metric, n_resamples=1000, seed=7) == (low, high)
    assert bootstrap_ci(y, s, "binary-class", metric, n_resamples=1000, seed=8) != (low, high)


def test_bootstrap_ci_matches_the_normal_interval_of_a_mean() -> None:
    y = np.tile([[0], [1]], (200, 1))  # 400 labels, mean 0.5: standard error sqrt(0.25 / 400) = 0.025
    s = binary_scores(np.full(400, 0.9))  # predicts 1 everywhere, so ACC = mean(y)
    low, high = bootstrap_ci(y, s, "binary-class", official_acc, n_resamples=2000, seed=0)
    # 95%: 0.5 -/+ 1.96 * 0.025 = (0.451, 0.549); a 90% interval would be (0.459, 0.541)
    assert low == pytest.approx(0.451, abs=0.005) and high == pytest.approx(0.549, abs=0.005)
    low50, high50 = bootstrap_ci(y, s, "binary-class", official_acc, n_resamples=2000, seed=0, confidence=0.5)
    # 50%: 0.5 -/+ 0.674 * 0.025 = (0.483, 0.517)
    assert low50 == pytest.approx(0.483, abs=0.005) and high50 == pytest.approx(0.517, abs=0.005)


def test_bootstrap_ci_skips_resamples_with_undefined_auc() -> None:
    y = np.zeros((30, 1), dtype=int)
    y[:2] = 1  # 2 positives of 30: (28/30)^30 = 13% of resamples hold none
    s = binary_scores(np.linspace(0.05, 0.95, 30))
    values: list[float] = []

    def recording_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
        values.append(official_auc(y_true, y_score, task))
        return values[-1]

    low, high = bootstrap_ci(y, s, "binary-class", recording_auc, n_resamples=300, seed=0)
    assert len(values) == 300 and any(math.isnan(v) for v in values)
    assert math.isfinite(low) and math.isfinite(high) and low <= high
    finite = [v for v in values if not math.isnan(v)]
    assert (low, high) == tuple(np.percentile(finite, [2.5, 97.5]))


def test_bootstrap_ci_is_nan_when_the_metric_never_is_defined() -> None:
    y = np.ones((20, 1), dtype=int)
    low, high = bootstrap_ci(y, binary_scores(np.full(20, 0.7)), "binary-class", official_auc, n_resamples=50, seed=0)
    assert math.isnan(low) and math.isnan(high)
