"""Evaluate's retrains: the cnn and the tuned configuration again with each seed of ``evaluate.seeds`` (mean ± sd
and the seed ensemble), and the tuned configuration on stratified fractions of the training split (the size curve).
A finished retrain is kept until the stage succeeds, so an interrupted evaluate resumes.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medmnist_pipeline.config.params import Params
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import DatasetMeta, Split
from medmnist_pipeline.errors import Interrupted
from medmnist_pipeline.evaluation.scoring import scores, split_metrics
from medmnist_pipeline.files import atomic_file, clear_write_errors
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.paths import checkpoints_dir, retrains_dir


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

    from medmnist_pipeline.tracking import flatten, nested_run, run_logger
    from medmnist_pipeline.training.fit import fit, run_key

    key = f"{name}-{run_key(section, seed, meta, params.augment)}-{fraction:g}"
    done, indices = retrains_dir() / f"{key}.ckpt", retrains_dir() / f"{key}.indices.npy"
    if done.is_file() and indices.is_file():
        return Retrained(ModelFile.load(done), np.load(indices, allow_pickle=False), 0.0)
    started = time.perf_counter()
    checkpoint_dir = checkpoints_dir() / f"evaluate-{key}"
    run = nested_run(params, f"evaluate/{name}", parent_run_id, {"stage": "evaluate", "evaluate.retrain": name})
    try:
        mlflow.log_params({**flatten(section.model_dump(), "train."), "seed": seed, "train_fraction": fraction})
        logger = run_logger(params, run.info.run_id)
        result = fit(
            section, seed, meta, checkpoint_dir, logger, loader=params.loader, train_fraction=fraction, progress=False
        )
        retrains_dir().mkdir(parents=True, exist_ok=True)
        np.save(indices, result.trained_indices.numpy())
        with clear_write_errors(f"evaluate/{name}: the model file", done), atomic_file(done) as tmp:
            result.model_file(meta, run.info.run_id).save(tmp)
        mlflow.end_run("FINISHED")
    except BaseException as exc:
        mlflow.end_run("KILLED" if isinstance(exc, Interrupted) else "FAILED")
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
    if fractions:
        log(f"training-set-size curve: retraining the tuned configuration on {len(fractions)} fractions")
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


@dataclass
class SeedRetrains:
    table: pd.DataFrame  # one row per (model, seed): val and test ACC/AUC (seeds.csv)
    stats: dict[str, dict[str, Any] | None]  # model -> seed_summary (None without seeds)
    ensembles: dict[str, list[ModelFile]]  # "<model> ensemble" -> its members, for models with 2 or more seeds


def seed_retrains(
    sections: dict[str, TrainParams],
    params: Params,
    meta: DatasetMeta,
    splits: dict[str, Split],
    models: dict[str, ModelFile],
    parent_run_id: str | None,
    log=print,
) -> SeedRetrains:
    """Each configuration (model name -> its train section) retrained with every seed of ``evaluate.seeds``; the
    ensemble of a configuration averages its members' probabilities."""
    seeds = params.evaluate.seeds
    frames, members = [], {}
    for name, section in sections.items():
        if seeds:
            log(f"retraining the {name} configuration with seeds {seeds}")
        frame, files = seed_runs(name, section, params, meta, splits, seeds, models[name], parent_run_id)
        frames.append(frame)
        members[name] = files
    table = pd.concat(frames, ignore_index=True)
    stats = {name: seed_summary(table[table["model"] == name]) for name in members}
    ensembles = {f"{name} ensemble": files for name, files in members.items() if len(files) > 1}
    return SeedRetrains(table, stats, ensembles)
