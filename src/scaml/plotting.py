"""Figures for people: labelled axes, legible text, colour-blind-friendly categorical palettes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .io import save_figure
from .style import styled


def categorical_colors(n: int) -> list:
    """``n`` distinguishable colours (tab10, tab20, then an evenly sampled turbo map)."""
    if n <= 10:
        return list(plt.get_cmap("tab10").colors[:n])
    if n <= 20:
        return list(plt.get_cmap("tab20").colors[:n])
    return [plt.get_cmap("turbo")(x) for x in np.linspace(0.05, 0.95, n)]


def point_size(n: int) -> float:
    """A marker size that keeps ``n`` points readable (scanpy's rule of thumb)."""
    return float(np.clip(120000 / max(n, 1), 0.5, 30))


def scatter_categories(
    ax: plt.Axes,
    coords: np.ndarray,
    labels: Sequence,
    *,
    title: str,
    xlabel: str = "UMAP 1",
    ylabel: str = "UMAP 2",
    legend_on_data: bool = False,
    random_state: int = 0,
) -> None:
    """Scatter an embedding coloured by a categorical annotation, in random draw order.

    Random order keeps one category from hiding the others, which matters when the
    question is whether batches mix.
    """
    labels = pd.Categorical(labels)
    cats = list(labels.categories)
    colors = categorical_colors(len(cats))
    order = np.random.default_rng(random_state).permutation(len(coords))
    codes = labels.codes[order]
    point_colors = np.array([colors[c] if c >= 0 else (0.8, 0.8, 0.8, 1.0) for c in codes], dtype=object)
    ax.scatter(coords[order, 0], coords[order, 1], c=list(point_colors), s=point_size(len(coords)),
               linewidths=0, rasterized=True)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend_on_data:
        for i, cat in enumerate(cats):
            member = labels.codes == i
            if member.any():
                x, y = np.median(coords[member], axis=0)
                ax.text(x, y, str(cat), fontsize=9, weight="bold", ha="center", va="center",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    else:
        handles = [plt.Line2D([], [], marker="o", ls="", color=colors[i], markersize=6) for i in range(len(cats))]
        ax.legend(handles, [str(c) for c in cats], loc="center left", bbox_to_anchor=(1.0, 0.5),
                  frameon=False, ncol=1 if len(cats) <= 14 else 2, title=None)


@styled
def plot_integration_panels(
    adata: ad.AnnData,
    batch_key: str,
    path: str | os.PathLike,
    *,
    cluster_key: str = "leiden",
    corrected: str = "X_umap",
    uncorrected: str = "X_umap_uncorrected",
    uncorrected_label: str = "PCA",
    note: str | None = None,
) -> Path:
    """The three-panel evaluation figure: corrected UMAP by batch, by cluster, and uncorrected UMAP by batch.

    ``uncorrected_label`` names the uncorrected embedding in the third title (``"PCA"``, ``"LSI"``);
    ``note`` (e.g. that the UMAPs are of a sample) is added under the figure title.
    """
    fig, axes = plt.subplots(1, 3, figsize=(19, 5.6))
    fig.subplots_adjust(wspace=0.55)
    scatter_categories(axes[0], adata.obsm[corrected], adata.obs[batch_key],
                       title=f"Harmony-corrected: {batch_key}")
    scatter_categories(axes[1], adata.obsm[corrected], adata.obs[cluster_key],
                       title=f"Harmony-corrected: {cluster_key} clusters", legend_on_data=True)
    axes[1].get_legend() and axes[1].get_legend().remove()
    scatter_categories(axes[2], adata.obsm[uncorrected], adata.obs[batch_key],
                       title=f"Uncorrected ({uncorrected_label}): {batch_key}")
    title = "Batch correction check: batches should mix after Harmony, clusters should stay distinct"
    fig.suptitle(title if note is None else f"{title}\n({note})", fontsize=13, y=1.02 if note is None else 1.07)
    return save_figure(fig, path)


@styled
def plot_objective(objective: Sequence[float], path: str | os.PathLike, *, title: str = "Harmony objective") -> Path:
    """Line plot of the Harmony objective after each iteration."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    values = np.asarray(objective, dtype=float)
    ax.plot(np.arange(1, len(values) + 1), values, marker="o", color="#1f77b4")
    ax.set_xlabel("Harmony iteration")
    ax.set_ylabel("objective")
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


@styled
def plot_gene_umaps(
    adata: ad.AnnData,
    genes: Sequence[str],
    path: str | os.PathLike,
    *,
    basis: str = "X_umap",
    layer: str | None = None,
    ncols: int = 4,
    title: str = "Marker genes on the corrected UMAP (over-correction check)",
    value_label: str = "log expression",
) -> Path:
    """A grid of UMAPs coloured by the expression of ``genes`` (log-normalised); ``value_label`` names the colour."""
    genes = [g for g in genes if g in adata.var_names]
    n = max(len(genes), 1)
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    coords = adata.obsm[basis]
    matrix = adata.layers[layer] if layer else adata.X
    for ax, gene in zip(axes.ravel(), genes, strict=False):
        col = matrix[:, adata.var_names.get_loc(gene)]
        values = np.asarray(col.toarray() if sp.issparse(col) else col).ravel()
        order = np.argsort(values)
        sc = ax.scatter(coords[order, 0], coords[order, 1], c=values[order], cmap="viridis",
                        s=point_size(len(values)), linewidths=0, rasterized=True)
        ax.set_title(gene)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        fig.colorbar(sc, ax=ax, shrink=0.75, label=value_label)
    for ax in axes.ravel()[len(genes):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_marker_dotplot(adata: ad.AnnData, path: str | os.PathLike, *, groupby: str = "leiden",
                        n_genes: int = 3, key: str = "rank_genes_groups", features: str = "genes") -> Path:
    """scanpy's dot plot of the top ``n_genes`` Wilcoxon markers per cluster (``features``: what the
    markers are, "genes" or "peaks", for the title)."""
    import scanpy as sc

    dendrogram_key = f"dendrogram_{groupby}"
    if dendrogram_key not in adata.uns:
        # the corrected embedding (RNA or ATAC); without one scanpy would run a PCA of X (slow on peaks)
        preferred = ("X_pca_harmony", "X_lsi_harmony", "X_spectral_harmony", "X_pca", "X_lsi", "X_spectral")
        rep = next((k for k in preferred if k in adata.obsm), None)
        sc.tl.dendrogram(adata, groupby=groupby, use_rep=rep)
    title = {"colorbar_title": "Mean accessibility\nin group (scaled)"} if features == "peaks" else {}
    dot = sc.pl.rank_genes_groups_dotplot(adata, groupby=groupby, n_genes=n_genes, key=key,
                                          show=False, return_fig=True, standard_scale="var", **title)
    dot.make_figure()
    fig = dot.fig
    fig.suptitle(f"Top {n_genes} marker {features} per {groupby} cluster (Wilcoxon)", y=1.02)
    return save_figure(fig, path)
