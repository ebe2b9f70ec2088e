"""evaluate: the only stage that reads the test split. Official ACC/AUC with bootstrap intervals for every model,
the MedMNIST v2 reference rows, learning curves, error analysis of the best model, and reports/evaluate/report.md."""

from __future__ import annotations

import json
import shutil

from medmnist_pipeline.config import TrainParams, load_params, load_section
from medmnist_pipeline.curves import history_frame, plot_size_curve, read_size_curve, write_learning_curves
from medmnist_pipeline.data import load_meta
from medmnist_pipeline.evaluation import (
    comparison_table,
    error_analysis,
    load_models,
    load_splits,
    reference_rows,
    register_tuned,
    score_models,
    seed_runs,
    seed_summary,
    size_curve,
)
from medmnist_pipeline.figures import note_figure, save_figure
from medmnist_pipeline.paths import PREPARED_DIR, TUNED_PARAMS, reports_dir, retrains_dir
from medmnist_pipeline.report import ReportInputs, render
from medmnist_pipeline.tracking import dataset_tags, stage_run


def main(params_path: str) -> None:
    params = load_params(params_path)
    settings = params.evaluate
    tuned_section = load_section(TUNED_PARAMS, "train", TrainParams)
    meta = load_meta(PREPARED_DIR)
    models = load_models(meta)
    splits = load_splits(meta)
    out = reports_dir("evaluate")
    run_ids = {name: model.mlflow_run_id for name, model in models.items()}
    tags = {**dataset_tags(meta), **{f"evaluated.{name}.run_id": run_id for name, run_id in run_ids.items()}}

    with stage_run("evaluate", params, ["seed", "evaluate"], tags=tags) as run:
        import mlflow

        metrics, test_scores = score_models(models, splits, meta.task, settings.bootstrap, params.seed)
        best = max(metrics, key=lambda name: metrics[name]["val"]["auc"])  # chosen on validation, never on test

        fractions = settings.learning_curve.fractions
        if fractions:
            print(f"training-set-size curve: retraining the tuned configuration on {len(fractions)} fractions")
        sizes = size_curve(tuned_section, params, meta, splits, fractions, models["tuned"], run.info.run_id)
        if settings.seeds:
            print(f"retraining the tuned configuration with seeds {settings.seeds}")
        seeds = seed_runs(tuned_section, params, meta, splits, settings.seeds, models["tuned"], run.info.run_id)
        seed_stats = seed_summary(seeds)

        out.mkdir(parents=True, exist_ok=True)
        results = {**metrics, "tuned_seeds": seed_stats} if seed_stats else metrics
        (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        comparison = comparison_table(metrics, seed_stats, reference_rows(meta.flag))
        comparison.to_csv(out / "comparison.csv", index=False)
        seeds.to_csv(out / "seeds.csv", index=False)

        histories = history_frame({name: model.history for name, model in models.items()})
        write_learning_curves(histories, out, f"Learning curves ({meta.flag} {meta.size}px)")
        sizes.to_csv(out / "size_curve.csv", index=False)
        reading = read_size_curve(sizes) if len(sizes) >= 2 else None
        size_figure = (
            plot_size_curve(sizes, "Training-set size curve (tuned configuration)")
            if len(sizes)
            else note_figure("not computed: evaluate.learning_curve.fractions is []")
        )
        save_figure(size_figure, out / "size_curve.png")

        findings = error_analysis(
            splits["test"],
            test_scores[best],
            meta.task,
            meta.labels,
            out,
            best,
            settings.error_analysis.gallery,
            settings.error_analysis.calibration_bins,
        )
        (out / "report.md").write_text(
            render(
                ReportInputs(
                    meta=meta,
                    metrics=metrics,
                    comparison=comparison,
                    best=best,
                    findings=findings,
                    size_curve=sizes,
                    size_reading=reading,
                    seeds=seed_stats,
                    confidence=settings.bootstrap.confidence,
                    run_ids=run_ids,
                    n_test=len(splits["test"].labels),
                )
            )
        )

        logged = {
            f"{split}/{metric}/{name}": m[split][metric]
            for name, m in metrics.items()
            for split in ("test", "val")
            for metric in ("acc", "auc")
        }
        logged.update(
            {"test/acc": metrics[best]["test"]["acc"], "test/auc": metrics[best]["test"]["auc"], "ece": findings["ece"]}
        )
        mlflow.log_metrics(logged)
        mlflow.set_tag("evaluate.best_model", best)
        beats = metrics["tuned"]["val"]["auc"] > metrics["baseline"]["val"]["auc"]  # validation: test stays unseen
        name, version = register_tuned(models["tuned"], meta, beats)
        print(
            f"registered the tuned model as {name} version {version}"
            + (
                " with alias candidate (it beats the baseline on validation AUC)"
                if beats
                else " (no candidate alias: it does not beat the baseline on validation AUC)"
            )
        )
        mlflow.log_artifacts(str(out), artifact_path="evaluate")
        print(
            f"evaluate: best on validation is {best}: test AUC {metrics[best]['test']['auc']:.4f}, "
            f"ACC {metrics[best]['test']['acc']:.4f}; report {out / 'report.md'}; MLflow run {run.info.run_id}"
        )
    shutil.rmtree(retrains_dir(), ignore_errors=True)  # finished: the next evaluate retrains in runs of its own
