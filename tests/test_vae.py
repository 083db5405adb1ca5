"""Tests of scaml's conditional VAEs (SCVI, TRVAE, SCANVI): training, latent quality, seeds, save / load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from scaml.errors import ScamlError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def knn_accuracy(Z: np.ndarray, y, k: int = 15) -> float:
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    return float(cross_val_score(KNeighborsClassifier(k), Z, np.asarray(y), cv=3).mean())


@pytest.fixture(scope="module")
def sim():
    from scaml.datasets import simulate

    return simulate(n_cells=600, n_genes=300, n_batches=2, n_cell_types=4, n_markers=15, random_state=1)


@pytest.fixture(scope="module")
def trained(sim):
    from scaml.vae import SCVI

    return SCVI(sim, "batch", n_latent=8, hidden_layers=(64, 64)).train(max_epochs=60, verbose=False)


def test_scvi_trains_and_integrates(sim, trained):
    h = trained.history
    assert len(h["train_loss"]) == len(h["epoch_seconds"]) == len(h["lr"])
    assert len(h["validation_loss"]) == len(h["train_loss"])
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["validation_loss"][-1] < h["validation_loss"][0]
    assert all(np.isfinite(h["train_loss"]))
    z = trained.get_latent()
    assert z.dtype == np.float32 and z.shape == (sim.n_obs, 8)
    type_acc = knn_accuracy(z, sim.obs["cell_type"])
    batch_acc = knn_accuracy(z, sim.obs["batch"])
    assert type_acc > 0.85, type_acc
    assert batch_acc < type_acc - 0.05, (batch_acc, type_acc)
    # embedding other AnnData: same cells in another order give the same rows
    order = np.random.default_rng(0).permutation(sim.n_obs)
    z2 = trained.get_latent(sim[order].copy())
    np.testing.assert_allclose(z2, z[order], rtol=1e-5, atol=1e-5)
    assert trained.genes == list(sim.var_names)
    assert trained.conditions == ["batch1", "batch2"]
    assert trained.labels is None and trained.label_key is None
    assert trained.config["params"]["n_latent"] == 8
    assert "SCVI" in repr(trained)


def test_same_seed_same_latent(sim):
    from scaml.vae import SCVI

    small = sim[:200].copy()
    kwargs = dict(n_latent=4, hidden_layers=(32,))
    a = SCVI(small, "batch", random_state=3, **kwargs).train(max_epochs=3, verbose=False)
    b = SCVI(small, "batch", random_state=3, **kwargs).train(max_epochs=3, verbose=False)
    c = SCVI(small, "batch", random_state=4, **kwargs).train(max_epochs=3, verbose=False)
    np.testing.assert_array_equal(a.get_latent(), b.get_latent())
    assert a.history["train_loss"] == b.history["train_loss"]
    assert not np.allclose(a.get_latent(), c.get_latent())


def test_training_does_not_touch_global_rng(sim):
    from scaml.vae import SCVI

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SCVI(sim[:100].copy(), "batch", hidden_layers=(16,)).train(max_epochs=1, verbose=False)
    np.testing.assert_array_equal(torch.rand(3).numpy(), expected.numpy())


@pytest.mark.parametrize("likelihood", ["zinb", "mse"])
def test_other_likelihoods_train(sim, likelihood):
    from scaml.vae import SCVI

    adata = sim[:300].copy()
    if likelihood == "mse":
        X = adata.X.multiply(1e4 / adata.X.sum(axis=1)).tocsr()
        X.data = np.log1p(X.data)
        adata.X = X.astype(np.float32)
    model = SCVI(adata, "batch", gene_likelihood=likelihood, hidden_layers=(32,))
    model.train(max_epochs=8, verbose=False, kl_warmup_epochs=2)
    assert model.history["train_loss"][-1] < model.history["train_loss"][0]
    assert np.isfinite(model.get_latent()).all()


def test_dense_input_and_counts_layer(sim):
    from scaml.vae import SCVI

    adata = sim[:150].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X.toarray())  # X normalised, counts in the layer: the layer is used
    sparse_model = SCVI(adata, "batch", hidden_layers=(16,), random_state=0)
    dense = adata.copy()
    dense.layers["counts"] = dense.layers["counts"].toarray()
    dense_model = SCVI(dense, "batch", hidden_layers=(16,), random_state=0)
    np.testing.assert_allclose(sparse_model.get_latent(), dense_model.get_latent(), rtol=1e-5, atol=1e-6)


def test_mse_reads_x_and_input_is_untouched(sim):
    from scaml.vae import SCVI

    adata = sim[:120].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    before = adata.X.copy()
    model = SCVI(adata, "batch", gene_likelihood="mse", hidden_layers=(16,))
    # the MSE model reads X (normalised data), not the counts layer
    np.testing.assert_allclose(model._data.X.toarray(), adata.X.toarray())
    model.train(max_epochs=2, verbose=False)
    assert (adata.X != before).nnz == 0
    with pytest.raises(ScamlError, match="device"):
        SCVI(adata, "batch", device="tpu9")
    with pytest.raises(ScamlError, match="AnnData"):
        SCVI(adata.X, "batch")


def test_trvae_mmd_trains(sim):
    from scaml.vae import TRVAE

    model = TRVAE(sim[:300].copy(), "batch", beta=5.0, hidden_layers=(32, 32))
    assert model.config["module"]["mmd_beta"] == 5.0
    model.train(max_epochs=10, verbose=False, kl_warmup_epochs=2)
    assert model.history["train_loss"][-1] < model.history["train_loss"][0]
    # the MMD term is part of the loss
    from scaml.vae.modules import mmd_between_conditions

    h = torch.randn(40, 8)
    cond = torch.tensor([0] * 20 + [1] * 20)
    shifted = h.clone()
    shifted[20:] += 3.0
    assert float(mmd_between_conditions(shifted, cond, 2)) > float(mmd_between_conditions(h, cond, 2))
    assert float(mmd_between_conditions(h, torch.zeros(40, dtype=torch.long), 2)) == 0.0
    with pytest.raises(ScamlError, match="beta"):
        TRVAE(sim[:50].copy(), "batch", beta=-1)


def test_scanvi_predicts(sim):
    from scaml.vae import SCANVI

    adata = sim[:400].copy()
    labels = adata.obs["cell_type"].astype(str).to_numpy().copy()
    hidden = np.random.default_rng(0).random(adata.n_obs) < 0.3
    labels[hidden] = "Unknown"
    adata.obs["partial"] = labels
    model = SCANVI(adata, "batch", label_key="partial", hidden_layers=(64, 64))
    assert model.labels == sorted(set(adata.obs["cell_type"].astype(str)))
    model.train(max_epochs=30, verbose=False)
    predicted, proba = model.predict()
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    assert (predicted[hidden] == truth[hidden]).mean() > 0.85
    assert list(proba.columns) == model.labels
    np.testing.assert_allclose(proba.to_numpy().sum(axis=1), 1.0, rtol=1e-5)
    predicted2, proba2 = model.predict(adata)
    assert list(proba2.index) == list(adata.obs_names)
    np.testing.assert_array_equal(predicted, predicted2)


def test_scanvi_missing_label_key(sim):
    from scaml.vae import SCANVI

    with pytest.raises(ScamlError, match="cell_typ.*Available.*batch"):
        SCANVI(sim, "batch", label_key="cell_typ")
    one = sim[:50].copy()
    one.obs["one"] = "x"
    with pytest.raises(ScamlError, match="at least 2"):
        SCANVI(one, "batch", label_key="one")


def test_bad_input_errors(sim):
    from scaml.vae import SCVI

    norm = sim[:100].copy()
    norm.X = norm.X.multiply(1 / (norm.X.sum(axis=1) + 1)).tocsr()
    with pytest.raises(ScamlError, match="raw counts.*gene_likelihood='mse'"):
        SCVI(norm, "batch")
    SCVI(norm, "batch", gene_likelihood="mse")  # fine on normalised data
    with pytest.raises(ScamlError, match="Available"):
        SCVI(sim, "donor")
    with pytest.raises(ScamlError, match="gene_likelihood"):
        SCVI(sim, "batch", gene_likelihood="poisson")
    nan = sim[:50].copy()
    nan.X = sp.csr_matrix(nan.X)
    nan.X.data[0] = np.nan
    with pytest.raises(ScamlError, match="NaN"):
        SCVI(nan, "batch")
    with pytest.raises(ScamlError, match="layers"):
        SCVI(sim, "batch", layer="raw")


def test_save_load_roundtrip(tmp_path, sim, trained):
    from scaml.vae import load_model

    path = trained.save(tmp_path / "ref")
    assert {p.name for p in path.iterdir()} == {"model.pt", "config.json", "genes.txt"}
    loaded = load_model(path, device="cpu")
    assert type(loaded) is type(trained)
    assert loaded.genes == trained.genes and loaded.conditions == trained.conditions
    assert loaded.batch_key == "batch"
    np.testing.assert_array_equal(loaded.get_latent(sim), trained.get_latent())
    assert loaded.history["train_loss"] == trained.history["train_loss"]
    with pytest.raises(ScamlError, match="holds no data"):
        loaded.get_latent()
    with pytest.raises(ScamlError, match="overwrite"):
        trained.save(path)
    trained.save(path, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_rejects_bad_directories(tmp_path, trained):
    from scaml.vae import load_model

    path = trained.save(tmp_path / "ref")
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 999
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScamlError, match="format version 999.*Rebuild"):
        load_model(path)
    config["format_version"] = 1
    config["scaml_version"] = "7.0.0"
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ScamlError, match="incompatible"):
        load_model(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ScamlError, match="corrupt"):
        load_model(path)
    (path / "config.json").unlink()
    with pytest.raises(ScamlError, match="config.json missing"):
        load_model(path)
    with pytest.raises(ScamlError, match="does not exist"):
        load_model(tmp_path / "nothing")
    other = trained.save(tmp_path / "other")
    (other / "genes.txt").write_text("A\nB\n")
    with pytest.raises(ScamlError, match="corrupt"):
        load_model(other)


def test_nb_and_zinb_log_likelihood_match_scipy():
    from scipy.stats import nbinom

    from scaml.vae.modules import NonZeros, nb_log_likelihood, zinb_log_likelihood

    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.rand(6, 9, generator=gen) * 4, generator=gen)
    mu = torch.rand(6, 9, generator=gen) * 5 + 0.1
    theta = torch.rand(9, generator=gen) * 3 + 0.2
    pi_logits = torch.randn(6, 9, generator=gen)
    log_fact = float(torch.lgamma(x + 1).sum())
    logpmf = nbinom.logpmf(x.numpy(), theta.numpy()[None, :], (theta / (theta + mu)).numpy())
    pi = torch.sigmoid(pi_logits).numpy()
    zinb = np.where(x.numpy() == 0, np.log(pi + (1 - pi) * np.exp(logpmf)), np.log(1 - pi) + logpmf)
    flat = torch.nonzero(x.reshape(-1)).reshape(-1)
    nz = NonZeros(flat, flat % x.shape[1], x.reshape(-1)[flat])
    for sparse in (None, nz):
        nb = float(nb_log_likelihood(x, mu.log(), theta, sparse)) - log_fact
        assert nb == pytest.approx(float(logpmf.sum()), rel=1e-5)
        zi = float(zinb_log_likelihood(x, mu.log(), theta, pi_logits, sparse)) - log_fact
        assert zi == pytest.approx(float(zinb.sum()), rel=1e-5)


def test_kl_warmup_is_scvi_like_and_query_uses_full_kl(sim):
    """The reference's KL weight rises over 400 epochs whatever max_epochs (a short run ends with a
    small weight, as scVI); an explicit warm-up reaches 1; a query trains at full KL weight."""
    from scaml.vae import SCVI, load_query

    ref = sim[sim.obs["batch"] == "batch1"][:150].copy()
    model = SCVI(ref, "batch", hidden_layers=(16,), random_state=0)
    model.train(max_epochs=4, early_stopping=False, verbose=False)
    weights = model.history["kl_weight"]
    assert all(b > a for a, b in zip(weights[:-1], weights[1:], strict=False))
    assert 0 < model.history["final_kl_weight"] <= 4 / 400
    short = SCVI(ref, "batch", hidden_layers=(16,), random_state=0)
    short.train(max_epochs=4, kl_warmup_epochs=2, verbose=False)
    assert short.history["final_kl_weight"] == 1.0
    query = load_query(model, sim[sim.obs["batch"] == "batch2"][:100].copy())
    query.train(max_epochs=2, verbose=False)
    assert query.history["kl_weight"] == [1.0, 1.0]
    with pytest.raises(ScamlError, match="kl_warmup_epochs"):
        model.train(max_epochs=1, kl_warmup_epochs=-1, verbose=False)
