"""UMAP of a random sample of cells, for data too large to lay out whole in reasonable time.

umap-learn's layout is single-threaded when seeded and takes about 25 minutes for a million cells on
two cores, while a figure of a million points shows no more than one of a few hundred thousand. Above
:data:`UMAP_MAX_CELLS` cells, :func:`sampled_umap` therefore lays out a seeded random sample (its own
kNN graph, scanpy's ``tl.umap``) and places every other cell at the distance-weighted mean position
of its :data:`PLACE_NEIGHBORS` nearest sample cells (in the embedding that was laid out). The figures
show the sample only; the placed coordinates are kept so that ``obsm["X_umap"]`` covers every cell,
and ``obs["umap_sample"]`` says which cells were laid out. The Leiden graph is always the full one.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np

from .errors import ScamlError
from .neighbors import Neighbors, compute_neighbors, neighbors_graph, query_neighbors

#: Above this many cells, integrate lays out (and evaluates) a random sample of this size.
UMAP_MAX_CELLS = 200_000

#: Nearest sample cells averaged to place a cell outside the sample.
PLACE_NEIGHBORS = 10


@dataclass(frozen=True)
class SampledUmap:
    """A UMAP laid out on a sample of cells, with the other cells placed.

    Attributes
    ----------
    coords
        ``(n_cells, 2)`` coordinates of every cell (sample cells laid out, others placed).
    sample
        Sorted positions of the laid-out cells.
    neighbors
        The sample's own neighbour search (positions within the sample), reusable by the metrics.
    """

    coords: np.ndarray
    sample: np.ndarray
    neighbors: Neighbors


def draw_sample(n_cells: int, max_cells: int, random_state: int = 0) -> np.ndarray | None:
    """Sorted positions of a seeded random sample of ``max_cells`` cells, or None when all cells fit.

    Parameters
    ----------
    n_cells
        Number of cells.
    max_cells
        Largest number of cells laid out whole; 0 means never sample.
    random_state
        Seed of the draw.

    Returns
    -------
    numpy.ndarray or None
        Positions (int64, ascending), or None when ``n_cells <= max_cells`` or ``max_cells == 0``.
    """
    if max_cells < 0:
        raise ScamlError(f"the UMAP sample size must be 0 (all cells) or positive; got {max_cells}.")
    if max_cells == 0 or n_cells <= max_cells:
        return None
    if max_cells < 100:
        raise ScamlError(f"a UMAP sample of {max_cells} cells is too small to show anything; use at least 100 "
                         "(or 0 for all cells).")
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_cells, max_cells, replace=False)).astype(np.int64)


def place_cells(X_sample: np.ndarray, coords_sample: np.ndarray, X_rest: np.ndarray, *,
                k: int = PLACE_NEIGHBORS, random_state: int = 0) -> np.ndarray:
    """Coordinates of cells outside a laid-out sample: the inverse-distance-weighted mean of their nearest sample cells.

    Parameters
    ----------
    X_sample, X_rest
        Embeddings (same columns) of the sample cells and of the cells to place.
    coords_sample
        ``(n_sample, 2)`` layout of the sample cells.
    k
        Nearest sample cells averaged.
    random_state
        Seed of the approximate search.

    Returns
    -------
    numpy.ndarray
        ``(n_rest, 2)`` coordinates.
    """
    if X_rest.shape[0] == 0:
        return np.zeros((0, coords_sample.shape[1]), dtype=coords_sample.dtype)
    k = int(min(k, X_sample.shape[0]))
    distances, indices = query_neighbors(np.asarray(X_sample, np.float32), np.asarray(X_rest, np.float32), k,
                                         random_state=random_state)
    weights = 1.0 / np.maximum(distances, 1e-6)
    weights /= weights.sum(axis=1, keepdims=True)
    placed = np.einsum("nk,nkc->nc", weights, coords_sample[indices])
    return placed.astype(coords_sample.dtype, copy=False)


def sampled_umap(X: np.ndarray, sample: np.ndarray, *, n_neighbors: int = 15, k: int | None = None,
                 random_state: int = 0, min_dist: float = 0.5) -> SampledUmap:
    """Lay out a sample of cells with scanpy's UMAP and place the others (see the module docstring).

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding of every cell.
    sample
        Sorted positions of the cells to lay out (:func:`draw_sample`).
    n_neighbors
        UMAP graph size, counting the cell itself (scanpy's convention).
    k
        Neighbours searched among the sample (at least ``n_neighbors - 1``; more when the metrics reuse
        the search). None: ``n_neighbors - 1``.
    random_state
        Seed of the search, the layout and the placement.
    min_dist
        UMAP's ``min_dist`` (scanpy's default 0.5).

    Returns
    -------
    SampledUmap
        Coordinates of every cell, the sample and the sample's neighbour search.
    """
    import scanpy as sc

    X = np.asarray(X, dtype=np.float32)
    sample = np.asarray(sample, dtype=np.int64)
    k = n_neighbors - 1 if k is None else max(int(k), n_neighbors - 1)
    X_sample = X[sample]
    search = compute_neighbors(X_sample, k, random_state=random_state)
    layout = ad.AnnData(obsm={"X_rep": X_sample})
    neighbors_graph(layout, "X_rep", n_neighbors, random_state=random_state, neighbors=search)
    sc.tl.umap(layout, random_state=random_state, min_dist=min_dist)
    coords_sample = np.asarray(layout.obsm["X_umap"], dtype=np.float32)
    rest = np.setdiff1d(np.arange(X.shape[0]), sample, assume_unique=True)
    coords = np.empty((X.shape[0], coords_sample.shape[1]), dtype=np.float32)
    coords[sample] = coords_sample
    coords[rest] = place_cells(X_sample, coords_sample, X[rest], random_state=random_state)
    return SampledUmap(coords=coords, sample=sample, neighbors=search)
