"""T-cell receptors beside expression: reading the chains, encoding them, clonotype-aware neighbours.

- :mod:`scaml.tcr.io`: the primary alpha / beta chain of each cell (CDR3 amino acids, V and J genes)
  from scirpy's AIRR layouts (``obsm["airr"]``, ``VJ_1_junction_aa``-style columns), the older
  ``IR_VJ_1_*`` / ``IR_VDJ_1_*`` columns, or a 10x ``filtered_contig_annotations.csv``
  (:func:`read_tcr`, :func:`read_contigs`, :func:`add_tcr`, :func:`clonotypes`);
- :mod:`scaml.tcr.encode`: amino-acid tokens, V/J gene codes and chain masks for a network;
- :mod:`scaml.tcr.analysis`: the kNN graph of a latent space with each cell's clonotype mates
  (:func:`clonotype_neighbors`, :func:`clonotype_neighbor_rate`) and the latent's figure by
  cluster and expanded clonotype (:func:`plot_tcr_latent`).

The model that joins expression and TCR is :class:`scaml.vae.MVTCR`.

Examples
--------
>>> from scaml.datasets import simulate_tcr
>>> from scaml import tcr
>>> adata = simulate_tcr(300, 300, random_state=0)
>>> table = tcr.read_tcr(adata, report=False)
>>> list(table.columns)[:2]
['tcr_alpha_cdr3', 'tcr_alpha_v']
"""

from __future__ import annotations

from .analysis import (
    clonotype_distance_ratio,
    clonotype_neighbor_rate,
    clonotype_neighbors,
    expanded_clonotype_labels,
    plot_tcr_latent,
    tcr_latent_figure,
    umap_coordinates,
)
from .io import (
    AMINO_ACIDS,
    CLONOTYPE_COLUMN,
    LAYOUTS,
    TCR_COLUMNS,
    add_tcr,
    chain_counts,
    clonotypes,
    detect_layout,
    join_contigs,
    read_contigs,
    read_tcr,
    tcr_table,
)

__all__ = [
    "AMINO_ACIDS", "CLONOTYPE_COLUMN", "LAYOUTS", "TCR_COLUMNS", "add_tcr", "chain_counts",
    "clonotype_distance_ratio", "clonotype_neighbor_rate", "clonotype_neighbors", "clonotypes",
    "detect_layout", "expanded_clonotype_labels", "join_contigs", "plot_tcr_latent", "read_contigs",
    "read_tcr", "tcr_latent_figure", "tcr_table", "umap_coordinates",
]
