"""The evaluate stage on synthetic data of every task type (real stages upstream, real MLflow store), its metrics
against an independent recomputation, the reference table, and its params checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import make_npz, params_error, write_params
from medmnist_pipeline.errors import ParamsError, PipelineError
from medmnist_pipeline.evaluation.scoring import reference_rows
from medmnist_pipeline.metadata import DATASETS
from medmnist_pipeline.metrics import official_acc, official_auc
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.stages import baseline, evaluate, train, tune
from test_training import prepare, tiny, use_custom

FILES = [
    "metrics.json",
    "report.md",
    "comparison.csv",
    "per_class.csv",
    "seeds.csv",
    "learning_curves.csv",
    "learning_curves.png",
    "size_curve.csv",
    "size_curve.png",
    "confusion.png",
    "auc_curves.png",
    "reliability.png",
    "coverage.png",
    "worst_errors.png",
    "uncertain_correct.png",
    "paired.csv",
    "robustness.csv",
    "robustness.png",
    "corruption_preview.png",
]


def evaluate_params(params: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    params = tiny(params)
    params["tune"].update(
        {
            "n_trials": 2,
            "timeout_s": None,
            "fixed": {"train.early_stopping_patience": 0},  # (train.max_epochs: 2 already)
            "space": {"train.optimizer.lr": {"float": [1e-3, 1e-2], "log": True}},
        }
    )
    params["evaluate"].update(
        {
            "seeds": seeds,
            "learning_curve": {"fractions": [0.5, 1.0]},
            "bootstrap": {"resamples": 200, "confidence": 0.9},
            # two corruptions at two severities where seeds run (binary case), off elsewhere
            "robustness": {"corruptions": ["brightness_down", "gaussian_noise"] if seeds else [], "severities": [1, 5]},
        }
    )
    return params


def run_upstream(workdir: Path, params: dict[str, Any]) -> None:
    prepare(workdir, params)
    for stage in (baseline, train, tune):
        stage.main("params.yaml")


@pytest.mark.parametrize(
    ("task", "labels", "seeds"),
    [
        ("binary-class", ["benign", "malignant"], [1, 2]),
        ("multi-class", ["a", "b", "c"], []),
        ("multi-label, binary-class", ["x", "y", "z"], []),
        ("ordinal-regression", ["0", "1", "2", "3"], []),
    ],
)
def test_evaluate_writes_every_file_for_every_task(
    workdir: Path, repo_params: dict, task: str, labels: list, seeds: list[int]
) -> None:
    source = make_npz(workdir / "data.npz", task=task, n_labels=len(labels), counts=(96, 48, 40))
    params = evaluate_params(repo_params, seeds)
    use_custom(params, source, task, labels)
    (workdir / ".dvc").mkdir()
    run_upstream(workdir, params)
    evaluate.main("params.yaml")

    out = workdir / "reports/evaluate"
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("baseline", "cnn", "tuned"):
        test = metrics[model]["test"]
        assert set(test) == {"acc", "auc", "acc_ci", "auc_ci"} and set(metrics[model]["val"]) == {"acc", "auc"}
        for name in ("acc", "auc"):
            low, high = test[f"{name}_ci"]
            assert low <= test[name] + 1e-9 and test[name] <= high + 1e-9
    assert ("tuned_seeds" in metrics) == bool(seeds) == ("cnn_seeds" in metrics) == ("tuned ensemble" in metrics)
    seed_table = pd.read_csv(out / "seeds.csv")
    assert len(seed_table) == 2 * len(seeds) and set(seed_table["model"]) == ({"cnn", "tuned"} if seeds else set())
    # the floor: the most frequent training class (counts 96/48/40 -> class 0 of the synthetic data); all-negative
    floor = metrics["majority"]["test"]
    assert floor["auc"] == pytest.approx(0.5)
    paired = pd.read_csv(out / "paired.csv")
    assert {("tuned", "cnn"), ("cnn", "majority")} <= set(zip(paired["a"], paired["b"], strict=True))
    auc_rows = paired[paired["metric"] == "auc"]
    assert auc_rows["p_delong"].notna().all() == (task == "binary-class") and paired["metric"].eq("acc").any()
    report_text = (out / "report.md").read_text()
    assert "### Paired comparisons (same test images)" in report_text and "cannot be told apart" in report_text
    if seeds:  # robustness on
        rob = metrics["robustness"]
        assert set(rob) == {"baseline", "cnn", "tuned", "cnn ensemble", "tuned ensemble"}
        assert set(rob["cnn"]["per_corruption"]) == {"brightness_down", "gaussian_noise"}
        assert len(pd.read_csv(out / "robustness.csv")) == 5 * 2
        assert "## Robustness to MedMNIST-C corruptions" in report_text
    else:
        assert "robustness" not in metrics and "## Robustness" not in report_text
    if seeds:  # metrics.json, comparison.csv and the report share one mean ± sample sd
        summary = metrics["tuned_seeds"]["test"]
        assert summary["auc_sd"] == pytest.approx(seed_table[seed_table["model"] == "tuned"]["test_auc"].std(ddof=1))
        row = pd.read_csv(out / "comparison.csv").set_index("model").loc[f"tuned, {len(seeds)} seeds (mean ± sd)"]
        assert row["test_auc_ci"] == f"± {summary['auc_sd']:.3f}"
        assert f"{summary['auc']:.3f} ± {summary['auc_sd']:.3f}" in (out / "report.md").read_text()

    # The test metrics equal an independent recomputation from the model file and the raw npz.
    raw = np.load(source, allow_pickle=False)
    exported = ModelFile.load(workdir / "models/tuned.ckpt")
    images = raw["test_images"][:, None]  # grey (N, 1, H, W)
    import torch

    scores = exported.predict(torch.from_numpy(images))
    assert metrics["tuned"]["test"]["auc"] == pytest.approx(official_auc(raw["test_labels"], scores, task))
    assert metrics["tuned"]["test"]["acc"] == pytest.approx(official_acc(raw["test_labels"], scores, task))

    size = pd.read_csv(out / "size_curve.csv")
    assert list(size["fraction"]) == [0.5, 1.0] and list(size["n_train"])[-1] == 96
    assert set(pd.read_csv(out / "learning_curves.csv").columns) >= {"epoch", "baseline_val_auc", "tuned_val_auc"}
    report = (out / "report.md").read_text()
    for heading in ("## Comparison", "## Learning curves", "### Training-set size", "## Error analysis"):
        assert heading in report
    robustness_off = {"robustness.png", "corruption_preview.png"} if not seeds else set()
    for figure in [f for f in FILES if f.endswith(".png") and f not in robustness_off]:
        assert f"({figure})" in report, figure
    per_class = pd.read_csv(out / "per_class.csv", dtype={"label": str})
    assert list(per_class["label"]) == labels and {"precision", "recall", "f1", "support"} <= set(per_class.columns)

    evaluate_runs = mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]],
        output_format="list",
        filter_string="tags.stage = 'evaluate'",
    )
    (parent,) = [r for r in evaluate_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in evaluate_runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 1 + 2 * len(seeds)  # fraction 0.5, one run per seed and configuration (cnn, tuned)
    assert not (workdir / "checkpoints/evaluate").exists()  # retrains are kept only until the stage succeeds
    for model in ("baseline", "cnn", "tuned"):
        source_run = mlflow.get_run(parent.data.tags[f"evaluated.{model}.run_id"])  # tags point at real runs
        assert source_run.data.tags["stage"] in ("baseline", "train", "tune")
        assert parent.data.metrics[f"test/auc/{model}"] == pytest.approx(metrics[model]["test"]["auc"])
    artifacts = {Path(a.path).name for a in mlflow.MlflowClient().list_artifacts(parent.info.run_id, "evaluate")}
    assert set(FILES) <= artifacts

    # The model validation picks (AUC, ties by loss) is registered under the dataset's name with alias candidate.
    client = mlflow.MlflowClient()
    (version,) = client.search_model_versions(f"name = 'medmnist-custom-28' and run_id = '{parent.info.run_id}'")
    assert client.get_registered_model("medmnist-custom-28").aliases.get("candidate") == version.version
    pick = parent.data.tags["evaluate.best_model"]
    assert pick == max(("baseline", "cnn", "tuned"), key=lambda m: metrics[m]["val"]["auc"]) or (
        metrics[pick]["val"]["auc"] == max(metrics[m]["val"]["auc"] for m in ("baseline", "cnn", "tuned"))
    )
    assert f"**Validation picks `{pick}`**" in report_text


def test_evaluate_is_reproducible_and_refuses_models_of_other_data(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", counts=(96, 48, 40))
    params = evaluate_params(repo_params, [])
    params["evaluate"]["learning_curve"]["fractions"] = []
    use_custom(params, source, "binary-class", ["no", "yes"])
    (workdir / ".dvc").mkdir()
    run_upstream(workdir, params)
    evaluate.main("params.yaml")
    first = (workdir / "reports/evaluate/metrics.json").read_text()
    assert len(pd.read_csv(workdir / "reports/evaluate/size_curve.csv")) == 0  # switched off, file still there
    evaluate.main("params.yaml")
    assert (workdir / "reports/evaluate/metrics.json").read_text() == first  # bootstrap seeded too

    other = make_npz(workdir / "other.npz", counts=(96, 48, 40), seed=5)
    use_custom(params, other, "binary-class", ["no", "yes"])
    prepare(workdir, params)  # new data, old models
    with pytest.raises(PipelineError, match="models/baseline.ckpt was trained on custom 28px"):
        evaluate.main("params.yaml")


def test_reference_table_holds_the_benchmark_rows_of_every_2d_flag() -> None:
    methods = {
        "ResNet-18 (28)",
        "ResNet-18 (224)",
        "ResNet-50 (28)",
        "ResNet-50 (224)",
        "auto-sklearn",
        "AutoKeras",
        "Google AutoML Vision",
    }
    for flag in DATASETS:
        rows = reference_rows(flag)
        assert set(rows["method"]) == methods, flag
        assert rows[["test_auc", "test_acc"]].stack().between(0, 1).all()
    pneumonia = reference_rows("pneumoniamnist").set_index("method")
    assert tuple(pneumonia.loc["ResNet-18 (28)"]) == (0.944, 0.854)  # Yang et al. 2023, Table 3
    assert reference_rows("custom").empty


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seeds": [1, 1]}, "evaluate.seeds: [1, 1] repeats a seed"),
        ({"learning_curve": {"fractions": [0.5]}}, "evaluate.learning_curve.fractions: a curve needs at least two"),
        ({"learning_curve": {"fractions": [0.0, 1.0]}}, "evaluate.learning_curve.fractions[0]"),
        ({"learning_curve": {"fractions": [0.5, 0.5]}}, "repeats a fraction"),
        ({"bootstrap": {"resamples": 10, "confidence": 0.95}}, "evaluate.bootstrap.resamples"),
        ({"bootstrap": {"resamples": 1000, "confidence": 95}}, "evaluate.bootstrap.confidence"),
        ({"error_analysis": {"gallery": 0, "calibration_bins": 15}}, "evaluate.error_analysis.gallery"),
        (
            {"error_analysis": {"gallery": 12, "calibration_bin": 15}},
            "evaluate.error_analysis.calibration_bin: unknown key",
        ),
        (
            {"robustness": {"corruptions": ["pixelate", "gausian_noise"], "severities": [1]}},
            "evaluate.robustness.corruptions[1]: unknown corruption 'gausian_noise'; did you mean gaussian_noise",
        ),
        (
            {"robustness": {"corruptions": ["pixelate"], "severities": [1, 6]}},
            "evaluate.robustness.severities[1]: severity must be an integer from 1 to 5, got 6",
        ),
        (
            {"robustness": {"corruptions": ["stain_deposit"], "severities": [1]}},
            "evaluate.robustness.corruptions[0]: stain_deposit changes colour and cannot apply to pneumoniamnist's",
        ),
    ],
)
def test_bad_evaluate_params(tmp_path: Path, repo_params: dict, change: dict, message: str) -> None:
    repo_params["evaluate"].update(change)
    assert message in params_error(tmp_path / "params.yaml", repo_params)


def test_evaluate_needs_the_tuned_params(workdir: Path, repo_params: dict) -> None:
    write_params(workdir / "params.yaml", repo_params)
    (workdir / "reports/tune").mkdir(parents=True)
    (workdir / "reports/tune/best_params.yaml").write_text(yaml.safe_dump({"train": {"batch_size": 0}}))
    with pytest.raises(ParamsError, match="train.batch_size"):
        evaluate.main("params.yaml")
