"""What the evaluate stage writes: reports/evaluate/report.md (one page read top to bottom), the tables beside it
(metrics.json, comparison.csv, seeds.csv, paired.csv) and the metrics its MLflow run logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.evaluation.comparison import Difference, compare_words, quoted, spread, tuned_vs_untuned
from medmnist_pipeline.evaluation.retrains import SeedRetrains
from medmnist_pipeline.evaluation.robustness import Robustness

REFERENCE_ROW = "ResNet-18 (28)"  # the benchmark's 28 px baseline: the row a small CNN should beat


@dataclass
class ReportInputs:
    meta: DatasetMeta
    metrics: dict[str, dict[str, Any]]  # model -> {"test": {acc, auc, acc_ci, auc_ci}, "val": {acc, auc}}
    comparison: pd.DataFrame  # evaluation.comparison_table
    best: str  # the model validation picks (AUC, ties by loss; selection never looks at test)
    findings: dict[str, Any]  # evaluation.error_analysis of the best model
    size_curve: pd.DataFrame  # empty when evaluate.learning_curve.fractions is []
    size_reading: str | None
    seeds: dict[str, dict[str, Any] | None]  # model -> evaluation.seed_summary (None when evaluate.seeds is [])
    confidence: float
    run_ids: dict[str, str]  # model -> MLflow run id of its training
    n_test: int
    flags: list[str]  # comparison.usefulness_flags of every model: shown first
    paired: list[Difference]  # comparison.paired_differences on the same test images
    robustness: dict[str, Any] | None  # model -> robustness.Robustness; None when off
    registered: str  # "<registered model> version <n>": the pick, with alias candidate


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
        f"**Validation picks `{inputs.best}`** (highest val AUC, ties by val loss; val AUC {val['auc']:.3f}, ACC "
        f"{val['acc']:.3f}); it is registered as {inputs.registered} with alias `candidate`. "
        f"On the test split: AUC {test['auc']:.3f} ({level} CI {test['auc_ci'][0]:.3f}-{test['auc_ci'][1]:.3f}), "
        f"ACC {test['acc']:.3f} ({level} CI {test['acc_ci'][0]:.3f}-{test['acc_ci'][1]:.3f})."
    ]
    reference = inputs.comparison[inputs.comparison["model"] == REFERENCE_ROW]
    if len(reference):
        ref = reference.iloc[0]
        verdicts = []
        for metric in ("auc", "acc"):
            ours, low, theirs = test[metric], test[f"{metric}_ci"][0], ref[f"test_{metric}"]
            word = compare_words(ours, theirs)
            sure = " (its whole CI is above)" if low > theirs else ""
            verdicts.append(f"{metric.upper()} {ours:.3f} vs {theirs:.3f}: {word}{sure}")
        lines.append(f"Against MedMNIST v2 {REFERENCE_ROW}: " + "; ".join(verdicts) + ".")
    gap = val["auc"] - test["auc"]
    if gap > 0.02:
        lines.append(
            f"Test AUC is {gap:.3f} below validation AUC: the validation split, used for model "
            "selection, is optimistic for this dataset; trust the test figures and their intervals."
        )
    for name, stats in inputs.seeds.items():
        if stats and len(stats["seeds"]) > 1:
            s = stats["test"]
            lines.append(
                f"Retrained with {len(stats['seeds'])} seeds, the {name} configuration scores test AUC "
                f"{s['auc']:.3f} ± {spread(s['auc_sd'])} and ACC {s['acc']:.3f} ± {spread(s['acc_sd'])} (mean ± sd)."
            )
    sentence = tuned_vs_untuned(inputs.paired)
    if sentence:
        lines.append(f"**{sentence}**")
    return lines


def paired_sentences(inputs: ReportInputs) -> list[str]:
    """Every pair in words: which differences are real (interval excludes 0) and which are within noise."""
    return [d.sentence() for d in inputs.paired]


def robustness_section(inputs: ReportInputs) -> list[str]:
    from medmnist_pipeline.evaluation.robustness import robustness_markdown

    if not inputs.robustness:
        return []
    worst = {name: max(r.errors, key=r.degradation) for name, r in inputs.robustness.items()}
    return [
        "## Robustness to MedMNIST-C corruptions (test split)",
        "",
        "Balanced error (1 - balanced accuracy, MedMNIST-C's measure) averaged over the severities, with the change "
        "from the clean test images in brackets. Corruptions follow Di Salvo et al. 2024 (MedMNIST-C), with their "
        "spatial extent scaled to the image size (see the README).",
        "",
        robustness_markdown(inputs.robustness),
        "",
        "Largest degradation: "
        + "; ".join(f"`{n}` under {c} ({inputs.robustness[n].degradation(c):+.3f})" for n, c in worst.items())
        + ". Per severity: [robustness.csv](robustness.csv).",
        "",
        "![balanced error against severity](robustness.png)",
        "",
        "![one test image under every corruption and severity](corruption_preview.png)",
        "",
    ]


def error_sentences(inputs: ReportInputs) -> list[str]:
    f = inputs.findings
    lines = []
    if f["confused_pairs"]:
        pairs = "; ".join(f"{quoted(true)} taken for {quoted(pred)} ({n})" for true, pred, n in f["confused_pairs"])
        lines.append(f"Most confused classes (true taken for predicted, test images): {pairs}.")
    lines.append(f"Expected calibration error: {f['ece']:.3f} (0 = probabilities match observed frequencies).")
    reach = [f"{cov:.0%} of the images at {target:.0%} accuracy" for target, cov in f["coverage"].items() if cov > 0]
    if reach and not inputs.flags:  # no coverage claims for a model flagged as useless
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
        *(["## Flags (read first)", "", *[f"- **{flag}**" for flag in inputs.flags], ""] if inputs.flags else []),
        *[f"{line}\n" for line in headline(inputs)],
        "## Comparison",
        "",
        "`majority` is the floor: always the most frequent training class (all-negative for multi-label). "
        "`<model> ensemble` averages the probabilities of the seed retrains.",
        "",
        markdown_table(inputs.comparison.fillna("")),
        "",
        "### Paired comparisons (same test images)",
        "",
        f"Differences first minus second, {level} paired bootstrap intervals (DeLong's test for a binary AUC); "
        "an interval that includes 0 means the test set cannot tell the two apart.",
        "",
        *[f"- {line}" for line in paired_sentences(inputs)],
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
    parts += robustness_section(inputs)
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


def write_tables(
    out_dir: Path,
    metrics: dict[str, dict[str, Any]],
    seeds: SeedRetrains,
    robustness: dict[str, Robustness] | None,
    comparison: pd.DataFrame,
    paired: list[Difference],
) -> None:
    """metrics.json (every model's test and val metrics, seed statistics, robustness summaries), comparison.csv,
    seeds.csv and paired.csv."""
    results: dict[str, Any] = {**metrics, **{f"{n}_seeds": s for n, s in seeds.stats.items() if s}}
    if robustness:
        results["robustness"] = {name: r.summary() for name, r in robustness.items()}
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    comparison.to_csv(out_dir / "comparison.csv", index=False)
    seeds.table.to_csv(out_dir / "seeds.csv", index=False)
    pd.DataFrame([d.__dict__ for d in paired]).to_csv(out_dir / "paired.csv", index=False)


def run_metrics(
    metrics: dict[str, dict[str, Any]], pick: str, ece: float, robustness: dict[str, Robustness] | None
) -> dict[str, float]:
    """What the evaluate run logs to MLflow: ``{split}/{acc,auc}/{model}`` for every model, ``test/acc``,
    ``test/auc`` and ``ece`` of the pick, and the robustness figures; NaNs left out, names without spaces."""
    logged = {
        f"{split}/{metric}/{name}": m[split][metric]
        for name, m in metrics.items()
        for split in ("test", "val")
        for metric in ("acc", "auc")
    }
    logged.update({"test/acc": metrics[pick]["test"]["acc"], "test/auc": metrics[pick]["test"]["auc"], "ece": ece})
    for name, r in (robustness or {}).items():
        logged.update({f"{key}/{name}": value for key, value in r.mlflow_metrics().items()})
    return {k.replace(" ", "_"): v for k, v in logged.items() if not np.isnan(v)}
