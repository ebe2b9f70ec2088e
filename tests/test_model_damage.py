"""Damaged model files, made for real (a flipped byte inside a tensor's data, truncation, random bytes, a git-lfs
pointer, torch.save'd files with a missing entry, wrong shapes, an invalid model section): each is one line naming
the file and what is wrong, through ``ModelFile.load`` and through ``medmnist-pipeline predict``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import model_params
from medmnist_pipeline import cli
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.modelfile import MODEL_FORMAT, DatasetRef, ModelFile, weights_checksum

FIXTURES = Path(__file__).parent / "fixtures"
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n"
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    section = model_params(
        name="convnet", filters=4, kernel_size=3, convs_per_block=1, blocks=1, fc_layers=1, fc_width=8, dropout=0.0
    )
    path = tmp_path_factory.mktemp("model") / "cnn.ckpt"
    ModelFile.from_network(
        build_model(section, 1, 3, 28),
        model=section,
        task="multi-class",
        labels=("a", "b", "c"),
        in_channels=1,
        image_size=28,
        dataset=DatasetRef("custom", 28, "0" * 32),
        val={"auc": 0.9},
        mlflow_run_id=None,
        history=(),
    ).save(path)
    return path


def largest_tensor_data(path: Path) -> tuple[int, int]:
    """Where the largest tensor's bytes start in the file, and how many there are (torch stores them uncompressed)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert info.compress_type == zipfile.ZIP_STORED
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
    return start, info.file_size


def resaved(saved: Path, path: Path, change) -> Path:
    stored = torch.load(saved, weights_only=True)
    change(stored)
    torch.save(stored, path)
    return path


def damaged_files(saved: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    data = bytearray(saved.read_bytes())
    start, size = largest_tensor_data(saved)
    data[start + size // 2] ^= 0x10
    (tmp / "flipped.ckpt").write_bytes(bytes(data))
    (tmp / "truncated.ckpt").write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    (tmp / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp / "pointer.ckpt").write_text(LFS_POINTER)

    def wider(stored: dict) -> None:
        stored["model"]["filters"] = 8  # valid, but not the network these weights came from

    def invalid(stored: dict) -> None:
        stored["model"]["filters"] = -3

    return {
        "flipped byte": (tmp / "flipped.ckpt", "flipped.ckpt: its weights do not match their checksum (damaged)"),
        "truncated": (tmp / "truncated.ckpt", "truncated.ckpt: a model file, but truncated or damaged"),
        "random bytes": (tmp / "random.ckpt", "random.ckpt: not a model file"),
        "git-lfs pointer": (
            tmp / "pointer.ckpt",
            "pointer.ckpt: a git-lfs pointer, not the model file itself; run `git lfs pull` (or `dvc pull`)",
        ),
        "no model entry": (
            resaved(saved, tmp / "nomodel.ckpt", lambda s: s.pop("model")),
            "nomodel.ckpt: a damaged model file of this project (no 'model' entry)",
        ),
        "wrong shapes": (
            resaved(saved, tmp / "shapes.ckpt", wider),
            "shapes.ckpt: its weights do not fit its model section (",
        ),
        "invalid model section": (
            resaved(saved, tmp / "invalid.ckpt", invalid),
            "invalid.ckpt: an invalid model section (convnet.filters: Input should be greater than or equal to",
        ),
    }


def test_saved_file_carries_a_checksum_and_older_formats_load(saved: Path, tmp_path: Path) -> None:
    stored = torch.load(saved, weights_only=True)
    assert stored["format"] == MODEL_FORMAT == "medmnist-pipeline/model-v4"
    assert stored["weights_sha256"] == weights_checksum(stored["state_dict"])
    assert ModelFile.load(saved).network() is not None

    def as_v3(s: dict) -> None:
        s["format"] = "medmnist-pipeline/model-v3"
        del s["weights_sha256"]

    assert ModelFile.load(resaved(saved, tmp_path / "v3.ckpt", as_v3)).network() is not None
    for name in ("model-v1-convnet.ckpt", "model-v2-convnet.ckpt", "model-v2-logreg.ckpt"):
        assert ModelFile.load(FIXTURES / name).network() is not None  # no checksum to check


def test_each_damage_is_one_line_naming_the_file(saved: Path, tmp_path: Path) -> None:
    for case, (path, message) in damaged_files(saved, tmp_path).items():
        with pytest.raises(PipelineError) as caught:
            ModelFile.load(path).network()
        text = str(caught.value)
        assert message in text and len(text.splitlines()) == 1 and len(text) < 300, (case, text)


def test_predict_refuses_each_damaged_model_in_one_line(saved: Path, tmp_path: Path, capsys) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 50, np.uint8)).save(image)
    assert cli.main(["predict", "--model", str(saved), str(image)]) == 0
    capsys.readouterr()
    for case, (path, message) in damaged_files(saved, tmp_path).items():
        code = cli.main(["predict", "--model", str(path), str(image)])
        out, err = capsys.readouterr()
        assert (code, out) == (1, ""), case
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, (case, err)


def test_flipped_byte_from_a_fresh_process(saved: Path, tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28), 50, np.uint8)).save(image)
    path, message = damaged_files(saved, tmp_path)["flipped byte"]
    done = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", "predict", "--model", str(path), str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert (done.returncode, done.stdout) == (1, "")
    expected = f"{path}: its weights do not match their checksum (damaged); it was not loaded"
    assert done.stderr == f"medmnist-pipeline predict: error: {expected}\n"


def test_evaluate_refuses_a_damaged_model_before_its_run(saved: Path, tmp_path: Path, monkeypatch) -> None:
    """evaluate's load path (``load_models``, called before the stage's MLflow run starts)."""
    from types import SimpleNamespace

    from medmnist_pipeline.evaluation import scoring

    meta = SimpleNamespace(flag="custom", size=28, md5="0" * 32)
    damaged = damaged_files(saved, tmp_path)
    for case in ("flipped byte", "wrong shapes", "no model entry"):
        path, message = damaged[case]
        monkeypatch.setattr(scoring, "MODEL_FILES", {"baseline": saved, "cnn": path, "tuned": saved})
        with pytest.raises(PipelineError) as caught:
            scoring.load_models(meta)
        assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1, (case, caught.value)
    monkeypatch.setattr(scoring, "MODEL_FILES", {"baseline": saved, "cnn": saved, "tuned": saved})
    assert set(scoring.load_models(meta)) == {"baseline", "cnn", "tuned"}
