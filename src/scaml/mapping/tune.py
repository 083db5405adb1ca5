"""Hyperparameter tuning of a VAE reference (``scaml reference build --tune N``) with Optuna.

Each trial trains the reference model (``scvi``, ``trvae`` or ``scanvi``) with the trial's
hyperparameters on every reference batch but one, maps the held-out batch onto it as a query with
the same architecture surgery as ``scaml map`` (:func:`scaml.vae.load_query`, new batch weights
only), transfers the labels by the same weighted kNN (:func:`scaml.mapping.transfer.transfer_labels`,
``k = auto``, no Unknown call) and scores the result:

``objective = (1 - mixing_weight) * label score + mixing_weight * iLISI``

with the label score the accuracy (or macro F1, ``label_metric``) of the held-out batch's
transferred labels, and iLISI the scIB-scaled batch mixing (0 = none, 1 = perfect;
:mod:`scaml.metrics`) of the joint reference + held-out embedding over all batches.
``mixing_weight`` defaults to 0.4, scIB's weight of batch correction against bio conservation.

The held-out batch is the largest batch (ties: the first name in sorted order), or the one named
by ``holdout_batch``; it is the same in every trial so that trials are compared on the same task.
Tuning needs a label column and at least two batches (otherwise a :class:`~scaml.errors.ScamlError`
says so); Symphony has no such hyperparameters and is refused.

The search (Optuna's TPE sampler, seeded) covers ``n_latent``, the depth (``n_layers``) and width
(``n_hidden``) of the hidden layers, ``dropout_rate``, the learning rate ``lr`` and ``kl_weight``,
the KL weight the warm-up reaches at ``max_epochs`` (``kl_warmup_epochs = ceil(max_epochs /
kl_weight)``; scaml's default warm-up of 400 epochs is ``kl_weight = min(1, max_epochs / 400)``;
early stopping may end a training sooner, at a lower weight).
Options the user sets (e.g. ``n_latent=10``, ``hidden_layers=(128, 128)``) are fixed and not
searched. Trial 1 is scaml's defaults, so the best trial is never worse than the defaults on the
tuning objective. Every trial trains for the same ``max_epochs`` (given, or scaml's rule for the
whole reference) with the model's early stopping; the query trains for ``query_max_epochs``
(default half of it, scaml's rule for a query). No pruner: a trial's score needs the mapping,
which comes after the training.

After the search the final model is trained on the whole reference with the best parameters and
saved as the reference (:func:`scaml.mapping.build_reference`), with ``tuning/trials.csv`` (one
row per trial), ``tuning/trials.png`` and the tuning settings and result in ``run.json``
(``parameters.tuning``, ``data.tuning``) and ``reference.json`` (``tuning``).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .. import _utils
from .._utils import info
from ..errors import ScamlError
from ..io import check_obs_key, read_input, save_figure, write_csv

#: The searched hyperparameters, their ranges and scaml's defaults (``kl_weight``'s depends on max_epochs).
SEARCH_SPACE: dict[str, dict[str, Any]] = {
    "n_latent": {"type": "int", "low": 5, "high": 30, "default": 10},
    "n_layers": {"type": "int", "low": 1, "high": 3, "default": 2},
    "n_hidden": {"type": "categorical", "choices": [64, 128, 256], "default": 128},
    "dropout_rate": {"type": "float", "low": 0.0, "high": 0.3, "default": 0.05},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "default": 1e-3},
    "kl_weight": {"type": "float", "low": 0.1, "high": 1.0, "log": True, "default": None},
}

#: The option each searched parameter is set by (a fixed user option removes it from the search).
_FIXED_BY = {"n_latent": "n_latent", "n_layers": "hidden_layers", "n_hidden": "hidden_layers",
             "dropout_rate": "dropout_rate", "lr": "lr", "kl_weight": "kl_warmup_epochs"}

#: scaml's reference KL warm-up in epochs (scaml.vae's default).
DEFAULT_KL_WARMUP_EPOCHS = 400

#: Default weight of batch mixing (iLISI) in the objective; the label score gets the rest.
MIXING_WEIGHT = 0.4

LABEL_METRICS = ("accuracy", "macro_f1")
TUNING_DIR = "tuning"


@dataclass
class TuningResult:
    """What :func:`tune_reference` returns.

    Attributes
    ----------
    reference
        The reference directory (the final model, trained with the best parameters).
    trials
        One row per trial (the contents of ``tuning/trials.csv``).
    best_params
        The best trial's hyperparameters.
    best_objective
        Its objective.
    default_objective
        The objective of scaml's defaults (trial 1), or None when they were not tried.
    holdout_batch
        The reference batch every trial mapped as its query.
    """

    reference: Path
    trials: pd.DataFrame
    best_params: dict[str, Any]
    best_objective: float
    default_objective: float | None
    holdout_batch: str = ""


# ----------------------------------------------------------------------------- rules

def choose_holdout_batch(batches: Any, holdout_batch: str | None = None) -> str:
    """The batch held out as the query of every trial: ``holdout_batch``, else the largest one.

    Ties go to the first batch name in sorted order.

    Raises
    ------
    ScamlError
        Fewer than two batches, or ``holdout_batch`` is not one of them.
    """
    counts = pd.Series(np.asarray(batches).astype(str)).value_counts()
    if len(counts) < 2:
        raise ScamlError(
            f"tuning holds one reference batch out as a query, but the batch column has {len(counts)} batch(es) "
            f"({list(counts.index[:3])}); use a --batch-key with at least 2 batches, or build without --tune."
        )
    if holdout_batch is not None:
        if str(holdout_batch) not in counts.index:
            raise ScamlError(f"holdout_batch {holdout_batch!r} is not a batch of the reference; use one of "
                             f"{sorted(counts.index)[:10]}.")
        return str(holdout_batch)
    top = counts[counts == counts.max()]
    return sorted(top.index)[0]


def default_kl_weight(max_epochs: int) -> float:
    """The KL weight scaml's default warm-up (400 epochs) reaches after ``max_epochs`` epochs."""
    return min(1.0, max_epochs / DEFAULT_KL_WARMUP_EPOCHS)


def kl_warmup_epochs(kl_weight: float, max_epochs: int) -> int:
    """Warm-up epochs that reach ``kl_weight`` at the end of ``max_epochs`` epochs."""
    return int(math.ceil(max_epochs / float(kl_weight) - 1e-9))


def search_space(max_epochs: int, fixed: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The searched parameters (minus those ``fixed``), with the defaults for ``max_epochs`` filled in."""
    space = {}
    for name, spec in SEARCH_SPACE.items():
        if _FIXED_BY[name] in fixed:
            continue
        spec = dict(spec)
        if name == "kl_weight":
            spec["default"] = default_kl_weight(max_epochs)
            spec["low"] = min(spec["low"], spec["default"])
        space[name] = spec
    return space


def model_options(params: dict[str, Any], max_epochs: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's parameters as the model's and training's options (``hidden_layers``, ``kl_warmup_epochs``...)."""
    model: dict[str, Any] = {}
    train: dict[str, Any] = {}
    if "n_latent" in params:
        model["n_latent"] = int(params["n_latent"])
    if "n_layers" in params or "n_hidden" in params:
        depth = int(params.get("n_layers", SEARCH_SPACE["n_layers"]["default"]))
        width = int(params.get("n_hidden", SEARCH_SPACE["n_hidden"]["default"]))
        model["hidden_layers"] = (width,) * depth
    if "dropout_rate" in params:
        model["dropout_rate"] = float(params["dropout_rate"])
    if "lr" in params:
        train["lr"] = float(params["lr"])
    if "kl_weight" in params:
        train["kl_warmup_epochs"] = kl_warmup_epochs(params["kl_weight"], max_epochs)
    return model, train


def _suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec["type"] == "int":
            params[name] = trial.suggest_int(name, spec["low"], spec["high"])
        elif spec["type"] == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=spec.get("log", False))
    return params


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence scaml's info messages inside a trial (warnings still print)."""
    before = _utils.is_quiet()
    _utils.set_quiet(True)
    try:
        yield
    finally:
        _utils.set_quiet(before)


def batch_mixing(ref_latent: np.ndarray, query_latent: np.ndarray, batches: np.ndarray) -> float:
    """scIB-scaled iLISI of the joint reference + query embedding over ``batches`` (0 = none, 1 = perfect)."""
    from ..metrics import compute_neighbors, ilisi_scaled, lisi_from_neighbors

    joint = np.vstack([ref_latent, query_latent]).astype(np.float32)
    codes, categories = pd.factorize(np.asarray(batches).astype(str))
    k = min(90, joint.shape[0] - 1)
    lisi = lisi_from_neighbors(compute_neighbors(joint, k=k), codes, perplexity=min(30, k / 3))
    return float(ilisi_scaled(lisi, len(categories)))


# ----------------------------------------------------------------------------- one trial

@dataclass
class _Task:
    """The data and fixed settings every trial shares."""

    method: Any
    train: ad.AnnData
    query: ad.AnnData
    batch_key: str
    label_key: str
    model_options: dict[str, Any]
    train_options: dict[str, Any]
    query_options: dict[str, Any]
    max_epochs: int
    query_max_epochs: int
    mixing_weight: float
    label_metric: str
    random_state: int


def run_trial(task: _Task, params: dict[str, Any]) -> dict[str, Any]:
    """Train on the tuning reference with ``params``, map the held-out batch, score it.

    Returns
    -------
    dict
        ``objective``, ``accuracy``, ``macro_f1``, ``ilisi``, ``epochs`` (reference epochs run).
    """
    from ..vae import load_query
    from .scoring import label_metrics
    from .transfer import transfer_labels

    extra_model, extra_train = model_options(params, task.max_epochs)
    model_kwargs = {**task.model_options, **extra_model, "random_state": task.random_state}
    if task.method.needs_labels:
        model_kwargs["label_key"] = task.label_key
    cls = task.method._model_class()
    with _quiet():
        model = cls(task.train, task.batch_key, **model_kwargs)
        model.train(**{**task.train_options, **extra_train, "max_epochs": task.max_epochs, "verbose": False})
        ref_latent = model.get_latent()
        qmodel = load_query(model, task.query, query_batch_key=task.batch_key)
        qmodel.train(**{**task.query_options, "max_epochs": task.query_max_epochs, "verbose": False})
        query_latent = qmodel.get_latent(task.query)
    for what, latent in (("reference", ref_latent), ("query", query_latent)):
        if not np.isfinite(latent).all():
            raise ScamlError(f"the trial's {what} embedding holds non-finite values (training diverged)")
    labels = task.train.obs[task.label_key].to_numpy(dtype=object)
    calls = transfer_labels(ref_latent, labels, query_latent, n_neighbors="auto", threshold=1.0)
    true = task.query.obs[task.label_key]
    known = true.notna().to_numpy()
    scores = label_metrics(true.astype(str).to_numpy()[known], calls["label"].astype(str).to_numpy()[known])
    batches = np.concatenate([task.train.obs[task.batch_key].astype(str).to_numpy(),
                              task.query.obs[task.batch_key].astype(str).to_numpy()])
    ilisi = batch_mixing(ref_latent, query_latent, batches)
    label_score = float(scores[task.label_metric])
    objective = (1.0 - task.mixing_weight) * label_score + task.mixing_weight * ilisi
    return {"objective": round(float(objective), 6), "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
            "ilisi": round(ilisi, 6), "epochs": len(model.history.get("epoch_seconds") or [])}


# ----------------------------------------------------------------------------- the search

def _check_request(method_name: str, label_key: str | None, n_trials: int, timeout: float | None,
                   mixing_weight: float, label_metric: str) -> Any:
    from .methods import METHODS, VAEMethod, get_method

    method = get_method(method_name)
    if not isinstance(method, VAEMethod):
        raise ScamlError(
            f"method {method.name!r} has no hyperparameters to tune (it trains no network); --tune applies to "
            f"the VAE methods ({', '.join(n for n, m in METHODS.items() if isinstance(m, VAEMethod))}): drop --tune, "
            "or use --method scvi."
        )
    if isinstance(n_trials, bool) or int(n_trials) != n_trials or int(n_trials) < 1:
        raise ScamlError(f"the number of tuning trials must be a whole number >= 1; got {n_trials} (--tune N).")
    if timeout is not None and not float(timeout) > 0:
        raise ScamlError(f"the tuning timeout must be a positive number of seconds; got {timeout} (--tune-timeout).")
    if label_key is None:
        raise ScamlError(
            "tuning scores each trial by the label-transfer accuracy of a held-out reference batch, so it needs "
            "the reference labels: pass --label-key KEY (label_key=...)."
        )
    if not 0.0 <= float(mixing_weight) <= 1.0:
        raise ScamlError(f"mixing_weight must be between 0 and 1; got {mixing_weight}.")
    if label_metric not in LABEL_METRICS:
        raise ScamlError(f"label_metric must be one of {', '.join(LABEL_METRICS)}; got {label_metric!r}.")
    return method


def _check_outdir(out: str | os.PathLike, overwrite: bool) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ScamlError(f"output {str(path)!r} exists and is a file; choose a directory path for --out.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ScamlError(f"output directory {str(path)!r} already exists and is not empty; pass --overwrite "
                         "(overwrite=True) to replace it, or choose another directory.")


def _task(method: Any, adata: ad.AnnData, batch_key: str, label_key: str, options: dict[str, Any],
          holdout: str, n_hvg: int | None, max_epochs: int, query_max_epochs: int, mixing_weight: float,
          label_metric: str, random_state: int) -> _Task:
    """Read the modelled matrix once, split off the held-out batch, select the HVGs of the rest."""
    from ..preprocess import highly_variable_genes
    from .methods import _hvg_input

    with _quiet():
        prepared = method.prepare_reference(adata, batch_key, label_key, options)
    cells = prepared.adata
    options = dict(prepared.options)
    options.pop("layer", None)
    model_opts, train_opts = method._split(options)
    train_opts.pop("max_epochs", None)
    is_holdout = cells.obs[batch_key].astype(str).to_numpy() == holdout
    train, query = cells[~is_holdout].copy(), cells[is_holdout].copy()
    if not query.obs[label_key].notna().any():
        raise ScamlError(f"the held-out batch {holdout!r} has no labelled cells in obs[{label_key!r}]; choose "
                         "another held-out batch (holdout_batch=...).")
    if n_hvg is not None and n_hvg < train.n_vars:
        with _quiet():
            values = _hvg_input(train.X, model_opts["gene_likelihood"])
            mask = highly_variable_genes(values, int(n_hvg), batch=train.obs[batch_key].to_numpy(),
                                         var_names=train.var_names)
        train, query = train[:, mask].copy(), query[:, mask].copy()
    query_opts = {k: v for k, v in train_opts.items() if k in ("n_threads", "batch_size")}
    return _Task(method, train, query, batch_key, label_key, model_opts, train_opts, query_opts, max_epochs,
                 query_max_epochs, float(mixing_weight), label_metric, random_state)


def _format_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def search(task: _Task, space: dict[str, dict[str, Any]], n_trials: int, *, timeout: float | None = None,
           include_defaults: bool = True, seed: int = 0) -> pd.DataFrame:
    """Run the Optuna search; one row per trial (parameters, objective and its parts, seconds, state).

    Raises
    ------
    ScamlError
        Every trial failed (the first error is named).
    """
    import optuna

    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    best: list[float] = []

    def objective(trial: Any) -> float:
        params = _suggest(trial, space)
        start = time.perf_counter()
        row: dict[str, Any] = {"trial": trial.number + 1, "state": "COMPLETE", **params}
        try:
            row.update(run_trial(task, params))
        except (ScamlError, RuntimeError, ValueError, FloatingPointError) as exc:
            row.update({"state": "FAIL", "error": str(exc).splitlines()[0][:300]})
            errors.append(row["error"])
            raise
        finally:
            row["seconds"] = round(time.perf_counter() - start, 2)
            rows.append(row)
            if row["state"] == "COMPLETE":
                best.append(max([row["objective"], *best[-1:]]))
                how = (f"objective {row['objective']:.4f} ({task.label_metric} "
                       f"{row[task.label_metric]:.3f}, iLISI {row['ilisi']:.3f})")
            else:
                how = f"failed: {row['error']}"
            info(f"tuning trial {trial.number + 1}/{n_trials}: {how} in {row['seconds']:.1f} s; best so far "
                 f"{best[-1] if best else float('nan'):.4f}; {_format_params(params)}")
        return row["objective"]

    n_startup = min(10, max(1, n_trials // 2))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize", sampler=sampler)
        if include_defaults:
            study.enqueue_trial({name: spec["default"] for name, spec in space.items()})
        study.optimize(objective, n_trials=int(n_trials), timeout=timeout,
                       catch=(ScamlError, RuntimeError, ValueError, FloatingPointError))
    finally:
        optuna.logging.set_verbosity(verbosity)
    table = pd.DataFrame(rows)
    if not (table["state"] == "COMPLETE").any():
        raise ScamlError(f"every tuning trial failed; the first error: {errors[0] if errors else 'unknown'}")
    for column in ("objective", "accuracy", "macro_f1", "ilisi", "epochs", "error"):
        if column not in table.columns:
            table[column] = np.nan
    table["default"] = include_defaults & (table["trial"] == 1)
    complete = table["state"] == "COMPLETE"
    table["best"] = False
    table.loc[table.loc[complete, "objective"].idxmax(), "best"] = True
    if "kl_weight" in space:
        table["kl_warmup_epochs"] = [kl_warmup_epochs(w, task.max_epochs) for w in table["kl_weight"]]
    first = ["trial", "state", "objective", "accuracy", "macro_f1", "ilisi", "seconds", "epochs"]
    rest = [c for c in table.columns if c not in first and c not in ("default", "best", "error")]
    return table[first + rest + ["default", "best", "error"]].reset_index(drop=True)


def plot_trials(table: pd.DataFrame, path: str | os.PathLike, *, title: str = "", label_metric: str = "accuracy") -> Path:
    """The objective of every trial and the best so far (left), and the objective's parts (right)."""
    import matplotlib.pyplot as plt

    complete = table[table["state"] == "COMPLETE"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    trial = table["trial"].to_numpy()
    values = table["objective"].to_numpy(dtype=float)
    best = pd.Series(values).cummax().to_numpy()
    left.plot(complete["trial"], complete["objective"], "o", color="#4477aa", label="trial")
    left.step(trial, best, where="post", color="#cc6677", lw=2, label="best so far")
    failed = table[table["state"] != "COMPLETE"]
    if len(failed):
        left.plot(failed["trial"], np.full(len(failed), np.nanmin(values)), "x", color="grey", label="failed")
    if bool(table["default"].any()):
        row = table[table["default"]].iloc[0]
        left.axhline(row["objective"], color="grey", ls=":", lw=1.2, label="defaults (trial 1)")
    left.set_xlabel("trial")
    left.set_ylabel("objective (higher is better)")
    left.set_title("objective per trial")
    left.legend(loc="best", fontsize=9)
    label = "accuracy" if label_metric == "accuracy" else "macro F1"
    right.plot(complete["trial"], complete[label_metric], "o", color="#228833", label=f"label transfer {label}")
    right.plot(complete["trial"], complete["ilisi"], "s", color="#ccbb44", label="batch mixing (iLISI)")
    right.set_xlabel("trial")
    right.set_ylabel("score (0-1)")
    right.set_ylim(-0.02, 1.02)
    right.set_title("parts of the objective")
    right.legend(loc="best", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- the API

def tune_reference(
    adata: ad.AnnData | str | os.PathLike,
    method: str = "scvi",
    batch_key: str = "batch",
    label_key: str | None = None,
    out: str | os.PathLike = "scaml-reference",
    n_trials: int = 20,
    *,
    timeout: float | None = None,
    holdout_batch: str | None = None,
    mixing_weight: float = MIXING_WEIGHT,
    label_metric: str = "accuracy",
    query_max_epochs: int | None = None,
    include_defaults: bool = True,
    overwrite: bool = False,
    random_state: int = 0,
    max_epochs: int | None = None,
    n_hvg: int | None = 2000,
    unlabeled_category: str | None = None,
    train_params: dict | None = None,
    expression_classifier: bool | None = None,
    **model_params: Any,
) -> TuningResult:
    """Tune a VAE reference's hyperparameters, then build the reference with the best ones.

    See the module docstring for the trial, the objective and the search space.

    Parameters
    ----------
    adata, method, batch_key, label_key, out, overwrite, n_hvg, unlabeled_category, expression_classifier
        As in :func:`scaml.mapping.build_reference` (``method``: a VAE method, e.g. scvi, trvae or scanvi; ``label_key``
        is required).
    n_trials
        Trials of the search (at least 1; trial 1 is scaml's defaults when ``include_defaults``).
    timeout
        Stop starting new trials after this many seconds (the running one finishes).
    holdout_batch
        The reference batch each trial maps as its query (default: the largest batch).
    mixing_weight
        Weight of iLISI in the objective; the label score gets ``1 - mixing_weight``.
    label_metric
        The label score: ``"accuracy"`` or ``"macro_f1"`` of the held-out batch.
    query_max_epochs
        Query training epochs of each trial (default ``max(1, max_epochs // 2)``).
    include_defaults
        Try scaml's defaults first (trial 1).
    random_state
        Seed of the sampler, of every trial's models and of the final model.
    max_epochs
        Reference training epochs of every trial and of the final model (default: scaml's rule
        for the whole reference).
    train_params, **model_params
        Fixed options, as in :func:`scaml.mapping.build_reference`; a searched parameter the user
        sets (``n_latent``, ``hidden_layers``, ``dropout_rate``, ``lr``, ``kl_warmup_epochs``) is
        not searched.

    Returns
    -------
    TuningResult
        The reference directory, the trial table, the best parameters and objectives.

    Raises
    ------
    ScamlError
        Symphony, no label key, fewer than two batches, ``n_trials < 1``, an existing output
        directory, or every trial failed.
    """
    import optuna

    from ..vae.model import default_max_epochs
    from .api import build_reference

    chosen = _check_request(method, label_key, n_trials, timeout, mixing_weight, label_metric)
    _check_outdir(out, overwrite)
    started = time.perf_counter()
    source = adata
    if not isinstance(adata, ad.AnnData):
        info(f"reading the reference {adata}")
        adata = read_input(str(adata))
    check_obs_key(adata, batch_key, flag="--batch-key")
    check_obs_key(adata, label_key, flag="--label-key")
    holdout = choose_holdout_batch(adata.obs[batch_key], holdout_batch)
    train_params = dict(train_params or {})
    options = {**model_params, **train_params,
               **({"unlabeled_category": unlabeled_category} if unlabeled_category is not None else {})}
    epochs = int(max_epochs) if max_epochs is not None else default_max_epochs(adata.n_obs, 400)
    if epochs < 1:
        raise ScamlError(f"max_epochs must be at least 1; got {max_epochs}.")
    query_epochs = int(query_max_epochs) if query_max_epochs is not None else max(1, epochs // 2)
    fixed = {k for k, v in options.items() if v is not None}
    space = search_space(epochs, fixed)
    if not space:
        raise ScamlError("every tuned hyperparameter is fixed by an option (n_latent, hidden_layers, dropout_rate, "
                         "lr, kl_warmup_epochs); drop one of them, or build without --tune.")
    task = _task(chosen, adata, batch_key, label_key, options, holdout, n_hvg, epochs, query_epochs,
                 mixing_weight, label_metric, random_state)
    info(f"tuning a {chosen.name} reference: {n_trials} trial(s), each trained on {task.train.n_obs} cells of "
         f"{task.train.obs[batch_key].nunique()} batch(es) and scored by mapping the held-out batch {holdout!r} "
         f"({task.query.n_obs} cells); {epochs} reference / {query_epochs} query epochs; searching "
         f"{', '.join(space)}")
    table = search(task, space, int(n_trials), timeout=timeout, include_defaults=include_defaults, seed=random_state)
    search_seconds = round(time.perf_counter() - started, 2)
    best_row = table[table["best"]].iloc[0]
    best_params = {name: _plain(best_row[name]) for name in space}
    default_rows = table[table["default"] & (table["state"] == "COMPLETE")]
    default_objective = float(default_rows["objective"].iloc[0]) if len(default_rows) else None
    extra_model, extra_train = model_options(best_params, epochs)
    info(f"best tuning trial {int(best_row['trial'])}: objective {best_row['objective']:.4f}"
         + (f" (defaults {default_objective:.4f})" if default_objective is not None else "")
         + f"; {_format_params(best_params)}. Training the final model on the whole reference.")
    settings = {
        "n_trials": int(n_trials), "timeout_seconds": timeout, "holdout_batch": holdout,
        "n_tuning_cells": int(task.train.n_obs), "n_holdout_cells": int(task.query.n_obs),
        "objective": f"(1 - {mixing_weight:g}) * {label_metric} + {mixing_weight:g} * iLISI of the held-out batch "
                     "mapped onto the other batches (weighted kNN, k = auto, no Unknown call)",
        "mixing_weight": float(mixing_weight), "label_metric": label_metric, "max_epochs": epochs,
        "query_max_epochs": query_epochs, "search_space": space, "fixed_options": sorted(fixed),
        "sampler": f"optuna TPESampler(seed={random_state}, n_startup_trials={min(10, max(1, int(n_trials) // 2))})",
        "include_defaults": bool(include_defaults), "seed": int(random_state), "optuna_version": optuna.__version__,
    }
    result = {
        "best_trial": int(best_row["trial"]), "best_objective": float(best_row["objective"]),
        "best_params": best_params, "best_options": {**extra_model, **extra_train},
        "default_objective": default_objective,
        "n_complete": int((table["state"] == "COMPLETE").sum()), "n_failed": int((table["state"] != "COMPLETE").sum()),
        "search_seconds": search_seconds, "trials_file": f"{TUNING_DIR}/trials.csv",
    }
    model_kwargs = {**model_params, **extra_model}
    reference = build_reference(
        source, chosen.name, batch_key, label_key, out, overwrite=overwrite, random_state=random_state,
        max_epochs=epochs, n_hvg=n_hvg, unlabeled_category=unlabeled_category,
        train_params={**train_params, **extra_train}, tuning={"settings": settings, "result": result},
        expression_classifier=expression_classifier, **model_kwargs,
    )
    write_csv(table, reference / TUNING_DIR / "trials.csv", index=False)
    plot_trials(table, reference / TUNING_DIR / "trials.png", label_metric=label_metric,
                title=f"{chosen.name} tuning: held-out batch {holdout!r}, objective = "
                      f"{1 - mixing_weight:g} x {label_metric} + {mixing_weight:g} x iLISI")
    info(f"tuning table and plot written to {reference / TUNING_DIR}")
    return TuningResult(reference, table, best_params, float(best_row["objective"]), default_objective, holdout)


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python number (for JSON)."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


__all__ = ["SEARCH_SPACE", "TuningResult", "choose_holdout_batch", "plot_trials", "search", "tune_reference"]
