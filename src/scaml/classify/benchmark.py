"""Cross-batch classifier benchmark: train on some levels of a split key, test on others.

:func:`run_train` is the library function behind ``scaml train``. It runs one
direction (train levels -> test levels), both directions (``reverse=True``) or
leave-one-group-out cross-validation (``cv="leave-one-group-out"``), writes
every artifact into ``outdir`` and returns the results as a dict.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, progress, warn
from ..errors import ScamlError
from ..io import check_obs_key, prepare_outdir, write_csv, write_json, write_text
from ..preprocess import Expression
from .features import build_features, check_feature_options, find_run_expression, hvg_count
from .metrics import (
    SCALAR_METRICS,
    classification_metrics,
    classification_report_text,
    confusion_table,
)
from .models import MODEL_NAMES, check_models, fit_predict_proba, resolve_hyperparameters

#: Cross-validation schemes accepted by ``cv``.
CV_SCHEMES = ("leave-one-group-out",)

#: Files every run directory holds (per model files go into ``<model>/``).
MODEL_FILES = ("classification_report.txt", "confusion_matrix.csv", "predictions.csv", "proba.csv", "metrics.json")


# ----------------------------------------------------------------------------- validation helpers

def _as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _level_strings(column: pd.Series) -> pd.Series:
    """Split-key values as strings, missing values kept as NaN."""
    return column.astype(object).map(lambda v: str(v) if pd.notna(v) else np.nan)


def check_levels(levels: list[str], column: pd.Series, key: str, flag: str) -> None:
    """Raise a :class:`ScamlError` when a requested level of ``key`` does not exist."""
    existing = sorted(pd.unique(column.dropna()).tolist(), key=str)
    missing = [lv for lv in levels if lv not in set(existing)]
    if missing:
        raise ScamlError(
            f"{flag} level(s) {missing} not found in adata.obs[{key!r}]; existing levels: "
            f"{', '.join(map(str, existing))}."
        )


def safe_name(text: str) -> str:
    """A file-system safe version of a level name."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_") or "level"


def labels_for(
    adata: ad.AnnData, label_key: str, rows: np.ndarray, *, drop_missing_labels: bool, what: str = "selected"
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (as strings) of ``rows``; rows with missing labels dropped or refused.

    Returns
    -------
    rows, labels
        The rows kept and their labels.
    """
    column = check_obs_key(adata, label_key, flag="--label-key")
    values = column.iloc[rows]
    missing = values.isna().to_numpy()
    if missing.any():
        n = int(missing.sum())
        if not drop_missing_labels:
            raise ScamlError(
                f"adata.obs[{label_key!r}] is missing (NaN) for {n} of the {len(rows)} {what} cells; "
                "pass --drop-missing-labels (drop_missing_labels=True) to leave them out, or fill them in."
            )
        info(f"dropping {n} {what} cells without a label in adata.obs[{label_key!r}]")
        rows = rows[~missing]
        values = values[~missing]
    return rows, values.astype(str).to_numpy()


# ----------------------------------------------------------------------------- one split

def run_split(
    adata: ad.AnnData,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    labels: pd.Series,
    classes: list[str],
    *,
    models: list[str],
    hyperparameters: dict[str, dict[str, Any]],
    features: str = "hvg",
    n_hvg: int = 3000,
    embedding: str | None = None,
    class_weight: str | None = None,
    random_state: int = 0,
    split_key: str | None = None,
    outdir: str | os.PathLike | None = None,
    name: str = "run",
    announce: bool = True,
    expression: Expression | None = None,
) -> dict[str, Any]:
    """Train every model on ``train_rows`` and evaluate on ``test_rows``.

    Parameters
    ----------
    adata
        The data (not modified).
    train_rows, test_rows
        Integer row indices.
    labels
        String labels of every cell (index aligned with ``adata.obs``).
    classes
        The full class list; labels are encoded as indices into it.
    models, hyperparameters
        Model names and their resolved hyperparameters.
    features, n_hvg, embedding
        See :func:`scaml.classify.features.build_features`.
    class_weight, random_state
        Passed to every model.
    split_key
        Written into predictions.csv when given.
    outdir
        Where to write the artifacts; nothing is written when None.
    name
        Name of this split (for messages).
    announce
        Print the kind of expression input assumed.
    expression
        The expression matrix (:func:`scaml.preprocess.find_expression`); found here when None.

    Returns
    -------
    dict
        ``features`` (description), ``feature_names``, ``n_train``, ``n_test``, class counts,
        ``unseen_test_classes`` and ``models`` (per model: metrics, plus in-memory
        ``predictions`` and ``proba`` DataFrames).
    """
    y_train, y_test, unseen = _encode_split(labels, classes, train_rows, test_rows, name)
    rows = np.concatenate([train_rows, test_rows])
    feats = build_features(
        adata, rows, train_rows, features=features, n_hvg=n_hvg, embedding=embedding, announce=announce,
        expression=expression,
    )
    X_train, X_test = feats.X[: len(train_rows)], feats.X[len(train_rows):]
    counts = pd.DataFrame(
        {
            "train": np.bincount(y_train, minlength=len(classes)),
            "test": np.bincount(y_test, minlength=len(classes)),
        },
        index=pd.Index(classes, name="class"),
    )
    result: dict[str, Any] = {
        "name": name,
        "n_train": int(len(train_rows)),
        "n_test": int(len(test_rows)),
        "features": feats.description,
        "feature_names": feats.names,
        "class_counts": counts,
        "unseen_test_classes": unseen,
        "models": {},
    }
    out = Path(outdir) if outdir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes)), out / "classes.txt")
        write_text("".join(f"{f}\n" for f in feats.names), out / "features.txt")
        write_csv(counts, out / "class_counts.csv")
    split_label = None
    if split_key is not None:
        split_label = adata.obs[split_key].iloc[test_rows].astype(str).to_numpy()
    with progress() as bar:
        task = bar.add_task(f"{name}", total=len(models), status="")
        for model in models:
            bar.update(task, status=f"fitting {model}")
            evaluated = _fit_evaluate(
                model, hyperparameters[model], X_train, y_train, X_test, y_test, classes,
                class_weight=class_weight, random_state=random_state, name=name,
            )
            metrics, predictions, proba_frame = _model_tables(
                evaluated, y_test, classes, adata.obs_names[test_rows].astype(str), split_key, split_label
            )
            if out is not None:
                _write_model_artifacts(out / model, metrics, y_test, evaluated["y_pred"], classes, predictions,
                                       proba_frame)
            result["models"][model] = {**metrics, "predictions": predictions, "proba": proba_frame}
            info(
                f"{name} {model}: accuracy {metrics['accuracy']:.3f}, F1 macro {metrics['f1_macro']:.3f}, "
                f"ROC-AUC {metrics['roc_auc_macro_ovr']:.3f} ({metrics['fit_predict_seconds']:.1f} s)"
            )
            bar.advance(task)
    if out is not None:
        write_json(summary_of(result), out / "summary_metrics.json")
    return result


def _encode_split(
    labels: pd.Series, classes: list[str], train_rows: np.ndarray, test_rows: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Encode the labels of a split; refuse a single training class, warn about unseen test classes.

    Returns
    -------
    y_train, y_test, unseen
        Class indices of the training and test cells, and the test classes absent from training.
    """
    index = {c: i for i, c in enumerate(classes)}
    label_values = labels.to_numpy()
    y_train = np.array([index[v] for v in label_values[train_rows]], dtype=np.int64)
    y_test = np.array([index[v] for v in label_values[test_rows]], dtype=np.int64)
    train_classes = np.unique(y_train)
    if train_classes.size < 2:
        raise ScamlError(
            f"{name}: the training cells hold a single class ({classes[train_classes[0]]!r}); "
            "a classifier needs at least two. Choose other --split-train levels or another --label-key."
        )
    unseen = [classes[k] for k in np.unique(y_test) if k not in set(train_classes.tolist())]
    if unseen:
        n_unseen = int(np.isin(y_test, [index[c] for c in unseen]).sum())
        warn(
            f"{name}: test classes unseen in training: {', '.join(unseen)} ({n_unseen} cells); "
            "they are kept in every report and count as errors."
        )
    return y_train, y_test, unseen


def _fit_evaluate(
    model: str,
    params: dict[str, Any],
    X_train: Any,
    y_train: np.ndarray,
    X_test: Any,
    y_test: np.ndarray,
    classes: list[str],
    *,
    class_weight: str | None,
    random_state: int,
    name: str,
) -> dict[str, Any]:
    """Fit one model, predict the test cells and compute its metrics (with timings and fit details)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    proba, details = fit_predict_proba(
        model, params, X_train, y_train, X_test, len(classes), class_weight=class_weight, random_state=random_state,
    )
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    y_pred = proba.argmax(axis=1)
    metrics = classification_metrics(y_test, y_pred, proba, classes, np.unique(y_train))
    metrics.update(
        model=model,
        model_name=MODEL_NAMES[model],
        n_train=int(len(y_train)),
        fit_predict_seconds=round(seconds, 3),
        fit_predict_cpu_seconds=round(cpu_seconds, 3),
        fit=details,
        hyperparameters=params,
        class_weight=class_weight,
        random_state=random_state,
    )
    if not details.get("converged", True):
        warn(f"{name}: {model} did not fully converge (max_iter reached); results may improve with more iterations.")
    return {"metrics": metrics, "proba": proba, "y_pred": y_pred}


def _model_tables(
    evaluated: dict[str, Any],
    y_test: np.ndarray,
    classes: list[str],
    cells: pd.Index,
    split_key: str | None,
    split_label: np.ndarray | None,
) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """The metrics, the per-cell predictions table and the probability table of one fitted model."""
    proba, y_pred = evaluated["proba"], evaluated["y_pred"]
    predictions = pd.DataFrame(
        {
            "cell": cells,
            "true_label": [classes[k] for k in y_test],
            "predicted_label": [classes[k] for k in y_pred],
            "true_index": y_test,
            "predicted_index": y_pred,
            "correct": y_test == y_pred,
            "max_probability": proba.max(axis=1),
        }
    )
    if split_key is not None:
        predictions.insert(1, split_key, split_label)
    proba_frame = pd.DataFrame(proba, index=pd.Index(cells, name="cell"), columns=classes)
    return evaluated["metrics"], predictions, proba_frame


def _write_model_artifacts(
    out: Path,
    metrics: dict[str, Any],
    y_test: np.ndarray,
    y_pred: np.ndarray,
    classes: list[str],
    predictions: pd.DataFrame,
    proba: pd.DataFrame,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_text(classification_report_text(y_test, y_pred, classes, metrics), out / "classification_report.txt")
    write_csv(confusion_table(y_test, y_pred, classes), out / "confusion_matrix.csv")
    write_csv(predictions, out / "predictions.csv", index=False)
    write_csv(proba, out / "proba.csv", float_format="%.6g")
    write_json(metrics, out / "metrics.json")


def summary_of(result: dict[str, Any]) -> dict[str, Any]:
    """Per model summary (scalar metrics and sizes) of a :func:`run_split` result."""
    summary = {}
    for model, metrics in result["models"].items():
        summary[model] = {
            **{k: metrics[k] for k in SCALAR_METRICS},
            "roc_auc_note": metrics["roc_auc_note"],
            "n_train": result["n_train"],
            "n_test": result["n_test"],
            "n_features": len(result["feature_names"]),
            "test_classes_unseen_in_training": result["unseen_test_classes"],
            "fit_predict_seconds": metrics["fit_predict_seconds"],
        }
    return summary


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of a run result (no DataFrames)."""
    out = {k: v for k, v in result.items() if k not in ("models", "class_counts", "feature_names")}
    out["class_counts"] = result["class_counts"].to_dict(orient="index")
    out["models"] = {
        m: {k: v for k, v in r.items() if k not in ("predictions", "proba")} for m, r in result["models"].items()
    }
    return out


# ----------------------------------------------------------------------------- the benchmark

class SplitPlan(NamedTuple):
    """One train -> test split of :func:`run_train`: its name, levels and (labelled) rows."""

    name: str
    train_levels: list[str]
    test_levels: list[str]
    train_rows: np.ndarray
    test_rows: np.ndarray


def plan_splits(
    column: pd.Series,
    split_key: str,
    split_train: list[str],
    split_test: list[str],
    *,
    reverse: bool,
    cv: str | None,
) -> tuple[str, list[tuple[str, list[str], list[str]]]]:
    """The splits to run as ``(mode, [(name, train_levels, test_levels), ...])``."""
    levels = sorted(pd.unique(column.dropna()).tolist(), key=str)
    if cv is not None:
        if cv not in CV_SCHEMES:
            raise ScamlError(f"unknown --cv {cv!r}; use one of {', '.join(CV_SCHEMES)}.")
        if reverse:
            raise ScamlError("--cv and --reverse cannot be combined; leave-one-group-out already tests every level.")
        chosen = list(dict.fromkeys(split_train + split_test)) or levels
        check_levels(chosen, column, split_key, "--split-train/--split-test")
        if len(chosen) < 2:
            raise ScamlError(
                f"--cv leave-one-group-out needs at least two levels of adata.obs[{split_key!r}]; got {chosen}."
            )
        splits = [(f"holdout_{safe_name(lv)}", [x for x in chosen if x != lv], [lv]) for lv in chosen]
        return "cv", splits
    if not split_train or not split_test:
        raise ScamlError(
            f"give the training and test levels with --split-train and --split-test (levels of "
            f"adata.obs[{split_key!r}]: {', '.join(map(str, levels))}), or use --cv leave-one-group-out."
        )
    check_levels(split_train, column, split_key, "--split-train")
    check_levels(split_test, column, split_key, "--split-test")
    overlap = sorted(set(split_train) & set(split_test))
    if overlap:
        raise ScamlError(f"levels {overlap} are in both --split-train and --split-test; a cell cannot be in both.")
    forward = "+".join(map(safe_name, split_train)) + "_to_" + "+".join(map(safe_name, split_test))
    if not reverse:
        return "single", [(forward, split_train, split_test)]
    backward = "+".join(map(safe_name, split_test)) + "_to_" + "+".join(map(safe_name, split_train))
    return "reverse", [(forward, split_train, split_test), (backward, split_test, split_train)]


def _check_model_options(
    models: list[str], hyperparameters: dict[str, dict[str, Any]] | None, class_weight: str | None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Validate the models, their hyperparameter overrides and ``class_weight``."""
    model_list = check_models(list(models))
    params = resolve_hyperparameters(model_list, hyperparameters)
    if class_weight is not None and class_weight != "balanced":
        raise ScamlError(f"--class-weight {class_weight!r} is not supported; use 'balanced' or leave it out.")
    return model_list, params


def _check_feature_input(adata: ad.AnnData, features: str, n_hvg: int, embedding: str | None) -> None:
    """Validate the feature options against the data (before any work is done)."""
    check_feature_options(features, n_hvg, embedding)
    if embedding is not None:
        from ..io import check_obsm_key

        check_obsm_key(adata, embedding, flag="--embedding")


def feature_counts(counts: dict[str, int]) -> dict[str, Any]:
    """``n_features`` of the first split (and ``n_features_per_split`` when there are several), for run.json."""
    data: dict[str, Any] = {"n_features": next(iter(counts.values()))}
    if len(counts) > 1:
        data["n_features_per_split"] = dict(counts)
    return data


def _split_rows(
    adata: ad.AnnData,
    column: pd.Series,
    splits: list[tuple[str, list[str], list[str]]],
    *,
    label_key: str,
    split_key: str,
    drop_missing_labels: bool,
) -> tuple[np.ndarray, pd.Series, list[str], list[SplitPlan]]:
    """The labelled rows of every split, checked once (no empty split, two training classes at least).

    Returns
    -------
    used_rows, labels, classes, plans
        Every labelled row used anywhere, the labels of every cell (None where unused), the
        sorted class list and one :class:`SplitPlan` per split.
    """
    used_levels = sorted({lv for _, tr, te in splits for lv in tr + te})
    used_rows = np.flatnonzero(column.isin(used_levels).to_numpy())
    used_rows, used_labels = labels_for(adata, label_key, used_rows, drop_missing_labels=drop_missing_labels)
    labels = pd.Series(np.full(adata.n_obs, None, dtype=object), index=adata.obs_names)
    labels.iloc[used_rows] = used_labels
    classes = sorted(pd.unique(used_labels).tolist())
    level_of = column.to_numpy()
    plans = []
    for name, tr, te in splits:
        train_rows = used_rows[np.isin(level_of[used_rows], tr)]
        test_rows = used_rows[np.isin(level_of[used_rows], te)]
        for rows, what, lv in ((train_rows, "training", tr), (test_rows, "test", te)):
            if rows.size == 0:
                raise ScamlError(
                    f"{name}: the {what} split ({split_key} = {', '.join(lv)}) holds no labelled cells; "
                    "choose levels that have labelled cells."
                )
        n_train_classes = len(pd.unique(labels.iloc[train_rows]))
        if n_train_classes < 2:
            raise ScamlError(
                f"{name}: the training split ({split_key} = {', '.join(tr)}) holds a single class "
                f"({labels.iloc[train_rows].iloc[0]!r}); a classifier needs at least two. Choose other "
                "--split-train levels or another --label-key."
            )
        plans.append(SplitPlan(name, tr, te, train_rows, test_rows))
    return used_rows, labels, classes, plans


def _run_splits(
    adata: ad.AnnData,
    plans: list[SplitPlan],
    labels: pd.Series,
    classes: list[str],
    *,
    mode: str,
    out: Path | None,
    record: Any,
    split_key: str,
    **split_options: Any,
) -> dict[str, Any]:
    """Run :func:`run_split` for every plan (one subfolder each unless ``mode == "single"``)."""
    runs: dict[str, Any] = {}
    for i, plan in enumerate(plans):
        run_dir = None if out is None else (out if mode == "single" else out / plan.name)
        info(f"{plan.name}: train on {split_key} = {', '.join(plan.train_levels)} ({len(plan.train_rows)} cells), "
             f"test on {', '.join(plan.test_levels)} ({len(plan.test_rows)} cells)")
        with record.timer(plan.name):
            result = run_split(
                adata, plan.train_rows, plan.test_rows, labels, classes, split_key=split_key, outdir=run_dir,
                name=plan.name, announce=i == 0, **split_options,
            )
        result.update(split_key=split_key, train_levels=plan.train_levels, test_levels=plan.test_levels)
        runs[plan.name] = result
        if out is not None and mode != "single":
            write_json(_strip(result), run_dir / "run_details.json")
    return runs


def _write_train_outputs(
    out: Path, results: dict[str, Any], *, models: list[str], plots: bool, record: Any
) -> None:
    """Write the run-level files (summary, hyperparameters, details or comparison), the figures and run.json."""
    mode, runs, classes = results["mode"], results["runs"], results["classes"]
    write_json(results["summary"], out / "summary_metrics.json")
    write_json(results["hyperparameters"], out / "hyperparameters.json")
    if mode == "single":
        write_json(_strip(next(iter(runs.values()))), out / "run_details.json")
    else:
        write_text("".join(f"{i}\t{c}\n" for i, c in enumerate(classes)), out / "classes.txt")
        write_csv(comparison_table(runs), out / "comparison.csv", index=False)
    if plots:
        from .plots import plot_results

        with record.timer("plots"):
            plot_results(out, out / "plots", models=models)
    record.save(out)


def run_train(
    adata: ad.AnnData,
    *,
    label_key: str,
    split_key: str,
    split_train: str | list[str] | None = None,
    split_test: str | list[str] | None = None,
    features: str = "hvg",
    n_hvg: int = 3000,
    models: list[str] | tuple[str, ...] = ("lr", "rf", "xgb", "mlp"),
    embedding: str | None = None,
    reverse: bool = False,
    cv: str | None = None,
    class_weight: str | None = None,
    random_state: int = 0,
    drop_missing_labels: bool = False,
    hyperparameters: dict[str, dict[str, Any]] | None = None,
    outdir: str | os.PathLike | None = None,
    overwrite: bool = False,
    plots: bool = True,
    input_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Benchmark classifiers trained on some levels of ``split_key`` and tested on others.

    Parameters
    ----------
    adata
        Cells x genes; raw counts (``layers["counts"]`` or ``X``) or log-normalised ``X``.
        Not modified.
    label_key
        ``obs`` column with the cell labels (e.g. ``"label_ref"``).
    split_key
        ``obs`` column whose levels define training and test cells (e.g. ``"harvest"``).
    split_train, split_test
        Level(s) of ``split_key`` to train and test on. With ``cv`` they optionally
        restrict the levels used (all levels otherwise).
    features
        ``"hvg"`` (Seurat-flavour highly variable genes of the training cells) or ``"all"``.
    n_hvg
        Number of highly variable genes.
    models
        Any of ``"lr"``, ``"rf"``, ``"xgb"``, ``"mlp"``.
    embedding
        Train on ``obsm[embedding]`` instead of genes.
    reverse
        Also run test -> train (two directions, one subfolder each).
    cv
        ``"leave-one-group-out"``: every level held out in turn (one subfolder per fold).
    class_weight
        ``"balanced"`` to weight classes inversely to their frequency (sample weights for
        XGBoost and the MLP).
    random_state
        Seed of every model.
    drop_missing_labels
        Drop cells whose label is missing instead of refusing them.
    hyperparameters
        Overrides ``{model: {parameter: value}}`` of :data:`scaml.classify.models.HYPERPARAMETERS`.
    outdir
        Output directory; when None nothing is written (results are only returned).
    overwrite
        Replace an existing non-empty ``outdir``.
    plots
        Draw the figures into ``outdir/plots``.
    input_path
        Path of the input file (recorded in run.json and protected from ``overwrite``).

    Returns
    -------
    dict
        ``mode`` (``"single"``, ``"reverse"`` or ``"cv"``), ``classes``, ``hyperparameters``,
        ``runs`` (per split: sizes, features, per model metrics with in-memory
        ``predictions`` / ``proba`` DataFrames) and ``summary`` (what summary_metrics.json holds).

    Examples
    --------
    >>> from scaml.datasets import simulate
    >>> adata = simulate(600, 500, n_batches=2, n_cell_types=3, n_markers=15)
    >>> res = run_train(adata, label_key="cell_type", split_key="batch", split_train="batch1",
    ...                 split_test="batch2", n_hvg=200, models=["lr"])  # doctest: +SKIP
    >>> res["summary"]["lr"]["accuracy"] > 0.9  # doctest: +SKIP
    True
    """
    from ..runinfo import RunRecord

    # validate every input before any work is done
    model_list, params = _check_model_options(list(models), hyperparameters, class_weight)
    check_obs_key(adata, label_key, flag="--label-key")
    column = _level_strings(check_obs_key(adata, split_key, flag="--split-key"))
    split_train_l, split_test_l = _as_list(split_train), _as_list(split_test)
    mode, splits = plan_splits(column, split_key, split_train_l, split_test_l, reverse=reverse, cv=cv)
    _check_feature_input(adata, features, n_hvg, embedding)
    used_rows, labels, classes, plans = _split_rows(
        adata, column, splits, label_key=label_key, split_key=split_key, drop_missing_labels=drop_missing_labels
    )

    parameters = {
        "label_key": label_key, "split_key": split_key, "split_train": split_train_l, "split_test": split_test_l,
        "features": features if embedding is None else "embedding", "n_hvg": n_hvg, "embedding": embedding,
        "models": model_list, "reverse": reverse, "cv": cv, "class_weight": class_weight,
        "random_state": random_state, "drop_missing_labels": drop_missing_labels,
    }
    record = RunRecord("train", parameters={**parameters, "hyperparameters": params},
                       inputs={"adata": str(input_path)} if input_path else {})
    expression = find_run_expression(adata, embedding)  # refuses negative values before anything is written
    n_hvg_used = hvg_count(adata, features, n_hvg, embedding)
    out = None
    if outdir is not None:
        out = prepare_outdir(outdir, overwrite=overwrite, protect=[input_path] if input_path else [])
    record.data = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars), "n_labelled_cells_used": int(len(used_rows)),
                   "n_classes": len(classes), "mode": mode}
    info(f"train: {len(classes)} classes, {len(plans)} split(s), models {', '.join(model_list)}")

    runs = _run_splits(
        adata, plans, labels, classes, mode=mode, out=out, record=record, split_key=split_key, models=model_list,
        hyperparameters=params, features=features, n_hvg=n_hvg_used, embedding=embedding, class_weight=class_weight,
        random_state=random_state, expression=expression,
    )
    results = {
        "mode": mode,
        "outdir": str(out) if out is not None else None,
        "classes": classes,
        "parameters": parameters,
        "hyperparameters": params,
        "input_kind": next(iter(runs.values()))["features"].get("input_kind"),
        "runs": runs,
        "summary": _summary(mode, runs, model_list),
    }
    record.data.update(
        input_kind=results["input_kind"],
        n_hvg_used=n_hvg_used if embedding is None and features == "hvg" else None,
        **feature_counts({name: len(run["feature_names"]) for name, run in runs.items()}),
    )
    if out is not None:
        _write_train_outputs(out, results, models=model_list, plots=plots, record=record)
        from ..report import maybe_write_report

        maybe_write_report(out)
    return results


def comparison_table(runs: dict[str, Any]) -> pd.DataFrame:
    """One row per (split, model) with the scalar metrics."""
    rows = []
    for name, result in runs.items():
        for model, metrics in result["models"].items():
            rows.append({"run": name, "train": "+".join(result.get("train_levels", [])),
                         "test": "+".join(result.get("test_levels", [])), "model": model,
                         "n_train": result["n_train"], "n_test": result["n_test"],
                         **{k: metrics[k] for k in SCALAR_METRICS}})
    return pd.DataFrame(rows)


def _summary(mode: str, runs: dict[str, Any], models: list[str]) -> dict[str, Any]:
    if mode == "single":
        return summary_of(next(iter(runs.values())))
    table = comparison_table(runs)
    summary: dict[str, Any] = {"mode": mode, "runs": {name: summary_of(r) for name, r in runs.items()}}
    grouped = table.groupby("model", sort=False)[list(SCALAR_METRICS)]
    summary["mean"] = {m: grouped.mean().loc[m].to_dict() for m in models}
    summary["sd"] = {m: grouped.std(ddof=1).loc[m].to_dict() for m in models}
    return summary
