"""Peak models of scATAC-seq (PEAKVI: Bernoulli on binarised peaks; POISSONVI: Poisson on counts).

Both are conditional VAEs of :mod:`scaml.vae` with the same saving and surgery as SCVI; trained
here on small simulated peak matrices (:func:`scaml.datasets.simulate_atac`) for few epochs.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import cli_build_and_map_at_scale
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from scaml.cli import main
from scaml.datasets import simulate_atac
from scaml.errors import ScamlError
from scaml.vae import PEAKVI, POISSONVI, load_model, load_query

FAST = {"verbose": False, "n_threads": 1}


@pytest.fixture(scope="module")
def peaks():
    """1,500 cells x 1,000 peaks, 3 batches, 4 types; sparse as real peak matrices (mean depth 300)."""
    adata = simulate_atac(1500, 1000, n_batches=3, n_cell_types=4, mean_depth=300.0, random_state=0)
    ref = adata[adata.obs["batch"] != "batch3"].copy()
    query = adata[adata.obs["batch"] == "batch3"].copy()
    return {"ref": ref, "query": query}


def _knn_accuracy(z: np.ndarray, labels) -> float:
    return float(cross_val_score(KNeighborsClassifier(15), z, np.asarray(labels), cv=3).mean())


@pytest.mark.parametrize("cls, min_knn", [(PEAKVI, 0.85), (POISSONVI, 0.9)])
def test_peak_model_latent_surgery_and_round_trip(peaks, cls, min_knn, tmp_path):
    ref, query = peaks["ref"], peaks["query"]
    model = cls(ref, "batch", random_state=0).train(max_epochs=20, **FAST)
    assert model.gene_likelihood == cls.default_likelihood
    assert model.module.cfg.n_latent == 32 and model.module.cfg.hidden_layers == [32, 32]  # sqrt(1000)
    z = model.get_latent()
    knn = _knn_accuracy(z, ref.obs["cell_type"])
    print(f"{cls.__name__} reference kNN accuracy {knn:.3f}")
    assert knn > min_knn
    # save / load: the same latent space
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is cls
    np.testing.assert_allclose(loaded.get_latent(ref), z, atol=1e-5)
    # surgery: the held-out batch as a query, new batch weights only
    qmodel = load_query(loaded, query).train(max_epochs=20, **FAST)
    assert qmodel.conditions == ["batch1", "batch2", "batch3"]
    zq = qmodel.get_latent(query)
    classifier = KNeighborsClassifier(15).fit(z, ref.obs["cell_type"].to_numpy())
    acc = float((classifier.predict(zq) == query.obs["cell_type"].to_numpy()).mean())
    print(f"{cls.__name__} query label transfer accuracy {acc:.3f}")
    assert acc > 0.85
    # the reference cells keep their embedding under the query model
    np.testing.assert_allclose(qmodel.get_latent(ref), z, atol=1e-4)


def test_peakvi_binarises_counts(peaks):
    ref = peaks["ref"][:200].copy()
    doubled = ref.copy()
    doubled.X = ref.X * 3
    a = PEAKVI(ref, "batch", random_state=0)
    b = PEAKVI(doubled, "batch", random_state=0)
    assert set(np.unique(a._data.X.data)) == {1.0}
    np.testing.assert_allclose(a.get_latent(), b.get_latent(), atol=1e-6)


@pytest.mark.parametrize("cls", [PEAKVI, POISSONVI])
def test_non_count_values_are_refused(peaks, cls):
    tfidf = peaks["ref"][:100].copy()
    tfidf.X = tfidf.X.multiply(1.0 / (tfidf.X.sum(axis=1) + 1)).tocsr()
    with pytest.raises(ScamlError, match="not counts.*raw peak") as info:
        cls(tfidf, "batch")
    assert "\n" not in str(info.value)
    negative = peaks["ref"][:100].copy()
    negative.X = negative.X.toarray() - 1.0
    with pytest.raises(ScamlError, match="not counts"):
        cls(negative, "batch")
    with pytest.raises(ScamlError, match="gene_likelihood='nb' is not supported by"):
        cls(peaks["ref"][:100].copy(), "batch", gene_likelihood="nb")


def test_cli_reference_build_peakvi_and_map(peaks, tmp_path):
    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query.h5ad"
    peaks["ref"].write_h5ad(ref_path)
    peaks["query"].write_h5ad(query_path)
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(ref_path), "--method", "peakvi", "--batch-key", "batch",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "20", "--threads", "1",
                 "--quiet"]) == 0
    manifest = json.loads((out / "reference.json").read_text())
    assert manifest["method"] == "peakvi" and manifest["gene_likelihood"] == "bernoulli"
    assert manifest["n_genes"] == peaks["ref"].n_vars  # every peak: no gene HVG selection
    mapped_dir = tmp_path / "map"
    assert main(["map", "--reference", str(out), "--query", str(query_path), "--out", str(mapped_dir),
                 "--label-key", "cell_type", "--max-epochs", "20", "--threads", "1", "--no-umap",
                 "--quiet"]) == 0
    metrics = json.loads((mapped_dir / "metrics.json").read_text())
    print("peakvi CLI query:", metrics["weighted_knn"])
    assert metrics["weighted_knn"]["accuracy"] > 0.85
    mapped = ad.read_h5ad(mapped_dir / "mapped.h5ad")
    assert mapped.n_obs == peaks["query"].n_obs
    # non-count peaks: one line, exit 2
    bad = peaks["query"].copy()
    bad.X = bad.X * 0.5
    bad.write_h5ad(tmp_path / "bad.h5ad")
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "bad.h5ad"),
                 "--out", str(tmp_path / "bad_map"), "--quiet"]) == 2


@pytest.mark.slow
def test_cli_poissonvi_at_scale(tmp_path):
    """``reference build --method poissonvi`` + ``map`` on a >= 20,000-cell reference (few peaks, 2 epochs)."""
    adata = simulate_atac(28_000, 200, n_batches=4, n_cell_types=4, mean_depth=100.0, random_state=1)
    metrics = cli_build_and_map_at_scale(tmp_path, adata, "poissonvi")
    print("poissonvi at scale:", metrics["weighted_knn"])
    assert metrics["weighted_knn"]["accuracy"] > 0.7
