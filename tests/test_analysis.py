"""Error-analysis functions on hand-computed toys, and every figure written as a real PNG for every task type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medmnist_pipeline.evaluation import analysis, calibration, curves
from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.training.curves import plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = ("binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression")


def one_hot_scores(pred: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Softmax-like rows whose argmax is ``pred``: ``confidence`` there, the rest shared equally."""
    rows = np.full((len(pred), n_classes), (1 - confidence) / (n_classes - 1))
    rows[np.arange(len(pred)), pred] = confidence
    return rows


def random_predictions(task: str, n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Random but well-formed predictions: binary 2 classes, multi-class 9 (some long names), ordinal 5, 14 labels."""
    rng = np.random.default_rng(seed)
    if task == "multi-label, binary-class":
        names = [f"finding number {j} of the chest" for j in range(14)]
        y_true = (rng.random((n, 14)) < 0.3).astype(int)
        # mostly right per label, so that some images have all 14 right (the uncertain-correct gallery is not empty)
        y_score = np.where(y_true == 1, rng.uniform(0.4, 1.0, (n, 14)), rng.uniform(0.0, 0.55, (n, 14)))
        return y_true, y_score, names
    n_classes = {"binary-class": 2, "multi-class": 9, "ordinal-regression": 5}[task]
    names = ["colorectal adenocarcinoma epithelium" if c == 0 else f"class {c}" for c in range(n_classes)]
    logits = rng.normal(size=(n, n_classes))
    y_score = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return rng.integers(0, n_classes, n), y_score, names


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000  # a real image, not an empty or truncated file


# ---------------------------------------------------------------------------------------------- confusion, report


def test_confusion_counts_three_class_toy() -> None:
    # true 0 -> predicted [0, 1]; true 1 -> [1, 1, 2]; true 2 -> [2, 1, 1, 0]
    y_true = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    pred = [0, 1, 1, 1, 2, 2, 1, 1, 0]
    conf = analysis.confusion(y_true, one_hot_scores(pred, 3), "multi-class", ["a", "b", "c"])
    expected = np.array(
        [
            [1, 1, 0],  # row 0: one right, one as b
            [0, 2, 1],  # row 1: two right, one as c
            [1, 2, 1],
        ]
    )  # row 2: one as a, two as b, one right
    np.testing.assert_array_equal(conf["counts"], expected)
    # rows divided by their sums 2, 3, 4
    np.testing.assert_allclose(conf["normalized"], [[1 / 2, 1 / 2, 0], [0, 2 / 3, 1 / 3], [1 / 4, 2 / 4, 1 / 4]])


def test_confusion_accepts_medmnist_column_labels_and_keeps_absent_classes() -> None:
    # labels shaped (N, 1) as in the npz files; class 2 never occurs, yet keeps its (all-zero) row and column
    conf = analysis.confusion(
        np.array([[0], [1], [1]]), one_hot_scores([0, 1, 0], 3), "ordinal-regression", ["x", "y", "z"]
    )
    np.testing.assert_array_equal(conf["counts"], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(conf["normalized"][2], [0, 0, 0])  # empty row: zeros, not NaN


def test_confusion_multilabel_is_one_two_by_two_per_label() -> None:
    y_true = np.array([[1, 0], [1, 1], [0, 0]])
    y_score = np.array([[0.9, 0.6], [0.4, 0.7], [0.2, 0.5]])  # p > 0.5: [[1, 1], [0, 1], [0, 0]]; 0.5 is negative
    conf = analysis.confusion(y_true, y_score, "multi-label, binary-class", ["l0", "l1"])
    # label 0: TN = 1 (row 3), FP = 0, FN = 1 (row 2), TP = 1 (row 1)
    # label 1: TN = 1 (row 3), FP = 1 (row 1), FN = 0, TP = 1 (row 2)
    np.testing.assert_array_equal(conf["counts"], [[[1, 0], [1, 1]], [[1, 1], [0, 1]]])
    np.testing.assert_allclose(conf["normalized"][1], [[1 / 2, 1 / 2], [0, 1]])


def test_per_class_report_binary_toy() -> None:
    y_true = [1, 1, 1, 0, 0, 0]
    pred = [1, 1, 0, 1, 1, 0]
    report = analysis.per_class_report(y_true, one_hot_scores(pred, 2, 0.7), "binary-class", ["normal", "pneumonia"])
    # pneumonia: TP = 2 (rows 1-2), FP = 2 (rows 4-5), FN = 1 (row 3)
    #   precision 2 / 4 = 0.5, recall 2 / 3, F1 = 2 * 0.5 * (2/3) / (0.5 + 2/3) = (2/3) / (7/6) = 4/7
    # normal: TP = 1 (row 6), FP = 1 (row 3), FN = 2 (rows 4-5)
    #   precision 1 / 2, recall 1 / 3, F1 = 2 * (1/2) * (1/3) / (5/6) = 0.4
    assert list(report.index) == ["normal", "pneumonia"]
    np.testing.assert_allclose(report.loc["pneumonia", ["precision", "recall", "f1"]], [0.5, 2 / 3, 4 / 7])
    np.testing.assert_allclose(report.loc["normal", ["precision", "recall", "f1"]], [0.5, 1 / 3, 0.4])
    assert report["support"].tolist() == [3, 3]


def test_per_class_report_multilabel_is_per_label() -> None:
    y_true = np.array([[1, 0], [1, 1], [0, 1]])
    y_score = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3]])  # predicted [[1, 0], [0, 1], [1, 0]]
    report = analysis.per_class_report(y_true, y_score, "multi-label, binary-class", ["mass", "edema"])
    # mass: TP 1 (row 1), FP 1 (row 3), FN 1 (row 2) -> 1/2, 1/2;  edema: TP 1, FP 0, FN 1 (row 3) -> 1, 1/2
    np.testing.assert_allclose(report[["precision", "recall"]].to_numpy(), [[0.5, 0.5], [1.0, 0.5]])
    assert report["support"].tolist() == [2, 2]


def test_most_confused_pairs_largest_first_ties_row_major() -> None:
    counts = np.array([[1, 1, 0], [0, 2, 1], [1, 2, 1]])  # off-diagonal: (c,b)=2, then (a,b)=(b,c)=(c,a)=1
    assert analysis.most_confused_pairs(counts, ["a", "b", "c"], 2) == [("c", "b", 2), ("a", "b", 1)]
    # k beyond the non-zero cells: zeros and the diagonal are never reported
    assert analysis.most_confused_pairs(counts, ["a", "b", "c"], 10) == [
        ("c", "b", 2),
        ("a", "b", 1),
        ("b", "c", 1),
        ("c", "a", 1),
    ]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        analysis.confusion([0, 1], one_hot_scores([0, 1], 2), "binary", ["a", "b"])
    with pytest.raises(ValueError, match="label names"):
        analysis.confusion([0, 1], one_hot_scores([0, 1], 2), "binary-class", ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        analysis.confusion([0, 2], one_hot_scores([0, 1], 2), "binary-class", ["a", "b"])


# ---------------------------------------------------------------------------------------------- calibration


def test_reliability_ece_single_label() -> None:
    y_score = np.array([[0.1, 0.9], [0.15, 0.85], [0.7, 0.3], [0.35, 0.65]])
    y_true = [1, 0, 0, 0]  # top-class confidences 0.9 right, 0.85 wrong, 0.7 right, 0.65 wrong
    rel = calibration.reliability(y_true, y_score, "binary-class", n_bins=5)  # bins (0.6, 0.8] and (0.8, 1.0] are used
    # bin (0.8, 1]: mean confidence (0.9 + 0.85) / 2 = 0.875, accuracy 1/2
    # bin (0.6, 0.8]: mean confidence (0.7 + 0.65) / 2 = 0.675, accuracy 1/2
    # ECE = 2/4 * |0.5 - 0.875| + 2/4 * |0.5 - 0.675| = 0.1875 + 0.0875 = 0.275
    assert rel["ece"] == pytest.approx(0.275)
    assert rel["bin_count"].tolist() == [0, 0, 0, 2, 2]
    np.testing.assert_allclose(rel["bin_confidence"][3:], [0.675, 0.875])
    np.testing.assert_allclose(rel["bin_accuracy"][3:], [0.5, 0.5])
    assert np.isnan(rel["bin_accuracy"][:3]).all()  # empty bins carry no value


def test_reliability_ece_multilabel_uses_every_probability() -> None:
    y_true = np.array([[0, 1], [1, 1]])
    y_score = np.array([[0.1, 0.9], [0.3, 0.7]])
    rel = calibration.reliability(y_true, y_score, "multi-label, binary-class", n_bins=5)
    # one probability per bin: 0.1 (y=0) |0 - 0.1|, 0.3 (y=1) |1 - 0.3|, 0.7 (y=1) |1 - 0.7|, 0.9 (y=1) |1 - 0.9|
    # ECE = (0.1 + 0.7 + 0.3 + 0.1) / 4 = 0.3
    assert rel["ece"] == pytest.approx(0.3)
    assert rel["bin_count"].tolist() == [1, 1, 0, 1, 1]


def test_reliability_bins_are_right_closed() -> None:
    # two bins [0, 0.5] and (0.5, 1]: 0.0 and 0.5 fall in the first, 1.0 in the last
    rel = calibration.reliability(
        np.array([[0, 1, 1]]), np.array([[0.0, 0.5, 1.0]]), "multi-label, binary-class", n_bins=2
    )
    assert rel["bin_count"].tolist() == [2, 1]
    # ECE = 2/3 * |1/2 - 0.25| + 1/3 * |1 - 1| = 1/6
    assert rel["ece"] == pytest.approx(1 / 6)


# ---------------------------------------------------------------------------------------------- coverage


def test_coverage_curve_four_sample_toy() -> None:
    y_score = np.array([[0.1, 0.9], [0.4, 0.6], [0.8, 0.2], [0.3, 0.7]])
    y_true = [1, 0, 0, 0]
    curve = calibration.coverage_curve(y_true, y_score, "binary-class")
    # confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.7 (wrong)
    # -> order 0.9, 0.8, 0.7, 0.6 = right, right, wrong, wrong
    # accuracy of the top 1..4: 1/1, 2/2, 2/3, 2/4
    np.testing.assert_allclose(curve["coverage"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(curve["threshold"], [0.9, 0.8, 0.7, 0.6])
    assert np.all(np.diff(curve["threshold"]) <= 0)  # most confident answered first
    assert np.all(np.diff(curve["coverage"]) > 0)
    assert calibration.coverage_at_accuracy(curve, 1.0) == 0.5  # the largest coverage still at 100 %, not the first one
    assert calibration.coverage_at_accuracy(curve, 2 / 3) == 0.75
    assert calibration.coverage_at_accuracy(curve, 0.5) == 1.0
    assert (
        calibration.coverage_at_accuracy({"coverage": curve["coverage"], "accuracy": curve["accuracy"] * 0.9}, 0.95)
        == 0.0
    )


def test_coverage_curve_multilabel_confidence_and_hamming_accuracy() -> None:
    y_true = np.array([[1, 0], [0, 0]])
    y_score = np.array([[0.6, 0.6], [0.1, 0.0]])
    curve = calibration.coverage_curve(y_true, y_score, "multi-label, binary-class")
    # confidence: mean(max(p, 1-p)) = (0.6 + 0.6) / 2 = 0.6 and (0.9 + 1.0) / 2 = 0.95 -> row 2 first
    # accuracy per image: row 2 both labels right = 1, row 1 one of two right = 0.5 -> cumulative 1, (1 + 0.5) / 2
    np.testing.assert_allclose(curve["threshold"], [0.95, 0.6])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 0.75])


# ---------------------------------------------------------------------------------------------- galleries


def test_worst_errors_and_uncertain_correct_single_label() -> None:
    y_true = [0, 1, 2, 0, 1, 2]
    y_score = np.array(
        [
            [0.2, 0.7, 0.1],  # 0: wrong, predicted 1 at 0.7
            [0.1, 0.5, 0.4],  # 1: right at 0.5
            [0.95, 0.0, 0.05],  # 2: wrong, predicted 0 at 0.95
            [0.9, 0.05, 0.05],  # 3: right at 0.9
            [0.05, 0.4, 0.55],  # 4: wrong, predicted 2 at 0.55
            [0.3, 0.3, 0.4],  # 5: right at 0.4
        ]
    )
    np.testing.assert_array_equal(analysis.worst_errors(y_true, y_score, "multi-class", 2), [2, 0])  # 0.95, 0.7
    np.testing.assert_array_equal(analysis.worst_errors(y_true, y_score, "multi-class", 10), [2, 0, 4])  # only 3 exist
    np.testing.assert_array_equal(analysis.uncertain_correct(y_true, y_score, "multi-class", 10), [5, 1, 3])  # .4 .5 .9
    assert analysis.worst_errors(y_true, one_hot_scores(y_true, 3), "multi-class", 5).size == 0  # no errors at all


def test_worst_errors_multilabel_sorted_by_largest_gap() -> None:
    y_true = np.array([[1, 0], [0, 0], [1, 1], [0, 1]])
    y_score = np.array([[0.4, 0.0], [0.1, 0.9], [0.8, 0.6], [0.2, 0.95]])
    # wrong rows: 0 (label 0 missed, |0.4 - 1| = 0.6) and 1 (label 1 false alarm, |0.9 - 0| = 0.9) -> 1 first
    # right rows: 2 (largest gap |0.6 - 1| = 0.4) and 3 (|0.2 - 0| = 0.2) -> 2 is the less sure one
    np.testing.assert_array_equal(analysis.worst_errors(y_true, y_score, "multi-label, binary-class", 5), [1, 0])
    np.testing.assert_array_equal(analysis.uncertain_correct(y_true, y_score, "multi-label, binary-class", 5), [2, 3])


def test_gallery_captions_read_true_and_predicted() -> None:
    captions = analysis.gallery_captions(
        [0, 1], [[0.03, 0.97], [0.2, 0.8]], "binary-class", ["normal", "pneumonia"], [0]
    )
    assert captions == ["true: normal\npred: pneumonia (0.97)"]


# ---------------------------------------------------------------------------------------------- figures as PNG


@pytest.mark.parametrize("task", TASKS)
def test_every_plot_writes_a_png(task: str, tmp_path: Path) -> None:
    y_true, y_score, names = random_predictions(task)
    figures = {
        "confusion": analysis.plot_confusion(analysis.confusion(y_true, y_score, task, names), task),
        "reliability": calibration.plot_reliability(calibration.reliability(y_true, y_score, task), task),
        "coverage": calibration.plot_coverage(calibration.coverage_curve(y_true, y_score, task), task),
    }
    if task == "binary-class":
        figures["roc_pr"] = analysis.plot_roc_pr(y_true, y_score)
    if task == "multi-label, binary-class":
        figures["auc"] = analysis.plot_per_label_auc(y_true, y_score, names)
    channels = (3,) if task == "multi-class" else ()  # RGB for one task, grey for the others
    images = np.random.default_rng(1).integers(0, 256, (len(y_score), 28, 28, *channels), dtype=np.uint8)
    for name, pick in (("worst", analysis.worst_errors), ("uncertain", analysis.uncertain_correct)):
        indices = pick(y_true, y_score, task, 8)
        assert 0 < len(indices) <= 8
        captions = analysis.gallery_captions(y_true, y_score, task, names, indices)
        figures[name] = analysis.plot_gallery(images, indices, captions, name)
    for name, fig in figures.items():
        assert_png(save_figure(fig, tmp_path / "nested" / task / f"{name}.png"))


def test_gallery_with_no_and_few_images(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    assert_png(save_figure(analysis.plot_gallery(images, [], [], "worst errors"), tmp_path / "none.png"))
    fig = analysis.plot_gallery(images, [2], ["true: a\npred: b (0.90)"], "one")  # k = 16 asked, one available
    assert sum(ax.has_data() for ax in fig.axes) == 1
    assert_png(save_figure(fig, tmp_path / "one.png"))
    with pytest.raises(ValueError, match="captions"):
        analysis.plot_gallery(images, [0, 1], ["only one"], "mismatch")


def test_confusion_plot_truncates_long_names() -> None:
    names = ["colorectal adenocarcinoma epithelium", "mucus"]
    fig = analysis.plot_confusion(analysis.confusion([0, 1], one_hot_scores([0, 1], 2), "binary-class", names))
    ticks = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert ticks == ["colorectal adenocar…", "mucus"]  # 19 characters and an ellipsis
    assert len(ticks[0]) == analysis.NAME_MAX


def test_history_and_size_curve_plots(tmp_path: Path) -> None:
    # Lightning-style log: train and val metrics on alternate rows, val_auc missing entirely
    history = pd.DataFrame(
        {
            "epoch": [0, 0, 1, 1, 2, 2],
            "train_loss": [0.9, np.nan, 0.7, np.nan, 0.5, np.nan],
            "val_loss": [np.nan, 1.0, np.nan, 0.8, np.nan, 0.75],
            "train_acc": [0.6, np.nan, 0.7, np.nan, 0.8, np.nan],
            "val_acc": [np.nan, 0.55, np.nan, 0.65, np.nan, 0.7],
        }
    )
    fig = plot_history(history, "history")
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2]  # NaN rows skipped, absent val_auc not drawn
    assert_png(save_figure(fig, tmp_path / "history.png"))
    only_loss = plot_history(pd.DataFrame({"epoch": [0, 1], "train_loss": [1.0, 0.5]}), "sparse")
    assert_png(save_figure(only_loss, tmp_path / "sparse.png"))
    sizes = pd.DataFrame(
        {
            "n_train": [4000, 500, 1000, 2000],
            "train_error": [0.11, 0.05, 0.07, 0.09],
            "val_error": [0.18, 0.30, 0.25, 0.21],
            "val_auc": [0.82, 0.7, 0.75, 0.8],
        }
    )
    fig = curves.plot_size_curve(sizes)
    assert fig.axes[0].get_xscale() == "log"
    assert len(fig.axes) == 2  # the twin AUC axis
    assert_png(save_figure(fig, tmp_path / "size.png"))


def test_save_figure_creates_folders_and_releases_pyplot(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()  # a caller's pyplot figure must leave pyplot's registry too
    fig.add_subplot().plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "a" / "b" / "line.png")
    assert path == tmp_path / "a" / "b" / "line.png"
    assert_png(path)
    assert fig.number not in plt.get_fignums()
