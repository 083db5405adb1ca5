"""One nearest-neighbour result per embedding, shared by every metric.

Every graph-based metric (LISI, kBET, graph connectivity, Leiden clustering)
reads the same :class:`Neighbors` object: the ``k`` nearest neighbours of each
cell (the cell itself excluded), sorted by distance. It is computed once with
``k`` equal to the largest neighbourhood any metric needs (90, for LISI with
perplexity 30) and sliced with :meth:`Neighbors.subset` for smaller ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import ScamlError

#: Neighbours kept per cell: LISI with perplexity 30 uses 3 * 30 neighbours.
DEFAULT_K = 90


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
    method: str = "exact",
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
        ``"exact"`` (scikit-learn brute force, chunked, multithreaded) or
        ``"pynndescent"`` (approximate; recall about 0.999 on typical embeddings).
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
    else:
        raise ScamlError(f"unknown neighbour method {method!r}; use 'exact' or 'pynndescent'.")
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


def umap_connectivities(neighbors: Neighbors, k: int = 14) -> sp.csr_matrix:
    """Symmetric fuzzy kNN graph weights, as UMAP / ``scanpy.pp.neighbors`` build them.

    For each cell, ``rho`` is the distance to its nearest neighbour and ``sigma``
    is found by bisection so that ``sum_j exp(-(d_j - rho) / sigma) = log2(k + 1)``
    over the ``k`` neighbours (``k + 1`` counts the cell itself, as UMAP does). Directed weights
    ``w = exp(-(d - rho) / sigma)`` are combined by the fuzzy union
    ``W + W.T - W * W.T``.

    Parameters
    ----------
    neighbors
        The shared neighbour result.
    k
        Neighbours per cell, the cell itself excluded (scanpy's default
        ``n_neighbors=15`` counts the cell, i.e. ``k=14`` here).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` symmetric weights in (0, 1].
    """
    nb = neighbors.subset(min(k, neighbors.k))
    d = nb.distances.astype(np.float64)
    n, kk = d.shape
    rho = d[:, 0].copy()
    target = np.log2(kk + 1)
    lo = np.zeros(n)
    hi = np.full(n, np.inf)
    mid = np.ones(n)
    shifted = np.maximum(d - rho[:, None], 0.0)
    for _ in range(64):
        psum = np.exp(-shifted / mid[:, None]).sum(axis=1)
        too_big = psum > target
        hi = np.where(too_big, mid, hi)
        lo = np.where(too_big, lo, mid)
        mid = np.where(np.isinf(hi), mid * 2, (lo + hi) / 2)
        if np.all(np.abs(psum - target) < 1e-5):
            break
    floor = 1e-3 * np.where(d.mean(axis=1) > 0, d.mean(axis=1), max(d.mean(), 1e-12))
    mid = np.maximum(mid, floor)
    w = np.exp(-shifted / mid[:, None])
    indptr = np.arange(0, n * kk + 1, kk)
    W = sp.csr_matrix((w.ravel(), nb.indices.ravel(), indptr), shape=(n, n))
    Wt = W.T.tocsr()
    G = W + Wt - W.multiply(Wt)
    G.eliminate_zeros()
    return G.tocsr()
