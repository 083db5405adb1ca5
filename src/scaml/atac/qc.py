"""Per-cell ATAC QC: counts and peaks per cell, peaks seen in enough cells, and fragment-file metrics."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import progress
from ..errors import ScamlError
from ..preprocess import apply_cell_rules, keep_features_in_cells
from .features import normalise_chromosomes

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


def iter_fragments(path: str | os.PathLike, barcodes: Any = None, *,
                   chunksize: int = 1_000_000) -> Iterator[pd.DataFrame]:
    """The fragments of a 10x ``fragments.tsv.gz`` in blocks of ``chunksize`` lines (memory bounded by the block).

    Parameters
    ----------
    path
        The fragments file (gzip/bgzip or plain text; not modified).
    barcodes
        Keep only fragments of these cells (None keeps all).
    chunksize
        Lines read at a time.

    Yields
    ------
    pandas.DataFrame
        Columns ``chrom``, ``start``, ``end`` (int64, as in the file: 0-based start), ``barcode``
        (``chrom`` and ``barcode`` categorical: parsed faster and smaller than strings).
    """
    path = Path(path)
    if not path.exists():
        raise ScamlError(f"fragments file {str(path)!r} does not exist; check the path given with --fragments.")
    wanted = None if barcodes is None else pd.Index(np.asarray(barcodes).astype(str))
    try:
        with _open_text(path) as handle:
            reader = pd.read_csv(handle, sep="\t", header=None, comment="#", usecols=[0, 1, 2, 3],
                                 names=["chrom", "start", "end", "barcode"],
                                 dtype={"chrom": "category", "start": np.int64, "end": np.int64,
                                        "barcode": "category"},
                                 chunksize=chunksize)
            for chunk in reader:
                yield chunk if wanted is None else chunk[chunk["barcode"].isin(wanted)]
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as exc:
        raise ScamlError(
            f"cannot read fragments file {str(path)!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "expected tab-separated chrom, start, end, barcode, count lines (10x fragments.tsv.gz)."
        ) from exc


def read_fragments(path: str | os.PathLike, barcodes: Any = None, *, chunksize: int = 1_000_000) -> pd.DataFrame:
    """Read a 10x ``fragments.tsv.gz`` (chrom, start, end, barcode, count; ``#`` header lines skipped) whole.

    Parameters
    ----------
    path, barcodes, chunksize
        As :func:`iter_fragments`.

    Returns
    -------
    pandas.DataFrame
        Columns ``chrom``, ``start``, ``end`` (int64, as in the file: 0-based start), ``barcode``.
    """
    parts = list(iter_fragments(path, barcodes, chunksize=chunksize))
    if not parts:
        return pd.DataFrame({"chrom": [], "start": [], "end": [], "barcode": []})
    table = pd.concat(parts, ignore_index=True)
    return table.astype({"chrom": str, "barcode": str})


def barcode_positions(barcodes: pd.Series, cells: pd.Index) -> np.ndarray:
    """The position of each fragment's barcode among ``cells`` (-1: not a cell); categorical barcodes are
    looked up once per category."""
    if isinstance(barcodes.dtype, pd.CategoricalDtype):
        lookup = cells.get_indexer(barcodes.cat.categories.astype(str))
        return np.append(lookup, -1)[barcodes.cat.codes.to_numpy()]  # code -1 (missing) -> -1
    return cells.get_indexer(barcodes.astype(str).to_numpy())


def check_barcode_match(matched: int, cells: pd.Index, source: str, min_barcode_match: float) -> None:
    """Refuse fragments that cover fewer than ``min_barcode_match`` of the cells (``matched`` of them have one)."""
    if matched < max(1, min_barcode_match * len(cells)):
        raise ScamlError(
            f"only {matched} of {len(cells)} cell barcodes occur in {source} (cells e.g. {list(cells[:2])}); give "
            "the fragments file of these cells, or make the barcodes match (e.g. without a sample prefix)."
        )


def fragment_metrics(
    barcodes: Any,
    peaks: pd.DataFrame,
    fragments: str | os.PathLike,
    *,
    tss: pd.DataFrame | None = None,
    min_barcode_match: float = 0.1,
    chunksize: int = 1_000_000,
    show_progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-cell fragment QC, read block by block: the file is never in memory whole.

    Parameters
    ----------
    barcodes
        The cells (their barcodes, in order).
    peaks
        The peaks' ``chrom`` / ``start`` / ``end`` (1-based), for the fraction of fragments in peaks.
    fragments
        Path of the fragments file (not modified).
    tss
        Transcription start sites (``chrom``, ``tss``), or None to skip TSS enrichment.
    min_barcode_match
        Refuse the file when fewer than this fraction of the cells have a fragment in it.
    chunksize
        Fragment lines read at a time (bounds memory).
    show_progress
        Show the fragments counted so far.

    Returns
    -------
    (pandas.DataFrame, dict)
        One row per cell (indexed by barcode): ``n_fragments``, ``frip`` and, with ``tss``,
        ``tss_enrichment``; and the summary of :func:`fragment_qc`.
    """
    cell_index = pd.Index(np.asarray(barcodes).astype(str))
    n_cells = cell_index.size
    n_frag = np.zeros(n_cells, dtype=np.int64)
    n_in = np.zeros(n_cells)
    centre, flanks = np.zeros(n_cells), np.zeros(n_cells)
    bar = progress() if show_progress else None
    if bar is not None:
        bar.start()
        task = bar.add_task("fragments QC", total=None, status="")
    for frags in iter_fragments(fragments, cell_index, chunksize=chunksize):
        if bar is not None:
            bar.update(task, status=f"{int(n_frag.sum()) + len(frags):,} fragments of these cells")
        if not len(frags):
            continue
        cell = barcode_positions(frags["barcode"], cell_index)
        n_frag += np.bincount(cell, minlength=n_cells)
        n_in += np.bincount(cell, weights=_overlaps_any(frags, peaks).astype(np.float64), minlength=n_cells)
        if tss is not None:
            c, f = tss_insertions(frags, cell, n_cells, tss)
            centre += c
            flanks += f
    if bar is not None:
        bar.stop()
    matched = int((n_frag > 0).sum())
    check_barcode_match(matched, cell_index, f"fragments file {str(fragments)!r}", min_barcode_match)
    metrics = pd.DataFrame({"n_fragments": n_frag,
                            "frip": np.divide(n_in, n_frag, out=np.zeros(n_cells), where=n_frag > 0)},
                           index=cell_index)
    summary: dict[str, Any] = {"n_fragments_read": int(n_frag.sum()), "cells_with_fragments": matched,
                               "median_frip": float(np.median(metrics["frip"]))}
    if tss is not None:
        metrics["tss_enrichment"] = enrichment(centre, flanks)
        measured = metrics["tss_enrichment"].to_numpy(dtype=np.float64)
        measured = measured[~np.isnan(measured)]
        # NaN (no warning) when no cell has insertions around a TSS
        summary["median_tss_enrichment"] = float(np.median(measured)) if measured.size else float("nan")
    return metrics, summary


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
    The file is read block by block (:func:`fragment_metrics`).

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
    _check_coordinates(adata.var)
    metrics, summary = fragment_metrics(adata.obs_names, adata.var, fragments, tss=tss,
                                        min_barcode_match=min_barcode_match)
    for column in metrics.columns:
        adata.obs[column] = metrics[column].to_numpy()
    return summary


def _check_coordinates(peaks: pd.DataFrame) -> None:
    if not {"chrom", "start", "end"} <= set(peaks.columns):
        raise ScamlError("the peaks have no var['chrom'/'start'/'end']; call scaml.atac.add_peak_coordinates first.")


def _by_chromosome(chrom: pd.Series) -> dict[str, np.ndarray]:
    """The row positions of each chromosome (one factorisation and one stable sort, not a scan per name), keyed
    by the name in one style (``1`` and ``chr1`` meet: :func:`~scaml.atac.features.normalise_chromosomes`)."""
    codes, names = pd.factorize(chrom, sort=False)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(names) + 1))
    groups: dict[str, np.ndarray] = {}
    for i, name in enumerate(normalise_chromosomes(np.asarray(names, dtype=object))):
        rows = order[bounds[i]:bounds[i + 1]]
        groups[name] = np.concatenate([groups[name], rows]) if name in groups else rows
    return groups


def _overlaps_any(frags: pd.DataFrame, peaks: pd.DataFrame) -> np.ndarray:
    """Whether each fragment overlaps at least one peak (per chromosome, sorted peaks, binary search)."""
    _check_coordinates(peaks)
    out = np.zeros(len(frags), dtype=bool)
    rows = _by_chromosome(frags["chrom"])
    starts, ends = frags["start"].to_numpy(), frags["end"].to_numpy()
    pstart, pend = peaks["start"].to_numpy(), peaks["end"].to_numpy()
    for chrom, p in _by_chromosome(peaks["chrom"].astype(str)).items():
        f = rows.get(chrom)
        if f is None or not f.size:
            continue
        order = np.argsort(pstart[p])
        ps = pstart[p][order]
        pe = np.maximum.accumulate(pend[p][order])  # running max end of sorted peaks
        fs = starts[f] + 1  # fragment files are 0-based; peaks named 1-based
        j = np.searchsorted(ps, ends[f], side="right") - 1  # last peak starting at or before the fragment's end
        ok = j >= 0
        out[f[ok]] = pe[j[ok]] >= fs[ok]
    return out


def tss_insertions(frags: pd.DataFrame, cell: np.ndarray, n_cells: int, tss: pd.DataFrame,
                   flank: int = TSS_FLANK, background: int = TSS_BACKGROUND) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell insertions (both fragment ends) in the central ``background`` bp of the TSS windows and in
    their two outer ``background`` bp flanks (sums over fragments: they add up over blocks of a file)."""
    centre = np.zeros(n_cells)
    flanks = np.zeros(n_cells)
    rows = _by_chromosome(frags["chrom"])
    left, right = frags["start"].to_numpy() + 1, frags["end"].to_numpy()
    positions = tss["tss"].to_numpy(dtype=np.int64)
    half = background // 2
    for chrom, site_rows in _by_chromosome(tss["chrom"]).items():
        k = rows.get(chrom)
        if k is None or not k.size:
            continue
        s = np.sort(positions[site_rows])
        x = np.concatenate([left[k], right[k]])  # both ends of each fragment are insertions
        owner = np.concatenate([cell[k], cell[k]])
        j = np.searchsorted(s, x)
        dist = np.full(x.size, np.iinfo(np.int64).max)
        for jj in (j - 1, j):
            ok = (jj >= 0) & (jj < s.size)
            d = np.abs(x[ok] - s[jj[ok]])
            dist[ok] = np.minimum(dist[ok], d)
        in_centre = dist <= half
        in_flank = (dist > flank - background) & (dist <= flank)
        centre += np.bincount(owner[in_centre], minlength=n_cells)
        flanks += np.bincount(owner[in_flank], minlength=n_cells)
    return centre, flanks


def enrichment(centre: np.ndarray, flanks: np.ndarray) -> np.ndarray:
    """TSS enrichment from :func:`tss_insertions`: the centre over the mean insertions of the two flanks
    (each as wide as the centre); NaN for cells without background insertions."""
    bg = flanks / 2.0
    return np.divide(centre, bg, out=np.full(centre.shape, np.nan), where=bg > 0)

