"""Figures shared by several stages. PNG, because DVC's HTML view of PNGs works offline (vega needs a CDN)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def image_grid(
    rows: list[tuple[str, np.ndarray]],
    path: str | Path,
    title: str,
    columns: int = 8,
    column_titles: list[str] | None = None,
) -> Path:
    """One row per ``(row title, images)``; images uint8 (n, H, W) or (n, H, W, 3); at most ``columns`` shown."""
    plt = _pyplot()
    cell = 1.1
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * cell + 1.8, len(rows) * cell + 0.6), squeeze=False)
    for (row_title, images), row in zip(rows, axes, strict=True):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(images):
                ax.imshow(images[j], cmap="gray" if images[j].ndim == 2 else None, vmin=0, vmax=255)
            if column_titles and row is axes[0] and j < len(column_titles):
                ax.set_title(column_titles[j], fontsize=8)
        label = row_title if len(row_title) <= 24 else row_title[:23] + "…"
        row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
