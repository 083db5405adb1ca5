"""The ``coverage`` novelty method (the default of ``scaml novelty``) on simulated data."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaml.classify import run_novelty
from scaml.classify.novelty_knn import combine_ranks, query_share_scores
from scaml.cli import main
from scaml.errors import ScamlError


def _neighbour_types(seed: int, *, n_per: int = 120, shift: float = 2.0, n_shifted: int = 40) -> ad.AnnData:
    """Poisson counts of four types and a fifth, ``A2``: type A with ``n_shifted`` genes ``shift``-fold up.

    Two batches share one batch effect (every gene scaled by a random factor in batch b1). ``A2`` is the
    novel type: close to A, which stays in the reference.
    """
    rng = np.random.default_rng(seed)
    n_genes = 300
    base = rng.gamma(0.6, 2.0, n_genes) + 0.05
    profiles = []
    for _ in range(4):
        p = base.copy()
        p[rng.choice(n_genes, 25, replace=False)] *= 5
        profiles.append(p)
    near = profiles[0].copy()
    near[rng.choice(n_genes, n_shifted, replace=False)] *= shift
    profiles.append(near)
    effect = 1 + 0.3 * rng.normal(size=n_genes).clip(-0.9, 3)
    blocks, labels, batches = [], [], []
    for profile, name in zip(profiles, ["A", "B", "C", "D", "A2"], strict=True):
        for b in range(2):
            depth = rng.lognormal(np.log(1500), 0.3, n_per // 2)
            p = profile * (effect if b == 1 else 1.0)
            blocks.append(rng.poisson(depth[:, None] * p / p.sum()))
            labels += [name] * (n_per // 2)
            batches += [f"b{b}"] * (n_per // 2)
    adata = ad.AnnData(sp.csr_matrix(np.vstack(blocks).astype(np.float32)))
    adata.obs_names = [f"c{i}" for i in range(adata.n_obs)]
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    adata.obs["cell_type"] = labels
    adata.obs["batch"] = batches
    adata.obs["novel"] = (adata.obs["cell_type"] == "A2").to_numpy()
    return adata


@pytest.fixture(scope="module")
def neighbours() -> ad.AnnData:
    return _neighbour_types(2)


def _run(adata, **kwargs):
    options = {"hek_key": "novel", "n_hvg": 200, "n_pcs": 10, "n_folds": 3, "plots": False}
    return run_novelty(adata, **{**options, **kwargs})


def test_coverage_is_the_default_and_finds_a_type_next_to_a_reference_type(neighbours):
    res = _run(neighbours)
    metrics = res["metrics"]
    assert metrics["method"] == "coverage" and res["parameters"]["method"] == "coverage"
    assert res["parameters"]["batch_key"] == "batch" and metrics["coverage"]["harmony"] is True
    assert metrics["coverage"]["n_neighbors_used"] == 30 and metrics["coverage"]["share_neighbors_used"] == 10
    components = metrics["coverage"]["components"]
    print(round(metrics["auroc"], 3), {k: round(v["auroc"], 3) for k, v in components.items()})
    # measured: coverage 0.978, distance alone 0.927, query share alone 0.986
    assert metrics["auroc"] > 0.95
    assert metrics["auroc"] > components["distance"]["auroc"] + 0.03
    assert components["query_share"]["auroc"] > 0.95
    knn = _run(neighbours, method="knn")["metrics"]["auroc"]
    assert knn == pytest.approx(components["distance"]["auroc"])  # the distance is the knn method
    scores = res["scores"]
    assert {"distance", "query_share"} <= set(scores.columns)
    assert scores["query_share"].between(0, 1).all() and scores["novelty_score"].notna().all()


def test_coverage_finds_a_few_foreign_cells(neighbours):
    """Three foreign cells: too few for a query-only neighbourhood, but far from everything."""
    rng = np.random.default_rng(5)
    foreign = neighbours[:3].copy()
    foreign.X = sp.csr_matrix(rng.poisson(5.0, size=(3, neighbours.n_vars)).astype(np.float32))
    foreign.obs_names = ["f0", "f1", "f2"]
    adata = ad.concat([neighbours[~neighbours.obs["novel"].to_numpy()], foreign])
    adata.obs["novel"] = np.r_[np.zeros(adata.n_obs - 3, bool), np.ones(3, bool)]
    res = _run(adata)
    components = res["metrics"]["coverage"]["components"]
    print(round(res["metrics"]["auroc"], 3), {k: round(v["auroc"], 3) for k, v in components.items()})
    assert components["distance"]["auroc"] > 0.99
    # Fisher's combination keeps a cell that is extreme on one score near the top (measured: 0.992)
    assert res["metrics"]["auroc"] > 0.98
    mean = _run(adata, hyperparameters={"coverage": {"combine": "mean"}})
    assert mean["metrics"]["coverage"]["combine"] == "mean"


def test_query_share_definition_and_null():
    rng = np.random.default_rng(0)
    E = rng.normal(size=(90, 3)).astype(np.float32)
    flag = np.zeros(90, bool)
    flag[:15] = True
    normal = np.flatnonzero(~flag)
    fold = np.arange(90) % 3
    share, k = query_share_scores(E, normal, fold, n_neighbors=6)
    assert k == 6
    expected = np.empty(90)
    for i in range(90):
        d = np.linalg.norm(E - E[i], axis=1)
        d[i] = np.inf
        nearest = np.argsort(d, kind="stable")[:6]
        expected[i] = np.mean(flag[nearest] | (fold[nearest] == fold[i]))
    np.testing.assert_allclose(share, expected)
    # the flag is independent of the embedding: flagged and other cells score alike
    from sklearn.metrics import roc_auc_score

    E = rng.normal(size=(3000, 5)).astype(np.float32)
    flag = rng.random(3000) < 0.2
    fold = rng.integers(0, 5, 3000)
    share, _ = query_share_scores(E, np.flatnonzero(~flag), fold, n_neighbors=10)
    assert 0.45 < roc_auc_score(flag, share) < 0.55
    # a tight cluster of flagged cells is a query-only neighbourhood
    E[flag] = E[flag] * 0.05 + 8.0
    share, _ = query_share_scores(E, np.flatnonzero(~flag), fold, n_neighbors=10)
    assert share[flag].min() == 1.0 and share[~flag].mean() < 0.3


def test_combine_ranks():
    rng = np.random.default_rng(0)
    a, b = rng.permutation(100).astype(float), rng.permutation(100).astype(float)
    a[0], b[0] = 1000.0, np.median(b)  # cell 0: the most extreme on one score, typical on the other
    a[1], b[1] = np.quantile(a, 0.8), np.quantile(b, 0.8)  # cell 1: fairly high on both
    fisher, mean, top = (combine_ranks([a, b], how) for how in ("fisher", "mean", "max"))
    # Fisher's method and the max rank put the cell extreme on one score above the fairly high one; the mean
    # rank does not
    assert fisher[0] > fisher[1] and top[0] == top.max() and mean[0] < mean[1]
    assert fisher[0] > np.quantile(fisher, 0.95)
    np.testing.assert_allclose(combine_ranks([a, a * 2], "mean"), (np.argsort(np.argsort(a)) + 1) / 100)
    with pytest.raises(ScamlError, match="'median'.*fisher, mean, max"):
        combine_ranks([a, b], "median")


def test_coverage_without_batches_and_on_a_given_embedding(neighbours):
    single = neighbours.copy()
    single.obs["batch"] = "one"
    res = _run(single, hyperparameters={"coverage": {"metric": "euclidean", "share_neighbors": 5}})
    assert res["metrics"]["coverage"]["harmony"] is False and res["parameters"]["batch_key"] is None
    assert res["metrics"]["auroc"] > 0.9
    adata = neighbours.copy()
    adata.obsm["X_emb"] = np.random.default_rng(1).normal(size=(adata.n_obs, 5)).astype(np.float32)
    res = _run(adata, embedding="X_emb")
    assert res["metrics"]["coverage"]["embedding"] == "the given embedding"
    assert res["metrics"]["coverage"]["harmony"] is False
    assert 0.3 < res["metrics"]["auroc"] < 0.7  # random coordinates carry no signal


@pytest.mark.parametrize(("override", "words"), [
    ({"n_neighbors": 0}, ["0", "coverage.n_neighbors=30"]),
    ({"share_neighbors": 1.5}, ["1.5", "coverage.share_neighbors=10"]),
    ({"combine": "median"}, ["median", "fisher, mean, max"]),
    ({"metric": "manhattan"}, ["manhattan", "cosine, euclidean"]),
    ({"harmony": "maybe"}, ["maybe", "coverage.harmony=False"]),
    ({"harmony_theta": -1}, ["-1", ">= 0"]),
    ({"pca_cells": "all"}, ["pca_cells", "share_neighbors"]),
])
def test_coverage_bad_hyperparameters(neighbours, override, words):
    with pytest.raises(ScamlError) as err:
        _run(neighbours, hyperparameters={"coverage": override})
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_novelty_cli_default_is_coverage(neighbours, tmp_path, capsys):
    from scaml.io import write_h5ad

    path = tmp_path / "neighbours.h5ad"
    write_h5ad(neighbours, path)
    base = ["novelty", "--adata", str(path), "--hek-key", "novel", "--n-hvg", "200", "--n-pcs", "10", "--n-folds", "3",
            "-q"]
    assert main([*base, "--outdir", str(tmp_path / "default")]) == 0
    metrics = json.loads((tmp_path / "default" / "novelty_metrics.json").read_text())
    run = json.loads((tmp_path / "default" / "run.json").read_text())
    assert metrics["method"] == "coverage" and run["parameters"]["method"] == "coverage"
    assert metrics["coverage"]["harmony"] is True and metrics["auroc"] > 0.95
    assert set(metrics["coverage"]["components"]) == {"distance", "query_share"}
    scores = pd.read_csv(tmp_path / "default" / "novelty_scores.csv")
    assert list(scores.columns[:6]) == ["cell", "flagged", "novelty_score", "fold", "distance", "query_share"]
    assert (tmp_path / "default" / "novelty_histogram.png").is_file()
    assert (tmp_path / "default" / "novelty_curves.png").is_file()
    assert main([*base, "--no-plots", "--param", "coverage.combine=max", "coverage.harmony=False",
                 "--outdir", str(tmp_path / "options")]) == 0
    metrics = json.loads((tmp_path / "options" / "novelty_metrics.json").read_text())
    assert metrics["coverage"]["combine"] == "max" and metrics["coverage"]["harmony"] is False
    assert main([*base, "--no-plots", "--param", "coverage.combine=sum", "--outdir", str(tmp_path / "bad")]) == 2
    assert "sum" in capsys.readouterr().err
