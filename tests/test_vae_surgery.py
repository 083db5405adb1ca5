"""Tests of architecture surgery (scaml.vae.load_query): frozen reference, gene alignment, errors, real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from scaml.errors import ScamlError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def transfer_accuracy(z_ref, y_ref, z_query, y_query, k: int = 15) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(k).fit(z_ref, np.asarray(y_ref))
    return float((clf.predict(z_query) == np.asarray(y_query)).mean())


@pytest.fixture(scope="module")
def split():
    from scaml.datasets import simulate

    adata = simulate(n_cells=900, n_genes=300, n_batches=3, n_cell_types=4, n_markers=15, random_state=2)
    ref = adata[adata.obs["batch"] != "batch3"].copy()
    query = adata[adata.obs["batch"] == "batch3"].copy()
    return ref, query


@pytest.fixture(scope="module")
def reference(split):
    from scaml.vae import SCVI

    ref, _ = split
    return SCVI(ref, "batch", n_latent=8, hidden_layers=(64, 64)).train(max_epochs=60, verbose=False)


def test_surgery_freezes_reference_and_maps_query(split, reference):
    from scaml.vae import load_query

    ref, query = split
    before = {k: v.clone() for k, v in reference.module.state_dict().items()}
    z_ref = reference.get_latent()
    qm = load_query(reference, query)
    assert qm.conditions == ["batch1", "batch2", "batch3"]
    assert qm.is_query and not reference.is_query
    trainable = [n for n, p in qm.module.named_parameters() if p.requires_grad]
    assert sorted(trainable) == [
        "decoder.body.first.cond_blocks.1", "encoder.body.first.cond_blocks.1",
    ]
    frozen_before = {k: v.clone() for k, v in qm.module.state_dict().items()}
    qm.train(max_epochs=40, verbose=False)
    assert qm.history["train_loss"][-1] < qm.history["train_loss"][0]
    after = qm.module.state_dict()
    # every reference weight is unchanged, the new condition columns moved
    for name, value in frozen_before.items():
        if name.endswith("cond_blocks.1"):
            assert not torch.equal(value, after[name]), name
        else:
            assert torch.equal(value, after[name]), name
    # the reference model object itself is untouched
    for name, value in reference.module.state_dict().items():
        assert torch.equal(before[name], value), name
    # the reference embedding does not move
    np.testing.assert_array_equal(qm.get_latent(ref), z_ref)
    np.testing.assert_array_equal(reference.get_latent(), z_ref)
    # the query lands near reference cells of the same type
    z_query = qm.get_latent(query)
    acc = transfer_accuracy(z_ref, ref.obs["cell_type"], z_query, query.obs["cell_type"])
    assert acc > 0.8, acc
    # the reference model cannot embed the query's unknown batch
    with pytest.raises(ScamlError, match="load_query"):
        reference.get_latent(query)


def test_surgery_options(split, reference):
    from scaml.vae import load_query

    ref, query = split
    qm = load_query(reference, query, train_dispersion=True)
    names = {n for n, p in qm.module.named_parameters() if p.requires_grad}
    assert "log_theta.0" in names
    full = load_query(reference, query, unfrozen=True)
    assert all(p.requires_grad for p in full.module.parameters())
    z_ref = reference.get_latent()
    full.train(max_epochs=2, verbose=False)
    assert not np.allclose(full.get_latent(ref), z_ref)  # unfrozen: the reference moves (as documented)
    # dropout is switched off during frozen query training (freeze_dropout=True by default)
    from scaml.vae.training import set_train_mode

    set_train_mode(qm.module, frozen_norm=True, freeze_dropout=True)
    assert not any(m.training for m in qm.module.modules() if isinstance(m, torch.nn.Dropout))
    # without a batch column the whole query is one new condition
    no_batch = query.copy()
    del no_batch.obs["batch"]
    single = load_query(reference, no_batch)
    assert single.conditions[-1] == "query"
    assert single.get_latent(no_batch).shape == (query.n_obs, 8)


def test_surgery_gene_alignment(split, reference):
    from scaml.vae import load_query

    ref, query = split
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(query.n_vars, size=int(query.n_vars * 0.8), replace=False))
    sub = query[:, rng.permutation(keep)].copy()  # 20% of genes missing, the rest shuffled
    qm = load_query(reference, sub)
    data = qm._data
    assert data.n_genes == len(reference.genes)
    missing = np.setdiff1d(np.arange(query.n_vars), keep)
    assert data.X[:, missing].nnz == 0
    np.testing.assert_array_equal(data.X[:, keep].toarray(), query.X[:, keep].toarray())
    qm.train(max_epochs=30, verbose=False)
    acc = transfer_accuracy(
        reference.get_latent(), ref.obs["cell_type"], qm.get_latent(sub), query.obs["cell_type"]
    )
    assert acc > 0.75, acc
    few = query[:, :100].copy()
    with pytest.raises(ScamlError, match="only 33.3%.*force=True"):
        load_query(reference, few)
    assert load_query(reference, few, force=True).conditions[-1] == "batch3"


def test_surgery_errors(split, reference):
    from scaml.vae import load_query

    ref, query = split
    renamed = query.copy()
    renamed.var_names = [f"X{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ScamlError, match="no genes"):
        load_query(reference, renamed)
    ensembl = query.copy()
    ensembl.var_names = [f"ENSG{i:011d}" for i in range(ensembl.n_vars)]
    with pytest.raises(ScamlError, match="reference uses gene symbols and the query uses Ensembl IDs"):
        load_query(reference, ensembl)
    lower = query.copy()
    lower.var_names = [g.lower() for g in lower.var_names]
    with pytest.raises(ScamlError, match="different case"):
        load_query(reference, lower)
    same = ref[:100].copy()
    with pytest.raises(ScamlError, match=r"\['batch1'\] already exist.*allow_existing_conditions"):
        load_query(reference, same)
    qm = load_query(reference, same, allow_existing_conditions=True)
    assert qm.conditions == reference.conditions
    np.testing.assert_array_equal(qm.get_latent(same), reference.get_latent(same))
    qm.train(max_epochs=2, verbose=False)  # nothing to train: no error, nothing moves
    np.testing.assert_array_equal(qm.get_latent(same), reference.get_latent(same))
    with pytest.raises(ScamlError, match="Available"):
        load_query(reference, query, query_batch_key="donor")
    with pytest.raises(ScamlError, match="scaml.vae model"):
        load_query(object(), query)


def test_surgery_with_per_batch_dispersion_and_batch_norm(split):
    from scaml.vae import SCVI, load_query

    ref, query = split
    model = SCVI(ref, "batch", dispersion="gene-batch", gene_likelihood="zinb", hidden_layers=(32,),
                 use_batch_norm=True, use_layer_norm=False)
    model.train(max_epochs=3, verbose=False)
    qm = load_query(model, query)
    trainable = sorted(n for n, p in qm.module.named_parameters() if p.requires_grad)
    assert trainable == [
        "decoder.body.first.cond_blocks.1", "encoder.body.first.cond_blocks.1", "log_theta.1",
    ]
    qm.train(max_epochs=3, verbose=False)
    # batch-norm running statistics are frozen too: the reference embedding does not move
    np.testing.assert_array_equal(qm.get_latent(ref), model.get_latent())


def test_surgery_on_saved_models(tmp_path, split, reference):
    from scaml.vae import load_model, load_query

    ref, query = split
    loaded = load_model(reference.save(tmp_path / "ref"))
    qm = load_query(loaded, query).train(max_epochs=5, verbose=False)
    np.testing.assert_array_equal(qm.get_latent(ref), reference.get_latent())
    z = qm.get_latent(query)
    reloaded = load_model(qm.save(tmp_path / "query"))
    assert reloaded.is_query and reloaded.conditions == qm.conditions
    np.testing.assert_array_equal(reloaded.get_latent(query), z)
    trainable = sorted(n for n, p in reloaded.module.named_parameters() if p.requires_grad)
    assert trainable == ["decoder.body.first.cond_blocks.1", "encoder.body.first.cond_blocks.1"]


def test_scanvi_and_trvae_surgery(split):
    from scaml.vae import SCANVI, TRVAE, load_query

    ref, query = split
    scanvi = SCANVI(ref, "batch", label_key="cell_type", hidden_layers=(64, 64)).train(max_epochs=30, verbose=False)
    qm = load_query(scanvi, query).train(max_epochs=30, verbose=False)
    predicted, proba = qm.predict(query)
    assert (predicted == query.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    assert proba.shape == (query.n_obs, 4)
    trvae = TRVAE(ref, "batch", hidden_layers=(32,)).train(max_epochs=5, verbose=False)
    tq = load_query(trvae, query).train(max_epochs=3, verbose=False)
    np.testing.assert_array_equal(tq.get_latent(ref), trvae.get_latent())


@pytest.mark.realdata
def test_panc8_surgery_label_transfer(shared_data):
    """Hold out one pancreas technology, map it by surgery and transfer labels by kNN."""
    import scaml.io
    from scaml.vae import SCVI, load_query

    adata = scaml.io.read_h5ad(shared_file(shared_data, "h5ad", "panc8_small.h5ad"))
    adata.X = adata.X.copy()
    adata.X.data = np.round(adata.X.data)  # celseq counts are not all integers in the source object
    held_out = "smartseq2" if "smartseq2" in set(adata.obs["batch"]) else str(adata.obs["batch"].iloc[-1])
    is_query = (adata.obs["batch"] == held_out).to_numpy()
    ref, query = adata[~is_query].copy(), adata[is_query].copy()
    model = SCVI(ref, "batch").train(max_epochs=150, verbose=False)
    qm = load_query(model, query).train(max_epochs=100, verbose=False)
    acc = transfer_accuracy(model.get_latent(), ref.obs["cell_type"], qm.get_latent(query), query.obs["cell_type"])
    print(f"panc8_small, query {held_out}: kNN label-transfer accuracy {acc:.3f}")
    assert acc > 0.7, acc
