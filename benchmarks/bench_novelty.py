"""Novelty detection on real data: held-out cell types, doublets and foreign cells.

Three settings, every method of ``scaml novelty`` (and variants of the ``coverage`` default and of ``knn``):

* kang_ifnb1k (PBMCs, CTRL / STIM): each of the 6 cell types in turn is flagged as "novel"; the other
  types are the normal cells.
* cellbench_5cl_celseq2 (5 lung cancer lines, 3 plates): the 338 demuxlet doublets are novel.
* foreign cells: 100 panc8_small pancreas cells (drawn per seed) mixed into kang_ifnb1k on the genes
  the two share, each given a kang batch (CTRL / STIM) at random, as contaminating cells would be;
  and the same with only 3 of them (too few to form a neighbourhood of their own).

Besides the methods, rows computed from their scores (never by ``scaml novelty`` itself):

* ``coverage: distance only`` / ``coverage: query share only``: the two components of the default;
* ``simulated doublets``: the share of simulated doublets (sums of the counts of two random non-flagged
  cells of one batch, Scrublet / scDblFinder style) among a cell's 30 nearest cells of its fold's
  reference and those doublets (only doublets of two reference cells of that fold), in the same
  embedding; ``coverage + doublets``: Fisher's combination of its rank with the two components;
* ``coverage + classifier``: Fisher's combination of the two components with the classifier's
  uncertainty (1 - max probability of LR on ``cell_type``).

For every setting, method and seed (the seed moves the folds, PCA, Harmony, the detectors and the
pancreas sample) it runs :func:`scaml.classify.run_novelty` (5-fold cross-fitting, 2000 HVGs chosen on
the non-flagged cells) and prints AUROC and AUPRC, mean ± sd over the seeds, as markdown tables.

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
    "coverage": ("coverage", {}),
    "coverage mean": ("coverage", {"coverage": {"combine": "mean"}}),
    "coverage max": ("coverage", {"coverage": {"combine": "max"}}),
    "coverage share k=30": ("coverage", {"coverage": {"share_neighbors": 30}}),
    "coverage no Harmony": ("coverage", {"coverage": {"harmony": False}}),
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
    few = np.r_[np.arange(pbmc.n_obs), pbmc.n_obs + np.arange(3)]
    yield "foreign: 3 panc8 in kang", mixed[few].copy(), "cell_type"


def doublet_share(adata: ad.AnnData, seed: int, *, n_neighbors: int = 30) -> np.ndarray:
    """Share of simulated doublets among each cell's nearest cells (bench-only score; higher = more novel).

    The embedding, HVGs and folds are those of ``run_novelty(..., method="coverage", random_state=seed)``.
    As many doublets as there are non-flagged cells are simulated by summing the counts of two random
    non-flagged cells of one batch, log-normalised on the same genes, projected onto the PCA and moved
    by the mean Harmony correction of their two parents. A cell of fold *k* is scored against the
    non-flagged cells of the other folds and the doublets whose two parents are both among them.
    """
    from sklearn.decomposition import PCA

    from scaml.classify.features import build_features, find_run_expression
    from scaml.classify.novelty import _assign_folds, _batch_labels
    from scaml.classify.novelty_knn import _correct, _unit
    from scaml.neighbors import query_neighbors
    from scaml.preprocess import log_normalize

    flag = adata.obs["novel"].to_numpy(bool)
    normal = np.flatnonzero(~flag)
    _, batch = _batch_labels(adata, None, "coverage")
    expression = find_run_expression(adata, None)
    feats = build_features(adata, np.arange(adata.n_obs), normal, features="hvg", n_hvg=2000,
                           expression=expression, announce=False)
    genes = np.array([adata.var_names.get_loc(g) for g in feats.names])
    fold, _ = _assign_folds(flag, normal, 5, seed)
    X = feats.X.toarray()
    pca = PCA(n_components=30, random_state=seed).fit(X)
    Z = pca.transform(X).astype(np.float32)
    E = _correct(Z, batch, 2.0, seed)
    rng = np.random.default_rng(seed)
    a = rng.choice(normal, normal.size)
    b = rng.choice(normal, normal.size)
    if batch is not None:  # the second parent from the first one's batch
        for level in np.unique(batch[a]):
            same = batch[a] == level
            b[same] = rng.choice(normal[batch[normal] == level], int(same.sum()))
    keep = a != b
    a, b = a[keep], b[keep]
    counts = sp.csr_matrix(expression.matrix, dtype=np.float32)
    doublets = log_normalize(sp.csr_matrix(counts[a] + counts[b]), 1e4)[:, genes].toarray()
    D = pca.transform(doublets).astype(np.float32) + ((E - Z)[a] + (E - Z)[b]) / 2
    E, D = _unit(E), _unit(D)
    share = np.empty(adata.n_obs)
    for f in np.unique(fold):
        rows = np.flatnonzero(fold == f)
        ref = normal[fold[normal] != f]
        usable = (fold[a] != f) & (fold[b] != f)
        _, idx = query_neighbors(np.vstack([E[ref], D[usable]]), E[rows], n_neighbors, random_state=seed)
        share[rows] = (idx >= ref.size).mean(axis=1)
    return share


def run(data: Path, seeds: list[int], methods: list[str]) -> pd.DataFrame:
    """AUROC / AUPRC of every setting, method and seed (and of the rows derived from their scores)."""
    from scaml._utils import set_quiet
    from scaml.classify import run_novelty
    from scaml.classify.novelty import novelty_metrics
    from scaml.classify.novelty_knn import combine_ranks

    set_quiet(True)
    rows = []

    def add(name: str, label: str, seed: int, flag: np.ndarray, score: np.ndarray, seconds: float) -> None:
        m = novelty_metrics(flag, score)
        rows.append({"setting": name, "method": label, "seed": seed, "auroc": m["auroc"], "auprc": m["auprc"],
                     "auprc_baseline": m["auprc_baseline"], "seconds": seconds})
        print(f"seed {seed} {name:28s} {label:26s} AUROC {m['auroc']:.3f} AUPRC {m['auprc']:.3f} ({seconds:.1f} s)",
              flush=True)

    for seed in seeds:
        for name, adata, label_key in settings(data, seed):
            flag = adata.obs["novel"].to_numpy(bool)
            scores = {}
            for label in methods:
                method, overrides = METHODS[label]
                start = time.perf_counter()
                res = run_novelty(adata, hek_key="novel", method=method, label_key=label_key, n_hvg=2000,
                                  n_folds=5, random_state=seed, hyperparameters=overrides, plots=False)
                scores[label] = res["scores"]
                add(name, label, seed, flag, res["scores"]["novelty_score"].to_numpy(), time.perf_counter() - start)
            if "coverage" not in scores:
                continue
            distance, share = (scores["coverage"][c].to_numpy() for c in ("distance", "query_share"))
            add(name, "coverage: distance only", seed, flag, distance, 0.0)
            add(name, "coverage: query share only", seed, flag, share, 0.0)
            start = time.perf_counter()
            doublets = doublet_share(adata, seed)
            add(name, "simulated doublets", seed, flag, doublets, time.perf_counter() - start)
            add(name, "coverage + doublets", seed, flag, combine_ranks([distance, share, doublets]), 0.0)
            if "classifier" in scores:
                uncertainty = scores["classifier"]["novelty_score"].to_numpy()
                add(name, "coverage + classifier", seed, flag, combine_ranks([distance, share, uncertainty]), 0.0)
    return pd.DataFrame(rows)


def table(results: pd.DataFrame, metric: str) -> str:
    """Markdown table: methods x settings, mean ± sd over seeds."""
    grouped = results.groupby(["method", "setting"], sort=False)[metric]
    mean, sd = grouped.mean().unstack(), grouped.std().unstack()
    methods = list(dict.fromkeys(results["method"]))
    settings_order = list(dict.fromkeys(results["setting"]))
    several = results["seed"].nunique() > 1
    lines = ["| method | " + " | ".join(settings_order) + " |", "|---" * (len(settings_order) + 1) + "|"]
    for m in methods:
        cells = [f"{mean.loc[m, s]:.3f}" + (f" ± {sd.loc[m, s]:.3f}" if several else "") for s in settings_order]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
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
    print("\nAUROC, mean ± sd over seeds", args.seeds)
    print(table(results, "auroc"))
    print("\nAUPRC, mean ± sd over seeds", args.seeds)
    print(table(results, "auprc"))
    print("\nseconds per run (mean):", results.groupby("method", sort=False)["seconds"].mean().round(1).to_dict())


if __name__ == "__main__":
    main()
