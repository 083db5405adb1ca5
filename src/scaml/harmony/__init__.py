"""scaml's Harmony (R harmony 2.x algorithm) and Symphony-style reference mapping.

``run_harmony`` works on arrays and is a drop-in for ``harmonypy.run_harmony``;
``harmony_integrate`` works on AnnData (``obsm["X_pca"]`` -> ``obsm["X_pca_harmony"]``).
Symphony-style reference building and query mapping live in :mod:`scaml.mapping.symphony`.
"""

from __future__ import annotations

from .api import Harmony, harmony_integrate, run_harmony

__all__ = ["Harmony", "harmony_integrate", "run_harmony"]
