"""QC, normalisation, highly variable genes and PCA (scanpy underneath, scanpy key names)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ._utils import info, warn
from .errors import ScamlError
from .io import count_matrix_problem

InputKind = Literal["counts", "lognorm"]

#: log1p of normalised counts stays far below this; non-integer data above it are counts-like.
LOG_SCALE_MAX = 50.0


@dataclass(frozen=True)
class InputCheck:
    """What ``X`` holds: raw counts or already normalised values, and why we think so."""

    kind: InputKind
    reason: str


def counts_verdict(X: Any) -> tuple[bool, str | None]:
    """Whether a matrix can be used as counts, and what keeps it from being raw integer counts.

    The one rule every scaml command uses to tell counts from log-normalised values.

    Returns
    -------
    is_counts, problem
        ``(True, None)`` for non-negative integers; ``(True, problem)`` for non-negative,
        non-integer values that reach above :data:`LOG_SCALE_MAX` (estimated or corrected
        counts, e.g. panc8's CEL-seq); ``(False, problem)`` for anything else (log-normalised,
        or negative values; ``problem`` then says which).
    """
    problem = count_matrix_problem(X)
    if problem is None:
        return True, None
    if "negative" in problem:
        return False, problem
    data = X.data if sp.issparse(X) else np.asarray(X)
    return bool(data.size and float(np.max(data)) > LOG_SCALE_MAX), problem


def log_normalize(matrix: Any, target_sum: float = 1e4) -> Any:
    """Scale each cell's counts to ``target_sum`` and take log1p, on a float32 copy.

    Sparse input gives a CSR matrix (zeros stay implicit), dense input a dense array.
    Cells with no counts stay zero.
    """
    if sp.issparse(matrix):
        X = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        X.data *= np.repeat(scale.astype(np.float32), np.diff(X.indptr))
        np.log1p(X.data, out=X.data)
        return X
    X = np.array(matrix, dtype=np.float32, copy=True)
    totals = X.sum(axis=1)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    X *= scale[:, None]
    return np.log1p(X, out=X)


def detect_input(adata: ad.AnnData, expected: Literal["auto", "counts", "normalized"] = "auto") -> InputCheck:
    """Decide whether ``adata.X`` holds raw counts or log-normalised values.

    Parameters
    ----------
    adata
        The data.
    expected
        ``"auto"`` detects; ``"counts"`` requires raw counts (non-negative
        integers) and raises otherwise; ``"normalized"`` takes X as
        log-normalised without checking for integers.

    Returns
    -------
    InputCheck
        ``kind`` is ``"counts"`` or ``"lognorm"``.

    Raises
    ------
    ScamlError
        X has negative values (scaled data), or counts were required and X is
        not a count matrix.
    """
    problem = count_matrix_problem(adata.X)
    data = adata.X.data if sp.issparse(adata.X) else np.asarray(adata.X)
    if data.size and np.nanmin(data) < 0:
        raise ScamlError(
            f"X holds negative values (min {float(np.nanmin(data)):.3g}): it looks scaled or batch-corrected, "
            "not counts or log-normalised data. Put raw counts (or log-normalised values) in X, or pass an "
            "existing embedding with --use-rep X_pca."
        )
    if expected == "counts":
        if problem is not None:
            raise ScamlError(
                f"counts are required but X is not a raw count matrix: {problem}. Put raw counts in X "
                "(e.g. adata.X = adata.layers['counts']), or run with --input normalized for log-normalised data."
            )
        return InputCheck("counts", "X holds non-negative integers (required by --input counts)")
    if expected == "normalized":
        return InputCheck("lognorm", "X taken as log-normalised (--input normalized)")
    if problem is None:
        return InputCheck("counts", "X holds non-negative integers, taken as raw counts")
    counts_like, _ = counts_verdict(adata.X)
    if counts_like:
        top = float(data.max())
        warn(f"X is not integer ({problem}) but reaches {top:.4g}, far above log-normalised values: "
             "taken as (non-integer) counts; pass --input normalized if it is normalised data")
        return InputCheck("counts", f"X holds non-integer values up to {top:.4g}, taken as counts")
    return InputCheck("lognorm", f"X is not raw counts ({problem}); taken as log-normalised")


def qc_filter(
    adata: ad.AnnData,
    *,
    mito_prefix: Sequence[str] = ("MT-", "mt-"),
    min_genes: int = 200,
    max_genes: int | None = None,
    max_pct_mito: float | None = 20.0,
    min_cells: int = 3,
) -> dict[str, int]:
    """Compute QC metrics and filter cells and genes in place.

    Mitochondrial genes are those whose names start with one of
    ``mito_prefix``. Writes ``obs`` columns ``n_genes_by_counts``,
    ``total_counts`` and ``pct_counts_mt`` (scanpy's names) and ``var["mt"]``.

    Parameters
    ----------
    adata
        Raw counts in X; filtered in place.
    mito_prefix
        Prefixes of mitochondrial gene names.
    min_genes, max_genes
        Keep cells with at least / at most this many detected genes.
    max_pct_mito
        Keep cells with at most this percentage of counts in mitochondrial genes (None: no limit).
    min_cells
        Keep genes detected in at least this many cells.

    Returns
    -------
    dict
        How many cells and genes each rule removed.
    """
    import scanpy as sc

    adata.var["mt"] = adata.var_names.str.startswith(tuple(mito_prefix))
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    keep = np.ones(adata.n_obs, dtype=bool)
    removed: dict[str, int] = {}
    rules = [("min_genes", adata.obs["n_genes_by_counts"].to_numpy() >= min_genes)]
    if max_genes is not None:
        rules.append(("max_genes", adata.obs["n_genes_by_counts"].to_numpy() <= max_genes))
    if max_pct_mito is not None:
        rules.append(("max_pct_mito", adata.obs["pct_counts_mt"].to_numpy() <= max_pct_mito))
    for name, ok in rules:
        removed[f"cells_removed_{name}"] = int((keep & ~ok).sum())
        keep &= ok
    if not keep.any():
        raise ScamlError(
            f"QC removed every cell ({removed}); loosen --min-genes (now {min_genes}), --max-genes "
            f"(now {max_genes}) or --max-pct-mito (now {max_pct_mito})."
        )
    if not keep.all():
        adata._inplace_subset_obs(keep)
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    gene_keep = detected >= min_cells
    removed["genes_removed_min_cells"] = int((~gene_keep).sum())
    if not gene_keep.any():
        raise ScamlError(f"no gene is detected in {min_cells} cells; lower --min-cells.")
    if not gene_keep.all():
        adata._inplace_subset_var(gene_keep)
    removed["n_mito_genes"] = int(adata.var["mt"].sum())
    return removed


def normalize_log1p(adata: ad.AnnData, target_sum: float = 1e4) -> None:
    """Keep raw counts in ``layers["counts"]``, then normalise to ``target_sum`` per cell and log1p X."""
    import scanpy as sc

    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


def select_hvg(adata: ad.AnnData, n_top_genes: int = 2000, batch_key: str | None = None) -> int:
    """Mark highly variable genes (Seurat flavour on log data), selected per batch when ``batch_key`` is given.

    Returns the number of genes marked in ``var["highly_variable"]``.
    """
    import scanpy as sc

    n_top = min(n_top_genes, adata.n_vars)
    if batch_key is not None and adata.obs[batch_key].value_counts().min() < 2:
        info(f"a batch of {batch_key!r} has fewer than 2 cells; selecting HVGs over all cells")
        batch_key = None
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor="seurat", batch_key=batch_key)
    return int(adata.var["highly_variable"].sum())


def run_pca(adata: ad.AnnData, n_comps: int = 30, *, random_state: int = 0, max_value: float = 10.0) -> None:
    """PCA of the highly variable genes, scaled to unit variance (clipped at ``max_value``).

    Writes ``obsm["X_pca"]`` (float32), ``varm["PCs"]`` (zeros for genes that are not
    highly variable) and ``uns["pca"]`` (variance and variance ratio), as scanpy does.
    The scaled matrix is temporary; X is left log-normalised.
    """
    import scanpy as sc

    mask = adata.var["highly_variable"].to_numpy() if "highly_variable" in adata.var else np.ones(adata.n_vars, bool)
    n_genes = int(mask.sum())
    limit = min(adata.n_obs, n_genes) - 1
    if n_comps > limit:
        raise ScamlError(
            f"n_comps={n_comps} principal components need more than {n_comps} cells and genes; "
            f"there are {adata.n_obs} cells and {n_genes} selected genes. Use --n-pcs {max(2, limit)} or fewer."
        )
    hvg = adata.X[:, mask]
    sub = ad.AnnData(X=np.asarray(hvg.toarray() if sp.issparse(hvg) else hvg, dtype=np.float32))
    sc.pp.scale(sub, max_value=max_value)
    sc.pp.pca(sub, n_comps=n_comps, svd_solver="arpack", random_state=random_state, dtype="float32")
    adata.obsm["X_pca"] = np.ascontiguousarray(sub.obsm["X_pca"], dtype=np.float32)
    loadings = np.zeros((adata.n_vars, n_comps), dtype=np.float32)
    loadings[mask] = sub.varm["PCs"]
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = {k: np.asarray(v) for k, v in sub.uns["pca"].items() if k in ("variance", "variance_ratio")}
