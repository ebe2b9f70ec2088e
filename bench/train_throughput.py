"""Training throughput: this project's data path against the way the official MedMNIST experiments feed data.

Both runs train the same ResNet-18 (CIFAR-style stem, as MedMNIST uses for 28 px) on the same PneumoniaMNIST
training images for the same number of steps, with the same optimizer step code. Only the data path differs:

- reference: a torch Dataset returning PIL images, ToTensor + Normalize per sample, DataLoader(batch_size=128,
  shuffle=True), float32 (what MedMNIST's experiments do; torchvision's two transforms are written out here
  because torchvision cannot be installed beside the CPU torch);
- ours: the whole split as one uint8 tensor, a batch is one indexing operation, scaling happens on the batch on
  the device; optionally channels_last and bf16 autocast (--fast).

Usage:  python bench/train_throughput.py [--npz PATH] [--steps 40] [--device cpu|cuda] [--fast]
        python bench/train_throughput.py --tiny   # synthetic images, batches of 8, 2 timed steps: a smoke run
The last line is ``speedup: <ratio>x`` (ours / reference, images per second, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from _tiny import REPO, synthetic_images
from medmnist_pipeline.config.train import ModelSection, merge_model_keys, model_section
from medmnist_pipeline.data.batches import Batches, Resident
from medmnist_pipeline.data.datamodule import label_tensor
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.conventions import normalize

DEFAULT_NPZ = Path(os.environ.get("MEDMNIST_MIRROR", Path(__file__).resolve().parents[2] / "shared/data/medmnist"))


def resnet18() -> ModelSection:
    """The repository's train.model section (validated by its schema) as ResNet-18 with MedMNIST's 28 px stem."""
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]["model"]
    return model_section(merge_model_keys(section, {"name": "resnet18", "stem": "cifar"}))


class PILDataset(Dataset):
    """MedMNIST's own Dataset: ``Image.fromarray`` per item, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)  # transforms.ToTensor()
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        x = (x - 0.5) / 0.5  # transforms.Normalize(mean=[.5], std=[.5])
        return x, int(self.labels[i, 0])


def endless(loader_factory):
    while True:
        yield from loader_factory()


def train(batches, steps: int, warmup: int, device: str, fast: bool, prepare) -> float:
    """Images per second over ``steps`` optimizer steps after ``warmup`` untimed ones."""
    torch.manual_seed(0)
    model = build_model(resnet18(), 1, 2, 28).to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=fast)
    seen, started = 0, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device == "cuda":
                torch.cuda.synchronize()
            started, seen = time.perf_counter(), 0
        x, y = next(batches)
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        with autocast:
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(x)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ / "pneumoniamnist.npz")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fast", action="store_true", help="ours with channels_last + bf16 autocast")
    parser.add_argument("--tiny", action="store_true", help="smoke run: 256 synthetic images, batch 8, 2 timed steps")
    args = parser.parse_args()

    if args.tiny:
        (images, labels), name = synthetic_images(256), "synthetic (--tiny)"
        args.steps, args.warmup, args.batch_size = 2, 1, 8
    else:
        if not args.npz.is_file():
            parser.error(f"{args.npz}: no such file (the official npz, as in ../shared/data/medmnist; or --tiny)")
        with np.load(args.npz, allow_pickle=False) as npz:
            images, labels = npz["train_images"], npz["train_labels"]
        name = args.npz.name
    print(
        f"{name}: {len(images)} training images; device {args.device}; torch {torch.__version__}; "
        f"{torch.get_num_threads()} threads; batch {args.batch_size}; {args.steps} timed steps"
    )

    dataset = PILDataset(images, labels)
    reference = train(
        endless(lambda: DataLoader(dataset, batch_size=args.batch_size, shuffle=True)),
        args.steps,
        args.warmup,
        args.device,
        fast=False,
        prepare=lambda x: x,
    )
    print(f"reference (PIL Dataset + per-sample ToTensor/Normalize + DataLoader, fp32): {reference:8.1f} images/s")

    # the in-RAM fast path of batches.py: the split as one uint8 tensor on the device (a GPU keeps it there)
    source, y = Resident(images, args.device), label_tensor(labels, multi_label=False)
    generator = torch.Generator().manual_seed(0)
    epochs = lambda: Batches(source, y, torch.randperm(len(y), generator=generator), args.batch_size, drop_last=True)  # noqa: E731
    prepare = (lambda b: normalize(b).contiguous(memory_format=torch.channels_last)) if args.fast else normalize
    ours = train(endless(epochs), args.steps, args.warmup, args.device, args.fast, prepare)
    mode = "channels_last + bf16 autocast" if args.fast else "fp32"
    print(f"ours (uint8 tensors in memory, batch indexing, on-device scaling, {mode}): {ours:8.1f} images/s")

    # Feeding alone (one epoch of batches, ready on the device, no model): what the data path itself costs.
    def feed_rate(batches, prepare) -> float:
        started, seen = time.perf_counter(), 0
        for x, _y in batches:
            x = prepare(x.to(args.device))
            seen += len(x)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return seen / (time.perf_counter() - started)

    reference_feed = feed_rate(DataLoader(dataset, batch_size=args.batch_size, shuffle=True), lambda b: b)
    ours_feed = feed_rate(epochs(), prepare)
    print(
        f"data path alone: reference {reference_feed:,.0f} images/s, ours {ours_feed:,.0f} images/s "
        f"({ours_feed / reference_feed:.0f}x)"
    )
    print(f"speedup: {ours / reference:.2f}x")


if __name__ == "__main__":
    main()
