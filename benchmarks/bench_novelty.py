"""Novelty detection on real data: held-out cell types, doublets and foreign cells.

Three settings, every method of ``scaml novelty`` (and a few variants of the ``knn`` default):

* kang_ifnb1k (PBMCs, CTRL / STIM): each of the 6 cell types in turn is flagged as "novel"; the other
  types are the normal cells.
* cellbench_5cl_celseq2 (5 lung cancer lines, 3 plates): the 338 demuxlet doublets are novel.
* foreign cells: 100 panc8_small pancreas cells (drawn per seed) mixed into kang_ifnb1k on the genes
  the two share, each given a kang batch (CTRL / STIM) at random, as contaminating cells would be.

For every setting, method and seed (the seed moves the folds, PCA, Harmony, the detectors and the
pancreas sample) it runs :func:`scaml.classify.run_novelty` (5-fold cross-fitting, 2000 HVGs chosen on
the non-flagged cells) and prints AUROC and AUPRC, mean (sd) over the seeds, as markdown tables.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_novelty.py [--data ../shared/data] [--seeds 0 1 2] [--csv out.csv]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Methods and variants: name -> (method, hyperparameter overrides).
METHODS: dict[str, tuple[str, dict]] = {
    "knn": ("knn", {}),
    "knn k=10": ("knn", {"knn": {"n_neighbors": 10}}),
    "knn density ratio": ("knn", {"knn": {"density_ratio": True}}),
    "knn euclidean": ("knn", {"knn": {"metric": "euclidean"}}),
    "knn PCA on reference": ("knn", {"knn": {"pca_cells": "reference"}}),
    "knn no Harmony": ("knn", {"knn": {"harmony": False}}),
    "lof": ("lof", {"lof": {"n_jobs": 1}}),
    "iforest": ("iforest", {"iforest": {"n_jobs": 1}}),
    "ocsvm": ("ocsvm", {}),
    "classifier": ("classifier", {}),
}


def settings(data: Path, seed: int) -> Iterator[tuple[str, ad.AnnData, str]]:
    """(name, data with a boolean ``obs["novel"]``, label column) for every setting."""
    kang = ad.read_h5ad(data / "h5ad" / "kang_ifnb1k.h5ad")
    for cell_type in sorted(kang.obs["cell_type"].astype(str).unique()):
        held = kang.copy()
        held.obs["novel"] = (held.obs["cell_type"].astype(str) == cell_type).to_numpy()
        yield f"kang: {cell_type}", held, "cell_type"
    bench = ad.read_h5ad(data / "h5ad" / "cellbench_5cl_celseq2.h5ad")
    bench.obs["novel"] = (bench.obs["demuxlet_cls"] == "DBL").to_numpy()
    yield "cellbench: doublets", bench, "cell_type"
    panc = ad.read_h5ad(data / "h5ad" / "panc8_small.h5ad")
    shared = set(map(str, panc.var_names))
    genes = [g for g in map(str, kang.var_names) if g in shared]
    rng = np.random.default_rng(seed)
    foreign = panc[np.sort(rng.choice(panc.n_obs, 100, replace=False)), genes].copy()
    foreign.obs["batch"] = rng.choice(["CTRL", "STIM"], foreign.n_obs)
    foreign.obs["cell_type"] = "pancreas " + foreign.obs["cell_type"].astype(str)
    pbmc = kang[:, genes].copy()
    obs_cols = ["batch", "cell_type"]
    pbmc.obs, foreign.obs = pbmc.obs[obs_cols].astype(str), foreign.obs[obs_cols].astype(str)
    mixed = ad.concat([pbmc, foreign], join="inner", index_unique="-", keys=["kang", "panc8"])
    mixed.X = sp.csr_matrix(mixed.X)
    mixed.obs["novel"] = np.r_[np.zeros(pbmc.n_obs, bool), np.ones(foreign.n_obs, bool)]
    yield "foreign: panc8 in kang", mixed, "cell_type"


def run(data: Path, seeds: list[int], methods: list[str]) -> pd.DataFrame:
    """AUROC / AUPRC of every setting, method and seed."""
    from scaml._utils import set_quiet
    from scaml.classify import run_novelty

    set_quiet(True)
    rows = []
    for seed in seeds:
        for name, adata, label_key in settings(data, seed):
            for label in methods:
                method, overrides = METHODS[label]
                start = time.perf_counter()
                res = run_novelty(adata, hek_key="novel", method=method, label_key=label_key, n_hvg=2000,
                                  n_folds=5, random_state=seed, hyperparameters=overrides, plots=False)
                m = res["metrics"]
                rows.append({"setting": name, "method": label, "seed": seed, "auroc": m["auroc"], "auprc": m["auprc"],
                             "auprc_baseline": m["auprc_baseline"], "seconds": time.perf_counter() - start})
                print(f"seed {seed} {name:28s} {label:22s} AUROC {m['auroc']:.3f} AUPRC {m['auprc']:.3f} "
                      f"({rows[-1]['seconds']:.1f} s)", flush=True)
    return pd.DataFrame(rows)


def table(results: pd.DataFrame, metric: str) -> str:
    """Markdown table: settings x methods, mean (sd) over seeds."""
    grouped = results.groupby(["setting", "method"], sort=False)[metric]
    mean, sd = grouped.mean().unstack(), grouped.std().unstack()
    methods = list(dict.fromkeys(results["method"]))
    settings_order = list(dict.fromkeys(results["setting"]))
    several = results["seed"].nunique() > 1
    lines = ["| setting | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for s in settings_order:
        cells = [f"{mean.loc[s, m]:.3f}" + (f" ({sd.loc[s, m]:.3f})" if several else "") for m in methods]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data",
                        help="the shared data folder (default ../shared/data beside the repository)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS), metavar="METHOD")
    parser.add_argument("--csv", type=Path, default=None, help="write every run's numbers here")
    args = parser.parse_args()
    results = run(args.data, args.seeds, args.methods)
    if args.csv is not None:
        results.to_csv(args.csv, index=False)
    print("\nAUROC, mean (sd) over seeds", args.seeds)
    print(table(results, "auroc"))
    print("\nAUPRC, mean (sd) over seeds", args.seeds)
    print(table(results, "auprc"))
    print("\nseconds per run (mean):", results.groupby("method", sort=False)["seconds"].mean().round(1).to_dict())


if __name__ == "__main__":
    main()
