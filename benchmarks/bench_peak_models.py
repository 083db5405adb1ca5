"""scATAC-seq peak models: scaml's PEAKVI / POISSONVI against LSI -> Harmony (and scvi-tools' PEAKVI / POISSONVI).

On the Granja et al. 2019 bone marrow peaks (``../shared/data/atac/granja_bmmc_atac.h5ad``: 600 cells,
5000 peaks, two donors in ``batch``, six ``cell_type``), after scaml's ATAC QC (as bench_atac.py: >= 10
counts and >= 10 peaks per cell, peaks in >= 3 cells):

1. **Integration**: the latent of PEAKVI (Bernoulli on binarised peaks) and POISSONVI (Poisson on the
   counts), trained on both donors with ``batch`` as the condition, against the LSI and LSI -> Harmony of
   :func:`scaml.pipeline.integrate`; every embedding scored by :func:`scaml.metrics.evaluate_embeddings`
   (iLISI, cLISI, ARI / NMI of Leiden; one neighbour search each).
2. **Mapping**: each donor in turn as the reference, the other as the query (architecture surgery, new
   batch weights only); label-transfer accuracy of a 15-NN classifier from the reference latent to the
   query latent. For LSI -> Harmony the same kNN on the joint Harmony embedding (both donors integrated
   together, so that row is an upper bound rather than a mapping).

With ``--peer-python PYTHON`` (a venv with scvi-tools), scvi-tools' ``PEAKVI`` and ``POISSONVI``
(``scvi.external``) are trained the same way in a subprocess (``--peer-worker``) and scored alike, their
query through ``load_query_data``. Every model trains for ``--epochs`` (query: half), seed 0, 1 thread.

Usage::

    python benchmarks/bench_peak_models.py
    python benchmarks/bench_peak_models.py --peer-python /path/to/venv/bin/python --epochs 200
"""

from __future__ import annotations

import os

THREADS = os.environ.get("BENCH_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCAML_SHARED_DATA", ROOT.parent / "shared" / "data"))


def transfer_accuracy(z_ref: np.ndarray, y_ref: np.ndarray, z_query: np.ndarray, y_query: np.ndarray) -> float:
    """Accuracy of a 15-NN classifier trained on the reference latent, on the query latent."""
    from sklearn.neighbors import KNeighborsClassifier

    return float((KNeighborsClassifier(15).fit(z_ref, y_ref).predict(z_query) == y_query).mean())


# ----------------------------------------------------------------------------- scvi-tools (peer venv)

def peer_worker(task: dict) -> None:
    """Run in the peer venv: train scvi-tools' model on all cells and per donor (reference + query)."""
    import anndata as ad
    import scvi
    import torch

    torch.set_num_threads(1)
    scvi.settings.seed = 0
    cls = scvi.model.PEAKVI if task["model"] == "PEAKVI" else scvi.external.POISSONVI
    adata = ad.read_h5ad(task["path"])
    epochs = int(task["epochs"])
    out: dict[str, np.ndarray] = {}
    t = time.perf_counter()
    full = adata.copy()
    cls.setup_anndata(full, batch_key="batch")
    model = cls(full)
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    out["all"] = model.get_latent_representation()
    for ref_batch in sorted(adata.obs["batch"].unique()):
        ref = adata[adata.obs["batch"] == ref_batch].copy()
        query = adata[adata.obs["batch"] != ref_batch].copy()
        cls.setup_anndata(ref, batch_key="batch")
        rmodel = cls(ref)
        rmodel.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
        out[f"ref_{ref_batch}"] = rmodel.get_latent_representation()
        qmodel = cls.load_query_data(query, rmodel)
        qmodel.train(max_epochs=max(1, epochs // 2), accelerator="cpu", enable_progress_bar=False,
                     plan_kwargs={"weight_decay": 0.0})
        out[f"query_{ref_batch}"] = qmodel.get_latent_representation()
    out["seconds"] = np.asarray(time.perf_counter() - t)
    out["version"] = np.asarray(scvi.__version__)
    np.savez(task["out"], **out)


def run_peer(peer_python: str, model: str, counts_path: str, epochs: int, tmp: str) -> dict | None:
    task = {"model": model, "path": counts_path, "epochs": epochs, "out": f"{tmp}/{model}.npz"}
    try:
        proc = subprocess.run([peer_python, __file__, "--peer-worker", json.dumps(task)], capture_output=True,
                              text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"scvi-tools {model} failed: {exc}")
        return None
    if proc.returncode != 0:
        print(f"scvi-tools {model} failed: {proc.stderr.strip().splitlines()[-3:]}")
        return None
    got = np.load(task["out"])
    return {k: got[k] for k in got.files}


# ----------------------------------------------------------------------------- scaml

def scaml_model(name: str, adata, epochs: int) -> dict:
    """scaml's PEAKVI / POISSONVI on all cells, then per donor (reference + surgery query)."""
    import anndata as ad

    from scaml.vae import PEAKVI, POISSONVI, load_query

    cls = {"PEAKVI": PEAKVI, "POISSONVI": POISSONVI}[name]
    counts = ad.AnnData(X=adata.layers["counts"].copy(), obs=adata.obs[["batch", "cell_type"]].copy(),
                        var=pd.DataFrame(index=adata.var_names))
    fast = {"verbose": False, "n_threads": 1}
    out: dict = {}
    t = time.perf_counter()
    out["all"] = cls(counts, "batch", random_state=0).train(max_epochs=epochs, **fast).get_latent()
    for ref_batch in sorted(counts.obs["batch"].unique()):
        ref = counts[counts.obs["batch"] == ref_batch].copy()
        query = counts[counts.obs["batch"] != ref_batch].copy()
        model = cls(ref, "batch", random_state=0).train(max_epochs=epochs, **fast)
        out[f"ref_{ref_batch}"] = model.get_latent()
        qmodel = load_query(model, query).train(max_epochs=max(1, epochs // 2), **fast)
        out[f"query_{ref_batch}"] = qmodel.get_latent(query)
    out["seconds"] = time.perf_counter() - t
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200, help="reference training epochs (query: half)")
    parser.add_argument("--peer-python", default=None, help="python of a venv with scvi-tools")
    parser.add_argument("--cache", default=None,
                        help="pickle file of the trained latents: read when it exists, else written (re-scoring)")
    parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        peer_worker(json.loads(args.peer_worker))
        return

    import anndata as ad

    from scaml._utils import set_quiet
    from scaml.metrics import evaluate_embeddings
    from scaml.pipeline import integrate

    set_quiet(True)
    path = SHARED / "atac" / "granja_bmmc_atac.h5ad"
    if not path.exists():
        sys.exit(f"{path} not found")
    adata = integrate(path, "batch", None, label_key="cell_type", n_pcs=30, evaluate=False, random_state=0,
                      atac_params={"min_counts": 10, "min_peaks": 10})
    print(f"Granja: {adata.n_obs} cells x {adata.n_vars} peaks after QC; donors "
          f"{adata.obs['batch'].value_counts().to_dict()}")
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    batches = adata.obs["batch"].astype(str).to_numpy()
    donors = sorted(set(batches))
    results: dict[str, dict] = {}
    if args.cache and Path(args.cache).exists():
        with open(args.cache, "rb") as fh:
            results = pickle.load(fh)
    for name in ("PEAKVI", "POISSONVI"):
        if f"scaml {name}" not in results:
            results[f"scaml {name}"] = scaml_model(name, adata, args.epochs)
    if args.peer_python and not any(k.startswith("scvi-tools") for k in results):
        with tempfile.TemporaryDirectory() as tmp:
            counts = ad.AnnData(X=adata.layers["counts"].copy(), obs=adata.obs[["batch", "cell_type"]].copy(),
                                var=pd.DataFrame(index=adata.var_names))
            counts.write_h5ad(f"{tmp}/counts.h5ad")
            for name in ("PEAKVI", "POISSONVI"):
                got = run_peer(args.peer_python, name, f"{tmp}/counts.h5ad", args.epochs, tmp)
                if got is not None:
                    results[f"scvi-tools {got['version']} {name}"] = got
    if args.cache:
        with open(args.cache, "wb") as fh:
            pickle.dump(results, fh)
    keys = {"LSI": "X_lsi", "LSI -> Harmony": "X_lsi_harmony"}
    for label, res in results.items():
        key = "X_" + label.replace(" ", "_").replace(".", "")
        adata.obsm[key] = np.asarray(res["all"], dtype=np.float32)
        keys[label] = key
    table = evaluate_embeddings(adata, batch_key="batch", label_key="cell_type", embeddings=list(keys.values()),
                                reference="X_lsi", random_state=0)
    if "embedding" in table.columns:
        table = table.set_index("embedding")
    names = {v: k for k, v in keys.items()}
    table.index = [names.get(str(i), str(i)) for i in table.index]
    cols = [c for c in ("ilisi", "clisi", "ari", "nmi") if c in table.columns]
    table = table[cols].copy()
    for label in table.index:
        accs = []
        for ref_donor in donors:
            ref_rows, query_rows = batches == ref_donor, batches != ref_donor
            if label in results:
                z_ref, z_query = results[label][f"ref_{ref_donor}"], results[label][f"query_{ref_donor}"]
            else:  # LSI / Harmony: both donors in one embedding
                z = adata.obsm[keys[label]]
                z_ref, z_query = z[ref_rows], z[query_rows]
            accs.append(transfer_accuracy(z_ref, labels[ref_rows], z_query, labels[query_rows]))
        table.loc[label, "transfer_acc"] = float(np.mean(accs))
        table.loc[label, "transfer_acc_by_ref"] = " / ".join(f"{a:.3f}" for a in accs)
        table.loc[label, "seconds"] = float(results[label]["seconds"]) if label in results else np.nan
    pd.set_option("display.width", 200)
    print(f"\nreference epochs {args.epochs}, query {max(1, args.epochs // 2)}; transfer: 15-NN from one donor "
          f"({' / '.join(donors)} as reference) to the other")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
