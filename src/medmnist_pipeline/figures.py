"""The one way this project builds figures: ``matplotlib.figure.Figure`` objects on an Agg canvas, never pyplot
(no window, no global state), written by ``save_figure`` as PNG, which DVC's HTML view shows offline (vega plots
need a CDN). Optuna's own views draw on pyplot figures; ``save_figure`` releases those too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure on an Agg canvas, outside pyplot; constrained layout keeps rotated labels inside the image."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def note(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty, instead of a crash or a blank image."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def use_agg_pyplot() -> None:
    """Put pyplot on the Agg backend (files only, never a window) for libraries that draw on it themselves."""
    import matplotlib

    matplotlib.use("Agg")


def note_figure(text: str, width: float = 5, height: float = 1.5) -> Figure:
    """A figure that only says why it is empty (e.g. a curve switched off in params.yaml)."""
    fig = new_figure(width, height)
    note(fig.subplots(), text)
    return fig


def image_grid(
    rows: list[tuple[str, np.ndarray]],
    title: str,
    columns: int = 8,
    column_titles: list[str] | None = None,
) -> Figure:
    """One row per ``(row title, images)``; images uint8 (n, H, W) or (n, H, W, 3); at most ``columns`` shown."""
    cell = 1.1
    fig = new_figure(columns * cell + 1.8, len(rows) * cell + 0.6)
    axes = np.atleast_2d(fig.subplots(len(rows), columns, squeeze=False))
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
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` (format from the suffix, PNG usually), creating parent folders, then release it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    # Figures from this module are outside pyplot; one a caller made with pyplot must also leave its registry.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    fig.clear()
    return path
