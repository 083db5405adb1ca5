"""Novelty detection of foreign cells (e.g. HEK293 contaminating an iPSC-microglia culture).

The default method, ``coverage``, combines two scores on a batch-corrected embedding of every cell
(:mod:`scaml.classify.novelty_knn`): the distance to the nearest non-flagged cells (the ``knn``
method alone) and the share of query cells among a cell's neighbours in the joint reference + query
kNN graph (a type the reference lacks forms a query-only neighbourhood), merged by Fisher's method on
their ranks. Detectors are fitted on the cells that are NOT flagged and score every cell;
the flag is used only to evaluate the scores (AUROC, AUPRC). To avoid scoring
a cell with a model that saw it, scores are cross-fitted: the non-flagged
cells are split into ``n_folds`` folds (flagged cells are spread over the same
folds); the model of fold k is fitted on the non-flagged cells of the other
folds and scores the cells (flagged or not) of fold k. Higher scores mean
"more novel". Besides the evaluation, the flag decides only which cells may be
reference cells (never a flagged one) and, for ``coverage``, that every flagged
cell is a query cell; when the flag is independent of expression, flagged and
non-flagged cells score alike (AUROC 0.5).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, progress
from ..errors import ScamlError
from ..io import check_obs_key, check_obsm_key, prepare_outdir, save_figure, write_csv, write_json
from ..style import styled
from .features import build_features, check_feature_options, find_run_expression, hvg_count
from .models import (
    NOVELTY_HYPERPARAMETERS,
    check_models,
    fit_predict_proba,
    resolve_hyperparameters,
)

#: Methods of :func:`run_novelty` (the first is the default).
METHODS = ("coverage", "knn", "iforest", "lof", "ocsvm", "classifier")

#: Methods that work on the shared embedding of every cell (PCA of all cells, Harmony over the batches).
EMBEDDING_METHODS = ("coverage", "knn")

_TRUTHY = {"true", "t", "yes", "y", "1", "1.0"}


def flag_mask(column: pd.Series, positive: Any, key: str) -> np.ndarray:
    """Boolean mask of the flagged cells: ``column == positive`` (``true``/``1``/``yes`` are one value).

    Raises
    ------
    ScamlError
        When the column has missing values, or no cell or every cell is flagged.
    """
    if column.isna().any():
        raise ScamlError(
            f"adata.obs[{key!r}] is missing (NaN) for {int(column.isna().sum())} cells; fill it in "
            "(e.g. False for cells that are not flagged)."
        )
    values = column.astype(str).str.strip().str.lower()
    pos = str(positive).strip().lower()
    mask = values.isin(_TRUTHY).to_numpy() if pos in _TRUTHY else (values == pos).to_numpy()
    levels = ", ".join(map(str, pd.unique(column.astype(str))[:20]))
    if not mask.any():
        raise ScamlError(
            f"no cell has adata.obs[{key!r}] == {positive!r} (values: {levels}); pass the flagged value with --hek-positive."
        )
    if mask.all():
        raise ScamlError(
            f"every cell has adata.obs[{key!r}] == {positive!r}; novelty detection needs cells that are not flagged."
        )
    return mask


class Detector:
    """A novelty detector on a PCA of the features (or the standardised features).

    Parameters
    ----------
    method
        ``"iforest"``, ``"lof"`` or ``"ocsvm"``.
    params
        Hyperparameters from :data:`scaml.classify.models.NOVELTY_HYPERPARAMETERS`.
    n_pcs
        Principal components; 0 (or at least the number of features) to standardise instead.
    random_state
        Seed.
    """

    def __init__(self, method: str, params: dict[str, Any], n_pcs: int, random_state: int = 0) -> None:
        self.method, self.params, self.n_pcs, self.random_state = method, dict(params), n_pcs, random_state

    def fit(self, X: np.ndarray) -> Detector:
        """Fit the reduction and the detector on normal cells."""
        from sklearn.decomposition import PCA
        from sklearn.preprocessing import StandardScaler

        # PCA on the log-normalised values themselves: standardising every gene first
        # inflates the noise of weakly expressed genes and hides foreign cells
        if self.n_pcs and self.n_pcs < X.shape[1]:
            self.reducer_ = PCA(n_components=self.n_pcs, random_state=self.random_state).fit(X)
        else:
            self.reducer_ = StandardScaler().fit(X)
        Z = self.reducer_.transform(X)
        params = {k: v for k, v in self.params.items() if k not in ("max_fit_cells", "gamma_factor")}
        if self.method == "iforest":
            from sklearn.ensemble import IsolationForest

            self.model_ = IsolationForest(random_state=self.random_state, **params)
        elif self.method == "lof":
            from sklearn.neighbors import LocalOutlierFactor

            self.model_ = LocalOutlierFactor(novelty=True, **params)
        elif self.method == "ocsvm":
            from sklearn.svm import OneClassSVM

            gamma = float(self.params.get("gamma_factor", 1.0)) / (Z.shape[1] * (float(Z.var()) or 1.0))
            self.model_ = OneClassSVM(gamma=gamma, **params)
        else:
            raise ScamlError(f"unknown detector {self.method!r}; use iforest, lof or ocsvm.")
        self.model_.fit(Z)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        """Novelty scores (higher = more novel)."""
        return -self.model_.score_samples(self.reducer_.transform(X))


def novelty_metrics(flag: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """AUROC, AUPRC (average precision) and the true-positive rate at 5% false positives."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(flag, score)
    return {
        "auroc": float(roc_auc_score(flag, score)),
        "auprc": float(average_precision_score(flag, score)),
        "auprc_baseline": float(flag.mean()),
        "tpr_at_fpr_0.05": float(np.interp(0.05, fpr, tpr)),
        "n_flagged": int(flag.sum()),
        "n_not_flagged": int((~flag).sum()),
        "mean_score_flagged": float(score[flag].mean()),
        "mean_score_not_flagged": float(score[~flag].mean()),
    }


def _method_parameters(
    adata: ad.AnnData,
    method: str,
    hyperparameters: dict[str, dict[str, Any]],
    *,
    label_key: str | None,
    classifier: str,
    normal: np.ndarray,
    drop_missing_labels: bool,
) -> tuple[str, dict[str, Any], pd.Series | None]:
    """The classifier, the hyperparameters of the method and (for ``method="classifier"``) the labels.

    Returns
    -------
    classifier, params, labels
        ``labels`` (indexed by row) is None unless ``method == "classifier"``.
    """
    if method == "classifier":
        if label_key is None:
            raise ScamlError("--method classifier needs --label-key (the labels of the non-flagged cells).")
        (classifier,) = check_models([classifier])
        params = resolve_hyperparameters([classifier], {k: v for k, v in hyperparameters.items() if k == classifier})[classifier]
        kept, values = _labels(adata, label_key, normal, drop_missing_labels)
        labels = pd.Series(values, index=kept)
        if labels.nunique() < 2:
            raise ScamlError(f"the non-flagged cells hold a single class in adata.obs[{label_key!r}]; a classifier needs two.")
        return classifier, params, labels
    if method == "coverage":
        from .novelty_knn import COVERAGE_HYPERPARAMETERS

        params = copy.deepcopy(COVERAGE_HYPERPARAMETERS)
    else:
        params = copy.deepcopy(NOVELTY_HYPERPARAMETERS[method])
    extra = hyperparameters.get(method, {})
    unknown = [k for k in extra if k not in params]
    if unknown:
        raise ScamlError(f"unknown hyperparameter(s) {unknown} for {method}; known: {', '.join(params)}.")
    params.update(extra)
    if method == "knn":
        from .novelty_knn import check_knn_params

        params = check_knn_params(params)
    elif method == "coverage":
        from .novelty_knn import check_coverage_params

        params = check_coverage_params(params)
    return classifier, params, None


def _batch_labels(adata: ad.AnnData, batch_key: str | None, method: str) -> tuple[str | None, np.ndarray | None]:
    """The batch column Harmony corrects for the ``coverage`` and ``knn`` methods, and its labels.

    ``batch_key`` None: ``obs["batch"]`` when it exists with two or more levels and no missing value.
    """
    if batch_key is None:
        if method not in EMBEDDING_METHODS or "batch" not in adata.obs.columns:
            return None, None
        column = adata.obs["batch"]
        if column.isna().any() or column.nunique() < 2:
            return None, None
        batch_key = "batch"
    else:
        column = check_obs_key(adata, batch_key, flag="--batch-key")
        if column.isna().any():
            raise ScamlError(f"adata.obs[{batch_key!r}] is missing (NaN) for {int(column.isna().sum())} cells; "
                             "fill it in or pass another --batch-key.")
    return batch_key, column.astype(str).to_numpy()


def _assign_folds(
    flag: np.ndarray, normal: np.ndarray, n_folds: int, random_state: int
) -> tuple[np.ndarray, np.random.Generator]:
    """Cross-fitting folds over the normal cells, the flagged cells spread over the same folds.

    Returns the fold of every cell and the random generator (it also subsamples the one-class SVM's cells).
    """
    from sklearn.model_selection import KFold

    fold = np.empty(flag.size, dtype=np.int64)
    kfold = KFold(n_splits=n_folds, shuffle=True, random_state=random_state)
    for k, (_, held) in enumerate(kfold.split(normal)):
        fold[normal[held]] = k
    flagged = np.flatnonzero(flag)
    rng = np.random.default_rng(random_state)
    fold[flagged] = rng.permutation(np.arange(flagged.size) % n_folds)
    return fold, rng


def _cross_fit_scores(
    X: Any,
    normal: np.ndarray,
    fold: np.ndarray,
    rng: np.random.Generator,
    *,
    method: str,
    params: dict[str, Any],
    classifier: str,
    labels: pd.Series | None,
    n_pcs: int,
    n_folds: int,
    random_state: int,
    record: Any,
) -> np.ndarray:
    """Novelty score of every cell from the model of its fold (fitted on the normal cells of the other folds)."""
    score = np.empty(fold.size, dtype=np.float64)
    classes = sorted(labels.unique().tolist()) if labels is not None else None
    with progress() as bar:
        task = bar.add_task(f"novelty {method}", total=n_folds, status="")
        for k in range(n_folds):
            fit_rows = normal[fold[normal] != k]
            score_rows = np.flatnonzero(fold == k)
            with record.timer("fit"):
                if method == "classifier":
                    fit_rows = fit_rows[np.isin(fit_rows, labels.index.to_numpy())]
                    index = {c: i for i, c in enumerate(classes)}
                    y = np.array([index[v] for v in labels.loc[fit_rows]])
                    proba, _ = fit_predict_proba(classifier, params, X[fit_rows], y, X[score_rows], len(classes),
                                                 random_state=random_state)
                    score[score_rows] = 1.0 - proba.max(axis=1)
                else:
                    if method == "ocsvm" and fit_rows.size > params["max_fit_cells"]:
                        fit_rows = np.sort(rng.choice(fit_rows, size=params["max_fit_cells"], replace=False))
                    dense = X[fit_rows].toarray() if hasattr(X, "toarray") else X[fit_rows]
                    detector = Detector(method, params, n_pcs, random_state).fit(dense)
                    test = X[score_rows].toarray() if hasattr(X, "toarray") else X[score_rows]
                    score[score_rows] = detector.score(test)
            bar.advance(task)
    return score


def _write_novelty_outputs(
    out: Path, result: dict[str, Any], *, flag: np.ndarray, hek_key: str, plots: bool, record: Any, data: dict[str, Any]
) -> None:
    """Write the scores, the metrics, the figures and run.json."""
    scores, metrics = result["scores"], result["metrics"]
    write_csv(scores, out / "novelty_scores.csv", index=False)
    write_json(metrics, out / "novelty_metrics.json")
    if plots:
        with record.timer("plots"):
            plot_novelty_histogram(scores, out / "novelty_histogram.png", metrics=metrics, hek_key=hek_key)
            plot_novelty_curves(flag, scores["novelty_score"].to_numpy(), out / "novelty_curves.png", metrics=metrics)
    record.data = data
    record.save(out)


def run_novelty(
    adata: ad.AnnData,
    *,
    hek_key: str,
    hek_positive: Any = "true",
    method: str = "coverage",
    label_key: str | None = None,
    classifier: str = "lr",
    features: str = "hvg",
    n_hvg: int = 2000,
    embedding: str | None = None,
    n_pcs: int = 30,
    hvg_cells: str = "not-flagged",
    n_folds: int = 5,
    random_state: int = 0,
    drop_missing_labels: bool = False,
    hyperparameters: dict[str, dict[str, Any]] | None = None,
    batch_key: str | None = None,
    outdir: str | os.PathLike | None = None,
    overwrite: bool = False,
    plots: bool = True,
    input_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Score every cell for novelty with a detector fitted on the non-flagged cells.

    Parameters
    ----------
    adata
        The data (not modified).
    hek_key
        ``obs`` column flagging the foreign cells (e.g. ``"is_hek"``).
    hek_positive
        The value of ``hek_key`` that marks a foreign cell (``true``, ``1``, ``yes``
        match boolean columns).
    method
        ``"coverage"`` (default, :func:`scaml.classify.novelty_knn.coverage_novelty`): Fisher's
        combination of the ranks of two scores in a Harmony-corrected PCA of all cells, the mean
        cosine distance to the 30 nearest non-flagged cells of the other folds and the share of
        query cells (the fold's non-flagged cells and every flagged cell) among a cell's 10 nearest
        cells; ``"knn"`` (the distance alone, :mod:`scaml.classify.novelty_knn`), ``"iforest"``
        (IsolationForest), ``"lof"`` (LocalOutlierFactor, novelty mode),
        ``"ocsvm"`` (one-class SVM) or ``"classifier"`` (1 - the maximum class
        probability of ``classifier`` trained on ``label_key`` of the non-flagged cells).
    label_key
        Labels for ``method="classifier"`` (only non-flagged cells need them).
    classifier
        Model of the registry used by ``method="classifier"``.
    features, n_hvg, embedding
        Features; highly variable genes are chosen on the non-flagged cells.
    n_pcs
        iforest / lof / ocsvm work on this many principal components of the
        log-normalised features (fitted within each fold on the training cells);
        0 to use the standardised features directly. coverage and knn work on this many principal
        components fitted on all cells (the flag is not used; knn also offers
        ``knn.pca_cells="reference"``: each fold's reference cells); 0 for the features themselves.
        With ``embedding``, coverage and knn use the embedding as it is (no PCA, no Harmony).
    hvg_cells
        Cells on which highly variable genes are chosen: ``"not-flagged"`` (default,
        strict: the features know nothing of the foreign cells) or ``"all"`` (every
        cell, without using the flag, as an analyst would on a new dataset; often
        better at catching foreign cells whose own genes do not vary among the others).
    n_folds
        Cross-fitting folds (at least 2).
    random_state
        Seed of the folds and the detectors.
    drop_missing_labels
        For ``method="classifier"``: leave non-flagged cells without a label out of training.
    hyperparameters
        Overrides of :data:`scaml.classify.novelty_knn.COVERAGE_HYPERPARAMETERS` (coverage:
        ``n_neighbors`` 30, ``share_neighbors`` 10, ``combine`` fisher / mean / max, ``metric``
        cosine / euclidean, ``harmony`` True, ``harmony_theta`` 2),
        :data:`scaml.classify.models.NOVELTY_HYPERPARAMETERS` (knn and the detectors) or of the
        classifier's hyperparameters, keyed by method / model name.
    batch_key
        ``obs`` column of the batches that Harmony corrects in the coverage / knn embedding; None
        (default): ``obs["batch"]`` when it has two or more levels. Only coverage and knn use it;
        turn the correction off with ``{"coverage": {"harmony": False}}``.
    outdir, overwrite, plots, input_path
        Output directory (novelty_scores.csv: per-cell scores, with the two components of
        coverage as ``distance`` and ``query_share``; novelty_metrics.json,
        novelty_histogram.png, novelty_curves.png, run.json); nothing written when None.

    Returns
    -------
    dict
        ``metrics`` (AUROC, AUPRC, ...; for coverage also each component's AUROC / AUPRC under
        ``metrics["coverage"]["components"]``), ``scores`` (a per-cell DataFrame) and the parameters.
    """
    from ..runinfo import RunRecord

    # validate every input before any work is done
    if method not in METHODS:
        raise ScamlError(f"unknown --method {method!r}; use one of {', '.join(METHODS)}.")
    if hvg_cells not in ("not-flagged", "all"):
        raise ScamlError(f"unknown --hvg-cells {hvg_cells!r}; use 'not-flagged' or 'all'.")
    if n_folds < 2:
        raise ScamlError(f"--n-folds must be at least 2 (cross-fitting); got {n_folds}.")
    flag = flag_mask(check_obs_key(adata, hek_key, flag="--hek-key"), hek_positive, hek_key)
    normal = np.flatnonzero(~flag)
    if normal.size < 2 * n_folds:
        raise ScamlError(f"only {normal.size} cells are not flagged; at least {2 * n_folds} are needed for {n_folds} folds.")
    classifier, params, labels = _method_parameters(
        adata, method, dict(hyperparameters or {}), label_key=label_key, classifier=classifier, normal=normal,
        drop_missing_labels=drop_missing_labels,
    )
    check_feature_options(features, n_hvg, embedding)
    if embedding is not None:
        check_obsm_key(adata, embedding, flag="--embedding")
    if isinstance(n_pcs, bool) or int(n_pcs) != n_pcs or n_pcs < 0:
        raise ScamlError(f"--n-pcs must be a whole number >= 0 (0: the features themselves); got {n_pcs!r}.")
    batch_key, batch = _batch_labels(adata, batch_key, method)

    parameters = {"hek_key": hek_key, "hek_positive": str(hek_positive), "method": method, "label_key": label_key,
                  "classifier": classifier if method == "classifier" else None, "features": features if embedding is None else "embedding",
                  "n_hvg": n_hvg, "hvg_cells": hvg_cells, "embedding": embedding,
                  "n_pcs": n_pcs if method != "classifier" else None,
                  "batch_key": batch_key if method in EMBEDDING_METHODS else None,
                  "n_folds": n_folds, "random_state": random_state}
    record = RunRecord("novelty", parameters={**parameters, "hyperparameters": params},
                       inputs={"adata": str(input_path)} if input_path else {})
    expression = find_run_expression(adata, embedding)  # refuses negative values before anything is written
    n_hvg_used = hvg_count(adata, features, n_hvg, embedding)
    out = prepare_outdir(outdir, overwrite=overwrite, protect=[input_path] if input_path else []) if outdir else None
    info(f"novelty ({method}): {int(flag.sum())} flagged cells, {normal.size} not flagged; {n_folds}-fold cross-fitting")

    rows = np.arange(adata.n_obs)
    with record.timer("features"):
        feats = build_features(adata, rows, normal if hvg_cells == "not-flagged" else rows, features=features,
                               n_hvg=n_hvg_used, embedding=embedding, expression=expression)
    fold, rng = _assign_folds(flag, normal, n_folds, random_state)
    knn_description, components = None, {}
    if method == "knn":
        from .novelty_knn import knn_novelty

        with record.timer("fit"):
            score, knn_description = knn_novelty(feats.X, normal, fold, params=params, n_pcs=int(n_pcs), batch=batch,
                                                 reduce=embedding is None, random_state=random_state)
    elif method == "coverage":
        from .novelty_knn import coverage_novelty

        with record.timer("fit"):
            score, components, knn_description = coverage_novelty(
                feats.X, normal, fold, params=params, n_pcs=int(n_pcs), batch=batch, reduce=embedding is None,
                random_state=random_state)
        knn_description["components"] = {
            name: {key: novelty_metrics(flag, value)[key] for key in ("auroc", "auprc", "tpr_at_fpr_0.05")}
            for name, value in components.items()}
    else:
        score = _cross_fit_scores(feats.X, normal, fold, rng, method=method, params=params, classifier=classifier,
                                  labels=labels, n_pcs=n_pcs, n_folds=n_folds, random_state=random_state,
                                  record=record)
    metrics = novelty_metrics(flag, score)
    evaluation = ("cross-fitted: every cell scored against the non-flagged cells of the other folds (never itself)"
                  if method == "knn" else
                  "cross-fitted: every cell scored against the non-flagged cells of the other folds (never itself); "
                  "the query of its fold is that fold's non-flagged cells and every flagged cell"
                  if method == "coverage" else "cross-fitted: every cell scored by a model that never saw it")
    metrics.update(method=method, n_folds=n_folds, evaluation=evaluation, hyperparameters=params,
                   features=feats.description)
    if knn_description is not None:
        metrics[method] = {**knn_description, "batch_key": batch_key}
    info(f"novelty ({method}): AUROC {metrics['auroc']:.3f}, AUPRC {metrics['auprc']:.3f} "
         f"(baseline {metrics['auprc_baseline']:.3f})")
    scores = pd.DataFrame({"cell": adata.obs_names.astype(str), "flagged": flag, "novelty_score": score, "fold": fold,
                           **components})
    if label_key is not None and label_key in adata.obs:
        scores[label_key] = adata.obs[label_key].astype(str).to_numpy()
    result = {"metrics": metrics, "scores": scores, "parameters": parameters, "outdir": str(out) if out else None}
    if out is not None:
        data = {"n_cells": int(adata.n_obs), "n_flagged": int(flag.sum()),
                "n_hvg_used": n_hvg_used if embedding is None and features == "hvg" else None,
                "n_features": len(feats.names), "input_kind": feats.description.get("input_kind")}
        _write_novelty_outputs(out, result, flag=flag, hek_key=hek_key, plots=plots, record=record, data=data)
        from ..report import maybe_write_report

        maybe_write_report(out)
    return result


def _labels(adata: ad.AnnData, label_key: str, rows: np.ndarray, drop: bool) -> tuple[np.ndarray, np.ndarray]:
    from .benchmark import labels_for

    return labels_for(adata, label_key, rows, drop_missing_labels=drop, what="non-flagged")


@styled
def plot_novelty_histogram(scores: pd.DataFrame, path: str | os.PathLike, *, metrics: dict[str, Any], hek_key: str) -> Path:
    """Histograms (density) of the novelty scores of flagged and non-flagged cells."""
    import matplotlib.pyplot as plt

    from .plots import _style

    fig, ax = plt.subplots(figsize=(6.2, 4.0))
    values = scores["novelty_score"].to_numpy()
    low, high = float(values.min()), float(values.max())
    bins = np.linspace(low, high, 50) if high - low > 1e-12 else np.linspace(low - 0.5, high + 0.5, 11)
    flagged = scores["flagged"].to_numpy()
    for mask, color, label in ((~flagged, "#0072B2", f"not flagged (n={int((~flagged).sum())})"),
                               (flagged, "#D55E00", f"flagged by {hek_key} (n={int(flagged.sum())})")):
        ax.hist(values[mask], bins=bins, density=True, alpha=0.35, color=color, histtype="stepfilled")
        ax.hist(values[mask], bins=bins, density=True, color=color, histtype="step", lw=1.5, label=label)
    ax.set_xlabel(f"novelty score ({metrics['method']}; higher = more novel)")
    ax.set_ylabel("density")
    ax.set_title(f"AUROC {metrics['auroc']:.3f}   AUPRC {metrics['auprc']:.3f} (baseline {metrics['auprc_baseline']:.3f})",
                 fontsize=10)
    _style(ax)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_novelty_curves(flag: np.ndarray, score: np.ndarray, path: str | os.PathLike, *, metrics: dict[str, Any]) -> Path:
    """ROC and precision-recall curves of the novelty scores against the flag."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    from .plots import _style

    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 4.0))
    fpr, tpr, _ = roc_curve(flag, score)
    a.plot(fpr, tpr, color="#0072B2", lw=1.8)
    a.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="chance")
    a.legend(frameon=False, fontsize=8, loc="lower right")
    a.set_xlabel("false positive rate")
    a.set_ylabel("true positive rate")
    a.set_title(f"ROC (AUROC {metrics['auroc']:.3f})", fontsize=10)
    precision, recall, _ = precision_recall_curve(flag, score)
    b.plot(recall, precision, color="#D55E00", lw=1.8)
    b.axhline(metrics["auprc_baseline"], color="#999999", lw=1, ls="--", label="flagged fraction")
    b.set_xlabel("recall")
    b.set_ylabel("precision")
    b.set_ylim(0, 1.02)
    b.set_title(f"precision-recall (AUPRC {metrics['auprc']:.3f})", fontsize=10)
    b.legend(frameon=False, fontsize=8)
    for ax in (a, b):
        _style(ax)
    fig.tight_layout()
    return save_figure(fig, path)
