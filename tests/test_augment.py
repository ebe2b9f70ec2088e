"""Augmentation: deterministic per seed, copies independent of each other, bad pipelines refused early."""

from __future__ import annotations

import numpy as np

from medmnist_pipeline.transforms.augmentation import augment_images, check_pipeline_output, check_transform

TRANSFORMS = [
    {"Affine": {"rotate": [-15, 15], "translate_percent": [-0.1, 0.1], "p": 1.0}},
    {"RandomBrightnessContrast": {"p": 1.0}},
]


def run(images: np.ndarray, copies: int, seed: int) -> np.ndarray:
    out = np.zeros((copies, *images.shape), np.uint8)
    augment_images(images, TRANSFORMS, copies, seed, out)
    return out


def test_same_seed_same_images_other_seed_other_images() -> None:
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    first, again, other = run(images, 2, seed=1), run(images, 2, seed=1), run(images, 2, seed=2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], images) and not np.array_equal(first[0], first[1])


def test_more_copies_leave_the_earlier_copies_unchanged() -> None:
    images = np.random.default_rng(0).integers(0, 255, (10, 28, 28, 3), dtype=np.uint8)
    assert np.array_equal(run(images, 1, seed=5)[0], run(images, 3, seed=5)[0])


def test_checks() -> None:
    assert check_transform("HorizontalFlip", {"p": 0.5}) is None
    assert check_transform("ToTensorV2", {}).startswith("produces float tensors")
    assert "did you mean VerticalFlip" in check_transform("VerticalFlp", {})
    assert (
        check_pipeline_output([{"Resize": {"height": 32, "width": 32}}], 28, 1)
        == "must keep uint8 images of shape (28, 28), but produces uint8 (32, 32)"
    )
    assert check_pipeline_output([{"HueSaturationValue": {"p": 1.0}}], 28, 3) is None


def test_corrupted_copies_are_deterministic_and_differ_per_copy() -> None:
    from medmnist_pipeline.transforms.augmentation import corrupt_copies

    images = np.full((2, 50, 28, 28), 100, np.uint8)
    first, again, untouched = images.copy(), images.copy(), images.copy()
    corrupt_copies(first, "pneumoniamnist", ["brightness_up", "gaussian_noise"], seed=1)
    corrupt_copies(again, "pneumoniamnist", ["brightness_up", "gaussian_noise"], seed=1)
    corrupt_copies(untouched, "pneumoniamnist", [], seed=1)
    assert np.array_equal(first, again) and np.array_equal(untouched, images)
    assert not np.array_equal(first[0], first[1])
    assert (first != 100).reshape(2, 50, -1).any(axis=2).all()  # every image of every copy is corrupted
