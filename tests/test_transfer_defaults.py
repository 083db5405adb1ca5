"""Label-transfer defaults that fit the reference: the automatic k, majority voting, bad values, CLI flags."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from scaml.cli import main
from scaml.datasets import simulate
from scaml.errors import ScamlError
from scaml.mapping import build_reference, map_query
from scaml.mapping.transfer import (
    AUTO_K_MAX,
    AUTO_K_MIN,
    auto_n_neighbors,
    majority_vote,
    query_clusters,
    transfer_labels,
    transfer_labels_adata,
)


@pytest.fixture(scope="module")
def pca_cells():
    """Simulated cells (4 types, weakly separated) in a 10-dimensional PCA embedding."""
    adata = simulate(n_cells=1200, n_genes=300, n_batches=1, n_cell_types=4, n_markers=15, marker_log_fold=1.0,
                     low_quality_fraction=0.0, random_state=3)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    return adata.obsm["X_pca"].astype(np.float32), adata.obs["cell_type"].astype(str).to_numpy()


@pytest.fixture(scope="module")
def tiny_class_split(pca_cells):
    """A reference where type_D has only 12 cells; the query holds the other type_D cells and 50 of each other type."""
    X, labels = pca_cells
    rng = np.random.default_rng(0)
    tiny = np.flatnonzero(labels == "type_D")
    others = np.flatnonzero(labels != "type_D")
    query_others = np.concatenate([rng.choice(np.flatnonzero(labels == t), 50, replace=False)
                                   for t in ("type_A", "type_B", "type_C")])
    ref_idx = np.concatenate([np.setdiff1d(others, query_others), tiny[:12]])
    query_idx = np.concatenate([tiny[12:], query_others])
    return X[ref_idx], labels[ref_idx], X[query_idx], labels[query_idx]


# ----------------------------------------------------------------------------- the automatic k

@pytest.mark.parametrize("n_labelled, smallest, expected", [
    (900, 225, 30),      # sqrt(900) = 30 bounds it
    (900, 20, 20),       # the smallest label
    (10_000, 2_000, 50),  # at most 50
    (400, 4, 5),         # at least 5, however small the smallest label
    (60, 30, 8),         # round(sqrt(60)) = 8
    (2_000, 7, 7),
    (3, 1, 3),           # never more than the labelled cells
])
def test_auto_k_follows_the_rule(n_labelled, smallest, expected):
    assert auto_n_neighbors(n_labelled, smallest) == expected


def test_auto_k_is_small_for_small_references_and_small_classes():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(3000, 4)).astype(np.float32)
    even = np.repeat(["a", "b", "c"], 1000)
    query = rng.normal(size=(20, 4)).astype(np.float32)
    assert transfer_labels(big, even, query).attrs["n_neighbors"] == AUTO_K_MAX
    with_rare = even.copy()
    with_rare[:30] = "rare"  # 30 cells: k = 30
    calls = transfer_labels(big, with_rare, query)
    assert calls.attrs["n_neighbors"] == 30 and calls.attrs["smallest_class"] == 30
    small = transfer_labels(big[:100], np.repeat(["a", "b"], 50), query)
    assert small.attrs["n_neighbors"] == 10  # round(sqrt(100)); the labels (50 each) allow 50
    assert small.attrs["n_neighbors_requested"] == "auto"
    assert AUTO_K_MIN <= small.attrs["n_neighbors"] <= AUTO_K_MAX
    # unlabelled reference cells neither vote nor count
    labels = np.repeat(["a", "b"], 50).astype(object)
    labels[:40] = "Unknown"
    assert transfer_labels(big[:100], labels, query).attrs["n_labelled"] == 60


def test_an_explicit_k_is_used_as_given(tiny_class_split):
    ref, ref_labels, query, _ = tiny_class_split
    for k in (7, "7", 7.0, np.int64(7)):
        calls = transfer_labels(ref, ref_labels, query, n_neighbors=k)
        assert calls.attrs["n_neighbors"] == 7 and calls.attrs["n_neighbors_requested"] == 7
    pd.testing.assert_frame_equal(transfer_labels(ref, ref_labels, query, n_neighbors=7),
                                  transfer_labels(ref, ref_labels, query, n_neighbors="7"))


def test_a_tiny_class_is_not_drowned_with_auto_k(tiny_class_split):
    ref, ref_labels, query, true = tiny_class_split
    is_tiny = true == "type_D"
    fixed = transfer_labels(ref, ref_labels, query, n_neighbors=50, threshold=1.0)
    auto = transfer_labels(ref, ref_labels, query, threshold=1.0)
    assert auto.attrs["n_neighbors"] == 12  # 12 cells of type_D in the reference
    recall_50 = (fixed["label"].to_numpy()[is_tiny] == "type_D").mean()
    recall_auto = (auto["label"].to_numpy()[is_tiny] == "type_D").mean()
    assert recall_50 < 0.6 < 0.9 < recall_auto, (recall_50, recall_auto)
    # the large classes are not hurt
    assert (auto["label"].to_numpy()[~is_tiny] == true[~is_tiny]).mean() > 0.9


# ----------------------------------------------------------------------------- bad values

@pytest.mark.parametrize("bad, message", [
    (0, "at least 1; got 0"),
    (-3, "at least 1; got -3"),
    ("ten", "got 'ten'"),
    ("5.5", "got '5.5'"),
    (5.5, "got 5.5"),
    (True, "got True"),
    (None, "got None"),
])
def test_bad_k_is_refused_with_the_value_and_the_fix(tiny_class_split, bad, message):
    ref, ref_labels, query, _ = tiny_class_split
    with pytest.raises(ScamlError, match=message) as err:
        transfer_labels(ref, ref_labels, query, n_neighbors=bad)
    assert "'auto'" in str(err.value) and "--n-neighbors" in str(err.value)


def test_k_above_the_labelled_reference_is_refused(tiny_class_split):
    ref, ref_labels, query, _ = tiny_class_split
    n = len(ref_labels)
    with pytest.raises(ScamlError, match=rf"n_neighbors={n + 1} is more than the {n} labelled") as err:
        transfer_labels(ref, ref_labels, query, n_neighbors=n + 1)
    assert f"from 1 to {n}" in str(err.value) and "'auto' (here k=" in str(err.value)
    labels = ref_labels.astype(object).copy()
    labels[10:] = "Unknown"  # 10 labelled cells left
    with pytest.raises(ScamlError, match="n_neighbors=11 is more than the 10 labelled"):
        transfer_labels(ref, labels, query, n_neighbors=11)
    assert transfer_labels(ref, labels, query, n_neighbors=10).attrs["n_neighbors"] == 10


# ----------------------------------------------------------------------------- majority voting

def test_majority_vote_gives_each_cluster_its_most_frequent_call():
    calls = ["a", "a", "b", "Unknown", "Unknown", "Unknown", "b", "c", "c", "b"]
    clusters = ["0", "0", "0", "1", "1", "1", "1", "2", "2", "2"]
    voted = majority_vote(calls, clusters)
    assert list(voted) == ["a"] * 3 + ["Unknown"] * 4 + ["c"] * 3
    # a tie goes to the larger summed probability
    tie = majority_vote(["a", "b"], ["0", "0"], probability=[0.4, 0.9])
    assert list(tie) == ["b", "b"]
    with pytest.raises(ScamlError, match="cluster names"):
        majority_vote(["a", "b"], ["0"])


def test_majority_voting_gives_one_label_per_query_cluster_and_keeps_per_cell_calls(tiny_class_split):
    ref, ref_labels, query, true = tiny_class_split
    plain = transfer_labels(ref, ref_labels, query)
    voted = transfer_labels(ref, ref_labels, query, majority_voting=True, random_state=0)
    assert list(voted.columns) == [*plain.columns, "cluster", "majority_voting"]
    pd.testing.assert_frame_equal(voted[plain.columns], plain)  # the per-cell calls are kept as they are
    per_cluster = voted.groupby("cluster")["majority_voting"].nunique()
    assert (per_cluster == 1).all() and len(per_cluster) >= 4
    for _, group in voted.groupby("cluster"):
        assert group["majority_voting"].iloc[0] == group["label"].value_counts().index[0]
    assert (voted["majority_voting"].to_numpy() == true).mean() > 0.85
    again = transfer_labels(ref, ref_labels, query, majority_voting=True, random_state=0)
    pd.testing.assert_frame_equal(voted, again)  # seeded
    coarse = query_clusters(query, resolution=0.3, random_state=0)
    fine = query_clusters(query, resolution=5.0, random_state=0)
    assert len(set(coarse)) < len(set(fine))


def test_uncertain_cells_vote_unknown_and_confident_clusters_absorb_them():
    rng = np.random.default_rng(2)
    ref = np.vstack([rng.normal(0, 1, (100, 2)), rng.normal([10, 0], 1, (100, 2))]).astype(np.float32)
    ref_labels = np.repeat(["a", "b"], 100)
    # a confident cluster around "a" that also holds 5 uncertain cells from between a and b,
    # and a cluster of uncertain cells between a and b
    near_a = rng.normal(0, 0.5, (30, 2))
    between = rng.normal([5, 0], 0.3, (35, 2))
    query = np.vstack([near_a, between]).astype(np.float32)
    clusters = np.array(["near_a"] * 35 + ["between"] * 30)
    calls = transfer_labels(ref, ref_labels, query, n_neighbors=30, threshold=0.2, clusters=clusters)
    assert (calls["label"][30:35] == "Unknown").all()  # per-cell: uncertain
    assert (calls["majority_voting"][:35] == "a").all()  # absorbed by their confident cluster
    assert (calls["label"][35:] == "Unknown").mean() > 0.5
    assert (calls["majority_voting"][35:] == "Unknown").all()  # a cluster of mostly uncertain cells stays Unknown


def test_anndata_wrapper_majority_voting_columns(tiny_class_split):
    ref, ref_labels, query, _ = tiny_class_split
    adata_ref = ad.AnnData(obs=pd.DataFrame({"cell_type": ref_labels}, index=[f"r{i}" for i in range(len(ref))]))
    adata_ref.obsm["X_pca"] = ref
    adata_query = ad.AnnData(obs=pd.DataFrame(index=[f"q{i}" for i in range(len(query))]))
    adata_query.obsm["X_pca"] = query
    transfer_labels_adata(adata_ref, adata_query, "cell_type", "X_pca", majority_voting=True)
    obs = adata_query.obs
    assert {"predicted_cell_type", "predicted_cell_type_majority_voting", "predicted_cell_type_cluster"} <= set(obs)
    assert (obs.groupby("predicted_cell_type_cluster", observed=True)["predicted_cell_type_majority_voting"]
            .nunique() == 1).all()
    uns = adata_query.uns["predicted_cell_type"]
    assert uns["n_neighbors"] == 12 and uns["n_neighbors_requested"] == "auto" and uns["majority_voting"]
    adata_query.obs["mine"] = ["x" if i % 2 else "y" for i in range(adata_query.n_obs)]
    transfer_labels_adata(adata_ref, adata_query, "cell_type", "X_pca", key_added="p", clusters_key="mine")
    assert set(adata_query.obs["p_cluster"]) == {"x", "y"}
    assert adata_query.uns["p"]["clusters"] == "mine" and adata_query.uns["p"]["n_clusters"] == 2


# ----------------------------------------------------------------------------- map_query and the CLI

@pytest.fixture(scope="module")
def symphony_split(tmp_path_factory):
    """A Symphony reference (batch1 + batch2, type_D cut to 14 cells) and the batch3 query as files."""
    adata = simulate(n_cells=700, n_genes=300, n_batches=3, n_cell_types=4, n_markers=20, marker_log_fold=2.0,
                     low_quality_fraction=0.0, random_state=5)
    root = tmp_path_factory.mktemp("transfer_defaults")
    is_ref = (adata.obs["batch"] != "batch3").to_numpy()
    tiny = np.flatnonzero(is_ref & (adata.obs["cell_type"] == "type_D").to_numpy())
    keep = is_ref.copy()
    keep[tiny[14:]] = False
    ref, query = adata[keep].copy(), adata[~is_ref].copy()
    ref.write_h5ad(root / "ref.h5ad")
    query.write_h5ad(root / "query.h5ad")
    ref_dir = build_reference(ref, "symphony", "batch", "cell_type", root / "ref", n_hvg=200, n_comps=10)
    return {"root": root, "ref_dir": ref_dir, "query": root / "query.h5ad", "n_ref": ref.n_obs}


def test_map_query_records_the_auto_k(symphony_split, tmp_path):
    query = ad.read_h5ad(symphony_split["query"])
    mapped = map_query(symphony_split["ref_dir"], query, tmp_path / "map", label_key="cell_type", umap=False)
    k = auto_n_neighbors(symphony_split["n_ref"], 14)
    assert k == 14 < round(symphony_split["n_ref"] ** 0.5)
    uns = mapped.uns["scaml_mapping"]
    assert uns["n_neighbors"] == k and uns["n_neighbors_requested"] == "auto" and not uns["majority_voting"]
    run = json.loads((tmp_path / "map" / "run.json").read_text())
    assert run["parameters"]["n_neighbors"] == "auto"
    assert run["data"]["label_transfer"]["n_neighbors"] == k
    assert run["data"]["label_transfer"]["smallest_reference_label"] == 14
    assert "sqrt" in run["data"]["label_transfer"]["rule"]
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    assert metrics["n_neighbors"] == k and "majority_voting" not in metrics
    assert metrics["scored"]["weighted_knn"] == "predicted_cell_type"
    assert "predicted_cell_type_majority_voting" not in mapped.obs


def test_cli_majority_voting_and_n_neighbors_flags(symphony_split, tmp_path):
    out = tmp_path / "mv"
    assert main(["map", "--reference", str(symphony_split["ref_dir"]), str(symphony_split["query"]), "--out",
                 str(out), "--label-key", "cell_type", "--n-neighbors", "9", "--majority-voting",
                 "--majority-voting-resolution", "3", "--no-umap", "--quiet"]) == 0
    mapped = ad.read_h5ad(out / "mapped.h5ad")
    obs = mapped.obs
    assert (obs.groupby("predicted_cell_type_cluster", observed=True)["predicted_cell_type_majority_voting"]
            .nunique() == 1).all()
    assert "predicted_cell_type" in obs and "predicted_cell_type_uncertainty" in obs
    uns = mapped.uns["scaml_mapping"]
    assert uns["n_neighbors"] == 9 and uns["majority_voting"] and uns["majority_voting_resolution"] == 3.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_neighbors"] == 9 and metrics["n_neighbors_requested"] == "9"
    assert metrics["scored"]["majority_voting"] == "predicted_cell_type_majority_voting"
    assert metrics["majority_voting"]["accuracy"] > 0.8 and metrics["n_clusters"] == uns["n_clusters"]
    assert (out / "confusion_matrix_majority_voting.csv").exists()
    predictions = pd.read_csv(out / "predictions.csv", index_col=0)
    assert "predicted_cell_type_majority_voting" in predictions.columns
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["majority_voting"] is True and run["parameters"]["n_neighbors"] == 9


@pytest.mark.parametrize("value, message", [
    ("ten", "got 'ten'"),
    ("0", "at least 1; got 0"),
    ("100000", "n_neighbors=100000 is more than the"),
])
def test_cli_bad_n_neighbors_is_refused_before_anything_is_written(symphony_split, tmp_path, capsys, value, message):
    out = tmp_path / "bad"
    assert main(["map", "--reference", str(symphony_split["ref_dir"]), str(symphony_split["query"]), "--out",
                 str(out), "--n-neighbors", value, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "auto" in err
    assert not out.exists()
