"""Speed (and, with scib-metrics, agreement) of scaml's integration metrics on a large embedding.

Simulates an embedding of N cells x D dimensions with batches and cell-type
labels (an "integrated" embedding with a small residual batch effect and an
"unintegrated" one with a strong batch effect for the PCR comparison), then
times every metric of ``scaml.metrics.embedding_metrics`` (one shared
neighbour search), and prints the time per metric and the total.

With ``--peer-python PYTHON`` (an interpreter of a separate venv with
scib-metrics installed) the same data is handed to a worker process
(``--peer-worker``, via a temporary .npz and JSON) that runs scib-metrics'
own functions, and both sets of values and times are printed side by side.

Examples
--------
    nice python benchmarks/bench_metrics.py --n-cells 100000 --threads 2
    nice python benchmarks/bench_metrics.py --n-cells 20000 --threads 2 --peer-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _limit_threads(n: int | None) -> None:
    if n:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            os.environ[var] = str(n)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}")


def simulate(n_cells: int, n_dims: int, n_batches: int, n_labels: int, seed: int = 0):
    """Embedding with label clusters of unequal sizes, a residual and a strong batch effect."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sizes = rng.dirichlet(np.full(n_labels, 2.0))
    labels = rng.choice(n_labels, size=n_cells, p=sizes)
    batches = rng.integers(0, n_batches, size=n_cells)
    # one label only in the first batch (an isolated label)
    iso = labels == n_labels - 1
    batches[iso] = 0
    centres = rng.normal(scale=3.0, size=(n_labels, n_dims))
    batch_dir = rng.normal(size=(n_batches, n_dims))
    noise = rng.normal(size=(n_cells, n_dims))
    integrated = centres[labels] + noise + 0.3 * batch_dir[batches]
    unintegrated = centres[labels] + noise + 2.5 * batch_dir[batches]
    return (integrated.astype(np.float32), unintegrated.astype(np.float32),
            np.array([f"batch{b}" for b in batches]), np.array([f"type_{c}" for c in labels]))


# ----------------------------------------------------------------------------- peer (scib-metrics)

def peer_worker(npz_path: str, json_path: str) -> None:
    """Run scib-metrics on the arrays of ``npz_path``; write values and seconds to ``json_path``."""
    import numpy as np
    import scib_metrics
    from scib_metrics.nearest_neighbors import pynndescent

    data = np.load(npz_path, allow_pickle=False)
    X, X_pre = data["X"], data["X_pre"]
    batches, labels = data["batches"].astype(str), data["labels"].astype(str)
    values, seconds = {}, {}

    def run(name, fn):
        t = time.perf_counter()
        try:
            values[name] = fn()
        except Exception as exc:  # report, do not stop the comparison
            values[name] = f"error: {type(exc).__name__}: {exc}"
        seconds[name] = round(time.perf_counter() - t, 2)

    nb = {}
    run("neighbors", lambda: nb.setdefault("r", pynndescent(X, n_neighbors=90, random_state=0, n_jobs=-1)) and None)
    r = nb.get("r")
    run("ilisi", lambda: float(scib_metrics.ilisi_knn(r, batches)))
    run("kbet", lambda: float(scib_metrics.kbet_per_label(r.subset_neighbors(50), batches, labels)))
    run("batch_asw", lambda: float(scib_metrics.silhouette_batch(X, labels, batches)))
    run("graph_connectivity", lambda: float(scib_metrics.graph_connectivity(r.subset_neighbors(15), labels)))
    run("pcr_comparison", lambda: float(scib_metrics.pcr_comparison(X_pre, X, batches, categorical=True)))
    run("clisi", lambda: float(scib_metrics.clisi_knn(r, labels)))

    def nmi_ari():
        res = scib_metrics.nmi_ari_cluster_labels_leiden(r.subset_neighbors(15), labels)
        values["ari"] = float(res["ari"])
        return float(res["nmi"])

    run("nmi", nmi_ari)
    seconds["ari"] = 0.0
    run("label_asw", lambda: float(scib_metrics.silhouette_label(X, labels)))
    run("isolated_label", lambda: float(scib_metrics.isolated_labels(X, labels, batches)))
    import importlib.metadata as md

    Path(json_path).write_text(json.dumps({"values": values, "seconds": seconds,
                                           "version": md.version("scib-metrics")}))


def run_peer(python: str, arrays: dict, timeout: float) -> dict | None:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        npz, out = os.path.join(tmp, "data.npz"), os.path.join(tmp, "peer.json")
        np.savez(npz, **arrays)
        cmd = [python, os.path.abspath(__file__), "--peer-worker", npz, out]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            print(f"scib-metrics worker did not finish within {timeout:.0f} s; no peer values.")
            return None
        wall = time.perf_counter() - t
        if proc.returncode != 0 or not os.path.exists(out):
            print("scib-metrics worker failed:\n" + proc.stderr[-3000:])
            return None
        result = json.loads(Path(out).read_text())
        result["wall"] = wall
        return result


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--n-dims", type=int, default=30)
    parser.add_argument("--n-batches", type=int, default=4)
    parser.add_argument("--n-labels", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="thread limit (BLAS, OpenMP, torch); 0 = no limit")
    parser.add_argument("--neighbor-method", default="exact", choices=["auto", "exact", "pynndescent"])
    parser.add_argument("--asw-max-cells", type=int, default=None,
                        help="silhouettes from a stratified sample of about this many cells (default: exact)")
    parser.add_argument("--peer-python", help="python of a venv with scib-metrics, to compare with")
    parser.add_argument("--peer-timeout", type=float, default=1200)
    parser.add_argument("--peer-worker", nargs=2, metavar=("NPZ", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _limit_threads(args.threads)
    if args.peer_worker:
        peer_worker(*args.peer_worker)
        return 0

    import resource


    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from scaml.metrics import embedding_metrics
    from scaml.metrics.summary import BATCH_METRICS, BIO_METRICS, SCORES

    X, X_pre, batches, labels = simulate(args.n_cells, args.n_dims, args.n_batches, args.n_labels)
    print(f"data: {args.n_cells} cells x {args.n_dims} dims, {args.n_batches} batches, {args.n_labels} labels; "
          f"threads {args.threads or 'all'}; load average before: {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    ours, details = embedding_metrics(X, batches, labels, X_reference=X_pre, neighbor_method=args.neighbor_method,
                                      asw_max_cells=args.asw_max_cells)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    timings = details["timings"]

    peer = None
    if args.peer_python:
        print(f"running scib-metrics with {args.peer_python} ...", flush=True)
        peer = run_peer(args.peer_python, {"X": X, "X_pre": X_pre, "batches": batches.astype("U"),
                                           "labels": labels.astype("U")}, args.peer_timeout)

    step_of = {"nmi": "nmi_ari", "ari": None, "clisi": "clisi"}
    cpu_timings = details["cpu_timings"]
    header = f"{'metric':<20}{'scaml':>10}{'seconds':>10}{'CPU s':>8}"
    if peer:
        header += f"{'scib-metrics ' + peer['version']:>22}{'seconds':>10}{'|diff|':>9}"
    print(header)
    print("-" * len(header))
    rows = [("neighbors", None), ("lisi_kernel", None)] + [(m, m) for m in (*BATCH_METRICS, *BIO_METRICS)]
    for name, key in rows:
        value = "" if key is None else f"{ours[key]:.4f}"
        step = step_of.get(name, name)
        sec = f"{timings.get(step, 0.0):.1f}" if step else "(with nmi)"
        cpu_s = f"{cpu_timings.get(step, 0.0):.1f}" if step else ""
        line = f"{name:<20}{value:>10}{sec:>10}{cpu_s:>8}"
        if peer:
            pv = peer["values"].get(name)
            ps = peer["seconds"].get(name)
            if isinstance(pv, float):
                diff = f"{abs(pv - ours[key]):.3f}" if key else ""
                line += f"{pv:>22.4f}{ps:>10.1f}{diff:>9}"
            else:
                line += f"{'' if pv is None else str(pv)[:40]:>22}{'' if ps is None else ps:>10}"
        print(line)
    for s in SCORES:
        print(f"{s:<20}{ours[s]:>10.4f}")
    print("-" * len(header))
    print(f"scaml total: {wall:.1f} s wall, {cpu:.1f} s CPU (all metrics, one embedding); "
          f"load average after: {os.getloadavg()[0]:.1f}")
    if peer:
        print(f"scib-metrics total: {sum(peer['seconds'].values()):.1f} s in metrics "
              f"({peer['wall']:.1f} s wall including imports and JIT compilation)")
    print("notes:", "; ".join(ours["notes"]) or "-")
    return 0


if __name__ == "__main__":
    sys.exit(main())
