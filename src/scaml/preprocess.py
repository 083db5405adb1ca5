"""QC, normalisation, highly variable genes and PCA (scanpy underneath, scanpy key names)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ._utils import info, warn
from .errors import ScamlError
from .hvg import gene_sums, hvg_from_sums
from .io import count_matrix_problem

InputKind = Literal["counts", "lognorm"]

#: log1p of normalised counts stays far below this; non-integer data above it are counts-like.
LOG_SCALE_MAX = 50.0


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


@dataclass(frozen=True)
class Expression:
    """The expression matrix a command reads, and what it holds.

    Attributes
    ----------
    matrix
        Cells x genes, as stored (not copied).
    kind
        ``"counts"`` (raw or counts-like) or ``"lognorm"`` (log-normalised).
    source
        ``'layers["counts"]'``, ``"X"`` or ``'layers["<name>"]'``.
    reason
        Why this matrix and kind were assumed (printed and saved with results).
    """

    matrix: Any
    kind: InputKind
    source: str
    reason: str


def find_expression(
    adata: ad.AnnData,
    expected: Literal["auto", "counts", "normalized"] = "auto",
    *,
    layer: str | None = None,
) -> Expression:
    """The one rule every scaml command uses to find its expression matrix and tell counts from log data.

    ``layers["counts"]`` is read when it holds counts (otherwise a warning and ``X``); then ``X``:
    non-negative integers are raw counts; non-integer values far above log scale
    (> :data:`LOG_SCALE_MAX`, e.g. estimated counts) are taken as counts with a warning; anything
    else non-negative is log-normalised; negative values (scaled data) are refused.

    Parameters
    ----------
    adata
        The data (not modified).
    expected
        ``"auto"`` detects; ``"counts"`` requires raw (integer) counts and raises otherwise;
        ``"normalized"`` takes ``X`` as log-normalised without checking for integers
        (``layers["counts"]`` is then not read).
    layer
        Read this layer instead (it must exist); its kind is detected the same way.

    Returns
    -------
    Expression

    Raises
    ------
    ScamlError
        A missing ``layer``, negative values, or counts required but not found.
    """
    from .errors import missing_key_error

    if layer is not None:
        if layer not in adata.layers:
            raise missing_key_error(layer, adata.layers.keys(), "adata.layers", "--layer")
        return _classify(adata.layers[layer], f"layers[{layer!r}]", expected)
    if expected != "normalized" and "counts" in adata.layers:
        is_counts, problem = counts_verdict(adata.layers["counts"])
        if is_counts and (problem is None or expected == "auto"):
            return _classify(adata.layers["counts"], 'layers["counts"]', expected)
        warn(f'layers["counts"] does not hold raw counts ({problem}); reading X instead')
    return _classify(adata.X, "X", expected)


def _classify(X: Any, source: str, expected: str) -> Expression:
    if X is None:
        raise ScamlError(f"{source} is empty; put the expression matrix (raw counts preferred) in X.")
    problem = count_matrix_problem(X)
    data = X.data if sp.issparse(X) else np.asarray(X)
    if data.size and np.nanmin(data) < 0:
        raise ScamlError(
            f"{source} holds negative values (min {float(np.nanmin(data)):.3g}): it looks scaled or batch-corrected, "
            "not counts or log-normalised data. Put raw counts (or log-normalised values) in X or layers['counts'], "
            "or pass an existing embedding (e.g. --use-rep X_pca, --embedding X_pca)."
        )
    if expected == "counts":
        if problem is not None:
            raise ScamlError(
                f"counts are required but {source} is not a raw count matrix: {problem}. Put raw counts in X or "
                "layers['counts'] (e.g. adata.X = adata.layers['counts']), or use log-normalised data with "
                "--input-kind normalized where the command takes it."
            )
        return Expression(X, "counts", source, f"{source} holds non-negative integers (counts required)")
    if expected == "normalized":
        return Expression(X, "lognorm", source, f"{source} taken as log-normalised (--input-kind normalized)")
    if problem is None:
        return Expression(X, "counts", source, f"{source} holds non-negative integers, taken as raw counts")
    counts_like, _ = counts_verdict(X)
    if counts_like:
        top = float(data.max())
        warn(f"{source} is not integer ({problem}) but reaches {top:.4g}, far above log-normalised values: "
             "taken as (non-integer) counts; pass --input-kind normalized if it is normalised data")
        return Expression(X, "counts", source, f"{source} holds non-integer values up to {top:.4g}, taken as counts")
    return Expression(X, "lognorm", source, f"{source} is not raw counts ({problem}); taken as log-normalised")


def lognormalized(adata: ad.AnnData, expected: Literal["auto", "counts", "normalized"] = "auto",
                  target_sum: float = 1e4) -> tuple[Any, Expression]:
    """Log-normalised expression of every cell: counts normalised to ``target_sum`` and log1p, log data as is.

    Returns the float32 matrix (sparse stays sparse, a copy) and the :class:`Expression` it came from.
    """
    found = find_expression(adata, expected)
    if found.kind == "counts":
        return log_normalize(found.matrix, target_sum), found
    X = found.matrix
    X = sp.csr_matrix(X, dtype=np.float32, copy=True) if sp.issparse(X) else np.array(X, dtype=np.float32)
    return X, found


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
    removed: dict[str, int] = {}
    rules = [("min_genes", adata.obs["n_genes_by_counts"].to_numpy() >= min_genes)]
    if max_genes is not None:
        rules.append(("max_genes", adata.obs["n_genes_by_counts"].to_numpy() <= max_genes))
    if max_pct_mito is not None:
        rules.append(("max_pct_mito", adata.obs["pct_counts_mt"].to_numpy() <= max_pct_mito))
    apply_cell_rules(
        adata, rules, removed,
        lambda: f"QC removed every cell ({removed}); loosen --min-genes (now {min_genes}), --max-genes "
        f"(now {max_genes}) or --max-pct-mito (now {max_pct_mito}).",
    )
    keep_features_in_cells(adata, min_cells, removed, "genes", "no gene is detected")
    removed["n_mito_genes"] = int(adata.var["mt"].sum())
    return removed


def apply_cell_rules(
    adata: ad.AnnData, rules: list[tuple[str, np.ndarray]], removed: dict[str, int], none_left: Callable[[], str]
) -> None:
    """Keep the cells that pass every QC rule, in place; count in ``removed`` what each rule removed.

    Parameters
    ----------
    adata
        Filtered in place.
    rules
        ``(name, passes)`` pairs, applied in order (a cell is counted by the first rule it fails).
    removed
        Gets ``cells_removed_<name>`` for every rule.
    none_left
        Builds the error message when no cell passes.

    Raises
    ------
    ScamlError
        No cell passes the rules.
    """
    keep = np.ones(adata.n_obs, dtype=bool)
    for name, ok in rules:
        removed[f"cells_removed_{name}"] = int((keep & ~ok).sum())
        keep &= ok
    if not keep.any():
        raise ScamlError(none_left())
    if not keep.all():
        adata._inplace_subset_obs(keep)


def keep_features_in_cells(
    adata: ad.AnnData, min_cells: int, removed: dict[str, int], what: str, none_left: str, *,
    record_seen: bool = False,
) -> None:
    """Keep the features (genes, peaks) seen in at least ``min_cells`` cells, in place.

    Writes ``removed["<what>_removed_min_cells"]`` (and ``var["n_cells_by_counts"]`` with
    ``record_seen``); ``none_left`` starts the error when no feature is kept.
    """
    seen = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    if record_seen:
        adata.var["n_cells_by_counts"] = seen.astype(np.int64)
    keep = seen >= min_cells
    removed[f"{what}_removed_min_cells"] = int((~keep).sum())
    if not keep.any():
        raise ScamlError(f"{none_left} in {min_cells} cells; lower --min-cells (now {min_cells}).")
    if not keep.all():
        adata._inplace_subset_var(keep)


def normalize_log1p(adata: ad.AnnData, target_sum: float = 1e4) -> None:
    """Keep raw counts in ``layers["counts"]``, then normalise to ``target_sum`` per cell and log1p X."""
    import scanpy as sc

    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)


def highly_variable_genes(
    lognorm: Any,
    n_top_genes: int,
    *,
    batch: Any = None,
    var_names: Sequence[str] | None = None,
) -> np.ndarray:
    """The one HVG rule: the ``n_top_genes`` Seurat-flavour highly variable genes of log-normalised data.

    scanpy's ``highly_variable_genes(flavor="seurat")``, per batch when ``batch`` is given (genes
    ranked by the number of batches in which they are variable), computed from per-batch gene sums
    (:mod:`scaml.hvg`) so that the chunked path selects the same genes. When ``n_top_genes`` is at least
    the number of genes every gene is kept, with a warning when it is larger (as scanpy does).

    Parameters
    ----------
    lognorm
        Cells x genes, log-normalised (sparse or dense).
    n_top_genes
        Genes to select (at least 1).
    batch
        One batch label per cell, or None. Batches of fewer than 2 cells make the selection
        run over all cells.
    var_names
        Gene names (only for the messages and scanpy's table).

    Returns
    -------
    numpy.ndarray
        Boolean mask over the genes.
    """
    n_genes = int(lognorm.shape[1])
    if int(n_top_genes) < 1:
        raise ScamlError(f"the number of highly variable genes must be at least 1; got {n_top_genes}.")
    if int(n_top_genes) >= n_genes:
        if int(n_top_genes) > n_genes:
            warn(f"{n_top_genes} highly variable genes were asked for but the data has only {n_genes} genes: "
                 f"using all {n_genes} genes")
        return np.ones(n_genes, dtype=bool)
    codes, n_batches = hvg_batch_codes(batch, lognorm.shape[0])
    names = unique_names(var_names, n_genes)
    mask = hvg_from_sums(gene_sums(lognorm, codes, n_batches), int(n_top_genes), names, batched=n_batches > 1)
    if mask.sum() < int(n_top_genes):
        warn(f"only {int(mask.sum())} genes vary in these cells; using those instead of {n_top_genes}")
    return mask


def hvg_batch_codes(batch: Any, n_cells: int) -> tuple[np.ndarray | None, int]:
    """Integer batch codes (sorted labels) for the HVG rule, and the number of batches.

    One batch (codes None) when ``batch`` is None, holds one label, or has a batch of fewer than
    2 cells (said in a message): the selection then runs over all cells.
    """
    import pandas as pd

    if batch is None:
        return None, 1
    labels = pd.Categorical(np.asarray(batch).astype(str))
    if len(labels) != n_cells:
        raise ScamlError(f"batch has {len(labels)} labels for {n_cells} cells.")
    counts = np.bincount(labels.codes, minlength=len(labels.categories))
    if len(labels.categories) > 1 and counts.min() >= 2:
        return labels.codes.astype(np.int64), len(labels.categories)
    if len(labels.categories) > 1:
        info("a batch has fewer than 2 cells; selecting highly variable genes over all cells")
    return None, 1


def unique_names(var_names: Sequence[str] | None, n_genes: int) -> list[str]:
    """Gene names made unique as anndata does (``name-1``...), or ``g0, g1...`` when none are given."""
    import pandas as pd

    if var_names is None:
        return [f"g{i}" for i in range(n_genes)]
    return list(ad.utils.make_index_unique(pd.Index([str(g) for g in var_names])))


def select_hvg(adata: ad.AnnData, n_top_genes: int = 2000, batch_key: str | None = None) -> int:
    """Mark highly variable genes of log-normalised ``X`` in ``var["highly_variable"]`` (:func:`highly_variable_genes`).

    Returns the number of genes marked.
    """
    batch = adata.obs[batch_key].to_numpy() if batch_key is not None else None
    mask = highly_variable_genes(adata.X, n_top_genes, batch=batch, var_names=adata.var_names)
    adata.var["highly_variable"] = mask
    return int(mask.sum())


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
