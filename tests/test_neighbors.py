"""scaml's one neighbour search: the graph it hands to UMAP and Leiden is scanpy's graph."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from scaml.errors import ScamlError
from scaml.neighbors import compute_neighbors, neighbors_graph, query_neighbors


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(5, 12))
    return (centres[rng.integers(0, 5, 1500)] + rng.normal(size=(1500, 12))).astype(np.float32)


def test_graph_equals_scanpy_neighbors(embedding):
    import scanpy as sc

    ours = ad.AnnData(obs={"i": np.arange(embedding.shape[0])})
    ours.obsm["X_pca"] = embedding
    theirs = ours.copy()
    neighbors_graph(ours, "X_pca", 15)
    sc.pp.neighbors(theirs, n_neighbors=15, use_rep="X_pca")  # exact below scanpy's 8,192-cell switch
    for key in ("distances", "connectivities"):
        diff = abs(ours.obsp[key] - theirs.obsp[key])
        assert diff.nnz == 0 or diff.max() < 1e-6, key
    assert ours.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert ours.uns["neighbors"]["params"]["method"] == "umap"
    sc.tl.leiden(ours, flavor="igraph", n_iterations=2, directed=False, resolution=0.1, random_state=0)
    assert ours.obs["leiden"].nunique() == 5


def test_approximate_search_recalls_the_exact_neighbours(embedding):
    exact = compute_neighbors(embedding, 10, method="exact")
    approx = compute_neighbors(embedding, 10, method="pynndescent", random_state=0)
    assert exact.method == "exact" and approx.method == "pynndescent"
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.indices, approx.indices, strict=True)])
    assert recall > 0.98
    # the cell itself is never its own neighbour, and rows are sorted by distance
    assert not (exact.indices == np.arange(len(embedding))[:, None]).any()
    assert np.all(np.diff(exact.distances, axis=1) >= 0)


def test_query_neighbors_finds_copies_of_the_reference(embedding):
    query = embedding[:50] + 1e-4
    distances, indices = query_neighbors(embedding, query, 3)
    np.testing.assert_array_equal(indices[:, 0], np.arange(50))
    assert distances[:, 0].max() < 1e-2


def test_unknown_method_is_refused(embedding):
    with pytest.raises(ScamlError, match="unknown neighbour search method 'kd'"):
        compute_neighbors(embedding, 5, method="kd")
