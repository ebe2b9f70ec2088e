"""One training run: fit a train-params section on the training split, select the epoch with the best validation AUC,
and return what the caller needs (the module with those weights, the history, the indices it trained on).

``fit`` is what the baseline and train stages, every tuning trial and evaluate's retrains call. ``resumable_run``
adds what a stage needs around it: an MLflow run that an interrupted stage continues, and the checkpoint folder it
resumes from, removed once the stage has succeeded.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pandas as pd
import torch

from medmnist_pipeline.config.params import AugmentParams, LoaderParams, Params
from medmnist_pipeline.config.train import TrainParams
from medmnist_pipeline.data.datamodule import MedMNISTData
from medmnist_pipeline.data.dataset import DatasetMeta
from medmnist_pipeline.errors import Interrupted
from medmnist_pipeline.models.modelfile import DatasetRef, ModelFile
from medmnist_pipeline.owners import dead_here, own
from medmnist_pipeline.paths import AUGMENTED_DIR, PREPARED_DIR, checkpoints_dir
from medmnist_pipeline.training.callbacks import ReseedEachEpoch
from medmnist_pipeline.training.checkpoints import finished_epoch, resume_checkpoint
from medmnist_pipeline.training.classifier import Classifier, build_classifier
from medmnist_pipeline.training.selection import best_epoch
from medmnist_pipeline.training.trainer import build_trainer, launch_rank


@dataclass
class FitResult:
    module: Classifier  # with the best epoch's weights
    history: pd.DataFrame  # one row per epoch: epoch, train_loss, train_acc, train_auc, val_loss, val_acc, val_auc, lr
    best: dict[str, float]  # the best epoch's validation metrics: epoch, loss, acc, auc
    seconds: float
    trained_indices: torch.Tensor  # the training images it trained on (all, or a stratified fraction)

    @property
    def val(self) -> dict[str, float]:
        """The best epoch's validation acc, auc and loss (what a model file records)."""
        return {k: self.best[k] for k in ("acc", "auc", "loss")}

    def model_file(self, meta: DatasetMeta, run_id: str | None) -> ModelFile:
        """The trained model as a file: weights, the facts needed to use it, its history and its MLflow run."""
        records = self.history.to_dict("records")
        history = tuple(
            {k: (None if pd.isna(v) else int(v) if k == "epoch" else float(v)) for k, v in row.items()}
            for row in records
        )
        module = self.module
        return ModelFile.from_network(
            module.net,
            model=module.model_params,
            task=module.task,
            labels=module.labels,
            in_channels=module.in_channels,
            image_size=module.image_size,
            dataset=DatasetRef(meta.flag, meta.size, meta.md5),
            val=self.val,
            mlflow_run_id=run_id,
            history=history,
        )


def run_key(section: TrainParams, seed: int, meta: DatasetMeta, augment: AugmentParams) -> str:
    """Identifies a run's inputs: a checkpoint is resumed only by a run with exactly the same inputs."""
    inputs = {
        "train": section.model_dump(),
        "seed": seed,
        "data": meta.md5,
        "size": meta.size,
        "augment": augment.model_dump() if section.augmented else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def fit(
    section: TrainParams,
    seed: int,
    meta: DatasetMeta,
    checkpoint_dir: Path,
    logger: Any,
    callbacks: list | None = None,
    *,
    loader: LoaderParams,
    train_fraction: float = 1.0,
    progress: bool = True,
    resume: bool | None = None,
) -> FitResult:
    """Train on the training split, select the epoch with the best validation AUC; never touches test.

    ``resume`` (default: ``section.resume == "auto"``) continues from ``checkpoint_dir/last.ckpt`` when there is one;
    tuning trials pass False (a trial that dies is failed and replaced, not resumed).
    """
    resume_from = checkpoint_dir / "last.ckpt"
    resumes = section.resume == "auto" if resume is None else resume
    if not resumes:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    pl.seed_everything(seed, workers=True, verbose=False)
    augmented = AUGMENTED_DIR if section.augmented else None
    data = MedMNISTData(PREPARED_DIR, augmented, section.batch_size, seed, loader, train_fraction)
    module = build_classifier(section, meta)
    trainer = build_trainer(section, checkpoint_dir, logger, [*(callbacks or []), ReseedEachEpoch(seed)], progress)
    if progress:
        t = section.trainer
        device = trainer.accelerator.__class__.__name__.replace("Accelerator", "")
        print(
            f"training {section.model.name} on {device} x {trainer.num_devices * trainer.num_nodes} ({t.strategy}, "
            f"precision {t.precision}), {section.max_epochs} epochs max"
        )
    started = time.perf_counter()
    start_from = resume_checkpoint(checkpoint_dir, writes=launch_rank() == 0)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=start_from)
    except Interrupted as exc:
        exc.where = _rerun_note(trainer.current_epoch, resume_from, resumes)
        raise
    seconds = time.perf_counter() - started
    if launch_rank() != 0:
        # Another rank of a torchrun/SLURM job (possibly on another node, whose disk holds no checkpoint: only
        # global rank 0 writes them). It writes nothing, so it returns what it has without reading the checkpoints.
        return FitResult(module, pd.DataFrame(), {}, seconds, data.trained_indices())

    # The checkpoints hold what every strategy agrees on (with ddp_spawn the callbacks ran in child processes).
    best_path = checkpoint_dir / "best.ckpt"
    module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"])
    last = torch.load(resume_from, map_location="cpu", weights_only=True)
    rows = next(state["rows"] for key, state in last["callbacks"].items() if key == "History")
    history = pd.DataFrame(rows).rename(columns=lambda c: c.replace("/", "_"))
    best_row = history.loc[best_epoch(history)]  # the rule BestCheckpoint saved by: AUC, then loss
    best = {
        "epoch": int(best_row["epoch"]),
        "loss": float(best_row["val_loss"]),
        "acc": float(best_row["val_acc"]),
        "auc": float(best_row["val_auc"]),
    }
    return FitResult(module, history, best, seconds, data.trained_indices())


def _rerun_note(epoch: int, last: Path, resumes: bool) -> str:
    """What an interrupted fit says: the epoch it was in and what a rerun does."""
    done = finished_epoch(last)
    if not resumes:  # a tuning trial: its caller says what a rerun does
        return f"at epoch {epoch}"
    if done is None:
        return f"at epoch {epoch}; no epoch finished, a rerun starts over"
    return f"at epoch {epoch}; rerun resumes from {_shown(last)} (epoch {done} done)"


def _shown(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


@dataclass
class StageRun:
    """What a stage trains inside: where to checkpoint, the logger, and whether this process writes outputs."""

    checkpoint_dir: Path
    logger: Any  # MLFlowLogger on the writing process, False on the other ranks
    run: Any  # the active MLflow run (None on the other ranks)

    @property
    def writes_outputs(self) -> bool:
        return self.run is not None


@contextmanager
def resumable_run(stage: str, params: Params, section: TrainParams, meta: DatasetMeta) -> Iterator[StageRun]:
    """The baseline/train stage's run: an MLflow run (continued when the checkpoint of an interrupted run with the
    same inputs is there) with its logger; on success the checkpoint folder is removed: nothing left to resume.

    Ranks other than 0 (started by Lightning's ddp launcher, torchrun or SLURM) train but open no run and write
    nothing."""
    from medmnist_pipeline.tracking import dataset_tags, run_logger, stage_run

    checkpoint_dir = checkpoints_dir() / f"{stage}-{run_key(section, params.seed, meta, params.augment)}"
    if launch_rank() != 0:
        yield StageRun(checkpoint_dir, False, None)
        return
    run_id_file = checkpoint_dir.with_name(checkpoint_dir.name + ".mlflow_run_id")
    # one process per run folder (and so per MLflow run): a second one is refused while the first lives
    with own(_owner_file(checkpoint_dir), str(_shown(checkpoint_dir))):
        interrupted = (checkpoint_dir / "last.ckpt").is_file() and run_id_file.is_file() and section.resume == "auto"
        resumed_run = run_id_file.read_text().strip() if interrupted else None
        for ended in end_abandoned_runs(stage, params, keep=checkpoint_dir if resumed_run else None):
            print(f"ended the interrupted {stage} run {ended} as KILLED: its inputs changed, it can never resume")
        sections = ["seed", stage] + (["augment"] if section.augmented else [])
        with stage_run(stage, params, sections, tags=dataset_tags(meta), run_id=resumed_run) as run:
            run_id_file.parent.mkdir(parents=True, exist_ok=True)
            run_id_file.write_text(run.info.run_id)
            if resumed_run:
                print(f"resuming the interrupted run from {checkpoint_dir / 'last.ckpt'} (MLflow run {resumed_run})")
            yield StageRun(checkpoint_dir, run_logger(params, run.info.run_id), run)
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        run_id_file.unlink(missing_ok=True)


def _owner_file(checkpoint_dir: Path) -> Path:
    return checkpoint_dir.with_name(checkpoint_dir.name + ".owner")


def end_abandoned_runs(stage: str, params: Params, keep: Path | None) -> list[str]:
    """Interrupted runs of ``stage`` that nothing will resume: their checkpoint key no longer matches the params
    (or ``resume: never`` starts afresh). Their MLflow runs, left RUNNING by the killed process, end as KILLED and
    their checkpoint folders go. A run whose process is still alive on this machine (another `dvc exp` worker) is
    left alone. Returns the run ids ended."""
    from medmnist_pipeline.tracking import end_left_runs

    ended = []
    for run_id_file in sorted(checkpoints_dir().glob(f"{stage}-*.mlflow_run_id")):
        folder = run_id_file.with_name(run_id_file.name.removesuffix(".mlflow_run_id"))
        owner = _owner_file(folder)
        if folder == keep or (owner.is_file() and not dead_here(owner.read_text().strip())):
            continue
        ended += end_left_runs(params, [run_id_file.read_text().strip()], only_running=True)
        shutil.rmtree(folder, ignore_errors=True)
        run_id_file.unlink(missing_ok=True)
        owner.unlink(missing_ok=True)
    return ended
