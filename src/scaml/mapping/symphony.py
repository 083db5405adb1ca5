"""Symphony-style reference mapping on a reference integrated with scaml's Harmony (Kang et al. 2021).

Building a reference keeps what mapping needs:

* the gene space: the reference's highly variable genes, their means and standard deviations
  (after library-size normalisation to 10^4 and log1p) and the PCA loadings ``U`` (genes x d);
* the Harmony model: centroids ``Y`` (d x K, unit columns, recomputed from the corrected
  reference as Symphony does), ``sigma`` and the per-cluster compression terms
  ``Nr[k] = sum_i R_ik`` and ``C[k] = sum_i R_ik z_corr_i`` of the corrected reference;
* for the mapping confidence: the mean and precision (inverse covariance) of the corrected
  reference cells in each soft cluster, and the distribution of the reference cells' own
  distances to their clusters.

A reference with a single batch (``batch_key`` with one level, or ``batch_key=None``) needs no
integration: its PCA embedding is kept as is and scaml's Harmony is run on it with that one batch,
as symphonypy does, for its soft clusters only (with one batch Harmony's diversity penalty is flat
and its ridge correction is zero, so what remains is its clustering: k-means start, blockwise soft
k-means rounds, ``sigma``), so ``Y``, ``Nr`` and ``C`` exist and the query's correction works as
with several batches. Harmony's clustering maps kang_ifnb1k's STIM cells onto its CTRL cells
better than a plain soft k-means from the same start (benchmarks/README.md, bench_transfer).

Mapping a query: normalise and log1p like the reference (raw counts) or take the log data as is,
align genes by name (genes missing in the query are zero before scaling), scale with the
reference's means / standard deviations (clipped at 10), project with ``U``, soft-assign to the
reference centroids (``R_q = softmax(-2 (1 - z_cos . y_k) / sigma_k)``) and correct with the
mixture-of-experts ridge regression of Symphony: for every cluster k, regress the query's
coordinates on ``[1, query batch one-hot]`` with weights ``R_q[:, k]``, where the intercept's row of
the normal equations also holds the reference's ``Nr[k]`` and ``C[k]`` (so the intercept is
anchored on the reference and only the query moves), ``lambda = 1`` on the batch terms, and subtract
the batch terms: ``z_corr = z - sum_k R_q[:, k] W_k[batch]``.

Symphony assigns the query once, from its uncorrected projection. A query shifted by a perturbation
(IFN-beta stimulated PBMCs onto a control reference) is then assigned to the wrong clusters before
it is corrected. scaml repeats the two steps as Harmony does (``iterations``, default 3): the soft
assignments are recomputed from the corrected coordinates and the original projection is corrected
again with them; the reference is never changed. The mapping confidence below is computed after the
first pass, since later passes also pull foreign cells onto the clusters they were assigned to. On kang_ifnb1k CTRL -> STIM this raised the kNN
accuracy from 0.639 (one pass) to 0.723 (benchmarks/README.md, bench_mapping).

Mapping confidence (per query cell, in [0, 1]): the soft-assignment-weighted squared Mahalanobis
distance of the cell's coordinates after the first correction pass to the reference clusters (mean
and covariance of the corrected reference cells in each soft cluster; the 5 nearest clusters of the cell), compared with
the same statistic of the reference cells: ``confidence = min(1, 2 p)`` where ``p`` is the fraction of
reference cells at least as far from their own clusters. Cells as typical as the median reference
cell get 1; cells farther than every reference cell get 0.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ScamlError
from ..manifest import manifest_header, read_manifest

FORMAT = "scaml-symphony-reference"
FORMAT_VERSION = 1
_ARRAYS = "reference.npz"
_META = "reference.json"
_OBS = "obs.csv"
_CLIP = 10.0
_N_QUANTILES = 1001
#: Rounds of soft assignment + correction of a query (1 = Symphony's single pass).
QUERY_ITERATIONS = 3


# ----------------------------------------------------------------------------- helpers


def _log_expression(adata: Any, what: str) -> tuple[Any, str]:
    """The log-normalised expression of ``adata`` by scaml's one rule, and what it was taken as.

    :func:`scaml.preprocess.lognormalized`: ``layers["counts"]`` when it holds counts, else X;
    counts (integer or counts-like, far above log scale) are normalised to 10^4 per cell and
    log1p'd, log-normalised values taken as they are, negative values refused.
    Returns the matrix (float32, sparse kept sparse) and ``"counts"`` or ``"log-normalised"``.
    """
    from .._utils import info
    from ..preprocess import lognormalized

    X, found = lognormalized(adata, "auto")
    step = "normalising to 10,000 per cell and log1p" if found.kind == "counts" else "used as it is"
    info(f"{what}: {found.reason}; {step}.")
    return X, "counts" if found.kind == "counts" else "log-normalised"


def _mean_sd(X: Any) -> tuple[np.ndarray, np.ndarray]:
    n = X.shape[0]
    mean = np.asarray(X.mean(axis=0)).reshape(-1).astype(np.float64)
    sq = np.asarray(
        X.multiply(X).mean(axis=0) if sp.issparse(X) else (X.astype(np.float64) ** 2).mean(axis=0)
    )
    var = (sq.reshape(-1) - mean**2) * n / max(n - 1, 1)
    sd = np.sqrt(np.maximum(var, 0))
    sd[sd == 0] = 1.0
    return mean, sd


def _scale(X: Any, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    dense = X.toarray() if sp.issparse(X) else np.asarray(X)
    out = (dense.astype(np.float32) - mean.astype(np.float32)) / sd.astype(np.float32)
    np.clip(out, -_CLIP, _CLIP, out=out)
    return out


def _soft_assign(Z: np.ndarray, Y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    Zc = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    logits = -2.0 * (1.0 - Zc @ Y) / sigma[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    R = np.exp(logits)
    R /= R.sum(axis=1, keepdims=True)
    return R


def _cluster_gaussians(Z: np.ndarray, R: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per soft cluster: weighted mean (K x d) and Cholesky factor L of the precision (K x d x d)."""
    K, d = R.shape[1], Z.shape[1]
    w = R.sum(axis=0)
    mu = (R.T @ Z) / np.maximum(w, 1e-12)[:, None]
    chol = np.empty((K, d, d))
    global_var = np.var(Z, axis=0).mean()
    for k in range(K):
        diff = Z - mu[k]
        cov = (diff * R[:, k : k + 1]).T @ diff / max(w[k], 1e-12)
        cov += np.eye(d) * (1e-3 * np.trace(cov) / d + 1e-6 * global_var)
        chol[k] = np.linalg.cholesky(np.linalg.inv(cov))
    return mu, chol


def _mahalanobis(Z: np.ndarray, R: np.ndarray, mu: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """R-weighted squared Mahalanobis distance of each row of Z to the clusters (top clusters only)."""
    n, K = R.shape
    out = np.zeros(n)
    top = np.argsort(-R, axis=1)[:, : min(5, K)]
    for k in np.unique(top):
        rows = np.flatnonzero((top == k).any(axis=1))
        proj = (Z[rows] - mu[k]) @ chol[k]
        out[rows] += R[rows, k] * np.einsum("ij,ij->i", proj, proj)
    wsum = np.take_along_axis(R, top, axis=1).sum(axis=1)
    return out / np.maximum(wsum, 1e-12)


def _batch_design(
    obs: pd.DataFrame | None, key: str | None, n: int
) -> tuple[np.ndarray, list[str]]:
    if key is None:
        return np.zeros(n, dtype=np.int64), ["query"]
    if obs is None or key not in obs.columns:
        from ..errors import missing_key_error

        raise missing_key_error(
            key, [] if obs is None else obs.columns, "the query's obs", flag="--query-batch-key"
        )
    col = obs[key]
    if col.isna().any():
        raise ScamlError(
            f"query batch column {key!r} has missing values; label those cells or remove them."
        )
    cat = pd.Categorical(col).remove_unused_categories()
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def _moe_correct_query(Zq, Rq, codes, n_batches, Nr, C, lamb: float = 1.0) -> np.ndarray:
    """Symphony's mixture-of-experts correction anchored on the reference's Nr / C."""
    K, d = C.shape
    onehot = np.zeros((Zq.shape[0], n_batches))
    onehot[np.arange(Zq.shape[0]), codes] = 1.0
    Z64 = Zq.astype(np.float64)
    # per batch sums of R and of R-weighted coordinates, all clusters at once
    Rb = onehot.T @ Rq  # B x K
    ZRb = np.stack([Z64[codes == b].T @ Rq[codes == b] for b in range(n_batches)])  # B x d x K
    delta = np.zeros((n_batches, K, d))
    for k in range(K):
        ob = Rb[:, k]
        cov = np.zeros((n_batches + 1, n_batches + 1))
        cov[0, 0] = ob.sum() + Nr[k]
        cov[0, 1:] = cov[1:, 0] = ob
        cov[1:, 1:] = np.diag(ob + lamb)
        rhs = np.zeros((n_batches + 1, d))
        rhs[1:] = ZRb[:, :, k]
        rhs[0] = rhs[1:].sum(axis=0) + C[k]
        W = np.linalg.solve(cov, rhs)
        delta[:, k] = W[1:]
    out = Z64.copy()
    for b in range(n_batches):
        rows = codes == b
        out[rows] -= Rq[rows] @ delta[b]
    return out


# ----------------------------------------------------------------------------- results


@dataclass
class SymphonyMapping:
    """Result of :meth:`SymphonyReference.map`.

    Attributes
    ----------
    embedding
        Query cells x n_comps, corrected into the reference's Harmony space (float32).
    confidence
        Per-cell mapping confidence in [0, 1] (see the module docstring).
    R
        Query cells x K soft assignments to the reference clusters.
    mahalanobis
        The R-weighted squared Mahalanobis distance behind ``confidence``.
    obs_names
        The query's cell names.
    genes_shared
        Number of reference genes found in the query.
    """

    embedding: np.ndarray
    confidence: np.ndarray
    R: np.ndarray
    mahalanobis: np.ndarray
    obs_names: list[str]
    genes_shared: int


class SymphonyReference:
    """A Harmony-integrated reference and everything needed to map queries onto it.

    Build with :func:`build_symphony_reference`, persist with :meth:`save` / :meth:`load`, map with
    :meth:`map`.
    """

    def __init__(
        self,
        *,
        embedding: np.ndarray,
        obs: pd.DataFrame,
        var_names: list[str],
        batch_key: str | None,
        label_key: str | None,
        params: dict[str, Any],
        arrays: dict[str, np.ndarray],
    ) -> None:
        self.embedding = np.asarray(embedding, dtype=np.float32)
        self.obs = obs
        self.var_names = list(var_names)
        self.batch_key = batch_key
        self.label_key = label_key
        self.params = params
        self._arrays = arrays

    def __repr__(self) -> str:
        return (
            f"SymphonyReference({self.embedding.shape[0]} cells, {len(self.var_names)} genes, "
            f"{self.embedding.shape[1]} PCs, {self._arrays['Y'].shape[1]} clusters, batch_key={self.batch_key!r}, "
            f"label_key={self.label_key!r})"
        )

    # ------------------------------------------------------------------ mapping

    def map(
        self, adata_query: Any, query_batch_key: str | None = None, random_state: int = 0,
        iterations: int = QUERY_ITERATIONS,
    ) -> SymphonyMapping:
        """Map query cells into the reference's Harmony space.

        Parameters
        ----------
        adata_query
            AnnData with raw counts (``layers["counts"]`` used if present, else ``X``) or
            log-normalised ``X``; genes matched to the reference by name.
        query_batch_key
            Column of ``adata_query.obs`` with the query's batches (corrected separately); None
            treats the whole query as one batch.
        random_state
            Accepted for a uniform API; the mapping is deterministic.
        iterations
            Rounds of soft assignment and correction (see the module docstring): 1 is Symphony's
            single pass; the default, 3, re-assigns the query's cells from their corrected
            coordinates twice, which helps a query shifted by a perturbation.

        Returns
        -------
        SymphonyMapping
            ``embedding`` (query cells x n_comps, float32), ``confidence``, ``R``.
        """
        from .._utils import info, warn

        del random_state  # deterministic
        a = self._arrays
        query_genes = pd.Index([str(g) for g in adata_query.var_names])
        if not query_genes.is_unique:
            raise ScamlError(
                "the query's var_names are not unique; call adata.var_names_make_unique() first."
            )
        pos = query_genes.get_indexer(self.var_names)
        shared = int((pos >= 0).sum())
        if shared == 0:
            raise ScamlError(
                f"the query shares none of the reference's {len(self.var_names)} genes (e.g. "
                f"{self.var_names[:3]} vs the query's {list(query_genes[:3])}); use the same gene naming "
                "(symbols vs Ensembl IDs) in both."
            )
        info(
            f"query: {shared} of the reference's {len(self.var_names)} genes found ({shared / len(self.var_names):.0%})."
        )
        if shared < 0.5 * len(self.var_names):
            warn(
                f"the query has only {shared} of the reference's {len(self.var_names)} genes; the mapping may be poor."
            )
        X, _ = _log_expression(adata_query, "query")
        Xs = X[:, pos[pos >= 0]]
        n = X.shape[0]
        full = np.zeros((n, len(self.var_names)), dtype=np.float32)
        full[:, pos >= 0] = Xs.toarray() if sp.issparse(Xs) else np.asarray(Xs)
        scaled = _scale(full, a["gene_mean"], a["gene_sd"])
        del full
        Zq = scaled @ a["loadings"].astype(np.float32)
        del scaled
        if int(iterations) != iterations or iterations < 1:
            raise ScamlError(f"iterations must be a whole number >= 1; got {iterations!r}.")
        codes, _ = _batch_design(adata_query.obs, query_batch_key, n)
        Zq_corr = Zq.astype(np.float64)
        for step in range(int(iterations)):
            # assign from the latest corrected coordinates, correct the original projection again
            Rq = _soft_assign(Zq_corr, a["Y"], a["sigma"])
            Zq_corr = _moe_correct_query(Zq, Rq, codes, int(codes.max()) + 1, a["Nr"], a["C"])
            if step == 0:
                # the confidence is judged after Symphony's single pass: later passes pull every
                # cell, foreign ones too, onto the clusters it was assigned to
                maha = _mahalanobis(
                    Zq_corr, _soft_assign(Zq_corr, a["Y"], a["sigma"]), a["mu"], a["prec_chol"]
                )
        qs = a["ref_maha_quantiles"]
        p = 1.0 - np.searchsorted(qs, maha, side="left") / len(qs)
        confidence = np.clip(2.0 * p, 0.0, 1.0)
        return SymphonyMapping(
            embedding=Zq_corr.astype(np.float32),
            confidence=confidence.astype(np.float32),
            R=Rq.astype(np.float32),
            mahalanobis=maha.astype(np.float32),
            obs_names=[str(c) for c in adata_query.obs_names],
            genes_shared=shared,
        )

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write the reference to ``directory`` (``reference.npz``, ``reference.json``, ``obs.csv``),
        each file atomically. Returns the directory."""
        from ..io import write_csv, write_json, write_npz

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = dict(self._arrays)
        arrays["embedding"] = self.embedding
        write_npz(arrays, directory / _ARRAYS)
        write_csv(self.obs, directory / _OBS)
        write_json(
            {
                **manifest_header(FORMAT, FORMAT_VERSION, kind_field="format"),
                "batch_key": self.batch_key,
                "label_key": self.label_key,
                "var_names": self.var_names,
                "obs_columns": list(self.obs.columns),
                "params": self.params,
                "arrays": sorted(arrays),
            },
            directory / _META,
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> SymphonyReference:
        """Read a reference written by :meth:`save`; ScamlError when files are missing or incompatible."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ScamlError(
                f"reference directory {str(directory)!r} does not exist; build one with `scaml reference build`."
            )
        missing = [f for f in (_ARRAYS, _META, _OBS) if not (directory / f).is_file()]
        if missing:
            raise ScamlError(
                f"{str(directory)!r} is not a complete scaml Symphony reference: missing {', '.join(missing)}. "
                "Rebuild it with `scaml reference build`."
            )
        meta = read_manifest(directory / _META, kind=FORMAT, format_version=FORMAT_VERSION, kind_field="format",
                             what="scaml Symphony reference",
                             rebuild="Rebuild the reference with this version of scaml (`scaml reference build`).")
        with np.load(directory / _ARRAYS, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        needed = set(meta.get("arrays", [])) | {
            "embedding",
            "loadings",
            "gene_mean",
            "gene_sd",
            "Y",
            "Nr",
            "C",
        }
        absent = sorted(needed - set(arrays))
        if absent:
            raise ScamlError(
                f"{_ARRAYS} in {str(directory)!r} lacks arrays {absent}; rebuild the reference."
            )
        obs = pd.read_csv(directory / _OBS, index_col=0, dtype=str, keep_default_na=False)
        obs.index = obs.index.astype(str)
        embedding = arrays.pop("embedding")
        if embedding.shape[0] != obs.shape[0] or arrays["loadings"].shape[0] != len(
            meta["var_names"]
        ):
            raise ScamlError(
                f"the files in {str(directory)!r} do not belong together (sizes differ); rebuild the reference."
            )
        return cls(
            embedding=embedding,
            obs=obs,
            var_names=meta["var_names"],
            batch_key=meta["batch_key"],
            label_key=meta.get("label_key"),
            params=meta.get("params", {}),
            arrays=arrays,
        )


# ----------------------------------------------------------------------------- building


def build_symphony_reference(
    adata_ref: Any,
    batch_key: str | None,
    *,
    label_key: str | None = None,
    n_hvg: int = 2000,
    n_comps: int = 30,
    theta: float = 2.0,
    nclust: int | None = None,
    random_state: int = 0,
    **harmony_params: Any,
) -> SymphonyReference:
    """Build a Symphony reference: normalise, HVGs, scale, PCA, scaml's Harmony, compression terms.

    ``adata_ref`` is not modified.

    Parameters
    ----------
    adata_ref
        Reference cells: raw counts (``layers["counts"]`` if present, else ``X``) or log-normalised
        ``X`` (detected; raw counts are normalised to 10^4 per cell and log1p).
    batch_key
        Column of ``adata_ref.obs`` with the reference batches (integrated by Harmony). A column
        with a single level, or None (all cells are one batch), builds a reference without
        integration: the PCA embedding is kept and only Harmony's soft clustering is run.
    label_key
        Optional column with cell labels kept in ``ref.obs`` (for label transfer).
    n_hvg
        Highly variable genes (:func:`scaml.preprocess.highly_variable_genes`: seurat flavour per
        batch on the log data; more than the data has: every gene, with a warning).
    n_comps
        Principal components.
    theta, nclust, random_state, **harmony_params
        Passed to :func:`scaml.harmony.run_harmony`. With a single batch Harmony runs for its
        clustering only; ``theta``, ``lamb`` and ``tau`` have no effect there.

    Returns
    -------
    SymphonyReference
    """
    batches, n_batches = _reference_batches(adata_ref, batch_key, label_key, n_hvg, n_comps)
    X, kind = _log_expression(adata_ref, "reference")
    var_names = pd.Index([str(g) for g in adata_ref.var_names])
    if not var_names.is_unique:
        raise ScamlError(
            "the reference's var_names are not unique; call adata.var_names_make_unique() first."
        )
    hvg, mean, sd, loadings, Z = _gene_space(X, n_hvg, n_comps, batches, n_batches, var_names, random_state)
    if n_batches > 1:
        embedding, R, sigma, model_info = _harmony_embedding(
            Z, adata_ref.obs[[batch_key]], batch_key, theta, nclust, random_state, harmony_params
        )
    else:
        which = (
            "all cells are one batch (batch_key=None)"
            if batch_key is None
            else f"{batch_key!r} has a single level ({batches[0]!r})"
        )
        embedding, R, sigma, model_info = _single_batch_embedding(Z, which, nclust, random_state, harmony_params)
    cols = ([batch_key] if batch_key is not None else []) + (
        [label_key] if label_key is not None and label_key != batch_key else []
    )
    obs = adata_ref.obs[cols].astype(str).copy()
    obs.index = [str(c) for c in adata_ref.obs_names]
    info_params = {
        "n_hvg": int(len(hvg)),
        "n_comps": int(n_comps),
        "theta": theta,
        "nclust": int(R.shape[1]),
        "random_state": random_state,
        "input": kind,
        "n_batches": int(n_batches),
        **model_info,
    }
    arrays = {"gene_mean": mean, "gene_sd": sd, "loadings": loadings, **_cluster_terms(embedding, R, sigma)}
    return SymphonyReference(
        embedding=embedding,
        obs=obs,
        var_names=list(var_names[hvg]),
        batch_key=batch_key,
        label_key=label_key,
        params=info_params,
        arrays=arrays,
    )


def _reference_batches(
    adata_ref: Any, batch_key: str | None, label_key: str | None, n_hvg: int, n_comps: int
) -> tuple[np.ndarray, int]:
    """Check the keys and sizes; each reference cell's batch and the number of batches."""
    from ..io import check_obs_key

    n_cells, n_genes = adata_ref.shape
    if batch_key is None:
        batches = np.full(n_cells, "reference", dtype=object)
    else:
        column = check_obs_key(adata_ref, batch_key, flag="--batch-key", min_levels=1)
        if column.isna().any():
            raise ScamlError(
                f"reference batch column {batch_key!r} has {int(column.isna().sum())} missing values; "
                "label those cells or remove them."
            )
        batches = column.astype(str).to_numpy()
    if label_key is not None:
        check_obs_key(adata_ref, label_key, flag="--label-key", min_levels=1)
    if n_comps < 2 or n_comps >= min(n_cells, n_genes):
        raise ScamlError(
            f"n_comps must be between 2 and {min(n_cells, n_genes) - 1} for this reference; got {n_comps}."
        )
    if n_hvg < n_comps:
        raise ScamlError(f"n_hvg ({n_hvg}) must be at least n_comps ({n_comps}).")
    return batches, len(pd.unique(batches))


def _gene_space(
    X: Any, n_hvg: int, n_comps: int, batches: np.ndarray, n_batches: int, var_names: pd.Index, random_state: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Highly variable genes, their means / standard deviations, PCA loadings and the cells' PCA coordinates."""
    from sklearn.utils.extmath import randomized_svd

    from ..preprocess import highly_variable_genes

    mask = highly_variable_genes(X, n_hvg, batch=batches if n_batches > 1 else None, var_names=var_names)
    hvg = np.flatnonzero(mask)
    Xh = X[:, hvg]
    mean, sd = _mean_sd(Xh)
    scaled = _scale(Xh, mean, sd)
    _, _, Vt = randomized_svd(scaled, n_components=n_comps, random_state=random_state, n_iter=7)
    loadings = Vt.T.astype(np.float32)  # genes x n_comps
    return hvg, mean, sd, loadings, scaled @ loadings


def _harmony_embedding(
    Z: np.ndarray, obs: pd.DataFrame, batch_key: str, theta: float, nclust: int | None, random_state: int,
    harmony_params: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Harmony on the reference's PCA: corrected embedding, soft clusters R, sigma per cluster, summary."""
    from ..harmony import run_harmony

    params = dict(harmony_params)
    params.setdefault("verbose", False)
    ho = run_harmony(Z, obs, batch_key, theta=theta, nclust=nclust, random_state=random_state, **params)
    K = int(ho.K)
    sigma = np.asarray(ho.params["sigma"], dtype=np.float64) * np.ones(K)
    model_info: dict[str, Any] = {
        "integration": "harmony",
        "harmony": ho.params,
        "harmony_n_iter": ho.n_iter,
        "harmony_converged": ho.converged,
    }
    return ho.Z_corr.astype(np.float32), ho.R.astype(np.float64), sigma, model_info


def _single_batch_embedding(
    Z: np.ndarray, which: str, nclust: int | None, random_state: int, harmony_params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """A single-batch reference: its PCA kept as is, and Harmony's soft clusters of it (see the module docstring)."""
    from .._utils import info
    from ..harmony import run_harmony
    from ..harmony.core import Design, HarmonyParams, harmonize

    n_cells = Z.shape[0]
    K = max(int(min(round(n_cells / 30.0), 100)), 1) if nclust is None else nclust
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 1 <= K <= n_cells:
        raise ScamlError(
            f"nclust must be a positive integer at most the number of cells ({n_cells}); got {nclust!r}."
        )
    K = int(K)
    sigma = np.atleast_1d(np.asarray(harmony_params.get("sigma", 0.1), dtype=np.float64)).reshape(-1)
    if sigma.size == 1:
        sigma = np.repeat(sigma, K)
    if sigma.size != K or not np.all(np.isfinite(sigma)) or np.any(sigma <= 0):
        raise ScamlError(
            f"sigma must be one positive number or one per cluster ({K}); got {sigma[:5].tolist()}."
        )
    unknown = sorted(set(harmony_params) - set(inspect.signature(run_harmony).parameters))
    if unknown:
        raise ScamlError(
            f"unknown Harmony parameter(s) {unknown}; see scaml.harmony.run_harmony for the names."
        )
    unused = sorted(set(harmony_params) & {"theta", "lamb", "tau"})
    info(
        f"reference: {which}; no Harmony correction is needed, running only its soft clustering "
        f"({K} clusters) for the query's correction"
        + (f" (not used with one batch: {', '.join(unused)})." if unused else ".")
    )
    usable = set(inspect.signature(HarmonyParams).parameters) - {"sigma", "nclust", "random_state", *unused}
    params = {k: v for k, v in harmony_params.items() if k in usable}
    hp = HarmonyParams(sigma=sigma.tolist(), nclust=K, random_state=random_state, **params)
    design = Design(codes=np.zeros((n_cells, 1), dtype=np.int64), n_levels=[1])
    state = harmonize(np.ascontiguousarray(Z, dtype=np.float32), design, hp)
    model_info = {
        "integration": "none (single batch)",
        "harmony_clustering": {
            "sigma": float(sigma[0]) if np.all(sigma == sigma[0]) else sigma.tolist(),
            "n_iter": int(state.n_iter),
            "converged": bool(state.converged),
            "objective": float(state.objective_harmony[-1]),
        },
    }
    return Z.astype(np.float32), np.asarray(state.R, dtype=np.float64), sigma, model_info


def _cluster_terms(embedding: np.ndarray, R: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """What mapping needs of the soft clusters: centroids Y, Nr, C, and the confidence statistics."""
    Zc = embedding.astype(np.float64)
    Nr = R.sum(axis=0)
    C = R.T @ Zc  # K x d
    Y = C.T / np.maximum(np.linalg.norm(C.T, axis=0, keepdims=True), 1e-12)  # d x K, unit columns
    R_ref = _soft_assign(Zc, Y, sigma)
    mu, chol = _cluster_gaussians(Zc, R_ref)
    ref_maha = _mahalanobis(Zc, R_ref, mu, chol)
    quantiles = np.quantile(ref_maha, np.linspace(0, 1, _N_QUANTILES))
    return {"Y": Y, "sigma": sigma, "Nr": Nr, "C": C, "mu": mu, "prec_chol": chol, "ref_maha_quantiles": quantiles}
