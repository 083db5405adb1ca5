"""Turning TCR chains into arrays a network reads: amino-acid tokens, V/J gene codes, chain masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .._utils import info
from .io import AMINO_ACIDS

#: Token 0 pads a CDR3 (and fills a missing chain); amino acids are 1..20.
PAD = 0
N_TOKENS = len(AMINO_ACIDS) + 1
#: Gene codes: 0 = no chain / no gene, 1 = a gene the reference did not see, 2.. = the reference's genes.
GENE_MISSING, GENE_UNKNOWN = 0, 1
#: The four gene slots, in the order of :func:`encode_genes`'s columns.
GENE_SLOTS = ("alpha_v", "alpha_j", "beta_v", "beta_j")
#: The longest CDR3 a model is built for by default (longer ones are cut, with a message).
MAX_CDR3_LENGTH = 30

_INDEX = {aa: i + 1 for i, aa in enumerate(AMINO_ACIDS)}


def encode_cdr3(sequences: Sequence[str | None], max_length: int) -> np.ndarray:
    """Token matrix (cells x ``max_length``, int64): amino acids 1..20, 0 after the end and for a missing chain.

    Sequences longer than ``max_length`` are cut at ``max_length`` (the caller reports it).
    """
    out = np.zeros((len(sequences), int(max_length)), dtype=np.int64)
    for i, seq in enumerate(sequences):
        if seq is None:
            continue
        codes = [_INDEX[a] for a in str(seq)[:max_length]]
        out[i, :len(codes)] = codes
    return out


def gene_vocabulary(values: Sequence[str | None]) -> list[str]:
    """The sorted distinct genes (missing values left out)."""
    return sorted({str(v) for v in values if v is not None})


def encode_gene(values: Sequence[str | None], vocabulary: Sequence[str]) -> np.ndarray:
    """Gene codes (int64): 0 missing, 1 not in ``vocabulary`` (unknown), ``2 + position`` otherwise."""
    index = {g: i + 2 for i, g in enumerate(vocabulary)}
    return np.fromiter((GENE_MISSING if v is None else index.get(str(v), GENE_UNKNOWN) for v in values),
                       dtype=np.int64, count=len(values))


def build_vocabularies(table: pd.DataFrame) -> dict[str, list[str]]:
    """One gene vocabulary per slot (:data:`GENE_SLOTS`) from a TCR table."""
    return {slot: gene_vocabulary(table[f"tcr_{slot}"].tolist()) for slot in GENE_SLOTS}


def encode_table(table: pd.DataFrame, vocabularies: dict[str, list[str]], max_length: int,
                 report: bool = False) -> dict[str, np.ndarray]:
    """The network's per-cell TCR inputs from a TCR table.

    Returns
    -------
    dict
        ``tcr_cdr3``: int64 cells x 2 x ``max_length`` (alpha, beta tokens); ``tcr_genes``: int64
        cells x 4 (:data:`GENE_SLOTS` codes); ``tcr_chains``: float32 cells x 2 (1 where the alpha /
        beta chain is present).
    """
    alpha = table["tcr_alpha_cdr3"].tolist()
    beta = table["tcr_beta_cdr3"].tolist()
    cdr3 = np.stack([encode_cdr3(alpha, max_length), encode_cdr3(beta, max_length)], axis=1)
    genes = np.stack([encode_gene(table[f"tcr_{slot}"].tolist(), vocabularies[slot]) for slot in GENE_SLOTS],
                     axis=1)
    chains = np.stack([np.asarray([s is not None for s in alpha]), np.asarray([s is not None for s in beta])],
                      axis=1).astype(np.float32)
    if report:
        n_long = sum(s is not None and len(s) > max_length for s in alpha + beta)
        if n_long:
            info(f"{n_long} CDR3s are longer than the model's {max_length} positions and are cut")
        known = genes[:, :] >= 2
        unknown = genes == GENE_UNKNOWN
        if unknown.any():
            info(f"{int(unknown.sum())} V/J gene calls are not in the reference's genes and map to 'unknown' "
                 f"({int(known.sum())} known)")
    return {"tcr_cdr3": cdr3, "tcr_genes": genes, "tcr_chains": chains}
