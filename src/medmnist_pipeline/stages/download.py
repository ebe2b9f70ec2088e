"""download: fetch the MedMNIST file (present, mirror or official URL; MD5-verified) and prepare fast arrays."""

from __future__ import annotations

import json

from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.data.dataset import class_counts, examples_per_class, expected_meta, fetch, load_split, prepare
from medmnist_pipeline.figures import image_grid, save_figure
from medmnist_pipeline.files import atomic_dir
from medmnist_pipeline.metadata import SPLITS
from medmnist_pipeline.paths import PREPARED_DIR, RAW_DIR, reports_dir
from medmnist_pipeline.tracking import dataset_tags, stage_run


def main(params_path: str) -> None:
    params = load_params(params_path)
    reports = reports_dir("data")
    with stage_run("download", params, sections=["data"]) as run:
        import mlflow

        source, md5 = fetch(params.data, RAW_DIR)
        with atomic_dir(PREPARED_DIR) as tmp:
            meta = prepare(source, expected_meta(params.data, source, md5), tmp)
        mlflow.set_tags(dataset_tags(meta))

        # download produces every split; later stages never open the test split (only evaluate does).
        summary = {
            s: {"count": meta.n_samples[s], "classes": class_counts(load_split(PREPARED_DIR, s)[1], meta)}
            for s in SPLITS
        }
        reports.mkdir(parents=True, exist_ok=True)
        (reports / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

        images, labels = load_split(PREPARED_DIR, "train")
        grid = image_grid(
            examples_per_class(images, labels, meta), f"{meta.flag} {meta.size}px: training images per class"
        )
        save_figure(grid, reports / "samples.png")

        mlflow.log_metrics({f"n_{split}": meta.n_samples[split] for split in SPLITS})
        mlflow.log_artifacts(str(reports), artifact_path="data")
        print(
            f"{meta.flag} {meta.size}px ({meta.task}): "
            + ", ".join(f"{s} {meta.n_samples[s]}" for s in SPLITS)
            + f" -> {PREPARED_DIR}; run {run.info.run_id}"
        )
