"""MLflow tracking, the only module that opens MLflow runs and loggers: where runs are stored, one run per stage
with flattened params and tags, the nested runs of tuning trials and evaluate's retrains, Lightning's
``MLFlowLogger`` on a run, and ending runs that a dead process left behind (the model itself: training/export.py)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medmnist_pipeline.config.params import Params, TrackingParams
from medmnist_pipeline.errors import Interrupted, PipelineError
from medmnist_pipeline.paths import MLFLOW_DB, MLRUNS, project_root


def tracking_uri(params: Params) -> str:
    return uri_of(params.tracking)


def uri_of(tracking: TrackingParams | None) -> str:
    """``MLFLOW_TRACKING_URI`` (e.g. a team server) > ``tracking.uri`` > ``sqlite:///<root>/mlflow.db``."""
    configured = tracking.uri if tracking is not None else None
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or default_uri()


def default_uri() -> str:
    return f"sqlite:///{project_root() / MLFLOW_DB}"


# The columns of MLflow's SQL store that hold absolute artifact locations (MLflow 3.17's schema).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def relocate_local_store(root: Path | None = None) -> int:
    """Make a moved or copied project's store point at its own ``mlruns/``.

    The default store records absolute artifact locations (``<root>/mlruns/<experiment>/<run>/artifacts``; absolute
    so that DVC's temporary experiment copies log into the project). After the folder moves, those paths point
    nowhere (or, for a copy, into the original), and the UI, ``runs:/`` URIs and evaluate's run lookups find no
    artifacts. This rewrites locations under an old ``<root>/mlruns`` to this root's, once: when nothing moved it
    only reads the experiments table. An old location counts as this project's former place when it is gone
    (moved) or has an ``mlflow.db`` beside it (copied); other absolute locations a user chose are left alone.
    Returns the number of rows changed."""
    root = project_root(root)
    db = root / MLFLOW_DB
    if not db.is_file():
        return 0
    new = str(root / MLRUNS)
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as connection:
        tables = {t for (t,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        olds = set()
        for (location,) in connection.execute("SELECT artifact_location FROM experiments"):
            match = re.fullmatch(rf"(.*)/{MLRUNS}(?:/\d+)?", _local_path(location or "") or "")
            if not match or f"{match.group(1)}/{MLRUNS}" == new:
                continue
            old_root = Path(match.group(1))
            if not (old_root / MLRUNS).exists() or (old_root / MLFLOW_DB).is_file():
                olds.add(str(old_root / MLRUNS))
        changed = 0
        with connection:  # one transaction: all locations move together
            for old in sorted(olds):
                pairs = {(old, new), (f"file://{old}", f"file://{new}"), (Path(old).as_uri(), Path(new).as_uri())}
                for table, column in LOCATION_COLUMNS:
                    if table not in tables:
                        continue
                    for before, after in sorted(pairs):
                        changed += connection.execute(
                            f'UPDATE "{table}" SET "{column}" = ? || substr("{column}", ?) '  # noqa: S608 - fixed names
                            f'WHERE "{column}" = ? OR substr("{column}", 1, ?) = ?',
                            (after, len(before) + 1, before, len(before) + 1, before + "/"),
                        ).rowcount
    return changed


def _local_path(location: str) -> str | None:
    if location.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlparse(location).path)
    return location if location.startswith("/") else None


def quiet_mlflow() -> Any:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no per-call store chatter in stage output
    return mlflow


def client(params: Params) -> Any:
    """An ``MlflowClient`` on the project's store."""
    mlflow = quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(params))
    return mlflow.MlflowClient()


EXPERIMENT_KIND_TAG = "mlflow.experimentKind"


def experiment_id(params: Params) -> str:
    """Create the experiment on first use. For the default local store, artifacts go beside the database
    (an absolute path, so runs from DVC's temporary experiment copies land there too)."""
    mlflow = quiet_mlflow()
    local = not (os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri)
    if local:
        relocate_local_store()
    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = (project_root() / MLRUNS).as_uri() if local else None
    try:  # the kind tag makes MLflow 3's UI open the experiment on its runs, not on the GenAI traces overview
        return mlflow.create_experiment(
            params.tracking.experiment,
            artifact_location=location,
            tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
        )
    except Exception:  # noqa: BLE001 - another worker created it between our two calls
        return mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id


def existing_run(params: Params, run_id: str | None) -> str | None:
    """``run_id`` if that run is in the current store (a study may outlive an MLflow store), else None."""
    if not run_id:
        return None
    mlflow = quiet_mlflow()
    mlflow.set_tracking_uri(tracking_uri(params))
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return None
    return run_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"data": {"size": 28}}`` -> ``{"data.size": 28}``: the same keys as params.yaml paths, in every run."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | dict) else value
    return flat


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"mlflow.source.git.commit": commit, "git.commit": commit, "git.dirty": str(dirty).lower()}


def dataset_tags(meta: Any) -> dict[str, str]:
    return {
        "dataset.flag": meta.flag,
        "dataset.size": str(meta.size),
        "dataset.md5": meta.md5,
        "dataset.task": meta.task,
    }


def experiment_tags() -> dict[str, str]:
    """``dvc.exp_name`` under ``dvc exp run``, for every run a stage starts, nested ones included (tune trials,
    evaluate retrains), so that filtering the UI by experiment keeps them."""
    name = os.environ.get("DVC_EXP_NAME")
    return {"dvc.exp_name": name} if name else {}


@contextmanager
def stage_run(
    stage: str,
    params: Params,
    sections: Sequence[str],
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """An MLflow run for one stage: params of the sections it reads, tags that say what and where.

    ``run_id`` continues an interrupted run instead of starting a new one. An exception inside the block ends
    the run as FAILED (MLflow's own context manager does that; a full disk is one line); SIGTERM/SIGINT
    (``Interrupted``) end it, and the nested runs still open in it (a tuning trial, a retrain), as KILLED.
    """

    mlflow = quiet_mlflow()
    exp_id = experiment_id(params)
    all_tags = {"stage": stage, **git_tags(), **experiment_tags(), **(tags or {})}
    if run_id:
        context = mlflow.start_run(run_id=run_id, tags=all_tags)
    else:
        context = mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags)
    with context as run:
        dumped = params.model_dump(by_alias=True)
        flat = flatten({s: dumped[s] for s in sections})
        if run_id:  # a continued run keeps the params it was started with (MLflow params are write-once)
            flat = {k: v for k, v in flat.items() if k not in run.data.params}
        mlflow.log_params(flat)
        try:
            yield run
        except Interrupted:
            while mlflow.active_run() is not None:
                mlflow.end_run("KILLED")
            raise
        except OSError as exc:  # a full disk anywhere in the stage (mlruns/, reports/, ...): one line, run FAILED
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise PipelineError(
                f"{stage}: the disk holding {exc.filename or 'its outputs'} is full ({exc.strerror}); the stage's "
                "MLflow run ended FAILED: free some space and run the stage again"
            ) from None


def nested_run(params: Params, run_name: str, parent_run_id: str | None, tags: Mapping[str, str]) -> Any:
    """Start (and make active) a run nested in the stage's run: a tuning trial or an evaluate retrain. The caller
    ends it with ``mlflow.end_run(status)``: how it ended (finished, pruned, failed) is the caller's to say."""
    mlflow = quiet_mlflow()
    return mlflow.start_run(
        experiment_id=experiment_id(params),
        run_name=run_name,
        nested=True,
        parent_run_id=parent_run_id,
        tags={**tags, **experiment_tags()},
    )


def run_logger(params: Params, run_id: str) -> Any:
    """Lightning's ``MLFlowLogger`` on an open run: the epochs of a fit are logged into that run."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=params.tracking.experiment, tracking_uri=tracking_uri(params), run_id=run_id)


def end_left_runs(
    params: Params, run_ids: Sequence[str], reason: str | None = None, only_running: bool = False
) -> list[str]:
    """End as KILLED the runs a dead process left behind, with a ``fail_reason`` tag when given: those still
    RUNNING, and unless ``only_running`` those FINISHED too (Lightning's logger ends a run FINISHED as soon as its
    fit returns, before the process saves what the run is for). A run missing from this store (a store can be
    replaced) is skipped. Returns the run ids ended."""
    mlflow, mlflow_client = quiet_mlflow(), client(params)
    ended = []
    for run_id in run_ids:
        try:
            status = mlflow_client.get_run(run_id).info.status
            if status in ("KILLED", "FAILED") or (only_running and status != "RUNNING"):
                continue
            if reason:
                mlflow_client.set_tag(run_id, "fail_reason", reason)
            mlflow_client.set_terminated(run_id, status="KILLED")
            ended.append(run_id)
        except mlflow.exceptions.MlflowException:
            continue
    return ended


def runs_tagged(params: Params, tags: Mapping[str, str]) -> list[str]:
    """The ids of the runs of this experiment with all these tags."""
    query = " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())
    return [run.info.run_id for run in client(params).search_runs([experiment_id(params)], filter_string=query)]


def download_artifact(params: Params, run_id: str, artifact: str, dst: Path) -> str:
    """Download one artifact of a run into the folder ``dst``; returns the local path."""
    return quiet_mlflow().artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact, dst_path=str(dst), tracking_uri=tracking_uri(params)
    )
