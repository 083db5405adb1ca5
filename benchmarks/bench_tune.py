"""What ``scaml reference build --tune N`` gains over the default hyperparameters, on a real held-out query.

panc8_small (``../shared/data/h5ad/panc8_small.h5ad``, relative to the repository root; 5 technologies
of 100 cells in ``obs["batch"]``, 6 cell types in ``obs["cell_type"]``): one technology
(``--test-batch``, default indrop) is the final test query and never seen by the tuning. The other
four are the reference: :func:`scaml.mapping.tune.tune_reference` searches the hyperparameters with
``--trials`` trials (seeded TPE, trial 1 = the defaults), each trial trained on three of the four and
scored by mapping the fourth (the tuning's own held-out batch: the largest, ties by name, i.e. celseq).

Then, for each ``--seeds`` value (the seed of the model, its data split and the query model), a
reference with the default parameters and one with the best parameters are built on the four
technologies (same epochs) and the test technology is mapped onto each (``map_query``, weighted kNN
with k = auto, no Unknown call). The table shows accuracy, macro F1 and iLISI of the test query
(mean ± sd over seeds), scANVI's own classifier too, and the gain tuned - default.

Counts are rounded to integers (celseq, celseq2 and fluidigmc1 hold non-integer values) and all 2,000
genes are used. kang_ifnb1k is not used: its CTRL reference is one batch (``orig.ident`` and ``stim``
are constant within CTRL), and tuning needs a held-out reference batch.

Usage::

    nice python benchmarks/bench_tune.py                      # scvi and scanvi, 20 trials, seeds 0 1 2
    python benchmarks/bench_tune.py --methods scvi --trials 5 --seeds 0 --csv tune.csv
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, THREADS)

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "h5ad"


def load_panc8(path: Path):
    """panc8_small with integer counts and only the batch and cell-type columns."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    X = sp.csr_matrix(adata.X, dtype=np.float32)
    X.data = np.round(X.data)
    X.eliminate_zeros()
    adata.X = X
    adata.obs = adata.obs[["batch", "cell_type"]].astype(str)
    adata.var = adata.var.iloc[:, :0]
    adata.uns = {}
    keep = np.asarray(X.sum(axis=1)).ravel() > 0
    return adata[keep].copy()


def evaluate(method: str, ref, query, options: dict, train: dict, max_epochs: int, seed: int, workdir: Path) -> list[dict]:
    """Build a reference with ``options``, map the test query; rows of the table (kNN, scANVI's classifier)."""
    import numpy as np

    from scaml.mapping import LATENT_KEY, build_reference, label_metrics, map_query
    from scaml.mapping.tune import batch_mixing

    model = {k: v for k, v in options.items() if k not in ("lr", "kl_warmup_epochs")}
    train = {**train, **{k: v for k, v in options.items() if k in ("lr", "kl_warmup_epochs")}}
    ref_dir = build_reference(ref, method, "batch", "cell_type", workdir / "ref", overwrite=True, random_state=seed,
                              max_epochs=max_epochs, n_hvg=None, train_params=train, **model)
    mapped = map_query(ref_dir, query, workdir / "map", overwrite=True, label_key="cell_type", unknown_threshold=1.0,
                       random_state=seed, train_params={"n_threads": train.get("n_threads")}, umap=False)
    with np.load(ref_dir / "reference_latent.npz") as npz:
        ref_latent = npz["latent"]
    batches = np.concatenate([ref.obs["batch"].to_numpy(), query.obs["batch"].to_numpy()])
    ilisi = batch_mixing(ref_latent, mapped.obsm[LATENT_KEY], batches)
    true = query.obs["cell_type"].to_numpy()
    knn = label_metrics(true, mapped.obs["predicted_cell_type"].astype(str))
    rows = [{"scored": "kNN", "accuracy": knn["accuracy"], "macro_f1": knn["macro_f1"], "ilisi": ilisi}]
    if method == "scanvi":
        own = label_metrics(true, mapped.obs["predicted_cell_type_scanvi"].astype(str))
        rows.append({"scored": "classifier", "accuracy": own["accuracy"], "macro_f1": own["macro_f1"], "ilisi": ilisi})
    return rows


def _pm(values) -> str:
    import numpy as np

    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return f"{values.mean():.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DATA), help="folder of the h5ad files (default ../shared/data/h5ad)")
    parser.add_argument("--test-batch", default="indrop", help="technology held out as the final test query")
    parser.add_argument("--methods", nargs="+", default=["scvi", "scanvi"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the final comparison (the search itself uses the first)")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="reference epochs of every model (default: scaml's rule, 400 here, with early stopping)")
    parser.add_argument("--csv", default=None, help="also write the per-seed rows to this CSV")
    parser.add_argument("--keep", default=None, help="keep the tuned references (with tuning/trials.*) in this folder")
    args = parser.parse_args(argv)

    import pandas as pd

    from scaml._utils import set_quiet
    from scaml.mapping.tune import model_options, tune_reference
    from scaml.vae.model import default_max_epochs

    path = Path(args.data) / "panc8_small.h5ad"
    if not path.exists():
        print(f"panc8_small.h5ad not found in {args.data}; pass --data", file=sys.stderr)
        return 1
    adata = load_panc8(path)
    is_test = (adata.obs["batch"] == args.test_batch).to_numpy()
    if not is_test.any():
        print(f"no batch {args.test_batch!r}; use one of {sorted(adata.obs['batch'].unique())}", file=sys.stderr)
        return 1
    ref, query = adata[~is_test].copy(), adata[is_test].copy()
    epochs = args.max_epochs or default_max_epochs(ref.n_obs, 400)
    train = {"n_threads": int(THREADS)}
    set_quiet(True)
    rows, tunings = [], []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        keep = Path(args.keep) if args.keep else Path(tmp)
        for method in args.methods:
            t0 = time.perf_counter()
            result = tune_reference(ref, method, "batch", "cell_type", keep / f"tuned_{method}", args.trials,
                                    overwrite=True, random_state=args.seeds[0], max_epochs=epochs, n_hvg=None,
                                    train_params=train)
            best_model, best_train = model_options(result.best_params, epochs)
            best = {**best_model, **best_train}
            holdout = result.holdout_batch
            tunings.append({"method": method, "trials": len(result.trials), "default_objective": result.default_objective,
                            "best_objective": result.best_objective, "best": result.best_params,
                            "seconds": time.perf_counter() - t0, "holdout": holdout})
            print(f"[{method}] tuned in {time.perf_counter() - t0:.0f} s: objective {result.default_objective:.4f} "
                  f"(defaults) -> {result.best_objective:.4f}; best {result.best_params}", file=sys.stderr, flush=True)
            for seed in args.seeds:
                for params, options in (("default", {}), ("tuned", best)):
                    for row in evaluate(method, ref, query, options, train, epochs, seed, Path(tmp) / "eval"):
                        rows.append({"method": method, "params": params, "seed": seed, **row})
                print(f"[{method}] seed {seed} evaluated ({time.perf_counter() - started:.0f} s so far)",
                      file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    if args.csv:
        table.to_csv(args.csv, index=False)

    print(f"\npanc8_small: reference = the 4 other technologies ({ref.n_obs} cells), test query = "
          f"{args.test_batch} ({query.n_obs} cells); {epochs} reference epochs (early stopping), "
          f"{len(args.seeds)} seed(s)\n")
    print("| method | scored | params | accuracy | macro F1 | iLISI |")
    print("|---|---|---|---|---|---|")
    for (method, scored, params), group in table.groupby(["method", "scored", "params"], sort=False):
        print(f"| {method} | {scored} | {params} | {_pm(group['accuracy'])} | {_pm(group['macro_f1'])} | "
              f"{_pm(group['ilisi'])} |")
    print("\nGain of the tuned parameters over the defaults on the test query (mean over seeds; paired by seed):\n")
    print("| method | scored | Δ accuracy | Δ macro F1 | Δ iLISI |")
    print("|---|---|---|---|---|")
    for (method, scored), group in table.groupby(["method", "scored"], sort=False):
        wide = group.pivot(index="seed", columns="params", values=["accuracy", "macro_f1", "ilisi"])
        gains = {m: wide[m]["tuned"] - wide[m]["default"] for m in ("accuracy", "macro_f1", "ilisi")}
        print(f"| {method} | {scored} | {gains['accuracy'].mean():+.3f} | {gains['macro_f1'].mean():+.3f} | "
              f"{gains['ilisi'].mean():+.3f} |")
    print("\nThe search (objective = 0.6 x accuracy + 0.4 x iLISI of the tuning's held-out batch "
          f"{tunings[0]['holdout'] if tunings else ''}, mapped onto the other three):\n")
    print("| method | trials | objective, defaults | objective, best | best parameters | search s |")
    print("|---|---|---|---|---|---|")
    for t in tunings:
        best = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["best"].items())
        print(f"| {t['method']} | {t['trials']} | {t['default_objective']:.4f} | {t['best_objective']:.4f} | {best} | "
              f"{t['seconds']:.0f} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
