"""Reference mapping: build a reference once, map query datasets onto it and transfer labels.

``from scaml.mapping import build_reference, map_query`` is the entry point; the weighted kNN
label transfer is in :mod:`scaml.mapping.transfer` and the Symphony-style Harmony reference in
:mod:`scaml.mapping.symphony`.
"""

from __future__ import annotations

from .api import (
    LATENT_KEY,
    METHODS,
    VAE_METHODS,
    build_reference,
    demo_mapping,
    label_metrics,
    load_reference_manifest,
    map_query,
)
from .transfer import knn_weights, transfer_labels, transfer_labels_adata

__all__ = [
    "LATENT_KEY",
    "METHODS",
    "VAE_METHODS",
    "build_reference",
    "demo_mapping",
    "knn_weights",
    "label_metrics",
    "load_reference_manifest",
    "map_query",
    "transfer_labels",
    "transfer_labels_adata",
]
