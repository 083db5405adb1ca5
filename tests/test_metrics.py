"""Integration metrics on small simulated embeddings, and LISI against the reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from conftest import shared_file

from scaml.metrics import (
    batch_asw,
    compute_neighbors,
    embedding_metrics,
    graph_connectivity,
    kbet_per_label,
    kbet_test,
    lisi_from_neighbors,
    pc_regression,
    pcr_comparison,
    silhouette_samples,
    summarize,
    umap_connectivities,
)
from scaml.metrics.kbet import _within_group_neighbors


def blobs(n=600, n_batches=3, n_labels=4, batch_shift=0.0, dims=10, seed=0):
    """Label clusters in ``dims`` dimensions; each batch shifted by ``batch_shift`` along its own axis."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    batches = rng.integers(0, n_batches, n)
    centres = rng.normal(scale=6.0, size=(n_labels, dims))
    shift = np.zeros((n_batches, dims))
    for b in range(n_batches):
        shift[b, (b + n_labels) % dims] = batch_shift
    X = centres[labels] + rng.normal(size=(n, dims)) + shift[batches]
    return X.astype(np.float32), np.array([f"b{b}" for b in batches]), np.array([f"t{c}" for c in labels])


# ----------------------------------------------------------------------------- LISI

def test_lisi_matches_reference_implementation(shared_data):
    """Per-cell LISI equals the LISI paper's reference values (perplexity 30) within 1e-3."""
    X = pd.read_csv(shared_file(shared_data, "lisi", "lisi_x.tsv.gz"), sep="\t").to_numpy()
    meta = pd.read_csv(shared_file(shared_data, "lisi", "lisi_metadata.tsv.gz"), sep="\t")
    ref = pd.read_csv(shared_file(shared_data, "lisi", "lisi_lisi.tsv.gz"), sep="\t", index_col=0)
    nb = compute_neighbors(X, 90)
    for column in ("label1", "label2"):
        codes = pd.factorize(meta[column])[0]
        values = lisi_from_neighbors(nb, codes, perplexity=30)
        np.testing.assert_allclose(values, ref[column].to_numpy(), atol=1e-3, rtol=0)


def test_lisi_bounds_and_mixing():
    X, batches, _ = blobs(batch_shift=0.0)
    nb = compute_neighbors(X, 90)
    codes = pd.factorize(batches)[0]
    mixed = lisi_from_neighbors(nb, codes)
    assert np.all((mixed >= 1 - 1e-9) & (mixed <= 3 + 1e-9))
    assert np.median(mixed) > 2.5
    Xs, bs, _ = blobs(batch_shift=40.0)
    sep = lisi_from_neighbors(compute_neighbors(Xs, 90), pd.factorize(bs)[0])
    assert np.median(sep) < 1.05


def test_neighbors_exclude_self_and_sorted():
    X, _, _ = blobs(n=200)
    X[1] = X[0]  # a duplicated cell
    nb = compute_neighbors(X, 20)
    assert nb.indices.shape == (200, 20)
    assert not np.any(nb.indices == np.arange(200)[:, None])
    assert np.all(np.diff(nb.distances, axis=1) >= -1e-6)
    assert nb.indices[0, 0] == 1 and nb.indices[1, 0] == 0
    assert nb.subset(5).indices.shape == (200, 5)


def test_umap_connectivities_properties():
    """UMAP weights: symmetric fuzzy union, nearest neighbour at weight 1, calibrated row sums.

    (Checked once against ``scanpy.pp.neighbors(method="umap")``: equal within 1e-3; not
    repeated here because importing umap/numba costs ~15 s.)
    """
    X, _, _ = blobs(n=300)
    nb = compute_neighbors(X, 30)
    G = umap_connectivities(nb, k=14)
    assert abs(G - G.T).max() < 1e-12
    assert G.data.min() > 0 and G.data.max() <= 1 + 1e-12
    assert np.allclose(G[np.arange(300), nb.indices[:, 0]].A1, 1.0)
    assert G.diagonal().sum() == 0


# ----------------------------------------------------------------------------- kBET

def test_kbet_test_matches_chi_square():
    from scipy.stats import chi2

    nbr = np.array([[0, 0, 1, 1], [0, 0, 0, 0]])
    rate, stat, p = kbet_test(nbr, np.array([0.5, 0.5]), alpha=0.05)
    np.testing.assert_allclose(stat, [0.0, 4.0])
    np.testing.assert_allclose(p, chi2.sf([0.0, 4.0], 1))
    assert rate == 0.5


def test_within_label_neighbors_are_exact():
    X, _, labels = blobs(n=400)
    nb = compute_neighbors(X, 15)  # short lists force the exact fallback for some cells
    cells = np.flatnonzero(labels == "t0")
    got = _within_group_neighbors(X, nb, cells, 12)
    from sklearn.neighbors import NearestNeighbors

    want = NearestNeighbors(n_neighbors=13).fit(X[cells]).kneighbors(X[cells], return_distance=False)[:, 1:]
    d_got = np.linalg.norm(X[cells][got] - X[cells][:, None], axis=2)
    d_want = np.linalg.norm(X[cells][want] - X[cells][:, None], axis=2)
    np.testing.assert_allclose(np.sort(d_got, axis=1), np.sort(d_want, axis=1), atol=1e-4)


def test_kbet_mixed_high_separated_low():
    X, b, lab = blobs(n=900)
    score_mixed, table, _ = kbet_per_label(X, compute_neighbors(X, 90), pd.factorize(b)[0], lab)
    Xs, bs, ls = blobs(n=900, batch_shift=40.0)
    score_sep, _, _ = kbet_per_label(Xs, compute_neighbors(Xs, 90), pd.factorize(bs)[0], ls)
    assert score_mixed > 0.8 and score_sep < 0.05
    assert set(table.columns) >= {"label", "k0", "acceptance_rate"}
    assert (table["k0"] >= 10).all()


# ----------------------------------------------------------------------------- silhouettes, graph, PCR

def test_silhouette_samples_matches_sklearn():
    from sklearn.metrics import silhouette_samples as sk_sil

    X, _, labels = blobs(n=300)
    labels[0] = "singleton"
    ours = silhouette_samples(X, labels, block_size=64)
    np.testing.assert_allclose(ours, sk_sil(X.astype(np.float64), labels), atol=1e-4)
    assert np.isnan(silhouette_samples(X, np.zeros(300))).all()


def test_batch_asw_mixed_vs_separated():
    X, b, lab = blobs()
    mixed, _, _ = batch_asw(X, b, lab)
    Xs, bs, ls = blobs(batch_shift=40.0)
    sep, _, _ = batch_asw(Xs, bs, ls)
    assert mixed > 0.9 and sep < 0.3


def test_graph_connectivity_split_label():
    X, _, labels = blobs(n=400, n_labels=2)
    nb = compute_neighbors(X, 15)
    score, _ = graph_connectivity(nb, labels)
    assert score == 1.0
    # put half of label t0 far away: its largest component holds about half its cells
    X2 = X.copy()
    t0 = np.flatnonzero(labels == "t0")
    X2[t0[: t0.size // 2]] += 100.0
    score2, table = graph_connectivity(compute_neighbors(X2, 15), labels)
    frac = table.set_index("label").loc["t0", "largest_component_fraction"]
    assert 0.45 < frac < 0.6 and score2 < 0.8


def test_pcr():
    X, b, _ = blobs()
    Xs, _, _ = blobs(batch_shift=20.0)
    assert pc_regression(Xs, b) > 0.4 > 0.05 > pc_regression(X, b)
    score, before, after = pcr_comparison(Xs, X, b)
    assert score > 0.9 and before > after
    assert pcr_comparison(X, Xs, b)[0] == 0.0  # more batch variance after: clipped at 0


# ----------------------------------------------------------------------------- everything together

def test_embedding_metrics_mixed_vs_separated():
    X, b, lab = blobs(n=800)
    Xs, _, _ = blobs(n=800, batch_shift=40.0)
    good, details = embedding_metrics(X, b, lab, X_reference=Xs)
    bad, _ = embedding_metrics(Xs, b, lab, X_reference=Xs)
    assert good["ilisi"] > 0.8 > 0.1 > bad["ilisi"]
    assert good["kbet"] > 0.8 > 0.1 > bad["kbet"]
    assert good["batch_asw"] > bad["batch_asw"] + 0.4
    # perfectly separated label clusters
    assert good["nmi"] > 0.95 and good["ari"] > 0.95
    assert good["clisi"] > 0.99 and good["label_asw"] > 0.7
    assert bad["pcr_comparison"] == 0.0 and good["pcr_comparison"] > 0.9
    assert math.isclose(good["total"], 0.4 * good["batch_score"] + 0.6 * good["bio_score"])
    assert good["total"] > bad["total"]
    assert set(details["timings"]) >= {"neighbors", "ilisi", "kbet", "batch_asw", "nmi_ari", "label_asw"}
    assert list(details["per_label"].index) == ["t0", "t1", "t2", "t3"]


def test_one_batch_gives_nan_with_reason():
    X, _, lab = blobs(n=300)
    out, _ = embedding_metrics(X, np.full(300, "only"), lab)
    for m in ("ilisi", "kbet", "batch_asw", "isolated_label"):
        assert math.isnan(out[m]), m
    assert any("one batch only" in n for n in out["notes"])
    assert out["nmi"] > 0.9  # bio metrics still computed


def test_one_label_gives_nan_with_reason():
    X, b, _ = blobs(n=300)
    out, _ = embedding_metrics(X, b, np.full(300, "T"))
    for m in ("nmi", "ari", "label_asw", "clisi", "isolated_label"):
        assert math.isnan(out[m]), m
    assert any("one label only" in n for n in out["notes"])
    assert math.isnan(out["bio_score"]) and math.isnan(out["total"])
    assert out["kbet"] > 0.5 and not math.isnan(out["batch_score"])


def test_label_in_one_batch_is_skipped_with_reason():
    X, b, lab = blobs(n=500)
    b = b.copy()
    b[lab == "t3"] = "b0"
    out, details = embedding_metrics(X, b, lab)
    assert not math.isnan(out["kbet"]) and not math.isnan(out["batch_asw"])
    assert any("t3: present in one batch only" in n for n in out["notes"])
    assert math.isnan(details["per_label"].loc["t3", "kbet"])
    assert any("t3" in n and "isolated" in n for n in out["notes"])


def test_no_labels_gives_batch_metrics_only():
    X, b, _ = blobs(n=300)
    out, _ = embedding_metrics(X, b, None)
    assert not math.isnan(out["ilisi"]) and not math.isnan(out["kbet"]) and not math.isnan(out["batch_score"])
    assert all(math.isnan(out[m]) for m in ("nmi", "ari", "label_asw", "clisi", "isolated_label"))
    assert math.isnan(out["total"])
    assert any("no label key" in n for n in out["notes"])


def test_sampled_silhouettes_close_to_exact():
    X, b, lab = blobs(n=1200, batch_shift=2.0)
    exact, _ = embedding_metrics(X, b, lab)
    sampled, _ = embedding_metrics(X, b, lab, asw_max_cells=400)
    for m in ("label_asw", "batch_asw", "isolated_label"):
        assert abs(exact[m] - sampled[m]) < 0.02, m
    assert exact["nmi"] == sampled["nmi"]
    assert any("stratified random 33% of the cells" in n for n in sampled["notes"])


def test_summarize_weights_and_missing():
    full = dict.fromkeys(("ilisi", "kbet", "batch_asw", "graph_connectivity", "pcr_comparison"), 0.5)
    full.update(dict.fromkeys(("nmi", "ari", "label_asw", "clisi", "isolated_label"), 1.0))
    scores, notes = summarize(full)
    assert scores == {"batch_score": 0.5, "bio_score": 1.0, "total": 0.8} and notes == []
    full["kbet"] = float("nan")
    full["pcr_comparison"] = 0.0
    scores, notes = summarize(full)
    assert math.isclose(scores["batch_score"], 0.375) and "4 of 5" in notes[0]
