"""Chunked scATAC-seq preprocessing (scaml.chunked.peaks): the numbers of the in-memory ATAC path."""

from __future__ import annotations

import numpy as np
import pytest

from scaml import atac
from scaml.chunked import preprocess_peaks_chunked, write_chunked_h5ad
from scaml.datasets import simulate_atac
from scaml.errors import ScamlError


def _in_memory(adata, **qc):
    m = adata.copy()
    atac.add_peak_coordinates(m)
    removed = atac.qc_filter_peaks(m, **qc)
    atac.run_lsi(m, 20, random_state=0)
    return m, removed


@pytest.mark.parametrize("n_cells,n_peaks", [(1500, 3000), (3000, 1200)])  # scikit-learn transposes the first
def test_chunked_lsi_equals_in_memory(tmp_path, n_cells, n_peaks):
    adata = simulate_atac(n_cells=n_cells, n_peaks=n_peaks, random_state=1)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    qc = {"min_counts": 600, "min_peaks": 20, "min_cells": 30}  # some cells and peaks removed
    memory, removed = _in_memory(adata, **qc)
    chunked = preprocess_peaks_chunked(path, n_components=20, chunk_cells=400, show_progress=False, **qc)
    assert removed == chunked.qc_removed and removed["cells_removed_min_counts"] > 0
    assert list(memory.obs_names) == list(chunked.adata.obs_names)
    assert list(memory.var_names) == list(chunked.adata.var_names)
    A, B = memory.obsm["X_lsi"], chunked.adata.obsm["X_lsi"]
    assert A.shape == B.shape
    assert min(np.corrcoef(A[:, i], B[:, i])[0, 1] for i in range(A.shape[1])) > 0.9999
    np.testing.assert_allclose(memory.varm["LSI"], chunked.adata.varm["LSI"], atol=1e-3)
    assert memory.uns["lsi"]["depth_component_dropped"] == chunked.adata.uns["lsi"]["depth_component_dropped"]
    # the chunk-wise output holds the TF-IDF and the counts of the in-memory path
    out = write_chunked_h5ad(chunked, chunked.adata, tmp_path / "out.h5ad")
    import anndata as ad

    written = ad.read_h5ad(out)
    assert abs(written.X - memory.X).max() < 1e-4
    assert abs(written.layers["counts"] - memory.layers["counts"]).max() == 0
    sample = chunked.read_cells(np.array([5, 0, 17]))
    assert abs(sample - memory.X[[5, 0, 17]]).max() < 1e-4


def test_chunked_spectral_equals_in_memory_and_nystrom_keeps_its_subspace(tmp_path):
    """All kept cells as landmarks: the in-memory spectral embedding; 1,000 landmarks of 2,616 cells, extended by
    Nystrom: the same leading subspace (each in-memory component a linear function of the chunked ones)."""
    adata = simulate_atac(n_cells=3000, n_peaks=2000, mean_depth=400, random_state=1)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    qc = {"min_counts": 200, "min_peaks": 20, "min_cells": 30}
    memory = adata.copy()
    atac.add_peak_coordinates(memory)
    atac.qc_filter_peaks(memory, **qc)
    expected = atac.spectral(memory.X, 10)
    exact = preprocess_peaks_chunked(path, n_components=10, chunk_cells=500, show_progress=False,
                                     embedding="spectral", **qc)
    assert exact.adata.uns["spectral"]["landmarks"] == memory.n_obs and not exact.adata.uns["spectral"]["nystrom"]
    np.testing.assert_allclose(exact.adata.uns["spectral"]["eigenvalues"], np.round(expected.eigenvalues, 6))
    np.testing.assert_allclose(exact.adata.obsm["X_spectral"], expected.embedding, atol=1e-5)
    assert "X_lsi" not in exact.adata.obsm

    nystrom = preprocess_peaks_chunked(path, n_components=10, chunk_cells=500, show_progress=False,
                                       embedding="spectral", landmarks=1000, **qc)
    assert nystrom.adata.uns["spectral"]["landmarks"] == 1000 and nystrom.adata.uns["spectral"]["nystrom"]
    E = np.c_[nystrom.adata.obsm["X_spectral"].astype(np.float64), np.ones(memory.n_obs)]
    fit = E @ np.linalg.lstsq(E, expected.embedding, rcond=None)[0]
    centred = expected.embedding - expected.embedding.mean(axis=0)
    r2 = 1 - ((expected.embedding - fit) ** 2).sum(axis=0) / (centred**2).sum(axis=0)
    assert r2[:8].min() > 0.97, r2
    assert any(p["pass"] == "spectral extension" for p in nystrom.engine.records)


def test_chunked_peaks_refuse_bad_input(tmp_path):
    adata = simulate_atac(n_cells=300, n_peaks=400, random_state=0)
    genes = adata.copy()
    genes.var_names = [f"gene{i}" for i in range(genes.n_vars)]
    genes.write_h5ad(tmp_path / "genes.h5ad")
    with pytest.raises(ScamlError, match="gene0"):
        preprocess_peaks_chunked(tmp_path / "genes.h5ad", show_progress=False)
    adata.X = adata.X.astype(np.float32) * 0.5
    adata.write_h5ad(tmp_path / "halves.h5ad")
    with pytest.raises(ScamlError, match="not a count matrix"):
        preprocess_peaks_chunked(tmp_path / "halves.h5ad", min_counts=0, min_peaks=0, show_progress=False)


def test_chunked_fragments_qc_and_gene_activity_equal_in_memory(tmp_path):
    """Fragments QC (n_fragments, FRiP, TSS enrichment), --min-fragments and gene activity chunk by chunk: the
    in-memory numbers."""
    import anndata as ad

    from scaml.chunked import write_streamed_h5ad
    from scaml.datasets import write_fragments, write_peak_genes_bed

    adata = simulate_atac(n_cells=1500, n_peaks=2000, mean_depth=300, random_state=3)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    frag = write_fragments(adata, tmp_path / "fragments.tsv.gz", cells_without=40, random_state=1)
    genes = atac.read_gene_annotation(write_peak_genes_bed(adata.var, tmp_path / "genes.bed"))
    qc = {"min_counts": 100, "min_peaks": 20, "min_cells": 10}

    memory = adata.copy()
    atac.add_peak_coordinates(memory)
    summary = atac.fragment_qc(memory, frag, tss=genes)
    keep = memory.obs["n_fragments"].to_numpy() >= 250
    memory = memory[keep].copy()
    removed = {"cells_removed_min_fragments": int((~keep).sum()), **atac.qc_filter_peaks(memory, **qc)}

    chunked = preprocess_peaks_chunked(path, n_components=10, chunk_cells=200, show_progress=False,
                                       fragments=frag, tss=genes, min_fragments=250, **qc)
    assert chunked.fragments_qc == summary and summary["cells_with_fragments"] == 1460
    assert chunked.qc_removed == removed and removed["cells_removed_min_fragments"] > 40
    assert list(chunked.adata.obs_names) == list(memory.obs_names)
    for column in ("n_fragments", "frip", "tss_enrichment"):
        np.testing.assert_allclose(chunked.adata.obs[column], memory.obs[column], rtol=1e-12, err_msg=column)
    assert 0.7 < np.median(memory.obs["frip"]) < 0.9 and np.nanmedian(memory.obs["tss_enrichment"]) > 1

    expected = atac.gene_activity(memory, genes, layer=None)
    genes_map = atac.peak_gene_map(chunked.adata.var, genes)
    skeleton = ad.AnnData(obs=chunked.adata.obs, var=genes_map.var)
    written = ad.read_h5ad(write_streamed_h5ad(skeleton, tmp_path / "activity.h5ad",
                                               chunked.activity_chunks(genes_map.mapping)))
    assert list(written.var_names) == list(expected.var_names) and expected.n_vars > 300
    assert abs(written.X - expected.X).max() == 0 and abs(written.layers["counts"] - expected.X).max() == 0


def test_integrate_chunked_atac_matches_in_memory(tmp_path):
    """``integrate --chunked`` on peaks with fragments and genes: the QC, LSI, Harmony, clusters and gene activity
    of the in-memory ATAC path."""
    from sklearn.metrics import adjusted_rand_score

    from scaml.cli import main
    from scaml.datasets import write_fragments, write_peak_genes_bed

    adata = simulate_atac(n_cells=2000, n_peaks=2500, n_batches=2, mean_depth=600, random_state=2)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    frag = write_fragments(adata, tmp_path / "fragments.tsv.gz", cells_without=30)
    bed = write_peak_genes_bed(adata.var, tmp_path / "genes.bed")
    common = ["integrate", str(path), "--batch-key", "batch", "--label-key", "cell_type", "--n-pcs", "15",
              "--resolutions", "0.3", "--no-metrics", "--quiet", "--fragments", str(frag), "--genes", str(bed),
              "--min-fragments", "300"]
    assert main([*common, "--out", str(tmp_path / "memory"), "--no-chunked"]) == 0
    assert main([*common, "--out", str(tmp_path / "chunked"), "--chunked", "--chunk-cells", "300"]) == 0
    import json

    import anndata as ad

    memory = ad.read_h5ad(tmp_path / "memory" / "integrated.h5ad")
    chunked = ad.read_h5ad(tmp_path / "chunked" / "integrated.h5ad")
    assert list(memory.obs_names) == list(chunked.obs_names) and list(memory.var_names) == list(chunked.var_names)
    for key in ("X_lsi", "X_lsi_harmony"):
        A, B = memory.obsm[key], chunked.obsm[key]
        assert min(np.corrcoef(A[:, i], B[:, i])[0, 1] for i in range(A.shape[1])) > 0.999, key
    assert adjusted_rand_score(memory.obs["leiden"], chunked.obs["leiden"]) > 0.9
    assert abs(chunked.X[:50] - memory.X[:50]).max() < 1e-4
    for column in ("n_fragments", "frip", "tss_enrichment"):
        np.testing.assert_allclose(chunked.obs[column], memory.obs[column], rtol=1e-12, err_msg=column)
    runs = {name: json.loads((tmp_path / name / "run.json").read_text())["data"] for name in ("memory", "chunked")}
    assert runs["chunked"]["modality"] == "atac" and runs["chunked"]["chunked"]["n_chunks"] == 7
    assert runs["chunked"]["lsi"]["depth_check"] == runs["memory"]["lsi"]["depth_check"]
    for entry in ("qc_removed", "fragments_qc", "gene_activity"):
        assert runs["chunked"][entry] == runs["memory"][entry], entry
    assert runs["memory"]["qc_removed"]["cells_removed_min_fragments"] >= 30
    activity = {name: ad.read_h5ad(tmp_path / name / "gene_activity.h5ad") for name in ("memory", "chunked")}
    assert list(activity["chunked"].obs_names) == list(chunked.obs_names)
    assert list(activity["chunked"].var_names) == list(activity["memory"].var_names)
    assert abs(activity["chunked"].X - activity["memory"].X).max() == 0
    assert (activity["chunked"].obs["leiden"] == chunked.obs["leiden"]).all()
