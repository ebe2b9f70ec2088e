"""The training and validation splits as batches for Lightning (the test split is never opened here), in bounded
memory.

Each split goes through ``batches.open_source`` against one memory budget (``loader.memory_budget_mb``): what fits is
held as one uint8 tensor (on the GPU when training there), a batch is one indexing operation, and scaling to floats
and the optional flip/shift happen on the batch, on the device (``classifier.Classifier``), airbench's way inside
Lightning. What does not fit stays a memory-mapped ``.npy`` that every rank of a node shares through the page cache;
its batches are gathered off the training thread. Epoch ``e`` trains on augmented copy ``e mod K``: materialised by
the augment stage, or made while training by ``loader.workers`` DataLoader processes (``augment.mode: online``), the
same pixels either way. The order depends only on (seed, epoch), so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from medmnist_pipeline.config.params import LoaderParams
from medmnist_pipeline.data.batches import (
    MIB,
    AugmentedBatches,
    Batches,
    BatchSource,
    Budget,
    Mapped,
    NpyMap,
    Resident,
    check_batch_fits,
    nchw,
    open_source,
)
from medmnist_pipeline.data.dataset import DatasetMeta, load_meta, load_split
from medmnist_pipeline.errors import PipelineError

PREFETCH = 2  # mapped batches gathered ahead of the training thread
IN_FLIGHT = PREFETCH + 2  # ... plus the one being gathered and the one being trained on: what the budget must hold


def as_tensors(images: np.ndarray, labels: np.ndarray, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W[, C]) -> uint8 (N, C, H, W) in RAM; labels -> float (N, L) for multi-label, else long (N,)."""
    return nchw(images), label_tensor(labels, multi_label)


def label_tensor(labels: np.ndarray, multi_label: bool) -> torch.Tensor:
    """Labels as the loss wants them: float (N, L) 0/1 for multi-label, else long (N,) class indices."""
    y = torch.from_numpy(np.asarray(labels))
    return y.float() if multi_label else y[:, 0].long()


def stratified_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a class-stratified random fraction of the samples (by first label for multi-label data)."""
    key = labels[:, 0].long() if labels.ndim == 2 else labels
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for value in key.unique():
        members = (key == value).nonzero()[:, 0]
        take = max(1, round(fraction * len(members)))
        picked.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(picked).sort().values


class MedMNISTData(pl.LightningDataModule):
    """Train and validation splits within ``loader.memory_budget_mb``; under DDP each rank reads its own shard of
    every epoch (mapped splits are shared between the ranks of a node through the page cache).

    ``trained_indices()`` gives the training images it trains on (a stratified ``train_fraction``, or all of them):
    the fit reports them, so the size curve never has to recompute the choice.
    """

    def __init__(
        self,
        prepared_dir: Path,
        augmented_dir: Path | None,
        batch_size: int,
        seed: int,
        loader: LoaderParams,
        train_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.prepared_dir, self.augmented_dir = Path(prepared_dir), augmented_dir
        self.batch_size, self.seed, self.train_fraction = batch_size, seed, train_fraction
        self.loader = loader
        self.meta: DatasetMeta | None = None
        # feature extraction (use_features): float features per augmented copy and for validation, not images
        self.train_features: list[Features] = []
        self.val_features: Features | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        self.meta = load_meta(self.prepared_dir)
        multi = self.meta.multi_label
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        budget = Budget(self.loader.memory_budget_mb * MIB)  # (Budget counts bytes)
        train = NpyMap(self.prepared_dir / "train_images.npy")
        check_batch_fits(train.array, self.batch_size, budget, IN_FLIGHT)
        # Validation first (read whole every epoch, and small), then the training images, then the copies.
        val = NpyMap(self.prepared_dir / "val_images.npy")
        self.val_source: BatchSource = open_source(val, budget, device)
        self.val_y = label_tensor(load_split(self.prepared_dir, "val")[1], multi)
        self.train_y = label_tensor(load_split(self.prepared_dir, "train")[1], multi)
        self.train_images = train
        self.online: tuple[dict, int] | None = None  # (albumentations' serialised pipeline, copies)
        self.copies: list[BatchSource] = []
        augmented = Path(self.augmented_dir) if self.augmented_dir is not None else None
        info = json.loads((augmented / "meta.json").read_text()) if augmented is not None else {}
        if info.get("mode") == "online" and info["copies"]:
            self.online = (json.loads((augmented / "pipeline.json").read_text()), info["copies"])
        self.train_source: BatchSource | None = None
        if augmented is not None and self.online is None:
            copies = NpyMap(augmented / "train_images.npy")
            if len(copies.array):
                fits = budget.take(copies.array.nbytes)  # all copies in RAM, or all mapped: one rule per run
                self.copies = [
                    Resident(c, device) if fits else Mapped(c, pin=device.type == "cuda") for c in copies.array
                ]
        if not self.copies:
            self.train_source = open_source(train, budget, device)
        self.train_subset = self._subset(self.train_y)

    def use_features(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Feature extraction with a frozen backbone: from now on, batches hold ``encode(images)`` instead of
        images, computed here once per image and per augmented copy rather than by a forward pass every epoch."""
        if self.online is not None:
            raise PipelineError(
                "train.model.feature_cache needs augment.mode: materialised (online copies are made while training, "
                "so there is nothing to compute features of in advance)"
            )
        if not self.train_features:
            self.train_features = [Features(encoded(s, encode)) for s in (self.copies or [self.train_source])]
            self.val_features = Features(encoded(self.val_source, encode))

    def _subset(self, train_y: torch.Tensor) -> torch.Tensor:
        if self.train_fraction < 1.0:
            return stratified_subset(train_y, self.train_fraction, self.seed)
        return torch.arange(len(train_y))

    def trained_indices(self) -> torch.Tensor:
        """The training images it trains on; the same in every process (with ddp_spawn/ddp_fork, ``setup`` ran
        only in the children), so the caller's copy computes it from the labels alone."""
        if self.meta is not None:
            return self.train_subset
        labels = np.load(self.prepared_dir / "train_labels.npy", allow_pickle=False)
        return self._subset(label_tensor(labels, load_meta(self.prepared_dir).multi_label))

    def _shard(self, order: torch.Tensor, equal: bool) -> torch.Tensor:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        if equal:  # every rank must run the same number of training steps, or DDP hangs
            order = order[: len(order) // world * world]
        return order[rank::world]

    @property
    def eval_batch_size(self) -> int:
        """Validation, feature and diagnostics batches: 2x the training batch, since no gradients are kept."""
        return 2 * self.batch_size

    def train_dataloader(self) -> Iterable:
        # Called every epoch (reload_dataloaders_every_n_epochs=1): the order and the copy depend only on
        # (seed, epoch), so an interrupted run resumes exactly where it was.
        epoch = self.trainer.current_epoch if self.trainer else 0
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self._shard(self.train_subset[torch.randperm(len(self.train_subset), generator=generator)], True)
        if self.online is not None:
            pipeline, copies = self.online
            pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
            return AugmentedBatches(
                self.train_images,
                self.train_y,
                order,
                self.batch_size,
                pipeline,
                self.seed,
                epoch % copies,
                self.loader.workers,
                pin,
            )
        sources = self.train_features or self.copies or [self.train_source]
        source = sources[epoch % len(sources)]
        return Batches(source, self.train_y, order, self.batch_size, drop_last=True, prefetch=PREFETCH)

    def val_dataloader(self) -> Batches:
        # 2x the training batch: no gradients are kept, so twice the images fit (params.yaml says so at batch_size)
        order = self._shard(torch.arange(len(self.val_y)), equal=False)  # metrics gather every sample once
        source = self.val_features or self.val_source
        return Batches(source, self.val_y, order, self.eval_batch_size, drop_last=False, prefetch=PREFETCH)

    def val_images(self, n: int) -> torch.Tensor:
        """The first ``n`` validation images, uint8 (n, C, H, W) (for diagnostics)."""
        return self.val_source.batch(torch.arange(min(n, len(self.val_y))))


class Features:
    """A split's cached features (N, F), float, served like images: a batch is one index operation."""

    mapped = False

    def __init__(self, features: torch.Tensor) -> None:
        self.images = features

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.images.index_select(0, idx.to(self.images.device))


def encoded(source: BatchSource, encode: Callable[[torch.Tensor], torch.Tensor], chunk: int = 4096) -> torch.Tensor:
    """``encode`` of every image of ``source``, a chunk at a time (a mapped split is never read whole)."""
    n = len(source)
    return torch.cat([encode(source.batch(torch.arange(i, min(i + chunk, n)))) for i in range(0, n, chunk)])
