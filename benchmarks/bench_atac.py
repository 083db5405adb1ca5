"""scATAC-seq: LSI -> Harmony against uncorrected LSI (and SnapATAC2's spectral + Harmony), time and memory.

1. **Granja et al. 2019 bone marrow** (``../shared/data/atac/granja_bmmc_atac.h5ad``: 600 cells, 5000 peaks,
   two donors BMMC_D5T1 / BMMC_D6T1, six cell types). scaml's ATAC path (QC: >= 10 counts and >= 10 peaks per
   cell, peaks in >= 3 cells; Signac log-TF-IDF; LSI 30 components after the depth component is dropped),
   then Harmony on the LSI. Every embedding is scored by the same metrics (scaml.metrics, one neighbour search
   each): iLISI (batch mixing), cLISI (cell-type separation; 1 - scaled, higher = better in scIB's scaling)
   and the ARI / NMI of Leiden (resolution sweep as in scIB) against the labels.
   With ``--snap-python PYTHON`` (a separate venv with snapatac2 and harmonypy), SnapATAC2's
   ``tl.spectral`` (all QC-passed peaks; 31 components, SnapATAC2 drops its first) + harmonypy on it (what
   ``snap.pp.harmony`` runs) on the same QC-passed cells is scored too (``X_snap_spectral``). scaml's own
   spectral embedding (``integrate --atac-embedding spectral``: :func:`scaml.atac.spectral`, 30 components
   after the first) and its Harmony are always scored (``X_spectral``, ``X_spectral_harmony``).
2. **Time and memory per 10k cells**: ``scaml.pipeline.integrate`` (ATAC path, no metrics, no outputs) on
   simulated peaks (``simulate_atac``: 3 batches, 6 types) of 10,000 cells each size given, in a fresh
   subprocess per size and embedding (``--embeddings lsi spectral``): wall time and CPU time of each step
   (from the run record) and the peak RSS.

Usage::

    python benchmarks/bench_atac.py                                   # Granja + 10k / 20k cells x 5000 peaks
    python benchmarks/bench_atac.py --snap-python SNAPVENV/bin/python --sizes 10000
    python benchmarks/bench_atac.py --skip-granja --sizes 50000 --embeddings lsi spectral
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCAML_SHARED_DATA", ROOT.parent / "shared" / "data"))

SNAP_SCRIPT = r"""
import sys, time, numpy as np, anndata as ad, snapatac2 as snap
adata = ad.read_h5ad(sys.argv[1])
t = time.perf_counter()
snap.tl.spectral(adata, features=None, n_comps=31, random_state=0)
import harmonypy  # snap.pp.harmony expects the pre-2.0 harmonypy layout; call harmonypy directly, as it does
ho = harmonypy.run_harmony(adata.obsm["X_spectral"], adata.obs, "batch", max_iter_harmony=20, random_state=0)
Z = np.asarray(ho.Z_corr)
Z = Z if Z.shape[0] == adata.n_obs else Z.T
np.savez(sys.argv[2], X_spectral=adata.obsm["X_spectral"], X_spectral_harmony=Z,
         seconds=time.perf_counter() - t, version=snap.__version__)
"""

TIMING_SCRIPT = r"""
import json, resource, sys, tempfile, time
from scaml.datasets import simulate_atac
from scaml.pipeline import integrate
n_cells, n_peaks, embedding = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
adata = simulate_atac(n_cells=n_cells, n_peaks=n_peaks, n_batches=3, n_cell_types=6, mean_depth=1000, random_state=0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as tmp:
    t, c = time.perf_counter(), time.process_time()
    integrate(adata, "batch", tmp + "/out", evaluate=False, random_state=0, atac_params={"embedding": embedding})
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    timings = json.load(open(tmp + "/out/summary.json"))["timings_seconds"]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"embedding": embedding, "n_cells": n_cells, "n_peaks": n_peaks, "wall_s": wall, "cpu_s": cpu,
                  "peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024, "steps": timings}))
"""


def granja(snap_python: str | None) -> pd.DataFrame:
    import anndata as ad

    from scaml.metrics import evaluate_embeddings
    from scaml.pipeline import integrate

    path = SHARED / "atac" / "granja_bmmc_atac.h5ad"
    if not path.exists():
        print(f"skipped Granja: {path} not found")
        return pd.DataFrame()
    t = time.perf_counter()
    adata = integrate(path, "batch", None, label_key="cell_type", n_pcs=30, evaluate=False, random_state=0,
                      atac_params={"min_counts": 10, "min_peaks": 10})
    scaml_s = time.perf_counter() - t
    print(f"Granja: {adata.n_obs} cells x {adata.n_vars} peaks after QC; "
          f"LSI depth check: component {adata.uns['lsi']['depth_component_dropped']} dropped "
          f"(r = {adata.uns['lsi']['depth_correlation'][adata.uns['lsi']['depth_component_dropped'] - 1]:.2f}); "
          f"scaml ATAC path with UMAP/Leiden/markers {scaml_s:.1f} s")
    embeddings = ["X_lsi", "X_lsi_harmony"]
    t = time.perf_counter()
    spectral = integrate(path, "batch", None, label_key="cell_type", n_pcs=30, evaluate=False, random_state=0,
                         atac_params={"min_counts": 10, "min_peaks": 10, "embedding": "spectral"})
    print(f"scaml spectral path with UMAP/Leiden/markers {time.perf_counter() - t:.1f} s")
    assert list(spectral.obs_names) == list(adata.obs_names)
    for key in ("X_spectral", "X_spectral_harmony"):
        adata.obsm[key] = spectral.obsm[key]
    embeddings += ["X_spectral", "X_spectral_harmony"]
    if snap_python:
        with tempfile.TemporaryDirectory() as tmp:
            counts = ad.AnnData(X=adata.layers["counts"].copy(), obs=adata.obs[["batch", "cell_type"]].copy(),
                                var=adata.var[[]].copy())
            counts.write_h5ad(f"{tmp}/counts.h5ad")
            (Path(tmp) / "snap.py").write_text(SNAP_SCRIPT)
            done = subprocess.run([snap_python, f"{tmp}/snap.py", f"{tmp}/counts.h5ad", f"{tmp}/snap.npz"],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                print(f"SnapATAC2 failed: {done.stderr.strip().splitlines()[-1:]}")
            else:
                got = np.load(f"{tmp}/snap.npz")
                adata.obsm["X_snap_spectral"] = got["X_spectral"].astype(np.float32)
                adata.obsm["X_snap_spectral_harmony"] = got["X_spectral_harmony"].astype(np.float32)
                embeddings += ["X_snap_spectral", "X_snap_spectral_harmony"]
                print(f"SnapATAC2 {got['version']}: spectral (30 components after its first) + harmonypy "
                      f"in {float(got['seconds']):.1f} s")
    table = evaluate_embeddings(adata, batch_key="batch", label_key="cell_type", embeddings=embeddings,
                                reference="X_lsi", random_state=0)
    return table


def timing(sizes: list[int], n_peaks: int, embeddings: list[str]) -> pd.DataFrame:
    rows = []
    for n, embedding in [(n, e) for n in sizes for e in embeddings]:
        done = subprocess.run([sys.executable, "-c", TIMING_SCRIPT, str(n), str(n_peaks), embedding],
                              capture_output=True, text=True, env=dict(os.environ))
        if done.returncode != 0:
            print(f"timing at {n} cells failed: {done.stderr.strip().splitlines()[-3:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        steps = row.pop("steps")
        row.update({f"{k}_s": v for k, v in steps.items() if k in ("qc", "tfidf_lsi", "spectral", "harmony", "neighbors_umap",
                                                                     "neighbors_umap_uncorrected", "leiden",
                                                                     "markers", "figures", "write")})
        row["wall_s_per_10k"] = row["wall_s"] * 10_000 / n
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snap-python", default=None, help="python of a venv with snapatac2 + harmonypy")
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 20_000])
    parser.add_argument("--n-peaks", type=int, default=5000)
    parser.add_argument("--embeddings", nargs="+", default=["lsi"], choices=["lsi", "spectral"],
                        help="ATAC embeddings timed at each size (default lsi)")
    parser.add_argument("--skip-granja", action="store_true", help="only the timing")
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    table = pd.DataFrame() if args.skip_granja else granja(args.snap_python)
    if not table.empty:
        cols = [c for c in ("ilisi", "ilisi_median", "clisi", "clisi_median", "ari", "nmi", "pcr_comparison")
                if c in table.columns]
        print(table.set_index("embedding")[cols].round(3).to_string() if "embedding" in table.columns
              else table[cols].round(3).to_string())
    if args.sizes:
        print(f"\nATAC path time and memory (threads: {THREADS}; simulated peaks, {args.n_peaks} peaks):")
        print(timing(args.sizes, args.n_peaks, args.embeddings).round(2).to_string(index=False))


if __name__ == "__main__":
    main()
