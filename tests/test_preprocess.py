"""Unit tests of scaml.preprocess: input detection, QC, HVG and PCA."""

from __future__ import annotations

import numpy as np
import pytest

from scaml import preprocess as pp
from scaml.errors import ScamlError


def test_find_expression_kinds(small_counts):
    counts = small_counts.copy()
    assert pp.find_expression(counts).kind == "counts"

    lognorm = small_counts.copy()
    pp.normalize_log1p(lognorm)
    # the one rule: layers["counts"] is read when it holds counts, whatever X holds
    found = pp.find_expression(lognorm)
    assert found.kind == "counts" and found.source == 'layers["counts"]'
    assert found.matrix is lognorm.layers["counts"]
    del lognorm.layers["counts"]
    check = pp.find_expression(lognorm)
    assert check.kind == "lognorm" and "log-normalised" in check.reason

    fractional = small_counts.copy()
    fractional.X = fractional.X * 1.37  # counts-like but not integer (e.g. panc8's celseq)
    assert pp.find_expression(fractional).kind == "counts"
    with pytest.raises(ScamlError, match="counts are required"):
        pp.find_expression(fractional, "counts")
    assert pp.find_expression(lognorm, "normalized").kind == "lognorm"


def test_qc_filter_removes_low_quality_cells(small_counts):
    adata = small_counts.copy()
    removed = pp.qc_filter(adata, min_genes=20, max_pct_mito=20)
    assert removed["n_mito_genes"] == 13
    assert removed["cells_removed_max_pct_mito"] > 0
    # the simulated low-quality cells are the ones removed for mitochondrial content
    assert adata.obs["low_quality"].mean() < small_counts.obs["low_quality"].mean()
    assert {"pct_counts_mt", "total_counts", "n_genes_by_counts"} <= set(adata.obs.columns)


def test_qc_filter_refuses_to_remove_everything(small_counts):
    with pytest.raises(ScamlError, match="QC removed every cell"):
        pp.qc_filter(small_counts.copy(), min_genes=10_000)


def test_hvg_request_above_the_panel_uses_every_gene(small_counts):
    from scaml import _utils

    adata = small_counts.copy()
    pp.normalize_log1p(adata)
    start = len(_utils.WARNINGS)
    mask = pp.highly_variable_genes(adata.X, adata.n_vars + 500, batch=adata.obs["batch"])
    assert mask.all() and mask.size == adata.n_vars
    new = _utils.WARNINGS[start:]
    assert len(new) == 1 and f"only {adata.n_vars} genes" in new[0]
    # exactly the panel size: every gene, no warning
    assert pp.highly_variable_genes(adata.X, adata.n_vars).all()
    assert len(_utils.WARNINGS) == start + 1


def test_negative_values_are_refused(small_counts):
    scaled = small_counts.copy()
    scaled.X = scaled.X.toarray() - 1.0
    with pytest.raises(ScamlError, match="negative values"):
        pp.find_expression(scaled)


def test_hvg_and_pca(small_counts):
    adata = small_counts.copy()
    pp.normalize_log1p(adata)
    assert "counts" in adata.layers
    n = pp.select_hvg(adata, 200, batch_key="batch")
    assert 150 <= n <= 250
    pp.run_pca(adata, 10, random_state=0)
    assert adata.obsm["X_pca"].shape == (adata.n_obs, 10) and adata.obsm["X_pca"].dtype == np.float32
    assert adata.varm["PCs"].shape == (adata.n_vars, 10)
    assert np.all(adata.varm["PCs"][~adata.var["highly_variable"].to_numpy()] == 0)
    with pytest.raises(ScamlError, match="--n-pcs"):
        pp.run_pca(adata, 5000)
