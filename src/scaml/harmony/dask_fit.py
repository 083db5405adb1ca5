# ruff: noqa: N802, N806  (Y, Z are the paper's notation)
"""Harmony on a Dask cluster: the streaming algorithm with the cells held by the workers.

:func:`scaml.harmony.run_harmony` with ``client=`` (a ``dask.distributed.Client``) runs the passes
of :mod:`scaml.harmony.stream` on the cluster. Each chunk of the caller's rows becomes one
partition, dealt round-robin to the workers and kept in a worker's memory for the whole run: its
input rows and their ``Z_cos``, sorted by update block (:meth:`StreamLayout.chunk_map`), with each
row's batch group. Each worker holds its partitions in one :class:`PartitionStore`, a Dask actor:
the client calls it directly (a round trip of about 3 ms here, where a task through the scheduler
takes 20-30 ms, and a run makes hundreds of them).

* A block update is **one map-reduce**: every worker computes the new soft assignment of its
  partitions' rows of that block under the penalty the client sends (G x K numbers) and returns
  their per-group sums (and objective terms), added up over its partitions; the client adds the
  workers' sums and updates ``O`` / ``E``.
* The ridge sums (per group, ``R`` and ``Z_orig^T R``) and the k-means start's Lloyd steps are
  map-reduces in the same way: two levels, partitions on a worker, then workers on the client;
  the k-means samples are gathered by index.
* The correction replaces each partition's ``Z_cos`` where it lies; the last one keeps ``Z_corr``
  on the workers until the client fetches it, one partition at a time, and writes it to ``out``.
* ``R`` is never kept: as in the streaming path, a block's ``R`` is recomputed from its ``Z_cos``
  rows, ``Y`` and the block's last penalty.

The client holds the small state (``Y``, ``O``, the per-block caches) and the batch group of each
cell (4 bytes a cell); the workers hold about ``2 d`` numbers per cell (actor state: Dask does not
spill it). With the same chunking the numbers equal the in-process streaming run's up to the order
of the floating-point sums (``tests/test_harmony_dask.py``). The workers need scaml installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import add_up
from ..errors import ScamlError
from .core import _NumpyBackend
from .stream import (
    RowKernel,
    _add_group_sums,
    _StreamFit,
    block_stats,
    check_finite_rows,
    corrected_rows,
    ridge_stats,
)


@dataclass
class Partition:
    """One chunk of the caller's rows, as a worker keeps it: rows sorted by update block.

    Attributes
    ----------
    a
        The chunk's first row in the caller's order.
    order
        ``rows[i]`` of this partition is the caller's row ``a + order[i]``.
    starts
        (n_blocks + 1,): block j holds this partition's rows ``starts[j]:starts[j + 1]``.
    groups
        (rows,) int32 batch group of each row.
    Z_orig, Z_cos
        (rows x d) the input rows and their current unit-length corrected rows (working dtype).
    """

    a: int
    order: np.ndarray
    starts: np.ndarray
    groups: np.ndarray
    Z_orig: np.ndarray
    Z_cos: np.ndarray

    @property
    def blocks(self) -> np.ndarray:
        return np.repeat(np.arange(self.starts.size - 1), np.diff(self.starts))


# ----------------------------------------------------------------------------- tasks (run on workers)


def load_partition(
    raw: Any, a: int, order: np.ndarray, counts: np.ndarray, groups: np.ndarray, dtype: str
) -> Partition:
    """A worker's partition from the caller's rows ``a : a + len(raw)`` (checked for NaN / inf)."""
    raw = np.asarray(raw)
    check_finite_rows(raw, a, a + raw.shape[0])
    Z_orig = np.ascontiguousarray(np.asarray(raw, dtype=dtype)[order])
    Z_cos = _NumpyBackend(dtype).l2_rows(Z_orig, np.empty_like(Z_orig))
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Partition(a=a, order=order, starts=starts, groups=groups, Z_orig=Z_orig, Z_cos=Z_cos)


def partition_block(
    part: Partition, kern: RowKernel, pen: np.ndarray, j: int, objective: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`~scaml.harmony.stream.block_stats` of the partition's rows of block j."""
    s, e = int(part.starts[j]), int(part.starts[j + 1])
    return block_stats(kern, part.Z_cos[s:e], part.groups[s:e], pen, objective)


def partition_ridge(part: Partition, kern: RowKernel, pens: np.ndarray, G: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~scaml.harmony.stream.ridge_stats` of all the partition's rows."""
    return ridge_stats(kern, part.Z_cos, part.Z_orig, part.groups, pens[part.blocks, part.groups], G)


def partition_correct(
    part: Partition,
    old: RowKernel,
    new: RowKernel,
    pens: np.ndarray,
    Vw: np.ndarray,
    kf: np.ndarray,
    last: bool,
    out_dtype: str,
) -> Any:
    """The correction of the partition's rows: ``Z_corr`` in the caller's order when ``last``, else
    ``(new partition, per-block group sums of the plain soft assignment under new Y)``."""
    blk = part.blocks
    corr = corrected_rows(old, part.Z_cos, part.Z_orig.copy(), part.groups, pens[blk, part.groups], Vw)
    if last:
        block = np.empty(corr.shape, dtype=np.dtype(out_dtype))
        block[part.order] = corr
        return block
    _NumpyBackend(str(corr.dtype)).l2_rows(corr, corr)
    n_blocks, G, K = pens.shape
    sums = np.zeros((n_blocks * G, K))
    _add_group_sums(sums, new.assign(corr, kf), blk * G + part.groups)
    moved = Partition(a=part.a, order=part.order, starts=part.starts, groups=part.groups, Z_orig=part.Z_orig,
                      Z_cos=corr)
    return moved, sums.reshape(n_blocks, G, K)


def partition_rows(part: Partition, positions: np.ndarray) -> np.ndarray:
    """Rows of the partition's ``Z_cos`` (float64), by position."""
    return np.asarray(part.Z_cos[positions], dtype=np.float64)


def worker_peak_rss_mib() -> float:
    """This worker process's peak resident memory (Linux VmHWM), in MiB."""
    from .stream import _vm_kb

    return round(_vm_kb("VmHWM") / 1024, 1)


class PartitionStore:
    """The partitions one worker holds for one run: a Dask actor (its methods run on the worker,
    called straight from the client, a round trip of a few milliseconds instead of a task's 20-30).

    Each method runs over all the worker's partitions and returns their sum, so the client adds up
    one partial result per worker."""

    def __init__(self, dtype: str) -> None:
        self.dtype = dtype
        self.parts: dict[int, Partition] = {}
        self.kern: RowKernel | None = None
        self.old_kern: RowKernel | None = None
        self.out: dict[int, np.ndarray] = {}

    def load(self, c: int, raw: Any, a: int, order: np.ndarray, counts: np.ndarray, groups: np.ndarray) -> int:
        self.parts[c] = load_partition(raw, a, order, counts, groups, self.dtype)
        return len(order)

    def set_kernel(self, kern: RowKernel) -> None:
        self.old_kern, self.kern = self.kern, kern

    def block(self, pen: np.ndarray, j: int, objective: bool) -> Any:
        return add_up(*(partition_block(p, self.kern, pen, j, objective) for p in self.parts.values()))

    def ridge(self, pens: np.ndarray, G: int) -> Any:
        return add_up(*(partition_ridge(p, self.kern, pens, G) for p in self.parts.values()))

    def correct(self, pens: np.ndarray, Vw: np.ndarray, kf: np.ndarray, last: bool, out_dtype: str) -> Any:
        """The correction of every partition (under the previous kernel); ``Z_corr`` is kept for
        :meth:`take_output` when ``last``, else the partitions move on and the sums come back."""
        sums = []
        for c, part in self.parts.items():
            res = partition_correct(part, self.old_kern, self.kern, pens, Vw, kf, last, out_dtype)
            if last:
                self.out[c] = res
            else:
                self.parts[c], s = res
                sums.append(s)
        if last:
            self.parts = {}
            return None
        return add_up(*sums)

    def take_output(self, c: int) -> np.ndarray:
        return self.out.pop(c)

    def rows(self, wanted: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        return {c: partition_rows(self.parts[c], pos) for c, pos in wanted.items()}

    def lloyd(self, C: np.ndarray) -> Any:
        be = _NumpyBackend(self.dtype)
        return add_up(*(be.lloyd_step(p.Z_cos, C) for p in self.parts.values()))

    def peak_rss_mib(self) -> float:
        return worker_peak_rss_mib()


# ----------------------------------------------------------------------------- the client side


def _results(calls: list[Any]) -> list[Any]:
    """The results of actor calls made in parallel (the first error is raised)."""
    return [call.result() for call in calls]


class _DaskRows:
    """The partitions' ``Z_cos`` as core's k-means start sees it: rows by work-file index (the
    streaming path's block-major order, so the same samples are drawn), Lloyd steps on the workers."""

    def __init__(self, fit: DaskFit) -> None:
        self.fit = fit
        self.shape = (fit.N, fit.d)
        self.n_parts = fit.layout.n_chunks

    def take(self, idx: np.ndarray) -> np.ndarray:
        lay = self.fit.layout
        idx = np.asarray(idx, dtype=np.int64)
        j = np.searchsorted(lay.block_start, idx, side="right") - 1
        c = np.empty_like(idx)
        for b in np.unique(j):
            sel = j == b
            c[sel] = np.searchsorted(lay.ptr[:, b], idx[sel], side="right") - 1
        run_start = np.concatenate([np.zeros((lay.n_chunks, 1), dtype=np.int64), np.cumsum(lay.counts, axis=1)],
                                   axis=1)
        pos = run_start[c, j] + idx - lay.ptr[c, j]
        rows_of = {int(p): np.flatnonzero(c == p) for p in np.unique(c)}
        out = np.empty((idx.size, self.fit.d), dtype=np.float64)
        per_store: dict[int, dict[int, np.ndarray]] = {}
        for p, rows in rows_of.items():
            per_store.setdefault(self.fit.store_of(p), {})[p] = pos[rows]
        calls = [self.fit.stores[w].rows(wanted) for w, wanted in per_store.items()]
        for got in _results(calls):
            for p, values in got.items():
                out[rows_of[p]] = values
        return out

    def lloyd(self, be: _NumpyBackend, C: np.ndarray, step: Any) -> tuple[Any, Any, float]:
        total = add_up(*_results([s.lloyd(C) for s in self.fit.stores]))
        for _ in range(self.n_parts):
            step()
        return total


class DaskFit(_StreamFit):
    """:class:`~scaml.harmony.stream._StreamFit` with its passes run on a Dask cluster (module docstring)."""

    def __init__(self, client: Any, *args: Any) -> None:
        self.client = client
        super().__init__(*args)

    def open_storage(self, work: Path | None) -> None:
        workers = sorted(self.client.scheduler_info().get("workers", {}))
        if not workers:
            raise ScamlError("the Dask cluster has no workers; start some (dask worker ADDRESS) and run again.")
        n = min(len(workers), self.layout.n_chunks)
        self.workers = workers[:n]
        futures = [self.client.submit(PartitionStore, str(self.wd), actor=True, workers=[w], pure=False)
                   for w in self.workers]
        self.stores = [f.result() for f in futures]
        self._store_futures = futures

    def store_of(self, c: int) -> int:
        """The worker (index into :attr:`stores`) that holds chunk c: chunks dealt round-robin."""
        return c % len(self.stores)

    def set_Y(self, Y: np.ndarray) -> None:
        super().set_Y(Y)
        _results([s.set_kernel(self.kern) for s in self.stores])

    def _input_chunks(self):
        """The caller's rows chunk by chunk (a Dask array's blocks are computed one at a time)."""
        lay, data = self.layout, self.src.data
        if hasattr(data, "dask") and hasattr(data, "rechunk"):
            blocks = data.rechunk((lay.chunk, data.shape[1])).to_delayed().ravel()
            for c in range(lay.n_chunks):
                yield np.asarray(blocks[c].compute())
            return
        for c in range(lay.n_chunks):
            yield self.src.raw(*lay.bounds(c))

    def read_pass(self) -> None:
        lay = self.layout
        with self.passes.run("send the embedding to the workers and check it", lay.n_chunks):
            pending: list[Any] = []
            for c, raw in enumerate(self._input_chunks()):
                a, b = lay.bounds(c)
                order, counts = lay.chunk_map(c)
                groups = lay.gcode[a:b][order].astype(np.int32)
                pending.append(self.stores[self.store_of(c)].load(c, raw, a, order.astype(np.int32), counts, groups))
                if len(pending) >= len(self.stores):  # one chunk in flight per worker
                    _results(pending)
                    pending = []
                self.passes.step()
            _results(pending)

    def kmeans_rows(self) -> _DaskRows:
        return _DaskRows(self)

    def block_stats(self, j: int, pen: np.ndarray, objective: bool):
        pen = np.ascontiguousarray(pen)
        return add_up(*_results([s.block(pen, int(j), objective) for s in self.stores]))

    def ridge_sums(self) -> tuple[np.ndarray, np.ndarray]:
        total = add_up(*_results([s.ridge(self.pens, self.G) for s in self.stores]))
        for _ in range(self.layout.n_chunks):
            self.passes.step()
        return total

    def correct(self, old: RowKernel, out: Any, last: bool) -> np.ndarray | None:
        # correction_pass set the new Y just before: each store's previous kernel is ``old``
        Vw = self.be.small(self.V)
        sums = add_up(*_results([s.correct(self.pens, Vw, self.kf, last, self.params.dtype) for s in self.stores]))
        if not last:
            for _ in range(self.layout.n_chunks):
                self.passes.step()
            return sums
        for c in range(self.layout.n_chunks):
            a, b = self.layout.bounds(c)
            out[a:b] = self.stores[self.store_of(c)].take_output(c).result()
            self.passes.step()
        return None

    def describe(self) -> dict[str, Any]:
        """The cluster and the workers' peak memory (for the run's info)."""
        workers = self.client.scheduler_info().get("workers", {})
        peaks = _results([s.peak_rss_mib() for s in self.stores])
        return {
            "scheduler": str(self.client.scheduler.address),
            "n_workers": len(workers),
            "threads": int(sum(w.get("nthreads", 0) for w in workers.values())),
            "n_partitions": int(self.layout.n_chunks),
            "workers_used": len(self.stores),
            "worker_peak_rss_mib": dict(zip(self.workers, peaks, strict=True)),
            "calls": "one actor per worker (PartitionStore); its partitions' sums added on the worker",
        }

    def close(self) -> None:
        self.stores = []
        self._store_futures = []
