"""Side-by-side speed, peak memory and agreement: scaml's Harmony vs harmonypy 2.x, in one process.

Simulated data: clustered cells (20 types) x PCs with an additive shift per batch (4 batches). Both
methods get the same parameters, defaults otherwise (R harmony 2.x defaults: theta 2, sigma 0.1,
lamb estimated with alpha 0.2, 4 clustering rounds per iteration, nclust min(N/30, 100)) and the same
number of iterations: ``epsilon_harmony`` and ``epsilon_cluster`` are set to -inf so neither stops early.

Threads: 2 (OMP/MKL/OPENBLAS/torch and harmonypy's ``ncores``), set before numpy is imported.
Both methods are warmed up on 2,000 cells first (imports, thread pools, BLAS buffers).
Peak memory: peak RSS increase over the RSS before the call (VmHWM reset through
/proc/self/clear_refs on Linux; a sampling thread elsewhere).

Usage::

    python benchmarks/bench_harmony.py                       # 100000 and 500000 cells x 50 PCs
    python benchmarks/bench_harmony.py --sizes 100000 --iters 10 --backends numpy torch
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
import gc  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak RSS increase (MiB) while the block runs."""

    def __enter__(self):
        gc.collect()
        self.clear_refs = Path("/proc/self/clear_refs")
        self.use_hwm = False
        try:
            self.clear_refs.write_text("5")
            self.use_hwm = True
        except OSError:
            pass
        self.base = _rss_kb("VmRSS")
        self.peak = self.base
        self._stop = threading.Event()
        if not self.use_hwm:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_kb("VmRSS"))
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.use_hwm:
            self.peak = _rss_kb("VmHWM")
        else:
            self._thread.join()
        self.mib = (self.peak - self.base) / 1024


def simulate(n_cells: int, n_pcs: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(20, n_pcs))
    cell_type = rng.integers(0, 20, n_cells)
    batch = rng.integers(0, 4, n_cells)
    shift = rng.normal(scale=1.5, size=(4, n_pcs))
    X = centers[cell_type] + shift[batch] + rng.normal(size=(n_cells, n_pcs))
    meta = pd.DataFrame({"batch": [f"b{b}" for b in batch], "cell_type": cell_type})
    return X.astype(np.float32), meta


def per_pc_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--pcs", type=int, default=50)
    parser.add_argument("--iters", type=int, default=10, help="Harmony iterations (no early stop)")
    parser.add_argument(
        "--backends", nargs="+", default=["numpy"], help="scaml backends: numpy torch"
    )
    parser.add_argument("--no-harmonypy", action="store_true", help="skip harmonypy")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(int(THREADS))
    from scaml.harmony import run_harmony

    harmonypy = None
    if not args.no_harmonypy:
        try:
            import harmonypy
        except ImportError:
            print("harmonypy is not installed; running scaml only")
    versions = f"harmonypy {getattr(harmonypy, '__version__', '-')}, torch {torch.__version__}, numpy {np.__version__}"
    print(f"threads={THREADS}; {versions}")
    print(
        f"parameters: defaults (theta=2, sigma=0.1, lamb=None/alpha=0.2, max_iter_kmeans=4), "
        f"max_iter_harmony={args.iters}, epsilon_harmony=epsilon_cluster=-inf (fixed iteration count)"
    )
    common = dict(
        max_iter_harmony=args.iters, epsilon_harmony=-np.inf, epsilon_cluster=-np.inf, verbose=False
    )
    # warm-up on 2,000 cells: imports, thread pools and BLAS buffers are not timed
    Xw, metaw = simulate(2000, args.pcs, seed=1)
    for backend in args.backends:
        run_harmony(
            Xw, metaw, "batch", backend=backend, device="cpu", max_iter_harmony=1, verbose=False
        )
    if harmonypy:
        harmonypy.run_harmony(
            Xw, metaw, ["batch"], ncores=int(THREADS), max_iter_harmony=1, verbose=False
        )
    rows = []
    for n in args.sizes:
        X, meta = simulate(n, args.pcs)
        results = {}
        runs = [(f"scaml[{b}]", b) for b in args.backends] + (
            [("harmonypy", None)] if harmonypy else []
        )
        for name, backend in runs:
            with PeakMemory() as mem:
                start = time.perf_counter()
                if backend is None:
                    ho = harmonypy.run_harmony(
                        X, meta, ["batch"], ncores=int(THREADS), random_state=0, **common
                    )
                    Z = np.asarray(ho.Z_corr)
                    if Z.shape != X.shape:
                        Z = Z.T
                    iters = len(ho.objective_harmony) - 1
                else:
                    ho = run_harmony(
                        X, meta, "batch", backend=backend, device="cpu", random_state=0, **common
                    )
                    Z = ho.Z_corr
                    iters = ho.n_iter
                seconds = time.perf_counter() - start
            results[name] = Z
            del ho
            gc.collect()
            rows.append(
                {
                    "cells": n,
                    "method": name,
                    "seconds": seconds,
                    "peak_mib": mem.mib,
                    "iters": iters,
                }
            )
            print(
                f"{n:>8} cells  {name:<14} {seconds:8.2f} s  peak +{mem.mib:8.1f} MiB  ({iters} iterations)",
                flush=True,
            )
        if harmonypy:
            ref = results["harmonypy"]
            for name, Z in results.items():
                if name == "harmonypy":
                    continue
                r = per_pc_correlation(Z.astype(np.float64), ref.astype(np.float64))
                # the corrections themselves (output - input), a stricter comparison
                rc = per_pc_correlation(Z.astype(np.float64) - X, ref.astype(np.float64) - X)
                t_s = next(
                    r_["seconds"] for r_ in rows if r_["cells"] == n and r_["method"] == name
                )
                t_h = next(
                    r_["seconds"] for r_ in rows if r_["cells"] == n and r_["method"] == "harmonypy"
                )
                m_s = next(
                    r_["peak_mib"] for r_ in rows if r_["cells"] == n and r_["method"] == name
                )
                m_h = next(
                    r_["peak_mib"]
                    for r_ in rows
                    if r_["cells"] == n and r_["method"] == "harmonypy"
                )
                print(
                    f"{n:>8} cells  {name} / harmonypy: time x{t_s / t_h:.2f}, peak memory x{m_s / max(m_h, 1e-9):.2f}; "
                    f"per-PC correlation of the outputs median {np.median(r):.4f} (min {r.min():.4f}), "
                    f"of the corrections (output - input) median {np.median(rc):.4f} (min {rc.min():.4f})",
                    flush=True,
                )
        del X, meta, results
        gc.collect()
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
