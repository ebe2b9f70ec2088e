"""Every path a stage reads or writes, from one root rule.

- What DVC tracks (dvc.yaml's deps and outs) is relative to the workspace DVC runs the stage in: the project root,
  or DVC's copy of it under ``.dvc/tmp/exps/`` for ``dvc exp run --temp`` and queued experiments. Keep dvc.yaml in
  step with the constants below.
- What DVC does not track and must outlive a workspace - the MLflow store, Optuna's studies, checkpoints of
  unfinished runs - lives under ``project_root()``: the original project, also when DVC runs a copy, so that runs,
  studies and resumable state all land in one place.
"""

from __future__ import annotations

from pathlib import Path

# --- tracked by DVC, relative to the workspace ------------------------------------------------------------------
RAW_DIR = Path("data/raw")  # the verified official .npz (persists across runs: no second download)
PREPARED_DIR = Path("data/prepared")  # {split}_images.npy, {split}_labels.npy, meta.json
AUGMENTED_DIR = Path("data/augmented")  # train_images.npy (copies, N, H, W[, C]), meta.json
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")
# The models the stages write, by the name the evaluation report gives them.
MODEL_FILES = {
    "baseline": MODELS_DIR / "baseline.ckpt",
    "cnn": MODELS_DIR / "cnn.ckpt",
    "tuned": MODELS_DIR / "tuned.ckpt",
}
STAGE_MODELS = {"baseline": "baseline", "train": "cnn", "tune": "tuned"}  # stage -> its model's name
TUNED_PARAMS = REPORTS_DIR / "tune" / "best_params.yaml"  # the train params of the best tuning trial


def reports_dir(stage: str) -> Path:
    return REPORTS_DIR / stage


def model_file(stage: str) -> Path:
    """The model file the baseline, train or tune stage writes."""
    return MODEL_FILES[STAGE_MODELS[stage]]


# --- local state, under the project root -------------------------------------------------------------------------
MLFLOW_DB = "mlflow.db"  # the default tracking store, sqlite:///<project root>/mlflow.db
MLRUNS = "mlruns"  # its artifacts


def project_root(start: Path | None = None) -> Path:
    """The project root: the nearest folder with ``.dvc`` (else the current one). ``dvc exp run --temp`` and
    ``--queue`` run stages in a copy under ``<root>/.dvc/tmp/exps/``: their state belongs to the original project."""
    here = (start or Path.cwd()).resolve()
    root = next((d for d in (here, *here.parents) if (d / ".dvc").is_dir()), here)
    parts = root.parts
    for i in range(len(parts) - 1):
        if parts[i] == ".dvc" and parts[i + 1] == "tmp":
            return Path(*parts[:i])
    return root


def checkpoints_dir() -> Path:
    """Resumable state of unfinished runs (train/baseline, evaluate's retrains); removed once a run succeeds."""
    return project_root() / "checkpoints"


def retrains_dir() -> Path:
    """Evaluate's finished retrains, kept until the stage succeeds so that an interrupted evaluate resumes."""
    return checkpoints_dir() / "evaluate"


def optuna_dir() -> Path:
    return project_root() / "optuna"


def optuna_journal() -> Path:
    """The default study storage (``tune.storage: null``), safe for several workers on one machine."""
    return optuna_dir() / "journal.log"


def trials_dir(study_name: str) -> Path:
    """Each trial's model file (and, while it runs, its checkpoints)."""
    return optuna_dir() / "trials" / study_name
