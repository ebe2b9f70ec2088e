"""tune: Optuna search over ``tune.space`` with pruning; writes the best train params and the best model."""

from __future__ import annotations

import time

from medmnist_pipeline.config.params import check_trials_can_run, load_params
from medmnist_pipeline.data.dataset import load_meta
from medmnist_pipeline.paths import PREPARED_DIR, TUNED_PARAMS, model_file, reports_dir
from medmnist_pipeline.tracking import dataset_tags, existing_run, stage_run
from medmnist_pipeline.tuning.search import enqueue_train_values, open_study, optimize, optimize_as_worker
from medmnist_pipeline.tuning.study_report import (
    best_params_yaml,
    best_trial,
    check_search_finished,
    fetch_trial_model,
    validation_noise,
    write_search_reports,
)
from medmnist_pipeline.tuning.workers import FINISHED, count, fail_stale_trials, wait_for_other_workers


def main(params_path: str, worker: bool = False) -> None:
    params = load_params(params_path)
    check_trials_can_run(params)
    meta = load_meta(PREPARED_DIR)
    study = open_study(params, meta, worker=worker)
    stale = fail_stale_trials(study, params)
    if stale:
        print(f"marked trial(s) {stale} failed: their process died (e.g. an interrupted run)")
    finished = count(study, FINISHED)
    print(f"study {study.study_name}: {finished} of {params.tune.n_trials} trials finished so far")

    if worker:  # join the study; the `tune` stage itself writes the outputs
        optimize_as_worker(study, params, meta)
        return

    started = time.perf_counter()
    reports, tuned = reports_dir("tune"), model_file("tune")
    tags = {**dataset_tags(meta), "tune.study": study.study_name}
    parent_run = existing_run(params, study.user_attrs.get("mlflow_parent_run_id"))
    with stage_run("tune", params, ["seed", "tune", "train"], tags=tags, run_id=parent_run) as run:
        import mlflow

        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        if enqueue_train_values(study, params):
            print("trial 0 tries the train section's own values: the configuration to beat")
        timed_out = optimize(study, params, meta, run.info.run_id)
        wait_for_other_workers(study, params)

        best = best_trial(study)
        check_search_finished(study, params, timed_out)
        # models/tuned.ckpt: the best trial's own model (selected on validation AUC during that trial), no refit;
        # through MLflow when the trial ran on another machine.
        tuned.parent.mkdir(parents=True, exist_ok=True)
        source = fetch_trial_model(best, params, tuned)
        print(f"{tuned}: trial {best.number}'s model, from {source}")
        noise = validation_noise(study, tuned, params, meta)
        print(noise.sentence())
        TUNED_PARAMS.parent.mkdir(parents=True, exist_ok=True)  # a fresh project folder has no reports/tune yet
        TUNED_PARAMS.write_text(best_params_yaml(study, params, best))
        states = write_search_reports(study, params, best, noise, reports, time.perf_counter() - started)

        mlflow.log_metrics({"best/value": best.value, **{f"trials/{k}": v for k, v in states.items()}})
        # tags, not params: a continued study (`dvc repro -f`, more trials) reuses this run and may find a new best
        mlflow.set_tags({f"best.{k}": v for k, v in best.params.items()})
        mlflow.set_tag("tune.best_trial", str(best.number))
        mlflow.log_artifacts(str(reports), artifact_path="tune")
        print(
            f"tune: best {params.tune.metric} {best.value:.4f} (trial {best.number}); trials {states}; "
            f"-> {tuned}, {reports}; MLflow run {run.info.run_id}"
        )
