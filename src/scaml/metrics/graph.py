"""Graph connectivity of scIB: are the cells of each label one connected piece of the kNN graph?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..neighbors import Neighbors

#: Neighbours per cell in the graph, the cell excluded (scanpy's n_neighbors=15 counts the cell).
GRAPH_K = 14


def graph_connectivity(neighbors: Neighbors, labels: np.ndarray, *, k: int = GRAPH_K) -> tuple[float, pd.DataFrame]:
    """Mean over labels of the fraction of a label's cells in its largest connected component.

    The graph is the undirected kNN graph restricted to the cells of the label,
    as scIB does with scanpy's symmetric neighbour graph (15 neighbours counting
    the cell). scib-metrics instead takes strongly connected components of the
    directed kNN graph, which can give lower values for the same embedding.

    Parameters
    ----------
    neighbors
        Shared neighbour result.
    labels
        ``(n_cells,)`` label of each cell.
    k
        Neighbours per cell used for the graph, the cell excluded.

    Returns
    -------
    score
        Mean fraction over labels, in (0, 1]; 1 means every label is connected.
    per_label
        ``label``, ``n_cells``, ``largest_component_fraction``.
    """
    graph = neighbors.distance_graph(min(k, neighbors.k))
    graph = (graph + graph.T).tocsr()
    labels = np.asarray(labels)
    rows = []
    for g in np.unique(labels):
        cells = np.flatnonzero(labels == g)
        sub = graph[cells][:, cells]
        _, comp = connected_components(sp.csr_matrix(sub), directed=False)
        frac = np.bincount(comp).max() / cells.size
        rows.append({"label": g, "n_cells": cells.size, "largest_component_fraction": float(frac)})
    table = pd.DataFrame(rows)
    return float(table["largest_component_fraction"].mean()), table
