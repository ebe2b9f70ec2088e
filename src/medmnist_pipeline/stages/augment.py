"""augment: materialise ``augment.copies`` augmented versions of the training split as one uint8 array."""

from __future__ import annotations

import json
import time

import numpy as np

from medmnist_pipeline.augment import augment_images
from medmnist_pipeline.config import load_params
from medmnist_pipeline.data import load_meta, load_split
from medmnist_pipeline.files import atomic_dir
from medmnist_pipeline.paths import AUGMENTED_DIR, PREPARED_DIR, REPORTS_DIR
from medmnist_pipeline.plots import image_grid
from medmnist_pipeline.tracking import dataset_tags, stage_run

PREVIEW_IMAGES, PREVIEW_COPIES = 6, 7


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

        augmented = np.load(AUGMENTED_DIR / "train_images.npy", mmap_mode="r")
        picks = np.linspace(0, len(images) - 1, PREVIEW_IMAGES).astype(int)
        rows = [(f"#{i}", np.stack([images[i], *augmented[:PREVIEW_COPIES, i]])) for i in picks]
        shown = min(copies, PREVIEW_COPIES)
        title = (
            f"training images and their augmented copies ({copies} made)" if copies else "no augmentation (copies: 0)"
        )
        preview = image_grid(
            rows,
            REPORTS_DIR / "augment" / "preview.png",
            title,
            columns=1 + shown,
            column_titles=["original"] + [f"copy {k + 1}" for k in range(shown)],
        )

        mlflow.log_metrics({"augment_images_per_s": rate, "augment_seconds": seconds})
        mlflow.log_artifact(str(preview), artifact_path="augment")
        print(f"-> {AUGMENTED_DIR}, preview {preview}; run {run.info.run_id}")
