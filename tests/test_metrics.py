"""Integration metrics on small simulated embeddings, and LISI against the reference implementation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
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
from scaml.metrics.lisi import lisi_weights


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


def test_lisi_mixed_batches_near_n_batches_separated_exactly_one():
    """Batches drawn at random: LISI near the number of batches; fully separated batches: exactly 1.

    With global batch shares ``q`` and kernel weights ``w`` (summing to 1), a random neighbourhood
    has ``E[sum_c p_c^2] = sum_c q_c^2 + (1 - sum_c q_c^2) * sum_j w_j^2``, so (Jensen) the expected
    LISI of a cell is at least the inverse of that: a little below 3 for about 30 effective neighbours.
    """
    X, batches, _ = blobs(batch_shift=0.0)
    nb = compute_neighbors(X, 90)
    codes = pd.factorize(batches)[0]
    mixed = lisi_from_neighbors(nb, codes)
    assert np.all((mixed >= 1 - 1e-9) & (mixed <= 3 + 1e-9))
    q = np.bincount(codes) / codes.size
    weights, _ = lisi_weights(nb, 30)
    expected = 1 / (np.square(q).sum() + (1 - np.square(q).sum()) * np.square(weights).sum(axis=1))
    assert np.mean(mixed) > np.mean(expected) - 0.02
    assert 2.6 < np.median(mixed) <= 3
    Xs, bs, _ = blobs(batch_shift=40.0)
    sep = lisi_from_neighbors(compute_neighbors(Xs, 90), pd.factorize(bs)[0])
    np.testing.assert_allclose(sep, 1.0, atol=1e-9)


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
    # random batches: each test accepts with probability about 1 - alpha = 0.95; separated: every one rejects
    assert 0.9 < score_mixed <= 1 and score_sep == 0.0
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
    # 1 - |silhouette of the batch|: about 1 for random batches; separated by 40 with a
    # within-batch spread of about 5, the silhouette is about 1 - 5/56, so batch ASW about 0.1
    assert mixed > 0.95 and sep < 0.12


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
    # t0 is now two pieces, the larger holds the cells left in place; t1 is untouched
    assert frac == (t0.size - t0.size // 2) / t0.size
    assert math.isclose(score2, (frac + 1.0) / 2)


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
    assert good["neighbor_method"] == "exact"  # "auto" below 50,000 cells
    # batches mixed at random: iLISI median near the 3 batches, kBET accepting about 95%
    assert 2.6 < good["ilisi_median"] <= 3 and good["ilisi"] > 0.8
    assert good["kbet"] > 0.9 and good["batch_asw"] > 0.95 and good["pcr_comparison"] > 0.99
    # batches fully separated: every neighbour from the cell's own batch
    assert bad["ilisi_median"] == pytest.approx(1.0) and bad["ilisi"] == pytest.approx(0.0, abs=1e-9)
    assert bad["kbet"] == 0.0 and bad["batch_asw"] < 0.12 and bad["pcr_comparison"] == 0.0
    # ... so each label falls apart into one piece per batch: its largest piece is its largest batch
    share = pd.crosstab(lab, b).pipe(lambda t: t.max(axis=1) / t.sum(axis=1)).mean()
    assert bad["graph_connectivity"] == pytest.approx(share)
    # perfectly separated label clusters
    assert good["graph_connectivity"] == 1.0 and good["nmi"] == 1.0 and good["ari"] == 1.0
    assert good["clisi"] == pytest.approx(1.0) and good["label_asw"] > 0.8
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
    assert out["nmi"] == 1.0 and out["clisi"] == pytest.approx(1.0)  # bio metrics still computed (separated labels)


def test_one_label_gives_nan_with_reason():
    X, b, _ = blobs(n=300)
    out, _ = embedding_metrics(X, b, np.full(300, "T"))
    for m in ("nmi", "ari", "label_asw", "clisi", "isolated_label"):
        assert math.isnan(out[m]), m
    assert any("one label only" in n for n in out["notes"])
    assert math.isnan(out["bio_score"]) and math.isnan(out["total"])
    assert out["kbet"] > 0.9 and out["ilisi"] > 0.8  # random batches: well mixed
    # no reference for PCR: the batch score is the mean of the other four batch metrics
    four = [out[m] for m in ("ilisi", "kbet", "batch_asw", "graph_connectivity")]
    assert out["batch_score"] == pytest.approx(np.mean(four))


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
    X, b, lab = blobs(n=300)
    out, _ = embedding_metrics(X, b, None)
    with_labels, _ = embedding_metrics(X, b, lab)
    one_label, _ = embedding_metrics(X, b, np.full(300, "T"))
    assert out["ilisi"] == with_labels["ilisi"]  # iLISI does not look at labels
    assert out["kbet"] == one_label["kbet"] and out["batch_asw"] == one_label["batch_asw"]  # one group
    # all cells as one group: the graph is the 4 separate label clusters, the largest one its largest piece
    assert out["graph_connectivity"] == pytest.approx(pd.Series(lab).value_counts().max() / 300)
    assert not math.isnan(out["batch_score"])
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
