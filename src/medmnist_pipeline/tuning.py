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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from medmnist_pipeline.config import Distribution, Params, TrainParams
from medmnist_pipeline.config_io import validate
from medmnist_pipeline.data import DatasetMeta
from medmnist_pipeline.datamodule import DataPath
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import atomic_file, md5sum
from medmnist_pipeline.owners import dead_here, worker_id
from medmnist_pipeline.paths import optuna_journal, trials_dir
from medmnist_pipeline.tracking import flatten

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A server database (workers on several machines): a running trial writes a heartbeat every HEARTBEAT_S seconds;
# one silent for GRACE_S is the trial of a dead worker, and the next process that looks fails it.
HEARTBEAT_S = 30
GRACE_S = 120
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


def fail_stale_trials(study: optuna.Study, tracking: Any = None) -> list[int]:
    """Trials left RUNNING by a dead process are marked FAIL: on this machine when their process is gone, on any
    machine (server database) when their heartbeat stopped. Their MLflow runs, which the dead process could not
    end, are ended KILLED with the reason (``tracking``: the Params whose tracking store holds them)."""
    failed: dict[int, str] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker", "")
        if dead_here(owner) and _fail(study, trial._trial_id, f"worker {owner} died"):
            failed[trial.number] = f"worker {owner} died"
    rdb = _rdb(study)
    if rdb is not None and rdb.heartbeat_interval:  # trials whose worker stopped beating, on any machine
        running = {t._trial_id: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        # (Optuna's public fail_stale_trials gives no way to record why; its stale-trial query is the same)
        for trial_id in rdb._get_stale_trial_ids(study._study_id):
            owner = running[trial_id].user_attrs.get("worker", "?") if trial_id in running else "?"
            reason = f"worker {owner} stopped its heartbeat for over {rdb.grace_period} s"
            if trial_id in running and _fail(study, trial_id, reason):
                failed[running[trial_id].number] = reason
    if failed and tracking is not None:
        end_dead_trial_runs(study.study_name, failed, tracking)
    return sorted(failed)


def _rdb(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDB storage (Optuna wraps it in a cache), or None for other storages."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _fail(study: optuna.Study, trial_id: int, reason: str) -> bool:
    """FAIL a RUNNING trial; False if another process got there first (each dead trial is reported once)."""
    try:
        study._storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        return study._storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False


def end_dead_trial_runs(study_name: str, reasons: dict[int, str], tracking: Any) -> list[str]:
    """End the MLflow runs of dead trials as KILLED, with a ``fail_reason`` tag: the process that would have
    ended them is gone, and a run left RUNNING would look alive forever. Found by their tags, so a run is found
    even if its process died before it could record the run id anywhere."""
    from medmnist_pipeline.tracking import _mlflow, experiment_id

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    ended = []
    for number, reason in reasons.items():
        runs = client.search_runs(
            [experiment_id(tracking)],
            filter_string=f"tags.`tune.study` = '{study_name}' and tags.`tune.trial` = '{number}' "
            "and attributes.status = 'RUNNING'",
        )
        for run in runs:
            client.set_tag(run.info.run_id, "fail_reason", reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


@contextlib.contextmanager
def ask_lock(study: optuna.Study) -> Iterator[None]:
    """Count-then-ask must be atomic across all workers, or two workers both start the last trial. With a
    PostgreSQL or MySQL study the lock is the database's own (an advisory lock named after the study), which holds
    across machines; otherwise a file lock in the project, which holds across the processes of one machine."""
    backend = _rdb(study)
    dialect = backend.engine.dialect.name if backend is not None else None
    if dialect in ("postgresql", "mysql"):
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(study.study_name.encode()).digest()[:8], "big", signed=True)
        take, release = {
            "postgresql": ("SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"),
            "mysql": ("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
        }[dialect]
        args = {"key": key, "name": f"optuna-ask-{study.study_name}"[:64]}
        with backend.engine.connect() as connection:  # the lock belongs to this one connection
            connection.execute(text(take), args)
            try:
                yield
            finally:
                connection.execute(text(release), args)
        return
    path = optuna_journal().with_suffix(".ask.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Optuna records heartbeats only inside ``study.optimize``; trials run with ask/tell record their own, so
    that a worker that dies on another machine is noticed (``fail_stale_trials``)."""
    storage = _rdb(study)
    if storage is None or not storage.heartbeat_interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is retried; the trial itself goes on
                storage.record_heartbeat(trial._trial_id)
            if stop.wait(storage.heartbeat_interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
    from medmnist_pipeline.tracking import experiment_id, experiment_tags, tracking_uri

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
            **experiment_tags(),
        },
    )
    try:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
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
        data_path = DataPath.of(params)
        with heartbeat(study, trial):
            result = fit(
                section,
                params.seed,
                meta,
                checkpoint_dir,
                logger,
                [pruning],
                data_path=data_path,
                progress=False,
                resume=False,
            )
        pruning.check_pruned()  # under DDP the callback only stops training; the verdict is raised here
        value = result.val[params.tune.metric.removeprefix("val/")]
        model_path = folder / f"trial-{trial.number}.ckpt"
        with atomic_file(model_path) as tmp:
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
    if time.monotonic() >= deadline:
        log(f"tune.timeout_s ({params.tune.timeout_s:g} s) reached: no new trials started")
        return True
    return False


def remove_dead_trials_state(study: optuna.Study, folder: Path) -> list[str]:
    """The resumable state (``trial-N/``) a killed process left in this project: trials are never resumed (a dead
    one is failed and replaced), so a folder whose trial is no longer running is garbage. Model files stay."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    removed = []
    for state in folder.glob("trial-*"):
        number = state.name.removeprefix("trial-")
        if state.is_dir() and number.isdigit() and int(number) not in running:
            shutil.rmtree(state, ignore_errors=True)
            removed.append(state.name)
    return removed


def wait_for_other_workers(study: optuna.Study, params: Params, log=print, poll_s: float = 2.0) -> None:
    """The stage's outputs describe the whole study: wait for trials that other workers are still running."""
    announced = False
    while running := count(study, (TrialState.RUNNING,)):
        if not announced:
            log(f"waiting for {running} trial(s) still running in other workers")
            announced = True
        if stale := fail_stale_trials(study, params):
            log(f"marked trial(s) {stale} failed: their worker died")
        time.sleep(poll_s)


def check_search_finished(study: optuna.Study, params: Params, timed_out: bool) -> None:
    """The stage's outputs claim ``n_trials`` trials: fail (so DVC does not record the stage as done) when fewer
    finished, e.g. because a worker was killed while the stage waited for it, unless ``tune.timeout_s`` ran out."""
    finished = count(study, FINISHED)
    if finished < params.tune.n_trials and not timed_out:
        failed = count(study, (TrialState.FAIL,))
        raise PipelineError(
            f"only {finished} of tune.n_trials={params.tune.n_trials} trials finished ({failed} failed); "
            "run the tune stage again to complete the study"
        )


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


def fetch_trial_model(trial: optuna.trial.FrozenTrial, params: Params, target: Path) -> str:
    """Write ``trial``'s model file to ``target``: the local copy when this machine ran the trial (and its MD5 is
    the one recorded), otherwise the artifact its MLflow run logged, so a worker on another machine is no
    problem when the tracking server serves artifacts. Returns where the model came from, for the log."""
    import tempfile

    from medmnist_pipeline.tracking import _mlflow, tracking_uri

    local, md5 = trial.user_attrs.get("model_path"), trial.user_attrs.get("model_md5")
    run_id, artifact = trial.user_attrs.get("mlflow_run_id"), trial.user_attrs.get("model_artifact")
    if local and Path(local).is_file() and (md5 is None or md5sum(local) == md5):  # (no md5: an older trial)
        with atomic_file(target) as tmp:
            shutil.copyfile(local, tmp)
        return f"the local copy {local}"
    if not (run_id and artifact):
        raise PipelineError(
            f"the model of trial {trial.number} is not on this machine ({local}) and its MLflow run did not log it "
            "(a trial from before models were logged): rerun that trial, or copy its file here"
        )
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        try:
            fetched = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=scratch, tracking_uri=tracking_uri(params)
            )
        except Exception as exc:  # noqa: BLE001 - unreachable server, missing artifact, ...: one clear line
            raise PipelineError(
                f"cannot fetch the model of trial {trial.number} from MLflow run {run_id} ({artifact}): "
                f"{' '.join(str(exc).split())[:300]}"
            ) from None
        if md5 is not None and md5sum(fetched) != md5:
            raise PipelineError(f"the model of trial {trial.number} fetched from MLflow run {run_id} has the wrong MD5")
        os.replace(fetched, target)
    return f"MLflow run {run_id} ({artifact})"


def trials_table(study: optuna.Study) -> Any:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "duration", "params", "user_attrs"))
    frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    frame = frame.rename(columns=lambda c: c.replace("params_", "").replace("user_attrs_", ""))
    internal = ("worker", "model_path", "model_md5", "model_artifact", "mlflow_run_id")
    return frame.drop(columns=[c for c in internal if c in frame.columns])


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


def validation_noise(study: optuna.Study, best_model: Path, params: Params, meta: DatasetMeta) -> Any:
    """The completed trials within one validation standard error (bootstrap SE of the metric for the best trial's
    model on the validation split) of the best one: more than one means validation cannot decide among them."""
    from medmnist_pipeline.comparison import VALIDATION_METRICS, bootstrap_se, search_noise
    from medmnist_pipeline.data import load_split
    from medmnist_pipeline.datamodule import as_tensors
    from medmnist_pipeline.modelfile import ModelFile
    from medmnist_pipeline.paths import PREPARED_DIR

    images, labels = load_split(PREPARED_DIR, "val")
    y_score = ModelFile.load(best_model).predict(as_tensors(images, labels, meta.multi_label)[0])
    se = bootstrap_se(labels, y_score, meta.task, VALIDATION_METRICS[params.tune.metric], 200, params.seed)
    values = {t.number: t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return search_noise(values, se, params.tune.metric, params.tune.direction == "maximize")
