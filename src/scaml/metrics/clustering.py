"""Clustering-based bio-conservation metrics: NMI / ARI over a Leiden resolution sweep, isolated labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Leiden resolutions tried: 0.2, 0.4, ..., 2.0 as scib-metrics (scIB optimises the resolution for NMI).
DEFAULT_RESOLUTIONS = tuple(round(0.2 * i, 1) for i in range(1, 11))


def leiden(connectivities: sp.spmatrix, resolution: float = 1.0, *, random_state: int = 0, n_iterations: int = 2) -> np.ndarray:
    """Leiden clusters (modularity with a resolution) of a symmetric weighted graph.

    Uses igraph's Leiden implementation, as ``scanpy.tl.leiden(flavor="igraph")``.

    Parameters
    ----------
    connectivities
        ``(n, n)`` symmetric sparse weights (e.g. UMAP connectivities).
    resolution
        Higher values give more clusters.
    random_state
        Seed of igraph's random number generator.
    n_iterations
        Leiden iterations (2, as scanpy).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` cluster index of each cell.
    """
    return _leiden_on(_igraph_graph(connectivities), resolution, random_state, n_iterations)


def _igraph_graph(connectivities: sp.spmatrix):
    """An undirected weighted igraph graph from the upper triangle of a symmetric matrix."""
    import igraph

    upper = sp.triu(connectivities, k=1).tocoo()
    graph = igraph.Graph(n=connectivities.shape[0], edges=np.column_stack([upper.row, upper.col]).tolist(),
                         directed=False)
    graph.es["weight"] = upper.data.tolist()
    return graph


def _leiden_on(graph, resolution: float, random_state: int, n_iterations: int = 2) -> np.ndarray:
    import random

    import igraph

    igraph.set_random_number_generator(random.Random(random_state))
    try:
        part = graph.community_leiden(objective_function="modularity", weights="weight",
                                      resolution=resolution, n_iterations=n_iterations)
    finally:
        igraph.set_random_number_generator(random)
    return np.asarray(part.membership)


def nmi_ari_leiden_sweep(
    connectivities: sp.spmatrix,
    labels: np.ndarray,
    resolutions: tuple[float, ...] = DEFAULT_RESOLUTIONS,
    *,
    random_state: int = 0,
) -> tuple[float, float, float, pd.DataFrame]:
    """NMI and ARI between labels and Leiden clusters at the resolution with the best NMI.

    Parameters
    ----------
    connectivities
        Symmetric kNN graph weights.
    labels
        ``(n_cells,)`` cell-type label of each cell.
    resolutions
        Leiden resolutions to try.
    random_state
        Seed for Leiden.

    Returns
    -------
    nmi
        Normalised mutual information (arithmetic mean normalisation), best over the sweep.
    ari
        Adjusted Rand index at that resolution.
    resolution
        The resolution chosen.
    sweep
        ``resolution``, ``n_clusters``, ``nmi``, ``ari`` for every resolution.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    graph = _igraph_graph(connectivities)
    rows = []
    for res in resolutions:
        clusters = _leiden_on(graph, res, random_state)
        rows.append({
            "resolution": res,
            "n_clusters": int(clusters.max()) + 1,
            "nmi": min(1.0, normalized_mutual_info_score(labels, clusters, average_method="arithmetic")),
            "ari": adjusted_rand_score(labels, clusters),
        })
    sweep = pd.DataFrame(rows)
    best = sweep.loc[sweep["nmi"].idxmax()]
    return float(best["nmi"]), float(best["ari"]), float(best["resolution"]), sweep


def isolated_labels(labels: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Labels present in the fewest batches (scIB's isolated labels).

    Parameters
    ----------
    labels, batches
        ``(n_cells,)`` label and batch of each cell.
    """
    frame = pd.DataFrame({"label": np.asarray(labels), "batch": np.asarray(batches)}).drop_duplicates()
    per_label = frame.groupby("label", observed=True)["batch"].nunique()
    return per_label.index[per_label == per_label.min()].to_numpy()


def isolated_label_asw(
    label_silhouettes: np.ndarray,
    labels: np.ndarray,
    batches: np.ndarray,
    *,
    all_labels: np.ndarray | None = None,
    all_batches: np.ndarray | None = None,
) -> tuple[float, list[str]]:
    """Isolated-label score, ASW variant: mean scaled silhouette of each isolated label, averaged.

    scIB offers an F1 variant (best cluster of an optimised clustering) and this
    silhouette variant; scib-metrics uses this one. Each cell's silhouette is
    taken with respect to all labels (the one already computed for the label
    ASW), scaled to [0, 1] as ``(s + 1) / 2``, averaged within each isolated
    label, then over isolated labels.

    Parameters
    ----------
    label_silhouettes
        Per-cell silhouettes with respect to the labels.
    labels, batches
        Label and batch of each cell of ``label_silhouettes``.
    all_labels, all_batches
        Labels and batches of all cells, when the silhouettes are those of a
        sample: isolated labels are found from all cells (default: ``labels``, ``batches``).

    Returns
    -------
    score
        In [0, 1], higher means isolated labels stay apart from the others.
    notes
        Which labels were used and why.
    """
    labels = np.asarray(labels)
    all_labels = labels if all_labels is None else np.asarray(all_labels)
    all_batches = np.asarray(batches if all_batches is None else all_batches)
    iso = isolated_labels(all_labels, all_batches)
    scaled = (np.asarray(label_silhouettes) + 1) / 2
    score = float(np.mean([np.mean(scaled[labels == g]) for g in iso]))
    n_batches = np.unique(all_batches).size
    n_min = pd.DataFrame({"l": all_labels, "b": all_batches}).drop_duplicates().groupby("l").size().min()
    if n_min == n_batches:
        note = f"isolated label: every label is in all {n_batches} batches, so all labels count as isolated"
    else:
        shown = ", ".join(map(str, iso[:5])) + (" ..." if iso.size > 5 else "")
        note = f"isolated label(s) in {n_min} batch(es): {shown}"
    return score, [note]
