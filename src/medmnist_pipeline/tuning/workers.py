"""Several processes, or machines, on one study: the lock around count-then-ask, trial heartbeats, and what the
next process does about a worker that died (its trials failed with the reason, its MLflow runs ended KILLED, its
resumable state removed), so a study completes with nothing lost."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medmnist_pipeline.config.params import Params
from medmnist_pipeline.owners import dead_here
from medmnist_pipeline.paths import optuna_journal

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HEARTBEAT_S = 30  # RDB storages: a trial's heartbeat interval ...
GRACE_S = 120  # ... and how long a silent trial is trusted before another process fails it


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
    even if its process died before it could record the run id anywhere. Not only RUNNING ones: Lightning's
    MLFlowLogger ends the run FINISHED as soon as the fit returns, before the trial saves its model and reports
    to Optuna, so a worker killed in that window leaves a FINISHED run behind a failed trial."""
    from medmnist_pipeline.tracking import end_left_runs, runs_tagged

    ended = []
    for number, reason in reasons.items():
        runs = runs_tagged(tracking, {"tune.study": study_name, "tune.trial": str(number)})
        ended += end_left_runs(tracking, runs, reason)
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


def count(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
