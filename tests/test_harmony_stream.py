"""scaml's streaming Harmony: same result as in memory on memmap and zarr inputs, memory that does
not grow with the number of cells (beyond a few bytes of batch codes per cell), clear errors."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from scaml.errors import ScamlError
from scaml.harmony import run_harmony
from scaml.harmony.stream import StreamingHarmony, is_streaming_input, parse_memory

zarr = pytest.importorskip("zarr")


def simulate(n_cells: int, n_pcs: int, seed: int = 0, n_batches: int = 4):
    """Clustered cells (12 types) with an additive shift per batch, cells in batch order (as a
    concatenation of samples is), plus a second covariate."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(12, n_pcs))
    cell_type = rng.integers(0, 12, n_cells)
    batch = np.sort(rng.integers(0, n_batches, n_cells))
    shift = rng.normal(scale=1.5, size=(n_batches, n_pcs))
    X = centers[cell_type] + shift[batch] + rng.normal(size=(n_cells, n_pcs))
    meta = pd.DataFrame(
        {
            "batch": [f"b{b}" for b in batch],
            "donor": [f"d{d}" for d in rng.integers(0, 3, n_cells)],
        }
    )
    return X.astype(np.float32), meta


def median_r(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    r = (a * b).sum(axis=0) / np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    return float(np.median(r))


@pytest.fixture(scope="module")
def data():
    return simulate(6000, 12)


@pytest.fixture(scope="module")
def in_memory(data):
    X, meta = data
    return run_harmony(X, meta, "batch", nclust=40, verbose=False)


def _memmap(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    return np.load(tmp_path / "x.npy", mmap_mode="r")


def test_memmap_matches_in_memory(tmp_path, data, in_memory):
    X, meta = data
    mm = _memmap(tmp_path, X)
    assert is_streaming_input(mm) and not is_streaming_input(X)
    ho = run_harmony(mm, meta, "batch", nclust=40, chunk_cells=350, verbose=False)
    assert isinstance(ho, StreamingHarmony)
    assert ho.info["n_chunks"] == 18 and ho.info["chunk_cells"] == 350
    assert median_r(in_memory.Z_corr, np.asarray(ho.Z_corr)) >= 0.999
    # the correction itself, not only the embedding, agrees
    assert median_r(in_memory.Z_corr - X, np.asarray(ho.Z_corr) - X) >= 0.99
    assert abs(ho.n_iter - in_memory.n_iter) <= 2 and ho.K == 40  # same stopping rule
    assert ho.O.shape == in_memory.O.shape and np.isclose(ho.O.sum(), X.shape[0])
    np.testing.assert_array_equal(mm, X)  # the input is untouched
    names = [p["pass"] for p in ho.info["passes"]]
    assert names[0].startswith("read") and names[-1].endswith("writing Z_corr")
    assert ho.info["n_passes"] == len(names) and ho.info["peak_rss_mib"] > 0
    with pytest.raises(ScamlError, match="R is not kept"):
        ho.R  # noqa: B018


def test_zarr_in_zarr_out(tmp_path, data, in_memory):
    X, meta = data
    src = zarr.open_array(
        str(tmp_path / "pcs.zarr"), mode="w", shape=X.shape, chunks=(500, X.shape[1]), dtype="f4"
    )
    src[:] = X
    out = tmp_path / "z_corr.zarr"
    ho = run_harmony(src, meta, "batch", nclust=40, chunk_cells=500, out=out, verbose=False)
    assert out.is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    Z = zarr.open_array(str(out), mode="r")
    assert Z.shape == X.shape and Z.dtype == np.float32 and Z.chunks == (500, X.shape[1])
    np.testing.assert_array_equal(Z[:], ho.Z_corr[:])
    assert Z.attrs["scaml_harmony"]["chunk_cells"] == 500
    assert median_r(in_memory.Z_corr, Z[:]) >= 0.999
    assert np.allclose(np.linalg.norm(ho.Z_cos, axis=1), 1, atol=1e-5)
    # a budget of 1300 rows reads whole stored chunks: 1000 rows
    budget = 1300 * ho.info["row_bytes"]
    aligned = run_harmony(src, meta, "batch", nclust=40, max_memory=budget, verbose=False)
    assert aligned.info["chunk_cells"] == 1000
    assert median_r(in_memory.Z_corr, aligned.Z_corr) >= 0.999


def test_same_seed_same_result_and_chunking_is_immaterial(tmp_path, data):
    X, meta = data
    mm = _memmap(tmp_path, X)
    kw = dict(nclust=30, max_iter_harmony=3, verbose=False)
    a = run_harmony(mm, meta, "batch", chunk_cells=1000, **kw)
    b = run_harmony(mm, meta, "batch", chunk_cells=1000, **kw)
    np.testing.assert_array_equal(a.Z_corr, b.Z_corr)
    c = run_harmony(mm, meta, "batch", chunk_cells=777, **kw)
    assert median_r(a.Z_corr, c.Z_corr) >= 0.999


def test_parameters_are_respected(tmp_path, data):
    """Two covariates, fixed lambda, per-batch theta, tau, k-means convergence checks (more than 4
    rounds), an in-memory ndarray streamed through max_memory."""
    X, meta = data
    kw = dict(
        vars_use=["batch", "donor"],
        theta=[2.0, 1.0],
        lamb=[1.0, 0.5],
        sigma=0.15,
        nclust=25,
        tau=5,
        max_iter_kmeans=8,
        epsilon_cluster=1e-4,
        max_iter_harmony=5,
        random_state=3,
        verbose=False,
    )
    ref = run_harmony(X, meta, **kw)
    ho = run_harmony(X, meta, max_memory="600KB", **kw)
    assert ho.info["chunk_cells"] < X.shape[0] // 4
    assert ho.params["lamb"] == ref.params["lamb"] and ho.params["theta"] == ref.params["theta"]
    assert ho.O.shape == (25, 7)
    assert median_r(ref.Z_corr, ho.Z_corr) >= 0.999
    assert len(ho.objective_kmeans) > len(ho.kmeans_rounds)  # evaluated every round


def test_estimated_lambda_and_convergence(tmp_path, data, in_memory):
    X, meta = data
    ho = run_harmony(
        _memmap(tmp_path, X), meta, "batch", nclust=40, chunk_cells=2000, verbose=False
    )
    assert ho.params["lamb"] == in_memory.params["lamb"] == "auto (alpha * E)"
    assert ho.converged and in_memory.converged


def _traced_peak(tmp_path, n: int, stream: bool) -> int:
    X, meta = simulate(n, 30, seed=1)
    path = tmp_path / f"x{n}.npy"
    np.save(path, X)
    del X
    mm = np.load(path, mmap_mode="r")
    kw = dict(nclust=50, max_iter_harmony=1, verbose=False)
    arr = mm if stream else np.array(mm)
    tracemalloc.start()
    try:
        if stream:
            run_harmony(arr, meta, "batch", chunk_cells=1000, out=tmp_path / f"o{n}.zarr", **kw)
        else:
            run_harmony(arr, meta, "batch", **kw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_cells(tmp_path):
    """Peak traced allocations at N and 4N cells with the same chunk size: the streaming path
    grows only by the per-cell batch / group codes (tens of bytes per cell, whatever d and K);
    the in-memory path grows by its cells x (d + K) arrays."""
    _traced_peak(tmp_path, 2000, True)  # imports and one-time buffers
    n = 25_000  # above the k-means start's fixed sample of 20,000 cells
    small, large = _traced_peak(tmp_path, n, True), _traced_peak(tmp_path, 4 * n, True)
    per_cell = (large - small) / (3 * n)
    mem_small, mem_large = _traced_peak(tmp_path, n, False), _traced_peak(tmp_path, 4 * n, False)
    mem_per_cell = (mem_large - mem_small) / (3 * n)
    assert per_cell < 40, per_cell  # measured: about 12 bytes per cell (in memory: about 390)
    assert mem_per_cell > 4 * per_cell, (mem_per_cell, per_cell)


# ----------------------------------------------------------------------------- errors


def test_nan_rows_clear_error_nothing_lost(tmp_path, data):
    X, meta = data
    bad = X.copy()
    bad[4321, 3] = np.nan
    bad[5000] = np.inf
    mm = _memmap(tmp_path, bad)
    out = tmp_path / "out.zarr"
    with pytest.raises(ScamlError, match=r"row 4321 .*remove or impute"):
        run_harmony(mm, meta, "batch", chunk_cells=500, out=out, verbose=False)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no partial or work files
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), bad)


def test_budget_smaller_than_a_row(data):
    X, meta = data
    with pytest.raises(ScamlError, match="smaller than one row"):
        run_harmony(X, meta, "batch", max_memory=100, verbose=False)
    with pytest.raises(ScamlError, match="chunk_cells must be a positive integer"):
        run_harmony(X, meta, "batch", chunk_cells=0, verbose=False)
    with pytest.raises(ScamlError, match="max_memory must be"):
        run_harmony(X, meta, "batch", max_memory="lots", verbose=False)
    assert parse_memory("2GB") == 2 * 2**30 and parse_memory("512m") == 512 * 2**20


def test_out_exists_without_overwrite(tmp_path, data):
    X, meta = data
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(ScamlError, match="exists; pass overwrite=True"):
        run_harmony(X, meta, "batch", out=out, max_iter_harmony=1, verbose=False)
    assert (out / "keep").read_text() == "x"
    ho = run_harmony(
        X, meta, "batch", out=out, overwrite=True, max_iter_harmony=1, nclust=20, verbose=False
    )
    assert not (out / "keep").exists() and ho.Z_corr.shape == X.shape
    with pytest.raises(ScamlError, match="does not exist"):
        run_harmony(X, meta, "batch", out=tmp_path / "no" / "x.zarr", verbose=False)


def test_out_is_the_input(tmp_path, data):
    X, meta = data
    src = zarr.open_array(str(tmp_path / "pcs.zarr"), mode="w", shape=X.shape, dtype="f4")
    src[:] = X
    with pytest.raises(ScamlError, match="input is never overwritten"):
        run_harmony(src, meta, "batch", out=tmp_path / "pcs.zarr", overwrite=True, verbose=False)
    np.testing.assert_array_equal(src[:], X)


def test_meta_length_mismatch(tmp_path, data):
    X, meta = data
    with pytest.raises(ScamlError, match="meta_data has 5999 rows but the embedding has 6000"):
        run_harmony(_memmap(tmp_path, X), meta.iloc[:-1], "batch", verbose=False)


def test_torch_backend_is_refused(tmp_path, data):
    X, meta = data
    with pytest.raises(ScamlError, match="runs on numpy"):
        run_harmony(_memmap(tmp_path, X), meta, "batch", backend="torch", verbose=False)


class _RowChunked:
    """A minimal row-chunked array (what a Dask or HDF5 array offers): shape, dtype, row slices."""

    def __init__(self, X: np.ndarray) -> None:
        self._X, self.shape, self.dtype = X, X.shape, X.dtype
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, rows: slice) -> np.ndarray:
        self.reads.append((rows.start, rows.stop))
        return self._X[rows].copy()


def test_any_row_chunked_array_with_progress(data, in_memory, capsys):
    X, meta = data
    arr = _RowChunked(X)
    assert is_streaming_input(arr)
    ho = run_harmony(arr, meta, "batch", nclust=40, chunk_cells=1500, verbose=True)
    assert max(b - a for a, b in arr.reads) <= 1500  # never more than a chunk at a time
    assert median_r(in_memory.Z_corr, ho.Z_corr) >= 0.999
    assert "streaming, 4 chunks of 1500 cells" in capsys.readouterr().err
