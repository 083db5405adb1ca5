"""Simulated single-cell count data for demos and tests."""

from __future__ import annotations

from pathlib import Path

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


def _profile_counts(rng: np.random.Generator, totals: np.ndarray, type_idx: np.ndarray, batch_idx: np.ndarray,
                    type_log: np.ndarray, batch_log: np.ndarray, chunk_cells: int) -> sp.csr_matrix:
    """Each cell's Poisson total spread over the features by its type x batch log-profile (multinomial draws).

    ``type_log`` is types x features and ``batch_log`` batches x features (log weights, added);
    cells are drawn in runs of ``chunk_cells`` so that only one run's draws are in memory at once.
    """
    n_cells, n_features = totals.size, type_log.shape[1]
    n_batches = batch_log.shape[0]
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
            cols_parts.append(np.minimum(draws, n_features - 1))
    rows = np.concatenate(rows_parts) if rows_parts else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(cols_parts) if cols_parts else np.zeros(0, dtype=np.int64)
    X = sp.coo_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n_cells, n_features)).tocsr()
    X.sum_duplicates()
    return X


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
    X = _profile_counts(rng, totals, type_idx, batch_idx, type_log, batch_log, chunk_cells)

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


def write_fragments(
    adata: ad.AnnData,
    path: str | Path,
    *,
    background_fraction: float = 0.25,
    cells_without: int = 0,
    random_state: int = 0,
    chunk_cells: int = 5000,
    append: bool = False,
) -> Path:
    """Write a 10x-style ``fragments.tsv.gz`` that agrees with a simulated peak matrix (e.g. :func:`simulate_atac`).

    Every count of a cell in a peak becomes one fragment inside that peak (start uniform in the peak,
    40-300 bp long, clipped to the peak); ``background_fraction`` more fragments per cell fall between
    the peaks of its chromosome. The last ``cells_without`` cells get no fragments (barcodes that the
    file misses).

    Parameters
    ----------
    adata
        Peak counts in X; ``var`` ``chrom`` / ``start`` / ``end`` (1-based, as :func:`simulate_atac`).
    path
        The file to write (gzip; overwritten).
    background_fraction
        Fragments outside peaks, as a fraction of the cell's counts in peaks.
    cells_without
        Cells at the end of ``adata`` with no fragments.
    random_state
        Seed.
    chunk_cells
        Cells written at a time (bounds memory).
    append
        Add to an existing file (a further gzip member) instead of overwriting it.

    Returns
    -------
    Path
        ``path``.
    """
    import gzip

    rng = np.random.default_rng(random_state)
    X = sp.csr_matrix(adata.X)
    chrom = adata.var["chrom"].astype(str).to_numpy()
    pstart = adata.var["start"].to_numpy(np.int64)
    pend = adata.var["end"].to_numpy(np.int64)
    names = adata.obs_names.astype(str).to_numpy()
    n_with = adata.n_obs - int(cells_without)
    path = Path(path)
    with gzip.open(path, "at" if append else "wt", compresslevel=1) as handle:
        handle.write("# simulated fragments (chrom, start, end, barcode, count)\n")
        for a in range(0, n_with, chunk_cells):
            block = X[a:min(a + chunk_cells, n_with)]
            coo = block.tocoo()
            reps = coo.data.astype(np.int64)
            cell = np.repeat(coo.row, reps) + a
            peak = np.repeat(coo.col, reps)
            # the peaks' 1-based start s is 0-based s - 1 in a fragments file
            lo = pstart[peak] - 1 + rng.integers(0, np.maximum(pend[peak] - pstart[peak] - 40, 1))
            hi = np.minimum(lo + rng.integers(40, 300, size=lo.size), pend[peak])
            n_bg = rng.poisson(background_fraction * np.asarray(block.sum(axis=1)).ravel())
            bg_cell = np.repeat(np.arange(block.shape[0]), n_bg) + a
            bg_peak = rng.integers(0, adata.n_vars, size=bg_cell.size)
            bg_lo = pend[bg_peak] + 1000 + rng.integers(0, 2000, size=bg_cell.size)  # between peaks (>= 5 kb apart)
            frame = pd.DataFrame({
                "chrom": np.concatenate([chrom[peak], chrom[bg_peak]]),
                "start": np.concatenate([lo, bg_lo]),
                "end": np.concatenate([hi, bg_lo + rng.integers(40, 300, size=bg_cell.size)]),
                "barcode": names[np.concatenate([cell, bg_cell])],
                "count": 1,
            })
            frame.to_csv(handle, sep="\t", header=False, index=False)
    return path


def write_peak_genes_bed(var: pd.DataFrame, path: str | Path, *, every: int = 5, length: int = 3000) -> Path:
    """Write a BED file of made-up genes for simulated peaks (e.g. :func:`simulate_atac`'s ``var``): one gene at
    every ``every``-th peak, its TSS in the middle of a 500-bp peak, ``length`` bp long, strands alternating.

    Parameters
    ----------
    var
        The peaks' ``chrom`` / ``start`` (1-based).
    path
        The file to write (overwritten).
    every, length
        A gene at every ``every``-th peak; its length in bp.

    Returns
    -------
    Path
        ``path``.
    """
    lines = []
    for j in range(0, len(var), every):
        middle = int(var["start"].iloc[j]) + 250  # BED starts are 0-based: the gene's first base is start + 1
        start, end, strand = ((middle - 1, middle + length, "+") if j % 2 == 0
                              else (middle - length - 1, middle, "-"))
        lines.append(f"{var['chrom'].iloc[j]}\t{start}\t{end}\tG{j}\t0\t{strand}\n")
    path = Path(path)
    path.write_text("".join(lines))
    return path


def simulate_rna_atac(
    n_rna: int = 2000,
    n_atac: int = 3000,
    n_genes: int = 1000,
    n_cell_types: int = 5,
    *,
    n_rna_types: int | None = None,
    n_markers: int = 30,
    marker_log_fold: float = 2.5,
    coupling: float = 1.0,
    n_intergenic: int = 1000,
    n_batches: int = 2,
    mean_library_size: float = 3000.0,
    mean_depth: float = 800.0,
    n_chromosomes: int = 5,
    random_state: int = 0,
    chunk_cells: int = 5000,
) -> tuple[ad.AnnData, ad.AnnData, pd.DataFrame]:
    """Simulate unpaired scRNA-seq and scATAC-seq cells of the same cell types, and their gene annotation.

    Genes are laid out on ``chr1`` ... ``chr<n>`` (5-50 kb long, random strand, gaps of 10-60 kb). Each
    cell type opens ``n_markers`` marker genes ``exp(marker_log_fold)``-fold over a log-normal baseline.
    RNA counts are Poisson draws of each cell's library spread over that type's expression profile; ATAC
    peaks sit at each gene's promoter (its TSS, 500 bp) and at 0-2 places in its body, with an
    accessibility that follows the gene's log expression (``coupling`` times it, plus noise), and
    ``n_intergenic`` peaks lie between genes (baseline accessibility only). So a peak-based gene activity
    (:func:`scaml.atac.gene_activity` with the returned annotation) tracks the RNA of the same type, as
    real gene activity does, noisily. Both sets get batch effects (a per-batch, per-feature log factor
    and depth shift); the ATAC batches are named ``atac_batch1``..., the RNA ones ``rna_batch1``...

    Parameters
    ----------
    n_rna, n_atac, n_genes, n_cell_types
        Cells of each set, genes and cell types (``obs["cell_type"]``: ``type_A``...).
    n_rna_types
        The RNA cells come from the first ``n_rna_types`` types only (default: all), so the ATAC cells
        of the other types are absent from an RNA reference.
    n_markers, marker_log_fold
        Marker genes per type and their natural-log fold change.
    coupling
        How strongly a gene's peaks follow its log expression (0: not at all).
    n_intergenic
        Peaks outside every gene.
    n_batches
        Batches of each set.
    mean_library_size, mean_depth
        Typical RNA UMIs and ATAC counts in peaks per cell.
    n_chromosomes
        Chromosomes the genes are spread over.
    random_state
        Seed; the same seed gives the same data.
    chunk_cells
        Cells drawn at a time (bounds memory).

    Returns
    -------
    rna, atac, genes
        RNA counts (cells x genes, CSR float32; ``obs`` ``batch``, ``cell_type``), ATAC peak counts (cells x
        peaks named ``chrN-start-end`` with ``var`` ``chrom``/``start``/``end``/``gene``; ``obs`` ``batch``,
        ``cell_type``) and the annotation (``gene``, ``chrom``, ``start``, ``end``, ``strand``, ``tss``;
        1-based, as :func:`scaml.atac.read_gene_annotation` returns).
    """
    n_rna_types = n_cell_types if n_rna_types is None else int(n_rna_types)
    if not 1 <= n_rna_types <= n_cell_types or n_genes < n_markers * n_cell_types or min(n_rna, n_atac) < 2:
        raise ScamlError(
            f"simulate_rna_atac needs 1 <= n_rna_types <= n_cell_types, n_genes >= n_markers * n_cell_types and "
            f"at least 2 cells per set; got n_rna_types={n_rna_types}, n_cell_types={n_cell_types}, "
            f"n_genes={n_genes}, n_markers={n_markers}, n_rna={n_rna}, n_atac={n_atac}."
        )
    rng = np.random.default_rng(random_state)
    # genes: positions, strands, and each type's log expression
    chrom_idx = np.sort(rng.integers(0, n_chromosomes, size=n_genes))
    length = rng.integers(5_000, 50_000, size=n_genes)
    gap = rng.integers(10_000, 60_000, size=n_genes)
    start = np.empty(n_genes, dtype=np.int64)
    for c in range(n_chromosomes):
        where = np.flatnonzero(chrom_idx == c)
        start[where] = 20_000 + np.cumsum(gap[where] + length[where]) - length[where]
    end = start + length - 1
    strand = np.where(rng.random(n_genes) < 0.5, "+", "-")
    names = [f"GENE{i:05d}" for i in range(n_genes)]
    genes = pd.DataFrame({"gene": names, "chrom": [f"chr{c + 1}" for c in chrom_idx], "start": start,
                          "end": end, "strand": strand})
    genes["tss"] = np.where(genes["strand"] == "-", genes["end"], genes["start"])
    base = rng.normal(0.0, 1.0, size=n_genes)
    expr = np.tile(base, (n_cell_types, 1))
    markers = rng.permutation(n_genes)[: n_markers * n_cell_types].reshape(n_cell_types, n_markers)
    for t in range(n_cell_types):
        expr[t, markers[t]] += rng.normal(marker_log_fold, 0.3, size=n_markers)
    # peaks: a promoter peak per gene, 0-2 in its body, and intergenic ones
    tss = genes["tss"].to_numpy()
    body = rng.integers(0, 3, size=n_genes)
    p_gene = np.concatenate([np.arange(n_genes), np.repeat(np.arange(n_genes), body)])
    p_start = np.concatenate([tss - 250, start[np.repeat(np.arange(n_genes), body)]
                              + (rng.random(int(body.sum())) * (length[np.repeat(np.arange(n_genes), body)] - 600)).astype(np.int64)])
    p_chrom = chrom_idx[p_gene]
    inter_gene = rng.integers(0, n_genes, size=n_intergenic)  # in the gap before this gene
    p_chrom = np.concatenate([p_chrom, chrom_idx[inter_gene]])
    p_start = np.concatenate([p_start, start[inter_gene] - 5_000 - (rng.random(n_intergenic) * (gap[inter_gene] - 10_000)).astype(np.int64)])
    p_start = np.maximum(p_start, 1)
    p_log = np.concatenate([coupling * (expr[:, p_gene] - base[p_gene]) + rng.normal(0.0, 0.5, size=p_gene.size)
                            + base[p_gene] * 0.3, np.tile(rng.normal(0.0, 0.7, size=n_intergenic), (n_cell_types, 1))],
                           axis=1)
    p_gene_name = np.concatenate([np.asarray(names, dtype=object)[p_gene], np.full(n_intergenic, "", dtype=object)])
    order = np.lexsort((p_start, p_chrom))
    p_chrom, p_start, p_log, p_gene_name = p_chrom[order], p_start[order], p_log[:, order], p_gene_name[order]
    peak_names = [f"chr{c + 1}-{s}-{s + 499}" for c, s in zip(p_chrom, p_start, strict=True)]
    keep = ~pd.Index(peak_names).duplicated()
    p_chrom, p_start, p_log, p_gene_name = p_chrom[keep], p_start[keep], p_log[:, keep], p_gene_name[keep]
    peak_names = list(np.asarray(peak_names)[keep])

    def draw(n_cells: int, n_types: int, profiles: np.ndarray, depth: float, prefix: str) -> tuple:
        batch_idx = np.sort(rng.integers(0, n_batches, size=n_cells))
        type_idx = rng.integers(0, n_types, size=n_cells)
        batch_log = rng.normal(0.0, 0.2, size=(n_batches, profiles.shape[1]))
        depth_factor = np.exp(rng.normal(0.0, 0.4, size=n_cells) + rng.normal(0.0, 0.2, size=n_batches)[batch_idx])
        totals = rng.poisson(depth * depth_factor)
        X = _profile_counts(rng, totals, type_idx, batch_idx, profiles, batch_log, chunk_cells)
        obs = pd.DataFrame({"batch": pd.Categorical([f"{prefix}_batch{b + 1}" for b in batch_idx]),
                            "cell_type": pd.Categorical([_type_name(t) for t in type_idx])},
                           index=[f"{prefix}_cell{i:06d}" for i in range(n_cells)])
        return X, obs

    X_rna, obs_rna = draw(n_rna, n_rna_types, expr, mean_library_size, "rna")
    rna = ad.AnnData(X=X_rna, obs=obs_rna, var=pd.DataFrame(index=pd.Index(names)))
    X_atac, obs_atac = draw(n_atac, n_cell_types, p_log, mean_depth, "atac")
    var = pd.DataFrame({"chrom": pd.Categorical([f"chr{c + 1}" for c in p_chrom]), "start": p_start,
                        "end": p_start + 499, "gene": p_gene_name.astype(str)}, index=pd.Index(peak_names))
    atac = ad.AnnData(X=X_atac, obs=obs_atac, var=var)
    params = {"kind": "rna_atac", "n_rna": n_rna, "n_atac": n_atac, "n_genes": n_genes,
              "n_cell_types": n_cell_types, "n_rna_types": n_rna_types, "n_markers": n_markers,
              "marker_log_fold": marker_log_fold, "coupling": coupling, "n_intergenic": n_intergenic,
              "n_batches": n_batches, "random_state": random_state}
    rna.uns["simulation"] = dict(params)
    atac.uns["simulation"] = dict(params)
    return rna, atac, genes


_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


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
    adata.obsm["protein_expression"] = shown
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


def simulate_tcr(
    n_cells: int = 2000,
    n_genes: int = 1000,
    n_batches: int = 3,
    n_clusters: int = 6,
    *,
    expanded_fraction: float = 0.5,
    mean_clone_size: float = 6.0,
    alpha_missing: float = 0.2,
    beta_missing: float = 0.08,
    layout: str = "ir",
    random_state: int = 0,
) -> ad.AnnData:
    """Simulate T cells with expression and paired TCR chains: clusters, expanded clonotypes, batches.

    Expression is :func:`simulate` (``cell_type`` holds the clusters, ``batch`` the batches,
    also given as ``patient``: ``patient1``...). Within each cluster and batch a share
    ``expanded_fraction`` of the cells falls into expanded clonotypes (sizes geometric around
    ``mean_clone_size``), the others are clonotypes of one cell. A clonotype's cells share one alpha
    and one beta chain; its CDR3s carry its cluster's motif (4 residues in the beta, 3 in the
    alpha) and its V genes are the cluster's preferred ones 70% of the time, so sequence
    similarity follows the clusters. The alpha chain is missing in a share ``alpha_missing`` of
    the cells and the beta in ``beta_missing`` (never both).

    Parameters
    ----------
    n_cells, n_genes, n_batches, n_clusters
        Size, batches and clusters.
    expanded_fraction
        Share of the cells in clonotypes of two or more cells.
    mean_clone_size
        Mean size of an expanded clonotype.
    alpha_missing, beta_missing
        Share of cells without an alpha / beta chain.
    layout
        How the chains are written: ``"ir"`` (scirpy < 0.7 columns ``IR_VJ_1_cdr3``,
        ``IR_VDJ_1_v_gene``..., missing values the strings ``'None'`` / ``'nan'``, as the shared
        wu2020 file) or ``"airr-columns"`` (``scirpy.get.airr``'s ``VJ_1_junction_aa``,
        ``VDJ_1_v_call``..., missing values None).
    random_state
        Seed; the same seed gives the same data.

    Returns
    -------
    AnnData
        Raw counts in X; obs ``batch``, ``patient``, ``cell_type``, ``clonotype``, ``clone_size``
        and the TCR columns.
    """
    if layout not in ("ir", "airr-columns"):
        raise ScamlError(f"layout={layout!r} is not a simulated TCR layout; use 'ir' or 'airr-columns'.")
    if not (0 <= alpha_missing < 1 and 0 <= beta_missing < 1 and alpha_missing + beta_missing < 1):
        raise ScamlError(f"alpha_missing and beta_missing must be in [0, 1) with a sum below 1; got "
                         f"{alpha_missing} and {beta_missing}.")
    if not 0 <= expanded_fraction <= 1 or mean_clone_size < 2:
        raise ScamlError(f"expanded_fraction must be in [0, 1] and mean_clone_size >= 2; got {expanded_fraction} "
                         f"and {mean_clone_size}.")
    adata = simulate(n_cells, n_genes, n_batches, n_clusters, low_quality_fraction=0.0, random_state=random_state)
    rng = np.random.default_rng(random_state + 1)
    trav = [f"TRAV{i}" for i in range(1, 31)]
    traj = [f"TRAJ{i}" for i in range(1, 51)]
    trbv = [f"TRBV{i}-{j}" for i in range(2, 16) for j in (1, 2)]
    trbj = [f"TRBJ{i}-{j}" for i in (1, 2) for j in range(1, 7)]

    letters = np.array(list(_AMINO_ACIDS))

    def residues(k: int) -> str:
        return "".join(rng.choice(letters, size=k))

    motifs = [(residues(3), residues(4)) for _ in range(n_clusters)]
    preferred = [(rng.choice(trav, 3, replace=False), rng.choice(trbv, 3, replace=False)) for _ in range(n_clusters)]

    # clonotypes: within each cluster x batch, expanded clones (geometric sizes) and then single cells
    clusters = adata.obs["cell_type"].cat.codes.to_numpy()
    batches = adata.obs["batch"].cat.codes.to_numpy()
    clone_of = np.empty(n_cells, dtype=np.int64)
    clone_cluster: list[int] = []
    for group in np.unique(clusters * n_batches + batches):
        cells = rng.permutation(np.flatnonzero(clusters * n_batches + batches == group))
        n_expanded = int(round(expanded_fraction * cells.size))
        start = 0
        while start < cells.size:
            size = 1
            if start < n_expanded:
                size = max(1, int(min(rng.geometric(1.0 / max(mean_clone_size - 1.0, 1.0)) + 1, n_expanded - start)))
            clone_of[cells[start:start + size]] = len(clone_cluster)
            clone_cluster.append(int(group // n_batches))
            start += size
    n_clones = len(clone_cluster)
    cluster_of = np.asarray(clone_cluster)

    # each clonotype's chains: CDR3 = germline-like ends around its cluster's motif and random residues
    rand = letters[rng.integers(0, len(letters), size=(n_clones, 10))]
    la, ra = rng.integers(1, 4, n_clones), rng.integers(0, 3, n_clones)
    lb, rb = rng.integers(1, 3, n_clones), rng.integers(0, 3, n_clones)
    starts_a = rng.choice(list("VLGE"), n_clones)
    ends_a = rng.choice(["KLIF", "NLFF", "QLTF", "KLTF"], n_clones)
    ends_b = rng.choice(["EQYF", "TEAFF", "NEQFF", "YEQYF"], n_clones)
    own_v = rng.random((n_clones, 2)) < 0.7
    pick = rng.integers(0, 3, size=(n_clones, 2))
    va = np.where(own_v[:, 0], np.asarray([preferred[c][0][k] for c, k in zip(cluster_of, pick[:, 0], strict=True)]),
                  rng.choice(trav, n_clones))
    vb = np.where(own_v[:, 1], np.asarray([preferred[c][1][k] for c, k in zip(cluster_of, pick[:, 1], strict=True)]),
                  rng.choice(trbv, n_clones))
    ja, jb = rng.choice(traj, n_clones), rng.choice(trbj, n_clones)
    alpha = ["CA" + starts_a[i] + "".join(rand[i, :la[i]]) + motifs[cluster_of[i]][0] + "".join(rand[i, 3:3 + ra[i]])
             + ends_a[i] for i in range(n_clones)]
    beta = ["CASS" + "".join(rand[i, 6:6 + lb[i]]) + motifs[cluster_of[i]][1] + "".join(rand[i, 8:8 + rb[i]])
            + ends_b[i] for i in range(n_clones)]
    per_clone = np.stack([np.asarray(alpha, dtype=object), va.astype(object), ja.astype(object),
                          np.asarray(beta, dtype=object), vb.astype(object), jb.astype(object)], axis=1)
    table = per_clone[clone_of].copy()
    clone = np.asarray([f"ct{i + 1:06d}" for i in range(n_clones)], dtype=object)[clone_of]
    u = rng.random(n_cells)
    no_alpha = u < alpha_missing
    no_beta = (u >= alpha_missing) & (u < alpha_missing + beta_missing)
    table[no_alpha, 0:3] = None
    table[no_beta, 3:6] = None
    obs = adata.obs
    obs["patient"] = pd.Categorical(["patient" + str(b)[5:] for b in obs["batch"].astype(str)])
    obs["clonotype"] = pd.Categorical(clone.astype(str))
    obs["clone_size"] = obs["clonotype"].map(obs["clonotype"].value_counts()).astype(int).to_numpy()
    if layout == "ir":
        names = ["IR_VJ_1_cdr3", "IR_VJ_1_v_gene", "IR_VJ_1_j_gene", "IR_VDJ_1_cdr3", "IR_VDJ_1_v_gene",
                 "IR_VDJ_1_j_gene"]
        for k, name in enumerate(names):
            missing = "None" if name.endswith("cdr3") else "nan"
            obs[name] = pd.Categorical([missing if v is None else v for v in table[:, k]])
        obs["IR_VJ_1_locus"] = pd.Categorical(np.where(no_alpha, "nan", "TRA"))
        obs["IR_VDJ_1_locus"] = pd.Categorical(np.where(no_beta, "nan", "TRB"))
    else:
        names = ["VJ_1_junction_aa", "VJ_1_v_call", "VJ_1_j_call", "VDJ_1_junction_aa", "VDJ_1_v_call",
                 "VDJ_1_j_call"]
        for k, name in enumerate(names):
            obs[name] = pd.Series(table[:, k], index=obs.index, dtype=object)
    adata.uns["simulation"].update({
        "kind": "tcr", "n_clusters": n_clusters, "expanded_fraction": expanded_fraction,
        "mean_clone_size": mean_clone_size, "alpha_missing": alpha_missing, "beta_missing": beta_missing,
        "layout": layout,
    })
    return adata
