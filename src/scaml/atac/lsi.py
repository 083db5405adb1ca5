"""Signac's log-TF-IDF, LSI by truncated SVD and the depth check (drop the component that tracks depth)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..errors import ScamlError

#: Signac's DepthCor rule: a component whose |Pearson r| with depth exceeds this is technical.
DEPTH_CORRELATION_MAX = 0.75


def tfidf(counts: Any, *, binarize: bool = False, scale_factor: float = 1e4,
          idf: np.ndarray | None = None, copy: bool = True) -> sp.csr_matrix:
    """Signac's log-TF-IDF (``RunTFIDF(method = 1)``): ``log1p(TF * IDF * scale_factor)``.

    TF is a cell's count of a peak divided by the cell's total; IDF is the number of cells divided
    by the peak's total over all cells. Zeros stay zeros.

    Parameters
    ----------
    counts
        Cells x peaks, non-negative (sparse or dense; not modified).
    binarize
        Count a peak once per cell (accessible or not) before TF-IDF.
    scale_factor
        Signac's ``scale.factor`` (default 10,000).
    idf
        The IDF of each peak when ``counts`` is a chunk of a larger matrix (:func:`inverse_document_frequency`
        of the whole); None computes it from ``counts``.
    copy
        False: ``counts`` (a float32 CSR matrix the caller no longer needs) may be overwritten and
        returned, which saves a copy of a large chunk.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 cells x peaks. Cells or peaks with no counts stay all-zero.
    """
    X = sp.csr_matrix(counts, dtype=np.float32, copy=copy)
    X.eliminate_zeros()
    if binarize:
        X.data[:] = 1.0
    cell_totals = np.asarray(X.sum(axis=1), dtype=np.float64).ravel()
    inv_cell = np.divide(1.0, cell_totals, out=np.zeros_like(cell_totals), where=cell_totals > 0)
    if idf is None:
        idf = inverse_document_frequency(np.asarray(X.sum(axis=0), dtype=np.float64).ravel(), X.shape[0])
    # ((count x 1 / total) x idf) x scale, in float64 and in place: one float64 array and one temporary
    # per stored value at a time (a large chunk's peak memory), the same numbers as the plain product
    values = X.data.astype(np.float64)
    values *= np.repeat(inv_cell, np.diff(X.indptr))
    values *= idf[X.indices]
    values *= scale_factor
    np.log1p(values, out=values)
    X.data = values.astype(np.float32)
    return X


def inverse_document_frequency(peak_totals: np.ndarray, n_cells: int) -> np.ndarray:
    """Signac's IDF: the number of cells over each peak's total (0 for a peak with no counts)."""
    totals = np.asarray(peak_totals, dtype=np.float64)
    return np.divide(n_cells, totals, out=np.zeros_like(totals), where=totals > 0)


def scale_components(embedding: np.ndarray) -> np.ndarray:
    """Each component centred and scaled to unit standard deviation over cells (Signac's ``RunSVD``)."""
    sd = embedding.std(axis=0)
    return (embedding - embedding.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


@dataclass(frozen=True)
class DepthCheck:
    """Which LSI components track sequencing depth.

    Attributes
    ----------
    correlations
        Pearson r of each component with the cells' total counts (Signac's DepthCor).
    dropped
        0-based indices of the components with |r| > ``threshold`` (at most one: the strongest).
    threshold
        The |r| limit used.
    """

    correlations: np.ndarray
    dropped: list[int]
    threshold: float

    def describe(self) -> str:
        """One sentence for the log and the report."""
        r = self.correlations
        if not self.dropped:
            top = int(np.argmax(np.abs(r)))
            return (f"no LSI component correlates with depth beyond |r| = {self.threshold:g} "
                    f"(strongest: LSI {top + 1}, r = {r[top]:.2f}); all components kept")
        i = self.dropped[0]
        return (f"LSI component {i + 1} correlates with sequencing depth (r = {r[i]:.2f}, |r| > {self.threshold:g}, "
                "as Signac's DepthCor) and was dropped")


def depth_check(embedding: np.ndarray, depth: np.ndarray, threshold: float = DEPTH_CORRELATION_MAX) -> DepthCheck:
    """Pearson correlation of each component with depth; the most correlated one is dropped above ``threshold``."""
    E = np.asarray(embedding, dtype=np.float64)
    d = np.asarray(depth, dtype=np.float64).ravel()
    Ec = E - E.mean(axis=0)
    dc = d - d.mean()
    denom = np.sqrt((Ec ** 2).sum(axis=0) * (dc ** 2).sum())
    r = np.divide(Ec.T @ dc, denom, out=np.zeros(E.shape[1]), where=denom > 0)
    top = int(np.argmax(np.abs(r))) if r.size else 0
    dropped = [top] if r.size and abs(r[top]) > threshold else []
    return DepthCheck(correlations=r, dropped=dropped, threshold=float(threshold))


def lsi(
    normalized: Any,
    n_components: int = 30,
    *,
    random_state: int = 0,
    scale_embeddings: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LSI: truncated SVD of a TF-IDF matrix (scikit-learn's randomized ``TruncatedSVD``).

    As Signac's ``RunSVD``, the cell embedding is U * S, each component then centred and scaled to unit
    standard deviation (``scale_embeddings``).

    Parameters
    ----------
    normalized
        Cells x peaks (e.g. :func:`tfidf`), sparse or dense.
    n_components
        Components to compute (fewer than both dimensions).
    random_state
        Seed of the randomized SVD.
    scale_embeddings
        Centre and scale each component over cells.

    Returns
    -------
    embedding, loadings, singular_values
        float32 cells x components, float32 peaks x components, and the singular values.
    """
    from sklearn.decomposition import TruncatedSVD

    n_obs, n_vars = normalized.shape
    limit = min(n_obs, n_vars) - 1
    if n_components > limit or n_components < 2:
        raise ScamlError(
            f"LSI with {n_components} components needs more cells and peaks than that; there are {n_obs} cells and "
            f"{n_vars} peaks. Use --n-pcs between 2 and {max(2, limit)}."
        )
    svd = TruncatedSVD(n_components=n_components, algorithm="randomized", n_iter=7, random_state=random_state)
    embedding = svd.fit_transform(normalized)  # = U * S
    if scale_embeddings:
        embedding = scale_components(embedding)
    return (np.ascontiguousarray(embedding, dtype=np.float32), svd.components_.T.astype(np.float32),
            svd.singular_values_.astype(np.float64))


def run_lsi(
    adata: ad.AnnData,
    n_components: int = 30,
    *,
    binarize: bool = False,
    depth_threshold: float | None = DEPTH_CORRELATION_MAX,
    random_state: int = 0,
    key_added: str = "X_lsi",
) -> DepthCheck | None:
    """TF-IDF, LSI and the depth check on the peak counts of ``adata`` (in place).

    The counts are read from ``layers["counts"]`` when present, else from X. Writes X (the TF-IDF
    values), ``layers["counts"]`` (the counts, if not there yet), ``obsm[key_added]`` (the components
    kept), ``varm["LSI"]`` (loadings of those components) and ``uns["lsi"]`` (singular values, depth
    correlations, dropped component, parameters). One component more than ``n_components`` is computed
    so that, after the depth component is dropped, ``n_components`` remain.

    Parameters
    ----------
    adata
        Peak counts.
    n_components
        LSI components kept.
    binarize
        Binarise the counts before TF-IDF.
    depth_threshold
        |r| above which the component most correlated with depth is dropped; None keeps every component.
    random_state
        Seed of the SVD.
    key_added
        ``obsm`` key of the embedding.

    Returns
    -------
    DepthCheck or None
        The depth check (None when ``depth_threshold`` is None).
    """
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    if "counts" not in adata.layers:
        adata.layers["counts"] = sp.csr_matrix(counts, dtype=np.float32, copy=True)
    depth = np.asarray(counts.sum(axis=1)).ravel()
    normalized = tfidf(counts, binarize=binarize)
    n_fit = lsi_components_fitted(n_components, depth_threshold, min(adata.shape))
    embedding, loadings, singular = lsi(normalized, n_fit, random_state=random_state)
    adata.X = normalized
    return store_lsi(adata, embedding, loadings, singular, depth, n_components=n_components, binarize=binarize,
                     depth_threshold=depth_threshold, random_state=random_state, key_added=key_added)


def lsi_components_fitted(n_components: int, depth_threshold: float | None, smallest_dim: int) -> int:
    """Components to fit: one more than kept when the depth check may drop one (at most ``smallest_dim - 1``)."""
    extra = 1 if depth_threshold is not None else 0
    return min(n_components + extra, smallest_dim - 1)


def store_lsi(adata: ad.AnnData, embedding: np.ndarray, loadings: np.ndarray, singular: np.ndarray,
              depth: np.ndarray, *, n_components: int, binarize: bool, depth_threshold: float | None,
              random_state: int, key_added: str = "X_lsi") -> DepthCheck | None:
    """The depth check on a fitted LSI, then ``obsm[key_added]``, ``varm["LSI"]`` and ``uns["lsi"]`` (see :func:`run_lsi`)."""
    n_fit = embedding.shape[1]
    check = depth_check(embedding, depth, depth_threshold) if depth_threshold is not None else None
    keep = [i for i in range(n_fit) if check is None or i not in check.dropped][:n_components]
    adata.obsm[key_added] = np.ascontiguousarray(embedding[:, keep])
    adata.varm["LSI"] = loadings[:, keep]
    adata.uns["lsi"] = {
        "singular_values": singular,
        "components_kept": np.asarray(keep, dtype=np.int64) + 1,
        "params": {"n_components": int(len(keep)), "binarize": bool(binarize),
                   "depth_threshold": None if depth_threshold is None else float(depth_threshold),
                   "tfidf": "Signac method 1: log1p(TF * IDF * 1e4)", "random_state": int(random_state)},
    }
    if check is not None:
        adata.uns["lsi"]["depth_correlation"] = check.correlations
        adata.uns["lsi"]["depth_component_dropped"] = int(check.dropped[0] + 1) if check.dropped else 0
    return check
