"""The ``knn`` novelty method (the distance part of the default ``coverage``) on simulated data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaml.classify import run_novelty
from scaml.classify.novelty_knn import knn_scores
from scaml.cli import main
from scaml.errors import ScamlError


@pytest.fixture(scope="module")
def held_out():
    """Four simulated types in three batches; type_C is flagged as the novel population."""
    from scaml.datasets import simulate

    adata = simulate(n_cells=480, n_genes=300, n_batches=3, n_cell_types=4, n_markers=15, random_state=1)
    adata.obs["novel"] = (adata.obs["cell_type"] == "type_C").to_numpy()
    adata.obs["harvest"] = adata.obs["batch"].astype(str)
    return adata


def _run(adata, **kwargs):
    options = {"hek_key": "novel", "method": "knn", "n_hvg": 120, "n_pcs": 10, "n_folds": 3, "plots": False}
    return run_novelty(adata, **{**options, **kwargs})


def test_knn_finds_a_held_out_type(held_out):
    res = _run(held_out)
    metrics = res["metrics"]
    assert metrics["method"] == "knn" and res["parameters"]["method"] == "knn"
    # obs["batch"] has three levels: Harmony corrects the PCA without being asked
    assert res["parameters"]["batch_key"] == "batch"
    assert metrics["knn"]["harmony"] is True and metrics["knn"]["batch_key"] == "batch"
    assert metrics["knn"]["n_neighbors_used"] == 30
    others = {m: _run(held_out, method=m)["metrics"]["auroc"] for m in ("iforest", "lof")}
    print("knn", round(metrics["auroc"], 3), {m: round(v, 3) for m, v in others.items()})
    # measured on this simulation: knn 1.00, lof 0.98, iforest 0.75
    assert metrics["auroc"] > 0.98
    assert metrics["auroc"] >= max(others.values()) - 1e-9
    assert metrics["auprc"] > metrics["auprc_baseline"] + 0.5
    scores = res["scores"]
    assert scores["novelty_score"].notna().all() and set(scores["fold"]) == {0, 1, 2}


@pytest.mark.parametrize("variant", [{"harmony": False}, {"pca_cells": "reference"}, {"density_ratio": True},
                                     {"metric": "euclidean", "n_neighbors": 5}])
def test_knn_variants_work_with_and_without_batches(held_out, variant):
    res = _run(held_out, hyperparameters={"knn": variant})
    assert res["metrics"]["auroc"] > 0.9
    assert res["metrics"]["knn"]["harmony"] is variant.get("harmony", True)
    # the same data with a single batch: no correction, still found
    single = held_out.copy()
    single.obs["batch"] = "one"
    res = _run(single, hyperparameters={"knn": variant})
    assert res["metrics"]["knn"]["harmony"] is False and res["parameters"]["batch_key"] is None
    assert res["metrics"]["auroc"] > 0.9


def test_knn_batch_key_names_another_column(held_out):
    adata = held_out.copy()
    del adata.obs["batch"]
    res = _run(adata)
    assert res["parameters"]["batch_key"] is None and res["metrics"]["knn"]["harmony"] is False
    res = _run(adata, batch_key="harvest")
    assert res["metrics"]["knn"]["harmony"] is True and res["metrics"]["knn"]["batch_key"] == "harvest"
    assert res["metrics"]["auroc"] > 0.95


def _brute_force(E, normal, fold, k):
    expected = np.empty(fold.size)
    for i in range(fold.size):
        ref = normal[fold[normal] != fold[i]]
        expected[i] = np.sort(np.linalg.norm(E[ref] - E[i], axis=1))[:k].mean()
    return expected


def test_knn_scores_are_cross_fitted():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(60, 4)).astype(np.float32)
    flag = np.zeros(60, bool)
    flag[:10] = True
    normal = np.flatnonzero(~flag)
    fold = np.arange(60) % 3
    nearest, k = knn_scores(E, normal, fold, n_neighbors=1)
    # a cell that were its own reference would be at distance 0
    assert k == 1 and (nearest > 0).all()
    np.testing.assert_allclose(nearest, _brute_force(E, normal, fold, 1), rtol=1e-5)
    score, k = knn_scores(E, normal, fold, n_neighbors=7)
    np.testing.assert_allclose(score, _brute_force(E, normal, fold, 7), rtol=1e-5)
    # a flagged cell duplicated many times does not make itself look normal: flagged cells are never references
    dup = np.vstack([E, np.repeat(E[:1], 20, axis=0)])
    flag_dup = np.r_[flag, np.ones(20, bool)]
    fold_dup = np.r_[fold, np.arange(20) % 3]
    score_dup, _ = knn_scores(dup, np.flatnonzero(~flag_dup), fold_dup, n_neighbors=1)
    assert score_dup[0] == pytest.approx(nearest[0], rel=1e-5)


def test_knn_on_a_given_embedding_scores_against_other_folds(held_out):
    adata = held_out.copy()
    adata.obsm["X_emb"] = np.random.default_rng(1).normal(size=(adata.n_obs, 5)).astype(np.float32)
    res = _run(adata, embedding="X_emb", hyperparameters={"knn": {"metric": "euclidean", "n_neighbors": 4}})
    scores = res["scores"]
    assert res["metrics"]["knn"]["embedding"] == "the given embedding" and res["metrics"]["knn"]["harmony"] is False
    normal = np.flatnonzero(~scores["flagged"].to_numpy())
    expected = _brute_force(adata.obsm["X_emb"], normal, scores["fold"].to_numpy(), 4)
    np.testing.assert_allclose(scores["novelty_score"].to_numpy(), expected, rtol=1e-5)
    # random coordinates carry no signal
    assert 0.3 < res["metrics"]["auroc"] < 0.7


@pytest.mark.parametrize(("override", "words"), [
    ({"n_neighbors": 0}, ["0", "knn.n_neighbors=30"]),
    ({"n_neighbors": 2.5}, ["2.5", "whole number"]),
    ({"metric": "manhattan"}, ["manhattan", "cosine, euclidean"]),
    ({"pca_cells": "flagged"}, ["flagged", "all, reference"]),
    ({"harmony": "maybe"}, ["maybe", "knn.harmony=False"]),
    ({"density_ratio": 3}, ["3", "true or false"]),
    ({"harmony_theta": -1}, ["-1", ">= 0"]),
    ({"neighbours": 5}, ["neighbours", "n_neighbors"]),
])
def test_knn_bad_hyperparameters(held_out, override, words):
    with pytest.raises(ScamlError) as err:
        _run(held_out, hyperparameters={"knn": override})
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_knn_bad_options(held_out):
    with pytest.raises(ScamlError, match="'no_such_column'.*--batch-key"):
        _run(held_out, batch_key="no_such_column")
    with pytest.raises(ScamlError, match="--n-pcs must be a whole number >= 0.*got -1"):
        _run(held_out, n_pcs=-1)
    with pytest.raises(ScamlError, match="'knnn'.*knn, iforest"):
        _run(held_out, method="knnn")
    adata = held_out.copy()
    adata.obs["harvest"] = adata.obs["harvest"].astype(object)
    adata.obs.iloc[0, adata.obs.columns.get_loc("harvest")] = np.nan
    with pytest.raises(ScamlError, match="'harvest'.*NaN.*--batch-key"):
        _run(adata, batch_key="harvest")


def test_novelty_cli_knn(held_out, tmp_path, capsys):
    from scaml.io import write_h5ad

    path = tmp_path / "held_out.h5ad"
    write_h5ad(held_out, path)
    base = ["novelty", "--adata", str(path), "--hek-key", "novel", "--n-hvg", "120", "--n-folds", "3", "-q", "--no-plots",
            "--method", "knn"]
    assert main([*base, "--outdir", str(tmp_path / "default")]) == 0
    metrics = json.loads((tmp_path / "default" / "novelty_metrics.json").read_text())
    run = json.loads((tmp_path / "default" / "run.json").read_text())
    assert metrics["method"] == "knn" and run["parameters"]["method"] == "knn"
    assert run["parameters"]["batch_key"] == "batch" and metrics["knn"]["harmony"] is True
    assert metrics["auroc"] > 0.98
    assert main([*base, "--batch-key", "harvest", "--param", "knn.harmony=False", "knn.n_neighbors=10",
                 "--outdir", str(tmp_path / "options")]) == 0
    metrics = json.loads((tmp_path / "options" / "novelty_metrics.json").read_text())
    assert metrics["knn"]["harmony"] is False and metrics["hyperparameters"]["n_neighbors"] == 10
    assert main([*base, "--param", "knn.metric=cityblock", "--outdir", str(tmp_path / "bad")]) == 2
    assert "cityblock" in capsys.readouterr().err
