"""The mapping figures: training loss, confusion matrix and joint UMAP of reference and query.

Every function draws inside scaml's figure style (:func:`scaml.style.styled`) and leaves
matplotlib's global settings alone.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info
from ..io import save_figure
from ..style import styled

#: obsm key of the shared embedding in mapped.h5ad.
LATENT_KEY = "X_scaml_latent"
#: Reference cells drawn at most in the joint UMAP (the query is always drawn in full).
MAX_UMAP_REFERENCE_CELLS = 50_000


@styled
def plot_training_loss(history: dict, path: Path, title: str) -> None:
    """Training (and validation) loss per epoch of a VAE, with the best epoch marked; nothing without a history."""
    import matplotlib.pyplot as plt


    train = history.get("train_loss") or []
    if not train:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label="training")
    val = history.get("validation_loss") or []
    if len(val) == len(train):
        ax.plot(epochs, val, label="validation")
    best = history.get("best_epoch")
    if best:
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per cell")
    ax.set_title(title)
    ax.legend(frameon=False)
    save_figure(fig, path)


@styled
def plot_confusion(confusion: pd.DataFrame, path: Path, label_key: str) -> None:
    """Query cells by true (rows) and transferred (columns) label, coloured by the fraction of the true class."""
    import matplotlib.pyplot as plt


    counts = confusion.to_numpy()
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = counts.shape
    fig, ax = plt.subplots(figsize=(max(5.5, 0.75 * n_cols + 3), max(4.0, 0.55 * n_rows + 2)))
    image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in confusion.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(r) for r in confusion.index])
    ax.set_xlabel("predicted label (weighted kNN transfer)")
    ax.set_ylabel(f"true label ({label_key})")
    if n_rows * n_cols <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if frac[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_title("Query: true vs transferred labels")
    save_figure(fig, path)


def joint_umap(
    ref_latent: np.ndarray,
    ref_obs: pd.DataFrame,
    mapped: ad.AnnData,
    predicted_key: str | None,
    outdir: Path,
    method: str,
    random_state: int,
) -> np.ndarray:
    """UMAP of the reference and query cells in the shared embedding; draws ``figures/joint_umap.png``.

    At most :data:`MAX_UMAP_REFERENCE_CELLS` reference cells (a random subset) are embedded with
    the whole query (``mapped.obsm["X_scaml_latent"]``).

    Returns
    -------
    numpy.ndarray
        The query cells' UMAP coordinates (float32, cells x 2).
    """
    import umap

    rng = np.random.default_rng(random_state)
    n_ref = ref_latent.shape[0]
    keep = np.sort(rng.choice(n_ref, MAX_UMAP_REFERENCE_CELLS, replace=False)) if n_ref > MAX_UMAP_REFERENCE_CELLS \
        else np.arange(n_ref)
    query_latent = mapped.obsm[LATENT_KEY]
    joint = np.vstack([ref_latent[keep], query_latent]).astype(np.float32)
    n_neighbors = int(min(15, max(2, joint.shape[0] - 1)))
    info(f"joint UMAP of {keep.size} reference + {query_latent.shape[0]} query cells")
    coords = umap.UMAP(n_neighbors=n_neighbors, min_dist=0.3, random_state=random_state,
                       n_jobs=1).fit_transform(joint)
    plot_joint_umap(coords, ref_obs.iloc[keep], mapped, predicted_key, outdir / "figures" / "joint_umap.png",
                    method, random_state)
    return coords[keep.size:].astype(np.float32)


@styled
def plot_joint_umap(
    coords: np.ndarray,
    ref_obs: pd.DataFrame,
    mapped: ad.AnnData,
    predicted_key: str | None,
    path: Path,
    method: str,
    random_state: int = 0,
) -> None:
    """Draw the joint UMAP: by dataset, by label (or batch), and the query's confidence or uncertainty.

    ``coords`` holds the drawn reference cells (the rows of ``ref_obs``) first, then the query.
    """
    import matplotlib.pyplot as plt

    from ..plotting import point_size, scatter_categories

    n_drawn = len(ref_obs)
    keep = np.arange(n_drawn)
    query_latent = mapped.obsm[LATENT_KEY]
    dataset = np.array(["reference"] * keep.size + ["query"] * query_latent.shape[0], dtype=object)
    panels = 2 + int("mapping_confidence" in mapped.obs or predicted_key is not None)
    fig, axes = plt.subplots(1, panels, figsize=(6.6 * panels, 5.6))
    fig.subplots_adjust(wspace=0.5)
    scatter_categories(axes[0], coords, pd.Categorical(dataset, categories=["reference", "query"]),
                       title="Dataset", random_state=random_state)
    if predicted_key is not None and "label" in ref_obs.columns:
        ref_labels = ref_obs["label"].to_numpy(dtype=object)[keep]
        labels = np.concatenate([ref_labels, mapped.obs[predicted_key].astype(str).to_numpy()])
        labels = pd.Series(labels).fillna("Unknown").astype(str)
        # "Unknown" calls are drawn in grey (a missing category) so that they do not look like a cell type
        labels = pd.Categorical(labels.where(labels != "Unknown"),
                                categories=sorted(set(labels) - {"Unknown"}))
        title = "Labels: reference + query predictions (grey: Unknown)"
    else:
        labels = np.concatenate([ref_obs["batch"].to_numpy(dtype=object)[keep],
                                 np.array(["query"] * query_latent.shape[0], dtype=object)])
        title = "Batch (reference batches + query)"
    scatter_categories(axes[1], coords, labels, title=title, random_state=random_state)
    if panels == 3:
        ax = axes[2]
        ax.scatter(coords[: keep.size, 0], coords[: keep.size, 1], c="#d9d9d9", s=2, linewidths=0,
                   rasterized=True, label="reference")
        if "mapping_confidence" in mapped.obs and predicted_key is None:
            values, name, cmap = mapped.obs["mapping_confidence"].to_numpy(), "mapping confidence", "viridis"
        else:
            values = mapped.obs[f"{predicted_key}_uncertainty"].to_numpy()
            name, cmap = "label-transfer uncertainty", "magma_r"
        points = ax.scatter(coords[keep.size:, 0], coords[keep.size:, 1], c=values, cmap=cmap, vmin=0, vmax=1,
                            s=point_size(query_latent.shape[0]), linewidths=0, rasterized=True)
        fig.colorbar(points, ax=ax, label=name, shrink=0.8)
        ax.set_title(f"Query: {name} (reference in grey)")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Query mapped onto the reference ({method}): joint UMAP of the shared embedding",
                 fontsize=13, y=1.02)
    save_figure(fig, path)
