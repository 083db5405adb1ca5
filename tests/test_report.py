"""The HTML report: content, escaping, partial run directories, the CLI."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scaml import _utils
from scaml.cli import main
from scaml.errors import ScamlError
from scaml.io import save_figure, write_csv, write_json
from scaml.report import REPORT_FILE, maybe_write_report, render_report, write_report
from scaml.runinfo import RunRecord


def _png(path: Path, title: str = "figure") -> None:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2])
    ax.set_title(title)
    save_figure(fig, path, dpi=50)


def make_run(outdir: Path, *, warning: str = "only 2 cells in batch3 <b>") -> Path:
    """A fake run directory like the one `scaml integrate` writes."""
    outdir.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        "integrate",
        parameters={"theta": 2.0, "n_hvg": 2000, "batch_key": "batch", "sweep": [0.5, 1.0]},
        inputs={"input": "/some/where/pbmc.h5ad"},
        data={"qc": {"before": {"n_cells": 12345, "n_genes": 20000}, "after": {"n_cells": 11800, "n_genes": 15000}}},
    )
    with record.timer("harmony"):
        pass
    _utils.warn(warning)
    record.save(outdir)
    _png(outdir / "figures" / "umap_batch.png", "batch")
    _png(outdir / "figures" / "umap_cell_type.png", "cell type")
    _png(outdir / "evaluate" / "metrics_bars.png", "metrics")
    metrics = pd.DataFrame(
        {"iLISI": [1.234567, 1.8765432], "kBET": [0.0123456, np.nan], "n_cells": [11800, 11800]},
        index=pd.Index(["X_pca", "X_pca_harmony"], name="embedding"),
    )
    write_csv(metrics, outdir / "evaluate" / "metrics.csv")
    write_json({"X_pca": {"ilisi": 1.23456789, "asw_label": 0.5}, "X_pca_harmony": {"ilisi": 1.9, "asw_label": 0.6}},
               outdir / "evaluate" / "metrics.json")
    big = pd.DataFrame({"cell": [f"c{i}" for i in range(300)], "p": np.linspace(0, 1, 300)})
    write_csv(big, outdir / "predictions.csv")
    write_json({"n_cells": {"before": 12345, "after": 11800}, "clusters": {"0.5": 7, "1.0": 11}}, outdir / "summary.json")
    return outdir


def test_report_shows_the_run(tmp_path: Path) -> None:
    outdir = make_run(tmp_path / "run")
    path = write_report(outdir)
    assert path == outdir / REPORT_FILE and path.exists()
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "scaml integrate report" in page
    # parameters, inputs (file name only), data before/after QC, timings, versions
    for text in ("theta", "n_hvg", "2000", "pbmc.h5ad", "n_cells", "12,345", "11,800", "harmony", "numpy"):
        assert text in page, text
    assert "/some/where" not in page
    # the warning, escaped and highlighted
    assert 'class="warnings"' in page
    assert "only 2 cells in batch3 &lt;b&gt;" in page and "batch3 <b>" not in page
    # three figures embedded, decodable PNGs, grouped with figures/ first
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 3
    assert all(base64.b64decode(u)[:8] == b"\x89PNG\r\n\x1a\n" for u in uris)
    assert page.index("umap_batch.png") < page.index("umap_cell_type.png") < page.index("metrics_bars.png")
    assert "UMAP batch" in page  # caption from the file name
    # metric tables: CSV with 4 significant digits and NaN, JSON dict of dicts as a matrix
    assert "1.235" in page and "1.877" in page and "0.01235" in page and 'title="empty or NaN">—<' in page
    assert "1.234567" not in page
    # the JSON dict of dicts is one matrix: a row per embedding, a column per metric
    assert ('<thead><tr><th></th><th>ilisi</th><th>asw_label</th></tr></thead><tbody><tr><th>X_pca</th>'
            '<td class="num">1.235</td><td class="num">0.5</td></tr><tr><th>X_pca_harmony</th>'
            '<td class="num">1.9</td><td class="num">0.6</td></tr>') in page
    # the per-cell predictions table is listed but not shown
    assert "predictions.csv" in page and "c299" not in page
    # summary.json
    assert 'id="summary"' in page and "Clusters" in page
    # self-contained: no network resources; the one script is inline (sorting, zoom), none is loaded
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page.lower().count("<script") == 1 and "<script>" in page and "<script src" not in page.lower()
    # the first screen: the verdict comes before the warnings box, everything else is collapsed below
    assert page.index('id="verdict"') < page.index('class="warnbox"') < page.index('id="run"')
    assert "<details class=\"sec\" open" not in page


def test_report_escapes_everything(tmp_path: Path) -> None:
    outdir = tmp_path / "run"
    outdir.mkdir()
    evil = '<script>alert("x")</script>'
    write_json({"command": evil, "command_line": f"scaml x --flag '{evil}'", "parameters": {evil: evil},
                "warnings": [evil], "data": {evil: {"a": 1}}}, outdir / "run.json")
    pd.DataFrame({evil: [evil]}).to_csv(outdir / "table.csv", index=False)
    page = render_report(outdir, title=evil)
    assert page.count("<script") == 1 and 'alert("x")</script>' not in page  # only the page's own script
    assert "&lt;script&gt;" in page


def test_partial_directories(tmp_path: Path) -> None:
    only_run = tmp_path / "only_run"
    only_run.mkdir()
    RunRecord("evaluate", parameters={"k": 30}).save(only_run)
    page = render_report(only_run)
    assert "scaml evaluate report" in page and "No warnings" in page and "<img" not in page

    only_png = tmp_path / "only_png"
    _png(only_png / "plot_1.png")
    page = render_report(only_png, title="My run")
    assert "<title>My run</title>" in page and page.count("<img") == 1
    assert 'id="warnings"' not in page  # nothing is known about warnings without run.json


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ScamlError, match="does not exist"):
        render_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(ScamlError, match="nothing to report"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / REPORT_FILE).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ScamlError, match="not a run directory"):
        render_report(tmp_path / "file")


def test_number_formatting() -> None:
    from scaml.report import _fmt_number

    assert _fmt_number(0.123456) == "0.1235"
    assert _fmt_number(123.456) == "123.5"
    assert _fmt_number(123456.7) == "123,457"
    assert _fmt_number(0.0000123) == "1.230e-05"
    assert _fmt_number(2.5e12) == "2.500e+12"
    assert _fmt_number(12) == "12"
    assert _fmt_number(123456) == "123,456"
    assert _fmt_number(float("nan")) == "NaN"
    assert _fmt_number(0.0) == "0"


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outdir = make_run(tmp_path / "run")
    assert main(["report", str(outdir), "--title", "Rebuilt"]) == 0
    out = capsys.readouterr().out.strip()
    assert Path(out) == outdir / REPORT_FILE
    assert "<title>Rebuilt</title>" in (outdir / REPORT_FILE).read_text()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # the run directory as a flag, spelled like the run's own --out / --outdir (or --results)
    for flag in ("--out", "--outdir", "--results"):
        (outdir / REPORT_FILE).unlink()
        assert main(["report", flag, str(outdir)]) == 0
        assert Path(capsys.readouterr().out.strip()) == outdir / REPORT_FILE and (outdir / REPORT_FILE).exists()
    assert main(["report", str(outdir), "--out", str(outdir)]) == 0  # the same directory twice is fine
    capsys.readouterr()
    assert main(["report", str(outdir), "--out", str(tmp_path)]) == 2
    assert "two inputs given" in capsys.readouterr().err
    assert main(["report"]) == 2
    assert "no input given; pass it positionally (scaml report DIR ...) or with --out DIR" in capsys.readouterr().err


def test_maybe_write_report(tmp_path: Path) -> None:
    outdir = make_run(tmp_path / "run")
    assert maybe_write_report(outdir) == outdir / REPORT_FILE
    assert maybe_write_report(tmp_path / "gone") is None
    # a report that cannot be built is a warning, never an exception
    empty = tmp_path / "empty"
    empty.mkdir()
    n_warnings = len(_utils.WARNINGS)
    assert maybe_write_report(empty) is None
    assert len(_utils.WARNINGS) == n_warnings + 1 and "report" in _utils.WARNINGS[-1]


def test_json_shapes(tmp_path: Path) -> None:
    outdir = tmp_path / "run"
    outdir.mkdir()
    write_json([{"model": "lr", "accuracy": 0.91234}, {"model": "rf", "accuracy": 0.8}], outdir / "scores_table.json")
    write_json({"genes": [f"g{i}" for i in range(500)], "nested": {"a": {"b": {"c": 1}}}}, outdir / "config.json")
    page = render_report(outdir)
    assert "0.9123" in page and "accuracy" in page
    assert "and 460 more" in page  # long lists are cut


def test_sub_runs_and_kept_fractions(tmp_path: Path) -> None:
    outdir = tmp_path / "run"
    outdir.mkdir()
    write_json({"command": "integrate", "warnings": ["shared warning"],
                "data": {"qc": {"before": {"n_cells": 200}, "after": {"n_cells": 150}}}}, outdir / "run.json")
    write_json({"command": "evaluate", "parameters": {"k": 90}, "warnings": ["shared warning", "one batch only"]},
               outdir / "evaluate" / "run.json")
    page = render_report(outdir)
    assert "scaml evaluate" in page and "evaluate/" in page and ">90<" in page
    # the sub-run's own warning is added once, the shared one is not repeated
    assert page.count("shared warning") == 1 and "[evaluate/] one batch only" in page
    assert "75.0%" in page  # cells kept by QC
    # a directory holding only a sub-run is reportable too
    (outdir / "run.json").unlink()
    assert "scaml evaluate" in render_report(outdir)


def test_wide_figures_span_the_page(tmp_path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.plot([0, 1])
    save_figure(fig, tmp_path / "figures" / "scib_table.png", dpi=40)
    _png(tmp_path / "figures" / "umap.png")
    page = render_report(tmp_path)
    assert page.count('class="fig wide') == 1 and page.count('class="fig"') == 1
