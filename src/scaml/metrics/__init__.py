"""Integration metrics of the scIB benchmark, computed from one shared neighbour search per embedding.

Batch correction: iLISI, kBET (per label), batch ASW, graph connectivity, PCR
comparison. Bio conservation: NMI and ARI of Leiden clusters, label ASW,
cLISI, isolated-label ASW. Summary: batch score, bio score and
``total = 0.4 * batch + 0.6 * bio``.

The array-level functions live in one module per metric family; the
AnnData-level entry points are :func:`evaluate_embeddings` (a table) and
:func:`evaluate` (the table, figure and run record written to a directory).
"""

from __future__ import annotations

from ..neighbors import Neighbors, compute_neighbors, umap_connectivities
from .clustering import isolated_label_asw, isolated_labels, leiden, nmi_ari_leiden_sweep
from .evaluate import embedding_metrics, evaluate, evaluate_embeddings
from .graph import graph_connectivity
from .kbet import kbet_per_label, kbet_test
from .lisi import clisi_scaled, ilisi_scaled, lisi_from_neighbors
from .pcr import pc_regression, pcr_comparison
from .plot import plot_metrics
from .silhouette import batch_asw, label_asw, silhouette_samples
from .summary import BATCH_METRICS, BIO_METRICS, summarize

__all__ = [
    "BATCH_METRICS", "BIO_METRICS", "Neighbors", "batch_asw", "clisi_scaled", "compute_neighbors",
    "embedding_metrics", "evaluate", "evaluate_embeddings", "graph_connectivity", "ilisi_scaled",
    "isolated_label_asw", "isolated_labels", "kbet_per_label", "kbet_test", "label_asw", "leiden",
    "lisi_from_neighbors", "nmi_ari_leiden_sweep", "pc_regression", "pcr_comparison", "plot_metrics",
    "silhouette_samples", "summarize", "umap_connectivities",
]
