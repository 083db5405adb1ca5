"""The HVG rule from per-batch gene sums (scaml.hvg) selects exactly scanpy's seurat-flavour genes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from scaml.datasets import simulate
from scaml.hvg import gene_sums, hvg_from_sums
from scaml.preprocess import highly_variable_genes, log_normalize


@pytest.fixture(scope="module")
def lognorm():
    adata = simulate(2400, 1200, n_batches=3, random_state=4)
    X = log_normalize(adata.X).tolil()
    X[np.flatnonzero(adata.obs["batch"].astype(str).to_numpy() == adata.obs["batch"].astype(str).iloc[0]), 7] = 0
    return X.tocsr(), adata.obs["batch"].astype(str).to_numpy(), adata.var_names


def _scanpy_mask(X, batch, names, n_top, batched):
    t = ad.AnnData(X.copy(), obs=pd.DataFrame({"batch": pd.Categorical(batch)}, index=[str(i) for i in range(X.shape[0])]))
    t.var_names = names
    table = sc.pp.highly_variable_genes(t, n_top_genes=n_top, flavor="seurat", batch_key="batch" if batched else None,
                                        inplace=False)
    return table["highly_variable"].to_numpy()


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("batched", [False, True])
def test_same_genes_as_scanpy(lognorm, dense, batched):
    X, batch, names = lognorm
    M = X.toarray() if dense else X
    mask = highly_variable_genes(M, 400, batch=batch if batched else None, var_names=names)
    assert mask.sum() == 400
    assert np.array_equal(mask, _scanpy_mask(M, batch, names, 400, batched))


def test_chunk_sums_add_up(lognorm):
    X, batch, names = lognorm
    codes = pd.Categorical(batch).codes
    whole = gene_sums(X, codes, 3)
    parts = gene_sums(X[:1000], codes[:1000], 3) + gene_sums(X[1000:], codes[1000:], 3)
    np.testing.assert_allclose(parts.sums, whole.sums, rtol=1e-6)
    np.testing.assert_allclose(parts.sum_squares, whole.sum_squares, rtol=1e-6)
    np.testing.assert_array_equal(parts.n_detected, whole.n_detected)
    assert np.array_equal(hvg_from_sums(parts, 300, names, batched=True), hvg_from_sums(whole, 300, names, batched=True))
