"""evaluate: the only stage that reads the test split. Official ACC/AUC with bootstrap intervals for every model,
seeds (mean ± sd) and seed ensembles, the majority floor, paired comparisons, robustness to MedMNIST-C corruptions,
the MedMNIST v2 reference rows, learning curves, error analysis of the model validation picks, and
reports/evaluate/report.md."""

from __future__ import annotations

import shutil

from medmnist_pipeline.config.params import load_params, load_section
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import load_meta, load_splits
from medmnist_pipeline.evaluation.comparison import compare_models
from medmnist_pipeline.evaluation.curves import history_frame, write_learning_curves, write_size_curve
from medmnist_pipeline.evaluation.report import ReportInputs, render, run_metrics, write_tables
from medmnist_pipeline.evaluation.retrains import seed_retrains, size_curve
from medmnist_pipeline.evaluation.robustness import robustness_of_models
from medmnist_pipeline.evaluation.scoring import (
    comparison_table,
    error_analysis,
    load_models,
    pick_on_validation,
    reference_rows,
    score_all,
)
from medmnist_pipeline.paths import PREPARED_DIR, TUNED_PARAMS, reports_dir, retrains_dir
from medmnist_pipeline.tracking import dataset_tags, stage_run
from medmnist_pipeline.training.export import register_pick


def main(params_path: str) -> None:
    params = load_params(params_path)
    settings, bootstrap, seed = params.evaluate, params.evaluate.bootstrap, params.seed
    tuned_section = load_section(TUNED_PARAMS, "train", TrainParams)
    meta = load_meta(PREPARED_DIR)
    models = load_models(meta)
    splits = load_splits(PREPARED_DIR)
    out = reports_dir("evaluate")
    out.mkdir(parents=True, exist_ok=True)
    run_ids = {name: model.mlflow_run_id for name, model in models.items()}
    tags = {**dataset_tags(meta), **{f"evaluated.{name}.run_id": run_id for name, run_id in run_ids.items()}}

    with stage_run("evaluate", params, ["seed", "train", "evaluate"], tags=tags) as run:
        import mlflow

        run_id = run.info.run_id
        fractions = settings.learning_curve.fractions
        sizes = size_curve(tuned_section, params, meta, splits, fractions, models["tuned"], run_id)
        seeds = seed_retrains({"cnn": params.train, "tuned": tuned_section}, params, meta, splits, models, run_id)
        metrics, test_scores = score_all(models, seeds.ensembles, splits, meta.task, bootstrap, seed)
        pick = pick_on_validation(metrics, models)  # never test
        test = splits["test"]
        paired, flags = compare_models(test.labels, test_scores, metrics, meta.task, meta.labels, bootstrap, seed)
        robustness = robustness_of_models(settings.robustness, models, seeds.ensembles, test, meta, seed, out)

        comparison = comparison_table(metrics, seeds.stats, reference_rows(meta.flag))
        write_tables(out, metrics, seeds, robustness, comparison, paired)
        histories = history_frame({name: model.history for name, model in models.items()})
        write_learning_curves(histories, out, f"Learning curves ({meta.flag} {meta.size}px)")
        size_reading = write_size_curve(sizes, out)
        findings = error_analysis(test, test_scores[pick], meta.task, meta.labels, out, pick, settings.error_analysis)
        registered, version = register_pick(models[pick], meta)
        report = ReportInputs(
            meta=meta, metrics=metrics, comparison=comparison, best=pick, findings=findings, size_curve=sizes,
            size_reading=size_reading, seeds=seeds.stats, confidence=bootstrap.confidence, run_ids=run_ids,
            n_test=len(test.labels), flags=flags, paired=paired, robustness=robustness,
            registered=f"{registered} version {version}",
        )  # fmt: skip
        (out / "report.md").write_text(render(report))

        mlflow.log_metrics(run_metrics(metrics, pick, findings["ece"], robustness))
        mlflow.set_tag("evaluate.best_model", pick)
        print(f"registered {pick} (validation's pick) as {registered} version {version} with alias candidate")
        mlflow.log_artifacts(str(out), artifact_path="evaluate")
        print(
            f"evaluate: validation picks {pick}: test AUC {metrics[pick]['test']['auc']:.4f}, "
            f"ACC {metrics[pick]['test']['acc']:.4f}; report {out / 'report.md'}; MLflow run {run.info.run_id}"
        )
    shutil.rmtree(retrains_dir(), ignore_errors=True)  # finished: the next evaluate retrains in runs of its own
