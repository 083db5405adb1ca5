"""CITE-seq input: protein (antibody-derived tag) counts beside the RNA, checked and matched by name.

Proteins live in ``obsm["protein_expression"]`` (scvi-tools' layout): a DataFrame whose columns are
the protein names, or an array with the names in ``uns["protein_names"]``. A 10x feature-barcoding
``.h5`` or matrix folder is split on reading: the "Antibody Capture" features go to that obsm key,
the "Gene Expression" features stay in X (:func:`read_cite`).

Per-batch panels: a protein whose counts are all zero in a batch was not measured there; it is
*missing* in that batch (:func:`protein_panels`), not zero.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import info
from ..errors import ScamlError, missing_key_error

#: Where scaml (and scvi-tools) keep the protein counts.
PROTEIN_KEY = "protein_expression"
#: The 10x feature type of antibody-derived tags.
ANTIBODY_CAPTURE = "Antibody Capture"
GENE_EXPRESSION = "Gene Expression"

#: Suffixes that name an antibody kit or modality rather than the protein (``CD3_TotalSeqB``, ``CD4-ADT``).
_SUFFIX = re.compile(r"[\s_.\-]*(totalseq[\s_.\-]*[abcd]?|adt|citeseq|cite|antibody|protein|prot)$")
_SEPARATORS = re.compile(r"[\s_.\-]+")

_COUNTS_FIX = ("pass the raw antibody (ADT) counts, not CLR / log-normalised or scaled values "
               "(round estimated counts to whole numbers first)")


@dataclass
class ProteinCounts:
    """Protein counts of a set of cells, as read from an AnnData.

    Attributes
    ----------
    counts
        Cells x proteins, float32, non-negative whole numbers.
    names
        Protein names (unique), in column order.
    source
        Where they came from, e.g. ``obsm['protein_expression']``.
    """

    counts: np.ndarray
    names: list[str]
    source: str


def has_proteins(adata: ad.AnnData, protein_key: str = PROTEIN_KEY) -> bool:
    """Whether ``adata.obsm`` holds protein counts under ``protein_key``."""
    return protein_key in adata.obsm


def protein_names_of(adata: ad.AnnData, protein_key: str = PROTEIN_KEY) -> list[str]:
    """The protein names of ``adata.obsm[protein_key]`` (DataFrame columns, else ``uns["protein_names"]``).

    Raises
    ------
    ScamlError
        The key is missing, or an array comes without (the right number of) names.
    """
    if protein_key not in adata.obsm:
        raise missing_key_error(protein_key, adata.obsm.keys(), "adata.obsm", "--protein-key (protein_key=...)")
    value = adata.obsm[protein_key]
    where = f"obsm[{protein_key!r}]"
    if isinstance(value, pd.DataFrame):
        names = [str(c) for c in value.columns]
    else:
        n_cols = value.shape[1] if value.ndim == 2 else 1
        raw = adata.uns.get("protein_names")
        if raw is None:
            raise ScamlError(
                f"{where} is an array of {n_cols} proteins without names; store it as a DataFrame whose columns are "
                "the protein names, or put the names in uns['protein_names']."
            )
        names = [str(n) for n in np.asarray(raw).ravel()]
        if len(names) != n_cols:
            raise ScamlError(
                f"uns['protein_names'] holds {len(names)} names but {where} has {n_cols} columns; give one name "
                "per protein column."
            )
    check_unique_names(names, where)
    return names


def check_unique_names(names: list[str], where: str) -> None:
    """Raise a ScamlError naming the duplicated protein names, if any."""
    seen: set[str] = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)})
    if dup:
        raise ScamlError(
            f"{where} holds duplicated protein names {dup[:10]}; make each protein name unique (e.g. drop or rename "
            "the repeated antibody columns)."
        )


def check_protein_counts(values: np.ndarray, names: list[str], where: str,
                         obs_names: list[str] | None = None) -> None:
    """Raise a ScamlError unless ``values`` (cells x proteins) are finite non-negative whole numbers.

    The message names the first bad value, its protein and cell, and the fix.
    """
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.number):
        raise ScamlError(f"{where} must hold numbers (protein counts); got dtype {values.dtype}. {_COUNTS_FIX}.")
    if values.size == 0:
        return
    for what, bad in (
        ("NaN or infinite", ~np.isfinite(values)),
        ("negative", values < 0),
        ("non-integer", values != np.round(values)),
    ):
        if bad.any():
            i, j = np.unravel_index(int(np.flatnonzero(bad)[0]), values.shape)
            cell = obs_names[i] if obs_names is not None else f"row {i}"
            raise ScamlError(
                f"{where} holds {int(bad.sum())} {what} protein values (e.g. {float(values[i, j]):.4g} for protein "
                f"{names[j]!r} in cell {cell!r}), but protein counts must be non-negative whole numbers; {_COUNTS_FIX}."
            )


def get_protein_counts(adata: ad.AnnData, protein_key: str = PROTEIN_KEY) -> ProteinCounts:
    """Read and check the protein counts of ``adata`` (``obsm[protein_key]``).

    Parameters
    ----------
    adata
        Cells with protein counts in ``obsm[protein_key]``: a DataFrame (columns = protein
        names) or an array / sparse matrix with the names in ``uns["protein_names"]``.
    protein_key
        The obsm key.

    Returns
    -------
    ProteinCounts
        The counts (float32), names and source.

    Raises
    ------
    ScamlError
        A missing key, missing or duplicated names, or values that are not counts (negative,
        non-integer, NaN).
    """
    names = protein_names_of(adata, protein_key)
    value = adata.obsm[protein_key]
    where = f"obsm[{protein_key!r}]"
    if isinstance(value, pd.DataFrame):
        try:
            values = value.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ScamlError(f"{where} holds non-numeric columns ({exc}); {_COUNTS_FIX}.") from exc
    elif sp.issparse(value):
        values = np.asarray(value.toarray(), dtype=np.float64)
    else:
        values = np.asarray(value)
        if values.ndim == 1:
            values = values[:, None]
        if not np.issubdtype(values.dtype, np.number):
            raise ScamlError(f"{where} must hold numbers (protein counts); got dtype {values.dtype}. {_COUNTS_FIX}.")
        values = values.astype(np.float64)
    if not names:
        raise ScamlError(f"{where} holds no protein columns; add the protein counts or drop --protein-key.")
    check_protein_counts(values, names, where, [str(n) for n in adata.obs_names])
    return ProteinCounts(values.astype(np.float32), names, where)


# ----------------------------------------------------------------------------- panels

def protein_panels(counts: np.ndarray, batches: np.ndarray, names: list[str], *,
                   report: bool = True) -> dict[str, np.ndarray]:
    """Which proteins each batch measured: a protein whose counts are all zero in a batch is missing there.

    Parameters
    ----------
    counts
        Cells x proteins.
    batches
        Batch of each cell.
    names
        Protein names.
    report
        Print one info line naming the missing proteins of each batch (when any).

    Returns
    -------
    dict
        Batch name -> boolean array over the proteins (True: measured).
    """
    batches = np.asarray(batches).astype(str)
    panels: dict[str, np.ndarray] = {}
    for b in sorted(set(batches.tolist())):
        panels[b] = np.asarray(counts[batches == b].sum(axis=0) > 0).ravel()
    missing = {b: [names[j] for j in np.flatnonzero(~obs)] for b, obs in panels.items() if (~obs).any()}
    if report and missing:
        parts = "; ".join(
            f"{b!r} lacks {len(m)} of {len(names)} ({', '.join(m[:8])}{', ...' if len(m) > 8 else ''})"
            for b, m in missing.items()
        )
        info(f"protein panels: {parts}: all zero there, so treated as not measured in that batch (masked in the "
             "likelihood, imputed in the outputs), not as zero")
    return panels


# ----------------------------------------------------------------------------- name matching

def protein_key_of(name: str) -> str:
    """The name used for loose matching: lower case, without a kit suffix (``_TotalSeqB``...) and separators."""
    key = str(name).strip().lower()
    stripped = _SUFFIX.sub("", key)
    key = stripped or key
    return _SEPARATORS.sub("", key) or key


@dataclass
class ProteinMatch:
    """How query proteins map onto a model's proteins (:func:`match_proteins`).

    Attributes
    ----------
    positions
        For each model protein, its column in the query (-1: the query lacks it).
    exact
        Model proteins found under the same name.
    loose
        ``(model name, query name)`` pairs matched ignoring case or a suffix such as ``_TotalSeqB``.
    missing
        Model proteins the query lacks.
    extra
        Query proteins the model does not know (ignored).
    """

    positions: np.ndarray
    exact: list[str] = field(default_factory=list)
    loose: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def n_matched(self) -> int:
        return int((self.positions >= 0).sum())

    def describe(self) -> str:
        """One line: how many matched, which ones loosely, what is missing or ignored."""
        n = len(self.positions)
        text = f"protein names: {self.n_matched} of {n} reference proteins found ({len(self.exact)} by exact name"
        if self.loose:
            pairs = ", ".join(f"{q!r} -> {m!r}" for m, q in self.loose[:8])
            text += f"; {len(self.loose)} ignoring case or a suffix such as '_TotalSeqB': {pairs}"
            text += ", ..." if len(self.loose) > 8 else ""
        text += ")"
        if self.missing:
            text += (f"; {len(self.missing)} missing from the query, imputed: {', '.join(self.missing[:8])}"
                     f"{', ...' if len(self.missing) > 8 else ''}")
        if self.extra:
            text += (f"; {len(self.extra)} query-only proteins ignored: {', '.join(self.extra[:8])}"
                     f"{', ...' if len(self.extra) > 8 else ''}")
        return text


def match_proteins(model_names: list[str], query_names: list[str]) -> ProteinMatch:
    """Match query protein names to a model's: exact names first, then ignoring case and kit suffixes.

    ``CD3_TotalSeqB``, ``cd3`` and ``CD3-ADT`` all match ``CD3``. A loose key shared by two
    names on one side is ambiguous and is not used.

    Raises
    ------
    ScamlError
        No query protein matches any model protein.
    """
    model_names = [str(n) for n in model_names]
    query_names = [str(n) for n in query_names]
    exact_index = {n: j for j, n in enumerate(query_names)}
    positions = np.full(len(model_names), -1, dtype=np.int64)
    exact: list[str] = []
    for i, name in enumerate(model_names):
        if name in exact_index:
            positions[i] = exact_index[name]
            exact.append(name)
    used = set(positions[positions >= 0].tolist())

    def unique_keys(names: list[str], skip: set[int]) -> dict[str, int]:
        keys: dict[str, list[int]] = {}
        for j, n in enumerate(names):
            if j not in skip:
                keys.setdefault(protein_key_of(n), []).append(j)
        return {k: v[0] for k, v in keys.items() if len(v) == 1}

    matched_model = set(np.flatnonzero(positions >= 0).tolist())
    query_keys = unique_keys(query_names, used)
    model_keys = unique_keys(model_names, matched_model)
    loose: list[tuple[str, str]] = []
    for key, i in model_keys.items():
        j = query_keys.get(key)
        if j is not None:
            positions[i] = j
            loose.append((model_names[i], query_names[j]))
    if (positions < 0).all():
        raise ScamlError(
            f"the query's proteins share no name with the reference's, even ignoring case and suffixes such as "
            f"'_TotalSeqB' ({len(model_names)} reference proteins, e.g. {model_names[:4]}; {len(query_names)} query "
            f"proteins, e.g. {query_names[:4]}); rename the query's protein columns to the reference's names."
        )
    taken = set(positions[positions >= 0].tolist())
    return ProteinMatch(
        positions=positions, exact=exact, loose=loose,
        missing=[model_names[i] for i in np.flatnonzero(positions < 0)],
        extra=[query_names[j] for j in range(len(query_names)) if j not in taken],
    )


def align_proteins(counts: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Reorder the query's protein columns to the model's; missing proteins become zero columns."""
    out = np.zeros((counts.shape[0], positions.size), dtype=np.float32)
    present = np.flatnonzero(positions >= 0)
    out[:, present] = counts[:, positions[present]]
    return out


# ----------------------------------------------------------------------------- reading 10x files

def split_feature_types(adata: ad.AnnData, protein_key: str = PROTEIN_KEY) -> ad.AnnData:
    """Move the "Antibody Capture" features of a 10x AnnData to ``obsm[protein_key]`` (a DataFrame).

    The "Gene Expression" features stay in X; other feature types (CRISPR guides, custom) are
    dropped and reported. Without ``var["feature_types"]``, ``adata`` is returned as it is;
    without antibody features, its gene-expression features.
    """
    if "feature_types" not in adata.var.columns:
        return adata
    types = adata.var["feature_types"].astype(str).to_numpy()
    is_ab = types == ANTIBODY_CAPTURE
    is_gex = types == GENE_EXPRESSION
    if not is_ab.any():
        # no antibodies: the gene-expression features, as scanpy's gex_only=True reading
        return adata if is_gex.all() or not is_gex.any() else adata[:, is_gex].copy()
    if not is_gex.any():
        raise ScamlError(
            f"the 10x file holds {int(is_ab.sum())} '{ANTIBODY_CAPTURE}' features but no '{GENE_EXPRESSION}' "
            "features; a CITE-seq model needs the RNA counts too."
        )
    ab = adata[:, is_ab]
    values = ab.X.toarray() if sp.issparse(ab.X) else np.asarray(ab.X)
    names = [str(n) for n in ab.var_names]
    check_unique_names(names, "the 10x file's antibody features")
    proteins = pd.DataFrame(values.astype(np.float32), index=adata.obs_names.copy(), columns=names)
    rna = adata[:, is_gex].copy()
    rna.obsm[protein_key] = proteins
    others = sorted(set(types[~(is_ab | is_gex)].tolist()))
    info(f"10x feature barcoding: {int(is_gex.sum())} '{GENE_EXPRESSION}' features in X, {int(is_ab.sum())} "
         f"'{ANTIBODY_CAPTURE}' features in obsm[{protein_key!r}]"
         + (f"; other feature types dropped: {others}" if others else ""))
    return rna


def read_cite(path: str | os.PathLike, protein_key: str = PROTEIN_KEY) -> ad.AnnData:
    """Read CITE-seq data: an h5ad (proteins already in obsm), or a 10x ``.h5`` / matrix folder (split).

    Parameters
    ----------
    path
        ``.h5ad``; a 10x feature-barcoding ``.h5`` (Cell Ranger ``filtered_feature_bc_matrix.h5``);
        a 10x matrix folder (``matrix.mtx.gz``, ``features.tsv.gz`` with the feature type column,
        ``barcodes.tsv.gz``); anything else :func:`scaml.io.read_input` reads.
    protein_key
        The obsm key the antibody counts are written to.

    Returns
    -------
    AnnData
        RNA counts in X, proteins in ``obsm[protein_key]`` (when the file has them; also when an h5ad
        keeps "Antibody Capture" features in X beside the genes, ``var["feature_types"]``).

    Raises
    ------
    ScamlError
        The path does not exist or cannot be read.
    """
    from ..io import read_input

    p = Path(path)
    name = p.name.lower()
    if not p.exists():
        raise ScamlError(f"input {str(p)!r} does not exist; check the path.")
    if not (p.is_dir() or name.endswith(".h5")) or name.endswith(".h5ad"):
        adata = read_input(p)
        # antibody features kept in X (a 10x file read with gex_only=False and saved as h5ad)
        return adata if protein_key in adata.obsm else split_feature_types(adata, protein_key)
    import scanpy as sc

    try:
        if p.is_dir():
            files = {f.name for f in p.iterdir()}
            if not any(f.startswith("matrix.mtx") for f in files):
                return read_input(p)  # the usual message for a folder that is not a 10x matrix
            adata = sc.read_10x_mtx(str(p), var_names="gene_symbols", gex_only=False, cache=False)
        else:
            adata = sc.read_10x_h5(str(p), gex_only=False)
    except ScamlError:
        raise
    except Exception as exc:
        raise ScamlError(f"could not read {str(p)!r}: {type(exc).__name__}: {exc}") from exc
    adata.var_names_make_unique()
    return split_feature_types(adata, protein_key)


def clr(counts: Any) -> np.ndarray:
    """Centred log-ratio per cell across its proteins: ``log1p(x) - mean(log1p(x))`` (float32).

    Close to Seurat's ``NormalizeData(method = "CLR", margin = 2)``; the usual view of raw ADT counts.
    """
    values = np.log1p(np.asarray(counts, dtype=np.float64))
    return (values - values.mean(axis=1, keepdims=True)).astype(np.float32)
