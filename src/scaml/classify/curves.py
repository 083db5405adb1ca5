"""Learning curves: test performance against training-set size, drawn group-aware.

Training sets grow either by whole groups (``sampling="groups"``: 1, 2, ...
training groups chosen at random) or by stratified fractions of the training
groups (``sampling="fraction"``: the same fraction of every group x label
stratum). Every size is repeated with fixed seeds and evaluated on held-out
groups that never contribute training cells. Features (highly variable genes)
are chosen once per held-out setting on the whole training pool, never on the
held-out cells.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, progress, warn
from ..errors import ScamlError
from ..io import check_obs_key, check_obsm_key, prepare_outdir, save_figure, write_csv, write_json
from ..style import styled
from .benchmark import (
    _as_list,
    _level_strings,
    check_levels,
    feature_counts,
    labels_for,
)
from .features import build_features, check_feature_options, find_run_expression, hvg_count
from .metrics import SCALAR_METRICS, classification_metrics
from .models import check_models, fit_predict_proba, resolve_hyperparameters

#: Default sizes per sampling scheme.
DEFAULT_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
SAMPLING = ("fraction", "groups")


def stratified_subset(strata: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Positions of a stratified random subset: ``fraction`` of every stratum (at least one cell each)."""
    chosen = []
    for value in pd.unique(strata):
        where = np.flatnonzero(strata == value)
        k = min(where.size, max(1, int(round(fraction * where.size))))
        chosen.append(rng.choice(where, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def _settings(groups: list[str], split_train: list[str], split_test: list[str]) -> list[tuple[list[str], list[str]]]:
    if split_test:
        pool = split_train or [g for g in groups if g not in split_test]
        return [(pool, split_test)]
    pool_all = split_train or groups
    if len(pool_all) < 2:
        raise ScamlError(f"a learning curve needs at least two groups (one to train, one held out); got {pool_all}.")
    return [([g for g in pool_all if g != held], [held]) for held in pool_all]


def _check_sizes(sizes: list[float] | None, sampling: str, settings: list[tuple[list[str], list[str]]]) -> list[float]:
    """The training-set sizes (defaults per sampling scheme), validated."""
    if sizes is None:
        sizes = list(DEFAULT_FRACTIONS) if sampling == "fraction" else list(range(1, max(len(p) for p, _ in settings) + 1))
    sizes = [float(s) for s in sizes]
    if any(s <= 0 for s in sizes):
        raise ScamlError(f"--sizes must be positive; got {sizes}.")
    if sampling == "groups" and any(s != int(s) for s in sizes):
        raise ScamlError(f"with --sampling groups, --sizes are numbers of groups (integers); got {sizes}.")
    return sizes


def _check_groups(
    adata: ad.AnnData, group_key: str, split_train: list[str], split_test: list[str]
) -> tuple[pd.Series, list[tuple[list[str], list[str]]]]:
    """The group column (as strings) and the ``(pool, held_out)`` settings, validated."""
    column = _level_strings(check_obs_key(adata, group_key, flag="--group-key"))
    groups = sorted(pd.unique(column.dropna()).tolist(), key=str)
    check_levels(split_train, column, group_key, "--split-train")
    check_levels(split_test, column, group_key, "--split-test")
    if set(split_train) & set(split_test):
        raise ScamlError(f"groups {sorted(set(split_train) & set(split_test))} are both training and held out.")
    return column, _settings(groups, split_train, split_test)


def _draw_training_subset(
    sampling: str,
    size: float,
    pool: list[str],
    pool_groups: np.ndarray,
    strata: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]] | None:
    """Positions (in the pool) of one random training set and its groups; None when ``size`` exceeds the pool."""
    if sampling == "fraction":
        fraction = min(1.0, size if size <= 1 else size / pool_groups.size)
        pick = stratified_subset(strata, fraction, rng)
        return pick, sorted(set(pool_groups[pick]))
    k = int(size)
    if k > len(pool):
        return None
    chosen_groups = sorted(rng.choice(pool, size=k, replace=False).tolist())
    return np.flatnonzero(np.isin(pool_groups, chosen_groups)), chosen_groups


def _curve_setting(
    adata: ad.AnnData,
    s_i: int,
    pool: list[str],
    held: list[str],
    data: dict[str, Any],
    *,
    opts: dict[str, Any],
    record: Any,
    bar: Any,
    task: Any,
) -> tuple[list[dict[str, Any]], Any]:
    """Every size and repeat of one held-out setting: one table row each, and the features used."""
    rows_all, label_of, index, level_of = data["rows"], data["label_of"], data["index"], data["level_of"]
    classes, model, params = data["classes"], opts["model"], opts["params"]
    pool_rows = rows_all[np.isin(level_of[rows_all], pool)]
    test_rows = rows_all[np.isin(level_of[rows_all], held)]
    held_name = "+".join(held)
    if pool_rows.size == 0 or test_rows.size == 0:
        raise ScamlError(f"held out {held_name}: the training pool or the held-out groups hold no labelled cells.")
    with record.timer("features"):
        feats = build_features(adata, np.concatenate([pool_rows, test_rows]), pool_rows, features=opts["features"],
                               n_hvg=opts["n_hvg"], embedding=opts["embedding"], announce=s_i == 0,
                               expression=opts["expression"])
    X_pool, X_test = feats.X[: pool_rows.size], feats.X[pool_rows.size:]
    y_pool = np.array([index[v] for v in label_of.loc[pool_rows]])
    y_test = np.array([index[v] for v in label_of.loc[test_rows]])
    pool_groups = level_of[pool_rows].astype(str)
    strata = np.char.add(np.char.add(pool_groups, "\x1f"), y_pool.astype(str))
    records: list[dict[str, Any]] = []
    for size_i, size in enumerate(opts["sizes"]):
        for rep in range(opts["repeats"]):
            rng = np.random.default_rng([opts["random_state"], s_i, size_i, rep])
            drawn = _draw_training_subset(opts["sampling"], size, pool, pool_groups, strata, rng)
            if drawn is None:
                bar.advance(task)
                continue
            pick, chosen_groups = drawn
            row = {"held_out": held_name, "size": size, "repeat": rep, "seed": opts["random_state"] + rep,
                   "n_train_cells": int(pick.size), "n_train_groups": len(chosen_groups),
                   "train_groups": "+".join(chosen_groups), "n_test_cells": int(test_rows.size)}
            if np.unique(y_pool[pick]).size < 2:
                warn(f"learning curve: held out {held_name}, size {size:g}, repeat {rep}: a single class in "
                     "the training subset; skipped.")
                records.append({**row, **{k: float("nan") for k in SCALAR_METRICS}})
                bar.advance(task)
                continue
            bar.update(task, status=f"held out {held_name}, size {size:g}")
            with record.timer("fit"):
                proba, _ = fit_predict_proba(model, params, X_pool[pick], y_pool[pick], X_test, len(classes),
                                             class_weight=opts["class_weight"],
                                             random_state=opts["random_state"] + rep)
            metrics = classification_metrics(y_test, proba.argmax(axis=1), proba, classes, np.unique(y_pool[pick]))
            records.append({**row, **{k: metrics[k] for k in SCALAR_METRICS}})
            bar.advance(task)
    return records, feats


def _write_curve_outputs(out: Path, result: dict[str, Any], *, features: Any, plots: bool, record: Any,
                         data: dict[str, Any]) -> None:
    """Write the learning-curve tables, their JSON description, the figure and run.json (``data`` in it)."""
    table, summary, parameters = result["table"], result["summary"], result["parameters"]
    write_csv(table, out / "learning_curve.csv", index=False)
    write_csv(summary, out / "learning_curve_summary.csv", index=False)
    write_json({"classes": result["classes"], "parameters": parameters, "hyperparameters": result["hyperparameters"],
                "features": features.description}, out / "learning_curve.json")
    if plots:
        plot_learning_curve(summary, out / "learning_curve.png", model=parameters["model"],
                            sampling=parameters["sampling"])
    record.data = {**data, "n_classes": len(result["classes"]), "n_fits": int(table["accuracy"].notna().sum())}
    record.save(out)


def run_learning_curve(
    adata: ad.AnnData,
    *,
    label_key: str,
    group_key: str,
    model: str = "lr",
    split_train: str | list[str] | None = None,
    split_test: str | list[str] | None = None,
    sizes: list[float] | None = None,
    sampling: str = "fraction",
    repeats: int = 5,
    features: str = "hvg",
    n_hvg: int = 3000,
    embedding: str | None = None,
    class_weight: str | None = None,
    random_state: int = 0,
    drop_missing_labels: bool = False,
    hyperparameters: dict[str, dict[str, Any]] | None = None,
    outdir: str | os.PathLike | None = None,
    overwrite: bool = False,
    plots: bool = True,
    input_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Learning curve of one model across groups (cultures, donors, harvests).

    Parameters
    ----------
    adata
        The data (not modified).
    label_key
        ``obs`` column with the labels.
    group_key
        ``obs`` column with the groups (e.g. ``"culture"``).
    model
        One of ``"lr"``, ``"rf"``, ``"xgb"``, ``"mlp"``.
    split_train, split_test
        Training-pool and held-out groups. Without ``split_test`` every group (of
        ``split_train``, or all) is held out in turn and the others form the pool.
    sizes
        ``sampling="fraction"``: fractions of the pool in (0, 1] (values above 1 are
        numbers of cells); ``sampling="groups"``: numbers of training groups.
        Defaults: 0.05, 0.1, 0.25, 0.5, 1 or 1 .. number of pool groups.
    sampling
        ``"fraction"`` (stratified by group and label) or ``"groups"`` (whole groups).
    repeats
        Random draws per size (seeds ``random_state + repeat``).
    features, n_hvg, embedding
        Features, chosen on the training pool only.
    class_weight, random_state, drop_missing_labels, hyperparameters
        As in :func:`scaml.classify.run_train`.
    outdir, overwrite, plots, input_path
        Output directory (learning_curve.csv, learning_curve_summary.csv,
        learning_curve.png, run.json); nothing written when None.

    Returns
    -------
    dict
        ``table`` (one row per held-out setting, size and repeat), ``summary``
        (mean and sd per size) and the parameters.
    """
    from ..runinfo import RunRecord

    # validate every input before any work is done
    (model,) = check_models([model])[:1]
    params = resolve_hyperparameters([model], hyperparameters)[model]
    if sampling not in SAMPLING:
        raise ScamlError(f"unknown --sampling {sampling!r}; use one of {', '.join(SAMPLING)}.")
    if repeats < 1:
        raise ScamlError(f"--repeats must be at least 1; got {repeats}.")
    check_obs_key(adata, label_key, flag="--label-key")
    split_train_l, split_test_l = _as_list(split_train), _as_list(split_test)
    column, settings = _check_groups(adata, group_key, split_train_l, split_test_l)
    check_feature_options(features, n_hvg, embedding)
    if embedding is not None:
        check_obsm_key(adata, embedding, flag="--embedding")
    sizes = _check_sizes(sizes, sampling, settings)

    # the labelled cells of every group used
    used = sorted({g for p, t in settings for g in p + t})
    rows_all = np.flatnonzero(column.isin(used).to_numpy())
    rows_all, labels_all = labels_for(adata, label_key, rows_all, drop_missing_labels=drop_missing_labels)
    classes = sorted(pd.unique(labels_all).tolist())
    data = {"rows": rows_all, "label_of": pd.Series(labels_all, index=rows_all), "classes": classes,
            "index": {c: i for i, c in enumerate(classes)}, "level_of": column.to_numpy()}

    parameters = {"label_key": label_key, "group_key": group_key, "model": model, "split_train": split_train_l,
                  "split_test": split_test_l, "sizes": sizes, "sampling": sampling, "repeats": repeats,
                  "features": features if embedding is None else "embedding", "n_hvg": n_hvg,
                  "embedding": embedding, "class_weight": class_weight, "random_state": random_state}
    record = RunRecord("learning-curve", parameters={**parameters, "hyperparameters": {model: params}},
                       inputs={"adata": str(input_path)} if input_path else {})
    expression = find_run_expression(adata, embedding)  # refuses negative values before anything is written
    n_hvg_used = hvg_count(adata, features, n_hvg, embedding)
    out = prepare_outdir(outdir, overwrite=overwrite, protect=[input_path] if input_path else []) if outdir else None
    opts = {"model": model, "params": params, "sizes": sizes, "repeats": repeats, "sampling": sampling,
            "features": features, "n_hvg": n_hvg_used, "embedding": embedding, "class_weight": class_weight,
            "random_state": random_state, "expression": expression}
    records: list[dict[str, Any]] = []
    n_features: dict[str, int] = {}
    with progress() as bar:
        task = bar.add_task("learning curve", total=len(settings) * len(sizes) * repeats, status="")
        for s_i, (pool, held) in enumerate(settings):
            rows, feats = _curve_setting(adata, s_i, pool, held, data, opts=opts, record=record, bar=bar, task=task)
            records += rows
            n_features["+".join(held)] = len(feats.names)
    table = pd.DataFrame(records)
    summary = summarize_curve(table)
    for _, r in summary.iterrows():
        info(f"held out {r['held_out']}, size {r['size']:g} ({r['n_train_cells_mean']:.0f} cells): "
             f"accuracy {r['accuracy_mean']:.3f} \u00b1 {r['accuracy_sd']:.3f}")
    result = {"table": table, "summary": summary, "classes": classes, "parameters": parameters,
              "hyperparameters": {model: params}, "outdir": str(out) if out else None}
    if out is not None:
        run_data = {"n_cells": int(adata.n_obs), "n_labelled_cells_used": int(rows_all.size),
                    "n_hvg_used": n_hvg_used if embedding is None and features == "hvg" else None,
                    **feature_counts(n_features)}
        _write_curve_outputs(out, result, features=feats, plots=plots, record=record, data=run_data)
        from ..report import maybe_write_report

        maybe_write_report(out)
    return result


def summarize_curve(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over repeats per held-out setting and size."""
    cols = ["n_train_cells", "n_train_groups", *SCALAR_METRICS]
    grouped = table.groupby(["held_out", "size"], sort=True)[cols]
    mean = grouped.mean().add_suffix("_mean")
    sd = grouped.std(ddof=1).fillna(0.0).add_suffix("_sd")
    n = grouped.size().rename("n_repeats")
    summary = pd.concat([mean, sd, n], axis=1).reset_index()
    order = ["held_out", "size", "n_repeats"] + [f"{c}_{s}" for c in cols for s in ("mean", "sd")]
    return summary[order]


@styled
def plot_learning_curve(
    summary: pd.DataFrame,
    path: str | os.PathLike,
    *,
    model: str = "",
    sampling: str = "fraction",
    metrics: tuple[str, ...] = ("accuracy", "f1_macro"),
) -> Path:
    """Mean metric against the number of training cells, with a band of one standard deviation."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    from .plots import BAR_METRICS, PALETTE, _style

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.2), squeeze=False)
    held = list(pd.unique(summary["held_out"]))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, (h, marker) in enumerate(zip(held, itertools.cycle("osD^v<>"), strict=False)):
            part = summary[summary["held_out"] == h].sort_values("n_train_cells_mean")
            x = part["n_train_cells_mean"].to_numpy()
            y = part[f"{metric}_mean"].to_numpy()
            sd = part[f"{metric}_sd"].to_numpy()
            color = PALETTE[i % len(PALETTE)]
            ax.plot(x, y, marker=marker, color=color, lw=1.6, ms=5, label=f"held out: {h}")
            ax.fill_between(x, y - sd, y + sd, color=color, alpha=0.18, lw=0)
        ax.set_xscale("log")
        ticks = np.sort(summary.loc[summary["held_out"] == held[0], "n_train_cells_mean"].to_numpy())
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training cells (log scale)")
        ax.set_ylabel(f"{BAR_METRICS.get(metric, metric)} on held-out cells")
        ax.set_ylim(max(0.0, float(np.nanmin(summary[f"{metric}_mean"] - summary[f"{metric}_sd"])) - 0.05), 1.01)
        _style(ax)
        ax.grid(axis="x", color="#eeeeee", linewidth=0.6, which="both")
    n_rep = int(summary["n_repeats"].max()) if len(summary) else 0
    how = "stratified fractions of the training groups" if sampling == "fraction" else "whole training groups"
    fig.suptitle(f"Learning curve, {model.upper()}: mean \u00b1 sd over {n_rep} repeats ({how})", fontsize=11)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if len(labels) <= 8:
        axes[0][-1].legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


__all__ = ["plot_learning_curve", "run_learning_curve", "stratified_subset", "summarize_curve"]
