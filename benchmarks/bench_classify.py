"""Time the four-model cross-batch benchmark (scaml train) on simulated data.

Simulates ``--cells`` cells in two harvests (H4, H8), trains every model on H4
with ``--n-hvg`` highly variable genes and tests on H8, and prints the time and
accuracy of each model. Run it with few threads to mimic a small machine, e.g.

    OMP_NUM_THREADS=2 nice python benchmarks/bench_classify.py --cells 20000 100000

The acceptance target: the four-model run on 100k cells takes under 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[20000, 100000], help="dataset sizes")
    parser.add_argument("--genes", type=int, default=5000, help="genes simulated (default 5000)")
    parser.add_argument("--n-hvg", type=int, default=3000, help="highly variable genes (default 3000)")
    parser.add_argument("--cell-types", type=int, default=10, help="cell types (default 10)")
    parser.add_argument("--models", nargs="+", default=["lr", "rf", "xgb", "mlp"])
    parser.add_argument("--write", action="store_true", help="also write every artifact and plot to a temp dir")
    args = parser.parse_args()

    from scaml._utils import package_versions, set_quiet
    from scaml.classify import HYPERPARAMETERS, run_train
    from scaml.datasets import simulate

    set_quiet(True)
    print(f"cores visible: {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    versions = package_versions()
    print("versions:", {k: versions[k] for k in ("scikit-learn", "xgboost", "numpy") if k in versions})
    print("hyperparameters:", {m: HYPERPARAMETERS[m] for m in args.models})
    for n_cells in args.cells:
        start = time.perf_counter()
        adata = simulate(n_cells=n_cells, n_genes=args.genes, n_batches=2, n_cell_types=args.cell_types,
                         random_state=0)
        adata.obs["harvest"] = adata.obs["batch"].map({"batch1": "H4", "batch2": "H8"}).astype(str)
        t_sim = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            res = run_train(adata, label_key="cell_type", split_key="harvest", split_train="H4", split_test="H8",
                            features="hvg", n_hvg=args.n_hvg, models=args.models,
                            outdir=os.path.join(tmp, "out") if args.write else None, plots=args.write)
            total = time.perf_counter() - start
        run = next(iter(res["runs"].values()))
        fit = sum(run["models"][m]["fit_predict_seconds"] for m in args.models)
        n_features = len(run["feature_names"])
        print(f"\n== {n_cells} cells x {args.genes} genes, {n_features} features ({args.n_hvg} HVGs asked), "
              f"{args.cell_types} types: "
              f"train {run['n_train']} / test {run['n_test']} (simulation {t_sim:.1f} s)")
        print(f"{'model':6s} {'wall s':>9s} {'CPU s':>9s} {'accuracy':>9s} {'F1 macro':>9s} {'converged':>10s}")
        for m in args.models:
            r = run["models"][m]
            print(f"{m:6s} {r['fit_predict_seconds']:9.1f} {r['fit_predict_cpu_seconds']:9.1f} {r['accuracy']:9.4f} "
                  f"{r['f1_macro']:9.4f} {str(r['fit'].get('converged', '')):>10s}", flush=True)
        print(f"features + bookkeeping {total - fit:.1f} s; total run_train {total:.1f} s ({total / 60:.2f} min)",
              flush=True)
        del adata, res


if __name__ == "__main__":
    main()
