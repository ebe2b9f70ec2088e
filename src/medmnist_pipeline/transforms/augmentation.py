"""Augmentation: the albumentations pipeline declared in params.yaml, materialised once into uint8 arrays.

Materialised mode: epoch e reads copy e mod K, made once by every core (:func:`augment_images`). Online mode: the
same per-image seeds applied in DataLoader workers while training (``batches.AugmentedBatches``), so epoch e of an
online run sees exactly what copy e of a materialised run holds.
"""

from __future__ import annotations

import difflib
import inspect
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medmnist_pipeline.errors import PipelineError, first_line

# Transforms that do not return a uint8 image of the input's shape, or that are not image transforms at all.
_NOT_STORABLE = {"ToTensorV2", "ToTensor3D", "ToFloat", "Normalize", "FromFloat"}


def _albumentations() -> Any:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network on import
    import albumentations

    return albumentations


def transform_names() -> list[str]:
    alb = _albumentations()
    return sorted(
        name
        for name, obj in vars(alb).items()
        if isinstance(obj, type)
        and issubclass(obj, alb.BasicTransform)
        and not inspect.isabstract(obj)
        and name not in _NOT_STORABLE
        and not name.endswith("3D")
        and name[0].isupper()
    )


def check_transform(name: str, args: dict[str, Any]) -> str | None:
    """Why ``name(**args)`` is not a usable transform, or None when it is."""
    alb = _albumentations()
    if name not in transform_names():
        near = difflib.get_close_matches(name, transform_names(), n=3)
        why = "produces float tensors, not uint8 images" if name in _NOT_STORABLE else "unknown transform"
        return why + (f"; did you mean {', '.join(near)}?" if near else "")
    cls = getattr(alb, name)
    signature = inspect.signature(cls.__init__).parameters
    allowed = [p for p in signature if p != "self"]
    unknown = sorted(set(args) - set(allowed))
    if unknown:  # albumentations only warns about these; a typo must not silently do nothing
        return f"unknown argument {unknown[0]!r} (allowed: {', '.join(allowed)})"
    try:
        cls(**args)
    except Exception as exc:  # noqa: BLE001 - albumentations validates arguments with pydantic and raises ValueError
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and "errors.pydantic.dev" not in ln]
        return "bad arguments: " + "; ".join(lines[1:] or lines)
    return None


Transforms = list[dict[str, dict[str, Any]]] | dict[str, Any]  # the params list, or albumentations' own serialisation


def build_pipeline(transforms: Transforms, seed: int | None) -> Any:
    """An ``albumentations.Compose`` from the params list (or from :func:`serialize`'s dict); seeded, so the same
    seed gives the same images."""
    alb = _albumentations()
    if isinstance(transforms, dict):
        pipeline = alb.from_dict(transforms)
        pipeline.set_random_seed(seed)
        return pipeline
    steps = [getattr(alb, name)(**args) for item in transforms for name, args in item.items()]
    return alb.Compose(steps, seed=seed)


def serialize(transforms: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The pipeline in albumentations' own serialisation (``albumentations.to_dict``): what online training loads."""
    return _albumentations().to_dict(build_pipeline(transforms, seed=0))


def check_pipeline_output(transforms: list[dict[str, dict[str, Any]]], size: int, channels: int | None) -> str | None:
    """Run the pipeline once on a blank image: it must give back uint8 of the same shape."""
    shape = (size, size) if channels in (None, 1) else (size, size, channels)
    try:
        out = build_pipeline(transforms, seed=0)(image=np.zeros(shape, np.uint8))["image"]
    except Exception as exc:  # noqa: BLE001 - any failure of the user's pipeline is the message
        return f"fails on a {shape} uint8 image: {exc}"
    if out.dtype != np.uint8 or out.shape != shape:
        return f"must keep uint8 images of shape {shape}, but produces {out.dtype} {out.shape}"
    return None


def open_output(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 memory map the copies are written into, its disk space checked and reserved first: a write into a
    memory map on a full disk is a SIGBUS that kills the process, never an error that can be reported."""
    from medmnist_pipeline.files import allocate, check_free_space

    nbytes = int(np.prod(shape, dtype=np.int64))
    check_free_space(path.parent, nbytes, f"augment ({shape[0]} copies of {shape[1]} images)")
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    allocate(path, out.offset + nbytes, "augment")
    return out


def image_seed(seed: int, copy: int, index: int) -> int:
    """The seed of one augmented image: copy ``copy`` (the epoch, in online mode) of training image ``index``.

    Per image, not per stream, so any chunk of any copy can be made by any process in any order (the pool of
    :func:`augment_images`, DataLoader workers, a resumed run) and give the same pixels; adding copies leaves the
    earlier ones unchanged.
    """
    return int(np.random.SeedSequence([seed, copy, index]).generate_state(1)[0])


class ImageAugmenter:
    """The pipeline applied to one image at a time with its own seed; failures name the image."""

    def __init__(self, transforms: Transforms, seed: int) -> None:
        self.pipeline, self.seed = build_pipeline(transforms, seed=0), seed

    def __call__(self, image: np.ndarray, copy: int, index: int) -> np.ndarray:
        self.pipeline.set_random_seed(image_seed(self.seed, copy, index))
        try:
            return self.pipeline(image=image)["image"]
        except Exception as exc:  # noqa: BLE001 - any failure of the user's pipeline, named by its image
            why = f"{type(exc).__name__}: {first_line(exc)}"
            raise PipelineError(f"augment.transforms fail on training image {index} (copy {copy}): {why}") from None

    def many(self, images: np.ndarray, copy: int, indices: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for j, (image, index) in enumerate(zip(images, indices, strict=True)):
            out[j] = self(image, copy, int(index))
        return out


def default_workers() -> int:
    """Every core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


CHUNK_IMAGES = 512  # per pool task: big enough to amortise the hand-off, small enough for an even spread


def augment_images(
    images: np.ndarray,
    transforms: list[dict[str, dict[str, Any]]],
    copies: int,
    seed: int,
    out: np.ndarray,
    advance: Callable[[int], None] = lambda n: None,
    workers: int = 1,
) -> None:
    """Write ``copies`` augmented versions of ``images`` (N, H, W[, C]) into ``out`` (copies, N, H, W[, C]).

    With ``workers`` > 1 and both arrays memory maps (``np.load(mmap_mode="r")`` and ``open_memmap``), a pool of
    processes each maps both files and writes its chunks in place: every core, and no process holds more than a
    chunk. The result does not depend on ``workers``. A failing image raises PipelineError naming it.
    """
    starts = range(0, len(images), CHUNK_IMAGES)
    chunks = [(k, s, min(s + CHUNK_IMAGES, len(images))) for k in range(copies) for s in starts]
    mapped = _map_spec(images) is not None and _map_spec(out) is not None
    if workers <= 1 or not mapped or len(chunks) <= 1:
        augmenter = ImageAugmenter(transforms, seed)
        for k, start, stop in chunks:
            out[k, start:stop] = augmenter.many(images[start:stop], k, np.arange(start, stop))
            advance(stop - start)
        return

    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: the stage process holds MLflow and OpenCV threads that a forked child must not inherit
    context = multiprocessing.get_context("spawn")
    init = (_map_spec(images), _map_spec(out), transforms, seed)
    with ProcessPoolExecutor(min(workers, len(chunks)), context, initializer=_pool_init, initargs=init) as pool:
        pending = {pool.submit(_pool_chunk, *chunk): chunk for chunk in chunks}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    k, start, stop = pending.pop(future)
                    future.result()
                    advance(stop - start)
        except BrokenProcessPool:
            raise PipelineError(
                "an augment worker process died (killed, or out of memory); nothing was written. "
                "Run the stage again (fewer workers if memory is short)."
            ) from None
        finally:
            for future in pending:
                future.cancel()


def _map_spec(array: np.ndarray) -> tuple[str, int, str, tuple[int, ...]] | None:
    """How another process reopens this memory map (None for an array in RAM)."""
    # only a whole map (its base is the mmap itself): a view of one keeps the parent's offset, not its own
    if not isinstance(array, np.memmap) or not isinstance(array.base, mmap.mmap) or not array.filename:
        return None
    return str(array.filename), int(array.offset), array.dtype.str, tuple(array.shape)


_POOL: dict[str, Any] = {}


def _pool_init(source: tuple, target: tuple, transforms: list, seed: int) -> None:
    def reopen(spec: tuple, mode: str) -> np.memmap:
        path, offset, dtype, shape = spec
        return np.memmap(path, dtype=np.dtype(dtype), mode=mode, offset=offset, shape=shape)

    _POOL.update(source=reopen(source, "r"), target=reopen(target, "r+"), augmenter=ImageAugmenter(transforms, seed))


def _pool_chunk(k: int, start: int, stop: int) -> None:
    images = _POOL["source"]
    _POOL["target"][k, start:stop] = _POOL["augmenter"].many(images[start:stop], k, np.arange(start, stop))


def preview_copies(
    images: np.ndarray, transforms: Transforms, copies: int, seed: int, n_images: int = 6, n_copies: int = 7
) -> np.ndarray:
    """What :func:`copies_grid` reads from the materialised copies, made for its few images only (online mode):
    indexed ``[:n, image]`` like the materialised array, for the picked images only."""
    picks = np.linspace(0, len(images) - 1, n_images).astype(int)
    out = np.zeros((min(copies, n_copies), len(picks), *images.shape[1:]), np.uint8)
    augmenter = ImageAugmenter(transforms, seed)
    for k in range(len(out)):
        out[k] = augmenter.many(np.asarray(images[picks]), k, picks)
    return _Sparse(out, picks)


class _Sparse:
    """Copies known only at a few image indices; indexing ``[:n, i]`` as copies_grid does."""

    def __init__(self, rows: np.ndarray, picks: np.ndarray) -> None:
        self.rows, self.where = rows, {int(i): j for j, i in enumerate(picks)}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple) -> np.ndarray:
        copies, image = key
        return self.rows[copies, self.where[int(image)]]


def copies_grid(images: np.ndarray, augmented: np.ndarray, n_images: int = 6, n_copies: int = 7) -> Any:
    """A figure of a few training images (rows), each beside its first augmented copies, for a person to check."""
    from medmnist_pipeline.figures import image_grid

    copies = len(augmented)
    picks = np.linspace(0, len(images) - 1, n_images).astype(int)
    rows = [(f"#{i}", np.stack([images[i], *augmented[:n_copies, i]])) for i in picks]
    shown = min(copies, n_copies)
    title = f"training images and their augmented copies ({copies} made)" if copies else "no augmentation (copies: 0)"
    titles = ["original"] + [f"copy {k + 1}" for k in range(shown)]
    return image_grid(rows, title, columns=1 + shown, column_titles=titles)


def corrupt_copies(out: np.ndarray, flag: str, corruptions: list[str], seed: int) -> None:
    """AugMedMNIST-C (Di Salvo et al. 2024): every image of every augmented copy in ``out`` (copies, N, H, W[, C])
    under one MedMNIST-C corruption drawn from ``corruptions`` at a severity drawn from 1-5, after the
    albumentations transforms. Each copy has its own draw, independent of the number of copies; no-op for []."""
    from medmnist_pipeline.transforms.corruptions import random_corruptions

    if not corruptions:
        return
    for k in range(len(out)):
        # a stream apart from the transforms' own (copy_seed(seed, k)), so both can change independently
        stream = int(np.random.SeedSequence([seed, k, 1]).generate_state(1)[0])
        out[k] = random_corruptions(np.asarray(out[k]), flag, corruptions, stream)
