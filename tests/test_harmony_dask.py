"""scaml's Harmony on a Dask cluster (``client=``): the in-process streaming run's numbers, on
ndarray and Dask array inputs, with the cluster recorded and bad rows refused before any output."""

from __future__ import annotations

import numpy as np
import pytest
from test_harmony_stream import median_r, simulate

from scaml._utils import add_up
from scaml.errors import ScamlError
from scaml.harmony import run_harmony

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

# few blocks and iterations: every block update is a round trip to the cluster
FAST = {"nclust": 30, "block_size": 0.2, "max_iter_harmony": 4, "verbose": False}


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def data():
    return simulate(5000, 12)


@pytest.fixture(scope="module")
def streamed(data):
    X, meta = data
    return run_harmony(X, meta, "batch", chunk_cells=700, dtype="float64", **FAST)


def test_cluster_gives_the_in_process_numbers(data, streamed, client, tmp_path):
    X, meta = data
    out = tmp_path / "z.zarr"
    there = run_harmony(X, meta, "batch", chunk_cells=700, dtype="float64", client=client, out=out, **FAST)
    Z = np.asarray(there.Z_corr[:])
    assert there.n_iter == streamed.n_iter
    np.testing.assert_allclose(Z, np.asarray(streamed.Z_corr), rtol=0, atol=1e-9)
    np.testing.assert_allclose(there.objective_harmony, streamed.objective_harmony, rtol=1e-10)
    assert there.info["path"] == "dask"
    cluster = there.info["cluster"]
    assert cluster["n_workers"] == cluster["workers_used"] == 2 and cluster["n_partitions"] == 8
    assert len(cluster["worker_peak_rss_mib"]) == 2
    assert zarr.open_array(str(out), mode="r").shape == X.shape
    # and close to the in-memory run, whose blocks are drawn differently
    in_memory = run_harmony(X, meta, "batch", **FAST)
    assert median_r(Z, np.asarray(in_memory.Z_corr)) > 0.999


def test_two_covariates_and_a_dask_array_input(data, client):
    X, meta = data
    da = pytest.importorskip("dask.array")
    here = run_harmony(X, meta, ["batch", "donor"], chunk_cells=1000, **FAST)
    lazy = da.from_array(X, chunks=(640, X.shape[1]))  # rechunked to the run's chunks on the cluster
    there = run_harmony(lazy, meta, ["batch", "donor"], chunk_cells=1000, client=client, **FAST)
    np.testing.assert_allclose(np.asarray(there.Z_corr), np.asarray(here.Z_corr), rtol=0, atol=2e-4)


def test_a_bad_row_is_refused_before_anything_is_written(data, client, tmp_path):
    X, meta = data
    bad = X.copy()
    bad[3210, 4] = np.nan
    out = tmp_path / "z.zarr"
    with pytest.raises(ScamlError, match="NaN or infinite values in row 3210"):
        run_harmony(bad, meta, "batch", chunk_cells=700, client=client, out=out, **FAST)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_partial_results_add_up_element_by_element():
    parts = [(np.full((2, 3), i, dtype=float), None, float(i)) for i in range(5)]
    total = add_up(*parts)
    assert np.array_equal(total[0], np.full((2, 3), 10.0)) and total[1] is None and total[2] == 10.0
    assert parts[0][0].sum() == 0  # the first partial result is not modified
