"""The reference's expression classifier and its mean with the kNN label transfer."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scaml.datasets import simulate
from scaml.errors import ScamlError
from scaml.mapping import build_reference, map_query
from scaml.mapping.expression_classifier import (
    CLASSIFIER_DIR,
    ExpressionClassifier,
    fit_expression_classifier,
    training_cells,
)
from scaml.mapping.transfer import LABEL_SOURCES, transfer_labels
from scaml.preprocess import log_normalize


@pytest.fixture(scope="module")
def cells():
    adata = simulate(1200, 300, n_batches=3, n_cell_types=4, random_state=3)
    last = adata.obs["batch"].cat.categories[-1]
    query = adata[adata.obs["batch"] == last].copy()
    ref = adata[adata.obs["batch"] != last].copy()
    return ref, query


def test_classifier_calls_a_held_out_batch(cells):
    ref, query = cells
    model = fit_expression_classifier(ref, ref.obs["cell_type"])
    proba = model.predict_proba(query)
    assert list(proba.index) == list(query.obs_names)
    assert sorted(proba.columns) == sorted(ref.obs["cell_type"].astype(str).unique())
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    accuracy = (proba.idxmax(axis=1).to_numpy() == query.obs["cell_type"].astype(str).to_numpy()).mean()
    assert accuracy > 0.9
    assert model.settings["n_cells"] == ref.n_obs and model.settings["input_kind"] == "counts"


def test_log_normalised_input_gives_the_same_probabilities(cells):
    ref, query = cells
    model = fit_expression_classifier(ref, ref.obs["cell_type"])
    logged = query.copy()
    logged.X = log_normalize(query.X)
    pd.testing.assert_frame_equal(model.predict_proba(query), model.predict_proba(logged), atol=1e-5)


def test_save_load_round_trip_and_missing_genes(cells, tmp_path):
    ref, query = cells
    model = fit_expression_classifier(ref, ref.obs["cell_type"])
    loaded = ExpressionClassifier.load(model.save(tmp_path / "clf"))
    pd.testing.assert_frame_equal(model.predict_proba(query), loaded.predict_proba(query))
    # the query's gene order does not matter
    shuffled = query[:, np.random.default_rng(0).permutation(query.n_vars)].copy()
    pd.testing.assert_frame_equal(model.predict_proba(query), loaded.predict_proba(shuffled), atol=1e-6)
    # a query without a third of the genes: those count as not expressed, the rest still call the cells
    part = query[:, query.var_names[100:]].copy()
    assert loaded.gene_overlap(part) == pytest.approx(200 / 300, abs=0.01)
    proba = loaded.predict_proba(part)
    assert (proba.idxmax(axis=1).to_numpy() == part.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    renamed = query.copy()
    renamed.var_names = [f"other{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ScamlError, match="none of the"):
        loaded.predict_proba(renamed)
    (tmp_path / "clf" / "classifier.npz").write_bytes(b"truncated")
    with pytest.raises(ScamlError, match="cannot be read"):
        ExpressionClassifier.load(tmp_path / "clf")


def test_two_labels_and_unlabelled_cells(cells):
    ref, query = cells
    labels = np.where(ref.obs["cell_type"].astype(str) == ref.obs["cell_type"].astype(str).iloc[0], "A", "B")
    labels = labels.astype(object)
    labels[:50] = "Unknown"
    model = fit_expression_classifier(ref, labels)
    assert model.classes == ["A", "B"] and model.coef.shape[0] == 2
    assert model.settings["n_labelled_cells"] == ref.n_obs - 50
    np.testing.assert_allclose(model.predict_proba(query).sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ScamlError, match="at least two labels"):
        fit_expression_classifier(ref, np.full(ref.n_obs, "A"))


def test_training_cells_keep_every_label():
    codes = np.repeat([0, 1, 2], [10_000, 1_000, 30])
    rows = training_cells(codes, 2_000, random_state=0)
    kept = np.bincount(codes[rows], minlength=3)
    assert kept[2] == 30 and kept[1] == 200 and 1_700 <= kept[0] <= 1_900
    assert np.array_equal(rows, np.unique(rows))
    assert np.array_equal(training_cells(codes, 20_000, random_state=0), np.arange(codes.size))


def test_transfer_averages_the_classifier_with_the_knn():
    rng = np.random.default_rng(0)
    ref = np.vstack([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    labels = np.repeat(["a", "b"], 20)
    query = np.array([[0.0, 0.0], [5.0, 5.0]])
    knn = transfer_labels(ref, labels, query, n_neighbors=5)
    assert knn.attrs["label_source"] == LABEL_SOURCES[False] and "knn_label" not in knn.columns
    # the classifier disagrees on cell 2 and knows a label the kNN lacks
    classifier = pd.DataFrame({"a": [1.0, 0.0], "b": [0.0, 0.3], "c": [0.0, 0.7]})
    calls, proba = transfer_labels(ref, labels, query, n_neighbors=5, classifier_probabilities=classifier,
                                   return_probabilities=True, threshold=1.0)
    assert list(proba.columns) == ["a", "b", "c"]
    np.testing.assert_allclose(proba.to_numpy(), [[1.0, 0.0, 0.0], [0.0, 0.65, 0.35]], atol=1e-6)
    assert list(calls["label"]) == ["a", "b"]
    assert list(calls["knn_label"]) == ["a", "b"] and list(calls["classifier_label"]) == ["a", "c"]
    np.testing.assert_allclose(calls["classifier_probability"], [1.0, 0.7], atol=1e-6)
    assert calls.attrs["label_source"] == LABEL_SOURCES[True]
    with pytest.raises(ScamlError, match="rows for 2 query cells"):
        transfer_labels(ref, labels, query, classifier_probabilities=classifier.iloc[:1])


def test_reference_keeps_it_and_map_uses_it(cells, tmp_path):
    ref, query = cells
    refdir = build_reference(ref, "symphony", "batch", "cell_type", tmp_path / "ref", n_hvg=200)
    manifest = json.loads((refdir / "reference.json").read_text())
    assert manifest["expression_classifier"]["dir"] == CLASSIFIER_DIR
    assert (refdir / CLASSIFIER_DIR / "classifier.npz").is_file()
    mapped = map_query(refdir, query, tmp_path / "map", label_key="cell_type", umap=False)
    for column in ("predicted_cell_type_knn", "predicted_cell_type_lr", "predicted_cell_type_lr_uncertainty"):
        assert column in mapped.obs.columns
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    assert metrics["label_source"] == LABEL_SOURCES[True]
    assert metrics["expression_classifier"]["accuracy"] > 0.9 and metrics["weighted_knn"]["accuracy"] > 0.9
    run = json.loads((tmp_path / "map" / "run.json").read_text())
    assert run["data"]["expression_classifier"] == {"used": True, "gene_overlap": 1.0}
    # kNN alone when asked
    alone = map_query(refdir, query, tmp_path / "knn", label_key="cell_type", umap=False, expression_classifier=False)
    assert "predicted_cell_type_lr" not in alone.obs.columns
    assert json.loads((tmp_path / "knn" / "run.json").read_text())["data"]["expression_classifier"]["used"] is False
    assert "label_source" not in json.loads((tmp_path / "knn" / "metrics.json").read_text())


def test_reference_without_it(cells, tmp_path):
    ref, _ = cells
    refdir = build_reference(ref, "symphony", "batch", "cell_type", tmp_path / "ref", n_hvg=200,
                             expression_classifier=False)
    assert "expression_classifier" not in json.loads((refdir / "reference.json").read_text())
    assert not (refdir / CLASSIFIER_DIR).exists()
    unlabelled = build_reference(ref, "symphony", "batch", None, tmp_path / "unlabelled", n_hvg=200)
    assert "expression_classifier" not in json.loads((unlabelled / "reference.json").read_text())
    with pytest.raises(ScamlError, match="needs the reference's labels"):
        build_reference(ref, "symphony", "batch", None, tmp_path / "x", expression_classifier=True)
    with pytest.raises(ScamlError, match="does not take an expression classifier"):
        build_reference(ref, "peakvi", "batch", "cell_type", tmp_path / "y", expression_classifier=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
