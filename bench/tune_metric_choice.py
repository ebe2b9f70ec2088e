"""Issue 12, point 4: does choosing among tuning trials by ``val/loss`` pick models that do better on test than
choosing by ``val/auc``?

Per seed, ``--trials`` configurations are drawn from ``tune.space`` exactly as the tune stage draws them (trial 0 =
the train section's own values, then the seeded sampler), each trained like a tuning trial (``tune.fixed``; no
pruning, so every trial has both numbers) and selected at its best epoch. Then each rule picks one trial on
validation, and the picks' test metrics are compared. Rows go to ``--out`` (CSV) as each trial ends.

Run it from a project whose ``data/prepared`` and ``data/augmented`` exist (``dvc repro augment``):

    python bench/tune_metric_choice.py --trials 5 --seeds 0 1 2 --out reports/tune_metric_choice.csv
    python bench/tune_metric_choice.py --tiny   # 2 trials of 2 epochs, one seed, a synthetic project: a smoke run

The result line is ``both rules pick the same trial in <k> of <n> seeds``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd

from _tiny import chdir, tiny_project
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.data.dataset import load_meta, load_splits
from medmnist_pipeline.evaluation.scoring import scores, split_metrics
from medmnist_pipeline.paths import PREPARED_DIR
from medmnist_pipeline.training.fit import fit
from medmnist_pipeline.tuning.search import enqueue_train_values, sampler_for, suggest, trial_train_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("reports/tune_metric_choice.csv"))
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: 2 trials of 2 epochs, one seed, a synthetic temporary project"
    )
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.tiny:
        args.trials, args.seeds = 2, args.seeds[:1]
        with tempfile.TemporaryDirectory(prefix="metric-choice-tiny-") as folder, chdir(tiny_project(Path(folder))):
            run_trials(args)  # tune.fixed of the tiny project: 2 epochs a trial
        return
    run_trials(args)


def run_trials(args: argparse.Namespace) -> None:
    """Per seed, ``args.trials`` tuning trials in the project of the current folder, then the two rules' picks."""
    params = load_params("params.yaml")
    meta = load_meta(PREPARED_DIR)
    splits = load_splits(PREPARED_DIR, ("test",))
    rows = []
    for seed in args.seeds:
        study = optuna.create_study(direction="maximize", sampler=sampler_for(params, seed))
        enqueue_train_values(study, params)
        for number in range(args.trials):
            trial = study.ask()
            values = {path: suggest(trial, path, dist) for path, dist in params.tune.space.items()}
            section = trial_train_params(params, values)
            started = time.process_time()
            result = fit(
                section,
                seed,
                meta,
                Path(f"checkpoints/metric-choice/{seed}-{number}"),
                False,
                loader=params.loader,
                progress=False,
                resume=False,
            )
            test = split_metrics(
                splits["test"].labels, scores(result.model_file(meta, None), splits["test"]), meta.task
            )
            rows.append(
                {
                    "flag": meta.flag,
                    "seed": seed,
                    "trial": number,
                    **{f"val_{k}": v for k, v in result.val.items()},
                    "test_auc": test["auc"],
                    "test_acc": test["acc"],
                    "epoch": result.best["epoch"],
                    "cpu_s": round(time.process_time() - started, 1),
                    **values,
                }
            )
            study.tell(trial, result.val["auc"])
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=number == 0 and seed == args.seeds[0]))
            args.out.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(args.out, index=False)
    summarize(pd.DataFrame(rows))


def summarize(frame: pd.DataFrame) -> None:
    """The trial each rule picks per seed (ties: the earlier trial), and the picks' mean test metrics."""
    picks = []
    for seed, trials in frame.groupby("seed"):
        by_auc = trials.loc[trials["val_auc"].idxmax()]
        by_loss = trials.loc[trials["val_loss"].idxmin()]
        for rule, row in (("val/auc", by_auc), ("val/loss", by_loss)):
            picks.append(
                {"seed": seed, "rule": rule, "trial": int(row["trial"]), **row[["test_auc", "test_acc"]].to_dict()}
            )
    picks = pd.DataFrame(picks)
    print(picks.to_string(index=False))
    print(picks.groupby("rule")[["test_auc", "test_acc"]].agg(["mean", "std"]).round(4).to_string())
    same = (picks.pivot(index="seed", columns="rule", values="trial").nunique(axis=1) == 1).sum()
    print(f"both rules pick the same trial in {same} of {picks['seed'].nunique()} seeds")
    print(f"test AUC of all trials: sd within a seed {np.mean(frame.groupby('seed')['test_auc'].std()):.4f}")


if __name__ == "__main__":
    main()
