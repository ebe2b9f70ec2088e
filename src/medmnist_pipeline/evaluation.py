"""The evaluate stage's work: official test metrics with bootstrap intervals, the MedMNIST v2 reference rows, and
retrains of the tuned configuration (training-set-size curve, several seeds).

This is the only module that reads the test split; a test checks that no other stage opens it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medmnist_pipeline.comparison import spread
from medmnist_pipeline.config import BootstrapParams, Params, TrainParams
from medmnist_pipeline.data import DatasetMeta, load_split
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.memory import trim_heap
from medmnist_pipeline.metadata import BINARY
from medmnist_pipeline.metrics import bootstrap_ci, official_acc, official_auc
from medmnist_pipeline.modelfile import ModelFile
from medmnist_pipeline.paths import MODEL_FILES, PREPARED_DIR, checkpoints_dir, retrains_dir


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W): a view of the memory-mapped .npy (see load_splits), not a RAM copy
    labels: np.ndarray  # as stored: (N, 1) class index or (N, L) 0/1


def load_splits(meta: DatasetMeta, names: tuple[str, ...] = ("train", "val", "test")) -> dict[str, Split]:
    """The prepared splits, images memory-mapped: scoring reads them a batch at a time, so anonymous memory holds
    batches and scores, not the split (file-backed pages are shared and reclaimable). Copy-on-write maps: a tensor
    view needs a writable array, and a stray write changes only a private page, never the file."""
    splits = {}
    for name in names:
        _, labels = load_split(PREPARED_DIR, name)
        images = np.load(PREPARED_DIR / f"{name}_images.npy", mmap_mode="c", allow_pickle=False)
        x = torch.from_numpy(images)  # no copy: the map itself
        splits[name] = Split(x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1), np.asarray(labels))
    return splits


def load_models(meta: DatasetMeta) -> dict[str, ModelFile]:
    """The stages' model files, checked to belong to the prepared dataset (same file MD5 and size)."""
    models = {}
    for name, path in MODEL_FILES.items():
        model = ModelFile.load(path)
        if model.dataset.md5 != meta.md5 or model.dataset.size != meta.size:
            raise PipelineError(
                f"{path} was trained on {model.dataset.flag} {model.dataset.size}px"
                f" (MD5 {model.dataset.md5}), not on the prepared {meta.flag} {meta.size}px;"
                " run `dvc repro` to retrain it"
            )
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


def reference_rows(flag: str) -> pd.DataFrame:
    """The MedMNIST v2 benchmark rows (Yang et al. 2023, Table 3) for ``flag``: method, test_auc, test_acc."""
    table = pd.read_csv(resources.files("medmnist_pipeline").joinpath("medmnist_v2_benchmark.csv"))
    return table[table["dataset"] == flag].drop(columns="dataset").reset_index(drop=True)


# --- retraining the tuned configuration ---------------------------------------------------------------------


@dataclass
class Retrained:
    model: ModelFile
    trained_indices: np.ndarray  # the training images it trained on
    seconds: float


def retrain(
    name: str,
    section: TrainParams,
    seed: int,
    meta: DatasetMeta,
    params: Params,
    fraction: float,
    parent_run_id: str | None,
) -> Retrained:
    """Train ``section`` with ``seed`` on a stratified ``fraction`` of the training split, in a nested MLflow run.

    A finished retrain is kept under checkpoints/evaluate/ until the stage succeeds, and an interrupted one resumes
    from its last epoch (``resume: auto``), so killing the stage loses at most one epoch.
    """
    import time

    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from medmnist_pipeline.datamodule import DataPath
    from medmnist_pipeline.fit import fit, run_key
    from medmnist_pipeline.tracking import experiment_id, experiment_tags, flatten, tracking_uri

    key = f"{name}-{run_key(section, seed, meta, params.augment)}-{fraction:g}"
    done, indices = retrains_dir() / f"{key}.ckpt", retrains_dir() / f"{key}.indices.npy"
    if done.is_file() and indices.is_file():
        return Retrained(ModelFile.load(done), np.load(indices, allow_pickle=False), 0.0)
    started = time.perf_counter()
    checkpoint_dir = checkpoints_dir() / f"evaluate-{key}"
    run = mlflow.start_run(
        experiment_id=experiment_id(params),
        run_name=f"evaluate/{name}",
        nested=True,
        parent_run_id=parent_run_id,
        tags={"stage": "evaluate", "evaluate.retrain": name, **experiment_tags()},
    )
    try:
        mlflow.log_params({**flatten(section.model_dump(), "train."), "seed": seed, "train_fraction": fraction})
        logger = MLFlowLogger(
            experiment_name=params.tracking.experiment, tracking_uri=tracking_uri(params), run_id=run.info.run_id
        )
        data_path = DataPath.of(params)
        result = fit(
            section, seed, meta, checkpoint_dir, logger, data_path=data_path, train_fraction=fraction, progress=False
        )
        retrains_dir().mkdir(parents=True, exist_ok=True)
        np.save(indices, result.trained_indices.numpy())
        result.model_file(meta, run.info.run_id).save(done)
        mlflow.end_run("FINISHED")
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return Retrained(ModelFile.load(done), np.load(indices, allow_pickle=False), time.perf_counter() - started)


def size_curve(
    section: TrainParams,
    params: Params,
    meta: DatasetMeta,
    splits: dict[str, Split],
    fractions: list[float],
    tuned: ModelFile,
    parent_run_id: str | None,
    log=print,
) -> pd.DataFrame:
    """Retrain on stratified fractions of the training split (same validation split) and measure the training
    error (on the un-augmented images it trained on, best epoch's weights) and the validation error and AUC.

    Each fraction trains for the same number of optimizer steps as the full set (``same_steps``). Fraction 1.0 with
    the same seed is the tuned model itself (its trial trained exactly this): no retrain.
    """
    rows = []
    everything = np.arange(len(splits["train"].labels))
    for fraction in sorted(fractions):
        retrained = (
            Retrained(tuned, everything, 0.0)
            if fraction == 1.0
            else retrain(
                f"size-{fraction:g}", same_steps(section, fraction), params.seed, meta, params, fraction, parent_run_id
            )
        )
        subset = retrained.trained_indices
        train_m = split_metrics(
            splits["train"].labels[subset], scores(retrained.model, splits["train"], subset), meta.task
        )
        val_m = split_metrics(splits["val"].labels, scores(retrained.model, splits["val"]), meta.task)
        rows.append(
            {
                "fraction": fraction,
                "n_train": len(subset),
                "train_error": 1 - train_m["acc"],
                "val_error": 1 - val_m["acc"],
                "train_auc": train_m["auc"],
                "val_auc": val_m["auc"],
            }
        )
        log(
            f"  size curve: {len(subset):6d} training images -> train error {rows[-1]['train_error']:.3f}, "
            f"val error {rows[-1]['val_error']:.3f}, val AUC {val_m['auc']:.4f} ({retrained.seconds:.0f} s)"
        )
    return pd.DataFrame(rows, columns=["fraction", "n_train", "train_error", "val_error", "train_auc", "val_auc"])


def same_steps(section: TrainParams, fraction: float) -> TrainParams:
    """The section with its epoch counts (max, patience, warmup) divided by ``fraction``: a smaller training set
    gets the same number of optimizer steps, so the curve measures data, not a shorter training."""
    import math

    def scaled(epochs: int) -> int:
        return math.ceil(epochs / fraction) if epochs else 0

    schedule = section.schedule.model_copy(
        update={"warmup_epochs": scaled(section.schedule.warmup_epochs), "patience": scaled(section.schedule.patience)}
    )
    return section.model_copy(
        update={
            "max_epochs": scaled(section.max_epochs),
            "schedule": schedule,
            "early_stopping_patience": scaled(section.early_stopping_patience),
        }
    )


def seed_runs(
    name: str,
    section: TrainParams,
    params: Params,
    meta: DatasetMeta,
    splits: dict[str, Split],
    seeds: list[int],
    trained: ModelFile,
    parent_run_id: str | None,
    log=print,
) -> tuple[pd.DataFrame, list[ModelFile]]:
    """Retrain ``section`` (the ``name`` model's configuration) on the full training split once per seed (``seed``
    itself: the ``trained`` model); val and test metrics of each, and the model files (the seed ensemble's members)."""
    rows, files = [], []
    for seed in seeds:
        retrained = (
            Retrained(trained, np.arange(len(splits["train"].labels)), 0.0)
            if seed == params.seed
            else retrain(f"{name}-seed-{seed}", section, seed, meta, params, 1.0, parent_run_id)
        )
        files.append(retrained.model)
        val_m = split_metrics(splits["val"].labels, scores(retrained.model, splits["val"]), meta.task)
        test_m = split_metrics(splits["test"].labels, scores(retrained.model, splits["test"]), meta.task)
        rows.append(
            {
                "model": name,
                "seed": seed,
                "val_acc": val_m["acc"],
                "val_auc": val_m["auc"],
                "test_acc": test_m["acc"],
                "test_auc": test_m["auc"],
            }
        )
        log(f"  {name} seed {seed}: test ACC {test_m['acc']:.4f}, AUC {test_m['auc']:.4f} ({retrained.seconds:.0f} s)")
    columns = ["model", "seed", "val_acc", "val_auc", "test_acc", "test_auc"]
    return pd.DataFrame(rows, columns=columns), files


def seed_summary(seeds: pd.DataFrame) -> dict[str, Any] | None:
    """Mean and sample standard deviation (n - 1; 0 for a single seed) of the seed retrains; None without any."""
    if not len(seeds):
        return None
    seeds = seeds.drop(columns="model", errors="ignore")
    mean, sd = seeds.mean(), seeds.std(ddof=1) if len(seeds) > 1 else seeds.std(ddof=0)
    return {
        "test": {
            "acc": float(mean["test_acc"]),
            "auc": float(mean["test_auc"]),
            "acc_sd": float(sd["test_acc"]),
            "auc_sd": float(sd["test_auc"]),
        },
        "val": {"acc": float(mean["val_acc"]), "auc": float(mean["val_auc"])},
        "seeds": [int(seed) for seed in seeds["seed"]],
    }


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
    gallery: int,
    calibration_bins: int,
) -> dict[str, Any]:
    """Write the error-analysis figures and per-class table of ``model`` to ``out_dir``; return the findings the
    report's sentences use (ECE, coverage at target accuracies, most confused pairs)."""
    from medmnist_pipeline import analysis as A
    from medmnist_pipeline import calibration as C
    from medmnist_pipeline.figures import save_figure

    labels = split.labels if A.is_multilabel(task) else split.labels[:, 0]
    where = f"{model}, test split"
    conf = A.confusion(labels, y_score, task, label_names)
    save_figure(A.plot_confusion(conf, f"Confusion matrix ({where})"), out_dir / "confusion.png")
    A.per_class_report(labels, y_score, task, label_names).to_csv(out_dir / "per_class.csv")
    rel = C.reliability(labels, y_score, task, calibration_bins)
    save_figure(C.plot_reliability(rel, f"Reliability ({where}), ECE {rel['ece']:.3f}"), out_dir / "reliability.png")
    curve = C.coverage_curve(labels, y_score, task)
    save_figure(C.plot_coverage(curve, f"Accuracy vs coverage ({where})"), out_dir / "coverage.png")
    if task == BINARY:
        figure = A.plot_roc_pr(labels, y_score, f"ROC and precision-recall ({where})")
    else:  # per label, or per class one-vs-rest
        one_hot = labels if A.is_multilabel(task) else np.eye(len(label_names), dtype=int)[labels]
        unit = "label" if A.is_multilabel(task) else "class (one vs rest)"
        figure = A.plot_per_label_auc(one_hot, y_score, label_names, f"AUC per {unit} ({where})")
    save_figure(figure, out_dir / "auc_curves.png")
    images = split.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) for display
    for name, picked, title in (
        ("worst_errors", A.worst_errors(labels, y_score, task, gallery), "Most confidently wrong"),
        ("uncertain_correct", A.uncertain_correct(labels, y_score, task, gallery), "Least confident among the correct"),
    ):
        captions = A.gallery_captions(labels, y_score, task, label_names, picked)
        save_figure(A.plot_gallery(images, picked, captions, f"{title} ({where})"), out_dir / f"{name}.png")
    pairs = [] if A.is_multilabel(task) else A.most_confused_pairs(conf["counts"], label_names, k=3)
    return {
        "ece": rel["ece"],
        "confused_pairs": pairs,
        "coverage": {target: C.coverage_at_accuracy(curve, target) for target in (0.9, 0.95, 0.99)},
    }


# --- model registry -----------------------------------------------------------------------------------------

CANDIDATE_ALIAS = "candidate"


def registered_name(meta: DatasetMeta) -> str:
    return f"medmnist-{meta.flag}-{meta.size}"


def register_pick(picked: ModelFile, meta: DatasetMeta) -> tuple[str, str]:
    """Log the model validation picked in the active (evaluate) run, register it as a new version of the dataset's
    model and point the ``candidate`` alias at that version."""
    from mlflow import MlflowClient

    from medmnist_pipeline.tracking import log_pytorch_model

    name = registered_name(meta)
    info = log_pytorch_model(picked, name)
    version = str(info.registered_model_version)
    MlflowClient().set_registered_model_alias(name, CANDIDATE_ALIAS, version)
    return name, version
