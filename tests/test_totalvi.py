"""TOTALVI: the joint latent, foreground probabilities, masked-panel imputation, save/load, surgery, CLI."""

from __future__ import annotations

import json
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import cli_build_and_map_at_scale, shared_file
from sklearn.neighbors import KNeighborsClassifier

from scaml.cli import main
from scaml.datasets import simulate_cite
from scaml.errors import ScamlError
from scaml.vae import TOTALVI, load_model, load_query
from scaml.vae.freeze import trainable_parameter_names

HIDDEN = ["type_A_p0", "type_A_p1"]  # not on batch2's panel


@pytest.fixture(scope="module")
def cite() -> ad.AnnData:
    """Three batches, 4 types, 12 proteins; batch2 lacks type_A's two marker proteins; batch3 is the query."""
    return simulate_cite(1800, 300, 12, n_batches=3, n_cell_types=4, n_missing=2, missing_batch="batch2",
                         random_state=0)


@pytest.fixture(scope="module")
def reference(cite) -> ad.AnnData:
    return cite[cite.obs["batch"] != "batch3"].copy()


@pytest.fixture(scope="module")
def query(cite) -> ad.AnnData:
    """The held-out batch with a smaller panel (no type_B_p0) and names in another style (``_TotalSeqB``, upper case)."""
    q = cite[cite.obs["batch"] == "batch3"].copy()
    q.obsm["protein_expression"] = q.obsm["protein_expression"].drop(columns=["type_B_p0"])
    q.obsm["protein_expression"].columns = [f"{c.upper()}_TotalSeqB" for c in q.obsm["protein_expression"].columns]
    return q


@pytest.fixture(scope="module")
def model(reference, torch_one_thread) -> TOTALVI:
    start = time.perf_counter()
    m = TOTALVI(reference, "batch", random_state=0).train(max_epochs=60, verbose=False, n_threads=1)
    print(f"TOTALVI reference: {reference.n_obs} cells, 60 epochs in {time.perf_counter() - start:.1f} s")
    return m


def _hvg(adata: ad.AnnData, n: int) -> np.ndarray:
    from scaml.preprocess import highly_variable_genes, log_normalize

    batch = adata.obs["batch"].to_numpy() if adata.obs["batch"].nunique() > 1 else None
    return highly_variable_genes(log_normalize(adata.X), n, batch=batch, var_names=adata.var_names)


def _knn_accuracy(train, train_labels, test, test_labels) -> float:
    knn = KNeighborsClassifier(15).fit(train, train_labels)
    return float((knn.predict(test) == np.asarray(test_labels)).mean())


def test_latent_separates_cell_types(model, reference):
    z = model.get_latent()
    assert z.shape == (reference.n_obs, 10) and z.dtype == np.float32
    labels = reference.obs["cell_type"].to_numpy()
    half = np.arange(reference.n_obs) % 2 == 0
    acc = _knn_accuracy(z[half], labels[half], z[~half], labels[~half])
    print("kNN accuracy of the joint latent:", acc)
    assert acc > 0.95


def test_foreground_probability_is_high_for_the_marker_only(model, reference):
    fore = model.get_protein_foreground_probability()
    assert fore.shape == (reference.n_obs, 12) and list(fore.columns) == model.protein_names
    types = reference.obs["cell_type"].astype(str).to_numpy()
    for t, markers in reference.uns["protein_markers"].items():
        for p in markers:
            own, other = fore.loc[types == t, p].mean(), fore.loc[types != t, p].mean()
            assert own > 0.7 and other < 0.2, (p, own, other)


def test_masked_protein_is_imputed_not_learnt_as_zero(model, reference):
    """batch2 never measured type_A's markers: they are masked, imputed near the truth and flagged."""
    assert model.missing_proteins() == {"batch2": HIDDEN}
    denoised = model.get_normalized_protein()
    assert denoised.attrs["imputed"] == HIDDEN
    imputed = model.get_imputed_mask()
    in_b2 = (reference.obs["batch"] == "batch2").to_numpy()
    assert imputed.loc[in_b2, HIDDEN].all().all() and not imputed.loc[~in_b2].any().any()
    truth = reference.obsm["protein_expression_full"]
    is_a = (reference.obs["cell_type"] == "type_A").to_numpy()
    for p in HIDDEN:
        # type_A cells of batch2 get a high value (the data there are all 0), the others a low one
        assert denoised.loc[in_b2 & is_a, p].mean() > 5 * denoised.loc[in_b2 & ~is_a, p].mean()
        r = np.corrcoef(np.log1p(denoised.loc[in_b2, p]), np.log1p(truth.loc[in_b2, p]))[0, 1]
        print(f"imputed {p} in batch2: r = {r:.3f}")
        assert r > 0.6
    fore = model.get_protein_foreground_probability()
    assert fore.loc[in_b2 & is_a, HIDDEN].to_numpy().mean() > 0.7
    # the RNA output: proportions per cell
    rna = model.get_normalized_expression()
    assert rna.shape == (reference.n_obs, reference.n_vars)
    np.testing.assert_allclose(rna.sum(axis=1).to_numpy(), 1.0, rtol=1e-4)


def test_save_load_round_trip(model, reference, tmp_path):
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert isinstance(loaded, TOTALVI) and loaded.protein_names == model.protein_names
    np.testing.assert_array_equal(loaded.get_latent(reference), model.get_latent())
    pd.testing.assert_frame_equal(loaded.get_normalized_protein(reference), model.get_normalized_protein())
    assert loaded.missing_proteins() == model.missing_proteins()
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["module"]["extra"]["n_proteins"] == 12


def test_surgery_maps_a_held_out_batch_with_a_smaller_panel(model, reference, query):
    qmodel = load_query(model, query)
    trainable = trainable_parameter_names(qmodel.module)
    # the new batch's columns of every conditional layer and its background-prior rows, nothing else
    assert trainable and all(".cond_blocks.1" in name for name in trainable)
    assert any(name.startswith("protein_decoder.") for name in trainable)
    assert any(name.startswith("background_mean.") for name in trainable)
    qmodel.train(max_epochs=40, verbose=False, n_threads=1)
    np.testing.assert_array_equal(qmodel.get_latent(reference), model.get_latent())  # the reference stays put
    acc = _knn_accuracy(model.get_latent(), reference.obs["cell_type"], qmodel.get_latent(query),
                        query.obs["cell_type"])
    print("query kNN accuracy after surgery:", acc)
    assert acc > 0.9
    assert qmodel.missing_proteins()["batch3"] == ["type_B_p0"]
    denoised = qmodel.get_normalized_protein(query)
    assert denoised.attrs["imputed"] == ["type_B_p0"]
    is_b = (query.obs["cell_type"] == "type_B").to_numpy()
    assert denoised.loc[is_b, "type_B_p0"].mean() > 5 * denoised.loc[~is_b, "type_B_p0"].mean()


def test_bad_inputs_are_refused(reference, query):
    bad = reference.copy()
    frame = bad.obsm["protein_expression"].copy()
    frame.iloc[0, 0] = -1
    bad.obsm["protein_expression"] = frame
    with pytest.raises(ScamlError, match="negative protein values"):
        TOTALVI(bad, "batch")
    no_key = reference.copy()
    del no_key.obsm["protein_expression"]
    with pytest.raises(ScamlError, match="no key 'protein_expression'"):
        TOTALVI(no_key, "batch")
    with pytest.raises(ScamlError, match="gene_likelihood='mse' is not supported"):
        TOTALVI(reference, "batch", gene_likelihood="mse")


def test_query_without_protein_overlap_is_refused(model, query):
    other = query.copy()
    other.obsm["protein_expression"].columns = [f"X{i}" for i in range(other.obsm["protein_expression"].shape[1])]
    with pytest.raises(ScamlError, match="share no name"):
        load_query(model, other)


def test_cli_build_and_map_with_label_transfer(reference, query, tmp_path):
    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query.h5ad"
    reference.write_h5ad(ref_path)
    query.write_h5ad(query_path)
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(ref_path), "--method", "totalvi", "--batch-key", "batch",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "30", "--threads", "1",
                 "--quiet"]) == 0
    manifest = json.loads((out / "reference.json").read_text())
    assert manifest["method"] == "totalvi" and manifest["protein_missing"] == {"batch2": HIDDEN}
    mapped_dir = tmp_path / "map"
    assert main(["map", "--reference", str(out), "--query", str(query_path), "--out", str(mapped_dir),
                 "--label-key", "cell_type", "--max-epochs", "20", "--threads", "1", "--no-umap", "--quiet"]) == 0
    metrics = json.loads((mapped_dir / "metrics.json").read_text())
    print("totalvi CLI query:", metrics["weighted_knn"])
    assert metrics["weighted_knn"]["accuracy"] > 0.85
    mapped = ad.read_h5ad(mapped_dir / "mapped.h5ad")
    assert mapped.obsm["denoised_protein"].shape == (query.n_obs, 12)
    assert list(mapped.uns["totalvi"]["imputed_proteins"]["batch3"]) == ["type_B_p0"]
    assert mapped.obsm["protein_imputed"]["type_B_p0"].all()
    # a query with negative protein counts: one line, exit status 2
    bad = query.copy()
    bad.obsm["protein_expression"].iloc[0, 0] = -3
    bad.write_h5ad(tmp_path / "bad.h5ad")
    assert main(["map", "--reference", str(out), "--query", str(tmp_path / "bad.h5ad"), "--out",
                 str(tmp_path / "bad_map"), "--quiet"]) == 2


@pytest.mark.slow
def test_cli_totalvi_at_scale(tmp_path):
    """``reference build --method totalvi`` + ``map`` with >= 20,000 reference cells (small panels, 2 epochs)."""
    start = time.perf_counter()
    adata = simulate_cite(27_000, 200, 10, n_batches=4, n_cell_types=4, n_missing=2, missing_batch="batch2",
                          mean_library_size=1500, random_state=1)
    metrics = cli_build_and_map_at_scale(tmp_path, adata, "totalvi")
    print(f"totalvi at scale: {metrics['weighted_knn']} in {time.perf_counter() - start:.1f} s")
    assert metrics["weighted_knn"]["accuracy"] > 0.7


def test_real_cite_two_panels(shared_data, torch_one_thread):
    """pbmc5k (29 proteins) + pbmc10k (14): the 15 proteins outside the 10k panel are masked and imputed there."""
    adata = ad.read_h5ad(shared_file(shared_data, "cite", "pbmc_protein_5k10k.h5ad"))
    adata = adata[:, _hvg(adata, 1000)].copy()
    model = TOTALVI(adata, "batch", random_state=0).train(max_epochs=100, verbose=False, n_threads=1)
    missing = model.missing_proteins()
    assert sorted(missing["pbmc10k"]) == sorted(map(str, adata.uns["protein_panel_missing"]["pbmc10k"]))
    denoised = model.get_normalized_protein()
    proteins = adata.obsm["protein_expression"]
    in_5k = (adata.obs["batch"] == "pbmc5k").to_numpy()
    for p in ("CD3_TotalSeqB", "CD19_TotalSeqB", "CD14_TotalSeqB"):  # measured in both: denoised follows the counts
        r = np.corrcoef(np.log1p(denoised[p]), np.log1p(proteins[p]))[0, 1]
        assert r > 0.6, (p, r)
    # CD20 (not on the 10k panel) is imputed from the shared markers: it follows CD19, as B cells carry both
    in_10k = ~in_5k
    b_cell = np.log1p(proteins.loc[in_10k, "CD19_TotalSeqB"]) > np.log1p(proteins.loc[in_5k, "CD19_TotalSeqB"]).median() + 1.5
    cd20 = denoised.loc[in_10k, "CD20_TotalSeqB"]
    assert cd20.min() > 0 and cd20[b_cell.to_numpy()].mean() > 3 * cd20[~b_cell.to_numpy()].mean()


def test_report_protein_values_from_totalvi(reference, tmp_path):
    """integrate's protein figures with protein_model='totalvi': denoised values, said so, drawn."""
    from scaml.cite.figures import protein_figures, protein_values

    cells = reference[::3].copy()
    cells.layers["counts"] = cells.X.copy()
    summary = protein_values(cells, batch_key="batch", protein_model="totalvi", max_epochs=5)
    assert summary["kind"] == "totalvi" and summary["label"] == "totalVI-denoised protein"
    assert summary["missing"] == {"batch2": HIDDEN}
    assert cells.obsm["denoised_protein"].shape == (cells.n_obs, 12) and cells.obsm["X_totalvi"].shape[1] == 10
    cells.obsm["X_umap"] = cells.obsm["X_totalvi"][:, :2]
    cells.obs["leiden"] = cells.obs["cell_type"].cat.codes.astype(str).astype("category")
    paths = protein_figures(cells, summary, tmp_path, batch_key="batch")
    assert [p.name for p in paths] == ["protein_umap.png", "protein_dotplot.png"]
    with pytest.raises(ScamlError, match="protein_model='scvi' is not known"):
        protein_values(cells, batch_key="batch", protein_model="scvi")


def test_rna_only_query_and_dead_antibody(model, reference, query):
    """A query without proteins maps by its RNA (all proteins imputed); a protein zero everywhere is masked, with a warning."""
    rna_only = query.copy()
    del rna_only.obsm["protein_expression"]
    qmodel = load_query(model, rna_only).train(max_epochs=10, verbose=False, n_threads=1)
    assert qmodel.missing_proteins()["batch3"] == model.protein_names
    assert qmodel.get_imputed_mask(rna_only).to_numpy().all()
    acc = _knn_accuracy(model.get_latent(), reference.obs["cell_type"], qmodel.get_latent(rna_only),
                        query.obs["cell_type"])
    assert acc > 0.8
    dead = reference[::4].copy()
    dead.obsm["protein_expression"]["PROT08"] = 0.0
    from scaml._utils import WARNINGS

    n_warnings = len(WARNINGS)
    m = TOTALVI(dead, "batch")
    assert any("PROT08" in w and "zero in every cell" in w for w in WARNINGS[n_warnings:])
    assert all("PROT08" in v for v in m.missing_proteins().values())


def test_real_query_with_a_smaller_panel(shared_data, torch_one_thread):
    """pbmc10k (14 proteins) mapped onto a pbmc5k reference (29): the 15 others are imputed and flagged."""
    ref = ad.read_h5ad(shared_file(shared_data, "cite", "pbmc5k_protein_200.h5ad"))
    query = ad.read_h5ad(shared_file(shared_data, "cite", "pbmc10k_protein_200.h5ad"))
    ref = ref[:, _hvg(ref, 1000)].copy()
    model = TOTALVI(ref, "batch", random_state=0).train(max_epochs=100, verbose=False, n_threads=1)
    qmodel = load_query(model, query).train(max_epochs=50, verbose=False, n_threads=1)
    assert len(qmodel.missing_proteins()["pbmc10k"]) == 15
    denoised = qmodel.get_normalized_protein(query)
    assert len(denoised.attrs["imputed"]) == 15 and "CD20_TotalSeqB" in denoised.attrs["imputed"]
    measured = query.obsm["protein_expression"]
    r = np.corrcoef(np.log1p(denoised["CD19_TotalSeqB"]), np.log1p(measured["CD19_TotalSeqB"]))[0, 1]
    assert r > 0.5, r
    # imputed CD20 is high where the query's measured CD19 is high (B cells carry both)
    b_cell = (measured["CD19_TotalSeqB"] > measured["CD19_TotalSeqB"].quantile(0.9)).to_numpy()
    cd20 = denoised["CD20_TotalSeqB"].to_numpy()
    assert cd20[b_cell].mean() > 3 * cd20[~b_cell].mean()
