"""Robustness to MedMNIST-C corruptions: balanced error of each model on the corrupted test set, per corruption and
severity, its mean over severities and its degradation from the clean images (MedMNIST-C's error; its BE/rBE
normalise by AlexNet figures measured at 224 px, which do not exist at other sizes, so they are not given here).

Each corrupted test set is made once and shared by every model, so models are compared on the same images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medmnist_pipeline.config.params import RobustnessParams
from medmnist_pipeline.data.dataset import DatasetMeta, Split
from medmnist_pipeline.data.layout import nchw, stored_layout
from medmnist_pipeline.evaluation.comparison import balanced_error, ensemble_scores
from medmnist_pipeline.figures import note_figure, save_figure
from medmnist_pipeline.models.modelfile import ModelFile
from medmnist_pipeline.transforms.corruptions import corrupt, corruptions_grid

Predictor = Callable[[np.ndarray], np.ndarray]  # uint8 images -> (N, C) probabilities


@dataclass(frozen=True)
class Robustness:
    """One model: balanced error on the clean test set and under each (corruption, severity)."""

    model: str
    clean: float
    errors: dict[str, dict[int, float]]

    def mean(self, corruption: str) -> float:
        """The corruption's error averaged over its severities (MedMNIST-C's per-corruption error)."""
        return float(np.mean(list(self.errors[corruption].values())))

    def degradation(self, corruption: str) -> float:
        return self.mean(corruption) - self.clean

    @property
    def mean_error(self) -> float:
        """Mean over corruptions of their mean over severities."""
        return float(np.mean([self.mean(c) for c in self.errors]))

    @property
    def mean_degradation(self) -> float:
        return self.mean_error - self.clean

    def summary(self) -> dict[str, float | dict[str, float]]:
        """For metrics.json (``dvc metrics show``) and MLflow: rounded, nested by corruption."""
        return {
            "clean_error": round(self.clean, 4),
            "mean_error": round(self.mean_error, 4),
            "degradation": round(self.mean_degradation, 4),
            "per_corruption": {c: round(self.mean(c), 4) for c in self.errors},
        }

    def mlflow_metrics(self) -> dict[str, float]:
        """Flat names: robustness/<corruption>/s<severity> and robustness/<corruption>/mean, plus the summary."""
        out = {"robustness/clean_error": self.clean, "robustness/mean_error": self.mean_error}
        out["robustness/degradation"] = self.mean_degradation
        for c, by_severity in self.errors.items():
            out[f"robustness/{c}/mean"] = self.mean(c)
            out.update({f"robustness/{c}/s{s}": e for s, e in by_severity.items()})
        return out


CHUNK_BYTES = 64 * 2**20  # test images corrupted and scored at a time (the corruptions work in float: about 8x)


def evaluate_robustness(
    predictors: dict[str, Predictor],
    images: np.ndarray,
    labels: np.ndarray,
    task: str,
    flag: str,
    corruptions: Sequence[str],
    severities: Sequence[int],
    seed: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> dict[str, Robustness]:
    """Every model under every (corruption, severity); the corrupted images are made once per pair and shared by all
    models. ``images`` (memory-mapped for a large split) are corrupted a chunk of ``chunk_bytes`` at a time, so memory
    is bounded by the chunk, not by the test split; chunk k draws its noise from ``seed + k`` (a test split that fits
    one chunk, every 28 px MedMNIST test split, is corrupted as one batch)."""
    per_chunk = max(1, chunk_bytes // max(1, images[0].nbytes)) if len(images) else 1
    starts = range(0, len(images), per_chunk)

    def scored(transform: Callable[[np.ndarray, int], np.ndarray]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
        for k, start in enumerate(starts):
            batch = transform(np.asarray(images[start : start + per_chunk]), k)  # one array for all the models
            for name, predict in predictors.items():
                parts[name].append(predict(batch))
        return {name: np.concatenate(p) for name, p in parts.items()}

    clean = {name: balanced_error(labels, s, task) for name, s in scored(lambda x, k: x).items()}
    errors: dict[str, dict[str, dict[int, float]]] = {name: {} for name in predictors}
    for corruption in corruptions:
        for severity in severities:
            corrupted = scored(lambda x, k, c=corruption, s=severity: corrupt(x, flag, c, s, seed + k))
            for name, y_score in corrupted.items():
                errors[name].setdefault(corruption, {})[severity] = balanced_error(labels, y_score, task)
    return {name: Robustness(name, clean[name], errors[name]) for name in predictors}


def robustness_rows(results: dict[str, Robustness]) -> list[dict[str, str | float]]:
    """One row per (model, corruption): the table of the report and of robustness.csv."""
    rows = []
    for r in results.values():
        for c, by_severity in r.errors.items():
            row: dict[str, str | float] = {"model": r.model, "corruption": c, "clean_error": round(r.clean, 4)}
            row.update({f"s{s}": round(e, 4) for s, e in by_severity.items()})
            row.update({"mean_error": round(r.mean(c), 4), "degradation": round(r.degradation(c), 4)})
            rows.append(row)
    return rows


def robustness_markdown(results: dict[str, Robustness]) -> str:
    """Mean balanced error over severities per corruption (rows) and model (columns), clean error first."""
    models = list(results)
    corruptions = list(next(iter(results.values())).errors) if results else []
    lines = ["| corruption | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    lines.append("| (clean) | " + " | ".join(f"{results[m].clean:.3f}" for m in models) + " |")
    for c in corruptions:
        cells = [f"{results[m].mean(c):.3f} ({results[m].degradation(c):+.3f})" for m in models]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean** | "
        + " | ".join(f"{results[m].mean_error:.3f} ({results[m].mean_degradation:+.3f})" for m in models)
        + " |"
    )
    return "\n".join(lines)


def robustness_figure(results: dict[str, Robustness], title: str) -> Any:
    """Balanced error against severity, one panel per corruption, one line per model (clean error at severity 0)."""
    from medmnist_pipeline.figures import new_figure

    corruptions = list(next(iter(results.values())).errors)
    columns = min(4, len(corruptions))
    rows = -(-len(corruptions) // columns)
    fig = new_figure(3.2 * columns, 2.6 * rows + 0.9)
    axes = np.atleast_2d(fig.subplots(rows, columns, squeeze=False, sharey=True))
    for ax, c in zip(axes.flat, corruptions, strict=False):
        for r in results.values():
            severities = sorted(r.errors[c])
            ax.plot([0, *severities], [r.clean] + [r.errors[c][s] for s in severities], marker="o", ms=3, label=r.model)
        ax.set_title(c, fontsize=9)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(corruptions) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("balanced error")
    for ax in axes[-1, :]:
        ax.set_xlabel("severity (0 = clean)")
    handles, names = axes.flat[0].get_legend_handles_labels()
    # below the panels (constrained layout makes room), so it never covers an axis label
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


def robustness_of_models(
    settings: RobustnessParams,
    models: dict[str, ModelFile],
    ensembles: dict[str, list[ModelFile]],
    test: Split,
    meta: DatasetMeta,
    seed: int,
    out: Path,
) -> dict[str, Robustness] | None:
    """Balanced error under the configured corruptions for the single models and the seed ensembles; writes
    robustness.csv, robustness.png and the preview grid. None when evaluate.robustness.corruptions is []: the
    declared outputs still exist, and say why they are empty."""
    out.mkdir(parents=True, exist_ok=True)
    if not settings.corruptions:
        pd.DataFrame(columns=["model", "corruption", "clean_error", "mean_error", "degradation"]).to_csv(
            out / "robustness.csv", index=False
        )
        for name in ("robustness.png", "corruption_preview.png"):
            save_figure(note_figure("not computed: evaluate.robustness.corruptions is []"), out / name)
        return None
    images = stored_layout(test.images)  # (N, H, W[, C]) uint8: what the corruptions take
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def predictor(model: ModelFile) -> Predictor:
        def predict(x: np.ndarray) -> np.ndarray:
            # each corrupted set is predicted once per model file, however many rows (single, ensemble) use it
            hit = cache.get(id(model))
            if hit is None or hit[0] is not x:
                cache[id(model)] = (x, model.predict(nchw(np.ascontiguousarray(x))))
            return cache[id(model)][1]

        return predict

    predictors = {name: predictor(models[name]) for name in ("baseline", "cnn", "tuned")}
    for name, files in ensembles.items():
        parts = [predictor(f) for f in files]  # the params.seed member is the single model's file: cached
        predictors[name] = lambda x, parts=parts: ensemble_scores([p(x) for p in parts])
    print(f"robustness: {len(settings.corruptions)} corruptions x severities {settings.severities}")
    results = evaluate_robustness(
        predictors, images, test.labels, meta.task, meta.flag, settings.corruptions, settings.severities, seed
    )
    pd.DataFrame(robustness_rows(results)).to_csv(out / "robustness.csv", index=False)
    title = f"Balanced error under MedMNIST-C corruptions ({meta.flag})"
    save_figure(robustness_figure(results, title), out / "robustness.png")
    save_figure(corruptions_grid(images[0], meta.flag, settings.corruptions, seed), out / "corruption_preview.png")
    return results
