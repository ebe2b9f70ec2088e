"""Data path at PathMNIST scale: training epochs on synthetic PathMNIST-sized data (90,000 RGB training images,
9 classes) at each size, through the memory-mapped path and, where it fits, the in-RAM path (measured in the same
run, so the two are comparable).

Each path runs in a fresh process, which reports the in-RAM path's load time apart from the epochs, the median
epoch's time and images per second, and its peak anonymous memory (RssAnon, sampled every 20 ms: what a
memory budget bounds; the mapped file's pages are file-backed and shared). The model is
the project's logistic regression (``logreg``), so the epoch costs little compute and the data path shows; with a
CNN on this 2-core CPU the convolutions dominate at every size (see train_throughput.py).

Usage (from the project root, environment active; writes the .npy files under --dir, which it keeps for reruns):
    python bench/data_path.py --sizes 28 --epochs 5 --repeats 7   # a 28 px epoch lasts a second: medians of many
    nice -n 15 python bench/data_path.py --sizes 64 128 [--dir $TMPDIR/medmnist-bench] [--ram-max-gib 5]
    python bench/data_path.py --sizes 28 --model convnet --limit-batches 20 --repeats 3   # train's CNN
    python bench/data_path.py --tiny   # 2,048 images at 28 px in a temporary folder, one epoch: a smoke run
The last line is ``ratio: mapped / in-RAM speed <size> px <ratio> ...`` (the median process pair of each size).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_TRAIN, N_CLASSES, BATCH = 90_000, 9, 256


def build(directory: Path, size: int, n_train: int = N_TRAIN) -> Path:
    """The synthetic training split (uint8 noise; the pixels do not matter for speed), written once."""
    name = f"path{size}" if n_train == N_TRAIN else f"path{size}_n{n_train}"
    path = directory / f"{name}_train_images.npy"
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    from medmnist_pipeline.files import allocate_npy

    tmp = path.with_suffix(".part.npy")
    out = allocate_npy(tmp, (n_train, size, size, 3))
    rng = np.random.default_rng(size)
    for start in range(0, n_train, 2_000):
        stop = min(start + 2_000, n_train)
        out[start:stop] = rng.integers(0, 256, (stop - start, size, size, 3), dtype=np.uint8)
    out.flush()
    del out
    tmp.rename(path)
    return path


def run_epochs(path: Path, mode: str, model_name: str, limit: int, epochs: int = 1) -> dict:
    """Runs in its own process: ``epochs`` epochs (or ``limit`` batches each) of training through ``mode``
    (mapped | ram). The load (the in-RAM path's copy of the split) is timed apart from the epochs, and the speed is
    that of the median epoch: a 28 px epoch lasts about a second, and one of them alone gave ratios from 0.7 to 2.7
    between identical runs on this CPU."""
    import torch
    import yaml

    from medmnist_pipeline.config.train import merge_model_keys, model_section
    from medmnist_pipeline.data.batches import Batches, Budget, NpyMap, check_batch_fits, open_source
    from medmnist_pipeline.memory import PeakAnon, anon_bytes
    from medmnist_pipeline.models.build import build_model
    from medmnist_pipeline.models.conventions import normalize

    # One compute thread: this 2-core CPU is shared, and two OpenMP threads contending with other processes made
    # a logreg step 10x slower (63 vs 7 ms, measured), which would swamp the data path being measured.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = NpyMap(path)
    n_train, size = images.array.shape[:2]
    labels = torch.randint(0, N_CLASSES, (n_train,))
    # the repository's train.model section (its convnet is train's default network) switched to the chosen
    # architecture (a logreg keeps only its name)
    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"]["model"]
    model = build_model(model_section(merge_model_keys(section, {"name": model_name})), 3, N_CLASSES, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    budget = Budget(1 << 30 if mode == "mapped" else 1 << 40)  # mapped: the default 1 GiB; ram: unlimited
    if mode == "mapped":
        # leave 64 MiB (at least 4 batches; at most half a small split), so even the 28 px split (0.2 GiB) is mapped
        leave = max(min(64 << 20, images.array.nbytes // 2), 4 * BATCH * size * size * 3)
        budget.take(budget.total - leave)
    check_batch_fits(images.array, BATCH, Budget(budget.total - budget.used), in_flight=4)
    before = anon_bytes()
    epoch_seconds = []
    with PeakAnon() as peak:
        started = time.perf_counter()
        source = open_source(images, budget)
        loaded = time.perf_counter() - started
        for epoch in range(epochs):
            generator = torch.Generator().manual_seed(epoch)
            order = torch.randperm(n_train, generator=generator)[: limit * BATCH if limit else None]
            started = time.perf_counter()
            for x, y in Batches(source, labels, order, BATCH, drop_last=True):
                loss = torch.nn.functional.cross_entropy(model(normalize(x)), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            epoch_seconds.append(time.perf_counter() - started)
    seconds = float(np.median(epoch_seconds))
    return {
        "size": size,
        "mode": type(source).__name__,
        "split_gib": images.array.nbytes / 2**30,
        "load_s": loaded,
        "epoch_s": seconds,
        "images_per_s": len(order) // BATCH * BATCH / seconds,
        "images": len(order) // BATCH * BATCH,
        "peak_anon_gib": peak.total / 2**30,
        "data_anon_gib": (peak.total - before) / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 128])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "medmnist-bench")
    parser.add_argument("--ram-max-gib", type=float, default=5.0, help="skip the in-RAM path above this split size")
    parser.add_argument("--model", choices=["logreg", "convnet"], default="logreg")
    parser.add_argument("--limit-batches", type=int, default=0, help="stop the epoch after this many batches")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per path; the median epoch gives the speed")
    parser.add_argument("--repeats", type=int, default=1, help="processes per path, alternated; the median counts")
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="training images of the synthetic split")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke run: 2,048 images at 28 px in a temporary folder, one epoch"
    )
    parser.add_argument("--one", nargs=2, metavar=("NPY", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_epochs(Path(args.one[0]), args.one[1], args.model, args.limit_batches, args.epochs)))
        return
    if args.tiny:
        args.sizes, args.n_train, args.epochs, args.repeats = [28], 2_048, 1, 1
        with tempfile.TemporaryDirectory(prefix="data-path-tiny-") as folder:
            args.dir = Path(folder)
            measure(args)
        return
    measure(args)


def measure(args: argparse.Namespace) -> None:
    length = f"{args.limit_batches} batches" if args.limit_batches else "an epoch"
    print(
        f"model {args.model}, batch {BATCH}, {args.epochs} x {length} in each of {args.repeats} process(es) per path; "
        "epoch and images/s: the median epoch of the median process, without the load"
    )
    print("| size | split | path | images | load (s) | epoch (s) | images/s | peak anon (GiB) | above start (GiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios_by_size = []
    for size in args.sizes:
        path = build(args.dir, size, args.n_train)
        split_gib = path.stat().st_size / 2**30
        modes = ["mapped"] + (["ram"] if split_gib <= args.ram_max_gib else [])
        runs: dict[str, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.repeats):  # alternated, so that a slow spell of a shared machine hits both paths
            for mode in modes:
                run = subprocess.run(
                    [sys.executable, __file__, "--one", str(path), mode, "--model", args.model]
                    + ["--limit-batches", str(args.limit_batches), "--epochs", str(args.epochs)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[mode].append(json.loads(run.stdout.strip().splitlines()[-1]))
        for mode in modes:
            r = median_run(runs[mode])
            print(
                f"| {size} | {r['split_gib']:.2f} GiB | {r['mode']} | {r['images']:,} | {r['load_s']:.1f} | "
                f"{r['epoch_s']:.1f} | "
                f"{r['images_per_s']:,.0f} | {r['peak_anon_gib']:.2f} | {r['data_anon_gib']:.2f} |",
                flush=True,
            )
        if len(modes) == 2:
            ratios = [m["images_per_s"] / r["images_per_s"] for m, r in zip(runs["mapped"], runs["ram"], strict=True)]
            ratio = median_run(runs["mapped"])["images_per_s"] / median_run(runs["ram"])["images_per_s"]
            each = f" (each process pair: {', '.join(f'{x:.2f}' for x in ratios)})" if len(ratios) > 1 else ""
            print(f"|  |  | mapped / in-RAM speed: **{ratio:.2f}**{each} |  |  |  |  |  |  |", flush=True)
            ratios_by_size.append(f"{size} px {ratio:.2f}")
        else:
            ratios_by_size.append(f"{size} px (in RAM skipped: over --ram-max-gib)")
    print(f"ratio: mapped / in-RAM speed {', '.join(ratios_by_size)}")


def median_run(runs: list[dict]) -> dict:
    """The run with the median speed (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r["images_per_s"])[len(runs) // 2]


if __name__ == "__main__":
    main()
