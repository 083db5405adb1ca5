"""scaml's Harmony (the R harmony 2.x algorithm) on arrays and on AnnData.

``run_harmony`` works on arrays and is a drop-in for ``harmonypy.run_harmony``;
``harmony_integrate`` works on AnnData (``obsm["X_pca"]`` -> ``obsm["X_pca_harmony"]``).
Symphony-style reference building and query mapping live in :mod:`scaml.mapping.symphony`.
"""

from __future__ import annotations

from .api import Harmony, harmony_integrate, run_harmony
from .core import HarmonyParams

__all__ = ["Harmony", "HarmonyParams", "harmony_integrate", "run_harmony"]
