"""CITE-seq: protein (antibody) counts beside the RNA, and the totalVI-like model's input.

- :mod:`~scaml.cite.io`: read and check protein counts (``obsm["protein_expression"]``), split a 10x
  feature-barcoding file, find each batch's panel, match protein names between datasets, CLR;
- :mod:`~scaml.cite.simulate`: simulated CITE-seq cells with a background and a foreground per protein.

The model itself is :class:`scaml.vae.totalvi.TOTALVI`.
"""

from .io import (
    ANTIBODY_CAPTURE,
    PROTEIN_KEY,
    ProteinCounts,
    ProteinMatch,
    align_proteins,
    clr,
    get_protein_counts,
    has_proteins,
    match_proteins,
    protein_key_of,
    protein_names_of,
    protein_panels,
    read_cite,
    split_feature_types,
)
from .simulate import simulate_cite

__all__ = [
    "ANTIBODY_CAPTURE", "PROTEIN_KEY", "ProteinCounts", "ProteinMatch", "align_proteins", "clr",
    "get_protein_counts", "has_proteins", "match_proteins", "protein_key_of", "protein_names_of", "protein_panels",
    "read_cite", "simulate_cite", "split_feature_types",
]
