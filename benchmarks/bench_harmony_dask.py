"""Harmony on a Dask cluster (``run_harmony(client=...)``) against the in-process streaming Harmony.

Threads: 1 per process (``BENCH_THREADS``), set before numpy is imported. Simulated data as in
bench_harmony_ooc.py (20 cell types, 4 batches with an additive shift, 50 PCs), written chunk by
chunk to a ``.npy`` file in a temporary folder and opened with ``np.load(mmap_mode="r")``. R harmony
2.x defaults and a fixed number of Harmony iterations (``epsilon_harmony = epsilon_cluster = -inf``),
the same chunks (``--max-memory``) for every engine.

One process runs, one after the other: the in-process streaming Harmony, then the same on a
``LocalCluster`` of each ``--workers`` count (worker processes, one thread each). Printed per run:
seconds, the speed-up over in-process, the client's peak RSS increase (VmHWM reset through
/proc/self/clear_refs, as bench_harmony.py), the workers' peak RSS, and the agreement with the
in-process run (max |difference| and min per-PC Pearson r). Then the round-trip time of one empty
map-reduce, as Dask tasks (one per partition, through the scheduler) and as the calls of one actor per
worker that the run makes (the latency every block update pays), and the number of map-reduces of a
run (block updates, Lloyd steps, ridge sums, corrections), from which the pure-latency part follows.

Usage::

    python benchmarks/bench_harmony_dask.py --sizes 1000000 --workers 1 2
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harmony import PeakMemory, per_pc_correlation  # noqa: E402
from bench_harmony_ooc import write_simulation  # noqa: E402


def _noop(part: object) -> int:
    return 0


def round_trips_ms(client, n_parts: int, repeats: int = 30) -> tuple[float, float]:
    """Median milliseconds of one empty map-reduce: a task per partition through the scheduler, and
    one call of a :class:`PartitionStore` actor per worker (what the run does)."""
    from scaml.harmony.dask_fit import PartitionStore

    parts = client.scatter([np.zeros(1)] * n_parts, hash=False)
    stores = [client.submit(PartitionStore, "float32", actor=True, workers=[w], pure=False).result()
              for w in sorted(client.scheduler_info()["workers"])]
    tasks, calls = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        client.gather([client.submit(_noop, p, pure=False) for p in parts])
        tasks.append(time.perf_counter() - t)
        t = time.perf_counter()
        [c.result() for c in [s.peak_rss_mib() for s in stores]]
        calls.append(time.perf_counter() - t)
    return 1e3 * float(np.median(tasks)), 1e3 * float(np.median(calls))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--pcs", type=int, default=50)
    parser.add_argument("--iters", type=int, default=10, help="Harmony iterations (no early stop)")
    parser.add_argument("--max-memory", default="512MB", help="chunk budget (sets the partitions)")
    parser.add_argument("--tmp", default=None, help="folder for the temporary files")
    args = parser.parse_args()

    import distributed

    from scaml.harmony import run_harmony

    kw = {"epsilon_harmony": -np.inf, "epsilon_cluster": -np.inf, "max_iter_harmony": args.iters,
          "max_memory": args.max_memory, "verbose": False}
    rows = []
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="bench-harmony-dask-", dir=args.tmp))
        try:
            meta = write_simulation(work / "x.npy", n, args.pcs)
            X = np.load(work / "x.npy", mmap_mode="r")
            with PeakMemory() as mem:
                t = time.perf_counter()
                here = run_harmony(X, meta, "batch", **kw)
                seconds = time.perf_counter() - t
            ref = np.asarray(here.Z_corr)
            info = here.info
            rows.append((n, "in-process", seconds, 1.0, mem.mib, "", "", ""))
            print(f"{n:,} cells in-process: {seconds:.1f} s, {info['n_chunks']} chunks x {info['chunk_cells']:,} "
                  f"cells, {info['n_passes']} passes", flush=True)
            for w in args.workers:
                with distributed.LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                              dashboard_address=None) as lc, distributed.Client(lc) as client:
                    with PeakMemory() as mem:
                        t = time.perf_counter()
                        there = run_harmony(X, meta, "batch", client=client, **kw)
                        dask_seconds = time.perf_counter() - t
                    Z = np.asarray(there.Z_corr)
                    r = per_pc_correlation(Z, ref)
                    peaks = there.info["cluster"]["worker_peak_rss_mib"]
                    task_ms, actor_ms = round_trips_ms(client, info["n_chunks"])
                rows.append((n, f"LocalCluster, {w} worker{'s' if w > 1 else ''}", dask_seconds,
                             seconds / dask_seconds, mem.mib, " / ".join(f"{v:.0f}" for v in peaks.values()),
                             f"{np.abs(Z - ref).max():.1e} ({r.min():.6f})", f"{task_ms:.1f} / {actor_ms:.1f}"))
                print(rows[-1], flush=True)
            n_blocks = info["n_blocks"]
            updates = (args.iters * 4 + 1) * n_blocks  # 4 clustering rounds per iteration + the first assignment
            print(f"map-reduces per run: {updates} block updates + {2 * args.iters} ridge / correction passes "
                  f"+ the k-means start's Lloyd steps and sample gathers")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print("| cells | engine | seconds | speed-up | client peak RSS increase MiB | worker peak RSS MiB | "
          "max abs diff (min r) vs in-process | empty map-reduce ms: tasks / actors |")
    print("|---:|---|---:|---:|---:|---|---|---:|")
    for n, name, s, speed, mib, workers, agree, lat in rows:
        print(f"| {n:,} | {name} | {s:.1f} | {speed:.2f}x | {mib:.0f} | {workers} | {agree} | {lat} |")


if __name__ == "__main__":
    main()
