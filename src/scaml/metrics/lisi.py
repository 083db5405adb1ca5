"""Local inverse Simpson's index (LISI) of Korsunsky et al. 2019 (Harmony paper).

For each cell, a Gaussian kernel over its ``3 * perplexity`` nearest
neighbours (the cell itself counted, then left out, as in the reference
implementation) is calibrated by bisection so that the entropy of the
neighbour weights equals ``log(perplexity)``; LISI is the inverse Simpson's
index ``1 / sum_c p_c**2`` of the category proportions ``p_c`` under those
weights. It ranges from 1 (one category around the cell) to the number of
categories (perfect mixing).
"""

from __future__ import annotations

import numpy as np

from ..neighbors import Neighbors


def lisi_from_neighbors(
    neighbors: Neighbors,
    categories: np.ndarray,
    perplexity: float = 30,
    *,
    tol: float = 1e-5,
    max_iter: int = 50,
) -> np.ndarray:
    """Per-cell LISI of a categorical variable.

    Parameters
    ----------
    neighbors
        Shared neighbour result with at least ``3 * perplexity - 1`` neighbours.
    categories
        ``(n_cells,)`` integer codes (0 .. n_categories - 1) of the variable, e.g. batch.
    perplexity
        Effective neighbourhood size (30 in the LISI paper and in scIB).
    tol
        Stop the bisection when ``|H - log(perplexity)| < tol``.
    max_iter
        Bisection steps at most.

    Returns
    -------
    numpy.ndarray
        ``(n_cells,)`` LISI values in ``[1, n_categories]``; NaN for a cell whose
        kernel underflows (all neighbours infinitely far).
    """
    P, indices = lisi_weights(neighbors, perplexity, tol=tol, max_iter=max_iter)
    return inverse_simpson(P, indices, categories)


def lisi_weights(
    neighbors: Neighbors,
    perplexity: float = 30,
    *,
    tol: float = 1e-5,
    max_iter: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """The LISI kernel weights of each cell's neighbours (they do not depend on the categories).

    Computed once per embedding, they serve iLISI and cLISI alike.

    Parameters
    ----------
    neighbors
        Shared neighbour result.
    perplexity, tol, max_iter
        As :func:`lisi_from_neighbors`.

    Returns
    -------
    weights
        ``(n_cells, 3 * perplexity - 1)`` row-normalised weights (rows of zeros where the kernel underflows).
    indices
        The matching neighbour indices.
    """
    k = min(int(round(3 * perplexity)) - 1, neighbors.k)
    nb = neighbors.subset(k)
    D = nb.distances.astype(np.float64)
    n = D.shape[0]
    log_u = np.log(perplexity)
    beta = np.ones(n)
    beta_min = np.full(n, -np.inf)
    beta_max = np.full(n, np.inf)
    active = np.ones(n, dtype=bool)
    P = np.empty_like(D)
    for _ in range(max_iter + 1):  # the first evaluation at beta = 1, then max_iter bisection steps
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        H, Prow = _entropy(D[rows], beta[rows])
        P[rows] = Prow
        diff = H - log_u
        done = np.abs(diff) < tol
        up = (diff > 0) & ~done  # entropy too high: narrow the kernel (larger beta)
        down = (diff <= 0) & ~done
        r_up, r_down = rows[up], rows[down]
        beta_min[r_up] = beta[r_up]
        beta[r_up] = np.where(np.isinf(beta_max[r_up]), beta[r_up] * 2, (beta[r_up] + beta_max[r_up]) / 2)
        beta_max[r_down] = beta[r_down]
        beta[r_down] = np.where(
            np.isinf(beta_min[r_down]), beta[r_down] / 2, (beta[r_down] + beta_min[r_down]) / 2
        )
        active[rows[done]] = False
    return P, nb.indices


def inverse_simpson(weights: np.ndarray, indices: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Per-cell inverse Simpson's index ``1 / sum_c p_c**2`` of the weighted category proportions.

    Parameters
    ----------
    weights
        ``(n_cells, k)`` neighbour weights from :func:`lisi_weights`.
    indices
        ``(n_cells, k)`` neighbour indices.
    categories
        ``(n_cells,)`` integer codes.

    Returns
    -------
    numpy.ndarray
        LISI per cell (NaN where all weights are zero).
    """
    P = weights
    n = P.shape[0]
    codes = np.asarray(categories)[indices]
    n_cat = int(np.max(categories)) + 1 if len(categories) else 0
    rows = np.repeat(np.arange(n), codes.shape[1])
    proportions = np.bincount(rows * n_cat + codes.ravel(), weights=P.ravel(), minlength=n * n_cat)
    simpson = np.square(proportions.reshape(n, n_cat)).sum(axis=1)
    with np.errstate(divide="ignore"):
        out = 1.0 / simpson
    out[~np.isfinite(out)] = np.nan
    return out


def _entropy(D: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entropy and normalised weights of the kernel ``exp(-beta * d)`` for each row."""
    P = np.exp(-D * beta[:, None])
    s = P.sum(axis=1)
    ok = s > 0
    H = np.zeros(D.shape[0])
    safe = np.where(ok, s, 1.0)
    H[ok] = np.log(safe[ok]) + beta[ok] * (D[ok] * P[ok]).sum(axis=1) / safe[ok]
    P = np.where(ok[:, None], P / safe[:, None], 0.0)
    return H, P


def ilisi_scaled(lisi: np.ndarray, n_batches: int) -> float:
    """scIB-scaled iLISI: ``(median - 1) / (n_batches - 1)``, 0 (no mixing) to 1 (perfect).

    Parameters
    ----------
    lisi
        Per-cell LISI of the batch variable.
    n_batches
        Number of batches (at least 2).
    """
    return float((np.nanmedian(lisi) - 1) / (n_batches - 1))


def clisi_scaled(lisi: np.ndarray, n_labels: int) -> float:
    """scIB-scaled cLISI: ``(n_labels - median) / (n_labels - 1)``, 1 = pure neighbourhoods.

    Parameters
    ----------
    lisi
        Per-cell LISI of the cell-type label.
    n_labels
        Number of labels (at least 2).
    """
    return float((n_labels - np.nanmedian(lisi)) / (n_labels - 1))
