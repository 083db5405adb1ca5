"""Hyperparameter tuning of VAE references (scaml.mapping.tune, ``scaml reference build --tune N``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scaml.cli import main
from scaml.datasets import simulate
from scaml.errors import ScamlError
from scaml.mapping.tune import (
    SEARCH_SPACE,
    choose_holdout_batch,
    kl_warmup_epochs,
    search_space,
    tune_reference,
)

#: Short training everywhere: the tests check the machinery, not the models.
FAST = {"max_epochs": 3, "query_max_epochs": 2, "n_hvg": 150, "train_params": {"n_threads": 1}}


@pytest.fixture(scope="module")
def cells():
    return simulate(n_cells=600, n_genes=300, n_batches=3, n_cell_types=4, n_markers=20, random_state=0)


@pytest.fixture(scope="module")
def tuned(cells, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "ref"
    return tune_reference(cells, "scvi", "batch", "cell_type", out, 3, random_state=0, **FAST)


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def test_trials_table_has_one_row_per_trial_with_distinct_parameters(tuned):
    table = pd.read_csv(tuned.reference / "tuning" / "trials.csv")
    assert len(table) == 3 and list(table["trial"]) == [1, 2, 3]
    assert (table["state"] == "COMPLETE").all()
    params = list(SEARCH_SPACE)
    assert not table.duplicated(subset=params).any()
    for column in ("objective", "accuracy", "macro_f1", "ilisi", "seconds", "kl_warmup_epochs"):
        assert table[column].notna().all(), column
    # trial 1 is scaml's defaults
    first = table.iloc[0]
    assert bool(first["default"]) and first["n_latent"] == 10 and first["n_layers"] == 2
    assert first["n_hidden"] == 128 and first["kl_warmup_epochs"] == 400
    # the objective is the documented combination of its parts
    expected = 0.6 * table["accuracy"] + 0.4 * table["ilisi"]
    assert np.allclose(table["objective"], expected, atol=1e-4)
    assert table.loc[table["best"], "objective"].item() == table["objective"].max()
    assert (tuned.reference / "tuning" / "trials.png").stat().st_size > 10_000


def test_saved_model_uses_the_best_parameters(tuned, cells):
    best = tuned.best_params
    config = _json(tuned.reference / "model" / "config.json")["params"]
    assert config["n_latent"] == best["n_latent"]
    assert config["hidden_layers"] == [best["n_hidden"]] * best["n_layers"]
    assert config["dropout_rate"] == pytest.approx(best["dropout_rate"])
    run = _json(tuned.reference / "run.json")
    options = run["parameters"]["options"]
    assert options["lr"] == pytest.approx(best["lr"])
    assert options["kl_warmup_epochs"] == kl_warmup_epochs(best["kl_weight"], 3)
    assert run["data"]["tuning"]["best_params"] == pytest.approx(best)
    assert run["parameters"]["tuning"]["n_trials"] == 3
    assert run["parameters"]["tuning"]["holdout_batch"] == choose_holdout_batch(cells.obs["batch"])
    assert "optuna_version" in run["parameters"]["tuning"]
    manifest = _json(tuned.reference / "reference.json")
    assert manifest["tuning"]["best_objective"] == pytest.approx(tuned.best_objective)
    assert tuned.best_objective >= tuned.default_objective


def test_same_seed_gives_the_same_trials(cells, tuned, tmp_path):
    again = tune_reference(cells, "scvi", "batch", "cell_type", tmp_path / "ref", 3, random_state=0, **FAST)
    params = list(SEARCH_SPACE)
    pd.testing.assert_frame_equal(again.trials[params], tuned.trials[params])
    assert np.allclose(again.trials["objective"], tuned.trials["objective"], atol=1e-6)


def test_holdout_rule_is_the_largest_batch():
    assert choose_holdout_batch(["a", "b", "b", "c", "c"]) == "b"  # tie: first name
    assert choose_holdout_batch(["a", "b", "b"], "a") == "a"
    with pytest.raises(ScamlError, match="at least 2 batches"):
        choose_holdout_batch(["a", "a"])


def test_given_options_are_fixed_not_searched():
    space = search_space(400, {"hidden_layers", "lr"})
    assert set(space) == {"n_latent", "dropout_rate", "kl_weight"}
    assert space["kl_weight"]["default"] == 1.0
    assert search_space(20, set())["kl_weight"]["default"] == pytest.approx(0.05)  # 20 of 400 warm-up epochs
    assert kl_warmup_epochs(0.05, 20) == 400


def test_timeout_stops_the_search(cells, tmp_path):
    result = tune_reference(cells, "scvi", "batch", "cell_type", tmp_path / "ref", 5, timeout=1e-3,
                            random_state=0, **FAST)
    assert len(result.trials) == 1 and bool(result.trials["default"].iloc[0])
    assert _json(tmp_path / "ref" / "run.json")["parameters"]["tuning"]["timeout_seconds"] == 1e-3


def test_requests_that_cannot_be_tuned_are_refused(cells, tmp_path):
    one = cells.copy()
    one.obs["batch"] = "only"
    with pytest.raises(ScamlError, match="at least 2 batches"):
        tune_reference(one, "scvi", "batch", "cell_type", tmp_path / "a", 2, **FAST)
    with pytest.raises(ScamlError, match="symphony.*no hyperparameters"):
        tune_reference(cells, "symphony", "batch", "cell_type", tmp_path / "b", 2)
    with pytest.raises(ScamlError, match=">= 1"):
        tune_reference(cells, "scvi", "batch", "cell_type", tmp_path / "c", 0)
    with pytest.raises(ScamlError, match="--label-key"):
        tune_reference(cells, "scvi", "batch", None, tmp_path / "d", 2)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_cli_refuses_tuning_symphony(cells, tmp_path, capsys):
    path = tmp_path / "r.h5ad"
    cells.write_h5ad(path)
    args = ["reference", "build", str(path), "--batch-key", "batch", "--label-key", "cell_type", "--quiet"]
    assert main([*args, "--method", "symphony", "--tune", "2", "--out", str(tmp_path / "o")]) == 2
    assert "no hyperparameters to tune" in capsys.readouterr().err
    assert main([*args, "--tune", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--tune N" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_tune_at_20k_cells(tmp_path):
    """``--tune 2`` through the command line on a >= 20,000-cell reference (the suite's size rule)."""
    adata = simulate(n_cells=21_000, n_genes=200, n_batches=3, n_cell_types=5, n_markers=15,
                     mean_library_size=1500, low_quality_fraction=0.0, random_state=1)
    path = tmp_path / "big.h5ad"
    adata.write_h5ad(path)
    out = tmp_path / "ref"
    code = main(["reference", "build", str(path), "--method", "scvi", "--batch-key", "batch", "--label-key",
                 "cell_type", "--out", str(out), "--tune", "2", "--max-epochs", "2", "--n-hvg", "150",
                 "--batch-size", "512", "--threads", "1", "--quiet"])
    assert code == 0
    table = pd.read_csv(out / "tuning" / "trials.csv")
    assert len(table) == 2 and (table["state"] == "COMPLETE").all()
    assert table["accuracy"].min() > 0.5  # five well-separated simulated types
    run = _json(out / "run.json")
    assert run["data"]["n_cells"] == 21_000
    assert run["parameters"]["tuning"]["n_tuning_cells"] + run["parameters"]["tuning"]["n_holdout_cells"] == 21_000
    assert (out / "tuning" / "trials.png").is_file() and (out / "model" / "model.pt").is_file()
