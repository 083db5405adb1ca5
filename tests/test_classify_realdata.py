"""The classifier benchmark on real data from ../shared/data/h5ad (skipped when absent)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file

from scaml.classify import run_novelty, run_train
from scaml.cli import main

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def cellbench(shared_data):
    from scaml.io import read_h5ad

    return read_h5ad(shared_file(shared_data, "h5ad", "cellbench_5cl_celseq2.h5ad"))


def test_cellbench_plate1_to_plate2(cellbench, tmp_path):
    singlets = cellbench[(cellbench.obs["demuxlet_cls"] != "DBL").to_numpy()].copy()
    res = run_train(singlets, label_key="cell_type", split_key="batch", split_train="plate1", split_test="plate2",
                    n_hvg=2000, models=["lr", "rf"], hyperparameters={"rf": {"n_estimators": 100}},
                    outdir=tmp_path / "cb", plots=False)
    summary = res["summary"]
    print({m: {k: round(v, 3) for k, v in summary[m].items() if k in ("accuracy", "f1_macro", "roc_auc_macro_ovr")}
           for m in summary})
    assert res["input_kind"] == "counts"
    assert res["classes"] == ["A549", "H1975", "H2228", "H838", "HCC827"]
    # five lung cancer cell lines are easy to tell apart across plates
    assert summary["lr"]["accuracy"] > 0.97 and summary["lr"]["f1_macro"] > 0.95
    assert summary["rf"]["accuracy"] > 0.95
    assert summary["lr"]["roc_auc_macro_ovr"] > 0.99
    cm = pd.read_csv(tmp_path / "cb" / "lr" / "confusion_matrix.csv", index_col=0)
    assert cm.to_numpy().sum() == int(((singlets.obs["batch"] == "plate2")).sum())


def test_kang_ctrl_to_stim_cli(shared_data, tmp_path):
    path = shared_file(shared_data, "h5ad", "kang_ifnb1k.h5ad")
    out = tmp_path / "kang"
    rc = main(["train", "--adata", str(path), "--label-key", "cell_type", "--split-key", "batch",
               "--split-train", "CTRL", "--split-test", "STIM", "--n-hvg", "2000", "--models", "lr",
               "--class-weight", "balanced", "--outdir", str(out), "--no-plots", "-q"])
    assert rc == 0
    summary = json.loads((out / "summary_metrics.json").read_text())["lr"]
    print({k: round(v, 3) for k, v in summary.items() if isinstance(v, float)})
    # interferon stimulation shifts expression, yet PBMC types stay recognisable
    assert summary["accuracy"] > 0.85
    assert summary["f1_macro"] > 0.7
    assert summary["roc_auc_macro_ovr"] > 0.95


def test_cellbench_doublets_as_novel_cells(cellbench, tmp_path):
    adata = cellbench.copy()
    results = {}
    for method in ("knn", "classifier", "lof"):
        res = run_novelty(adata, hek_key="demuxlet_cls", hek_positive="DBL", method=method, label_key="cell_type",
                          n_hvg=2000, n_folds=3, outdir=tmp_path / method, plots=method == "classifier")
        results[method] = res["metrics"]
        scores = res["scores"]
        assert scores["flagged"].sum() == 338
    print({m: (round(v["auroc"], 3), round(v["auprc"], 3)) for m, v in results.items()})
    # doublets mix two cell lines: a classifier trained on singlets is unsure about them
    assert results["classifier"]["auroc"] > 0.65
    assert results["classifier"]["auprc"] > results["classifier"]["auprc_baseline"] + 0.15
    assert results["lof"]["auroc"] > 0.55
    # the default knn (Harmony over the plates): about 0.72 (benchmarks/bench_novelty.py)
    assert results["knn"]["auroc"] > 0.65
    flagged = results["classifier"]["mean_score_flagged"]
    assert flagged > results["classifier"]["mean_score_not_flagged"]
    assert np.isfinite(flagged)
