"""Evaluate's scoring and ``predict`` on a large npz in bounded memory: anonymous memory (RSS less file-backed pages,
measured in a fresh interpreter) grows by batches and scores, not by the split; the same measurement sees a split
read into RAM grow by the whole split, so the checks can fail."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from helpers import model_params
from medmnist_pipeline.metadata import BINARY
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.modelfile import DatasetRef, ModelFile

N, SIZE = 48_000, 32  # 48,000 RGB 32 px images: a 141 MiB split; 512-image batches of 1.5 MiB
SPLIT = N * SIZE * SIZE * 3
MIB = 1 << 20
# mapped and in-RAM scores come from two processes; adjacent grey levels score 1.6e-4 apart, so a wrong row fails
SCORE_ATOL = 1e-6

SCORE = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from medmnist_pipeline.data.dataset import Split, load_splits
    from medmnist_pipeline.data.layout import nchw
    from medmnist_pipeline.evaluation.scoring import scores
    from medmnist_pipeline.memory import PeakAnon, anon_bytes
    from medmnist_pipeline.models.modelfile import ModelFile
    from medmnist_pipeline.paths import PREPARED_DIR
    torch.set_num_threads(1)
    model, mode, out = ModelFile.load(sys.argv[1]), sys.argv[2], sys.argv[3]
    model.predict(torch.zeros(512, 3, 32, 32, dtype=torch.uint8))  # warm up: the allocator's steady state
    before = anon_bytes()
    with PeakAnon(interval_s=0.005) as peak:
        if mode == "mapped":
            split = load_splits("data/prepared", ("test",))["test"]
        else:  # what load_splits did before: the split read into a RAM tensor
            split = Split(nchw(np.load("data/prepared/test_images.npy")), np.load("data/prepared/test_labels.npy"))
        p = scores(model, split)
        q = scores(model, split, np.arange(0, len(split.labels), 3))  # rows of the split (the size curve's subsets)
    np.save(out, np.concatenate([p, q]))
    print(before, peak.total)
    """
)

PREDICT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from medmnist_pipeline.predict import run as predict
    from medmnist_pipeline.memory import PeakAnon, anon_bytes
    torch.set_num_threads(1)
    model, npz, mode, out = sys.argv[1:5]
    np.savez_compressed("warm.npz", test_images=np.zeros((2, 32, 32, 3), np.uint8))
    predict.main(model, ["warm.npz"], out=out)  # imports and the model's first use: not what is measured
    before = anon_bytes()
    with PeakAnon(interval_s=0.005) as peak:
        if mode == "predict":
            predict.main(model, [npz], out=out, batch_size=256)
        else:  # what a whole-member read costs (predict did this for compressed members before)
            with np.load(npz) as f:
                f["test_images"].sum()
    print(before, peak.total)
    """
)


def tiny_model(path: Path) -> Path:
    torch.manual_seed(0)
    section = model_params(
        name="convnet", filters=4, kernel_size=3, convs_per_block=1, blocks=1, fc_layers=0, fc_width=8, dropout=0.0
    )
    ModelFile.from_network(
        build_model(section, 3, 2, SIZE),
        model=section,
        task=BINARY,
        labels=("no", "yes"),
        in_channels=3,
        image_size=SIZE,
        dataset=DatasetRef("custom", SIZE, "0" * 32),
        val={},
        mlflow_run_id=None,
        history=(),
    ).save(path)
    return path


def images() -> np.ndarray:
    # a different grey level per image: the scores tell images apart, and the npz compresses (written in a second)
    level = (np.arange(N, dtype=np.uint32) * 37 % 256).astype(np.uint8)
    return np.broadcast_to(level[:, None, None, None], (N, SIZE, SIZE, 3))


def run(script: str, *args: str, cwd: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", script, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    before, peak = out.stdout.split()[-2:]
    return int(before), int(peak)


def test_scoring_a_split_reads_it_a_batch_at_a_time(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "model.ckpt")
    (tmp_path / "data/prepared").mkdir(parents=True)
    np.save(tmp_path / "data/prepared/test_images.npy", images())
    np.save(tmp_path / "data/prepared/test_labels.npy", np.zeros((N, 1), np.int64))
    before, peak = run(SCORE, str(model), "mapped", str(tmp_path / "mapped.npy"), cwd=tmp_path)
    mapped = peak - before
    before, peak = run(SCORE, str(model), "ram", str(tmp_path / "ram.npy"), cwd=tmp_path)
    in_ram = peak - before
    np.testing.assert_allclose(np.load(tmp_path / "mapped.npy"), np.load(tmp_path / "ram.npy"), atol=SCORE_ATOL, rtol=0)
    # the scores (48,000 x 2 float32, twice: 0.7 MiB), a gathered chunk of 4,096 rows (12 MiB) and a batch of 512
    # in flight (uint8 1.5 MiB, float 6 MiB, activations about 8 MiB each) plus the heap's free space within a batch
    # (trimmed after each): measured 59 MiB for the whole split, 94 MiB for both passes; the split is 141 MiB.
    # (Without memory.trim_heap, glibc's heap kept freed batches: +380 MiB for the same scoring.)
    print(f"scoring: mapped +{mapped / MIB:.0f} MiB, in RAM +{in_ram / MIB:.0f} MiB")
    assert mapped < 112 * MIB, mapped / MIB
    assert in_ram > SPLIT, in_ram / MIB  # the measurement sees a split held in RAM


def test_predict_streams_a_large_compressed_npz(tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "model.ckpt")
    npz = tmp_path / "large.npz"
    np.savez_compressed(npz, test_images=images())
    assert npz.stat().st_size < SPLIT / 50  # compressed: the old reader decompressed all of it into memory
    before, peak = run(PREDICT, str(model), str(npz), "predict", str(tmp_path / "p.csv"), cwd=tmp_path)
    streamed = peak - before
    before, peak = run(PREDICT, str(model), str(npz), "whole", str(tmp_path / "w.csv"), cwd=tmp_path)
    whole = peak - before
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert len(lines) == N + 1 and lines[-1].startswith(f"{npz}[{N - 1}]")
    # one 16 MiB chunk of the member, a batch of 256 in flight, the sources' list (48,000 small objects) and the CSV
    # rows held until every input is read (no partial output on a bad input): measured 66 MiB before the rows were
    # held, 84 MiB with them; they grow with the rows, not the pixels. The member is 141 MiB
    print(f"predict: streamed +{streamed / MIB:.0f} MiB, whole member +{whole / MIB:.0f} MiB")
    assert streamed < 100 * MIB, streamed / MIB
    assert whole > SPLIT, whole / MIB
