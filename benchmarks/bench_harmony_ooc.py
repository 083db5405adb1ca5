"""Out-of-core Harmony: scaml's in-memory ``run_harmony`` vs its streaming path (memmap in, zarr out).

Threads: 2 (``BENCH_THREADS``), set before numpy is imported. Simulated data as in bench_harmony.py (20 cell types, 4 batches with an additive shift, 50 PCs),
written chunk by chunk to a ``.npy`` file in a temporary folder (``--tmp``, default the system's)
and opened with ``np.load(mmap_mode="r")``. R harmony 2.x defaults (theta 2, sigma 0.1, lambda
estimated, 4 clustering rounds, nclust min(N/30, 100)) and a fixed number of Harmony iterations
(``epsilon_harmony = epsilon_cluster = -inf``; ``--early-stop`` keeps the default convergence checks and
prints the iterations made).

* ``--sizes``: in memory (the ``.npy`` loaded into RAM first) and streaming (memmap in, ``Z_corr``
  to a zarr array), one after the other in one process: seconds, peak RSS increase over the RSS
  before the call (VmHWM reset through /proc/self/clear_refs, as bench_harmony.py), the process's
  absolute peak RSS, and the agreement (median / min per-PC Pearson r of the two ``Z_corr``).
* ``--big``: streaming only (no in-memory reference); seconds and peak RSS.

Temporary files (input, output, work files) are deleted at the end.

Usage::

    python benchmarks/bench_harmony_ooc.py                          # 1M in memory vs streaming
    python benchmarks/bench_harmony_ooc.py --sizes 1000000 --big 10000000 --max-memory 1GB
    python benchmarks/bench_harmony_ooc.py --sizes --big 100000000 --early-stop   # 100M, default convergence
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "2")
for _var in (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harmony import PeakMemory, _rss_kb, per_pc_correlation  # noqa: E402


def write_simulation(path: Path, n_cells: int, n_pcs: int, seed: int = 0, chunk: int = 500_000):
    """Write ``n_cells x n_pcs`` float32 cells to ``path`` (.npy) chunk by chunk; return the meta."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(20, n_pcs))
    shift = rng.normal(scale=1.5, size=(4, n_pcs))
    X = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_cells, n_pcs))
    batches = np.empty(n_cells, dtype=np.int8)
    for a in range(0, n_cells, chunk):
        b = min(a + chunk, n_cells)
        cell_type = rng.integers(0, 20, b - a)
        batch = rng.integers(0, 4, b - a)
        X[a:b] = centers[cell_type] + shift[batch] + rng.normal(size=(b - a, n_pcs))
        batches[a:b] = batch
    X.flush()
    del X
    levels = [f"b{i}" for i in range(4)]
    return pd.DataFrame({"batch": pd.Categorical.from_codes(batches, levels)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--big", type=int, nargs="*", default=[], help="streaming only")
    parser.add_argument("--pcs", type=int, default=50)
    parser.add_argument("--iters", type=int, default=10, help="Harmony iterations (no early stop)")
    parser.add_argument(
        "--early-stop",
        action="store_true",
        help="keep the default convergence checks (at most --iters iterations)",
    )
    parser.add_argument("--max-memory", default="512MB", help="streaming chunk budget")
    parser.add_argument("--tmp", default=None, help="folder for the temporary files")
    args = parser.parse_args()

    from scaml.harmony import run_harmony

    print(f"threads={THREADS}; numpy {np.__version__}; chunk budget {args.max_memory}")
    common: dict = dict(max_iter_harmony=args.iters, verbose=False)
    if args.early_stop:
        print(f"parameters: defaults, max_iter_harmony={args.iters}, default convergence checks")
    else:
        print(
            f"parameters: defaults, max_iter_harmony={args.iters}, "
            "epsilon_harmony=epsilon_cluster=-inf (fixed iteration count)"
        )
        common.update(epsilon_harmony=-np.inf, epsilon_cluster=-np.inf)
    tmp = Path(tempfile.mkdtemp(prefix="bench-harmony-ooc-", dir=args.tmp))
    try:
        warm = write_simulation(tmp / "warm.npy", 2000, args.pcs)
        run_harmony(np.load(tmp / "warm.npy"), warm, "batch", **common)
        run_harmony(
            np.load(tmp / "warm.npy", mmap_mode="r"), warm, "batch", chunk_cells=500, **common
        )
        print(
            "| cells | method | seconds | peak RSS increase MiB | process peak RSS MiB "
            "| chunks x cells | median r (min) |"
        )
        print("|---:|---|---:|---:|---:|---|---|")
        jobs = [(n, True) for n in args.sizes] + [(n, False) for n in args.big]
        for n, compare in jobs:
            src = tmp / f"x{n}.npy"
            start = time.perf_counter()
            meta = write_simulation(src, n, args.pcs)
            print(f"  wrote {n:,} x {args.pcs} in {time.perf_counter() - start:.0f} s", flush=True)
            ref = None
            if compare:
                X = np.load(src)
                with PeakMemory() as pm:
                    start = time.perf_counter()
                    ho = run_harmony(X, meta, "batch", **common)
                    sec = time.perf_counter() - start
                hwm = _rss_kb("VmHWM") / 1024
                ref = ho.Z_corr
                del ho, X
                print(
                    f"| {n:,} | in memory | {sec:.1f} | {pm.mib:.0f} | {hwm:.0f} | | |", flush=True
                )
            mm = np.load(src, mmap_mode="r")
            out = tmp / f"z{n}.zarr"
            with PeakMemory() as pm:
                start = time.perf_counter()
                ho = run_harmony(mm, meta, "batch", out=out, max_memory=args.max_memory, **common)
                sec = time.perf_counter() - start
            hwm = _rss_kb("VmHWM") / 1024
            info = ho.info
            agree = ""
            if ref is not None:
                r = per_pc_correlation(ref, ho.Z_corr[:])
                agree = f"{np.median(r):.5f} ({r.min():.5f})"
                del ref
            print(
                f"| {n:,} | streaming | {sec:.1f} | {pm.mib:.0f} | {hwm:.0f} | "
                f"{info['n_chunks']} x {info['chunk_cells']:,} | {agree} |",
                flush=True,
            )
            done = "converged" if ho.converged else "stopped"
            print(
                f"  streaming: {done} after {ho.n_iter} iteration(s), "
                f"{info['n_passes']} passes, work files "
                f"{info['work_file_bytes'] / 2**30:.2f} GiB, peak RSS sampled per chunk "
                f"{info['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
            del ho, mm, meta
            src.unlink()
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
