"""SnapATAC2-style spectral embedding (scaml.atac.spectral) and ``integrate --atac-embedding spectral``."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaml import atac
from scaml.cli import main
from scaml.datasets import simulate_atac
from scaml.errors import ScamlError


@pytest.fixture(scope="module")
def peaks() -> ad.AnnData:
    return simulate_atac(n_cells=500, n_peaks=1200, n_batches=2, n_cell_types=4, mean_depth=400, random_state=5)


def _dense_spectral(counts: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The same embedding from the cells x cells matrix itself (what the matrix-free operator stands for)."""
    n = counts.shape[0]
    df = (counts > 0).sum(axis=0).astype(float)
    df[df == 0] = 1
    df[df == n] = n - 1
    X = counts * np.log(n / df)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = X @ X.T
    np.fill_diagonal(S, 0.0)
    d = S.sum(axis=1)
    values, vectors = np.linalg.eigh(S / np.sqrt(np.outer(d, d)))
    order = np.argsort(values)[::-1][1:k + 1]
    return values[order], vectors[:, order] * np.sqrt(values[order])


def test_spectral_equals_the_dense_eigendecomposition(peaks):
    counts = peaks.X.toarray()
    result = atac.spectral(peaks.X, 10, random_state=0)
    values, vectors = _dense_spectral(counts, 10)
    np.testing.assert_allclose(result.eigenvalues, values, rtol=1e-6)
    for i in range(10):  # eigenvectors up to sign
        r = np.corrcoef(result.embedding[:, i], vectors[:, i])[0, 1]
        assert abs(r) > 0.9999, (i, r)
    assert result.embedding.dtype == np.float32 and result.embedding.shape == (peaks.n_obs, 10)
    # the same seed, the same numbers (signs fixed)
    np.testing.assert_array_equal(atac.spectral(peaks.X, 10, random_state=0).embedding, result.embedding)
    # binarised: the embedding of the 0/1 matrix
    binary = sp.csr_matrix(peaks.X, copy=True)
    binary.data[:] = 1.0
    np.testing.assert_allclose(atac.spectral(peaks.X, 5, binarize=True).eigenvalues,
                               atac.spectral(binary, 5).eigenvalues, rtol=1e-10)


def test_spectral_separates_types_and_drops_the_degree(peaks):
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    m = peaks.copy()
    atac.run_spectral(m, 10)
    embedding = m.obsm["X_spectral"]
    labels = m.obs["cell_type"].to_numpy()
    assert silhouette_score(embedding, labels) > 0.2
    from sklearn.cluster import KMeans

    clusters = KMeans(4, n_init=5, random_state=0).fit_predict(embedding)
    assert adjusted_rand_score(labels, clusters) > 0.8
    assert max(abs(r) for r in m.uns["spectral"]["depth_correlation"]) < 0.75  # the degree vector is gone


def test_spectral_refuses_empty_cells_and_too_many_components(peaks):
    X = sp.lil_matrix(peaks.X)
    X[3, :] = 0
    with pytest.raises(ScamlError, match="no counts"):
        atac.spectral(X, 5)
    with pytest.raises(ScamlError, match="cannot have 600 components"):
        atac.spectral(peaks.X, 600)


def test_integrate_atac_spectral(tmp_path, peaks):
    path = tmp_path / "peaks.h5ad"
    peaks.write_h5ad(path)
    out = tmp_path / "out"
    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--label-key", "cell_type",
                 "--out", str(out), "--n-pcs", "12", "--min-counts", "100", "--atac-embedding", "spectral",
                 "--resolutions", "0.5", "--quiet"])
    assert code == 0
    adata = ad.read_h5ad(out / "integrated.h5ad")
    assert {"X_spectral", "X_spectral_harmony", "X_umap"} <= set(adata.obsm.keys())
    assert adata.obsm["X_spectral"].shape[1] == 12 and "X_lsi" not in adata.obsm
    # the counts kept, Signac's TF-IDF in X (for the marker peaks), as on the LSI path
    given = peaks[adata.obs_names[:20], adata.var_names].X.toarray()
    np.testing.assert_array_equal(adata.layers["counts"][:20].toarray(), given)
    np.testing.assert_allclose(adata.X[:20].toarray(), atac.tfidf(adata.layers["counts"])[:20].toarray(), rtol=1e-6)
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["spectral"]["n_components"] == 12 and "lsi" not in run["data"]
    metrics = pd.read_csv(out / "metrics.csv").set_index("embedding")
    assert metrics.loc["X_spectral_harmony", "ilisi"] > metrics.loc["X_spectral", "ilisi"]
    assert metrics.loc["X_spectral_harmony", "ari"] > 0.6
    # the chunked path: the same embedding (every cell a landmark at this size), Harmony and clusters
    from sklearn.metrics import adjusted_rand_score

    code = main(["integrate", str(path), "--modality", "atac", "--batch-key", "batch", "--out", str(tmp_path / "c"),
                 "--n-pcs", "12", "--min-counts", "100", "--atac-embedding", "spectral", "--resolutions", "0.5",
                 "--chunked", "--chunk-cells", "100", "--no-metrics", "--quiet"])
    assert code == 0
    chunked = ad.read_h5ad(tmp_path / "c" / "integrated.h5ad")
    assert list(chunked.obs_names) == list(adata.obs_names)
    np.testing.assert_allclose(chunked.obsm["X_spectral"], adata.obsm["X_spectral"], atol=1e-5)
    assert adjusted_rand_score(chunked.obs["leiden"], adata.obs["leiden"]) > 0.9
    chunked_run = json.loads((tmp_path / "c" / "run.json").read_text())
    assert chunked_run["data"]["spectral"]["landmarks"] == adata.n_obs and "lsi" not in chunked_run["data"]
    assert abs(chunked.X[:20] - adata.X[:20]).max() < 1e-4  # the TF-IDF of the marker peaks, chunk by chunk
