"""Average silhouette widths (ASW) of scIB: label ASW and batch ASW.

The silhouette of a cell is ``(b - a) / max(a, b)``, with ``a`` its mean
distance to the other cells of its group and ``b`` the smallest mean distance
to the cells of another group. It is computed exactly, in blocks of rows (no
``n x n`` matrix is ever held): each block of pairwise Euclidean distances is
multiplied by a one-hot group matrix to get the per-group distance sums.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def silhouette_samples(
    X: np.ndarray,
    groups: np.ndarray,
    *,
    rows: np.ndarray | None = None,
    block_size: int = 2048,
) -> np.ndarray:
    """Exact per-cell silhouette widths with Euclidean distances, computed in row blocks.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    groups
        ``(n_cells,)`` group of each cell (any hashable values).
    rows
        Compute the silhouettes of these cells only (still exact: distances to
        all cells); None computes every cell.
    block_size
        Rows per block; memory is about ``block_size * n_cells * 4`` bytes.

    Returns
    -------
    numpy.ndarray
        Silhouettes in [-1, 1] of every cell (or of ``rows``); 0 for cells of a
        group of size one (as scikit-learn); all NaN when there are fewer than 2 groups.
    """
    import torch

    codes, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)[1:]
    n, n_groups = codes.size, counts.size
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    if n_groups < 2:
        return np.full(rows.size, np.nan)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    sq = (Xt * Xt).sum(dim=1)
    onehot = torch.zeros((n, n_groups), dtype=torch.float32)
    onehot[torch.arange(n), torch.from_numpy(codes)] = 1.0
    m = rows.size
    sums = np.empty((m, n_groups), dtype=np.float64)
    rows_t = torch.from_numpy(rows)
    with torch.no_grad():
        for start in range(0, m, block_size):
            stop = min(start + block_size, m)
            block = rows_t[start:stop]
            d2 = torch.addmm(sq[None, :], Xt[block], Xt.T, beta=1.0, alpha=-2.0)
            d2.add_(sq[block][:, None]).clamp_(min=0.0).sqrt_()
            sums[start:stop] = (d2 @ onehot).double().numpy()
    counts = counts.astype(np.float64)
    own_code = codes[rows]
    own = counts[own_code]
    at = np.arange(m)
    a = np.where(own > 1, sums[at, own_code] / np.maximum(own - 1, 1), 0.0)
    means = sums / counts[None, :]
    means[at, own_code] = np.inf
    b = means.min(axis=1)
    denom = np.maximum(a, b)
    s = np.where(denom > 0, (b - a) / np.where(denom > 0, denom, 1.0), 0.0)
    s[own <= 1] = 0.0
    return s


def stratified_rows(groups: np.ndarray, fraction: float, *, min_per_group: int = 50, random_state: int = 0) -> np.ndarray:
    """A random sample of cells, the same fraction of every group (at least ``min_per_group`` each).

    Parameters
    ----------
    groups
        ``(n_cells,)`` group of each cell.
    fraction
        Share of each group's cells to keep (1 keeps all).
    min_per_group
        Keep at least this many cells of every group (all of a smaller group).
    random_state
        Seed.

    Returns
    -------
    numpy.ndarray
        Sorted cell indices.
    """
    groups = np.asarray(groups)
    if fraction >= 1:
        return np.arange(groups.size)
    rng = np.random.default_rng(random_state)
    picked = []
    for g in np.unique(groups):
        cells = np.flatnonzero(groups == g)
        m = min(cells.size, max(int(np.ceil(fraction * cells.size)), min_per_group))
        picked.append(rng.choice(cells, size=m, replace=False))
    return np.sort(np.concatenate(picked))


def group_means(values: np.ndarray, groups: np.ndarray) -> pd.Series:
    """Mean of ``values`` within each group (sorted by group)."""
    return pd.Series(values).groupby(np.asarray(groups)).mean()


def label_asw(silhouettes: np.ndarray) -> float:
    """Label ASW scaled to [0, 1]: ``(mean silhouette + 1) / 2`` (scIB).

    Parameters
    ----------
    silhouettes
        Per-cell silhouettes with respect to the cell-type labels.
    """
    return float((np.nanmean(silhouettes) + 1) / 2)


def batch_asw(
    X: np.ndarray,
    batches: np.ndarray,
    labels: np.ndarray | None,
    *,
    fraction: float = 1.0,
    random_state: int = 0,
    block_size: int = 2048,
) -> tuple[float, pd.DataFrame, list[str]]:
    """Batch ASW of scIB: ``1 - |silhouette of batch|`` within each label, averaged over labels.

    1 means the batches overlap within every label; 0 means they are separated.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    batches
        ``(n_cells,)`` batch of each cell.
    labels
        ``(n_cells,)`` label of each cell, or None to use all cells as one group.
    fraction
        Below 1, each label's mean is estimated from the exact silhouettes of a
        random share of its cells (stratified by batch; distances to all cells of the label).
    random_state
        Seed of that sample.
    block_size
        Rows per distance block.

    Returns
    -------
    score
        Mean over labels of the mean per-cell ``1 - |s|`` (NaN if no label qualifies).
    per_label
        ``label``, ``n_cells``, ``n_batches``, ``batch_asw``, ``reason``.
    notes
        Skipped labels, for the output's notes.
    """
    batches = np.asarray(batches)
    groups = np.zeros(batches.size, dtype=np.int64) if labels is None else np.asarray(labels)
    rows = []
    for g in np.unique(groups):
        cells = np.flatnonzero(groups == g)
        n_b = np.unique(batches[cells]).size
        row = {"label": g, "n_cells": cells.size, "n_batches": n_b, "batch_asw": np.nan, "reason": ""}
        if n_b < 2:
            row["reason"] = "present in one batch only"
        elif n_b == cells.size:
            row["reason"] = "one cell per batch"
        else:
            b = batches[cells]
            rows_ = stratified_rows(b, fraction, random_state=random_state)
            s = silhouette_samples(X[cells], b, rows=rows_, block_size=block_size)
            # weight each batch's mean by its full size: an unbiased estimate of the label's mean
            means = group_means(1.0 - np.abs(s), b[rows_])
            sizes = pd.Series(b).value_counts().reindex(means.index)
            row["batch_asw"] = float(np.dot(means, sizes) / sizes.sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    values = table["batch_asw"].to_numpy(dtype=float)
    score = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    skipped = table[table["reason"] != ""]
    notes = []
    if len(skipped):
        what = "; ".join(f"{r.label}: {r.reason}" for r in skipped.itertuples())
        notes.append(f"batch ASW skipped {len(skipped)} label(s) ({what})")
    return score, table, notes
