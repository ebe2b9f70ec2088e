"""augment: check and serialise the albumentations pipeline, and (``augment.mode: materialised``) write
``augment.copies`` augmented versions of the training split as one uint8 array, on every core."""

from __future__ import annotations

import json
import time

import numpy as np

from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.data.dataset import load_meta, load_split
from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.files import atomic_dir, clear_write_errors
from medmnist_pipeline.paths import AUGMENTED_DIR, PREPARED_DIR, reports_dir
from medmnist_pipeline.tracking import dataset_tags, stage_run
from medmnist_pipeline.transforms.augmentation import (
    augment_images,
    copies_grid,
    corrupt_copies,
    default_workers,
    open_output,
    preview_copies,
    serialize,
)


def main(params_path: str) -> None:
    params = load_params(params_path)
    meta = load_meta(PREPARED_DIR)
    images, _ = load_split(PREPARED_DIR, "train")
    copies = params.augment.copies
    with stage_run("augment", params, sections=["seed", "augment"], tags=dataset_tags(meta)) as run:
        import mlflow
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        started = time.perf_counter()
        online = params.augment.mode == "online"
        with clear_write_errors("augment", AUGMENTED_DIR), atomic_dir(AUGMENTED_DIR) as tmp:
            # albumentations' own serialisation: what online training applies, and a record of what was applied
            (tmp / "pipeline.json").write_text(json.dumps(serialize(params.augment.transforms), indent=2) + "\n")
            path = tmp / "train_images.npy"
            if copies == 0 or online:  # online: training makes the copies (batches.AugmentedBatches)
                np.save(path, np.empty((0, *images.shape), np.uint8))
            else:
                out = open_output(path, (copies, *images.shape))
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
                        workers=default_workers(),
                    )
                if params.augment.corruptions:
                    print(f"AugMedMNIST-C: one of {len(params.augment.corruptions)} corruptions per image")
                corrupt_copies(out, meta.flag, params.augment.corruptions, params.seed)
                out.flush()
                del out
            facts = {"copies": copies, "seed": params.seed, "mode": params.augment.mode}
            (tmp / "meta.json").write_text(json.dumps(facts, indent=2) + "\n")
        seconds = time.perf_counter() - started
        rate = copies * len(images) / seconds if copies and not online else 0.0
        if online:
            print(f"augment.mode: online: {copies} copies are made while training; pipeline checked and saved")
        else:
            print(f"augmented {copies} x {len(images)} training images in {seconds:.1f} s ({rate:,.0f} images/s)")

        augmented = np.load(AUGMENTED_DIR / "train_images.npy", mmap_mode="r", allow_pickle=False)
        if online:  # the preview's images made the way training will make them
            augmented = preview_copies(images, params.augment.transforms, copies, params.seed)
        preview = save_figure(copies_grid(images, augmented), reports_dir("augment") / "preview.png")

        mlflow.log_metrics({"augment_images_per_s": rate, "augment_seconds": seconds})
        mlflow.log_artifact(str(preview), artifact_path="augment")
        print(f"-> {AUGMENTED_DIR}, preview {preview}; run {run.info.run_id}")
