"""The first screen of the report: every verdict number equals the number in the run's own files.

Each scaml command runs once on a small simulated dataset (module fixture); the numbers of the first
screen are parsed back out of the HTML (``span.vnum`` with ``data-src`` / ``data-key``) and compared
with the files, read here independently of the report code (pandas / json).
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from scaml.io import write_json
from scaml.report import render_report, write_report
from scaml.runinfo import RunRecord

NUMBER_RE = re.compile(
    r'<span class="vnum" data-src="(?P<src>[^"]*)" data-key="(?P<key>[^"]*)" data-value="(?P<value>[^"]*)">'
    r"(?P<text>[^<]*)</span>"
)


# ----------------------------------------------------------------------------- reading back


def first_screen(page: str) -> str:
    """The HTML above the collapsed sections (the verdicts, key figures and warnings)."""
    start = page.index('id="verdict"')
    return page[start:page.index('<div id="details">')]


def verdict_text(page: str) -> str:
    """The first screen's verdict lines as plain text."""
    lines = re.findall(r'<ul class="lines">(.*?)</ul>', first_screen(page), flags=re.S)
    text = " | ".join(re.sub(r"<[^>]+>", "", part.replace("</li>", " | ")) for part in lines)
    return html.unescape(re.sub(r"\s+", " ", text))


def file_value(outdir: Path, src: str, key: str) -> Any:
    """The value at ``key`` of ``outdir/src``, read with pandas / json (not with the report's code)."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in key.lstrip("/").split("/")]
    path = outdir / src
    if path.suffix == ".csv":
        table = pd.read_csv(path)
        row_key, column = parts
        if row_key.startswith("#"):
            row = table.iloc[int(row_key[1:])]
        else:
            row = table.set_index(table.columns[0]).loc[row_key]
        value = row[column]
        return None if pd.isna(value) else float(value)
    value = json.loads(path.read_text())
    for part in parts:
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def shown_matches(text: str, value: float) -> bool:
    """Whether the shown text is ``value`` rounded to the digits shown (a percentage: of 100 x value)."""
    clean = text.replace(",", "")
    if clean.endswith("%"):
        clean, value = clean[:-1], 100.0 * value
    decimals = len(clean.split(".")[1]) if "." in clean else 0
    return abs(float(clean) - value) <= 0.5 * 10 ** (-decimals) + 1e-9


def check_numbers(page: str, outdir: Path, minimum: int = 1) -> list[tuple[str, str, str]]:
    """Assert that every first-screen number equals its file's; return (src, key, text) of each."""
    found = []
    for match in NUMBER_RE.finditer(first_screen(page)):
        src, key = html.unescape(match["src"]), html.unescape(match["key"])
        text, raw = html.unescape(match["text"]), html.unescape(match["value"])
        value = file_value(outdir, src, key)
        if isinstance(value, str):  # a parameter shown as written (a resolution)
            assert raw == value, (src, key)
        else:
            assert isinstance(value, (int, float)) and not math.isnan(value), (src, key, value)
            assert float(raw) == pytest.approx(float(value), rel=1e-12, abs=1e-12), (src, key, raw, value)
            assert shown_matches(text, float(value)), (src, key, text, value)
        found.append((src, key, text))
    assert len(found) >= minimum, f"only {len(found)} numbers on the first screen"
    return found


def keys_of(found: list[tuple[str, str, str]]) -> set[tuple[str, str]]:
    return {(src, key) for src, key, _ in found}


# ----------------------------------------------------------------------------- real runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small run of each command (integrate, evaluate, train, reverse train, learning-curve,
    novelty, Symphony reference build and map)."""
    from scaml.classify import run_learning_curve, run_novelty, run_train
    from scaml.datasets import simulate
    from scaml.mapping import build_reference, map_query
    from scaml.metrics.evaluate import evaluate
    from scaml.pipeline import integrate

    root = tmp_path_factory.mktemp("verdict_runs")
    adata = simulate(n_cells=600, n_genes=300, n_batches=2, n_cell_types=3, n_markers=15, random_state=0)
    adata.obs["foreign"] = (adata.obs["cell_type"].astype(str) == "type_A").to_numpy()
    out = {name: root / name for name in
           ("integrate", "evaluate", "train", "train_reverse", "curve", "novelty", "reference", "map")}
    integrated = integrate(adata.copy(), "batch", out["integrate"], label_key="cell_type", min_genes=20,
                           n_top_genes=200)
    evaluate(integrated, "batch", "cell_type", embeddings=["X_pca", "X_pca_harmony"], out=out["evaluate"])
    common = {"label_key": "cell_type", "split_key": "batch", "split_train": "batch1", "split_test": "batch2",
              "n_hvg": 200}
    run_train(adata, models=("lr", "rf"), outdir=out["train"], **common)
    run_train(adata, models=("lr",), reverse=True, outdir=out["train_reverse"], **common)
    run_learning_curve(adata, label_key="cell_type", group_key="batch", model="lr", sizes=[0.2, 1.0], repeats=2,
                       n_hvg=200, outdir=out["curve"])
    run_novelty(adata, hek_key="foreign", hek_positive="true", method="iforest", n_hvg=500, n_folds=3,
                outdir=out["novelty"])  # 500 HVGs of 300 genes: a warning
    reference = adata[adata.obs["batch"] == "batch1"].copy()
    query = adata[adata.obs["batch"] == "batch2"].copy()
    build_reference(reference, "symphony", "batch", "cell_type", out["reference"])
    map_query(out["reference"], query, out["map"], label_key="cell_type")
    return out


def _page(outdir: Path) -> str:
    return (outdir / "report.html").read_text()


def test_integrate_verdict_equals_metrics_csv(runs: dict[str, Path]) -> None:
    outdir = runs["integrate"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=6)
    table = pd.read_csv(outdir / "metrics.csv")
    before, after = table["embedding"].iloc[0], table["embedding"].iloc[-1]
    assert {("metrics.csv", f"/{before}/ilisi_median"), ("metrics.csv", f"/{after}/ilisi_median"),
            ("metrics.csv", f"/{before}/clisi_median"), ("metrics.csv", f"/{after}/clisi_median"),
            ("metrics.csv", f"/{after}/n_batches")} <= keys_of(found)
    run = json.loads((outdir / "run.json").read_text())
    resolution = run["parameters"]["resolution"]
    clusters = run["data"]["clusters_per_resolution"][f"{resolution:g}"]
    text = verdict_text(page)
    i0, i1 = table["ilisi_median"].iloc[0], table["ilisi_median"].iloc[-1]
    c0, c1 = table["clisi_median"].iloc[0], table["clisi_median"].iloc[-1]
    n_batches = int(table["n_batches"].iloc[-1])
    assert f"batches mixed: iLISI {i0:.2f} → {i1:.2f} of {n_batches}" in text
    assert f"cell types kept: cLISI {c0:.2f} → {c1:.2f}" in text
    assert f"clusters: {clusters} Leiden clusters at resolution {resolution:g}" in text
    # the key figure is on the first screen, full width; no warnings -> the quiet line, not the box
    screen = first_screen(page)
    assert 'class="fig key' in screen and "umap_integration_check.png" in screen
    assert "No warnings were raised" in screen and 'class="warnbox"' not in page


def test_evaluate_verdict(runs: dict[str, Path]) -> None:
    outdir = runs["evaluate"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=4)
    assert ("metrics.csv", "/X_pca_harmony/ilisi_median") in keys_of(found)
    assert "metrics_comparison.png" in first_screen(page)


def test_train_verdict_names_the_best_model(runs: dict[str, Path]) -> None:
    outdir = runs["train"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=2)
    summary = json.loads((outdir / "summary_metrics.json").read_text())
    best = max(summary, key=lambda m: summary[m]["f1_macro"])
    assert ("summary_metrics.json", f"/{best}/f1_macro") in keys_of(found)
    assert f"{best.upper()} best" in verdict_text(page) or "tie" in verdict_text(page)
    assert "batch1 → batch2" in verdict_text(page)
    assert "model_compare.png" in first_screen(page)


def test_train_reverse_verdict_per_direction(runs: dict[str, Path]) -> None:
    outdir = runs["train_reverse"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=3)
    keys = keys_of(found)
    summary = json.loads((outdir / "summary_metrics.json").read_text())
    for direction in summary["runs"]:
        assert ("summary_metrics.json", f"/runs/{direction}/lr/f1_macro") in keys
    assert ("summary_metrics.json", "/mean/lr/f1_macro") in keys and ("summary_metrics.json", "/sd/lr/f1_macro") in keys
    text = verdict_text(page)
    assert "batch1 → batch2" in text and "batch2 → batch1" in text and "mean over both directions" in text


def test_learning_curve_verdict(runs: dict[str, Path]) -> None:
    outdir = runs["curve"]
    found = check_numbers(_page(outdir), outdir, minimum=4)
    assert all(src == "learning_curve_summary.csv" for src, _, _ in found)
    assert "learning_curve.png" in first_screen(_page(outdir))


def test_novelty_verdict_and_warnings_box(runs: dict[str, Path]) -> None:
    outdir = runs["novelty"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=3)
    assert {("novelty_metrics.json", "/auroc"), ("novelty_metrics.json", "/auprc")} <= keys_of(found)
    screen = first_screen(page)
    assert "novelty_curves.png" in screen
    # the run warned (more HVGs asked for than genes): a visible box on the first screen, after the figures
    run = json.loads((outdir / "run.json").read_text())
    assert run["warnings"]
    assert 'class="warnbox"' in screen and screen.index("novelty_curves.png") < screen.index('class="warnbox"')
    assert html.escape(run["warnings"][0]) in screen


def test_map_verdict_accuracy_f1_unknown(runs: dict[str, Path]) -> None:
    outdir = runs["map"]
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=3)
    assert {("metrics.json", "/weighted_knn/accuracy"), ("metrics.json", "/weighted_knn/macro_f1"),
            ("metrics.json", "/fraction_unknown")} <= keys_of(found)
    metrics = json.loads((outdir / "metrics.json").read_text())
    text = verdict_text(page)
    assert f"accuracy {metrics['weighted_knn']['accuracy']:.3f}" in text
    assert f"macro F1 {metrics['weighted_knn']['macro_f1']:.3f}" in text
    assert f"called Unknown: {100 * metrics['fraction_unknown']:.1f}%" in text
    screen = first_screen(page)
    assert screen.index("joint_umap.png") < screen.index("confusion_matrix.png")


def test_map_verdict_shows_majority_voting_from_its_file(runs: dict[str, Path], tmp_path: Path) -> None:
    outdir = tmp_path / "map_voted"
    shutil.copytree(runs["map"], outdir)
    metrics = json.loads((outdir / "metrics.json").read_text())
    metrics["majority_voting"] = {"accuracy": 0.9123, "balanced_accuracy": 0.9, "macro_f1": 0.8771, "n_cells": 10}
    metrics["fraction_unknown_majority_voting"] = 0.025
    write_json(metrics, outdir / "metrics.json")
    write_report(outdir)
    page = _page(outdir)
    found = check_numbers(page, outdir, minimum=5)
    assert {("metrics.json", "/majority_voting/accuracy"), ("metrics.json", "/majority_voting/macro_f1"),
            ("metrics.json", "/fraction_unknown_majority_voting")} <= keys_of(found)
    assert "majority voting over query clusters: accuracy 0.912, macro F1 0.877, 2.5% Unknown" in verdict_text(page)


def test_reference_verdict(runs: dict[str, Path]) -> None:
    outdir = runs["reference"]
    found = check_numbers(_page(outdir), outdir, minimum=2)
    assert ("reference.json", "/n_cells") in keys_of(found)


def test_multi_step_run_gets_one_tile_per_step(runs: dict[str, Path], tmp_path: Path) -> None:
    """A demo-like directory: integration at the top, classifiers and mapping in sub-folders."""
    demo = tmp_path / "demo"
    shutil.copytree(runs["integrate"], demo)
    shutil.copytree(runs["train_reverse"], demo / "classify")
    shutil.copytree(runs["reference"], demo / "mapping" / "reference")
    shutil.copytree(runs["map"], demo / "mapping" / "query")
    page = write_report(demo, title="scaml demo").read_text()
    check_numbers(page, demo, minimum=10)
    screen = first_screen(page)
    tiles = re.findall(r'<a class="tile" href="#([^"]+)" data-command="([^"]+)">(.*?)</a>', screen, flags=re.S)
    assert [command for _, command, _ in tiles] == ["integrate", "train", "reference build", "map"]
    for anchor, command, body in tiles:
        assert f'id="{anchor}"' in page  # each tile links to its section in the same page
        if command != "reference build":  # a Symphony reference draws no figure
            assert '<img class="thumb" src="data:image/png;base64,' in body
        assert 'class="vnum"' in body
    # numbers of sub-runs point at the sub-run's own files
    srcs = {m["src"] for m in NUMBER_RE.finditer(screen)}
    assert {"metrics.csv", "classify/summary_metrics.json", "mapping/query/metrics.json"} <= srcs
    assert "4 scaml runs" in page


# ----------------------------------------------------------------------------- missing outputs


def test_missing_files_are_said_not_invented(tmp_path: Path) -> None:
    integrate_dir = tmp_path / "integrate"
    RunRecord("integrate", parameters={"resolution": 0.5, "label_key": None},
              data={"clusters_per_resolution": {"0.5": 7}}).save(integrate_dir)
    page = render_report(integrate_dir)
    text = verdict_text(page)
    assert "no metrics.csv in this run" in text and "clusters: 7 Leiden clusters at resolution 0.5" in text
    assert [key for _, key, _ in check_numbers(page, integrate_dir)] == [
        "/data/clusters_per_resolution/0.5", "/parameters/resolution"]

    map_dir = tmp_path / "map"
    RunRecord("map", parameters={"method": "scvi"},
              data={"n_query_cells": 500, "n_reference_cells": 900, "n_unknown": 12}).save(map_dir)
    page = render_report(map_dir)
    text = verdict_text(page)
    assert "accuracy not measured: the query was mapped without --label-key" in text
    assert "called Unknown: 12 of 500 query cells" in text
    check_numbers(page, map_dir, minimum=3)

    train_dir = tmp_path / "train"
    RunRecord("train").save(train_dir)
    assert "no summary_metrics.json in this run" in verdict_text(render_report(train_dir))


def test_no_verdict_without_a_known_command(tmp_path: Path) -> None:
    write_json({"command": "something-else"}, tmp_path / "run.json")
    write_json({"score": 0.5}, tmp_path / "scores.json")
    page = render_report(tmp_path)
    assert "No verdict" in page and 'class="vnum"' not in page
