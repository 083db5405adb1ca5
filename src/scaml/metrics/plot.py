"""The scIB-style comparison figure: one row per embedding, one coloured circle per metric."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..style import styled
from .summary import BATCH_METRICS, BIO_METRICS, DISPLAY_NAMES, SCORES

#: Layout (axis units): width of the name column, of a metric column and of a score column.
_NAME_W, _CELL_W, _BAR_W = 2.6, 1.0, 1.6
#: Marker area of a metric circle in points^2 (about 0.35 inch across).
_CIRCLE = 620


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@styled
def plot_metrics(table: pd.DataFrame, path: str | os.PathLike | None = None, *, title: str | None = None):
    """Draw the metrics table as a figure: circles coloured by value, bars for the aggregate scores.

    Rows are embeddings (sorted by total score, else batch score); columns are
    grouped into batch correction, bio conservation and aggregate scores. All
    metrics share one 0-1 colour scale, so colours compare across columns.
    Metrics that could not be computed show "n/a". Columns that are missing or
    NaN for every embedding (e.g. bio metrics without labels) are left out.
    Drawn in scaml's figure style (:func:`scaml.style.figure_style`), without
    changing matplotlib's global settings or backend.

    Parameters
    ----------
    table
        The output of :func:`scaml.metrics.evaluate_embeddings` (needs ``embedding``).
    path
        PNG file to write (atomically); None returns the figure without saving.
    title
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure or pathlib.Path
        The figure when ``path`` is None, else the written path.
    """
    import matplotlib.pyplot as plt

    frame, groups, scores = _layout_columns(table)
    n_rows = len(frame)
    metric_cols = [c for _, cols in groups for c in cols]
    width = _NAME_W + _CELL_W * len(metric_cols) + _BAR_W * len(scores) + 0.3
    fig_w = max(6.0, width * 0.85)
    fig_h = 1.9 + 0.55 * n_rows
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.set_xlim(0, width)
    ax.set_ylim(n_rows + 1.9, -0.2)
    ax.axis("off")
    cmap = plt.get_cmap("viridis")
    col_x, x_scores, x_end = _draw_header(ax, groups, scores)
    _draw_rows(ax, frame, metric_cols, scores, col_x, x_end, cmap)
    if scores:
        ax.plot([x_scores, x_scores], [0.7, n_rows * 0.95 + 1.9], color="0.4", lw=1)
    _draw_colorbar(fig, cmap, n_rows)
    default_title = ("Integration metrics (scIB): total = 0.4 batch correction + 0.6 bio conservation"
                     if "total" in scores else "Integration metrics (scIB batch correction)")
    ax.set_title(title or default_title, fontsize=11, loc="left")
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.16 if n_rows > 2 else 0.2)
    if path is None:
        return fig
    from ..io import save_figure

    return save_figure(fig, Path(path))


def _layout_columns(table: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, list[str]]], list[str]]:
    """The rows (by embedding, best first), the metric groups and the score columns worth showing."""
    frame = table.copy()
    if "embedding" in frame.columns:
        frame = frame.set_index("embedding")

    def present(cols: tuple[str, ...]) -> list[str]:
        return [c for c in cols if c in frame.columns and frame[c].notna().any()]

    groups = [("Batch correction", present(BATCH_METRICS)), ("Bio conservation", present(BIO_METRICS))]
    groups = [g for g in groups if g[1]]
    scores = present(SCORES)
    sort_col = "total" if "total" in scores else ("batch_score" if "batch_score" in scores else None)
    if sort_col:
        frame = frame.sort_values(sort_col, ascending=False, na_position="last")
    return frame, groups, scores


def _draw_header(ax: Any, groups: list[tuple[str, list[str]]], scores: list[str]) -> tuple[dict[str, float], float, float]:
    """Group headings and column names; returns each column's x, where the scores start and the right end."""
    x = _NAME_W
    header_y, label_y = 0.25, 1.25
    ax.text(0.1, label_y, "Embedding", ha="left", va="center", fontsize=10, fontweight="bold")
    col_x = {}
    for group_name, cols in groups:
        x0 = x
        for c in cols:
            col_x[c] = x + _CELL_W / 2
            ax.text(col_x[c], label_y, DISPLAY_NAMES.get(c, c).replace(" ", "\n", 1), ha="center",
                    va="center", fontsize=8.5)
            x += _CELL_W
        ax.text((x0 + x) / 2, header_y, group_name, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.plot([x0 + 0.1, x - 0.1], [header_y + 0.3, header_y + 0.3], color="0.3", lw=1)
    x_scores = x
    for c in scores:
        col_x[c] = x + 0.1
        ax.text(x + _BAR_W / 2, label_y, DISPLAY_NAMES.get(c, c).replace(" ", "\n", 1), ha="center",
                va="center", fontsize=8.5)
        x += _BAR_W
    if scores:
        ax.text((x_scores + x) / 2, header_y, "Aggregate scores" if len(scores) > 1 else "Score", ha="center", va="center", fontsize=10,
                fontweight="bold")
        ax.plot([x_scores + 0.1, x - 0.1], [header_y + 0.3, header_y + 0.3], color="0.3", lw=1)
    ax.plot([0.05, x], [1.8, 1.8], color="0.2", lw=1)
    return col_x, x_scores, x


def _draw_rows(
    ax: Any, frame: pd.DataFrame, metric_cols: list[str], scores: list[str], col_x: dict[str, float],
    x_end: float, cmap: Any,
) -> None:
    """One row per embedding: a coloured circle per metric, a bar per score, "n/a" where missing."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    bar_cmap = plt.get_cmap("YlGnBu")
    for i, (name, row) in enumerate(frame.iterrows()):
        y = 2.3 + i * 1.0 * 0.95
        if i % 2 == 0:
            ax.add_patch(Rectangle((0.02, y - 0.45), x_end - 0.04, 0.9, color="0.95", zorder=0))
        ax.text(0.1, y, str(name), ha="left", va="center", fontsize=10, fontweight="bold")
        for c in metric_cols:
            v = row[c]
            if _is_missing(v):
                ax.scatter([col_x[c]], [y], s=_CIRCLE, facecolor="0.88", edgecolor="0.6", zorder=2)
                ax.text(col_x[c], y, "n/a", ha="center", va="center", fontsize=7.5, color="0.3", zorder=3)
                continue
            v = float(v)
            rgba = cmap(float(np.clip(v, 0, 1)))
            lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            ax.scatter([col_x[c]], [y], s=_CIRCLE, color=[rgba], edgecolor="none", zorder=2)
            ax.text(col_x[c], y, f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                    color="black" if lum > 0.5 else "white", zorder=3)
        for c in scores:
            v = row[c]
            if _is_missing(v):
                ax.text(col_x[c] + 0.1, y, "n/a", ha="left", va="center", fontsize=8, color="0.3")
                continue
            v = float(v)
            length = (_BAR_W - 0.6) * float(np.clip(v, 0, 1))
            ax.add_patch(Rectangle((col_x[c], y - 0.3), length, 0.6,
                                   color=bar_cmap(0.3 + 0.6 * float(np.clip(v, 0, 1))), zorder=2))
            ax.text(col_x[c] + length + 0.05, y, f"{v:.2f}", ha="left", va="center", fontsize=8, zorder=3)


def _draw_colorbar(fig: Any, cmap: Any, n_rows: int) -> None:
    """The shared 0-1 colour scale of the metric circles, below the table."""
    import matplotlib

    norm = matplotlib.colors.Normalize(0, 1)
    cax = fig.add_axes((0.12, 0.04 if n_rows > 2 else 0.02, 0.3, 0.025))
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
    bar.set_label("metric value (higher is better; n/a: not computable, see notes)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
