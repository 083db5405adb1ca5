"""The classifier registry: every model's hyperparameters in one place.

Each model is built by :func:`make_model` from :data:`HYPERPARAMETERS`
(overridable per call) and fitted by :func:`fit_predict_proba`, which returns
probabilities over the FULL class list (classes unseen in training get
probability 0), whatever subset of classes the model saw.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp

from ..errors import ScamlError

#: Default hyperparameters of every model (written to the results of each run).
#: Chosen so that the four-model run on 100k cells x 3000 genes fits in
#: minutes on 2 CPU cores (see benchmarks/bench_classify.py).
HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "lr": {
        # MaxAbsScaler -> multinomial logistic regression (keeps sparse input sparse)
        "C": 1.0,
        "solver": "lbfgs",
        "max_iter": 300,
        "tol": 1e-4,
    },
    "rf": {
        "n_estimators": 300,
        "max_features": "sqrt",
        "min_samples_leaf": 1,
        # each tree sees a bootstrap sample of half the training cells: about half the CPU time
        # on large data, no loss of accuracy on our benchmarks
        "max_samples": 0.5,
        "n_jobs": -1,
    },
    "xgb": {
        # 100 rounds x n_classes trees; a third of the genes per tree keeps 100k cells in minutes
        "n_estimators": 100,
        "max_depth": 6,
        "learning_rate": 0.3,
        "subsample": 0.8,
        "colsample_bytree": 0.3,
        "max_bin": 64,
        "tree_method": "hist",
        "n_jobs": -1,
    },
    "mlp": {
        # StandardScaler -> MLP (adam) with early stopping on a 10% validation split
        "hidden_layer_sizes": (256, 64),
        "alpha": 1e-3,
        "batch_size": 256,
        "learning_rate_init": 1e-3,
        "max_iter": 60,
        "early_stopping": True,
        "validation_fraction": 0.1,
        "n_iter_no_change": 5,
    },
}

#: Novelty detectors of ``scaml novelty`` (iforest / lof / ocsvm: fitted on the non-flagged cells
#: after a PCA to ``n_pcs`` components; knn: see :mod:`scaml.classify.novelty_knn`).
NOVELTY_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    # mean cosine distance to the 30 nearest non-flagged cells (of the other folds) in a PCA of all
    # cells, Harmony-corrected when there are batches (scaml.classify.novelty_knn); chosen on
    # benchmarks/bench_novelty.py (held-out kang types, cellbench doublets, pancreas cells in PBMCs)
    "knn": {"n_neighbors": 30, "metric": "cosine", "density_ratio": False, "pca_cells": "all",
            "harmony": True, "harmony_theta": 2.0},
    "iforest": {"n_estimators": 300, "max_samples": "auto", "n_jobs": -1},
    "lof": {"n_neighbors": 20, "n_jobs": -1},
    # RBF width gamma = gamma_factor / (n_features * variance): sklearn's "scale" (factor 1)
    # is too smooth for several cell types and scores foreign cells between them as normal;
    # the one-class SVM scales quadratically, so it is fitted on at most max_fit_cells cells
    "ocsvm": {"nu": 0.05, "gamma_factor": 10.0, "max_fit_cells": 5000},
}

#: Human-readable model names.
MODEL_NAMES = {
    "lr": "logistic regression",
    "rf": "random forest",
    "xgb": "XGBoost",
    "mlp": "multilayer perceptron",
}

#: Models that need a dense matrix (the others take sparse input).
NEEDS_DENSE = {"rf": True, "xgb": False, "mlp": True, "lr": False}


def available_models() -> list[str]:
    """Names of the registered models."""
    return list(HYPERPARAMETERS)


def check_models(models: list[str] | tuple[str, ...] | str) -> list[str]:
    """Validate model names; raise a :class:`ScamlError` naming the registered ones."""
    if isinstance(models, str):
        models = [models]
    models = [str(m).lower() for m in models]
    if not models:
        raise ScamlError(f"no model given; choose from {', '.join(HYPERPARAMETERS)}.")
    unknown = [m for m in models if m not in HYPERPARAMETERS]
    if unknown:
        raise ScamlError(f"unknown model(s) {unknown}; choose from {', '.join(HYPERPARAMETERS)}.")
    return list(dict.fromkeys(models))


def resolve_hyperparameters(
    models: list[str], overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """The hyperparameters each model will use: defaults updated by ``overrides``.

    Parameters
    ----------
    models
        Model names.
    overrides
        ``{model: {parameter: value}}``; unknown models or parameters are refused.
    """
    overrides = overrides or {}
    for model, params in overrides.items():
        if model not in HYPERPARAMETERS:
            raise ScamlError(f"hyperparameters given for unknown model {model!r}; models: {', '.join(HYPERPARAMETERS)}.")
        unknown = [p for p in params if p not in HYPERPARAMETERS[model] and p not in _EXTRA_ALLOWED[model]]
        if unknown:
            raise ScamlError(
                f"unknown hyperparameter(s) {unknown} for {model}; known: {', '.join(HYPERPARAMETERS[model])}"
                f"{', ' + ', '.join(_EXTRA_ALLOWED[model]) if _EXTRA_ALLOWED[model] else ''}."
            )
    resolved = {}
    for model in models:
        params = copy.deepcopy(HYPERPARAMETERS[model])
        params.update(overrides.get(model, {}))
        resolved[model] = params
    return resolved


#: Further estimator parameters accepted as overrides (not set by default).
_EXTRA_ALLOWED: dict[str, tuple[str, ...]] = {
    "lr": ("l1_ratio", "fit_intercept"),
    "rf": ("max_depth", "min_samples_split", "criterion", "bootstrap"),
    "xgb": ("min_child_weight", "reg_lambda", "reg_alpha", "gamma"),
    "mlp": ("activation", "solver", "tol", "learning_rate"),
}


def parse_param_overrides(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """Parse ``MODEL.PARAM=VALUE`` strings (the CLI's ``--param``) into an overrides dict.

    Values are read as Python literals when possible (``300``, ``0.1``,
    ``(128, 64)``, ``None``, ``'sqrt'``), else kept as strings.
    """
    import ast

    overrides: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        model, dot, param = key.partition(".")
        if not sep or not dot or not model or not param:
            raise ScamlError(f"--param {item!r} is not MODEL.PARAM=VALUE (e.g. rf.n_estimators=100).")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        overrides.setdefault(model.lower(), {})[param] = value
    return overrides


def make_model(name: str, params: dict[str, Any], *, class_weight: str | None, random_state: int) -> Any:
    """Build an unfitted estimator for ``name`` with ``params``.

    ``class_weight="balanced"`` is passed to LR and RF; XGBoost and the MLP get
    balanced sample weights in :func:`fit_predict_proba` instead.
    """
    params = dict(params)
    if name == "lr":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import MaxAbsScaler

        return make_pipeline(
            MaxAbsScaler(),
            LogisticRegression(class_weight=class_weight, random_state=random_state, **params),
        )
    if name == "rf":
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(class_weight=class_weight, random_state=random_state, **params)
    if name == "xgb":
        from xgboost import XGBClassifier

        return XGBClassifier(random_state=random_state, **params)
    if name == "mlp":
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        params["hidden_layer_sizes"] = tuple(params.get("hidden_layer_sizes", (100,)))
        return make_pipeline(StandardScaler(), MLPClassifier(random_state=random_state, **params))
    raise ScamlError(f"unknown model {name!r}; choose from {', '.join(HYPERPARAMETERS)}.")


def _as_input(name: str, X: Any) -> Any:
    if NEEDS_DENSE[name] and sp.issparse(X):
        return X.toarray()
    if name == "xgb" and sp.issparse(X):
        return sp.csr_matrix(X)
    return X


def fit_predict_proba(
    name: str,
    params: dict[str, Any],
    X_train: Any,
    y_train: np.ndarray,
    X_test: Any,
    n_classes: int,
    *,
    class_weight: str | None = None,
    random_state: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit model ``name`` on encoded labels and return test probabilities over all classes.

    Parameters
    ----------
    name, params
        Model and its hyperparameters.
    X_train, y_train
        Training matrix and integer labels in ``0 .. n_classes-1`` (any subset of them).
    X_test
        Test matrix.
    n_classes
        Size of the full class list; classes not seen in training get probability 0.
    class_weight
        ``None`` or ``"balanced"``.
    random_state
        Seed.

    Returns
    -------
    proba, info
        ``proba`` is ``n_test x n_classes`` float64 (rows sum to 1); ``info`` holds fit details
        (classes seen, iterations, convergence).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.utils.class_weight import compute_sample_weight

    seen = np.unique(y_train)
    if seen.size < 2:
        raise ScamlError(f"the training cells hold a single class ({seen.tolist()}); at least two are needed.")
    if class_weight not in (None, "balanced"):
        raise ScamlError(f"--class-weight {class_weight!r} is not supported; use 'balanced' or leave it out.")
    model = make_model(name, params, class_weight=class_weight if name in ("lr", "rf") else None,
                       random_state=random_state)
    fit_kwargs: dict[str, Any] = {}
    y_fit = y_train
    if name == "xgb":
        # XGBoost wants labels 0..k-1 over the classes it sees
        y_fit = np.searchsorted(seen, y_train)
    if class_weight == "balanced" and name in ("xgb", "mlp"):
        weights = compute_sample_weight("balanced", y_train)
        fit_kwargs["sample_weight" if name == "xgb" else "mlpclassifier__sample_weight"] = weights
    details: dict[str, Any] = {"classes_seen": seen.tolist()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(_as_input(name, X_train), y_fit, **fit_kwargs)
        proba_seen = model.predict_proba(_as_input(name, X_test))
    details["converged"] = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    estimator = model[-1] if hasattr(model, "steps") else model
    if hasattr(estimator, "n_iter_"):
        n_iter = np.asarray(estimator.n_iter_).ravel()
        details["n_iter"] = int(n_iter.max()) if n_iter.size else None
    model_classes = seen if name == "xgb" else np.asarray(estimator.classes_)
    proba = np.zeros((proba_seen.shape[0], n_classes), dtype=np.float64)
    proba[:, model_classes] = proba_seen
    return proba, details
