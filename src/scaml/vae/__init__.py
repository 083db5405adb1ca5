"""Conditional VAEs for reference mapping (scVI-, trVAE-, scANVI-, PeakVI- and PoissonVI-like) with architecture surgery.

Modules, each depending only on those before it: ``modules`` (networks and likelihoods),
``data`` (mini-batches, gene alignment), ``training``, ``freeze`` (which weights a query trains),
``io`` (the files of a model directory), ``model`` (SCVI / TRVAE / SCANVI and ``load_model``)
and ``surgery`` (``load_query``).

Examples
--------
>>> from scaml.vae import SCVI, load_query
>>> model = SCVI(reference, batch_key="batch").train()          # doctest: +SKIP
>>> query_model = load_query(model, query).train()               # doctest: +SKIP
>>> latent = query_model.get_latent(query)                       # doctest: +SKIP
"""

from __future__ import annotations

from .model import PEAKVI, POISSONVI, SCANVI, SCVI, TRVAE, BaseVAE, load_model
from .mvtcr import MVTCR
from .surgery import load_query
from .totalvi import TOTALVI

__all__ = ["SCVI", "TRVAE", "SCANVI", "PEAKVI", "POISSONVI", "BaseVAE", "load_model", "load_query", "MVTCR", "TOTALVI"]
