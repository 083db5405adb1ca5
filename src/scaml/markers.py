"""Wilcoxon rank-sum markers of each cluster against the rest, with a fast path for sparse data.

:func:`rank_markers` gives the numbers and the ``uns["rank_genes_groups"]`` layout of scanpy's
``sc.tl.rank_genes_groups(adata, groupby, method="wilcoxon")`` (reference ``"rest"``, no tie correction,
Benjamini-Hochberg adjusted p-values, every feature, sorted by score), so scanpy's plots read it.

scanpy ranks every feature over every cell, turning the matrix into dense blocks first. In a sparse
matrix of non-negative values the zeros of a feature are its lowest values and share one averaged
rank, so only the non-zero entries need ranking: a feature seen in 5 % of the cells costs 5 % of the
work. That is what :func:`rank_markers` does (a numba kernel over the feature columns); it falls back
to scanpy for dense input or negative values. Peak matrices (100,000 peaks and more, a few percent
non-zero) gain most: at 10,000 cells x 100,000 peaks the markers took 57 of the ATAC path's 103 s.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit
from scipy.stats import norm

#: Where the results go, as scanpy's default.
KEY = "rank_genes_groups"


@njit(cache=True)
def _column_rank_sums(indptr, indices, data, codes, n_groups, n_cells):  # pragma: no cover - compiled
    """Per group and feature column: the sum of the cells' ranks among all cells (ties averaged).

    ``indptr`` / ``indices`` / ``data``: a CSC matrix of non-negative values; ``codes``: each cell's group.
    The zeros of a column (absent or stored) share the ranks 1..z, averaged to (z + 1) / 2.
    """
    n_cols = indptr.size - 1
    sums = np.zeros((n_groups, n_cols))
    in_group = np.zeros(n_groups, dtype=np.int64)
    for g in range(codes.size):
        in_group[codes[g]] += 1
    seen = np.zeros(n_groups, dtype=np.int64)
    for j in range(n_cols):
        start, stop = indptr[j], indptr[j + 1]
        values = data[start:stop]
        rows = indices[start:stop]
        order = np.argsort(values, kind="mergesort")
        n_zero = n_cells - (stop - start)
        first = 0  # skip the stored zeros: they belong to the zero block
        while first < order.size and values[order[first]] == 0:
            first += 1
        n_zero += first
        seen[:] = 0
        i = first
        while i < order.size:
            k = i
            while k + 1 < order.size and values[order[k + 1]] == values[order[i]]:
                k += 1
            # positions i..k (0-based among the stored entries) hold one value: ranks after the zeros
            rank = n_zero + (i - first + k - first) / 2.0 + 1.0
            for m in range(i, k + 1):
                g = codes[rows[order[m]]]
                sums[g, j] += rank
                seen[g] += 1
            i = k + 1
        zero_rank = (n_zero + 1) / 2.0
        for g in range(n_groups):
            sums[g, j] += (in_group[g] - seen[g]) * zero_rank
    return sums


def _benjamini_hochberg(pvals: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (as statsmodels' ``fdr_bh``, which scanpy uses)."""
    n = pvals.size
    order = np.argsort(pvals)
    scaled = pvals[order] * n / np.arange(1, n + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _group_means(X: sp.spmatrix, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Each group's mean of every feature, and the mean over the other cells."""
    indicator = sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size))
    totals = np.asarray((indicator @ X).todense(), dtype=np.float64)
    counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
    everything = totals.sum(axis=0)
    rest = (everything[None, :] - totals) / np.maximum(codes.size - counts, 1)[:, None]
    return totals / counts[:, None], rest


def _fast_path_applies(X: Any) -> bool:
    return sp.issparse(X) and X.shape[1] > 0 and (X.nnz == 0 or float(X.data.min()) >= 0.0)


def rank_markers(adata: ad.AnnData, groupby: str, *, key_added: str = KEY) -> None:
    """Wilcoxon markers of every ``groupby`` group against the rest, in ``adata.uns[key_added]``.

    The same numbers and layout as ``scanpy.tl.rank_genes_groups(adata, groupby, method="wilcoxon",
    use_raw=False)``: per group, every feature sorted by its z-score (``names``, ``scores``,
    ``logfoldchanges``, ``pvals``, ``pvals_adj`` record arrays, and ``params``). Sparse ``X`` of
    non-negative values (log-normalised expression, TF-IDF accessibility) takes the fast path that
    ranks only the non-zero entries; other input is handed to scanpy.

    Parameters
    ----------
    adata
        Cells x features; ``X`` holds the values to compare (log-normalised). Not modified except ``uns``.
    groupby
        Categorical ``obs`` column (e.g. ``"leiden"``) with at least two groups.
    key_added
        The ``uns`` key of the results.
    """
    import scanpy as sc

    X = adata.X
    groups = adata.obs[groupby]
    if not isinstance(groups.dtype, pd.CategoricalDtype):
        groups = groups.astype("category")
    if not _fast_path_applies(X) or groups.isna().any():
        sc.tl.rank_genes_groups(adata, groupby, method="wilcoxon", use_raw=False, key_added=key_added)
        return
    categories = [str(c) for c in groups.cat.categories]
    codes = groups.cat.codes.to_numpy().astype(np.int64)
    sizes = np.bincount(codes, minlength=len(categories))
    n_cells = X.shape[0]
    csc = sp.csc_matrix(X)
    sums = _column_rank_sums(csc.indptr, csc.indices, csc.data, codes, len(categories), n_cells)
    means, rest_means = _group_means(X, codes, len(categories))
    expm1 = _expm1_of(adata)
    var_names = adata.var_names.to_numpy()
    columns: dict[str, dict[str, np.ndarray]] = {k: {} for k in ("names", "scores", "pvals", "pvals_adj",
                                                                  "logfoldchanges")}
    for g, name in enumerate(categories):
        if sizes[g] == 0:
            continue
        n_active = float(sizes[g])
        std = np.sqrt(n_active * (n_cells - n_active) * (n_cells + 1) / 12.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = (sums[g] - n_active * (n_cells + 1) / 2.0) / std
        scores[np.isnan(scores)] = 0.0
        pvals = 2.0 * norm.sf(np.abs(scores))
        pvals[np.isnan(pvals)] = 1.0
        adjusted = _benjamini_hochberg(pvals)
        fold = (expm1(means[g]) + 1e-9) / (expm1(rest_means[g]) + 1e-9)
        top = np.argsort(scores, kind="stable")[::-1]
        columns["names"][name] = var_names[top]
        columns["scores"][name] = scores[top]
        columns["pvals"][name] = pvals[top]
        columns["pvals_adj"][name] = adjusted[top]
        columns["logfoldchanges"][name] = np.log2(fold[top])
    dtypes = {"names": "O", "scores": "float32", "logfoldchanges": "float32", "pvals": "float64",
              "pvals_adj": "float64"}
    result: dict[str, Any] = {"params": {"groupby": groupby, "reference": "rest", "method": "wilcoxon",
                                         "use_raw": False, "layer": None, "corr_method": "benjamini-hochberg"}}
    for key in ("names", "scores", "pvals", "pvals_adj", "logfoldchanges"):
        result[key] = pd.DataFrame(columns[key]).to_records(index=False, column_dtypes=dtypes[key])
    adata.uns[key_added] = result


def _expm1_of(adata: ad.AnnData):
    """The inverse of the data's log1p (its base when ``uns["log1p"]`` names one), as scanpy's fold changes."""
    log1p = adata.uns.get("log1p")
    base = log1p.get("base") if isinstance(log1p, dict) else None
    if base is None:
        return np.expm1
    return lambda x: np.expm1(x * np.log(base))
