"""Label transfer from a reference to a query in a shared embedding: weighted kNN with uncertainty.

The array core :func:`transfer_labels` follows the weighted kNN classifier of
scArches (Lotfollahi et al. 2022): for each query cell, the ``k`` nearest
reference cells are found; their distances ``d`` are turned into weights by a
Gaussian-type kernel whose width comes from the spread of those distances
(``w = exp(-d / (2 / sd(d))**2)``, normalised to sum to one); the weights are
summed per reference label, giving a probability per label; the call is the
most probable label, its uncertainty ``1 - p(label)``, and the cell is called
``"Unknown"`` when the uncertainty exceeds a threshold.

``k`` defaults to ``"auto"``, a rule from the reference (:func:`auto_n_neighbors`): small
references and small classes get a small ``k``, so that a rare label is not outvoted by its
larger neighbours. Optionally, the per-cell calls are smoothed by majority voting over the
query's own Leiden clusters in the shared embedding (:func:`query_clusters`,
:func:`majority_vote`), as CellTypist does. :func:`transfer_labels_adata` is the thin AnnData layer.
"""

from __future__ import annotations

import math
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info
from ..errors import ScamlError
from ..io import check_finite
from ..neighbors import query_neighbors

#: Bounds of the automatic ``k`` (:func:`auto_n_neighbors`).
AUTO_K_MIN, AUTO_K_MAX = 5, 50

#: The automatic ``k`` is at most this fraction of the smallest reference label.
AUTO_K_CLASS_FRACTION = 1.0

#: The automatic ``k`` in words (recorded in ``run.json``).
AUTO_K_RULE = ("k = clip(min(round(sqrt(labelled reference cells)), "
               + ("" if AUTO_K_CLASS_FRACTION == 1 else f"{AUTO_K_CLASS_FRACTION:g} x ")
               + f"cells of the smallest label), {AUTO_K_MIN}, {AUTO_K_MAX})")

#: Default Leiden resolution of the query clusters majority voting runs over.
MAJORITY_VOTING_RESOLUTION = 5.0

#: Neighbours (the cell counted) of the query's kNN graph that majority voting clusters.
MAJORITY_VOTING_NEIGHBORS = 15


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


def auto_n_neighbors(n_labelled: int, smallest_class: int) -> int:
    """The automatic ``k`` of the label transfer, from the labelled reference.

    ``k = clip(min(round(sqrt(n_labelled)), smallest_class), 5, 50)``, and never more than
    ``n_labelled``: about the square root of the reference size (a common kNN rule), but at most
    the size of the smallest label, so that the ``k`` neighbours of a query cell of that label
    can all be of its kind (with ``k = 50`` a 12-cell label holds at most 12 of 50 votes and is
    outvoted by its larger neighbours); at least 5 (a label with fewer than 5 cells gets
    ``k = 5``), at most 50 (scArches' choice). ``benchmarks/bench_transfer.py`` measures it.

    Parameters
    ----------
    n_labelled
        Labelled reference cells (those that vote).
    smallest_class
        Cells of the smallest reference label.

    Returns
    -------
    int
        The number of neighbours.

    Examples
    --------
    >>> auto_n_neighbors(900, 225), auto_n_neighbors(900, 20), auto_n_neighbors(10_000, 2_000)
    (30, 20, 50)
    """
    by_size = int(round(math.sqrt(max(int(n_labelled), 1))))
    by_class = int(math.floor(AUTO_K_CLASS_FRACTION * int(smallest_class)))
    k = max(AUTO_K_MIN, min(AUTO_K_MAX, by_size, by_class))
    return int(max(1, min(k, int(n_labelled))))


def parse_n_neighbors(n_neighbors: Any) -> int | str:
    """Check the spelling of ``n_neighbors``: ``"auto"``, or a whole number of at least 1.

    Parameters
    ----------
    n_neighbors
        ``"auto"`` (any case), an ``int``, or a string or float holding a whole number.

    Returns
    -------
    int or str
        The number, or ``"auto"``.

    Raises
    ------
    ScamlError
        Neither ``"auto"`` nor a whole number, or a number below 1.
    """
    fix = "use 'auto' or a whole number of at least 1, e.g. n_neighbors=15 (--n-neighbors 15)"
    value: int | None = None
    if isinstance(n_neighbors, str):
        text = n_neighbors.strip()
        if text.lower() == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            value = None
    elif isinstance(n_neighbors, (bool, np.bool_)):
        value = None
    elif isinstance(n_neighbors, (int, np.integer)):
        value = int(n_neighbors)
    elif isinstance(n_neighbors, (float, np.floating)) and float(n_neighbors).is_integer():
        value = int(n_neighbors)
    if value is None:
        raise ScamlError(f"n_neighbors must be 'auto' or a whole number of neighbours; got {n_neighbors!r}; {fix}.")
    if value < 1:
        raise ScamlError(f"n_neighbors must be at least 1; got {value}; {fix}.")
    return value


def labelled_counts(ref_labels: Any, unknown_label: str = "Unknown") -> pd.Series:
    """Cells per reference label that votes (missing labels and ``unknown_label`` left out), sorted by label."""
    labels = pd.Series(np.asarray(ref_labels, dtype=object))
    labels = labels[labels.notna().to_numpy() & (labels.astype(str) != str(unknown_label)).to_numpy()]
    return labels.astype(str).value_counts().sort_index()


def resolve_n_neighbors(n_neighbors: Any, n_labelled: int, smallest_class: int) -> int:
    """The ``k`` to use: :func:`auto_n_neighbors` for ``"auto"``, else the given whole number, checked.

    Parameters
    ----------
    n_neighbors
        ``"auto"``, or a whole number (an ``int``, or a string or float holding one) from 1 to
        ``n_labelled``.
    n_labelled, smallest_class
        Labelled reference cells and the size of the smallest label.

    Returns
    -------
    int
        The number of neighbours.

    Raises
    ------
    ScamlError
        Not ``"auto"`` nor a whole number, below 1, or more than the labelled reference cells.
    """
    value = parse_n_neighbors(n_neighbors)
    auto = auto_n_neighbors(n_labelled, smallest_class)
    if value == "auto":
        return auto
    if int(value) > n_labelled:
        raise ScamlError(
            f"n_neighbors={value} is more than the {n_labelled} labelled reference cells that vote; use 'auto' "
            f"(here k={auto}) or a whole number from 1 to {n_labelled}, e.g. --n-neighbors {min(15, n_labelled)}."
        )
    return int(value)


def query_clusters(
    embedding: Any,
    *,
    resolution: float = MAJORITY_VOTING_RESOLUTION,
    n_neighbors: int = MAJORITY_VOTING_NEIGHBORS,
    method: str = "auto",
    random_state: int = 0,
) -> np.ndarray:
    """Leiden clusters of the query cells in the shared embedding (the groups majority voting runs over).

    The kNN graph is scaml's (:func:`scaml.neighbors.neighbors_graph`, UMAP connectivities) and the
    clustering scanpy's ``sc.tl.leiden`` (igraph flavour, 2 iterations, undirected), as in the
    pipeline. Fewer than 3 cells: every cell is its own cluster.

    Parameters
    ----------
    embedding
        Query cells x dimensions.
    resolution
        Leiden resolution; higher gives more, smaller clusters (CellTypist over-clusters, with
        resolution 5 or more, so that a vote only smooths within very local groups).
    n_neighbors
        Neighbours of the graph, the cell itself counted (scanpy's convention).
    method
        Neighbour search (:func:`scaml.neighbors.compute_neighbors`).
    random_state
        Seed of the search and of Leiden.

    Returns
    -------
    numpy.ndarray
        One cluster name (``"0"``, ``"1"``...) per query cell.
    """
    import scanpy as sc

    from ..neighbors import neighbors_graph

    X = _as_embedding(embedding, "the query embedding")
    if not float(resolution) > 0:
        raise ScamlError(f"the majority-voting resolution must be positive; got {resolution}. Try 5 (the default).")
    n = X.shape[0]
    if n < 3:
        return np.array([str(i) for i in range(n)], dtype=object)
    graph = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(n)]), obsm={"X_shared": X})
    neighbors_graph(graph, "X_shared", n_neighbors=min(int(n_neighbors), n), method=method,
                    random_state=random_state)
    sc.tl.leiden(graph, resolution=float(resolution), key_added="cluster", flavor="igraph", n_iterations=2,
                 directed=False, random_state=random_state)
    return graph.obs["cluster"].astype(str).to_numpy(dtype=object)


def majority_vote(calls: Any, clusters: Any, probability: Any = None) -> np.ndarray:
    """Give every cluster the most frequent call of its cells.

    Every call votes, ``"Unknown"`` included (as CellTypist's "Unassigned"): a cluster whose most
    frequent call is Unknown stays Unknown, and the Unknown cells of a cluster with a clear
    majority take its label. Ties go to the label with the larger summed ``probability``, then
    to the first in sort order.

    Parameters
    ----------
    calls
        One call per cell.
    clusters
        One cluster name per cell.
    probability
        Per-cell probability of the call (tie-break); default all ones.

    Returns
    -------
    numpy.ndarray
        The cluster's call for every cell.
    """
    calls = pd.Series(np.asarray(calls, dtype=object)).astype(str)
    clusters = pd.Series(np.asarray(clusters, dtype=object)).astype(str)
    if len(calls) != len(clusters):
        raise ScamlError(f"got {len(clusters)} cluster names for {len(calls)} query cells; pass one per cell.")
    weight = pd.Series(np.ones(len(calls)) if probability is None else np.asarray(probability, dtype=float))
    table = pd.DataFrame({"cluster": clusters, "call": calls, "weight": weight})
    votes = table.groupby(["cluster", "call"], sort=True).agg(n=("weight", "size"), w=("weight", "sum"))
    votes = votes.reset_index().sort_values(["cluster", "n", "w", "call"], ascending=[True, False, False, True])
    winner = votes.drop_duplicates("cluster").set_index("cluster")["call"]
    return clusters.map(winner).to_numpy(dtype=object)


def neighbour_vote(probabilities: pd.DataFrame | np.ndarray, neighbors: np.ndarray) -> np.ndarray:
    """Per-label probabilities averaged over each query cell and its query neighbours.

    Parameters
    ----------
    probabilities
        Query cells x labels (e.g. ``transfer_labels(..., return_probabilities=True)[1]``).
    neighbors
        Query cells x k indices of each cell's neighbours among the query cells (e.g. an ATAC query's
        neighbours in its own peak embedding, :attr:`scaml.mapping.atac_query.AtacQuery.neighbors`).

    Returns
    -------
    numpy.ndarray
        Cells x labels; the call is the arg-max, its uncertainty 1 - the max.

    Raises
    ------
    ScamlError
        ``neighbors`` does not hold one row of valid query indices per cell.
    """
    P = np.asarray(probabilities, dtype=np.float64)
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != P.shape[0] or (
            neighbors.size and (neighbors.min() < 0 or neighbors.max() >= P.shape[0])):
        raise ScamlError(f"the vote's neighbours must be one row of query-cell indices per query cell ({P.shape[0]} "
                         f"rows); got an array of shape {neighbors.shape}.")
    return (P + P[neighbors].sum(axis=1)) / (neighbors.shape[1] + 1)


#: What the calls come from (``calls.attrs["label_source"]``), without / with a classifier.
LABEL_SOURCES = {False: "weighted kNN",
                 True: "mean of the weighted kNN's and the expression classifier's probabilities"}


def _with_classifier(proba: np.ndarray, classes: np.ndarray,
                     classifier: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The mean of the kNN and classifier probabilities over the union of their labels, and each one's call."""
    if not isinstance(classifier, pd.DataFrame):
        raise ScamlError("classifier_probabilities must be a DataFrame of query cells x labels.")
    if len(classifier) != proba.shape[0]:
        raise ScamlError(f"classifier_probabilities has {len(classifier)} rows for {proba.shape[0]} query cells; "
                         "pass one row per query cell, in the query's order.")
    union = np.asarray(sorted(set(map(str, classes)) | set(map(str, classifier.columns))), dtype=object)
    knn = pd.DataFrame(proba, columns=[str(c) for c in classes]).reindex(columns=union, fill_value=0.0)
    other = classifier.rename(columns=str).reindex(columns=union, fill_value=0.0)
    knn_values = knn.to_numpy(dtype=np.float64)
    other_values = np.nan_to_num(other.to_numpy(dtype=np.float64))
    sources: dict[str, np.ndarray] = {}
    for name, values in (("knn", knn_values), ("classifier", other_values)):
        sources[f"{name}_label"], probability = _most_probable(values, union)
        sources[f"{name}_probability"] = probability.astype(np.float32)
    return (knn_values + other_values) / 2.0, union, sources


def _most_probable(proba: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most probable class and its probability (empty arrays for no rows)."""
    if not proba.shape[0]:
        return np.zeros(0, dtype=object), np.zeros(0)
    best = proba.argmax(axis=1)
    return classes[best], proba[np.arange(proba.shape[0]), best]


def transfer_labels(
    ref_embedding: Any,
    ref_labels: Any,
    query_embedding: Any,
    *,
    n_neighbors: int | str = "auto",
    threshold: float = 0.5,
    unknown_label: str = "Unknown",
    method: str = "auto",
    return_probabilities: bool = False,
    query_index: Any = None,
    majority_voting: bool = False,
    clusters: Any = None,
    resolution: float = MAJORITY_VOTING_RESOLUTION,
    random_state: int = 0,
    vote_neighbors: np.ndarray | None = None,
    classifier_probabilities: pd.DataFrame | None = None,
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
        Reference neighbours per query cell. ``"auto"`` (default) chooses
        ``k = clip(min(round(sqrt(N)), m), 5, 50)`` with ``N`` the labelled reference
        cells and ``m`` the cells of the smallest label (:func:`auto_n_neighbors`); a whole
        number from 1 to ``N`` is used as given (scArches uses 50). The ``k`` used is in
        ``calls.attrs["n_neighbors"]``.
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
    majority_voting
        Also give every query cluster the most frequent call of its cells (:func:`majority_vote`;
        Unknown calls vote too), in the columns ``majority_voting`` and ``cluster``. The clusters
        are ``clusters`` when given, else Leiden clusters of the query embedding
        (:func:`query_clusters`). The per-cell calls are kept in ``label``.
    clusters
        Query clusters to vote over (one name per query cell, e.g. ``obs["leiden"]``); implies
        ``majority_voting``.
    resolution
        Leiden resolution of the query clusters when majority voting computes them.
    random_state
        Seed of the approximate neighbour search (exact search is deterministic) and of Leiden.
    vote_neighbors
        Query cells x k indices of each cell's neighbours among the query cells: each cell's per-label
        probabilities are averaged with theirs before the call (:func:`neighbour_vote`; ``scaml map
        --modality atac`` passes the ATAC cells' own neighbours). None: each cell on its own.
    classifier_probabilities
        Query cells x labels probabilities of a classifier (rows in the query's order; e.g. the
        reference's expression classifier, :mod:`scaml.mapping.expression_classifier`). Each cell
        is then called from the mean of these and its kNN probabilities, and the result also holds
        the kNN's and the classifier's own calls. None: the kNN alone.

    Returns
    -------
    DataFrame
        Per query cell: ``label`` (the call, ``unknown_label`` when uncertain),
        ``best_label`` (the most probable reference label, even when uncertain),
        ``probability`` (of ``best_label``) and ``uncertainty`` (``1 - probability``); with
        majority voting also ``cluster`` and ``majority_voting``; with ``classifier_probabilities`` also
        ``knn_label`` / ``knn_probability`` and ``classifier_label`` / ``classifier_probability`` (each
        source's most probable label). ``attrs`` holds ``label_source``, ``n_neighbors``
        (the ``k`` used), ``n_neighbors_requested``, ``n_labelled`` and ``smallest_class``.
        With ``return_probabilities``, a tuple ``(calls, probabilities)``.

    Raises
    ------
    ScamlError
        Shapes or dimensions disagree, values are not finite, no reference cell is labelled,
        or the parameters are out of range (each message names the value and the fix).
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
        raise ScamlError(
            f"threshold must be between 0 and 1 (an uncertainty); got {threshold}. Use e.g. 0.5 (the default), "
            "or 1 to never call Unknown."
        )
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
    smallest = int(np.bincount(codes).min())
    k = resolve_n_neighbors(n_neighbors, ref.shape[0], smallest)
    index = pd.RangeIndex(query.shape[0]) if query_index is None else pd.Index(query_index)
    if len(index) != query.shape[0]:
        raise ScamlError(f"query_index has {len(index)} names for {query.shape[0]} query cells.")
    if clusters is not None and len(clusters) != query.shape[0]:
        raise ScamlError(f"got {len(clusters)} cluster names for {query.shape[0]} query cells; pass one per cell.")

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
    sources: dict[str, np.ndarray] = {}
    if classifier_probabilities is not None:
        proba, classes, sources = _with_classifier(proba, classes, classifier_probabilities)
    if query.shape[0] and vote_neighbors is not None:
        proba = neighbour_vote(proba, vote_neighbors)
    best_label, best_prob = _most_probable(proba, classes)
    uncertainty = np.clip(1.0 - best_prob, 0.0, 1.0)
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
    for column, values in sources.items():
        calls[column] = values
    if majority_voting or clusters is not None:
        if clusters is None:
            clusters = query_clusters(query, resolution=resolution, random_state=random_state)
        calls["cluster"] = np.asarray(clusters, dtype=object).astype(str)
        calls["majority_voting"] = majority_vote(call, calls["cluster"].to_numpy(), best_prob)
    is_auto = isinstance(n_neighbors, str) and n_neighbors.strip().lower() == "auto"
    calls.attrs.update({"label_source": LABEL_SOURCES[bool(sources)], "n_neighbors": k,
                        "n_neighbors_requested": "auto" if is_auto else k,
                        "n_labelled": int(ref.shape[0]), "smallest_class": smallest})
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
    n_neighbors: int | str = "auto",
    threshold: float = 0.5,
    unknown_label: str = "Unknown",
    method: str = "auto",
    majority_voting: bool = False,
    clusters_key: str | None = None,
    resolution: float = MAJORITY_VOTING_RESOLUTION,
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
        most probable label to ``key_added + "_probability"``; with majority voting, the
        cluster's call to ``key_added + "_majority_voting"`` and the cluster to
        ``key_added + "_cluster"`` (the per-cell call stays in ``key_added``).
    query_rep
        The query's ``obsm`` key if it differs from ``use_rep``.
    n_neighbors, threshold, unknown_label, method, majority_voting, resolution, random_state
        As in :func:`transfer_labels` (``n_neighbors="auto"``: the rule of :func:`auto_n_neighbors`).
    clusters_key
        Query ``obs`` column of clusters to vote over (e.g. ``"leiden"``) instead of computing
        them; implies ``majority_voting``.
    copy
        Return a modified copy of the query instead of writing into it.

    Returns
    -------
    AnnData or None
        The query copy when ``copy``; otherwise None. ``uns[key_added]`` records the ``k`` used.
    """
    from ..io import check_obs_key, check_obsm_key

    labels = check_obs_key(adata_ref, label_key, flag="--label-key")
    ref_emb = check_obsm_key(adata_ref, use_rep)
    query_emb = check_obsm_key(adata_query, query_rep or use_rep)
    clusters = None if clusters_key is None else check_obs_key(adata_query, clusters_key).astype(str).to_numpy()
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
        majority_voting=majority_voting,
        clusters=clusters,
        resolution=resolution,
        random_state=random_state,
    )
    target = adata_query.copy() if copy else adata_query
    target.obs[key_added] = pd.Categorical(calls["label"].astype(str))
    target.obs[f"{key_added}_uncertainty"] = calls["uncertainty"].to_numpy()
    target.obs[f"{key_added}_probability"] = calls["probability"].to_numpy()
    voted = "majority_voting" in calls.columns
    if voted:
        target.obs[f"{key_added}_majority_voting"] = pd.Categorical(calls["majority_voting"].astype(str))
        target.obs[f"{key_added}_cluster"] = pd.Categorical(calls["cluster"].astype(str))
    target.uns[key_added] = {
        "method": "weighted_knn",
        "use_rep": use_rep,
        "n_neighbors": int(calls.attrs["n_neighbors"]),
        "n_neighbors_requested": str(calls.attrs["n_neighbors_requested"]),
        "threshold": float(threshold),
        "unknown_label": unknown_label,
        "majority_voting": bool(voted),
    }
    if voted:
        target.uns[key_added].update({"clusters": clusters_key or "leiden",
                                      "n_clusters": int(calls["cluster"].nunique())})
        if clusters_key is None:
            target.uns[key_added]["resolution"] = float(resolution)
    return target if copy else None
