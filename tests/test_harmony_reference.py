"""Symphony-style reference building and query mapping on a scaml Harmony reference."""

from __future__ import annotations

import json
import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import shared_file
from sklearn.neighbors import KNeighborsClassifier

from scaml.errors import ScamlError
from scaml.mapping.symphony import SymphonyReference, build_symphony_reference


@pytest.fixture(scope="module")
def sim():
    from scaml.datasets import simulate

    adata = simulate(
        n_cells=2400, n_genes=800, n_batches=4, n_cell_types=5, n_markers=20, random_state=1
    )
    query_mask = (adata.obs["batch"] == "batch4").to_numpy()
    return adata[~query_mask].copy(), adata[query_mask].copy()


@pytest.fixture(scope="module")
def built(sim):
    ref_ad, _ = sim
    before = ref_ad.copy()
    ref = build_symphony_reference(
        ref_ad, "batch", label_key="cell_type", n_hvg=400, n_comps=15, nclust=30
    )
    return ref, before


def knn_accuracy(ref: SymphonyReference, embedding: np.ndarray, labels) -> float:
    knn = KNeighborsClassifier(n_neighbors=10).fit(ref.embedding, ref.obs[ref.label_key].to_numpy())
    return float((knn.predict(embedding) == np.asarray(labels).astype(str)).mean())


def test_build_reference(sim, built):
    ref_ad, _ = sim
    ref, before = built
    n_ref = ref_ad.n_obs
    assert ref.embedding.shape == (n_ref, 15) and ref.embedding.dtype == np.float32
    assert list(ref.obs.columns) == ["batch", "cell_type"] and list(ref.obs.index) == list(
        ref_ad.obs_names
    )
    assert len(ref.var_names) == 400 and set(ref.var_names) <= set(ref_ad.var_names)
    assert ref.batch_key == "batch" and ref.label_key == "cell_type"
    assert ref.params["nclust"] == 30 and ref.params["input"] == "counts"
    # the input is not modified
    assert (ref_ad.X != before.X).nnz == 0
    assert list(ref_ad.obs.columns) == list(before.obs.columns) and list(ref_ad.obsm) == list(
        before.obsm
    )
    assert (
        list(ref_ad.var.columns) == list(before.var.columns)
        and not ref_ad.uns.keys() - before.uns.keys()
    )


def test_map_query(sim, built):
    _, q_ad = sim
    ref, _ = built
    emb_before = ref.embedding.copy()
    m = ref.map(q_ad)
    assert m.embedding.shape == (q_ad.n_obs, 15) and m.embedding.dtype == np.float32
    assert m.R.shape == (q_ad.n_obs, 30)
    np.testing.assert_allclose(m.R.sum(axis=1), 1.0, rtol=1e-4)
    assert m.confidence.min() >= 0 and m.confidence.max() <= 1
    acc = knn_accuracy(ref, m.embedding, q_ad.obs["cell_type"])
    print(
        f"simulated query: kNN label transfer accuracy {acc:.3f}, median confidence {np.median(m.confidence):.2f}"
    )
    assert acc > 0.9
    assert np.median(m.confidence) > 0.5
    np.testing.assert_array_equal(ref.embedding, emb_before)  # the reference does not move
    # the query's own batch key (two halves) also maps
    q2 = q_ad.copy()
    q2.obs["half"] = np.where(np.arange(q2.n_obs) % 2 == 0, "a", "b")
    m2 = ref.map(q2, query_batch_key="half")
    assert knn_accuracy(ref, m2.embedding, q2.obs["cell_type"]) > 0.9
    # foreign cells (shuffled genes) get a lower confidence than real ones
    rng = np.random.default_rng(0)
    foreign = q_ad.copy()
    X = foreign.X.toarray()
    foreign.X = sp.csr_matrix(X[:, rng.permutation(X.shape[1])])
    assert np.median(ref.map(foreign).confidence) < np.median(m.confidence) - 0.3


def test_save_load_roundtrip(sim, built, tmp_path):
    _, q_ad = sim
    ref, _ = built
    out = ref.save(tmp_path / "ref")
    assert {p.name for p in out.iterdir()} == {"reference.npz", "reference.json", "obs.csv"}
    loaded = SymphonyReference.load(out)
    assert (
        loaded.var_names == ref.var_names
        and loaded.batch_key == "batch"
        and loaded.label_key == "cell_type"
    )
    np.testing.assert_array_equal(loaded.embedding, ref.embedding)
    assert loaded.obs.equals(ref.obs)
    a, b = ref.map(q_ad), loaded.map(q_ad)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    # incompatible or incomplete directories
    meta = json.loads((out / "reference.json").read_text())
    meta["format_version"] = 99
    (out / "reference.json").write_text(json.dumps(meta))
    with pytest.raises(ScamlError, match="format version 99"):
        SymphonyReference.load(out)
    (out / "obs.csv").unlink()
    with pytest.raises(ScamlError, match="missing obs.csv"):
        SymphonyReference.load(out)
    with pytest.raises(ScamlError, match="does not exist"):
        SymphonyReference.load(tmp_path / "nowhere")


def test_mapping_errors(sim, built):
    ref_ad, q_ad = sim
    ref, _ = built
    renamed = q_ad.copy()
    renamed.var_names = [f"ENSG{i:06d}" for i in range(renamed.n_vars)]
    with pytest.raises(ScamlError, match="shares none"):
        ref.map(renamed)
    with pytest.raises(ScamlError, match="no key 'sample'"):
        ref.map(q_ad, query_batch_key="sample")
    with pytest.raises(ScamlError, match="no key 'donor'"):
        build_symphony_reference(ref_ad, "donor")
    with pytest.raises(ScamlError, match="no key 'label'"):
        build_symphony_reference(ref_ad, "batch", label_key="label")


def test_partial_genes_and_10k_query_time(sim, built):
    _, q_ad = sim
    ref, _ = built
    # a query with a third of the reference genes missing still maps, with a warning
    keep = [g for g in q_ad.var_names if g not in set(ref.var_names[::3])]
    m = ref.map(q_ad[:, keep].copy())
    assert knn_accuracy(ref, m.embedding, q_ad.obs["cell_type"]) > 0.8
    big = ad.concat([q_ad] * int(np.ceil(10_000 / q_ad.n_obs)), index_unique="-")[:10_000].copy()
    start = time.perf_counter()
    mb = ref.map(big)
    print(f"mapping 10,000 query cells: {time.perf_counter() - start:.2f} s")
    assert mb.embedding.shape == (10_000, 15)


@pytest.mark.realdata
def test_panc8_technology_as_query(shared_data):
    import scanpy as sc

    adata = ad.read_h5ad(shared_file(shared_data, "h5ad", "panc8_small.h5ad"))
    sc.pp.normalize_total(adata, target_sum=1e4)  # some technologies hold non-integer "counts"
    sc.pp.log1p(adata)
    query_mask = (adata.obs["batch"] == "smartseq2").to_numpy()
    ref = build_symphony_reference(
        adata[~query_mask].copy(), "batch", label_key="cell_type", n_comps=20
    )
    assert ref.params["input"] == "log-normalised"
    q = adata[query_mask].copy()
    m = ref.map(q)
    acc = knn_accuracy(ref, m.embedding, q.obs["cell_type"])
    print(f"panc8_small, smartseq2 mapped on the 4 other technologies: kNN accuracy {acc:.3f}")
    assert acc >= 0.85


# ----------------------------------------------------------------------------- single-batch reference


@pytest.fixture(scope="module")
def sim_single():
    """One reference batch and one query batch with a strong batch effect."""
    from scaml.datasets import simulate

    adata = simulate(
        n_cells=1600,
        n_genes=600,
        n_batches=2,
        n_cell_types=5,
        n_markers=20,
        batch_log_fold_sd=0.6,
        random_state=3,
    )
    query_mask = (adata.obs["batch"] == "batch2").to_numpy()
    return adata[~query_mask].copy(), adata[query_mask].copy()


def _uncorrected_projection(ref: SymphonyReference, q_ad) -> np.ndarray:
    """The query's coordinates in the reference PCA before the mixture-of-experts correction."""
    from scaml.mapping.symphony import _scale
    from scaml.preprocess import lognormalized

    X, _ = lognormalized(q_ad)
    pos = [list(q_ad.var_names).index(g) for g in ref.var_names]
    a = ref._arrays
    return _scale(X[:, pos], a["gene_mean"], a["gene_sd"]) @ a["loadings"]


def _type_shift(ref: SymphonyReference, emb: np.ndarray, labels) -> float:
    """Mean distance between the query's and the reference's per-type centroids."""
    labels = np.asarray(labels).astype(str)
    ref_labels = ref.obs[ref.label_key].to_numpy()
    return float(
        np.mean(
            [
                np.linalg.norm(emb[labels == t].mean(0) - ref.embedding[ref_labels == t].mean(0))
                for t in np.unique(labels)
            ]
        )
    )


@pytest.mark.parametrize("batch_key", ["batch", None])
def test_single_batch_reference_maps(sim_single, batch_key, capsys, tmp_path):
    ref_ad, q_ad = sim_single
    ref = build_symphony_reference(
        ref_ad, batch_key, label_key="cell_type", n_hvg=300, n_comps=15, nclust=20
    )
    err = capsys.readouterr().err
    assert "no Harmony correction" in err and "soft clustering (20 clusters)" in err
    assert ref.params["integration"] == "none (single batch)" and ref.params["n_batches"] == 1
    assert ref.batch_key == batch_key
    assert list(ref.obs.columns) == (["batch", "cell_type"] if batch_key else ["cell_type"])
    a = ref._arrays
    assert a["Y"].shape == (15, 20) and a["C"].shape == (20, 15)
    np.testing.assert_allclose(np.linalg.norm(a["Y"], axis=0), 1.0, rtol=1e-6)
    # the clustering covers every reference cell once and its clusters are used
    np.testing.assert_allclose(a["Nr"].sum(), ref_ad.n_obs, rtol=1e-6)
    assert (a["Nr"] > 1).sum() >= 15
    # no correction on the reference: its embedding is the PCA of the reference itself
    own = _uncorrected_projection(ref, ref_ad)
    np.testing.assert_allclose(ref.embedding, own, rtol=1e-3, atol=1e-3)

    m = ref.map(q_ad)
    labels = q_ad.obs["cell_type"]
    acc = knn_accuracy(ref, m.embedding, labels)
    raw = _uncorrected_projection(ref, q_ad)
    shift_before, shift_after = _type_shift(ref, raw, labels), _type_shift(ref, m.embedding, labels)
    print(
        f"single-batch reference (batch_key={batch_key!r}): kNN accuracy {acc:.3f}, per-type centroid "
        f"shift {shift_before:.2f} -> {shift_after:.2f}, median confidence {np.median(m.confidence):.2f}"
    )
    assert acc > 0.9
    assert shift_after < 0.6 * shift_before  # the query is moved onto the reference
    assert np.median(m.confidence) > 0.5
    # persisted and reloaded (batch_key None survives the JSON round trip)
    loaded = SymphonyReference.load(ref.save(tmp_path / "ref"))
    assert loaded.batch_key == batch_key and loaded.params["integration"] == "none (single batch)"
    np.testing.assert_array_equal(loaded.map(q_ad).embedding, m.embedding)


def test_single_batch_reference_errors(sim_single):
    ref_ad, _ = sim_single
    with pytest.raises(ScamlError, match="nclust must be a positive integer"):
        build_symphony_reference(ref_ad, None, n_hvg=300, n_comps=15, nclust=0)
    with pytest.raises(ScamlError, match="sigma must be"):
        build_symphony_reference(ref_ad, None, n_hvg=300, n_comps=15, sigma=-1.0)
    with pytest.raises(ScamlError, match="unknown Harmony parameter"):
        build_symphony_reference(ref_ad, None, n_hvg=300, n_comps=15, sigmaa=0.1)
    bad = ref_ad.copy()
    bad.obs["batch"] = bad.obs["batch"].astype(object)
    bad.obs.iloc[:3, bad.obs.columns.get_loc("batch")] = np.nan
    with pytest.raises(ScamlError, match="3 missing values"):
        build_symphony_reference(bad, "batch", n_hvg=300, n_comps=15)


@pytest.mark.realdata
def test_kang_ctrl_reference_stim_query(shared_data):
    from scaml.mapping.transfer import transfer_labels

    adata = ad.read_h5ad(shared_file(shared_data, "h5ad", "kang_ifnb1k.h5ad"))
    is_query = (adata.obs["batch"] == "STIM").to_numpy()
    start = time.perf_counter()
    ref = build_symphony_reference(adata[~is_query].copy(), "batch", label_key="cell_type")
    assert ref.params["integration"] == "none (single batch)"
    q = adata[is_query].copy()
    m = ref.map(q)
    calls = transfer_labels(ref.embedding, ref.obs["cell_type"], m.embedding, threshold=1.0)
    truth = q.obs["cell_type"].astype(str).to_numpy()
    pred = calls["label"].to_numpy()
    acc = float((pred == truth).mean())
    lineage = {"B": "B", "CD14 Mono": "Mono", "CD16 Mono": "Mono"}
    coarse = float(
        np.mean(
            [lineage.get(t, "T") == lineage.get(p, "T") for t, p in zip(truth, pred, strict=True)]
        )
    )
    print(
        f"kang_ifnb1k, STIM mapped on a CTRL-only reference: kNN accuracy {acc:.3f}, lineage accuracy "
        f"{coarse:.3f} ({time.perf_counter() - start:.1f} s)"
    )
    assert acc >= 0.5  # majority class: 0.35; STIM CD14 monocytes partly land on CD16 monocytes
    assert coarse >= 0.9


def test_query_iterations(sim_single):
    """Re-assigning the query from its corrected coordinates moves it further onto the reference."""
    ref_ad, q_ad = sim_single
    ref = build_symphony_reference(ref_ad, "batch", label_key="cell_type", n_hvg=300, n_comps=15, nclust=20)
    labels = q_ad.obs["cell_type"]
    one, three = ref.map(q_ad, iterations=1), ref.map(q_ad)
    raw = _uncorrected_projection(ref, q_ad)
    shifts = [_type_shift(ref, e, labels) for e in (raw, one.embedding, three.embedding)]
    print(f"per-type centroid shift: uncorrected {shifts[0]:.2f}, 1 pass {shifts[1]:.2f}, 3 passes {shifts[2]:.2f}")
    assert shifts[2] < shifts[1] < shifts[0]
    assert not np.allclose(one.embedding, three.embedding)
    assert knn_accuracy(ref, three.embedding, labels) >= knn_accuracy(ref, one.embedding, labels) - 0.01
    with pytest.raises(ScamlError, match="iterations must be a whole number >= 1; got 0"):
        ref.map(q_ad, iterations=0)
