"""Weighted kNN label transfer (scArches-style) on arrays and AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scaml.errors import ScamlError
from scaml.mapping.transfer import knn_weights, transfer_labels, transfer_labels_adata


def _clusters(n_per: int, centers: np.ndarray, sd: float, rng: np.random.Generator):
    points = np.vstack([c + rng.normal(0, sd, size=(n_per, centers.shape[1])) for c in centers])
    labels = np.repeat([f"type_{i}" for i in range(len(centers))], n_per)
    return points.astype(np.float32), labels


@pytest.fixture
def three_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    ref, ref_labels = _clusters(100, centers, 1.0, rng)
    query, query_labels = _clusters(40, centers, 1.0, rng)
    return ref, ref_labels, query, query_labels, centers


def test_clear_clusters_get_correct_labels_and_low_uncertainty(three_clusters):
    ref, ref_labels, query, query_labels, _ = three_clusters
    calls = transfer_labels(ref, ref_labels, query, n_neighbors=30)
    assert list(calls.columns) == ["label", "best_label", "probability", "uncertainty"]
    assert (calls["label"].to_numpy() == query_labels).mean() == 1.0
    assert calls["uncertainty"].max() < 0.05
    np.testing.assert_allclose(calls["probability"] + calls["uncertainty"], 1.0, atol=1e-6)


def test_out_of_reference_population_is_uncertain_and_unknown(three_clusters):
    ref, ref_labels, query, _, centers = three_clusters
    rng = np.random.default_rng(1)
    # a novel population sitting between the type_1 and type_2 clusters
    novel = (centers[1] + centers[2]) / 2 + rng.normal(0, 0.3, size=(30, 3))
    calls = transfer_labels(ref, ref_labels, np.vstack([query, novel]), n_neighbors=50, threshold=0.3)
    known, unknown = calls.iloc[: len(query)], calls.iloc[len(query):]
    assert unknown["uncertainty"].median() > 0.3
    assert (unknown["label"] == "Unknown").mean() > 0.7
    assert (known["label"] == "Unknown").mean() == 0.0
    assert known["uncertainty"].median() < unknown["uncertainty"].median()


def test_probabilities_sum_to_one_and_agree_with_calls(three_clusters):
    ref, ref_labels, query, _, _ = three_clusters
    calls, proba = transfer_labels(ref, ref_labels, query, n_neighbors=20, return_probabilities=True)
    assert list(proba.columns) == ["type_0", "type_1", "type_2"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (proba.idxmax(axis=1) == calls["best_label"]).all()
    np.testing.assert_allclose(proba.max(axis=1), calls["probability"], rtol=1e-5)


def test_kernel_matches_the_scarches_formula():
    rng = np.random.default_rng(3)
    d = np.sort(rng.uniform(0.5, 3.0, size=(5, 10)), axis=1)
    sd = d.std(axis=1, keepdims=True)
    expected = np.exp(-d / (2.0 / sd) ** 2)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(knn_weights(d), expected, rtol=1e-10)
    # equal distances (std 0) -> uniform weights, no NaN
    np.testing.assert_allclose(knn_weights(np.ones((2, 4))), 0.25)
    # far-away cells do not underflow to NaN
    assert np.isfinite(knn_weights(d + 1e4)).all()


def test_threshold_one_never_calls_unknown_and_unlabelled_reference_cells_are_ignored(three_clusters):
    ref, ref_labels, query, query_labels, _ = three_clusters
    labels = ref_labels.astype(object).copy()
    labels[:50] = "Unknown"  # half of type_0 unlabelled
    labels[50:60] = None
    calls = transfer_labels(ref, labels, query, n_neighbors=30, threshold=1.0)
    assert (calls["label"] != "Unknown").all()
    assert set(calls["label"]) == {"type_0", "type_1", "type_2"}
    assert (calls["label"].to_numpy() == query_labels).mean() == 1.0


def test_bad_inputs_raise_clear_errors(three_clusters):
    ref, ref_labels, query, _, _ = three_clusters
    with pytest.raises(ScamlError, match="dimensions"):
        transfer_labels(ref, ref_labels, query[:, :2])
    with pytest.raises(ScamlError, match="labels"):
        transfer_labels(ref, ref_labels[:10], query)
    with pytest.raises(ScamlError, match="no reference cell"):
        transfer_labels(ref, np.array(["Unknown"] * len(ref)), query)
    with pytest.raises(ScamlError, match="threshold"):
        transfer_labels(ref, ref_labels, query, threshold=1.5)
    bad = query.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ScamlError, match="NaN"):
        transfer_labels(ref, ref_labels, bad)


def test_more_neighbours_than_reference_cells_is_refused_and_auto_fits_a_tiny_reference():
    ref = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]])
    with pytest.raises(ScamlError, match="n_neighbors=50 is more than the 3 labelled reference cells"):
        transfer_labels(ref, ["a", "a", "b"], np.array([[0.05, 0.0]]), n_neighbors=50)
    calls = transfer_labels(ref, ["a", "a", "b"], np.array([[0.05, 0.0]]))
    assert calls.attrs["n_neighbors"] == 3
    assert calls["best_label"].iloc[0] == "a"


def test_unknown_search_method_is_refused(three_clusters):
    ref, ref_labels, query, _, _ = three_clusters
    with pytest.raises(ScamlError, match="neighbour search method"):
        transfer_labels(ref, ref_labels, query, method="annoy")


def test_anndata_wrapper_writes_keys_and_leaves_reference_alone(three_clusters):
    ref, ref_labels, query, query_labels, _ = three_clusters
    adata_ref = ad.AnnData(
        X=np.zeros((len(ref), 2), dtype=np.float32),
        obs=pd.DataFrame({"cell_type": ref_labels}, index=[f"r{i}" for i in range(len(ref))]),
    )
    adata_ref.obsm["X_latent"] = ref
    adata_query = ad.AnnData(
        X=np.zeros((len(query), 2), dtype=np.float32),
        obs=pd.DataFrame(index=[f"q{i}" for i in range(len(query))]),
    )
    adata_query.obsm["X_latent"] = query
    before = adata_ref.obs.copy()
    out = transfer_labels_adata(adata_ref, adata_query, "cell_type", "X_latent", n_neighbors=20, copy=True)
    assert "predicted_cell_type" not in adata_query.obs
    assert (out.obs["predicted_cell_type"].astype(str).to_numpy() == query_labels).all()
    assert out.obs["predicted_cell_type_uncertainty"].max() < 0.05
    assert out.uns["predicted_cell_type"]["n_neighbors"] == 20
    pd.testing.assert_frame_equal(adata_ref.obs, before)
    assert transfer_labels_adata(adata_ref, adata_query, "cell_type", "X_latent", key_added="pred") is None
    assert "pred_uncertainty" in adata_query.obs
    with pytest.raises(ScamlError, match="has no key 'celltype'"):
        transfer_labels_adata(adata_ref, adata_query, "celltype", "X_latent")
    with pytest.raises(ScamlError, match="X_pca"):
        transfer_labels_adata(adata_ref, adata_query, "cell_type", "X_pca")
