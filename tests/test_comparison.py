"""Comparison helpers on toys small enough to compute by hand; DeLong against the direct pairwise formula."""

from __future__ import annotations

import math

import numpy as np

from medmnist_pipeline.evaluation import comparison
from medmnist_pipeline.evaluation.curves import size_slope
from medmnist_pipeline.metadata import BINARY, MULTI_CLASS, MULTI_LABEL
from medmnist_pipeline.metrics import mean_log_loss, official_acc
from medmnist_pipeline.tuning.statistics import bootstrap_se, search_noise


def two_col(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, float)
    return np.stack([1 - p, p], axis=1)


def test_majority_floor_is_the_most_frequent_training_class() -> None:
    train = np.array([1, 1, 1, 0, 0])
    floor = comparison.majority_scores(train, 4, BINARY, 2)
    assert np.array_equal(floor, [[0, 1]] * 4)
    test = np.array([1, 1, 1, 1, 1, 0, 0, 0])  # 5 of 8 positive -> ACC 0.625 (PneumoniaMNIST's 390 of 624)
    assert official_acc(test, comparison.majority_scores(train, 8, BINARY, 2), BINARY) == 0.625
    assert np.array_equal(comparison.majority_scores(np.array([2, 0, 2, 1]), 1, MULTI_CLASS, 3), [[0, 0, 1]])
    assert not comparison.majority_scores(np.ones((3, 4)), 2, MULTI_LABEL, 4).any()  # all-negative
    # its balanced error is 0.5 whatever the balance: it gets one class right and the other wrong
    assert comparison.balanced_error(test, comparison.majority_scores(train, 8, BINARY, 2), BINARY) == 0.5


def test_ensemble_is_the_mean_probability() -> None:
    assert np.allclose(comparison.ensemble_scores([two_col([0.2, 0.9]), two_col([0.4, 0.5])]), two_col([0.3, 0.7]))


def test_balanced_error_by_hand() -> None:
    # class 0: 3 of 4 right; class 1: 1 of 2 right -> balanced accuracy (0.75 + 0.5) / 2, error 0.375
    y = np.array([0, 0, 0, 0, 1, 1])
    assert comparison.balanced_error(y, two_col([0.1, 0.2, 0.3, 0.9, 0.8, 0.1]), BINARY) == 0.375
    # multi-class: recalls 1, 0.5, 0 -> error 0.5
    scores = np.eye(3)[[0, 1, 0, 1]]
    assert math.isclose(comparison.balanced_error(np.array([0, 1, 1, 2]), scores, MULTI_CLASS), 0.5)
    # multi-label: label 0 sens 1 spec 1 -> 0; label 1 sens 0 spec 1 -> 0.5; mean 0.25
    y_ml = np.array([[1, 1], [0, 0]])
    assert comparison.balanced_error(y_ml, np.array([[0.9, 0.1], [0.1, 0.1]]), MULTI_LABEL) == 0.25


def test_paired_bootstrap_sees_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = two_col(np.clip(y * 0.6 + rng.normal(0.2, 0.15, 400), 0, 1))
    bad = two_col(rng.random(400))
    good_too = two_col(np.clip(good[:, 1] + rng.normal(0, 0.01, 400), 0, 1))
    diffs = {
        (d.a, d.b, d.metric): d
        for d in comparison.paired_differences(y, {"good": good, "bad": bad, "good too": good_too}, BINARY, 300, 1)
    }
    assert len(diffs) == 6  # 3 pairs x (auc, acc)
    real = diffs[("good", "bad", "auc")]
    assert real.verdict == "better" and real.low > 0.2 and real.p_delong < 1e-6
    assert diffs[("bad", "good too", "acc")].verdict == "worse"
    same = diffs[("good", "good too", "auc")]
    assert same.verdict == "cannot tell" and same.low <= 0 <= same.high
    assert "cannot be told apart in AUC" in same.sentence() and "includes 0" in same.sentence()
    assert real.sentence().startswith("good is better than bad in AUC: +")
    # the point value is the difference on the full test set
    assert math.isclose(real.value, comparison.official_auc(y, good, BINARY) - comparison.official_auc(y, bad, BINARY))


def direct_delong(positive: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 written out: psi over every (positive, negative) pair, covariance of the components."""

    def components(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = s[positive], s[~positive]
        psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)

    (v10a, v01a), (v10b, v01b) = components(a), components(b)
    m, n = len(v10a), len(v01a)
    var = (np.var(v10a, ddof=1) + np.var(v10b, ddof=1) - 2 * np.cov(v10a, v10b)[0, 1]) / m + (
        np.var(v01a, ddof=1) + np.var(v01b, ddof=1) - 2 * np.cov(v01a, v01b)[0, 1]
    ) / n
    return v10a.mean() - v10b.mean(), math.sqrt(var)


def test_delong_matches_the_direct_computation() -> None:
    rng = np.random.default_rng(3)
    positive = rng.random(120) < 0.4
    a = np.round(positive * 0.8 + rng.normal(0, 0.5, 120), 1)  # rounded: plenty of ties
    b = np.round(positive * 0.5 + rng.normal(0, 0.5, 120), 1)
    result = comparison.delong_test(positive, a, b)
    diff, se = direct_delong(positive, a, b)
    assert math.isclose(result.auc_a - result.auc_b, diff, abs_tol=1e-12)
    assert math.isclose(result.se_difference, se, rel_tol=1e-9)
    assert math.isclose(
        result.auc_a, comparison.official_auc(positive.astype(int), two_col(a / 10 + 0.5), BINARY), abs_tol=1e-12
    )
    # hand toy: positives {3, 2}, negatives {1, 2}: AUC (1 + 1 + 1 + 0.5) / 4 = 0.875
    toy = comparison.delong_test(np.array([1, 1, 0, 0], bool), np.array([3, 2, 1, 2]), np.array([3, 2, 1, 2]))
    assert toy.auc_a == 0.875 and toy.p_value == 1.0
    # a perfect ranking against a constant score (the floor): zero variance, a certain difference
    perfect = comparison.delong_test(np.array([1, 1, 0, 0], bool), np.array([4, 3, 2, 1]), np.zeros(4))
    assert (perfect.auc_a, perfect.auc_b, perfect.p_value) == (1.0, 0.5, 0.0)


def test_useless_models_are_flagged_with_a_cause() -> None:
    y = np.array([0, 1, 2, 3, 0, 1])
    one_class = np.eye(4)[[2] * 6]
    labels = ["normal", "drusen, early", "cnv", "dme"]
    (flag,) = comparison.usefulness_flags("cnn", y, one_class, MULTI_CLASS, labels)
    assert flag.startswith('cnn predicts "cnv" for every image: check the class balance')
    (flag,) = comparison.usefulness_flags("cnn", y, np.eye(4)[[0, 1, 0, 1, 0, 1]], MULTI_CLASS, labels)
    assert 'predicts only 2 of the 4 classes in the test set (never "cnv", "dme")' in flag
    assert comparison.usefulness_flags("cnn", y, np.eye(4)[y], MULTI_CLASS, labels) == []
    (flag,) = comparison.usefulness_flags("m", np.array([[1, 0], [0, 1]]), np.zeros((2, 2)), MULTI_LABEL, ["a", "b"])
    assert "predicts no label for any image" in flag
    flags = comparison.usefulness_flags("m", np.array([0, 1]), two_col([0.2, 0.7]), BINARY, ["a", "b"], (0.45, 0.7))
    assert len(flags) == 1 and "includes 0.5: no better than chance" in flags[0]


def test_words() -> None:
    assert comparison.compare_words(0.9012, 0.9009) == "equal at this rounding"
    assert (
        comparison.compare_words(0.903, 0.901) == "above"
        and comparison.compare_words(0.2, 0.3, higher_is_better=False) == "above"
    )
    assert comparison.quoted("drusen, early") == '"drusen, early"'
    # a standard deviation of 0.0004 is not shown as 0.000
    assert [comparison.spread(sd) for sd in (0.0, 0.0004, 0.0005, 0.0234)] == ["0.000", "0.0004", "0.001", "0.023"]


def test_validation_noise_and_search_that_cannot_decide() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    scores = two_col(np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1))
    se = bootstrap_se(y, scores, BINARY, official_acc, 400, 0)
    # the SE of an accuracy p on n images is about sqrt(p (1 - p) / n)
    p = official_acc(y, scores, BINARY)
    assert abs(se - math.sqrt(p * (1 - p) / 500)) < 0.004
    noisy = search_noise({0: 0.9972, 1: 0.9969, 2: 0.95, 3: math.nan}, se=0.002, metric="val/auc", maximize=True)
    assert noisy.best == 0 and noisy.within_noise == [0, 1] and not noisy.can_decide
    assert "cannot decide: trial 1 lies within one validation standard error" in noisy.sentence()
    clear = search_noise({0: 0.30, 1: 0.40}, se=0.02, metric="val/loss", maximize=False)
    assert clear.best == 0 and clear.can_decide and "leads every other" in clear.sentence()


def test_size_curve_says_cannot_tell_when_it_cannot() -> None:
    # BreastMNIST's curve from the issue: 0.192, 0.410, 0.397, 0.141 at 1/8 .. 1 -> no trend that the noise allows
    noisy = size_slope([0.125, 0.25, 0.5, 1.0], [0.192, 0.410, 0.397, 0.141])
    assert noisy.low < 0 < noisy.high and noisy.sentence().startswith("Cannot tell whether more data would lower")
    # a clean halving of error per doubling, 2 seeds per fraction
    fr = [0.125, 0.125, 0.25, 0.25, 0.5, 0.5, 1.0, 1.0]
    clear = size_slope(fr, [0.41, 0.40, 0.31, 0.30, 0.21, 0.20, 0.11, 0.10])
    assert math.isclose(clear.slope, -0.1, abs_tol=1e-9) and clear.high < 0
    assert "falls with more data: -10.0 points per doubling" in clear.sentence()
    assert "rises with more data" in size_slope([0.25, 0.5, 1.0], [0.1, 0.2, 0.301]).sentence()
    assert size_slope([0.5, 1.0], [0.2, 0.1]).sentence().startswith("Cannot tell how validation error changes")


def test_validation_pick_breaks_auc_ties_by_loss() -> None:
    val = {"tuned": {"auc": 0.9, "loss": 0.5}, "cnn": {"auc": 0.9, "loss": 0.3}, "baseline": {"auc": 0.8, "loss": 0.1}}
    assert comparison.validation_pick(val) == "cnn"
    assert comparison.validation_pick({**val, "tuned": {"auc": 0.91, "loss": 0.9}}) == "tuned"


def test_tuned_versus_untuned_in_words() -> None:
    def d(a: str, b: str, m: str, low: float, high: float) -> comparison.Difference:
        return comparison.Difference(a, b, m, (low + high) / 2, low, high, 0.95)

    worse = [d("cnn", "tuned", "auc", -0.01, 0.01), d("cnn", "tuned", "acc", 0.01, 0.05)]  # cnn - tuned ACC > 0
    assert comparison.tuned_vs_untuned(worse).startswith("The tuned model is worse than the untuned one in ACC")
    assert "ACC -0.030 (95% CI -0.050 to -0.010)" in comparison.tuned_vs_untuned(worse)
    same = [d("tuned", "cnn", "auc", -0.01, 0.01), d("tuned", "cnn", "acc", -0.02, 0.01)]
    assert comparison.tuned_vs_untuned(same).startswith("The tuned model is not distinguishable from the untuned one")
    assert comparison.tuned_vs_untuned([d("tuned", "cnn", "auc", 0.01, 0.02)]).startswith("The tuned model is better")
    assert comparison.tuned_vs_untuned([d("a", "b", "auc", 0.01, 0.02)]) is None


def test_mean_log_loss_by_hand() -> None:
    # -(log 0.8 + log 0.5) / 2
    assert math.isclose(
        mean_log_loss(np.array([1, 0]), two_col([0.8, 0.5]), BINARY), -(math.log(0.8) + math.log(0.5)) / 2
    )
    assert math.isclose(mean_log_loss(np.array([[1, 0]]), np.array([[0.5, 0.5]]), MULTI_LABEL), math.log(2))
