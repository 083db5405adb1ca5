"""kBET acceptance rate (Büttner et al. 2019), per cell-type label as in scIB.

kBET asks, for each cell, whether the batch composition of its ``k0`` nearest
neighbours matches the global batch composition (Pearson's chi-square test,
``n_batches - 1`` degrees of freedom). The acceptance rate is the fraction of
neighbourhoods not rejected at level ``alpha``; 1 means batches mix as well as
random sampling would.

scIB runs kBET within each cell-type label, with ``k0`` a quarter of the mean
batch size of that label (clipped to 10..70), and averages the acceptance rates
over labels. Here the within-label neighbours come from the shared search: for
each cell, the first ``k0`` cells of its own label in the shared (sorted)
neighbour list are its ``k0`` nearest neighbours within the label (exact when
the shared search is); the few cells with fewer than ``k0`` same-label cells
among their shared neighbours get an exact search within the label. Every cell is tested (the R package tests repeated random
10% samples: the same expected rate, without sampling noise). scIB's graph
diffusion step (and scib-metrics' diffusion-map neighbours), needed only for
methods that output a graph and no embedding, is not used, so values differ
somewhat from those packages' (which also differ from each other).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..neighbors import Neighbors, query_neighbors


def kbet_test(neighbor_batches: np.ndarray, expected_freq: np.ndarray, alpha: float = 0.05) -> tuple[float, np.ndarray, np.ndarray]:
    """Chi-square test of each neighbourhood's batch counts against the expected proportions.

    Parameters
    ----------
    neighbor_batches
        ``(n_tested, k0)`` batch codes (0 .. n_batches - 1) of each tested cell's neighbours.
    expected_freq
        ``(n_batches,)`` expected batch proportions (summing to 1, all positive).
    alpha
        Significance level.

    Returns
    -------
    acceptance_rate
        Fraction of neighbourhoods with p-value >= ``alpha``.
    statistics
        Chi-square statistic per neighbourhood.
    p_values
        p-value per neighbourhood.
    """
    from scipy.stats import chi2

    n_tested, k0 = neighbor_batches.shape
    n_b = expected_freq.shape[0]
    offsets = (np.arange(n_tested) * n_b)[:, None]
    counts = np.bincount((neighbor_batches + offsets).ravel(), minlength=n_tested * n_b).reshape(n_tested, n_b)
    expected = expected_freq * k0
    stat = (np.square(counts - expected) / expected).sum(axis=1)
    p = chi2.sf(stat, df=n_b - 1)
    return float(np.mean(p >= alpha)), stat, p


def kbet_k0(batches: np.ndarray) -> int:
    """scIB's neighbourhood size: a quarter of the mean batch size, clipped to [10, 70]."""
    sizes = np.unique(batches, return_counts=True)[1]
    return int(min(70, max(10, np.floor(np.mean(sizes) / 4))))


def _within_group_neighbors(X: np.ndarray, neighbors: Neighbors, cells: np.ndarray, k0: int) -> np.ndarray:
    """The ``k0`` nearest neighbours of each of ``cells`` among ``cells`` (positions into ``cells``).

    Read from the shared neighbour lists where they hold ``k0`` cells of the group; the other
    cells get an exact search within the group (:func:`scaml.neighbors.query_neighbors`), which
    the shared lists cannot answer. With an exact shared search the result is that of an exact
    search within the group alone (cells at exactly equal distance may be ordered differently);
    with an approximate one (pynndescent) it is as good as the shared lists.
    """
    n_all = neighbors.n_cells
    position = np.full(n_all, -1, dtype=np.int64)
    position[cells] = np.arange(cells.size)
    pos = position[neighbors.indices[cells]]  # (m, k) position within the group, -1 outside
    same = pos >= 0
    rank = np.cumsum(same, axis=1)
    enough = rank[:, -1] >= k0
    out = np.empty((cells.size, k0), dtype=np.int64)
    take = same & (rank <= k0)
    out[enough] = pos[enough][take[enough]].reshape(-1, k0)
    short = np.flatnonzero(~enough)
    if short.size:
        # exact search within the label, for these cells only (the query search of scaml.neighbors)
        Xg = np.asarray(X[cells], dtype=np.float32)
        _, idx = query_neighbors(Xg, Xg[short], k0 + 1, method="exact")
        is_self = idx == short[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        out[short] = idx[~is_self].reshape(short.size, k0)
    return out


def kbet_per_label(
    X: np.ndarray,
    neighbors: Neighbors,
    batches: np.ndarray,
    labels: np.ndarray | None,
    *,
    alpha: float = 0.05,
    min_cells: int = 10,
) -> tuple[float, pd.DataFrame, list[str]]:
    """kBET acceptance rate within each label, averaged over labels (scIB).

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding (used only for cells whose shared
        neighbour list holds fewer than ``k0`` cells of their label).
    neighbors
        Shared neighbour result of ``X``.
    batches
        ``(n_cells,)`` batch codes.
    labels
        ``(n_cells,)`` label codes, or None to test all cells as one group.
    alpha
        Significance level of each test.
    min_cells
        Labels with fewer cells are skipped (scIB uses 10).

    Returns
    -------
    score
        Mean acceptance rate over the labels where kBET could run (NaN if none).
    per_label
        One row per label: ``label``, ``n_cells``, ``n_batches``, ``k0``,
        ``acceptance_rate`` (NaN when skipped) and ``reason``.
    notes
        Why labels were skipped, for the output's notes.
    """
    batches = np.asarray(batches)
    groups = np.zeros(batches.size, dtype=np.int64) if labels is None else np.asarray(labels)
    rows = []
    for g in np.unique(groups):
        cells = np.flatnonzero(groups == g)
        b = batches[cells]
        present, b_codes = np.unique(b, return_inverse=True)
        row = {"label": g, "n_cells": cells.size, "n_batches": present.size, "k0": np.nan,
               "acceptance_rate": np.nan, "reason": ""}
        if present.size < 2:
            row["reason"] = "present in one batch only"
        elif cells.size < min_cells:
            row["reason"] = f"fewer than {min_cells} cells"
        else:
            k0 = min(kbet_k0(b_codes), cells.size - 1, neighbors.k)
            row["k0"] = k0
            nbr = _within_group_neighbors(X, neighbors, cells, k0)
            freq = np.bincount(b_codes, minlength=present.size) / cells.size
            row["acceptance_rate"], _, _ = kbet_test(b_codes[nbr], freq, alpha)
        rows.append(row)
    table = pd.DataFrame(rows)
    rates = table["acceptance_rate"].to_numpy(dtype=float)
    score = float(np.nanmean(rates)) if np.isfinite(rates).any() else float("nan")
    skipped = table[table["reason"] != ""]
    notes = []
    if len(skipped):
        what = "; ".join(f"{r.label}: {r.reason}" for r in skipped.itertuples())
        notes.append(f"kBET skipped {len(skipped)} label(s) ({what})")
    if not np.isfinite(score):
        notes.append("kBET: no label has cells from two or more batches")
    return score, table, notes
