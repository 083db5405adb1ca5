"""Chunked preprocessing (scaml.chunked) vs the in-memory path: time, peak memory and agreement.

Threads: 2 (``BENCH_THREADS``), set before numpy is imported. A simulated count matrix (scaml's
``simulate``: cell types, batches, NB counts) is written to an h5ad chunk by chunk (each chunk of
50,000 cells is its own simulation with its own seed, so no step holds the whole matrix), then
both paths preprocess it with the pipeline's rules (QC min 200 genes / max 20 % mito / min 3 cells,
normalise to 1e4 + log1p, 2,000 seurat HVGs per batch, scale clipped at 10, 30 PCs):

* ``memory``: ``anndata.read_h5ad`` + :func:`scaml.preprocess.qc_filter`, ``normalize_log1p``,
  ``select_hvg``, ``run_pca`` (what ``scaml integrate`` does in memory);
* ``chunked``: :func:`scaml.chunked.preprocess_chunked` with ``--max-memory`` (in-process, or on a
  ``LocalCluster`` with ``--dask local``).

Each path runs in its own child process (so that each peak RSS is its own); the script prints
seconds, peak RSS, and the agreement of the two results (same cells and HVGs; per-PC Pearson r).
``--skip-memory`` runs the chunked path only (sizes the in-memory path cannot hold). ``--integrate``
adds the whole ``scaml integrate --chunked --no-metrics`` run (Harmony, neighbours, UMAPs, Leiden at one
resolution, markers on the per-cluster sample, the chunk-wise integrated.h5ad) with its step timings;
``--integrate-only`` runs that alone, and ``--metrics`` keeps the metrics (computed on the UMAP sample
above 200,000 cells).

``--modality atac`` does the same for scATAC-seq peaks: ``--genes`` is then the number of peaks and
``--library`` the mean fragments in peaks per cell of scaml's ``simulate_atac`` (4 batches, 8 types;
every 50,000-cell chunk takes the first chunk's peak names). The in-memory path is
:func:`scaml.atac.qc_filter_peaks` (min 50 counts / 20 peaks per cell, peaks in >= 3 cells) +
:func:`scaml.atac.run_lsi` (log-TF-IDF, 30 LSI components after the depth check); the chunked path
is :func:`scaml.chunked.preprocess_peaks_chunked` with the same rules. Agreement: per-component r
of the two LSI embeddings (``HVG flags`` then count the kept peaks). ``--fragments`` also writes a
fragments file that agrees with the peak counts (:func:`scaml.datasets.write_fragments`: one fragment per
count, a quarter more between peaks) and genes at every 5th peak, and both paths run the fragments QC
(``n_fragments``, FRiP, TSS enrichment; the in-memory path with :func:`scaml.atac.fragment_qc`, as
``scaml integrate`` does); the agreement then includes FRiP and TSS enrichment.

Usage::

    python benchmarks/bench_chunked.py --cells 200000 --genes 5000
    python benchmarks/bench_chunked.py --cells 1000000 --genes 2000 --skip-memory --max-memory 4GB --integrate
    python benchmarks/bench_chunked.py --modality atac --cells 200000 --genes 50000 --library 3000
    python benchmarks/bench_chunked.py --modality atac --cells 100000 --genes 20000 --library 600 --fragments
    python benchmarks/bench_chunked.py --modality atac --cells 200000 --genes 20000 --library 1000 --atac-embedding spectral
    python benchmarks/bench_chunked.py --cells 200000 --skip-memory --max-memory 2GB --dask local --workers 1 2
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

import numpy as np  # noqa: E402

SIM_CHUNK = 50_000


def write_simulation(path: Path, n_cells: int, n_genes: int, library: float, modality: str = "rna",
                     fragments: Path | None = None) -> int:
    """Write the simulated counts (genes, or peaks with ``modality="atac"``) to ``path`` chunk by chunk
    (and, with ``fragments``, the peaks' fragments file and gene BED beside it); return the number of
    stored values."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    from scaml.datasets import simulate, simulate_atac, write_fragments, write_peak_genes_bed

    obs = []
    first = None
    tmp = path.with_suffix(".part")
    nnz = 0
    for i, a in enumerate(range(0, n_cells, SIM_CHUNK)):
        m = min(SIM_CHUNK, n_cells - a)
        if modality == "atac":
            part = simulate_atac(n_cells=m, n_peaks=n_genes, n_batches=4, n_cell_types=8, mean_depth=library,
                                 random_state=100 + i)
        else:
            part = simulate(n_cells=m, n_genes=n_genes, n_batches=4, n_cell_types=8, mean_library_size=library,
                            random_state=100 + i)
        X = sp.csr_matrix(part.X, dtype=np.float32)
        nnz += X.nnz
        names = part.obs_names.astype(str)
        obs.append(pd.DataFrame({"batch": part.obs["batch"].astype(str).to_numpy(),
                                 "cell_type": part.obs["cell_type"].astype(str).to_numpy()},
                                index=[f"c{i}_{n}" for n in names]))
        if fragments is not None:
            part.obs_names = obs[-1].index
            write_fragments(part, fragments, random_state=100 + i, append=i > 0)
        if first is None:
            first = part
            with h5py.File(tmp, "w") as f:
                write_elem(f, "X", X, dataset_kwargs={"chunks": (1 << 18,)})
        else:
            with h5py.File(tmp, "a") as f:
                sparse_dataset(f["X"]).append(X)
        print(f"  simulated {a + m:,} / {n_cells:,} cells", flush=True)
    if fragments is not None:
        write_peak_genes_bed(first.var, fragments.with_name("genes.bed"))
    frame = pd.concat(obs)
    frame["batch"] = frame["batch"].astype("category")
    frame["cell_type"] = frame["cell_type"].astype("category")
    shell = ad.AnnData(obs=frame, var=first.var[[]].copy())
    shell.write_h5ad(path)
    with h5py.File(path, "a") as f, h5py.File(tmp, "r") as src:
        if "X" in f:
            del f["X"]
        src.copy(src["X"], f, "X")
    tmp.unlink()
    return nnz


def fragment_inputs(path: str) -> tuple[Path | None, object]:
    """The fragments file and the gene table beside ``path``, when the run was asked for them."""
    frag = Path(path).with_name("fragments.tsv.gz")
    if not frag.exists():
        return None, None
    from scaml.atac import read_gene_annotation

    return frag, read_gene_annotation(frag.with_name("genes.bed"))


ATAC_QC = {"min_counts": 50, "min_peaks": 20, "min_cells": 3}


def save_result(out: str, adata, modality: str) -> None:
    """The embedding, the feature flags (HVGs; for peaks every kept peak) and the cells, for the agreement."""
    atac = modality == "atac"
    flags = np.ones(adata.n_vars, dtype=bool) if atac else adata.var["highly_variable"].to_numpy()
    extra = {c: adata.obs[c].to_numpy(np.float64) for c in ("frip", "tss_enrichment") if c in adata.obs}
    key = "X_pca" if not atac else "X_spectral" if "X_spectral" in adata.obsm else "X_lsi"
    np.savez(out, pca=adata.obsm[key], hvg=flags,
             cells=adata.obs_names.to_numpy().astype(str), **extra)


def run_memory(path: str, out: str, modality: str = "rna", embedding: str = "lsi") -> dict:
    import anndata as ad

    from scaml import preprocess as pp

    start = time.perf_counter()
    adata = ad.read_h5ad(path)
    if modality == "atac":
        from scaml.atac import add_peak_coordinates, fragment_qc, qc_filter_peaks, run_lsi

        frag, genes = fragment_inputs(path)
        if frag is not None:
            add_peak_coordinates(adata)
            fragment_qc(adata, frag, tss=genes)
        qc_filter_peaks(adata, **ATAC_QC)
        if embedding == "spectral":
            from scaml.atac import run_spectral

            run_spectral(adata, 30)
        else:
            run_lsi(adata, 30)
    else:
        pp.qc_filter(adata)
        pp.normalize_log1p(adata)
        pp.select_hvg(adata, 2000, batch_key="batch")
        pp.run_pca(adata, 30)
    seconds = time.perf_counter() - start
    save_result(out, adata, modality)
    return {"seconds": seconds}


def run_chunked(path: str, out: str, max_memory: str | None, dask: str | None, modality: str = "rna",
                workers: int | None = None, embedding: str = "lsi") -> dict:
    from scaml.chunked import connect, preprocess_chunked, preprocess_peaks_chunked

    client = (connect(dask, n_workers=workers) if str(dask).lower() == "local" else connect(dask)) if dask else None
    start = time.perf_counter()
    if modality == "atac":
        frag, genes = fragment_inputs(path)
        cells = preprocess_peaks_chunked(path, **ATAC_QC, n_components=30, max_memory=max_memory, client=client,
                                         fragments=frag, tss=genes, embedding=embedding, show_progress=False)
    else:
        cells = preprocess_chunked(path, batch_key="batch", n_top_genes=2000, n_pcs=30, max_memory=max_memory,
                                   client=client, show_progress=False)
    seconds = time.perf_counter() - start
    a = cells.adata
    save_result(out, a, modality)
    result = {"seconds": seconds, "plan": cells.plan.to_dict(), "passes": cells.engine.records}
    if client is not None:
        from scaml.chunked.engine import peak_rss_mib

        result["worker_peak_rss_mib"] = client.run(peak_rss_mib)
        client.close()
    return result


def run_integrate(path: str, out: str, max_memory: str | None, dask: str | None, metrics: bool,
                  modality: str = "rna") -> dict:
    from scaml.pipeline import integrate

    start = time.perf_counter()
    extra = {"modality": "atac", "min_cells": ATAC_QC["min_cells"], "n_pcs": 30,
             "atac_params": {"min_counts": ATAC_QC["min_counts"], "min_peaks": ATAC_QC["min_peaks"]}} \
        if modality == "atac" else {}
    adata = integrate(path, "batch", out, chunked=True, max_memory=max_memory, dask=dask, evaluate=metrics,
                      label_key="cell_type" if metrics else None, resolutions=[0.5], overwrite=True, **extra)
    seconds = time.perf_counter() - start
    run = json.loads((Path(out) / "run.json").read_text())
    steps = run.get("timings_seconds") or run.get("timings") or {}
    result = {"seconds": seconds, "n_cells": int(adata.n_obs), "steps": steps,
              "clusters": int(adata.obs["leiden"].nunique()), "umap_sample": run["data"].get("umap_sample")}
    if metrics:
        import pandas as pd

        table = pd.read_csv(Path(out) / "metrics.csv")
        result["metrics"] = table[[c for c in ("embedding", "ilisi", "clisi", "ari", "kbet_acceptance")
                                   if c in table.columns]].to_dict(orient="records")
    return result


def child(args: argparse.Namespace) -> None:
    if args.child == "memory":
        result = run_memory(args.path, args.result, args.modality, args.atac_embedding)
    elif args.child == "integrate":
        result = run_integrate(args.path, args.result, args.max_memory, args.dask, args.metrics, args.modality)
    else:
        result = run_chunked(args.path, args.result, args.max_memory, args.dask, args.modality,
                             args.workers[0] if args.workers else None, args.atac_embedding)
    from scaml.chunked.engine import peak_rss_mib

    result["peak_rss_mib"] = peak_rss_mib()  # VmHWM: this child's own peak, not the parent's at the fork
    print("RESULT " + json.dumps(result, default=float), flush=True)


def launch(mode: str, path: Path, result: Path, args: argparse.Namespace, workers: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--path", str(path), "--result", str(result),
           "--modality", args.modality, "--atac-embedding", args.atac_embedding]
    if workers:
        cmd += ["--workers", str(workers)]
    if args.max_memory:
        cmd += ["--max-memory", args.max_memory]
    if args.dask:
        cmd += ["--dask", args.dask]
    if args.metrics:
        cmd += ["--metrics"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"failed": f"exit {proc.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}"}
    return json.loads(lines[-1][len("RESULT "):])


def add_child_options(parser: argparse.ArgumentParser) -> None:
    """``--tmp`` and the hidden options a child process of the script gets (also used by bench_pipeline.py)."""
    parser.add_argument("--tmp", default=None, help="folder for the simulated file (default: the system's temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=200_000)
    p.add_argument("--modality", choices=["rna", "atac"], default="rna",
                   help="rna: gene counts (scaml.datasets.simulate); atac: peak counts (simulate_atac)")
    p.add_argument("--genes", type=int, default=5000, help="genes (rna) or peaks (atac)")
    p.add_argument("--library", type=float, default=4000.0, help="mean counts per cell of the simulation")
    p.add_argument("--max-memory", default=None, help="budget of the chunked path (default: a quarter of RAM)")
    p.add_argument("--dask", default=None, help="run the chunked passes on a Dask scheduler, or 'local'")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="with --dask local: run the chunked path once per worker count (e.g. 1 2)")
    p.add_argument("--skip-memory", action="store_true", help="chunked path only")
    p.add_argument("--integrate", action="store_true", help="also the whole scaml integrate --chunked run")
    p.add_argument("--integrate-only", action="store_true", help="only the whole integrate --chunked run")
    p.add_argument("--metrics", action="store_true",
                   help="integrate with the metrics (on the UMAP sample above 200,000 cells) instead of --no-metrics")
    p.add_argument("--fragments", action="store_true",
                   help="atac: also a fragments file and genes; both paths run the fragments QC")
    p.add_argument("--atac-embedding", choices=["lsi", "spectral"], default="lsi",
                   help="atac: LSI (default) or the spectral embedding (chunked: 50,000 landmarks + Nystrom)")
    add_child_options(p)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench_chunked_", dir=args.tmp))
    try:
        path = folder / "cells.h5ad"
        start = time.perf_counter()
        frag = folder / "fragments.tsv.gz" if args.fragments and args.modality == "atac" else None
        nnz = write_simulation(path, args.cells, args.genes, args.library, args.modality, frag)
        print(f"{args.cells:,} cells x {args.genes:,} {'peaks' if args.modality == 'atac' else 'genes'}, "
              f"{nnz:,} stored counts "
              f"({path.stat().st_size / 2**30:.2f} GiB on disk), written in {time.perf_counter() - start:.0f} s")
        if frag is not None:
            print(f"fragments file: {frag.stat().st_size / 2**30:.2f} GiB (gzip)")
        runs = {}
        if not args.skip_memory:
            runs["memory"] = launch("memory", path, folder / "memory.npz", args)
        if not args.integrate_only:
            runs["chunked"] = launch("chunked", path, folder / "chunked.npz", args,
                                     args.workers[0] if args.workers else None)
            for n in (args.workers or [])[1:]:
                runs[f"chunked, {n} workers"] = launch("chunked", path, folder / f"chunked_{n}.npz", args, n)
        if args.integrate or args.integrate_only:
            runs["integrate --chunked"] = launch("integrate", path, folder / "integrate_out", args)
        print("\n| path | seconds | peak RSS (MiB) | notes |\n|---|---|---|---|")
        for name, r in runs.items():
            if "failed" in r:
                print(f"| {name} | failed | | {r['failed']} |")
                continue
            note = ""
            if name.startswith("chunked"):
                note = (f"{r['plan']['n_chunks']} chunks of {r['plan']['chunk_cells']:,} cells, budget "
                        f"{r['plan']['budget_mib']:.0f} MiB")
                if "worker_peak_rss_mib" in r:
                    note += f"; worker peaks {sorted(round(v) for v in r['worker_peak_rss_mib'].values())} MiB"
            if name == "integrate --chunked":
                note = f"{r['n_cells']:,} cells after QC, {r['clusters']} clusters"
            print(f"| {name} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {note} |")
        if "chunked" in runs and "passes" in runs["chunked"]:
            print("\nchunked passes: " + "; ".join(f"{q['pass']} {q['seconds']:.1f} s (peak {q['peak_rss_mib']:.0f} MiB)"
                                                  for q in runs["chunked"]["passes"]))
        steps = runs.get("integrate --chunked", {}).get("steps")
        if steps:
            print("integrate steps (s): " + "; ".join(f"{k} {v:.1f}" for k, v in steps.items()))
            done = runs["integrate --chunked"]
            if done.get("umap_sample"):
                print(f"UMAPs and metrics on a sample of {done['umap_sample']['cells']:,} of "
                      f"{done['umap_sample']['of']:,} cells")
            for row in done.get("metrics") or []:
                print("metrics (sample): " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in row.items()))
        ok = all("failed" not in r for r in runs.values())
        if "memory" in runs and ok:
            m, c = np.load(folder / "memory.npz"), np.load(folder / "chunked.npz")
            same_cells = np.array_equal(m["cells"], c["cells"])
            hvg_same = int((m["hvg"] == c["hvg"]).sum())
            r = [np.corrcoef(m["pca"][:, i], c["pca"][:, i])[0, 1] for i in range(m["pca"].shape[1])]
            print(f"\nagreement: same cells {same_cells}; HVG flags equal for {hvg_same} / {m['hvg'].size} genes; "
                  f"per-PC r median {np.median(r):.6f}, min {np.min(r):.6f}")
            if args.atac_embedding == "spectral":  # Nystrom may rotate near-equal eigenvectors: the subspace
                E = np.c_[c["pca"].astype(np.float64), np.ones(len(c["pca"]))]
                fit = E @ np.linalg.lstsq(E, m["pca"], rcond=None)[0]
                r2 = 1 - ((m["pca"] - fit) ** 2).sum(0) / ((m["pca"] - m["pca"].mean(0)) ** 2).sum(0)
                print("R^2 of each in-memory component on the chunked ones: "
                      + " ".join(f"{v:.4f}" for v in r2))
            for column in ("frip", "tss_enrichment"):
                if column in m.files and column in c.files:
                    print(f"{column}: max |memory - chunked| {np.nanmax(np.abs(m[column] - c[column])):.2e}, "
                          f"median {np.nanmedian(c[column]):.3f}")
            mem, chk = runs["memory"], runs["chunked"]
            print(f"ratios (memory / chunked): time {mem['seconds'] / chk['seconds']:.2f}x, "
                  f"peak RSS {mem['peak_rss_mib'] / chk['peak_rss_mib']:.2f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
