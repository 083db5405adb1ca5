"""The whole integration pipeline: ``scaml integrate`` against the scanpy + harmonypy pipeline it replaces.

Threads: 2 (``BENCH_THREADS``), set before numpy is imported. The simulated h5ad of
``bench_chunked.py`` (scaml's ``simulate``: 4 batches, 8 types, NB counts, written 50,000 cells at a
time) is integrated three ways, each in its own child process (peak RSS: the child's VmHWM):

* ``scanpy + harmonypy``: the pipeline analysts run today, with the same settings as ``scaml
  integrate``: ``read_h5ad``; QC (>= 200 genes, <= 20 % mitochondrial counts per cell, genes in >= 3
  cells); ``layers["counts"]`` kept; ``normalize_total`` (1e4) + ``log1p``; ``.raw`` frozen for the
  markers; 2,000 seurat HVGs per batch; ``scale`` (max 10); 30 PCs; neighbours (15) + UMAP of the
  uncorrected PCs (the before figure); harmonypy's ``run_harmony`` (what ``sc.external.pp.harmony_integrate``
  calls; that wrapper transposes harmonypy 2.x's output); neighbours +
  UMAP of the corrected PCs; Leiden (resolution 0.5, igraph); Wilcoxon markers of every cluster on
  ``.raw``; ``write_h5ad``;
* ``scaml integrate``: the in-memory path (``resolutions=[0.5]``, no metrics);
* ``scaml integrate --chunked``: the chunked path with ``--max-memory`` (default 2GB).

The scanpy pipeline runs in its own venv (``--peer-python``): pynndescent 0.7 returns its kNN graph as
a ``csr_array``, on which scanpy 1.11.5's neighbours call ``getnnz`` (which scipy's sparse arrays do not
have), so it needs pynndescent < 0.7 (``python3 -m venv PP && PP/bin/pip install scanpy==1.11.5
harmonypy==2.1.0 igraph leidenalg 'pynndescent<0.7'``). The script prints seconds, peak RSS and the ratios against the scanpy pipeline. The outputs differ in
what they hold (scaml also writes figures, a report and a run record); the clusters' ARI against the
simulated labels is printed for each, as a check that all three did the job.

Usage::

    python benchmarks/bench_pipeline.py --cells 200000 --genes 5000 --peer-python PP/bin/python
    python benchmarks/bench_pipeline.py --cells 50000 --genes 2000 --skip-memory
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "2")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMBA_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chunked import add_child_options, write_simulation  # noqa: E402

MODES = {"scanpy": "scanpy + harmonypy", "memory": "scaml integrate", "chunked": "scaml integrate --chunked"}


def run_scanpy(path: str, out: str) -> dict:
    """The scanpy + harmonypy pipeline with scaml integrate's settings; step seconds and the clusters."""
    import anndata as ad
    import numpy as np
    import scanpy as sc

    steps: dict[str, float] = {}
    clock = [time.perf_counter()]

    def step(name: str) -> None:
        now = time.perf_counter()
        steps[name] = round(now - clock[0], 1)
        clock[0] = now

    adata = ad.read_h5ad(path)
    step("read")
    adata.var["mt"] = adata.var_names.str.upper().str.startswith("MT-")
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, inplace=True)
    adata = adata[(adata.obs["n_genes_by_counts"] >= 200) & (adata.obs["pct_counts_mt"] <= 20)].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    step("qc")
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.raw = adata
    step("normalise")
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, flavor="seurat", batch_key="batch")
    adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    step("hvg")
    sc.pp.scale(adata, max_value=10)
    sc.pp.pca(adata, n_comps=30, random_state=0)
    step("pca")
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca", random_state=0)
    sc.tl.umap(adata, random_state=0)
    adata.obsm["X_umap_uncorrected"] = adata.obsm["X_umap"].copy()
    step("neighbors_umap_uncorrected")
    # harmonypy directly: scanpy's harmony_integrate transposes harmonypy 2.x's cells x PCs output
    import harmonypy

    corrected = np.asarray(harmonypy.run_harmony(adata.obsm["X_pca"], adata.obs, "batch", random_state=0).Z_corr)
    adata.obsm["X_pca_harmony"] = corrected if corrected.shape[0] == adata.n_obs else corrected.T
    step("harmony")
    sc.pp.neighbors(adata, n_neighbors=15, use_rep="X_pca_harmony", random_state=0)
    sc.tl.umap(adata, random_state=0)
    step("neighbors_umap")
    sc.tl.leiden(adata, resolution=0.5, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    step("leiden")
    sc.tl.rank_genes_groups(adata, groupby="leiden", method="wilcoxon", use_raw=True)
    step("markers")
    adata.write_h5ad(Path(out) / "integrated.h5ad")
    step("write")
    labels = adata.obs["leiden"].astype(str).to_numpy()
    return {"n_cells": int(adata.n_obs), "steps": steps, "clusters": int(np.unique(labels).size),
            "ari": _ari(adata.obs["cell_type"], labels)}


def run_scaml(path: str, out: str, chunked: bool, max_memory: str | None) -> dict:
    """``scaml integrate`` (in memory, or ``--chunked``) without metrics; step seconds and the clusters."""
    import pandas as pd

    from scaml.pipeline import integrate

    adata = integrate(path, "batch", out, chunked=chunked, max_memory=max_memory if chunked else None,
                      evaluate=False, resolutions=[0.5], overwrite=True)
    run = json.loads((Path(out) / "run.json").read_text())
    steps = {k: round(float(v), 1) for k, v in (run.get("timings_seconds") or {}).items()}
    cell_type = pd.Series(adata.obs["cell_type"]) if "cell_type" in adata.obs else None
    labels = adata.obs["leiden"].astype(str).to_numpy()
    return {"n_cells": int(adata.n_obs), "steps": steps, "clusters": int(pd.unique(labels).size),
            "ari": None if cell_type is None else _ari(cell_type, labels)}


def _ari(truth, labels) -> float:
    from sklearn.metrics import adjusted_rand_score

    return round(float(adjusted_rand_score(truth.astype(str).to_numpy(), labels)), 3)


def _peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM), in MiB (the scanpy child may run in another venv, without scaml)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args: argparse.Namespace) -> None:
    out = Path(args.result)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.child == "scanpy":
        result = run_scanpy(args.path, str(out))
    else:
        result = run_scaml(args.path, str(out), args.child == "chunked", args.max_memory)
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = _peak_rss_mib()
    print("RESULT " + json.dumps(result, default=float), flush=True)


def launch(mode: str, path: Path, result: Path, args: argparse.Namespace) -> dict:
    python = args.peer_python if mode == "scanpy" and args.peer_python else sys.executable
    cmd = [python, __file__, "--child", mode, "--path", str(path), "--result", str(result),
           "--max-memory", args.max_memory]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"failed": f"exit {proc.returncode}: {tail[-1] if tail else ''}"}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--genes", type=int, default=5000)
    p.add_argument("--library", type=float, default=4000.0, help="mean counts per cell of the simulation")
    p.add_argument("--max-memory", default="2GB", help="budget of scaml integrate --chunked (default 2GB)")
    p.add_argument("--skip-memory", action="store_true", help="leave out the in-memory scaml integrate")
    p.add_argument("--peer-python", default=None,
                   help="python of a venv with scanpy, harmonypy, igraph and leidenalg for the scanpy pipeline "
                        "(default: this one)")
    add_child_options(p)
    args = p.parse_args()
    if args.child:
        child(args)
        return

    folder = Path(tempfile.mkdtemp(prefix="bench_pipeline_", dir=args.tmp))
    try:
        path = folder / "cells.h5ad"
        start = time.perf_counter()
        nnz = write_simulation(path, args.cells, args.genes, args.library)
        print(f"{args.cells:,} cells x {args.genes:,} genes, {nnz:,} stored counts "
              f"({path.stat().st_size / 2**30:.2f} GiB on disk), written in {time.perf_counter() - start:.0f} s, "
              f"{THREADS} threads", flush=True)
        modes = [m for m in MODES if not (m == "memory" and args.skip_memory)]
        runs = {}
        for mode in modes:
            runs[mode] = launch(mode, path, folder / f"out_{mode}", args)
            print(f"  {MODES[mode]}: {runs[mode]}", flush=True)
        base = runs.get("scanpy", {})
        print("\n| pipeline | seconds | peak RSS (MiB) | time / scanpy | peak RSS / scanpy | cells after QC | "
              "clusters | ARI vs simulated types |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        for mode, r in runs.items():
            name = MODES[mode] + (f" (--max-memory {args.max_memory})" if mode == "chunked" else "")
            if "failed" in r:
                print(f"| {name} | failed: {r['failed']} | | | | | | |")
                continue
            ratios = ("", "")
            if "seconds" in base and mode != "scanpy":
                ratios = (f"{r['seconds'] / base['seconds']:.2f}x", f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x")
            print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {ratios[0]} | {ratios[1]} | "
                  f"{r['n_cells']:,} | {r['clusters']} | {r['ari']} |")
        for mode, r in runs.items():
            if "steps" in r:
                print(f"{MODES[mode]} steps (s): " + "; ".join(f"{k} {v}" for k, v in r["steps"].items()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
