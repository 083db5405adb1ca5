"""Per-cell ATAC QC: counts and peaks per cell, peaks seen in enough cells, and fragment-file metrics."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ScamlError
from ..preprocess import apply_cell_rules, keep_features_in_cells

#: TSS enrichment: flanks of +-2 kb around each TSS, the outer 100 bp at each end are the background.
TSS_FLANK = 2000
TSS_BACKGROUND = 100


def qc_filter_peaks(
    adata: ad.AnnData,
    *,
    min_counts: int = 200,
    min_peaks: int = 100,
    max_counts: int | None = None,
    min_cells: int = 10,
) -> dict[str, int]:
    """Compute per-cell and per-peak ATAC QC metrics and filter in place.

    Writes ``obs["total_counts"]`` (counts in peaks), ``obs["n_peaks_by_counts"]`` (peaks with a count)
    and ``var["n_cells_by_counts"]``.

    Parameters
    ----------
    adata
        Peak counts in X; filtered in place.
    min_counts, max_counts
        Keep cells with at least / at most this many counts in peaks.
    min_peaks
        Keep cells with at least this many accessible peaks.
    min_cells
        Keep peaks seen in at least this many cells (after the cell filter).

    Returns
    -------
    dict
        How many cells and peaks each rule removed.
    """
    X = adata.X
    total = np.asarray(X.sum(axis=1)).ravel()
    n_peaks = np.asarray((X > 0).sum(axis=1)).ravel()
    adata.obs["total_counts"] = total.astype(np.float64)
    adata.obs["n_peaks_by_counts"] = n_peaks.astype(np.int64)
    removed: dict[str, int] = {}
    rules = [("min_counts", total >= min_counts), ("min_peaks", n_peaks >= min_peaks)]
    if max_counts is not None:
        rules.append(("max_counts", total <= max_counts))
    apply_cell_rules(
        adata, rules, removed,
        lambda: f"ATAC QC removed every cell ({removed}; median counts per cell {np.median(total):.0f}, median "
        f"peaks {np.median(n_peaks):.0f}); lower --min-counts (now {min_counts}) or --min-peaks (now {min_peaks}).",
    )
    keep_features_in_cells(adata, min_cells, removed, "peaks", "no peak is seen", record_seen=True)
    return removed


def _open_text(path: Path) -> Any:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    return gzip.open(path, "rt") if magic == b"\x1f\x8b" else open(path)


def read_fragments(path: str | os.PathLike, barcodes: Any = None, *, chunksize: int = 2_000_000) -> pd.DataFrame:
    """Read a 10x ``fragments.tsv.gz`` (chrom, start, end, barcode, count; ``#`` header lines skipped).

    Parameters
    ----------
    path
        The fragments file (gzip/bgzip or plain text; not modified).
    barcodes
        Keep only fragments of these cells (None keeps all).
    chunksize
        Lines read at a time (bounds memory).

    Returns
    -------
    pandas.DataFrame
        Columns ``chrom``, ``start``, ``end`` (int64, as in the file: 0-based start), ``barcode``.
    """
    path = Path(path)
    if not path.exists():
        raise ScamlError(f"fragments file {str(path)!r} does not exist; check the path given with --fragments.")
    wanted = None if barcodes is None else pd.Index(np.asarray(barcodes).astype(str))
    parts = []
    try:
        with _open_text(path) as handle:
            reader = pd.read_csv(handle, sep="\t", header=None, comment="#", usecols=[0, 1, 2, 3],
                                 names=["chrom", "start", "end", "barcode"],
                                 dtype={"chrom": str, "start": np.int64, "end": np.int64, "barcode": str},
                                 chunksize=chunksize)
            for chunk in reader:
                if wanted is not None:
                    chunk = chunk[chunk["barcode"].isin(wanted)]
                parts.append(chunk)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise ScamlError(
            f"cannot read fragments file {str(path)!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "expected tab-separated chrom, start, end, barcode, count lines (10x fragments.tsv.gz)."
        ) from exc
    if not parts:
        return pd.DataFrame({"chrom": [], "start": [], "end": [], "barcode": []})
    return pd.concat(parts, ignore_index=True)


def fragment_qc(
    adata: ad.AnnData,
    fragments: str | os.PathLike,
    *,
    tss: pd.DataFrame | None = None,
    min_barcode_match: float = 0.1,
) -> dict[str, Any]:
    """Per-cell QC from a fragments file, written to ``obs`` (in place).

    ``obs["n_fragments"]``: fragments of the cell; ``obs["frip"]``: the fraction of them that overlap
    a peak of ``adata`` (``var`` ``chrom``/``start``/``end``); with ``tss`` (a table with ``chrom``,
    ``tss`` and optionally ``strand``, e.g. from :func:`scaml.atac.gene_activity.read_gene_annotation`),
    ``obs["tss_enrichment"]`` (Signac/ArchR style): the cell's insertions (fragment ends) in the central
    100 bp of the TSS windows of +-2 kb, over the mean insertions of their outer 100 bp flanks.

    Parameters
    ----------
    adata
        Peaks with coordinates in ``var``; the cell barcodes are ``obs_names``.
    fragments
        Path of the fragments file (not modified).
    tss
        Transcription start sites, or None to skip TSS enrichment.
    min_barcode_match
        Refuse the file when fewer than this fraction of the cells have a fragment in it.

    Returns
    -------
    dict
        ``n_fragments_read``, ``cells_with_fragments`` and ``median_frip`` (and ``median_tss_enrichment``).
    """
    frags = read_fragments(fragments, adata.obs_names)
    matched = int(frags["barcode"].nunique()) if len(frags) else 0
    if matched < max(1, min_barcode_match * adata.n_obs):
        raise ScamlError(
            f"only {matched} of {adata.n_obs} cell barcodes occur in fragments file {str(fragments)!r} "
            f"(cells e.g. {list(adata.obs_names[:2])}); give the fragments file of these cells, or make the "
            "barcodes match (e.g. without a sample prefix)."
        )
    cell_index = pd.Index(adata.obs_names.astype(str))
    cell = cell_index.get_indexer(frags["barcode"].to_numpy())
    n_frag = np.bincount(cell, minlength=adata.n_obs)
    in_peak = _overlaps_any(frags, adata.var)
    n_in = np.bincount(cell, weights=in_peak.astype(np.float64), minlength=adata.n_obs)
    adata.obs["n_fragments"] = n_frag.astype(np.int64)
    adata.obs["frip"] = np.divide(n_in, n_frag, out=np.zeros(adata.n_obs), where=n_frag > 0)
    summary: dict[str, Any] = {"n_fragments_read": int(len(frags)), "cells_with_fragments": matched,
                               "median_frip": float(np.median(adata.obs["frip"]))}
    if tss is not None:
        adata.obs["tss_enrichment"] = tss_enrichment(frags, cell, adata.n_obs, tss)
        measured = adata.obs["tss_enrichment"].to_numpy(dtype=np.float64)
        measured = measured[~np.isnan(measured)]
        # NaN (no warning) when no cell has insertions around a TSS
        summary["median_tss_enrichment"] = float(np.median(measured)) if measured.size else float("nan")
    return summary


def _overlaps_any(frags: pd.DataFrame, peaks: pd.DataFrame) -> np.ndarray:
    """Whether each fragment overlaps at least one peak (per chromosome, sorted peaks, binary search)."""
    if not {"chrom", "start", "end"} <= set(peaks.columns):
        raise ScamlError("the peaks have no var['chrom'/'start'/'end']; call scaml.atac.add_peak_coordinates first.")
    out = np.zeros(len(frags), dtype=bool)
    fchrom = frags["chrom"].to_numpy().astype(str)
    pchrom = peaks["chrom"].astype(str).to_numpy()
    for chrom in np.unique(pchrom):
        f = np.flatnonzero(fchrom == chrom)
        if not f.size:
            continue
        p = pchrom == chrom
        order = np.argsort(peaks["start"].to_numpy()[p])
        ps = peaks["start"].to_numpy()[p][order]
        pe = np.maximum.accumulate(peaks["end"].to_numpy()[p][order])  # running max end of sorted peaks
        fs = frags["start"].to_numpy()[f] + 1  # fragment files are 0-based; peaks named 1-based
        fe = frags["end"].to_numpy()[f]
        j = np.searchsorted(ps, fe, side="right") - 1  # last peak starting at or before the fragment's end
        ok = j >= 0
        out[f[ok]] = pe[j[ok]] >= fs[ok]
    return out


def tss_enrichment(frags: pd.DataFrame, cell: np.ndarray, n_cells: int, tss: pd.DataFrame,
                   flank: int = TSS_FLANK, background: int = TSS_BACKGROUND) -> np.ndarray:
    """Per-cell TSS enrichment: insertions (both fragment ends) in the central 100 bp of the TSS windows,
    divided by the mean insertions per 100 bp of the two outer background flanks. NaN for cells without
    background insertions."""
    centre = np.zeros(n_cells)
    flanks = np.zeros(n_cells)
    ends = np.concatenate([frags["start"].to_numpy() + 1, frags["end"].to_numpy()])
    chroms = np.concatenate([frags["chrom"].to_numpy(), frags["chrom"].to_numpy()]).astype(str)
    cells = np.concatenate([cell, cell])
    sites = tss["chrom"].astype(str).to_numpy()
    positions = tss["tss"].to_numpy(dtype=np.int64)
    half = background // 2
    for chrom in np.unique(sites):
        s = np.sort(positions[sites == chrom])
        k = np.flatnonzero(chroms == chrom)
        if not k.size or not s.size:
            continue
        x = ends[k]
        j = np.searchsorted(s, x)
        dist = np.full(x.size, np.iinfo(np.int64).max)
        for jj in (j - 1, j):
            ok = (jj >= 0) & (jj < s.size)
            d = np.abs(x[ok] - s[jj[ok]])
            dist[ok] = np.minimum(dist[ok], d)
        in_centre = dist <= half
        in_flank = (dist > flank - background) & (dist <= flank)
        centre += np.bincount(cells[k][in_centre], minlength=n_cells)
        flanks += np.bincount(cells[k][in_flank], minlength=n_cells)
    # two flanks of `background` bp each around every TSS: mean per 100 bp = flanks / 2
    bg = flanks / 2.0
    return np.divide(centre, bg, out=np.full(n_cells, np.nan), where=bg > 0)

