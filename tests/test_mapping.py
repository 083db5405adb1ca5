"""Reference building, query mapping and label transfer end to end (library and CLI)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import shared_file

from scaml.cli import main
from scaml.datasets import simulate
from scaml.errors import ScamlError
from scaml.mapping import LATENT_KEY, build_reference, label_metrics, map_query

FAST = {"verbose": False, "n_threads": 1}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Reference = batch1 + batch2, query = batch3 (h5ad files and objects)."""
    adata = simulate(n_cells=900, n_genes=300, n_batches=3, n_cell_types=4, n_markers=20,
                     marker_log_fold=2.5, random_state=1)
    adata = adata[~adata.obs["low_quality"].to_numpy()].copy()
    ref = adata[adata.obs["batch"] != "batch3"].copy()
    query = adata[adata.obs["batch"] == "batch3"].copy()
    root = tmp_path_factory.mktemp("mapping")
    ref.write_h5ad(root / "ref.h5ad")
    query.write_h5ad(root / "query.h5ad")
    return {"ref": ref, "query": query, "ref_path": root / "ref.h5ad", "query_path": root / "query.h5ad",
            "root": root}


@pytest.fixture(scope="module")
def scvi_reference(split):
    """An scVI reference built through the CLI (few epochs)."""
    out = split["root"] / "scvi_ref"
    status = main(["reference", "build", str(split["ref_path"]), "--method", "scvi", "--batch-key", "batch",
                   "--label-key", "cell_type", "--out", str(out), "--max-epochs", "40", "--n-hvg", "0",
                   "--threads", "1", "--quiet"])
    assert status == 0
    return out


def test_scvi_cli_build_and_map_writes_outputs_and_sensible_metrics(split, scvi_reference, tmp_path):
    before = _digest(split["query_path"])
    ref_before = _digest(split["ref_path"])
    manifest = json.loads((scvi_reference / "reference.json").read_text())
    assert manifest["method"] == "scvi" and manifest["label_key"] == "cell_type"
    assert manifest["conditions"] == ["batch1", "batch2"]
    for name in ("model/model.pt", "reference_latent.npz", "reference_obs.csv", "run.json"):
        assert (scvi_reference / name).exists(), name
    out = tmp_path / "map"
    status = main(["map", "--reference", str(scvi_reference), "--query", str(split["query_path"]),
                   "--out", str(out), "--label-key", "cell_type", "--max-epochs", "20", "--threads", "1",
                   "--quiet"])
    assert status == 0
    assert _digest(split["query_path"]) == before  # inputs are never modified
    assert _digest(split["ref_path"]) == ref_before
    for name in ("mapped.h5ad", "predictions.csv", "metrics.json", "confusion_matrix.csv", "run.json",
                 "figures/joint_umap.png", "figures/confusion_matrix.png"):
        assert (out / name).exists(), name
    mapped = ad.read_h5ad(out / "mapped.h5ad")
    assert mapped.obsm[LATENT_KEY].shape == (split["query"].n_obs, 10)
    assert mapped.obsm["X_umap_joint"].shape == (split["query"].n_obs, 2)
    unc = mapped.obs["predicted_cell_type_uncertainty"].to_numpy()
    # the uncertainty is 1 - p(call), and exactly the cells above the threshold (0.5) are "Unknown"
    np.testing.assert_allclose(unc, 1.0 - mapped.obs["predicted_cell_type_probability"].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(mapped.obs["predicted_cell_type"].astype(str).to_numpy() == "Unknown", unc > 0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    knn = metrics["weighted_knn_no_unknown"]
    print("scvi simulated query:", metrics["weighted_knn"], knn)
    assert knn["accuracy"] > 0.8 and knn["macro_f1"] > 0.7
    assert set(knn) == {"accuracy", "balanced_accuracy", "macro_f1", "n_cells"}
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().sum() == split["query"].n_obs
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "map" and "query_training" in run["timings_seconds"]
    # an existing output directory is refused without --overwrite
    assert main(["map", "--reference", str(scvi_reference), "--query", str(split["query_path"]),
                 "--out", str(out), "--quiet"]) == 2


def test_scanvi_predicts_directly_and_by_knn(split, tmp_path):
    ref_dir = build_reference(split["ref"], "scanvi", "batch", "cell_type", tmp_path / "ref", max_epochs=30,
                              n_hvg=None, train_params=FAST)
    mapped = map_query(ref_dir, split["query"], tmp_path / "map", label_key="cell_type", max_epochs=10,
                       train_params=FAST, umap=False)
    assert "predicted_cell_type_scanvi" in mapped.obs
    assert "predicted_cell_type_scanvi" not in split["query"].obs  # the caller's object is untouched
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    print("scanvi simulated query:", metrics["scanvi_classifier"], metrics["weighted_knn"])
    assert metrics["scanvi_classifier"]["accuracy"] > 0.8
    assert metrics["weighted_knn_no_unknown"]["accuracy"] > 0.8


def test_symphony_maps_in_one_step_with_confidence(split, tmp_path):
    ref_dir = build_reference(split["ref"], "symphony", "batch", "cell_type", tmp_path / "ref", n_hvg=200,
                              n_comps=15)
    mapped = map_query(ref_dir, split["query"], tmp_path / "map", label_key="cell_type", umap=False)
    conf = mapped.obs["mapping_confidence"].to_numpy()
    assert np.isfinite(conf).all() and conf.min() >= 0 and conf.max() <= 1
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    print("symphony simulated query:", metrics["weighted_knn"])
    assert metrics["weighted_knn_no_unknown"]["accuracy"] > 0.8


def test_demo_mapping_writes_reference_and_query(small_counts, tmp_path):
    from scaml.mapping import demo_mapping

    before = small_counts.obs.copy()
    out = demo_mapping(small_counts, tmp_path / "demo", method="symphony")
    assert (out["reference"] / "reference.json").exists()
    for name in ("mapped.h5ad", "metrics.json", "figures/joint_umap.png", "run.json"):
        assert (out["query"] / name).exists(), name
    metrics = json.loads((out["query"] / "metrics.json").read_text())
    assert metrics["weighted_knn"]["accuracy"] > 0.8
    pd.testing.assert_frame_equal(small_counts.obs, before)


def test_label_metrics_count_unknown_as_a_miss():
    m = label_metrics(["a", "a", "b", "b"], ["a", "Unknown", "b", "b"])
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == 0.75
    assert 0.5 < m["macro_f1"] < 1.0


# ----------------------------------------------------------------------------- bad input

def _write(adata: ad.AnnData, path: Path) -> str:
    adata.write_h5ad(path)
    return str(path)


def test_query_without_shared_genes_is_refused(split, scvi_reference, tmp_path, capsys):
    query = split["query"].copy()
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    status = main(["map", "--reference", str(scvi_reference), "--query", _write(query, tmp_path / "q.h5ad"),
                   "--out", str(tmp_path / "o"), "--quiet"])
    assert status == 2
    err = capsys.readouterr().err
    assert "shares no genes" in err and "Ensembl IDs" in err


def test_non_count_query_for_nb_reference_is_refused(split, scvi_reference, tmp_path, capsys):
    query = split["query"].copy()
    query.X = sp.csr_matrix(np.log1p(query.X.toarray()))
    status = main(["map", "--reference", str(scvi_reference), "--query", _write(query, tmp_path / "q.h5ad"),
                   "--out", str(tmp_path / "o"), "--quiet"])
    assert status == 2
    err = capsys.readouterr().err
    assert "raw count" in err and "--gene-likelihood mse" in err


def test_non_count_reference_suggests_mse(split, tmp_path, capsys):
    ref = split["ref"].copy()
    ref.X = sp.csr_matrix(np.log1p(ref.X.toarray()))
    status = main(["reference", "build", _write(ref, tmp_path / "r.h5ad"), "--method", "scvi", "--batch-key",
                   "batch", "--out", str(tmp_path / "o"), "--quiet"])
    assert status == 2
    assert "--gene-likelihood mse" in capsys.readouterr().err


def test_existing_batch_name_needs_the_flag(split, scvi_reference, tmp_path, capsys):
    query = split["query"].copy()
    query.obs["batch"] = "batch1"
    path = _write(query, tmp_path / "q.h5ad")
    status = main(["map", "--reference", str(scvi_reference), "--query", path, "--out", str(tmp_path / "o"),
                   "--quiet"])
    assert status == 2
    assert "--allow-existing-conditions" in capsys.readouterr().err
    status = main(["map", "--reference", str(scvi_reference), "--query", path, "--out", str(tmp_path / "o2"),
                   "--allow-existing-conditions", "--no-umap", "--max-epochs", "2", "--threads", "1", "--quiet"])
    assert status == 0


def test_scanvi_needs_an_existing_label_key(split, tmp_path, capsys):
    args = ["reference", "build", str(split["ref_path"]), "--method", "scanvi", "--batch-key", "batch",
            "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 2
    assert "--label-key" in capsys.readouterr().err
    assert main([*args, "--label-key", "celltype"]) == 2
    err = capsys.readouterr().err
    assert "'celltype'" in err and "cell_type" in err


def test_not_a_reference_or_incompatible_version_is_refused(scvi_reference, split, tmp_path, capsys):
    base = ["--query", str(split["query_path"]), "--quiet"]
    assert main(["map", "--reference", str(tmp_path), "--out", str(tmp_path / "o1"), *base]) == 2
    assert "not a scaml reference directory" in capsys.readouterr().err
    old = tmp_path / "old_ref"
    old.mkdir()
    for item in scvi_reference.iterdir():
        target = old / item.name
        if item.is_dir():
            target.mkdir()
            for sub in item.iterdir():
                (target / sub.name).write_bytes(sub.read_bytes())
        else:
            target.write_bytes(item.read_bytes())
    manifest = json.loads((old / "reference.json").read_text())
    manifest["format_version"] = 99
    manifest["scaml_version"] = "9.0.0"
    (old / "reference.json").write_text(json.dumps(manifest))
    assert main(["map", "--reference", str(old), "--out", str(tmp_path / "o2"), *base]) == 2
    assert "format version 99" in capsys.readouterr().err


def test_unknown_method_is_refused(split, tmp_path):
    with pytest.raises(ScamlError, match="unknown reference method"):
        build_reference(split["ref"], "seurat", "batch", out=tmp_path / "o")


# ----------------------------------------------------------------------------- real data

@pytest.mark.realdata
def test_panc8_one_technology_held_out(shared_data, tmp_path):
    adata = ad.read_h5ad(shared_file(shared_data, "h5ad", "panc8_small.h5ad"))
    adata.X = sp.csr_matrix(np.round(adata.X.toarray()))  # some technologies hold non-integer counts
    held_out = "smartseq2"
    ref = adata[adata.obs["batch"] != held_out].copy()
    query = adata[adata.obs["batch"] == held_out].copy()
    ref_dir = build_reference(ref, "scvi", "batch", "cell_type", tmp_path / "ref", max_epochs=60,
                              train_params=FAST)
    map_query(ref_dir, query, tmp_path / "map", label_key="cell_type", max_epochs=20, train_params=FAST,
              umap=False)
    metrics = json.loads((tmp_path / "map" / "metrics.json").read_text())
    print(f"panc8_small, {held_out} held out (scvi):", metrics["weighted_knn"], metrics["weighted_knn_no_unknown"])
    assert metrics["weighted_knn_no_unknown"]["accuracy"] > 0.6
