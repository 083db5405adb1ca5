"""Conditional VAEs for reference mapping (scVI-, trVAE- and scANVI-like) with architecture surgery.

Examples
--------
>>> from scaml.vae import SCVI, load_query
>>> model = SCVI(reference, batch_key="batch").train()          # doctest: +SKIP
>>> query_model = load_query(model, query).train()               # doctest: +SKIP
>>> latent = query_model.get_latent(query)                       # doctest: +SKIP
"""

from __future__ import annotations

from .io import load_model
from .model import SCANVI, SCVI, TRVAE, BaseVAE
from .surgery import load_query

__all__ = ["SCVI", "TRVAE", "SCANVI", "BaseVAE", "load_model", "load_query"]
