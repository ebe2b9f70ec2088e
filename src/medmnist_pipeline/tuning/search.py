"""Hyperparameter search with Optuna: the space and settings come from ``tune`` in params.yaml, trials train with
the same code as the train stage, report validation AUC every epoch to the pruner, and each trial is a nested
MLflow run under the study's run.

The study lives in persistent storage and is named after everything that defines it, so rerunning the same
search resumes it and a changed search starts a new one. Workers in other processes or on other machines join
the same study (``medmnist-pipeline tune --worker``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from medmnist_pipeline.config.io import validate
from medmnist_pipeline.config.params import Params
from medmnist_pipeline.config.train import TrainParams, merge_model_keys
from medmnist_pipeline.config.tune import MODEL_PATH, Distribution
from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.errors import Interrupted, PipelineError
from medmnist_pipeline.files import atomic_file, clear_write_errors, md5sum
from medmnist_pipeline.owners import worker_id
from medmnist_pipeline.paths import optuna_journal, trials_dir
from medmnist_pipeline.tracking import flatten
from medmnist_pipeline.tuning.workers import (
    FINISHED,
    GRACE_S,
    HEARTBEAT_S,
    ask_lock,
    count,
    fail_stale_trials,
    heartbeat,
    remove_dead_trials_state,
)

# A server database (workers on several machines): a running trial writes a heartbeat every HEARTBEAT_S seconds;
# one silent for GRACE_S is the trial of a dead worker, and the next process that looks fails it.
MODEL_ARTIFACT_DIR = "checkpoint"  # a trial run's model file: <run>/checkpoint/trial-N.ckpt (as train runs log it)


# --- the study ----------------------------------------------------------------------------------------------


def study_name(params: Params, meta: DatasetMeta) -> str:
    """Same data + same search + same fixed training settings = same study (resumable); anything else = new."""
    tune = params.tune.model_dump(by_alias=True, exclude={"n_trials", "timeout_s", "storage"})
    defining = {
        "data": [meta.md5, meta.size],
        "seed": params.seed,
        "tune": tune,
        "train": params.train.model_dump(),
        "augment": params.augment.model_dump() if params.train.augmented else None,
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{meta.flag}{meta.size}-{digest}"


def storage_for(params: Params) -> Any:
    url = params.tune.storage
    if url and "://" in url:
        # A heartbeat lets any worker mark the trials of a vanished worker as failed.
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    path = Path(url) if url else optuna_journal()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def sampler_seed(seed: int, trials_so_far: int, worker: int) -> int:
    """The sampler's seed for one process joining a study.

    Seeding every process with ``params.seed`` alone made parallel workers, and every restart, draw the same points
    again. The stream depends on how many trials the study already holds and on the worker (0 for the tune stage,
    the process id for ``--worker``): a single-process study, fresh or resumed, still draws the same points.
    """
    return int(np.random.SeedSequence([seed, trials_so_far, worker]).generate_state(1)[0])


def sampler_for(params: Params, seed: int) -> optuna.samplers.BaseSampler:
    tune = params.tune
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({p: d.categorical for p, d in tune.space.items()}, seed=seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def pruner_for(params: Params, max_epochs: int) -> optuna.pruners.BasePruner:
    p = params.tune.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "hyperband":  # successive halving: many short trials, longer ones for the promising
        return optuna.pruners.HyperbandPruner(min_resource=p.warmup_epochs + 1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def open_study(params: Params, meta: DatasetMeta, worker: bool = False) -> optuna.Study:
    """The study of these params, created or loaded, with a sampler seeded for this process (:func:`sampler_seed`)."""
    trial_max_epochs = int(params.tune.fixed.get("train.max_epochs", params.train.max_epochs))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(params, meta),
        storage=storage_for(params),
        pruner=pruner_for(params, trial_max_epochs),
        direction=params.tune.direction,
        load_if_exists=True,
    )
    seed = sampler_seed(params.seed, len(study.get_trials(deepcopy=False)), os.getpid() if worker else 0)
    study.sampler = sampler_for(params, seed)
    return study


# --- trials -------------------------------------------------------------------------------------------------


def suggest(trial: optuna.Trial, path: str, dist: Distribution) -> Any:
    if dist.categorical is not None:
        return trial.suggest_categorical(path, dist.categorical)
    if dist.int_ is not None:
        return trial.suggest_int(path, dist.int_[0], dist.int_[1], log=dist.log)
    return trial.suggest_float(path, dist.float_[0], dist.float_[1], log=dist.log)


def _parent(tree: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds the setting ``path`` (``train.a.b``) in a dumped train section, and its key."""
    *parents, last = path.split(".")[1:]  # drop the leading "train"
    for part in parents:
        tree = tree[part]
    return tree, last


_ABSENT = object()


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    holder, key = _parent(tree, path)
    holder[key] = value


def enqueue_train_values(study: optuna.Study, params: Params) -> dict[str, Any] | None:
    """Make the first trial of a new study the train section's own values (where they lie inside the space), so the
    search starts from the configuration it should beat and TPE/the pruner know its curve from the outset."""
    if study.trials or params.tune.sampler == "grid":
        return None
    tree, values = params.train.model_dump(), {}
    for path, dist in params.tune.space.items():
        holder, key = _parent(tree, path)
        value = holder.get(key, _ABSENT)  # absent: a key of other architectures the search builds
        bounds = dist.float_ or dist.int_
        if (
            value is _ABSENT
            or (dist.categorical is not None and value not in dist.categorical)
            or (bounds is not None and not bounds[0] <= value <= bounds[1])
        ):
            return None
        values[path] = value
    study.enqueue_trial(values)
    return values


def trial_train_params(params: Params, values: dict[str, Any]) -> TrainParams:
    """The train section with the fixed overrides and this trial's values, validated like the train stage; its model
    section is ``merge_model_keys``'s (a trial of another architecture keeps only the keys that one reads)."""
    tree = copy.deepcopy(params.train.model_dump())
    model_values = {}
    for path, value in {**params.tune.fixed, **values}.items():
        if path.startswith(MODEL_PATH):
            model_values[path.removeprefix(MODEL_PATH)] = value
        else:
            set_path(tree, path, value)
    tree["model"] = merge_model_keys(tree["model"], model_values)
    return validate(TrainParams, tree, source="a tuning trial's train params", prefix=("train",))


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    params: Params,
    meta: DatasetMeta,
    parent_run_id: str,
    folder: Path,
    log,
) -> None:
    """Train one trial in its own nested MLflow run and tell the study how it ended."""
    import mlflow
    from optuna_integration import PyTorchLightningPruningCallback

    from medmnist_pipeline.tracking import nested_run, run_logger
    from medmnist_pipeline.training.fit import fit

    started = time.perf_counter()
    values = {path: suggest(trial, path, dist) for path, dist in params.tune.space.items()}
    tags = {
        "stage": "tune",
        "tune.trial": str(trial.number),
        "tune.study": study.study_name,
        "tune.worker": worker_id(),
    }
    run = nested_run(params, f"tune/trial-{trial.number}", parent_run_id, tags)
    try:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params(flatten(values))
        section = trial_train_params(params, values)
        # every train.* key, as the train stage's runs have them: trials and train runs compare side by side
        mlflow.log_params({k: v for k, v in flatten({"train": section.model_dump()}).items() if k not in values})
        logger = run_logger(params, run.info.run_id)
        pruning = PyTorchLightningPruningCallback(trial, monitor=params.tune.metric)
        checkpoint_dir = folder / f"trial-{trial.number}"
        # resume=False: a trial that dies is failed and replaced, not resumed
        with heartbeat(study, trial):
            result = fit(
                section,
                params.seed,
                meta,
                checkpoint_dir,
                logger,
                [pruning],
                loader=params.loader,
                progress=False,
                resume=False,
            )
        pruning.check_pruned()  # under DDP the callback only stops training; the verdict is raised here
        value = result.val[params.tune.metric.removeprefix("val/")]
        model_path = folder / f"trial-{trial.number}.ckpt"
        with clear_write_errors(f"trial {trial.number}: the model file", model_path), atomic_file(model_path) as tmp:
            result.model_file(meta, run.info.run_id).save(tmp)
        # The model travels through MLflow (workers on other machines); the local file is only a cache of it,
        # trusted when its MD5 matches.
        mlflow.log_artifact(str(model_path), artifact_path=MODEL_ARTIFACT_DIR)
        trial.set_user_attr("model_path", str(model_path))
        trial.set_user_attr("model_md5", md5sum(model_path))
        trial.set_user_attr("model_artifact", f"{MODEL_ARTIFACT_DIR}/{model_path.name}")
        trial.set_user_attr("best_epoch", result.best["epoch"])
        mlflow.log_metric("trial/value", value)
        tell(study, trial, values=value)
        mlflow.end_run("FINISHED")
        verdict = f"{params.tune.metric} {value:.4f}"
    except optuna.TrialPruned as pruned:
        epochs = len(study._storage.get_trial(trial._trial_id).intermediate_values)
        tell(study, trial, state=TrialState.PRUNED)
        mlflow.set_tag("tune.pruned_at_epoch", str(epochs - 1))
        mlflow.end_run("KILLED")  # pruned is not a failure
        verdict = f"pruned at epoch {epochs - 1}" if epochs else f"pruned ({pruned})"
    except Interrupted as exc:  # SIGTERM/SIGINT: this trial is failed (a rerun runs a replacement), its run KILLED
        trial.set_user_attr("fail_reason", f"interrupted by {exc.name}")
        tell(study, trial, state=TrialState.FAIL)
        mlflow.set_tag("fail_reason", f"interrupted by {exc.name}")
        mlflow.end_run("KILLED")
        exc.where = f"in trial {trial.number} {exc.where}".strip() + "; a rerun continues the study with a new trial"
        raise
    except Exception as exc:  # noqa: BLE001 - a bad combination, NaN loss, out of memory...: record it, the study goes on
        reason = f"{type(exc).__name__}: {exc}"
        trial.set_user_attr("fail_reason", reason[:2000])
        tell(study, trial, state=TrialState.FAIL)
        mlflow.set_tag("fail_reason", reason[:5000])
        mlflow.end_run("FAILED")
        verdict = f"FAILED ({' '.join(reason.split())[:200]})"
    finally:
        shutil.rmtree(folder / f"trial-{trial.number}", ignore_errors=True)  # its resumable state
    best = _best_value(study)
    shown = ", ".join(f"{k.split('.')[-1]}={short_value(v)}" for k, v in values.items())
    log(f"trial {trial.number:3d} [{shown}] -> {verdict}; {time.perf_counter() - started:5.1f} s; best so far {best}")


def tell(study: optuna.Study, trial: optuna.Trial, **result: Any) -> None:
    """``study.tell``; a GridSampler whose grid is used up calls ``study.stop()`` from it, which Optuna allows
    only inside ``optimize`` (the trial is already recorded by then; our loop stops on its own count)."""
    try:
        study.tell(trial, **result)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def short_value(value: Any, digits: int = 3) -> str:
    """A trial's setting or value as people read it: floats to ``digits`` significant digits."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _best_value(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return "none yet"


def optimize(
    study: optuna.Study, params: Params, meta: DatasetMeta, parent_run_id: str, log=print, poll_s: float = 2.0
) -> bool:
    """Run trials until the study holds ``n_trials`` finished ones (all workers together) or time runs out;
    True when ``tune.timeout_s`` ran out.

    While the trials still missing are running in other workers, this process waits instead of returning: if one of
    those workers dies, its trial is failed (``fail_stale_trials``) and this process runs the replacement, so the
    study completes with nothing lost."""
    folder = trials_dir(study.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_trials_state(study, folder)
    deadline = time.monotonic() + params.tune.timeout_s if params.tune.timeout_s else float("inf")
    waiting = False
    while time.monotonic() < deadline:
        with ask_lock(study):
            # a dead worker's trial must not count as running, or nobody replaces it
            if stale := fail_stale_trials(study, params):
                log(f"marked trial(s) {stale} failed: their worker died")
                remove_dead_trials_state(study, folder)
            trial = None
            if count(study, FINISHED) >= params.tune.n_trials:
                break
            if count(study, (TrialState.FAIL,)) >= params.tune.n_trials:  # more failures than trials wanted:
                log(f"{params.tune.n_trials} trials failed: stopping the search")  # the search itself is broken
                break
            if count(study, FINISHED + (TrialState.RUNNING,)) < params.tune.n_trials:
                trial = study.ask()
                trial.set_user_attr("worker", worker_id())
        if trial is None:  # the missing trials are running elsewhere: watch them
            if not waiting:
                log(f"waiting for {count(study, (TrialState.RUNNING,))} trial(s) still running in other workers")
            waiting = True
            time.sleep(poll_s)
            continue
        waiting = False
        run_trial(study, trial, params, meta, parent_run_id, folder, log)
    if time.monotonic() < deadline:
        return False
    if (finished := count(study, FINISHED)) < params.tune.n_trials:
        log(
            f"tune.timeout_s ({params.tune.timeout_s:g} s) reached after {finished} of tune.n_trials="
            f"{params.tune.n_trials} finished trials: no new trials started. How many trials ran depends on this "
            "machine's speed; raise tune.timeout_s for a search that any machine repeats"
        )
    return True


def optimize_as_worker(study: optuna.Study, params: Params, meta: DatasetMeta) -> None:
    """Join a study that the tune stage started: trials nest in its MLflow run; the stage writes the outputs."""
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent is None:
        raise PipelineError(
            f"study {study.study_name} has no tune run yet: start `medmnist-pipeline tune` "
            "(or `dvc repro tune`) first, then add workers"
        )
    optimize(study, params, meta, parent)
