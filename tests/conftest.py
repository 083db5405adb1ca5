"""Shared fixtures: small simulated data, and the real data in ../shared/data (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCAML_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real datasets; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found ({SHARED_DATA.name}); set SCAML_SHARED_DATA to run real-data tests")
    return SHARED_DATA


def shared_file(shared: Path, *parts: str) -> Path:
    """A file inside the shared data folder, skipping the test when it is missing."""
    path = shared.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data file {'/'.join(parts)} not found")
    return path


@pytest.fixture(scope="session")
def small_counts():
    """A small simulated multi-batch count dataset (600 cells x 500 genes, 3 batches, 4 types)."""
    from scaml.datasets import simulate

    return simulate(n_cells=600, n_genes=500, n_batches=3, n_cell_types=4, n_markers=15, random_state=0)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for a test module: on a small, shared machine it is faster and steadier."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cli_build_and_map_at_scale(tmp_path: Path, adata, method: str) -> dict:
    """``reference build --method METHOD`` on every batch but ``batch4`` (>= 20,000 cells), ``map`` of batch4.

    Two epochs each, one thread, no UMAP; returns the mapping's metrics.json.
    """
    import json

    from scaml.cli import main

    ref = adata[adata.obs["batch"] != "batch4"].copy()
    assert ref.n_obs >= 20_000
    ref_path, query_path = tmp_path / "ref.h5ad", tmp_path / "query.h5ad"
    ref.write_h5ad(ref_path)
    adata[adata.obs["batch"] == "batch4"].copy().write_h5ad(query_path)
    out = tmp_path / "refdir"
    assert main(["reference", "build", str(ref_path), "--method", method, "--batch-key", "batch",
                 "--label-key", "cell_type", "--out", str(out), "--max-epochs", "2", "--batch-size", "512",
                 "--threads", "1", "--quiet"]) == 0
    assert main(["map", "--reference", str(out), "--query", str(query_path), "--out", str(tmp_path / "map"),
                 "--label-key", "cell_type", "--max-epochs", "2", "--threads", "1", "--no-umap",
                 "--quiet"]) == 0
    return json.loads((tmp_path / "map" / "metrics.json").read_text())
