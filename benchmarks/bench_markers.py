"""Wilcoxon markers per cluster: scaml's ``rank_markers`` against scanpy's ``rank_genes_groups``, in one process.

Both sides get the same cells x features matrix and clusters (the cell types of the simulation, as
Leiden clusters would be): RNA, log-normalised counts of every gene (``scaml.datasets.simulate``); ATAC,
Signac's TF-IDF of peak counts (``scaml.datasets.simulate_atac``, ``scaml.atac.tfidf``). Printed per
setting: seconds of each side (scaml after a warm-up call that loads the compiled kernel), the ratio, and
the agreement (largest absolute difference of the z-scores and of the log fold changes, matched by
feature name; ``same_rank``: the share of list positions holding the same feature, which differs only
among features of equal score, whose order scanpy leaves to ``argpartition``). One thread.

Usage::

    python benchmarks/bench_markers.py
    python benchmarks/bench_markers.py --rna 20000x20000 --atac 10000x100000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _shape(text: str) -> tuple[int, int]:
    cells, features = text.lower().split("x")
    return int(cells), int(features)


def rna_data(n_cells: int, n_genes: int):
    import scanpy as sc

    from scaml.datasets import simulate

    adata = simulate(n_cells=n_cells, n_genes=n_genes, n_cell_types=10, random_state=0)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.obs["leiden"] = adata.obs["cell_type"].astype("category")
    return adata


def atac_data(n_cells: int, n_peaks: int):
    import anndata as ad

    from scaml.atac import tfidf
    from scaml.datasets import simulate_atac

    peaks = simulate_atac(n_cells=n_cells, n_peaks=n_peaks, n_cell_types=8, mean_depth=3000, random_state=0)
    adata = ad.AnnData(X=tfidf(peaks.X), obs=peaks.obs.copy(), var=peaks.var[[]].copy())
    adata.obs["leiden"] = adata.obs["cell_type"].astype("category")
    return adata


def compare(name: str, adata) -> dict:
    import scanpy as sc

    from scaml.markers import rank_markers

    rank_markers(adata[:200].copy(), "leiden")  # warm-up: load (or compile) the kernel
    ours, theirs = adata.copy(), adata.copy()
    t0 = time.perf_counter()
    rank_markers(ours, "leiden")
    t_scaml = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc.tl.rank_genes_groups(theirs, "leiden", method="wilcoxon", use_raw=False)
    t_scanpy = time.perf_counter() - t0
    mine, peer = ours.uns["rank_genes_groups"], theirs.uns["rank_genes_groups"]
    worst = {"scores": 0.0, "logfoldchanges": 0.0}
    same_place = []
    for group in peer["names"].dtype.names:
        for field in worst:
            a = pd.Series(np.asarray(mine[field][group], dtype=float), index=mine["names"][group])
            b = pd.Series(np.asarray(peer[field][group], dtype=float), index=peer["names"][group])
            worst[field] = max(worst[field], float(np.nanmax(np.abs(a.reindex(b.index) - b))))
        same_place.append(np.mean(np.asarray(mine["names"][group]) == np.asarray(peer["names"][group])))
    X = adata.X
    return {"data": name, "cells": adata.n_obs, "features": adata.n_vars, "non_zero": f"{X.nnz / np.prod(X.shape):.1%}",
            "groups": adata.obs["leiden"].nunique(), "scaml_s": round(t_scaml, 2), "scanpy_s": round(t_scanpy, 2),
            "time_ratio": round(t_scaml / t_scanpy, 3), "max_score_diff": worst["scores"],
            "max_lfc_diff": worst["logfoldchanges"], "same_rank": round(float(np.mean(same_place)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rna", nargs="*", default=[(20000, 5000)], type=_shape, help="CELLSxGENES (default 20000x5000)")
    parser.add_argument("--atac", nargs="*", default=[(10000, 100000)], type=_shape,
                        help="CELLSxPEAKS (default 10000x100000)")
    args = parser.parse_args()
    rows = [compare("RNA log-normalised", rna_data(*shape)) for shape in args.rna]
    rows += [compare("ATAC TF-IDF", atac_data(*shape)) for shape in args.atac]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
