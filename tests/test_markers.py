"""scaml.markers.rank_markers gives scanpy's Wilcoxon markers (numbers and layout), faster on sparse data."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scaml.markers import rank_markers

FIELDS = ("scores", "pvals", "pvals_adj", "logfoldchanges")


def _data(n_cells: int = 900, n_features: int = 120, density: float = 0.08, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    X = sp.random(n_cells, n_features, density=density, format="csr", random_state=seed, dtype=np.float32)
    # few distinct values (many ties, as log-normalised counts have), and two stored zeros
    X.data = np.log1p(rng.poisson(1.5, X.data.size) + 1).astype(np.float32)
    X.data[:2] = 0.0
    # unequal groups, categories not in sorted order, the first feature a marker of group "b"
    groups = rng.choice(["c", "a", "b", "d"], size=n_cells, p=[0.5, 0.2, 0.2, 0.1])
    X = X.tolil()
    for i in np.flatnonzero(groups == "b")[::2]:
        X[i, 0] = 3.0
    adata = ad.AnnData(X.tocsr())
    adata.obs["leiden"] = pd.Categorical(groups, categories=["c", "a", "b", "d"])
    return adata


def _by_name(adata: ad.AnnData, field: str, group: str) -> pd.Series:
    result = adata.uns["rank_genes_groups"]
    return pd.Series(np.asarray(result[field][group], dtype=np.float64), index=result["names"][group])


def _assert_same_as_scanpy(ours: ad.AnnData, theirs: ad.AnnData) -> None:
    mine, peer = ours.uns["rank_genes_groups"], theirs.uns["rank_genes_groups"]
    assert mine["params"] == peer["params"]
    assert mine["names"].dtype.names == peer["names"].dtype.names  # the groups, in category order
    for field in ("names", *FIELDS):
        assert mine[field].dtype == peer[field].dtype, field
    for group in peer["names"].dtype.names:
        for field in FIELDS:
            a, b = _by_name(ours, field, group), _by_name(theirs, field, group)
            assert set(a.index) == set(b.index)
            np.testing.assert_allclose(a.reindex(b.index), b, rtol=1e-6, atol=1e-12, err_msg=f"{group} {field}")
        scores = np.asarray(mine["scores"][group])
        assert np.all(np.diff(scores) <= 0), "features sorted by decreasing score"
        # where scores differ, the order is scanpy's
        distinct = np.r_[True, np.diff(np.asarray(peer["scores"][group])) != 0]
        distinct &= np.r_[np.diff(np.asarray(peer["scores"][group])) != 0, True]
        np.testing.assert_array_equal(np.asarray(mine["names"][group])[distinct],
                                      np.asarray(peer["names"][group])[distinct])


def test_sparse_fast_path_equals_scanpy():
    adata = _data()
    theirs = adata.copy()
    sc.tl.rank_genes_groups(theirs, "leiden", method="wilcoxon", use_raw=False)
    before = adata.X.copy()
    rank_markers(adata, "leiden")
    _assert_same_as_scanpy(adata, theirs)
    assert (adata.X != before).nnz == 0, "the data are not modified"
    assert _by_name(adata, "scores", "b").index[0] == "0", "the planted marker of group b comes first"


def test_dense_and_negative_input_go_to_scanpy_with_the_same_numbers():
    adata = _data(seed=1)
    sparse_result = adata.copy()
    rank_markers(sparse_result, "leiden")
    dense = adata.copy()
    dense.X = dense.X.toarray()
    rank_markers(dense, "leiden")
    _assert_same_as_scanpy(sparse_result, dense)
    shifted = adata.copy()
    shifted.X = sp.csr_matrix(shifted.X.toarray() - 0.5)  # negative values: zeros are not the lowest
    theirs = shifted.copy()
    sc.tl.rank_genes_groups(theirs, "leiden", method="wilcoxon", use_raw=False)
    rank_markers(shifted, "leiden")
    _assert_same_as_scanpy(shifted, theirs)


@pytest.mark.parametrize("base", [None, 2.0])
def test_fold_changes_follow_the_log_base(base):
    adata = _data(seed=2)
    if base is not None:
        adata.uns["log1p"] = {"base": base}
    theirs = adata.copy()
    sc.tl.rank_genes_groups(theirs, "leiden", method="wilcoxon", use_raw=False)
    rank_markers(adata, "leiden")
    _assert_same_as_scanpy(adata, theirs)


def test_a_feature_without_any_value_scores_zero():
    adata = _data(seed=3)
    X = adata.X.tolil()
    X[:, 5] = 0.0
    adata.X = sp.csr_matrix(X)
    adata.X.eliminate_zeros()
    rank_markers(adata, "leiden")
    for group in ("a", "b", "c", "d"):
        assert _by_name(adata, "scores", group)["5"] == 0.0
        assert _by_name(adata, "pvals", group)["5"] == 1.0
