"""Seurat-flavour highly variable genes from per-batch gene sums, so that chunks of cells can be added up.

The rule is scanpy's ``highly_variable_genes(flavor="seurat", n_top_genes=N, batch_key=...)``:
per batch, the mean and the (unbiased) variance of ``expm1`` of the log-normalised values give a
log dispersion; genes are put in 20 equal-width bins of log mean, the dispersion is z-scored
within its bin, and the ``N`` genes of highest normalised dispersion are variable. With batches,
the genes not detected in a batch are left out of that batch's computation (their values count
as 0), and the genes are ranked by the number of batches in which they are variable, ties broken
by the mean normalised dispersion.

Everything the rule needs is in :class:`GeneSums` (per batch: cells, sums, sums of squares and
detected counts of ``expm1(x)``), which adds up over chunks of cells: the in-memory path computes
it in one go and the chunked path (:mod:`scaml.chunked`) chunk by chunk, so both select the same genes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

N_BINS = 20


@dataclass
class GeneSums:
    """Per-batch sufficient statistics of ``expm1`` of log-normalised expression.

    Attributes
    ----------
    n_cells
        Cells per batch, shape ``(n_batches,)``.
    sums, sum_squares
        Per batch and gene: sum and sum of squares of ``expm1(x)`` (float64), shape ``(n_batches, n_genes)``.
    n_detected
        Per batch and gene: cells with ``x > 0``.
    """

    n_cells: np.ndarray
    sums: np.ndarray
    sum_squares: np.ndarray
    n_detected: np.ndarray

    def __add__(self, other: GeneSums) -> GeneSums:
        return GeneSums(self.n_cells + other.n_cells, self.sums + other.sums,
                        self.sum_squares + other.sum_squares, self.n_detected + other.n_detected)


def gene_sums(lognorm: Any, batch_codes: np.ndarray | None, n_batches: int = 1) -> GeneSums:
    """:class:`GeneSums` of a block of cells (sparse or dense, log-normalised, float32 as the pipeline stores it).

    Parameters
    ----------
    lognorm
        Cells x genes.
    batch_codes
        Integer batch of each cell in ``0 .. n_batches - 1``, or None (one batch).
    n_batches
        Number of batches.
    """
    n_cells, n_genes = lognorm.shape
    codes = np.zeros(n_cells, dtype=np.int64) if batch_codes is None else np.asarray(batch_codes, dtype=np.int64)
    out = GeneSums(np.zeros(n_batches, np.int64), np.zeros((n_batches, n_genes)), np.zeros((n_batches, n_genes)),
                   np.zeros((n_batches, n_genes), np.int64))
    if sp.issparse(lognorm):
        X = sp.csr_matrix(lognorm)
        # expm1 in float32 (as scanpy does on the stored values), sums in float64
        values = np.expm1(X.data.astype(np.float32, copy=False)).astype(np.float64)
        E = sp.csr_matrix((values, X.indices, X.indptr), shape=X.shape)
        for b in range(n_batches):
            rows = np.flatnonzero(codes == b)
            if rows.size == 0:
                continue
            sub = E[rows]
            out.n_cells[b] = rows.size
            out.sums[b] = np.bincount(sub.indices, weights=sub.data, minlength=n_genes)
            out.sum_squares[b] = np.bincount(sub.indices, weights=sub.data * sub.data, minlength=n_genes)
            out.n_detected[b] = np.bincount(sub.indices[sub.data > 0], minlength=n_genes)
        return out
    X = np.asarray(lognorm)
    for b in range(n_batches):
        rows = codes == b
        if not rows.any():
            continue
        values = np.expm1(X[rows].astype(np.float32, copy=False)).astype(np.float64)
        out.n_cells[b] = int(rows.sum())
        out.sums[b] = values.sum(axis=0)
        out.sum_squares[b] = (values * values).sum(axis=0)
        out.n_detected[b] = (X[rows] > 0).sum(axis=0)
    return out


def _one_batch(n: int, sums: np.ndarray, sum_squares: np.ndarray, names: pd.Index, n_top: int) -> pd.DataFrame:
    """scanpy's single-batch seurat computation on the genes given: means, dispersions, normalised, variable."""
    mean = sums / n
    var = sum_squares / n - mean**2
    var = np.maximum(var, 0.0)
    if n > 1:
        var = var * (n / (n - 1))
    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    with np.errstate(divide="ignore"):
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
    mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion}, index=names)
    df["mean_bin"] = pd.cut(df["means"], bins=N_BINS)
    grouped = df.groupby("mean_bin", observed=True)["dispersions"]
    stats = grouped.agg(avg="mean", dev="std")
    single = stats["dev"].isnull()
    # a bin holding one gene: its normalised dispersion is its dispersion over itself (scanpy: 1)
    stats.loc[single, "dev"] = stats.loc[single, "avg"]
    stats.loc[single, "avg"] = 0
    per_gene = stats.loc[df["mean_bin"]].set_index(df.index)
    df["dispersions_norm"] = (df["dispersions"] - per_gene["avg"]) / per_gene["dev"]
    norm = df["dispersions_norm"].to_numpy()
    finite = norm[~np.isnan(norm)]
    top = min(int(n_top), finite.size)
    if top == 0:
        df["highly_variable"] = False
    else:
        cutoff = np.sort(finite)[::-1][top - 1]
        df["highly_variable"] = np.nan_to_num(norm, nan=-np.inf) >= cutoff
    return df.drop(columns="mean_bin")


def hvg_from_sums(sums: GeneSums, n_top_genes: int, var_names: Any, *, batched: bool) -> np.ndarray:
    """The Seurat-flavour highly variable genes (a boolean mask) from :class:`GeneSums`.

    Parameters
    ----------
    sums
        Per-batch statistics (one row when not ``batched``).
    n_top_genes
        Genes to select.
    var_names
        Gene names (unique), used for scanpy's tie order.
    batched
        Rank per batch and combine (scanpy's ``batch_key``); else one batch over all cells.
    """
    names = pd.Index([str(g) for g in var_names])
    if not batched:
        total = GeneSums(sums.n_cells.sum(keepdims=True), sums.sums.sum(axis=0, keepdims=True),
                         sums.sum_squares.sum(axis=0, keepdims=True), sums.n_detected.sum(axis=0, keepdims=True))
        df = _one_batch(int(total.n_cells[0]), total.sums[0], total.sum_squares[0], names, n_top_genes)
        return df["highly_variable"].to_numpy(dtype=bool)
    frames = []
    for b in range(sums.n_cells.size):
        expressed = sums.n_detected[b] >= 1
        df = _one_batch(int(sums.n_cells[b]), sums.sums[b, expressed], sums.sum_squares[b, expressed],
                        names[expressed], n_top_genes)
        if (~expressed).any():
            missing = pd.DataFrame(np.zeros(((~expressed).sum(), len(df.columns))), columns=df.columns,
                                   index=names[~expressed])
            missing["highly_variable"] = missing["highly_variable"].astype(bool)
            df = pd.concat([df, missing]).loc[names]
        frames.append(df)
    df = pd.concat(frames, axis=0)
    df["highly_variable"] = df["highly_variable"].astype(int)
    df = df.groupby(df.index, observed=True).agg(
        {"means": "mean", "dispersions": "mean", "dispersions_norm": "mean", "highly_variable": "sum"}
    )
    df["highly_variable_nbatches"] = df["highly_variable"]
    df = df.sort_values(["highly_variable_nbatches", "dispersions_norm"], ascending=False, na_position="last")
    df["highly_variable"] = np.arange(df.shape[0]) < int(n_top_genes)
    return df.loc[names, "highly_variable"].to_numpy(dtype=bool)
