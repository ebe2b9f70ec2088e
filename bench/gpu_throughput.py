"""Training throughput on one device, per precision variant: the official MedMNIST feeding against this project's.

Part of the GPU check (``bench/gpu_check.sh``), usable alone. Every variant trains the same ResNet-18 (CIFAR stem,
built directly from ``models.networks.ResNet``, so no params schema is involved) on the same PneumoniaMNIST training
images for the same number of timed steps, after untimed warm-up steps:

- ``reference``: MedMNIST's experiments' feeding: a Dataset returning PIL images, ToTensor + Normalize per sample,
  ``DataLoader(batch_size, shuffle=True)`` with no workers, float32 (as ``bench/train_throughput.py``);
- ``fp32``: ours (``data.batches``: the split as one uint8 tensor on the device, a batch is one index operation,
  ``normalize`` on the batch), float32;
- ``bf16``: ours with bf16 autocast; ``bf16_cl``: also channels_last; ``bf16_cl_compile``: also ``torch.compile``.

Images at ``--size`` other than the file's own are the file's images resized once (bilinear) before timing. The
feeding alone (one epoch of batches on the device, no model) is measured for the reference and for ours.

Usage: python bench/gpu_throughput.py --npz PATH --size 28 --device cuda --json out.json
       python bench/gpu_throughput.py --info          # the device and versions, as JSON
The JSON is rewritten after each variant, so a run killed midway keeps the variants it finished.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from medmnist_pipeline.data.batches import Batches, Resident
from medmnist_pipeline.data.datamodule import label_tensor
from medmnist_pipeline.models.conventions import normalize
from medmnist_pipeline.models.networks import ResNet

VARIANTS = ("reference", "fp32", "bf16", "bf16_cl", "bf16_cl_compile")


def device_info() -> dict[str, Any]:
    import lightning

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device_count=torch.cuda.device_count(),
            device_name=torch.cuda.get_device_name(0),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return info


class PILDataset(Dataset):
    """MedMNIST's own Dataset: ``Image.fromarray`` per item, then ToTensor and Normalize(0.5, 0.5)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[i])
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        return (x - 0.5) / 0.5, int(self.labels[i, 0])


def load_images(npz: Path, size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    with np.load(npz, allow_pickle=False) as data:
        images, labels = data["train_images"], data["train_labels"]
    if limit:
        images, labels = images[:limit], labels[:limit]
    source = f"{npz.name} train split, {len(images)} images of {images.shape[1]} px"
    if images.shape[1] != size:
        x = torch.from_numpy(images)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        chunks = [
            torch.nn.functional.interpolate(c.float(), size=(size, size), mode="bilinear", align_corners=False)
            for c in x.split(512)
        ]
        y = torch.cat(chunks).round().clamp(0, 255).to(torch.uint8)
        images = (y[:, 0] if images.ndim == 3 else y.permute(0, 2, 3, 1)).numpy()
        source += f", resized (bilinear) to {size} px"
    return np.ascontiguousarray(images), labels, source


def endless(make):
    while True:
        yield from make()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train(batches, args, variant: str, prepare) -> dict[str, Any]:
    """Images per second over ``args.steps`` optimizer steps after ``args.warmup`` untimed ones."""
    device = args.device
    torch.manual_seed(0)
    model = ResNet(18, 1, 2, "cifar").to(device)
    channels_last = variant.startswith("bf16_cl")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model, backend=args.compile_backend) if variant.endswith("compile") else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    bf16 = variant.startswith("bf16")
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    first_step_s, seen, started, loss = 0.0, 0, 0.0, None
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            started, seen = time.perf_counter(), 0
        t0 = time.perf_counter()
        x, y = next(batches)
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(x)
        if step == 0:
            sync(device)
            first_step_s = time.perf_counter() - t0
    sync(device)
    elapsed = time.perf_counter() - started
    final_loss = float(loss.detach().float().item())
    result = {
        "images_per_s": round(seen / elapsed, 1),
        "ms_per_step": round(1000 * elapsed / args.steps, 3),
        "first_step_s": round(first_step_s, 2),  # includes compilation for the compiled variant
        "final_loss": round(final_loss, 4),
        "loss_finite": math.isfinite(final_loss),
    }
    if device == "cuda":
        result["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def feed_rate(batches, prepare, device: str) -> float:
    """Images per second of one epoch of batches made ready on the device, no model."""
    sync(device)
    started, seen = time.perf_counter(), 0
    for x, _y in batches:
        seen += len(prepare(x.to(device)))
    sync(device)
    return round(seen / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--info", action="store_true", help="print the device and versions as JSON, then exit")
    parser.add_argument("--npz", type=Path)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (the dry run: eager)")
    parser.add_argument("--json", type=Path, help="write the results here (rewritten after each variant)")
    args = parser.parse_args()
    if args.info:
        print(json.dumps(device_info()))
        return
    if args.npz is None:
        parser.error("--npz is required")

    images, labels, source = load_images(args.npz, args.size, args.limit)
    out: dict[str, Any] = {
        "size": args.size,
        "device": args.device,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "compile_backend": args.compile_backend,
        "model": "ResNet-18, CIFAR stem (models.networks.ResNet)",
        "data": source,
        "variants": {},
        "feed": {},
    }

    def save() -> None:
        if args.json:
            args.json.write_text(json.dumps(out, indent=2))

    dataset = PILDataset(images, labels)
    reference_loader = lambda: DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    source_on_device = Resident(images, args.device)
    y = label_tensor(labels, multi_label=False)
    generator = torch.Generator().manual_seed(0)
    ours = lambda: Batches(source_on_device, y, torch.randperm(len(y), generator=generator), args.batch_size, True)
    for variant in args.variants:
        try:
            if variant == "reference":
                result = train(endless(reference_loader), args, variant, prepare=lambda x: x)
            else:
                result = train(endless(ours), args, variant, prepare=normalize)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is a result; the others still run
            result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
        out["variants"][variant] = result
        print(f"{args.size} px {variant}: {result}", flush=True)
        save()
    reference = out["variants"].get("reference", {}).get("images_per_s")
    for result in out["variants"].values():
        if reference and "images_per_s" in result:
            result["speedup"] = round(result["images_per_s"] / reference, 2)
    try:
        out["feed"] = {
            "reference_images_per_s": feed_rate(reference_loader(), lambda x: x, args.device),
            "ours_images_per_s": feed_rate(ours(), normalize, args.device),
        }
    except Exception as exc:  # noqa: BLE001
        out["feed"] = {"error": f"{type(exc).__name__}: {exc}"}
    save()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
