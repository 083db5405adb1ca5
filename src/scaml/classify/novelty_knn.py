"""The ``coverage`` (default) and ``knn`` novelty methods, on a batch-corrected embedding of every cell.

``knn`` scores a cell by its distance to the nearest non-flagged cells. ``coverage`` (the default of
``scaml novelty``) combines that distance with the *query share*: the fraction of a cell's neighbours,
in the joint kNN graph of the reference and the query, that are query cells. A cell far from every
reference cell has a large distance; a cell of a type the reference lacks sits among other query
cells, even when that type is close to a reference type (CD4 Naive T next to CD4 Memory T), so its
query share is high. The two are combined by Fisher's method on their ranks (:func:`combine_ranks`).

The embedding is a PCA of the log-normalised features, corrected for batches with scaml's Harmony
(:func:`scaml.harmony.run_harmony`) when the data has several batches. It never uses the flag: by
default (``pca_cells="all"``) the PCA and Harmony see every cell, as an analyst's preprocessing of a
new dataset would, so that the directions in which a novel population differs from the others are in
the embedding; with ``pca_cells="reference"`` the PCA of each fold is fitted on that fold's reference
cells only and the other cells are projected onto it.

Scores are cross-fitted over the folds of :func:`scaml.classify.novelty._assign_folds`: the cells of
fold *k* (flagged or not) are scored against the reference of fold *k*, the non-flagged cells of the
other folds, so a cell is never its own reference. The score is the mean distance to the
``n_neighbors`` nearest reference cells (cosine distance by default: Euclidean distance between
unit-length rows), optionally divided by the mean of the same quantity of those reference cells within
the reference (a local-density ratio). For the query share of fold *k*, the reference is the same and
the query is the non-flagged cells of fold *k* (the controls) plus every flagged cell
(:func:`query_share_scores`). Neighbours come from scaml's one search,
:func:`scaml.neighbors.query_neighbors` / :func:`scaml.neighbors.compute_neighbors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ScamlError

#: Distances of the ``knn`` method.
METRICS = ("cosine", "euclidean")

#: Cells the ``knn`` method's PCA (and Harmony) is fitted on.
PCA_CELLS = ("all", "reference")

#: How the ``coverage`` method combines the ranks of the distance and of the query share.
COMBINE = ("fisher", "mean", "max")

#: Hyperparameters of the ``coverage`` method (``--param coverage.NAME=VALUE``), chosen on
#: benchmarks/bench_novelty.py (held-out kang types, cellbench doublets, pancreas cells in PBMCs).
COVERAGE_HYPERPARAMETERS: dict[str, Any] = {
    "n_neighbors": 30,      # reference cells of the distance
    "share_neighbors": 10,  # neighbours of the query share (joint reference + query graph)
    "combine": "fisher",    # Fisher's method on the two ranks; "mean" or "max" of the ranks
    "metric": "cosine",
    "harmony": True,
    "harmony_theta": 2.0,
}

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _as_bool(value: Any, name: str, method: str = "knn") -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in _BOOL_WORDS:
        return _BOOL_WORDS[word]
    raise ScamlError(f"{method}.{name} must be true or false; got {value!r} (e.g. --param {method}.{name}=False).")


def _whole(value: Any, name: str, method: str, example: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ScamlError(f"{method}.{name} must be a whole number of at least 1; got {value!r} "
                         f"(e.g. --param {method}.{name}={example}).")
    return int(value)


def _theta(value: Any, method: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value)
            or value < 0):
        raise ScamlError(f"{method}.harmony_theta must be a number >= 0 (Harmony's diversity penalty; default 2); "
                         f"got {value!r}.")
    return float(value)


def _choice(value: Any, name: str, method: str, allowed: Sequence[str]) -> Any:
    if value not in allowed:
        raise ScamlError(f"unknown {method}.{name} {value!r}; use one of {', '.join(allowed)}.")
    return value


def check_knn_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``knn`` hyperparameters and return them with their types resolved.

    Parameters
    ----------
    params
        ``n_neighbors``, ``metric``, ``density_ratio``, ``pca_cells``, ``harmony``, ``harmony_theta``
        (:data:`scaml.classify.models.NOVELTY_HYPERPARAMETERS` ``["knn"]`` with overrides).

    Returns
    -------
    dict
        The same keys, with booleans and numbers as Python types.

    Raises
    ------
    ScamlError
        A value out of range or of the wrong kind, named with the fix.
    """
    out = dict(params)
    out["n_neighbors"] = _whole(params["n_neighbors"], "n_neighbors", "knn", 30)
    _choice(params["metric"], "metric", "knn", METRICS)
    _choice(params["pca_cells"], "pca_cells", "knn", PCA_CELLS)
    out["density_ratio"] = _as_bool(params["density_ratio"], "density_ratio")
    out["harmony"] = _as_bool(params["harmony"], "harmony")
    out["harmony_theta"] = _theta(params["harmony_theta"], "knn")
    return out


def check_coverage_params(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``coverage`` hyperparameters and return them with their types resolved.

    Parameters
    ----------
    params
        ``n_neighbors``, ``share_neighbors``, ``combine``, ``metric``, ``harmony``, ``harmony_theta``
        (:data:`COVERAGE_HYPERPARAMETERS` with overrides).

    Returns
    -------
    dict
        The same keys, with booleans and numbers as Python types.

    Raises
    ------
    ScamlError
        A value out of range or of the wrong kind, named with the fix.
    """
    out = dict(params)
    out["n_neighbors"] = _whole(params["n_neighbors"], "n_neighbors", "coverage", 30)
    out["share_neighbors"] = _whole(params["share_neighbors"], "share_neighbors", "coverage", 10)
    _choice(params["combine"], "combine", "coverage", COMBINE)
    _choice(params["metric"], "metric", "coverage", METRICS)
    out["harmony"] = _as_bool(params["harmony"], "harmony", "coverage")
    out["harmony_theta"] = _theta(params["harmony_theta"], "coverage")
    return out


def knn_scores(
    E: np.ndarray,
    normal: np.ndarray,
    fold: np.ndarray,
    *,
    n_neighbors: int,
    density_ratio: bool = False,
    random_state: int = 0,
) -> tuple[np.ndarray, int]:
    """Cross-fitted kNN novelty scores on a ready embedding.

    Parameters
    ----------
    E
        Cells x dimensions embedding of every cell (rows normalised to unit length for the cosine distance).
    normal
        Integer indices of the non-flagged cells (the only possible reference cells).
    fold
        Fold of every cell; the cells of fold *k* are scored against the non-flagged cells of the other folds.
    n_neighbors
        Reference cells per scored cell (reduced to the size of the smallest reference).
    density_ratio
        Divide by the mean distance of those reference cells to their own ``n_neighbors`` nearest
        reference cells (a local-density ratio, near 1 for a typical cell).
    random_state
        Seed of the approximate search (used above :data:`scaml.neighbors.EXACT_MAX_CELLS` cells).

    Returns
    -------
    score, k
        The score of every cell (higher = more novel) and the number of neighbours used.
    """
    E = np.ascontiguousarray(E, dtype=np.float32)
    folds = np.unique(fold)
    smallest = min(int(np.sum(fold[normal] != k)) for k in folds)
    k = int(min(n_neighbors, smallest - 1 if density_ratio else smallest))
    if k < 1:
        raise ScamlError(f"a fold's reference has only {smallest} non-flagged cells; use fewer --n-folds.")
    score = np.empty(fold.size, dtype=np.float64)
    for f in folds:
        rows = np.flatnonzero(fold == f)
        score[rows] = _score_against(E[normal[fold[normal] != f]], E[rows], k, density_ratio, random_state)
    return score, k


def _score_against(ref: np.ndarray, query: np.ndarray, k: int, density_ratio: bool, random_state: int) -> np.ndarray:
    """Mean distance of each query cell to its ``k`` nearest reference cells (over theirs with the ratio)."""
    from ..neighbors import compute_neighbors, query_neighbors

    dist, idx = query_neighbors(ref, query, k, random_state=random_state)
    value = dist.mean(axis=1)
    if density_ratio:
        own = compute_neighbors(ref, k, random_state=random_state).distances.mean(axis=1)
        value = value / np.maximum(own[idx].mean(axis=1), 1e-12)
    return value


def _pca(X_fit: Any, X_all: Any, n_pcs: int, random_state: int) -> np.ndarray:
    """PCA fitted on ``X_fit`` (log-normalised values, not standardised), applied to ``X_all``."""
    from sklearn.decomposition import PCA

    fit = X_fit.toarray() if hasattr(X_fit, "toarray") else np.asarray(X_fit)
    full = X_all.toarray() if hasattr(X_all, "toarray") else np.asarray(X_all)
    n = int(min(n_pcs, fit.shape[1], fit.shape[0] - 1)) if n_pcs else 0
    if n < 1 or n >= fit.shape[1]:
        return full.astype(np.float32)
    return PCA(n_components=n, random_state=random_state).fit(fit).transform(full).astype(np.float32)


def _correct(Z: np.ndarray, batch: np.ndarray | None, theta: float, random_state: int) -> np.ndarray:
    """Harmony-corrected ``Z`` (unchanged without at least two batches among its cells)."""
    if batch is None or np.unique(batch).size < 2:
        return Z
    from ..harmony import run_harmony

    return np.asarray(run_harmony(Z, batch, theta=theta, random_state=random_state, verbose=False).Z_corr,
                      dtype=np.float32)


def _unit(E: np.ndarray) -> np.ndarray:
    return E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12)


def knn_novelty(
    X: Any,
    normal: np.ndarray,
    fold: np.ndarray,
    *,
    params: dict[str, Any],
    n_pcs: int,
    batch: np.ndarray | None,
    reduce: bool = True,
    random_state: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``knn`` novelty score of every cell: embedding (PCA, Harmony), then :func:`knn_scores`.

    Parameters
    ----------
    X
        Cells x features (log-normalised HVGs, sparse or dense), every cell.
    normal, fold
        Non-flagged cells and the fold of every cell (see :func:`knn_scores`).
    params
        Checked ``knn`` hyperparameters (:func:`check_knn_params`).
    n_pcs
        Principal components (0, or at least the number of features: the features themselves).
    batch
        Batch label of every cell, or None: Harmony corrects the PCA when there are two or more.
    reduce
        False when ``X`` is already an embedding (an ``obsm`` key): it is used as it is, without
        PCA or Harmony.
    random_state
        Seed of the PCA, Harmony and the search.

    Returns
    -------
    score, description
        Scores (higher = more novel) and how the embedding was built (for novelty_metrics.json).
    """
    use_batch = batch if (reduce and params["harmony"]) else None
    harmony = use_batch is not None and np.unique(use_batch).size >= 2
    cosine = params["metric"] == "cosine"
    k = int(params["n_neighbors"])
    if not reduce:
        E = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
        score, k = knn_scores(_unit(E) if cosine else E, normal, fold, n_neighbors=k,
                              density_ratio=params["density_ratio"], random_state=random_state)
    elif params["pca_cells"] == "all":
        E = _correct(_pca(X, X, n_pcs, random_state), use_batch, params["harmony_theta"], random_state)
        score, k = knn_scores(_unit(E) if cosine else E, normal, fold, n_neighbors=k,
                              density_ratio=params["density_ratio"], random_state=random_state)
    else:
        score = np.empty(fold.size, dtype=np.float64)
        smallest = min(int(np.sum(fold[normal] != f)) for f in np.unique(fold))
        k = int(min(k, smallest - 1 if params["density_ratio"] else smallest))
        if k < 1:
            raise ScamlError(f"a fold's reference has only {smallest} non-flagged cells; use fewer --n-folds.")
        for f in np.unique(fold):
            ref = normal[fold[normal] != f]
            rows = np.concatenate([ref, np.flatnonzero(fold == f)])
            # the PCA of this fold sees only its reference; Harmony corrects reference and scored cells together
            Z = _pca(X[ref], X[rows], n_pcs, random_state)
            Z = _correct(Z, None if use_batch is None else use_batch[rows], params["harmony_theta"], random_state)
            Z = _unit(Z) if cosine else Z
            score[rows[ref.size:]] = _score_against(Z[:ref.size], Z[ref.size:], k, params["density_ratio"],
                                                    random_state)
    description = {
        "embedding": ("the given embedding" if not reduce
                      else f"PCA ({n_pcs} PCs) of the log-normalised features fitted on "
                           + ("all cells (flag not used)" if params["pca_cells"] == "all"
                              else "each fold's reference cells")),
        "harmony": bool(harmony),
        "metric": params["metric"],
        "n_neighbors_used": int(k),
        "density_ratio": bool(params["density_ratio"]),
    }
    return score, description


def query_share_scores(
    E: np.ndarray,
    normal: np.ndarray,
    fold: np.ndarray,
    *,
    n_neighbors: int,
    random_state: int = 0,
) -> tuple[np.ndarray, int]:
    """Cross-fitted query share: the fraction of a cell's neighbours that are query cells.

    For fold *k* the reference is the non-flagged cells of the other folds and the query is the
    non-flagged cells of fold *k* plus every flagged cell; each cell of fold *k* (flagged or not) is
    scored by the share of query cells among its ``n_neighbors`` nearest cells of reference and
    query together, itself excluded. Reference and query together are every cell, so one neighbour
    search over all cells serves every fold. A non-flagged cell's own type is about ``1 / n_folds`` query
    in that pool, so its share is near ``1 / n_folds``; a cell of a type the reference lacks has
    only query cells around it (share near 1). The flag is used only to keep flagged cells out of
    the reference, as in :func:`knn_scores`; when the flag is independent of expression, flagged
    and non-flagged cells of fold *k* see the same pool and score alike.

    Parameters
    ----------
    E
        Cells x dimensions embedding of every cell (unit-length rows for the cosine distance).
    normal
        Integer indices of the non-flagged cells.
    fold
        Fold of every cell.
    n_neighbors
        Neighbours per cell (at most the number of cells minus one).
    random_state
        Seed of the approximate search (used above :data:`scaml.neighbors.EXACT_MAX_CELLS` cells).

    Returns
    -------
    share, k
        The query share of every cell (0 to 1, higher = more novel) and the number of neighbours used.
    """
    from ..neighbors import compute_neighbors

    # the pool of every fold is every cell (its reference plus its query): one search serves all folds
    k = int(min(n_neighbors, fold.size - 1))
    if k < 1:
        raise ScamlError(f"the query share needs at least 2 cells; got {fold.size}.")
    idx = compute_neighbors(np.ascontiguousarray(E, dtype=np.float32), k, random_state=random_state).indices
    flagged = np.ones(fold.size, dtype=bool)
    flagged[normal] = False
    query = flagged[idx] | (fold[idx] == fold[:, None])  # a neighbour is a query cell of this cell's fold
    share = query.mean(axis=1)
    return share, k


def combine_ranks(scores: list[np.ndarray], how: str = "fisher") -> np.ndarray:
    """Combine novelty scores through their ranks among all cells (higher = more novel).

    Parameters
    ----------
    scores
        Scores of the same cells (higher = more novel), on any scales.
    how
        ``"fisher"``: Fisher's method, ``-sum(log p)`` with ``p = (n - rank + 0.5) / n`` the upper-tail
        rank of each score (a cell extreme on one score is found even when the other is typical);
        ``"mean"``: the mean rank; ``"max"``: the larger rank.

    Returns
    -------
    numpy.ndarray
        The combined score. Ranks never use the flag: all cells are ranked together.
    """
    from scipy.stats import rankdata

    if how not in COMBINE:
        raise ScamlError(f"unknown coverage.combine {how!r}; use one of {', '.join(COMBINE)}.")
    n = scores[0].size
    ranks = np.vstack([rankdata(s) for s in scores])  # 1 (lowest) ... n (highest), ties averaged
    if how == "fisher":
        return -np.log((n - ranks + 0.5) / n).sum(axis=0)
    if how == "mean":
        return ranks.mean(axis=0) / n
    return ranks.max(axis=0) / n


def _embedding(X: Any, n_pcs: int, batch: np.ndarray | None, theta: float, reduce: bool, random_state: int
               ) -> np.ndarray:
    """The embedding of every cell: ``X`` as it is, or its PCA fitted on all cells, Harmony-corrected."""
    if not reduce:
        return np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    return _correct(_pca(X, X, n_pcs, random_state), batch, theta, random_state)


def coverage_novelty(
    X: Any,
    normal: np.ndarray,
    fold: np.ndarray,
    *,
    params: dict[str, Any],
    n_pcs: int,
    batch: np.ndarray | None,
    reduce: bool = True,
    random_state: int = 0,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """The ``coverage`` novelty score: kNN distance and query share, combined by their ranks.

    Both are computed on one embedding, the ``knn`` method's default one: a PCA of all cells (the flag
    is not used), Harmony-corrected when ``batch`` has two or more levels, or ``X`` itself when
    ``reduce`` is False. The distance is :func:`knn_scores` (``n_neighbors`` nearest reference cells),
    the query share :func:`query_share_scores` (``share_neighbors``); :func:`combine_ranks` merges them.

    Parameters
    ----------
    X
        Cells x features (log-normalised HVGs, sparse or dense) or an embedding, every cell.
    normal, fold
        Non-flagged cells and the fold of every cell.
    params
        Checked ``coverage`` hyperparameters (:func:`check_coverage_params`).
    n_pcs
        Principal components (0, or at least the number of features: the features themselves).
    batch
        Batch label of every cell, or None.
    reduce
        False when ``X`` is already an embedding: used as it is, without PCA or Harmony.
    random_state
        Seed of the PCA, Harmony and the search.

    Returns
    -------
    score, components, description
        Combined scores (higher = more novel), the two components (``"distance"``,
        ``"query_share"``) and how they were computed (for novelty_metrics.json).
    """
    use_batch = batch if (reduce and params["harmony"]) else None
    harmony = use_batch is not None and np.unique(use_batch).size >= 2
    E = _embedding(X, n_pcs, use_batch, params["harmony_theta"], reduce, random_state)
    if params["metric"] == "cosine":
        E = _unit(E)
    distance, k = knn_scores(E, normal, fold, n_neighbors=int(params["n_neighbors"]), random_state=random_state)
    share, k_share = query_share_scores(E, normal, fold, n_neighbors=int(params["share_neighbors"]),
                                        random_state=random_state)
    score = combine_ranks([distance, share], params["combine"])
    description = {
        "embedding": ("the given embedding" if not reduce
                      else f"PCA ({n_pcs} PCs) of the log-normalised features fitted on all cells (flag not used)"),
        "harmony": bool(harmony),
        "metric": params["metric"],
        "n_neighbors_used": int(k),
        "share_neighbors_used": int(k_share),
        "combine": params["combine"],
        "score": "rank combination of the mean distance to the nearest reference cells and the share of query "
                 "cells among the neighbours in the joint reference + query graph",
    }
    return score, {"distance": distance, "query_share": share}, description
