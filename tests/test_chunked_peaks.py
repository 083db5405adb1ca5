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


def test_integrate_chunked_atac_matches_in_memory(tmp_path):
    """``integrate --chunked`` on peaks: the LSI, Harmony and clusters of the in-memory ATAC path."""
    from sklearn.metrics import adjusted_rand_score

    from scaml.cli import main

    adata = simulate_atac(n_cells=2000, n_peaks=2500, n_batches=2, random_state=2)
    path = tmp_path / "peaks.h5ad"
    adata.write_h5ad(path)
    common = ["integrate", str(path), "--batch-key", "batch", "--label-key", "cell_type", "--n-pcs", "15",
              "--resolutions", "0.3", "--no-metrics", "--quiet"]
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
    run = json.loads((tmp_path / "chunked" / "run.json").read_text())
    assert run["data"]["modality"] == "atac" and run["data"]["chunked"]["n_chunks"] == 7
    assert run["data"]["lsi"]["depth_check"] == json.loads((tmp_path / "memory" / "run.json").read_text())[
        "data"]["lsi"]["depth_check"]
    # what the chunked ATAC path cannot do yet is refused in one line
    code = main([*common, "--out", str(tmp_path / "frag"), "--chunked", "--fragments", str(path)])
    assert code == 2
