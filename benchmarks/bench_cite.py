"""CITE-seq: scaml's TOTALVI against an RNA-only SCVI latent and scvi-tools' TOTALVI.

On the two 10x PBMC CITE-seq samples (``../shared/data/cite/pbmc_protein_5k10k.h5ad``: 200 pbmc5k cells
with 29 proteins, 200 pbmc10k cells with 14 of them; ``batch`` is the sample), on 2000 highly variable
genes (scaml's per-batch HVG rule, as ``scaml reference build``):

a. **Protein neighbourhoods**: for every cell, the share of its 15 nearest neighbours in a latent
   space that are also among its 15 nearest neighbours in protein CLR space (the 14 proteins of both
   panels; CLR per cell, Euclidean), averaged over cells. Latents: scaml TOTALVI (RNA + protein),
   scaml SCVI (RNA only) and scvi-tools TOTALVI, each trained on both samples with ``batch`` as the
   condition.
b. **Imputation of held-out proteins**: 5 proteins shared by both panels (CD3, CD4, CD8a, CD14,
   CD19) are set to 0 in pbmc10k, so that the models see them as not measured there (masked); the
   models train on both samples and impute them for the pbmc10k cells (the expected count with
   background, decoded as pbmc5k, the batch that measured them: scaml's default imputation and
   scvi-tools' ``get_normalized_expression(transform_batch="pbmc5k", include_protein_background=True)``).
   Scored against the measured counts: Pearson r of log1p values and RMSE of log1p values per protein.
   A baseline without a protein model: each pbmc10k cell gets the mean log1p count of its 15 nearest
   pbmc5k cells in the RNA-only SCVI latent.
c. **scvi-tools** ``TOTALVI`` runs in another venv (``--peer-python``, a python with scvi-tools) in a
   subprocess (``--peer-worker``) on the same cells and genes; ratios scaml / scvi-tools are printed.

Every model trains ``--epochs`` epochs (each tool's own defaults otherwise: scaml lr 1e-3, batch 128;
scvi-tools lr 4e-3, batch 256, its early stopping) with ``--n-latent`` dimensions (default 20,
scvi-tools' totalVI default), one thread, for each seed of ``--seeds``.

Usage::

    python benchmarks/bench_cite.py
    python benchmarks/bench_cite.py --peer-python /path/to/venv/bin/python --epochs 200 --seeds 0 1 2
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
HELD_OUT = ["CD3_TotalSeqB", "CD4_TotalSeqB", "CD8a_TotalSeqB", "CD14_TotalSeqB", "CD19_TotalSeqB"]
QUERY_BATCH, FULL_BATCH = "pbmc10k", "pbmc5k"
K = 15


def knn_sets(X: np.ndarray, k: int = K) -> np.ndarray:
    """Indices of each row's ``k`` nearest other rows (Euclidean, exact)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X, return_distance=False)
    return idx[:, 1:]


def neighbour_overlap(latent: np.ndarray, reference_sets: np.ndarray) -> float:
    """Mean over cells of the share of the latent's k neighbours that are among the reference neighbours."""
    sets = knn_sets(latent, reference_sets.shape[1])
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(sets, reference_sets, strict=True)]))


def imputation_scores(imputed: pd.DataFrame, measured: pd.DataFrame) -> pd.DataFrame:
    """Per protein: Pearson r and RMSE of log1p(imputed) against log1p(measured)."""
    rows = {}
    for p in measured.columns:
        a, b = np.log1p(imputed[p].to_numpy(float)), np.log1p(measured[p].to_numpy(float))
        rows[p.removesuffix("_TotalSeqB")] = {"r": float(np.corrcoef(a, b)[0, 1]),
                                             "rmse": float(np.sqrt(np.mean((a - b) ** 2)))}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- scvi-tools (peer venv)

def peer_worker(task: dict) -> None:
    """Run in the peer venv: scvi-tools' TOTALVI on the full and on the masked cells."""
    import anndata as ad
    import scvi
    import torch

    torch.set_num_threads(1)
    out: dict[str, np.ndarray] = {}
    for name in ("full", "masked"):
        scvi.settings.seed = int(task["seed"])
        adata = ad.read_h5ad(task[name])
        scvi.model.TOTALVI.setup_anndata(adata, batch_key="batch", protein_expression_obsm_key="protein_expression")
        model = scvi.model.TOTALVI(adata, n_latent=int(task["n_latent"]))
        t = time.perf_counter()
        model.train(max_epochs=int(task["epochs"]), accelerator="cpu", enable_progress_bar=False)
        out[f"{name}_seconds"] = np.asarray(time.perf_counter() - t)
        out[f"{name}_epochs"] = np.asarray(len(model.history["elbo_train"]))
        out[f"{name}_latent"] = model.get_latent_representation()
        if name == "masked":
            rows = np.flatnonzero((adata.obs["batch"] == QUERY_BATCH).to_numpy())
            _, proteins = model.get_normalized_expression(
                indices=rows, transform_batch=FULL_BATCH, include_protein_background=True, n_samples=25,
                return_mean=True, return_numpy=False,
            )
            out["imputed"] = proteins[HELD_OUT].to_numpy()
    out["version"] = np.asarray(scvi.__version__)
    np.savez(task["out"], **out)


def run_peer(peer_python: str, task: dict) -> dict | None:
    try:
        proc = subprocess.run([peer_python, __file__, "--peer-worker", json.dumps(task)], capture_output=True,
                              text=True, timeout=3600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"scvi-tools TOTALVI failed: {exc}")
        return None
    if proc.returncode != 0:
        print("scvi-tools TOTALVI failed:", "\n".join(proc.stderr.strip().splitlines()[-5:]))
        return None
    got = np.load(task["out"])
    return {k: got[k] for k in got.files}


# ----------------------------------------------------------------------------- scaml

def scaml_runs(full, masked, seed: int, epochs: int, n_latent: int) -> dict:
    """scaml's TOTALVI on the full and masked cells, and SCVI (RNA only) on the full cells."""
    from scaml.vae import SCVI, TOTALVI

    fast = {"verbose": False, "n_threads": 1}
    out: dict = {}
    t = time.perf_counter()
    model = TOTALVI(full, "batch", n_latent=n_latent, random_state=seed).train(max_epochs=epochs, **fast)
    out["full_seconds"], out["full_latent"] = time.perf_counter() - t, model.get_latent()
    t = time.perf_counter()
    rna = SCVI(full, "batch", n_latent=n_latent, random_state=seed).train(max_epochs=epochs, **fast)
    out["scvi_seconds"], out["scvi_latent"] = time.perf_counter() - t, rna.get_latent()
    t = time.perf_counter()
    model = TOTALVI(masked, "batch", n_latent=n_latent, random_state=seed).train(max_epochs=epochs, **fast)
    out["masked_seconds"] = time.perf_counter() - t
    rows = (masked.obs["batch"] == QUERY_BATCH).to_numpy()
    imputed = model.get_normalized_protein(include_background=True)
    assert set(HELD_OUT) <= set(imputed.attrs["imputed"])
    out["imputed"] = imputed.loc[rows, HELD_OUT].to_numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=200, help="training epochs of every model")
    parser.add_argument("--n-latent", type=int, default=20, help="latent dimensions of every model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--peer-python", default=os.environ.get("SCAML_PEER_PYTHON"),
                        help="python of a venv with scvi-tools (or env SCAML_PEER_PYTHON)")
    parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer_worker:
        peer_worker(json.loads(args.peer_worker))
        return

    import anndata as ad

    from scaml._utils import set_quiet
    from scaml.cite import clr
    from scaml.preprocess import highly_variable_genes, log_normalize

    set_quiet(True)
    path = SHARED / "cite" / "pbmc_protein_5k10k.h5ad"
    if not path.exists():
        sys.exit(f"{path} not found")
    adata = ad.read_h5ad(path)
    mask = highly_variable_genes(log_normalize(adata.X), 2000, batch=adata.obs["batch"].to_numpy(),
                                 var_names=adata.var_names)
    full = ad.AnnData(X=adata.X[:, mask].copy(), obs=adata.obs[["batch"]].copy(),
                      var=pd.DataFrame(index=adata.var_names[mask]))
    full.obs["batch"] = full.obs["batch"].astype("category")
    full.obsm["protein_expression"] = adata.obsm["protein_expression"].astype(np.float32)
    proteins = full.obsm["protein_expression"]
    missing = set(map(str, adata.uns["protein_panel_missing"][QUERY_BATCH]))
    shared = [p for p in proteins.columns if p not in missing]
    rows = (full.obs["batch"] == QUERY_BATCH).to_numpy()
    masked = full.copy()
    masked.obsm["protein_expression"] = proteins.copy()
    masked.obsm["protein_expression"].loc[rows, HELD_OUT] = 0.0
    measured = proteins.loc[rows, HELD_OUT]
    print(f"{path.name}: {full.n_obs} cells ({full.obs['batch'].value_counts().to_dict()}) x {full.n_vars} HVGs; "
          f"{proteins.shape[1]} proteins, {len(shared)} on both panels; held out in {QUERY_BATCH}: "
          f"{', '.join(p.removesuffix('_TotalSeqB') for p in HELD_OUT)}")
    protein_sets = knn_sets(clr(proteins[shared].to_numpy()))

    overlap: dict[str, list[float]] = {}
    seconds: dict[str, list[float]] = {}
    scores: dict[str, list[pd.DataFrame]] = {}
    version = None
    with tempfile.TemporaryDirectory() as tmp:
        full.write_h5ad(f"{tmp}/full.h5ad")
        masked.write_h5ad(f"{tmp}/masked.h5ad")
        for seed in args.seeds:
            res = scaml_runs(full, masked, seed, args.epochs, args.n_latent)
            overlap.setdefault("scaml TOTALVI", []).append(neighbour_overlap(res["full_latent"], protein_sets))
            overlap.setdefault("scaml SCVI (RNA only)", []).append(neighbour_overlap(res["scvi_latent"], protein_sets))
            seconds.setdefault("scaml TOTALVI", []).append(res["full_seconds"])
            seconds.setdefault("scaml SCVI (RNA only)", []).append(res["scvi_seconds"])
            scores.setdefault("scaml TOTALVI", []).append(
                imputation_scores(pd.DataFrame(res["imputed"], columns=HELD_OUT), measured))
            # baseline: mean log1p protein of the 15 nearest pbmc5k cells in the RNA-only latent
            from sklearn.neighbors import NearestNeighbors

            z = res["scvi_latent"]
            nn = NearestNeighbors(n_neighbors=K).fit(z[~rows]).kneighbors(z[rows], return_distance=False)
            source = np.log1p(proteins.loc[~rows, HELD_OUT].to_numpy())
            baseline = np.expm1(source[nn].mean(axis=1))
            scores.setdefault("RNA kNN (SCVI latent)", []).append(
                imputation_scores(pd.DataFrame(baseline, columns=HELD_OUT), measured))
            if args.peer_python:
                task = {"full": f"{tmp}/full.h5ad", "masked": f"{tmp}/masked.h5ad", "seed": seed,
                        "epochs": args.epochs, "n_latent": args.n_latent, "out": f"{tmp}/peer_{seed}.npz"}
                got = run_peer(args.peer_python, task)
                if got is not None:
                    version = str(got["version"])
                    name = f"scvi-tools {version} TOTALVI"
                    overlap.setdefault(name, []).append(neighbour_overlap(got["full_latent"], protein_sets))
                    seconds.setdefault(name, []).append(float(got["full_seconds"]))
                    scores.setdefault(name, []).append(
                        imputation_scores(pd.DataFrame(got["imputed"], columns=HELD_OUT), measured))
                    print(f"  seed {seed}: scvi-tools ran {int(got['full_epochs'])} / {int(got['masked_epochs'])} "
                          "epochs (full / masked)")
            print(f"  seed {seed} done")

    pd.set_option("display.width", 200)
    print(f"\n(a) protein-neighbour overlap: share of each cell's {K} latent neighbours that are among its {K} "
          f"neighbours in protein CLR space ({len(shared)} shared proteins); mean over cells, then mean ± SD over "
          f"seeds {args.seeds}; {args.epochs} epochs, n_latent {args.n_latent}")
    table_a = pd.DataFrame({name: {"overlap": np.mean(v), "sd": np.std(v), "train_seconds": np.mean(seconds[name])}
                            for name, v in overlap.items()}).T
    print(table_a.round(3).to_string())
    print(f"\n(b) imputation of {len(HELD_OUT)} proteins held out in {QUERY_BATCH} ({int(rows.sum())} cells): "
          "Pearson r and RMSE of log1p(imputed) vs log1p(measured), mean over seeds")
    per_protein = {name: sum(frames) / len(frames) for name, frames in scores.items()}
    wide = pd.concat({name: frame for name, frame in per_protein.items()}, axis=1)
    print(wide.round(3).to_string())
    summary = pd.DataFrame({name: {"mean_r": frame["r"].mean(), "mean_rmse": frame["rmse"].mean()}
                            for name, frame in per_protein.items()}).T
    print(summary.round(3).to_string())
    peer = next((n for n in overlap if n.startswith("scvi-tools")), None)
    if peer is not None:
        print(f"\n(c) ratios scaml TOTALVI / {peer}: overlap "
              f"{np.mean(overlap['scaml TOTALVI']) / np.mean(overlap[peer]):.3f}, imputation mean r "
              f"{summary.loc['scaml TOTALVI', 'mean_r'] / summary.loc[peer, 'mean_r']:.3f}, RMSE "
              f"{summary.loc['scaml TOTALVI', 'mean_rmse'] / summary.loc[peer, 'mean_rmse']:.3f}, training time "
              f"{np.mean(seconds['scaml TOTALVI']) / np.mean(seconds[peer]):.3f}")
    else:
        print("\n(c) scvi-tools not run (pass --peer-python PYTHON of a venv with scvi-tools)")


if __name__ == "__main__":
    main()
