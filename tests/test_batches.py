"""Batches in bounded memory: the mapped path gives the in-RAM path's batches, stays within the budget on a split
larger than it, prefetches off the training thread, and online augmentation is reproducible and fails clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from medmnist_pipeline.data.batches import (
    BUDGET_KEY,
    AugmentedBatches,
    Batches,
    Budget,
    Mapped,
    NpyMap,
    Resident,
    check_batch_fits,
    gather,
    open_source,
)
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.memory import descendants
from medmnist_pipeline.transforms.augmentation import augment_images, serialize

TRANSFORMS = [
    {"Affine": {"rotate": [-15, 15], "translate_percent": [-0.1, 0.1], "p": 1.0}},
    {"RandomBrightnessContrast": {"p": 1.0}},
]


def split_file(path, n: int, shape: tuple[int, ...], seed: int = 0) -> NpyMap:
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))
    images[:] = np.random.default_rng(seed).integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    del images
    return NpyMap(path)


def batches_of(source, labels, order, batch_size=16, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(Batches(source, labels, order, batch_size, drop_last=True, **kw))


@pytest.mark.parametrize("shape", [(12, 12), (12, 12, 3)])
def test_mapped_batches_equal_resident_batches_in_the_sampled_order(tmp_path, shape) -> None:
    images = split_file(tmp_path / "x.npy", 100, shape)
    labels = torch.arange(100)
    order = torch.randperm(100, generator=torch.Generator().manual_seed(1))
    mapped, resident = batches_of(Mapped(images), labels, order), batches_of(Resident(images.array), labels, order)
    assert len(mapped) == len(resident) == 6  # drop_last
    for (xm, ym), (xr, yr), i in zip(mapped, resident, range(6), strict=True):
        assert xm.shape == (16, 3 if len(shape) == 3 else 1, 12, 12) and xm.dtype == torch.uint8
        assert torch.equal(xm, xr) and torch.equal(ym, yr) and xr.is_contiguous() and xm.is_contiguous()
        assert torch.equal(ym, order[i * 16 : (i + 1) * 16])  # labels follow the sampled order, not the sorted read
    idx = np.array([7, 3, 3, 90, 0])
    assert np.array_equal(gather(images.array, idx), images.array[idx])


def test_budget_picks_the_path_and_refuses_a_budget_smaller_than_the_batches(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 50, (10, 10))  # 5,000 bytes
    budget = Budget(8_000)
    assert isinstance(open_source(images, budget), Resident)  # fits: in RAM, as today
    assert isinstance(open_source(images, budget), Mapped)  # only 3,000 bytes left: mapped
    check_batch_fits(images.array, batch_size=20, budget=Budget(8_000), in_flight=4)  # 8,000 bytes: fits
    with pytest.raises(PipelineError, match=f"^{BUDGET_KEY}: 0.00762939 MiB cannot hold 4 batches of 21 images"):
        check_batch_fits(images.array, batch_size=21, budget=Budget(8_000), in_flight=4)


class Boom(Mapped):
    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        if int(idx.min()) >= 32:
            raise OSError("disk went away")
        return super().batch(idx)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "batch-prefetch"]


def test_prefetch_raises_the_gather_error_and_leaves_no_thread_behind(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 64, (8, 8))
    batches = Batches(Boom(images), torch.arange(64), torch.arange(64), 16, drop_last=False)
    seen = []
    with pytest.raises(OSError, match="disk went away"):
        for x, _ in batches:
            seen.append(x)
    assert len(seen) == 2 and not prefetch_threads()
    for _ in Batches(Mapped(images), torch.arange(64), torch.arange(64), 4, drop_last=False, prefetch=1):
        break  # a consumer that stops early stops the thread
    assert not prefetch_threads()


MEMORY_CHECK = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from medmnist_pipeline.data.batches import Batches, Budget, NpyMap, check_batch_fits, open_source
    from medmnist_pipeline.memory import PeakAnon, anon_bytes
    path, budget_mb, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    images = NpyMap(path)
    budget = Budget(budget_mb << 20)
    check_batch_fits(images.array, batch, budget, in_flight=4)
    labels = torch.zeros(len(images), dtype=torch.long)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    before = anon_bytes()
    with PeakAnon() as peak:
        source = open_source(images, budget)
        total = 0
        for x, y in Batches(source, labels, order, batch, drop_last=True):
            total += int(x[:, 0, 0, 0].sum())  # touch every batch
    print(type(source).__name__, before, peak.total, images.array.nbytes)
    """
)


def test_mapped_epoch_anonymous_memory_stays_within_budget_on_a_split_larger_than_it(tmp_path) -> None:
    images = split_file(tmp_path / "big.npy", 12_000, (64, 64, 3))  # 141 MiB split
    batch_bytes = 256 * 64 * 64 * 3  # 3 MiB

    def run(budget_mb: int) -> tuple[str, int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_CHECK, str(images.path), str(budget_mb), "256"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out[0], int(out[1]), int(out[2]), int(out[3])

    kind, before, peak, split = run(budget_mb=16)
    assert kind == "Mapped" and split > 8 * (16 << 20)
    # budget + a few batches: the sorted-read buffer and the reused batch slots (in the queue, being gathered,
    # being used)
    assert peak - before <= (16 << 20) + 8 * batch_bytes, (peak - before) / 2**20
    kind, before, peak, split = run(budget_mb=256)  # the same measurement sees a split held in RAM
    assert kind == "Resident" and peak - before >= split


def test_online_augmentation_is_reproducible_and_equals_the_materialised_copy(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 40, (16, 16, 3))
    labels, order = torch.arange(40), torch.randperm(40, generator=torch.Generator().manual_seed(3))
    copies = np.zeros((2, 40, 16, 16, 3), np.uint8)
    augment_images(images.array, TRANSFORMS, 2, seed=7, out=copies)

    def epoch(e: int, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(AugmentedBatches(images, labels, order, 8, TRANSFORMS, seed=7, copy=e, workers=workers))

    in_process, in_workers = epoch(1, workers=0), epoch(1, workers=2)
    serialized = list(AugmentedBatches(images, labels, order, 8, serialize(TRANSFORMS), 7, copy=1, workers=0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(in_process, serialized, strict=True))
    assert len(in_process) == 5
    for (x0, y0), (x2, y2), (xc, _) in zip(in_process, in_workers, batches_of(Resident(copies[1]), labels, order, 8)):
        assert torch.equal(x0, x2) and torch.equal(y0, y2) and torch.equal(x0, xc)
    assert not torch.equal(epoch(0, workers=0)[0][0], in_process[0][0])


def test_online_augmentation_names_the_failing_image(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 64, (8, 8))
    failing = [{"ChannelDropout": {"p": 0.05}}]  # undefined for one channel: fails on the images it picks
    batches = AugmentedBatches(images, torch.arange(64), torch.arange(64), 16, failing, seed=1, copy=0, workers=1)
    with pytest.raises(PipelineError, match=r"^augment.transforms fail on training image \d+ \(copy 0\): ") as error:
        list(batches)
    assert "\n" not in str(error.value)


def test_a_dying_loader_worker_is_a_clear_error(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 4_000, (16, 16))
    batches = AugmentedBatches(images, torch.arange(4_000), torch.arange(4_000), 8, TRANSFORMS, 1, 0, workers=1)

    def kill_workers() -> None:
        for pid in descendants(os.getpid())[1:]:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Timer(1.0, kill_workers)  # while the training thread waits for a batch
    killer.start()
    try:
        with pytest.raises(PipelineError, match=r"^a data loader worker process died .*Lower loader.workers"):
            for _ in batches:
                pass
    finally:
        killer.cancel()


def test_materialising_pool_equals_one_process(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 600, (12, 12)).array  # 4 chunks of at most 512
    serial = np.zeros((2, *images.shape), np.uint8)
    augment_images(images, TRANSFORMS, 2, seed=3, out=serial)
    pooled = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.uint8, shape=serial.shape)
    done = []
    augment_images(images, TRANSFORMS, 2, seed=3, out=pooled, workers=2, advance=done.append)
    assert sum(done) == 1_200 and np.array_equal(np.asarray(pooled), serial)


FAILING = [{"ChannelDropout": {"p": 0.01}}]  # undefined for one channel: fails on the few images it picks


def test_materialising_names_the_failing_image() -> None:
    images = np.zeros((300, 8, 8), np.uint8)
    with pytest.raises(PipelineError, match=r"^augment.transforms fail on training image 103 \(copy 0\): "):
        augment_images(images, FAILING, 2, seed=3, out=np.zeros((2, *images.shape), np.uint8))


@pytest.mark.slow  # a second pool: its processes import albumentations (several seconds on a loaded 2-core CPU)
def test_materialising_pool_names_the_failing_image(tmp_path) -> None:
    images = split_file(tmp_path / "x.npy", 1_100, (8, 8)).array
    out = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.uint8, shape=(2, *images.shape))
    with pytest.raises(PipelineError, match=r"^augment.transforms fail on training image \d+ \(copy \d\): "):
        augment_images(images, FAILING, 2, seed=3, out=out, workers=2)


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    from medmnist_pipeline.errors import PipelineError
    from medmnist_pipeline.files import allocate_npy
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the file-size limit stands in for a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        allocate_npy(sys.argv[1], (100, 128, 128, 3))
    except PipelineError as exc:
        print(exc)
    """
)


def test_a_memory_map_that_does_not_fit_on_disk_is_a_clear_error_and_leaves_no_file(tmp_path) -> None:
    path = tmp_path / "train_images.npy"
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"{path}: cannot reserve 4.7 MiB on disk (File too large)"), out.stdout + out.stderr
    assert not path.exists()
