"""Expression + TCR: scaml's MVTCR joint latent against an expression-only scaml SCVI latent.

On scirpy's wu2020 subset (``../shared/data/tcr/wu2020_200.h5ad``: 200 T cells, 3000 genes, 14
patients, 16 author clusters in ``cell_type``, paired chains in the ``IR_*`` columns, 197 clonotypes
of which 3 hold two cells), every model is trained on all cells with ``patient`` as the batch, for
``--epochs`` epochs (early stopping on the clonotype-split validation set), once per seed:

- **kNN accuracy** of the 16 clusters from each latent: a ``--k``-NN classifier, 5-fold
  cross-validated (shuffled folds, seeded);
- **clonotype neighbour rate** (:func:`scaml.tcr.clonotype_neighbor_rate`, 15 neighbours): the share of
  a cell's clonotype mates among its 15 nearest neighbours, over the cells of expanded clonotypes
  (on wu2020 only 6 cells, so the number is coarse);
- **clonotype distance ratio** (:func:`scaml.tcr.clonotype_distance_ratio` within clusters): mean
  distance of clonotype mates over that of random cells of the same cluster (lower = mates closer);
- **mixed-chain mate recall**: for clonotype mates with different chains present (alpha + beta vs
  beta only, ...), the share found among each other's 15 nearest neighbours (does a cell lacking a
  chain land with its clone? NaN when no expanded clonotype mixes chain sets);
- **seconds per epoch**.

The latents: SCVI (expression only), MVTCR's joint latent (expression x alpha x beta experts), and
MVTCR's own expression-only and TCR-only posteriors, and MVTCR trained without chain dropout (ablation). ``--simulated N`` repeats everything on N cells of
:func:`scaml.datasets.simulate_tcr` (6 clusters, expanded clones with cluster-biased CDR3s), where the
clonotype numbers mean more. One torch thread.

Usage::

    python benchmarks/bench_tcr.py
    python benchmarks/bench_tcr.py --seeds 0 1 2 --epochs 200 --simulated 3000
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCAML_SHARED_DATA", ROOT.parent / "shared" / "data"))


def knn_accuracy(latent: np.ndarray, labels: np.ndarray, k: int, seed: int) -> float:
    """5-fold cross-validated accuracy of a k-NN classifier of ``labels`` on ``latent``."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    folds = KFold(5, shuffle=True, random_state=seed)
    return float(cross_val_score(KNeighborsClassifier(k), latent, labels, cv=folds).mean())


def mixed_chain_mate_recall(latent: np.ndarray, clones: np.ndarray, chains: np.ndarray, k: int = 15) -> float:
    """Share of clonotype mates with different chains present (e.g. alpha + beta vs beta only) among each
    other's ``k`` nearest neighbours: does a cell lacking a chain land with its clone?"""
    from scaml.neighbors import compute_neighbors

    nb = compute_neighbors(latent, k)
    found = []
    for group in pd.Series(np.arange(clones.size)).groupby(clones).indices.values():
        if group.size < 2:
            continue
        for i in group:
            others = group[(group != i) & (chains[group] != chains[i])]
            found.extend(np.isin(others, nb.indices[i]))
    return float(np.mean(found)) if found else float("nan")


def run_models(adata, batch_key: str, labels: np.ndarray, clones: np.ndarray, epochs: int, seed: int,
               k: int) -> list[dict]:
    """Train SCVI and MVTCR with one seed; score every latent."""
    from scaml import tcr
    from scaml.vae import MVTCR, SCVI

    fast = {"verbose": False, "n_threads": 1, "max_epochs": epochs}
    table = tcr.read_tcr(adata, report=False)
    chains = (table["tcr_alpha_cdr3"].notna().to_numpy() * 2 + table["tcr_beta_cdr3"].notna().to_numpy())
    rows = []
    t = time.perf_counter()
    scvi = SCVI(adata, batch_key, random_state=seed).train(**fast)
    scvi_time = time.perf_counter() - t
    t = time.perf_counter()
    mvtcr = MVTCR(adata, batch_key, random_state=seed).train(**fast)
    mvtcr_time = time.perf_counter() - t
    t = time.perf_counter()
    no_chain_dropout = MVTCR(adata, batch_key, random_state=seed, chain_dropout=0.0).train(**fast)
    ablation_time = time.perf_counter() - t
    latents = {
        "SCVI (expression)": (scvi.get_latent(), scvi, scvi_time),
        "MVTCR joint": (mvtcr.get_latent(), mvtcr, mvtcr_time),
        "MVTCR expression expert": (mvtcr.get_latent(modality="expression"), mvtcr, mvtcr_time),
        "MVTCR TCR experts": (mvtcr.get_latent(modality="tcr"), mvtcr, mvtcr_time),
        "MVTCR joint, chain_dropout=0": (no_chain_dropout.get_latent(), no_chain_dropout, ablation_time),
    }
    for name, (z, model, seconds) in latents.items():
        rows.append({
            "latent": name, "seed": seed,
            "knn_accuracy": knn_accuracy(z, labels, k, seed),
            "clonotype_neighbor_rate": tcr.clonotype_neighbor_rate(z, clones),
            "clonotype_distance_ratio": tcr.clonotype_distance_ratio(z, clones, labels),
            "mixed_chain_mate_recall": mixed_chain_mate_recall(z, clones, chains),
            "epochs": len(model.history["epoch_seconds"]),
            "s_per_epoch": float(np.mean(model.history["epoch_seconds"])),
            "train_s": seconds,
        })
    return rows


def summarise(rows: list[dict], title: str) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    metrics = ["knn_accuracy", "clonotype_neighbor_rate", "clonotype_distance_ratio", "mixed_chain_mate_recall",
               "epochs", "s_per_epoch"]
    mean = frame.groupby("latent", sort=False)[metrics].mean()
    sd = frame.groupby("latent", sort=False)[metrics].std(ddof=0)
    table = pd.DataFrame(index=mean.index)
    for m in metrics:
        digits = 1 if m == "epochs" else 3
        table[m] = [f"{a:.{digits}f} ± {b:.{digits}f}" for a, b in zip(mean[m], sd[m], strict=True)]
    print(f"\n{title}")
    print(table.to_string())
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED / "tcr" / "wu2020_200.h5ad"), help="the wu2020 h5ad")
    parser.add_argument("--epochs", type=int, default=200, help="training epochs (early stopping may end sooner)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds")
    parser.add_argument("--k", type=int, default=5, help="neighbours of the kNN cluster classifier (default 5)")
    parser.add_argument("--simulated", type=int, default=0, metavar="N",
                        help="also run on N simulated T cells (simulate_tcr, 1000 genes); 0 = no")
    parser.add_argument("--out", default=None, help="CSV of every run (one row per latent and seed)")
    args = parser.parse_args()

    import anndata as ad
    import torch

    from scaml import tcr
    from scaml._utils import set_quiet

    torch.set_num_threads(int(THREADS))
    set_quiet(True)
    frames = []
    if Path(args.data).exists():
        adata = ad.read_h5ad(args.data)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        clones = tcr.clonotypes(adata)
        counts = tcr.chain_counts(tcr.read_tcr(adata, report=False))
        print(f"wu2020: {adata.n_obs} cells x {adata.n_vars} genes, {adata.obs['patient'].nunique()} patients, "
              f"{len(set(labels))} clusters, {len(set(clones))} clonotypes "
              f"({int((tcr.analysis.clonotype_sizes(clones) > 1).sum())} cells in expanded ones); chains {counts}")
        rows = [r for seed in args.seeds
                for r in run_models(adata, "patient", labels, clones, args.epochs, seed, args.k)]
        frame = summarise(rows, f"wu2020_200 ({args.k}-NN accuracy of the 16 clusters, 5-fold CV; "
                                f"{len(args.seeds)} seeds, mean ± sd)")
        frames.append(frame.assign(dataset="wu2020_200"))
    else:
        print(f"{args.data} not found: wu2020 skipped")
    if args.simulated:
        from scaml.datasets import simulate_tcr

        sim = simulate_tcr(args.simulated, 1000, n_batches=3, n_clusters=6, random_state=0)
        labels = sim.obs["cell_type"].astype(str).to_numpy()
        clones = sim.obs["clonotype"].astype(str).to_numpy()
        rows = [r for seed in args.seeds for r in run_models(sim, "batch", labels, clones, args.epochs, seed, 15)]
        frame = summarise(rows, f"simulate_tcr({args.simulated}) (15-NN accuracy of 6 clusters; "
                                f"{len(args.seeds)} seeds, mean ± sd)")
        frames.append(frame.assign(dataset=f"simulated_{args.simulated}"))
    if args.out and frames:
        pd.concat(frames).to_csv(args.out, index=False)
        print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
