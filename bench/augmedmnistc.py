"""Issue 12, point 6: does training on MedMNIST-C corruptions (AugMedMNIST-C: ``augment.corruptions``) change the
test-set robustness and the clean test metrics of the train section's CNN?

Two projects, identical but for ``augment.corruptions`` (``[]`` and the dataset's corruption set), each prepared with
``dvc repro augment``. In each, the ``train`` section is trained once per seed, then every model is scored on the
clean test split and under ``evaluate.robustness`` (corruptions x severities, the same corrupted images for all).
Prints mean ± sd per arm and the difference of the arms' means with a Welch t interval: "cannot tell" when it
includes 0. Rows go to ``--out``.

    python bench/augmedmnistc.py --plain /tmp/plain --corrupted /tmp/augc --seeds 42 43 44 --out augmedmnistc.csv
    python bench/augmedmnistc.py --tiny   # two tiny synthetic projects in a temporary folder, 2 seeds: a smoke run

The result lines are ``<metric>: AugMedMNIST-C - plain = <difference> [<interval>] (95% Welch t): <verdict>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from _tiny import chdir, tiny_project
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.data.dataset import load_meta, load_splits
from medmnist_pipeline.evaluation.robustness import evaluate_robustness
from medmnist_pipeline.evaluation.scoring import scores, split_metrics
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.paths import PREPARED_DIR
from medmnist_pipeline.training.fit import fit

METRICS = ["test_auc", "test_acc", "clean_error", "mean_error", "degradation"]


def train_arm(project: Path, seeds: list[int]) -> list[ModelFile]:
    """The project's train section, trained once per seed inside that project (its data/augmented)."""
    os.chdir(project)
    params, meta = load_params("params.yaml"), load_meta(PREPARED_DIR)
    models = []
    for seed in seeds:
        started = time.process_time()
        result = fit(
            params.train,
            seed,
            meta,
            Path(f"checkpoints/augmedmnistc/{seed}"),
            False,
            loader=params.loader,
            progress=False,
            resume=False,
        )
        print(
            f"{project.name} seed {seed}: val AUC {result.val['auc']:.4f} ({time.process_time() - started:.0f} s CPU)"
        )
        models.append(result.model_file(meta, None))
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plain", type=Path, help="the project without corruptions (required unless --tiny)")
    parser.add_argument("--corrupted", type=Path, help="the project with augment.corruptions (required unless --tiny)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", type=Path, help="CSV of the rows (default: augmedmnistc.csv; in --tiny, its folder)")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: two synthetic 28 px projects in a temporary folder, 2 seeds"
    )
    args = parser.parse_args()
    if args.tiny:
        args.seeds = args.seeds[:2] if len(args.seeds) >= 2 else [1, 2]  # two per arm: Welch's interval needs them
        with tempfile.TemporaryDirectory(prefix="augmedmnistc-tiny-") as folder, chdir(Path(folder)):
            args.plain = tiny_project(Path(folder) / "plain")
            args.corrupted = tiny_project(
                Path(folder) / "augc", {"augment.corruptions": ["brightness_down", "gaussian_noise"]}
            )
            args.out = args.out or Path(folder) / "augmedmnistc.csv"
            compare(args)
        return
    if args.plain is None or args.corrupted is None:
        parser.error("--plain and --corrupted are required (or --tiny)")
    compare(args)


def compare(args: argparse.Namespace) -> None:
    out = (args.out or Path("augmedmnistc.csv")).resolve()
    arms = {"plain": args.plain.resolve(), "AugMedMNIST-C": args.corrupted.resolve()}
    trained = {arm: train_arm(project, args.seeds) for arm, project in arms.items()}

    os.chdir(arms["plain"])  # the same prepared test split in both projects
    params, meta = load_params("params.yaml"), load_meta(PREPARED_DIR)
    test = load_splits(PREPARED_DIR, ("test",))["test"]
    images = test.images.permute(0, 2, 3, 1).numpy()
    images = images[..., 0] if images.shape[-1] == 1 else images
    predictors = {
        (arm, seed): (lambda x, m=model: m.predict(_tensor(x)))
        for arm, models in trained.items()
        for seed, model in zip(args.seeds, models, strict=True)
    }
    settings = params.evaluate.robustness
    results = evaluate_robustness(
        predictors, images, test.labels, meta.task, meta.flag, settings.corruptions, settings.severities, params.seed
    )
    rows = []
    for (arm, seed), robust in results.items():
        clean = split_metrics(test.labels, scores(trained[arm][args.seeds.index(seed)], test), meta.task)
        rows.append(
            {
                "arm": arm,
                "seed": seed,
                "test_auc": clean["auc"],
                "test_acc": clean["acc"],
                "clean_error": robust.clean,
                "mean_error": robust.mean_error,
                "degradation": robust.mean_degradation,
                **{f"error/{c}": robust.mean(c) for c in settings.corruptions},
            }
        )
    frame = pd.DataFrame(rows)
    frame.to_csv(out, index=False)
    print(frame.groupby("arm")[METRICS].agg(["mean", "std"]).round(4).to_string())
    for metric in METRICS:
        a, b = (frame.loc[frame["arm"] == arm, metric].to_numpy() for arm in arms)
        print(f"{metric}: AugMedMNIST-C - plain = {b.mean() - a.mean():+.4f} {_welch(b, a)}")


def _tensor(x: np.ndarray):  # noqa: ANN202 - (N, H, W[, C]) uint8 -> (N, C, H, W) tensor
    import torch

    t = torch.from_numpy(np.ascontiguousarray(x))
    return (t[:, None] if t.ndim == 3 else t.permute(0, 3, 1, 2)).contiguous()


def _welch(b: np.ndarray, a: np.ndarray, confidence: float = 0.95) -> str:
    """Welch t interval of mean(b) - mean(a); "cannot tell" when it includes 0."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    low, high = b.mean() - a.mean() - half, b.mean() - a.mean() + half
    verdict = "cannot tell" if low <= 0 <= high else ("higher" if low > 0 else "lower")
    return f"[{low:+.4f}, {high:+.4f}] ({confidence:.0%} Welch t): {verdict}"


if __name__ == "__main__":
    main()
