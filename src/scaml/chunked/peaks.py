"""scATAC-seq peaks in chunks of cells: QC -> TF-IDF -> LSI -> depth check, within a memory budget.

The same rules and numbers as the in-memory ATAC path (:func:`scaml.atac.qc_filter_peaks`,
:func:`scaml.atac.tfidf`, :func:`scaml.atac.lsi`: scikit-learn's randomized ``TruncatedSVD``, and
the depth check):

1. **QC pass**: per-cell counts in peaks and accessible peaks, the cell rules, each peak's number
   of kept cells (the ``min_cells`` peak rule);
2. **IDF pass**: each kept peak's total over the kept cells (Signac's IDF) and each cell's depth;
3. **SVD passes**: the randomized SVD of scikit-learn (Halko et al.), step for step, on the TF-IDF
   matrix that is recomputed chunk by chunk and never held: every product ``X @ Q`` (the chunk's
   rows) and ``X^T @ P`` (summed over chunks) is one pass; with 7 power iterations, 17 passes. The
   random start, the LU / QR normalisations, the transposition rule (``cells < peaks``) and the
   signs are scikit-learn's, so the components agree with the in-memory LSI to rounding.

Only per-cell vectors (the ``cells x (n_components + 10)`` range basis), per-peak vectors and the
loadings are in memory, never the peak matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import info
from ..atac.features import add_peak_coordinates
from ..atac.lsi import (
    DEPTH_CORRELATION_MAX,
    DepthCheck,
    inverse_document_frequency,
    lsi_components_fitted,
    scale_components,
    store_lsi,
    tfidf,
)
from ..atac.qc import fragment_metrics
from ..atac.spectral import (
    component_signs,
    eigenpairs,
    idf_from_document_frequency,
    nystrom_basis,
    nystrom_extend,
    store_spectral,
    weighted_unit_rows,
)
from ..errors import ScamlError
from ..harmony.stream import parse_memory
from ..preprocess import unique_names
from .engine import Engine
from .passes import count_problem, detected_per_column, detected_per_row, kept_block, read_block
from .preprocess import (
    MIN_CHUNK_CELLS,
    ChunkPlan,
    budget_plan,
    default_budget,
    gather_rows,
    open_with_tables,
)
from .source import CellSource, row_ranges

#: scikit-learn TruncatedSVD's settings used by :func:`scaml.atac.lsi`.
N_ITER = 7
N_OVERSAMPLES = 10


@dataclass(frozen=True)
class PeakQCRules:
    """The cell rules of :func:`scaml.atac.qc_filter_peaks`."""

    min_counts: int = 50
    min_peaks: int = 20
    max_counts: int | None = None


#: Landmark cells of the chunked spectral embedding (at most; fewer when the budget cannot hold them).
SPECTRAL_LANDMARKS = 50_000
#: Memory of one block of fragment lines (1e6 lines: the table, about 140 MiB, and its temporaries).
FRAGMENT_BLOCK_BYTES = 400 * 2**20


def plan_peak_chunks(source: CellSource, n_basis: int, *, max_memory: Any = None,
                     chunk_cells: int | None = None, fragments: bool = False) -> ChunkPlan:
    """Rows per chunk for a memory budget: about 40 bytes per stored value (CSR counts, TF-IDF and their
    float64 temporaries) and ``12 * n_basis`` per cell in a chunk; fixed: the per-cell range basis and
    a few per-peak ``n_basis`` blocks (with ``fragments``: also a block of fragment lines and the per-cell
    fragment sums).

    Raises
    ------
    ScamlError
        The budget does not hold the fixed part and one chunk of :data:`MIN_CHUNK_CELLS` cells.
    """
    budget = default_budget() if max_memory is None else parse_memory(max_memory, "--max-memory")
    nnz_per_cell = source.nnz / max(source.n_cells, 1)
    per_cell = int(40 * nnz_per_cell + 12 * n_basis + 64)
    fixed = int(3 * 8 * n_basis * source.n_cells + 4 * 8 * n_basis * source.n_genes + 32 * source.n_cells)
    if fragments:
        fixed += FRAGMENT_BLOCK_BYTES + 48 * source.n_cells
    what = f"the LSI of {source.n_cells} cells x {source.n_genes} peaks in chunks of {MIN_CHUNK_CELLS} cells"
    return budget_plan(source.n_cells, budget, per_cell, fixed, chunk_cells, what)


# ----------------------------------------------------------------------------- one chunk's work

def qc_chunk(item: tuple, source: CellSource, rules: PeakQCRules) -> dict:
    """Per-cell counts in peaks, accessible peaks and pass/fail; per-peak number of kept cells.

    ``item``: the chunk's rows and the cells still in (False: removed by ``--min-fragments`` before these rules).
    """
    rows, allowed = item
    X = read_block(rows, source)
    problem = count_problem(X)
    total = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()
    n_peaks = detected_per_row(X)
    keep = allowed.copy()
    removed = {}
    checks = [("min_counts", total >= rules.min_counts), ("min_peaks", n_peaks >= rules.min_peaks)]
    if rules.max_counts is not None:
        checks.append(("max_counts", total <= rules.max_counts))
    for name, ok in checks:  # a cell is counted by the first rule it fails, as in memory
        removed[name] = int((keep & ~ok).sum())
        keep &= ok
    peak_cells = detected_per_column(X, keep)
    return {"total_counts": total, "n_peaks_by_counts": n_peaks, "keep": keep, "peak_cells": peak_cells,
            "removed": removed, "problem": None if problem is None else (rows, problem)}


def _kept(item: tuple, source: CellSource, peaks: np.ndarray) -> sp.csr_matrix:
    return kept_block(item[0], source, item[1], peaks)


def _binary(counts: sp.csr_matrix, binarize: bool) -> sp.csr_matrix:
    X = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    X.eliminate_zeros()
    if binarize:
        X.data[:] = 1.0
    return X


def idf_chunk(item: tuple, source: CellSource, peaks: np.ndarray, binarize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each kept cell's counts in the kept peaks (the depth) and each kept peak's total over the kept
    cells (binarised first when asked: the IDF)."""
    counts = _kept(item, source, peaks)
    depth = np.asarray(counts.sum(axis=1, dtype=np.float64)).ravel()
    X = _binary(counts, binarize)
    return depth, np.asarray(X.sum(axis=0), dtype=np.float64).ravel()


def times_chunk(item: tuple, source: CellSource, peaks: np.ndarray, binarize: bool, idf: np.ndarray,
                Q: np.ndarray) -> np.ndarray:
    """The chunk's rows of ``TF-IDF @ Q`` (float32, as scikit-learn computes on a float32 matrix)."""
    X = tfidf(_kept(item, source, peaks), binarize=binarize, idf=idf, copy=False)
    return np.asarray(X @ Q, dtype=np.float32)


def transpose_times_chunk(item: tuple, source: CellSource, peaks: np.ndarray, binarize: bool,
                          idf: np.ndarray) -> np.ndarray:
    """The chunk's share of ``TF-IDF^T @ P`` (``item`` carries the chunk's rows of P), summed in float64."""
    X = tfidf(_kept(item, source, peaks), binarize=binarize, idf=idf, copy=False)
    P = item[2]
    return np.asarray(X.T @ P, dtype=np.float64)


def activity_chunk(item: tuple, source: CellSource, peaks: np.ndarray, mapping: sp.csr_matrix
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The chunk's gene activity (counts in the kept peaks @ the peaks-to-genes map), as (X, counts)."""
    activity = sp.csr_matrix(sp.csr_matrix(_kept(item, source, peaks), dtype=np.float32) @ mapping, dtype=np.float32)
    return activity, activity


def spectral_chunk(item: tuple, source: CellSource, peaks: np.ndarray, binarize: bool, weights: np.ndarray,
                   W: np.ndarray, colsum: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The chunk's kept cells in the spectral embedding: the Nystrom extension of the landmarks' eigenvectors."""
    rows = weighted_unit_rows(_kept(item, source, peaks), weights, binarize=binarize)
    return nystrom_extend(rows, W, colsum, values).astype(np.float32)


def matrices_chunk(item: tuple, source: CellSource, peaks: np.ndarray, binarize: bool,
                   idf: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """The chunk's TF-IDF and raw counts over the kept peaks (for integrated.h5ad)."""
    counts = _kept(item, source, peaks)
    return tfidf(counts, binarize=binarize, idf=idf), sp.csr_matrix(counts, dtype=np.float32)


# ----------------------------------------------------------------------------- the randomized SVD

class _ChunkedOperator:
    """The TF-IDF matrix as two chunked products, counted by the engine's passes."""

    def __init__(self, engine: Engine, items: list[tuple], source: CellSource, peaks: np.ndarray,
                 binarize: bool, idf: np.ndarray, n_cells: int) -> None:
        self.engine, self.items, self.source = engine, items, source
        self.peaks, self.binarize, self.idf = peaks, binarize, idf
        self.shape = (n_cells, peaks.size)
        self.sizes = [int(item[1].sum()) for item in items]
        self.n_products = 0

    def times(self, Q: np.ndarray) -> np.ndarray:
        """``X @ Q`` (cells x l)."""
        self.n_products += 1
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        parts = list(self.engine.map(f"LSI product {self.n_products}", times_chunk, self.items, self.source,
                                     self.peaks, self.binarize, self.idf, Q))
        return np.concatenate(parts) if parts else np.zeros((0, Q.shape[1]), np.float32)

    def transpose_times(self, P: np.ndarray) -> np.ndarray:
        """``X^T @ P`` (peaks x l), P split by chunk."""
        self.n_products += 1
        P = np.asarray(P, dtype=np.float32)
        bounds = np.concatenate([[0], np.cumsum(self.sizes)])
        items = [(*item, P[bounds[i]:bounds[i + 1]]) for i, item in enumerate(self.items)]
        total = self.engine.map_sum(f"LSI product {self.n_products}", transpose_times_chunk, items, self.source,
                                    self.peaks, self.binarize, self.idf)
        return np.asarray(total, dtype=np.float32)


def _svd_flip_v(U: np.ndarray, Vt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``svd_flip(u_based_decision=False)``: each row of Vt has its largest |value| positive."""
    signs = np.sign(Vt[np.arange(Vt.shape[0]), np.argmax(np.abs(Vt), axis=1)])
    signs[signs == 0] = 1.0
    return U * signs, Vt * signs[:, None]


def randomized_lsi(op: _ChunkedOperator, n_components: int, random_state: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``X @ V``, the loadings V and the singular values of the TF-IDF matrix X, as scikit-learn's randomized
    TruncatedSVD computes them.

    scikit-learn factorises ``A = X`` when there are at least as many cells as peaks and ``A = X^T``
    otherwise; the range finder multiplies by ``A`` and ``A^T`` alternately (LU-normalised; QR at the
    end), and ``B = Q^T A`` is decomposed in memory.
    """
    from scipy import linalg

    n_cells, n_peaks = op.shape
    size = n_components + N_OVERSAMPLES
    transpose = n_cells < n_peaks
    A, At = (op.transpose_times, op.times) if transpose else (op.times, op.transpose_times)
    rng = np.random.RandomState(random_state)
    Q = rng.normal(size=(n_cells if transpose else n_peaks, size)).astype(np.float32)
    for _ in range(N_ITER):
        Q, _ = linalg.lu(A(Q), permute_l=True, check_finite=False)
        Q, _ = linalg.lu(At(Q), permute_l=True, check_finite=False)
    Q, _ = linalg.qr(A(Q), mode="economic", check_finite=False)
    B = At(Q).T  # Q^T A
    Uhat, s, Vt = linalg.svd(B, full_matrices=False, lapack_driver="gesdd")
    U = Q @ Uhat
    if transpose:
        U, Vt = Vt[:n_components].T, U[:, :n_components].T
    else:
        U, Vt = U[:, :n_components], Vt[:n_components]
    s = s[:n_components]
    U, Vt = _svd_flip_v(U, Vt)
    loadings = np.ascontiguousarray(Vt.T, dtype=np.float32)
    # scikit-learn's randomized fit_transform returns X @ V (not U * S): one more pass
    return op.times(loadings), loadings, s.astype(np.float64)


# ----------------------------------------------------------------------------- the spectral embedding

def _chunked_spectral(adata: ad.AnnData, engine: Engine, items: list[tuple], source: CellSource, keep: np.ndarray,
                      peaks: np.ndarray, ranges: list[tuple[int, int]], document_frequency: np.ndarray,
                      depth: np.ndarray, *, n_components: int, binarize: bool, landmarks: int | None, budget: int,
                      random_state: int) -> None:
    """SnapATAC2's spectral embedding on landmark cells, extended to every kept cell by Nystrom; writes
    ``obsm["X_spectral"]`` and ``uns["spectral"]`` as :func:`scaml.atac.run_spectral` does."""
    n_kept = int(keep.sum())
    nnz_per_cell = source.nnz / max(source.n_cells, 1)
    # the landmarks as float64 CSR twice (X and D^-1/2 X), as read, and ARPACK's 2k + 2 vectors
    per_landmark = 32 * nnz_per_cell + 8 * (2 * n_components + 4)
    fits = max(int(0.5 * budget / per_landmark), MIN_CHUNK_CELLS)
    wanted = SPECTRAL_LANDMARKS if landmarks is None else int(landmarks)
    m = min(n_kept, wanted, fits)
    if n_components + 2 > min(m, peaks.size):
        raise ScamlError(f"the spectral embedding of {m} landmark cells x {peaks.size} peaks cannot have "
                         f"{n_components} components; lower --n-pcs or keep more cells and peaks.")
    rng = np.random.default_rng(random_state)
    positions = np.arange(n_kept) if m >= n_kept else np.sort(rng.choice(n_kept, size=m, replace=False))
    weights = idf_from_document_frequency(document_frequency, n_kept)
    with engine.local_pass(f"spectral embedding of {m} landmark cells"):
        rows = weighted_unit_rows(gather_rows(source, keep, peaks, ranges, positions), weights, binarize=binarize)
        values, vectors, degree = eigenpairs(rows, n_components, random_state)
        W, colsum = nystrom_basis(rows, values, vectors, degree)
        del rows
    exact = vectors * np.sqrt(values)
    signs = component_signs(exact)
    if m >= n_kept:
        embedding = exact
    else:
        info(f"spectral embedding on {m} of {n_kept} cells (landmarks), extended to the others by Nystrom")
        embedding = np.concatenate(list(engine.map("spectral extension", spectral_chunk, items, source, peaks,
                                                   binarize, weights, W, colsum, values)))
        embedding[positions] = exact
    store_spectral(adata, (embedding * signs).astype(np.float32), values, depth, binarize=binarize,
                   random_state=random_state, landmarks=int(m), nystrom=bool(m < n_kept))


# ----------------------------------------------------------------------------- the whole path

@dataclass
class ChunkedPeaks:
    """The result of :func:`preprocess_peaks_chunked`; the same interface as :class:`~scaml.chunked.ChunkedCells`.

    Attributes
    ----------
    adata
        The kept cells (``obs``: ``total_counts``, ``n_peaks_by_counts``), kept peaks (``var``:
        ``chrom`` / ``start`` / ``end``, ``n_cells_by_counts``), ``obsm["X_lsi"]``, ``varm["LSI"]``,
        ``uns["lsi"]`` (or, with ``embedding="spectral"``, ``obsm["X_spectral"]`` and ``uns["spectral"]``); no X.
    source, keep, genes, plan, engine, qc_removed
        The input file, the kept cells (mask) and peaks (indices), the chunking, the engine, the QC counts.
    idf, binarize, depth
        What the TF-IDF of a chunk needs; the depth check.
    fragments_qc
        The summary of :func:`scaml.atac.fragment_metrics` when a fragments file was given, else None.
    """

    adata: ad.AnnData
    source: CellSource
    keep: np.ndarray
    genes: np.ndarray
    plan: ChunkPlan
    engine: Engine
    qc_removed: dict[str, int] = field(default_factory=dict)
    idf: np.ndarray = field(default_factory=lambda: np.zeros(0))
    binarize: bool = False
    depth: DepthCheck | None = None
    fragments_qc: dict[str, Any] | None = None

    def ranges(self) -> list[tuple[int, int]]:
        return row_ranges(self.source.n_cells, self.plan.chunk_cells)

    def items(self) -> list[tuple]:
        return [((a, b), self.keep[a:b]) for a, b in self.ranges()]

    def read_cells(self, positions: np.ndarray, *, lognorm: bool = True) -> sp.csr_matrix:
        """TF-IDF (or, ``lognorm=False``, raw counts) of kept cells (positions among them, any order) over the kept peaks."""
        M = gather_rows(self.source, self.keep, self.genes, self.ranges(), positions)
        return tfidf(M, binarize=self.binarize, idf=self.idf) if lognorm else sp.csr_matrix(M, dtype=np.float32)

    def output_chunks(self):
        """(normalised, counts) of every chunk, in order, through the engine."""
        yield from self.engine.map("write integrated.h5ad", matrices_chunk, self.items(), self.source,
                                   self.genes, self.binarize, self.idf)

    def activity_chunks(self, mapping: sp.csr_matrix):
        """(activity, activity) of every chunk's kept cells, in order: counts in the kept peaks @ ``mapping``
        (kept peaks x genes, e.g. :func:`scaml.atac.peak_gene_map` of ``adata.var``)."""
        yield from self.engine.map("write gene_activity.h5ad", activity_chunk, self.items(), self.source,
                                   self.genes, mapping)


def preprocess_peaks_chunked(
    path: str | os.PathLike | CellSource,
    *,
    layer: str | None = None,
    min_counts: int = 50,
    min_peaks: int = 20,
    max_counts: int | None = None,
    min_cells: int = 3,
    binarize: bool = False,
    n_components: int = 30,
    depth_threshold: float | None = DEPTH_CORRELATION_MAX,
    random_state: int = 0,
    fragments: str | os.PathLike | None = None,
    tss: pd.DataFrame | None = None,
    min_fragments: int | None = None,
    embedding: str = "lsi",
    landmarks: int | None = None,
    max_memory: Any = None,
    chunk_cells: int | None = None,
    client: Any = None,
    show_progress: bool = True,
) -> ChunkedPeaks:
    """ATAC QC, TF-IDF, LSI and the depth check of a file's peak counts, chunk by chunk.

    Parameters
    ----------
    path
        An ``.h5ad`` or ``.zarr`` AnnData of peak counts in X (or ``layers[layer]``), stored by row,
        features named ``chr-start-end`` or ``chr:start-end``.
    min_counts, min_peaks, max_counts, min_cells
        The rules of :func:`scaml.atac.qc_filter_peaks` (``min_cells``: cells a peak is seen in).
    binarize
        Binarise the counts before TF-IDF.
    n_components
        LSI components kept (one more is fitted when the depth check may drop one).
    depth_threshold
        |r| with depth above which the most depth-correlated component is dropped (None: keep all).
    random_state
        Seed of the randomized SVD.
    fragments, tss
        A 10x fragments file of these cells: ``obs`` gets ``n_fragments``, ``frip`` (over all the file's
        peaks) and, with ``tss`` (e.g. :func:`scaml.atac.read_gene_annotation`), ``tss_enrichment``, as
        :func:`scaml.atac.fragment_qc` in memory. The file is read in blocks, before the QC pass.
    min_fragments
        With ``fragments``: remove cells with fewer fragments, before the other cell rules (as in memory).
    embedding
        ``"lsi"`` (the randomized SVD above) or ``"spectral"``: SnapATAC2's spectral embedding of
        :func:`scaml.atac.spectral`, computed on ``landmarks`` cells drawn at random (all kept cells when
        there are no more: then the in-memory numbers) and extended to the others by Nystrom, as SnapATAC2
        does for large data; one pass to read the landmarks and one for the extension.
    landmarks
        Landmark cells of the spectral embedding (default :data:`SPECTRAL_LANDMARKS`, fewer when the budget
        cannot hold them).
    max_memory, chunk_cells, client, show_progress
        As :func:`scaml.chunked.preprocess_chunked`.

    Returns
    -------
    ChunkedPeaks

    Raises
    ------
    ScamlError
        Feature names that are not peaks, values that are not counts, a budget too small for one chunk,
        QC that keeps no cell or peak, or too few cells / peaks for ``n_components``.
    """
    if embedding not in ("lsi", "spectral"):
        raise ScamlError(f"unknown ATAC embedding {embedding!r}; use 'lsi' or 'spectral' (--atac-embedding).")
    source, obs, var = open_with_tables(path, layer)
    peaks_meta = ad.AnnData(var=var)
    add_peak_coordinates(peaks_meta)  # refuses names that are not peaks, before any pass
    var = peaks_meta.var
    n_fit = lsi_components_fitted(n_components, depth_threshold, min(source.n_cells, source.n_genes))
    plan = plan_peak_chunks(source, n_fit + N_OVERSAMPLES, max_memory=max_memory, chunk_cells=chunk_cells,
                            fragments=fragments is not None)
    engine = Engine(client, show=show_progress)
    engine.say_where()
    info(f"chunked ATAC preprocessing of {source.n_cells} cells x {source.n_genes} peaks: {plan.n_chunks} chunks of "
         f"{plan.chunk_cells} cells (budget {plan.budget_bytes / 2**30:.2f} GiB)")
    ranges = row_ranges(source.n_cells, plan.chunk_cells)

    # 0. fragments QC of every cell (the file read in blocks); --min-fragments comes before the other rules
    removed: dict[str, int] = {}
    allowed = np.ones(source.n_cells, dtype=bool)
    fragments_summary = None
    if fragments is not None:
        with engine.local_pass("fragments QC (the fragments file read in this process)"):
            metrics, fragments_summary = fragment_metrics(obs.index, var, fragments, tss=tss,
                                                          show_progress=engine.show)
        obs = obs.copy()
        for column in metrics.columns:
            obs[column] = metrics[column].to_numpy()
        if min_fragments is not None:
            allowed = metrics["n_fragments"].to_numpy() >= int(min_fragments)
            removed["cells_removed_min_fragments"] = int((~allowed).sum())
            if not allowed.any():
                raise ScamlError(f"--min-fragments {min_fragments} removes every cell; lower it.")

    # 1. QC
    rules = PeakQCRules(min_counts=min_counts, min_peaks=min_peaks, max_counts=max_counts)
    totals, n_peaks, keeps = [], [], []
    peak_cells = np.zeros(source.n_genes, dtype=np.int64)
    removed.update({f"cells_removed_{name}": 0 for name in ("min_counts", "min_peaks")})
    if max_counts is not None:
        removed["cells_removed_max_counts"] = 0
    for part in engine.map("ATAC QC", qc_chunk, [((a, b), allowed[a:b]) for a, b in ranges], source, rules):
        if part["problem"] is not None:
            (a, b), problem = part["problem"]
            raise ScamlError(f"the ATAC path needs peak counts but {source.key} of {source.path!r} is not a count "
                             f"matrix: cells {a}-{b} hold {problem}. Put the raw peak counts in X or a layer (--layer).")
        totals.append(part["total_counts"])
        n_peaks.append(part["n_peaks_by_counts"])
        keeps.append(part["keep"])
        peak_cells += part["peak_cells"]
        for name, count in part["removed"].items():
            removed[f"cells_removed_{name}"] += count
    keep = np.concatenate(keeps)
    total = np.concatenate(totals)
    if not keep.any():
        raise ScamlError(f"ATAC QC removed every cell ({removed}; median counts per cell {np.median(total):.0f}, median "
                         f"peaks {np.median(np.concatenate(n_peaks)):.0f}); lower --min-counts (now {min_counts}) or "
                         f"--min-peaks (now {min_peaks}).")
    peak_keep = peak_cells >= min_cells
    removed["peaks_removed_min_cells"] = int((~peak_keep).sum())
    if not peak_keep.any():
        raise ScamlError(f"no peak is seen in {min_cells} cells; lower --min-cells (now {min_cells}).")
    peaks = np.flatnonzero(peak_keep)
    n_kept = int(keep.sum())
    info(f"ATAC QC kept {n_kept} cells and {peaks.size} peaks ({removed})")
    n_fit = lsi_components_fitted(n_components, depth_threshold, min(n_kept, peaks.size))
    if n_fit < 2:
        raise ScamlError(f"LSI needs more cells and peaks: {n_kept} cells and {peaks.size} peaks are left after QC.")
    items = [((a, b), keep[a:b]) for a, b in ranges]

    # 2. IDF over the kept cells and peaks
    peak_totals = np.zeros(peaks.size)
    depths = []
    for depth_part, part in engine.map("ATAC IDF", idf_chunk, items, source, peaks, binarize):
        depths.append(depth_part)
        peak_totals += part
    depth = np.concatenate(depths)
    idf = inverse_document_frequency(peak_totals, n_kept)

    obs_kept = obs.iloc[np.flatnonzero(keep)].copy()
    obs_kept["total_counts"] = total[keep]
    obs_kept["n_peaks_by_counts"] = np.concatenate(n_peaks)[keep]
    var_kept = var.iloc[peaks].copy()
    var_kept.index = pd.Index(unique_names(var_kept.index, peaks.size))
    var_kept["n_cells_by_counts"] = peak_cells[peaks]
    adata = ad.AnnData(obs=obs_kept, var=var_kept)
    check = None
    if embedding == "spectral":
        _chunked_spectral(adata, engine, items, source, keep, peaks, ranges, peak_cells[peaks], depth,
                          n_components=n_components, binarize=binarize, landmarks=landmarks, budget=plan.budget_bytes,
                          random_state=random_state)
    else:
        # 3. the randomized SVD; 4. depth check (depth: counts in the kept peaks, as in memory)
        op = _ChunkedOperator(engine, items, source, peaks, binarize, idf, n_kept)
        lsi_embedding, loadings, singular = randomized_lsi(op, n_fit, random_state)
        check = store_lsi(adata, scale_components(lsi_embedding).astype(np.float32), loadings, singular, depth,
                          n_components=n_components, binarize=binarize, depth_threshold=depth_threshold,
                          random_state=random_state)
        adata.uns["lsi"]["chunked_products"] = op.n_products
    return ChunkedPeaks(adata, source, keep, peaks, plan, engine, removed, idf, bool(binarize), check,
                        fragments_summary)
