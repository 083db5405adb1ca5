"""SnapATAC2's spectral embedding of peak counts: Laplacian eigenmaps of the cosine-similarity graph, matrix-free.

The steps of SnapATAC2's ``tl.spectral`` (``distance_metric="cosine"``, the default):

1. each peak is weighted by its IDF, ``log(n_cells / cells with the peak)`` (a peak in no cell counts as
   in one, in every cell as in all but one);
2. each cell's weighted counts are scaled to unit length, so ``S = X X^T`` is the cosine similarity;
3. the degree of a cell is its similarity to all others, ``d = X (X^T 1) - 1`` (no self-loop);
4. the eigenvectors of ``D^-1/2 (S - I) D^-1/2`` with the largest eigenvalues, computed by ARPACK with the
   operator ``v -> Y (Y^T v) - v / d`` (``Y = D^-1/2 X``): the cells x cells matrix is never built;
5. each eigenvector weighted by the square root of its eigenvalue (``weighted_by_sd``), negative
   eigenvalues dropped.

The first eigenvector (eigenvalue 1) is ``D^1/2 1``: it carries only the degree, a depth-like quantity,
and is dropped, as SnapATAC2's users do. On Granja's bone marrow this gives SnapATAC2's embedding
(ARI 0.64 vs its 0.63, cLISI 0.785 vs 0.787; LSI: 0.37 / 0.64; benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..errors import ScamlError


@dataclass(frozen=True)
class SpectralResult:
    """The spectral embedding (cells x components, float32), its eigenvalues and the peaks' IDF weights."""

    embedding: np.ndarray
    eigenvalues: np.ndarray
    idf: np.ndarray


def idf_from_document_frequency(df: np.ndarray, n_cells: int) -> np.ndarray:
    """SnapATAC2's feature weights ``log(n / df)`` from each peak's number of cells (0 -> 1, n -> n - 1; all
    equal: weights 1)."""
    df = np.asarray(df, dtype=np.float64).copy()
    if np.all(df == df[0]):
        return np.ones(df.size)
    df[df == 0] = 1.0
    df[df == n_cells] = n_cells - 1.0
    return np.log(n_cells / df)


def peak_idf(counts: sp.csr_matrix) -> np.ndarray:
    """SnapATAC2's feature weights of a cells x peaks matrix (:func:`idf_from_document_frequency`)."""
    return idf_from_document_frequency(np.bincount(counts.indices, minlength=counts.shape[1]), counts.shape[0])


def weighted_unit_rows(counts: Any, idf: np.ndarray, *, binarize: bool = False) -> sp.csr_matrix:
    """Each cell's counts (binarised first when asked) times the peaks' IDF, scaled to unit length (float64 CSR,
    a copy); a cell without counts stays all-zero."""
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    if binarize:
        X.data[:] = 1.0
    X.data *= idf[X.indices]
    squares = np.zeros(X.shape[0])
    np.add.at(squares, np.repeat(np.arange(X.shape[0]), np.diff(X.indptr)), X.data**2)
    norm = np.sqrt(squares)
    X.data /= np.repeat(np.where(norm > 0, norm, 1.0), np.diff(X.indptr))
    return X


def eigenpairs(X: sp.csr_matrix, n_components: int, random_state: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The eigenpairs of ``D^-1/2 (X X^T - I) D^-1/2`` after the first (largest first, positive eigenvalues only),
    for unit rows ``X`` (:func:`weighted_unit_rows`), and the degrees ``d``; ``X`` is not modified."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    n_cells = X.shape[0]
    degree = X @ np.asarray(X.sum(axis=0)).ravel() - 1.0
    if np.any(degree <= 0):
        raise ScamlError(f"{int((degree <= 0).sum())} cells share no peak with any other cell; the spectral "
                         "embedding needs a connected similarity graph (raise --min-counts or --min-cells).")
    inverse = 1.0 / degree
    Y = sp.csr_matrix(X, copy=True)
    Y.data *= np.repeat(np.sqrt(inverse), np.diff(Y.indptr))  # Y = D^-1/2 X
    Yt = Y.T  # a CSC view: Y^T v without a second copy of the matrix

    def apply(v: np.ndarray) -> np.ndarray:
        v = v.reshape(n_cells, -1)
        return Y @ (Yt @ v) - inverse[:, None] * v

    operator = LinearOperator((n_cells, n_cells), matvec=apply, matmat=apply, dtype=np.float64)
    start = np.random.RandomState(random_state).rand(n_cells)
    values, vectors = eigsh(operator, k=n_components + 1, which="LA", v0=start)
    order = np.argsort(values)[::-1]
    values, vectors = values[order][1:], vectors[:, order][:, 1:]  # the first is D^1/2 1: the degree only
    positive = values > 0
    return values[positive], vectors[:, positive], degree


def component_signs(embedding: np.ndarray) -> np.ndarray:
    """ARPACK's signs are arbitrary: the sign that makes each component's largest |value| positive."""
    signs = np.sign(embedding[np.argmax(np.abs(embedding), axis=0), np.arange(embedding.shape[1])])
    signs[signs == 0] = 1.0
    return signs


def spectral(counts: Any, n_components: int = 30, *, binarize: bool = False, random_state: int = 0) -> SpectralResult:
    """SnapATAC2-style spectral embedding (cosine similarity, matrix-free) of cells x peaks counts.

    Parameters
    ----------
    counts
        Cells x peaks counts (sparse or dense; not modified); every cell needs a count.
    n_components
        Eigenvectors kept after the trivial first one (fewer when some eigenvalues are not positive).
    binarize
        Count a peak once per cell before the weighting (SnapATAC2 takes the matrix as given).
    random_state
        Seed of ARPACK's start vector.

    Returns
    -------
    SpectralResult

    Raises
    ------
    ScamlError
        A cell without counts, or too few cells / peaks for ``n_components``.
    """
    counts = sp.csr_matrix(counts)
    n_cells, n_peaks = counts.shape
    if n_components < 1 or n_components + 2 > min(n_cells, n_peaks):
        raise ScamlError(f"the spectral embedding of {n_cells} cells x {n_peaks} peaks cannot have {n_components} "
                         "components; lower --n-pcs or keep more cells and peaks.")
    X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    X.eliminate_zeros()
    empty = np.flatnonzero(np.diff(X.indptr) == 0)
    if empty.size:
        raise ScamlError(f"{empty.size} cells have no counts in the peaks kept (e.g. row {int(empty[0])}); the "
                         "spectral embedding needs a count in every cell (raise --min-counts / --min-peaks).")
    idf = peak_idf(X)
    values, vectors, _ = eigenpairs(weighted_unit_rows(X, idf, binarize=binarize), n_components, random_state)
    embedding = vectors * np.sqrt(values)
    return SpectralResult((embedding * component_signs(embedding)).astype(np.float32), values, idf)


def nystrom_basis(landmarks: sp.csr_matrix, values: np.ndarray, vectors: np.ndarray,
                  degree: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What extends a landmark embedding to any cell: ``W = X_L^T (u / sqrt(d_L)) / lambda`` (peaks x k) and the
    landmarks' column sums (the degree of a cell against the landmarks is ``x . colsum``)."""
    W = np.asarray(landmarks.T @ (vectors / np.sqrt(degree)[:, None])) / values
    return W, np.asarray(landmarks.sum(axis=0)).ravel()


def nystrom_extend(rows: sp.csr_matrix, W: np.ndarray, colsum: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The Nystrom extension of unit rows (:func:`weighted_unit_rows`): ``u(x) = x W / sqrt(x . colsum)``, weighted
    by ``sqrt(lambda)`` as the landmarks are; cells sharing no peak with a landmark get 0."""
    degree = rows @ colsum
    scale = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    return np.asarray(rows @ W) * scale[:, None] * np.sqrt(values)


def run_spectral(adata: ad.AnnData, n_components: int = 30, *, layer: str | None = None, binarize: bool = False,
                 random_state: int = 0) -> SpectralResult:
    """:func:`spectral` of ``adata``'s peak counts, stored as ``obsm["X_spectral"]`` and ``uns["spectral"]``.

    Parameters
    ----------
    adata
        Cells x peaks; counts in X or ``layers[layer]``.
    n_components, binarize, random_state
        As :func:`spectral`.
    layer
        The layer of counts (None: X).

    Returns
    -------
    SpectralResult
    """
    counts = adata.layers[layer] if layer is not None else adata.X
    result = spectral(counts, n_components, binarize=binarize, random_state=random_state)
    depth = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    store_spectral(adata, result.embedding, result.eigenvalues, depth, binarize=binarize, random_state=random_state)
    return result


def store_spectral(adata: ad.AnnData, embedding: np.ndarray, eigenvalues: np.ndarray, depth: np.ndarray, *,
                   binarize: bool, random_state: int, **extra: Any) -> None:
    """``obsm["X_spectral"]`` and ``uns["spectral"]`` (eigenvalues, each component's correlation with the counts
    per cell, the parameters and ``extra``)."""
    correlations = [float(np.corrcoef(embedding[:, i], depth)[0, 1]) if np.std(depth) > 0 else 0.0
                    for i in range(embedding.shape[1])]
    adata.obsm["X_spectral"] = embedding
    adata.uns["spectral"] = {"n_components": int(embedding.shape[1]),
                             "eigenvalues": [round(float(v), 6) for v in eigenvalues],
                             "depth_correlation": [round(r, 4) for r in correlations],
                             "similarity": "cosine of IDF-weighted counts", "binarize": bool(binarize),
                             "random_state": int(random_state), **extra}
