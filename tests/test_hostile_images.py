"""Hostile images to ``predict``, made for real: PNGs small on disk but of huge dimensions, PNGs whose iCCP or zTXt
chunk inflates past Pillow's limit, a FIFO named x.png, truncated PNG and JPEG files. Each is exit 1, one line on
stderr and nothing on stdout, before the image is decoded where the header tells."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import model_params
from medmnist_pipeline import cli
from medmnist_pipeline.models.build import build_model
from medmnist_pipeline.models.modelfile import DatasetRef, ModelFile
from medmnist_pipeline.predict.inputs import DEFAULT_MAX_PIXELS


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, before: bytes = b"", after: bytes = b"") -> bytes:
    """A valid greyscale PNG of one colour, compressed row by row (a 13000 x 13000 one is about 190 KB)."""
    compressor, row, parts = zlib.compressobj(9), b"\0" + bytes([90]) * width, []
    for _ in range(height):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + before
        + chunk(b"IDAT", b"".join(parts))
        + after
        + chunk(b"IEND", b"")
    )


def inflating(kind: bytes) -> bytes:
    """An iCCP or zTXt chunk whose 8 MB of text compress to 8 KB (Pillow's limit is 1 MB)."""
    return chunk(kind, b"name\0\0" + zlib.compress(b"x" * (8 << 20), 9))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    section = model_params(
        name="convnet", filters=4, kernel_size=3, convs_per_block=1, blocks=1, fc_layers=0, fc_width=8, dropout=0.0
    )
    path = tmp_path_factory.mktemp("model") / "m.ckpt"
    ModelFile.from_network(
        build_model(section, 1, 2, 28),
        model=section,
        task="binary-class",
        labels=("no", "yes"),
        in_channels=1,
        image_size=28,
        dataset=DatasetRef("custom", 28, "0" * 32),
        val={},
        mlflow_run_id=None,
        history=(),
    ).save(path)
    return path


def predict(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = cli.main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    code, out, err = result
    assert (code, out) == (1, ""), err
    assert err.count("\n") == 1 and err.startswith("medmnist-pipeline predict: error: ") and message in err, err


def test_huge_dimensions_are_refused_from_the_header(model: Path, tmp_path: Path, capsys) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(np.full((28, 28), 9, np.uint8)).save(good)
    for side in (13000, 9000):
        path = tmp_path / f"{side}.png"
        path.write_bytes(png(side, side))
        assert path.stat().st_size < 600_000
        started = time.perf_counter()
        assert_refused(
            predict(capsys, "--model", model, good, path),
            f"{side}.png: {side}x{side} px ({side * side / 1e6:.1f} MP) is over the 16 MP limit on an image",
        )
        assert time.perf_counter() - started < 5  # not decoded
    # the budget is an option: a 4500 x 4500 image passes with a higher one and is refused below its size
    path = tmp_path / "4500.png"
    path.write_bytes(png(4500, 4500))
    code, out, err = predict(capsys, "--model", model, "--max-pixels", 30_000_000, path)
    assert code == 0 and out.count("\n") == 2, err
    assert_refused(predict(capsys, "--model", model, "--max-pixels", 1_000_000, path), "over the 1 MP limit")
    assert_refused(predict(capsys, "--model", model, "--max-pixels", 0, path), "--max-pixels must be at least 1")
    # npz images are held to the same budget, from the array's header
    np.savez(tmp_path / "big.npz", np.zeros((1, 2000, 1000), np.uint8))
    assert_refused(predict(capsys, "--model", model, "--max-pixels", 1_000_000, tmp_path / "big.npz"), "(2.0 MP)")
    assert (
        DEFAULT_MAX_PIXELS == 16_000_000 == cli.build_parser().parse_args(["predict", "--model", "m", "x"]).max_pixels
    )


def test_chunks_that_inflate_past_the_limit(model: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "iccp.png").write_bytes(png(28, 28, before=inflating(b"iCCP")))
    (tmp_path / "ztxt.png").write_bytes(png(28, 28, before=inflating(b"zTXt")))
    (tmp_path / "late.png").write_bytes(png(28, 28, after=inflating(b"zTXt")))  # after the pixels: read at decode
    for name in ("iccp.png", "ztxt.png", "late.png"):
        assert (tmp_path / name).stat().st_size < 20_000
        assert_refused(predict(capsys, "--model", model, tmp_path / name), f"{name}: cannot ")


def test_truncated_images_leave_stdout_empty(model: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.png"
    Image.fromarray(rng.integers(0, 256, (28, 28), np.uint8)).save(good)  # the model's size: no note
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28), np.uint8)).save(buffer, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in ("cut.png", "cut.jpg"):
        # the good image first: its row is computed, but no header or row reaches stdout before the error
        assert_refused(predict(capsys, "--model", model, "--batch-size", 1, good, tmp_path / name), f"{name}: cannot")


def test_a_fifo_is_refused_without_blocking(model: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "medmnist_pipeline", "predict", "--model", str(model), str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"medmnist-pipeline predict: error: {fifo}: not a regular file (a FIFO, socket or device); it was not opened\n"
    )
