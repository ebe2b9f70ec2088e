"""``medmnist-pipeline predict`` on real files: a tiny model trained by the train stage, PNG/JPEG files written
with Pillow (grey, RGB, RGBA, palette, 16-bit; several sizes), folders, npz files, ``--out``, MLflow ``runs:/`` and
``models:/name@alias`` URIs, and the errors a user can act on."""

from __future__ import annotations

import argparse
import csv
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import REPO, make_npz, model_params, write_params
from medmnist_pipeline import cli
from medmnist_pipeline.metadata import MULTI_LABEL
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.modelfile import DatasetRef, ModelFile
from medmnist_pipeline.predict.model import tracking_store
from test_training import prepare, tiny, use_custom

LABELS = ["a", "b", "c"]
# CSV probabilities have 6 decimals, and batched float32 differs in the last bits between batch sizes or compositions
CSV_ATOL = 2e-6


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_store: str) -> dict:
    """A grey 28 px multi-class convnet trained by the train stage (2 epochs, 96 images), and its MLflow run."""
    root = tmp_path_factory.mktemp("project")
    params = tiny(yaml.safe_load((REPO / "params.yaml").read_text()))
    use_custom(
        params, make_npz(root / "data.npz", task="multi-class", n_labels=3, counts=(96, 32, 12)), "multi-class", LABELS
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        prepare(root, params)
        from medmnist_pipeline.stages import train

        train.main("params.yaml")
    (run,) = mlflow.search_runs(
        experiment_names=[params["tracking"]["experiment"]], output_format="list", filter_string="tags.stage = 'train'"
    )
    return {"root": root, "model": root / "models/cnn.ckpt", "run_id": run.info.run_id, "data": root / "data.npz"}


@pytest.fixture(scope="module")
def rgb_multilabel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An (untrained) RGB 32 px multi-label convnet in the exported-model format, with a bias that makes the
    first label certain and the last impossible, so the ';'-joined prediction is known."""
    torch.manual_seed(0)
    section = model_params(
        name="convnet", filters=4, kernel_size=3, convs_per_block=1, blocks=1, fc_layers=0, fc_width=8, dropout=0.0
    )
    net = build_model(section, 3, 4, 32)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(0.01)
        last.bias.copy_(torch.tensor([20.0, 0.0, 0.0, -20.0]))
    path = tmp_path_factory.mktemp("rgb") / "rgb.ckpt"
    ModelFile.from_network(
        net,
        model=section,
        task=MULTI_LABEL,
        labels=("w", "x", "y", "z"),
        in_channels=3,
        image_size=32,
        dataset=DatasetRef("custom", 32, "0" * 32),
        val={},
        mlflow_run_id=None,
        history=(),
    ).save(path)
    return path


def predict(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(text: str) -> tuple[list[str], list[list[str]]]:
    header, *body = list(csv.reader(io.StringIO(text)))
    return header, body


def probabilities(body: list[list[str]]) -> np.ndarray:
    return np.array([[float(v) for v in row[2:]] for row in body])


def expected_scores(model_path: Path, pixels: list[np.ndarray]) -> np.ndarray:
    """predict_scores of the exported model on uint8 (C, H, W) pixels prepared independently of the predict package."""
    return ModelFile.load(model_path).predict(torch.from_numpy(np.stack(pixels)))


def as_model_input(image: Image.Image, mode: str, size: int) -> np.ndarray:
    image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def write_images(folder: Path) -> dict[str, Image.Image]:
    """Grey and colour PNG/JPEG files of several sizes and modes; returns the images as decoded from disk."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def grey(h: int, w: int, level: float) -> np.ndarray:
        return np.clip(rng.normal(level, 25, (h, w)), 0, 255).astype(np.uint8)

    images = {
        "grey28.png": Image.fromarray(grey(28, 28, 70)),
        "grey50.jpg": Image.fromarray(grey(50, 50, 170)),
        "rgb40x30.png": Image.fromarray(np.stack([grey(30, 40, 120)] * 2 + [grey(30, 40, 60)], axis=-1)),
        "rgba64.png": Image.fromarray(rng.integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA"),
        "palette28.png": Image.fromarray(grey(28, 28, 120)).convert("P"),
        "grey16bit.png": Image.fromarray(grey(28, 28, 100).astype(np.uint16) * 257),
    }
    for name, image in images.items():
        image.save(folder / name)
    (folder / "notes.txt").write_text("not an image; folders skip it")
    return {name: Image.open(folder / name) for name in images}


def test_files_folder_and_out_match_predict_scores(trained: dict, tmp_path: Path, capsys) -> None:
    decoded = write_images(tmp_path / "imgs")
    files = [tmp_path / "imgs" / name for name in decoded]
    code, out, err = predict(capsys, "--model", trained["model"], *files)
    assert code == 0, err
    header, body = rows(out)
    assert header == ["file", "predicted", "p_a", "p_b", "p_c"]
    assert [row[0] for row in body] == [str(f) for f in files]
    p = probabilities(body)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [row[1] for row in body] == [LABELS[i] for i in p.argmax(axis=1)]

    def pixels(name: str, image: Image.Image) -> np.ndarray:
        if name == "grey16bit.png":  # 16-bit grey is scaled to 8 bits (/257), not clipped
            image = Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8))
        return as_model_input(image, "L", 28)

    expected = expected_scores(trained["model"], [pixels(n, im) for n, im in decoded.items()])
    np.testing.assert_allclose(p, expected, atol=CSV_ATOL)
    assert "resized 3 of 6 images to the model's 28x28 px (bicubic); 1 were not square" in err
    assert "converted 3 of 6 colour images to greyscale" in err  # RGB, RGBA, palette

    # A folder: its PNG/JPEG files in name order, other files skipped; the same numbers as file by file.
    code, folder_out, _ = predict(capsys, "--model", trained["model"], tmp_path / "imgs")
    assert code == 0
    by_name = {row[0]: row for row in body}
    in_folder = rows(folder_out)[1]  # the same images in another order: other batches
    assert [row[0] for row in in_folder] == sorted(by_name)
    assert [row[1] for row in in_folder] == [by_name[row[0]][1] for row in in_folder]
    np.testing.assert_allclose(
        probabilities(in_folder), probabilities([by_name[row[0]] for row in in_folder]), atol=CSV_ATOL, rtol=0
    )

    # --out: the same CSV in a file (parent folders created), nothing on stdout; the same images in the same batches
    # as above, so the very same text.
    code, stdout, err = predict(capsys, "--model", trained["model"], "--out", tmp_path / "o/preds.csv", *files)
    assert code == 0 and stdout == "" and "-> " in err
    assert (tmp_path / "o/preds.csv").read_text() == out


def test_large_npz_is_memory_mapped_or_streamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medmnist_pipeline.predict import inputs
    from medmnist_pipeline.predict.inputs import StreamedMember, _open_member

    monkeypatch.setattr(inputs, "STREAM_CHUNK_BYTES", 2 * 28 * 28)  # chunks of 2 images: 3 chunks, and restarts

    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    np.savez(tmp_path / "stored.npz", test_images=images)
    np.savez_compressed(tmp_path / "packed.npz", test_images=images)
    stored, packed = (
        _open_member(tmp_path / "stored.npz", "test_images"),
        _open_member(tmp_path / "packed.npz", "test_images"),
    )
    assert isinstance(stored, np.memmap) and isinstance(packed, StreamedMember)
    assert np.array_equal(stored, images)
    order = [0, 1, 2, 3, 4, 2, 0, 4]  # forward, then back: the stream restarts from the beginning
    assert all(np.array_equal(packed[i], images[i]) for i in order)


def test_npz_inputs(trained: dict, tmp_path: Path, capsys) -> None:
    # MedMNIST layout: test_images is read; the same pixels give predict_scores' numbers.
    source = trained["data"]
    test_images = np.load(source)["test_images"]
    code, out, err = predict(capsys, "--model", trained["model"], "--batch-size", "5", source)
    assert code == 0, err
    _, body = rows(out)
    assert [row[0] for row in body] == [f"{source}[{i}]" for i in range(len(test_images))]
    expected = expected_scores(trained["model"], list(test_images[:, None]))
    np.testing.assert_allclose(probabilities(body), expected, atol=CSV_ATOL)
    assert "note" not in err  # already the model's size and channels

    # Channels first, (N, 1, H, W), as torch code saves them: the same numbers.
    np.savez(tmp_path / "nchw.npz", test_images=test_images[:, None])
    code, nchw, _ = predict(capsys, "--model", trained["model"], tmp_path / "nchw.npz")  # batches of 256, not 5
    assert code == 0 and [r[1] for r in rows(nchw)[1]] == [r[1] for r in body]
    np.testing.assert_allclose(probabilities(rows(nchw)[1]), probabilities(body), atol=CSV_ATOL, rtol=0)

    # A plain npz with one RGB (N, H, W, 3) array of another size: converted like image files.
    rgb = np.random.default_rng(1).integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    np.savez(tmp_path / "plain.npz", rgb)
    code, out, err = predict(capsys, "--model", trained["model"], tmp_path / "plain.npz")
    assert code == 0, err
    expected = expected_scores(trained["model"], [as_model_input(Image.fromarray(x), "L", 28) for x in rgb])
    np.testing.assert_allclose(probabilities(rows(out)[1]), expected, atol=CSV_ATOL)
    assert "resized 4 of 4" in err and "converted 4 of 4 colour images" in err


def test_multi_label_rgb_model_joins_labels_and_repeats_grey_channels(
    rgb_multilabel: Path, tmp_path: Path, capsys
) -> None:
    grey = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32), dtype=np.uint8))
    grey.save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((20, 20, 3), np.uint8) + 90).save(tmp_path / "rgb.jpg")
    code, out, err = predict(capsys, "--model", rgb_multilabel, tmp_path / "grey.png", tmp_path / "rgb.jpg")
    assert code == 0, err
    header, body = rows(out)
    assert header == ["file", "predicted", "p_w", "p_x", "p_y", "p_z"]
    p = probabilities(body)
    for row, probs in zip(body, p, strict=True):
        assert row[1] == ";".join(label for label, v in zip("wxyz", probs, strict=True) if v > 0.5)
        assert row[1].startswith("w") and "z" not in row[1]
    expected = expected_scores(
        rgb_multilabel, [as_model_input(grey, "RGB", 32), as_model_input(Image.open(tmp_path / "rgb.jpg"), "RGB", 32)]
    )
    np.testing.assert_allclose(p, expected, atol=CSV_ATOL)
    assert "repeated 1 of 2 greyscale images on 3 channels" in err and "resized 1 of 2" in err


def test_mlflow_run_and_registered_model_uris(trained: dict, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "x.png")
    Image.fromarray(np.full((36, 36, 3), 40, np.uint8)).save(tmp_path / "y.jpg")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "z.png")
    images = [tmp_path / "x.png", tmp_path / "y.jpg", tmp_path / "z.png"]
    _, from_file, _ = predict(capsys, "--model", trained["model"], *images)

    uri = f"runs:/{trained['run_id']}/model"
    code, from_run, err = predict(capsys, "--model", uri, "--batch-size", "2", *images)  # batches of 2 and 1
    assert code == 0, err
    assert rows(from_run)[0] == rows(from_file)[0]
    np.testing.assert_allclose(probabilities(rows(from_run)[1]), probabilities(rows(from_file)[1]), atol=CSV_ATOL)

    name = f"predict-test-{uuid.uuid4().hex[:6]}"
    version = mlflow.register_model(uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version.version)
    code, from_registry, err = predict(capsys, "--model", f"models:/{name}@champion", *images)
    assert code == 0, err
    assert [r[:2] for r in rows(from_registry)[1]] == [r[:2] for r in rows(from_file)[1]]
    np.testing.assert_allclose(probabilities(rows(from_registry)[1]), probabilities(rows(from_file)[1]), atol=CSV_ATOL)

    for missing in (f"models:/{name}@nope", "runs:/0123456789abcdef0123456789abcdef/model"):
        code, out, err = predict(capsys, "--model", missing, *images)
        assert code == 1 and out == "" and f"{missing}: cannot load this MLflow model" in err


def test_tracking_store_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / ".dvc").mkdir()
    assert tracking_store(None) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"  # no params.yaml: the default
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "a.png")
    code, out, err = predict(capsys, "--model", "runs:/0123/model", "a.png")
    assert (code, out) == (1, "") and f"no MLflow store at {tmp_path.resolve() / 'mlflow.db'}" in err
    assert not (tmp_path / "mlflow.db").exists()  # not created by looking
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["tracking"]["uri"] = "http://mlflow.example:5000"
    params["augment"]["copies"] = "not checked: predict reads the tracking section only"
    write_params(tmp_path / "params.yaml", params)
    assert tracking_store(None) == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_store(None) == "sqlite:///elsewhere.db"


def lying_npz(path: Path, shape: tuple[int, ...], array: np.ndarray) -> None:
    """An npz whose test_images header claims ``shape`` while its data is ``array``'s."""
    import io
    import zipfile

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("test_images.npy", buffer.getvalue() + array.tobytes())


def bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (IMAGES arguments, expected message fragment)."""
    (tmp / "notes.txt").write_text("hello")
    (tmp / "fake.png").write_text("not really a png")
    (tmp / "empty").mkdir()
    good = np.zeros((2, 28, 28), np.uint8)
    np.savez(tmp / "keys.npz", train_images=good, val_images=good)
    np.savez(tmp / "float.npz", test_images=good.astype(np.float32))
    np.savez(tmp / "rank.npz", test_images=np.zeros((2, 784), np.uint8))
    np.save(tmp / "array.npy", good)
    os.replace(tmp / "array.npy", tmp / "array.npz")
    (tmp / "zip.npz").write_text("not a zip")
    Image.fromarray(np.zeros((64, 64), np.uint8) + 7).save(tmp / "full.png")
    (tmp / "truncated.png").write_bytes((tmp / "full.png").read_bytes()[:80])
    lying_npz(tmp / "claims-1e9.npz", (10**9, 28, 28), good)
    lying_npz(tmp / "claims-3.npz", (3, 28, 28), good)  # holds 2 images
    return {
        "header claims 10**9 images": ([str(tmp / "claims-1e9.npz")], "claims shape (1000000000, 28, 28)"),
        "header claims more than it holds": ([str(tmp / "claims-3.npz")], "claims shape (3, 28, 28) (2,352 bytes)"),
        "missing file": ([str(tmp / "nope.png")], "nope.png: no such file or folder"),
        "non-image file": ([str(tmp / "notes.txt")], "notes.txt: not a PNG or JPEG image"),
        "text named .png": ([str(tmp / "fake.png")], "fake.png: not a PNG or JPEG image"),
        "folder without images": ([str(tmp / "empty")], "no PNG or JPEG files in this folder"),
        "npz without test_images": ([str(tmp / "keys.npz")], "or exactly one array; found train_images, val_images"),
        "npz of floats": ([str(tmp / "float.npz")], "float.npz[test_images]: dtype float32; expected uint8"),
        "npz of the wrong rank": ([str(tmp / "rank.npz")], "shape (2, 784); expected images (N, H, W)"),
        "npy named npz": ([str(tmp / "array.npz")], "an .npy array, not an npz archive"),
        "not a zip": ([str(tmp / "zip.npz")], "zip.npz: not a readable npz file"),
        "truncated image": ([str(tmp / "full.png"), str(tmp / "truncated.png")], "truncated.png: cannot decode"),
    }


def test_clear_errors_exit_1_without_output(trained: dict, tmp_path: Path, capsys) -> None:
    for case, (images, message) in bad_inputs(tmp_path).items():
        code, out, err = predict(capsys, "--model", trained["model"], "--out", tmp_path / "out.csv", *images)
        assert (code, out) == (1, ""), case
        error = err.splitlines()[-1]  # after any conversion notes
        assert error.startswith("medmnist-pipeline predict: error: ") and message in error, (case, err)
        assert "Traceback" not in err, case
        assert not (tmp_path / "out.csv").exists() and not list(tmp_path.glob(".out.csv*")), case

    image = tmp_path / "full.png"
    (tmp_path / "model.txt").write_text("weights? no")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    torch.save(
        {"state_dict": argparse.Namespace(code="anything")}, tmp_path / "pickled.ckpt"
    )  # refused by weights_only
    for model, message in [
        (tmp_path / "absent.ckpt", "absent.ckpt: no such model file"),
        (tmp_path / "model.txt", "model.txt: not a model file of this project"),
        (tmp_path / "other.pt", "other.pt: not a model file of this project"),
        (
            tmp_path / "pickled.ckpt",
            "pickled.ckpt: not a model file of this project (it holds Python objects that are not plain tensors); "
            "it was not loaded",
        ),
    ]:
        code, out, err = predict(capsys, "--model", model, image)
        assert (code, out) == (1, "") and message in err, err
        assert len(err.strip().splitlines()) == 1 and "weights_only" not in err, err  # one line, no unsafe advice

    # --out naming a folder: clear error, and no temporary file left beside it
    (tmp_path / "folder.csv").mkdir()
    code, out, err = predict(capsys, "--model", trained["model"], "--out", tmp_path / "folder.csv", image)
    assert (code, out) == (1, "") and "folder.csv: cannot write (is a folder, not a file)" in err, err
    assert not list(tmp_path.glob(".folder.csv*")) and not any((tmp_path / "folder.csv").iterdir())

    code, _, err = predict(capsys, "--model", trained["model"], "--batch-size", "0", image)
    assert code == 1 and "--batch-size must be at least 1" in err


def test_command_line(trained: dict, tmp_path: Path) -> None:
    """The installed entry point: CSV alone on stdout; a bad input is one line on stderr, exit status 1."""
    Image.fromarray(np.full((28, 28), 9, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "b.txt").write_text("text")
    command = [sys.executable, "-m", "medmnist_pipeline", "predict", "--model", str(trained["model"])]

    def run(image: Path) -> subprocess.CompletedProcess:
        return subprocess.run([*command, str(image)], check=False, capture_output=True, text=True, timeout=300)

    done = run(tmp_path / "a.png")
    assert done.returncode == 0, done.stderr
    header, body = rows(done.stdout)
    assert header[:2] == ["file", "predicted"] and len(body) == 1 and body[0][1] in LABELS
    failed = run(tmp_path / "b.txt")
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.strip() == f"medmnist-pipeline predict: error: {tmp_path / 'b.txt'}: not a PNG or JPEG image"
