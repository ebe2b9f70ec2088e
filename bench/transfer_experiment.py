"""Transfer learning experiment, provisional (before the pipeline wiring of issue 11): scratch ConvNet vs
EfficientNet-Lite0 (ImageNet) feature extraction vs fine-tuning, per dataset, input size and seed.

Every run trains on the training split, evaluates validation after every epoch, keeps the epoch with the best
validation AUC (earliest on ties) and reports that model's test AUC/ACC (official MedMNIST metrics) and the CPU
time it took. No augmentation (as the MedMNIST v2 baselines); inputs smaller than ``input_size`` are upsampled
bilinearly on the batch (ConvNet: ``F.interpolate`` before the network; EfficientNet: its ``InputAdapter``).

- scratch: the project's default ConvNet (params.yaml ``train.model``), AdamW lr 0.002, weight decay 1e-4.
- extract: frozen backbone, features cached once per split (``compute_features``; the cache's CPU time is its own
  row), then a new linear head, AdamW lr 0.001, weight decay 1e-4.
- finetune: all weights train, AdamW lr 0.001 for the head and lr x ``--backbone-lr-factor`` for the backbone.

Rows are appended to ``--out`` (CSV) as each run ends, so a partial grid keeps what finished.
Usage: python bench/transfer_experiment.py --modes extract scratch finetune --sizes 28 64 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medmnist_pipeline.metrics import official_acc, official_auc, scores_from_logits
from medmnist_pipeline.models import ConvNet
from medmnist_pipeline.pretrained import build_pretrained, compute_features, freeze_backbone, param_groups

MIRROR = Path(os.environ.get("MEDMNIST_MIRROR", Path(__file__).resolve().parents[2] / "shared/data/medmnist"))
CONVNET = dict(filters=32, kernel_size=3, convs_per_block=2, blocks=3, fc_layers=1, fc_width=128, dropout=0.3)
TASK = "binary-class"  # both datasets of this experiment


def load(flag: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    with np.load(MIRROR / f"{flag}.npz") as npz:
        return {
            s: (torch.from_numpy(npz[f"{s}_images"]).unsqueeze(1), torch.from_numpy(npz[f"{s}_labels"][:, 0]).long())
            for s in ("train", "val", "test")
        }


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x.float().div(127.5).sub(1.0) if x.dtype == torch.uint8 else x


@torch.no_grad()
def evaluate(forward, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    logits = torch.cat([forward(normalize(x[i : i + 512])) for i in range(0, len(x), 512)])
    scores, truth = scores_from_logits(logits.float(), TASK).numpy(), y.numpy()[:, None]
    return {"auc": official_auc(truth, scores, TASK), "acc": official_acc(truth, scores, TASK)}


def fit(model: nn.Module, forward, optimizer, data, epochs: int, seed: int, batch: int = 128) -> dict:
    """Train; keep the state of the best validation AUC; return its epoch, validation and test metrics."""
    (x, y), gen = data["train"], torch.Generator().manual_seed(seed)
    best = {"val_auc": -1.0}
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(forward(normalize(x[idx])), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        val = evaluate(forward, *data["val"])
        if val["auc"] > best["val_auc"]:
            best = {
                "epoch": epoch,
                "val_auc": val["auc"],
                "val_acc": val["acc"],
                "state": copy.deepcopy(model.state_dict()),
            }
    model.load_state_dict(best.pop("state"))
    model.eval()
    test = evaluate(forward, *data["test"])
    return {**best, "test_auc": test["auc"], "test_acc": test["acc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flags", nargs="+", default=["breastmnist", "pneumoniamnist"])
    p.add_argument("--modes", nargs="+", default=["extract", "scratch", "finetune"])
    p.add_argument("--sizes", nargs="+", type=int, default=[28, 64])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, nargs=3, default=[30, 15, 6], help="extract, scratch, finetune")
    p.add_argument("--backbone-lr-factor", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=Path("transfer_experiment.csv"))
    args = p.parse_args()
    epochs = dict(zip(("extract", "scratch", "finetune"), args.epochs, strict=True))
    fields = ["flag", "mode", "input_size", "seed", "epochs", "epoch", "val_auc", "val_acc", "test_auc", "test_acc"]
    fields += ["cpu_s", "wall_s"]
    new = not args.out.exists()
    with args.out.open("a", newline="") as f:
        out = csv.DictWriter(f, fields)
        if new:
            out.writeheader()
        for flag in args.flags:
            data = load(flag)
            for size in args.sizes:
                for mode in args.modes:
                    cache = None
                    for seed in args.seeds:
                        cpu, wall = time.process_time(), time.perf_counter()
                        torch.manual_seed(seed)
                        if mode == "scratch":
                            model = ConvNet(1, 2, **CONVNET)
                            resize = lambda x, s=size: (
                                x if x.shape[-1] == s else F.interpolate(x, size=(s, s), mode="bilinear")
                            )
                            forward = lambda x, m=model, r=resize: m(r(x))  # noqa: E731
                            opt = torch.optim.AdamW(model.parameters(), lr=0.002, weight_decay=1e-4)
                            result = fit(model, forward, opt, data, epochs[mode], seed)
                        elif mode == "extract":
                            if cache is None:  # the features do not depend on the seed: one cache per size
                                net = build_pretrained("efficientnet_lite0", 1, 2, size, "imagenet")
                                freeze_backbone(net)
                                net.eval()
                                cache = {s: (compute_features(net.backbone, xs), ys) for s, (xs, ys) in data.items()}
                                row = dict(flag=flag, mode="extract-cache", input_size=size, seed="", epochs="")
                                row.update(
                                    cpu_s=round(time.process_time() - cpu, 1),
                                    wall_s=round(time.perf_counter() - wall, 1),
                                )
                                out.writerow(row)
                                f.flush()
                                cpu, wall = time.process_time(), time.perf_counter()
                            head = nn.Linear(1280, 2)
                            opt = torch.optim.AdamW(head.parameters(), lr=0.001, weight_decay=1e-4)
                            result = fit(head, head, opt, cache, epochs[mode], seed)
                        else:
                            model = build_pretrained("efficientnet_lite0", 1, 2, size, "imagenet")
                            opt = torch.optim.AdamW(
                                param_groups(model, 0.001, args.backbone_lr_factor), weight_decay=1e-4
                            )
                            result = fit(model, model, opt, data, epochs[mode], seed)
                        row = dict(flag=flag, mode=mode, input_size=size, seed=seed, epochs=epochs[mode], **result)
                        row.update(
                            cpu_s=round(time.process_time() - cpu, 1), wall_s=round(time.perf_counter() - wall, 1)
                        )
                        out.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
                        f.flush()
                        print(row, flush=True)


if __name__ == "__main__":
    main()
