"""Refactors must not change results: a tiny baseline and train run on fixed synthetic data gives the per-epoch
metrics recorded before the training core was split by role (issue 9), and a model file written by that version
still loads and predicts the same.

To record new references after an intended change of results: ``RECORD_REFERENCE=1 pytest tests/test_same_metrics.py``
(and say why in the commit message). Recorded since: the train reference, when augmented copies became seeded per
image (issue 10; the baseline, which sees no copies, is unchanged). ``model-v1-convnet.ckpt`` was written by the
version before issue 9 and is never re-recorded: it is what old files look like. ``model-v2-{logreg,convnet}.ckpt``
were written by the last version with the flat model section (tests/fixtures/README.md says how), with the
probabilities that version predicted for ``model-v1-convnet-images.npy`` (``model-v2-predictions.npz``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers import make_npz, write_params
from medmnist_pipeline.config.train import MODEL_KEYS
from medmnist_pipeline.stages import augment, baseline, download, train

FIXTURES = Path(__file__).parent / "fixtures"
RECORD = os.environ.get("RECORD_REFERENCE") == "1"


def tiny_params(repo_params: dict, source: Path) -> dict:
    params = repo_params
    params["seed"] = 7
    params["data"]["flag"] = "custom"
    params["data"]["custom"] = {"path": str(source), "task": "multi-class", "labels": ["a", "b", "c"]}
    params["augment"]["copies"] = 2
    params["tracking"]["experiment"] = f"same-metrics-{uuid.uuid4().hex[:8]}"
    for section in ("baseline", "train"):
        params[section]["max_epochs"] = 3
        params[section]["batch_size"] = 32
        params[section]["trainer"]["accelerator"] = "cpu"
        params[section]["trainer"]["precision"] = 32  # as recorded (the defaults may change; these runs must not)
        params[section]["early_stopping_patience"] = 0
    params["train"]["model"].update(
        {"filters": 8, "kernel_size": 3, "convs_per_block": 1, "blocks": 2, "fc_layers": 1, "fc_width": 16}
    )
    params["train"]["batch_augment"] = {"flip": True, "translate": 2}  # the on-device augmentation path too
    params["train"]["diagnostics"] = True
    return params


def test_tiny_runs_give_the_recorded_metrics(workdir: Path, repo_params: dict) -> None:
    source = make_npz(workdir / "data.npz", task="multi-class", n_labels=3, counts=(120, 48, 12), seed=3)
    write_params(workdir / "params.yaml", tiny_params(repo_params, source))
    for stage in (download, augment, baseline, train):
        stage.main("params.yaml")
    for name in ("baseline", "train"):
        history = pd.read_csv(workdir / f"reports/{name}/history.csv")
        reference = FIXTURES / f"same_metrics_{name}_history.csv"
        if RECORD:
            history.to_csv(reference, index=False)
        expected = pd.read_csv(reference)
        columns = [c for c in expected.columns if c.startswith(("train_", "val_")) or c in ("epoch", "lr")]
        pd.testing.assert_frame_equal(history[columns], expected[columns], rtol=1e-5, atol=1e-6)


def test_a_model_file_of_the_first_format_still_loads_and_predicts(tmp_path: Path) -> None:
    from medmnist_pipeline.models.modelfile import ModelFile

    model = ModelFile.load(FIXTURES / "model-v1-convnet.ckpt")
    assert model.labels == ("a", "b", "c") and model.task == "multi-class" and model.image_size == 28
    assert model.model.name == "convnet" and model.dataset.flag == "custom" and len(model.history) == 3
    images = torch.from_numpy(np.load(FIXTURES / "model-v1-convnet-images.npy"))[:, None]
    scores = model.predict(images)
    assert scores.shape == (8, 3) and np.allclose(scores.sum(1), 1, atol=1e-5)
    # written again in the current format, it loads to the same model (weights_only=True all along)
    model.save(tmp_path / "again.ckpt")
    again = ModelFile.load(tmp_path / "again.ckpt")
    np.testing.assert_array_equal(again.predict(images), scores)
    assert torch.load(tmp_path / "again.ckpt", weights_only=True)["format"] == "medmnist-pipeline/model-v4"
    assert set(again.model.model_dump()) == set(MODEL_KEYS["convnet"])


def test_a_model_file_with_the_flat_model_section_loads_as_its_architecture_and_predicts_the_same(
    tmp_path: Path,
) -> None:
    """model-v2 files hold every architecture's keys in one dict (a logreg's filters: 32, a convnet's
    pretrained: imagenet); they load as their own architecture's section, the others dropped, and predict what the
    version that wrote them predicted."""
    from medmnist_pipeline.models.modelfile import ModelFile

    images = torch.from_numpy(np.load(FIXTURES / "model-v1-convnet-images.npy"))[:, None]
    recorded = np.load(FIXTURES / "model-v2-predictions.npz")
    for name in ("logreg", "convnet"):
        path = FIXTURES / f"model-v2-{name}.ckpt"
        stored = torch.load(path, weights_only=True)
        assert stored["format"] == "medmnist-pipeline/model-v2" and "stem" in stored["model"]  # the flat section
        model = ModelFile.load(path)
        assert model.model.name == name and tuple(model.model.model_dump()) == MODEL_KEYS[name]
        assert {k: v for k, v in stored["model"].items() if k in MODEL_KEYS[name]} == model.model.model_dump()
        assert model.labels == ("a", "b", "c") and len(model.history) == 2
        np.testing.assert_allclose(model.predict(images), recorded[name], rtol=0, atol=1e-6)
        model.save(tmp_path / f"{name}.ckpt")
        again = ModelFile.load(tmp_path / f"{name}.ckpt")
        assert again.model == model.model
        np.testing.assert_array_equal(again.predict(images), model.predict(images))
    assert ModelFile.load(FIXTURES / "model-v2-logreg.ckpt").model.model_dump() == {"name": "logreg"}
