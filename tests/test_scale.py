"""Every command once at a real size: >= 20,000 simulated cells, through the command line.

scanpy, pynndescent and scikit-learn switch algorithms with size (scanpy's neighbours change at
8,192 cells), so a path that only ran on a few hundred cells is untested. Gene panels are small
and training is short so that the module stays within a couple of minutes on 2 cores; the
assertions check that each command finished, wrote its outputs, and got a sensible answer on
data whose truth is known (simulated cell types and batches).
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scaml.cli import main

pytestmark = pytest.mark.slow

#: Cells of the three reference batches (after QC at least 20,000 remain); the fourth batch is the query.
N_REFERENCE_CELLS = 21_500
N_GENES = 300


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> dict[str, Path]:
    """A 4-batch simulation: all cells, the reference batches (>= 20k cells) and the query batch, as h5ad."""
    from scaml.datasets import simulate

    folder = tmp_path_factory.mktemp("scale")
    adata = simulate(n_cells=int(N_REFERENCE_CELLS * 4 / 3), n_genes=N_GENES, n_batches=4, n_cell_types=6,
                     n_markers=15, mean_library_size=1500, low_quality_fraction=0.0, random_state=0)
    adata.obs["is_foreign"] = (adata.obs["cell_type"] == adata.obs["cell_type"].cat.categories[0]).astype(str)
    reference = adata[adata.obs["batch"] != "batch4"].copy()
    query = adata[adata.obs["batch"] == "batch4"].copy()
    assert reference.n_obs >= 20_000
    paths = {"all": folder / "all.h5ad", "reference": folder / "reference.h5ad", "query": folder / "query.h5ad",
             "folder": folder}
    adata.write_h5ad(paths["all"])
    reference.write_h5ad(paths["reference"])
    query.write_h5ad(paths["query"])
    return paths


def _scaml(*argv: str) -> None:
    code = main([*map(str, argv), "--quiet"])
    assert code == 0, f"scaml {' '.join(map(str, argv))} exited with {code}"


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def integrated(big) -> Path:
    out = big["folder"] / "integrate"
    _scaml("integrate", big["reference"], "--batch-key", "batch", "--label-key", "cell_type", "--out", out,
           "--min-genes", "20", "--max-pct-mito", "60", "--n-hvg", "250", "--n-pcs", "20", "--resolutions", "0.1", "0.3")
    return out


def test_integrate_chunked_at_20k_cells(big, integrated):
    """The chunked path through the CLI (5 chunks, UMAPs and metrics on an 8,000-cell sample, as a million
    cells would run): the same cells, HVGs and clusters as in memory."""
    out = big["folder"] / "integrate_chunked"
    _scaml("integrate", big["reference"], "--batch-key", "batch", "--label-key", "cell_type", "--out", out,
           "--min-genes", "20", "--max-pct-mito", "60", "--n-hvg", "250", "--n-pcs", "20", "--resolutions", "0.1", "0.3",
           "--chunked", "--chunk-cells", "5000", "--umap-max-cells", "8000")
    chunked, memory = ad.read_h5ad(out / "integrated.h5ad"), ad.read_h5ad(integrated / "integrated.h5ad")
    assert chunked.n_obs == memory.n_obs >= 20_000
    assert np.array_equal(chunked.var["highly_variable"].to_numpy(), memory.var["highly_variable"].to_numpy())
    P, Q = chunked.obsm["X_pca_harmony"], memory.obsm["X_pca_harmony"]
    assert min(np.corrcoef(P[:, i], Q[:, i])[0, 1] for i in range(P.shape[1])) > 0.999
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(chunked.obs["leiden"], memory.obs["leiden"]) > 0.9
    run = _json(out / "run.json")
    assert run["data"]["chunked"]["n_chunks"] == 5 and run["data"]["chunked"]["engine"] == "in-process"
    assert abs(chunked.X[:50] - memory.X[:50]).max() < 1e-4
    # the sampled UMAP: every cell has coordinates, 8,000 were laid out, the Leiden graph has every cell
    assert int(chunked.obs["umap_sample"].sum()) == 8000 == run["data"]["umap_sample"]["cells"]
    assert np.isfinite(chunked.obsm["X_umap"]).all() and np.isfinite(chunked.obsm["X_umap_uncorrected"]).all()
    assert chunked.obsp["connectivities"].shape == (chunked.n_obs, chunked.n_obs)
    assert adjusted_rand_score(chunked.obs["cell_type"], chunked.obs["leiden_0.1"]) > 0.9
    metrics = pd.read_csv(out / "metrics.csv", index_col="embedding")  # on the sample
    assert metrics.loc["X_pca_harmony", "ilisi"] > metrics.loc["X_pca", "ilisi"]


def test_integrate_at_20k_cells(integrated):
    run = _json(integrated / "run.json")
    assert run["data"]["after_qc"]["n_cells"] >= 20_000  # above scanpy's 8,192-cell switch
    adata = ad.read_h5ad(integrated / "integrated.h5ad")
    assert adata.obsm["X_pca_harmony"].shape == (adata.n_obs, 20)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 15
    # the six simulated types are recovered and the batches are mixed better after Harmony
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden_0.1"]) > 0.9
    metrics = pd.read_csv(integrated / "metrics.csv", index_col="embedding")
    assert metrics.loc["X_pca_harmony", "ilisi"] > metrics.loc["X_pca", "ilisi"]
    assert (integrated / "report.html").is_file()


def test_evaluate_at_20k_cells(integrated):
    out = integrated.parent / "evaluate"
    _scaml("evaluate", integrated / "integrated.h5ad", "--batch-key", "batch", "--label-key", "cell_type",
           "--embeddings", "X_pca", "X_pca_harmony", "--out", out)
    table = pd.read_csv(out / "metrics.csv", index_col="embedding")
    assert list(table.index) == ["X_pca", "X_pca_harmony"]
    assert table.loc["X_pca_harmony", "ilisi"] > table.loc["X_pca", "ilisi"]
    assert table.loc["X_pca_harmony", "graph_connectivity"] > 0.9


def test_train_four_models_at_20k_cells(big):
    out = big["folder"] / "train"
    _scaml("train", "--adata", big["reference"], "--label-key", "cell_type", "--split-key", "batch",
           "--split-train", "batch1", "--split-test", "batch2", "batch3", "--n-hvg", "200",
           "--models", "lr", "rf", "xgb", "mlp", "--outdir", out,
           "--param", "rf.n_estimators=20", "xgb.n_estimators=10", "mlp.max_iter=20")
    summary = _json(out / "summary_metrics.json")
    for model in ("lr", "rf", "xgb", "mlp"):
        assert summary[model]["accuracy"] > 0.9, (model, summary[model])


def test_learning_curve_at_20k_cells(big):
    out = big["folder"] / "curve"
    _scaml("learning-curve", "--adata", big["reference"], "--label-key", "cell_type", "--group-key", "batch",
           "--model", "lr", "--sizes", "0.05", "1", "--repeats", "1", "--n-hvg", "200", "--outdir", out)
    curve = pd.read_csv(out / "learning_curve_summary.csv")
    assert len(curve) >= 2 and (out / "run.json").is_file()


def test_novelty_at_20k_cells(big):
    out = big["folder"] / "novelty"
    _scaml("novelty", "--adata", big["reference"], "--hek-key", "is_foreign", "--hek-positive", "True",
           "--n-hvg", "200", "--outdir", out)  # the default method (knn, Harmony over obs["batch"])
    metrics = _json(out / "novelty_metrics.json")
    # the held-out type has its own marker genes: its cells are far from every other cell
    assert metrics["auroc"] > 0.8, metrics
    assert (out / "novelty_scores.csv").is_file()


@pytest.mark.parametrize("method", ["scvi", "trvae", "scanvi", "symphony"])
def test_reference_build_and_map_at_20k_cells(big, method):
    ref = big["folder"] / f"ref_{method}"
    args = ["reference", "build", big["reference"], "--method", method, "--batch-key", "batch",
            "--label-key", "cell_type", "--out", ref, "--n-hvg", str(N_GENES)]
    if method != "symphony":
        args += ["--max-epochs", "8", "--n-latent", "8", "--hidden-layers", "32", "--batch-size", "512"]
    _scaml(*args)
    manifest = _json(ref / "reference.json")
    assert manifest["n_cells"] >= 20_000
    mapped_dir = big["folder"] / f"map_{method}"
    map_args = ["map", "--reference", ref, "--query", big["query"], "--out", mapped_dir, "--label-key", "cell_type"]
    if method != "symphony":
        map_args += ["--max-epochs", "4"]
    if method != "scvi":  # the joint UMAP's code is the same for every method: draw it once
        map_args += ["--no-umap"]
    _scaml(*map_args)
    mapped = ad.read_h5ad(mapped_dir / "mapped.h5ad")
    query = ad.read_h5ad(big["query"])
    assert mapped.n_obs == query.n_obs
    assert np.isfinite(mapped.obsm["X_scaml_latent"]).all()
    metrics = _json(mapped_dir / "metrics.json")
    # simulated types with strong markers: a few epochs transfer most labels
    assert metrics["weighted_knn_no_unknown"]["accuracy"] > 0.8, metrics
    # the reference's expression classifier was fitted on the 20k cells and averaged into the calls
    assert manifest["expression_classifier"]["n_cells"] >= 20_000
    assert metrics["expression_classifier"]["accuracy"] > 0.8 and "knn_only" in metrics, metrics
