"""Tests of the classifier benchmark (scaml train / learning-curve / novelty / plot) on simulated data."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scaml.classify import HYPERPARAMETERS, run_learning_curve, run_novelty, run_train
from scaml.classify.features import build_features
from scaml.classify.metrics import classification_metrics, roc_auc_macro_ovr
from scaml.classify.models import parse_param_overrides, resolve_hyperparameters
from scaml.cli import main
from scaml.errors import ScamlError

#: Tiny tree / network settings so the tests stay fast.
TINY = ["rf.n_estimators=20", "xgb.n_estimators=10", "xgb.max_depth=3"]
TINY_DICT = parse_param_overrides(TINY)
MODEL_FILES = ("classification_report.txt", "confusion_matrix.csv", "predictions.csv", "proba.csv", "metrics.json")


@pytest.fixture(scope="module")
def sim():
    from scaml.datasets import simulate

    adata = simulate(n_cells=480, n_genes=300, n_batches=3, n_cell_types=4, n_markers=15, random_state=1)
    adata.obs["harvest"] = adata.obs["batch"].map({"batch1": "H4", "batch2": "H8", "batch3": "H12"}).astype(str)
    adata.obs["label_ref"] = adata.obs["cell_type"].astype(str)
    return adata


@pytest.fixture(scope="module")
def sim_file(sim, tmp_path_factory):
    from scaml.io import write_h5ad

    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    write_h5ad(sim, path)
    return path


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_args(path, outdir, *extra):
    return ["train", "--adata", str(path), "--label-key", "label_ref", "--split-key", "harvest",
            "--features", "hvg", "--n-hvg", "120", "--outdir", str(outdir), "--quiet", *extra]


# ----------------------------------------------------------------------------- scaml train

def test_train_cli_writes_every_artifact(sim, sim_file, tmp_path):
    before = _digest(sim_file)
    out = tmp_path / "run"
    rc = main(_train_args(sim_file, out, "--split-train", "H4", "--split-test", "H8",
                          "--models", "lr", "rf", "xgb", "mlp", "--param", *TINY))
    assert rc == 0
    assert _digest(sim_file) == before, "the input file must never be modified"
    for name in ("summary_metrics.json", "classes.txt", "features.txt", "run.json", "hyperparameters.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary_metrics.json").read_text())
    assert list(summary) == ["lr", "rf", "xgb", "mlp"]
    classes = [line.split("\t") for line in (out / "classes.txt").read_text().splitlines()]
    assert classes == [[str(i), c] for i, c in enumerate(sorted(sim.obs["label_ref"].unique()))]
    class_names = [c for _, c in classes]
    assert len((out / "features.txt").read_text().splitlines()) == 120
    test_cells = sim.obs_names[sim.obs["harvest"] == "H8"]
    for model in summary:
        for name in MODEL_FILES:
            assert (out / model / name).is_file(), f"{model}/{name}"
        # four well-separated simulated types: every model is close to perfect, LR is perfect
        floor = {"lr": 1.0, "rf": 0.95, "xgb": 0.95, "mlp": 0.9}[model]
        for metric in ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted"):
            assert summary[model][metric] >= floor - 1e-9, (model, metric, summary[model][metric])
        assert summary[model]["roc_auc_macro_ovr"] > 0.99
        cm = pd.read_csv(out / model / "confusion_matrix.csv", index_col=0)
        assert list(cm.index) == class_names and list(cm.columns) == class_names
        assert cm.to_numpy().sum() == len(test_cells)
        pred = pd.read_csv(out / model / "predictions.csv")
        assert {"cell", "harvest", "true_label", "predicted_label", "true_index", "predicted_index"} <= set(pred.columns)
        assert list(pred["cell"]) == list(test_cells)
        assert (pred["true_label"] == [class_names[i] for i in pred["true_index"]]).all()
        proba = pd.read_csv(out / model / "proba.csv", index_col=0)
        assert list(proba.columns) == class_names
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)
        metrics = json.loads((out / model / "metrics.json").read_text())
        assert set(metrics["per_class"]) == set(class_names)
        expected = {**HYPERPARAMETERS[model], **TINY_DICT.get(model, {})}
        assert metrics["hyperparameters"] == json.loads(json.dumps(expected)), model
        report = (out / model / "classification_report.txt").read_text()
        assert all(c in report for c in class_names)
    print({m: round(summary[m]["accuracy"], 3) for m in summary})
    assert summary["lr"]["accuracy"] == 1.0
    for png in ("model_compare.png", "lr_confusion_matrix.png", "mlp_confusion_matrix.png"):
        assert (out / "plots" / png).stat().st_size > 5000
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["hyperparameters"]["rf"]["n_estimators"] == 20
    assert run["parameters"]["hyperparameters"]["xgb"]["max_depth"] == 3
    assert run["data"]["input_kind"] == "counts"
    assert run["data"]["n_hvg_used"] == 120 and run["data"]["n_features"] == 120
    assert (out / "report.html").is_file()


def test_features_are_chosen_on_the_training_split_only(sim):
    train = np.flatnonzero(sim.obs["harvest"] == "H4")
    test = np.flatnonzero(sim.obs["harvest"] == "H8")
    rows = np.concatenate([train, test])
    first = build_features(sim, rows, train, n_hvg=60, announce=False)
    changed = sim.copy()
    X = changed.X.tolil()
    rng = np.random.default_rng(0)
    for g in range(20, 80):  # make 60 genes wildly variable in the test cells only
        X[test, g] = rng.poisson(200, size=(test.size, 1)).astype(np.float32)
    changed.X = sp.csr_matrix(X)
    second = build_features(changed, rows, train, n_hvg=60, announce=False)
    assert first.names == second.names
    # the test rows use the same per-cell normalisation as the training rows
    np.testing.assert_allclose(first.X[: train.size].toarray(), second.X[: train.size].toarray())
    whole = build_features(changed, rows, rows, n_hvg=60, announce=False)
    assert whole.names != first.names  # choosing on all cells would have leaked


def test_input_kind_detection(sim):
    import scanpy as sc

    from scaml.preprocess import find_expression

    found = find_expression(sim)
    assert (found.kind, found.source) == ("counts", "X")
    lognorm = sim.copy()
    lognorm.layers["counts"] = lognorm.X.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    found = find_expression(lognorm)
    assert (found.kind, found.source) == ("counts", 'layers["counts"]')
    del lognorm.layers["counts"]
    found = find_expression(lognorm)
    assert (found.kind, found.source) == ("lognorm", "X")
    res_counts = run_train(sim, label_key="label_ref", split_key="harvest", split_train="H4", split_test="H8",
                           n_hvg=100, models=["lr"])
    res_log = run_train(lognorm, label_key="label_ref", split_key="harvest", split_train="H4", split_test="H8",
                        n_hvg=100, models=["lr"])
    assert res_log["input_kind"] == "lognorm" and res_counts["input_kind"] == "counts"
    description = next(iter(res_log["runs"].values()))["features"]
    assert description["source"] == "X" and description["normalisation"] == "none (log-normalised input)"
    assert next(iter(res_counts["runs"].values()))["features"]["normalisation"] == "per-cell total 10000, log1p"
    # normalising the counts ourselves gives the same features as the log-normalised input
    assert next(iter(res_log["runs"].values()))["feature_names"] == next(iter(res_counts["runs"].values()))["feature_names"]
    assert abs(res_log["summary"]["lr"]["accuracy"] - res_counts["summary"]["lr"]["accuracy"]) < 0.02


def test_unseen_test_class_is_reported_and_counted_as_error(sim, tmp_path):
    from scaml import _utils

    adata = sim.copy()
    unseen = "type_D"
    keep = ~((adata.obs["harvest"] == "H4") & (adata.obs["label_ref"] == unseen))
    adata = adata[keep.to_numpy()].copy()
    n_warn = len(_utils.WARNINGS)
    res = run_train(adata, label_key="label_ref", split_key="harvest", split_train="H4", split_test="H8",
                    n_hvg=100, models=["lr", "xgb"], class_weight="balanced", hyperparameters=TINY_DICT,
                    outdir=tmp_path / "out", plots=False)
    assert any(unseen in w for w in _utils.WARNINGS[n_warn:])
    assert res["classes"] == sorted(adata.obs["label_ref"].unique())
    n_unseen = int(((adata.obs["harvest"] == "H8") & (adata.obs["label_ref"] == unseen)).sum())
    assert n_unseen > 0
    for model in ("lr", "xgb"):
        assert res["summary"][model]["test_classes_unseen_in_training"] == [unseen]
        pred = pd.read_csv(tmp_path / "out" / model / "predictions.csv")
        rows = pred[pred["true_label"] == unseen]
        assert len(rows) == n_unseen and not rows["correct"].any()
        proba = pd.read_csv(tmp_path / "out" / model / "proba.csv", index_col=0)
        assert unseen in proba.columns and (proba[unseen] == 0).all()
        cm = pd.read_csv(tmp_path / "out" / model / "confusion_matrix.csv", index_col=0)
        assert cm.loc[unseen].sum() == n_unseen and cm.loc[unseen, unseen] == 0
        metrics = res["runs"]["H4_to_H8"]["models"][model]
        assert metrics["per_class"][unseen]["recall"] == 0.0
        assert metrics["per_class"][unseen]["seen_in_training"] is False
        assert metrics["accuracy"] <= 1 - n_unseen / len(pred) + 1e-9


def test_reverse_and_cv(sim_file, tmp_path):
    out = tmp_path / "rev"
    assert main(_train_args(sim_file, out, "--split-train", "H4", "--split-test", "H8", "--reverse",
                            "--models", "lr", "rf", "--param", *TINY)) == 0
    for direction in ("H4_to_H8", "H8_to_H4"):
        assert (out / direction / "summary_metrics.json").is_file()
        for model in ("lr", "rf"):
            for name in MODEL_FILES:
                assert (out / direction / model / name).is_file()
        assert (out / "plots" / direction / "lr_confusion_matrix.png").is_file()
    summary = json.loads((out / "summary_metrics.json").read_text())
    assert summary["mode"] == "reverse" and set(summary["runs"]) == {"H4_to_H8", "H8_to_H4"}
    assert (out / "plots" / "direction_compare.png").is_file()
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 4 and set(table["run"]) == {"H4_to_H8", "H8_to_H4"}

    out = tmp_path / "cv"
    assert main(_train_args(sim_file, out, "--cv", "leave-one-group-out", "--models", "lr")) == 0
    summary = json.loads((out / "summary_metrics.json").read_text())
    assert summary["mode"] == "cv"
    assert set(summary["runs"]) == {"holdout_H4", "holdout_H8", "holdout_H12"}
    accs = [summary["runs"][f]["lr"]["accuracy"] for f in summary["runs"]]
    assert summary["mean"]["lr"]["accuracy"] == pytest.approx(np.mean(accs))
    assert summary["sd"]["lr"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert (out / "plots" / "fold_compare.png").is_file()
    # scaml plot re-draws into another folder, for chosen models
    assert main(["plot", "--results", str(out), "--outdir", str(out / "plots2"), "--models", "lr", "-q"]) == 0
    assert (out / "plots2" / "fold_compare.png").is_file()
    assert (out / "plots2" / "holdout_H8" / "lr_confusion_matrix.png").is_file()


def test_embedding_and_several_levels_and_reproducibility(sim):
    adata = sim.copy()
    rng = np.random.default_rng(0)
    codes = adata.obs["label_ref"].astype("category").cat.codes.to_numpy()
    adata.obsm["X_harmony"] = (rng.normal(size=(adata.n_obs, 8)) + codes[:, None] * 2).astype(np.float32)
    kwargs = dict(label_key="label_ref", split_key="harvest", split_train=["H4", "H12"], split_test="H8",
                  embedding="X_harmony", models=["rf"], hyperparameters=TINY_DICT, random_state=3)
    first = run_train(adata, **kwargs)
    run = first["runs"]["H4+H12_to_H8"]
    assert run["feature_names"] == [f"X_harmony_{i}" for i in range(1, 9)]
    assert run["n_train"] == int(adata.obs["harvest"].isin(["H4", "H12"]).sum())
    assert first["summary"]["rf"]["accuracy"] > 0.9
    second = run_train(adata, **kwargs)
    pd.testing.assert_frame_equal(run["models"]["rf"]["proba"], second["runs"]["H4+H12_to_H8"]["models"]["rf"]["proba"])


def test_hyperparameters_live_in_one_registry():
    assert set(HYPERPARAMETERS) == {"lr", "rf", "xgb", "mlp"}
    assert HYPERPARAMETERS["rf"]["n_estimators"] == 300
    assert HYPERPARAMETERS["xgb"]["tree_method"] == "hist"
    resolved = resolve_hyperparameters(["rf"], {"rf": {"n_estimators": 5}})
    assert resolved["rf"]["n_estimators"] == 5 and HYPERPARAMETERS["rf"]["n_estimators"] == 300
    with pytest.raises(ScamlError, match="unknown hyperparameter"):
        resolve_hyperparameters(["rf"], {"rf": {"n_trees": 5}})
    assert parse_param_overrides(["mlp.hidden_layer_sizes=(8, 4)", "lr.solver=saga"]) == {
        "mlp": {"hidden_layer_sizes": (8, 4)}, "lr": {"solver": "saga"}}


# ----------------------------------------------------------------------------- metrics

def test_roc_auc_is_robust():
    proba = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    auc, reason, _ = roc_auc_macro_ovr(np.array([0, 0]), proba)
    assert np.isnan(auc) and "1 class" in reason
    # class 2 absent from the test split: excluded from the average
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.45, 0.55, 0.0]])
    auc, reason, per_class = roc_auc_macro_ovr(y, proba)
    assert reason is None and set(per_class) == {0, 1} and auc == pytest.approx(1.0)
    metrics = classification_metrics(y, proba.argmax(1), proba, ["a", "b", "c"], train_classes=[0, 1, 2])
    assert list(metrics["per_class"]) == ["a", "b", "c"]
    assert metrics["per_class"]["c"]["support"] == 0 and np.isnan(metrics["per_class"]["c"]["roc_auc_ovr"])
    assert metrics["accuracy"] == 1.0 and metrics["f1_macro"] == 1.0


# ----------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def bad_file(sim, tmp_path_factory):
    adata = sim.copy()
    adata.obs["with_nan"] = adata.obs["label_ref"].astype(object)
    adata.obs.iloc[:7, adata.obs.columns.get_loc("with_nan")] = np.nan
    adata.obs["one_class_in_H4"] = np.where(adata.obs["harvest"] == "H4", "x", adata.obs["label_ref"])
    unlabelled_h12 = adata.obs["label_ref"].astype(object).where(adata.obs["harvest"] != "H12")
    adata.obs["no_labels_in_H12"] = unlabelled_h12
    path = tmp_path_factory.mktemp("bad") / "bad.h5ad"
    # anndata's own writer keeps the missing labels missing (scaml.io.write_h5ad turns them into "nan")
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--label-key": "nope"}, "has no key 'nope'"),
        ({"--split-key": "harvst"}, "has no key 'harvst'"),
        ({"--split-train": "H99"}, "H99"),
        ({"--embedding": "X_nothing"}, "has no key 'X_nothing'"),
        ({"--n-hvg": "0"}, "--n-hvg must be at least 1; got 0"),
        ({"--label-key": "with_nan"}, "missing (NaN) for 7 "),
        ({"--label-key": "one_class_in_H4"}, "single class"),
        ({"--label-key": "no_labels_in_H12", "--split-test": "H12", "--drop-missing-labels": None}, "no labelled cells"),
        ({"--split-test": "H4"}, "in both --split-train and --split-test"),
    ],
)
def test_bad_input_is_one_line_exit_2(bad_file, tmp_path, capsys, change, message):
    options = {"--split-train": "H4", "--split-test": "H8", "--label-key": "label_ref", "--split-key": "harvest",
               "--n-hvg": "100"}
    options.update(change)
    argv = ["train", "--adata", str(bad_file), "--outdir", str(tmp_path / "o"), "--models", "lr", "-q"]
    for key, value in options.items():
        argv += [key] if value is None else [key, value]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_missing_level_lists_existing_levels(bad_file, tmp_path, capsys):
    assert main(_train_args(bad_file, tmp_path / "o", "--split-train", "H5", "--split-test", "H8")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "H12" in err and "H4" in err and "H8" in err


def test_nan_labels_dropped_on_request_and_outdir_protected(bad_file, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["train", "--adata", str(bad_file), "--label-key", "with_nan", "--split-key", "harvest",
            "--split-train", "H4", "--split-test", "H8", "--n-hvg", "100", "--models", "lr", "--no-plots",
            "--outdir", str(out), "-q", "--drop-missing-labels"]
    assert main(argv) == 0
    summary = json.loads((out / "summary_metrics.json").read_text())
    assert summary["lr"]["n_train"] + summary["lr"]["n_test"] < 480
    assert main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


# ----------------------------------------------------------------------------- learning curve

def test_learning_curve(sim_file, sim, tmp_path):
    out = tmp_path / "lc"
    rc = main(["learning-curve", "--adata", str(sim_file), "--label-key", "label_ref", "--group-key", "harvest",
               "--model", "lr", "--split-test", "H8", "--sizes", "0.05", "0.5", "1", "--repeats", "3",
               "--n-hvg", "100", "--outdir", str(out), "-q"])
    assert rc == 0
    table = pd.read_csv(out / "learning_curve.csv")
    assert len(table) == 9 and set(table["held_out"]) == {"H8"}
    pool = int(sim.obs["harvest"].isin(["H4", "H12"]).sum())
    assert table.loc[table["size"] == 1, "n_train_cells"].eq(pool).all()
    small = table.loc[table["size"] == 0.05, "n_train_cells"]
    assert small.max() < 0.1 * pool
    summary = pd.read_csv(out / "learning_curve_summary.csv")
    assert {"accuracy_mean", "accuracy_sd", "f1_macro_mean", "n_train_cells_mean"} <= set(summary.columns)
    acc = summary.set_index("size")["accuracy_mean"]
    print(acc.to_dict())
    assert acc[1.0] >= acc[0.05] - 0.02 and acc[1.0] > 0.9
    assert (out / "learning_curve.png").stat().st_size > 5000

    res = run_learning_curve(sim, label_key="label_ref", group_key="harvest", model="lr", sampling="groups",
                             repeats=2, n_hvg=100)
    table = res["table"]
    assert set(table["held_out"]) == {"H4", "H8", "H12"}
    assert set(table["n_train_groups"]) == {1, 2}
    for _, row in table.iterrows():
        assert row["held_out"] not in row["train_groups"].split("+")
    again = run_learning_curve(sim, label_key="label_ref", group_key="harvest", model="lr", sampling="groups",
                               repeats=2, n_hvg=100)
    pd.testing.assert_frame_equal(table, again["table"])


def test_stratified_subset_keeps_every_stratum():
    from scaml.classify.curves import stratified_subset

    strata = np.repeat(np.array(["g1|a", "g1|b", "g2|a"]), [100, 10, 50])
    first = stratified_subset(strata, 0.2, np.random.default_rng([0, 1]))
    second = stratified_subset(strata, 0.2, np.random.default_rng([0, 2]))
    again = stratified_subset(strata, 0.2, np.random.default_rng([0, 1]))
    counts = pd.Series(strata[first]).value_counts()
    assert counts.to_dict() == {"g1|a": 20, "g2|a": 10, "g1|b": 2}
    assert not np.array_equal(first, second) and np.array_equal(first, again)
    assert set(stratified_subset(strata, 0.001, np.random.default_rng(0))).__len__() == 3


# ----------------------------------------------------------------------------- novelty

@pytest.fixture(scope="module")
def with_foreign(sim):
    adata = sim.copy()
    adata.obs["is_hek"] = (adata.obs["label_ref"] == "type_C").to_numpy()
    return adata


@pytest.mark.parametrize("method", ["knn", "lof", "ocsvm", "classifier", "iforest"])
def test_novelty_methods(with_foreign, tmp_path, method):
    res = run_novelty(with_foreign, hek_key="is_hek", hek_positive="true", method=method, label_key="label_ref",
                      n_hvg=120, n_pcs=10, n_folds=3, outdir=tmp_path / method, plots=method == "lof")
    metrics = res["metrics"]
    print(method, round(metrics["auroc"], 3), round(metrics["auprc"], 3))
    scores = pd.read_csv(tmp_path / method / "novelty_scores.csv")
    assert len(scores) == with_foreign.n_obs and scores["novelty_score"].notna().all()
    assert set(scores["fold"]) == {0, 1, 2}
    assert scores["flagged"].sum() == with_foreign.obs["is_hek"].sum()
    assert metrics["auprc_baseline"] == pytest.approx(scores["flagged"].mean())
    # type_C is a distinct simulated type: knn, local detectors and the classifier find it almost perfectly;
    # the global IsolationForest less so (the other types form several clouds)
    assert metrics["auroc"] > {"knn": 0.95, "lof": 0.9, "ocsvm": 0.9, "classifier": 0.95, "iforest": 0.6}[method]
    assert metrics["auprc"] > metrics["auprc_baseline"] + 0.1
    if method == "lof":
        assert (tmp_path / method / "novelty_histogram.png").stat().st_size > 5000
        assert (tmp_path / method / "run.json").is_file()


def test_novelty_cli_and_bad_flag(with_foreign, tmp_path, capsys):
    from scaml.io import write_h5ad

    adata = with_foreign.copy()
    adata.obs["is_hek"] = np.where(adata.obs["is_hek"], "TRUE", "FALSE")
    path = tmp_path / "hek.h5ad"
    write_h5ad(adata, path)
    base = ["novelty", "--adata", str(path), "--hek-key", "is_hek", "--n-hvg", "100", "--n-folds", "2", "-q"]
    assert main([*base, "--method", "lof", "--hvg-cells", "all", "--outdir", str(tmp_path / "n1"), "--no-plots"]) == 0
    metrics = json.loads((tmp_path / "n1" / "novelty_metrics.json").read_text())
    assert metrics["n_flagged"] == int(with_foreign.obs["is_hek"].sum())
    assert metrics["auroc"] > 0.7
    run = json.loads((tmp_path / "n1" / "run.json").read_text())
    assert run["parameters"]["hvg_cells"] == "all" and run["parameters"]["n_folds"] == 2
    assert main([*base, "--hek-positive", "yes please", "--outdir", str(tmp_path / "n2")]) == 2
    assert "FALSE" in capsys.readouterr().err
    assert main([*base, "--method", "classifier", "--outdir", str(tmp_path / "n3")]) == 2
    assert "--label-key" in capsys.readouterr().err
