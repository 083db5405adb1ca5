"""The classifier benchmark's options: --n-hvg above the panel, negative input, the CLI's input / --out forms, plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scaml import _utils
from scaml.classify import run_learning_curve, run_novelty, run_train
from scaml.cli import main
from scaml.errors import ScamlError

N_GENES = 500


@pytest.fixture(scope="module")
def panel():
    """A small panel: 240 cells x 500 genes, three harvests, three well-separated types."""
    from scaml.datasets import simulate

    adata = simulate(n_cells=240, n_genes=N_GENES, n_batches=3, n_cell_types=3, n_markers=15, random_state=2)
    adata.obs["harvest"] = adata.obs["batch"].map({"batch1": "H4", "batch2": "H8", "batch3": "H12"}).astype(str)
    adata.obs["is_hek"] = (adata.obs["cell_type"] == "type_C").to_numpy()
    return adata


@pytest.fixture(scope="module")
def panel_file(panel, tmp_path_factory):
    path = tmp_path_factory.mktemp("panel") / "panel.h5ad"
    panel.copy().write_h5ad(path)
    return path


def _hvg_warnings(start: int) -> list[str]:
    return [w for w in _utils.WARNINGS[start:] if "--n-hvg 3000" in w or "highly variable genes were asked" in w]


# ----------------------------------------------------------------------------- --n-hvg larger than the panel

def test_train_with_more_hvgs_than_genes_uses_every_gene_and_warns_once(panel, tmp_path):
    start = len(_utils.WARNINGS)
    out = tmp_path / "train"
    res = run_train(panel, label_key="cell_type", split_key="harvest", split_train="H4", split_test="H8",
                    n_hvg=3000, models=["lr"], reverse=True, outdir=out, plots=False)
    warnings = _hvg_warnings(start)
    assert len(warnings) == 1, warnings  # two directions, one warning
    assert f"all {N_GENES} genes" in warnings[0]
    for run in res["runs"].values():
        assert run["feature_names"] == list(panel.var_names)
        assert run["features"]["n_features"] == N_GENES
    record = json.loads((out / "run.json").read_text())
    assert record["parameters"]["n_hvg"] == 3000
    assert record["data"]["n_hvg_used"] == N_GENES and record["data"]["n_features"] == N_GENES
    assert record["data"]["n_features_per_split"] == {"H4_to_H8": N_GENES, "H8_to_H4": N_GENES}
    assert warnings[0] in record["warnings"]
    assert len((out / "H4_to_H8" / "features.txt").read_text().splitlines()) == N_GENES
    assert res["summary"]["mean"]["lr"]["accuracy"] > 0.95


def test_learning_curve_and_novelty_with_more_hvgs_than_genes(panel, tmp_path):
    start = len(_utils.WARNINGS)
    curve = run_learning_curve(panel, label_key="cell_type", group_key="harvest", sizes=[1.0], repeats=1,
                               n_hvg=3000, outdir=tmp_path / "lc", plots=False)
    assert len(_hvg_warnings(start)) == 1  # three held-out settings, one warning
    assert len(curve["table"]) == 3 and (curve["table"]["accuracy"] > 0.95).all()
    record = json.loads((tmp_path / "lc" / "run.json").read_text())
    assert record["data"]["n_hvg_used"] == N_GENES and record["data"]["n_features"] == N_GENES
    assert _hvg_warnings(start)[0] in record["warnings"]

    start = len(_utils.WARNINGS)
    nov = run_novelty(panel, hek_key="is_hek", method="lof", n_hvg=3000, n_pcs=10, n_folds=3,
                      outdir=tmp_path / "nov", plots=False)
    assert len(_hvg_warnings(start)) == 1
    assert nov["metrics"]["features"]["n_features"] == N_GENES
    record = json.loads((tmp_path / "nov" / "run.json").read_text())
    assert record["data"]["n_hvg_used"] == N_GENES and record["data"]["n_features"] == N_GENES
    assert _hvg_warnings(start)[0] in record["warnings"]


def test_cli_train_n_hvg_3000_on_500_genes(panel_file, tmp_path):
    out = tmp_path / "cli"
    assert main(["train", str(panel_file), "--label-key", "cell_type", "--split-key", "harvest",
                 "--split-train", "H4", "--split-test", "H8", "--n-hvg", "3000", "--models", "lr",
                 "--no-plots", "--out", str(out), "-q"]) == 0
    assert len((out / "features.txt").read_text().splitlines()) == N_GENES
    record = json.loads((out / "run.json").read_text())
    assert sum("--n-hvg 3000" in w for w in record["warnings"]) == 1


# ----------------------------------------------------------------------------- negative input

def test_negative_values_are_refused_before_anything_is_written(panel, tmp_path, capsys):
    scaled = panel.copy()
    X = np.log1p(scaled.X.toarray() if hasattr(scaled.X, "toarray") else np.asarray(scaled.X))
    scaled.X = (X - X.mean(axis=0)).astype(np.float32)  # centred genes, as after sc.pp.scale
    out = tmp_path / "scaled"
    with pytest.raises(ScamlError, match="negative values") as info:
        run_train(scaled, label_key="cell_type", split_key="harvest", split_train="H4", split_test="H8",
                  n_hvg=100, models=["lr"], outdir=out)
    assert "--embedding" in str(info.value)  # the message says what to do instead
    assert not out.exists() or not any(out.iterdir())
    with pytest.raises(ScamlError, match="negative values"):
        run_novelty(scaled, hek_key="is_hek", method="lof", n_hvg=100, n_folds=2)
    # an embedding does not read the expression matrix: scaled X is no obstacle then
    scaled.obsm["X_pca"] = np.linalg.svd(scaled.X, full_matrices=False)[0][:, :10].astype(np.float32)
    res = run_train(scaled, label_key="cell_type", split_key="harvest", split_train="H4", split_test="H8",
                    embedding="X_pca", models=["lr"])
    assert res["summary"]["lr"]["accuracy"] > 0.9
    path = tmp_path / "scaled.h5ad"
    scaled.write_h5ad(path)
    capsys.readouterr()
    assert main(["train", str(path), "--label-key", "cell_type", "--split-key", "harvest", "--split-train", "H4",
                 "--split-test", "H8", "--models", "lr", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "negative values" in " ".join(err.split()) and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- CLI: input and --out forms

def test_positional_input_and_out_for_every_command(panel_file, tmp_path):
    common = ["--label-key", "cell_type", "--n-hvg", "100", "--no-plots", "-q"]
    train = tmp_path / "train"
    assert main(["train", str(panel_file), "--split-key", "harvest", "--split-train", "H4", "--split-test", "H8",
                 "--models", "lr", "--out", str(train), *common]) == 0
    flagged = tmp_path / "train_flag"
    assert main(["train", "--adata", str(panel_file), "--split-key", "harvest", "--split-train", "H4",
                 "--split-test", "H8", "--models", "lr", "--outdir", str(flagged), *common]) == 0
    assert (json.loads((train / "summary_metrics.json").read_text())["lr"]["accuracy"]
            == json.loads((flagged / "summary_metrics.json").read_text())["lr"]["accuracy"])
    assert (train / "report.html").is_file()
    assert main(["learning-curve", str(panel_file), "--group-key", "harvest", "--split-test", "H8",
                 "--sizes", "1", "--repeats", "1", "--out", str(tmp_path / "lc"), *common]) == 0
    assert (tmp_path / "lc" / "learning_curve.csv").is_file()
    assert main(["novelty", str(panel_file), "--hek-key", "is_hek", "--method", "lof", "--n-folds", "2",
                 "--out", str(tmp_path / "nov"), *common]) == 0
    assert (tmp_path / "nov" / "novelty_scores.csv").is_file()
    assert main(["plot", str(train), "--out", str(tmp_path / "figs"), "-q"]) == 0
    assert (tmp_path / "figs" / "model_compare.png").is_file()
    assert main(["plot", "--results", str(train), "-q"]) == 0
    assert (train / "plots" / "lr_confusion_matrix.png").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--split-key", "harvest"], "no input given; pass it positionally (scaml train FILE ...) or with --adata"),
        (["train", "a.h5ad", "--adata", "b.h5ad", "--split-key", "harvest"], "two inputs given: 'a.h5ad' and --adata"),
        (["plot"], "no input given; pass it positionally (scaml plot DIR ...) or with --results DIR"),
    ],
)
def test_input_given_none_or_twice_is_one_line_exit_2(tmp_path, capsys, argv, message):
    extra = ["--label-key", "cell_type", "--out", str(tmp_path / "o")] if argv[0] == "train" else []
    assert main([*argv, *extra, "-q"]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- matplotlib settings

def test_plotting_leaves_matplotlib_settings_alone(panel, tmp_path, monkeypatch):
    import matplotlib

    def refuse(*args, **kwargs):
        raise AssertionError("scaml must not change matplotlib's backend")

    monkeypatch.setattr(matplotlib, "use", refuse)
    before = dict(matplotlib.rcParams)
    res = run_train(panel, label_key="cell_type", split_key="harvest", split_train="H4", split_test="H8",
                    n_hvg=100, models=["lr"], outdir=tmp_path / "plots", plots=True)
    run_novelty(panel, hek_key="is_hek", method="lof", n_hvg=100, n_folds=2, outdir=tmp_path / "nov", plots=True)
    assert res["summary"]["lr"]["accuracy"] > 0.95
    assert (tmp_path / "plots" / "plots" / "model_compare.png").stat().st_size > 5000
    assert (tmp_path / "nov" / "novelty_curves.png").stat().st_size > 5000
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()
