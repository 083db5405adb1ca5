"""Features for the classifier benchmark, chosen on the training cells only.

The expression matrix and its kind come from the one rule every scaml command uses,
:func:`scaml.preprocess.find_expression`: raw counts (preferred; ``layers["counts"]``
when it holds counts, else ``X``) or log-normalised values in ``X``; negative (scaled)
values are refused. Counts are normalised per cell to a fixed total (1e4) and
log1p-transformed (:func:`scaml.preprocess.log_normalize`), the same transform for every
cell, so the test split sees exactly the normalisation of the training split. Highly
variable genes (:func:`scaml.preprocess.highly_variable_genes`, Seurat flavour) are
computed on the training cells alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from .._utils import info, warn
from ..errors import ScamlError
from ..io import check_obsm_key
from ..preprocess import Expression, find_expression, highly_variable_genes, log_normalize

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


def check_feature_options(features: str, n_hvg: int, embedding: str | None) -> None:
    """Validate ``features`` and ``n_hvg`` (before any work is done).

    Raises
    ------
    ScamlError
        An unknown ``features`` or ``n_hvg`` below 1.
    """
    if embedding is not None:
        return
    if features not in FEATURE_KINDS:
        raise ScamlError(f"unknown --features {features!r}; use one of {', '.join(FEATURE_KINDS)}, or --embedding KEY.")
    if features == "hvg" and int(n_hvg) < 1:
        raise ScamlError(f"--n-hvg must be at least 1; got {n_hvg}.")


def hvg_count(adata: ad.AnnData, features: str, n_hvg: int, embedding: str | None) -> int:
    """The number of highly variable genes a run selects: ``n_hvg``, or every gene when there are fewer.

    Warns once (recorded in run.json) when ``n_hvg`` is larger than the number of genes, as scanpy's
    ``highly_variable_genes`` uses all genes then. Call it once per run and pass the result to
    :func:`build_features` so that a run of several splits warns only once.

    Parameters
    ----------
    adata
        The data.
    features, n_hvg, embedding
        As given to the run.

    Returns
    -------
    int
        ``min(n_hvg, adata.n_vars)`` (``n_hvg`` unchanged when genes are not selected).
    """
    if embedding is not None or features != "hvg" or int(n_hvg) <= adata.n_vars:
        return int(n_hvg)
    warn(f"--n-hvg {n_hvg} is larger than the number of genes ({adata.n_vars}): using all {adata.n_vars} genes")
    return int(adata.n_vars)


def find_run_expression(adata: ad.AnnData, embedding: str | None) -> Expression | None:
    """The expression matrix of a run (:func:`scaml.preprocess.find_expression`), None on an embedding.

    Found once per run, before anything is written, so that negative values are refused early
    and its warnings are given once.
    """
    return None if embedding is not None else find_expression(adata)


def describe_expression(found: Expression) -> str:
    """One line saying which matrix is read and how it is transformed (printed at the start of a run)."""
    what = ("raw counts (normalised to 1e4 per cell, log1p)" if found.kind == "counts"
            else "log-normalised values (used as they are)")
    return f"expression input: {found.source} assumed to hold {what} ({found.reason})"


def build_features(
    adata: ad.AnnData,
    rows: np.ndarray,
    train_rows: np.ndarray,
    *,
    features: str = "hvg",
    n_hvg: int = 3000,
    embedding: str | None = None,
    announce: bool = True,
    expression: Expression | None = None,
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
        Number of highly variable genes; every gene (with a warning) when the data has fewer.
    embedding
        An ``obsm`` key to use instead of genes (e.g. ``"X_harmony"``).
    announce
        Print which kind of input was assumed.
    expression
        The expression matrix found by :func:`scaml.preprocess.find_expression` (found here
        when None; a run passes it so that the data are inspected once).

    Returns
    -------
    FeatureSet
        The matrix for ``rows`` (in that order), feature names and a description.

    Raises
    ------
    ScamlError
        Unknown ``features``, ``n_hvg`` below 1, a missing ``embedding`` key, or an
        expression matrix with negative values.
    """
    if embedding is not None:
        emb = check_obsm_key(adata, embedding, flag="--embedding").astype(np.float32, copy=False)
        names = [f"{embedding}_{i + 1}" for i in range(emb.shape[1])]
        return FeatureSet(emb[rows], names, {"source": f'obsm["{embedding}"]', "n_features": len(names)})
    check_feature_options(features, n_hvg, None)
    found = expression if expression is not None else find_expression(adata)
    if announce:
        info(describe_expression(found))
    matrix = sp.csr_matrix(found.matrix[rows], dtype=np.float32)
    lognorm = log_normalize(matrix, TARGET_SUM) if found.kind == "counts" else matrix.copy()
    lognorm.eliminate_zeros()
    var_names = list(map(str, adata.var_names))
    genes = np.arange(adata.n_vars)
    if features == "hvg":
        position = {int(r): i for i, r in enumerate(rows)}
        local_train = np.fromiter((position[int(r)] for r in train_rows), dtype=np.int64, count=len(train_rows))
        genes = np.flatnonzero(highly_variable_genes(lognorm[local_train], int(n_hvg), var_names=var_names))
        lognorm = lognorm[:, genes]
    names = [var_names[g] for g in genes]
    if features != "hvg":
        chosen_on = "all genes"
    elif int(n_hvg) >= adata.n_vars:
        chosen_on = "all genes (the data has no more genes than --n-hvg)"
    else:
        chosen_on = "training cells only"
    description = {
        "source": found.source,
        "input_kind": found.kind,
        "input_reason": found.reason,
        "normalisation": f"per-cell total {TARGET_SUM:g}, log1p" if found.kind == "counts" else "none (log-normalised input)",
        "features": features,
        "n_features": len(names),
        "chosen_on": chosen_on,
    }
    return FeatureSet(sp.csr_matrix(lognorm, dtype=np.float32), names, description)
