# ruff: noqa: E741, N802, N806  (O, E, Y, Z are the paper's notation)
"""Harmony that streams: the same algorithm on a row-chunked embedding that need not fit in memory.

:func:`run_harmony_stream` (reached through :func:`scaml.harmony.run_harmony` with ``out=``,
``chunk_cells=``, ``max_memory=`` or an input that is not an in-memory ndarray: ``np.memmap``,
``zarr.Array``, anything with ``shape``, ``dtype`` and row slicing) runs the steps of
:mod:`scaml.harmony.core` chunk by chunk, and its working memory is set by a chunk budget, not by
the number of cells:

* ``R`` (cells x K) is never kept. A block's ``R`` is a function of its ``Z_cos`` rows, ``Y`` and
  the penalty of its last update (``((2E + 1) / (O + E + 1)) ** theta`` per batch group, K values
  per group), so the run keeps, per update block, its per-group sums of ``R`` (what ``O`` needs),
  its penalty and its objective terms, and recomputes ``R`` of a chunk whenever a pass needs it
  (exactly the numbers the block update produced).
* ``O``, ``N_k`` (hence ``E``), the objective and the ridge's per-group sums of ``R`` and
  ``Z_orig^T R`` are sums over cells; they are accumulated chunk by chunk.
* ``Z_cos`` lives in a temporary raw file, its rows grouped by update block (plain file reads and
  writes, so the page cache, not the process, holds it); with the group code of each of its rows
  in a second file and each chunk's row order (:meth:`StreamLayout.chunk_map`) in a third. ``Z_orig`` is read from the input each time, chunk by chunk, never copied.
* The blocks are random subsets stratified by batch group, as in memory: each chunk's cells of a
  group are dealt round-robin to the blocks, continuing where the previous chunk stopped, in a
  random order drawn from a per-chunk seed (so a chunk's layout is recomputed, not stored).
* ``Z_corr`` is written chunk by chunk, in the caller's row order, to a zarr array at ``out``
  (a temporary path renamed into place at the end), or to an in-memory array when ``out`` is None.

Passes over the data per Harmony iteration: one per clustering round (reads ``Z_cos``), one for the
ridge sums (reads the input and ``Z_cos``) and one for the correction (reads both, writes
``Z_cos``; the last one writes ``Z_corr``), plus one reading pass, the k-means passes and one
first soft assignment at the start. The k-means start, the parameters, the convergence checks and
the regression (:func:`scaml.harmony.core.ridge_regressions`) are core's; the result agrees with
the in-memory path to a per-PC correlation of 0.999+ (tests/test_harmony_stream.py), not to the
bit, because the block membership and the k-means subsamples are drawn differently.

Memory: the chunk buffers (about ``itemsize * (6 d + 5 K)`` bytes per row of a chunk) plus the
per-block caches (``n_blocks x G x K``), the ridge sums (``G x d x K``) and a few bytes per cell
of bookkeeping (the batch codes the caller passes, one int32 group code per cell).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import ScamlError
from .core import (
    _WINDOW,
    Design,
    HarmonyState,
    ResolvedHarmonyParams,
    _groups,
    _NumpyBackend,
    _window_converged,
    diversity_penalty,
    init_centroids,
    ridge_regressions,
    soft_kernel,
)

#: The chunk budget when neither ``chunk_cells`` nor ``max_memory`` is given.
DEFAULT_MAX_MEMORY = 512 * 2**20
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEMORY = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", re.IGNORECASE)


# ----------------------------------------------------------------------------- inputs


def is_streaming_input(data_mat: Any) -> bool:
    """Whether ``data_mat`` is a row-chunked array the streaming path reads chunk by chunk.

    True for ``np.memmap``, ``zarr.Array``, Dask arrays and any other non-ndarray, non-DataFrame
    object with a 2-D ``shape``, a ``dtype`` and row slicing (``x[a:b]``).
    """
    if isinstance(data_mat, np.memmap):
        return True
    if isinstance(data_mat, np.ndarray):
        return False
    import pandas as pd

    if isinstance(data_mat, (pd.DataFrame, pd.Series, list, tuple)):
        return False
    shape = getattr(data_mat, "shape", None)
    return (
        shape is not None
        and len(shape) == 2
        and hasattr(data_mat, "dtype")
        and hasattr(data_mat, "__getitem__")
    )


def parse_memory(value: Any, name: str = "max_memory") -> int:
    """A memory size in bytes: an integer, or a string such as ``"2GB"``, ``"512M"``, ``"1.5GiB"``.

    Units K, M, G, T are powers of 1024 (with or without ``B`` / ``iB``).
    """
    if isinstance(value, (bool, np.bool_)):
        value = None
    if isinstance(value, (int, np.integer)) and value > 0:
        return int(value)
    if isinstance(value, str):
        m = _MEMORY.fullmatch(value)
        if m:
            n = float(m.group(1)) * _UNITS[m.group(2).upper()]
            if n >= 1:
                return int(n)
    raise ScamlError(
        f"{name} must be a positive number of bytes or a size such as '2GB' or '512MB'; got {value!r}."
    )


def row_bytes(n_dims: int, n_clusters: int, dtype: str) -> int:
    """Working bytes per row of a chunk: input, ``Z_cos``, correction and three cells x K buffers."""
    return int(np.dtype(dtype).itemsize * (6 * n_dims + 5 * n_clusters) + 64)


def plan_chunk_cells(
    n_cells: int,
    n_dims: int,
    n_clusters: int,
    dtype: str,
    chunk_cells: Any = None,
    max_memory: Any = None,
) -> tuple[int, int]:
    """The rows per chunk: ``chunk_cells``, or as many as ``max_memory`` allows (default 512 MiB).

    Returns
    -------
    chunk_cells : int
        Rows per chunk (at most ``n_cells``).
    budget : int
        The budget in bytes that was used (``chunk_cells * row_bytes`` when ``chunk_cells`` is given).

    Raises
    ------
    ScamlError
        For a ``chunk_cells`` that is not a positive integer, or a budget below one row's work.
    """
    per_row = row_bytes(n_dims, n_clusters, dtype)
    if chunk_cells is not None:
        if (
            isinstance(chunk_cells, (bool, np.bool_))
            or not isinstance(chunk_cells, (int, np.integer))
            or chunk_cells < 1
        ):
            raise ScamlError(
                f"chunk_cells must be a positive integer (rows read at a time); got {chunk_cells!r}."
            )
        rows = int(chunk_cells)
        return min(rows, n_cells), rows * per_row
    budget = DEFAULT_MAX_MEMORY if max_memory is None else parse_memory(max_memory)
    if budget < per_row:
        raise ScamlError(
            f"max_memory={max_memory!r} ({budget} bytes) is smaller than one row of work ({per_row} "
            f"bytes for {n_dims} dimensions and {n_clusters} clusters); give at least "
            f"{max(per_row * 1024 // 2**20, 1)} MB, e.g. max_memory='256MB'."
        )
    return max(1, min(budget // per_row, n_cells)), budget


def _input_paths(data_mat: Any) -> list[Path]:
    """Files or folders the input array is stored in (memmap file, local zarr store)."""
    paths = []
    filename = getattr(data_mat, "filename", None)
    if filename:
        paths.append(Path(filename))
    root = getattr(getattr(data_mat, "store", None), "root", None)
    if root is not None:
        paths.append(Path(root) / str(getattr(data_mat, "path", "") or ""))
    return [p.resolve() for p in paths]


def check_out_path(out: Any, overwrite: bool, data_mat: Any) -> Path:
    """Validate ``out``: a new path (or ``overwrite=True``) in an existing folder, not the input."""
    path = Path(os.fspath(out)).expanduser().resolve()
    for src in _input_paths(data_mat):
        if path == src or path in src.parents or src in path.parents:
            raise ScamlError(
                f"out={str(out)!r} is (or holds) the input embedding's own storage ({src.name}); "
                "write Z_corr to a different path (the input is never overwritten)."
            )
    if path.exists() and not overwrite:
        raise ScamlError(
            f"out={str(out)!r} exists; pass overwrite=True to replace it, or choose a new path."
        )
    if not path.parent.is_dir():
        raise ScamlError(
            f"the folder of out={str(out)!r} does not exist; create {str(path.parent)!r} first."
        )
    return path


class _Input:
    """Row chunks of the caller's array in the working dtype (memmap pages released after reading)."""

    def __init__(self, data: Any) -> None:
        shape = tuple(int(s) for s in data.shape)
        if len(shape) != 2:
            raise ScamlError(
                f"the embedding (data_mat) must be a 2-D cells x dimensions array; got shape {shape}."
            )
        if not np.issubdtype(np.dtype(data.dtype), np.number):
            raise ScamlError(f"the embedding (data_mat) must be numeric; got dtype {data.dtype}.")
        if shape[0] < 2 or shape[1] < 1:
            raise ScamlError(
                f"the embedding (data_mat) must have at least 2 cells and 1 dimension; got shape {shape}."
            )
        self.data, self.shape = data, shape
        self._mm = getattr(data, "_mmap", None) if isinstance(data, np.memmap) else None
        self._mm_addr = None
        if self._mm is not None:
            with contextlib.suppress(Exception):
                self._mm_addr = int(np.frombuffer(self._mm, dtype=np.uint8).ctypes.data)

    def raw(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` as an in-memory array of the input's dtype."""
        if self._mm is None and not isinstance(self.data, np.ndarray):
            return np.asarray(self.data[a:b])  # zarr, Dask ...: a new array already
        block = np.array(self.data[a:b], copy=True)
        self._release(a, b)
        return block

    @property
    def chunk_rows(self) -> int | None:
        """Rows per stored chunk of a zarr-like input (``chunks = (rows, cols)``), else None."""
        chunks = getattr(self.data, "chunks", None)
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], (int, np.integer)):
            return int(chunks[0])
        return None

    def _release(self, a: int, b: int) -> None:
        """Drop the memmap's pages of rows ``a:b`` from this process (they stay in the page cache)."""
        if self._mm_addr is None or b <= a:
            return
        with contextlib.suppress(Exception):
            view = self.data[a:b]
            lo = int(view.ctypes.data) - self._mm_addr
            hi = lo + (b - a) * int(abs(self.data.strides[0]))
            lo -= lo % mmap.PAGESIZE
            if lo >= 0 and hi > lo:
                self._mm.madvise(mmap.MADV_DONTNEED, lo, min(hi, len(self._mm)) - lo)


class _WorkFile:
    """A rows x cols raw array in a file, read and written with pread / pwrite (never mapped)."""

    def __init__(self, path: Path, n_rows: int, n_cols: int, dtype: Any) -> None:
        self.dtype, self.n_cols = np.dtype(dtype), int(n_cols)
        self.row = self.n_cols * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self.fd, int(n_rows) * self.row)

    def read_into(self, a: int, out: np.ndarray) -> np.ndarray:
        view = memoryview(out.reshape(-1).view(np.uint8))
        done, pos = 0, a * self.row
        while done < len(view):
            n = os.preadv(self.fd, [view[done:]], pos + done)
            if n <= 0:
                raise OSError(f"short read in Harmony's work file at byte {pos + done}")
            done += n
        return out

    def read(self, a: int, b: int) -> np.ndarray:
        return self.read_into(a, np.empty((b - a, self.n_cols), dtype=self.dtype))

    def write(self, a: int, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        view = memoryview(rows.reshape(-1).view(np.uint8))
        done, pos = 0, a * self.row
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], pos + done)

    def close(self) -> None:
        os.close(self.fd)


# ----------------------------------------------------------------------------- layout


@dataclass
class StreamLayout:
    """Chunks of the caller's rows and update blocks of the work file.

    Attributes
    ----------
    chunk
        Rows per chunk (the caller's rows ``c * chunk : (c + 1) * chunk`` form chunk c).
    n_blocks
        Update blocks (``ceil(1 / block_size)``, as in memory).
    gcode
        (N,) int32 batch group of each of the caller's rows.
    counts
        n_chunks x n_blocks: cells of chunk c in block j.
    ptr
        n_chunks x n_blocks: the work-file row where chunk c's run of block j starts.
    block_start
        (n_blocks + 1,): block j holds the work-file rows ``block_start[j]:block_start[j + 1]``.
    """

    N: int
    chunk: int
    n_blocks: int
    G: int
    gcode: np.ndarray
    entropy: int
    carry: np.ndarray
    counts: np.ndarray
    ptr: np.ndarray
    block_start: np.ndarray

    @property
    def n_chunks(self) -> int:
        return int(self.counts.shape[0])

    def bounds(self, c: int) -> tuple[int, int]:
        return c * self.chunk, min((c + 1) * self.chunk, self.N)

    def deal(self, c: int) -> np.ndarray:
        """Block of each row of chunk c: each group's cells, in a random order (seeded per chunk),
        dealt round-robin to the blocks, continuing from the previous chunk."""
        a, b = self.bounds(c)
        g = self.gcode[a:b]
        rng = np.random.default_rng([self.entropy, c])
        o = np.lexsort((rng.random(b - a), g))
        gs = g[o]
        start = np.concatenate([[0], np.cumsum(np.bincount(gs, minlength=self.G))[:-1]])
        blocks = np.empty(b - a, dtype=np.int64)
        blocks[o] = (self.carry[c][gs] + np.arange(b - a) - start[gs]) % self.n_blocks
        return blocks

    def chunk_map(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """``order`` (chunk rows sorted by block, then group) and the run length of each block."""
        blocks = self.deal(c)
        a, b = self.bounds(c)
        order = np.lexsort((self.gcode[a:b], blocks))
        return order, self.counts[c]

    @classmethod
    def build(
        cls, gcode: np.ndarray, G: int, chunk: int, block_size: float, seed: int | None
    ) -> StreamLayout:
        N = int(gcode.size)
        n_blocks = min(max(1, int(math.ceil(1.0 / block_size - 1e-9))), N)
        n_chunks = -(-N // chunk)
        entropy = int(np.random.SeedSequence(seed).entropy) if seed is None else int(seed)
        lay = cls(
            N=N,
            chunk=chunk,
            n_blocks=n_blocks,
            G=G,
            gcode=gcode,
            entropy=entropy,
            carry=np.zeros((n_chunks, G), dtype=np.int64),
            counts=np.zeros((n_chunks, n_blocks), dtype=np.int64),
            ptr=np.zeros((n_chunks, n_blocks), dtype=np.int64),
            block_start=np.zeros(n_blocks + 1, dtype=np.int64),
        )
        for c in range(n_chunks):
            a, b = lay.bounds(c)
            if c + 1 < n_chunks:
                lay.carry[c + 1] = (lay.carry[c] + np.bincount(gcode[a:b], minlength=G)) % n_blocks
            lay.counts[c] = np.bincount(lay.deal(c), minlength=n_blocks)
        sizes = lay.counts.sum(axis=0)
        lay.block_start[1:] = np.cumsum(sizes)
        lay.ptr[:] = lay.block_start[:-1][None, :] + np.cumsum(lay.counts, axis=0) - lay.counts
        return lay


def _group_runs(keys: np.ndarray) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """Rows grouped by key: ``perm`` (None when ``keys`` is sorted) and ``(key, start, stop)`` runs
    of the permuted rows."""
    n = keys.size
    if n == 0:
        return None, []
    perm = None if bool(np.all(keys[1:] >= keys[:-1])) else np.argsort(keys, kind="stable")
    ks = keys if perm is None else keys[perm]
    cuts = np.flatnonzero(ks[1:] != ks[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [n]])
    return perm, [(int(ks[s]), int(s), int(e)) for s, e in zip(starts, stops, strict=True)]


def _add_group_sums(out: np.ndarray, t: np.ndarray, keys: np.ndarray) -> None:
    """``out[key] += sum of the rows of t with that key`` (float64)."""
    perm, runs = _group_runs(keys)
    tp = t if perm is None else t[perm]
    for k, s, e in runs:
        out[k] += tp[s:e].sum(axis=0, dtype=np.float64)


# ----------------------------------------------------------------------------- progress


class _Passes:
    """Progress bar and record of the passes over the data."""

    def __init__(self, show: bool, sample_rss: bool = True) -> None:
        self.records: list[dict[str, Any]] = []
        self.bar = None
        self.peak_kb = _vm_kb("VmRSS")
        if show:
            from .._utils import progress

            self.bar = progress()
            self.bar.start()
            self.task = self.bar.add_task("Harmony", total=1, status="")

    @contextlib.contextmanager
    def run(self, name: str, total: int, status: str = ""):
        start = time.perf_counter()
        if self.bar is not None:
            self.bar.reset(self.task, total=max(total, 1), description=f"Harmony: {name}")
            self.bar.update(self.task, status=status)
        record = {"pass": name, "chunks": int(total)}
        yield self
        record["seconds"] = round(time.perf_counter() - start, 4)
        self.records.append(record)

    def step(self) -> None:
        self.peak_kb = max(self.peak_kb, _vm_kb("VmRSS"))
        if self.bar is not None:
            self.bar.advance(self.task)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _vm_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:  # pragma: no cover - not Linux
        pass
    return 0


# ----------------------------------------------------------------------------- row kernels


@dataclass(frozen=True)
class RowKernel:
    """What a chunk's soft assignment needs, small enough to send to a Dask worker.

    ``Ys`` is ``Y`` scaled by ``2 / sigma`` (d x K, working dtype), ``Yw64`` is ``Y`` in float64,
    ``offset`` the safe kernel's offset (None for the fast kernel) and ``tiny`` the dtype's smallest
    normal number.
    """

    Ys: np.ndarray
    Yw64: np.ndarray
    offset: np.ndarray | None
    tiny: float

    def assign(self, Zc: np.ndarray, pen: np.ndarray) -> np.ndarray:
        """``normalise_rows(exp(Zc Ys [+ offset, row shift]) * pen)`` (pen: rows x K or K)."""
        t = Zc @ self.Ys
        if self.offset is not None:
            t += self.offset
            t -= t.max(axis=1, keepdims=True)
        np.exp(t, out=t)
        t *= pen
        rs = t.sum(axis=1, keepdims=True)
        np.maximum(rs, self.tiny, out=rs)
        t /= rs
        return t

    def objective_terms(self, t: np.ndarray, Zc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per cluster: ``sum_i R_ik z_i . y_k`` and ``sum_i R_ik log R_ik`` (float64)."""
        rz = (t.T @ Zc).astype(np.float64)
        cross = np.einsum("kd,dk->k", rz, self.Yw64)
        lg = np.maximum(t, self.tiny)
        np.log(lg, out=lg)
        lg *= t
        return cross, lg.sum(axis=0, dtype=np.float64)


def block_stats(
    kern: RowKernel, Zc: np.ndarray, g: np.ndarray, pen_g: np.ndarray, objective: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A block update on some of the block's rows: per-group sums of their new ``R`` (G x K) and,
    with ``objective``, their objective terms (:meth:`RowKernel.objective_terms`)."""
    t = kern.assign(Zc, pen_g[g])
    sums = np.zeros(pen_g.shape)
    _add_group_sums(sums, t, g)
    if not objective:
        return sums, None, None
    cross, ent = kern.objective_terms(t, Zc)
    return sums, cross, ent


def ridge_stats(
    kern: RowKernel, Zc: np.ndarray, Zo: np.ndarray, g: np.ndarray, pen_rows: np.ndarray, G: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group sums of ``R`` (G x K) and of ``Z_orig^T R`` (G x d x K) over some rows."""
    t = kern.assign(Zc, pen_rows)
    K, d = t.shape[1], Zo.shape[1]
    rsum, zsum = np.zeros((G, K)), np.zeros((G, d, K))
    perm, runs = _group_runs(g)
    tp, zp = (t, Zo) if perm is None else (np.take(t, perm, axis=0), np.take(Zo, perm, axis=0))
    for k, s, e in runs:
        rsum[k] += tp[s:e].sum(axis=0, dtype=np.float64)
        zsum[k] += (tp[s:e].T @ zp[s:e]).T
    return rsum, zsum


def corrected_rows(
    kern: RowKernel, Zc: np.ndarray, Zo: np.ndarray, g: np.ndarray, pen_rows: np.ndarray, Vw: np.ndarray
) -> np.ndarray:
    """``Z_orig - R (Phi W)`` of some rows, ``R`` from the last block updates (``Zo`` is overwritten)."""
    t = kern.assign(Zc, pen_rows)
    perm, runs = _group_runs(g)
    for k, s, e in runs:
        if perm is None:
            Zo[s:e] -= t[s:e] @ Vw[k]
        else:
            rows = perm[s:e]
            Zo[rows] -= np.take(t, rows, axis=0) @ Vw[k]
    return Zo


def check_finite_rows(raw: np.ndarray, a: int, b: int) -> None:
    """Refuse NaN / infinite values in the input rows ``a:b`` (the message names the first bad row)."""
    bad = ~np.isfinite(raw)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ScamlError(
            f"the embedding (data_mat) has NaN or infinite values in row {a + int(rows[0])} "
            f"(the first bad row; {rows.size} bad rows among rows {a}-{b - 1}); remove or "
            "impute those cells (drop the same rows from meta_data) and run again. Nothing "
            "was written."
        )


# ----------------------------------------------------------------------------- k-means on disk


class _DiskRows:
    """``Z_cos`` in the work file, as core's k-means sees it (shape, rows by index, Lloyd steps)."""

    def __init__(self, zfile: _WorkFile, N: int, chunk: int) -> None:
        self.zfile, self.shape, self.chunk = zfile, (N, zfile.n_cols), chunk
        self.n_parts = -(-N // chunk)

    def take(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        sort = np.argsort(idx, kind="stable")
        sidx = idx[sort]
        out = np.empty((idx.size, self.shape[1]), dtype=np.float64)
        got = np.empty_like(out)
        pos = 0
        for a in range(0, self.shape[0], self.chunk):
            b = min(a + self.chunk, self.shape[0])
            hi = int(np.searchsorted(sidx, b))
            if hi > pos:
                rows = self.zfile.read(a, b)
                got[pos:hi] = rows[sidx[pos:hi] - a]
                pos = hi
            if pos == idx.size:
                break
        out[sort] = got
        return out

    def lloyd(self, be: _NumpyBackend, C: np.ndarray, step: Any) -> tuple[Any, Any, float]:
        """Sums, counts and inertia of one Lloyd step, chunk by chunk (``step()`` after each)."""
        sums, counts, inertia = 0.0, 0.0, 0.0
        for a in range(0, self.shape[0], self.chunk):
            s, n, i = be.lloyd_step(self.zfile.read(a, min(a + self.chunk, self.shape[0])), C)
            sums, counts, inertia = sums + s, counts + n, inertia + i
            step()
        return sums, counts, inertia


class _KMeansBackend:
    """Core's numpy backend, with row takes and Lloyd steps that stream rows kept out of memory
    (anything with ``take``, ``lloyd`` and ``n_parts``: :class:`_DiskRows`, or Dask partitions)."""

    def __init__(self, be: _NumpyBackend, passes: _Passes) -> None:
        self.be, self.passes = be, passes

    def parallel(self):
        return contextlib.nullcontext()

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return self.be.asarray(a)

    def take_rows(self, X: Any, idx: np.ndarray) -> np.ndarray:
        if hasattr(X, "lloyd"):
            return X.take(idx)
        return self.be.take_rows(X, idx)

    def lloyd_step(self, data: Any, C: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if not hasattr(data, "lloyd"):
            return self.be.lloyd_step(data, C)
        with self.passes.run("k-means (Lloyd step on all cells)", data.n_parts):
            return data.lloyd(self.be, C, self.passes.step)


# ----------------------------------------------------------------------------- the run


class _StreamFit:
    """The state of a streaming run: per-block caches, ``Y``, ``O``, ``N_k``; ``Z_cos`` in work files.

    The passes over the data (:meth:`read_pass`, :meth:`block_stats`, :meth:`ridge_sums`,
    :meth:`correct`, :meth:`kmeans_rows`) are the only methods that touch cells;
    :class:`scaml.harmony.dask_fit.DaskFit` runs the same ones on a Dask cluster.
    """

    def __init__(
        self,
        src: _Input,
        layout: StreamLayout,
        Phi_g: np.ndarray,
        N_b: np.ndarray,
        params: ResolvedHarmonyParams,
        work: Path | None,
        passes: _Passes,
    ) -> None:
        self.src, self.layout, self.Phi_g, self.params, self.passes = (
            src,
            layout,
            Phi_g,
            params,
            passes,
        )
        N, d = src.shape
        K, G, nb = params.nclust, layout.G, layout.n_blocks
        self.N, self.d, self.K, self.G = N, d, K, G
        self.be = _NumpyBackend(params.dtype)
        self.wd = self.be.dtype
        self.N_b = N_b.astype(np.float64)
        self.Pr_b = self.N_b / N
        self.theta = np.asarray(params.theta, dtype=np.float64)
        self.sigma = np.asarray(params.sigma, dtype=np.float64)
        self.scale, offset, self.kernel_factor = soft_kernel(self.sigma, params.dtype)
        self.offset = None if offset is None else self.be.small(offset)
        self.kf = self.be.small(self.kernel_factor)
        self.open_storage(work)
        self.sums = np.zeros((nb, G, K))  # per block: group sums of its R
        self.pens = np.empty((nb, G, K), dtype=self.wd)  # per block: penalty x kernel factor
        self.obj_cross = np.zeros((nb, K))  # per block: sum_i R_ik z_i . y_k
        self.obj_ent = np.zeros((nb, K))  # per block: sum_i R_ik log R_ik
        self.Y = self.kern = None
        self.O = self.Nk = None
        self.V = None

    def open_storage(self, work: Path | None) -> None:
        """The work files: ``Z_cos`` by update block, its rows' groups, each chunk's row order."""
        N, d = self.N, self.d
        self.zfile = _WorkFile(work / "z_cos.bin", N, d, self.wd)
        self.gfile = _WorkFile(work / "groups.bin", N, 1, np.int32)
        self.ofile = _WorkFile(work / "chunk_order.bin", N, 1, np.int32)  # chunk_map's order

    # ------------------------------------------------------------------ helpers

    def set_Y(self, Y: np.ndarray) -> None:
        self.Y = Y
        self.kern = RowKernel(
            Ys=self.be.small(Y * self.scale[None, :]),
            Yw64=self.be.small(Y).astype(np.float64),
            offset=self.offset,
            tiny=float(self.be.tiny),
        )

    def set_O(self) -> None:
        gs = self.sums.sum(axis=0)
        self.O = (self.Phi_g.T @ gs).T
        self.Nk = gs.sum(axis=0)

    @property
    def E(self) -> np.ndarray:
        return np.outer(self.Nk, self.Pr_b)

    def objective(self) -> float:
        """Harmony's objective from the per-block caches (see :func:`core.compute_objective`)."""
        O, E = self.O, self.E
        kmeans_error = 2.0 * self.Nk.sum() - 2.0 * self.obj_cross.sum()
        entropy = float(self.sigma @ self.obj_ent.sum(axis=0))
        ratio = np.log((O + E + 1.0) / (2.0 * E + 1.0))
        cross_entropy = float(np.sum(self.sigma[:, None] * O * self.theta[None, :] * ratio))
        return float((kmeans_error + entropy + cross_entropy) * (2000.0 / self.N))

    def block_chunks(self, j: int):
        lay = self.layout
        for a in range(int(lay.block_start[j]), int(lay.block_start[j + 1]), lay.chunk):
            b = min(a + lay.chunk, int(lay.block_start[j + 1]))
            yield self.zfile.read(a, b), self.gfile.read(a, b)[:, 0]

    def read_runs(self, c: int, counts: np.ndarray, f: _WorkFile) -> np.ndarray:
        out = np.empty((int(counts.sum()), f.n_cols), dtype=f.dtype)
        s = 0
        for j in np.flatnonzero(counts):
            k = int(counts[j])
            f.read_into(int(self.layout.ptr[c, j]), out[s : s + k])
            s += k
        return out

    def write_runs(self, c: int, counts: np.ndarray, f: _WorkFile, rows: np.ndarray) -> None:
        s = 0
        for j in np.flatnonzero(counts):
            k = int(counts[j])
            f.write(int(self.layout.ptr[c, j]), rows[s : s + k])
            s += k

    def caller_chunks(self):
        """Per chunk of the caller's rows: bounds, order, run lengths, block and group of each
        row (in ``order``), the input rows and the ``Z_cos`` rows (both in ``order``)."""
        lay = self.layout
        for c in range(lay.n_chunks):
            a, b = lay.bounds(c)
            order, counts = self.ofile.read(a, b)[:, 0], lay.counts[c]
            blk = np.repeat(np.arange(lay.n_blocks), counts)
            g = lay.gcode[a:b][order]
            Zo = np.take(np.asarray(self.src.raw(a, b), dtype=self.wd), order, axis=0)
            yield c, (a, b), order, counts, blk, g, Zo, self.read_runs(c, counts, self.zfile)

    # ------------------------------------------------------------------ the passes over the cells

    def read_pass(self) -> None:
        """Check every row, write ``Z_cos`` of the input and the group codes to the work files."""
        lay = self.layout
        with self.passes.run("read and check the embedding", lay.n_chunks):
            for c in range(lay.n_chunks):
                a, b = lay.bounds(c)
                raw = self.src.raw(a, b)
                check_finite_rows(raw, a, b)
                order, counts = lay.chunk_map(c)
                self.ofile.write(a, order[:, None].astype(np.int32))
                Zc = self.be.l2_rows(
                    np.take(np.asarray(raw, dtype=self.wd), order, axis=0), self.be.empty((b - a, self.d))
                )
                self.write_runs(c, counts, self.zfile, Zc)
                self.write_runs(
                    c, counts, self.gfile, lay.gcode[a:b][order][:, None].astype(np.int32)
                )
                self.passes.step()

    def kmeans_rows(self) -> _DiskRows:
        """``Z_cos`` as core's k-means start sees it (rows by index, Lloyd steps chunk by chunk)."""
        return _DiskRows(self.zfile, self.N, self.layout.chunk)

    def block_stats(
        self, j: int, pen: np.ndarray, objective: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Block j's new per-group sums of ``R`` and objective terms under ``pen`` (G x K)."""
        new = np.zeros((self.G, self.K))
        cross, ent = np.zeros(self.K), np.zeros(self.K)
        for Zc, g in self.block_chunks(j):
            s, cr, en = block_stats(self.kern, Zc, g, pen, objective)
            new += s
            if objective:
                cross += cr
                ent += en
        return new, cross, ent

    def ridge_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group sums of ``R`` and ``Z_orig^T R`` over all cells (``R`` recomputed)."""
        rsum = np.zeros((self.G, self.K))
        zsum = np.zeros((self.G, self.d, self.K))
        for _, _, _, _, blk, g, Zo, Zc in self.caller_chunks():
            r, z = ridge_stats(self.kern, Zc, Zo, g, self.pens[blk, g], self.G)
            rsum += r
            zsum += z
            self.passes.step()
        return rsum, zsum

    def correct(self, old: RowKernel, out: Any, last: bool) -> np.ndarray | None:
        """The correction of every chunk under the previous ``Y`` (``old``): ``Z_corr`` to ``out`` in
        the caller's order when ``last``, else unit rows to the work file and the new per-block sums
        of the plain soft assignment (returned)."""
        Vw = self.be.small(self.V)
        new_sums = None if last else np.zeros_like(self.sums)
        for c, (a, b), order, counts, blk, g, Zo, Zc in self.caller_chunks():
            corr = corrected_rows(old, Zc, Zo, g, self.pens[blk, g], Vw)
            del Zc
            if last:
                block = np.empty_like(corr, dtype=np.dtype(self.params.dtype))
                block[order] = corr
                out[a:b] = block
            else:
                self.be.l2_rows(corr, corr)
                self.write_runs(c, counts, self.zfile, corr)
                t = self.kern.assign(corr, self.kf)
                _add_group_sums(new_sums.reshape(-1, self.K), t, blk * self.G + g)
            self.passes.step()
        return new_sums

    # ------------------------------------------------------------------ the algorithm

    def first_assignment(self) -> None:
        """The plain soft assignment of every block, its group sums and objective terms."""
        nb = self.layout.n_blocks
        plain = np.broadcast_to(self.kf, (self.G, self.K))
        with self.passes.run("soft assignment", nb):
            for j in range(nb):
                self.sums[j], self.obj_cross[j], self.obj_ent[j] = self.block_stats(j, plain, True)
                self.pens[j] = self.kf[None, :]
                self.passes.step()
        self.set_O()

    def update_round(self, rng: np.random.Generator, objective: bool, label: str) -> None:
        """One round of block updates (core's :func:`update_R`), blocks in a random order."""
        nb = self.layout.n_blocks
        with self.passes.run(label, nb):
            for j in rng.permutation(nb):
                old = self.sums[j]
                self.O -= (self.Phi_g.T @ old).T
                self.Nk -= old.sum(axis=0)
                pen_g = self.Phi_g @ diversity_penalty(self.O, self.E, self.theta).T
                pen = self.be.small(pen_g * self.kernel_factor[None, :])
                new, cross, ent = self.block_stats(j, pen, objective)
                self.sums[j], self.pens[j] = new, pen
                if objective:
                    self.obj_cross[j], self.obj_ent[j] = cross, ent
                self.O += (self.Phi_g.T @ new).T
                self.Nk += new.sum(axis=0)
                self.passes.step()

    def cluster(self, rng: np.random.Generator, objective_kmeans: list[float], it: int) -> int:
        """Core's :func:`cluster`: up to ``max_iter_kmeans`` rounds, same objective checks."""
        p = self.params
        check = p.max_iter_kmeans > _WINDOW + 1
        rounds = 0
        for i in range(p.max_iter_kmeans):
            rounds = i + 1
            last = i == p.max_iter_kmeans - 1
            self.update_round(rng, check or last, f"iteration {it}, clustering round {i + 1}")
            if check or last:
                objective_kmeans.append(self.objective())
            if check and i > _WINDOW and _window_converged(objective_kmeans, p.epsilon_cluster):
                break
        return rounds

    def ridge_pass(self, design: Design, it: int) -> None:
        """Per-group sums of ``R`` and ``Z_orig^T R`` (R recomputed), then the regressions."""
        with self.passes.run(f"iteration {it}, ridge sums", self.layout.n_chunks):
            rsum, zsum = self.ridge_sums()
        fit = SimpleNamespace(
            layout=SimpleNamespace(Phi_g=self.Phi_g),
            Nk=self.Nk,
            Pr_b=self.Pr_b,
            N_b=self.N_b,
            Y=self.Y,
        )
        self.Y_next, self.V = ridge_regressions(rsum, zsum, fit, design, self.params)

    def correction_pass(self, it: int, out: Any, last: bool) -> None:
        """``Z_orig - R (Phi W)``: to ``out`` in the caller's order on the last iteration, else its
        unit rows to ``Z_cos``, followed by the next iteration's plain soft assignment."""
        old = self.kern
        self.set_Y(self.Y_next)
        name = "correction, writing Z_corr" if last else "correction"
        with self.passes.run(f"iteration {it}, {name}", self.layout.n_chunks):
            new_sums = self.correct(old, out, last)
        if not last:
            self.sums = new_sums
            self.pens[:] = self.kf[None, None, :]
            self.set_O()

    def close(self) -> None:
        for f in (self.zfile, self.gfile, self.ofile):
            f.close()


def _open_output(tmp: Path, N: int, d: int, chunk: int, dtype: str):
    import zarr

    return zarr.open_array(
        str(tmp), mode="w", shape=(N, d), chunks=(min(chunk, N), d), dtype=np.dtype(dtype)
    )


def _move_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def harmonize_stream(
    data_mat: Any,
    design: Design,
    params: ResolvedHarmonyParams,
    *,
    chunk_cells: int,
    out: Path | None = None,
    work_dir: Any = None,
    show: bool = True,
    callback: Any = None,
    client: Any = None,
) -> tuple[HarmonyState, dict[str, Any]]:
    """Run Harmony chunk by chunk (see the module docstring), in this process or on a Dask cluster.

    Parameters
    ----------
    data_mat
        N x d row-sliceable array (ndarray, np.memmap, zarr.Array ...).
    design
        The batch design; its ``codes`` are dropped once the group codes are made.
    params
        Resolved parameters (the numpy kernels are used whatever the backend).
    chunk_cells
        Rows per chunk.
    out
        A checked path (:func:`check_out_path`) for the zarr array of ``Z_corr``; None keeps
        ``Z_corr`` in memory.
    work_dir
        Folder for the temporary work files (default: out's folder, else the system's temp folder).
    show
        Show a progress bar for each pass.
    callback
        ``callback(iteration, objective)`` after each Harmony iteration.
    client
        A ``dask.distributed.Client``: each chunk becomes a partition held by a worker and every
        pass is a map-reduce on the cluster (:mod:`scaml.harmony.dask_fit`); no work files.

    Returns
    -------
    state : HarmonyState
        ``Z_corr`` (a zarr array opened read-only at ``out``, or an ndarray), ``Y``, ``O``, ``E``,
        the objectives; no ``R``.
    info : dict
        Chunking, passes (name, chunks, seconds), peak RSS, work-file bytes.
    """
    src = _Input(data_mat)
    N, d = src.shape
    start = time.perf_counter()
    N_b = np.bincount(design.codes.ravel(), minlength=design.B)
    gcode, Phi_g = _groups(design)
    gcode = gcode.astype(np.int32)
    design = Design(
        codes=np.empty((0, design.codes.shape[1]), dtype=np.int64), n_levels=design.n_levels
    )
    layout = StreamLayout.build(
        gcode, Phi_g.shape[0], chunk_cells, params.block_size, params.random_state
    )
    if work_dir is None:
        work_dir = out.parent if out is not None else None
    work = None if client is not None else Path(tempfile.mkdtemp(prefix="scaml-harmony-", dir=work_dir))
    tmp_out = None if out is None else out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    passes = _Passes(show)
    fit = None
    state = HarmonyState()
    try:
        if client is not None:
            from .dask_fit import DaskFit

            fit = DaskFit(client, src, layout, Phi_g, N_b, params, work, passes)
        else:
            fit = _StreamFit(src, layout, Phi_g, N_b, params, work, passes)
        rng = np.random.default_rng(params.random_state)
        fit.read_pass()
        kbe = _KMeansBackend(fit.be, passes)
        with passes.run("k-means start (samples)", 1):
            fit.set_Y(
                init_centroids(kbe, fit.kmeans_rows(), fit.K, rng)
            )
            passes.step()
        fit.first_assignment()
        obj_k, obj_h = state.objective_kmeans, state.objective_harmony
        obj_k.append(fit.objective())
        obj_h.append(obj_k[-1])
        if out is not None:
            Z_out = _open_output(tmp_out, N, d, layout.chunk, params.dtype)
        else:
            Z_out = np.empty((N, d), dtype=np.dtype(params.dtype))
        for it in range(1, params.max_iter_harmony + 1):
            state.n_iter = it
            state.kmeans_rounds.append(fit.cluster(rng, obj_k, it))
            obj_h.append(obj_k[-1])
            converged = (obj_h[-2] - obj_h[-1]) / abs(obj_h[-2]) < params.epsilon_harmony
            last = converged or it == params.max_iter_harmony
            fit.ridge_pass(design, it)
            fit.correction_pass(it, Z_out, last)
            if callback is not None:
                callback(it, obj_h[-1])
            if converged:
                state.converged = True
            if last:
                break
        work_bytes = 0 if work is None else sum(f.stat().st_size for f in work.iterdir())
        cluster = fit.describe() if client is not None else None
        if out is not None:
            Z_out.attrs["scaml_harmony"] = {
                "n_iter": state.n_iter,
                "converged": state.converged,
                "chunk_cells": layout.chunk,
                "objective_harmony": [float(v) for v in obj_h],
            }
            _move_into_place(tmp_out, out)
            import zarr

            Z_out = zarr.open_array(str(out), mode="r")
    except BaseException:
        if tmp_out is not None and tmp_out.exists():
            shutil.rmtree(tmp_out, ignore_errors=True)
        raise
    finally:
        passes.stop()
        if fit is not None:
            fit.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    state.Z_corr = Z_out
    state.Y = np.asarray(fit.Y)
    state.O = fit.O
    state.E = fit.E
    seconds = time.perf_counter() - start
    state.seconds = {"total": round(seconds, 4)}
    info = {
        "path": "streaming" if client is None else "dask",
        "chunk_cells": int(layout.chunk),
        "n_chunks": int(layout.n_chunks),
        "n_blocks": int(layout.n_blocks),
        "n_groups": int(layout.G),
        "row_bytes": row_bytes(d, fit.K, params.dtype),
        "chunk_bytes": int(layout.chunk * row_bytes(d, fit.K, params.dtype)),
        "passes": passes.records,
        "n_passes": len(passes.records),
        "peak_rss_mib": round(passes.peak_kb / 1024, 1),
        "work_file_bytes": int(work_bytes),
        "R": "not stored: recomputed per block from Z_cos, Y and the block's last penalty",
        **({} if cluster is None else {"cluster": cluster}),
        "out": None if out is None else str(out),
        "seconds": round(seconds, 4),
    }
    return state, info


# ----------------------------------------------------------------------------- user API

from .api import Harmony, _as_meta, _design  # noqa: E402  (api imports this module lazily)


class StreamingHarmony(Harmony):
    """The result of a streaming :func:`~scaml.harmony.run_harmony` (``out=``, a memmap, zarr ...).

    As :class:`~scaml.harmony.Harmony`, except: ``Z_corr`` is the zarr array at ``out`` (opened
    read-only) or an ndarray when ``out`` was None; ``Z_orig`` is the caller's array (not loaded);
    ``R`` is not kept (it is recomputed per block during the run); ``Z_cos`` is computed from
    ``Z_corr`` in memory on first access; ``info`` records the chunking, every pass over the data
    (name, chunks, seconds), the peak RSS sampled at every chunk and the work-file size.
    """

    def __init__(
        self,
        state: HarmonyState,
        Z_orig: Any,
        params: dict[str, Any],
        batches: list[str],
        info: dict[str, Any],
    ) -> None:
        super().__init__(state, Z_orig, params, batches)
        self.info = info

    @property
    def Z_cos(self) -> np.ndarray:
        """``Z_corr`` with unit-length rows, read into memory on first access (cells x PCs)."""
        if "Z_cos" not in self._cache:
            Z = np.asarray(self.Z_corr[:])
            norms = np.linalg.norm(Z, axis=1, keepdims=True)
            self._cache["Z_cos"] = Z / np.maximum(norms, np.finfo(Z.dtype).tiny)
        return self._cache["Z_cos"]

    @property
    def R(self) -> np.ndarray:
        """Not available: the streaming path never keeps the cells x clusters ``R``."""
        raise ScamlError(
            "R is not kept by the streaming Harmony (it is recomputed per block from Z_cos); run "
            "run_harmony on an in-memory ndarray without out=/chunk_cells=/max_memory= to get R."
        )


def run_harmony_stream(
    data_mat: Any,
    meta_data: Any,
    vars_use: Any,
    hp: Any,
    *,
    out: Any = None,
    chunk_cells: Any = None,
    max_memory: Any = None,
    overwrite: bool = False,
    verbose: bool = True,
    client: Any = None,
) -> StreamingHarmony:
    """The streaming path of :func:`scaml.harmony.run_harmony` (its arguments, validated ``hp``).

    Checks ``out`` (new path, or ``overwrite=True``; never the input's own storage), the meta data
    against the number of rows, the parameters against the data and the chunk budget, before any
    data is read; the rows are checked for NaN / infinite values in the first pass, before
    anything is written to ``out``.
    """
    import dataclasses

    import pandas as pd

    if isinstance(data_mat, pd.DataFrame):
        data_mat = data_mat.select_dtypes(include=[np.number]).to_numpy()
    if hp.backend == "torch":
        raise ScamlError(
            "the streaming Harmony (out=, chunk_cells=, max_memory=, client= or a memmap / zarr "
            "input) runs on numpy; use backend='numpy' or 'auto', or an in-memory ndarray for torch."
        )
    src = _Input(data_mat)
    N, d = src.shape
    out_path = None if out is None else check_out_path(out, overwrite, data_mat)
    meta, vars_use = _as_meta(meta_data, vars_use, N)
    design, batch_names = _design(meta, vars_use)
    del meta
    N_b = np.bincount(design.codes.ravel(), minlength=design.B)
    resolved = hp.resolve(N, design.n_levels, N_b)
    resolved = dataclasses.replace(resolved, backend="numpy", device="cpu")
    chunk, budget = plan_chunk_cells(
        N, d, resolved.nclust, resolved.dtype, chunk_cells=chunk_cells, max_memory=max_memory
    )
    stored = src.chunk_rows
    if chunk_cells is None and stored and stored <= chunk < N:
        chunk -= chunk % stored  # whole stored chunks per read (zarr)
    params: dict[str, Any] = {
        "vars_use": vars_use,
        **resolved.as_dict(),
        "n_cells": int(N),
        "n_dims": int(d),
        "n_batches": [int(n) for n in design.n_levels],
        "chunk_cells": int(chunk),
    }
    from .._utils import info, is_quiet

    show = verbose and not is_quiet()
    state, run_info = harmonize_stream(
        data_mat, design, resolved, chunk_cells=chunk, out=out_path, show=show, client=client
    )
    run_info["max_memory_bytes"] = int(budget)
    if show:
        status = (
            f"converged after {state.n_iter}"
            if state.converged
            else f"stopped after {state.n_iter}"
        )
        where = f", Z_corr in {str(out_path)!r}" if out_path is not None else ""
        on = "" if client is None else f" on the Dask cluster at {run_info['cluster']['scheduler']}"
        info(
            f"Harmony (streaming{on}, {run_info['n_chunks']} chunks of {chunk} cells, "
            f"{run_info['n_passes']} passes) {status} iteration(s){where}."
        )
    return StreamingHarmony(state, data_mat, params, batch_names, run_info)
