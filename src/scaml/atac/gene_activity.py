"""Gene activity from peaks: peak counts over each gene body + upstream promoter (strand-aware).

The annotation is the user's own GTF / GFF3 / BED file (never downloaded); this module only reads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import warn
from ..errors import ScamlError

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


def _normalise_chrom(names: np.ndarray) -> np.ndarray:
    """``1`` -> ``chr1``, ``MT`` -> ``chrM``, so Ensembl and UCSC names meet."""
    out = np.array([str(n) for n in names], dtype=object)
    bare = np.array([not n.startswith("chr") for n in out])
    out[bare] = ["chrM" if n in ("MT", "M") else f"chr{n}" for n in out[bare]]
    return out


def gene_activity(
    adata: ad.AnnData,
    genes_annotation: str | os.PathLike | pd.DataFrame,
    upstream: int = 2000,
    *,
    downstream: int = 0,
    biotypes: tuple[str, ...] | None = None,
    layer: str | None = "counts",
    min_overlap_genes: int = 1,
) -> ad.AnnData:
    """Gene activity: the sum of a cell's peak counts over each gene body + ``upstream`` bp (Signac-style).

    A peak counts towards every gene whose region (gene body extended by ``upstream`` bp on the TSS
    side, ``downstream`` bp past the gene end; strand-aware) it overlaps. Chromosome names ``1`` and
    ``chr1`` are matched to each other.

    Parameters
    ----------
    adata
        Cells x peaks with ``var`` ``chrom``/``start``/``end`` (or peak-named features); not modified.
    genes_annotation
        A GTF / GFF3 / BED path or a table from :func:`read_gene_annotation`.
    upstream, downstream
        Base pairs added before the TSS and after the gene end.
    biotypes
        Keep only genes of these biotypes (e.g. ``("protein_coding",)``, as Signac's default).
    layer
        Peak counts layer (``"counts"`` when present, else X); None reads X.
    min_overlap_genes
        Refuse when fewer genes than this overlap any peak (annotation of another genome build or
        of other chromosomes).

    Returns
    -------
    AnnData
        Cells x genes (the genes overlapping at least one peak), CSR float32 counts in X and in
        ``layers["counts"]``; ``var`` has ``chrom``, ``start``, ``end``, ``strand``, ``n_peaks``;
        ``obs`` is a copy of the input's; ``uns["gene_activity"]`` the parameters.
    """
    from .features import parse_peak_names

    genes = genes_annotation if isinstance(genes_annotation, pd.DataFrame) else read_gene_annotation(
        genes_annotation, biotypes=biotypes)
    if isinstance(genes_annotation, pd.DataFrame) and biotypes is not None and "biotype" in genes:
        genes = genes[genes["biotype"].isin(biotypes)]
    if {"chrom", "start", "end"} <= set(adata.var.columns):
        peaks = adata.var[["chrom", "start", "end"]]
    else:
        peaks = parse_peak_names(adata.var_names)
    regions = gene_regions(genes, upstream, downstream)
    pchrom = _normalise_chrom(peaks["chrom"].to_numpy())
    gchrom = _normalise_chrom(regions["chrom"].to_numpy())
    pstart, pend = peaks["start"].to_numpy(np.int64), peaks["end"].to_numpy(np.int64)
    gstart, gend = regions["start"].to_numpy(np.int64), regions["end"].to_numpy(np.int64)
    rows, cols = [], []  # peak index, gene index
    for chrom in np.intersect1d(np.unique(pchrom), np.unique(gchrom)):
        p = np.flatnonzero(pchrom == chrom)
        g = np.flatnonzero(gchrom == chrom)
        order = np.argsort(pstart[p])
        p, ps = p[order], pstart[p][order]
        longest = int((pend[p] - pstart[p]).max()) if p.size else 0
        for gi in g:  # peaks starting in [gene start - longest peak, gene end] may overlap
            lo = np.searchsorted(ps, gstart[gi] - longest, side="left")
            hi = np.searchsorted(ps, gend[gi], side="right")
            cand = p[lo:hi]
            hit = cand[pend[cand] >= gstart[gi]]
            rows.extend(hit.tolist())
            cols.extend([gi] * hit.size)
    n_genes_hit = len(set(cols))
    if n_genes_hit < min_overlap_genes:
        shared = sorted(set(pchrom) & set(gchrom))
        raise ScamlError(
            f"no peak overlaps any of the {len(genes)} annotated genes (peak chromosomes e.g. "
            f"{sorted(set(pchrom))[:3]}, annotation chromosomes e.g. {sorted(set(gchrom))[:3]}, shared: "
            f"{shared[:3] or 'none'}): the annotation is probably of another genome build or species; give the "
            "annotation of the genome the peaks were called on."
        )
    mapping = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(adata.n_vars, len(genes)))
    used = np.flatnonzero(np.asarray(mapping.sum(axis=0)).ravel() > 0)
    mapping = mapping[:, used]
    counts = adata.layers[layer] if layer is not None and layer in adata.layers else adata.X
    activity = sp.csr_matrix(sp.csr_matrix(counts, dtype=np.float32) @ mapping, dtype=np.float32)
    var = regions.iloc[used][["chrom", "start", "end", "strand"]].copy()
    var["n_peaks"] = np.asarray(mapping.sum(axis=0)).ravel().astype(np.int64)
    var.index = pd.Index(regions["gene"].iloc[used].astype(str).to_numpy())
    out = ad.AnnData(X=activity, obs=adata.obs.copy(), var=var)
    out.layers["counts"] = activity.copy()
    out.uns["gene_activity"] = {"upstream": int(upstream), "downstream": int(downstream),
                                "n_genes_annotated": int(len(genes)), "n_genes_with_peaks": int(len(used)),
                                "biotypes": list(biotypes) if biotypes else None}
    return out
