"""Feature extraction with a frozen pretrained backbone: the feature cache against a backbone forward every epoch.

Both ways train the same new head (same initialisation, same batch order, same AdamW) on PneumoniaMNIST's training
split for ``--epochs`` epochs on top of the frozen EfficientNet-Lite0 (ImageNet weights from the installed package):

- naive: every step runs the whole network on the batch (the backbone under autograd's bookkeeping but without
  gradients, since its parameters are frozen), as a plain training loop over the images does;
- cached: ``compute_features`` runs the backbone once per image, then every epoch trains the head on the cache.

Because the frozen backbone is in eval mode, both see exactly the same features, so the two heads must end equal up
to float rounding: the script prints the largest difference as the check that the cache changes nothing but time.

Usage:  python bench/feature_cache.py [--npz PATH] [--input-size 64] [--epochs 10]
        python bench/feature_cache.py --tiny   # 64 synthetic images at 28 px, 2 epochs: a smoke run
The last line is ``speedup: <ratio>x`` (naive / cached wall time, measured in the same run).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _tiny import synthetic_images
from medmnist_pipeline.models.networks import freeze_backbone
from medmnist_pipeline.models.pretrained import build_pretrained, compute_features

DEFAULT_NPZ = Path(os.environ.get("MEDMNIST_MIRROR", Path(__file__).resolve().parents[2] / "shared/data/medmnist"))


def train_head(head: nn.Linear, inputs: torch.Tensor, labels: torch.Tensor, forward, epochs: int, batch: int) -> None:
    """AdamW on the head; ``forward`` maps a slice of ``inputs`` to logits (whole network, or the head alone)."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    order_gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=order_gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = nn.functional.cross_entropy(forward(inputs[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ / "pneumoniamnist.npz")
    parser.add_argument("--input-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="smoke run: 64 synthetic images at 28 px, 2 epochs")
    args = parser.parse_args()

    if args.tiny:
        arrays, name = synthetic_images(64), "synthetic (--tiny)"
        args.input_size, args.epochs, args.batch_size = 28, 2, 32
    else:
        if not args.npz.is_file():
            parser.error(f"{args.npz}: no such file (the official npz, as in ../shared/data/medmnist; or --tiny)")
        with np.load(args.npz) as npz:
            arrays, name = (npz["train_images"], npz["train_labels"]), args.npz.name
    images = torch.from_numpy(arrays[0]).unsqueeze(1)  # (N, 1, 28, 28) uint8
    labels = torch.from_numpy(arrays[1][:, 0]).long()
    print(
        f"{name}: {len(labels)} training images, EfficientNet-Lite0 at {args.input_size} px, "
        f"{args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )

    def frozen_net() -> nn.Module:
        torch.manual_seed(0)
        net = build_pretrained("efficientnet_lite0", 1, 2, args.input_size, "imagenet")
        freeze_backbone(net)
        return net.train()  # as Lightning leaves it: the head in train mode, the backbone kept in eval

    net = frozen_net()
    start, cpu = time.perf_counter(), time.process_time()
    train_head(net.head, images, labels, lambda x: net(x.float().div(127.5).sub(1.0)), args.epochs, args.batch_size)
    naive_s, naive_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"naive : {naive_s:8.1f} s wall, {naive_cpu:8.1f} s CPU ({naive_s / args.epochs:.2f} s per epoch)")

    cached = frozen_net()
    start, cpu = time.perf_counter(), time.process_time()
    features = compute_features(cached.backbone, images, batch_size=args.batch_size)
    cache_s = time.perf_counter() - start
    train_head(cached.head, features, labels, cached.head, args.epochs, args.batch_size)
    cached_s, cached_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"cached: {cached_s:8.1f} s wall, {cached_cpu:8.1f} s CPU (cache {cache_s:.1f} s once, "
        f"then {(cached_s - cache_s) / args.epochs:.3f} s per epoch)"
    )
    diff = (net.head.weight - cached.head.weight).abs().max().item()
    print(f"largest difference between the two trained heads: {diff:.2e}")
    print(f"speedup: {naive_s / cached_s:.1f}x")


if __name__ == "__main__":
    main()
