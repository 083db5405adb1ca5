"""scaml.vae.MVTCR: the joint expression + TCR latent, missing chains, save / load, surgery, the clonotype split."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from scaml import tcr
from scaml.datasets import simulate_tcr
from scaml.errors import ScamlError
from scaml.vae import MVTCR, SCVI, load_model, load_query
from scaml.vae.freeze import trainable_parameter_names

FAST = {"verbose": False, "n_threads": 1}


@pytest.fixture(scope="module")
def data():
    adata = simulate_tcr(1000, 200, n_batches=3, n_clusters=3, random_state=4)
    ref = adata[adata.obs["patient"] != "patient3"].copy()
    query = adata[adata.obs["patient"] == "patient3"].copy()
    model = MVTCR(ref, "patient", random_state=0).train(max_epochs=25, **FAST)
    return {"ref": ref, "query": query, "model": model}


def test_joint_latent_groups_clonotypes_better_than_expression_alone(data):
    ref, model = data["ref"], data["model"]
    clones = ref.obs["clonotype"].astype(str).to_numpy()
    joint = model.get_latent()
    scvi = SCVI(ref, "patient", random_state=0).train(max_epochs=25, **FAST).get_latent()
    own_expression = model.get_latent(modality="expression")
    rates = {name: tcr.clonotype_neighbor_rate(z, clones) for name, z in
             (("joint", joint), ("scvi", scvi), ("expression", own_expression))}
    clusters = ref.obs["cell_type"].to_numpy()
    ratios = {name: tcr.clonotype_distance_ratio(z, clones, clusters) for name, z in
              (("joint", joint), ("scvi", scvi))}
    print("clonotype neighbour rate:", rates, "distance ratio:", ratios)
    assert rates["joint"] > rates["scvi"] + 0.25 and rates["joint"] > rates["expression"] + 0.25
    assert ratios["joint"] < 0.8 * ratios["scvi"]
    # the clusters stay apart in the joint latent
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    accuracy = cross_val_score(KNeighborsClassifier(15), joint, ref.obs["cell_type"].astype(str), cv=3).mean()
    assert accuracy > 0.9


def test_training_split_keeps_clonotypes_apart(data):
    model = data["model"]
    assert model.clonotypes is not None and model.history["n_validation_cells"] > 0
    train, val = model._split_rows(model._data, 0.1, torch.Generator().manual_seed(0))
    clones = model.clonotypes
    assert not set(clones[train]) & set(clones[val])


def test_missing_chains_and_modalities(data):
    ref, model = data["ref"], data["model"]
    table = tcr.read_tcr(ref, report=False)
    no_alpha = table["tcr_alpha_cdr3"].isna().to_numpy()
    assert no_alpha.any()
    tcr_only = model.get_latent(modality="tcr")
    assert np.isfinite(tcr_only).all()
    # a cell without a chain: the TCR-only posterior is the prior (mean 0)
    bare = ref[:5].copy()
    bare.obs["IR_VJ_1_cdr3"] = "None"
    bare.obs["IR_VDJ_1_cdr3"] = "None"
    assert np.allclose(model.get_latent(bare, modality="tcr"), 0.0)
    # data without any TCR column are embedded from expression alone (= the expression modality)
    expression_only = ad.AnnData(X=ref.X[:20], obs=ref.obs[["patient"]].iloc[:20].copy(), var=ref.var.copy())
    assert np.allclose(model.get_latent(expression_only), model.get_latent(ref[:20].copy(), modality="expression"),
                       atol=1e-5)
    with pytest.raises(ScamlError, match="modality must be one of"):
        model.get_latent(modality="protein")


def test_save_load_round_trip(data, tmp_path):
    ref, model = data["ref"], data["model"]
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert isinstance(loaded, MVTCR)
    assert loaded.module.cfg.extra["vocabularies"] == model.module.cfg.extra["vocabularies"]
    assert np.allclose(loaded.get_latent(ref), model.get_latent(), atol=1e-5)


def test_surgery_on_a_held_out_batch(data):
    ref, query, model = data["ref"], data["query"].copy(), data["model"]
    before = model.get_latent()
    # a V gene the reference never saw maps to 'unknown'
    obs = query.obs
    obs["IR_VDJ_1_v_gene"] = obs["IR_VDJ_1_v_gene"].astype(str)
    obs.iloc[:10, obs.columns.get_loc("IR_VDJ_1_v_gene")] = "TRBV99-9"
    qmodel = load_query(model, query)
    trainable = trainable_parameter_names(qmodel.module)
    assert trainable and all("cond_blocks" in name for name in trainable)
    assert not any("cdr3" in name or "expert" in name for name in trainable)
    qmodel.train(max_epochs=10, **FAST)
    z_query = qmodel.get_latent(query)
    assert z_query.shape == (query.n_obs, model.module.cfg.n_latent) and np.isfinite(z_query).all()
    # the reference embedding does not move
    assert np.allclose(qmodel.get_latent(ref), before, atol=1e-5)
    # query cells land near reference cells of their cluster
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(15).fit(before, ref.obs["cell_type"].astype(str))
    assert (knn.predict(z_query) == query.obs["cell_type"].astype(str).to_numpy()).mean() > 0.85
    clones = query.obs["clonotype"].astype(str).to_numpy()
    assert tcr.clonotype_neighbor_rate(z_query, clones) > 0.3


def test_bad_parameters(data):
    ref = data["ref"][:100].copy()
    with pytest.raises(ScamlError, match="tcr_weight must be"):
        MVTCR(ref, "patient", tcr_weight=-1)
    with pytest.raises(ScamlError, match="gene_likelihood='mse' is not supported by MVTCR"):
        MVTCR(ref, "patient", gene_likelihood="mse")
    with pytest.raises(ScamlError, match="unknown tcr_layout"):
        MVTCR(ref, "patient", tcr_layout="bam")
    bare = ad.AnnData(X=ref.X, obs=pd.DataFrame({"patient": ref.obs["patient"].to_numpy()}, index=ref.obs_names),
                      var=ref.var.copy())
    with pytest.raises(ScamlError, match="no TCR columns found"):
        MVTCR(bare, "patient")


def test_clonotype_key(data):
    ref, query = data["ref"][:200].copy(), data["query"][:50].copy()
    with pytest.raises(ScamlError, match="'nope'"):
        MVTCR(ref, "patient", clonotype_key="nope")
    model = MVTCR(ref, "patient", clonotype_key="clonotype")
    assert (model.clonotypes == ref.obs["clonotype"].astype(str).to_numpy()).all()
    # a query without the reference's clonotype column derives its clonotypes from the chains
    query.obs = query.obs.drop(columns=["clonotype"])
    qmodel = load_query(model, query)
    assert qmodel.clonotypes is not None and len(qmodel.clonotypes) == query.n_obs
