"""Scoring transferred labels against the query's true labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info
from ..io import write_csv
from ..runinfo import RunRecord
from .figures import plot_confusion


def label_metrics(true: Any, predicted: Any) -> dict:
    """Accuracy, balanced accuracy and macro F1 of predicted labels against true labels.

    Macro F1 and balanced accuracy average over the true classes; an "Unknown" call
    counts as a miss of the cell's true class.

    Parameters
    ----------
    true, predicted
        One label per cell.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (rounded to 4 digits) and ``n_cells``.
    """
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    true = np.asarray(true, dtype=str)
    predicted = np.asarray(predicted, dtype=str)
    classes = sorted(set(true))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(true, predicted)
        macro_f1 = f1_score(true, predicted, labels=classes, average="macro", zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(true, predicted)), 4),
        "balanced_accuracy": round(float(balanced), 4),
        "macro_f1": round(float(macro_f1), 4),
        "n_cells": int(true.size),
    }


def score_transfer(
    mapped: ad.AnnData,
    label_key: str,
    predicted_key: str,
    calls: pd.DataFrame,
    classifier: tuple[np.ndarray, pd.DataFrame] | None,
    outdir: Path,
    record: RunRecord,
) -> dict[str, Any]:
    """Score the transferred labels against the query's true labels; writes the confusion matrix (CSV, figure).

    Parameters
    ----------
    mapped
        The mapped query with ``obs[label_key]`` (true labels) and ``obs[predicted_key]``.
    label_key, predicted_key
        The true and transferred label columns.
    calls
        The label-transfer table (:func:`scaml.mapping.transfer.transfer_labels`).
    classifier
        Labels and probabilities of a method's own classifier (scANVI), or None.
    outdir
        Writes ``confusion_matrix.csv`` and ``figures/confusion_matrix.png`` here.
    record
        The run record (gets the weighted-kNN metrics).

    Returns
    -------
    dict
        The contents of ``metrics.json``: ``weighted_knn`` scores the per-cell calls
        (``predicted_key``; an Unknown call is a miss), ``weighted_knn_no_unknown`` the most
        probable label of every cell; with majority voting, ``majority_voting`` scores the
        cluster calls (``predicted_key + "_majority_voting"``). ``scored`` names the column behind
        each, and ``n_neighbors`` is the ``k`` used. When the calls average the kNN with the
        reference's expression classifier, ``knn_only`` and ``expression_classifier`` score each one's
        own calls, and ``label_source`` says so. The confusion matrix is of the per-cell calls
        (``confusion_matrix_majority_voting.csv``: of the cluster calls).
    """
    true_col = mapped.obs[label_key]
    known = true_col.notna().to_numpy()
    true = true_col.astype(str).to_numpy()[known]
    predicted = calls["label"].astype(str).to_numpy()[known]
    ref_labels = set(map(str, mapped.obs[predicted_key].cat.categories)) | set(calls["best_label"].astype(str))
    metrics: dict[str, Any] = {
        "label_key": label_key,
        "predicted_key": predicted_key,
        "n_neighbors": int(calls.attrs.get("n_neighbors", 0)) or None,
        "n_neighbors_requested": str(calls.attrs.get("n_neighbors_requested", "")) or None,
        "weighted_knn": label_metrics(true, predicted),
        "weighted_knn_no_unknown": label_metrics(true, calls["best_label"].astype(str).to_numpy()[known]),
        "fraction_unknown": round(float((predicted == "Unknown").mean()), 4) if predicted.size else None,
        "scored": {"weighted_knn": predicted_key, "weighted_knn_no_unknown": "the most probable label (no Unknown)"},
    }
    voted = None
    if "majority_voting" in calls.columns:
        voted = calls["majority_voting"].astype(str).to_numpy()[known]
        metrics["majority_voting"] = label_metrics(true, voted)
        metrics["fraction_unknown_majority_voting"] = round(float((voted == "Unknown").mean()), 4) if voted.size \
            else None
        metrics["n_clusters"] = int(calls["cluster"].nunique())
        metrics["scored"]["majority_voting"] = f"{predicted_key}_majority_voting"
    not_in_ref = sorted(set(true) - ref_labels - {"Unknown"})
    if not_in_ref:
        metrics["query_labels_not_in_reference"] = not_in_ref
        info(f"query labels absent from the reference (can only be right as 'Unknown'): {not_in_ref}")
    if "knn_label" in calls.columns:
        metrics["label_source"] = calls.attrs.get("label_source")
        metrics["knn_only"] = label_metrics(true, calls["knn_label"].astype(str).to_numpy()[known])
        metrics["expression_classifier"] = label_metrics(true, calls["classifier_label"].astype(str).to_numpy()[known])
        metrics["scored"]["knn_only"] = f"{predicted_key}_knn"
        metrics["scored"]["expression_classifier"] = f"{predicted_key}_lr"
    if classifier is not None:
        metrics["scanvi_classifier"] = label_metrics(true, np.asarray(classifier[0], dtype=str)[known])
    info("label transfer vs the query's " + repr(label_key) + ": " + ", ".join(
        f"{k}={v}" for k, v in metrics["weighted_knn"].items() if k != "n_cells"))
    record.data["metrics"] = {k: v for k, v in metrics["weighted_knn"].items()}
    if "knn_only" in metrics:
        info("kNN alone: accuracy={knn_only[accuracy]}; expression classifier alone: "
             "accuracy={expression_classifier[accuracy]}".format(**metrics))
    if voted is not None:
        record.data["metrics_majority_voting"] = dict(metrics["majority_voting"])
        info("majority voting vs the query's " + repr(label_key) + ": " + ", ".join(
            f"{k}={v}" for k, v in metrics["majority_voting"].items() if k != "n_cells"))
    confusion = _confusion(true, predicted)
    write_csv(confusion, outdir / "confusion_matrix.csv")
    plot_confusion(confusion, outdir / "figures" / "confusion_matrix.png", label_key)
    if voted is not None:
        write_csv(_confusion(true, voted), outdir / "confusion_matrix_majority_voting.csv")
    return metrics


def _confusion(true: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """True x predicted counts; the reference labels sorted, Unknown last."""
    rows = sorted(set(true))
    cols = sorted((set(predicted) | set(rows)) - {"Unknown"})
    if "Unknown" in set(predicted) or "Unknown" in set(rows):
        cols.append("Unknown")
    confusion = pd.crosstab(pd.Series(true, name="true"), pd.Series(predicted, name="predicted"))
    return confusion.reindex(index=rows, columns=cols, fill_value=0)
