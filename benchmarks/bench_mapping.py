"""Reference mapping side by side: scaml (scVI/scANVI-like surgery, Symphony) vs scvi-tools and CellTypist.

Splits (real data in ``../shared/data/h5ad``, relative to the repository root):

- panc8_small: each of the 5 technologies held out as the query in turn, the other 4 as the reference;
- kang_ifnb1k: CTRL cells as the reference, STIM cells as the query.

Every method sees the same cells: raw counts rounded to integers (some panc8 technologies hold
non-integer values); the genes are each method's recipe (below). HVGs are 2,000 per reference batch
(Seurat flavour on log-normalised values). The VAEs of both packages use the same architecture (scArches' surgery settings:
n_latent 10, two hidden layers of 128, layer norm, no batch norm, covariates in the encoder), the same
number of reference and query epochs without early stopping, and the same torch thread count. Labels
are transferred with the same weighted kNN (scaml.mapping.transfer with scaml map's default k, "auto",
no Unknown call) from each VAE package's embedding; scANVI models also predict with their own classifier; CellTypist trains a
logistic regression on the log-normalised reference.

The VAEs of both packages vary a lot from seed to seed (query accuracy can move by 0.1 or more), so
each VAE method runs once per ``--seeds`` value (default 0 1 2; the seed of the model, of its training
data split and of the query model) and the table shows mean ± sd over seeds (sd with ddof 1; blank with
one seed). Symphony-style methods (scaml's and symphonypy) depend on the seed through Harmony's k-means
start and also run once per seed; CellTypist runs once.

Columns: n_seeds (runs behind the row); accuracy and macro F1 of the query labels; iLISI of the joint reference + query embedding over
the batch column (scIB-scaled, 0 = no mixing, 1 = perfect; computed with scaml.metrics); seconds per
training epoch (reference training time / epochs) and total seconds (reference + query, including
setup), both as the mean over seeds. ``--csv`` writes the per-seed rows.

scvi-tools' VAEs get the raw counts of the reference's HVGs (scvi-tools' recipe). scaml's methods,
symphonypy and CellTypist get every gene: their recipes normalise each cell over all its genes first
(which matters for a stimulated query, whose interferon genes take a share of every library); scaml's
methods and symphonypy then choose ``--n-hvg`` HVGs per reference batch themselves (scaml as
``scaml reference build --n-hvg`` does), and scaml's reference also fits its expression classifier
(a CellTypist-style logistic regression on every gene). Each scaml method gives three rows: its
default call (``kNN + LR``, the mean of the kNN's and the classifier's probabilities), the kNN alone,
and (once, from the Symphony run: it does not depend on the method) the classifier alone.
symphonypy follows its README's recipe: normalise to 1e5 and log1p, scale (max 10),
PCA of 30 components without centring, its Harmony on the reference's batch key (also with one batch),
``map_embedding`` and its own uniform kNN label transfer (k = 5).

scvi-tools, CellTypist and symphonypy run in their own virtual environment through this script's
``--peer-worker`` mode, started with ``--peer-python`` (a venv made with ``python3 -m venv PEERS &&
PEERS/bin/pip install torch==2.13.0 && PEERS/bin/pip install scvi-tools==1.4.2 celltypist==1.7.1
symphonypy==0.2.4 'scikit-learn<1.8'``; CellTypist 1.7.1 fails with scikit-learn 1.8+); without it
only scaml runs.

Usage::

    python benchmarks/bench_mapping.py --peer-python PEERS/bin/python
    python benchmarks/bench_mapping.py --splits kang --ref-epochs 50 --query-epochs 25
    python benchmarks/bench_mapping.py --splits kang --seeds 0 1 2 3 4 5 --csv per_seed.csv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "h5ad"
VAE_ARCH = {"n_latent": 10, "n_hidden": 128, "n_layers": 2}


# ============================================================================ peer worker (other venv)

def _peer_worker(task: dict) -> dict:
    """Run one peer method on prepared h5ad files; write latents/predictions to task['out']."""
    import numpy as np

    threads = int(task["threads"])
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import anndata as ad
    import torch

    torch.set_num_threads(threads)
    ref = ad.read_h5ad(task["ref"])
    query = ad.read_h5ad(task["query"])
    out = Path(task["out"])
    result: dict = {"method": task["method"]}
    t0 = time.perf_counter()
    if task["method"] == "celltypist":
        import celltypist
        import scanpy as sc

        for a in (ref, query):
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
        start = time.perf_counter()
        model = celltypist.train(ref, labels="cell_type", n_jobs=threads, feature_selection=False,
                                 check_expression=False, max_iter=1000)
        result["train_seconds"] = time.perf_counter() - start
        pred = celltypist.annotate(query, model=model, majority_voting=False)
        labels = pred.predicted_labels["predicted_labels"].astype(str).to_numpy()
        np.save(out / "predicted.npy", labels.astype("U"))
        result["total_seconds"] = time.perf_counter() - t0
        result["epochs"] = None
        return result

    if task["method"] == "symphonypy":
        return _symphonypy_worker(ref, query, out, result, t0, seed=int(task.get("seed", 0)),
                                  n_hvg=int(task["n_hvg"]))

    import scvi

    scvi.settings.seed = int(task.get("seed", 0))
    scvi.settings.num_threads = threads
    scvi.settings.dl_num_workers = 0
    arch = dict(n_latent=VAE_ARCH["n_latent"], n_hidden=VAE_ARCH["n_hidden"], n_layers=VAE_ARCH["n_layers"],
                encode_covariates=True, deeply_inject_covariates=False, use_layer_norm="both",
                use_batch_norm="none", gene_likelihood="nb")
    trainer = dict(accelerator="cpu", early_stopping=False, enable_progress_bar=False)
    ref_epochs, query_epochs = int(task["ref_epochs"]), int(task["query_epochs"])
    if task["method"] == "scvi":
        scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
        model = scvi.model.SCVI(ref, **arch)
    else:
        ref.obs["labels_for_scanvi"] = ref.obs["cell_type"].astype(str)
        scvi.model.SCANVI.setup_anndata(ref, batch_key="batch", labels_key="labels_for_scanvi",
                                        unlabeled_category="Unknown")
        model = scvi.model.SCANVI(ref, **arch)
    start = time.perf_counter()
    model.train(max_epochs=ref_epochs, train_size=0.9, **trainer)
    result["train_seconds"] = time.perf_counter() - start
    result["epochs"] = ref_epochs
    ref_latent = model.get_latent_representation(ref)
    query = query.copy()
    if task["method"] == "scanvi":
        query.obs["labels_for_scanvi"] = "Unknown"
        qmodel = scvi.model.SCANVI.load_query_data(query, model, freeze_dropout=True)
    else:
        qmodel = scvi.model.SCVI.load_query_data(query, model, freeze_dropout=True)
    start = time.perf_counter()
    qmodel.train(max_epochs=query_epochs, plan_kwargs={"weight_decay": 0.0}, train_size=0.9, **trainer)
    result["query_train_seconds"] = time.perf_counter() - start
    query_latent = qmodel.get_latent_representation(query)
    np.save(out / "ref_latent.npy", np.asarray(ref_latent, dtype=np.float32))
    np.save(out / "query_latent.npy", np.asarray(query_latent, dtype=np.float32))
    if task["method"] == "scanvi":
        np.save(out / "predicted.npy", np.asarray(qmodel.predict(query), dtype=str).astype("U"))
    result["total_seconds"] = time.perf_counter() - t0
    return result


def _symphonypy_worker(ref, query, out: Path, result: dict, t0: float, seed: int, n_hvg: int) -> dict:
    """symphonypy's documented recipe (its README), on every gene: normalise to 1e5 and log1p, ``n_hvg``
    HVGs per reference batch, scale (max 10), PCA of 30 components without centring, its Harmony on the reference's batch key (also with one batch),
    ``map_embedding`` (lamb 1) and its uniform kNN label transfer (scikit-learn's default k = 5)."""
    import numpy as np
    import scanpy as sc
    import symphonypy as sp

    for a in (ref, query):
        sc.pp.normalize_total(a, target_sum=1e5)
        sc.pp.log1p(a)
    start = time.perf_counter()
    sc.pp.highly_variable_genes(ref, batch_key="batch", n_top_genes=n_hvg)
    ref.raw = ref
    ref = ref[:, ref.var["highly_variable"].to_numpy()].copy()
    sc.pp.scale(ref, max_value=10)
    sc.pp.pca(ref, n_comps=30, zero_center=False)
    sp.pp.harmony_integrate(ref, key="batch", random_seed=seed)
    result["train_seconds"] = time.perf_counter() - start
    sp.tl.map_embedding(query, ref, key="batch")
    sp.tl.transfer_labels_kNN(query, ref, "cell_type", ref_basis="X_pca_harmony", query_basis="X_pca_harmony",
                              query_labels="predicted")
    np.save(out / "ref_latent.npy", np.asarray(ref.obsm["X_pca_harmony"], dtype=np.float32))
    np.save(out / "query_latent.npy", np.asarray(query.obsm["X_pca_harmony"], dtype=np.float32))
    np.save(out / "predicted.npy", query.obs["predicted"].astype(str).to_numpy().astype("U"))
    result["total_seconds"] = time.perf_counter() - t0
    result["epochs"] = None
    return result


def run_peer(peer_python: str, task: dict, timeout: float = 1800) -> dict | None:
    """Run ``_peer_worker`` in the peer venv; None (with the reason printed) when it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(task["threads"]), MKL_NUM_THREADS=str(task["threads"]))
    start = time.perf_counter()
    try:
        proc = subprocess.run([peer_python, __file__, "--peer-worker", json.dumps(task)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"  peer {task['method']} failed: {exc}", file=sys.stderr)
        return None
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        print(f"  peer {task['method']} failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
        return None
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - start  # includes the venv's imports
    return result


# ============================================================================ main process (scaml)

def _prepare_split(adata, query_mask, n_hvg: int, workdir: Path):
    """Round counts, select the reference's HVGs, write ref/query h5ad files for every method."""
    import numpy as np
    import scanpy as sc
    import scipy.sparse as sp

    adata = adata.copy()
    X = adata.X.tocsr() if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    X.data = np.round(X.data).astype(np.float32)
    X.eliminate_zeros()
    adata.X = X
    keep_obs = adata.obs[["batch", "cell_type"]].astype(str).copy()
    adata.obs = keep_obs
    adata.var = adata.var.iloc[:, :0]
    adata.uns = {}
    ref = adata[~query_mask].copy()
    query = adata[query_mask].copy()
    # every gene, for the methods whose recipe normalises before choosing genes (Symphony-style, CellTypist)
    full_ref = ref[np.asarray(ref.X.sum(axis=1)).ravel() > 0].copy()
    full_query = query[np.asarray(query.X.sum(axis=1)).ravel() > 0].copy()
    if ref.n_vars > n_hvg:
        tmp = ref.copy()
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=n_hvg, flavor="seurat", batch_key="batch")
        genes = tmp.var_names[tmp.var["highly_variable"].to_numpy()]
        ref, query = ref[:, genes].copy(), query[:, genes].copy()
    # drop cells without counts on these genes (they cannot be normalised)
    ref = ref[np.asarray(ref.X.sum(axis=1)).ravel() > 0].copy()
    query = query[np.asarray(query.X.sum(axis=1)).ravel() > 0].copy()
    workdir.mkdir(parents=True, exist_ok=True)
    ref.write_h5ad(workdir / "ref.h5ad")
    query.write_h5ad(workdir / "query.h5ad")
    full_ref.write_h5ad(workdir / "ref_all_genes.h5ad")
    full_query.write_h5ad(workdir / "query_all_genes.h5ad")
    return ref, query, full_ref, full_query


def _ilisi(ref_latent, query_latent, batches) -> float:
    import numpy as np
    import pandas as pd

    from scaml.metrics import compute_neighbors, ilisi_scaled, lisi_from_neighbors

    joint = np.vstack([ref_latent, query_latent]).astype(np.float32)
    codes, cats = pd.factorize(np.asarray(batches))
    nb = compute_neighbors(joint, k=90)
    lisi = lisi_from_neighbors(nb, codes, perplexity=30)
    return float(ilisi_scaled(lisi, len(cats)))


def _scores(true, predicted) -> tuple[float, float]:
    from scaml.mapping import label_metrics

    m = label_metrics(true, predicted)
    return m["accuracy"], m["macro_f1"]


def run_scaml(method: str, ref, query, args, workdir: Path, seed: int = 0) -> list[dict]:
    """Build + map with scaml (model seed ``seed``); rows for the table."""
    import numpy as np

    from scaml.mapping import LATENT_KEY, METHODS, build_reference, map_query

    trains = METHODS[method].accepts("max_epochs", "map")  # Symphony does not train: no epochs, no training options
    train = {"early_stopping": False, "n_threads": args.threads, "verbose": False} if trains else None
    options = {k: v for k, v in getattr(args, "model_params", {}).items() if METHODS[method].accepts(k)}
    start = time.perf_counter()
    ref_dir = build_reference(ref, method, "batch", "cell_type", workdir / f"scaml_{method}_ref_{seed}",
                              overwrite=True, random_state=seed, max_epochs=args.ref_epochs if trains else None,
                              n_hvg=args.n_hvg, train_params=train, **options)
    mapped = map_query(ref_dir, query, workdir / f"scaml_{method}_map_{seed}", overwrite=True,
                       label_key="cell_type", max_epochs=args.query_epochs if trains else None,
                       unknown_threshold=1.0, random_state=seed, train_params=train, umap=False)
    total = time.perf_counter() - start
    run = json.loads((ref_dir / "run.json").read_text())
    epochs = (run["data"].get("training") or {}).get("epochs")
    per_epoch = run["timings_seconds"]["training"] / epochs if epochs else None
    with np.load(ref_dir / "reference_latent.npz") as npz:
        ref_latent = npz["latent"]
    ilisi = _ilisi(ref_latent, mapped.obsm[LATENT_KEY], np.concatenate([ref.obs["batch"], query.obs["batch"]]))
    true = query.obs["cell_type"].astype(str).to_numpy()
    rows = []
    # the default call: the kNN averaged with the reference's expression classifier (CellTypist-style LR);
    # the kNN's and the LR's own calls are kept beside it (the LR does not depend on the method: one row, from
    # the Symphony run)
    columns = [(f"scaml {method} (kNN + LR)", "predicted_cell_type"), (f"scaml {method} (kNN)", "predicted_cell_type_knn")]
    if method == "symphony":
        columns.append(("scaml expression LR", "predicted_cell_type_lr"))
    for name, column in columns:
        acc, f1 = _scores(true, mapped.obs[column].astype(str))
        rows.append({"method": name, "accuracy": acc, "macro_f1": f1, "ilisi": ilisi,
                     "sec_per_epoch": per_epoch, "total_s": total})
    if method == "scanvi":
        acc, f1 = _scores(true, mapped.obs["predicted_cell_type_scanvi"].astype(str))
        rows.append({"method": "scaml scanvi (classifier)", "accuracy": acc, "macro_f1": f1, "ilisi": ilisi,
                     "sec_per_epoch": per_epoch, "total_s": total})
    return rows


PEER_PACKAGE = {"celltypist": "CellTypist", "symphonypy": "symphonypy"}
#: Peers whose recipe normalises every gene before choosing its own (they get all genes, not the HVGs).
ALL_GENES = {"celltypist", "symphonypy"}


def run_peers(ref, query, args, workdir: Path, seeds: list[int]) -> list[dict]:
    """scvi-tools models once per seed, CellTypist once; rows (with a ``seed`` key) for the table."""
    import numpy as np

    from scaml.mapping.transfer import transfer_labels

    rows = []
    true = query.obs["cell_type"].astype(str).to_numpy()
    batches = np.concatenate([ref.obs["batch"], query.obs["batch"]])
    runs = [(method, seed) for method in args.peers for seed in (seeds if method != "celltypist" else seeds[:1])]
    for method, seed in runs:
        out = workdir / f"peer_{method}_{seed}"
        out.mkdir(parents=True, exist_ok=True)
        genes = "_all_genes" if method in ALL_GENES else ""
        task = {"method": method, "ref": str(workdir / f"ref{genes}.h5ad"),
                "query": str(workdir / f"query{genes}.h5ad"), "n_hvg": args.n_hvg,
                "out": str(out), "threads": args.threads, "ref_epochs": args.ref_epochs,
                "query_epochs": args.query_epochs, "seed": seed}
        result = run_peer(args.peer_python, task)
        if result is None:
            rows.append({"method": f"{PEER_PACKAGE.get(method, 'scvi-tools')} {method} (failed)", "seed": seed})
            continue
        total = result["total_seconds"]
        if method == "symphonypy":
            ilisi = _ilisi(np.load(out / "ref_latent.npy"), np.load(out / "query_latent.npy"), batches)
            acc, f1 = _scores(true, np.load(out / "predicted.npy"))
            rows.append({"method": "symphonypy (kNN, k=5)", "accuracy": acc, "macro_f1": f1, "ilisi": ilisi,
                         "sec_per_epoch": None, "total_s": total, "seed": seed})
            continue
        if method == "celltypist":
            acc, f1 = _scores(true, np.load(out / "predicted.npy"))
            rows.append({"method": "CellTypist (LR)", "accuracy": acc, "macro_f1": f1, "ilisi": None,
                         "sec_per_epoch": None, "total_s": total, "seed": seed})
            continue
        ref_latent, query_latent = np.load(out / "ref_latent.npy"), np.load(out / "query_latent.npy")
        ilisi = _ilisi(ref_latent, query_latent, batches)
        per_epoch = result["train_seconds"] / result["epochs"]
        calls = transfer_labels(ref_latent, ref.obs["cell_type"].astype(str).to_numpy(), query_latent,
                                n_neighbors="auto", threshold=1.0)
        acc, f1 = _scores(true, calls["label"])
        rows.append({"method": f"scvi-tools {method} (kNN)", "accuracy": acc, "macro_f1": f1, "ilisi": ilisi,
                     "sec_per_epoch": per_epoch, "total_s": total, "seed": seed})
        if method == "scanvi":
            acc, f1 = _scores(true, np.load(out / "predicted.npy"))
            rows.append({"method": "scvi-tools scanvi (classifier)", "accuracy": acc, "macro_f1": f1,
                         "ilisi": ilisi, "sec_per_epoch": per_epoch, "total_s": total, "seed": seed})
    return rows


def symphony_10k(threads: int) -> dict:
    """Time Symphony-style mapping of a 10,000-cell simulated query onto a 10,000-cell reference."""
    import numpy as np

    from scaml.datasets import simulate
    from scaml.mapping.symphony import build_symphony_reference

    adata = simulate(n_cells=20000, n_genes=2000, n_batches=4, n_cell_types=8, random_state=0)
    is_query = adata.obs["batch"].isin(["batch3", "batch4"]).to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    start = time.perf_counter()
    reference = build_symphony_reference(ref, "batch", label_key="cell_type", random_state=0)
    build = time.perf_counter() - start
    start = time.perf_counter()
    mapped = reference.map(query, query_batch_key="batch", random_state=0)
    seconds = time.perf_counter() - start
    from scaml.mapping.transfer import transfer_labels

    start = time.perf_counter()
    calls = transfer_labels(reference.embedding, ref.obs["cell_type"].to_numpy(), mapped.embedding,
                            n_neighbors=50, threshold=1.0)  # the documented k; scaml map now defaults to auto
    knn = time.perf_counter() - start
    acc = float((calls["label"].to_numpy() == query.obs["cell_type"].astype(str).to_numpy()).mean())
    return {"reference_cells": int(ref.n_obs), "query_cells": int(query.n_obs), "build_s": build,
            "map_s": seconds, "knn_transfer_s": knn, "accuracy": acc,
            "confidence_median": float(np.median(mapped.confidence))}


def _fmt(value, digits=3) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(mean, sd, digits=3) -> str:
    """``mean ± sd`` (just the mean when sd is missing, e.g. with one seed)."""
    text = _fmt(mean, digits)
    if text == "-" or _fmt(sd, digits) == "-":
        return text
    return f"{text} ± {sd:.{digits}f}"


METRICS = ["accuracy", "macro_f1", "ilisi", "sec_per_epoch", "total_s"]


def summarise(table, by: list[str]):
    """Mean, sd (ddof 1) and number of seeds of every metric per group of per-seed rows."""
    grouped = table.groupby(by, sort=False)
    mean = grouped[METRICS].mean()
    sd = grouped[METRICS].std(ddof=1)
    out = mean.join(sd, rsuffix="_sd")
    out["n_seeds"] = grouped["seed"].nunique()
    return out.reset_index()


def print_table(summary, with_split: bool) -> None:
    """Markdown table: mean ± sd of accuracy / F1 / iLISI, mean sec/epoch and total seconds."""
    split_head, split_rule = ("split | ", "---|") if with_split else ("", "")
    print(f"| method | {split_head}n_seeds | accuracy | macro F1 | iLISI (scaled) | sec/epoch | total s |")
    print(f"|---|{split_rule}---|---|---|---|---|---|")
    for _, r in summary.iterrows():
        split = f"{r['split']} | " if with_split else ""
        print(f"| {r['method']} | {split}{int(r['n_seeds'])} | {_pm(r['accuracy'], r['accuracy_sd'])} | "
              f"{_pm(r['macro_f1'], r['macro_f1_sd'])} | {_pm(r['ilisi'], r['ilisi_sd'])} | "
              f"{_fmt(r['sec_per_epoch'], 4)} | {_fmt(r['total_s'], 1)} |")


def print_panc8_mean(table) -> None:
    """Mean over the panc8 hold-outs: per seed the mean over the splits it finished, then mean ± sd over seeds."""
    done = table.dropna(subset=["accuracy"])
    done = done[done["split"].astype(str).str.startswith("panc8")]
    if done["split"].nunique() < 2:
        return
    per_seed = done.groupby(["method", "seed"], sort=False)[METRICS].mean().reset_index()
    print(f"\nMean over the {done['split'].nunique()} panc8 hold-outs (per seed, then mean ± sd over seeds):")
    print_table(summarise(per_seed, ["method"]), with_split=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peer-python", default=None, help="python of the venv with scvi-tools, celltypist and symphonypy")
    parser.add_argument("--peers", nargs="+", default=["scvi", "scanvi", "celltypist", "symphonypy"])
    parser.add_argument("--methods", nargs="+", default=["scvi", "scanvi", "symphony"])
    parser.add_argument("--splits", nargs="+", default=["panc8", "kang"])
    parser.add_argument("--panc8-queries", nargs="+", default=None, metavar="TECH",
                        help="only these panc8 hold-outs (e.g. celseq2 indrop; default: every technology)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the VAE runs (each VAE method runs once per seed; default 0 1 2)")
    parser.add_argument("--data", default=str(DATA), help="folder of the h5ad files (default ../shared/data/h5ad)")
    parser.add_argument("--ref-epochs", type=int, default=100)
    parser.add_argument("--query-epochs", type=int, default=50)
    parser.add_argument("--n-hvg", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-10k", action="store_true", help="skip the 10k-cell Symphony timing")
    parser.add_argument("--csv", default=None, help="also write the per-seed rows to this CSV")
    parser.add_argument("--model-param", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of scaml's VAE methods that take it (JSON value), e.g. "
                             "classifier_layers=1; repeatable")
    args = parser.parse_args(argv)
    args.model_params = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.model_param)}
    if args.peer_worker is not None:
        print(json.dumps(_peer_worker(json.loads(args.peer_worker))))
        return 0

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import anndata as ad
    import pandas as pd
    import torch

    from scaml._utils import set_quiet
    from scaml.errors import ScamlError

    torch.set_num_threads(args.threads)
    set_quiet(True)
    seeds = list(dict.fromkeys(args.seeds))  # unique, in the given order
    data = Path(args.data)
    splits = []
    if "panc8" in args.splits:
        panc8 = ad.read_h5ad(data / "panc8_small.h5ad")
        for tech in sorted(panc8.obs["batch"].astype(str).unique()):
            if args.panc8_queries is not None and tech not in args.panc8_queries:
                continue
            splits.append((f"panc8 {tech}", panc8, (panc8.obs["batch"].astype(str) == tech).to_numpy()))
    if "kang" in args.splits:
        kang = ad.read_h5ad(data / "kang_ifnb1k.h5ad")
        splits.append(("kang STIM", kang, (kang.obs["batch"].astype(str) == "STIM").to_numpy()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mapping_") as tmp:
        for name, adata, mask in splits:
            workdir = Path(tmp) / name.replace(" ", "_")
            ref, query, full_ref, full_query = _prepare_split(adata, mask, args.n_hvg, workdir)
            print(f"== {name}: reference {ref.n_obs} cells, query {query.n_obs} cells, {ref.n_vars} genes",
                  file=sys.stderr)
            for method in args.methods:
                for seed in seeds:
                    try:
                        # every gene: scaml chooses its own HVGs (as `scaml reference build --n-hvg` does),
                        # and the reference's expression classifier reads every gene
                        scaml_rows = run_scaml(method, full_ref, full_query, args, workdir, seed)
                    except ImportError as exc:  # a part of scaml that this checkout lacks
                        print(f"  scaml {method} unavailable: {exc}", file=sys.stderr)
                        break
                    except ScamlError as exc:  # e.g. Symphony needs >= 2 reference batches
                        print(f"  scaml {method} refused this split: {exc}", file=sys.stderr)
                        rows.append({"split": name, "method": f"scaml {method} (n/a: {str(exc)[:60]})",
                                     "seed": seed})
                        break
                    for row in scaml_rows:
                        rows.append({"split": name, "seed": seed, **row})
                        print("  ", rows[-1], file=sys.stderr)
            if args.peer_python:
                for row in run_peers(ref, query, args, workdir, seeds):
                    rows.append({"split": name, **row})
                    print("  ", rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows, columns=["method", "split", "seed", *METRICS])
    table[METRICS] = table[METRICS].astype(float)
    if args.csv:
        table.to_csv(args.csv, index=False)
    print(f"\nReference mapping: {args.ref_epochs} reference + {args.query_epochs} query epochs, "
          f"{args.threads} torch thread(s), kNN k=auto without Unknown calls; VAE seeds "
          f"{' '.join(map(str, seeds))} (mean ± sd over seeds; sec/epoch and total s: mean)")
    print_table(summarise(table, ["method", "split"]), with_split=True)
    print_panc8_mean(table)
    if not args.no_10k:
        try:
            res = symphony_10k(args.threads)
        except ImportError as exc:
            print(f"\nSymphony 10k timing skipped: {exc}")
        else:
            print(f"\nSymphony-style mapping of {res['query_cells']} simulated query cells onto "
                  f"{res['reference_cells']} reference cells (2000 genes): map {res['map_s']:.2f} s, "
                  f"kNN label transfer {res['knn_transfer_s']:.2f} s (reference build {res['build_s']:.1f} s); "
                  f"accuracy {res['accuracy']:.3f}, median mapping confidence {res['confidence_median']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
