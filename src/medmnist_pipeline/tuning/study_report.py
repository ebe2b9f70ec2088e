"""What the tune stage writes about a finished search: the best trial and its train params, its model (local or
through MLflow), the trials table, Optuna's plots, and whether validation noise can tell the best trials apart."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from medmnist_pipeline.config.params import Params
from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.files import atomic_file, md5sum
from medmnist_pipeline.tuning.search import short_value, trial_train_params
from medmnist_pipeline.tuning.statistics import SearchNoise
from medmnist_pipeline.tuning.workers import FINISHED, count


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

    from medmnist_pipeline.tracking import download_artifact

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
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as scratch:
        try:
            fetched = download_artifact(params, run_id, artifact, Path(scratch))
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
    from medmnist_pipeline.data.datamodule import as_tensors
    from medmnist_pipeline.data.dataset import load_split
    from medmnist_pipeline.models.modelfile import ModelFile
    from medmnist_pipeline.paths import PREPARED_DIR
    from medmnist_pipeline.tuning.statistics import VALIDATION_METRICS, bootstrap_se, search_noise

    images, labels = load_split(PREPARED_DIR, "val")
    y_score = ModelFile.load(best_model).predict(as_tensors(images, labels, meta.multi_label)[0])
    se = bootstrap_se(labels, y_score, meta.task, VALIDATION_METRICS[params.tune.metric], 200, params.seed)
    values = {t.number: t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return search_noise(values, se, params.tune.metric, params.tune.direction == "maximize")


def search_markdown(
    study: optuna.Study, params: Params, best: optuna.trial.FrozenTrial, noise: Any, trials: Any, plots: list[Path]
) -> str:
    """``reports/tune/report.md``: what the search tried, what it picked, and whether validation could tell."""
    states = state_counts(study)
    values = ", ".join(f"{k}={short_value(v)}" for k, v in best.params.items())
    ranked = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=params.tune.direction == "minimize")
    columns = ["number", "value", "duration", *[c for c in params.tune.space if c in trials.columns]]
    lines = [
        f"# Search: study {study.study_name}",
        "",
        f"{states['complete']} trials completed, {states['pruned']} pruned, {states['fail']} failed "
        f"(sampler {params.tune.sampler}, pruner {params.tune.pruner.name}); each trial trained with "
        f"{', '.join(f'{k}={v}' for k, v in params.tune.fixed.items()) or 'the train section as it is'} and was "
        f"scored by {params.tune.metric} at its best epoch on the validation split.",
        "",
        f"**Best: trial {best.number}**, {params.tune.metric} {best.value:.4f} ({values}).",
        "",
        f"**{noise.sentence()}**",
        "",
        "## Completed trials, best first",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *(
            f"| {row['number']} | {row['value']:.4f} | "
            + " | ".join(short_value(row[c], 4) for c in columns[2:])
            + " |"
            for _, row in ranked.iterrows()
        ),
        "",
        *(f"![{p.stem}]({p.name})" for p in plots),
        "",
    ]
    return "\n".join(lines)


def write_search_reports(
    study: optuna.Study, params: Params, best: optuna.trial.FrozenTrial, noise: SearchNoise, out_dir: Path,
    stage_seconds: float,
) -> dict[str, int]:  # fmt: skip
    """trials.csv, metrics.json (the best trial, the validation noise, trial counts and times), the plots and
    report.md; returns the count of trials in each state."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = trials_table(study)
    trials.to_csv(out_dir / "trials.csv", index=False)
    states = state_counts(study)
    trial_seconds = sum(t.duration.total_seconds() for t in study.trials if t.duration)
    metrics = {
        "best": {params.tune.metric: best.value, "trial": best.number},
        # the validation noise of the metric, and how many finished trials lie within it of the best
        "noise": {"validation_se": round(noise.se, 5), "trials_within_se": len(noise.within_noise)},
        "trials": states,
        "trial_seconds": round(trial_seconds, 1),
        "stage_seconds": round(stage_seconds, 1),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plots = save_study_plots(study, out_dir)
    (out_dir / "report.md").write_text(search_markdown(study, params, best, noise, trials, plots))
    return states
