"""User API of scaml's Harmony: ``run_harmony`` (arrays, harmonypy-compatible) and
``harmony_integrate`` (AnnData, scanpy-compatible)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScamlError, missing_key_error
from .core import Design, HarmonyParams, HarmonyState, harmonize


class Harmony:
    """The result of :func:`run_harmony` (attribute names as in harmonypy 2.x).

    Attributes
    ----------
    Z_corr : np.ndarray
        Corrected embedding, cells x PCs (same orientation as the input).
    Z_cos : np.ndarray
        ``Z_corr`` with every cell scaled to unit length (what Harmony clusters on), cells x PCs.
    Z_orig : np.ndarray
        The input embedding, cells x PCs.
    R : np.ndarray
        Soft cluster assignments, cells x clusters; each row sums to one.
    Y : np.ndarray
        Cluster centroids, PCs x clusters (unit-length columns, in cosine space).
    O, E : np.ndarray
        Observed and expected cells of each batch in each cluster, clusters x batches.
    K : int
        Number of clusters.
    objective_harmony : list of float
        Objective after the initial clustering and after each Harmony iteration's clustering.
    objective_kmeans : list of float
        Objective at each evaluated clustering round (rounds where no convergence check can happen
        are not evaluated, e.g. the first three of four).
    kmeans_rounds : list of int
        Clustering rounds run in each Harmony iteration.
    n_iter : int
        Harmony iterations run.
    seconds : dict
        Time spent in each phase (k-means start, clustering, objective, correction ...).
    converged : bool
        Whether Harmony stopped on ``epsilon_harmony`` before ``max_iter_harmony``.
    params : dict
        All parameters, resolved (``nclust``, per-batch ``theta``, backend and device used ...).
    batches : list of str
        The batch levels in the order of the columns of ``O`` / ``E`` (``"covariate=level"``).
    info : dict
        How the run went through the data: ``{"path": "in-memory"}``, or for the streaming path
        the chunking, the passes, the peak RSS and the work-file size
        (:class:`scaml.harmony.stream.StreamingHarmony`).
    """

    def __init__(
        self, state: HarmonyState, Z_orig: np.ndarray, params: dict[str, Any], batches: list[str]
    ):
        self._state = state
        self._cache: dict[str, np.ndarray] = {}
        self.Z_corr = state.Z_corr
        self.Z_orig = Z_orig
        self.Y = state.Y
        self.O = state.O  # noqa: E741 - paper notation
        self.E = state.E
        self.K = int(state.Y.shape[1])
        self.objective_harmony = [float(v) for v in state.objective_harmony]
        self.objective_kmeans = [float(v) for v in state.objective_kmeans]
        self.kmeans_rounds = list(state.kmeans_rounds)
        self.n_iter = int(state.n_iter)
        self.converged = bool(state.converged)
        self.params = params
        self.batches = batches
        self.seconds = dict(state.seconds)
        self.info: dict[str, Any] = {"path": "in-memory"}

    @property
    def Z_cos(self) -> np.ndarray:  # noqa: N802 - paper notation
        """Corrected embedding with unit-length rows (cells x PCs), computed on first access."""
        if "Z_cos" not in self._cache:
            self._cache["Z_cos"] = self._state.Z_cos
        return self._cache["Z_cos"]

    @property
    def R(self) -> np.ndarray:  # noqa: N802 - paper notation
        """Soft cluster assignments (cells x clusters, rows sum to one), computed on first access."""
        if "R" not in self._cache:
            self._cache["R"] = self._state.R
        return self._cache["R"]

    def result(self) -> np.ndarray:
        """The corrected embedding, cells x PCs (as harmonypy's ``result()``)."""
        return self.Z_corr

    def __repr__(self) -> str:
        n, d = self.Z_corr.shape
        return (
            f"Harmony({n} cells x {d} PCs, {self.K} clusters, {self.n_iter} iterations, "
            f"converged={self.converged}, backend={self.params.get('backend')!r})"
        )


# ----------------------------------------------------------------------------- validation


def _as_embedding(data_mat: Any) -> np.ndarray:
    from ..io import check_finite

    if isinstance(data_mat, pd.DataFrame):
        data_mat = data_mat.select_dtypes(include=[np.number]).to_numpy()
    arr = check_finite(data_mat, "the embedding (data_mat)")
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ScamlError(
            f"the embedding (data_mat) must have at least 2 cells and 1 dimension; got shape {arr.shape}."
        )
    return arr


def _as_meta(meta_data: Any, vars_use: Any, n_cells: int) -> tuple[pd.DataFrame, list[str]]:
    if isinstance(meta_data, pd.DataFrame):
        meta = meta_data
    elif isinstance(meta_data, pd.Series):
        meta = meta_data.to_frame(name=meta_data.name if meta_data.name is not None else "batch")
    elif isinstance(meta_data, dict):
        meta = pd.DataFrame(meta_data)
    else:
        values = np.asarray(meta_data)
        if values.ndim != 1:
            raise ScamlError(
                "meta_data must be a DataFrame, or a Series / 1-D array of batch labels when there is one "
                f"covariate; got an array of shape {values.shape}."
            )
        name = vars_use if isinstance(vars_use, str) else "batch"
        meta = pd.DataFrame({name: values})
    if vars_use is None:
        if meta.shape[1] != 1:
            raise ScamlError(
                f"vars_use is required when meta_data has several columns ({list(meta.columns)})."
            )
        vars_use = [meta.columns[0]]
    if isinstance(vars_use, str):
        vars_use = [vars_use]
    vars_use = list(vars_use)
    if not vars_use:
        raise ScamlError("vars_use is empty; name at least one batch column of meta_data.")
    if len(set(vars_use)) != len(vars_use):
        raise ScamlError(f"vars_use names a column twice: {vars_use}.")
    for var in vars_use:
        if var not in meta.columns:
            raise missing_key_error(var, meta.columns, "meta_data", flag="vars_use")
    if meta.shape[0] != n_cells:
        raise ScamlError(
            f"meta_data has {meta.shape[0]} rows but the embedding has {n_cells} cells; they must describe "
            "the same cells in the same order."
        )
    return meta, vars_use


def _design(meta: pd.DataFrame, vars_use: list[str]) -> tuple[Design, list[str]]:
    codes = np.empty((meta.shape[0], len(vars_use)), dtype=np.int64)
    n_levels, names, offset = [], [], 0
    for c, var in enumerate(vars_use):
        col = meta[var]
        if col.isna().any():
            rows = np.flatnonzero(col.isna().to_numpy())
            raise ScamlError(
                f"batch column {var!r} has {rows.size} missing values (first rows: {rows[:5].tolist()}); "
                "label those cells or remove them."
            )
        cat = pd.Categorical(col)
        cat = cat.remove_unused_categories()
        if len(cat.categories) < 2:
            raise ScamlError(
                f"batch column {var!r} has a single level ({cat.categories[0]!r}); Harmony needs at least two "
                "batches per covariate. Drop it from vars_use."
            )
        codes[:, c] = np.asarray(cat.codes, dtype=np.int64) + offset
        n_levels.append(len(cat.categories))
        names += [f"{var}={level}" for level in cat.categories]
        offset += len(cat.categories)
    return Design(codes=codes, n_levels=n_levels), names


# ----------------------------------------------------------------------------- run_harmony


def run_harmony(
    data_mat: Any,
    meta_data: Any,
    vars_use: str | Sequence[str] | None = None,
    theta: float | Sequence[float] | None = None,
    lamb: float | Sequence[float] | None = None,
    sigma: float | Sequence[float] = 0.1,
    nclust: int | None = None,
    tau: float = 0,
    block_size: float = 0.05,
    max_iter_harmony: int = 10,
    max_iter_kmeans: int = 4,
    epsilon_cluster: float = 1e-3,
    epsilon_harmony: float = 1e-2,
    alpha: float = 0.2,
    batch_prop_cutoff: float = 1e-5,
    random_state: int | None = 0,
    backend: str = "auto",
    device: str = "auto",
    dtype: str = "float32",
    verbose: bool = True,
    out: Any = None,
    chunk_cells: int | None = None,
    max_memory: int | str | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> Harmony:
    """Integrate batches in an embedding with Harmony (R harmony 2.x algorithm, scaml's implementation).

    A drop-in for ``harmonypy.run_harmony``: same argument names and defaults, same result attributes.

    Parameters
    ----------
    data_mat
        Embedding, cells x PCs (ndarray or DataFrame of numbers), typically ``adata.obsm["X_pca"]``.
    meta_data
        DataFrame with the batch columns (one row per cell, same order), or a Series / 1-D array of
        batch labels when there is one covariate.
    vars_use
        Batch column name or list of names; several covariates are corrected together (additive
        one-hot design, as R harmony).
    theta
        Diversity penalty: one number, one per covariate, or one per batch level. Default 2.
        0 turns the diversity penalty off.
    lamb
        Ridge penalty. None (default, as R harmony 2.x) estimates it in every cluster as
        ``alpha * E[k, b]``; or one number, one per covariate, one per batch level, or the
        intercept's penalty followed by one per batch level.
    sigma
        Width of the soft k-means clusters: one number or one per cluster. Default 0.1.
    nclust
        Number of clusters; default ``min(round(N / 30), 100)``.
    tau
        Protection against over-clustering small batches: theta is scaled by
        ``1 - exp(-(N_b / (nclust * tau)) ** 2)``. 0 (default) turns it off.
    block_size
        Fraction of cells updated together in a clustering round. Default 0.05.
    max_iter_harmony
        Maximum Harmony iterations (clustering + correction). Default 10.
    max_iter_kmeans
        Maximum clustering rounds per Harmony iteration. Default 4, as R harmony 2.x
        (``max.iter.cluster``) and harmonypy 2.x; with 4 or fewer rounds no early stop can happen.
    epsilon_cluster, epsilon_harmony
        Convergence tolerances on the relative decrease of the objective.
    alpha
        Factor of the automatic ridge penalty ``alpha * E`` (``lamb=None``). Default 0.2.
    batch_prop_cutoff
        Batches with less than this fraction of their cells in a cluster are not corrected in that
        cluster (and left out of its regression). Default 1e-5.
    random_state
        Seed of the k-means start and of the block order.
    backend
        ``"numpy"``, ``"torch"`` or ``"auto"`` (torch on a CUDA GPU when one is present and
        ``device`` allows it, else numpy, the faster one on CPU).
    device
        Torch device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    dtype
        ``"float32"`` (default) or ``"float64"`` for the cells x K and cells x PCs work.
    verbose
        Show a progress bar with the objective (also silenced by scaml's quiet mode).
    out
        Path of a zarr array (``"z_corr.zarr"``) to write ``Z_corr`` to, chunk by chunk (written to
        a temporary path, renamed into place at the end). Selects the streaming path
        (:mod:`scaml.harmony.stream`), as do ``chunk_cells``, ``max_memory`` and an input that is
        not an in-memory ndarray (``np.memmap``, ``zarr.Array``, any row-sliceable 2-D array);
        it keeps no cells x clusters matrix and its memory is set by the chunk budget.
    chunk_cells
        Streaming: rows per chunk.
    max_memory
        Streaming: the chunk budget in bytes or as ``"2GB"`` (default 512 MiB when ``chunk_cells``
        is not given).
    overwrite
        Streaming: replace an existing ``out``.
    client
        A ``dask.distributed.Client``: run the streaming path on that cluster
        (:mod:`scaml.harmony.dask_fit`): each chunk is a partition kept by a worker and every pass
        is a map-reduce (one per block update). Same numbers as the in-process streaming run with
        the same chunks. The workers need scaml installed.

    Returns
    -------
    Harmony
        Result object; ``Z_corr`` is the corrected embedding (cells x PCs).

    Raises
    ------
    ScamlError
        For NaN / infinite values, a missing or single-level batch column, mismatched sizes or a bad
        parameter. The parameters are checked first, all in one place
        (:class:`scaml.harmony.core.HarmonyParams`).
    """
    hp = HarmonyParams(
        theta=theta,
        lamb=lamb,
        sigma=sigma,
        nclust=nclust,
        tau=tau,
        block_size=block_size,
        max_iter_harmony=max_iter_harmony,
        max_iter_kmeans=max_iter_kmeans,
        epsilon_cluster=epsilon_cluster,
        epsilon_harmony=epsilon_harmony,
        alpha=alpha,
        batch_prop_cutoff=batch_prop_cutoff,
        random_state=random_state,
        backend=backend,
        device=device,
        dtype=dtype,
    )
    from .stream import is_streaming_input

    if (
        client is not None
        or out is not None
        or chunk_cells is not None
        or max_memory is not None
        or is_streaming_input(data_mat)
    ):
        from .stream import run_harmony_stream

        return run_harmony_stream(
            data_mat,
            meta_data,
            vars_use,
            hp,
            out=out,
            chunk_cells=chunk_cells,
            max_memory=max_memory,
            overwrite=overwrite,
            verbose=verbose,
            client=client,
        )
    Z = _as_embedding(data_mat)
    N = Z.shape[0]
    meta, vars_use = _as_meta(meta_data, vars_use, N)
    design, batch_names = _design(meta, vars_use)
    N_b = np.bincount(design.codes.ravel(), minlength=design.B)
    resolved = hp.resolve(N, design.n_levels, N_b)
    params: dict[str, Any] = {
        "vars_use": vars_use,
        **resolved.as_dict(),
        "n_cells": int(N),
        "n_dims": int(Z.shape[1]),
        "n_batches": [int(n) for n in design.n_levels],
    }

    from .._utils import is_quiet, progress

    show = verbose and not is_quiet()
    bar = progress() if show else None
    task = None
    if bar is not None:
        bar.start()
        task = bar.add_task("Harmony", total=resolved.max_iter_harmony, status="")

    def callback(it: int, objective: float) -> None:
        if bar is not None:
            bar.update(task, completed=it, status=f"objective {objective:.4g}")

    try:
        state = harmonize(Z, design, resolved, callback=callback)
    finally:
        if bar is not None:
            bar.stop()
    if show:
        from .._utils import info

        status = (
            f"converged after {state.n_iter}"
            if state.converged
            else f"stopped after {state.n_iter}"
        )
        info(
            f"Harmony {status} iteration(s) ({resolved.backend} on {resolved.device}, "
            f"{resolved.nclust} clusters)."
        )
    return Harmony(state, Z, params, batch_names)


# ----------------------------------------------------------------------------- AnnData


def harmony_integrate(
    adata: Any,
    key: str | Sequence[str],
    basis: str = "X_pca",
    adjusted_basis: str = "X_pca_harmony",
    copy: bool = False,
    **params: Any,
) -> Any:
    """Harmony on ``adata.obsm[basis]``, written to ``adata.obsm[adjusted_basis]`` (scanpy names).

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm[basis]`` and the batch column(s) in ``obs``.
    key
        Batch column of ``adata.obs``, or a list of columns corrected together.
    basis
        Embedding to correct. Default ``"X_pca"``.
    adjusted_basis
        Where the corrected embedding goes (float32). Default ``"X_pca_harmony"``.
    copy
        Work on a copy and return it instead of modifying ``adata``.
    **params
        Passed to :func:`run_harmony` (``theta``, ``lamb``, ``sigma``, ``nclust``, ``random_state``,
        ``backend``, ``device``, ``max_iter_harmony`` ...).

    Returns
    -------
    AnnData or None
        The copy when ``copy=True``; otherwise None. Writes ``obsm[adjusted_basis]`` and
        ``uns["harmony"]`` = {key, basis, adjusted_basis, params (resolved), objective_harmony,
        n_iter, converged, seconds, info (the scalar entries of :attr:`Harmony.info`: in memory, or
        streaming with its chunks and passes)}.
    """
    from ..io import check_obs_key, check_obsm_key, h5ad_safe_value

    keys = [key] if isinstance(key, str) else list(key)
    if not keys:
        raise ScamlError("key is empty; name at least one batch column of adata.obs.")
    for k in keys:
        check_obs_key(adata, k, flag="--batch-key", min_levels=2)
    X = check_obsm_key(adata, basis, flag="--basis")
    if copy:
        adata = adata.copy()
    start = time.perf_counter()
    result = run_harmony(np.asarray(X), adata.obs[keys], keys, **params)
    seconds = time.perf_counter() - start
    adata.obsm[adjusted_basis] = np.asarray(result.Z_corr, dtype=np.float32)
    adata.uns["harmony"] = {
        "key": keys[0] if isinstance(key, str) else keys,
        "basis": basis,
        "adjusted_basis": adjusted_basis,
        "params": h5ad_safe_value(result.params),
        "objective_harmony": np.asarray(result.objective_harmony, dtype=np.float64),
        "n_iter": int(result.n_iter),
        "converged": bool(result.converged),
        "seconds": round(seconds, 4),
        # how it ran (in memory, or streaming: chunks, passes, peak): its scalar entries
        "info": {k: v for k, v in result.info.items() if isinstance(v, (str, bool, int, float))},
    }
    return adata if copy else None
