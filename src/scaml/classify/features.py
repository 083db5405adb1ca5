"""Features for the classifier benchmark, chosen on the training cells only.

Two kinds of input are recognised: raw counts (preferred; ``layers["counts"]``
when present, else ``X`` if it holds non-negative integers) and
log-normalised values in ``X``. Counts are normalised per cell to a fixed
total (1e4) and log1p-transformed, the same transform for every cell, so the
test split sees exactly the normalisation of the training split. Highly
variable genes (Seurat flavour) are computed on the training cells alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._utils import info, warn
from ..errors import ScamlError
from ..io import check_obsm_key, count_matrix_problem
from ..preprocess import counts_verdict
from ..preprocess import log_normalize as log_normalize_counts

#: Fixed per-cell total used to normalise counts (independent of the split).
TARGET_SUM = 1e4

#: Feature kinds accepted by :func:`build_features`.
FEATURE_KINDS = ("hvg", "all")


@dataclass
class FeatureSet:
    """A cells x features matrix with its feature names and how it was built.

    Attributes
    ----------
    X
        Rows follow the cells requested (CSR float32 for genes, dense float32 for an embedding).
    names
        Feature names (genes or embedding columns).
    description
        What was done (input kind, source, number of features), written to the results.
    """

    X: Any
    names: list[str]
    description: dict[str, Any] = field(default_factory=dict)


def detect_expression(adata: ad.AnnData) -> tuple[Any, str, str]:
    """Find the expression matrix and say whether it holds counts or log-normalised values.

    Parameters
    ----------
    adata
        The data (not modified).

    Returns
    -------
    matrix, kind, source
        ``kind`` is ``"counts"`` or ``"lognorm"``; ``source`` is ``'layers["counts"]'`` or ``"X"``.
    """
    if "counts" in adata.layers:
        layer = adata.layers["counts"]
        problem = count_matrix_problem(layer)
        if problem is None:
            return layer, "counts", 'layers["counts"]'
        warn(f'layers["counts"] does not look like raw counts ({problem}); using X instead.')
    is_counts, problem = counts_verdict(adata.X)
    if is_counts:  # integers, or non-integer but clearly not logarithmic (estimated or corrected counts)
        return adata.X, "counts", "X"
    if "negative" in problem:
        warn(
            f"X holds negative values ({problem}); it looks scaled rather than log-normalised. "
            "Put log-normalised data or raw counts into X (or counts into layers['counts'])."
        )
    return adata.X, "lognorm", "X"


def log_normalize(matrix: Any, kind: str) -> sp.csr_matrix:
    """Per-cell normalisation to :data:`TARGET_SUM` and log1p for counts; log values pass through.

    Parameters
    ----------
    matrix
        Cells x genes (sparse or dense).
    kind
        ``"counts"`` or ``"lognorm"``.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 log-normalised values.
    """
    X = sp.csr_matrix(matrix, dtype=np.float32)
    X = log_normalize_counts(X, TARGET_SUM) if kind == "counts" else X.copy()
    X.eliminate_zeros()
    return X


def select_hvg(lognorm_train: sp.csr_matrix, var_names: list[str], n_hvg: int) -> np.ndarray:
    """Indices of the ``n_hvg`` Seurat-flavour highly variable genes of the training cells.

    Parameters
    ----------
    lognorm_train
        Log-normalised training cells x genes.
    var_names
        Gene names.
    n_hvg
        Number of genes to keep.
    """
    import scanpy as sc

    train = ad.AnnData(X=lognorm_train, var={"_": np.zeros(len(var_names))})
    train.var_names = list(map(str, var_names))
    table = sc.pp.highly_variable_genes(train, n_top_genes=n_hvg, flavor="seurat", inplace=False)
    hvg = np.flatnonzero(np.asarray(table["highly_variable"]))
    if hvg.size < n_hvg:
        # scanpy may return fewer genes when many have zero variance in the training split
        warn(f"only {hvg.size} genes vary in the training split; using those instead of {n_hvg}.")
    return np.sort(hvg)


def check_feature_options(features: str, n_hvg: int, embedding: str | None) -> None:
    """Validate ``features`` and ``n_hvg`` (before any work is done)."""
    if embedding is not None:
        return
    if features not in FEATURE_KINDS:
        raise ScamlError(f"unknown --features {features!r}; use one of {', '.join(FEATURE_KINDS)}, or --embedding KEY.")
    if features == "hvg" and int(n_hvg) < 1:
        raise ScamlError(f"--n-hvg must be at least 1; got {n_hvg}.")


def build_features(
    adata: ad.AnnData,
    rows: np.ndarray,
    train_rows: np.ndarray,
    *,
    features: str = "hvg",
    n_hvg: int = 3000,
    embedding: str | None = None,
    announce: bool = True,
) -> FeatureSet:
    """Build the feature matrix of ``rows`` with features chosen on ``train_rows`` only.

    Parameters
    ----------
    adata
        The data (not modified).
    rows
        Integer indices of the cells to return (training and test cells).
    train_rows
        Integer indices of the training cells (a subset of ``rows``) used to choose features.
    features
        ``"hvg"`` (highly variable genes of the training cells) or ``"all"`` (every gene).
        Ignored when ``embedding`` is given.
    n_hvg
        Number of highly variable genes.
    embedding
        An ``obsm`` key to use instead of genes (e.g. ``"X_harmony"``).
    announce
        Print which kind of input was assumed.

    Returns
    -------
    FeatureSet
        The matrix for ``rows`` (in that order), feature names and a description.
    """
    if embedding is not None:
        emb = check_obsm_key(adata, embedding, flag="--embedding").astype(np.float32, copy=False)
        names = [f"{embedding}_{i + 1}" for i in range(emb.shape[1])]
        return FeatureSet(emb[rows], names, {"source": f'obsm["{embedding}"]', "n_features": len(names)})
    if features not in FEATURE_KINDS:
        raise ScamlError(f"unknown --features {features!r}; use one of {', '.join(FEATURE_KINDS)}, or --embedding KEY.")
    if features == "hvg" and n_hvg > adata.n_vars:
        raise ScamlError(
            f"--n-hvg {n_hvg} is larger than the number of genes ({adata.n_vars}); choose --n-hvg <= {adata.n_vars} "
            "or use --features all."
        )
    if features == "hvg" and n_hvg < 1:
        raise ScamlError(f"--n-hvg must be at least 1; got {n_hvg}.")
    matrix, kind, source = detect_expression(adata)
    if announce:
        what = "raw counts (normalised to 1e4 per cell, log1p)" if kind == "counts" else "log-normalised values (used as they are)"
        info(f"expression input: {source} assumed to hold {what}")
    position = {int(r): i for i, r in enumerate(rows)}
    lognorm = log_normalize(matrix[rows], kind)
    var_names = list(map(str, adata.var_names))
    if features == "hvg":
        local_train = np.fromiter((position[int(r)] for r in train_rows), dtype=np.int64, count=len(train_rows))
        genes = select_hvg(lognorm[local_train], var_names, n_hvg)
        lognorm = lognorm[:, genes]
    else:
        genes = np.arange(adata.n_vars)
    names = [var_names[g] for g in genes]
    description = {
        "source": source,
        "input_kind": kind,
        "normalisation": f"per-cell total {TARGET_SUM:g}, log1p" if kind == "counts" else "none (log-normalised input)",
        "features": features,
        "n_features": len(names),
        "chosen_on": "training cells only" if features == "hvg" else "all genes",
    }
    return FeatureSet(sp.csr_matrix(lognorm, dtype=np.float32), names, description)
