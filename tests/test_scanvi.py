"""Tests of the full scANVI model (scaml.vae.SCANVI): labels in the generative model, unlabelled loss,
label-balanced classification loss, surgery on unlabelled query cells, save / load, from_scvi_model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scaml.errors import ScamlError

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def split():
    from scaml.datasets import simulate

    adata = simulate(n_cells=900, n_genes=300, n_batches=3, n_cell_types=4, n_markers=15, random_state=3)
    ref = adata[adata.obs["batch"] != "batch3"].copy()
    query = adata[adata.obs["batch"] == "batch3"].copy()
    return ref, query


@pytest.fixture(scope="module")
def reference(split):
    from scaml.vae import SCANVI

    ref, _ = split
    return SCANVI(ref, "batch", label_key="cell_type", n_latent=8, hidden_layers=(64, 64)).train(
        max_epochs=40, verbose=False)


def _batch(model, adata):
    data = model._prepare(adata, training=True)
    return next(data.batches(adata.n_obs, torch.device("cpu"), drop_last_single=False))


def test_labels_feed_the_generative_model(split, reference):
    ref, _ = split
    module = reference.module
    assert module.cfg.label_generative and module.cfg.n_labels == 4
    assert module.encoder_z2 is not None and module.decoder_z1 is not None
    batch = _batch(reference, ref[:64])
    assert batch.labels is not None and (batch.labels >= 0).all()
    module.eval()
    with torch.no_grad():
        loss_true, parts = module.loss(batch.x, batch.cond, batch.log_library, batch.labels)
        wrong = (batch.labels + 1) % module.cfg.n_labels
        loss_wrong, _ = module.loss(batch.x, batch.cond, batch.log_library, wrong)
        # the same cells with their labels hidden: the unlabelled loss
        loss_unlab, _ = module.loss(batch.x, batch.cond, batch.log_library, torch.full_like(batch.labels, -1))
    assert "z1" in parts
    # a wrong label makes p(z1 | z2, y) and the classifier fit worse
    assert float(loss_wrong) > float(loss_true)
    assert float(loss_unlab) != pytest.approx(float(loss_true))
    # the decoder p(z1 | z2, y) gets gradients from the ELBO (classification switched off)
    module.train()
    module.zero_grad()
    loss, _ = module.loss(batch.x, batch.cond, batch.log_library, None)
    loss.backward()
    grads = [p.grad for p in module.decoder_z1.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert sum(float(p.grad.abs().sum()) for p in module.encoder_z2.parameters()) > 0
    module.zero_grad()
    module.eval()


def test_unlabelled_loss_is_the_average_over_q_y(split, reference):
    """Unlabelled: sum_y q(y|z1) * (labelled terms with label y), plus KL(q(y|z1) || p(y)) in the KL part."""
    ref, _ = split
    module = reference.module
    module.eval()
    batch = _batch(reference, ref[:32])
    with torch.no_grad():
        mean, log_var = module.encoder(batch.x, batch.cond)
        z1_u, kl_u = module.label_terms(mean, mean, log_var, None)
        probs = torch.softmax(module.classifier(mean), dim=-1)
        per_label = [module.label_terms(mean, mean, log_var, torch.full((32,), y)) for y in range(4)]
        z1_avg = sum(probs[:, y] * per_label[y][0] for y in range(4))
        kl_avg = sum(probs[:, y] * per_label[y][1] for y in range(4))
        kl_y = (probs * (torch.log(probs) + np.log(4))).sum(dim=-1)
        # mixed batch: labelled cells take their own label's terms
        mixed = batch.labels.clone()
        mixed[::2] = -1
        z1_m, kl_m = module.label_terms(mean, mean, log_var, mixed)
    torch.testing.assert_close(z1_u, z1_avg, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(kl_u, kl_avg + kl_y, rtol=1e-4, atol=1e-3)
    own = torch.stack([per_label[int(y)][0][i] for i, y in enumerate(batch.labels)])
    torch.testing.assert_close(z1_m[1::2], own[1::2])
    torch.testing.assert_close(z1_m[::2], z1_u[::2])


def test_scanvi_classifies_labelled_cells(split, reference):
    ref, _ = split
    predicted, proba = reference.predict(ref)
    assert (predicted == ref.obs["cell_type"].astype(str).to_numpy()).mean() > 0.95
    assert proba.shape == (ref.n_obs, 4)


def test_query_trains_as_unlabelled_through_the_unlabelled_loss(split, reference, monkeypatch):
    from scaml.vae import load_query
    from scaml.vae.modules import ConditionalVAE

    _, query = split
    qm = load_query(reference, query)
    assert qm._data.labels is None  # the query's true labels are not used
    trainable = sorted(n for n, p in qm.module.named_parameters() if p.requires_grad)
    assert trainable == ["decoder.body.first.cond_blocks.1", "encoder.body.first.cond_blocks.1"]
    seen: list[bool] = []
    original = ConditionalVAE.label_terms

    def spy(self, z1, mean, log_var, labels):
        seen.append(labels is None or bool((labels < 0).all()))
        return original(self, z1, mean, log_var, labels)

    monkeypatch.setattr(ConditionalVAE, "label_terms", spy)
    frozen = {k: v.clone() for k, v in qm.module.state_dict().items() if "cond_blocks.1" not in k}
    qm.train(max_epochs=30, verbose=False)
    assert seen and all(seen)
    after = qm.module.state_dict()
    for name, value in frozen.items():  # classifier, q(z2 | z1, y), p(z1 | z2, y) and the rest frozen
        assert torch.equal(value, after[name]), name
    predicted, _ = qm.predict(query)
    assert (predicted == query.obs["cell_type"].astype(str).to_numpy()).mean() > 0.9


def test_query_labels_optional(split, reference):
    from scaml.vae import SCVI, load_query

    ref, query = split
    q = query.copy()
    labels = q.obs["cell_type"].astype(str).to_numpy().copy()
    labels[:100] = "new_type"  # not a reference label: unlabelled
    q.obs["cell_type"] = labels
    qm = load_query(reference, q, use_query_labels=True)
    codes = qm._data.labels
    assert codes is not None and (codes[:100] == -1).all() and (codes[100:] >= 0).all()
    assert qm.config["surgery"]["query_labels"] is True
    qm.train(max_epochs=3, verbose=False)
    with pytest.raises(ScamlError, match="needs a SCANVI reference"):
        load_query(SCVI(ref, "batch", hidden_layers=(16,)), query, use_query_labels=True)
    with pytest.raises(ScamlError, match="cell_type"):
        load_query(reference, query.copy().obs.drop(columns="cell_type").pipe(lambda o: _with_obs(query, o)),
                   use_query_labels=True)


def _with_obs(adata, obs):
    out = adata.copy()
    out.obs = obs
    return out


def test_balanced_label_rows():
    from scaml.vae.training import balanced_label_rows

    labels = np.array([0] * 50 + [1] * 5 + [2] * 20 + [-1] * 10)
    rows = np.arange(labels.size)
    g = torch.Generator().manual_seed(0)
    drawn = balanced_label_rows(labels, rows, 8, g)
    counts = np.bincount(labels[drawn], minlength=3)
    assert counts.tolist() == [8, 5, 8]  # all 5 cells of the small label, 8 of the others
    assert len(set(drawn.tolist())) == drawn.size and (labels[drawn] >= 0).all()
    again = balanced_label_rows(labels, rows, 8, g)
    assert set(again.tolist()) != set(drawn.tolist())  # redrawn every epoch
    everyone = balanced_label_rows(labels, rows, None, g)
    assert sorted(everyone.tolist()) == list(range(75))
    sub = balanced_label_rows(labels, rows[:57], 3, g)  # only the training rows: 50 x 0, 5 x 1, 2 x 2
    assert (sub < 57).all() and np.bincount(labels[sub]).tolist() == [3, 3, 2]


def test_n_samples_per_label_feeds_the_classification_loss(split, monkeypatch):
    from scaml.vae import SCANVI
    from scaml.vae.modules import ConditionalVAE

    ref, _ = split
    # imbalanced labels: 10 cells of one type, the rest of the others
    adata = ref.copy()
    types = adata.obs["cell_type"].astype(str).to_numpy()
    keep = (types != types[0]) | (np.cumsum(types == types[0]) <= 10)
    adata = adata[keep].copy()
    model = SCANVI(adata, "batch", label_key="cell_type", hidden_layers=(32,), n_samples_per_label=10)
    assert model.config["params"]["n_samples_per_label"] == 10
    sizes: list[np.ndarray] = []
    original = ConditionalVAE.loss

    def spy(self, *args, labelled=None, **kwargs):
        if self.training:
            assert labelled is not None
            sizes.append(np.bincount(labelled[2].numpy(), minlength=4))
        return original(self, *args, labelled=labelled, **kwargs)

    monkeypatch.setattr(ConditionalVAE, "loss", spy)
    model.train(max_epochs=2, verbose=False, batch_size=256)
    # each step's labelled batch is the epoch's balanced sample (at most 40 cells < 256): 10 cells of
    # each large label and the small label's training cells, where the main batches hold ~140 per label
    small = model.labels.index(types[0])
    assert len(sizes) >= 4
    for s in sizes:
        big = np.delete(s, small)
        assert (big == 10).all() and 5 <= s[small] <= 10, s
    with pytest.raises(ScamlError, match="n_samples_per_label.*whole number"):
        SCANVI(adata, "batch", label_key="cell_type", n_samples_per_label=0)
    with pytest.raises(ScamlError, match="n_samples_per_label"):
        SCANVI(adata, "batch", label_key="cell_type", n_samples_per_label=2.5)


def test_save_load_roundtrip_and_old_directories(tmp_path, split, reference):
    from scaml.vae import load_model, load_query

    ref, query = split
    path = reference.save(tmp_path / "ref")
    loaded = load_model(path, device="cpu")
    assert loaded.module.cfg.label_generative
    np.testing.assert_array_equal(loaded.get_latent(ref), reference.get_latent())
    p1, prob1 = reference.predict(ref)
    p2, prob2 = loaded.predict(ref)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_allclose(prob1.to_numpy(), prob2.to_numpy())
    load_query(loaded, query).train(max_epochs=2, verbose=False)
    # a directory written before scANVI's generative model (classifier only) still loads and maps
    old = tmp_path / "old"
    reference.save(old)
    config = json.loads((old / "config.json").read_text())
    for key in ("label_generative", "classifier_layers", "classifier_dropout"):
        del config["module"][key]
    for key in ("n_samples_per_label", "classifier_layers", "classifier_dropout"):
        config["params"].pop(key)
    (old / "config.json").write_text(json.dumps(config))
    state = torch.load(old / "model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.startswith(("encoder_z2.", "decoder_z1."))},
               old / "model.pt")
    legacy = load_model(old, device="cpu")
    assert not legacy.module.cfg.label_generative and legacy.module.decoder_z1 is None
    np.testing.assert_array_equal(legacy.predict(ref)[0], p1)
    load_query(legacy, query).train(max_epochs=2, verbose=False)


def test_classifier_depth_and_dropout(tmp_path, split):
    from scaml.vae import SCANVI, load_model

    ref, _ = split
    model = SCANVI(ref, "batch", label_key="cell_type", n_latent=8, hidden_layers=(32,),
                   classifier_layers=2, classifier_dropout=0.2)
    linear = [m for m in model.module.classifier if isinstance(m, torch.nn.Linear)]
    dropout = [m for m in model.module.classifier if isinstance(m, torch.nn.Dropout)]
    assert [(m.in_features, m.out_features) for m in linear] == [(8, 32), (32, 32), (32, 4)]
    assert [m.p for m in dropout] == [0.2, 0.2]
    model.train(max_epochs=20, verbose=False)
    labels, _ = model.predict(ref)
    assert (labels == ref.obs["cell_type"].astype(str).to_numpy()).mean() > 0.8
    loaded = load_model(model.save(tmp_path / "deep"), device="cpu")
    np.testing.assert_array_equal(loaded.predict(ref)[0], labels)  # eval mode: dropout off, same labels
    # the default: one hidden layer, no dropout (the classifier of earlier SCANVI directories)
    plain = SCANVI(ref, "batch", label_key="cell_type", n_latent=8, hidden_layers=(32,))
    assert sum(isinstance(m, torch.nn.Linear) for m in plain.module.classifier) == 2
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.module.classifier)
    for bad in ({"classifier_layers": 0}, {"classifier_layers": 1.5}, {"classifier_dropout": 1.0}):
        with pytest.raises(ScamlError, match=next(iter(bad))):
            SCANVI(ref, "batch", label_key="cell_type", **bad)


def test_from_scvi_model(split):
    from scaml.vae import SCANVI, SCVI

    ref, query = split
    scvi = SCVI(ref, "batch", n_latent=6, hidden_layers=(32,)).train(max_epochs=5, verbose=False)
    model = SCANVI.from_scvi_model(scvi, ref, "cell_type", n_samples_per_label=20)
    assert model.module.cfg.n_latent == 6 and model.module.cfg.hidden_layers == [32]
    for name, value in scvi.module.state_dict().items():
        torch.testing.assert_close(model.module.state_dict()[name], value)
    np.testing.assert_allclose(model.get_latent(), scvi.get_latent(), rtol=1e-5, atol=1e-5)
    model.train(max_epochs=3, verbose=False)
    with pytest.raises(ScamlError, match="architecture from the SCVI model"):
        SCANVI.from_scvi_model(scvi, ref, "cell_type", n_latent=4)
    with pytest.raises(ScamlError, match="genes and batches"):
        SCANVI.from_scvi_model(scvi, ref[:, :200].copy(), "cell_type")
    with pytest.raises(ScamlError, match="reference scaml.vae.SCVI"):
        SCANVI.from_scvi_model(model, ref, "cell_type")


def test_cli_n_samples_per_label(split, tmp_path, capsys):
    from scaml.cli import main

    ref, _ = split
    path = tmp_path / "ref.h5ad"
    ref.write_h5ad(path)
    base = ["reference", "build", str(path), "--batch-key", "batch", "--label-key", "cell_type", "--n-hvg", "0",
            "--max-epochs", "2", "--hidden-layers", "16", "--threads", "1", "--n-samples-per-label", "20", "--quiet"]
    assert main([*base, "--method", "scanvi", "--out", str(tmp_path / "scanvi")]) == 0
    config = json.loads((tmp_path / "scanvi" / "model" / "config.json").read_text())
    assert config["params"]["n_samples_per_label"] == 20 and config["module"]["label_generative"] is True
    capsys.readouterr()
    assert main([*base, "--method", "scvi", "--out", str(tmp_path / "scvi")]) == 0
    assert "n_samples_per_label" in capsys.readouterr().err  # reported as unused by scvi
