"""The training and validation splits as batches for Lightning (the test split is never opened here).

Fast by design (airbench's way, inside Lightning): each split is one uint8 tensor; a batch is one indexing operation;
scaling to floats and the optional flip/shift happen on the batch, on the device (``classifier.Classifier``). Epoch
``e`` reads augmented copy ``e mod K``, and the order depends only on (seed, epoch), so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from medmnist_pipeline.data import DatasetMeta, load_meta, load_split


def as_tensors(images: np.ndarray, labels: np.ndarray, multi_label: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W[, C]) -> uint8 (N, C, H, W) in RAM; labels -> float (N, L) for multi-label, else long (N,)."""
    x = torch.from_numpy(np.array(images))  # a copy in RAM (the source may be a read-only memory map)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()
    return x, label_tensor(labels, multi_label)


def label_tensor(labels: np.ndarray, multi_label: bool) -> torch.Tensor:
    """Labels as the loss wants them: float (N, L) 0/1 for multi-label, else long (N,) class indices."""
    y = torch.from_numpy(np.asarray(labels))
    return y.float() if multi_label else y[:, 0].long()


class Batches:
    """One epoch of ``(images[idx], labels[idx])`` batches over ``order``: no Dataset, no collate, no workers."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, order: torch.Tensor, batch_size: int, drop_last: bool
    ) -> None:
        self.images, self.labels, self.order, self.batch_size = images, labels, order, batch_size
        self.drop_last = drop_last and len(order) > batch_size

    def __len__(self) -> int:
        n = len(self.order) / self.batch_size
        return math.floor(n) if self.drop_last else math.ceil(n)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            idx = self.order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[idx], self.labels[idx]


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
    """Train and validation splits as tensors; under DDP each rank reads its own shard of every epoch.

    ``trained_indices()`` gives the training images it trains on (a stratified ``train_fraction``, or all of them):
    the fit reports them, so the size curve never has to recompute the choice.
    """

    def __init__(
        self,
        prepared_dir: Path,
        augmented_dir: Path | None,
        batch_size: int,
        seed: int,
        train_fraction: float = 1.0,
    ) -> None:
        super().__init__()
        self.prepared_dir, self.augmented_dir = Path(prepared_dir), augmented_dir
        self.batch_size, self.seed, self.train_fraction = batch_size, seed, train_fraction
        self.meta: DatasetMeta | None = None
        # feature extraction (use_features): (copies, N, F) and (N, F) float features instead of the images
        self.train_features: torch.Tensor | None = None
        self.val_features: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        self.meta = load_meta(self.prepared_dir)
        multi = self.meta.multi_label
        self.train_x, self.train_y = as_tensors(*load_split(self.prepared_dir, "train"), multi)
        self.val_x, self.val_y = as_tensors(*load_split(self.prepared_dir, "val"), multi)
        self.copies = torch.empty(0)
        if self.augmented_dir is not None:
            copies = np.load(Path(self.augmented_dir) / "train_images.npy", mmap_mode="r", allow_pickle=False)
            if len(copies):
                no_labels = np.zeros((copies.shape[1], 1), np.int64)
                self.copies = torch.stack([as_tensors(c, no_labels, False)[0] for c in copies])
        self.train_subset = self._subset(self.train_y)

    def use_features(self, encode: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Feature extraction with a frozen backbone: from now on, batches hold ``encode(images)`` instead of
        images, computed here once per image and per augmented copy rather than by a forward pass every epoch."""
        if self.train_features is None:
            sources = self.copies if len(self.copies) else self.train_x[None]
            self.train_features = torch.stack([encode(images) for images in sources])
            self.val_features = encode(self.val_x)

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

    def train_dataloader(self) -> Batches:
        # Called every epoch (reload_dataloaders_every_n_epochs=1): the order and the copy depend only on
        # (seed, epoch), so an interrupted run resumes exactly where it was.
        epoch = self.trainer.current_epoch if self.trainer else 0
        if self.train_features is not None:
            images = self.train_features[epoch % len(self.train_features)]
        else:
            images = self.copies[epoch % len(self.copies)] if len(self.copies) else self.train_x
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = self.train_subset[torch.randperm(len(self.train_subset), generator=generator)]
        return Batches(images, self.train_y, self._shard(order, equal=True), self.batch_size, drop_last=True)

    def val_dataloader(self) -> Batches:
        # 2x the training batch: no gradients are kept, so twice the images fit (params.yaml says so at batch_size)
        order = self._shard(torch.arange(len(self.val_x)), equal=False)  # metrics gather every sample once
        images = self.val_features if self.val_features is not None else self.val_x
        return Batches(images, self.val_y, order, self.batch_size * 2, drop_last=False)
