"""augment: materialise ``augment.copies`` augmented versions of the training split as one uint8 array."""

from __future__ import annotations

import json
import time

import numpy as np

from medmnist_pipeline.augment import augment_images, preview_grid
from medmnist_pipeline.config import load_params
from medmnist_pipeline.data import load_meta, load_split
from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.files import atomic_dir
from medmnist_pipeline.paths import AUGMENTED_DIR, PREPARED_DIR, reports_dir
from medmnist_pipeline.tracking import dataset_tags, stage_run


def main(params_path: str) -> None:
    params = load_params(params_path)
    meta = load_meta(PREPARED_DIR)
    images, _ = load_split(PREPARED_DIR, "train")
    copies = params.augment.copies
    with stage_run("augment", params, sections=["seed", "augment"], tags=dataset_tags(meta)) as run:
        import mlflow
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        started = time.perf_counter()
        with atomic_dir(AUGMENTED_DIR) as tmp:
            path = tmp / "train_images.npy"
            if copies == 0:
                np.save(path, np.empty((0, *images.shape), np.uint8))
            else:
                out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(copies, *images.shape))
                columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
                with Progress(*columns) as progress:
                    task = progress.add_task("augmenting", total=copies * len(images))
                    augment_images(
                        images,
                        params.augment.transforms,
                        copies,
                        params.seed,
                        out,
                        advance=lambda n: progress.advance(task, n),
                    )
                out.flush()
                del out
            (tmp / "meta.json").write_text(json.dumps({"copies": copies, "seed": params.seed}, indent=2) + "\n")
        seconds = time.perf_counter() - started
        rate = copies * len(images) / seconds if copies else 0.0
        print(f"augmented {copies} x {len(images)} training images in {seconds:.1f} s ({rate:,.0f} images/s)")

        augmented = np.load(AUGMENTED_DIR / "train_images.npy", mmap_mode="r", allow_pickle=False)
        preview = save_figure(preview_grid(images, augmented), reports_dir("augment") / "preview.png")

        mlflow.log_metrics({"augment_images_per_s": rate, "augment_seconds": seconds})
        mlflow.log_artifact(str(preview), artifact_path="augment")
        print(f"-> {AUGMENTED_DIR}, preview {preview}; run {run.info.run_id}")
