"""MedMNIST-C corruptions: the paper's registry, determinism, hand-checkable values, params validation, preview."""

from __future__ import annotations

import numpy as np
import pytest

from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.metadata import DATASETS
from medmnist_pipeline.transforms import corruptions

GREY = np.random.default_rng(0).integers(20, 235, (12, 28, 28), dtype=np.uint8)
RGB = np.random.default_rng(1).integers(20, 235, (6, 28, 28, 3), dtype=np.uint8)
# float32 of another batch shape (OpenCV's SIMD loop vs its tail, BLAS blocking) can cross a truncation: 1 level, rarely
BATCH_LEVELS, BATCH_FRACTION = 1, 0.005


def test_registry_matches_the_paper_for_the_sets_the_issue_names() -> None:
    assert (
        corruptions.corruption_set("pneumoniamnist")
        == corruptions.corruption_set("chestmnist")
        == [
            "pixelate",
            "jpeg_compression",
            "gaussian_noise",
            "speckle_noise",
            "impulse_noise",
            "shot_noise",
            "gaussian_blur",
            "brightness_up",
            "brightness_down",
            "contrast_up",
            "contrast_down",
            "gamma_corr_up",
            "gamma_corr_down",
        ]
    )
    assert corruptions.corruption_set("breastmnist") == [
        "pixelate",
        "jpeg_compression",
        "speckle_noise",
        "motion_blur",
        "brightness_up",
        "brightness_down",
        "contrast_down",
    ]
    assert corruptions.severity_param("breastmnist", "pixelate", 5) == 0.10
    assert corruptions.severity_param("pneumoniamnist", "shot_noise", 1) == 300
    assert corruptions.corruption_set("custom") == []
    # every dataset of MedMNIST+ 2D has a set, and every set has only corruptions its channels allow
    for flag, info in DATASETS.items():
        names = corruptions.corruption_set(flag)
        assert names, flag
        assert corruptions.check_corruptions("k", names, [1, 2, 3, 4, 5], flag, info.n_channels) is None, flag


@pytest.mark.parametrize("flag", ["pneumoniamnist", "pathmnist", "dermamnist", "breastmnist"])
def test_every_corruption_keeps_shape_and_is_deterministic_per_seed(flag: str) -> None:
    images = GREY if DATASETS[flag].n_channels == 1 else RGB
    for name in corruptions.corruption_set(flag):
        out = corruptions.corrupt(images, flag, name, 3, seed=7)
        assert out.dtype == np.uint8 and out.shape == images.shape, name
        assert np.array_equal(out, corruptions.corrupt(images, flag, name, 3, seed=7)), name
        # a corruption without random draws does not depend on the batch an image came with
        if name in {"gaussian_blur", "defocus_blur", "brightness_up", "contrast_down", "gamma_corr_up", "saturate"}:
            differ = np.abs(corruptions.corrupt(images[:3], flag, name, 3, seed=7).astype(int) - out[:3])
            assert differ.max() <= BATCH_LEVELS and (differ > 0).mean() <= BATCH_FRACTION, (name, differ.max())


def test_random_corruptions_change_with_the_seed() -> None:
    first = corruptions.corrupt(GREY, "pneumoniamnist", "gaussian_noise", 2, seed=1)
    assert not np.array_equal(first, corruptions.corrupt(GREY, "pneumoniamnist", "gaussian_noise", 2, seed=2))


def test_hand_computed_values() -> None:
    flat = np.full((2, 28, 28), 100, np.uint8)
    # brightness: 100 * 1.5 = 150; gamma 1.6 on 100/255: 255 * 0.392^1.6 = 56.2 -> 56 (truncated as in the paper)
    assert (corruptions.corrupt(flat, "pneumoniamnist", "brightness_up", 5, 0) == 150).all()
    assert (corruptions.corrupt(flat, "pneumoniamnist", "gamma_corr_up", 5, 0) == int(255 * (100 / 255) ** 1.6)).all()
    # contrast blends with the image's own mean: a two-level image 50/150 (mean 100) at factor 0.4 -> 80/120
    two = np.where(np.arange(28) % 2 == 0, 50, 150).astype(np.uint8)[None, None, :].repeat(28, 1)
    assert set(np.unique(corruptions.corrupt(two, "pneumoniamnist", "contrast_down", 5, 0))) == {80, 120}
    # impulse noise at 2 %: about 2 % of the pixels become 0 or 255, half each
    big = np.full((200, 28, 28), 100, np.uint8)
    out = corruptions.corrupt(big, "pneumoniamnist", "impulse_noise", 5, 0)
    assert abs((out != 100).mean() - 0.02) < 0.002 and abs((out == 0).mean() - (out == 255).mean()) < 0.002
    # gaussian noise sd 0.08 * 255 = 20.4 grey levels (no clipping around 128)
    mid = np.full((200, 28, 28), 128, np.uint8)
    assert abs(corruptions.corrupt(mid, "pneumoniamnist", "gaussian_noise", 5, 0).astype(float).std() - 20.4) < 0.5


def test_severity_makes_it_worse() -> None:
    def damage(name: str, flag: str = "pneumoniamnist") -> list[float]:
        return [
            np.abs(corruptions.corrupt(GREY, flag, name, s, 0).astype(int) - GREY).mean()
            for s in corruptions.SEVERITIES
        ]

    for name in ["gaussian_noise", "speckle_noise", "brightness_down", "contrast_down", "gamma_corr_down"]:
        assert np.all(np.diff(damage(name)) > 0), name
    assert damage("motion_blur", "breastmnist")[-1] > damage("motion_blur", "breastmnist")[0]


def test_spatial_extent_scales_with_the_image_size() -> None:
    # The registry's 224 px Gaussian blur is below a pixel at 28 px (no change) but visible at 224 px.
    small = np.random.default_rng(0).integers(0, 255, (2, 28, 28), dtype=np.uint8)
    large = np.random.default_rng(0).integers(0, 255, (2, 224, 224), dtype=np.uint8)
    assert np.array_equal(corruptions.corrupt(small, "pneumoniamnist", "gaussian_blur", 1, 0), small)
    assert np.abs(corruptions.corrupt(large, "pneumoniamnist", "gaussian_blur", 5, 0).astype(int) - large).mean() > 20


def test_augmentation_uses_one_corruption_per_image() -> None:
    flat = np.full((300, 28, 28), 100, np.uint8)
    out = corruptions.random_corruptions(flat, "pneumoniamnist", ["brightness_up", "brightness_down"], seed=3)
    levels = np.unique(out.reshape(300, -1)[:, 0])
    # every image is a uniform grey at one of the 10 (corruption, severity) levels: 110..150 or 90..50
    assert set(levels) == {110, 120, 130, 140, 150, 90, 80, 70, 60, 50}
    assert np.array_equal(
        out, corruptions.random_corruptions(flat, "pneumoniamnist", ["brightness_up", "brightness_down"], 3)
    )


def test_validation_names_the_key() -> None:
    def check(names, severities, flag="pneumoniamnist", channels=1):  # noqa: ANN001, ANN202
        return corruptions.check_corruptions("evaluate.robustness", names, severities, flag, channels)

    assert "evaluate.robustness.corruptions[1]: unknown corruption 'gausian_noise'; did you mean gaussian_noise" in (
        check(["pixelate", "gausian_noise"], [1])
    )
    assert check(["stain_deposit"], [1]).startswith("evaluate.robustness.corruptions[0]: stain_deposit changes colour")
    assert check(["stain_deposit"], [1], "pathmnist", 3) is None
    assert check(["pixelate"], [1, 6]).startswith("evaluate.robustness.severities[1]: severity must be an integer")
    assert check(["pixelate"], [0]).startswith("evaluate.robustness.severities[0]")
    assert check(["pixelate"], [True]).startswith("evaluate.robustness.severities[0]")
    assert "listed twice" in check(["pixelate", "pixelate"], [1])
    assert check(["pixelate"], []).startswith("evaluate.robustness.severities: empty")
    assert check([], []) is None  # [] = off
    # a corruption from another dataset's set borrows that dataset's values
    assert check(["motion_blur"], [2]) is None
    assert corruptions.severity_param("pneumoniamnist", "motion_blur", 1) == corruptions.severity_param(
        "pathmnist", "motion_blur", 1
    )
    with pytest.raises(ValueError, match="needs RGB"):
        corruptions.corrupt(GREY, "pathmnist", "saturate", 1, 0)


def test_corruptions_grid_shows_every_corruption_and_severity(tmp_path) -> None:  # noqa: ANN001
    names = corruptions.corruption_set("breastmnist")
    fig = corruptions.corruptions_grid(GREY[0], "breastmnist", names, 0)
    assert len(fig.axes) == len(names) * 6
    assert save_figure(fig, tmp_path / "preview.png").stat().st_size > 10_000
