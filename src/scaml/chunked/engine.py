"""Where the chunks run: in this process, or on a dask.distributed cluster.

:class:`Engine` maps a function over chunks and hands back the results in chunk order
(:meth:`Engine.map`), or adds them up in a fixed tree (:meth:`Engine.map_sum`: on a cluster the
additions run on the workers and only the total reaches the client). Either way the order of the
additions is the same in-process and on a cluster, and so are the numbers. On a cluster at most
``window`` chunks are in flight, which bounds the memory the results take.
:func:`connect` makes the cluster client: a running scheduler's address, or ``"local"`` for a
``LocalCluster`` on this machine.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .._utils import SumTree, add_up, info, is_quiet, progress
from ..errors import ScamlError

#: Seconds to wait for a scheduler before giving up.
CONNECT_TIMEOUT_S = 5
#: Chunk results added together per addition of :meth:`Engine.map_sum`.
FAN_IN = 8


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's VmHWM (the high-water mark of this program's own memory; ``ru_maxrss`` would also count
    the parent's memory at the fork of a child process), else ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def connect(address: str, *, n_workers: int | None = None, memory_limit: int | None = None) -> Any:
    """A ``dask.distributed.Client``: to the scheduler at ``address``, or to a new ``LocalCluster`` (``"local"``).

    Parameters
    ----------
    address
        ``"local"``, or a scheduler address such as ``tcp://10.0.0.5:8786`` (started with
        ``dask scheduler`` and ``dask worker ADDRESS``, or by dask-jobqueue / dask-kubernetes).
    n_workers, memory_limit
        For ``"local"``: worker processes (default: the CPUs this process may use, at most 4) and
        each worker's memory limit in bytes.

    Raises
    ------
    ScamlError
        The scheduler does not answer within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency
        raise ScamlError("--dask needs the 'distributed' package; pip install distributed.") from exc
    if str(address).lower() == "local":
        workers = n_workers or max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                          else (os.cpu_count() or 1)))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               memory_limit=memory_limit if memory_limit else "auto", dashboard_address=None)
        return Client(cluster)
    try:
        return Client(str(address), timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScamlError(
            f"no Dask scheduler answered at {address!r} within {CONNECT_TIMEOUT_S} s ({type(exc).__name__}); start one "
            "(dask scheduler, then dask worker ADDRESS) and check the address, or use --dask local."
        ) from exc


def describe_client(client: Any) -> dict[str, Any]:
    """The cluster a client talks to: scheduler address, workers and their threads (for run.json)."""
    if client is None:
        return {"engine": "in-process"}
    workers = client.scheduler_info().get("workers", {})
    return {
        "engine": "dask.distributed",
        "scheduler": str(client.scheduler.address),
        "n_workers": len(workers),
        "threads": int(sum(w.get("nthreads", 0) for w in workers.values())),
    }


class Engine:
    """Runs the passes over the chunks and records them (chunks, seconds, peak memory).

    Parameters
    ----------
    client
        A ``dask.distributed.Client``, or None to run in this process.
    show
        Show a progress bar per pass (also silenced by scaml's quiet mode).
    window
        Chunks in flight on a cluster (default: twice the workers' threads).
    """

    def __init__(self, client: Any = None, *, show: bool = True, window: int | None = None) -> None:
        self.client = client
        self.cluster = describe_client(client)
        self.show = show and not is_quiet()
        threads = int(self.cluster.get("threads", 1) or 1)
        self.window = int(window or max(2, 2 * threads))
        self.records: list[dict[str, Any]] = []

    @contextmanager
    def _pass(self, name: str, n_chunks: int, **record: Any) -> Iterator[Callable[[int], None]]:
        """A pass over ``n_chunks`` chunks: its progress bar (yields ``advance(k)``) and its record."""
        start = time.perf_counter()
        bar = progress() if self.show else None
        task = None
        if bar is not None:
            bar.start()
            task = bar.add_task(f"{name}", total=n_chunks, status="")

        def advance(k: int = 1) -> None:
            if bar is not None:
                bar.advance(task, k)

        try:
            yield advance
        finally:
            if bar is not None:
                bar.stop()
            self.records.append({"pass": name, "chunks": n_chunks, "seconds": round(time.perf_counter() - start, 3),
                                 "peak_rss_mib": round(peak_rss_mib(), 1), **record})

    def map(self, name: str, func: Callable[..., Any], items: Sequence[Any], *args: Any) -> Iterator[Any]:
        """``func(item, *args)`` for every item, yielded in item order, with a progress bar."""
        with self._pass(name, len(items)) as advance:
            for result in self._results(func, items, args):
                advance()
                yield result

    def _results(self, func: Callable[..., Any], items: Sequence[Any], args: tuple) -> Iterable[Any]:
        if self.client is None:
            for item in items:
                yield func(item, *args)
            return
        scattered = self._scatter(args)
        pending: list[Any] = []
        it = iter(items)
        for item in it:
            pending.append(self.client.submit(func, item, *scattered, pure=False))
            if len(pending) >= self.window:
                break
        while pending:
            future = pending.pop(0)
            result = future.result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(self.client.submit(func, nxt, *scattered, pure=False))
            yield result

    def _scatter(self, args: tuple) -> list[Any]:
        """The arguments shared by every chunk; the large ones sent to every worker once."""
        return [self.client.scatter(a, broadcast=True) if _is_large(a) else a for a in args]

    def map_sum(self, name: str, func: Callable[..., Any], items: Sequence[Any], *args: Any) -> Any:
        """The sum of ``func(item, *args)`` over the items (arrays, numbers or tuples of them).

        The results are added in a fixed tree (:class:`scaml._utils.SumTree`, groups of
        :data:`FAN_IN` consecutive chunks, level by level). On a cluster the additions are tasks on
        the workers, so only the total reaches the client; in this process they are made in the same
        order, so both give the same numbers.
        """
        with self._pass(name, len(items), reduction=f"tree, fan-in {FAN_IN}") as advance:
            if self.client is None:
                tree = SumTree(FAN_IN)
                for item in items:
                    tree.push(func(item, *args))
                    advance()
                return tree.total()
            return self._tree_on_cluster(func, items, args, advance)

    def _tree_on_cluster(self, func: Callable[..., Any], items: Sequence[Any], args: tuple,
                         advance: Callable[[int], None]) -> Any:
        from distributed import wait

        client = self.client
        scattered = self._scatter(args)
        tree = SumTree(FAN_IN, combine=lambda group: client.submit(add_up, *group, pure=False))
        in_flight: list[Any] = []
        for item in items:
            if len(in_flight) >= self.window:  # at most ``window`` chunks computed at a time
                wait(in_flight[:1])
                in_flight.pop(0)
                advance()
            future = client.submit(func, item, *scattered, pure=False)
            in_flight.append(future)
            tree.push(future)
        result = tree.total().result()
        advance(len(in_flight))
        return result

    @contextmanager
    def local_pass(self, name: str) -> Iterator[None]:
        """Time work done in this process outside :meth:`map` (e.g. reading a fragments file) as a pass of run.json."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.records.append({"pass": name, "seconds": round(time.perf_counter() - start, 3),
                                 "peak_rss_mib": round(peak_rss_mib(), 1)})

    def summary(self) -> dict[str, Any]:
        """The cluster used and the passes run, for run.json."""
        out = dict(self.cluster)
        out["passes"] = self.records  # the same list: passes run later (the output file) show up too
        out["peak_rss_mib"] = round(peak_rss_mib(), 1)
        return out

    def say_where(self) -> None:
        c = self.cluster
        if c["engine"] == "in-process":
            info("chunked passes run in this process")
        else:
            info(f"chunked passes run on the Dask cluster at {c['scheduler']} ({c['n_workers']} workers, "
                 f"{c['threads']} threads)")


def _is_large(value: Any) -> bool:
    nbytes = getattr(value, "nbytes", 0)
    return bool(nbytes and nbytes > 1 << 20)
