"""``medmnist-pipeline <stage>``: one subcommand per DVC stage.

Heavy libraries (torch, lightning, mlflow, albumentations) are imported by the stage modules only, so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {
    "download": "fetch the MedMNIST file (present / mirror / official URL), verify its MD5, prepare arrays",
    "augment": "write the augmented copies of the training split declared in params.yaml",
    "baseline": "train the logistic-regression baseline (params: baseline), selected on validation AUC",
    "train": "train the CNN (params: train) on the augmented data, selected on validation AUC",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmnist-pipeline",
        description="Reproducible MedMNIST classification. Usually run through `dvc repro`; each stage is also "
        "a subcommand here.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for name, text in STAGES.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medmnist_pipeline.errors import PipelineError

    try:
        importlib.import_module(f"medmnist_pipeline.stages.{args.command}").main(args.params)
    except PipelineError as exc:
        print(f"medmnist-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medmnist-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
