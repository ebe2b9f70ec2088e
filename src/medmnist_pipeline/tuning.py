"""Hyperparameter search with Optuna: the space and settings come from ``tune`` in params.yaml, trials train with
the same code as the train stage, report validation AUC every epoch to the pruner, and each trial is a nested
MLflow run under the study's run.

The study lives in persistent storage and is named after everything that defines it, so rerunning the same
search resumes it and a changed search starts a new one. Workers in other processes or on other machines join
the same study (``medmnist-pipeline tune --worker``).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medmnist_pipeline.config import Distribution, Params, TrainParams
from medmnist_pipeline.config_io import validate
from medmnist_pipeline.data import DatasetMeta
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.paths import optuna_journal, trials_dir
from medmnist_pipeline.tracking import flatten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


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
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    path = Path(url) if url else optuna_journal()
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def sampler_for(params: Params) -> optuna.samplers.BaseSampler:
    tune = params.tune
    if tune.sampler == "grid":
        return optuna.samplers.GridSampler({p: d.categorical for p, d in tune.space.items()}, seed=params.seed)
    if tune.sampler == "random":
        return optuna.samplers.RandomSampler(seed=params.seed)
    return optuna.samplers.TPESampler(seed=params.seed)


def pruner_for(params: Params, max_epochs: int) -> optuna.pruners.BasePruner:
    p = params.tune.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs)
    if p.name == "hyperband":  # successive halving: many short trials, longer ones for the promising
        return optuna.pruners.HyperbandPruner(min_resource=p.warmup_epochs + 1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()


def open_study(params: Params, meta: DatasetMeta) -> optuna.Study:
    trial_max_epochs = int(params.tune.fixed.get("train.max_epochs", params.train.max_epochs))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=study_name(params, meta),
        storage=storage_for(params),
        sampler=sampler_for(params),
        pruner=pruner_for(params, trial_max_epochs),
        direction=params.tune.direction,
        load_if_exists=True,
    )


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Trials left RUNNING by a killed process on this machine are marked FAIL (others use the RDB heartbeat)."""
    failed = []
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker", "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", f"worker {owner} died")
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            failed.append(trial.number)
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # trials whose worker's heartbeat stopped, on any machine
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def ask_lock() -> Iterator[None]:
    """Count-then-ask must be atomic across the workers of one machine, or two workers both start the last
    trial. (Workers on several machines share no file system lock; they may overshoot by one trial each.)"""
    path = optuna_journal().with_suffix(".ask.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def get_path(tree: dict[str, Any], path: str) -> Any:
    holder, key = _parent(tree, path)
    return holder[key]


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
        value = get_path(tree, path)
        bounds = dist.float_ or dist.int_
        if (dist.categorical is not None and value not in dist.categorical) or (
            bounds is not None and not bounds[0] <= value <= bounds[1]
        ):
            return None
        values[path] = value
    study.enqueue_trial(values)
    return values


def trial_train_params(params: Params, values: dict[str, Any]) -> TrainParams:
    """The train section with the fixed overrides and this trial's values, validated like the train stage."""
    tree = copy.deepcopy(params.train.model_dump())
    for path, value in {**params.tune.fixed, **values}.items():
        set_path(tree, path, value)
    return validate(TrainParams, tree, source="a tuning trial's train params", prefix=("train",))


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


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
    from lightning.pytorch.loggers import MLFlowLogger
    from optuna_integration import PyTorchLightningPruningCallback

    from medmnist_pipeline.fit import fit
    from medmnist_pipeline.tracking import experiment_id, tracking_uri

    started = time.perf_counter()
    values = {path: suggest(trial, path, dist) for path, dist in params.tune.space.items()}
    run = mlflow.start_run(
        experiment_id=experiment_id(params),
        run_name=f"tune/trial-{trial.number}",
        nested=True,
        parent_run_id=parent_run_id,
        tags={
            "stage": "tune",
            "tune.trial": str(trial.number),
            "tune.study": study.study_name,
            "tune.worker": worker_id(),
        },
    )
    try:
        mlflow.log_params(flatten(values))
        section = trial_train_params(params, values)
        # every train.* key, as the train stage's runs have them: trials and train runs compare side by side
        mlflow.log_params({k: v for k, v in flatten({"train": section.model_dump()}).items() if k not in values})
        logger = MLFlowLogger(
            experiment_name=params.tracking.experiment, tracking_uri=tracking_uri(params), run_id=run.info.run_id
        )
        pruning = PyTorchLightningPruningCallback(trial, monitor=params.tune.metric)
        checkpoint_dir = folder / f"trial-{trial.number}"
        # resume=False: a trial that dies is failed and replaced, not resumed
        result = fit(section, params.seed, meta, checkpoint_dir, logger, [pruning], progress=False, resume=False)
        pruning.check_pruned()  # under DDP the callback only stops training; the verdict is raised here
        value = result.val[params.tune.metric.removeprefix("val/")]
        model_path = folder / f"trial-{trial.number}.ckpt"
        result.model_file(meta, run.info.run_id).save(model_path)
        trial.set_user_attr("model_path", str(model_path))
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
    shown = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in values.items())
    log(f"trial {trial.number:3d} [{shown}] -> {verdict}; {time.perf_counter() - started:5.1f} s; best so far {best}")


def tell(study: optuna.Study, trial: optuna.Trial, **result: Any) -> None:
    """``study.tell``; a GridSampler whose grid is used up calls ``study.stop()`` from it, which Optuna allows
    only inside ``optimize`` (the trial is already recorded by then; our loop stops on its own count)."""
    try:
        study.tell(trial, **result)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _best_value(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return "none yet"


def optimize(study: optuna.Study, params: Params, meta: DatasetMeta, parent_run_id: str, log=print) -> None:
    """Run trials until the study holds ``n_trials`` finished ones (all workers together) or time runs out."""
    folder = trials_dir(study.study_name)
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + params.tune.timeout_s if params.tune.timeout_s else float("inf")
    while time.monotonic() < deadline:
        with ask_lock():
            if count(study, FINISHED + (TrialState.RUNNING,)) >= params.tune.n_trials:
                break
            if count(study, (TrialState.FAIL,)) >= params.tune.n_trials:  # more failures than trials wanted:
                log(f"{params.tune.n_trials} trials failed: stopping the search")  # the search itself is broken
                break
            trial = study.ask()
            trial.set_user_attr("worker", worker_id())
        run_trial(study, trial, params, meta, parent_run_id, folder, log)
    if time.monotonic() >= deadline:
        log(f"tune.timeout_s ({params.tune.timeout_s:g} s) reached: no new trials started")


def wait_for_other_workers(study: optuna.Study, log=print, poll_s: float = 2.0) -> None:
    """The stage's outputs describe the whole study: wait for trials that other workers are still running."""
    announced = False
    while running := count(study, (TrialState.RUNNING,)):
        if not announced:
            log(f"waiting for {running} trial(s) still running in other workers")
            announced = True
        fail_stale_trials(study)
        time.sleep(poll_s)


# --- outputs ------------------------------------------------------------------------------------------------


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = {t.user_attrs.get("fail_reason", t.state.name) for t in study.get_trials(deepcopy=False)}
        raise PipelineError(
            f"no tuning trial completed in study {study.study_name} "
            f"({len(study.trials)} trials); reasons: {'; '.join(sorted(reasons))[:2000]}"
        )
    return study.best_trial


def state_counts(study: optuna.Study) -> dict[str, int]:
    return {s.name.lower(): count(study, (s,)) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}


def best_params_yaml(study: optuna.Study, params: Params, best: optuna.trial.FrozenTrial) -> str:
    """``reports/tune/best_params.yaml``: the full train section of the best trial, which evaluate retrains."""
    import yaml

    section = trial_train_params(params, best.params).model_dump()
    header = (
        f"# The train params of trial {best.number} of study {study.study_name} "
        f"({params.tune.metric} {best.value:.4f})\n"
    )
    return header + yaml.safe_dump({"train": section}, sort_keys=False)


def best_model_file(best: optuna.trial.FrozenTrial) -> Path:
    """The best trial's own model file (its best epoch, selected on validation during the trial): no refit."""
    source = best.user_attrs.get("model_path")
    if not source or not Path(source).is_file():
        raise PipelineError(
            f"the best trial's model {source} is not on this machine (it ran in a worker "
            "elsewhere); copy it here or run tune where the trials' files are shared"
        )
    return Path(source)


def trials_table(study: optuna.Study) -> Any:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    frame = frame.rename(columns=lambda c: c.replace("params_", "").replace("user_attrs_", ""))
    return frame.drop(columns=[c for c in ("worker", "model_path") if c in frame.columns])


def save_study_plots(study: optuna.Study, out_dir: Path, log=print) -> list[Path]:
    """Optuna's own matplotlib views of the study, as PNGs (each needs enough completed trials to exist)."""
    import warnings

    import numpy as np

    from medmnist_pipeline.figures import save_figure, use_agg_pyplot

    use_agg_pyplot()
    from optuna.visualization import matplotlib as views

    saved = []
    for name, view in [
        ("optimization_history", views.plot_optimization_history),
        ("param_importances", views.plot_param_importances),
        ("parallel_coordinate", views.plot_parallel_coordinate),
        ("slice", views.plot_slice),
        ("intermediate_values", views.plot_intermediate_values),
    ]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notices
                figure = np.ravel(view(study))[0].figure  # Optuna draws on pyplot; save_figure releases it
                figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
                figure.tight_layout()
            saved.append(save_figure(figure, out_dir / f"{name}.png", dpi=110))
        except Exception as exc:  # noqa: BLE001 - e.g. importances need two completed trials with varying params
            log(f"plot {name} skipped: {exc}")
    return saved
