"""The training core and the baseline/train stages on real (tiny) data: every task type, outputs and MLflow runs,
determinism, resume after SIGKILL, DDP on CPU, divergence, transfer learning, and that the test split stays shut."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_npz, set_model, shared_file, write_params
from medmnist_pipeline.config.train import OptimizerParams, ScheduleParams
from medmnist_pipeline.data.datamodule import as_tensors
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.metrics import official_acc, official_auc
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.models.networks import LogReg
from medmnist_pipeline.stages import augment, baseline, download, train
from medmnist_pipeline.training.callbacks import LossGuard
from medmnist_pipeline.training.classifier import build_optimization

TINY_CONVNET = {
    "name": "convnet",
    "filters": 8,
    "kernel_size": 3,
    "convs_per_block": 1,
    "blocks": 2,
    "fc_layers": 1,
    "fc_width": 16,
    "dropout": 0.1,
}


def tiny(params: dict[str, Any], epochs: int = 2, copies: int = 1) -> dict[str, Any]:
    """Small, fast settings on top of the repository's params.yaml."""
    params["augment"]["copies"] = copies
    params["tracking"]["experiment"] = f"test-{uuid.uuid4().hex[:8]}"
    for section in ("baseline", "train"):
        params[section]["max_epochs"] = epochs
        params[section]["batch_size"] = 32
        params[section]["trainer"]["accelerator"] = "cpu"
        # fp32: the exported model (predicting in fp32) must reproduce the validation metrics logged in training,
        # which bf16 (train's default since issue 12) computes under autocast
        params[section]["trainer"]["precision"] = 32
    params["train"]["model"].update(TINY_CONVNET)
    params["train"]["schedule"]["warmup_epochs"] = 0
    return params


def use_custom(params: dict[str, Any], source: Path, task: str, labels: list[str]) -> None:
    params["data"]["flag"] = "custom"
    params["data"]["custom"] = {"path": str(source), "task": task, "labels": labels}


def prepare(workdir: Path, params: dict[str, Any]) -> None:
    write_params(workdir / "params.yaml", params)
    download.main("params.yaml")
    augment.main("params.yaml")


def runs(params: dict[str, Any], stage: str) -> list:
    return mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]],
        filter_string=f"tags.stage = '{stage}'",
        output_format="list",
    )


TASKS = [
    ("binary-class", ["no", "yes"], 1),
    ("multi-class", ["a", "b", "c", "d"], 3),
    ("multi-label, binary-class", [f"l{i}" for i in range(14)], 1),
    ("ordinal-regression", ["0", "1", "2", "3", "4"], 1),
]


@pytest.mark.parametrize(("task", "labels", "channels"), TASKS, ids=[t[0] for t in TASKS])
def test_train_stage_on_every_task_type(workdir: Path, repo_params: dict, task: str, labels: list, channels: int):
    source = make_npz(workdir / "data.npz", task=task, n_labels=len(labels), channels=channels, counts=(96, 48, 8))
    params = tiny(repo_params)
    use_custom(params, source, task, labels)
    prepare(workdir, params)

    train.main("params.yaml")

    metrics = json.loads((workdir / "reports/train/metrics.json").read_text())
    assert set(metrics["val"]) == {"acc", "auc", "loss"} and "test" not in json.dumps(metrics)
    history = pd.read_csv(workdir / "reports/train/history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"train_loss", "val_loss", "train_acc", "val_acc", "train_auc", "val_auc", "lr"} <= set(history.columns)
    assert (workdir / "reports/train/curves.png").stat().st_size > 1000
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())

    # The exported model loads with weights_only=True and reproduces the reported validation metrics.
    exported = ModelFile.load(workdir / "models/cnn.ckpt")
    assert exported.labels == tuple(labels) and exported.task == task
    val_x, val_y = np.load(workdir / "data/prepared/val_images.npy"), np.load(workdir / "data/prepared/val_labels.npy")
    scores = exported.predict(as_tensors(val_x, val_y, False)[0])
    assert official_acc(val_y, scores, task) == pytest.approx(metrics["val"]["acc"], abs=1e-6)
    assert official_auc(val_y, scores, task) == pytest.approx(metrics["val"]["auc"], abs=1e-5)

    (run,) = runs(params, "train")
    assert run.info.status == "FINISHED" and run.data.params["train.model.name"] == "convnet"
    client = mlflow.MlflowClient()
    assert len(client.get_metric_history(run.info.run_id, "val/auc")) == 2  # one value per epoch
    assert "train/initial_loss_expected" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"checkpoint", "train"} <= artifacts
    # MLflow 3 keeps models as LoggedModel entities linked to their run
    (model,) = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        output_format="list",
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    probabilities = (
        mlflow.pyfunc.load_model(model.model_uri).predict(val_x[:3, None].astype(np.float32))
        if val_x.ndim == 3
        else mlflow.pyfunc.load_model(model.model_uri).predict(val_x[:3].transpose(0, 3, 1, 2).astype(np.float32))
    )
    np.testing.assert_allclose(probabilities, scores[:3], atol=1e-5)


def test_same_params_same_metrics_and_the_baseline(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", counts=(128, 64, 8))
    params = tiny(repo_params, epochs=3)
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)
    train.main("params.yaml")
    first = (workdir / "reports/train/metrics.json").read_text()
    first_history = pd.read_csv(workdir / "reports/train/history.csv")
    train.main("params.yaml")
    again = pd.read_csv(workdir / "reports/train/history.csv")
    pd.testing.assert_frame_equal(first_history, again)
    assert json.loads(first)["val"] == json.loads((workdir / "reports/train/metrics.json").read_text())["val"]

    baseline.main("params.yaml")
    assert ModelFile.load(workdir / "models/baseline.ckpt").model.model_dump() == {"name": "logreg"}
    (run,) = runs(params, "baseline")  # logreg reads no other model key, and none is logged
    assert [k for k in run.data.params if k.startswith("baseline.model.")] == ["baseline.model.name"]
    assert json.loads((workdir / "reports/baseline/metrics.json").read_text())["val"]["auc"] > 0.9


# two processes, one resumed from a checkpoint: pandas' default float tolerance, stated (a lost step moves far more)
RESUME_RTOL, RESUME_ATOL = 1e-5, 1e-8


def start_train_cli(workdir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "medmnist_pipeline", "train"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_train_cli(workdir: Path) -> str:
    process = start_train_cli(workdir)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def test_sigkilled_training_resumes_to_the_same_result(tmp_path: Path, repo_params: dict) -> None:
    source = make_npz(tmp_path / "data.npz", size=28, counts=(1500, 200, 8))
    params = tiny(repo_params, epochs=5)
    params["train"]["model"].update({"filters": 16, "blocks": 3})
    use_custom(params, source, "binary-class", ["no", "yes"])
    results = {}
    for name in ("uninterrupted", "killed"):
        workdir = tmp_path / name
        workdir.mkdir()
        cwd = Path.cwd()
        os.chdir(workdir)
        try:
            prepare(workdir, params)
        finally:
            os.chdir(cwd)
        if name == "killed":
            process = start_train_cli(workdir)
            deadline = time.time() + 300
            while not list(workdir.glob("checkpoints/train-*/last.ckpt")) and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert list(workdir.glob("checkpoints/train-*/last.ckpt")), "no checkpoint before the kill"
            assert not (workdir / "models/cnn.ckpt").exists()
            assert "resuming the interrupted run" in run_train_cli(workdir)
        else:
            run_train_cli(workdir)
        results[name] = pd.read_csv(workdir / "reports/train/history.csv")
    pd.testing.assert_frame_equal(
        results["uninterrupted"], results["killed"], check_exact=False, rtol=RESUME_RTOL, atol=RESUME_ATOL
    )
    (run,) = runs(params, "train")[:1]  # the resumed run continued the killed run's MLflow run
    assert len(runs(params, "train")) == 2 and run.info.status == "FINISHED"


def test_two_process_ddp_on_cpu_logs_one_run_with_correct_metrics(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", counts=(128, 50, 8))  # 50: uneven shards of the validation split
    params = tiny(repo_params)
    params["train"]["trainer"].update({"devices": 2, "strategy": "ddp_fork", "deterministic": False})
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)

    train.main("params.yaml")

    (run,) = runs(params, "train")
    metrics = json.loads((workdir / "reports/train/metrics.json").read_text())
    exported = ModelFile.load(workdir / "models/cnn.ckpt")
    val_x, val_y = np.load(workdir / "data/prepared/val_images.npy"), np.load(workdir / "data/prepared/val_labels.npy")
    scores = exported.predict(as_tensors(val_x, val_y, False)[0])
    # every validation image counted exactly once across the two ranks
    assert official_auc(val_y, scores, "binary-class") == pytest.approx(metrics["val"]["auc"], abs=1e-5)
    assert run.data.metrics["best/val_auc"] == pytest.approx(metrics["val"]["auc"])


def test_divergence_stops_with_advice_and_no_model(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", counts=(64, 16, 8))
    params = tiny(repo_params)
    params["train"]["optimizer"].update({"name": "sgd", "lr": 10.0, "momentum": 0.9})
    params["train"]["gradient_clip"] = 0.0
    set_model(params, name="logreg")
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)
    with pytest.raises(
        PipelineError,
        match=r"(diverged in epoch \d+.*Lower the learning rate \(optimizer.lr is 10;"
        r" try 1\))|(loss exploded in epoch)",
    ):
        train.main("params.yaml")
    assert not (workdir / "models/cnn.ckpt").exists()
    (run,) = runs(params, "train")
    assert run.info.status == "FAILED"


def test_loss_guard_stops_an_explosion() -> None:
    class Trainer:
        callback_metrics = {"train/loss": torch.tensor(0.7)}
        current_epoch = 0

    class Module:
        optimizer_params = OptimizerParams(name="adam", lr=0.5, weight_decay=0.0, momentum=0.0, nesterov=False)

    guard = LossGuard()
    guard.on_train_epoch_end(Trainer(), Module())
    Trainer.callback_metrics, Trainer.current_epoch = {"train/loss": torch.tensor(2.0)}, 1
    guard.on_train_epoch_end(Trainer(), Module())  # 2.0 < 3 x 0.7: fine
    Trainer.callback_metrics, Trainer.current_epoch = {"train/loss": torch.tensor(2.2)}, 2
    with pytest.raises(PipelineError, match=r"exploded in epoch 2: 2.2 is more than 3x the first epoch's 0.7"):
        guard.on_train_epoch_end(Trainer(), Module())


def test_schedules() -> None:
    net = LogReg(2, 1, 2)  # the head is nn.Linear(2, 2), the backbone has no parameters
    opt = OptimizerParams(name="sgd", lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False)

    def lrs(schedule: dict) -> list[float]:
        section = ScheduleParams(**{"factor": 0.1, "patience": 0, "warmup_epochs": 0, **schedule})
        built = build_optimization(net, 1.0, opt, section, 4, 40)
        optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
        out = []
        for _ in range(40):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    multistep = lrs({"name": "multistep"})  # x0.1 at 50 % and 75 % of the steps: the MedMNIST protocol
    assert multistep[19] == 1.0 and multistep[20] == pytest.approx(0.1) and multistep[30] == pytest.approx(0.01)
    cosine = lrs({"name": "cosine", "warmup_epochs": 1})
    assert cosine[0] == pytest.approx(0.01) and max(cosine) == pytest.approx(1.0, abs=0.01) and cosine[-1] < 0.01
    onecycle = lrs({"name": "onecycle"})
    assert onecycle[0] < 0.1 and max(onecycle) == pytest.approx(1.0, abs=0.01)
    assert lrs({"name": "none"}) == [1.0] * 40


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"precision": "16-mixed", "accelerator": "cpu"}, "16-mixed needs a GPU"),
        ({"accelerator": "gpu"}, "this machine has 0 CUDA device"),
        ({"devices": 2, "accelerator": "cpu"}, "choose ddp, ddp_spawn or ddp_fork"),
    ],
)
def test_impossible_trainer_settings_fail_clearly(workdir: Path, repo_params: dict, change: dict, message: str):
    if change.get("accelerator") == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    source = make_npz(workdir / "data.npz", counts=(32, 16, 8))
    params = tiny(repo_params)
    params["train"]["trainer"].update(change)
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)
    with pytest.raises(PipelineError, match=message):
        train.main("params.yaml")


def test_transfer_learning_replaces_the_head_and_freezes_the_backbone(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "two.npz", counts=(64, 32, 8))
    params = tiny(repo_params)
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)
    train.main("params.yaml")
    (workdir / "models/cnn.ckpt").rename(workdir / "pretrained.ckpt")
    pretrained = ModelFile.load(workdir / "pretrained.ckpt").state_dict

    three = make_npz(workdir / "three.npz", task="multi-class", n_labels=3, counts=(64, 32, 8))
    use_custom(params, three, "multi-class", ["a", "b", "c"])
    params["train"]["model"].update({"init_from": str(workdir / "pretrained.ckpt"), "freeze": "backbone"})
    prepare(workdir, params)
    train.main("params.yaml")
    tuned = ModelFile.load(workdir / "models/cnn.ckpt").state_dict
    assert tuned["head.weight"].shape[0] == 3
    backbone = [k for k in pretrained if not k.startswith("head.")]  # BatchNorm statistics stay frozen too
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(pretrained[k], tuned[k]) for k in backbone)


def test_diagnostics_and_overfit_batches(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", counts=(64, 32, 8))
    params = tiny(repo_params)
    params["train"]["diagnostics"] = True
    params["train"]["overfit_batches"] = 1
    use_custom(params, source, "binary-class", ["no", "yes"])
    prepare(workdir, params)
    train.main("params.yaml")
    (run,) = runs(params, "train")
    assert "diag/grad_norm" in run.data.metrics
    dead = [k for k in run.data.metrics if k.startswith("diag/dead_relu/")]
    assert dead and all(0.0 <= run.data.metrics[k] <= 1.0 for k in dead)


def test_only_evaluate_may_open_the_test_split(workdir: Path, repo_params: dict) -> None:
    """Runs augment, baseline and train in one process that records every file it opens."""
    source = make_npz(workdir / "data.npz", counts=(64, 32, 8))
    params = tiny(repo_params, epochs=1)
    use_custom(params, source, "binary-class", ["no", "yes"])
    write_params(workdir / "params.yaml", params)
    download.main("params.yaml")
    code = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
from medmnist_pipeline.cli import main
for stage in ("augment", "baseline", "train"):
    assert main([stage]) == 0, stage
print("OPENED-TEST:", [p for p in opened if "test_images" in p or "test_labels" in p])
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OPENED-TEST: []" in result.stdout


def test_baseline_matches_scikit_learn_logistic_regression(workdir: Path, repo_params: dict, monkeypatch) -> None:
    """On real PneumoniaMNIST the Lightning logreg lands within 1 point (validation accuracy) of scikit-learn's."""
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("MEDMNIST_MIRROR", str(shared_file("pneumoniamnist.npz").parent))
    params = tiny(repo_params, epochs=30)
    params["data"]["flag"] = "pneumoniamnist"
    params["baseline"]["batch_size"] = 256
    prepare(workdir, params)
    baseline.main("params.yaml")
    ours = json.loads((workdir / "reports/baseline/metrics.json").read_text())["val"]["acc"]

    def features(split: str) -> tuple[np.ndarray, np.ndarray]:
        x = np.load(workdir / f"data/prepared/{split}_images.npy").reshape(-1, 784) / 127.5 - 1.0
        return x, np.load(workdir / f"data/prepared/{split}_labels.npy")[:, 0]

    (x, y), (vx, vy) = features("train"), features("val")
    n = len(x)
    # Same penalty: torch's Adam weight_decay wd adds wd/2 |w|^2 to the mean loss, sklearn's C gives |w|^2/(2 C n).
    reference = LogisticRegression(C=1 / (params["baseline"]["optimizer"]["weight_decay"] * n), max_iter=5000)
    theirs = reference.fit(x, y).score(vx, vy)
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
