"""Simulated CITE-seq data: RNA counts plus protein counts with a background and a foreground per cell type."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ScamlError
from .io import PROTEIN_KEY


def simulate_cite(
    n_cells: int = 3000,
    n_genes: int = 1000,
    n_proteins: int = 20,
    n_batches: int = 2,
    n_cell_types: int = 5,
    *,
    markers_per_type: int = 2,
    background_log_mean: float = 2.5,
    background_batch_sd: float = 0.4,
    foreground_log_fold: float = 2.5,
    foreground_rate: float = 0.9,
    protein_dispersion: float = 0.1,
    n_missing: int = 0,
    missing_batch: str | None = None,
    random_state: int = 0,
    **rna: object,
) -> ad.AnnData:
    """Simulate CITE-seq cells: RNA counts (:func:`scaml.datasets.simulate`) and antibody counts.

    Every protein has a background (ambient antibody, non-specific binding) in every cell: an NB
    draw around ``exp(background_log_mean)``, shifted by a per-batch, per-protein log factor (the
    protein batch effect). Each cell type has ``markers_per_type`` marker proteins; in a cell of
    that type a marker is in the foreground with probability ``foreground_rate``, its mean then
    ``exp(foreground_log_fold)`` times the background (with a per-protein spread). Cells of other
    types are in the foreground for it with probability 0.03. The truth is kept: which entries
    are foreground, and the full panel when some proteins are hidden.

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_cell_types
        As :func:`scaml.datasets.simulate` (``obs["batch"]``: ``batch1``...; ``obs["cell_type"]``:
        ``type_A``...).
    n_proteins
        Proteins on the panel (``PROT00``... with the marker types in their names, e.g.
        ``type_A_p0``); at least ``markers_per_type * n_cell_types``.
    markers_per_type
        Marker proteins per cell type.
    background_log_mean, background_batch_sd
        Log mean of the background counts, and the SD of its per-batch, per-protein shift.
    foreground_log_fold, foreground_rate
        Log fold of the foreground over the background, and the share of a type's cells in which
        its marker is in the foreground.
    protein_dispersion
        NB dispersion of the protein counts (variance = mu + dispersion * mu^2).
    n_missing
        Proteins (the first ``n_missing`` marker proteins) not measured in ``missing_batch``: set to
        0 there, as in a smaller panel; the measured values are kept in
        ``obsm["protein_expression_full"]`` and the names in ``uns["protein_panel_missing"]``.
    missing_batch
        The batch with the smaller panel (default: the last batch).
    random_state
        Seed.
    **rna
        More options of :func:`scaml.datasets.simulate` (``n_markers``, ``mean_library_size``...).

    Returns
    -------
    AnnData
        RNA counts in X; ``obsm["protein_expression"]`` (DataFrame of integer counts),
        ``obsm["protein_foreground"]`` (bool DataFrame, the truth), ``var`` / ``obs`` as
        :func:`scaml.datasets.simulate`, ``uns["protein_markers"]`` (type -> proteins).
    """
    from ..datasets import _type_name, simulate

    if markers_per_type < 1 or n_proteins < markers_per_type * n_cell_types:
        raise ScamlError(
            f"n_proteins={n_proteins} is too small for {n_cell_types} cell types x {markers_per_type} marker "
            f"proteins; use n_proteins >= {markers_per_type * n_cell_types}."
        )
    if not 0 <= n_missing <= n_proteins - 1:
        raise ScamlError(f"n_missing must be between 0 and n_proteins - 1 = {n_proteins - 1}; got {n_missing}.")
    rna.setdefault("low_quality_fraction", 0.0)
    adata = simulate(n_cells, n_genes, n_batches, n_cell_types, random_state=random_state, **rna)
    rng = np.random.default_rng(random_state + 7919)
    type_names = [_type_name(t) for t in range(n_cell_types)]
    batches = adata.obs["batch"].astype(str).to_numpy()
    batch_names = sorted(set(batches.tolist()), key=lambda b: int(b.removeprefix("batch")))
    bidx = np.array([batch_names.index(b) for b in batches])

    marker_type = np.full(n_proteins, -1)
    names = []
    for p in range(n_proteins):
        t = p // markers_per_type
        if t < n_cell_types:
            marker_type[p] = t
            names.append(f"{_type_name(t)}_p{p % markers_per_type}")
        else:
            names.append(f"PROT{p:02d}")
    back_log = background_log_mean + rng.normal(0.0, 0.3, n_proteins)
    batch_shift = rng.normal(0.0, background_batch_sd, (len(batch_names), n_proteins))
    fold = foreground_log_fold + rng.normal(0.0, 0.3, n_proteins)
    t_of = {_type_name(t): t for t in range(n_cell_types)}
    cell_type_idx = adata.obs["cell_type"].astype(str).map(t_of).to_numpy(dtype=np.int64)
    is_marker = marker_type[None, :] == cell_type_idx[:, None]
    fore = rng.random((n_cells, n_proteins)) < np.where(is_marker, foreground_rate, 0.03)
    log_mu = back_log[None, :] + batch_shift[bidx] + rng.normal(0.0, 0.2, (n_cells, 1))
    log_mu = log_mu + fore * fold[None, :]
    mu = np.exp(log_mu)
    shape = 1.0 / protein_dispersion
    counts = rng.poisson(rng.gamma(shape, mu / shape)).astype(np.float32)

    full = pd.DataFrame(counts, index=adata.obs_names.copy(), columns=names)
    shown = full.copy()
    missing: dict[str, list[str]] = {b: [] for b in batch_names}
    if n_missing:
        target = missing_batch or batch_names[-1]
        if target not in batch_names:
            raise ScamlError(f"missing_batch={target!r} is not a batch of the simulation; use one of {batch_names}.")
        hidden = names[:n_missing]
        shown.loc[batches == target, hidden] = 0.0
        missing[target] = hidden
        adata.obsm["protein_expression_full"] = full
    adata.obsm[PROTEIN_KEY] = shown
    adata.obsm["protein_foreground"] = pd.DataFrame(fore, index=adata.obs_names.copy(), columns=names)
    adata.uns["protein_panel_missing"] = missing
    adata.uns["protein_markers"] = {type_names[t]: [names[p] for p in np.flatnonzero(marker_type == t)]
                                    for t in range(n_cell_types)}
    adata.uns["simulation"]["proteins"] = {
        "n_proteins": n_proteins, "markers_per_type": markers_per_type, "background_log_mean": background_log_mean,
        "background_batch_sd": background_batch_sd, "foreground_log_fold": foreground_log_fold,
        "foreground_rate": foreground_rate, "protein_dispersion": protein_dispersion, "n_missing": n_missing,
    }
    return adata
