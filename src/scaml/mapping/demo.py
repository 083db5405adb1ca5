"""The mapping step of ``scaml demo``: a reference on all batches but the last, the last mapped onto it."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import pandas as pd

from .._utils import info
from ..io import check_obs_key
from .api import build_reference, map_query
from .methods import get_method


def demo_mapping(
    adata: ad.AnnData,
    outdir: str | os.PathLike,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    method: str = "scvi",
    random_state: int = 0,
    *,
    max_epochs: int = 30,
    query_max_epochs: int = 20,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Build a reference on all batches but the last and map the last batch onto it.

    Kept small for ``scaml demo``: few training epochs and 1,000 highly variable genes.

    Parameters
    ----------
    adata
        Simulated (or real) counts with ``obs[batch_key]`` and ``obs[label_key]``; not modified.
    outdir
        Writes ``outdir/reference`` (the reference directory) and ``outdir/query`` (the mapping).
    batch_key, label_key
        The batch and label columns.
    method
        Any of :data:`scaml.mapping.methods.METHODS`.
    random_state
        Seed.
    max_epochs, query_max_epochs
        Reference and query training epochs (methods that train).
    overwrite
        Replace existing sub-directories.

    Returns
    -------
    dict
        ``{"reference": Path, "query": Path}``.
    """
    chosen = get_method(method)
    column = check_obs_key(adata, batch_key, flag="batch_key", min_levels=2).astype(str)
    batches = sorted(pd.unique(column))
    query_batches = batches[-1:]
    is_query = column.isin(query_batches).to_numpy()
    reference = adata[~is_query].copy()
    query = adata[is_query].copy()
    info(f"mapping demo: reference = batches {batches[:-1]} ({reference.n_obs} cells), "
         f"query = {query_batches} ({query.n_obs} cells), method {chosen.name}")
    outdir = Path(outdir)

    def train(stage: str, epochs: int) -> dict:
        # the networks are small: one torch thread is fastest on a laptop or a busy machine
        wanted = {"n_threads": 1, "max_epochs": epochs}
        return {k: v for k, v in wanted.items() if chosen.accepts(k, stage)}

    ref_dir = build_reference(reference, chosen.name, batch_key, label_key, outdir / "reference", overwrite=overwrite,
                              random_state=random_state, n_hvg=1000, train_params=train("build", max_epochs))
    map_query(ref_dir, query, outdir / "query", label_key=label_key, overwrite=overwrite,
              random_state=random_state, train_params=train("map", query_max_epochs))
    return {"reference": ref_dir, "query": outdir / "query"}
