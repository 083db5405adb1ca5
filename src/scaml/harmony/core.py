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
    the one-hot design of the batch covariates (kept as integer codes, never as a cells x B matrix;
    ``Phi_g`` holds its G distinct rows, one per group of cells with the same batch levels).
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

In the code: :class:`HarmonyParams` validates the parameters and :meth:`HarmonyParams.resolve`
resolves them for a data set (:class:`ResolvedHarmonyParams`); :func:`harmonize` runs
:func:`initialize` (:func:`cell_layout`, :func:`cosine_normalize`, :func:`init_centroids`), then
per iteration :func:`soft_assign` (step 1), :func:`cluster` (step 2: :func:`update_R`,
:func:`diversity_penalty`, :func:`compute_objective`) and :func:`moe_correct_ridge` (step 3:
:func:`ridge_regressions`), and finally :func:`corrected_embedding`.

Implementation notes (speed and memory): cells are stored internally sorted by their combination of
batch levels ("group") and, within a group, by block, in a seeded random order; so every group is
a contiguous row range (the ridge step works on slices, with per-group sums of ``R``; no ``Phi``
matrix) and so is every (group, block) piece. The ``ceil(1 / block_size)`` update blocks are random
cell subsets stratified by group (a group's cells are dealt round-robin to the blocks), fixed for
the run and visited in a new random order every round (R reshuffles the cells every round; the
difference is immaterial for 5% blocks). Each block's previous per-group sums of ``R`` are cached,
so taking a block out of ``O`` / ``E`` costs nothing.
Neither ``Z_cos`` nor ``Y`` moves during an iteration's clustering, so with numpy (on the fast kernel,
:func:`soft_kernel`) ``R`` is kept as the kernel ``exp(z_i . y_k 2 / sigma_k)``, computed once per
iteration at the cold start, with one penalty vector per (group, block) row range and the reciprocal
row sums (:class:`_KernelR`): a block update is then two GEMVs over its kernel rows (no GEMM, no exp),
and the ridge sums and the correction scale ``Z`` or ``V`` instead of forming ``R``. (R harmony keeps
the kernel too, as a cells x K matrix next to ``R`` and the distances.) The torch backend recomputes a
block's kernel from ``Z_cos`` and ``Y`` at its update (one GEMM per block, no kernel matrix). The
k-means error is ``2 sum(R) - 2 tr(Y^T Z_cos^T R)``, the objective is only evaluated when a
convergence check needs it (with numpy from sums gathered during the assignment), and the correction
writes the unit-length rows straight into ``Z_cos``; ``Z_corr`` itself is only formed at the end, in
the caller's cell order.
Working memory: ``R`` or its kernel (cells x K) and ``Z_cos`` (cells x d) plus per-block and per-chunk buffers;
with numpy the input is read in place (rows gathered per chunk) rather than copied, and ``Z_cos``
is freed before the output ``Z_corr`` is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ScamlError

_WINDOW = 3  # k-means convergence window (R harmony)
_CHUNK = 1 << 14  # rows per chunk for cells x K elementwise work
#: rows per piece of the soft assignment (numpy): a 4,096 x 100 float32 piece (1.6 MB) stays in a
#: core's L2 cache through its GEMM, exp and normalisation, which run ~1.5x faster than on 25k-row pieces
_PIECE = 1 << 12


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


# ----------------------------------------------------------------------------- parameters

BACKENDS = ("auto", "numpy", "torch")
DTYPES = ("float32", "float64")
_CUDA_DEVICE = re.compile(r"cuda(:[0-9]+)?")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _positive_int(name: str, value: Any, hint: str) -> int:
    if not _is_int(value) or value < 1:
        raise ScamlError(f"{name} must be a positive integer ({hint}); got {value!r}.")
    return int(value)


def _real(name: str, value: Any, ok: Callable[[float], bool], must: str) -> float:
    """``value`` as a finite float for which ``ok`` holds; else a ScamlError saying what it ``must`` be."""
    if not (_is_real(value) and math.isfinite(float(value)) and ok(float(value))):
        raise ScamlError(f"{name} must be {must}; got {value!r}.")
    return float(value)


def _values(name: str, value: Any, *, positive: bool, hint: str) -> tuple[float, ...]:
    """One number or a sequence of numbers, finite and > 0 (``positive``) or >= 0, as a tuple."""
    arr = None
    if not isinstance(value, (str, bytes, bool, np.bool_, dict)) and value is not None:
        try:
            arr = np.atleast_1d(np.asarray(value, dtype=np.float64)).reshape(-1)
        except (TypeError, ValueError):
            arr = None
    if arr is None or arr.size == 0:
        raise ScamlError(f"{name} must be a number or a list of numbers ({hint}); got {value!r}.")
    bad = ~np.isfinite(arr) | ((arr <= 0) if positive else (arr < 0))
    if bad.any():
        sign = "positive" if positive else "not negative"
        shown = (
            repr(float(arr[0]))
            if arr.size == 1
            else f"{arr[bad][:5].tolist()} among its {arr.size} values"
        )
        raise ScamlError(f"{name} must be finite and {sign} ({hint}); got {shown}.")
    return tuple(float(v) for v in arr)


def _is_minus_one(value: Any) -> bool:
    """Whether ``value`` is the number -1 (R harmony's "estimate lambda")."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or np.ndim(value) != 0:
        return False
    try:
        return float(value) == -1
    except (TypeError, ValueError):
        return False


def _per_batch(
    name: str, values: tuple[float, ...], n_levels: Sequence[int], *, intercept: bool = False
) -> np.ndarray:
    """One number, one per covariate, one per batch level (or, for lamb, intercept + one per level)."""
    arr = np.asarray(values, dtype=np.float64)
    B = int(sum(n_levels))
    if arr.size == 1:
        return np.repeat(arr, B)
    if arr.size == len(n_levels):
        return np.repeat(arr, n_levels)
    if arr.size == B:
        return arr
    if intercept and arr.size == B + 1:
        return arr
    forms = f"one number, one per covariate ({len(n_levels)}) or one per batch level ({B})"
    if intercept:
        forms += f", or the intercept's penalty then one per batch level ({B + 1})"
    raise ScamlError(f"{name} must be {forms}; got {arr.size} values.")


def resolve_backend(backend: str, device: str) -> tuple[str, str]:
    """The backend and device a run uses: ``("numpy", "cpu")`` or ``("torch", device)``.

    Parameters
    ----------
    backend
        ``"numpy"``, ``"torch"`` or ``"auto"``: torch on a CUDA device when ``device`` allows it
        (``"auto"``, ``"cuda"``, ``"cuda:N"``) and one is present, numpy otherwise (numpy is the
        faster of the two on CPU, see benchmarks/README.md).
    device
        ``"auto"`` (torch: CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns
    -------
    tuple of str
        The backend's name and the device, as torch writes it.
    """
    device = str(device)
    if backend == "auto":
        if device == "auto" or device.startswith("cuda"):
            try:
                import torch

                if torch.cuda.is_available():
                    return "torch", "cuda" if device == "auto" else str(torch.device(device))
            except ImportError:  # pragma: no cover - torch is a dependency
                pass
        backend = "numpy"
    if backend == "numpy":
        return "numpy", "cpu"
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return "torch", str(torch.device(device))


@dataclass(frozen=True)
class HarmonyParams:
    """Harmony's parameters as the user gives them (R harmony / harmonypy names), validated.

    Creating one checks every parameter that does not depend on the data (types, ranges, backend,
    device, dtype) and raises :class:`~scaml.errors.ScamlError` naming the bad value and the fix;
    :meth:`resolve` checks the rest against the data (how many values ``theta``, ``lamb`` and
    ``sigma`` have, ``nclust`` against the number of cells) and resolves the defaults.
    See :func:`scaml.harmony.run_harmony` for the meaning of each parameter; ``theta``, ``lamb`` and
    ``sigma`` are stored as tuples of floats, numbers as ``int`` / ``float``.

    Parameters
    ----------
    theta
        Diversity penalty: one number, one per covariate or one per batch level (>= 0); None is 2.
    lamb
        Ridge penalty (>= 0): one number, one per covariate, one per batch level, or the intercept's
        penalty then one per batch level; None (or -1) estimates it as ``alpha * E``.
    sigma
        Soft k-means width (> 0): one number or one per cluster.
    nclust
        Number of clusters (positive integer); None is ``min(round(N / 30), 100)``.
    tau
        Protection of small batches (>= 0; 0 turns it off).
    block_size
        Fraction of cells updated together, in (0, 1].
    max_iter_harmony, max_iter_kmeans
        Positive integers.
    epsilon_cluster, epsilon_harmony
        Convergence tolerances (any number; -inf never stops early).
    alpha
        Factor of the automatic ridge penalty (> 0).
    batch_prop_cutoff
        In [0, 1].
    random_state
        None or a non-negative integer seed.
    backend, device, dtype
        ``"auto"`` / ``"numpy"`` / ``"torch"``; ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:N"``;
        ``"float32"`` / ``"float64"``.

    Raises
    ------
    ScamlError
        For a parameter of the wrong type or out of range, an unknown backend, device or dtype, or
        a CUDA device that torch cannot see.
    """

    theta: float | Sequence[float] | None = None
    lamb: float | Sequence[float] | None = None
    sigma: float | Sequence[float] = 0.1
    nclust: int | None = None
    tau: float = 0
    block_size: float = 0.05
    max_iter_harmony: int = 10
    max_iter_kmeans: int = 4
    epsilon_cluster: float = 1e-3
    epsilon_harmony: float = 1e-2
    alpha: float = 0.2
    batch_prop_cutoff: float = 1e-5
    random_state: int | None = 0
    backend: str = "auto"
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name, value in self._validated().items():
            object.__setattr__(self, name, value)

    def _validated(self) -> dict[str, Any]:
        """Every field checked and normalised; raises ScamlError for the first bad one."""
        out: dict[str, Any] = {}
        out["theta"] = (
            None
            if self.theta is None
            else _values(
                "theta",
                self.theta,
                positive=False,
                hint="0 turns the diversity penalty off; default 2",
            )
        )
        lamb = self.lamb
        auto = lamb is None or _is_minus_one(lamb)
        out["lamb"] = (
            None
            if auto
            else _values("lamb", lamb, positive=False, hint="None or -1 estimates it as alpha * E")
        )
        out["sigma"] = _values("sigma", self.sigma, positive=True, hint="default 0.1")
        out["nclust"] = (
            None
            if self.nclust is None
            else _positive_int("nclust", self.nclust, "or None for min(round(N / 30), 100)")
        )
        out["tau"] = _real(
            "tau", self.tau, lambda v: v >= 0, "a finite number >= 0 (0 turns it off)"
        )
        out["block_size"] = _real(
            "block_size", self.block_size, lambda v: 0 < v <= 1, "a number in (0, 1] (default 0.05)"
        )
        for name, hint in (
            ("max_iter_harmony", "Harmony iterations; default 10"),
            ("max_iter_kmeans", "clustering rounds per Harmony iteration; default 4"),
        ):
            out[name] = _positive_int(name, getattr(self, name), hint)
        for name in ("epsilon_cluster", "epsilon_harmony"):
            value = getattr(self, name)
            if not _is_real(value) or math.isnan(float(value)):
                raise ScamlError(
                    f"{name} must be a number (a relative decrease of the objective; -inf never stops "
                    f"early); got {value!r}."
                )
            out[name] = float(value)
        out["alpha"] = _real(
            "alpha", self.alpha, lambda v: v > 0, "a finite number > 0 (default 0.2)"
        )
        out["batch_prop_cutoff"] = _real(
            "batch_prop_cutoff",
            self.batch_prop_cutoff,
            lambda v: 0 <= v <= 1,
            "a number in [0, 1] (default 1e-5)",
        )
        seed = self.random_state
        if seed is not None and (not _is_int(seed) or seed < 0):
            raise ScamlError(
                f"random_state must be None or a non-negative integer seed; got {seed!r}."
            )
        out["random_state"] = None if seed is None else int(seed)
        out.update(self._validated_backend())
        return out

    def _validated_backend(self) -> dict[str, str]:
        if self.backend not in BACKENDS:
            raise ScamlError(f"backend must be one of {BACKENDS}; got {self.backend!r}.")
        if str(self.dtype) not in DTYPES:
            raise ScamlError(f"dtype must be one of {DTYPES}; got {self.dtype!r}.")
        device = str(self.device)
        cuda = _CUDA_DEVICE.fullmatch(device) is not None
        if device not in ("auto", "cpu") and not cuda:
            raise ScamlError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {self.device!r}."
            )
        if cuda:
            import torch

            if not torch.cuda.is_available():
                raise ScamlError(
                    f"device={device!r} was asked for but torch sees no CUDA GPU; use device='cpu' "
                    "or 'auto'."
                )
            if self.backend == "numpy":
                raise ScamlError(
                    "backend='numpy' runs on the CPU only; use backend='torch' (or 'auto') with a "
                    f"CUDA device (device={device!r})."
                )
        return {"backend": self.backend, "device": device, "dtype": str(self.dtype)}

    def resolve(
        self, n_cells: int, n_levels: Sequence[int], cells_per_batch: np.ndarray
    ) -> ResolvedHarmonyParams:
        """Check the parameters against the data and resolve the defaults.

        Parameters
        ----------
        n_cells
            Number of cells N.
        n_levels
            Number of batch levels of each covariate.
        cells_per_batch
            ``N_b``: number of cells of each batch level (covariates one after the other).

        Returns
        -------
        ResolvedHarmonyParams
            ``nclust`` (default ``min(round(N / 30), 100)``, at least 1), ``theta`` per batch level
            (scaled by ``1 - exp(-(N_b / (nclust * tau)) ** 2)`` when ``tau > 0``), ``lamb`` as the
            intercept's penalty then one per batch level (or None: ``alpha * E``), ``sigma`` per
            cluster, and the backend and device a run uses.

        Raises
        ------
        ScamlError
            When ``nclust`` exceeds the number of cells or ``theta``, ``lamb`` or ``sigma`` has a
            number of values that fits neither form.
        """
        N = int(n_cells)
        nclust = self.nclust
        if nclust is None:
            nclust = max(int(min(round(N / 30.0), 100)), 1)
        if nclust > N:
            raise ScamlError(
                f"nclust ({nclust}) is larger than the number of cells ({N}); use a smaller nclust."
            )
        N_b = np.asarray(cells_per_batch, dtype=np.float64)
        theta = _per_batch("theta", (2.0,) if self.theta is None else self.theta, n_levels)
        if self.tau > 0:
            theta = theta * (1.0 - np.exp(-((N_b / (nclust * self.tau)) ** 2)))
        lamb = None
        if self.lamb is not None:
            lamb = _per_batch("lamb", self.lamb, n_levels, intercept=True)
            if lamb.size == int(sum(n_levels)):
                lamb = np.concatenate([[0.0], lamb])
        sigma = np.asarray(self.sigma, dtype=np.float64)
        if sigma.size == 1:
            sigma = np.repeat(sigma, nclust)
        if sigma.size != nclust:
            raise ScamlError(
                f"sigma must be one number or one per cluster ({nclust}); got {sigma.size} values."
            )
        backend, device = resolve_backend(self.backend, self.device)
        for arr in (theta, lamb, sigma):
            if arr is not None:
                arr.flags.writeable = False
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(
            theta=theta, lamb=lamb, sigma=sigma, nclust=int(nclust), backend=backend, device=device
        )
        return ResolvedHarmonyParams(**fields, n_cells=N, n_levels=tuple(int(n) for n in n_levels))


@dataclass(frozen=True, eq=False)
class ResolvedHarmonyParams:
    """Harmony's parameters resolved for one data set (made by :meth:`HarmonyParams.resolve`).

    Attributes
    ----------
    theta
        Diversity penalty per batch level, (B,) float64 (``tau`` applied).
    lamb
        Ridge penalty, intercept first then per batch level, (B + 1,) float64; None for the
        automatic ``alpha * E[k, b]``.
    sigma
        Soft k-means width per cluster, (K,) float64.
    nclust
        Number of clusters K.
    backend, device
        The backend used (``"numpy"`` or ``"torch"``) and its device (``"cpu"``, ``"cuda"`` ...).
    n_cells, n_levels
        Number of cells and number of levels of each covariate.
    tau, block_size, max_iter_harmony, max_iter_kmeans, epsilon_cluster, epsilon_harmony, alpha, \
batch_prop_cutoff, random_state, dtype
        As given (validated).
    """

    theta: np.ndarray
    lamb: np.ndarray | None
    sigma: np.ndarray
    nclust: int
    tau: float
    block_size: float
    max_iter_harmony: int
    max_iter_kmeans: int
    epsilon_cluster: float
    epsilon_harmony: float
    alpha: float
    batch_prop_cutoff: float
    random_state: int | None
    backend: str
    device: str
    dtype: str
    n_cells: int
    n_levels: tuple[int, ...]

    @property
    def K(self) -> int:  # noqa: N802 - paper notation
        """Number of clusters (``nclust``)."""
        return self.nclust

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON-like values (``ho.params`` without the data's shape)."""
        sigma = self.sigma
        return {
            "theta": self.theta.tolist(),
            "lamb": "auto (alpha * E)" if self.lamb is None else self.lamb.tolist(),
            "sigma": float(sigma[0]) if np.all(sigma == sigma[0]) else sigma.tolist(),
            "nclust": self.nclust,
            "tau": self.tau,
            "block_size": self.block_size,
            "max_iter_harmony": self.max_iter_harmony,
            "max_iter_kmeans": self.max_iter_kmeans,
            "epsilon_cluster": self.epsilon_cluster,
            "epsilon_harmony": self.epsilon_harmony,
            "alpha": self.alpha,
            "batch_prop_cutoff": self.batch_prop_cutoff,
            "random_state": self.random_state,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
        }


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


class _KernelR:
    """Soft assignments kept as their kernel (numpy, fast kernel): ``R[i] = kern[i] * pen[r(i)] * inv[i]``.

    Within a Harmony iteration neither ``Z_cos`` nor ``Y`` moves, so the kernel ``exp(z_i . y_k
    scale_k)`` is the same at the iteration's cold start and in every clustering round after it. It is
    computed once per iteration (one GEMM and one exp per cell and cluster); a block update then only
    multiplies its rows by the block's new penalty and renormalises them. ``pen`` holds one K vector per
    (block, group) row range of the layout (the penalty, kernel factor included, that the range was
    last assigned with) and ``inv`` the reciprocal row sums. The memory is that of ``R`` (N x K) plus
    N numbers; rows of ``R`` are formed on demand (``R[a:b]``), and :meth:`materialise` turns the
    kernel into ``R`` in place at the end of a run.
    """

    def __init__(self, N: int, K: int, dtype, ranges: Sequence[tuple[int, int]]) -> None:
        self.kern = np.empty((N, K), dtype=dtype)
        self.inv = np.empty(N, dtype=dtype)
        self.starts = np.array(sorted(a for a, _ in ranges), dtype=np.int64)
        self._range = {int(a): i for i, a in enumerate(self.starts)}
        self.pen: np.ndarray | None = np.ones((self.starts.size, K), dtype=dtype)
        self.shape = (N, K)
        self.dtype = np.dtype(dtype)

    def set_penalty(self, start: int, pen: np.ndarray) -> None:
        """Record the penalty ``pen`` (K,) of the row range that starts at ``start``."""
        self.pen[self._range[start]] = pen

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("rows of a kernel-kept R are taken as a slice, R[a:b]")
        if self.pen is None:
            return self.kern[rows]
        a, b, step = rows.indices(self.shape[0])
        if step != 1:
            raise TypeError("rows of a kernel-kept R are taken as a contiguous slice")
        out = np.empty((max(b - a, 0), self.shape[1]), dtype=self.dtype)
        for s, e, r in self.pieces(a, b, b - a):
            piece = out[s - a : e - a]
            np.multiply(self.kern[s:e], self.pen[r], out=piece)
            piece *= self.inv[s:e, None]
        return out

    def pieces(self, a0: int, b0: int, size: int) -> list[tuple[int, int, int]]:
        """``(a, b, r)``: rows ``a0:b0`` in pieces of at most ``size`` rows that stay inside one row
        range ``r`` (one penalty per piece)."""
        out = []
        r = int(np.searchsorted(self.starts, a0, side="right")) - 1
        s = a0
        while s < b0:
            e = min(int(self.starts[r + 1]) if r + 1 < self.starts.size else self.shape[0], b0)
            out += [(a, min(a + size, e), r) for a in range(s, e, max(size, 1))]
            s, r = e, r + 1
        return out

    def materialise(self) -> np.ndarray:
        """Turn the kernel into ``R`` in place (range by range) and return it."""
        if self.pen is not None:
            for s, e, r in self.pieces(0, self.shape[0], _CHUNK):
                self.kern[s:e] *= self.pen[r]
                self.kern[s:e] *= self.inv[s:e, None]
            self.pen = None
        return self.kern


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
        return x.materialise() if isinstance(x, _KernelR) else np.asarray(x)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, dtype=self.dtype)

    def assignment(self, N: int, K: int, layout: CellLayout, fast: bool) -> _KernelR | np.ndarray:
        """Storage for ``R``: on the fast kernel a :class:`_KernelR`, else an N x K array."""
        if not fast:
            return self.empty((N, K))
        return _KernelR(N, K, self.dtype, [r for ranges, _, _ in layout.blocks for r in ranges])

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

    def _assign_kernel(self, R: _KernelR, Z_cos, Ys, a, b, pen, stats: bool, fresh: bool):
        """:meth:`_assign` on a kernel-kept ``R``: with ``fresh`` the kernel rows are computed first
        (``exp(Z_cos Ys)``, once per Harmony iteration); then the row sums of the kernel times ``pen``
        (one GEMV) give the reciprocals kept in ``R.inv``, and the column sums of ``R`` are those
        reciprocals times the kernel (a second GEMV) times ``pen``. With ``stats`` the rows of ``R`` are
        formed, and the objective's statistics read the exponent back as ``log`` of the kernel."""
        kern = R.kern[a:b]
        if fresh:
            np.matmul(Z_cos[a:b], Ys, out=kern)
            np.exp(kern, out=kern)
        inv = kern @ pen  # two GEMVs over the kernel rows, no cells x K temporary
        np.maximum(inv, self.tiny, out=inv)
        np.reciprocal(inv, out=inv)
        R.inv[a:b] = inv
        sums = (inv @ kern) * pen
        if not stats:
            return sums
        t = np.multiply(kern, pen)
        t *= inv[:, None]  # the rows of R
        S = np.log(kern)
        np.log(inv, out=inv)
        return sums, np.einsum("ik,ik->k", t, S, dtype=np.float64), -(inv @ t).astype(np.float64)

    def _assign(self, R, Z_cos, Ys, offset, a, b, pen, stats: bool = False, fresh: bool = True):
        """``R[a:b] = normalise_rows(exp(...) * pen)`` in place; returns the column sums (with ``stats``, on
        the fast path, also ``sum_i R_ik S_ik`` and ``sum_i R_ik log rs_i``: S the exponent before the
        penalty, rs the row sums; see :func:`objective_from_assignment`).

        On the fast path (no ``offset``) ``R`` is a :class:`_KernelR` (:meth:`_assign_kernel`; ``fresh``:
        recompute its kernel rows). Else the kernel is shifted row by row to a maximum of 0 before the
        exp (the safe path).
        """
        if isinstance(R, _KernelR):
            return self._assign_kernel(R, Z_cos, Ys, a, b, pen, stats, fresh)
        t = R[a:b]
        self._soft(Z_cos[a:b], Ys, offset, t)
        t *= pen
        rs = t.sum(axis=1, keepdims=True)
        np.maximum(rs, self.tiny, out=rs)
        t /= rs
        return t.sum(axis=0)

    def assign_blocks(self, R, Z_cos, Ys, offset, blocks, pens, stats: bool = False, fresh: bool = False):
        """Re-assign the cells of each block (row ranges, one per group) with its per-group
        penalties ``pens[j]`` (groups x K) in one parallel map of cache-sized row pieces; return
        each block's new per-group sums (groups x K, float64) and, with ``stats`` (fast path only), the
        objective's statistics of :meth:`_assign` summed over the cells (two K vectors; else None).
        ``fresh``: the kernel of a kernel-kept ``R`` is recomputed for these rows (the cold start)."""
        off = None if offset is None else self.small(offset)
        stats = stats and offset is None
        pens = [self.small(p) for p in pens]
        if isinstance(R, _KernelR):
            for (ranges, _, _), pen in zip(blocks, pens, strict=True):
                for (a0, _), p in zip(ranges, pen, strict=True):
                    R.set_penalty(a0, p)
        tasks = [
            (j, i, a, b)
            for j, (ranges, _, _) in enumerate(blocks)
            for i, (a0, b0) in enumerate(ranges)
            for a, b in self._pieces(a0, b0, _PIECE)
        ]
        parts = self._map(
            lambda t: self._assign(R, Z_cos, Ys, off, t[2], t[3], pens[t[0]][t[1]], stats, fresh), tasks
        )
        sums = [np.zeros((len(ranges), R.shape[1])) for ranges, _, _ in blocks]
        rs_k, lr_k = np.zeros(R.shape[1]), np.zeros(R.shape[1])
        for (j, i, _, _), part in zip(tasks, parts, strict=True):
            if stats:
                part, rs, lr = part
                rs_k += rs
                lr_k += lr
            sums[j][i] += part
        return sums, ((rs_k, lr_k) if stats else None)

    def cold_start(self, R, Z_cos, Ys, offset, blocks, factor) -> list[np.ndarray]:
        """``R = softmax_rows(-dist / sigma)`` (the plain soft assignment) block by block, ``factor``
        (K,) multiplying the kernel before normalising (the fast path's ``exp(-2 / sigma)``);
        returns each block's per-group sums of the new ``R``."""
        pens = [np.tile(factor, (len(ranges), 1)) for ranges, _, _ in blocks]
        return self.assign_blocks(R, Z_cos, Ys, offset, blocks, pens, fresh=True)[0]

    def block_update(self, R, Z_cos, Ys, offset, ranges, counts, pen_groups, stats: bool = False):
        """Re-assign the cells of one block (row ranges, one per group) with the per-group penalties;
        return their new per-group sums (with ``stats`` on the fast path: and the objective's statistics)."""
        sums, block_stats = self.assign_blocks(R, Z_cos, Ys, offset, [(ranges, None, counts)], [pen_groups], stats)
        return (sums[0], block_stats) if stats else sums[0]

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
        tasks = self._row_tasks(R, segments)

        def piece(t):
            _, a, b, r = t
            Z = Z_orig.rows(a, b)
            if r is None:
                rows = R[a:b]
                return rows.sum(axis=0), (rows.T @ Z).T
            # R = diag(inv) kern diag(pen): scale the piece's Z rows, not its R rows
            kern, inv, pen = R.kern[a:b], R.inv[a:b], R.pen[r]
            return (inv @ kern) * pen, ((Z * inv[:, None]).T @ kern) * pen

        rsum = np.zeros((G, R.shape[1]))
        zsum = np.zeros((G, Z_orig.shape[1], R.shape[1]))
        for (g, _, _, _), (rs, zs) in zip(tasks, self._map(piece, tasks), strict=True):
            rsum[g] += rs
            zsum[g] += zs
        return rsum, zsum

    def correct(self, R, Z_orig, segments, V, out, rows=None, normalise=False) -> None:
        """``Z_orig[seg] - R[seg] @ V[g]`` for every segment of group g (V: G x K x d), row-normalised
        if asked, written to ``out`` (at ``out[rows[a:b]]`` when ``rows`` is given)."""
        V = self.small(V)
        tasks = self._row_tasks(R, segments)

        def piece(task):
            g, a, b, r = task
            if r is None:
                t = R[a:b] @ V[g]
            else:  # diag(inv) kern diag(pen) V[g]
                t = R.kern[a:b] @ (R.pen[r][:, None] * V[g])
                t *= R.inv[a:b, None]
            np.subtract(Z_orig.rows(a, b), t, out=t)
            if normalise:
                self.l2_rows(t, t)
            if rows is None:
                out[a:b] = t
            else:
                out[rows[a:b]] = t

        self._map(piece, tasks)

    def _row_tasks(self, R, segments) -> list[tuple[int, int, int, int | None]]:
        """``(g, a, b, r)``: cache-sized row pieces of every group's rows; with a kernel-kept ``R`` the
        pieces stay inside one of its row ranges ``r`` (else None)."""
        if isinstance(R, _KernelR):
            return [(g, a, b, r) for a0, b0, g in segments for a, b, r in R.pieces(a0, b0, _PIECE)]
        return [(g, a, b, None) for a0, b0, g in segments for a, b in self._pieces(a0, b0, _PIECE)]

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
            sums[used] = np.add.reduceat(np.take(Z[a:b], order, axis=0), starts, axis=0)
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
        # np.take copies whole rows (about 5x faster than fancy indexing on 50-column rows)
        idx = self.order[a:b]
        rows = np.take(self.Z, idx, axis=0) if isinstance(self.Z, np.ndarray) else self.Z[idx]
        return np.asarray(rows, dtype=self.dtype)


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

    def assignment(self, N: int, K: int, layout: CellLayout, fast: bool):
        """Storage for ``R``: an N x K tensor."""
        return self.empty((N, K))

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

    def cold_start(self, R, Z_cos, Ys, offset, blocks, factor) -> list[np.ndarray]:
        off = None if offset is None else self.small(offset)
        fac = self.small(factor)
        for s in range(0, R.shape[0], _CHUNK):
            o = self._soft(Z_cos[s : s + _CHUNK], Ys, off, R[s : s + _CHUNK])
            o.mul_(fac)
            o.div_(o.sum(dim=1, keepdim=True).clamp_min_(self.tiny))
        return self.block_sums(R, blocks)

    def range_sums(self, X, ranges) -> np.ndarray:
        out = self.torch.stack([X[a:b].sum(dim=0) for a, b in ranges])
        return out.to(self.torch.float64).cpu().numpy()

    def block_update(self, R, Z_cos, Ys, offset, ranges, counts, pen_groups, stats: bool = False) -> np.ndarray:
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
    """Build the array backend: ``"numpy"``, ``"torch"`` or ``"auto"`` (see :func:`resolve_backend`).

    Parameters
    ----------
    backend
        ``"numpy"``, ``"torch"`` or ``"auto"``.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (torch only).
    dtype
        ``"float32"`` or ``"float64"``.
    """
    name, device = resolve_backend(backend, device)
    if name == "numpy":
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


class _Clock:
    """Seconds spent in each phase of a run; ``lap(name)`` books the time since the last lap."""

    PHASES = ("setup", "kmeans", "kernel", "clustering", "objective", "correction")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self._last
        self._last = now


@dataclass
class CellLayout:
    """The internal cell order, the groups and the update blocks of one run.

    Attributes
    ----------
    order
        ``order[i]`` is the caller's row of internal row i.
    inverse
        The internal row of each of the caller's rows.
    Phi_g
        G x B, the rows of the one-hot design ``Phi`` of the G groups (combinations of batch
        levels), one 1 per covariate.
    segments
        ``(start, stop, g)``: the contiguous internal rows of each group g.
    blocks
        ``(row ranges, group ids, counts)`` of each update block: one row range per group present
        in the block.
    """

    order: np.ndarray
    inverse: np.ndarray
    Phi_g: np.ndarray
    segments: list[tuple[int, int, int]]
    blocks: list[tuple[list[tuple[int, int]], np.ndarray, np.ndarray]]

    @property
    def G(self) -> int:  # noqa: N802 - paper notation
        return int(self.Phi_g.shape[0])


def _groups(design: Design) -> tuple[np.ndarray, np.ndarray]:
    """The group (combination of batch levels) of every cell and the rows of ``Phi`` per group.

    Returns
    -------
    gcode : np.ndarray
        (N,) group index of each cell.
    Phi_g : np.ndarray
        G x B group -> batch level indicator.
    """
    codes = design.codes
    n_cov = codes.shape[1]
    if n_cov == 1:
        uniq, gcode = np.unique(codes[:, 0], return_inverse=True)
        group_levels = uniq[:, None]
    else:
        group_levels, gcode = np.unique(codes, axis=0, return_inverse=True)
    gcode = np.asarray(gcode, dtype=np.int64).reshape(-1)
    G = group_levels.shape[0]
    Phi_g = np.zeros((G, design.B))
    for c in range(n_cov):
        Phi_g[np.arange(G), group_levels[:, c]] = 1.0
    return gcode, Phi_g


def cell_layout(design: Design, block_size: float, rng: np.random.Generator) -> CellLayout:
    """Sort the cells by group, then by block, in a seeded random order within.

    Every group is then a contiguous row range (the correction works on whole groups) and so is
    every (group, block) piece. The ``ceil(1 / block_size)`` blocks are random cell subsets
    stratified by group (a group's cells are dealt round-robin to the blocks); tiny data sets can
    leave a block empty, and empty blocks are dropped.

    Parameters
    ----------
    design
        The batch design.
    block_size
        Fraction of the cells in one block.
    rng
        The run's random generator (draws N numbers).

    Returns
    -------
    CellLayout
    """
    gcode, Phi_g = _groups(design)
    G = Phi_g.shape[0]
    N = gcode.size
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
    blocks = []
    for j in range(n_blocks):
        lo, hi = pieces[:, j], pieces[:, j + 1]
        gids = np.flatnonzero(hi > lo)
        ranges = [(int(lo[g]), int(hi[g])) for g in gids]
        if ranges:
            blocks.append((ranges, gids, (hi - lo)[gids]))
    return CellLayout(order, inverse, Phi_g, segments, blocks)


@dataclass
class HarmonyFit:
    """The working arrays of one run, in the internal cell order (see :class:`CellLayout`).

    Attributes
    ----------
    be
        The array backend.
    layout
        Cell order, groups and blocks.
    Z_orig
        The input rows in the internal order (numpy: gathered chunk by chunk, no copy).
    Z_cos
        N x d, rows of the current ``Z_corr`` at unit length (None once ``Z_corr`` is written).
    R
        N x K soft cluster assignments.
    Y
        d x K centroids (float64, unit columns); ``Yw`` in the working dtype and
        ``Ys = Y * 2 / sigma`` (see :func:`soft_kernel`) are kept with it by :meth:`set_Y`.
    O, Nk
        K x B observed cells per cluster and batch, and ``N_k`` (K,), cells per cluster; the
        expected counts are ``E = N_k Pr_b`` (:attr:`E`).
    cache
        Per block, the per-group sums of its rows of ``R`` (so taking a block out of ``O`` is free).
    V
        G x K x d: the correction of a cell of group g in cluster k is ``R_ik V[g, k]``
        (``V[g, k] = Phi_g W_k`` without the intercept).
    theta, sigma
        Per batch level and per cluster (float64).
    Pr_b, N_b
        Fraction and number of cells of each batch level.
    scale, offset, kernel_factor
        The soft-assignment kernel (:func:`soft_kernel`).
    """

    be: Any
    layout: CellLayout
    Z_orig: Any
    Z_cos: Any
    R: Any
    theta: np.ndarray
    sigma: np.ndarray
    Pr_b: np.ndarray
    N_b: np.ndarray
    scale: np.ndarray
    offset: np.ndarray | None
    kernel_factor: np.ndarray
    Y: np.ndarray | None = None
    Yw: Any = None
    Ys: Any = None
    O: np.ndarray | None = None  # noqa: E741 - paper notation
    Nk: np.ndarray | None = None
    cache: list[np.ndarray] = field(default_factory=list)
    V: np.ndarray | None = None

    @property
    def N(self) -> int:  # noqa: N802 - paper notation
        return int(self.R.shape[0])

    @property
    def K(self) -> int:  # noqa: N802 - paper notation
        return int(self.R.shape[1])

    @property
    def E(self) -> np.ndarray:  # noqa: N802 - paper notation
        """K x B expected cells per cluster and batch, ``N_k Pr_b``."""
        return np.outer(self.Nk, self.Pr_b)

    def set_Y(self, Y: np.ndarray) -> None:  # noqa: N802 - paper notation
        """Take ``Y`` (d x K) as the centroids, with its working-dtype and scaled copies."""
        self.Y = Y
        self.Yw, self.Ys = self.be.small(Y), self.be.small(Y * self.scale[None, :])


def soft_kernel(sigma: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The form of the soft-assignment kernel ``exp(-dist / sigma)``, ``dist = 2 (1 - z . y)``.

    ``exp(-dist / sigma) = exp(z . (2 y / sigma)) * exp(-2 / sigma)``: without a row shift when no
    overflow / underflow is possible (``|z . y| <= 1``), else the shifted (safe) form.

    Parameters
    ----------
    sigma
        (K,) soft k-means width per cluster.
    dtype
        The working dtype.

    Returns
    -------
    scale : np.ndarray
        ``2 / sigma``; the kernel's exponent is ``z . (y * scale)``.
    offset : np.ndarray or None
        None on the fast path, else ``-scale`` (added before the row shift).
    kernel_factor : np.ndarray
        ``exp(-scale)`` on the fast path (multiplies the kernel), else ones.
    """
    scale = 2.0 / sigma
    fast = float(scale.max()) <= 0.25 * math.log(np.finfo(np.dtype(dtype)).max)
    offset = None if fast else -scale
    kernel_factor = np.exp(-scale) if fast else np.ones(sigma.size)
    return scale, offset, kernel_factor


def cosine_normalize(be, Z_orig: Any) -> Any:
    """``Z_cos``: the rows of ``Z_orig`` scaled to unit length, chunk by chunk (N x d, working dtype)."""
    N = Z_orig.shape[0]
    Z_cos = be.empty(Z_orig.shape)
    for a in range(0, N, _CHUNK):
        be.l2_rows(Z_orig.rows(a, min(a + _CHUNK, N)), Z_cos[a : a + _CHUNK])
    return Z_cos


def init_centroids(be, Z_cos: Any, K: int, rng: np.random.Generator) -> np.ndarray:
    """The initial centroids ``Y`` (d x K, unit columns): seeded k-means of ``Z_cos``."""
    with be.parallel():
        Y = kmeans_centroids(be, Z_cos, K, rng)  # K x d
    Y /= np.maximum(np.linalg.norm(Y, axis=1, keepdims=True), 1e-30)
    return Y.T.copy()


def initialize(
    Z: np.ndarray,
    design: Design,
    params: ResolvedHarmonyParams,
    be,
    rng: np.random.Generator,
    clock: _Clock,
) -> HarmonyFit:
    """Harmony's initialisation, up to the centroids: cell layout, ``Z_cos`` and ``Y``.

    The first soft assignment ``R`` (and with it ``O`` and ``E``) is made by :func:`soft_assign`.

    Parameters
    ----------
    Z
        N x d input embedding (read in place with numpy).
    design
        The batch design.
    params
        Resolved parameters.
    be
        The array backend.
    rng
        The run's random generator (used by the layout, then the k-means).
    clock
        Books the "setup" and "kmeans" phases.

    Returns
    -------
    HarmonyFit
    """
    N = Z.shape[0]
    N_b = np.bincount(design.codes.ravel(), minlength=design.B).astype(np.float64)
    sigma = np.asarray(params.sigma, dtype=np.float64)
    layout = cell_layout(design, params.block_size, rng)
    scale, offset, kernel_factor = soft_kernel(sigma, params.dtype)
    Z_orig = be.source(Z, layout.order)
    fit = HarmonyFit(
        be=be,
        layout=layout,
        Z_orig=Z_orig,
        Z_cos=cosine_normalize(be, Z_orig),
        R=be.assignment(N, params.nclust, layout, fast=offset is None),
        theta=np.asarray(params.theta, dtype=np.float64),
        sigma=sigma,
        Pr_b=N_b / N,
        N_b=N_b,
        scale=scale,
        offset=offset,
        kernel_factor=kernel_factor,
        V=np.zeros((layout.G, params.nclust, Z.shape[1])),
    )
    clock.lap("setup")
    fit.set_Y(init_centroids(be, fit.Z_cos, params.nclust, rng))
    clock.lap("kmeans")
    return fit


def soft_assign(fit: HarmonyFit) -> None:
    """``R = softmax(-dist / sigma)`` without the diversity penalty, then ``O``, ``N_k`` and the
    per-block sums (R harmony recomputes the distances at the start of each clustering)."""
    be, layout = fit.be, fit.layout
    cache = be.cold_start(fit.R, fit.Z_cos, fit.Ys, fit.offset, layout.blocks, fit.kernel_factor)
    gs = np.zeros((layout.G, fit.K))
    for (_, gids, _), sums in zip(layout.blocks, cache, strict=True):
        gs[gids] += sums
    fit.O = (layout.Phi_g.T @ gs).T
    fit.Nk = gs.sum(axis=0)
    fit.cache = cache


def diversity_penalty(O: np.ndarray, E: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """K x B penalty ``((2 E + 1) / (O + E + 1)) ** theta`` (R harmony 2.x)."""
    return ((2.0 * E + 1.0) / (O + E + 1.0)) ** theta[None, :]


def update_R(fit: HarmonyFit, rng: np.random.Generator, objective: bool = False) -> float | None:  # noqa: N802
    """One round of block updates of ``R`` with the diversity penalty, blocks in a random order.

    Each block is taken out of ``O`` / ``N_k``, its cells are re-assigned with the penalty of their
    batch levels (summed over the covariates of the cell, as R's ``penalty %*% Phi`` does) and the
    block is put back. With ``objective`` the round also returns Harmony's objective after it, from
    statistics gathered during the assignment (:func:`objective_from_assignment`) where the backend
    gives them (numpy, fast kernel), else None.
    """
    be, layout = fit.be, fit.layout
    O, Nk = fit.O, fit.Nk
    want = objective and be.name == "numpy" and fit.offset is None
    rs_k, lr_k, pl_k = np.zeros(fit.K), np.zeros(fit.K), np.zeros(fit.K)
    for j in rng.permutation(len(layout.blocks)):
        ranges, gids, counts = layout.blocks[j]
        Phi_b = layout.Phi_g[gids]
        old = fit.cache[j]  # group sums of the block's current R
        O -= (Phi_b.T @ old).T
        Nk -= old.sum(axis=0)
        E = np.outer(Nk, fit.Pr_b)
        pen_g = (Phi_b @ diversity_penalty(O, E, fit.theta).T) * fit.kernel_factor[None, :]
        new = be.block_update(fit.R, fit.Z_cos, fit.Ys, fit.offset, ranges, counts, pen_g, want)
        if want:
            new, (rs, lr) = new
            rs_k += rs
            lr_k += lr
            # sum over the block's cells of R_ik log pen_ik, as the kernel used it (float32)
            with np.errstate(divide="ignore", invalid="ignore"):
                logpen = np.log(pen_g.astype(np.float32)).astype(np.float64)
                pl_k += np.where(new > 0, logpen * new, 0.0).sum(axis=0)
        fit.cache[j] = new
        O += (Phi_b.T @ new).T
        Nk += new.sum(axis=0)
    return objective_from_assignment(fit, rs_k, lr_k, pl_k) if want else None


def objective_from_assignment(fit: HarmonyFit, rs_k: np.ndarray, lr_k: np.ndarray, pl_k: np.ndarray) -> float:
    """Harmony's objective (:func:`compute_objective`) from sums gathered while ``R`` was assigned.

    On the fast kernel ``R_ik = exp(S_ik) pen_ik / rs_i`` with ``S_ik = z_i . y_k scale_k``, so
    ``sum_i R_ik z_i . y_k = rs_k / scale_k`` (``rs_k = sum_i R_ik S_ik``) and ``sum_i R_ik log R_ik =
    rs_k + pl_k - lr_k`` (``pl_k = sum_i R_ik log pen_ik``, ``lr_k = sum_i R_ik log rs_i``): no pass
    over ``R`` and no cells x K x d product.
    """
    return _objective_value(fit, rs_k / fit.scale, rs_k + pl_k - lr_k)


def compute_objective(fit: HarmonyFit) -> float:
    """Harmony's objective: k-means error + sigma-weighted entropy + sigma-weighted cross entropy.

    ``sum_ik R_ik dist_ik + sum_k sigma_k sum_i R_ik log R_ik
    + sum_kb sigma_k theta_b O_kb log((O_kb + E_kb + 1) / (2 E_kb + 1))``, times ``2000 / N``
    (R harmony 2.x); the k-means error is ``2 sum(R) - 2 tr(Y^T Z_cos^T R)``.
    """
    return _objective_value(fit, *fit.be.objective_terms(fit.R, fit.Z_cos, fit.Yw))


def _objective_value(fit: HarmonyFit, cross: np.ndarray, ent: np.ndarray) -> float:
    """The objective from its per-cluster sums ``cross_k = sum_i R_ik z_i . y_k`` and
    ``ent_k = sum_i R_ik log R_ik`` and the state's ``O`` / ``N_k``."""
    O, Nk, sigma, theta = fit.O, fit.Nk, fit.sigma, fit.theta
    E = np.outer(Nk, fit.Pr_b)
    kmeans_error = 2.0 * Nk.sum() - 2.0 * cross.sum()
    entropy = float(sigma @ ent)
    ratio = np.log((O + E + 1.0) / (2.0 * E + 1.0))
    cross_entropy = float(np.sum(sigma[:, None] * O * theta[None, :] * ratio))
    return float((kmeans_error + entropy + cross_entropy) * (2000.0 / fit.N))


def _window_converged(objective: list[float], epsilon: float) -> bool:
    """R harmony's k-means check: relative decrease of the sum over a window of 3 objectives."""
    old_w = sum(objective[-2 - w] for w in range(_WINDOW))
    new_w = sum(objective[-1 - w] for w in range(_WINDOW))
    return (old_w - new_w) / abs(old_w) < epsilon


def cluster(
    fit: HarmonyFit,
    params: ResolvedHarmonyParams,
    rng: np.random.Generator,
    objective_kmeans: list[float],
    clock: _Clock,
) -> int:
    """The clustering step: up to ``max_iter_kmeans`` rounds of :func:`update_R`.

    The objective is appended to ``objective_kmeans`` after the last round and, when an early stop
    is possible (``max_iter_kmeans > 4``), after every round; the rounds stop early when
    :func:`_window_converged` (``epsilon_cluster``). The centroids ``Y`` are not moved here: they
    are the intercepts of the correction step (:func:`moe_correct_ridge`).

    Returns
    -------
    int
        The number of rounds run.
    """
    check = params.max_iter_kmeans > _WINDOW + 1  # else no convergence check can ever happen
    rounds = 0
    for i in range(params.max_iter_kmeans):
        rounds = i + 1
        need = check or i == params.max_iter_kmeans - 1
        value = update_R(fit, rng, objective=need)
        clock.lap("clustering")
        if need:
            objective_kmeans.append(compute_objective(fit) if value is None else value)
            clock.lap("objective")
        if check and i > _WINDOW and _window_converged(objective_kmeans, params.epsilon_cluster):
            break
    return rounds


def ridge_regressions(
    rsum: np.ndarray,
    zsum: np.ndarray,
    fit: HarmonyFit,
    design: Design,
    params: ResolvedHarmonyParams,
) -> tuple[np.ndarray, np.ndarray]:
    """The mixture of experts: per cluster k, the weighted ridge regression of ``Z_orig`` on ``[1, Phi]``.

    Solves ``(Phi_k^T diag(R_k) Phi_k + lambda_k) W_k = Phi_k^T diag(R_k) Z_orig`` from per-group
    sums; the intercept is not penalised and ``lamb=None`` uses ``alpha * E[k, b]``. Batch levels
    with at most ``batch_prop_cutoff`` of their cells in the cluster are left out of its regression,
    with the covariates left with a single such level and the cells of the dropped levels.

    Parameters
    ----------
    rsum, zsum
        Per group g: ``sum R[g]`` (G x K) and ``Z_orig[g]^T R[g]`` (G x d x K).
    fit
        The run (``Phi_g``, ``N_k``, ``Pr_b``, ``N_b`` and the current ``Y``).
    design
        The batch design.
    params
        ``lamb``, ``alpha`` and ``batch_prop_cutoff``.

    Returns
    -------
    Y : np.ndarray
        d x K new centroids, the normalised intercepts (clusters without correction keep theirs).
    V : np.ndarray
        G x K x d, ``Phi_g W_k`` without the intercept.
    """
    G, d, K = zsum.shape
    Phi_g = fit.layout.Phi_g
    cov_of_b = design.covariate_of_batch
    n_cov = len(design.n_levels)
    Phi_moe = np.hstack([np.ones((G, 1)), Phi_g])  # G x (B + 1), [1, Phi] per group
    O = (Phi_g.T @ rsum).T  # K x B
    E = np.outer(fit.Nk, fit.Pr_b)
    Y = fit.Y.copy()
    V = np.zeros((G, K, d))
    for k in range(K):
        qualifies = O[k] / fit.N_b > params.batch_prop_cutoff
        n_ok = np.bincount(cov_of_b[qualifies], minlength=n_cov)
        active = n_ok > 1
        keep_b = qualifies & active[cov_of_b]
        if not keep_b.any():
            continue  # no covariate to correct in this cluster
        # cells enter the regression when all their active covariates' levels are kept
        dropped = active[cov_of_b] & ~keep_b
        g_in = ~(Phi_g[:, dropped].any(axis=1)) if dropped.any() else np.ones(G, dtype=bool)
        cols = np.concatenate([[0], 1 + np.flatnonzero(keep_b)])
        X = Phi_moe[g_in][:, cols]  # G' x p
        w = rsum[g_in, k]
        cov = (X * w[:, None]).T @ X
        if params.lamb is None:
            pen = np.concatenate([[0.0], params.alpha * E[k, keep_b]])
        else:
            pen = params.lamb[cols]
        cov[np.diag_indices_from(cov)] += pen
        rhs = X.T @ zsum[g_in, :, k]  # p x d
        try:
            W = np.linalg.solve(cov, rhs)
        except np.linalg.LinAlgError:
            W = np.linalg.lstsq(cov, rhs, rcond=None)[0]
        Y[:, k] = W[0]
        W_b = np.zeros((design.B, d))
        W_b[keep_b] = W[1:]
        V[g_in, k] = Phi_g[g_in] @ W_b
    Y /= np.maximum(np.linalg.norm(Y, axis=0, keepdims=True), 1e-30)
    return Y, V


def moe_correct_ridge(
    fit: HarmonyFit, design: Design, params: ResolvedHarmonyParams, last: bool = False
) -> None:
    """The correction step: ``Z_corr = Z_orig - sum_k R_k (Phi W_k)`` (intercept excluded).

    The ridge regressions (:func:`ridge_regressions`) give the new ``Y`` and ``V``; the unit-length
    rows of ``Z_corr`` are written straight into ``Z_cos`` (``Z_corr`` itself is only formed at the
    end, by :func:`corrected_embedding`), except after the ``last`` iteration, where no ``Z_cos`` is
    needed.
    """
    be, layout = fit.be, fit.layout
    rsum, zsum = be.ridge_sums(fit.R, fit.Z_orig, layout.segments, layout.G)  # G x K, G x d x K
    Y, fit.V = ridge_regressions(rsum, zsum, fit, design, params)
    fit.set_Y(Y)
    if not last:
        be.correct(fit.R, fit.Z_orig, layout.segments, fit.V, fit.Z_cos, normalise=True)


def corrected_embedding(fit: HarmonyFit, dtype: str) -> np.ndarray:
    """``Z_corr`` of the last correction in the caller's cell order; frees ``Z_cos`` first."""
    be, layout = fit.be, fit.layout
    fit.Z_cos = None  # freed; Z_cos is recomputed from Z_corr when asked for
    Z_corr = np.empty(fit.Z_orig.shape, dtype=np.dtype(dtype))
    if be.name == "numpy":
        be.correct(fit.R, fit.Z_orig, layout.segments, fit.V, Z_corr, rows=layout.order)
    else:
        out = be.empty(fit.Z_orig.shape)
        be.correct(fit.R, fit.Z_orig, layout.segments, fit.V, out, rows=layout.order)
        Z_corr[...] = be.to_numpy(out)
        del out
    return Z_corr


def harmonize(
    Z: np.ndarray,
    design: Design,
    params: HarmonyParams | ResolvedHarmonyParams,
    callback: Callable[[int, float], None] | None = None,
) -> HarmonyState:
    """Run Harmony on a cells x d array with a validated design.

    Initialisation (:func:`initialize`, :func:`soft_assign`), then up to ``max_iter_harmony``
    iterations of clustering (:func:`cluster`) and correction (:func:`moe_correct_ridge`), stopping
    when the relative decrease of the objective is below ``epsilon_harmony``.

    Parameters
    ----------
    Z
        N x d embedding.
    design
        The batch design (see :class:`Design`).
    params
        Harmony's parameters; :class:`HarmonyParams` are resolved for ``Z`` and ``design`` first.
    callback
        ``callback(iteration, objective)``, called after each Harmony iteration.

    Returns
    -------
    HarmonyState
    """
    if isinstance(params, HarmonyParams):
        N_b = np.bincount(design.codes.ravel(), minlength=design.B)
        params = params.resolve(Z.shape[0], design.n_levels, N_b)
    clock = _Clock()
    be = make_backend(params.backend, params.device, params.dtype)
    rng = np.random.default_rng(params.random_state)
    fit = initialize(Z, design, params, be, rng, clock)
    del Z
    state = HarmonyState()
    obj_k, obj_h = state.objective_kmeans, state.objective_harmony
    with be.parallel():  # numpy: thread pool for row pieces, BLAS single-threaded inside
        soft_assign(fit)
        clock.lap("kernel")
        obj_k.append(compute_objective(fit))
        obj_h.append(obj_k[-1])
        clock.lap("objective")
        for it in range(1, params.max_iter_harmony + 1):
            state.n_iter = it
            if it > 1:
                soft_assign(fit)
                clock.lap("kernel")
            state.kmeans_rounds.append(cluster(fit, params, rng, obj_k, clock))
            obj_h.append(obj_k[-1])
            converged = (obj_h[-2] - obj_h[-1]) / abs(obj_h[-2]) < params.epsilon_harmony
            moe_correct_ridge(fit, design, params, last=converged or it == params.max_iter_harmony)
            clock.lap("correction")
            if callback is not None:
                callback(it, obj_h[-1])
            if converged:
                state.converged = True
                break
        state.Z_corr = corrected_embedding(fit, params.dtype)
    fit.Z_orig = None
    state.internal_R = be.to_numpy(fit.R)
    state.inverse = fit.layout.inverse
    state.Y = np.asarray(fit.Y)
    state.O = fit.O
    state.E = fit.E
    clock.lap("setup")
    state.seconds = {k: round(v, 4) for k, v in clock.seconds.items()}
    return state
