"""End-to-end tests of the integration pipeline and `scaml integrate` on small simulated data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from scaml.cli import main
from scaml.datasets import simulate


@pytest.fixture(scope="module")
def integrated_run(tmp_path_factory):
    """Run `scaml integrate` once on simulated counts; several tests read its outputs."""
    root = tmp_path_factory.mktemp("integrate")
    adata = simulate(n_cells=900, n_genes=600, n_batches=3, n_cell_types=4, n_markers=15, random_state=1)
    path = root / "counts.h5ad"
    adata.write_h5ad(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = root / "out"
    code = main(["integrate", str(path), "--batch-key", "batch", "--label-key", "cell_type", "--out", str(out),
                 "--min-genes", "50", "--n-hvg", "400", "--n-pcs", "15", "--resolutions", "0.3", "0.5", "0.8",
                 "--quiet"])
    return {"code": code, "out": out, "input": path, "digest": digest}


def test_integrate_succeeds_and_keeps_input(integrated_run):
    assert integrated_run["code"] == 0
    assert hashlib.sha256(integrated_run["input"].read_bytes()).hexdigest() == integrated_run["digest"]
    assert not list(integrated_run["out"].rglob("*.tmp"))


def test_integrated_h5ad_has_every_key(integrated_run):
    import anndata as ad

    adata = ad.read_h5ad(integrated_run["out"] / "integrated.h5ad")
    for key in ("X_pca", "X_pca_harmony", "X_umap", "X_umap_uncorrected"):
        assert key in adata.obsm and adata.obsm[key].shape[0] == adata.n_obs
    for key in ("leiden", "leiden_0.3", "leiden_0.5", "leiden_0.8"):
        assert key in adata.obs
    assert "rank_genes_groups" in adata.uns and "harmony" in adata.uns
    assert "counts" in adata.layers
    assert len(adata.uns["harmony"]["objective_harmony"]) >= 1


def test_harmony_mixes_batches_and_keeps_types(integrated_run):
    import anndata as ad
    from sklearn.neighbors import NearestNeighbors

    adata = ad.read_h5ad(integrated_run["out"] / "integrated.h5ad")
    batch = adata.obs["batch"].to_numpy()
    label = adata.obs["cell_type"].to_numpy()

    def same_fraction(emb, values):
        idx = NearestNeighbors(n_neighbors=16).fit(emb).kneighbors(emb, return_distance=False)[:, 1:]
        return float((values[idx] == values[:, None]).mean())

    before = same_fraction(adata.obsm["X_pca"], batch)
    after = same_fraction(adata.obsm["X_pca_harmony"], batch)
    assert after < before - 0.2, (before, after)
    assert same_fraction(adata.obsm["X_pca_harmony"], label) > 0.95


def test_summary_and_figures(integrated_run):
    out = integrated_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cells_before_qc"] == 900 and summary["cells_after_qc"] <= 900
    assert summary["genes_before_qc"] == 600
    assert set(summary["clusters_per_resolution"]) == {"0.3", "0.5", "0.8"}
    assert summary["parameters"]["batch_key"] == ["batch"]
    assert "harmony" in summary["timings_seconds"] and "numpy" in summary["versions"]
    for name in ("umap_integration_check.png", "harmony_objective.png", "marker_genes_umap.png",
                 "marker_dotplot.png"):
        assert (out / "figures" / name).stat().st_size > 5000, name
    assert (out / "run.json").exists() and (out / "report.html").exists()


def test_use_rep_skips_count_steps(tmp_path, capsys):
    adata = simulate(n_cells=400, n_genes=300, n_batches=2, n_cell_types=3, n_markers=10, random_state=2)
    adata.obsm["X_pca"] = np.random.default_rng(0).normal(size=(adata.n_obs, 10)).astype(np.float32)
    path = tmp_path / "rep.h5ad"
    adata.write_h5ad(path)
    code = main(["integrate", str(path), "--batch-key", "batch", "--use-rep", "X_pca", "--out",
                 str(tmp_path / "o"), "--no-metrics"])
    assert code == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "QC, normalisation, HVG selection and PCA are skipped" in err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["cells_after_qc"] == 400
    assert set(summary["skipped_steps"]) >= {"qc", "pca"}


def test_pipeline_never_calls_scanpy_neighbors(monkeypatch, small_counts):
    """The kNN graph is scaml's own: scanpy's size-dependent search (and its crash above 8,192 cells
    with pynndescent's sparse arrays) is never reached."""
    import scanpy as sc

    from scaml.pipeline import integrate

    def refuse(*args, **kwargs):
        raise AssertionError("scanpy.pp.neighbors was called")

    monkeypatch.setattr(sc.pp, "neighbors", refuse)
    adata = integrate(small_counts, "batch", None, min_genes=20, n_top_genes=300, n_pcs=10,
                      resolutions=[0.5], evaluate=False)
    assert adata.uns["neighbors"]["params"]["search"] == "exact"
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert adata.obs["leiden"].nunique() >= 2


def test_integrate_without_batch_key_corrects_nothing(small_counts, capsys):
    """--batch-key is optional: without it nothing is corrected, and the run says so."""
    from scaml.pipeline import integrate

    adata = integrate(small_counts, None, None, min_genes=20, n_top_genes=300, n_pcs=10)
    assert "nothing is corrected" in capsys.readouterr().err
    assert "X_pca" in adata.obsm and "X_umap" in adata.obsm
    assert "X_pca_harmony" not in adata.obsm and "harmony" not in adata.uns
    assert adata.obs["leiden"].nunique() >= 2
