"""Issue 11's experiment: scratch ConvNet vs EfficientNet-Lite0 (ImageNet) feature extraction vs fine-tuning.

Each row is a set of ``-S`` overrides of ``params.yaml``'s train section, trained by the same ``fit()`` the train stage
calls (so ``dvc exp run -S <the row's overrides>`` trains the same model: its ``train`` stage metrics are the
``val_*`` columns for ``seed=42``, and evaluate's ``cnn_seeds`` gives the seeds' test mean ± sd), once per seed,
selected on validation AUC. The test split is scored here as evaluate scores it (official ACC/AUC).

Run from a project prepared for one dataset (``dvc repro augment`` with its ``data.flag``); rows are appended to
``--out`` as each run ends, with the ``dvc exp run`` command that reproduces them:

    python bench/transfer_experiment.py --rows extract-28 extract-64 finetune-28 --seeds 42 43 44
    python bench/transfer_experiment.py --summary transfer_experiment.csv   # the README's markdown table
    python bench/transfer_experiment.py --tiny   # a tiny synthetic project in a temporary folder: a smoke run

After the runs it prints the markdown table of ``--out`` (as ``--summary`` does): one line per dataset and row.
"""

from __future__ import annotations

import argparse
import copy
import csv
import tempfile
import time
from pathlib import Path

from _tiny import chdir, tiny_project
from medmnist_pipeline.config.io import validate
from medmnist_pipeline.config.params import load_params
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.dataset import load_meta, load_splits
from medmnist_pipeline.evaluation.scoring import scores, split_metrics
from medmnist_pipeline.paths import PREPARED_DIR
from medmnist_pipeline.training.fit import fit
from medmnist_pipeline.tuning.search import set_path


def lite0(input_size: int, freeze: str, backbone_lr_factor: float, feature_cache: bool) -> dict[str, object]:
    """A whole train.model section (a row replaces train's convnet section, as ``-S '~train.model' -S '+...'``)."""
    return {
        "name": "efficientnet_lite0",
        "pretrained": "imagenet",
        "input_size": input_size,
        "init_from": None,
        "freeze": freeze,
        "backbone_lr_factor": backbone_lr_factor,
        "feature_cache": feature_cache,
    }


# feature extraction: frozen backbone (BatchNorm too), features cached once, a linear head on the originals
EXTRACT = {"train.augmented": False, "train.max_epochs": 30, "train.early_stopping_patience": 8}
# fine-tuning: every weight trains, the backbone at a tenth of the head's learning rate, on the augmented copies
ROWS: dict[str, dict[str, object]] = {
    "scratch-28": {},  # the train section as it is: the default ConvNet
    "extract-28": {"train.model": lite0(28, "backbone", 1.0, True), **EXTRACT},
    "extract-64": {"train.model": lite0(64, "backbone", 1.0, True), **EXTRACT},
    "finetune-28": {"train.model": lite0(28, "none", 0.1, False)},
    "finetune-64": {"train.model": lite0(64, "none", 0.1, False)},
}
FIELDS = ["flag", "row", "seed", "val_auc", "val_acc", "test_auc", "test_acc", "best_epoch", "epochs"]
FIELDS += ["cpu_s", "wall_s", "command"]


def yaml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def command(overrides: dict[str, object]) -> str:
    """The ``dvc exp run`` line; a whole section is replaced by deleting it first (Hydra merges ``key={...}``)."""
    values = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            values += [f"-S '~{key}'", f"-S '+{key}={yaml_value(value)}'"]
        else:
            values.append(f"-S {key}={yaml_value(value)}")
    return " ".join(["dvc exp run", *values])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--max-epochs", type=int, help="override train.max_epochs of the fine-tuning rows")
    parser.add_argument("--out", type=Path, default=Path("transfer_experiment.csv"))
    parser.add_argument("--summary", type=Path, help="print the markdown table of this CSV and stop")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke run: rows scratch-28 and extract-28, one seed, 2 epochs, a synthetic project in a temporary folder",
    )
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.tiny:
        args.rows, args.seeds = ["scratch-28", "extract-28"], args.seeds[:1]
        with tempfile.TemporaryDirectory(prefix="transfer-tiny-") as folder, chdir(tiny_project(Path(folder))):
            run_rows(args, {"train.max_epochs": 2})
        return
    run_rows(args)


def run_rows(args: argparse.Namespace, tiny: dict[str, object] | None = None) -> None:
    """Each row, once per seed, in the project of the current folder; ``tiny`` overrides every row (--tiny)."""
    params = load_params("params.yaml")
    meta = load_meta(PREPARED_DIR)
    splits = load_splits(PREPARED_DIR, ("val", "test"))
    new = not args.out.exists()
    with args.out.open("a", newline="") as f:
        out = csv.DictWriter(f, FIELDS, lineterminator="\n")
        if new:
            out.writeheader()
        for name in args.rows:
            overrides = dict(ROWS[name])
            if args.max_epochs and name.startswith("finetune"):
                overrides["train.max_epochs"] = args.max_epochs
            overrides.update(tiny or {})
            tree = copy.deepcopy(params.train.model_dump())
            for path, value in overrides.items():
                set_path(tree, path, value)
            section = validate(TrainParams, tree, source=f"row {name}", prefix=("train",))
            for seed in args.seeds:
                cpu, wall = time.process_time(), time.perf_counter()
                result = fit(
                    section,
                    seed,
                    meta,
                    Path(f"checkpoints/transfer/{name}-{seed}"),
                    False,
                    loader=params.loader,
                    progress=False,
                    resume=False,
                )
                model = result.model_file(meta, None)
                test = split_metrics(splits["test"].labels, scores(model, splits["test"]), meta.task)
                row = {
                    "flag": meta.flag,
                    "row": name,
                    "seed": seed,
                    "val_auc": round(result.val["auc"], 4),
                    "val_acc": round(result.val["acc"], 4),
                    "test_auc": round(test["auc"], 4),
                    "test_acc": round(test["acc"], 4),
                    "best_epoch": result.best["epoch"],
                    "epochs": len(result.history),
                    "cpu_s": round(time.process_time() - cpu, 1),
                    "wall_s": round(time.perf_counter() - wall, 1),
                    "command": command({"seed": seed, **overrides}),
                }
                out.writerow(row)
                f.flush()
                print(row, flush=True)
    print(summary(args.out))


def summary(path: Path) -> str:
    """Mean ± sd over the seeds per dataset and row, beside the MedMNIST v2 rows of each dataset."""
    from importlib import resources

    import pandas as pd

    runs = pd.read_csv(path)
    reference = pd.read_csv(resources.files("medmnist_pipeline") / "medmnist_v2_benchmark.csv")
    lines = [
        "| dataset | model | input px | seeds | test AUC | test ACC | val AUC | selected epochs"
        " | CPU s per run (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for flag, rows in runs.groupby("flag", sort=False):
        for name, seeds in rows.groupby("row", sort=False):
            mode, size = name.rsplit("-", 1)

            def stat(column: str, seeds: pd.DataFrame = seeds) -> str:
                return f"{seeds[column].mean():.3f} ± {seeds[column].std():.3f}"

            lines.append(
                f"| {flag} | {LABELS[mode]} | {size} | {len(seeds)} | {stat('test_auc')} | {stat('test_acc')} | "
                f"{seeds['val_auc'].mean():.3f} | {', '.join(map(str, seeds['best_epoch']))} | "
                f"{seeds['cpu_s'].median():.0f} |"
            )
        for _, ref in reference[reference["dataset"] == flag].iterrows():
            lines.append(
                f"| {flag} | *MedMNIST v2: {ref['method']}* | | | *{ref['test_auc']:.3f}* | *{ref['test_acc']:.3f}* "
                "| | | |"
            )
    return "\n".join(lines)


LABELS = {
    "scratch": "ConvNet from scratch (the train section)",
    "extract": "EfficientNet-Lite0, feature extraction",
    "finetune": "EfficientNet-Lite0, fine-tuning",
}


if __name__ == "__main__":
    main()
