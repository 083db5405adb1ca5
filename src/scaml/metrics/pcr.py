"""Principal-component regression (PCR) of scIB: how much variance does batch explain?

For an embedding, the principal components are regressed on the batch
(one-hot); ``PCR = sum_i R2_i * var_i / sum_i var_i``, the variance explained
by batch weighted over all components. The PCR comparison score is
``(PCR_before - PCR_after) / PCR_before`` between the unintegrated embedding
(e.g. ``X_pca``) and the integrated one, clipped at 0 (scIB / scib-metrics).
"""

from __future__ import annotations

import numpy as np


def pc_regression(X: np.ndarray, batches: np.ndarray) -> float:
    """Variance of an embedding explained by batch, weighted over its principal components.

    With a categorical covariate the least-squares fit of each component is the
    batch mean, so ``R2`` is the between-batch share of the component's sum of
    squares.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    batches
        ``(n_cells,)`` batch of each cell.

    Returns
    -------
    float
        Weighted ``R2`` in [0, 1].
    """
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    # principal components (all of them) via the small covariance matrix
    cov = Xc.T @ Xc / max(X.shape[0] - 1, 1)
    var, vecs = np.linalg.eigh(cov)
    var = np.clip(var, 0, None)
    pcs = Xc @ vecs
    codes, counts = np.unique(np.asarray(batches), return_inverse=True, return_counts=True)[1:]
    group_sums = np.zeros((counts.size, pcs.shape[1]))
    np.add.at(group_sums, codes, pcs)
    between = (np.square(group_sums) / counts[:, None]).sum(axis=0)  # pcs are centred
    total = np.square(pcs).sum(axis=0)
    r2 = np.where(total > 0, between / np.where(total > 0, total, 1.0), 0.0)
    return float(np.dot(r2, var) / var.sum()) if var.sum() > 0 else float("nan")


def pcr_comparison(X_before: np.ndarray, X_after: np.ndarray, batches: np.ndarray) -> tuple[float, float, float]:
    """scIB's PCR comparison: relative drop in batch-explained variance, clipped to [0, 1].

    Parameters
    ----------
    X_before
        Unintegrated embedding (e.g. ``X_pca``).
    X_after
        Integrated embedding, same cells.
    batches
        ``(n_cells,)`` batch of each cell.

    Returns
    -------
    score
        ``max(0, (before - after) / before)``; 1 means batch explains nothing any more.
    before
        PCR of ``X_before``.
    after
        PCR of ``X_after``.
    """
    before = pc_regression(X_before, batches)
    after = pc_regression(X_after, batches)
    if not before > 0:
        return float("nan"), before, after
    return float(max(0.0, (before - after) / before)), before, after
