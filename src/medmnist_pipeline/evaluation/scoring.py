"""Scoring the models on the test split: official metrics with bootstrap intervals (and validation metrics beside
them), the seed ensembles' and the majority floor's rows, the MedMNIST v2 reference rows, the comparison table and
the error analysis of the model validation picks. Only the evaluation package reads the test split; a test checks
that no other stage opens it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmnist_pipeline.config.params import BootstrapParams, ErrorAnalysisParams
from medmnist_pipeline.data.dataset import DatasetMeta, Split
from medmnist_pipeline.data.layout import stored_layout
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.evaluation.comparison import FLOOR, ensemble_scores, majority_scores, spread, validation_pick
from medmnist_pipeline.memory import trim_heap
from medmnist_pipeline.metadata import BINARY
from medmnist_pipeline.metrics import bootstrap_ci, official_acc, official_auc
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.paths import MODEL_FILES


def load_models(meta: DatasetMeta) -> dict[str, ModelFile]:
    """The stages' model files, checked to be whole (their checksum), to fit their model section and to belong to the
    prepared dataset (same file MD5 and size)."""
    models = {}
    for name, path in MODEL_FILES.items():
        model = ModelFile.load(path)
        if model.dataset.md5 != meta.md5 or model.dataset.size != meta.size:
            raise PipelineError(
                f"{path} was trained on {model.dataset.flag} {model.dataset.size}px"
                f" (MD5 {model.dataset.md5}), not on the prepared {meta.flag} {meta.size}px;"
                " run `dvc repro` to retrain it"
            )
        model.network()  # weights that do not fit their model section: refused here, before the stage's run starts
        models[name] = model
    return models


def scores(model: ModelFile, split: Split, rows: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities for the split's images (or its ``rows``), scored a batch at a time: only the batch being
    scored is read from the memory map into RAM."""
    if rows is None:
        return model.predict(split.images)
    chunk = 4_096  # rows gathered into RAM at a time, in the order given (the labels' order)
    parts = []
    for i in range(0, len(rows), chunk):
        gathered = split.images[torch.from_numpy(rows[i : i + chunk])]
        parts.append(model.predict(gathered))
        del gathered
        trim_heap()  # the gathered rows go back to the OS before the next chunk is read
    return np.concatenate(parts) if parts else model.predict(split.images[:0])


def split_metrics(labels: np.ndarray, y_score: np.ndarray, task: str) -> dict[str, float]:
    return {"acc": official_acc(labels, y_score, task), "auc": official_auc(labels, y_score, task)}


def metrics_with_ci(
    labels: np.ndarray, y_score: np.ndarray, task: str, bootstrap: BootstrapParams, seed: int
) -> dict[str, Any]:
    """Official ACC and AUC with percentile bootstrap intervals over resampled test images."""
    out: dict[str, Any] = split_metrics(labels, y_score, task)
    for name, metric in (("acc", official_acc), ("auc", official_auc)):
        low, high = bootstrap_ci(labels, y_score, task, metric, bootstrap.resamples, seed, bootstrap.confidence)
        out[f"{name}_ci"] = [low, high]
    return out


def score_models(
    models: dict[str, ModelFile], splits: dict[str, Split], task: str, bootstrap: BootstrapParams, seed: int, log=print
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Each model's official test metrics with bootstrap intervals and its validation metrics (``metrics.json``'s
    ``{model: {"test": {acc, auc, acc_ci, auc_ci}, "val": {acc, auc}}}``), and its test scores."""
    metrics, test_scores = {}, {}
    for name, model in models.items():
        test_scores[name] = scores(model, splits["test"])
        metrics[name] = {
            "test": metrics_with_ci(splits["test"].labels, test_scores[name], task, bootstrap, seed),
            "val": split_metrics(splits["val"].labels, scores(model, splits["val"]), task),
        }
        t = metrics[name]["test"]
        log(
            f"{name:>8}: test AUC {t['auc']:.4f} [{t['auc_ci'][0]:.4f}, {t['auc_ci'][1]:.4f}], "
            f"ACC {t['acc']:.4f} [{t['acc_ci'][0]:.4f}, {t['acc_ci'][1]:.4f}]"
        )
    return metrics, test_scores


def add_ensembles(
    metrics: dict[str, dict[str, Any]],
    test_scores: dict[str, np.ndarray],
    ensembles: dict[str, list[ModelFile]],
    splits: dict[str, Split],
    task: str,
    bootstrap: BootstrapParams,
    seed: int,
) -> None:
    """Rows for the seed ensembles (name -> member files): the members' averaged probabilities, scored like a model."""
    for name, files in ensembles.items():
        test_scores[name] = ensemble_scores([scores(f, splits["test"]) for f in files])
        val_score = ensemble_scores([scores(f, splits["val"]) for f in files])
        metrics[name] = {
            "test": metrics_with_ci(splits["test"].labels, test_scores[name], task, bootstrap, seed),
            "val": split_metrics(splits["val"].labels, val_score, task),
        }


def add_majority_floor(
    metrics: dict[str, dict[str, Any]],
    test_scores: dict[str, np.ndarray],
    splits: dict[str, Split],
    task: str,
    bootstrap: BootstrapParams,
    seed: int,
) -> None:
    """The floor's row: always the most frequent training class (all-negative for multi-label)."""
    n_columns = next(iter(test_scores.values())).shape[1]
    train, val, test = splits["train"].labels, splits["val"].labels, splits["test"].labels
    test_scores[FLOOR] = majority_scores(train, len(test), task, n_columns)
    metrics[FLOOR] = {
        "test": metrics_with_ci(test, test_scores[FLOOR], task, bootstrap, seed),
        "val": split_metrics(val, majority_scores(train, len(val), task, n_columns), task),
    }


def score_all(
    models: dict[str, ModelFile],
    ensembles: dict[str, list[ModelFile]],
    splits: dict[str, Split],
    task: str,
    bootstrap: BootstrapParams,
    seed: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """``score_models``, then the rows of the seed ensembles and of the majority floor, in that order."""
    metrics, test_scores = score_models(models, splits, task, bootstrap, seed)
    add_ensembles(metrics, test_scores, ensembles, splits, task, bootstrap, seed)
    add_majority_floor(metrics, test_scores, splits, task, bootstrap, seed)
    return metrics, test_scores


def pick_on_validation(metrics: dict[str, dict[str, Any]], models: dict[str, ModelFile]) -> str:
    """The model validation picks among the model files (they can be registered): validation AUC, ties broken by
    the validation loss each file records. Never looks at test."""
    return validation_pick(
        {name: {"auc": metrics[name]["val"]["auc"], "loss": models[name].val.get("loss")} for name in models}
    )


def reference_rows(flag: str) -> pd.DataFrame:
    """The MedMNIST v2 benchmark rows (Yang et al. 2023, Table 3) for ``flag``: method, test_auc, test_acc."""
    table = pd.read_csv(resources.files("medmnist_pipeline").joinpath("medmnist_v2_benchmark.csv"))
    return table[table["dataset"] == flag].drop(columns="dataset").reset_index(drop=True)


# --- retraining the tuned configuration ---------------------------------------------------------------------


def comparison_table(
    metrics: dict[str, dict[str, Any]], seeds: dict[str, dict[str, Any] | None], reference: pd.DataFrame
) -> pd.DataFrame:
    """Models x metrics for the report: this project's models (with CIs), seed statistics, then the benchmark."""
    rows = []
    for name, m in metrics.items():
        rows.append(
            {
                "model": name,
                "test_auc": m["test"]["auc"],
                "test_auc_ci": _interval(m["test"]["auc_ci"]),
                "test_acc": m["test"]["acc"],
                "test_acc_ci": _interval(m["test"]["acc_ci"]),
                "val_auc": m["val"]["auc"],
                "val_acc": m["val"]["acc"],
                "source": "this project",
            }
        )
    for name, stats in seeds.items():
        if not stats:
            continue
        test = stats["test"]
        rows.append(
            {
                "model": f"{name}, {len(stats['seeds'])} seeds (mean ± sd)",
                "test_auc": test["auc"],
                "test_auc_ci": f"± {spread(test['auc_sd'])}",
                "test_acc": test["acc"],
                "test_acc_ci": f"± {spread(test['acc_sd'])}",
                "val_auc": stats["val"]["auc"],
                "val_acc": stats["val"]["acc"],
                "source": "this project",
            }
        )
    for row in reference.itertuples():
        rows.append(
            {
                "model": row.method,
                "test_auc": row.test_auc,
                "test_acc": row.test_acc,
                "source": "MedMNIST v2 (Yang et al. 2023, Table 3)",
            }
        )
    return pd.DataFrame(
        rows, columns=["model", "test_auc", "test_auc_ci", "test_acc", "test_acc_ci", "val_auc", "val_acc", "source"]
    )


def _interval(ci: list[float]) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


# --- error analysis of one model on the test split ----------------------------------------------------------


def error_analysis(
    split: Split,
    y_score: np.ndarray,
    task: str,
    label_names: list[str],
    out_dir: Path,
    model: str,
    settings: ErrorAnalysisParams,
) -> dict[str, Any]:
    """Write the error-analysis figures and per-class table of ``model`` to ``out_dir``; return the findings the
    report's sentences use (ECE, coverage at target accuracies, most confused pairs)."""
    from medmnist_pipeline.evaluation import analysis, calibration
    from medmnist_pipeline.figures import save_figure

    labels = split.labels if analysis.is_multilabel(task) else split.labels[:, 0]
    where = f"{model}, test split"
    conf = analysis.confusion(labels, y_score, task, label_names)
    save_figure(analysis.plot_confusion(conf, f"Confusion matrix ({where})"), out_dir / "confusion.png")
    analysis.per_class_report(labels, y_score, task, label_names).to_csv(out_dir / "per_class.csv")
    rel = calibration.reliability(labels, y_score, task, settings.calibration_bins)
    save_figure(
        calibration.plot_reliability(rel, f"Reliability ({where}), ECE {rel['ece']:.3f}"), out_dir / "reliability.png"
    )
    curve = calibration.coverage_curve(labels, y_score, task)
    save_figure(calibration.plot_coverage(curve, f"Accuracy vs coverage ({where})"), out_dir / "coverage.png")
    if task == BINARY:
        figure = analysis.plot_roc_pr(labels, y_score, f"ROC and precision-recall ({where})")
    else:  # per label, or per class one-vs-rest
        one_hot = labels if analysis.is_multilabel(task) else np.eye(len(label_names), dtype=int)[labels]
        unit = "label" if analysis.is_multilabel(task) else "class (one vs rest)"
        figure = analysis.plot_per_label_auc(one_hot, y_score, label_names, f"AUC per {unit} ({where})")
    save_figure(figure, out_dir / "auc_curves.png")
    images = stored_layout(split.images)  # (N, H, W[, C]) for display
    for name, picked, title in (
        ("worst_errors", analysis.worst_errors(labels, y_score, task, settings.gallery), "Most confidently wrong"),
        (
            "uncertain_correct",
            analysis.uncertain_correct(labels, y_score, task, settings.gallery),
            "Least confident among the correct",
        ),
    ):
        captions = analysis.gallery_captions(labels, y_score, task, label_names, picked)
        save_figure(analysis.plot_gallery(images, picked, captions, f"{title} ({where})"), out_dir / f"{name}.png")
    pairs = [] if analysis.is_multilabel(task) else analysis.most_confused_pairs(conf["counts"], label_names, k=3)
    return {
        "ece": rel["ece"],
        "confused_pairs": pairs,
        "coverage": {target: calibration.coverage_at_accuracy(curve, target) for target in (0.9, 0.95, 0.99)},
    }


# --- model registry -----------------------------------------------------------------------------------------
