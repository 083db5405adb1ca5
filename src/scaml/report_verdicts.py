"""The first screen of a report: one verdict per run, read from the run's own output files.

Each scaml command has one small builder here (see :data:`VERDICTS`) that reads only the files of its
run directory (``metrics.csv``, ``metrics.json``, ``summary_metrics.json``, ``run.json``, ...) and
answers the question an analyst opens the report with: did the correction work, which model
generalises, how well did the labels transfer. Numbers are never recomputed for the page: every number
of a verdict is a :class:`Number` that names the file and the key it was read from, and the page
writes both next to it (``data-src``, ``data-key``), so a test can read them back. Where a file or a
number is missing the verdict says so instead of inventing one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["VERDICTS", "Line", "Number", "Verdict", "build_verdict", "format_number", "resolve_key"]


# ----------------------------------------------------------------------------- the parts of a verdict


def format_number(value: Any, style: str = "score") -> str:
    """Format a verdict number the one way the page shows it.

    Parameters
    ----------
    value
        The number as read from the file (``None`` or NaN shows as "n/a").
    style
        ``"lisi"`` (2 decimals), ``"score"`` (3 decimals), ``"percent"`` (a fraction shown as a
        percentage with 1 decimal), ``"int"`` (thousands separated), ``"loss"`` (4 significant
        digits) or ``"text"`` (as it is).

    Returns
    -------
    str
        The text shown on the page.
    """
    if style == "text":
        return str(value)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if style == "int":
        return f"{int(value):,}"
    if style == "lisi":
        return f"{value:.2f}"
    if style == "percent":
        return f"{100.0 * value:.1f}%"
    if style == "loss":
        return f"{value:.4g}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Number:
    """One number of a verdict and where it was read from.

    Attributes
    ----------
    value
        The value as stored in the file.
    source
        The file, relative to the run directory (``metrics.csv``, ``run.json``, ...).
    key
        Where in the file: a JSON pointer (``/runs/a_to_b/lr/f1_macro``) for JSON files; for CSV
        files ``/<value of the first column>/<column>``, or ``/<row number>/<column>`` when
        ``by_row`` is set.
    style
        How it is formatted (see :func:`format_number`).
    """

    value: Any
    source: str
    key: str
    style: str = "score"

    @property
    def text(self) -> str:
        return format_number(self.value, self.style)


@dataclass
class Line:
    """One line of a verdict: a short label ("batches mixed") and parts (text and numbers)."""

    label: str
    parts: list[str | Number] = field(default_factory=list)
    missing: bool = False  # the line says that something could not be read


@dataclass
class Verdict:
    """The verdict of one run directory.

    Attributes
    ----------
    command
        The scaml command of the run (``run.json``'s ``command``).
    title
        A short name of the step ("Integration", "Classifiers", ...).
    lines
        What the first screen says about the run.
    figures
        The key figures, paths relative to the run directory, that exist.
    """

    command: str
    title: str
    lines: list[Line] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def _pointer(*parts: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _unpointer(key: str) -> list[str]:
    if not key.startswith("/"):
        raise KeyError(key)
    return [p.replace("~1", "/").replace("~0", "~") for p in key[1:].split("/")]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_csv(path: Path) -> list[dict[str, str]] | None:
    try:
        with path.open(newline="") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _csv_value(text: str | None) -> Any:
    """A CSV cell as a number where it is one (empty -> None), else the text."""
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def resolve_key(path: str | Path, key: str) -> Any:
    """Read the value that a :class:`Number`'s ``source`` and ``key`` point at.

    Parameters
    ----------
    path
        The file (``.json`` or ``.csv``).
    key
        A JSON pointer, or ``/<row>/<column>`` for CSV files, where ``<row>`` is the value of the
        first column or ``#<n>`` for the n-th data row (0-based).

    Returns
    -------
    Any
        The value (CSV cells converted to int or float where they are numbers).

    Raises
    ------
    KeyError
        If the file or the key does not exist.
    """
    path = Path(path)
    parts = _unpointer(key)
    if path.suffix.lower() == ".csv":
        rows = _read_csv(path)
        if rows is None or len(parts) != 2:
            raise KeyError(key)
        row_key, column = parts
        if row_key.startswith("#"):
            row = rows[int(row_key[1:])]
        else:
            first = next(iter(rows[0])) if rows else None
            matches = [r for r in rows if r.get(first) == row_key]
            if len(matches) != 1:
                raise KeyError(key)
            row = matches[0]
        if column not in row:
            raise KeyError(key)
        return _csv_value(row[column])
    value = _read_json(path)
    for part in parts:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(key)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _json_number(data: Any, source: str, *keys: Any, style: str = "score") -> Number | None:
    """The number at ``keys`` of a parsed JSON file, or None when it is absent or not a number."""
    value = data
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    if not _is_number(value):
        return None
    return Number(value, source, _pointer(*keys), style)


def _csv_number(row: dict[str, str], source: str, row_key: str, column: str, style: str = "score") -> Number | None:
    value = _csv_value(row.get(column))
    if not _is_number(value):
        return None
    return Number(value, source, _pointer(row_key, column), style)


def _missing(label: str, what: str) -> Line:
    return Line(label, [what], missing=True)


def _figures(outdir: Path, names: Sequence[str]) -> list[str]:
    return [name for name in names if (outdir / name).is_file()]


# ----------------------------------------------------------------------------- integrate / evaluate


def _embedding_rows(outdir: Path) -> tuple[list[dict[str, str]], str] | None:
    rows = _read_csv(outdir / "metrics.csv")
    if not rows or "embedding" not in rows[0]:
        return None
    return rows, "embedding"


def _lisi_lines(before: dict[str, str], after: dict[str, str], *, label_given: bool) -> list[Line]:
    """'batches mixed: iLISI a -> b of n' and 'cell types kept: cLISI a -> b' from two metrics.csv rows."""
    src = "metrics.csv"
    b_name, a_name = before["embedding"], after["embedding"]
    lines = []
    i_before = _csv_number(before, src, b_name, "ilisi_median", "lisi")
    i_after = _csv_number(after, src, a_name, "ilisi_median", "lisi")
    n_batches = _csv_number(after, src, a_name, "n_batches", "int")
    if i_before and i_after:
        parts: list[str | Number] = ["iLISI ", i_before, " → ", i_after]
        if n_batches:
            parts += [" of ", n_batches]
        parts.append(" (median; higher = better mixed)")
        lines.append(Line("batches mixed", parts))
    else:
        lines.append(_missing("batches mixed", "no iLISI median in metrics.csv"))
    c_before = _csv_number(before, src, b_name, "clisi_median", "lisi")
    c_after = _csv_number(after, src, a_name, "clisi_median", "lisi")
    if c_before and c_after:
        lines.append(Line("cell types kept", ["cLISI ", c_before, " → ", c_after, " (median; 1 = types not mixed)"]))
    elif label_given:
        lines.append(_missing("cell types kept", "no cLISI median in metrics.csv"))
    else:
        lines.append(_missing("cell types kept", "not measured: the run had no --label-key"))
    t_before = _csv_number(before, src, b_name, "total", "score")
    t_after = _csv_number(after, src, a_name, "total", "score")
    if t_before and t_after:
        lines.append(Line("scIB total", [t_before, " → ", t_after, " (0.4 batch + 0.6 bio)"]))
    return lines


def integrate_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml integrate``: iLISI and cLISI medians before -> after, clusters at the resolution.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("integrate", "Integration")
    params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    found = _embedding_rows(outdir)
    if found is None:
        verdict.lines.append(_missing("batches mixed", "no metrics.csv in this run (integration metrics were not computed)"))
    else:
        rows, _ = found
        if len(rows) < 2:
            verdict.lines.append(_missing("batches mixed", "metrics.csv has fewer than two embeddings to compare"))
        else:
            # integrate evaluates [uncorrected, corrected] in this order
            verdict.lines += _lisi_lines(rows[0], rows[-1], label_given=bool(params.get("label_key")))
    verdict.lines.append(_clusters_line(run))
    depth = _depth_line(run)
    if depth is not None:
        verdict.lines.append(depth)
    verdict.figures = _figures(outdir, ["figures/umap_integration_check.png", "figures/umap_clusters.png"])
    return verdict


def _depth_line(run: dict[str, Any]) -> Line | None:
    """scATAC-seq runs: which LSI component tracked sequencing depth and was dropped (None for RNA runs)."""
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    lsi = data.get("lsi")
    if not isinstance(lsi, dict) or "depth_correlation" not in lsi:
        return None
    dropped = lsi.get("depth_component_dropped")
    if not _is_number(dropped):
        return Line("depth component", ["no LSI component correlates with depth beyond |r| = ",
                                        Number(lsi.get("depth_threshold"), "run.json",
                                               _pointer("data", "lsi", "depth_threshold"), "text"),
                                        "; all kept"])
    correlations = lsi["depth_correlation"]
    index = int(dropped) - 1
    parts: list[str | Number] = ["LSI component ", Number(dropped, "run.json",
                                                          _pointer("data", "lsi", "depth_component_dropped"), "int")]
    if isinstance(correlations, list) and 0 <= index < len(correlations) and _is_number(correlations[index]):
        parts += [" (r = ", Number(correlations[index], "run.json",
                                   _pointer("data", "lsi", "depth_correlation", index), "score"), ")"]
    parts.append(" tracked sequencing depth and was dropped")
    return Line("depth component", parts)


def _clusters_line(run: dict[str, Any]) -> Line:
    params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    resolution = params.get("resolution")
    clusters = data.get("clusters_per_resolution")
    if not _is_number(resolution) or not isinstance(clusters, dict):
        return _missing("clusters", "no clusters per resolution in run.json")
    key = f"{resolution:g}"
    count = _json_number(run, "run.json", "data", "clusters_per_resolution", key, style="int")
    if count is None:
        return _missing("clusters", f"run.json has no cluster count at resolution {key}")
    res = Number(resolution, "run.json", _pointer("parameters", "resolution"), "text")
    return Line("clusters", [count, " Leiden clusters at resolution ", res])


def evaluate_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml evaluate``: each embedding against the reference one, and the best scIB total.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("evaluate", "Evaluation")
    params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    found = _embedding_rows(outdir)
    verdict.figures = _figures(outdir, ["figures/metrics_comparison.png"])
    if found is None:
        verdict.lines.append(_missing("metrics", "no metrics.csv in this run"))
        return verdict
    rows, _ = found
    names = [r["embedding"] for r in rows]
    reference = params.get("reference") if params.get("reference") in names else names[0]
    base = rows[names.index(reference)]
    others = [r for r in rows if r["embedding"] != reference]
    label_given = bool(params.get("label_key"))
    if not others:
        value = _csv_number(base, "metrics.csv", reference, "ilisi_median", "lisi")
        verdict.lines.append(Line("batches mixed", ["iLISI ", value, f" ({reference}, median)"]) if value
                             else _missing("batches mixed", "no iLISI median in metrics.csv"))
    for row in others[:4]:
        for line in _lisi_lines(base, row, label_given=label_given):
            if len(others) > 1:
                line.label = f"{row['embedding']}: {line.label}"
            verdict.lines.append(line)
    if len(others) > 4:
        verdict.lines.append(Line("more", [f"{len(others) - 4} more embeddings in the metrics table below"]))
    totals = [(n, _csv_number(r, "metrics.csv", r["embedding"], "total")) for r, n in zip(rows, names, strict=True)]
    totals = [(n, t) for n, t in totals if t is not None]
    if len(totals) > 1:
        best = max(t.value for _, t in totals)
        winners = [(n, t) for n, t in totals if t.value == best]
        name, number = winners[0]
        verdict.lines.append(Line("best embedding", [f"{' and '.join(n for n, _ in winners)}, scIB total ", number]))
    return verdict


# ----------------------------------------------------------------------------- classifiers


_MODEL_NAMES = {"lr": "LR", "rf": "RF", "xgb": "XGBoost", "mlp": "MLP"}


def _model(name: str) -> str:
    return _MODEL_NAMES.get(name, name)


def _best_model_line(label: str, scores: Any, source: str, keys: Sequence[str], sd: Any = None,
                     sd_keys: Sequence[str] = ()) -> Line:
    """'label: best LR, macro F1 0.999 (accuracy 0.998)' from ``{model: {metric: value}}``."""
    if not isinstance(scores, dict) or not scores:
        return _missing(label, f"no model scores in {source}")
    f1 = {m: _json_number(v, source, "f1_macro") for m, v in scores.items() if isinstance(v, dict)}
    f1 = {m: n for m, n in f1.items() if n is not None}
    if not f1:
        return _missing(label, f"no macro F1 in {source}")
    best = max(n.value for n in f1.values())
    winners = [m for m, n in f1.items() if n.value == best]
    model = winners[0]
    prefix = _pointer(*keys, model)
    number = Number(f1[model].value, source, prefix + "/f1_macro")
    best_text = f"{_model(model)} best" if len(winners) == 1 else f"{' and '.join(_model(m) for m in winners)} tie"
    parts: list[str | Number] = [best_text, ", macro F1 ", number]
    if isinstance(sd, dict):
        spread = _json_number(sd, source, model, "f1_macro")
        if spread is not None:
            parts += [" ± ", Number(spread.value, source, _pointer(*sd_keys, model, "f1_macro"))]
    accuracy = _json_number(scores[model], source, "accuracy")
    if accuracy is not None:
        parts += [" (accuracy ", Number(accuracy.value, source, prefix + "/accuracy"), ")"]
    others = [m for m in f1 if m not in winners]
    if others:
        runner = max(others, key=lambda m: f1[m].value)
        parts += ["; next ", _model(runner), " ", Number(f1[runner].value, source, _pointer(*keys, runner, "f1_macro"))]
    return Line(label, parts)


def _direction(name: str) -> str:
    return name.replace("_to_", " → ")


def train_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml train``: the best model (macro F1) per direction or fold, and overall.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("train", "Classifiers")
    source = "summary_metrics.json"
    summary = _read_json(outdir / source)
    if not isinstance(summary, dict):
        verdict.lines.append(_missing("best model", f"no {source} in this run"))
    elif isinstance(summary.get("runs"), dict):
        for name, scores in list(summary["runs"].items())[:8]:
            label = _direction(name) if "_to_" in name else name
            verdict.lines.append(_best_model_line(label, scores, source, ["runs", name]))
        if len(summary["runs"]) > 8:
            verdict.lines.append(Line("more", [f"{len(summary['runs']) - 8} more runs in the tables below"]))
        if isinstance(summary.get("mean"), dict):
            what = "both directions" if summary.get("mode") == "reverse" else "all folds"
            verdict.lines.append(_best_model_line(
                f"mean over {what}", summary["mean"], source, ["mean"], sd=summary.get("sd"), sd_keys=["sd"]))
    else:
        params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
        train, test = params.get("split_train"), params.get("split_test")
        label = "best model"
        if isinstance(train, list) and isinstance(test, list) and train and test:
            label = f"{'+'.join(map(str, train))} → {'+'.join(map(str, test))}"
        verdict.lines.append(_best_model_line(label, summary, source, []))
    verdict.figures = _figures(outdir, ["plots/model_compare.png", "plots/direction_compare.png",
                                        "plots/fold_compare.png"])
    return verdict


def learning_curve_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml learning-curve``: macro F1 at the smallest and the largest training size.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("learning-curve", "Learning curve")
    source = "learning_curve_summary.csv"
    rows = _read_csv(outdir / source)
    verdict.figures = _figures(outdir, ["learning_curve.png"])
    if not rows or "f1_macro_mean" not in rows[0]:
        verdict.lines.append(_missing("macro F1", f"no {source} with f1_macro_mean in this run"))
        return verdict
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("held_out", ""), []).append(i)
    params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
    model = _model(str(params.get("model", ""))) if params.get("model") else "the model"
    for held_out, indices in list(groups.items())[:6]:
        first, last = indices[0], indices[-1]

        def num(i: int, column: str, style: str = "score") -> Number | None:
            return _csv_number(rows[i], source, f"#{i}", column, style)

        lo, hi = num(first, "f1_macro_mean"), num(last, "f1_macro_mean")
        lo_n, hi_n = num(first, "n_train_cells_mean", "int"), num(last, "n_train_cells_mean", "int")
        if lo is None or hi is None:
            verdict.lines.append(_missing(f"held out {held_out}", "macro F1 not computed"))
            continue
        parts: list[str | Number] = [f"{model} macro F1 ", lo]
        if lo_n:
            parts += [" with ", lo_n, " cells"]
        parts += [" → ", hi]
        if hi_n:
            parts += [" with ", hi_n]
        sd = num(last, "f1_macro_sd")
        if sd is not None:
            parts += [" (± ", sd, ")"]
        verdict.lines.append(Line(f"held out {held_out}" if held_out else "macro F1", parts))
    if len(groups) > 6:
        verdict.lines.append(Line("more", [f"{len(groups) - 6} more held-out settings in the table below"]))
    return verdict


def novelty_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml novelty``: AUROC, AUPRC against its baseline, TPR at 5 % FPR.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("novelty", "Novelty detection")
    source = "novelty_metrics.json"
    metrics = _read_json(outdir / source)
    verdict.figures = _figures(outdir, ["novelty_curves.png"])
    if not isinstance(metrics, dict):
        verdict.lines.append(_missing("foreign cells found", f"no {source} in this run"))
        return verdict
    auroc = _json_number(metrics, source, "auroc")
    flagged = _json_number(metrics, source, "n_flagged", style="int")
    parts: list[str | Number] = ["AUROC ", auroc] if auroc else ["AUROC not computed"]
    parts.append(" (0.5 = chance)")
    if flagged:
        parts += [" for ", flagged, " flagged cells"]
    method = metrics.get("method")
    if isinstance(method, str):
        parts += [f", {method}"]
    verdict.lines.append(Line("foreign cells found", parts, missing=auroc is None))
    auprc = _json_number(metrics, source, "auprc")
    baseline = _json_number(metrics, source, "auprc_baseline")
    if auprc:
        line = Line("precision", ["AUPRC ", auprc])
        if baseline:
            line.parts += [" (baseline ", baseline, ")"]
        verdict.lines.append(line)
    tpr = _json_number(metrics, source, "tpr_at_fpr_0.05", style="percent")
    if tpr:
        verdict.lines.append(Line("caught at 5 % false positives", [tpr, " of the flagged cells"]))
    return verdict


# ----------------------------------------------------------------------------- mapping


def reference_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml reference build``: what the reference holds and how its training ended.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("reference build", "Mapping reference")
    source = "reference.json"
    manifest = _read_json(outdir / source)
    if isinstance(manifest, dict):
        cells = _json_number(manifest, source, "n_cells", style="int")
        parts: list[str | Number] = [f"{manifest.get('method', '?')} reference of "]
        parts += [cells, " cells"] if cells else ["an unknown number of cells"]
        for key, word in (("conditions", "batches"), ("labels", "labels")):
            if isinstance(manifest.get(key), list):
                parts += [f", {len(manifest[key])} {word}"]
        genes = _json_number(manifest, source, "n_genes", style="int")
        if genes:
            parts += [", ", genes, " genes"]
        verdict.lines.append(Line("reference", parts))
    else:
        verdict.lines.append(_missing("reference", f"no {source} in this run"))
    training = _json_number(run, "run.json", "data", "training", "epochs", style="int")
    loss = _json_number(run, "run.json", "data", "training", "final_validation_loss", style="loss")
    if training:
        parts = [training, " epochs"]
        if loss:
            parts += [", final validation loss ", loss]
        verdict.lines.append(Line("training", parts))
    verdict.figures = _figures(outdir, ["figures/reference_training_loss.png"])
    return verdict


def map_verdict(outdir: Path, run: dict[str, Any]) -> Verdict:
    """Verdict of ``scaml map``: query accuracy, macro F1 and the share called Unknown.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json``.

    Returns
    -------
    Verdict
    """
    verdict = Verdict("map", "Mapping query")
    source = "metrics.json"
    metrics = _read_json(outdir / source)
    if isinstance(metrics, dict):
        accuracy = _json_number(metrics, source, "weighted_knn", "accuracy")
        f1 = _json_number(metrics, source, "weighted_knn", "macro_f1")
        if accuracy or f1:
            parts: list[str | Number] = []
            if accuracy:
                parts += ["accuracy ", accuracy]
            if f1:
                parts += [", " if parts else "", "macro F1 ", f1]
            label = metrics.get("label_key")
            parts.append(f" against the query's {label}" if isinstance(label, str) else "")
            verdict.lines.append(Line("labels transferred", parts))
        else:
            verdict.lines.append(_missing("labels transferred", f"no accuracy in {source}"))
        unknown = _json_number(metrics, source, "fraction_unknown", style="percent")
        if unknown:
            verdict.lines.append(Line("called Unknown", [unknown, " of the query cells"]))
        voted = _json_number(metrics, source, "majority_voting", "accuracy")
        if voted:
            parts = ["accuracy ", voted]
            voted_f1 = _json_number(metrics, source, "majority_voting", "macro_f1")
            if voted_f1:
                parts += [", macro F1 ", voted_f1]
            voted_unknown = _json_number(metrics, source, "fraction_unknown_majority_voting", style="percent")
            if voted_unknown:
                parts += [", ", voted_unknown, " Unknown"]
            verdict.lines.append(Line("majority voting over query clusters", parts))
        knn = _json_number(metrics, source, "knn_only", "accuracy")
        expression = _json_number(metrics, source, "expression_classifier", "accuracy")
        if knn and expression:
            verdict.lines.append(Line("kNN / expression classifier alone", ["accuracy ", knn, " / ", expression]))
        scanvi = _json_number(metrics, source, "scanvi_classifier", "accuracy")
        if scanvi:
            verdict.lines.append(Line("scANVI classifier", ["accuracy ", scanvi]))
    else:
        verdict.lines.append(_missing(
            "labels transferred", "accuracy not measured: the query was mapped without --label-key"))
    if not isinstance(metrics, dict) or _json_number(metrics, source, "fraction_unknown") is None:
        n_unknown = _json_number(run, "run.json", "data", "n_unknown", style="int")
        n_query = _json_number(run, "run.json", "data", "n_query_cells", style="int")
        if n_unknown and n_query:
            verdict.lines.append(Line("called Unknown", [n_unknown, " of ", n_query, " query cells"]))
        else:
            verdict.lines.append(_missing("called Unknown", "not recorded in run.json"))
    n_query = _json_number(run, "run.json", "data", "n_query_cells", style="int")
    n_ref = _json_number(run, "run.json", "data", "n_reference_cells", style="int")
    shared = _json_number(run, "run.json", "data", "n_shared_genes", style="int")
    if n_query:
        mapped: list[str | Number] = [n_query, " query cells"]
        if n_ref:
            mapped += [" onto ", n_ref, " reference cells"]
        params = run.get("parameters") if isinstance(run.get("parameters"), dict) else {}
        if isinstance(params.get("method"), str):
            mapped.append(f" ({params['method']})")
        if shared:
            mapped += [", ", shared, " genes shared"]
        verdict.lines.append(Line("mapped", mapped))
    verdict.lines.sort(key=lambda line: line.label != "mapped")
    verdict.figures = _figures(outdir, ["figures/joint_umap.png", "figures/confusion_matrix.png"])
    return verdict


#: command (run.json ``command``) -> verdict builder ``(run directory, run.json) -> Verdict``.
VERDICTS: dict[str, Callable[[Path, dict[str, Any]], Verdict]] = {
    "integrate": integrate_verdict,
    "evaluate": evaluate_verdict,
    "train": train_verdict,
    "learning-curve": learning_curve_verdict,
    "novelty": novelty_verdict,
    "reference build": reference_verdict,
    "map": map_verdict,
}


def build_verdict(outdir: str | Path, run: dict[str, Any] | None) -> Verdict | None:
    """The verdict of one run directory, or None when its command has no verdict builder.

    Parameters
    ----------
    outdir
        The run directory.
    run
        Its parsed ``run.json`` (None when it has none).

    Returns
    -------
    Verdict or None
    """
    if not isinstance(run, dict):
        return None
    builder = VERDICTS.get(str(run.get("command") or ""))
    if builder is None:
        return None
    return builder(Path(outdir), run)
