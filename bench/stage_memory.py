"""Peak anonymous memory of a pipeline stage: the real ``medmnist-pipeline <stage>`` command, with every process it
starts (DataLoader workers, DDP ranks, augment pool), sampled every 50 ms from /proc (RssAnon: what the memory
budget bounds; the memory-mapped splits are file-backed pages and do not count).

The issue's "done when" measurement (issue 10): a custom 128 px RGB set of 40,000 training images (a 1.83 GiB
training split), ``augment.copies: 2``, one baseline epoch on the augmented copies, against the same stage on
BreastMNIST-28. From the project root, environment active:

    nice -n 15 python bench/stage_memory.py --workdir /tmp/mem-breast \\
        --set data.flag=breastmnist data.size=28 data.mirror=../shared/data/medmnist
    nice -n 15 python bench/stage_memory.py --workdir /tmp/mem-custom128 --custom 40000 128

Each run prepares the data (download, augment: measured too, printed) and then measures the baseline stage. The last
line is ``peak: <stage> <GiB> GiB (largest process <GiB> GiB)`` for the last stage.

    python bench/stage_memory.py --tiny   # 256 synthetic RGB images at 28 px in a temporary folder: a smoke run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from medmnist_pipeline.memory import PeakAnon  # noqa: E402 - after the path, so the worktree's source is used

GIB = 2**30


def make_custom(path: Path, n_train: int, size: int, n_eval: int | None = None, classes: int = 9) -> Path:
    """An npz in the MedMNIST layout, written from memory maps so the arrays never sit in RAM together."""
    if path.is_file():
        return path
    n_eval = min(2_000, n_train) if n_eval is None else n_eval
    arrays = {}
    rng = np.random.default_rng(0)
    scratch = path.parent / f".{path.stem}-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        labels = rng.integers(0, classes, (n, 1)).astype(np.uint8)
        images = np.lib.format.open_memmap(
            scratch / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(n, size, size, 3)
        )
        for start in range(0, n, 1_000):
            stop = min(start + 1_000, n)
            noise = rng.integers(0, 64, (stop - start, size, size, 3), dtype=np.uint8)
            images[start:stop] = noise + (labels[start:stop, 0] * 20).astype(np.uint8)[:, None, None, None]
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)  # streams each memory map into the zip
    for file in scratch.iterdir():
        file.unlink()
    scratch.rmdir()
    return path


def set_key(params: dict, dotted: str, value: str) -> None:
    *parents, last = dotted.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[last] = yaml.safe_load(value)


def run_stage(stage: str, workdir: Path, env: dict[str, str]) -> tuple[float, float, float]:
    """(peak total anonymous GiB over the process tree, largest single process GiB, seconds)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", stage, "--params", "params.yaml"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    with PeakAnon(process.pid, tree=True, interval_s=0.05) as peak:
        _, err = process.communicate()
    if process.returncode:
        raise SystemExit(f"{stage} failed ({process.returncode}):\n{err[-3000:]}")
    return peak.total / GIB, peak.largest / GIB, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="the project folder (required unless --tiny)")
    parser.add_argument("--custom", nargs=2, type=int, metavar=("N_TRAIN", "SIZE"), help="a synthetic RGB set")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="params.yaml overrides")
    parser.add_argument("--stages", nargs="+", default=["download", "augment", "baseline"])
    parser.add_argument("--tiny", action="store_true", help="smoke run: 256 RGB images at 28 px, in a temporary folder")
    args = parser.parse_args()
    if args.tiny:
        args.custom = args.custom or [256, 28]
        with tempfile.TemporaryDirectory(prefix="stage-memory-tiny-") as folder:
            args.workdir = Path(folder)
            measure(args)
    elif args.workdir is None:
        parser.error("--workdir is required (or --tiny)")
    else:
        measure(args)


def measure(args: argparse.Namespace) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    overrides = ["augment.copies=2", "baseline.augmented=true", "baseline.max_epochs=1", *args.set]
    if args.custom:
        npz = make_custom(args.workdir / f"custom{args.custom[1]}.npz", *args.custom)
        labels = [f"class {i}" for i in range(9)]
        overrides += ["data.flag=custom", f"data.size={args.custom[1]}", f"data.custom.path={npz}"]
        overrides += ["data.custom.task=multi-class", f"data.custom.labels={labels}"]
    for item in overrides:
        key, value = item.split("=", 1)
        set_key(params, key, value)
    (args.workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    print(f"{args.workdir}: {' '.join(overrides)}")
    for stage in args.stages:
        total, largest, seconds = run_stage(stage, args.workdir, env)
        print(f"{stage}: peak anonymous memory {total:.2f} GiB (largest process {largest:.2f} GiB), {seconds:.0f} s")
    print(f"peak: {stage} {total:.2f} GiB (largest process {largest:.2f} GiB)")


if __name__ == "__main__":
    main()
