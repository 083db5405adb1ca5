"""Gene activity from peaks: peak counts over each gene body + upstream promoter (strand-aware).

The annotation is the user's own GTF / GFF3 / BED file (never downloaded); this module only reads it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import warn
from ..errors import ScamlError
from .features import normalise_chromosomes

_GTF_NAME = re.compile(r'gene_name "([^"]+)"')
_GTF_ID = re.compile(r'gene_id "([^"]+)"')
_GTF_TYPE = re.compile(r'gene_(?:bio)?type "([^"]+)"')
_GFF_NAME = re.compile(r"(?:^|;)\s*(?:gene_name|Name)=([^;]+)")
_GFF_ID = re.compile(r"(?:^|;)\s*(?:gene_id|ID)=([^;]+)")
_GFF_TYPE = re.compile(r"(?:^|;)\s*gene_(?:bio)?type=([^;]+)")


def read_gene_annotation(path: str | os.PathLike, *, biotypes: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read genes from a GTF, GFF3 or BED file (gzip allowed) into one table.

    GTF / GFF3: the ``gene`` records (or, when a file has none, the span of each gene's
    ``transcript`` / ``exon`` records), named by ``gene_name`` (GFF: ``Name``), else the gene id.
    BED: columns chrom, start (0-based), end, name, [score], strand (6 columns; without a strand column
    every gene is taken as ``+``, with a warning).

    Parameters
    ----------
    path
        The annotation file (not modified).
    biotypes
        Keep only genes of these biotypes (``gene_type`` / ``gene_biotype``), e.g. ``("protein_coding",)``;
        None keeps all.

    Returns
    -------
    pandas.DataFrame
        One row per gene name: ``gene``, ``chrom``, ``start``, ``end`` (1-based, inclusive), ``strand``
        and ``tss`` (``start`` on +, ``end`` on -). A name on several records keeps its longest span.
    """
    path = Path(path)
    if not path.exists():
        raise ScamlError(f"gene annotation {str(path)!r} does not exist; give a GTF, GFF3 or BED file with --genes.")
    name = path.name.lower().removesuffix(".gz")
    compression = "gzip" if path.name.lower().endswith(".gz") else None
    try:
        if name.endswith((".gtf", ".gff", ".gff3")):
            table = _read_gtf(path, compression, gff=not name.endswith(".gtf"))
        elif name.endswith(".bed"):
            table = _read_bed(path, compression)
        else:
            raise ScamlError(f"unknown annotation format {path.name!r}; use .gtf, .gff3 or .bed (optionally .gz).")
    except ScamlError:
        raise
    except Exception as exc:
        raise ScamlError(f"cannot read gene annotation {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if biotypes is not None and "biotype" in table:
        table = table[table["biotype"].isin(biotypes)]
    if table.empty:
        raise ScamlError(f"no genes found in {str(path)!r}; expected GTF/GFF 'gene' records or BED lines.")
    table = table.assign(length=table["end"] - table["start"])
    table = table.sort_values("length", ascending=False).drop_duplicates("gene").drop(columns="length")
    table = table.sort_values(["chrom", "start"]).reset_index(drop=True)
    table["tss"] = np.where(table["strand"] == "-", table["end"], table["start"])
    return table


def _read_gtf(path: Path, compression: str | None, *, gff: bool) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="\t", comment="#", header=None, compression=compression, dtype=str,
                      usecols=[0, 2, 3, 4, 6, 8], names=["chrom", "feature", "start", "end", "strand", "attr"])
    genes = raw[raw["feature"] == "gene"]
    if genes.empty:
        genes = raw[raw["feature"].isin(["transcript", "mRNA", "exon"])]
    name_re, id_re, type_re = (_GFF_NAME, _GFF_ID, _GFF_TYPE) if gff else (_GTF_NAME, _GTF_ID, _GTF_TYPE)
    attr = genes["attr"].fillna("")
    names = attr.str.extract(name_re, expand=False)
    ids = attr.str.extract(id_re, expand=False)
    if gff:  # exon/transcript lines carry Parent=, not the gene name: fall back to gene_id=
        ids = ids.fillna(attr.str.extract(r"gene_id=([^;]+)", expand=False))
    table = pd.DataFrame({
        "gene": names.fillna(ids).to_numpy(), "chrom": genes["chrom"].to_numpy(),
        "start": genes["start"].astype(np.int64).to_numpy(), "end": genes["end"].astype(np.int64).to_numpy(),
        "strand": genes["strand"].to_numpy(), "biotype": attr.str.extract(type_re, expand=False).to_numpy(),
    }).dropna(subset=["gene"])
    if genes["feature"].iloc[:1].isin(["transcript", "mRNA", "exon"]).any():  # span of each gene's records
        table = table.groupby("gene", as_index=False).agg(
            chrom=("chrom", "first"), start=("start", "min"), end=("end", "max"), strand=("strand", "first"),
            biotype=("biotype", "first"))
    return table


def _read_bed(path: Path, compression: str | None) -> pd.DataFrame:
    raw = pd.read_csv(path, sep="\t", comment="#", header=None, compression=compression, dtype=str)
    if raw.shape[1] < 4:
        raise ScamlError(f"BED annotation {str(path)!r} has {raw.shape[1]} columns; genes need chrom, start, end, "
                         "name (and strand in column 6).")
    strand = raw[5] if raw.shape[1] >= 6 else None
    if strand is None:
        warn(f"{path.name} has no strand column: every gene is taken as '+' (upstream = before its start)")
    return pd.DataFrame({
        "gene": raw[3].to_numpy(), "chrom": raw[0].to_numpy(),
        "start": raw[1].astype(np.int64).to_numpy() + 1, "end": raw[2].astype(np.int64).to_numpy(),
        "strand": strand.to_numpy() if strand is not None else "+",
    })


def gene_regions(genes: pd.DataFrame, upstream: int = 2000, downstream: int = 0) -> pd.DataFrame:
    """Gene body extended by ``upstream`` bp before the TSS and ``downstream`` bp after the gene end (strand-aware)."""
    minus = genes["strand"].to_numpy() == "-"
    start = genes["start"].to_numpy() - np.where(minus, downstream, upstream)
    end = genes["end"].to_numpy() + np.where(minus, upstream, downstream)
    return genes.assign(start=np.maximum(start, 1), end=end)


def _region_overlaps(
    qchrom: np.ndarray, qstart: np.ndarray, qend: np.ndarray,
    gchrom: np.ndarray, gstart: np.ndarray, gend: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Every (interval, gene region) pair that overlaps (closed 1-based coordinates; chromosome names normalised).

    Per chromosome the intervals are sorted by start; for each region the candidates are those starting in
    ``[region start - longest interval, region end]`` (binary search), kept when they end at or after the
    region's start.
    """
    rows, cols = [], []
    for chrom in np.intersect1d(np.unique(qchrom), np.unique(gchrom)):
        q = np.flatnonzero(qchrom == chrom)
        order = np.argsort(qstart[q], kind="stable")
        q, qs = q[order], qstart[q][order]
        longest = int((qend[q] - qstart[q]).max()) if q.size else 0
        for gi in np.flatnonzero(gchrom == chrom):
            lo = np.searchsorted(qs, gstart[gi] - longest, side="left")
            hi = np.searchsorted(qs, gend[gi], side="right")
            cand = q[lo:hi]
            hit = cand[qend[cand] >= gstart[gi]]
            if hit.size:
                rows.append(hit)
                cols.append(np.full(hit.size, gi, dtype=np.int64))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows).astype(np.int64), np.concatenate(cols)


def _no_overlap_error(what: str, n_genes: int, qchrom: np.ndarray, gchrom: np.ndarray) -> ScamlError:
    shared = sorted(set(qchrom) & set(gchrom))
    return ScamlError(
        f"no {what} overlaps any of the {n_genes} annotated genes ({what} chromosomes e.g. "
        f"{sorted(set(qchrom))[:3]}, annotation chromosomes e.g. {sorted(set(gchrom))[:3]}, shared: "
        f"{shared[:3] or 'none'}): the annotation is probably of another genome build or species; give the "
        "annotation of the genome the peaks were called on."
    )


@dataclass(frozen=True)
class PeakGeneMap:
    """Which peaks count towards which genes (:func:`peak_gene_map`).

    Attributes
    ----------
    mapping
        Peaks x genes (CSR float32, 1 where the peak overlaps the gene's region); ``counts @ mapping`` is the
        gene activity.
    var
        The genes (those overlapping a peak): ``chrom``, ``start``, ``end``, ``strand``, ``n_peaks``.
    uns
        The parameters, as ``uns["gene_activity"]`` of :func:`gene_activity`.
    """

    mapping: sp.csr_matrix
    var: pd.DataFrame
    uns: dict

    def annotate(self, activity: sp.spmatrix, obs: pd.DataFrame) -> ad.AnnData:
        """The cells x genes AnnData of an activity matrix (X and ``layers["counts"]``)."""
        out = ad.AnnData(X=activity, obs=obs.copy(), var=self.var.copy())
        out.layers["counts"] = activity.copy()
        out.uns["gene_activity"] = dict(self.uns)
        return out


def _annotation(genes_annotation: str | os.PathLike | pd.DataFrame,
                biotypes: tuple[str, ...] | None) -> pd.DataFrame:
    genes = genes_annotation if isinstance(genes_annotation, pd.DataFrame) else read_gene_annotation(
        genes_annotation, biotypes=biotypes)
    if isinstance(genes_annotation, pd.DataFrame) and biotypes is not None and "biotype" in genes:
        genes = genes[genes["biotype"].isin(biotypes)]
    return genes


def _activity_var(regions: pd.DataFrame, used: np.ndarray, n_items: np.ndarray) -> pd.DataFrame:
    var = regions.iloc[used][["chrom", "start", "end", "strand"]].copy()
    var["n_peaks"] = n_items
    var.index = pd.Index(regions["gene"].iloc[used].astype(str).to_numpy())
    return var


def _activity_uns(upstream: int, downstream: int, n_genes: int, n_used: int, biotypes: tuple[str, ...] | None,
                  source: str) -> dict:
    return {"upstream": int(upstream), "downstream": int(downstream), "n_genes_annotated": int(n_genes),
            "n_genes_with_peaks": int(n_used), "biotypes": list(biotypes) if biotypes else None, "source": source}


def peak_gene_map(
    peaks: pd.DataFrame | pd.Index,
    genes_annotation: str | os.PathLike | pd.DataFrame,
    upstream: int = 2000,
    *,
    downstream: int = 0,
    biotypes: tuple[str, ...] | None = None,
    min_overlap_genes: int = 1,
) -> PeakGeneMap:
    """The peaks-to-genes map of :func:`gene_activity`: built once, applied to the counts of any rows (chunks).

    Parameters
    ----------
    peaks
        The peaks' ``chrom`` / ``start`` / ``end`` (a ``var`` table; without those columns its index), or peak
        names (``chr-start-end``).
    genes_annotation, upstream, downstream, biotypes, min_overlap_genes
        As :func:`gene_activity`.

    Returns
    -------
    PeakGeneMap
    """
    from .features import parse_peak_names

    genes = _annotation(genes_annotation, biotypes)
    regions = gene_regions(genes, upstream, downstream)
    gchrom = normalise_chromosomes(regions["chrom"].to_numpy())
    if not isinstance(peaks, pd.DataFrame) or not {"chrom", "start", "end"} <= set(peaks.columns):
        peaks = parse_peak_names(peaks.index if isinstance(peaks, pd.DataFrame) else peaks)
    pchrom = normalise_chromosomes(peaks["chrom"].to_numpy())
    rows, cols = _region_overlaps(pchrom, peaks["start"].to_numpy(np.int64), peaks["end"].to_numpy(np.int64),
                                  gchrom, regions["start"].to_numpy(np.int64), regions["end"].to_numpy(np.int64))
    if np.unique(cols).size < min_overlap_genes:
        raise _no_overlap_error("peak", len(genes), pchrom, gchrom)
    mapping = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(peaks), len(genes)))
    used = np.flatnonzero(np.asarray(mapping.sum(axis=0)).ravel() > 0)
    mapping = sp.csr_matrix(mapping[:, used], dtype=np.float32)
    n_items = np.asarray(mapping.sum(axis=0)).ravel().astype(np.int64)
    return PeakGeneMap(mapping, _activity_var(regions, used, n_items),
                       _activity_uns(upstream, downstream, len(genes), used.size, biotypes, "peaks"))


def gene_activity(
    adata: ad.AnnData,
    genes_annotation: str | os.PathLike | pd.DataFrame,
    upstream: int = 2000,
    *,
    downstream: int = 0,
    biotypes: tuple[str, ...] | None = None,
    layer: str | None = "counts",
    min_overlap_genes: int = 1,
    fragments: str | os.PathLike | pd.DataFrame | None = None,
    min_barcode_match: float = 0.1,
) -> ad.AnnData:
    """Gene activity: a cell's peak counts (or fragments) over each gene body + ``upstream`` bp (Signac-style).

    From peaks (default): a peak counts towards every gene whose region (gene body extended by
    ``upstream`` bp on the TSS side, ``downstream`` bp past the gene end; strand-aware) it overlaps, with
    the cell's count of that peak. From ``fragments``: each of the cell's fragments that overlaps a gene's
    region counts once for that gene, as Signac's ``GeneActivity`` (``FeatureMatrix`` counts fragments,
    not cut sites). Chromosome names ``1`` and ``chr1`` are matched to each other.

    Parameters
    ----------
    adata
        Cells x peaks with ``var`` ``chrom``/``start``/``end`` (or peak-named features); not modified.
        With ``fragments`` only its cells (``obs_names`` = barcodes) are used.
    genes_annotation
        A GTF / GFF3 / BED path or a table from :func:`read_gene_annotation`.
    upstream, downstream
        Base pairs added before the TSS and after the gene end.
    biotypes
        Keep only genes of these biotypes (e.g. ``("protein_coding",)``, as Signac's default).
    layer
        Peak counts layer (``"counts"`` when present, else X); None reads X.
    min_overlap_genes
        Refuse when fewer genes than this overlap any peak / fragment (annotation of another genome build
        or of other chromosomes).
    fragments
        A 10x ``fragments.tsv.gz`` (path, or a table from :func:`scaml.atac.read_fragments`) to count
        instead of the peaks; None counts the peaks.
    min_barcode_match
        With ``fragments``: refuse the file when fewer than this fraction of the cells occur in it.

    Returns
    -------
    AnnData
        Cells x genes (the genes overlapping at least one peak / fragment), CSR float32 counts in X and in
        ``layers["counts"]``; ``var`` has ``chrom``, ``start``, ``end``, ``strand``, ``n_peaks`` (peaks
        overlapping the region; with fragments: the fragments counted); ``obs`` is a copy of the input's;
        ``uns["gene_activity"]`` the parameters.
    """
    if fragments is None:
        plan = peak_gene_map(adata.var, genes_annotation, upstream, downstream=downstream, biotypes=biotypes,
                             min_overlap_genes=min_overlap_genes)
        counts = adata.layers[layer] if layer is not None and layer in adata.layers else adata.X
        activity = sp.csr_matrix(sp.csr_matrix(counts, dtype=np.float32) @ plan.mapping, dtype=np.float32)
        return plan.annotate(activity, adata.obs)
    genes = _annotation(genes_annotation, biotypes)
    regions = gene_regions(genes, upstream, downstream)
    gchrom = normalise_chromosomes(regions["chrom"].to_numpy())
    gstart, gend = regions["start"].to_numpy(np.int64), regions["end"].to_numpy(np.int64)
    activity, used, n_items = _fragment_activity(adata, fragments, gchrom, gstart, gend, len(genes),
                                                 min_overlap_genes, min_barcode_match)
    plan = PeakGeneMap(sp.csr_matrix((0, used.size), dtype=np.float32), _activity_var(regions, used, n_items),
                       _activity_uns(upstream, downstream, len(genes), used.size, biotypes, "fragments"))
    return plan.annotate(activity, adata.obs)


def _fragment_activity(
    adata: ad.AnnData, fragments: str | os.PathLike | pd.DataFrame, gchrom: np.ndarray, gstart: np.ndarray,
    gend: np.ndarray, n_genes: int, min_overlap_genes: int, min_barcode_match: float,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Cells x genes fragment counts (each fragment once per overlapped gene region), the genes used, fragments per gene."""
    from .qc import barcode_positions, check_barcode_match, iter_fragments

    cells = pd.Index(adata.obs_names.astype(str))
    blocks = [fragments] if isinstance(fragments, pd.DataFrame) else iter_fragments(fragments, cells)
    activity = sp.csr_matrix((adata.n_obs, n_genes), dtype=np.float32)
    n_items = np.zeros(n_genes, dtype=np.int64)
    seen = np.zeros(adata.n_obs, dtype=bool)
    chroms_seen: set[str] = set()
    for frags in blocks:  # a file is read block by block: each block's overlaps add up
        if not len(frags):
            continue
        cell = barcode_positions(frags["barcode"], cells)
        keep = cell >= 0
        frags, cell = frags[keep], cell[keep]
        seen[cell] = True
        fchrom = normalise_chromosomes(frags["chrom"].to_numpy())
        fstart = frags["start"].to_numpy(np.int64) + 1  # fragment files are 0-based, half-open
        rows, cols = _region_overlaps(fchrom, fstart, frags["end"].to_numpy(np.int64), gchrom, gstart, gend)
        activity = activity + sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (cell[rows], cols)),
                                            shape=activity.shape)
        n_items += np.bincount(cols, minlength=n_genes)
        chroms_seen.update(np.unique(fchrom).tolist())
    name = "the fragments table" if isinstance(fragments, pd.DataFrame) else f"fragments file {str(fragments)!r}"
    check_barcode_match(int(seen.sum()), cells, name, min_barcode_match)
    used = np.flatnonzero(n_items > 0)
    if used.size < min_overlap_genes:
        raise _no_overlap_error("fragment", n_genes, np.array(sorted(chroms_seen)), gchrom)
    activity = sp.csr_matrix(activity[:, used], dtype=np.float32)
    activity.sum_duplicates()
    return activity, used, n_items[used]
