"""``medmnist-pipeline <command>``: one subcommand per DVC stage, plus ``predict`` and ``ui``.

Heavy libraries (torch, lightning, mlflow, albumentations) are imported by the commands only, so that
``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

STAGES = {
    "download": "fetch the MedMNIST file (present / mirror / official URL), verify its MD5, prepare arrays",
    "augment": "write the augmented copies of the training split declared in params.yaml",
    "baseline": "train the logistic-regression baseline (params: baseline), selected on validation AUC",
    "train": "train the CNN (params: train) on the augmented data, selected on validation AUC",
    "tune": "Optuna search over tune.space with pruning; --worker joins a running study from another process",
    "evaluate": "test-set ACC/AUC with bootstrap CIs, learning curves, error analysis, reports/evaluate/report.md",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medmnist-pipeline",
        description="Reproducible MedMNIST classification. Usually run through `dvc repro`; each stage is also "
        "a subcommand here.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in STAGES.items():
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
        if name == "tune":
            command.add_argument(
                "--worker",
                action="store_true",
                help="join the study as an extra worker (same machine or another one sharing "
                "tune.storage); the tune stage writes the outputs",
            )
    add_predict_parser(commands)
    add_ui_parser(commands)
    return parser


PREDICT_HELP = "class probabilities for PNG/JPEG files, folders of them or npz arrays, as CSV"
PREDICT_EPILOG = """\
IMAGES
  PNG/JPEG files; folders (their *.png, *.jpg, *.jpeg files, not subfolders);
  npz files: the 'test_images' array of a MedMNIST-layout npz, else the only
  array of a plain npz (uint8 (N, H, W), (N, H, W, 1|3) or (N, 1|3, H, W)).
  Each image is converted to the model's channels (colour -> greyscale luma,
  grey -> 3 equal channels, alpha dropped, 16-bit grey scaled to 8 bits) and
  resized to its size (bicubic, the whole image, not cropped) when needed;
  a note on stderr says so.

CSV columns
  file (the path, or path.npz[index]), predicted (the most probable label;
  multi-label models: the labels with p > 0.5 joined by ';', or empty), then
  p_<label> for every label.

MLflow URIs (--model runs:/<run id>/model or models:/<name>@<alias>)
  looked up in MLFLOW_TRACKING_URI if set, else tracking.uri of the params
  file, else sqlite:///<project root>/mlflow.db (the stages' store). Without
  --params, ./params.yaml is read if present (its tracking section only); a
  model file needs no params at all."""


def add_predict_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "predict",
        help=PREDICT_HELP,
        description=PREDICT_HELP,
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="model file or MLflow model URI (runs:/<id>/model, models:/<name>@<alias>)",
    )
    command.add_argument("images", nargs="+", metavar="IMAGES", help="PNG/JPEG files, folders of them, npz files")
    command.add_argument(
        "--out", metavar="FILE", help="write the CSV here (only if every image succeeds); default: stdout"
    )
    command.add_argument(
        "--params",
        default=None,
        metavar="PATH",
        help="params file whose tracking section locates MLflow URIs (default: params.yaml if present)",
    )
    command.add_argument(
        "--batch-size", type=int, default=256, metavar="N", help="images per forward pass (default: %(default)s)"
    )
    command.add_argument(
        "--max-pixels",
        type=int,
        default=16_000_000,
        metavar="N",
        help="refuse an image of more pixels (width x height), read from its header (default: %(default)s)",
    )


UI_HELP = "start the MLflow UI for the project's tracking store (Ctrl-C stops it)"


def add_ui_parser(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser(
        "ui", help=UI_HELP, description=UI_HELP + "; if the tracking URI is already an http(s) server, print it instead"
    )
    command.add_argument(
        "--params",
        default="params.yaml",
        help="params file whose tracking section names the store (default: %(default)s)",
    )
    command.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: %(default)s, this machine "
        "only; anything else exposes the UI to the network, with a warning)",
    )
    command.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from medmnist_pipeline.errors import Interrupted, PipelineError, interrupt_on_signals, stop_with_parent

    try:
        if args.command == "predict":  # not a stage: its own arguments
            from medmnist_pipeline.predict import run as predict

            predict.main(
                args.model,
                args.images,
                out=args.out,
                params=args.params,
                batch_size=args.batch_size,
                max_pixels=args.max_pixels,
            )
            return 0
        if args.command == "ui":  # not a stage: MLflow's server as a child process
            from medmnist_pipeline import ui

            return ui.main(args.params, host=args.host, port=args.port)
        interrupt_on_signals()
        if os.environ.get("DVC_STAGE"):  # started by dvc repro / dvc exp run: end with it
            stop_with_parent()
        from medmnist_pipeline.config.params import check_trials_can_run, load_params

        # Refuse bad params before the stage's module imports torch, Lightning or Optuna (seconds): the stage
        # reads the file again, but only a valid file gets that far.
        checked = load_params(args.params)
        if args.command == "tune":
            check_trials_can_run(checked)
        stage = importlib.import_module(f"medmnist_pipeline.stages.{args.command}")
        if getattr(args, "worker", False):
            stage.main(args.params, worker=True)
        else:
            stage.main(args.params)
    except PipelineError as exc:
        print(f"medmnist-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except RuntimeError as exc:
        from medmnist_pipeline.data.batches import worker_died

        error = worker_died(exc)
        if error is None:
            raise
        print(f"medmnist-pipeline {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code
    except Interrupted as exc:
        where = f" {exc.where}" if exc.where else ""
        print(f"medmnist-pipeline {args.command}: interrupted by {exc.name}{where}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medmnist-pipeline {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
