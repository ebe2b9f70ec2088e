"""Robustness evaluation with hand-made predictors whose balanced error under a corruption is known in advance."""

from __future__ import annotations

import numpy as np

from medmnist_pipeline.evaluation.robustness import (
    evaluate_robustness,
    robustness_figure,
    robustness_markdown,
    robustness_rows,
)
from medmnist_pipeline.figures import save_figure
from medmnist_pipeline.metadata import BINARY

# class 1 images are bright (160), class 0 dark (80)
LABELS = np.array([0, 1] * 20)
IMAGES = np.where(LABELS[:, None, None] == 1, 160, 80).astype(np.uint8) * np.ones((1, 28, 28), np.uint8)


def by_brightness(threshold: float):  # noqa: ANN201
    """Predicts class 1 when the mean grey level exceeds ``threshold``."""

    def predict(images: np.ndarray) -> np.ndarray:
        p = (images.reshape(len(images), -1).mean(axis=1) > threshold).astype(float)
        return np.stack([1 - p, p], axis=1)

    return predict


def test_errors_per_corruption_severity_and_degradation(tmp_path) -> None:  # noqa: ANN001
    # brightness_down multiplies by 0.9 .. 0.5: bright images fall to 144, 128, 112, 96, 80.
    # A threshold of 120 keeps them right at severities 1-2 and wrong at 3-5 (balanced error 0.5: class 1 all wrong);
    # a threshold of 90 stays right until severity 5 (80 < 90).
    results = evaluate_robustness(
        {"strict": by_brightness(120), "lenient": by_brightness(90)},
        IMAGES,
        LABELS,
        BINARY,
        "pneumoniamnist",
        ["brightness_down", "brightness_up"],
        [1, 2, 3, 4, 5],
        seed=0,
    )
    strict, lenient = results["strict"], results["lenient"]
    assert strict.clean == 0 and strict.errors["brightness_down"] == {1: 0, 2: 0, 3: 0.5, 4: 0.5, 5: 0.5}
    assert lenient.errors["brightness_down"] == {1: 0, 2: 0, 3: 0, 4: 0, 5: 0.5}
    # brightness_up lifts the dark class to 88, 96, 104, 112, 120: lenient (90) fails from severity 2
    assert lenient.errors["brightness_up"] == {1: 0, 2: 0.5, 3: 0.5, 4: 0.5, 5: 0.5}
    assert strict.mean("brightness_down") == 0.3 and strict.degradation("brightness_down") == 0.3
    assert lenient.mean_error == (0.1 + 0.4) / 2
    summary = strict.summary()
    assert summary["per_corruption"] == {"brightness_down": 0.3, "brightness_up": 0.0}
    assert lenient.mlflow_metrics()["robustness/brightness_up/s2"] == 0.5
    rows = robustness_rows(results)
    assert len(rows) == 4 and rows[0]["s3"] == 0.5 and rows[0]["degradation"] == 0.3
    table = robustness_markdown(results)
    assert "| brightness_down | 0.300 (+0.300) | 0.100 (+0.100) |" in table
    path = save_figure(robustness_figure(results, "toy"), tmp_path / "robustness.png")
    assert path.stat().st_size > 10_000


def test_a_large_test_split_is_corrupted_and_scored_a_chunk_at_a_time() -> None:
    """Bounded memory: the models never see more than a chunk; deterministic corruptions give the same errors as one
    batch, and noise drawn per chunk is still the same on every run."""
    seen = []

    def recording(images: np.ndarray) -> np.ndarray:
        seen.append(len(images))
        return by_brightness(120)(images)

    args = (LABELS, BINARY, "pneumoniamnist", ["brightness_down", "gaussian_noise"], [3, 5])
    whole = evaluate_robustness({"m": by_brightness(120)}, IMAGES, *args, seed=0)["m"]
    chunked = evaluate_robustness({"m": recording}, IMAGES, *args, seed=0, chunk_bytes=3 * 28 * 28)["m"]
    again = evaluate_robustness({"m": by_brightness(120)}, IMAGES, *args, seed=0, chunk_bytes=3 * 28 * 28)["m"]
    assert max(seen) == 3 and sum(seen) == len(IMAGES) * 5  # clean + 2 corruptions x 2 severities, 3 at a time
    assert chunked.clean == whole.clean and chunked.errors["brightness_down"] == whole.errors["brightness_down"]
    assert chunked.errors == again.errors
