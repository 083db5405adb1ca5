"""Reading the TCR chains of each cell: scirpy's AIRR layouts, the older ``IR_*`` columns, 10x contigs.

Every reader gives the same table (:data:`TCR_COLUMNS`, one row per cell, ``None`` for a missing
chain or gene): the primary alpha (VJ) and beta (VDJ) chain's CDR3 amino-acid sequence, V gene and
J gene. :func:`add_tcr` writes it into ``obs`` under those names (the "scaml" layout), which every
reader then finds first.

Layouts, in the order ``layout="auto"`` looks for them:

``scaml``
    ``obs`` columns ``tcr_alpha_cdr3``, ``tcr_alpha_v``, ``tcr_alpha_j``, ``tcr_beta_cdr3``, ...
``airr``
    scirpy >= 0.13: ``obsm["airr"]``, an awkward array with a list of chains per cell (AIRR fields
    ``locus``, ``junction_aa``, ``v_call``, ``j_call``, ``productive``, ``duplicate_count``), and
    ``obsm["chain_indices"]`` (the ``VJ`` / ``VDJ`` chains scirpy chose per cell). Without chain
    indices the productive TRA / TRB chain with the most UMIs is taken.
``airr-columns``
    The flat columns ``scirpy.get.airr`` gives (``VJ_1_junction_aa``, ``VDJ_1_junction_aa``,
    ``VJ_1_v_call``, ``VJ_1_j_call``, ``VDJ_1_v_call``, ``VDJ_1_j_call``).
``ir``
    scirpy < 0.7: ``IR_VJ_1_cdr3``, ``IR_VDJ_1_cdr3``, ``IR_VJ_1_v_gene``, ``IR_VJ_1_j_gene``, ...
    (missing values often the strings ``'nan'`` / ``'None'``).

A 10x ``filtered_contig_annotations.csv`` is read by :func:`read_contigs` (productive chains of
cells, the TRA and the TRB contig with the most UMIs per barcode) and joined to the cells by barcode.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info
from ..errors import ScamlError

#: The 20 amino acids a CDR3 may hold (one-letter codes).
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: The standard TCR table's columns (also the ``obs`` names of the "scaml" layout).
TCR_COLUMNS = ("tcr_alpha_cdr3", "tcr_alpha_v", "tcr_alpha_j", "tcr_beta_cdr3", "tcr_beta_v", "tcr_beta_j")
#: Column of the clonotype written by :func:`add_tcr` when one is known.
CLONOTYPE_COLUMN = "tcr_clonotype"
#: Layout names (``layout=`` / ``--tcr-layout``).
LAYOUTS = ("auto", "scaml", "airr", "airr-columns", "ir")
#: obs columns that hold clonotypes, in the order they are looked for.
CLONOTYPE_KEYS = (CLONOTYPE_COLUMN, "clonotype_orig", "clone_id", "clonotype", "raw_clonotype_id")
#: Strings that mean "no value" in shipped files.
MISSING_STRINGS = frozenset({"", "nan", "none", "na", "<na>", "null", "n/a"})

_COLUMNS_OF = {
    "scaml": dict(zip(TCR_COLUMNS, TCR_COLUMNS, strict=True)),
    "airr-columns": {
        "tcr_alpha_cdr3": "VJ_1_junction_aa", "tcr_alpha_v": "VJ_1_v_call", "tcr_alpha_j": "VJ_1_j_call",
        "tcr_beta_cdr3": "VDJ_1_junction_aa", "tcr_beta_v": "VDJ_1_v_call", "tcr_beta_j": "VDJ_1_j_call",
    },
    "ir": {
        "tcr_alpha_cdr3": "IR_VJ_1_cdr3", "tcr_alpha_v": "IR_VJ_1_v_gene", "tcr_alpha_j": "IR_VJ_1_j_gene",
        "tcr_beta_cdr3": "IR_VDJ_1_cdr3", "tcr_beta_v": "IR_VDJ_1_v_gene", "tcr_beta_j": "IR_VDJ_1_j_gene",
    },
}
_LOOKED_FOR = ("scaml columns tcr_alpha_cdr3 / tcr_beta_cdr3; scirpy's obsm['airr']; scirpy.get.airr columns "
               "VJ_1_junction_aa / VDJ_1_junction_aa; scirpy < 0.7 columns IR_VJ_1_cdr3 / IR_VDJ_1_cdr3")
_CDR3_RE = re.compile(f"^[{AMINO_ACIDS}]+$")


def clean_values(values: Iterable[Any]) -> np.ndarray:
    """Strings with missing values (NaN, None, ``'nan'``, ``'None'``, ``''`` ...) as ``None`` (object array)."""
    out = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out.append(None)
            continue
        s = str(v).strip()
        out.append(None if s.lower() in MISSING_STRINGS else s)
    return np.asarray(out, dtype=object)


def detect_layout(adata: ad.AnnData) -> str | None:
    """The first TCR layout found in ``adata`` (see the module docstring), or None."""
    for layout in ("scaml", "airr", "airr-columns", "ir"):
        if _has_layout(adata, layout):
            return layout
    return None


def _has_layout(adata: ad.AnnData, layout: str) -> bool:
    if layout == "airr":
        return "airr" in adata.obsm
    cols = _COLUMNS_OF[layout]
    return cols["tcr_alpha_cdr3"] in adata.obs.columns or cols["tcr_beta_cdr3"] in adata.obs.columns


def read_tcr(
    adata: ad.AnnData,
    layout: str = "auto",
    *,
    required: bool = True,
    report: bool = True,
) -> pd.DataFrame:
    """The primary alpha and beta chain of each cell: CDR3 amino acids, V and J genes.

    Parameters
    ----------
    adata
        Cells; the chains in ``obs`` or ``obsm["airr"]`` (see the module docstring for the layouts).
    layout
        ``"auto"`` (the first layout found, in the order scaml, airr, airr-columns, ir) or one of them.
    required
        Raise when no TCR layout is found (otherwise every chain is missing).
    report
        Print one line with the numbers of cells with both chains, alpha only, beta only and none.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``adata.obs_names``, columns :data:`TCR_COLUMNS` (object; ``None`` = missing).
        CDR3s are upper-case and checked to hold amino acids only. ``attrs["layout"]`` names the
        layout read.

    Raises
    ------
    ScamlError
        An unknown layout, no TCR columns (when ``required``; the message lists the layouts
        looked for), or a CDR3 with characters that are not amino acids.
    """
    if layout not in LAYOUTS:
        raise ScamlError(f"unknown TCR layout {layout!r}; use one of {', '.join(LAYOUTS)} (--tcr-layout).")
    found = detect_layout(adata) if layout == "auto" else (layout if _has_layout(adata, layout) else None)
    if found is None:
        if required:
            where = _LOOKED_FOR if layout == "auto" else f"the {layout!r} layout"
            raise ScamlError(
                f"no TCR columns found in the data (looked for {where}). Add the chains to obs (e.g. "
                "scaml.tcr.add_tcr(adata, contigs='filtered_contig_annotations.csv'), or --contigs CSV), or "
                "name the layout with --tcr-layout."
            )
        table = pd.DataFrame({c: np.full(adata.n_obs, None, dtype=object) for c in TCR_COLUMNS},
                             index=adata.obs_names.copy())
        table.attrs["layout"] = "none"
        return table
    if found == "airr":
        table = _from_airr(adata)
    else:
        cols = _COLUMNS_OF[found]
        data = {}
        for name, source in cols.items():
            if source in adata.obs.columns:
                data[name] = clean_values(adata.obs[source].to_numpy(dtype=object))
            else:
                data[name] = np.full(adata.n_obs, None, dtype=object)
        table = pd.DataFrame(data, index=adata.obs_names.copy())
    table = check_cdr3(table, found)
    table.attrs["layout"] = found
    if report:
        report_chains(table, found)
    return table


def check_cdr3(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Upper-case the CDR3s and refuse any with characters other than the 20 amino acids."""
    for chain in ("alpha", "beta"):
        col = f"tcr_{chain}_cdr3"
        values = np.asarray([None if v is None else str(v).upper() for v in table[col]], dtype=object)
        present = np.asarray([v is not None for v in values])
        bad = [i for i in np.flatnonzero(present) if not _CDR3_RE.match(values[i])]
        if bad:
            i = bad[0]
            chars = sorted(set(values[i]) - set(AMINO_ACIDS))
            raise ScamlError(
                f"{len(bad)} {chain} CDR3(s) ({source} layout) hold characters that are not amino acids, e.g. "
                f"{values[i]!r} of cell {str(table.index[i])!r} (characters {''.join(chars)!r}). Give the CDR3 "
                "amino-acid sequence (junction_aa / cdr3, 20 one-letter codes), not nucleotides or a "
                "partial call; drop or fix those chains."
            )
        seqs = values[present]
        if seqs.size >= 5 and all(set(s) <= set("ACGTN") for s in seqs):
            raise ScamlError(
                f"the {chain} CDR3s ({source} layout) look like nucleotide sequences (e.g. {seqs[0]!r}); give "
                "the amino-acid CDR3s (junction_aa / cdr3), not cdr3_nt."
            )
        table[col] = values
    return table


def chain_counts(table: pd.DataFrame) -> dict[str, int]:
    """Cells with both chains, alpha only, beta only, and neither."""
    a = table["tcr_alpha_cdr3"].notna().to_numpy()
    b = table["tcr_beta_cdr3"].notna().to_numpy()
    return {"both": int((a & b).sum()), "alpha_only": int((a & ~b).sum()),
            "beta_only": int((~a & b).sum()), "none": int((~a & ~b).sum())}


def report_chains(table: pd.DataFrame, layout: str) -> None:
    """One info line with the chain counts."""
    c = chain_counts(table)
    info(
        f"TCR chains ({layout} layout) of {len(table)} cells: {c['both']} with alpha and beta, {c['beta_only']} "
        f"without alpha, {c['alpha_only']} without beta, {c['none']} with neither (the model learns from the "
        "chains present)"
    )


# ----------------------------------------------------------------------------- scirpy AIRR (awkward)

def _to_list(obj: Any) -> list:
    try:
        import awkward as ak  # scirpy's storage; optional here

        if isinstance(obj, ak.Array):
            return ak.to_list(obj)
    except ImportError:
        pass
    if isinstance(obj, pd.DataFrame):
        return obj.to_dict("records")
    if isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.shape[1] == 1:
        obj = obj[:, 0]  # an object array of per-cell lists, as anndata stores it
    return list(obj)


def _umis(chain: dict) -> float:
    for key in ("duplicate_count", "umi_count", "consensus_count"):
        value = chain.get(key)
        if value is not None and not (isinstance(value, float) and np.isnan(value)):
            return float(value)
    return 0.0


def _from_airr(adata: ad.AnnData) -> pd.DataFrame:
    """The table from ``obsm["airr"]`` (and ``obsm["chain_indices"]`` when present)."""
    cells = _to_list(adata.obsm["airr"])
    indices = _to_list(adata.obsm["chain_indices"]) if "chain_indices" in adata.obsm else None
    rows = []
    for i, chains in enumerate(cells):
        chains = list(chains or [])
        row = dict.fromkeys(TCR_COLUMNS)
        for arm, chain_name, loci in (("VJ", "alpha", ("TRA",)), ("VDJ", "beta", ("TRB",))):
            pick = None
            if indices is not None and indices[i] is not None:
                idx = indices[i].get(arm) if isinstance(indices[i], dict) else None
                if idx:
                    first = idx[0]
                    if first is not None and 0 <= int(first) < len(chains):
                        pick = chains[int(first)]
            else:
                candidates = [c for c in chains if str(c.get("locus", "")).upper() in loci
                              and str(c.get("productive", True)).lower() not in ("false", "f", "0")]
                if candidates:
                    pick = max(candidates, key=_umis)
            if pick is not None:
                row[f"tcr_{chain_name}_cdr3"] = pick.get("junction_aa")
                row[f"tcr_{chain_name}_v"] = pick.get("v_call")
                row[f"tcr_{chain_name}_j"] = pick.get("j_call")
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(TCR_COLUMNS), index=adata.obs_names.copy())
    for col in TCR_COLUMNS:
        table[col] = clean_values(table[col].to_numpy(dtype=object))
    return table


# ----------------------------------------------------------------------------- 10x contigs

#: Columns a 10x contig annotation file must have.
CONTIG_COLUMNS = ("barcode", "chain", "cdr3")


def read_contigs(path: str | os.PathLike) -> pd.DataFrame:
    """The TRA and TRB chain of each barcode of a 10x ``filtered_contig_annotations.csv``.

    Productive contigs of cells (``productive`` and, where present, ``is_cell`` and
    ``high_confidence`` true) are kept; per barcode and chain the contig with the most UMIs
    (then reads) is taken.

    Parameters
    ----------
    path
        The CSV (gzipped or not).

    Returns
    -------
    pandas.DataFrame
        Indexed by barcode, columns :data:`TCR_COLUMNS`.

    Raises
    ------
    ScamlError
        A missing file, or a file without the columns of a contig annotation.
    """
    path = str(path)
    if not os.path.exists(path):
        raise ScamlError(f"contig file {path!r} does not exist; pass the filtered_contig_annotations.csv of the cells.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ScamlError(f"contig file {path!r} is not a readable CSV ({exc}); pass Cell Ranger's "
                         "filtered_contig_annotations.csv.") from exc
    missing = [c for c in CONTIG_COLUMNS if c not in frame.columns]
    if missing:
        raise ScamlError(
            f"contig file {path!r} lacks the column(s) {missing} of a 10x contig annotation (it has "
            f"{list(frame.columns)[:12]}); pass Cell Ranger's filtered_contig_annotations.csv."
        )

    def true(col: str) -> np.ndarray:
        if col not in frame.columns:
            return np.ones(len(frame), dtype=bool)
        return frame[col].str.strip().str.lower().isin(["true", "t", "1", "yes"]).to_numpy()

    keep = true("productive") & true("is_cell") & true("high_confidence")
    keep &= frame["chain"].str.upper().isin(["TRA", "TRB"]).to_numpy()
    f = frame.loc[keep].copy()
    f["_umis"] = pd.to_numeric(f["umis"], errors="coerce").fillna(0) if "umis" in f else 0
    f["_reads"] = pd.to_numeric(f["reads"], errors="coerce").fillna(0) if "reads" in f else 0
    f = f.sort_values(["barcode", "chain", "_umis", "_reads"], ascending=[True, True, False, False], kind="stable")
    f = f.drop_duplicates(["barcode", "chain"], keep="first")
    barcodes = pd.Index(pd.unique(frame["barcode"].astype(str)))
    table = pd.DataFrame({c: np.full(len(barcodes), None, dtype=object) for c in TCR_COLUMNS}, index=barcodes)
    for chain, name in (("TRA", "alpha"), ("TRB", "beta")):
        sub = f[f["chain"].str.upper() == chain].set_index("barcode")
        for src, dst in (("cdr3", "cdr3"), ("v_gene", "v"), ("j_gene", "j")):
            if src in sub.columns:
                table.loc[sub.index, f"tcr_{name}_{dst}"] = clean_values(sub[src].to_numpy(dtype=object))
    return table


def join_contigs(adata: ad.AnnData, contigs: pd.DataFrame, path: str = "the contig file",
                 barcode_key: str | None = None) -> pd.DataFrame:
    """The contig table aligned to the cells by barcode (``obs_names``, or ``obs[barcode_key]``).

    Raises
    ------
    ScamlError
        No cell barcode is found in the contigs.
    """
    cells = adata.obs[barcode_key].astype(str) if barcode_key is not None else pd.Index(adata.obs_names.astype(str))
    cells = pd.Index(np.asarray(cells, dtype=object))
    hit = cells.isin(contigs.index)
    if not hit.any() and barcode_key is None and "barcode" in adata.obs.columns:
        return join_contigs(adata, contigs, path, "barcode")
    if not hit.any():
        raise ScamlError(
            f"none of the {len(cells)} cell barcodes (e.g. {list(cells[:2])}) is in {path} (barcodes e.g. "
            f"{list(contigs.index[:2])}); pass the contig file of these cells, or make obs_names (or an obs "
            "column 'barcode') hold the 10x barcodes as the file writes them."
        )
    n_hit = int(hit.sum())
    if n_hit < len(cells):
        info(f"{n_hit} of {len(cells)} cells have contigs in {path}; the others have no TCR chain")
    out = contigs.reindex(cells)
    out.index = adata.obs_names.copy()
    for col in TCR_COLUMNS:
        out[col] = clean_values(out[col].to_numpy(dtype=object))
    return check_cdr3(out, "contigs")


def tcr_table(adata: ad.AnnData, layout: str = "auto", contigs: str | os.PathLike | None = None, *,
              required: bool = True, report: bool = True) -> pd.DataFrame:
    """The TCR table from ``contigs`` (a 10x contig CSV joined by barcode) when given, else from ``adata``."""
    if contigs is None:
        return read_tcr(adata, layout, required=required, report=report)
    table = join_contigs(adata, read_contigs(contigs), repr(str(contigs)))
    table.attrs["layout"] = "contigs"
    if report:
        report_chains(table, "contigs")
    return table


def add_tcr(adata: ad.AnnData, layout: str = "auto", contigs: str | os.PathLike | None = None, *,
            clonotype_key: str | None = None, required: bool = True, report: bool = True) -> pd.DataFrame:
    """Write the standard TCR columns (:data:`TCR_COLUMNS`, and ``tcr_clonotype``) into ``adata.obs``.

    Parameters
    ----------
    adata
        Cells (modified in place: obs gains the columns).
    layout, contigs
        Where the chains are (:func:`read_tcr`'s layouts, or a 10x contig CSV joined by barcode).
    clonotype_key
        obs column of the clonotypes; default the first of :data:`CLONOTYPE_KEYS` present, else
        identical alpha + beta CDR3 and V genes (:func:`clonotypes`).
    required, report
        As for :func:`read_tcr`.

    Returns
    -------
    pandas.DataFrame
        The table written.
    """
    table = tcr_table(adata, layout, contigs, required=required, report=report)
    for col in TCR_COLUMNS:  # categorical: missing chains are NaN, and the columns write to h5ad
        adata.obs[col] = pd.Categorical(table[col].to_numpy(dtype=object))
    adata.obs[CLONOTYPE_COLUMN] = pd.Categorical(clonotypes(adata, table, clonotype_key))
    return table


def clonotypes(adata: ad.AnnData, table: pd.DataFrame | None = None, key: str | None = None) -> np.ndarray:
    """The clonotype of each cell (strings).

    ``key`` (an obs column) when given, else the first of :data:`CLONOTYPE_KEYS` in ``obs``, else
    derived: cells with identical alpha and beta CDR3 (and V genes) form one clonotype; a cell
    with no chain is a clonotype of its own.

    Raises
    ------
    ScamlError
        ``key`` is not an obs column.
    """
    if key is not None:
        if key not in adata.obs.columns:
            from ..errors import missing_key_error

            raise missing_key_error(key, adata.obs.columns, "adata.obs", "--clonotype-key")
        values = clean_values(adata.obs[key].to_numpy(dtype=object))
    else:
        found = next((k for k in CLONOTYPE_KEYS if k in adata.obs.columns), None)
        if found is not None:
            values = clean_values(adata.obs[found].to_numpy(dtype=object))
        else:
            if table is None:
                table = read_tcr(adata, report=False)
            parts = table[["tcr_alpha_cdr3", "tcr_alpha_v", "tcr_beta_cdr3", "tcr_beta_v"]].to_numpy(dtype=object)
            values = np.asarray(["|".join("" if p is None else str(p) for p in row) for row in parts], dtype=object)
            values[values == "|||"] = None
    names = np.asarray(adata.obs_names.astype(str), dtype=object)
    out = np.where(pd.isna(values), "single_" + names, values.astype(str) if values.size else values)
    return np.asarray(out, dtype=object).astype(str)
