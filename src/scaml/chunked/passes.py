"""The work of one chunk in each pass of the chunked preprocessing (module functions, so Dask can ship them).

Every function takes ``(start, stop)`` first and a :class:`~scaml.chunked.source.CellSource`, reads
its rows and returns sums or per-cell values; nothing is kept between calls.

1. :func:`qc_chunk`: per-cell QC metrics and pass/fail, the detected counts of each gene among passing cells;
2. :func:`sums_chunk`: log-normalise the kept cells over the kept genes; per-batch :class:`~scaml.hvg.GeneSums`
   and the per-gene sums for scaling;
3. :func:`gram_chunk`: the scaled, clipped HVG block's sum and cross-product (the PCA's covariance);
4. :func:`project_chunk`: the principal components of the chunk's cells (and, for the outputs,
   its normalised and raw matrices).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..hvg import GeneSums, gene_sums
from ..preprocess import log_normalize
from .source import CellSource


@dataclass(frozen=True)
class QCRules:
    """The cell rules of :func:`scaml.preprocess.qc_filter`."""

    min_genes: int = 200
    max_genes: int | None = None
    max_pct_mito: float | None = 20.0


def _csr(block: sp.csr_matrix | np.ndarray) -> sp.csr_matrix:
    return block if sp.issparse(block) else sp.csr_matrix(block)


def read_block(rows: tuple[int, int], source: CellSource) -> sp.csr_matrix:
    """Rows ``rows`` of the file's matrix as CSR (a new matrix the caller may change)."""
    return _csr(source.read_rows(*rows))


def count_problem(X: sp.csr_matrix) -> str | None:
    """Why a block is not raw counts (negative or non-integer values), or None."""
    data = X.data
    if data.size == 0:
        return None
    if float(data.min()) < 0:
        return f"a negative value ({float(data.min()):g})"
    step = 1 << 22  # in slices: a chunk's temporaries stay small
    for a in range(0, data.size, step):
        part = data[a:a + step]
        frac = np.abs(part - np.round(part))
        if float(frac.max()) > 1e-6:
            return f"a non-integer value ({float(part[int(np.argmax(frac))]):g})"
    return None


def detected_per_row(X: sp.csr_matrix) -> np.ndarray:
    """Per row, the stored values > 0 (the features detected in a cell), int64, without a copy of X."""
    csum = np.concatenate([[0], np.cumsum(X.data > 0, dtype=np.int64)])
    return csum[X.indptr[1:]] - csum[X.indptr[:-1]]


def detected_per_column(X: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """Per column, the rows kept by ``keep`` (a row mask) where it is > 0 (the cells a feature is detected
    in), int64, without a copy of X."""
    positive = X.data > 0
    positive &= np.repeat(np.asarray(keep, dtype=bool), np.diff(X.indptr))
    return np.bincount(X.indices[positive], minlength=X.shape[1]).astype(np.int64)


def kept_block(rows: tuple[int, int], source: CellSource, keep: np.ndarray, columns: np.ndarray) -> sp.csr_matrix:
    """Counts of the chunk's kept cells over the kept features (no copy for a subset that keeps everything)."""
    X = read_block(rows, source)
    if not keep.all():
        X = X[keep]
    if columns.size != X.shape[1] or np.any(columns != np.arange(X.shape[1])):
        X = X[:, columns]
    return X


def qc_chunk(rows: tuple[int, int], source: CellSource, rules: QCRules, mito: np.ndarray) -> dict:
    """Per-cell ``n_genes_by_counts``, ``total_counts``, ``pct_counts_mt``, ``keep``; per-gene detected counts of kept cells."""
    X = read_block(rows, source)
    problem = count_problem(X)
    n_genes = detected_per_row(X)
    total = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
    mt = np.asarray(X[:, mito].sum(axis=1, dtype=np.float64)).ravel() if mito.any() else np.zeros_like(total)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct = 100.0 * mt / total
    keep = n_genes >= rules.min_genes
    fail = {"min_genes": int((~keep).sum())}
    for name, ok in (("max_genes", None if rules.max_genes is None else n_genes <= rules.max_genes),
                     ("max_pct_mito", None if rules.max_pct_mito is None else pct <= rules.max_pct_mito)):
        if ok is not None:
            fail[name] = int((keep & ~ok).sum())
            keep &= ok
    gene_cells = detected_per_column(X, keep)
    return {"n_genes_by_counts": n_genes, "total_counts": total.astype(np.float32),
            "pct_counts_mt": pct.astype(np.float32), "keep": keep, "gene_cells": gene_cells,
            "removed": fail, "problem": None if problem is None else (rows, problem)}


def sums_chunk(rows: tuple[int, int], source: CellSource, keep: np.ndarray, genes: np.ndarray,
               codes: np.ndarray | None, n_batches: int, target_sum: float) -> tuple[GeneSums, np.ndarray, np.ndarray]:
    """Per-batch HVG sums and per-gene sum / sum of squares of the log-normalised kept cells."""
    lognorm = log_normalize(kept_block(rows, source, keep, genes), target_sum)
    values = lognorm.data.astype(np.float64)
    s1 = np.bincount(lognorm.indices, weights=values, minlength=lognorm.shape[1])
    s2 = np.bincount(lognorm.indices, weights=values * values, minlength=lognorm.shape[1])
    return gene_sums(lognorm, codes, n_batches), s1, s2


def _scaled(lognorm: sp.csr_matrix, hvg: np.ndarray, mean: np.ndarray, std: np.ndarray, max_value: float) -> np.ndarray:
    """The HVG block z-scored and clipped to ``[-max_value, max_value]`` (float32, as scanpy's ``scale``)."""
    z = lognorm[:, hvg].toarray().astype(np.float32, copy=False)
    z -= mean.astype(np.float32)
    z /= std.astype(np.float32)
    np.clip(z, -max_value, max_value, out=z)
    return z


def gram_chunk(rows: tuple[int, int], source: CellSource, keep: np.ndarray, genes: np.ndarray, hvg: np.ndarray,
               mean: np.ndarray, std: np.ndarray, max_value: float, target_sum: float) -> tuple[int, np.ndarray, np.ndarray]:
    """Cells, column sums and cross-product ``Z^T Z`` (float64) of the scaled HVG block."""
    lognorm = log_normalize(kept_block(rows, source, keep, genes), target_sum)
    z = _scaled(lognorm, hvg, mean, std, max_value).astype(np.float64)
    return z.shape[0], z.sum(axis=0), z.T @ z


def project_chunk(rows: tuple[int, int], source: CellSource, keep: np.ndarray, genes: np.ndarray, hvg: np.ndarray,
                  mean: np.ndarray, std: np.ndarray, max_value: float, target_sum: float, center: np.ndarray,
                  components: np.ndarray, with_matrices: bool) -> tuple[np.ndarray, sp.csr_matrix | None,
                                                                         sp.csr_matrix | None]:
    """The chunk's principal components (float32); with ``with_matrices`` also its log-normalised and raw counts."""
    counts = kept_block(rows, source, keep, genes)
    lognorm = log_normalize(counts, target_sum)
    z = _scaled(lognorm, hvg, mean, std, max_value).astype(np.float64)
    pcs = ((z - center) @ components).astype(np.float32)
    if not with_matrices:
        return pcs, None, None
    return pcs, lognorm, sp.csr_matrix(counts, dtype=np.float32)
