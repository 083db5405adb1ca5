"""Samples of cells read back from the file for the steps that need expression: markers and marker figures.

Wilcoxon markers of a million cells would need the whole matrix in memory; they are computed on
a per-cluster sample instead (at most ``per_cluster`` cells of each cluster), and the marker UMAPs
show a random sample of cells. Both are said in the log and in run.json.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .preprocess import ChunkedCells

#: Cells per cluster for the Wilcoxon markers.
MARKER_CELLS_PER_CLUSTER = 1000
#: Cells shown on the marker-gene UMAPs.
FIGURE_CELLS = 50_000


def stratified_positions(labels: Any, per_group: int, random_state: int = 0) -> np.ndarray:
    """Sorted positions of at most ``per_group`` cells of each label (all cells of smaller groups)."""
    rng = np.random.default_rng(random_state)
    codes = pd.Categorical(np.asarray(labels)).codes
    picked = []
    for c in np.unique(codes):
        rows = np.flatnonzero(codes == c)
        if rows.size > per_group:
            rows = rng.choice(rows, per_group, replace=False)
        picked.append(rows)
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def expression_samples(cells: ChunkedCells, adata: ad.AnnData, cluster_key: str = "leiden", *,
                       per_cluster: int = MARKER_CELLS_PER_CLUSTER, figure_cells: int = FIGURE_CELLS,
                       random_state: int = 0, pool: np.ndarray | None = None,
                       ) -> tuple[ad.AnnData, ad.AnnData, dict[str, Any]]:
    """Log-normalised expression of a per-cluster sample (markers) and of a random sample (figures), read in one go.

    ``pool``: positions the figure cells are drawn from (default: all cells), e.g. the cells a
    sampled UMAP laid out.

    Returns
    -------
    (markers, figure, record)
        Two AnnData objects with X, ``obs`` and ``obsm`` of their cells, and what was sampled.
    """
    n = adata.n_obs
    marker_pos = stratified_positions(adata.obs[cluster_key].to_numpy(), per_cluster, random_state)
    rng = np.random.default_rng(random_state + 1)
    candidates = np.arange(n) if pool is None else np.asarray(pool, dtype=np.int64)
    figure_pos = (candidates if candidates.size <= figure_cells
                  else np.sort(rng.choice(candidates, figure_cells, replace=False)))
    union = np.union1d(marker_pos, figure_pos)
    X = cells.read_cells(union)
    where = {int(p): i for i, p in enumerate(union)}

    def _subset(pos: np.ndarray) -> ad.AnnData:
        rows = np.fromiter((where[int(p)] for p in pos), dtype=np.int64, count=pos.size)
        sub = ad.AnnData(X=X[rows], obs=adata.obs.iloc[pos].copy(), var=adata.var[[]].copy())
        for key, value in adata.obsm.items():
            sub.obsm[key] = np.asarray(value)[pos]
        for key in ("leiden_colors", "batch_colors"):
            if key in adata.uns:
                sub.uns[key] = adata.uns[key]
        return sub

    record = {"marker_cells": int(marker_pos.size), "marker_cells_per_cluster": int(per_cluster),
              "figure_cells": int(figure_pos.size), "of_cells": int(n)}
    return _subset(marker_pos), _subset(figure_pos), record
