"""Figures of a classifier benchmark: model comparison, confusion matrices, directions / folds.

Every figure is drawn inside :func:`scaml.style.figure_style` (the :func:`~scaml.style.styled`
decorator); matplotlib's backend and global settings are left as they are.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ScamlError
from ..io import save_figure
from ..style import styled

#: Colour-blind safe palette (Okabe & Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")

#: Metrics shown in the bar charts, with their axis labels.
BAR_METRICS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "F1 macro",
    "f1_weighted": "F1 weighted",
    "roc_auc_macro_ovr": "ROC-AUC macro OVR",
}

_MODEL_LABELS = {"lr": "LR", "rf": "RF", "xgb": "XGBoost", "mlp": "MLP"}


def _style(ax: Any) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(axis="y", color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)


def _val(x: Any) -> float:
    return float("nan") if x is None else float(x)


@styled
def plot_model_compare(
    summary: dict[str, dict[str, Any]],
    path: str | os.PathLike,
    *,
    title: str = "",
    errors: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Grouped bars of accuracy, balanced accuracy, F1 and ROC-AUC per model.

    Parameters
    ----------
    summary
        ``{model: {metric: value}}`` (a single-run summary_metrics.json, or CV means).
    path
        PNG path.
    title
        Figure title.
    errors
        Optional ``{model: {metric: sd}}`` drawn as error bars.
    """
    import matplotlib.pyplot as plt

    models = list(summary)
    metrics = list(BAR_METRICS)
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.6 * len(models) + 2.5), 4.2))
    x = np.arange(len(models))
    for j, metric in enumerate(metrics):
        values = np.array([_val(summary[m].get(metric)) for m in models])
        err = None
        if errors is not None:
            err = np.array([_val(errors.get(m, {}).get(metric)) for m in models])
            err = np.nan_to_num(err)
        pos = x - 0.4 + width * (j + 0.5)
        bars = ax.bar(pos, np.nan_to_num(values), width * 0.92, yerr=err, capsize=2 if err is not None else 0,
                      color=PALETTE[j % len(PALETTE)], label=BAR_METRICS[metric], edgecolor="white", linewidth=0.5)
        offsets = err if err is not None else np.zeros(len(models))
        for bar, value, off in zip(bars, values, offsets, strict=True):
            text = "n/a" if np.isnan(value) else f"{value:.2f}"
            ax.text(bar.get_x() + bar.get_width() / 2, (0 if np.isnan(value) else value) + off + 0.015, text,
                    ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, [_MODEL_LABELS.get(m, m) for m in models], fontsize=10)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score on the test split")
    ax.set_xlabel("model")
    _style(ax)
    ax.legend(ncol=3, fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_confusion(
    table: pd.DataFrame, path: str | os.PathLike, *, title: str = "", unseen: list[str] | None = None
) -> Path:
    """Row-normalised confusion matrix heatmap (rows true, columns predicted).

    Rows of classes absent from the test split are shown grey and marked ``n=0``;
    classes in ``unseen`` (absent from training) are marked with an asterisk.
    """
    import matplotlib.pyplot as plt

    counts = table.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)
    n = len(table)
    side = min(max(4.0, 0.55 * n + 2.5), 16.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    cmap = plt.get_cmap("Blues").with_extremes(bad="#eeeeee")
    image = ax.imshow(np.ma.masked_invalid(frac), cmap=cmap, vmin=0, vmax=1, aspect="equal")
    unseen = set(unseen or [])
    rows = [f"{c} (n={int(t)}){' *' if c in unseen else ''}" for c, t in zip(table.index, totals.ravel(), strict=True)]
    ax.set_xticks(np.arange(n), [str(c) for c in table.columns], rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(np.arange(n), rows)
    fontsize = 9 if n <= 10 else 7 if n <= 20 else 5
    ax.tick_params(labelsize=fontsize + 1)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if np.isnan(frac[i, j]) or counts[i, j] == 0:
                    continue
                value = frac[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if value > 0.6 else "#222222")
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("fraction of the true class")
    if title:
        ax.set_title(title, fontsize=11)
    if unseen:
        ax.annotate("* class absent from the training split (always an error)", xy=(0, 0), xycoords="figure fraction",
                    xytext=(6, 4), textcoords="offset points", fontsize=8, color="#444444")
    fig.tight_layout()
    return save_figure(fig, path)


@styled
def plot_run_compare(summary: dict[str, Any], path: str | os.PathLike, *, metrics: tuple[str, ...] = ("accuracy", "f1_macro")) -> Path:
    """Bars per model and direction (``--reverse``) or fold (``--cv``), one panel per metric.

    For cross-validation the mean over folds is drawn as a black line with its standard deviation.
    """
    import matplotlib.pyplot as plt

    runs = list(summary["runs"])
    models = list(next(iter(summary["runs"].values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(5.0, 1.3 * len(models) + 0.35 * len(runs) * len(models) + 1.5) * len(metrics) * 0.75, 4.3),
                             squeeze=False)
    width = 0.8 / len(runs)
    x = np.arange(len(models))
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, run in enumerate(runs):
            values = np.array([_val(summary["runs"][run].get(m, {}).get(metric)) for m in models])
            bars = ax.bar(x - 0.4 + width * (j + 0.5), np.nan_to_num(values), width * 0.92, color=PALETTE[j % len(PALETTE)],
                          label=run.replace("holdout_", "held out: ").replace("_to_", " \u2192 "), edgecolor="white",
                          linewidth=0.5)
            if len(runs) * len(models) <= 24:
                for bar, value in zip(bars, values, strict=True):
                    if not np.isnan(value):
                        ax.text(bar.get_x() + bar.get_width() / 2, max(value - 0.02, 0.02), f"{value:.3f}",
                                ha="center", va="top", rotation=90, fontsize=7, color="white")
        if summary.get("mode") == "cv":
            means = np.array([_val(summary["mean"][m].get(metric)) for m in models])
            sds = np.nan_to_num([_val(summary["sd"][m].get(metric)) for m in models])
            ax.hlines(means, x - 0.42, x + 0.42, color="black", lw=1.6, label="mean over folds (\u00b1 sd)", zorder=5)
            ax.errorbar(x + 0.42, means, yerr=sds, fmt="none", ecolor="black", capsize=3, lw=1.2, zorder=5)
        ax.set_xticks(x, [_MODEL_LABELS.get(m, m) for m in models])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(BAR_METRICS.get(metric, metric))
        ax.set_xlabel("model")
        ax.set_title(BAR_METRICS.get(metric, metric), fontsize=11)
        _style(ax)
    handles, labels = axes[0][0].get_legend_handles_labels()
    what = "fold (held-out level)" if summary.get("mode") == "cv" else "direction (train \u2192 test)"
    fig.legend(handles, labels, title=what, loc="lower center", ncol=min(len(labels), 4), fontsize=8,
               title_fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.1 + 0.04 * ((len(labels) - 1) // 4), 1, 1))
    return save_figure(fig, path)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _plot_single(run_dir: Path, outdir: Path, models: list[str] | None, title: str) -> list[Path]:
    summary_path = run_dir / "summary_metrics.json"
    if not summary_path.exists():
        raise ScamlError(f"{str(summary_path)!r} not found; --results must be a directory written by 'scaml train'.")
    summary = _read_json(summary_path)
    details_path = run_dir / "run_details.json"
    if not title and details_path.exists():
        details = _read_json(details_path)
        if details.get("train_levels"):
            title = (f"train {details.get('split_key', '')} = {'+'.join(details['train_levels'])} \u2192 "
                     f"test {'+'.join(details['test_levels'])}").replace("train  = ", "train ")
    chosen = list(summary) if not models else [m for m in models if m in summary]
    missing = [m for m in (models or []) if m not in summary]
    if missing:
        raise ScamlError(
            f"model(s) {missing} are not in {str(summary_path)!r}; it holds: {', '.join(summary)}."
        )
    outdir.mkdir(parents=True, exist_ok=True)
    paths = [plot_model_compare({m: summary[m] for m in chosen}, outdir / "model_compare.png", title=title)]
    for model in chosen:
        table = pd.read_csv(run_dir / model / "confusion_matrix.csv", index_col=0)
        acc = summary[model].get("accuracy")
        sub = f"{_MODEL_LABELS.get(model, model)} confusion matrix" + (f" (accuracy {acc:.3f})" if acc is not None else "")
        paths.append(plot_confusion(table, outdir / f"{model}_confusion_matrix.png",
                                    title=f"{title}\n{sub}" if title else sub,
                                    unseen=summary[model].get("test_classes_unseen_in_training")))
    return paths


def plot_results(
    results: str | os.PathLike, outdir: str | os.PathLike | None = None, *, models: list[str] | None = None
) -> list[Path]:
    """Draw every figure of a ``scaml train`` output directory.

    Parameters
    ----------
    results
        The directory ``scaml train`` wrote.
    outdir
        Where to put the PNGs (default ``results/plots``). Only the files named
        below are (re)written; other files there are left alone.
    models
        Models to draw (default: all in the results).

    Returns
    -------
    list of Path
        ``model_compare.png`` and ``<model>_confusion_matrix.png`` (for a single
        split); for ``--reverse`` / ``--cv`` results, ``direction_compare.png`` or
        ``fold_compare.png``, ``model_compare.png`` (mean and sd over the runs)
        and one subfolder per direction or fold with its own figures.
    """
    results = Path(results)
    if not (results / "summary_metrics.json").exists():
        raise ScamlError(
            f"{str(results)!r} holds no summary_metrics.json; --results must be a directory written by 'scaml train'."
        )
    outdir = Path(outdir) if outdir is not None else results / "plots"
    summary = _read_json(results / "summary_metrics.json")
    if "runs" not in summary or "mode" not in summary:
        return _plot_single(results, outdir, models, "")
    outdir.mkdir(parents=True, exist_ok=True)
    mode = summary["mode"]
    runs = list(summary["runs"])
    chosen = models or list(next(iter(summary["runs"].values())))
    missing = [m for m in chosen if m not in summary["mean"]]
    if missing:
        raise ScamlError(f"model(s) {missing} are not in the results; they hold: {', '.join(summary['mean'])}.")
    sub = {"mode": mode, "runs": {r: {m: summary["runs"][r][m] for m in chosen} for r in runs},
           "mean": {m: summary["mean"][m] for m in chosen}, "sd": {m: summary["sd"][m] for m in chosen}}
    name = "fold_compare.png" if mode == "cv" else "direction_compare.png"
    paths = [plot_run_compare(sub, outdir / name)]
    label = "mean \u00b1 sd over folds" if mode == "cv" else "mean \u00b1 sd over both directions"
    paths.append(plot_model_compare(sub["mean"], outdir / "model_compare.png", title=label, errors=sub["sd"]))
    for run in runs:
        title = run.replace("holdout_", "held out: ").replace("_to_", " \u2192 ")
        paths += _plot_single(results / run, outdir / run, chosen, title)
    return paths
