"""Reference mapping: build a reference once, map query datasets onto it and transfer labels.

``from scaml.mapping import build_reference, map_query`` is the entry point. The package:

- :mod:`~scaml.mapping.api`: :func:`build_reference` and :func:`map_query`;
- :mod:`~scaml.mapping.methods`: the methods (``scvi``, ``trvae``, ``scanvi``, ``peakvi``, ``poissonvi``,
  ``totalvi``, ``mvtcr``, ``symphony``) as objects with the same ``prepare`` / ``build`` / ``map`` steps,
  and their registry :data:`METHODS`;
- :mod:`~scaml.mapping.atac_query`: ATAC cells mapped onto an RNA reference through their gene activity
  (``map_query(..., modality="atac", genes=...)``);
- :mod:`~scaml.mapping.refdir`: the reference-directory format (one versioned reader / writer),
  on :mod:`scaml.manifest`, the versioned-manifest check every scaml format shares;
- :mod:`~scaml.mapping.transfer`: weighted kNN label transfer with uncertainty;
- :mod:`~scaml.mapping.symphony`: the Symphony-style reference on scaml's Harmony;
- :mod:`~scaml.mapping.scoring` and :mod:`~scaml.mapping.figures`: metrics and figures;
- :mod:`~scaml.mapping.tune`: hyperparameter search of a VAE reference (``--tune N``, Optuna);
- :mod:`~scaml.mapping.demo`: the mapping step of ``scaml demo``.

Names are imported on first use, so that ``import scaml.mapping`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "build_reference": "api",
    "map_query": "api",
    "load_reference_manifest": "api",
    "METHODS": "methods",
    "MappingMethod": "methods",
    "get_method": "methods",
    "LATENT_KEY": "figures",
    "label_metrics": "scoring",
    "demo_mapping": "demo",
    "knn_weights": "transfer",
    "transfer_labels": "transfer",
    "transfer_labels_adata": "transfer",
    "tune_reference": "tune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scaml.mapping' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
