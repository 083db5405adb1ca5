# ruff: noqa: E741  (O and E are the paper's notation)
"""Harmony on arrays (Korsunsky et al. 2019, as in R harmony 2.x).

The notation follows the paper:

``Z``
    cells x d embedding (``Z_orig`` the input, ``Z_corr`` the corrected one, ``Z_cos`` its rows scaled
    to unit length, on which the clustering works).
``Y``
    d x K cluster centroids (unit length columns).
``R``
    cells x K soft cluster assignments (each row sums to one).
``Phi``
    the one-hot design of the batch covariates (kept as integer codes, never as a dense matrix).
``O``, ``E``
    K x B observed and expected (``N_k * Pr_b``) number of cells of batch b in cluster k.
``theta``, ``sigma``, ``lamb``
    diversity penalty per batch, soft k-means width per cluster, ridge penalty per batch.

One Harmony iteration (R harmony 2.x):

1. ``Z_cos`` = rows of ``Z_corr`` at unit length; ``R`` restarts from the plain soft assignment
   ``softmax(-dist / sigma)`` with ``dist = 2 (1 - Z_cos Y)``; ``O`` and ``E`` recomputed.
2. ``max_iter_kmeans`` rounds of block updates of ``R``: each block of about ``block_size * N`` cells
   is taken out of ``O`` / ``E``, re-assigned with the diversity penalty
   ``((2E + 1) / (O + E + 1)) ** theta`` (summed over the covariates of the cell, as R's
   ``penalty %*% Phi`` does) and put back. The objective (k-means error + sigma-weighted entropy +
   sigma-weighted cross entropy ``theta * O * log((O + E + 1) / (2E + 1))``, times ``2000 / N``) decides
   when the rounds stop (window of 3, ``epsilon_cluster``).
3. Mixture-of-experts ridge correction of the ORIGINAL embedding: for each cluster k a weighted
   ridge regression of ``Z_orig`` on ``[1, Phi]`` with weights ``R[:, k]`` (intercept unpenalised;
   ``lamb=None`` uses ``alpha * E[k, b]`` per batch); batches below ``batch_prop_cutoff`` of their
   cells in the cluster (and covariates left with a single such level) are left out of that
   cluster's regression; ``Z_corr = Z_orig - sum_k R[:, k] * (Phi W_k)`` (intercept excluded). The
   intercepts become the new centroids ``Y``.
4. Stop when the relative decrease of the objective is below ``epsilon_harmony``.

Implementation notes (speed and memory): cells are stored internally sorted by their combination of
batch levels ("group") and, within a group, by block, in a seeded random order; so every group is
a contiguous row range (the ridge step works on slices, with per-group sums of ``R``; no ``Phi``
matrix) and so is every (group, block) piece. The ``ceil(1 / block_size)`` update blocks are random
cell subsets stratified by group (a group's cells are dealt round-robin to the blocks), fixed for
the run and visited in a new random order every round (R reshuffles the cells every round; the
difference is immaterial for 5% blocks). Each block's previous per-group sums of ``R`` are cached,
so taking a block out of ``O`` / ``E`` costs nothing.
The soft-assignment kernel ``exp(-dist / sigma)`` of a block is recomputed from ``Z_cos`` and ``Y``
when the block is updated (one GEMM per block, no cells x K distance or kernel matrix is kept),
the k-means error is ``2 sum(R) - 2 tr(Y^T Z_cos^T R)`` (one small GEMM), the objective is only
evaluated when a convergence check needs it, and the correction writes the unit-length rows
straight into ``Z_cos``; ``Z_corr`` itself is only formed at the end, in the caller's cell order.
Working memory: ``R`` (cells x K) and ``Z_cos`` (cells x d) plus per-block and per-chunk buffers;
with numpy the input is read in place (rows gathered per chunk) rather than copied, and ``Z_cos``
is freed before the output ``Z_corr`` is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_WINDOW = 3  # k-means convergence window (R harmony)
_CHUNK = 1 << 14  # rows per chunk for cells x K elementwise work


# ----------------------------------------------------------------------------- design


@dataclass
class Design:
    """The batch design as integer codes.

    Attributes
    ----------
    codes
        cells x n_covariates int array; ``codes[i, c]`` is the global batch index (0..B-1) of cell i
        for covariate c (levels of covariate c occupy ``offsets[c]:offsets[c + 1]``).
    n_levels
        Number of levels of each covariate.
    """

    codes: np.ndarray
    n_levels: list[int]

    @property
    def B(self) -> int:  # noqa: N802 - paper notation
        return int(sum(self.n_levels))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_levels)]).astype(np.int64)

    @property
    def covariate_of_batch(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.n_levels)), self.n_levels)


@dataclass
class HarmonyState:
    """Everything one run produces.

    ``Z_corr`` is in the caller's cell order; ``R`` is kept in the internal order (``internal_R``)
    and put back in the caller's order when asked for, and ``Z_cos`` is computed from ``Z_corr``
    when asked for, so that a run that only needs ``Z_corr`` holds no second copy of them.
    """

    Z_corr: np.ndarray | None = None
    internal_R: np.ndarray | None = None
    inverse: np.ndarray | None = None
    Y: np.ndarray | None = None
    O: np.ndarray | None = None  # noqa: E741 - paper notation
    E: np.ndarray | None = None
    objective_harmony: list[float] = field(default_factory=list)
    objective_kmeans: list[float] = field(default_factory=list)
    kmeans_rounds: list[int] = field(default_factory=list)
    n_iter: int = 0
    converged: bool = False
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def Z_cos(self) -> np.ndarray:  # noqa: N802 - paper notation
        norms = np.linalg.norm(self.Z_corr, axis=1, keepdims=True)
        return self.Z_corr / np.maximum(norms, np.finfo(self.Z_corr.dtype).tiny)

    @property
    def R(self) -> np.ndarray:  # noqa: N802 - paper notation
        return self.internal_R[self.inverse]


# ----------------------------------------------------------------------------- backends


def _blas_threads() -> int:
    """Threads the BLAS library is allowed (how many threads this process may use)."""
    try:
        from threadpoolctl import threadpool_info

        n = max(
            (
                int(i.get("num_threads", 1))
                for i in threadpool_info()
                if i.get("user_api") == "blas"
            ),
            default=1,
        )
    except Exception:  # pragma: no cover - threadpoolctl comes with scikit-learn
        n = 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(n, cpus))


class _NumpyBackend:
    """Array kernels on numpy.

    numpy's elementwise work runs on one core, so the cells x K work is cut into row pieces run by
    a pool of threads (numpy and BLAS release the GIL), as many as BLAS is allowed threads; inside
    the pieces BLAS runs single-threaded (:meth:`parallel`).
    """

    name = "numpy"
    device = "cpu"

    def __init__(self, dtype: str) -> None:
        self.dtype = np.dtype(dtype)
        self.tiny = np.finfo(self.dtype).tiny
        self.n_workers = _blas_threads()
        self._pool = None

    # ------------------------------------------------------------------ plumbing

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a, dtype=self.dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, dtype=self.dtype)

    def small(self, a: np.ndarray) -> np.ndarray:
        """A small (K x d, G x K ...) array in the working dtype."""
        return np.ascontiguousarray(a, dtype=self.dtype)

    def take_rows(self, X: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.asarray(X[idx], dtype=np.float64)

    def source(self, Z: np.ndarray, order: np.ndarray) -> _Rows:
        """The input rows in the internal order, gathered chunk by chunk (no full copy)."""
        return _Rows(Z, order, self.dtype)

    @contextlib.contextmanager
    def parallel(self):
        """Thread pool for the row pieces, BLAS single-threaded inside them."""
        if self.n_workers == 1:
            yield
            return
        from concurrent.futures import ThreadPoolExecutor

        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # pragma: no cover
            threadpool_limits = None
        limits = (
            threadpool_limits(limits=1, user_api="blas")
            if threadpool_limits
            else contextlib.nullcontext()
        )
        with limits, ThreadPoolExecutor(self.n_workers - 1) as pool:  # + the calling thread
            self._pool = pool
            try:
                yield
            finally:
                self._pool = None

    def _map(self, fn, tasks):
        """``[fn(t) for t in tasks]``, the tasks dealt round-robin to the pool and the calling thread
        (which also works, so BLAS and numpy buffers are set up in one extra thread only)."""
        n = self.n_workers
        if self._pool is None or len(tasks) < 2:
            return [fn(t) for t in tasks]
        futures = [self._pool.submit(lambda w=w: [fn(t) for t in tasks[w::n]]) for w in range(1, n)]
        mine = [fn(t) for t in tasks[0::n]]
        shares = [mine] + [f.result() for f in futures]
        out = [None] * len(tasks)
        for w, share in enumerate(shares):
            out[w::n] = share
        return out

    def _pieces(self, a0: int, b0: int, size: int):
        return [(a, min(a + size, b0)) for a in range(a0, b0, max(size, 1))]

    # ------------------------------------------------------------------ kernels

    def l2_rows(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.einsum("ij,ij->i", x, x))
        np.maximum(norms, self.tiny, out=norms)
        np.divide(x, norms[:, None], out=out)
        return out

    def _soft(self, Zc, Ys, offset, out):
        """``out = exp(Zc Ys + offset)``; with ``offset`` (the safe path) rows are shifted to max 0."""
        np.matmul(Zc, Ys, out=out)
        if offset is not None:
            out += offset
            out -= out.max(axis=1, keepdims=True)
        np.exp(out, out=out)
        return out

    def _assign(self, R, Z_cos, Ys, offset, a, b, pen) -> np.ndarray:
        """``R[a:b] = normalise_rows(exp(...) * pen)`` in place; returns the column sums."""
        t = self._soft(Z_cos[a:b], Ys, offset, R[a:b])
        if pen is not None:
            t *= pen
        rs = t.sum(axis=1, keepdims=True)
        np.maximum(rs, self.tiny, out=rs)
        t /= rs
        return t.sum(axis=0)

    def cold_start(self, Z_cos, Ys, offset, R, factor) -> None:
        """``R = softmax_rows(-dist / sigma)`` (the plain soft assignment), in parallel row pieces;
        ``factor`` (K,) multiplies the kernel before normalising (the fast path's ``exp(-2 / sigma)``)."""
        off = None if offset is None else self.small(offset)
        fac = self.small(factor)
        size = min(_CHUNK, -(-R.shape[0] // self.n_workers))
        self._map(
            lambda ab: self._assign(R, Z_cos, Ys, off, ab[0], ab[1], fac),
            self._pieces(0, R.shape[0], size),
        )

    def range_sums(self, X, ranges) -> np.ndarray:
        """Column sums of ``X[a:b]`` for each ``(a, b)`` in ``ranges`` (float64, one row per range)."""
        return np.stack([X[a:b].sum(axis=0) for a, b in ranges]).astype(np.float64)

    def block_sums(self, R, blocks) -> list[np.ndarray]:
        """Per block, the column sums of R over each of its row ranges."""
        return self._map(lambda blk: self.range_sums(R, blk[0]), blocks)

    def block_update(self, R, Z_cos, Ys, offset, ranges, counts, pen_groups) -> np.ndarray:
        """Re-assign the cells of one block (row ranges, one per group) with the per-group penalties;
        return their new per-group sums."""
        off = None if offset is None else self.small(offset)
        pen = self.small(pen_groups)
        size = -(-int(np.sum(counts)) // self.n_workers)
        tasks = [
            (i, a, b) for i, (a0, b0) in enumerate(ranges) for a, b in self._pieces(a0, b0, size)
        ]
        parts = self._map(lambda t: self._assign(R, Z_cos, Ys, off, t[1], t[2], pen[t[0]]), tasks)
        sums = np.zeros((len(ranges), R.shape[1]))
        for (i, _, _), part in zip(tasks, parts, strict=True):
            sums[i] += part
        return sums

    def objective_terms(
        self, R: np.ndarray, Z_cos: np.ndarray, Y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per cluster: ``sum_i R_ik z_i . y_k`` and ``sum_i R_ik log R_ik`` (float64 K vectors)."""

        def piece(ab):
            a, b = ab
            r = R[a:b]
            rz = (r.T @ Z_cos[a:b]).astype(np.float64)  # K x d
            t = np.maximum(r, self.tiny)
            np.log(t, out=t)
            t *= r
            return rz, t.sum(axis=0).astype(np.float64)

        parts = self._map(
            piece, self._pieces(0, R.shape[0], min(_CHUNK, -(-R.shape[0] // self.n_workers)))
        )
        rz = sum(p[0] for p in parts)
        ent = sum(p[1] for p in parts)
        cross = np.einsum("kd,dk->k", rz, Y.astype(np.float64))
        return cross, ent

    def ridge_sums(self, R, Z_orig, segments, G) -> tuple[np.ndarray, np.ndarray]:
        """Per group g: ``sum R[g]`` (G x K) and ``Z_orig[g]^T R[g]`` (G x d x K), float64."""
        size = min(_CHUNK, -(-R.shape[0] // self.n_workers))
        tasks = [(g, a, b) for a0, b0, g in segments for a, b in self._pieces(a0, b0, size)]

        def piece(t):
            _, a, b = t
            return R[a:b].sum(axis=0), (R[a:b].T @ Z_orig.rows(a, b)).T

        rsum = np.zeros((G, R.shape[1]))
        zsum = np.zeros((G, Z_orig.shape[1], R.shape[1]))
        for (g, _, _), (rs, zs) in zip(tasks, self._map(piece, tasks), strict=True):
            rsum[g] += rs
            zsum[g] += zs
        return rsum, zsum

    def correct(self, R, Z_orig, segments, V, out, rows=None, normalise=False) -> None:
        """``Z_orig[seg] - R[seg] @ V[g]`` for every segment of group g (V: G x K x d), row-normalised
        if asked, written to ``out`` (at ``out[rows[a:b]]`` when ``rows`` is given)."""
        V = self.small(V)
        size = min(_CHUNK, -(-R.shape[0] // self.n_workers))
        tasks = [(g, a, b) for a0, b0, g in segments for a, b in self._pieces(a0, b0, size)]

        def piece(task):
            g, a, b = task
            t = R[a:b] @ V[g]
            np.subtract(Z_orig.rows(a, b), t, out=t)
            if normalise:
                self.l2_rows(t, t)
            if rows is None:
                out[a:b] = t
            else:
                out[rows[a:b]] = t

        self._map(piece, tasks)

    def lloyd_step(self, Z: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Assign rows of Z to the nearest centre (cosine data: max z.c - |c|^2/2); new sums, counts."""
        K = C.shape[0]
        Cw = self.small(C)
        half = 0.5 * np.einsum("kd,kd->k", Cw, Cw)

        def piece(ab):
            a, b = ab
            sim = Z[a:b] @ Cw.T
            sim -= half
            lab = sim.argmax(axis=1)
            inertia = float(np.take_along_axis(sim, lab[:, None], axis=1).sum(dtype=np.float64))
            order = np.argsort(lab, kind="stable")
            counts = np.bincount(lab, minlength=K)
            used = np.flatnonzero(counts)
            starts = np.concatenate([[0], np.cumsum(counts[used])[:-1]])
            sums = np.zeros((K, Z.shape[1]))
            sums[used] = np.add.reduceat(Z[a:b][order], starts, axis=0)
            return sums, counts, inertia

        parts = self._map(
            piece, self._pieces(0, Z.shape[0], min(4 * _CHUNK, -(-Z.shape[0] // self.n_workers)))
        )
        sums = sum(p[0] for p in parts)
        counts = sum(p[1] for p in parts).astype(np.float64)
        return sums, counts, float(sum(p[2] for p in parts))


class _Rows:
    """Rows ``Z[order[a:b]]`` of the caller's array in the working dtype, gathered on demand."""

    def __init__(self, Z: np.ndarray, order: np.ndarray, dtype) -> None:
        self.Z, self.order, self.dtype = Z, order, dtype
        self.shape = (order.size, Z.shape[1])

    def rows(self, a: int, b: int) -> np.ndarray:
        return np.asarray(self.Z[self.order[a:b]], dtype=self.dtype)


class _DeviceRows:
    """A device tensor holding the rows in the internal order."""

    def __init__(self, Z) -> None:
        self.Z = Z
        self.shape = tuple(Z.shape)

    def rows(self, a: int, b: int):
        return self.Z[a:b]


class _TorchBackend:
    """The same kernels on torch tensors (CPU threads or CUDA)."""

    name = "torch"

    def __init__(self, dtype: str, device: str) -> None:
        import torch

        self.torch = torch
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[str(np.dtype(dtype))]
        self.tiny = torch.finfo(self.dtype).tiny
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)

    def asarray(self, a: np.ndarray):
        return (
            self.torch.as_tensor(np.ascontiguousarray(a), device=self.device)
            .to(self.dtype)
            .contiguous()
        )

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)

    def empty(self, shape):
        return self.torch.empty(shape, dtype=self.dtype, device=self.device)

    def small(self, a):
        return self.torch.as_tensor(np.asarray(a), device=self.device).to(self.dtype)

    def index(self, idx: np.ndarray):
        return self.torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def take_rows(self, X, idx: np.ndarray) -> np.ndarray:
        return X[self.index(idx)].to(self.torch.float64).cpu().numpy()

    @contextlib.contextmanager
    def parallel(self):
        """On CPU, torch's intra-op threads stall on the many small ops of the block loop when the
        machine is busy (10x slower measured), so Harmony runs them on one thread there; numpy (the
        CPU default) has its own thread pool. No effect on CUDA."""
        if self.device.type != "cpu":
            yield
            return
        n = self.torch.get_num_threads()
        self.torch.set_num_threads(1)
        try:
            yield
        finally:
            self.torch.set_num_threads(n)

    def block_sums(self, R, blocks) -> list[np.ndarray]:
        return [self.range_sums(R, blk[0]) for blk in blocks]

    def source(self, Z: np.ndarray, order: np.ndarray) -> _DeviceRows:
        return _DeviceRows(self.asarray(Z[order]))

    def l2_rows(self, x, out):
        norms = self.torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(self.tiny)
        self.torch.div(x, norms, out=out)
        return out

    def _soft(self, Zc, Ys, offset, out=None):
        t = self.torch.matmul(Zc, Ys, out=out) if out is not None else Zc @ Ys
        if offset is not None:
            t.add_(offset)
            t.sub_(t.amax(dim=1, keepdim=True))
        return t.exp_()

    def cold_start(self, Z_cos, Ys, offset, R, factor) -> None:
        off = None if offset is None else self.small(offset)
        fac = self.small(factor)
        for s in range(0, R.shape[0], _CHUNK):
            o = self._soft(Z_cos[s : s + _CHUNK], Ys, off, R[s : s + _CHUNK])
            o.mul_(fac)
            o.div_(o.sum(dim=1, keepdim=True).clamp_min_(self.tiny))

    def range_sums(self, X, ranges) -> np.ndarray:
        out = self.torch.stack([X[a:b].sum(dim=0) for a, b in ranges])
        return out.to(self.torch.float64).cpu().numpy()

    def block_update(self, R, Z_cos, Ys, offset, ranges, counts, pen_groups) -> np.ndarray:
        torch = self.torch
        rep = self.index(np.repeat(np.arange(len(counts)), counts))
        zb = (
            Z_cos[ranges[0][0] : ranges[0][1]]
            if len(ranges) == 1
            else torch.cat([Z_cos[a:b] for a, b in ranges])
        )
        t = self._soft(zb, Ys, None if offset is None else self.small(offset))
        t.mul_(self.small(pen_groups)[rep])
        t.div_(t.sum(dim=1, keepdim=True).clamp_min_(self.tiny))
        sums = []
        s = 0
        for a, b in ranges:
            R[a:b] = t[s : s + b - a]
            sums.append(t[s : s + b - a].sum(dim=0))
            s += b - a
        return torch.stack(sums).to(torch.float64).cpu().numpy()

    def objective_terms(self, R, Z_cos, Y):
        torch = self.torch
        rz = (R.T @ Z_cos).to(torch.float64)
        cross = (rz * Y.T.to(torch.float64)).sum(dim=1)
        ent = torch.zeros(R.shape[1], dtype=torch.float64, device=self.device)
        for s in range(0, R.shape[0], _CHUNK):
            r = R[s : s + _CHUNK]
            ent += (r.clamp_min(self.tiny).log_().mul_(r)).sum(dim=0).to(torch.float64)
        return cross.cpu().numpy(), ent.cpu().numpy()

    def ridge_sums(self, R, Z_orig, segments, G):
        torch = self.torch
        rsum = torch.zeros((G, R.shape[1]), dtype=torch.float64, device=self.device)
        zsum = torch.zeros(
            (G, Z_orig.shape[1], R.shape[1]), dtype=torch.float64, device=self.device
        )
        for a0, b0, g in segments:
            for a in range(a0, b0, _CHUNK):
                b = min(a + _CHUNK, b0)
                rsum[g] += R[a:b].sum(dim=0).to(torch.float64)
                zsum[g] += (R[a:b].T @ Z_orig.rows(a, b)).T.to(torch.float64)
        return rsum.cpu().numpy(), zsum.cpu().numpy()

    def correct(self, R, Z_orig, segments, V, out, rows=None, normalise=False) -> None:
        V = self.small(V)
        rows_t = self.index(rows) if rows is not None else None
        for a0, b0, g in segments:
            for a in range(a0, b0, _CHUNK):
                b = min(a + _CHUNK, b0)
                t = Z_orig.rows(a, b) - R[a:b] @ V[g]
                if normalise:
                    self.l2_rows(t, t)
                if rows_t is None:
                    out[a:b] = t
                else:
                    out[rows_t[a:b]] = t

    def lloyd_step(self, Z, C):
        torch = self.torch
        Cw = self.small(C)
        K = Cw.shape[0]
        half = 0.5 * (Cw * Cw).sum(dim=1)
        labels = torch.empty(Z.shape[0], dtype=torch.int64, device=self.device)
        inertia = 0.0
        for s in range(0, Z.shape[0], _CHUNK):
            sim = Z[s : s + _CHUNK] @ Cw.T
            sim -= half
            best, lab = sim.max(dim=1)
            labels[s : s + _CHUNK] = lab
            inertia += float(best.sum(dtype=torch.float64))
        counts = torch.bincount(labels, minlength=K).to(torch.float64)
        sums = torch.zeros((K, Z.shape[1]), dtype=self.dtype, device=self.device)
        sums.index_add_(0, labels, Z)
        return sums.to(torch.float64).cpu().numpy(), counts.cpu().numpy(), inertia


def make_backend(backend: str, device: str, dtype: str):
    """Build the array backend: ``"numpy"``, ``"torch"`` or ``"auto"``.

    ``"auto"`` picks torch on a CUDA device (when ``device`` allows it and one is present) and numpy
    otherwise (numpy is the faster of the two on CPU, see benchmarks/README.md).
    """
    if backend == "auto":
        if device in ("auto", "cuda") or str(device).startswith("cuda"):
            try:
                import torch

                if torch.cuda.is_available():
                    return _TorchBackend(dtype, "cuda" if device == "auto" else device)
            except ImportError:  # pragma: no cover - torch is a dependency
                pass
        backend = "numpy"
    if backend == "numpy":
        return _NumpyBackend(dtype)
    return _TorchBackend(dtype, device)


# ----------------------------------------------------------------------------- k-means start


def kmeans_centroids(
    be, Z_cos, K: int, rng: np.random.Generator, max_iter: int = 25, n_fit: int | None = None
) -> np.ndarray:
    """Seeded k-means on unit-length rows; returns the K x d centroids (float64 numpy).

    k-means++ start on a subsample of ``max(30 K, 5000)`` cells, Lloyd steps (at most ``max_iter``,
    until the objective stops moving) on at most ``n_fit`` cells, then, when cells were left out,
    two Lloyd steps on all cells.
    """
    N = Z_cos.shape[0]

    def subsample(n: int) -> np.ndarray | None:
        return np.sort(rng.choice(N, size=n, replace=False)) if n < N else None

    idx = subsample(min(N, max(30 * K, 5_000)))
    seed_rows = be.take_rows(Z_cos, idx if idx is not None else np.arange(N)).astype(np.float32)
    C = _kmeans_plusplus(seed_rows, K, rng)
    del seed_rows
    idx = subsample(min(N, n_fit if n_fit is not None else max(200 * K, 20_000)))
    Zfit = Z_cos if idx is None else be.asarray(be.take_rows(Z_cos, idx))
    n_steps = [(Zfit, max_iter)] + ([(Z_cos, 2)] if idx is not None else [])
    for data, steps in n_steps:
        prev = None
        for _ in range(steps):
            sums, counts, inertia = be.lloyd_step(data, C)
            empty = counts == 0
            C = np.where(empty[:, None], C, sums / np.maximum(counts, 1)[:, None])
            if empty.any():  # re-seed empty clusters at random cells
                pick = rng.choice(data.shape[0], size=int(empty.sum()), replace=False)
                C[empty] = be.take_rows(data, pick)
            if prev is not None and abs(inertia - prev) <= 1e-5 * abs(prev):
                break
            prev = inertia
    return C


def _kmeans_plusplus(X: np.ndarray, K: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; ``2 + log K`` candidates per centre)."""
    n = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    trials = 2 + int(np.log(K))
    centers = np.empty((K, X.shape[1]), dtype=np.float64)
    first = int(rng.integers(n))
    centers[0] = X[first]
    closest = np.maximum(sq - 2 * X @ X[first] + sq[first], 0)
    pot = closest.sum()
    for c in range(1, K):
        if pot <= 0:
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * pot)
            cand = np.minimum(cand, n - 1)
        d2 = np.maximum(sq[None, :] - 2 * (X[cand] @ X.T) + sq[cand][:, None], 0)
        np.minimum(d2, closest[None, :], out=d2)
        pots = d2.sum(axis=1)
        best = int(np.argmin(pots))
        centers[c] = X[cand[best]]
        closest, pot = d2[best], pots[best]
    return centers


# ----------------------------------------------------------------------------- the algorithm


def harmonize(
    Z: np.ndarray,
    design: Design,
    *,
    theta: np.ndarray,
    lamb: np.ndarray | None,
    sigma: np.ndarray,
    K: int,
    block_size: float = 0.05,
    max_iter_harmony: int = 10,
    max_iter_kmeans: int = 4,
    epsilon_cluster: float = 1e-3,
    epsilon_harmony: float = 1e-2,
    alpha: float = 0.2,
    batch_prop_cutoff: float = 1e-5,
    random_state: int | None = 0,
    backend: str = "numpy",
    device: str = "auto",
    dtype: str = "float32",
    callback: Callable[[int, float], None] | None = None,
) -> HarmonyState:
    """Run Harmony on a cells x d array with a validated design.

    Parameters are resolved per batch / per cluster by :func:`scaml.harmony.run_harmony`:
    ``theta`` (B,), ``lamb`` (B + 1,) with the intercept's penalty first, or None for the
    automatic ``alpha * E``, ``sigma`` (K,). ``callback(iteration, objective)`` is called after each
    Harmony iteration.
    """
    be = make_backend(backend, device, dtype)
    rng = np.random.default_rng(random_state)
    N, d = Z.shape
    B = design.B
    codes = design.codes
    n_cov = codes.shape[1]
    N_b = np.bincount(codes.ravel(), minlength=B).astype(np.float64)
    Pr_b = N_b / N
    theta = np.asarray(theta, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    norm_const = 2000.0 / N

    # --- groups (combinations of levels)
    if n_cov == 1:
        uniq, gcode = np.unique(codes[:, 0], return_inverse=True)
        group_levels = uniq[:, None]
    else:
        group_levels, gcode = np.unique(codes, axis=0, return_inverse=True)
    gcode = np.asarray(gcode, dtype=np.int64).reshape(-1)
    G = group_levels.shape[0]
    A = np.zeros((G, B))  # group -> batch indicator (one 1 per covariate)
    for c in range(n_cov):
        A[np.arange(G), group_levels[:, c]] = 1.0

    # --- internal cell order: by group, then by block, random within. Every group is a contiguous
    # row range (the ridge step works on whole groups) and so is every (group, block) piece. The
    # blocks are random cell subsets stratified by group (cells dealt round-robin within a group).
    n_blocks = min(max(1, int(math.ceil(1.0 / block_size - 1e-9))), N)
    order0 = np.lexsort((rng.random(N), gcode))  # by group, random within
    gsorted = gcode[order0]
    group_start = np.concatenate([[0], np.cumsum(np.bincount(gsorted, minlength=G))]).astype(
        np.int64
    )
    block_of = (np.arange(N) - group_start[gsorted]) % n_blocks
    order = order0[np.lexsort((block_of, gsorted))]
    inverse = np.empty(N, dtype=np.int64)
    inverse[order] = np.arange(N)
    segments = [(int(group_start[g]), int(group_start[g + 1]), g) for g in range(G)]
    pieces = np.zeros((G, n_blocks + 1), dtype=np.int64)  # start of block j inside group g
    for g in range(G):
        n_g = int(group_start[g + 1] - group_start[g])
        per = np.bincount(np.arange(n_g) % n_blocks, minlength=n_blocks)
        pieces[g] = group_start[g] + np.concatenate([[0], np.cumsum(per)])
    blocks = []  # (row ranges, group ids, counts)
    for j in range(n_blocks):
        lo, hi = pieces[:, j], pieces[:, j + 1]
        gids = np.flatnonzero(hi > lo)
        ranges = [(int(lo[g]), int(hi[g])) for g in gids]
        if ranges:  # tiny data: a block can be empty
            blocks.append((ranges, gids, (hi - lo)[gids]))
    n_blocks = len(blocks)

    # soft assignment exp(-dist / sigma) = exp(z.(2 y / sigma)) * exp(-2 / sigma): without a row
    # shift when no overflow / underflow is possible (|z.y| <= 1), else the shifted (safe) form
    scale = 2.0 / sigma
    fast = float(scale.max()) <= 0.25 * math.log(np.finfo(np.dtype(dtype)).max)
    offset = None if fast else -scale
    kernel_factor = np.exp(-scale) if fast else np.ones(K)

    # --- arrays (internal order)
    Z_orig = be.source(Z, order)  # rows of the input in the internal order (numpy: no copy)
    del Z
    Z_cos = be.empty((N, d))
    for a in range(0, N, _CHUNK):
        be.l2_rows(Z_orig.rows(a, min(a + _CHUNK, N)), Z_cos[a : a + _CHUNK])
    R = be.empty((N, K))

    seconds = {
        "setup": 0.0,
        "kmeans": 0.0,
        "kernel": 0.0,
        "clustering": 0.0,
        "objective": 0.0,
        "correction": 0.0,
    }
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] += now - clock
        clock = now

    lap("setup")
    with be.parallel():
        Y = kmeans_centroids(be, Z_cos, K, rng)  # K x d
    Y /= np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-30)
    Y = Y.T.copy()  # d x K

    state = HarmonyState()
    obj_k = state.objective_kmeans
    obj_h = state.objective_harmony

    def objective(O: np.ndarray, Nk: np.ndarray, Yw) -> float:
        E = np.outer(Nk, Pr_b)
        cross, ent = be.objective_terms(R, Z_cos, Yw)
        kmeans_error = 2.0 * Nk.sum() - 2.0 * cross.sum()
        entropy = float(sigma @ ent)
        ratio = np.log((O + E + 1.0) / (2.0 * E + 1.0))
        cross_entropy = float(np.sum(sigma[:, None] * O * theta[None, :] * ratio))
        return float((kmeans_error + entropy + cross_entropy) * norm_const)

    def cold_start(Yw, Ys):
        be.cold_start(Z_cos, Ys, offset, R, kernel_factor)
        cache = be.block_sums(R, blocks)
        gs = np.zeros((G, K))
        for (_, gids, _), sums in zip(blocks, cache, strict=True):
            gs[gids] += sums
        return (A.T @ gs).T, gs.sum(axis=0), cache  # O (K x B), N_k, per-block group sums

    Yw, Ys = be.small(Y), be.small(Y * scale[None, :])
    lap("kmeans")
    with be.parallel():  # numpy: thread pool for row pieces, BLAS single-threaded inside
        O, Nk, cache = cold_start(Yw, Ys)
        lap("kernel")
        obj_k.append(objective(O, Nk, Yw))
        obj_h.append(obj_k[-1])
        lap("objective")

        converged = False
        n_iter = 0
        V = np.zeros((G, K, d))
        check = max_iter_kmeans > _WINDOW + 1  # else no convergence check can ever happen
        for it in range(1, max_iter_harmony + 1):
            n_iter = it
            if it > 1:
                O, Nk, cache = cold_start(Yw, Ys)
                lap("kernel")
            # ---- clustering: block updates of R with the diversity penalty
            rounds = 0
            for i in range(max_iter_kmeans):
                rounds = i + 1
                for j in rng.permutation(n_blocks):
                    ranges, gids, counts = blocks[j]
                    Ag = A[gids]
                    old = cache[j]  # group sums of the block's current R
                    O -= (Ag.T @ old).T
                    Nk -= old.sum(axis=0)
                    E = np.outer(Nk, Pr_b)
                    pen_b = ((2.0 * E + 1.0) / (O + E + 1.0)) ** theta[None, :]  # K x B
                    pen_g = (Ag @ pen_b.T) * kernel_factor[None, :]  # G' x K
                    new = be.block_update(R, Z_cos, Ys, offset, ranges, counts, pen_g)
                    cache[j] = new
                    O += (Ag.T @ new).T
                    Nk += new.sum(axis=0)
                lap("clustering")
                if check or i == max_iter_kmeans - 1:
                    obj_k.append(objective(O, Nk, Yw))
                    lap("objective")
                if check and i > _WINDOW:
                    old_w = sum(obj_k[-2 - w] for w in range(_WINDOW))
                    new_w = sum(obj_k[-1 - w] for w in range(_WINDOW))
                    if (old_w - new_w) / abs(old_w) < epsilon_cluster:
                        break
            state.kmeans_rounds.append(rounds)
            obj_h.append(obj_k[-1])

            # ---- mixture-of-experts ridge correction
            rsum, zsum = be.ridge_sums(R, Z_orig, segments, G)  # G x K, G x d x K
            Y, V = _ridge(rsum, zsum, A, design, Nk, Pr_b, N_b, lamb, alpha, batch_prop_cutoff, Y)
            Yw, Ys = be.small(Y), be.small(Y * scale[None, :])
            be.correct(
                R, Z_orig, segments, V, Z_cos, normalise=True
            )  # Z_cos = rows of Z_corr at unit length
            lap("correction")

            if callback is not None:
                callback(it, obj_h[-1])
            if (obj_h[-2] - obj_h[-1]) / abs(obj_h[-2]) < epsilon_harmony:
                converged = True
                break

        # Z_corr = Z_orig - sum_k R_k (Phi W_k) of the last correction, written in the caller's order
        Z_cos = None  # freed; Z_cos is recomputed from Z_corr when asked for
        Z_corr = np.empty((N, d), dtype=np.dtype(dtype))
        if be.name == "numpy":
            be.correct(R, Z_orig, segments, V, Z_corr, rows=order)
        else:
            out = be.empty((N, d))
            be.correct(R, Z_orig, segments, V, out, rows=order)
            Z_corr[...] = be.to_numpy(out)
            del out
    del Z_orig
    state.Z_corr = Z_corr
    state.internal_R = be.to_numpy(R)
    state.inverse = inverse
    state.Y = np.asarray(Y)
    state.O = O
    state.E = np.outer(Nk, Pr_b)
    state.n_iter = n_iter
    state.converged = converged
    lap("setup")
    state.seconds = {k: round(v, 4) for k, v in seconds.items()}
    return state


def _ridge(rsum, zsum, A, design: Design, Nk, Pr_b, N_b, lamb, alpha, cutoff, Y_prev):
    """Per-cluster ridge regressions from per-group sums.

    Returns the new centroids Y (d x K, unit columns) and V (G x K x d): the correction of a cell of
    group g in cluster k is ``R_ik * V[g, k]``.
    """
    G, d, K = zsum.shape
    B = design.B
    cov_of_b = design.covariate_of_batch
    n_cov = len(design.n_levels)
    X = np.hstack([np.ones((G, 1)), A])  # G x (B + 1)
    O = (A.T @ rsum).T  # K x B
    E = np.outer(Nk, Pr_b)
    Y = Y_prev.copy()
    V = np.zeros((G, K, d))
    for k in range(K):
        qualifies = O[k] / N_b > cutoff
        n_ok = np.bincount(cov_of_b[qualifies], minlength=n_cov)
        active = n_ok > 1
        keep_b = qualifies & active[cov_of_b]
        if not keep_b.any():
            continue  # no covariate to correct in this cluster
        # cells enter the regression when all their active covariates' levels are kept
        dropped = active[cov_of_b] & ~keep_b
        g_in = ~(A[:, dropped].any(axis=1)) if dropped.any() else np.ones(G, dtype=bool)
        cols = np.concatenate([[0], 1 + np.flatnonzero(keep_b)])
        Xg = X[g_in][:, cols]  # G' x p
        w = rsum[g_in, k]
        cov = (Xg * w[:, None]).T @ Xg
        if lamb is None:
            pen = np.concatenate([[0.0], alpha * E[k, keep_b]])
        else:
            pen = lamb[cols]
        cov[np.diag_indices_from(cov)] += pen
        rhs = Xg.T @ zsum[g_in, :, k]  # p x d
        try:
            W = np.linalg.solve(cov, rhs)
        except np.linalg.LinAlgError:
            W = np.linalg.lstsq(cov, rhs, rcond=None)[0]
        Y[:, k] = W[0]
        Wb = np.zeros((B, d))
        Wb[keep_b] = W[1:]
        V[g_in, k] = A[g_in] @ Wb
    Y /= np.maximum(np.linalg.norm(Y, axis=0, keepdims=True), 1e-30)
    return Y, V
