"""train: the CNN of ``train.model`` on the augmented training data, selected on validation AUC.

The baseline stage is this stage on the ``baseline`` section (``run``): one training core, one set of outputs.
"""

from __future__ import annotations

import json

from medmnist_pipeline.config.params import Params, load_params
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import load_meta
from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.files import atomic_file, clear_write_errors
from medmnist_pipeline.paths import PREPARED_DIR, model_file, reports_dir
from medmnist_pipeline.training.curves import plot_history
from medmnist_pipeline.training.fit import fit, resumable_run


def main(params_path: str) -> None:
    params = load_params(params_path)
    run("train", params, params.train)


def run(stage: str, params: Params, section: TrainParams) -> None:
    """Fit ``section``, then write the model file and, once it is written, validation metrics, history and curves,
    and log them."""
    import mlflow

    from medmnist_pipeline.training.export import log_pytorch_model

    meta = load_meta(PREPARED_DIR)
    with resumable_run(stage, params, section, meta) as started:
        result = fit(
            section,
            params.seed,
            meta,
            started.checkpoint_dir,
            started.logger,
            loader=params.loader,
            progress=started.writes_outputs,
        )
        if not started.writes_outputs:  # another DDP rank: rank 0 writes
            return
        reports, path = reports_dir(stage), model_file(stage)
        # the model file first: a failed write (a full disk) leaves the previous run's reports as they were
        trained = result.model_file(meta, started.run.info.run_id)
        with clear_write_errors(f"{stage}: the model file", path), atomic_file(path) as tmp:
            trained.save(tmp)
        reports.mkdir(parents=True, exist_ok=True)
        metrics = {
            "val": result.val,
            "best_epoch": result.best["epoch"],
            "epochs": len(result.history),
            "train_seconds": round(result.seconds, 1),
        }
        (reports / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        result.history.to_csv(reports / "history.csv", index=False)
        title = f"{stage}: {section.model.name} on {meta.flag} {meta.size}px"
        save_figure(plot_history(result.history, title), reports / "curves.png")

        best = result.best
        mlflow.log_metrics(
            {
                "best/val_auc": best["auc"],
                "best/val_acc": best["acc"],
                "best/epoch": best["epoch"],
                "train_seconds": result.seconds,
            }
        )
        mlflow.log_artifacts(str(reports), artifact_path=stage)
        mlflow.log_artifact(str(path), artifact_path="checkpoint")
        log_pytorch_model(trained)
        print(
            f"{stage}: best validation AUC {best['auc']:.4f}, ACC {best['acc']:.4f} at epoch {best['epoch']} "
            f"({result.seconds:.0f} s) -> {path}; MLflow run {started.run.info.run_id}"
        )
