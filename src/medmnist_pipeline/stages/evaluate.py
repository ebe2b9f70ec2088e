"""evaluate: the only stage that reads the test split. Official ACC/AUC with bootstrap intervals for every model,
seeds (mean ± sd) and seed ensembles, the majority floor, paired comparisons, robustness to MedMNIST-C corruptions,
the MedMNIST v2 reference rows, learning curves, error analysis of the model validation picks, and
reports/evaluate/report.md."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd

from medmnist_pipeline.config.params import load_params, load_section
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import load_meta, load_splits
from medmnist_pipeline.evaluation import comparison as K
from medmnist_pipeline.evaluation.curves import history_frame, plot_size_curve, write_learning_curves
from medmnist_pipeline.evaluation.report import ReportInputs, render
from medmnist_pipeline.evaluation.retrains import seed_runs, seed_summary, size_curve
from medmnist_pipeline.evaluation.scoring import (
    comparison_table,
    error_analysis,
    load_models,
    metrics_with_ci,
    reference_rows,
    score_models,
    scores,
    split_metrics,
)
from medmnist_pipeline.figures import note_figure, save_figure
from medmnist_pipeline.paths import PREPARED_DIR, TUNED_PARAMS, reports_dir, retrains_dir
from medmnist_pipeline.tracking import dataset_tags, register_pick, stage_run

FLOOR = "majority"  # the majority-class predictor's row


def main(params_path: str) -> None:
    params = load_params(params_path)
    settings = params.evaluate
    tuned_section = load_section(TUNED_PARAMS, "train", TrainParams)
    meta = load_meta(PREPARED_DIR)
    models = load_models(meta)
    splits = load_splits(PREPARED_DIR)
    out = reports_dir("evaluate")
    run_ids = {name: model.mlflow_run_id for name, model in models.items()}
    tags = {**dataset_tags(meta), **{f"evaluated.{name}.run_id": run_id for name, run_id in run_ids.items()}}
    test_labels, val_labels = splits["test"].labels, splits["val"].labels

    with stage_run("evaluate", params, ["seed", "train", "evaluate"], tags=tags) as run:
        import mlflow

        metrics, test_scores = score_models(models, splits, meta.task, settings.bootstrap, params.seed)
        # chosen on validation (AUC, ties by loss), never on test; among the model files that can be registered
        pick = K.validation_pick(
            {name: {"auc": metrics[name]["val"]["auc"], "loss": models[name].val.get("loss")} for name in models}
        )

        fractions = settings.learning_curve.fractions
        if fractions:
            print(f"training-set-size curve: retraining the tuned configuration on {len(fractions)} fractions")
        sizes = size_curve(tuned_section, params, meta, splits, fractions, models["tuned"], run.info.run_id)

        # Seeds: each configuration retrained per seed; the ensemble averages the members' probabilities.
        seed_frames, members = [], {}
        for name, section in (("cnn", params.train), ("tuned", tuned_section)):
            if settings.seeds:
                print(f"retraining the {name} configuration with seeds {settings.seeds}")
            frame, files = seed_runs(name, section, params, meta, splits, settings.seeds, models[name], run.info.run_id)
            seed_frames.append(frame)
            members[name] = files
        seeds = pd.concat(seed_frames, ignore_index=True)
        seed_stats = {name: seed_summary(seeds[seeds["model"] == name]) for name in members}
        ensembles = {f"{name} ensemble": files for name, files in members.items() if len(files) > 1}
        for name, files in ensembles.items():
            test_scores[name] = K.ensemble_scores([scores(f, splits["test"]) for f in files])
            val_score = K.ensemble_scores([scores(f, splits["val"]) for f in files])
            metrics[name] = {
                "test": metrics_with_ci(test_labels, test_scores[name], meta.task, settings.bootstrap, params.seed),
                "val": split_metrics(val_labels, val_score, meta.task),
            }

        # The floor: always the most frequent training class (all-negative for multi-label).
        n_columns = test_scores["baseline"].shape[1]
        train_labels = splits["train"].labels
        test_scores[FLOOR] = K.majority_scores(train_labels, len(test_labels), meta.task, n_columns)
        metrics[FLOOR] = {
            "test": metrics_with_ci(test_labels, test_scores[FLOOR], meta.task, settings.bootstrap, params.seed),
            "val": split_metrics(
                val_labels, K.majority_scores(train_labels, len(val_labels), meta.task, n_columns), meta.task
            ),
        }

        # Paired comparisons on the same test images, and the models that are useless whatever their numbers.
        order = [n for n in ("tuned", "cnn", "tuned ensemble", "cnn ensemble", "baseline", FLOOR) if n in test_scores]
        paired = K.paired_differences(
            test_labels,
            {n: test_scores[n] for n in order},
            meta.task,
            settings.bootstrap.resamples,
            params.seed,
            settings.bootstrap.confidence,
        )
        flags = [
            flag
            for name in order
            if name != FLOOR
            for flag in K.usefulness_flags(
                name, test_labels, test_scores[name], meta.task, meta.labels, tuple(metrics[name]["test"]["auc_ci"])
            )
        ]

        robustness = _robustness(settings.robustness, models, ensembles, splits, meta, params.seed, out)

        out.mkdir(parents=True, exist_ok=True)
        results = {**metrics, **{f"{n}_seeds": s for n, s in seed_stats.items() if s}}
        if robustness:
            results["robustness"] = {name: r.summary() for name, r in robustness.items()}
        (out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
        comparison = comparison_table(metrics, seed_stats, reference_rows(meta.flag))
        comparison.to_csv(out / "comparison.csv", index=False)
        seeds.to_csv(out / "seeds.csv", index=False)
        pd.DataFrame([d.__dict__ for d in paired]).to_csv(out / "paired.csv", index=False)

        histories = history_frame({name: model.history for name, model in models.items()})
        write_learning_curves(histories, out, f"Learning curves ({meta.flag} {meta.size}px)")
        sizes.to_csv(out / "size_curve.csv", index=False)
        reading = _size_reading(sizes) if len(sizes) >= 2 else None
        size_figure = (
            plot_size_curve(sizes, "Training-set size curve (tuned configuration)")
            if len(sizes)
            else note_figure("not computed: evaluate.learning_curve.fractions is []")
        )
        save_figure(size_figure, out / "size_curve.png")

        findings = error_analysis(
            splits["test"],
            test_scores[pick],
            meta.task,
            meta.labels,
            out,
            pick,
            settings.error_analysis.gallery,
            settings.error_analysis.calibration_bins,
        )
        registered, version = register_pick(models[pick], meta)
        (out / "report.md").write_text(
            render(
                ReportInputs(
                    meta=meta,
                    metrics=metrics,
                    comparison=comparison,
                    best=pick,
                    findings=findings,
                    size_curve=sizes,
                    size_reading=reading,
                    seeds=seed_stats,
                    confidence=settings.bootstrap.confidence,
                    run_ids=run_ids,
                    n_test=len(test_labels),
                    flags=flags,
                    paired=paired,
                    robustness=robustness,
                    registered=f"{registered} version {version}",
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
            {"test/acc": metrics[pick]["test"]["acc"], "test/auc": metrics[pick]["test"]["auc"], "ece": findings["ece"]}
        )
        for name, r in (robustness or {}).items():
            logged.update({f"{key}/{name}": value for key, value in r.mlflow_metrics().items()})
        mlflow.log_metrics({k.replace(" ", "_"): v for k, v in logged.items() if not np.isnan(v)})
        mlflow.set_tag("evaluate.best_model", pick)
        print(f"registered {pick} (validation's pick) as {registered} version {version} with alias candidate")
        mlflow.log_artifacts(str(out), artifact_path="evaluate")
        print(
            f"evaluate: validation picks {pick}: test AUC {metrics[pick]['test']['auc']:.4f}, "
            f"ACC {metrics[pick]['test']['acc']:.4f}; report {out / 'report.md'}; MLflow run {run.info.run_id}"
        )
    shutil.rmtree(retrains_dir(), ignore_errors=True)  # finished: the next evaluate retrains in runs of its own


def _size_reading(sizes: pd.DataFrame) -> str:
    """The size curve read with its noise: a fitted slope per doubling with an interval, and the final gap."""
    slope = K.size_slope(sizes["fraction"].tolist(), sizes["val_error"].tolist())
    last = sizes.sort_values("fraction").iloc[-1]
    gap = 100 * (last["val_error"] - last["train_error"])
    return (
        f"{slope.sentence()} Train/val error gap at the full training set: {gap:.1f} points "
        "(errors at each run's AUC-selected epoch)."
    )


def _robustness(settings, models, ensembles, splits, meta, seed, out):  # noqa: ANN001, ANN202
    """Balanced error under the configured corruptions for the single models and the seed ensembles; the
    table, the figure and the preview grid. None when evaluate.robustness.corruptions is []."""
    from medmnist_pipeline.evaluation.robustness import evaluate_robustness, robustness_figure, robustness_rows
    from medmnist_pipeline.transforms.corruptions import preview_grid

    if not settings.corruptions:  # the declared outputs still exist, and say why they are empty
        out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(columns=["model", "corruption", "clean_error", "mean_error", "degradation"]).to_csv(
            out / "robustness.csv", index=False
        )
        for name in ("robustness.png", "corruption_preview.png"):
            save_figure(note_figure("not computed: evaluate.robustness.corruptions is []"), out / name)
        return None
    images = splits["test"].images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8
    images = images[..., 0] if images.shape[-1] == 1 else images

    def as_tensor(x: np.ndarray):  # noqa: ANN202
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        return (t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)).contiguous()

    cache: dict[int, tuple[object, np.ndarray]] = {}

    def predictor(model):  # noqa: ANN001, ANN202
        def predict(x: np.ndarray) -> np.ndarray:
            # each corrupted set is predicted once per model file, however many rows (single, ensemble) use it
            hit = cache.get(id(model))
            if hit is None or hit[0] is not x:
                cache[id(model)] = (x, model.predict(as_tensor(x)))
            return cache[id(model)][1]

        return predict

    predictors = {name: predictor(models[name]) for name in ("baseline", "cnn", "tuned")}
    for name, files in ensembles.items():
        parts = [predictor(f) for f in files]  # the params.seed member is the single model's file: cached
        predictors[name] = lambda x, parts=parts: K.ensemble_scores([p(x) for p in parts])
    print(f"robustness: {len(settings.corruptions)} corruptions x severities {settings.severities}")
    results = evaluate_robustness(
        predictors,
        images,
        splits["test"].labels,
        meta.task,
        meta.flag,
        settings.corruptions,
        settings.severities,
        seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(robustness_rows(results)).to_csv(out / "robustness.csv", index=False)
    save_figure(
        robustness_figure(results, f"Balanced error under MedMNIST-C corruptions ({meta.flag})"), out / "robustness.png"
    )
    save_figure(preview_grid(images[0], meta.flag, settings.corruptions, seed), out / "corruption_preview.png")
    return results
