"""Symphony-style mapping speed: build a reference and map a 10,000-cell query (scaml only).

Simulated counts (scaml.datasets.simulate): the reference is the first batches, the query the last
one, resampled to the query size. Prints build time, mapping time, and kNN label transfer accuracy
in the joint embedding. 2 threads (set before numpy is imported).

Usage::

    python benchmarks/bench_symphony.py --ref-cells 20000 --query-cells 10000 --genes 2000
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "2")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-cells", type=int, default=20_000)
    parser.add_argument("--query-cells", type=int, default=10_000)
    parser.add_argument("--genes", type=int, default=2_000)
    args = parser.parse_args()

    import anndata as ad
    import torch
    from sklearn.neighbors import KNeighborsClassifier

    torch.set_num_threads(int(THREADS))
    from scaml._utils import set_quiet
    from scaml.datasets import simulate
    from scaml.mapping.symphony import build_symphony_reference

    set_quiet(True)
    n_batches = 4
    total = int(args.ref_cells * n_batches / (n_batches - 1))
    adata = simulate(
        n_cells=total, n_genes=args.genes, n_batches=n_batches, n_cell_types=8, random_state=0
    )
    is_query = (adata.obs["batch"] == f"batch{n_batches}").to_numpy()
    ref_ad = adata[~is_query].copy()
    rng = np.random.default_rng(0)
    pick = rng.choice(np.flatnonzero(is_query), size=args.query_cells, replace=True)
    obs = adata.obs.iloc[pick].copy()
    obs.index = [f"q{i}" for i in range(len(pick))]
    query = ad.AnnData(X=adata.X[pick], obs=obs, var=adata.var)

    start = time.perf_counter()
    ref = build_symphony_reference(ref_ad, "batch", label_key="cell_type")
    build_s = time.perf_counter() - start
    ref.map(query[:200].copy())  # warm-up
    start = time.perf_counter()
    mapping = ref.map(query)
    map_s = time.perf_counter() - start
    knn = KNeighborsClassifier(n_neighbors=10).fit(ref.embedding, ref.obs["cell_type"].to_numpy())
    acc = (knn.predict(mapping.embedding) == query.obs["cell_type"].astype(str).to_numpy()).mean()
    print(
        f"threads={THREADS}; reference {ref_ad.n_obs} cells x {args.genes} genes, query {query.n_obs} cells"
    )
    print(f"build reference (normalise, HVG, scale, PCA, Harmony): {build_s:.2f} s")
    print(f"map {query.n_obs} query cells: {map_s:.2f} s")
    print(
        f"kNN label transfer accuracy: {acc:.3f}; median mapping confidence {np.median(mapping.confidence):.2f}"
    )


if __name__ == "__main__":
    main()
