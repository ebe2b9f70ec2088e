"""Two nodes simulated on 127.0.0.1: ``torchrun --nnodes 2 --nproc-per-node 1`` started twice (node ranks 0 and 1,
each a separate process in its own project folder, as on two machines), each running the real
``medmnist-pipeline train`` command (CPU, gloo, ``strategy: ddp``, ``num_nodes: 2``)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from helpers import make_npz, write_params
from test_training import prepare, runs, tiny, use_custom

# What "matches the single-process run" means. ``batch_size`` is per rank, so the single process trains with twice
# the batch: each of its steps sees the 64 images that the two ranks see as halves of the same shuffled order
# (rank r takes positions r, r+2, ...), and DDP averages the two half-batch mean gradients, which equals the mean over
# 64. Not bit-identical: BatchNorm statistics are per rank (32 images, not 64), dropout draws differ, floats are
# summed in another order. Measured (CPU, 3 epochs, 512 training images): every epoch's validation loss within
# 0.005, validation AUC equal. Stated tolerance: the same epochs, validation loss within 0.02, AUC within 0.02.
# (With the same per-rank batch, i.e. half as many steps, the loss differed by 0.23: the check can fail.)
AUC_TOLERANCE = 0.02
LOSS_TOLERANCE = 0.02


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(node_rank: int, port: int, workdir: Path) -> subprocess.Popen:
    # the README's command, with --no-python: torchrun starts the installed `medmnist-pipeline` console script
    command = [
        *(str(Path(sys.executable).with_name("torchrun")), "--nnodes", "2", "--nproc-per-node", "1"),
        *("--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port)),
        *("--no-python", str(Path(sys.executable).with_name("medmnist-pipeline")), "train"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow  # three real train runs, two of them under torchrun; .ci/run runs the slow tests after the suite
def test_two_simulated_nodes_write_once_and_match_one_process(tmp_path: Path, repo_params: dict) -> None:
    source = make_npz(tmp_path / "data.npz", counts=(512, 128, 8))
    with np.load(source) as npz:  # more noise: a validation AUC below 1, so that the comparison below can fail
        arrays = {k: npz[k] for k in npz.files}
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        noisy = arrays[f"{split}_images"] + rng.normal(0, 150, arrays[f"{split}_images"].shape)
        arrays[f"{split}_images"] = np.clip(noisy, 0, 255).astype(np.uint8)
    np.savez_compressed(source, **arrays)
    params = tiny(repo_params, epochs=3)
    use_custom(params, source, "binary-class", ["no", "yes"])
    params["train"]["trainer"].update({"num_nodes": 2, "devices": 1, "strategy": "ddp", "deterministic": False})
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    cwd = Path.cwd()
    try:
        for node in nodes:  # each "machine" prepares its own copy of the data, as the README asks
            node.mkdir()
            os.chdir(node)
            prepare(node, params)
    finally:
        os.chdir(cwd)

    port = free_port()
    processes = [torchrun(rank, port, node) for rank, node in enumerate(nodes)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in processes]
    finally:  # a rank that fails leaves the other node's agent waiting for it: never leave them behind
        for p in processes:
            p.kill()
    for p, out in zip(processes, outputs, strict=True):
        assert p.returncode == 0, out

    (run,) = runs(params, "train")  # exactly one MLflow run for the stage
    assert run.info.status == "FINISHED"
    assert "training" in outputs[0] and f"MLflow run {run.info.run_id}" in outputs[0]
    # outputs written once, by global rank 0 (node 0); node 1 trained but wrote nothing
    assert (nodes[0] / "models/cnn.ckpt").is_file() and (nodes[0] / "reports/train/metrics.json").is_file()
    assert not (nodes[1] / "models").exists() and not (nodes[1] / "reports/train").exists()
    two_nodes = pd.read_csv(nodes[0] / "reports/train/history.csv")
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "val/auc")
    assert len(history) == len(two_nodes) == 3  # logged once per epoch, not once per rank

    # the same data and params on one process
    single = tmp_path / "single"
    shutil.copytree(nodes[0] / "data", single / "data")
    params["train"]["trainer"].update({"num_nodes": 1, "strategy": "auto"})
    params["train"]["batch_size"] = 2 * params["train"]["batch_size"]  # batch_size is per rank: the same steps
    params["tracking"]["experiment"] += "-single"
    write_params(single / "params.yaml", params)
    out = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", "train"], cwd=single, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    one = pd.read_csv(single / "reports/train/history.csv")
    assert len(one) == len(two_nodes)
    auc_diff = (one["val_auc"] - two_nodes["val_auc"]).abs().max()
    loss_diff = (one["val_loss"] - two_nodes["val_loss"]).abs().max()
    assert auc_diff <= AUC_TOLERANCE and loss_diff <= LOSS_TOLERANCE, (auc_diff, loss_diff)
    metrics = json.loads((nodes[0] / "reports/train/metrics.json").read_text())
    assert metrics["epochs"] == 3
    print(f"two nodes vs one process: max |val AUC diff| {auc_diff:.4f}, max |val loss diff| {loss_diff:.4f}")
