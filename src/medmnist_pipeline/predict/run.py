"""The ``predict`` command: read every input's header, load the model, write one CSV row per image (to a file or
stdout, only once every image is predicted)."""

from __future__ import annotations

import csv
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO

import numpy as np

from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.metadata import MULTI_LABEL
from medmnist_pipeline.metrics import predicted_labels
from medmnist_pipeline.predict.inputs import DEFAULT_MAX_PIXELS, ImageInput, Pixels, collect
from medmnist_pipeline.predict.model import Model, load_model


def header(labels: Sequence[str]) -> list[str]:
    return ["file", "predicted", *(f"p_{label}" for label in labels)]


def predicted(probabilities: np.ndarray, labels: Sequence[str], task: str) -> str:
    """The predicted label (the official rule, ``metrics.predicted_labels``); multi-label: every label predicted,
    joined by ``;``."""
    chosen = predicted_labels(probabilities[None], task)[0]
    if task == MULTI_LABEL:
        return ";".join(label for label, yes in zip(labels, chosen, strict=True) if yes)
    return labels[int(chosen)]


def predict_rows(model: Model, sources: Sequence[ImageInput], batch_size: int = 256) -> Iterator[list[str]]:
    """CSV rows (without the header), one batch of images in memory at a time."""
    import torch

    pixels = Pixels(model.in_channels, model.image_size)
    for start in range(0, len(sources), batch_size):
        batch = sources[start : start + batch_size]
        scores = model.scores(torch.from_numpy(np.stack([pixels(s) for s in batch])))
        for source, p in zip(batch, scores, strict=True):
            yield [source.name, predicted(p, model.labels, model.task), *(f"{v:.6f}" for v in p)]


def write_csv(stream: IO[str], model: Model, sources: Sequence[ImageInput], batch_size: int) -> None:
    """Every row is computed (every image read) before the first line is written: an image that fails to decode
    leaves nothing on ``stream``, stdout included. The rows are held as text (about 100 bytes an image)."""
    rows = list(predict_rows(model, sources, batch_size))
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header(model.labels))
    writer.writerows(rows)


def main(
    model: str,
    images: Sequence[str],
    out: str | None = None,
    params: str | None = None,
    batch_size: int = 256,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """The ``predict`` command: CSV to ``out`` or to stdout, written only once every image is predicted."""
    if batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, got {batch_size}")
    if max_pixels < 1:
        raise PipelineError(f"--max-pixels must be at least 1, got {max_pixels}")
    sources = collect(images, max_pixels)
    loaded = load_model(model, params, batch_size)
    for note in conversion_notes(sources, loaded):
        print(note, file=sys.stderr)
    if out is None or out == "-":
        try:
            write_csv(sys.stdout, loaded, sources, batch_size)
            sys.stdout.flush()
        except BrokenPipeError:  # `... | head`: the reader is gone; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    from medmnist_pipeline.files import atomic_file

    try:
        with atomic_file(out) as tmp, open(tmp, "w", newline="") as f:
            write_csv(f, loaded, sources, batch_size)
    except OSError as exc:
        raise PipelineError(f"{out}: cannot write ({exc.strerror or exc})") from None
    print(f"predicted {len(sources)} images with {model} -> {out}", file=sys.stderr)


def conversion_notes(sources: Sequence[ImageInput], model: Model) -> list[str]:
    """One line per kind of conversion the images need, for stderr."""
    n, size = len(sources), model.image_size
    notes = []
    resized = [s for s in sources if s.size != (size, size)]
    if resized:
        stretched = sum(s.size[0] != s.size[1] for s in resized)
        notes.append(
            f"note: resized {len(resized)} of {n} images to the model's {size}x{size} px (bicubic)"
            + (f"; {stretched} were not square and were stretched, not cropped" if stretched else "")
        )
    if model.in_channels == 1 and (colour := sum(s.channels == 3 for s in sources)):
        notes.append(f"note: converted {colour} of {n} colour images to greyscale (the model takes 1 channel)")
    if model.in_channels == 3 and (grey := sum(s.channels == 1 for s in sources)):
        notes.append(f"note: repeated {grey} of {n} greyscale images on 3 channels (the model takes RGB)")
    return notes
