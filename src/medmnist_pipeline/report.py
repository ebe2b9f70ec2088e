"""reports/evaluate/report.md: one page read top to bottom, built from the evaluate stage's results."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medmnist_pipeline.data import DatasetMeta

REFERENCE_ROW = "ResNet-18 (28)"  # the benchmark's 28 px baseline: the row a small CNN should beat


@dataclass
class ReportInputs:
    meta: DatasetMeta
    metrics: dict[str, dict[str, Any]]  # model -> {"test": {acc, auc, acc_ci, auc_ci}, "val": {acc, auc}}
    comparison: pd.DataFrame  # evaluation.comparison_table
    best: str  # the model with the best validation AUC (selection never looks at test)
    findings: dict[str, Any]  # evaluation.error_analysis of the best model
    size_curve: pd.DataFrame  # empty when evaluate.learning_curve.fractions is []
    size_reading: str | None
    seeds: dict[str, Any] | None  # evaluation.seed_summary; None when evaluate.seeds is []
    confidence: float
    run_ids: dict[str, str]  # model -> MLflow run id of its training
    n_test: int


def _fmt(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.3f}"
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def headline(inputs: ReportInputs) -> list[str]:
    """The generated sentences: best model, how it compares with the benchmark, validation-test gap."""
    m = inputs.metrics[inputs.best]
    test, val = m["test"], m["val"]
    level = f"{inputs.confidence:.0%}"
    lines = [
        f"**Best model on validation AUC: `{inputs.best}`** (val AUC {val['auc']:.3f}, ACC {val['acc']:.3f}). "
        f"On the test split: AUC {test['auc']:.3f} ({level} CI {test['auc_ci'][0]:.3f}-{test['auc_ci'][1]:.3f}), "
        f"ACC {test['acc']:.3f} ({level} CI {test['acc_ci'][0]:.3f}-{test['acc_ci'][1]:.3f})."
    ]
    reference = inputs.comparison[inputs.comparison["model"] == REFERENCE_ROW]
    if len(reference):
        ref = reference.iloc[0]
        verdicts = []
        for metric in ("auc", "acc"):
            ours, low, theirs = test[metric], test[f"{metric}_ci"][0], ref[f"test_{metric}"]
            word = "above" if ours > theirs else "below"
            sure = " (its whole CI is above)" if low > theirs else ""
            verdicts.append(f"{metric.upper()} {ours:.3f} vs {theirs:.3f}: {word}{sure}")
        lines.append(f"Against MedMNIST v2 {REFERENCE_ROW}: " + "; ".join(verdicts) + ".")
    gap = val["auc"] - test["auc"]
    if gap > 0.02:
        lines.append(
            f"Test AUC is {gap:.3f} below validation AUC: the validation split, used for model "
            "selection, is optimistic for this dataset; trust the test figures and their intervals."
        )
    if inputs.seeds and len(inputs.seeds["seeds"]) > 1:
        s = inputs.seeds["test"]
        lines.append(
            f"Retrained with {len(inputs.seeds['seeds'])} seeds, the tuned configuration scores test AUC "
            f"{s['auc']:.3f} ± {s['auc_sd']:.3f} and ACC {s['acc']:.3f} ± {s['acc_sd']:.3f} "
            "(mean ± sd)."
        )
    return lines


def error_sentences(inputs: ReportInputs) -> list[str]:
    f = inputs.findings
    lines = []
    if f["confused_pairs"]:
        pairs = "; ".join(f"{true} taken for {pred} ({n})" for true, pred, n in f["confused_pairs"])
        lines.append(f"Most confused classes (true taken for predicted, test images): {pairs}.")
    lines.append(f"Expected calibration error: {f['ece']:.3f} (0 = probabilities match observed frequencies).")
    reach = [f"{cov:.0%} of the images at {target:.0%} accuracy" for target, cov in f["coverage"].items() if cov > 0]
    if reach:
        lines.append(
            "Abstaining on the least confident images, the model can answer "
            + ", ".join(reach)
            + " (see the coverage plot to choose an operating point for manual review)."
        )
    return lines


def render(inputs: ReportInputs) -> str:
    meta = inputs.meta
    level = f"{inputs.confidence:.0%}"
    parts = [
        f"# Evaluation: {meta.flag} ({meta.size} px, {meta.task})",
        "",
        f"Test split: {inputs.n_test} images, read only by this stage. Models were selected "
        "on the validation split. Metrics follow the official MedMNIST definitions; intervals are "
        f"{level} percentile bootstrap intervals over test images.",
        "",
        *[f"{line}\n" for line in headline(inputs)],
        "## Comparison",
        "",
        markdown_table(inputs.comparison.fillna("")),
        "",
        "MLflow runs of the evaluated models: "
        + ", ".join(f"{name} `{run_id}`" for name, run_id in inputs.run_ids.items())
        + ".",
        "",
        "## Learning curves",
        "",
        "![per-epoch curves](learning_curves.png)",
        "",
    ]
    if len(inputs.size_curve):
        parts += [
            "### Training-set size",
            "",
            "The tuned configuration retrained on stratified fractions of the training split, each for the same "
            "number of optimizer steps as the full set (fraction 1.0 is the tuned model itself).",
            "",
            "![training-set size curve](size_curve.png)",
            "",
            markdown_table(inputs.size_curve),
            "",
        ]
        if inputs.size_reading:
            parts += [inputs.size_reading, ""]
    parts += [
        f"## Error analysis of `{inputs.best}` (test split)",
        "",
        *[f"{line}\n" for line in error_sentences(inputs)],
        "![confusion matrix](confusion.png)",
        "",
        "Per-class precision, recall, F1 and support: [per_class.csv](per_class.csv)",
        "",
        "![AUC curves](auc_curves.png)",
        "",
        "![reliability diagram](reliability.png)",
        "",
        "![accuracy vs coverage](coverage.png)",
        "",
        "![most confidently wrong](worst_errors.png)",
        "",
        "![least confident correct](uncertain_correct.png)",
        "",
    ]
    return "\n".join(parts)
