"""QC -> normalise -> HVG -> PCA over an h5ad / zarr file in chunks of cells, within a memory budget.

The same rules and numbers as the in-memory path (:func:`scaml.preprocess.qc_filter`,
``normalize_total`` + ``log1p``, :func:`scaml.preprocess.highly_variable_genes`, :func:`scaml.preprocess.run_pca`):

1. **QC pass**: per-cell metrics and the cell rules; the detected counts of each gene among the kept cells
   (the ``min_cells`` gene rule);
2. **sums pass**: the kept cells log-normalised over the kept genes; per-batch gene sums (the
   Seurat HVG rule, :mod:`scaml.hvg`) and per-gene sums for scaling;
3. **Gram pass**: the scaled HVG block (z-scores clipped at ``max_value``) gives its covariance;
   its leading eigenvectors are the principal axes (signs as scikit-learn's);
4. **projection pass**: the principal components of every kept cell (and, when an output file
   is written, the normalised and raw matrices, chunk by chunk).

Only per-cell vectors, per-gene sums, the HVG covariance and the components are ever in memory,
never the count matrix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import info
from ..errors import ScamlError
from ..harmony.stream import parse_memory
from ..hvg import hvg_from_sums
from ..preprocess import hvg_batch_codes, unique_names
from . import passes
from .engine import Engine
from .source import CellSource, open_cells, row_ranges

#: Fraction of the machine's memory used when no budget is given.
DEFAULT_MEMORY_FRACTION = 0.25
#: The fewest cells a chunk may hold.
MIN_CHUNK_CELLS = 64
MAX_VALUE = 10.0
TARGET_SUM = 1e4


def machine_memory() -> int:
    """Total memory of this machine in bytes (psutil; /proc/meminfo; 8 GiB when neither answers)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil comes with distributed
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 8 << 30


def default_budget() -> int:
    """The memory budget when none is given: a quarter of the machine's memory."""
    return int(machine_memory() * DEFAULT_MEMORY_FRACTION)


@dataclass
class ChunkPlan:
    """How the passes cut the cells: rows per chunk and what the budget allows."""

    chunk_cells: int
    budget_bytes: int
    bytes_per_cell: int
    fixed_bytes: int
    n_chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {"chunk_cells": self.chunk_cells, "budget_mib": round(self.budget_bytes / 2**20, 1),
                "bytes_per_cell": self.bytes_per_cell, "fixed_mib": round(self.fixed_bytes / 2**20, 1),
                "n_chunks": self.n_chunks}


def plan_chunks(source: CellSource, n_hvg: int, *, max_memory: Any = None, chunk_cells: int | None = None,
                n_batches: int = 1) -> ChunkPlan:
    """Rows per chunk for a memory budget (``max_memory``: bytes or ``"8GB"``; default :func:`default_budget`).

    A chunk's working memory is about 48 bytes per stored value (the CSR copies of counts and
    normalised values, float64 sums) plus 24 bytes per cell and HVG (the dense scaled block in
    float32 and float64); the fixed part is the HVG covariance and the per-batch gene sums.

    Raises
    ------
    ScamlError
        The budget does not hold the fixed part and one chunk of :data:`MIN_CHUNK_CELLS` cells.
    """
    budget = default_budget() if max_memory is None else parse_memory(max_memory, "--max-memory")
    nnz_per_cell = source.nnz / max(source.n_cells, 1)
    per_cell = int(48 * nnz_per_cell + 24 * n_hvg + 64)
    fixed = int(3 * 8 * n_hvg * n_hvg + 4 * 8 * max(n_batches, 1) * source.n_genes + 16 * source.n_cells)
    what = (f"one chunk of {MIN_CHUNK_CELLS} cells ({source.nnz / max(source.n_cells, 1):.0f} stored values per "
            f"cell, {n_hvg} HVGs)")
    return budget_plan(source.n_cells, budget, per_cell, fixed, chunk_cells, what)


def budget_plan(n_cells: int, budget: int, per_cell: int, fixed: int, chunk_cells: int | None, what: str) -> ChunkPlan:
    """The chunking of ``n_cells`` cells: ``chunk_cells`` when given, else as many as the budget holds (at most
    200,000); ``what`` names what one chunk of :data:`MIN_CHUNK_CELLS` cells is in the too-small-budget error."""
    if chunk_cells is None:
        room = budget - fixed
        if room < per_cell * MIN_CHUNK_CELLS:
            need = fixed + per_cell * MIN_CHUNK_CELLS
            raise ScamlError(
                f"--max-memory {budget / 2**20:.0f} MB does not hold {what}: give at least "
                f"{math.ceil(need / 2**20)} MB, e.g. --max-memory {max(1, math.ceil(need / 2**30))}GB."
            )
        chunk_cells = int(min(room // per_cell, n_cells, 200_000))
    chunk_cells = max(1, min(int(chunk_cells), n_cells))
    return ChunkPlan(chunk_cells, budget, per_cell, fixed, math.ceil(n_cells / chunk_cells))


@dataclass
class ChunkedCells:
    """The result of :func:`preprocess_chunked`: the small AnnData and what the later steps need to read cells again.

    Attributes
    ----------
    adata
        The kept cells (``obs`` with the QC metrics), kept genes (``var``: ``mt``, ``n_cells``,
        ``highly_variable``), ``obsm["X_pca"]``, ``varm["PCs"]``, ``uns["pca"]``; no X.
    source
        The input file.
    keep
        Boolean mask over the input's cells.
    genes
        Indices of the kept genes in the input.
    plan, engine
        The chunking and the engine (its passes are recorded).
    qc_removed
        What each QC rule removed.
    """

    adata: ad.AnnData
    source: CellSource
    keep: np.ndarray
    genes: np.ndarray
    plan: ChunkPlan
    engine: Engine
    qc_removed: dict[str, int] = field(default_factory=dict)
    scaling: dict[str, np.ndarray] = field(default_factory=dict)

    def ranges(self) -> list[tuple[int, int]]:
        return row_ranges(self.source.n_cells, self.plan.chunk_cells)

    def read_cells(self, positions: np.ndarray, *, lognorm: bool = True) -> sp.csr_matrix:
        """Rows of kept cells (positions among the kept cells, any order) over the kept genes, log-normalised or raw."""
        M = gather_rows(self.source, self.keep, self.genes, self.ranges(), positions)
        if lognorm:
            from ..preprocess import log_normalize

            return log_normalize(M, TARGET_SUM)
        return sp.csr_matrix(M, dtype=np.float32)

    def output_chunks(self):
        """(log-normalised, counts) of every chunk's kept cells, in order, through the engine."""
        sc = self.scaling
        items = list(zip(self.ranges(), [self.keep[a:b] for a, b in self.ranges()], strict=True))
        for _, lognorm, counts in self.engine.map(
            "write integrated.h5ad", _project_item, items, self.source, self.genes, sc["hvg"], sc["mean"],
            sc["std"], sc["center"], sc["components"], True,
        ):
            yield lognorm, counts


def gather_rows(source: CellSource, keep: np.ndarray, features: np.ndarray, ranges: list[tuple[int, int]],
                positions: np.ndarray) -> sp.csr_matrix:
    """Raw rows of kept cells (``positions`` among the kept cells, any order) over ``features``, read chunk by chunk."""
    positions = np.asarray(positions, dtype=np.int64)
    wanted = np.flatnonzero(keep)[positions]
    order = np.argsort(wanted, kind="stable")
    blocks = []
    for a, b in ranges:
        lo, hi = np.searchsorted(wanted[order], [a, b])
        if hi <= lo:
            continue
        X = source.read_rows(a, b)
        blocks.append((X if sp.issparse(X) else sp.csr_matrix(X))[wanted[order][lo:hi] - a][:, features])
    M = sp.vstack(blocks).tocsr() if blocks else sp.csr_matrix((0, features.size), dtype=np.float32)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return M[inverse]


def open_with_tables(path: str | os.PathLike | CellSource, layer: str | None = None
                     ) -> tuple[CellSource, pd.DataFrame, pd.DataFrame]:
    """The file's matrix (a :class:`CellSource`), obs and var, checked to match (a damaged file is refused)."""
    source = path if isinstance(path, CellSource) else open_cells(path, layer)
    obs = source.read_frame("obs")
    var = source.read_frame("var")
    if len(obs) != source.n_cells or len(var) != source.n_genes:
        raise ScamlError(f"{source.path!r}: obs / var ({len(obs)} x {len(var)}) do not match the matrix "
                         f"({source.n_cells} x {source.n_genes}); the file is damaged.")
    return source, obs, var


def preprocess_chunked(
    path: str | os.PathLike | CellSource,
    *,
    batch_key: str | None = None,
    layer: str | None = None,
    mito_prefix: Sequence[str] = ("MT-", "mt-"),
    min_genes: int = 200,
    max_genes: int | None = None,
    max_pct_mito: float | None = 20.0,
    min_cells: int = 3,
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    max_memory: Any = None,
    chunk_cells: int | None = None,
    client: Any = None,
    show_progress: bool = True,
) -> ChunkedCells:
    """QC, normalisation, HVG selection and PCA of a file's raw counts, chunk by chunk.

    Parameters
    ----------
    path
        An ``.h5ad`` or ``.zarr`` AnnData with raw counts in X (or ``layers[layer]``), stored by row (CSR) or dense.
    batch_key
        ``obs`` column of the batches: HVGs are selected per batch (as in memory).
    mito_prefix, min_genes, max_genes, max_pct_mito, min_cells
        The QC rules of :func:`scaml.preprocess.qc_filter`.
    n_top_genes, n_pcs
        Highly variable genes and principal components.
    max_memory
        The memory budget of a chunk's work (bytes or ``"8GB"``; default a quarter of the machine's memory).
    chunk_cells
        Rows per chunk instead of the budget's.
    client
        A ``dask.distributed.Client``: the chunks run on its cluster (the file must be readable at the
        same path there). None: in this process.
    show_progress
        A progress bar per pass.

    Returns
    -------
    ChunkedCells

    Raises
    ------
    ScamlError
        A damaged or truncated file, values that are not counts, a budget too small for one chunk,
        QC that keeps no cell or gene, or too few cells / genes for ``n_pcs``.
    """
    source, obs, var = open_with_tables(path, layer)
    if batch_key is not None and batch_key not in obs.columns:
        raise ScamlError(f"obs has no column {batch_key!r} (--batch-key); columns: {list(obs.columns)[:20]}.")
    batch_labels = None if batch_key is None else obs[batch_key].astype(str).to_numpy()
    n_batch_levels = 1 if batch_labels is None else len(pd.unique(batch_labels))
    plan = plan_chunks(source, min(n_top_genes, source.n_genes), max_memory=max_memory, chunk_cells=chunk_cells,
                       n_batches=n_batch_levels)
    engine = Engine(client, show=show_progress)
    engine.say_where()
    info(f"chunked preprocessing of {source.n_cells} cells x {source.n_genes} genes: {plan.n_chunks} chunks of "
         f"{plan.chunk_cells} cells (budget {plan.budget_bytes / 2**30:.2f} GiB)")
    ranges = row_ranges(source.n_cells, plan.chunk_cells)
    names = var.index.astype(str)
    mito = np.asarray(names.str.startswith(tuple(mito_prefix)), dtype=bool)

    # 1. QC
    rules = passes.QCRules(min_genes=min_genes, max_genes=max_genes, max_pct_mito=max_pct_mito)
    per_cell: dict[str, list[np.ndarray]] = {"n_genes_by_counts": [], "total_counts": [], "pct_counts_mt": [],
                                             "keep": []}
    gene_cells = np.zeros(source.n_genes, dtype=np.int64)
    removed = {"cells_removed_min_genes": 0}
    if max_genes is not None:
        removed["cells_removed_max_genes"] = 0
    if max_pct_mito is not None:
        removed["cells_removed_max_pct_mito"] = 0
    for part in engine.map("QC", passes.qc_chunk, ranges, source, rules, mito):
        if part["problem"] is not None:
            (a, b), problem = part["problem"]
            raise ScamlError(
                f"{source.key} of {source.path!r} is not raw counts: cells {a}-{b} hold {problem}. The chunked path "
                "needs raw counts; point --layer at them, or run without --chunked on normalised data."
            )
        for k in per_cell:
            per_cell[k].append(part[k])
        gene_cells += part["gene_cells"]
        for k, v in part["removed"].items():
            removed[f"cells_removed_{k}"] += v
    keep = np.concatenate(per_cell["keep"])
    if not keep.any():
        raise ScamlError(f"QC removed every cell ({removed}); loosen --min-genes (now {min_genes}), --max-genes "
                         f"(now {max_genes}) or --max-pct-mito (now {max_pct_mito}).")
    gene_keep = gene_cells >= min_cells
    removed["genes_removed_min_cells"] = int((~gene_keep).sum())
    if not gene_keep.any():
        raise ScamlError(f"no gene is detected in {min_cells} cells; lower --min-cells (now {min_cells}).")
    removed["n_mito_genes"] = int(mito[gene_keep].sum())
    genes = np.flatnonzero(gene_keep)
    n_kept = int(keep.sum())
    info(f"QC kept {n_kept} cells and {genes.size} genes ({removed})")
    keeps = [keep[a:b] for a, b in ranges]

    # 2. sums for HVG and scaling
    codes_all, n_batches = hvg_batch_codes(None if batch_labels is None else batch_labels[keep], n_kept)
    codes_chunks: list[np.ndarray | None] = []
    offset = 0
    for k in keeps:
        m = int(k.sum())
        codes_chunks.append(None if codes_all is None else codes_all[offset:offset + m])
        offset += m
    items = list(zip(ranges, keeps, codes_chunks, strict=True))
    total, s1, s2 = engine.map_sum("normalise + gene sums", _sums_item, items, source, genes, n_batches)
    var_kept = var.iloc[genes].copy()
    var_kept.index = pd.Index(unique_names(var_kept.index, genes.size))
    n_hvg_target = int(n_top_genes)
    if n_hvg_target >= genes.size:
        hvg = np.ones(genes.size, dtype=bool)
    else:
        hvg = hvg_from_sums(total, n_hvg_target, var_kept.index, batched=n_batches > 1)
    n_hvg = int(hvg.sum())
    limit = min(n_kept, n_hvg) - 1
    if n_pcs > limit:
        raise ScamlError(f"n_comps={n_pcs} principal components need more than {n_pcs} cells and genes; there are "
                         f"{n_kept} cells and {n_hvg} selected genes. Use --n-pcs {max(2, limit)} or fewer.")
    mean_all = s1 / n_kept
    var_all = np.maximum(s2 / n_kept - mean_all**2, 0.0) * (n_kept / max(n_kept - 1, 1))
    mean = mean_all[hvg]
    std = np.sqrt(var_all[hvg])
    std[std == 0] = 1.0
    hvg_idx = np.flatnonzero(hvg)

    # 3. covariance of the scaled HVG block
    n_seen, zsum, gram = engine.map_sum("scaled HVG covariance", _gram_item, list(zip(ranges, keeps, strict=True)),
                                        source, genes, hvg_idx, mean, std)
    center = zsum / n_seen
    cov = (gram - n_seen * np.outer(center, center)) / max(n_seen - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:n_pcs]
    variance = evals[order]
    components = evecs[:, order]
    # scikit-learn's sign rule (svd_flip, u_based_decision=False): each axis's largest loading is positive
    signs = np.sign(components[np.abs(components).argmax(axis=0), np.arange(n_pcs)])
    signs[signs == 0] = 1.0
    components = components * signs
    total_variance = float(np.trace(cov))

    # 4. projection
    pcs = [p for p, _, _ in engine.map("principal components", _project_item, list(zip(ranges, keeps, strict=True)),
                                       source, genes, hvg_idx, mean, std, center, components, False)]
    obs_kept = obs.iloc[np.flatnonzero(keep)].copy()
    for k in ("n_genes_by_counts", "total_counts", "pct_counts_mt"):
        obs_kept[k] = np.concatenate(per_cell[k])[keep]
    var_kept["mt"] = mito[genes]
    var_kept["n_cells_by_counts"] = gene_cells[genes]
    var_kept["highly_variable"] = hvg
    adata = ad.AnnData(obs=obs_kept, var=var_kept)
    adata.obsm["X_pca"] = np.ascontiguousarray(np.concatenate(pcs), dtype=np.float32)
    loadings = np.zeros((genes.size, n_pcs), dtype=np.float32)
    loadings[hvg] = components.astype(np.float32)
    adata.varm["PCs"] = loadings
    adata.uns["pca"] = {"variance": variance.astype(np.float32),
                        "variance_ratio": (variance / total_variance).astype(np.float32)}
    return ChunkedCells(adata, source, keep, genes, plan, engine, removed,
                        {"mean": mean, "std": std, "hvg": hvg_idx, "center": center, "components": components})


# Items of the passes: (rows, keep[, codes]) tuples, so that each Dask task gets only its own slices.

def _sums_item(item: tuple, source: CellSource, genes: np.ndarray, n_batches: int) -> tuple:
    rows, keep, codes = item
    return passes.sums_chunk(rows, source, keep, genes, codes, n_batches, TARGET_SUM)


def _gram_item(item: tuple, source: CellSource, genes: np.ndarray, hvg: np.ndarray, mean: np.ndarray,
               std: np.ndarray) -> tuple:
    rows, keep = item
    return passes.gram_chunk(rows, source, keep, genes, hvg, mean, std, MAX_VALUE, TARGET_SUM)


def _project_item(item: tuple, source: CellSource, genes: np.ndarray, hvg: np.ndarray, mean: np.ndarray,
                  std: np.ndarray, center: np.ndarray, components: np.ndarray, with_matrices: bool) -> tuple:
    rows, keep = item
    return passes.project_chunk(rows, source, keep, genes, hvg, mean, std, MAX_VALUE, TARGET_SUM, center,
                                components, with_matrices)


def write_chunked_h5ad(cells: Any, adata: ad.AnnData, path: str | os.PathLike) -> Path:
    """Write ``adata`` (no X) with X (log-normalised; TF-IDF for peaks) and ``layers["counts"]`` streamed from the
    file, atomically. ``cells``: a :class:`ChunkedCells` or :class:`~scaml.chunked.peaks.ChunkedPeaks`.

    The matrices are appended chunk by chunk (CSR, float32); memory stays within the chunk budget.
    """
    return write_streamed_h5ad(adata, path, cells.output_chunks())


def write_streamed_h5ad(adata: ad.AnnData, path: str | os.PathLike, chunks: Iterable[tuple]) -> Path:
    """Write ``adata``'s tables with X and ``layers["counts"]`` appended from ``chunks`` ((X, counts) CSR row
    blocks of its cells, in order), atomically: only one block is in memory at a time.
    """
    import h5py
    from anndata.io import sparse_dataset, write_elem

    from ..io import h5ad_safe, write_atomic

    out = adata.copy() if adata.X is not None else adata
    out.X = None
    h5ad_safe(out)

    def _write(tmp: str) -> None:
        out.write_h5ad(tmp)
        kwargs = {"chunks": (1 << 18,)}
        with h5py.File(tmp, "a") as f:
            if "X" in f:
                del f["X"]
            layers = f.require_group("layers")
            started = False
            for values, counts in chunks:
                if values.shape[0] == 0:
                    continue
                if not started:
                    write_elem(f, "X", values, dataset_kwargs=kwargs)
                    write_elem(layers, "counts", counts, dataset_kwargs=kwargs)
                    started = True
                else:
                    sparse_dataset(f["X"]).append(values)
                    sparse_dataset(layers["counts"]).append(counts)

    return write_atomic(path, _write)
