"""Simulated single-cell count data for demos and tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .errors import ScamlError

_MT_GENES = ("MT-ND1", "MT-ND2", "MT-CO1", "MT-CO2", "MT-ATP8", "MT-ATP6", "MT-CO3",
             "MT-ND3", "MT-ND4L", "MT-ND4", "MT-ND5", "MT-ND6", "MT-CYB")


def simulate(
    n_cells: int = 3000,
    n_genes: int = 2000,
    n_batches: int = 3,
    n_cell_types: int = 6,
    *,
    n_markers: int = 25,
    marker_log_fold: float = 2.0,
    batch_log_fold_sd: float = 0.2,
    batch_library_spread: float = 0.4,
    dispersion: float = 0.3,
    mean_library_size: float = 4000.0,
    low_quality_fraction: float = 0.02,
    random_state: int = 0,
    chunk_cells: int = 20000,
) -> ad.AnnData:
    """Simulate a multi-batch single-cell count dataset with known cell types.

    Counts are negative-binomial (gamma-Poisson) draws around a cell type's mean
    profile. Each cell type has its own marker genes (up-regulated by about
    ``exp(marker_log_fold)``); each batch multiplies every gene by its own
    log-normal fold change (a gene-specific batch effect) and shifts the
    library sizes of its cells (a technical depth effect); cell-type proportions
    differ between batches. A small fraction of low-quality cells with a high
    mitochondrial fraction and few genes is added so that QC has work to do.

    Parameters
    ----------
    n_cells, n_genes
        Size of the count matrix (cells x genes). The first 13 genes are
        mitochondrial (``MT-`` names).
    n_batches, n_cell_types
        Number of batches (``obs["batch"]``: ``batch1``...) and cell types
        (``obs["cell_type"]``: ``type_A``...).
    n_markers
        Marker genes per cell type (listed in ``var["marker_of"]``).
    marker_log_fold
        Mean natural-log fold change of a marker in its cell type.
    batch_log_fold_sd
        Standard deviation of the per-batch, per-gene log fold change.
    batch_library_spread
        Standard deviation of the per-batch log library-size factor.
    dispersion
        Negative-binomial dispersion (variance = mu + dispersion * mu^2).
    mean_library_size
        Typical total counts per cell.
    low_quality_fraction
        Fraction of cells turned into low-quality cells (``obs["low_quality"]``).
    random_state
        Seed; the same seed gives the same data.
    chunk_cells
        Cells simulated at a time (bounds memory for large simulations).

    Returns
    -------
    AnnData
        ``X`` is a CSR matrix of integer counts (float32); ``obs`` has
        ``batch``, ``cell_type`` and ``low_quality``; ``var`` has ``marker_of``
        and ``mt``.
    """
    if n_cells < n_batches * 2 or n_batches < 1 or n_cell_types < 1:
        raise ScamlError(
            f"simulate needs n_batches >= 1, n_cell_types >= 1 and n_cells >= 2 * n_batches; "
            f"got n_cells={n_cells}, n_batches={n_batches}, n_cell_types={n_cell_types}."
        )
    n_mt = len(_MT_GENES)
    if n_genes < n_mt + n_markers * n_cell_types + 10:
        raise ScamlError(
            f"n_genes={n_genes} is too small for {n_cell_types} cell types x {n_markers} markers plus "
            f"{n_mt} mitochondrial genes; use n_genes >= {n_mt + n_markers * n_cell_types + 10}."
        )
    rng = np.random.default_rng(random_state)

    # gene-level baseline: log-normal means, normalised to proportions
    base_log = rng.normal(-1.0, 1.3, size=n_genes)
    base_log[:n_mt] = rng.normal(2.0, 0.4, size=n_mt)

    # cell-type profiles: markers plus small widespread differences
    type_log = np.tile(base_log, (n_cell_types, 1))
    marker_of = np.full(n_genes, "", dtype=object)
    candidates = rng.permutation(np.arange(n_mt, n_genes))
    for t in range(n_cell_types):
        markers = candidates[t * n_markers:(t + 1) * n_markers]
        type_log[t, markers] += rng.normal(marker_log_fold, 0.4, size=n_markers)
        marker_of[markers] = _type_name(t)
        diffuse = rng.random(n_genes) < 0.05
        diffuse[:n_mt] = False
        type_log[t, diffuse] += rng.normal(0.0, 0.5, size=diffuse.sum())

    # batch effects: per-gene fold changes and library-size shifts
    batch_log = rng.normal(0.0, batch_log_fold_sd, size=(n_batches, n_genes))
    batch_log[:, :n_mt] *= 0.3
    batch_lib = rng.normal(0.0, batch_library_spread, size=n_batches)

    # assign cells to batches and types (type proportions differ per batch)
    batch_idx = np.sort(rng.integers(0, n_batches, size=n_cells))
    props = rng.dirichlet(np.full(n_cell_types, 4.0), size=n_batches)
    type_idx = np.empty(n_cells, dtype=int)
    for b in range(n_batches):
        where = np.flatnonzero(batch_idx == b)
        type_idx[where] = rng.choice(n_cell_types, size=where.size, p=props[b])

    low_quality = rng.random(n_cells) < low_quality_fraction
    lib = mean_library_size * np.exp(rng.normal(0.0, 0.35, size=n_cells) + batch_lib[batch_idx])
    lib[low_quality] *= 0.15

    blocks = []
    for start in range(0, n_cells, chunk_cells):
        stop = min(start + chunk_cells, n_cells)
        logits = type_log[type_idx[start:stop]] + batch_log[batch_idx[start:stop]]
        lq = low_quality[start:stop]
        logits[np.ix_(lq, np.arange(n_mt))] += 2.5
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        mu = probs * lib[start:stop, None]
        shape = 1.0 / dispersion
        rate = rng.gamma(shape, mu / shape)
        counts = rng.poisson(rate).astype(np.float32)
        blocks.append(sp.csr_matrix(counts))
    X = sp.vstack(blocks, format="csr")

    gene_names = list(_MT_GENES) + [f"GENE{i:05d}" for i in range(n_mt, n_genes)]
    for t in range(n_cell_types):  # marker genes carry their cell type's name, e.g. "type_A_m03"
        for j, gene in enumerate(np.flatnonzero(marker_of == _type_name(t))):
            gene_names[gene] = f"{_type_name(t)}_m{j + 1:02d}"
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b + 1}" for b in batch_idx]),
            "cell_type": pd.Categorical([_type_name(t) for t in type_idx]),
            "low_quality": low_quality,
        },
        index=[f"cell{i:06d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"marker_of": pd.Categorical(marker_of), "mt": [g.startswith("MT-") for g in gene_names]},
        index=gene_names,
    )
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = {
        "n_cells": n_cells, "n_genes": n_genes, "n_batches": n_batches,
        "n_cell_types": n_cell_types, "n_markers": n_markers, "marker_log_fold": marker_log_fold,
        "batch_log_fold_sd": batch_log_fold_sd, "batch_library_spread": batch_library_spread,
        "dispersion": dispersion, "mean_library_size": mean_library_size,
        "low_quality_fraction": low_quality_fraction, "random_state": random_state,
    }
    return adata


def _type_name(index: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return f"type_{letters[index % 26]}{'' if index < 26 else index // 26}"


def simulate_atac(
    n_cells: int = 3000,
    n_peaks: int = 5000,
    n_batches: int = 2,
    n_cell_types: int = 5,
    *,
    specific_fraction: float = 0.3,
    specific_log_fold: float = 2.0,
    batch_log_fold_sd: float = 0.5,
    batch_depth_spread: float = 0.4,
    mean_depth: float = 1500.0,
    depth_sd: float = 0.5,
    n_chromosomes: int = 5,
    random_state: int = 0,
    chunk_cells: int = 5000,
) -> ad.AnnData:
    """Simulate a multi-batch scATAC-seq peak count matrix with known cell types.

    Every peak has a baseline accessibility (log-normal); a ``specific_fraction`` of the peaks is split
    among the cell types and opened ``exp(specific_log_fold)``-fold in its type. Each batch multiplies
    every peak by its own log-normal factor (a peak-specific batch effect) and shifts the sequencing
    depth of its cells; cell depths vary log-normally within a batch too, so the first LSI component
    tracks depth. Counts are Poisson draws (mostly 0, 1 and 2, as in real peak matrices).

    Parameters
    ----------
    n_cells, n_peaks
        Size of the matrix (cells x peaks).
    n_batches, n_cell_types
        Batches (``obs["batch"]``: ``batch1``...) and cell types (``obs["cell_type"]``: ``type_A``...).
    specific_fraction
        Share of the peaks that are cell-type specific (``var["specific_to"]``).
    specific_log_fold
        Natural-log fold change of a specific peak in its type.
    batch_log_fold_sd
        Standard deviation of the per-batch, per-peak log factor.
    batch_depth_spread
        Standard deviation of the per-batch log depth factor.
    mean_depth, depth_sd
        Typical counts in peaks per cell, and the log-normal spread of cell depths.
    n_chromosomes
        Peaks are placed on ``chr1`` ... ``chr<n>``, 500 bp wide, about 20 kb apart.
    random_state
        Seed; the same seed gives the same data.
    chunk_cells
        Cells drawn at a time (bounds memory).

    Returns
    -------
    AnnData
        ``X`` CSR float32 integer counts; features named ``chrN-start-end`` with ``var`` ``chrom``,
        ``start``, ``end`` and ``specific_to``; ``obs`` ``batch``, ``cell_type`` and ``depth_factor``.
    """
    if n_cells < n_batches * 2 or n_batches < 1 or n_cell_types < 1 or n_peaks < 10 * n_cell_types:
        raise ScamlError(
            f"simulate_atac needs n_batches >= 1, n_cell_types >= 1, n_cells >= 2 * n_batches and "
            f"n_peaks >= 10 * n_cell_types; got n_cells={n_cells}, n_peaks={n_peaks}, n_batches={n_batches}, "
            f"n_cell_types={n_cell_types}."
        )
    rng = np.random.default_rng(random_state)
    base_log = rng.normal(0.0, 0.7, size=n_peaks)
    type_log = np.tile(base_log, (n_cell_types, 1))
    specific_to = np.full(n_peaks, "", dtype=object)
    n_specific = int(specific_fraction * n_peaks) // n_cell_types
    candidates = rng.permutation(n_peaks)
    for t in range(n_cell_types):
        peaks = candidates[t * n_specific:(t + 1) * n_specific]
        type_log[t, peaks] += rng.normal(specific_log_fold, 0.3, size=peaks.size)
        specific_to[peaks] = _type_name(t)
    batch_log = rng.normal(0.0, batch_log_fold_sd, size=(n_batches, n_peaks))
    batch_depth = rng.normal(0.0, batch_depth_spread, size=n_batches)
    batch_idx = np.sort(rng.integers(0, n_batches, size=n_cells))
    props = rng.dirichlet(np.full(n_cell_types, 4.0), size=n_batches)
    type_idx = np.empty(n_cells, dtype=int)
    for b in range(n_batches):
        where = np.flatnonzero(batch_idx == b)
        type_idx[where] = rng.choice(n_cell_types, size=where.size, p=props[b])
    depth_factor = np.exp(rng.normal(0.0, depth_sd, size=n_cells) + batch_depth[batch_idx])
    # each cell's counts: a Poisson total, spread over the peaks by its type x batch accessibility profile
    totals = rng.poisson(mean_depth * depth_factor)
    group = type_idx * n_batches + batch_idx
    rows_parts, cols_parts = [], []
    for g in np.unique(group):
        cells = np.flatnonzero(group == g)
        logits = type_log[g // n_batches] + batch_log[g % n_batches]
        cdf = np.cumsum(np.exp(logits - logits.max()))
        for lo in range(0, cells.size, chunk_cells):
            chunk = cells[lo:lo + chunk_cells]
            n = totals[chunk]
            draws = np.searchsorted(cdf, rng.random(int(n.sum())) * cdf[-1], side="right")
            rows_parts.append(np.repeat(chunk, n))
            cols_parts.append(np.minimum(draws, n_peaks - 1))
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, dtype=np.int64)
    X = sp.coo_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_cells, n_peaks)).tocsr()
    X.sum_duplicates()

    chrom_idx = np.sort(rng.integers(0, n_chromosomes, size=n_peaks))
    starts = np.empty(n_peaks, dtype=np.int64)
    for c in range(n_chromosomes):
        where = np.flatnonzero(chrom_idx == c)
        starts[where] = 10_000 + np.cumsum(rng.integers(5_000, 35_000, size=where.size))
    chroms = np.array([f"chr{c + 1}" for c in chrom_idx])
    ends = starts + 499
    names = [f"{c}-{s}-{e}" for c, s, e in zip(chroms, starts, ends, strict=True)]
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"batch{b + 1}" for b in batch_idx]),
         "cell_type": pd.Categorical([_type_name(t) for t in type_idx]),
         "depth_factor": depth_factor},
        index=[f"cell{i:06d}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"chrom": pd.Categorical(chroms), "start": starts, "end": ends,
                        "specific_to": pd.Categorical(specific_to)}, index=names)
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.uns["simulation"] = {
        "kind": "atac", "n_cells": n_cells, "n_peaks": n_peaks, "n_batches": n_batches,
        "n_cell_types": n_cell_types, "specific_fraction": specific_fraction,
        "specific_log_fold": specific_log_fold, "batch_log_fold_sd": batch_log_fold_sd,
        "batch_depth_spread": batch_depth_spread, "mean_depth": mean_depth, "depth_sd": depth_sd,
        "random_state": random_state,
    }
    return adata
