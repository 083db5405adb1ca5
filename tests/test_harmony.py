"""scaml's Harmony: agreement with R harmony 2.0.4 on real data, backends, options and errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from scaml.errors import ScamlError
from scaml.harmony import harmony_integrate, run_harmony

# ----------------------------------------------------------------------------- helpers


def per_pc_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    return (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))


def lisi(X: np.ndarray, labels, perplexity: float = 30.0) -> np.ndarray:
    """Local inverse Simpson index per cell (Korsunsky 2019): Gaussian kernel on the 3*perplexity
    nearest neighbours, bandwidth calibrated to the perplexity by bisection."""
    from sklearn.neighbors import NearestNeighbors

    codes = pd.factorize(np.asarray(labels))[0]
    k = min(int(3 * perplexity), X.shape[0] - 1)
    dist, idx = NearestNeighbors(n_neighbors=k + 1).fit(X).kneighbors(X)
    dist, idx = dist[:, 1:] ** 2, idx[:, 1:]
    target = np.log(perplexity)
    out = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        lo, hi, beta = 0.0, np.inf, 1.0
        d = dist[i] - dist[i].min()
        for _ in range(60):
            p = np.exp(-d * beta)
            s = p.sum()
            H = np.log(s) + beta * (d * p).sum() / s
            if abs(H - target) < 1e-5:
                break
            if H > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p /= p.sum()
        w = np.bincount(codes[idx[i]], weights=p, minlength=codes.max() + 1)
        out[i] = 1.0 / (w**2).sum()
    return out


def load_set(shared_data, name: str, corrected: str):
    pcs = pd.read_csv(
        shared_file(shared_data, "harmony", f"{name}_pcs.tsv.gz"), sep="\t"
    ).to_numpy()
    meta = pd.read_csv(shared_file(shared_data, "harmony", f"{name}_meta.tsv.gz"), sep="\t")
    ref = pd.read_csv(shared_file(shared_data, "harmony", corrected), sep="\t").to_numpy()
    return pcs, meta, ref


@pytest.fixture(scope="module")
def blobs():
    """1200 cells x 10 dims: 4 cell types, 3 batches with additive shifts."""
    rng = np.random.default_rng(0)
    n = 1200
    cell_type = rng.integers(0, 4, n)
    batch = rng.integers(0, 3, n)
    centers = rng.normal(scale=4.0, size=(4, 10))
    shifts = rng.normal(scale=3.0, size=(3, 10))
    X = centers[cell_type] + shifts[batch] + rng.normal(size=(n, 10))
    meta = pd.DataFrame(
        {
            "batch": [f"b{b}" for b in batch],
            "donor": [f"d{(i % 2)}" for i in range(n)],
            "cell_type": [f"t{t}" for t in cell_type],
        }
    )
    return X.astype(np.float32), meta


# ----------------------------------------------------------------------------- agreement with R


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "key"), [("pbmc_3500", "donor"), ("cell_lines", "dataset")])
def test_matches_r_harmony(shared_data, name, key):
    pcs, meta, ref = load_set(shared_data, name, f"{name}_harmony2.tsv.gz")
    ho = run_harmony(pcs, meta, key, verbose=False)
    r = per_pc_correlation(ho.Z_corr.astype(np.float64), ref)
    print(
        f"{name}: per-PC Pearson r with R harmony 2.0.4: median {np.median(r):.4f}, min {r.min():.4f}"
    )
    assert np.median(r) >= 0.99
    assert r.min() >= 0.95


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("keys", "theta", "corrected"),
    [
        (["batch"], None, "panc8_small_harmony2.tsv.gz"),
        (["batch", "replicate"], (2, 1), "panc8_small_harmony2_tech_replicate.tsv.gz"),
    ],
)
def test_panc8_quality_like_r(shared_data, keys, theta, corrected):
    pcs, meta, ref = load_set(shared_data, "panc8_small", corrected)
    ho = run_harmony(pcs, meta, keys, theta=theta, verbose=False)
    ours_i, ref_i = np.median(lisi(ho.Z_corr, meta["batch"])), np.median(lisi(ref, meta["batch"]))
    ours_c, ref_c = (
        np.median(lisi(ho.Z_corr, meta["cell_type"])),
        np.median(lisi(ref, meta["cell_type"])),
    )
    before_i = np.median(lisi(pcs, meta["batch"]))
    print(
        f"panc8_small {keys}: median iLISI scaml {ours_i:.3f} vs R {ref_i:.3f} (before {before_i:.3f}); "
        f"median cLISI scaml {ours_c:.3f} vs R {ref_c:.3f}"
    )
    assert abs(ours_i - ref_i) <= 0.05 * ref_i
    assert abs(ours_c - ref_c) <= 0.05 * ref_c


# ----------------------------------------------------------------------------- simulated data


def test_corrects_batches(blobs):
    X, meta = blobs
    ho = run_harmony(X, meta, "batch", nclust=20, verbose=False)
    assert ho.Z_corr.shape == X.shape and ho.Z_corr.dtype == np.float32
    before, after = np.median(lisi(X, meta["batch"])), np.median(lisi(ho.Z_corr, meta["batch"]))
    assert after > before + 0.8, (before, after)
    assert np.median(lisi(ho.Z_corr, meta["cell_type"])) < 1.2  # cell types stay apart
    assert ho.R.shape == (X.shape[0], 20)
    np.testing.assert_allclose(ho.R.sum(axis=1), 1.0, rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(ho.Z_cos, axis=1), 1.0, rtol=1e-4)
    assert ho.Y.shape == (X.shape[1], 20)
    assert ho.O.shape == ho.E.shape == (20, 3)
    assert len(ho.objective_harmony) == ho.n_iter + 1
    assert ho.objective_harmony[-1] < ho.objective_harmony[0]
    assert ho.params["nclust"] == 20 and ho.params["backend"] == "numpy"


def test_backends_agree(blobs):
    X, meta = blobs
    a = run_harmony(X, meta, "batch", nclust=20, backend="numpy", verbose=False)
    b = run_harmony(X, meta, "batch", nclust=20, backend="torch", device="cpu", verbose=False)
    assert b.params["backend"] == "torch" and b.params["device"] == "cpu"
    r = per_pc_correlation(a.Z_corr, b.Z_corr)
    assert r.min() > 0.99
    assert a.n_iter == b.n_iter


def test_float64_and_seed(blobs):
    X, meta = blobs
    a = run_harmony(X, meta, "batch", nclust=20, dtype="float64", verbose=False, random_state=3)
    b = run_harmony(X, meta, "batch", nclust=20, dtype="float64", verbose=False, random_state=3)
    assert a.Z_corr.dtype == np.float64
    np.testing.assert_array_equal(a.Z_corr, b.Z_corr)
    c = run_harmony(X, meta, "batch", nclust=20, verbose=False, random_state=3)
    assert per_pc_correlation(a.Z_corr, c.Z_corr).min() > 0.99
    d = run_harmony(X, meta, "batch", nclust=20, dtype="float64", verbose=False, random_state=4)
    assert not np.array_equal(a.Z_corr, d.Z_corr)


def test_options(blobs):
    X, meta = blobs
    # two covariates, theta per covariate, fixed lambda per covariate, tau, per-cluster sigma
    ho = run_harmony(
        X,
        meta,
        ["batch", "donor"],
        theta=[2, 0.5],
        lamb=[1.0, 2.0],
        tau=5,
        sigma=np.full(12, 0.1),
        nclust=12,
        max_iter_harmony=3,
        verbose=False,
    )
    assert ho.O.shape == (12, 5) and ho.batches[0] == "batch=b0" and ho.batches[-1] == "donor=d1"
    assert ho.params["lamb"] == [0.0, 1.0, 1.0, 1.0, 2.0, 2.0]
    assert ho.n_iter <= 3
    # DataFrame embedding, Series metadata, max_iter_kmeans above the convergence window
    ho = run_harmony(
        pd.DataFrame(X),
        meta["batch"],
        nclust=10,
        max_iter_kmeans=8,
        epsilon_harmony=-np.inf,
        max_iter_harmony=2,
        verbose=False,
    )
    assert ho.n_iter == 2 and not ho.converged
    assert 1 <= min(ho.kmeans_rounds) and max(ho.kmeans_rounds) <= 8
    # default nclust = min(round(N / 30), 100)
    assert run_harmony(X[:300], meta.iloc[:300], "batch", max_iter_harmony=1, verbose=False).K == 10


def test_input_errors(blobs):
    X, meta = blobs
    bad = X.copy()
    bad[5, 2] = np.nan
    with pytest.raises(ScamlError, match="NaN"):
        run_harmony(bad, meta, "batch", verbose=False)
    with pytest.raises(ScamlError, match="no key 'batchh'.*'batch'"):
        run_harmony(X, meta, "batchh", verbose=False)
    with pytest.raises(ScamlError, match="single level"):
        run_harmony(X, meta.assign(one="x"), "one", verbose=False)
    with pytest.raises(ScamlError, match="rows"):
        run_harmony(X[:-1], meta, "batch", verbose=False)
    with pytest.raises(ScamlError, match="missing"):
        run_harmony(
            X,
            meta.assign(batch=meta["batch"].where(np.arange(len(meta)) != 3)),
            "batch",
            verbose=False,
        )


# ----------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"theta": -1}, r"^theta must be finite and not negative.*got -1\.0\."),
        ({"theta": [1, np.nan]}, r"^theta must be finite.*got \[nan\] among its 2 values"),
        ({"theta": "2"}, r"^theta must be a number or a list"),
        ({"theta": []}, r"^theta must be a number or a list"),
        (
            {"vars_use": ["batch", "donor"], "theta": [1, 2, 3]},
            r"^theta must be one number.*3 values",
        ),
        ({"lamb": -1.0 * np.ones(2)}, r"^lamb must be finite and not negative"),
        ({"lamb": [1.0, np.inf]}, r"^lamb must be finite"),
        ({"lamb": [1.0] * 7}, r"^lamb must be one number.*intercept.*got 7 values"),
        ({"sigma": 0}, r"^sigma must be finite and positive"),
        ({"sigma": -0.1}, r"^sigma must be finite and positive"),
        ({"sigma": None}, r"^sigma must be a number or a list of numbers"),
        (
            {"nclust": 10, "sigma": [0.1, 0.2]},
            r"^sigma must be one number or one per cluster \(10\)",
        ),
        ({"nclust": 0}, r"^nclust must be a positive integer.*got 0"),
        ({"nclust": 2.5}, r"^nclust must be a positive integer"),
        ({"nclust": True}, r"^nclust must be a positive integer"),
        ({"nclust": "10"}, r"^nclust must be a positive integer"),
        ({"nclust": 2000}, r"^nclust \(2000\) is larger than the number of cells \(1200\)"),
        ({"tau": -1}, r"^tau must be a finite number >= 0.*got -1"),
        ({"tau": np.inf}, r"^tau must be a finite number"),
        ({"block_size": 0}, r"^block_size must be a number in \(0, 1\]"),
        ({"block_size": 1.5}, r"^block_size must be a number in \(0, 1\]"),
        ({"max_iter_harmony": 0}, r"^max_iter_harmony must be a positive integer"),
        ({"max_iter_harmony": 2.0}, r"^max_iter_harmony must be a positive integer"),
        ({"max_iter_kmeans": -3}, r"^max_iter_kmeans must be a positive integer"),
        ({"epsilon_cluster": np.nan}, r"^epsilon_cluster must be a number"),
        ({"epsilon_harmony": "small"}, r"^epsilon_harmony must be a number"),
        ({"alpha": 0}, r"^alpha must be a finite number > 0"),
        ({"alpha": np.inf}, r"^alpha must be a finite number > 0"),
        ({"batch_prop_cutoff": -0.1}, r"^batch_prop_cutoff must be a number in \[0, 1\]"),
        ({"batch_prop_cutoff": 2}, r"^batch_prop_cutoff must be a number in \[0, 1\]"),
        ({"random_state": -1}, r"^random_state must be None or a non-negative integer"),
        ({"random_state": 1.5}, r"^random_state must be None or a non-negative integer"),
        ({"backend": "jax"}, r"^backend must be one of \('auto', 'numpy', 'torch'\); got 'jax'"),
        ({"device": "gpu"}, r"^device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
        ({"dtype": "float16"}, r"^dtype must be one of \('float32', 'float64'\); got 'float16'"),
    ],
)
def test_parameter_errors(blobs, params, match):
    """Every bad parameter is a ScamlError that names it and the bad value."""
    X, meta = blobs
    params = dict(params)
    vars_use = params.pop("vars_use", "batch")
    with pytest.raises(ScamlError, match=match):
        run_harmony(X, meta, vars_use, verbose=False, **params)


def test_parameters_checked_up_front(blobs):
    """Parameters are checked before the data; a CUDA device torch cannot see is refused."""
    import torch

    X, meta = blobs
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ScamlError, match="^alpha"):
        run_harmony(bad, meta, "batchh", alpha=-1, verbose=False)
    if not torch.cuda.is_available():
        with pytest.raises(ScamlError, match="no CUDA GPU"):
            run_harmony(X, meta, "batch", device="cuda", verbose=False)
    else:
        with pytest.raises(ScamlError, match="^backend='numpy' runs on the CPU only"):
            run_harmony(X, meta, "batch", backend="numpy", device="cuda", verbose=False)


def test_harmony_params_resolve():
    """Defaults and per-batch / per-cluster forms resolved by HarmonyParams.resolve."""
    import dataclasses

    from scaml.harmony.core import HarmonyParams

    N_b = np.array([100, 100, 100])
    r = HarmonyParams(random_state=np.int64(3), alpha=np.float32(0.5)).resolve(300, [3], N_b)
    assert r.nclust == r.K == 10  # min(round(N / 30), 100)
    assert r.theta.tolist() == [2.0] * 3 and r.lamb is None and r.sigma.tolist() == [0.1] * 10
    assert r.random_state == 3 and type(r.random_state) is int and r.alpha == 0.5
    assert r.backend == "numpy" and r.device == "cpu" and r.dtype == "float32"
    assert HarmonyParams().resolve(10, [2], np.array([5, 5])).nclust == 1
    assert HarmonyParams().resolve(10**6, [2], np.array([5, 5]) * 10**5).nclust == 100
    # theta per covariate, lamb per batch level (intercept 0 added), -1 = automatic lamb
    p = HarmonyParams(theta=(2, 1), lamb=[1, 2, 3, 4, 5], nclust=4, sigma=[0.1, 0.2, 0.3, 0.4])
    r = p.resolve(50, [3, 2], np.array([10, 20, 20, 25, 25]))
    assert r.theta.tolist() == [2, 2, 2, 1, 1] and r.lamb.tolist() == [0, 1, 2, 3, 4, 5]
    assert r.sigma.tolist() == [0.1, 0.2, 0.3, 0.4] and p.theta == (2.0, 1.0)
    assert r.as_dict()["sigma"] == [0.1, 0.2, 0.3, 0.4] and r.as_dict()["lamb"] == r.lamb.tolist()
    assert HarmonyParams(lamb=-1).lamb is None
    assert HarmonyParams(lamb=[7, 1, 2]).resolve(9, [2], np.array([4, 5])).lamb.tolist() == [
        7,
        1,
        2,
    ]
    # tau shrinks theta of small batches
    r = HarmonyParams(tau=5, nclust=2).resolve(110, [2], np.array([100, 10]))
    expected = 2 * (1 - np.exp(-((np.array([100, 10]) / 10) ** 2)))
    np.testing.assert_array_equal(r.theta, expected)
    assert r.as_dict()["theta"] == expected.tolist()
    # edge values that are allowed
    HarmonyParams(
        theta=0, block_size=1, batch_prop_cutoff=0, epsilon_harmony=-np.inf, random_state=None
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.theta = 3
    with pytest.raises(ValueError):  # resolved arrays are read-only
        r.theta[0] = 1.0


def test_harmonize_takes_params(blobs):
    """core.harmonize resolves HarmonyParams itself and gives run_harmony's result."""
    from scaml.harmony.api import _design
    from scaml.harmony.core import HarmonyParams, harmonize

    X, meta = blobs
    design, _ = _design(meta, ["batch"])
    state = harmonize(X, design, HarmonyParams(nclust=8, max_iter_harmony=2, backend="numpy"))
    ho = run_harmony(X, meta, "batch", nclust=8, max_iter_harmony=2, backend="numpy", verbose=False)
    np.testing.assert_array_equal(state.Z_corr, ho.Z_corr)
    assert state.n_iter == ho.n_iter and set(state.seconds) == set(ho.seconds)


def test_harmony_integrate(blobs):
    import anndata as ad

    X, meta = blobs
    adata = ad.AnnData(obs=meta.set_index(pd.Index([f"c{i}" for i in range(len(meta))])))
    adata.obsm["X_pca"] = X
    assert harmony_integrate(adata, "batch", nclust=15, verbose=False) is None
    assert adata.obsm["X_pca_harmony"].dtype == np.float32
    assert adata.obsm["X_pca_harmony"].shape == X.shape
    uns = adata.uns["harmony"]
    assert (
        uns["key"] == "batch"
        and uns["basis"] == "X_pca"
        and uns["adjusted_basis"] == "X_pca_harmony"
    )
    assert uns["params"]["nclust"] == 15 and len(uns["objective_harmony"]) == uns["n_iter"] + 1
    assert uns["seconds"] > 0 and isinstance(uns["converged"], bool)
    out = harmony_integrate(
        adata, ["batch", "donor"], adjusted_basis="X_h2", copy=True, nclust=15, verbose=False
    )
    assert (
        "X_h2" in out.obsm
        and "X_h2" not in adata.obsm
        and out.uns["harmony"]["key"] == ["batch", "donor"]
    )
    with pytest.raises(ScamlError, match="no key 'X_umap'"):
        harmony_integrate(adata, "batch", basis="X_umap")
    with pytest.raises(ScamlError, match="no key 'sample'"):
        harmony_integrate(adata, "sample")


def test_soft_assignment_paths_agree():
    """The kernel without row shift (moderate sigma) equals the shifted one, per-cluster sigma too;
    cell pieces (4,096 rows) and blocks of groups give the right per-group sums."""
    from scaml.harmony.core import _NumpyBackend

    rng = np.random.default_rng(0)
    n = 9000
    Z = rng.normal(size=(n, 8)).astype(np.float32)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    Y = rng.normal(size=(8, 6))
    Y /= np.linalg.norm(Y, axis=0, keepdims=True)
    sigma = np.array([0.1, 0.2, 0.15, 0.3, 0.1, 0.12])
    scale = 2.0 / sigma
    be = _NumpyBackend("float32")
    Ys = be.small(Y * scale)
    blocks = [([(0, 200), (200, 5000)], None, [200, 4800]), ([(5000, n)], None, [n - 5000])]
    fast, safe = be.empty((n, 6)), be.empty((n, 6))
    fast_sums = be.cold_start(fast, Z, Ys, None, blocks, np.exp(-scale))
    safe_sums = be.cold_start(safe, Z, Ys, -scale, blocks, np.ones(6))
    logits = -2.0 * (1.0 - Z.astype(np.float64) @ Y) / sigma
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(fast, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(safe, expected, rtol=1e-4, atol=1e-7)
    for sums in (fast_sums, safe_sums):
        for (ranges, _, _), got in zip(blocks, sums, strict=True):
            want = np.stack([expected[a:b].sum(axis=0) for a, b in ranges])
            np.testing.assert_allclose(got, want, rtol=1e-4)
    # a block update with per-group penalties: kernel x penalty, normalised per cell
    pen = rng.uniform(0.2, 3.0, size=(2, 6))
    sums = be.block_update(fast, Z, Ys, None, blocks[0][0], blocks[0][2], pen * np.exp(-scale))
    for g, (a, b) in enumerate(blocks[0][0]):
        want = expected[a:b] * pen[g]
        want /= want.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(fast[a:b], want, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(sums[g], want.sum(axis=0), rtol=1e-4)
    # a penalty that underflowed to 0 empties its cluster, silently
    import warnings

    pen[:, 2] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        be.block_update(fast, Z, Ys, None, blocks[0][0], blocks[0][2], pen * np.exp(-scale))
    assert np.all(fast[:5000, 2] == 0)
    np.testing.assert_allclose(fast[:5000].sum(axis=1), 1.0, rtol=1e-5)


def test_kernel_kept_assignment_is_the_plain_one():
    """R kept as its kernel (the numpy fast path: kernel once per iteration, penalty per row range, reciprocal
    row sums) gives the plain R's rows, block sums, ridge sums and corrections; materialise() turns it into R."""
    from scaml.harmony.core import _KernelR, _NumpyBackend, _Rows

    rng = np.random.default_rng(1)
    n, K, d = 9000, 6, 8
    Z = rng.normal(size=(n, d)).astype(np.float32)
    Z_cos = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    Y = rng.normal(size=(d, K))
    Y /= np.linalg.norm(Y, axis=0, keepdims=True)
    scale = 2.0 / np.array([0.1, 0.2, 0.15, 0.3, 0.1, 0.12])
    be = _NumpyBackend("float32")
    Ys, factor = be.small(Y * scale), np.exp(-scale)
    # two blocks over two groups: group 0 = rows 0:4000, group 1 = rows 4000:9000
    blocks = [([(0, 2000), (4000, 6500)], None, [2000, 2500]), ([(2000, 4000), (6500, n)], None, [2000, 2500])]
    segments = [(0, 4000, 0), (4000, n, 1)]
    kept = _KernelR(n, K, be.dtype, [r for ranges, _, _ in blocks for r in ranges])
    plain = be.empty((n, K))
    for R in (kept, plain):
        be.cold_start(R, Z_cos, Ys, None, blocks, factor)
    np.testing.assert_allclose(kept[0:n], plain, rtol=1e-5, atol=1e-8)
    pen = rng.uniform(0.2, 3.0, size=(2, K)) * factor
    got = [be.block_update(R, Z_cos, Ys, None, blocks[1][0], blocks[1][2], pen) for R in (kept, plain)]
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5)
    np.testing.assert_allclose(kept[1990:2010], plain[1990:2010], rtol=1e-5, atol=1e-8)  # across two ranges
    source = _Rows(Z, np.arange(n), be.dtype)
    for a, b in zip(be.ridge_sums(kept, source, segments, 2), be.ridge_sums(plain, source, segments, 2), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    V = rng.normal(size=(2, K, d))
    out = [be.empty((n, d)) for _ in range(2)]
    for R, o in zip((kept, plain), out, strict=True):
        be.correct(R, source, segments, V, o, normalise=True)
    np.testing.assert_allclose(out[0], out[1], rtol=1e-4, atol=1e-6)
    full = be.to_numpy(kept)
    assert full is kept.kern  # in place, no second N x K array
    np.testing.assert_allclose(full, plain, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, rtol=1e-5)


def test_harmony_integrate_writes_h5ad(blobs, tmp_path):
    import anndata as ad

    X, meta = blobs
    adata = ad.AnnData(obs=meta.set_index(pd.Index([f"c{i}" for i in range(len(meta))])))
    adata.obsm["X_pca"] = X
    harmony_integrate(
        adata, "batch", nclust=10, random_state=None, max_iter_harmony=2, verbose=True
    )
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = ad.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_pca_harmony"], adata.obsm["X_pca_harmony"])
    assert back.uns["harmony"]["params"]["random_state"] == "None"


def test_thread_pool_gives_the_one_thread_result(blobs):
    """The numpy backend splits cells x K work over a thread pool as wide as BLAS's threads: same numbers."""
    from threadpoolctl import threadpool_limits

    X, meta = blobs
    with threadpool_limits(limits=1, user_api="blas"):
        one = run_harmony(X, meta, "batch", nclust=20, dtype="float64", verbose=False, random_state=1)
    with threadpool_limits(limits=2, user_api="blas"):
        two = run_harmony(X, meta, "batch", nclust=20, dtype="float64", verbose=False, random_state=1)
    assert one.n_iter == two.n_iter
    np.testing.assert_allclose(two.Z_corr, one.Z_corr, rtol=1e-6, atol=1e-8)


def test_objective_from_the_assignment_equals_the_direct_one(blobs, monkeypatch):
    """The clustering's objective, gathered while R is assigned, is the objective computed from R directly."""
    from scaml.harmony import core

    X, meta = blobs
    seen = []
    update = core.update_R

    def checked(fit, rng, objective=False):
        value = update(fit, rng, objective)
        if value is not None:
            seen.append((value, core.compute_objective(fit)))
        return value

    monkeypatch.setattr(core, "update_R", checked)
    # float64: the two ways agree to 1e-6 (in float32 the direct sum is itself off by up to 1e-3 near zero)
    ho = run_harmony(X, meta, "batch", nclust=20, verbose=False, max_iter_harmony=3, epsilon_harmony=-np.inf,
                     dtype="float64")
    assert len(seen) == 3  # one per Harmony iteration (4 rounds: no early-stop checks)
    for value, direct in seen:
        assert value == pytest.approx(direct, rel=1e-6, abs=1e-4)
    assert ho.objective_harmony[1:] == pytest.approx([v for v, _ in seen])
