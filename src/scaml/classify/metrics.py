"""Classification metrics over a fixed, full class list."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def roc_auc_macro_ovr(y_true: np.ndarray, proba: np.ndarray) -> tuple[float, str | None, dict[int, float]]:
    """Macro one-vs-rest ROC-AUC that never fails.

    Each class present in ``y_true`` is scored one-vs-rest on its probability
    column; classes absent from ``y_true`` are excluded from the average (their
    AUC is undefined). A class unseen in training has probability 0 everywhere
    and scores 0.5 (a chance-level, honest penalty).

    Parameters
    ----------
    y_true
        Integer labels of the test cells.
    proba
        ``n_cells x n_classes`` probabilities over the full class list.

    Returns
    -------
    auc, reason, per_class
        ``auc`` is NaN with a ``reason`` when it is undefined (fewer than two
        classes in the test split); ``per_class`` maps class index to its AUC.
    """
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if present.size < 2:
        return float("nan"), f"the test split holds {present.size} class(es); ROC-AUC needs at least two", {}
    per_class = {}
    for k in present:
        per_class[int(k)] = float(roc_auc_score(y_true == k, proba[:, k]))
    return float(np.mean(list(per_class.values()))), None, per_class


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    train_classes: list[int] | np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, F1 (macro, weighted), macro OVR ROC-AUC and per-class scores.

    Parameters
    ----------
    y_true, y_pred
        Integer labels (indices into ``classes``) of the test cells.
    proba
        ``n_cells x len(classes)`` probabilities.
    classes
        The full class list (union of training and test classes).
    train_classes
        Indices of classes seen in training (to mark unseen ones).

    Returns
    -------
    dict
        Scalars plus ``per_class`` (precision, recall, F1, support for every class of
        the full list) and notes. Macro F1 and balanced accuracy average over the
        classes present in the test split or predicted, as scikit-learn does.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
    )

    labels = np.arange(len(classes))
    present = np.unique(np.concatenate([y_true, y_pred]))
    auc, reason, auc_per_class = roc_auc_macro_ovr(y_true, proba)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balanced = float(balanced_accuracy_score(y_true, y_pred))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    seen = set(np.asarray(train_classes if train_classes is not None else labels).tolist())
    per_class = {
        classes[k]: {
            "index": int(k),
            "precision": float(precision[k]),
            "recall": float(recall[k]),
            "f1": float(f1[k]),
            "support": int(support[k]),
            "roc_auc_ovr": auc_per_class.get(int(k), float("nan")),
            "seen_in_training": int(k) in seen,
        }
        for k in labels
    }
    unseen_in_test = sorted({classes[k] for k in np.unique(y_true) if int(k) not in seen})
    result = {
        "n_cells": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "f1_macro": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "roc_auc_macro_ovr": auc,
        "roc_auc_note": reason or (
            f"mean of one-vs-rest AUCs over the {len(auc_per_class)} classes present in the test split"
        ),
        "test_classes_unseen_in_training": unseen_in_test,
        "n_test_cells_of_unseen_classes": int(np.isin(y_true, [classes.index(c) for c in unseen_in_test]).sum()),
        "per_class": per_class,
    }
    return result


def confusion_table(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Confusion matrix over the full class list: rows true labels, columns predicted labels."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    table = pd.DataFrame(matrix, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    return table


def classification_report_text(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], metrics: dict[str, Any] | None = None
) -> str:
    """scikit-learn's text report over the full class list, with the summary metrics appended."""
    from sklearn.metrics import classification_report

    text = classification_report(
        y_true, y_pred, labels=np.arange(len(classes)), target_names=classes, digits=4, zero_division=0
    )
    if metrics is not None:
        lines = [
            "",
            f"accuracy            {metrics['accuracy']:.4f}",
            f"balanced accuracy   {metrics['balanced_accuracy']:.4f}",
            f"F1 macro            {metrics['f1_macro']:.4f}",
            f"F1 weighted         {metrics['f1_weighted']:.4f}",
            f"ROC-AUC macro OVR   {metrics['roc_auc_macro_ovr']:.4f}  ({metrics['roc_auc_note']})",
        ]
        unseen = metrics.get("test_classes_unseen_in_training") or []
        if unseen:
            lines.append(
                f"test classes unseen in training (counted as errors): {', '.join(unseen)} "
                f"({metrics['n_test_cells_of_unseen_classes']} cells)"
            )
        text += "\n".join(lines) + "\n"
    return text


#: The scalar metrics, in the order tables and plots show them.
SCALAR_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_macro_ovr")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the scalar metrics of a :func:`classification_metrics` result."""
    return {k: metrics[k] for k in SCALAR_METRICS}
