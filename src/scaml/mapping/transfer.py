"""Label transfer from a reference to a query in a shared embedding: weighted kNN with uncertainty.

The array core :func:`transfer_labels` follows the weighted kNN classifier of
scArches (Lotfollahi et al. 2022): for each query cell, the ``k`` nearest
reference cells are found; their distances ``d`` are turned into weights by a
Gaussian-type kernel whose width comes from the spread of those distances
(``w = exp(-d / (2 / sd(d))**2)``, normalised to sum to one); the weights are
summed per reference label, giving a probability per label; the call is the
most probable label, its uncertainty ``1 - p(label)``, and the cell is called
``"Unknown"`` when the uncertainty exceeds a threshold. :func:`transfer_labels_adata`
is the thin AnnData layer.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, warn
from ..errors import ScamlError
from ..io import check_finite
from ..neighbors import query_neighbors


def _as_embedding(x: Any, what: str) -> np.ndarray:
    arr = check_finite(x, what)
    return np.ascontiguousarray(arr, dtype=np.float32)


def knn_weights(distances: np.ndarray) -> np.ndarray:
    """scArches' kernel weights of each cell's neighbours (rows sum to one).

    With ``s`` the standard deviation of a cell's ``k`` neighbour distances,
    each neighbour gets ``exp(-d / (2 / s)**2)`` = ``exp(-d * s**2 / 4)``;
    rows are then normalised. Computed relative to the nearest distance so that
    it never underflows; a cell whose neighbours are all at the same distance
    gets uniform weights.
    """
    distances = np.asarray(distances, dtype=np.float64)
    scale = distances.std(axis=1, keepdims=True) ** 2 / 4.0
    logits = -(distances - distances.min(axis=1, keepdims=True)) * scale
    weights = np.exp(logits)
    return weights / weights.sum(axis=1, keepdims=True)


def transfer_labels(
    ref_embedding: Any,
    ref_labels: Any,
    query_embedding: Any,
    *,
    n_neighbors: int = 50,
    threshold: float = 0.5,
    unknown_label: str = "Unknown",
    method: str = "auto",
    return_probabilities: bool = False,
    query_index: Any = None,
    random_state: int = 0,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Transfer labels from reference cells to query cells by weighted kNN.

    Parameters
    ----------
    ref_embedding
        Reference cells x dimensions (e.g. a VAE latent space or a Harmony embedding).
    ref_labels
        One label per reference cell. Missing labels and labels equal to
        ``unknown_label`` (unlabelled cells) are left out of the vote.
    query_embedding
        Query cells x dimensions in the same space.
    n_neighbors
        Reference neighbours per query cell (scArches uses 50); clipped to the
        number of labelled reference cells.
    threshold
        Uncertainty (``1 - p(predicted label)``) above which the call is ``unknown_label``.
        ``1.0`` never calls Unknown.
    unknown_label
        The label of uncertain calls.
    method
        Neighbour search: ``"auto"``, ``"exact"`` or ``"pynndescent"`` (see :func:`scaml.neighbors.query_neighbors`).
    return_probabilities
        Also return the query cells x labels probability table.
    query_index
        Row names of the result (e.g. the query's ``obs_names``); default ``0..n-1``.
    random_state
        Seed of the approximate neighbour search (exact search is deterministic).

    Returns
    -------
    DataFrame
        Per query cell: ``label`` (the call, ``unknown_label`` when uncertain),
        ``best_label`` (the most probable reference label, even when uncertain),
        ``probability`` (of ``best_label``) and ``uncertainty`` (``1 - probability``).
        With ``return_probabilities``, a tuple ``(calls, probabilities)``.

    Raises
    ------
    ScamlError
        Shapes or dimensions disagree, values are not finite, no reference cell is labelled,
        or the parameters are out of range.
    """
    ref = _as_embedding(ref_embedding, "the reference embedding")
    query = _as_embedding(query_embedding, "the query embedding")
    if ref.shape[1] != query.shape[1]:
        raise ScamlError(
            f"the reference embedding has {ref.shape[1]} dimensions but the query's has {query.shape[1]}; "
            "both must come from the same model or reference."
        )
    labels = pd.Series(np.asarray(ref_labels, dtype=object))
    if len(labels) != ref.shape[0]:
        raise ScamlError(
            f"got {len(labels)} reference labels for {ref.shape[0]} reference cells; pass one label per cell."
        )
    if not 0.0 <= float(threshold) <= 1.0:
        raise ScamlError(f"threshold must be between 0 and 1 (an uncertainty); got {threshold}.")
    if int(n_neighbors) < 1:
        raise ScamlError(f"n_neighbors must be at least 1; got {n_neighbors}.")
    labelled = labels.notna().to_numpy() & (labels.astype(str) != str(unknown_label)).to_numpy()
    if not labelled.any():
        raise ScamlError(
            f"no reference cell carries a label (all missing or {unknown_label!r}); "
            "label transfer needs an annotated reference."
        )
    if not labelled.all():
        info(f"label transfer: {int((~labelled).sum())} unlabelled reference cells left out of the vote")
    ref = ref[labelled]
    codes, classes = pd.factorize(labels[labelled].astype(str), sort=True)
    classes = np.asarray(classes, dtype=object)
    k = int(n_neighbors)
    if k > ref.shape[0]:
        warn(f"label transfer: n_neighbors={k} exceeds the {ref.shape[0]} labelled reference cells; using {ref.shape[0]}.")
        k = ref.shape[0]
    index = pd.RangeIndex(query.shape[0]) if query_index is None else pd.Index(query_index)
    if len(index) != query.shape[0]:
        raise ScamlError(f"query_index has {len(index)} names for {query.shape[0]} query cells.")

    if query.shape[0] == 0:
        proba = np.zeros((0, classes.size))
    else:
        distances, indices = query_neighbors(ref, query, k, method=method, random_state=random_state)
        weights = knn_weights(distances)
        neighbour_codes = codes[indices]
        rows = np.repeat(np.arange(query.shape[0]), k)
        flat = rows * classes.size + neighbour_codes.ravel()
        proba = np.bincount(flat, weights=weights.ravel(), minlength=query.shape[0] * classes.size)
        proba = proba.reshape(query.shape[0], classes.size)
    best = proba.argmax(axis=1) if proba.shape[0] else np.zeros(0, dtype=int)
    best_prob = proba[np.arange(proba.shape[0]), best] if proba.shape[0] else np.zeros(0)
    uncertainty = np.clip(1.0 - best_prob, 0.0, 1.0)
    best_label = classes[best] if proba.shape[0] else np.zeros(0, dtype=object)
    call = np.where(uncertainty > float(threshold), str(unknown_label), best_label).astype(object)
    calls = pd.DataFrame(
        {
            "label": call,
            "best_label": best_label,
            "probability": best_prob.astype(np.float32),
            "uncertainty": uncertainty.astype(np.float32),
        },
        index=index,
    )
    if return_probabilities:
        return calls, pd.DataFrame(proba.astype(np.float32), index=index, columns=list(classes))
    return calls


def transfer_labels_adata(
    adata_ref: ad.AnnData,
    adata_query: ad.AnnData,
    label_key: str,
    use_rep: str,
    *,
    key_added: str | None = None,
    query_rep: str | None = None,
    n_neighbors: int = 50,
    threshold: float = 0.5,
    unknown_label: str = "Unknown",
    method: str = "auto",
    random_state: int = 0,
    copy: bool = False,
) -> ad.AnnData | None:
    """Transfer ``adata_ref.obs[label_key]`` to the query by weighted kNN in ``obsm[use_rep]``.

    Parameters
    ----------
    adata_ref
        The annotated reference with ``obs[label_key]`` and ``obsm[use_rep]``.
    adata_query
        The query with ``obsm[query_rep or use_rep]`` in the same space. Modified
        in place unless ``copy``.
    label_key
        The reference's label column.
    use_rep
        The shared embedding (``obsm`` key of the reference, and of the query unless ``query_rep``).
    key_added
        Query ``obs`` column of the call; default ``"predicted_" + label_key``. The
        uncertainty goes to ``key_added + "_uncertainty"`` and the probability of the
        most probable label to ``key_added + "_probability"``.
    query_rep
        The query's ``obsm`` key if it differs from ``use_rep``.
    n_neighbors, threshold, unknown_label, method, random_state
        As in :func:`transfer_labels`.
    copy
        Return a modified copy of the query instead of writing into it.

    Returns
    -------
    AnnData or None
        The query copy when ``copy``; otherwise None.
    """
    from ..io import check_obs_key, check_obsm_key

    labels = check_obs_key(adata_ref, label_key, flag="--label-key")
    ref_emb = check_obsm_key(adata_ref, use_rep)
    query_emb = check_obsm_key(adata_query, query_rep or use_rep)
    key_added = key_added or f"predicted_{label_key}"
    calls = transfer_labels(
        ref_emb,
        labels.to_numpy(),
        query_emb,
        n_neighbors=n_neighbors,
        threshold=threshold,
        unknown_label=unknown_label,
        method=method,
        query_index=adata_query.obs_names,
        random_state=random_state,
    )
    target = adata_query.copy() if copy else adata_query
    target.obs[key_added] = pd.Categorical(calls["label"].astype(str))
    target.obs[f"{key_added}_uncertainty"] = calls["uncertainty"].to_numpy()
    target.obs[f"{key_added}_probability"] = calls["probability"].to_numpy()
    target.uns[key_added] = {
        "method": "weighted_knn",
        "use_rep": use_rep,
        "n_neighbors": int(n_neighbors),
        "threshold": float(threshold),
        "unknown_label": unknown_label,
    }
    return target if copy else None
