"""Clonotype-aware neighbours of a latent space, and the figure of the latent by cluster and clonotype."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ScamlError
from ..neighbors import Neighbors, compute_neighbors
from ..style import styled

#: Neighbours per cell of the clonotype-aware graph and its rate (as the benchmarks' 15-NN).
DEFAULT_K = 15


def clonotype_sizes(clonotypes: Sequence[str]) -> np.ndarray:
    """Number of cells of each cell's clonotype."""
    codes, counts = np.unique(np.asarray(clonotypes, dtype=str), return_inverse=True, return_counts=True)[1:]
    return counts[codes]


def clonotype_neighbors(
    latent: np.ndarray,
    clonotypes: Sequence[str],
    k: int = DEFAULT_K,
    *,
    random_state: int = 0,
) -> tuple[Neighbors, pd.DataFrame]:
    """The kNN graph of a latent space, and for each cell its neighbours of the same clonotype.

    Parameters
    ----------
    latent
        Cells x dimensions (e.g. the joint latent of :class:`scaml.vae.MVTCR`).
    clonotypes
        Clonotype of each cell.
    k
        Neighbours per cell (the cell itself excluded).
    random_state
        Seed of the approximate search (above 50,000 cells).

    Returns
    -------
    neighbors
        :class:`scaml.neighbors.Neighbors` (indices, distances, nearest first); its
        :meth:`~scaml.neighbors.Neighbors.distance_graph` is the sparse kNN graph.
    table
        Per cell: ``clonotype_size``, ``same_clonotype_neighbors`` (how many of the ``k``
        neighbours share the cell's clonotype) and ``clonotype_recall`` (that number over
        ``min(k, clonotype_size - 1)``; NaN for a clonotype of one cell).
    """
    latent = np.asarray(latent, dtype=np.float32)
    clonotypes = np.asarray(clonotypes, dtype=str)
    if latent.ndim != 2 or latent.shape[0] != clonotypes.size:
        raise ScamlError(f"latent ({latent.shape}) and clonotypes ({clonotypes.size}) must describe the same cells.")
    nb = compute_neighbors(latent, k, random_state=random_state)
    same = (clonotypes[nb.indices] == clonotypes[:, None]).sum(axis=1)
    size = clonotype_sizes(clonotypes)
    denominator = np.minimum(nb.k, size - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(size > 1, same / np.maximum(denominator, 1), np.nan)
    table = pd.DataFrame({"clonotype_size": size, "same_clonotype_neighbors": same, "clonotype_recall": recall})
    return nb, table


def clonotype_neighbor_rate(latent: np.ndarray, clonotypes: Sequence[str], k: int = DEFAULT_K,
                            *, random_state: int = 0) -> float:
    """How often cells of one clonotype are neighbours: the mean :func:`clonotype_neighbors` recall.

    Over the cells of expanded clonotypes (two or more cells): the share of a cell's clonotype mates
    (at most ``k``) found among its ``k`` nearest neighbours in ``latent``. 1 = every clone is a
    tight group; NaN when no clonotype has two cells.
    """
    _, table = clonotype_neighbors(latent, clonotypes, k, random_state=random_state)
    values = table["clonotype_recall"].to_numpy()
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def clonotype_distance_ratio(latent: np.ndarray, clonotypes: Sequence[str], groups: Sequence | None = None, *,
                             max_pairs: int = 200_000, random_state: int = 0) -> float:
    """Mean distance between cells of one clonotype over the mean distance between random cells.

    Scale-free (comparable across latent spaces): below 1, clonotype mates sit closer together than
    cells at random. With ``groups`` (e.g. the clusters), the random pairs are drawn within a
    group, so the ratio asks whether clonotype mates are closer than other cells of their cluster.
    NaN when no clonotype has two cells.
    """
    latent = np.asarray(latent, dtype=np.float64)
    clonotypes = np.asarray(clonotypes, dtype=str)
    rng = np.random.default_rng(random_state)
    within = []
    _, inverse = np.unique(clonotypes, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for group in np.split(order, bounds):
        if group.size < 2:
            continue
        a, b = np.triu_indices(group.size, 1)
        if a.size > 2000:
            pick = rng.choice(a.size, 2000, replace=False)
            a, b = a[pick], b[pick]
        within.append(np.linalg.norm(latent[group[a]] - latent[group[b]], axis=1))
    if not within:
        return float("nan")
    n = latent.shape[0]
    i = rng.integers(0, n, max_pairs)
    if groups is None:
        j = rng.integers(0, n, max_pairs)
    else:
        codes = pd.factorize(np.asarray(groups, dtype=str))[0]
        by_code = np.argsort(codes, kind="stable")
        starts = np.searchsorted(codes[by_code], np.arange(codes.max() + 1))
        sizes = np.bincount(codes)
        ci = codes[i]
        j = by_code[starts[ci] + (rng.random(max_pairs) * sizes[ci]).astype(np.int64)]
    keep = i != j
    random = np.linalg.norm(latent[i[keep]] - latent[j[keep]], axis=1).mean()
    return float(np.concatenate(within).mean() / max(random, 1e-12))


def expanded_clonotype_labels(clonotypes: Sequence[str], top: int = 10, min_size: int = 2) -> pd.Categorical:
    """The ``top`` largest clonotypes of at least ``min_size`` cells as ``"clone 1 (n=12)"`` ...; others missing."""
    clonotypes = pd.Series(np.asarray(clonotypes, dtype=str))
    counts = clonotypes.value_counts(sort=False)
    counts = counts[counts >= min_size]
    counts = counts.iloc[np.lexsort((counts.index.to_numpy(), -counts.to_numpy()))][:top]
    names = {c: f"clone {i + 1} (n={n})" for i, (c, n) in enumerate(counts.items())}
    labels = clonotypes.map(names)
    return pd.Categorical(labels, categories=list(names.values()))


def umap_coordinates(latent: np.ndarray, random_state: int = 0) -> np.ndarray:
    """2-D UMAP of a latent space (umap-learn, 15 neighbours, one thread)."""
    import umap

    latent = np.asarray(latent, dtype=np.float32)
    n_neighbors = int(min(15, max(2, latent.shape[0] - 1)))
    return umap.UMAP(n_neighbors=n_neighbors, min_dist=0.3, random_state=random_state,
                     n_jobs=1).fit_transform(latent).astype(np.float32)


@styled
def plot_tcr_latent(
    coords: np.ndarray,
    clusters: Sequence,
    clonotypes: Sequence[str],
    path: str | os.PathLike,
    *,
    cluster_name: str = "cluster",
    top: int = 10,
    title: str = "Joint expression + TCR latent (UMAP)",
    random_state: int = 0,
) -> Path:
    """Two panels of a 2-D embedding: by cluster, and by the largest expanded clonotypes (others grey).

    Parameters
    ----------
    coords
        Cells x 2 (e.g. :func:`umap_coordinates` of the joint latent).
    clusters
        Cluster or cell type of each cell.
    clonotypes
        Clonotype of each cell; the ``top`` largest with two or more cells are coloured.
    path
        PNG to write.
    cluster_name
        What the clusters are (panel title).
    top
        Expanded clonotypes coloured.
    title
        Figure title.
    random_state
        Draw order of the points.

    Returns
    -------
    Path
        The file written.
    """
    import matplotlib.pyplot as plt

    from ..io import save_figure
    from ..plotting import point_size, scatter_categories

    coords = np.asarray(coords)
    fig, axes = plt.subplots(1, 2, figsize=(15.5, 6.0))
    fig.subplots_adjust(wspace=0.62)
    scatter_categories(axes[0], coords, pd.Categorical(np.asarray(clusters, dtype=str)),
                       title=f"by {cluster_name}", random_state=random_state)
    labels = expanded_clonotype_labels(clonotypes, top=top)
    size = point_size(len(coords))
    ax = axes[1]
    grey = labels.codes < 0
    ax.scatter(coords[grey, 0], coords[grey, 1], c="#d0d0d0", s=size, linewidths=0, rasterized=True)
    if len(labels.categories):
        from ..plotting import categorical_colors

        colors = categorical_colors(len(labels.categories))
        handles = []
        for i in range(len(labels.categories)):
            member = labels.codes == i
            ax.scatter(coords[member, 0], coords[member, 1], color=colors[i], s=max(size * 2.5, 12),
                       linewidths=0.3, edgecolors="black", rasterized=True)
            handles.append(plt.Line2D([], [], marker="o", ls="", color=colors[i], markersize=6))
        handles.append(plt.Line2D([], [], marker="o", ls="", color="#d0d0d0", markersize=6))
        ax.legend(handles, [*map(str, labels.categories), "other cells"], loc="center left",
                  bbox_to_anchor=(1.0, 0.5), frameon=False)
        n_expanded = int((clonotype_sizes(clonotypes) > 1).sum())
        ax.set_title(f"largest expanded clonotypes ({n_expanded} cells in clones of >= 2)")
    else:
        ax.set_title("expanded clonotypes (none: every clonotype has one cell)")
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.suptitle(title, fontsize=13, y=1.0)
    return save_figure(fig, path)


#: Cells drawn at most in the latent figure (all cells of the coloured clonotypes, then a random subset).
MAX_FIGURE_CELLS = 5_000


def figure_cells(clonotypes: Sequence[str], max_cells: int = MAX_FIGURE_CELLS, top: int = 10,
                 random_state: int = 0) -> np.ndarray:
    """Rows to draw: every cell when there are at most ``max_cells``, else the ``top`` clones' cells and a random rest."""
    n = len(clonotypes)
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    coloured = np.flatnonzero(expanded_clonotype_labels(clonotypes, top=top).codes >= 0)
    rest = np.setdiff1d(np.arange(n), coloured)
    extra = rng.choice(rest, max(0, max_cells - coloured.size), replace=False) if rest.size else rest
    return np.sort(np.concatenate([coloured, extra]))[:max(max_cells, coloured.size)]


def tcr_latent_figure(
    latent: np.ndarray,
    clonotypes: Sequence[str],
    path: str | os.PathLike,
    *,
    clusters: Sequence | None = None,
    cluster_name: str = "cluster",
    max_cells: int = MAX_FIGURE_CELLS,
    title: str = "Joint expression + TCR latent (UMAP)",
    random_state: int = 0,
) -> Path:
    """UMAP of a latent space by cluster and by expanded clonotype (:func:`plot_tcr_latent`), drawn to ``path``.

    The UMAP runs on scaml's kNN graph of the latent (:func:`scaml.neighbors.neighbors_graph`, 15
    neighbours). Without ``clusters`` the cells are clustered by Leiden (resolution 1) on that graph.
    At most ``max_cells`` cells are drawn (:func:`figure_cells`).
    """
    import anndata as ad
    import scanpy as sc

    from .._utils import info
    from ..neighbors import neighbors_graph

    clonotypes = np.asarray(clonotypes, dtype=str)
    rows = figure_cells(clonotypes, max_cells, random_state=random_state)
    if rows.size < len(clonotypes):
        info(f"the TCR latent figure draws {rows.size} of {len(clonotypes)} cells (all of the largest clones)")
    sub = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in rows]))
    sub.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)[rows]
    neighbors_graph(sub, "X_latent", int(min(15, max(2, rows.size - 1))), random_state=random_state)
    if clusters is None:
        sc.tl.leiden(sub, resolution=1.0, key_added="cluster", flavor="igraph", n_iterations=2,
                     random_state=random_state)
        labels = sub.obs["cluster"].astype(str).to_numpy()
        cluster_name = "Leiden cluster of the latent"
    else:
        labels = np.asarray(clusters, dtype=object)[rows].astype(str)
    sc.tl.umap(sub, min_dist=0.3, maxiter=200, random_state=random_state)
    return plot_tcr_latent(sub.obsm["X_umap"], labels, clonotypes[rows], path, cluster_name=cluster_name,
                           title=title, random_state=random_state)
