"""scaml.metrics.evaluate / evaluate_embeddings on AnnData, the output files, and the CLI."""

from __future__ import annotations

import json
import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scaml.cli import main
from scaml.errors import ScamlError
from scaml.metrics import evaluate, evaluate_embeddings, plot_metrics


@pytest.fixture(scope="module")
def embedded():
    """500 cells, 3 batches, 4 types: X_pca with a strong batch effect, X_pca_harmony without."""
    rng = np.random.default_rng(1)
    n, d = 500, 12
    labels = rng.integers(0, 4, n)
    batches = rng.integers(0, 3, n)
    centres = rng.normal(scale=6.0, size=(4, d))
    base = centres[labels] + rng.normal(size=(n, d))
    shift = np.zeros((3, d))
    shift[np.arange(3), np.arange(3) + 5] = 30.0
    a = ad.AnnData(np.zeros((n, 2), dtype=np.float32))
    a.obs["batch"] = pd.Categorical([f"batch{b}" for b in batches])
    a.obs["cell_type"] = pd.Categorical([f"type_{'ABCD'[c]}" for c in labels])
    a.obsm["X_pca"] = (base + shift[batches]).astype(np.float32)
    a.obsm["X_pca_harmony"] = base.astype(np.float32)
    return a


def test_evaluate_embeddings_table(embedded):
    table = evaluate_embeddings(embedded, "batch", "cell_type")
    assert list(table["embedding"]) == ["X_pca", "X_pca_harmony"]
    pca, harmony = table.iloc[0], table.iloc[1]
    assert set(table["neighbor_method"]) == {"exact"}  # "auto" on 500 cells
    # X_pca: batches 30 apart, no neighbour from another batch; it is also the PCR reference
    assert pca["ilisi_median"] == pytest.approx(1.0) and pca["kbet"] == 0.0 and pca["pcr_comparison"] == 0.0
    assert "itself is 0 by definition" in pca["notes"]
    # X_pca_harmony: batches drawn at random, separated cell types
    assert 2.6 < harmony["ilisi_median"] <= 3 and harmony["kbet"] > 0.9 and harmony["batch_asw"] > 0.95
    assert harmony["nmi"] == 1.0 and harmony["ari"] == 1.0 and harmony["graph_connectivity"] == 1.0
    assert harmony["leiden_n_clusters"] == 4 and harmony["clisi"] == pytest.approx(1.0)
    assert harmony["total"] > pca["total"] + 0.4
    assert table["notes"].map(type).eq(str).all()


def test_evaluate_embeddings_batch_only_and_subsample(embedded):
    table = evaluate_embeddings(embedded, "batch", None, ["X_pca_harmony"], subsample=200)
    row = table.iloc[0]
    assert row["n_cells"] == 200 and row["n_cells_total"] == 500
    assert row["ilisi"] > 0.8 and math.isnan(row["nmi"]) and math.isnan(row["total"])
    assert "random subset of 200 of 500 cells" in row["notes"] and "no label key" in row["notes"]


def test_cells_without_label_are_left_out(embedded):
    a = embedded.copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(object)
    a.obs.iloc[:7, a.obs.columns.get_loc("cell_type")] = None
    row = evaluate_embeddings(a, "batch", "cell_type", ["X_pca_harmony"]).iloc[0]
    assert row["n_cells"] == 493 and "7 cells without a batch or label were left out" in row["notes"]


def test_evaluate_embeddings_missing_keys(embedded):
    with pytest.raises(ScamlError, match="X_pca_harmony"):
        evaluate_embeddings(embedded, "batch", "cell_type", ["X_scvi"])
    with pytest.raises(ScamlError, match="'batch'"):
        evaluate_embeddings(embedded, "donor", "cell_type")
    with pytest.raises(ScamlError, match="cell_type"):
        evaluate_embeddings(embedded, "batch", "celltype")


def test_evaluate_writes_outputs(embedded, tmp_path):
    out = tmp_path / "eval"
    table = evaluate(embedded, "batch", "cell_type", ["X_pca", "X_pca_harmony"], out)
    csv = pd.read_csv(out / "metrics.csv")
    assert list(csv["embedding"]) == ["X_pca", "X_pca_harmony"]
    np.testing.assert_allclose(csv["total"], table["total"])
    rows = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 2 and rows[1]["embedding"] == "X_pca_harmony"
    sweep = pd.read_csv(out / "metrics_leiden_sweep.csv")
    assert len(sweep) == 20 and sweep.groupby("embedding")["resolution"].nunique().eq(10).all()
    for row in table.itertuples():  # the table reports the sweep's best resolution
        best = sweep[sweep["embedding"] == row.embedding].set_index("resolution").loc[row.leiden_resolution]
        assert best["nmi"] == pytest.approx(row.nmi) == sweep.loc[sweep["embedding"] == row.embedding, "nmi"].max()
        assert best["ari"] == pytest.approx(row.ari) and best["n_clusters"] == row.leiden_n_clusters
    per_label = pd.read_csv(out / "metrics_per_label.csv")
    assert set(per_label["embedding"]) == {"X_pca", "X_pca_harmony"} and len(per_label) == 8
    per_label = per_label.set_index("embedding")
    assert per_label.loc["X_pca", "kbet"].eq(0).all() and per_label.loc["X_pca_harmony", "graph_connectivity"].eq(1).all()
    png = out / "figures" / "metrics_comparison.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "evaluate" and any("kbet" in k for k in run["timings_seconds"])
    # the library writes the report (not only the CLI): the page shows this run's table and figure
    page = (out / "report.html").read_text()
    assert "scaml evaluate report" in page and "metrics_comparison.png" in page and "X_pca_harmony" in page
    with pytest.raises(ScamlError, match="overwrite"):
        evaluate(embedded, "batch", "cell_type", ["X_pca"], out)
    evaluate(embedded, "batch", "cell_type", ["X_pca"], out, overwrite=True)
    assert len(pd.read_csv(out / "metrics.csv")) == 1


def test_plot_metrics_with_missing_values(tmp_path, monkeypatch):
    import matplotlib

    def no_backend_change(*args, **kwargs):
        raise AssertionError("plot_metrics must not select matplotlib's backend")

    monkeypatch.setattr(matplotlib, "use", no_backend_change)
    before = dict(matplotlib.rcParams)
    table = pd.DataFrame({"embedding": ["a", "b"], "ilisi": [0.2, float("nan")], "kbet": [0.5, 0.9],
                          "batch_score": [0.35, 0.9], "notes": ["", ""]})
    path = plot_metrics(table, tmp_path / "m.png")
    assert path.exists() and path.stat().st_size > 5_000
    assert dict(matplotlib.rcParams) == before  # scaml's style applies to its figure only


@pytest.mark.parametrize(("input_flag", "out_flag"), [(None, "--out"), ("--adata", "--outdir")])
def test_cli_evaluate(embedded, tmp_path, capsys, input_flag, out_flag):
    """The input positionally or as --adata; --out and --outdir are the same option."""
    path = tmp_path / "data.h5ad"
    embedded.write_h5ad(path)
    out = tmp_path / "cli"
    given = [str(path)] if input_flag is None else [input_flag, str(path)]
    status = main(["evaluate", *given, "--batch-key", "batch", "--label-key", "cell_type",
                   "--embeddings", "X_pca", "X_pca_harmony", out_flag, str(out), "--quiet"])
    assert status == 0
    assert list(pd.read_csv(out / "metrics.csv")["embedding"]) == ["X_pca", "X_pca_harmony"]
    assert (out / "figures" / "metrics_comparison.png").exists() and (out / "report.html").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"]["input"] == "data.h5ad" and run["parameters"]["neighbor_method"] == "auto"


def test_cli_evaluate_input_given_twice_or_not_at_all(tmp_path, capsys):
    common = ["--batch-key", "batch", "--out", str(tmp_path / "o")]
    assert main(["evaluate", "a.h5ad", "--adata", "b.h5ad", *common]) == 2
    assert "two inputs given: 'a.h5ad' and --adata 'b.h5ad'" in capsys.readouterr().err
    assert main(["evaluate", *common]) == 2
    assert "no input given; pass it positionally (scaml evaluate INPUT ...) or with --adata INPUT" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--batch-key", "donor"], "'batch'"),
        (["--batch-key", "batch", "--embeddings", "X_umap"], "X_pca_harmony"),
        (["--batch-key", "batch", "--label-key", "celltype"], "cell_type"),
    ],
)
def test_cli_evaluate_errors(embedded, tmp_path, capsys, args, expected):
    path = tmp_path / "data.h5ad"
    embedded.write_h5ad(path)
    status = main(["evaluate", str(path), *args, "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert "error" in err and expected in err
    assert not (tmp_path / "o").exists()


def test_real_data_harmony_beats_pca(shared_data):
    """Cell lines (Jurkat / HEK293T / 50:50 mix): R harmony's output mixes the datasets and keeps the types."""
    from conftest import shared_file

    pcs = pd.read_csv(shared_file(shared_data, "harmony", "cell_lines_pcs.tsv.gz"), sep="\t")
    meta = pd.read_csv(shared_file(shared_data, "harmony", "cell_lines_meta.tsv.gz"), sep="\t")
    corrected = pd.read_csv(shared_file(shared_data, "harmony", "cell_lines_harmony2.tsv.gz"), sep="\t")
    meta.index = meta.index.astype(str)
    a = ad.AnnData(np.zeros((len(meta), 1), dtype=np.float32), obs=meta)
    a.obsm["X_pca"] = pcs.select_dtypes("number").to_numpy(np.float32)
    a.obsm["X_pca_harmony"] = corrected.select_dtypes("number").to_numpy(np.float32)
    table = evaluate_embeddings(a, "dataset", "cell_type").set_index("embedding")
    assert table.loc["X_pca_harmony", "ilisi"] > table.loc["X_pca", "ilisi"] + 0.1
    assert table.loc["X_pca_harmony", "batch_score"] > table.loc["X_pca", "batch_score"]
    assert table.loc["X_pca_harmony", "clisi"] > 0.95 and table.loc["X_pca_harmony", "nmi"] > 0.8
