"""scaml's one nearest-neighbour search, shared by the pipeline graph, the metrics and label transfer.

* :func:`compute_neighbors` finds the ``k`` nearest neighbours of every cell of an embedding
  (exact brute force up to :data:`EXACT_MAX_CELLS` cells, pynndescent above) as a
  :class:`Neighbors` object: indices and distances, the cell itself excluded, nearest first.
* Every graph-based metric (LISI, kBET, graph connectivity, Leiden clustering) reads the same
  :class:`Neighbors`, computed once with ``k`` equal to the largest neighbourhood any metric needs
  (90, for LISI with perplexity 30) and sliced with :meth:`Neighbors.subset` for smaller ones.
* :func:`neighbors_graph` turns it into the kNN graph of ``scanpy.pp.neighbors`` (UMAP's fuzzy
  connectivities from umap-learn, ``obsp`` and ``uns`` under scanpy's key names), which
  ``scanpy.tl.umap`` and ``scanpy.tl.leiden`` read. scaml never calls ``scanpy.pp.neighbors``, so
  its results do not depend on which search scanpy picks at which size.
* :func:`query_neighbors` finds the nearest reference cells of query cells (label transfer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import ScamlError

#: Neighbours kept per cell: LISI with perplexity 30 uses 3 * 30 neighbours.
DEFAULT_K = 90

#: Up to this many cells (or reference cells) ``method="auto"`` searches exactly; above, pynndescent.
EXACT_MAX_CELLS = 50_000

METHODS = ("auto", "exact", "pynndescent")


def _resolve_method(method: str, n_cells: int) -> str:
    if method not in METHODS:
        raise ScamlError(f"unknown neighbour search method {method!r}; use one of {', '.join(METHODS)}.")
    if method == "auto":
        return "exact" if n_cells <= EXACT_MAX_CELLS else "pynndescent"
    return method


@dataclass(frozen=True)
class Neighbors:
    """The ``k`` nearest neighbours of every cell (itself excluded), nearest first.

    Attributes
    ----------
    indices
        ``(n_cells, k)`` integer array of neighbour indices.
    distances
        ``(n_cells, k)`` float array of Euclidean distances, ascending along each row.
    method
        How they were found (``"exact"`` or ``"pynndescent"``).
    """

    indices: np.ndarray
    distances: np.ndarray
    method: str = "exact"

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        """Neighbours per cell."""
        return int(self.indices.shape[1])

    def subset(self, k: int) -> Neighbors:
        """The ``k`` nearest of the stored neighbours (``k`` at most :attr:`k`)."""
        if k > self.k:
            raise ScamlError(f"{k} neighbours requested but only {self.k} were computed; compute more.")
        return Neighbors(self.indices[:, :k], self.distances[:, :k], self.method)

    def distance_graph(self, k: int | None = None) -> sp.csr_matrix:
        """Directed kNN graph as a sparse ``(n, n)`` matrix of distances (ties at 0 kept as tiny values)."""
        nb = self if k is None else self.subset(k)
        n, kk = nb.indices.shape
        data = np.maximum(nb.distances.astype(np.float64).ravel(), 1e-12)
        indptr = np.arange(0, n * kk + 1, kk)
        return sp.csr_matrix((data, nb.indices.ravel(), indptr), shape=(n, n))


def compute_neighbors(
    X: np.ndarray,
    k: int = DEFAULT_K,
    *,
    method: str = "auto",
    random_state: int = 0,
    n_jobs: int | None = None,
) -> Neighbors:
    """Find the ``k`` nearest neighbours of every cell in an embedding.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    k
        Neighbours per cell, the cell itself excluded. Reduced to ``n_cells - 1``
        for tiny data.
    method
        ``"exact"`` (scikit-learn brute force, chunked, multithreaded),
        ``"pynndescent"`` (approximate; recall about 0.999 on typical embeddings) or
        ``"auto"`` (exact up to :data:`EXACT_MAX_CELLS` cells).
    random_state
        Seed for ``"pynndescent"``.
    n_jobs
        Threads (``None``: all cores).

    Returns
    -------
    Neighbors
        Indices and Euclidean distances, nearest first.
    """
    X = np.ascontiguousarray(X, dtype=np.float32)
    n = X.shape[0]
    if n < 2:
        raise ScamlError(f"at least 2 cells are needed to find neighbours; got {n}.")
    k = int(min(k, n - 1))
    method = _resolve_method(method, n)
    if method == "exact":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", n_jobs=n_jobs).fit(X)
        dist, idx = nn.kneighbors(X)
    elif method == "pynndescent":
        import pynndescent

        index = pynndescent.NNDescent(
            X, n_neighbors=k + 1, random_state=random_state, n_jobs=n_jobs or -1, low_memory=True
        )
        idx, dist = index.neighbor_graph
    idx, dist = _drop_self(np.asarray(idx), np.asarray(dist, dtype=np.float32))
    return Neighbors(idx.astype(np.int64, copy=False), dist, method)


def _drop_self(idx: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each cell from its own list (``k + 1`` columns in, ``k`` out).

    With duplicated cells the cell itself is not always first; where it is
    missing from its list, the farthest neighbour is dropped instead.
    """
    n, kp1 = idx.shape
    is_self = idx == np.arange(n)[:, None]
    missing = ~is_self.any(axis=1)
    is_self[missing, kp1 - 1] = True
    # exactly one True per row: keep the others in order
    keep = ~is_self
    return idx[keep].reshape(n, kp1 - 1), dist[keep].reshape(n, kp1 - 1)


def umap_connectivities(neighbors: Neighbors, k: int = 14, random_state: int = 0) -> sp.csr_matrix:
    """Symmetric fuzzy kNN graph weights, as UMAP / ``scanpy.pp.neighbors`` build them.

    umap-learn's ``fuzzy_simplicial_set`` on the stored neighbours: for each cell, ``rho`` is the
    distance to its nearest neighbour and ``sigma`` makes ``sum_j exp(-(d_j - rho) / sigma)``
    equal ``log2(k + 1)``; directed weights are combined by the fuzzy union ``W + W.T - W * W.T``.

    Parameters
    ----------
    neighbors
        The shared neighbour result.
    k
        Neighbours per cell, the cell itself excluded (scanpy's default
        ``n_neighbors=15`` counts the cell, i.e. ``k=14`` here).
    random_state
        Passed to umap-learn (not used for a precomputed search).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` symmetric weights in (0, 1].
    """
    from umap.umap_ import fuzzy_simplicial_set

    nb = neighbors.subset(min(k, neighbors.k))
    n = nb.n_cells
    # umap-learn's convention: each cell first, at distance 0
    knn_idx = np.hstack([np.arange(n)[:, None], nb.indices]).astype(np.int64)
    knn_dist = np.hstack([np.zeros((n, 1), np.float32), nb.distances]).astype(np.float32)
    graph, _, _ = fuzzy_simplicial_set(
        sp.coo_matrix((n, 1)), nb.k + 1, random_state, "euclidean", knn_indices=knn_idx, knn_dists=knn_dist,
    )
    graph = sp.csr_matrix(graph)
    graph.eliminate_zeros()
    return graph


def neighbors_graph(
    adata: Any,
    use_rep: str,
    n_neighbors: int = 15,
    *,
    key_added: str | None = None,
    method: str = "auto",
    random_state: int = 0,
    neighbors: Neighbors | None = None,
) -> Neighbors:
    """The kNN graph of ``scanpy.pp.neighbors``, built from scaml's own search.

    Writes, under scanpy's names, ``obsp["distances"]`` and ``obsp["connectivities"]``
    (``obsp["<key_added>_distances"]`` ... with ``key_added``) and ``uns["neighbors"]``
    (``uns[key_added]``), so that ``scanpy.tl.umap`` and ``scanpy.tl.leiden`` run on it.
    The connectivities are UMAP's fuzzy simplicial set (umap-learn), as scanpy computes them.

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm[use_rep]``; modified in place.
    use_rep
        The embedding to search.
    n_neighbors
        Neighbours per cell counting the cell itself (scanpy's convention; 15 by default).
    key_added
        Prefix of the keys (None: scanpy's default keys).
    method
        Search method of :func:`compute_neighbors`.
    random_state
        Seed of the approximate search and of UMAP's graph construction.
    neighbors
        A search already done on ``obsm[use_rep]`` with at least ``n_neighbors - 1`` neighbours,
        reused instead of searching again.

    Returns
    -------
    Neighbors
        The search result (for reuse by the metrics).
    """
    X = np.asarray(adata.obsm[use_rep], dtype=np.float32)
    n = X.shape[0]
    k = int(min(n_neighbors, n)) - 1
    if k < 1:
        raise ScamlError(f"n_neighbors must be at least 2 (it counts the cell itself); got {n_neighbors}.")
    if neighbors is None or neighbors.k < k or neighbors.n_cells != n:
        neighbors = compute_neighbors(X, k, method=method, random_state=random_state)
    nb = neighbors.subset(k)
    connectivities = umap_connectivities(nb, k, random_state)
    distances = nb.distance_graph()
    prefix = "" if key_added is None else f"{key_added}_"
    uns_key = "neighbors" if key_added is None else key_added
    adata.obsp[f"{prefix}distances"] = sp.csr_matrix(distances)
    adata.obsp[f"{prefix}connectivities"] = sp.csr_matrix(connectivities)
    adata.uns[uns_key] = {
        "connectivities_key": f"{prefix}connectivities",
        "distances_key": f"{prefix}distances",
        "params": {"n_neighbors": k + 1, "method": "umap", "metric": "euclidean", "use_rep": use_rep,
                   "random_state": random_state, "search": nb.method},
    }
    return neighbors


def query_neighbors(
    ref_embedding: np.ndarray,
    query_embedding: np.ndarray,
    n_neighbors: int,
    *,
    method: str = "auto",
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest reference cells of each query cell.

    Parameters
    ----------
    ref_embedding, query_embedding
        Cells x dimensions arrays with the same number of dimensions.
    n_neighbors
        Neighbours per query cell (at most the number of reference cells).
    method
        ``"exact"`` (scikit-learn), ``"pynndescent"`` (approximate), or ``"auto"``
        (exact up to :data:`EXACT_MAX_CELLS` reference cells).
    random_state
        Seed of the approximate search.

    Returns
    -------
    distances, indices
        Query cells x ``n_neighbors`` arrays, nearest first.
    """
    method = _resolve_method(method, ref_embedding.shape[0])
    if method == "exact":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(n_neighbors=n_neighbors, algorithm="auto", metric="euclidean")
        nn.fit(ref_embedding)
        distances, indices = nn.kneighbors(query_embedding)
    else:
        from pynndescent import NNDescent

        index = NNDescent(
            ref_embedding, metric="euclidean", n_neighbors=max(n_neighbors, 15), random_state=random_state
        )
        indices, distances = index.query(query_embedding, k=n_neighbors)
    return np.asarray(distances, dtype=np.float64), np.asarray(indices, dtype=np.int64)
