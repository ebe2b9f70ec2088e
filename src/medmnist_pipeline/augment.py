"""Augmentation: the albumentations pipeline declared in params.yaml, materialised once into uint8 arrays.

The training loop then reads ready tensors (epoch e uses copy e mod K) and never runs per-sample Python.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np

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


def build_pipeline(transforms: list[dict[str, dict[str, Any]]], seed: int | None) -> Any:
    """An ``albumentations.Compose`` from the params list; seeded, so the same seed gives the same images."""
    alb = _albumentations()
    steps = [getattr(alb, name)(**args) for item in transforms for name, args in item.items()]
    return alb.Compose(steps, seed=seed)


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


def copy_seed(seed: int, copy: int) -> int:
    """Independent, reproducible stream per copy (adding copies leaves the earlier ones unchanged)."""
    return int(np.random.SeedSequence([seed, copy]).generate_state(1)[0])


def augment_images(
    images: np.ndarray,
    transforms: list[dict[str, dict[str, Any]]],
    copies: int,
    seed: int,
    out: np.ndarray,
    advance: Callable[[int], None] = lambda n: None,
) -> None:
    """Write ``copies`` augmented versions of ``images`` (N, H, W[, C]) into ``out`` (copies, N, H, W[, C]).

    ``out`` may be a memory map, so 224 px sets never need all copies in RAM.
    """
    for k in range(copies):
        pipeline = build_pipeline(transforms, seed=copy_seed(seed, k))
        for i, image in enumerate(images):
            out[k, i] = pipeline(image=image)["image"]
            if i % 256 == 255:
                advance(256)
        advance(len(images) % 256)


def preview_grid(images: np.ndarray, augmented: np.ndarray, n_images: int = 6, n_copies: int = 7) -> Any:
    """A figure of a few training images (rows), each beside its first augmented copies, for a person to check."""
    from medmnist_pipeline.figures import image_grid

    copies = len(augmented)
    picks = np.linspace(0, len(images) - 1, n_images).astype(int)
    rows = [(f"#{i}", np.stack([images[i], *augmented[:n_copies, i]])) for i in picks]
    shown = min(copies, n_copies)
    title = f"training images and their augmented copies ({copies} made)" if copies else "no augmentation (copies: 0)"
    titles = ["original"] + [f"copy {k + 1}" for k in range(shown)]
    return image_grid(rows, title, columns=1 + shown, column_titles=titles)
