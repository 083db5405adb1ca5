"""The HTML report in a real browser: headless Chromium loads it, every image shows, no console errors.

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
the test skips when they are not found.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from scaml import _utils
from scaml.io import save_figure, write_csv, write_json
from scaml.report import write_report
from scaml.runinfo import RunRecord

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def _find_browser() -> tuple[str, str]:
    browser = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "headless Chromium not found (needs the 'chromium' and 'chromedriver' commands; on Debian: "
            "apt-get install chromium chromium-driver); the browser test of the report is skipped"
        )
    pytest.importorskip("selenium", reason="selenium is not installed; the browser test of the report is skipped")
    return browser, driver


def _scatter(path: Path, title: str, spread: float, rng: np.random.Generator) -> None:
    fig, ax = plt.subplots(figsize=(4, 3.5))
    for b in range(3):
        xy = rng.normal(size=(200, 2)) + b * spread
        ax.scatter(xy[:, 0], xy[:, 1], s=4, label=f"batch{b + 1}")
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=7)
    save_figure(fig, path, dpi=80)


def _make_run(outdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from scaml import runinfo

    rng = np.random.default_rng(0)
    outdir.mkdir(parents=True)
    monkeypatch.setattr(runinfo, "_COMMAND_LINE", [
        "scaml", "integrate", "pbmc_3batches.h5ad", "--batch-key", "batch", "--label-key", "cell_type",
        "--out", "run",
    ])
    record = RunRecord(
        "integrate",
        parameters={"batch_key": "batch", "theta": 2.0, "n_hvg": 2000, "n_pcs": 30, "resolutions": [0.5, 1.0]},
        inputs={"input": "pbmc_3batches.h5ad"},
        data={"qc": {"before": {"n_cells": 3000, "n_genes": 2000}, "after": {"n_cells": 2874, "n_genes": 1875}}},
    )
    with record.timer("qc"):
        pass
    with record.timer("harmony"):
        pass
    _utils.warn("batch 'batch3' has only 12 cells after QC; its correction is uncertain")
    # the evaluation that integrate runs writes its own run.json, table and figure in a subfolder
    evaluation = RunRecord("evaluate", parameters={"embeddings": ["X_pca", "X_pca_harmony"], "k": 90})
    evaluation.save(outdir / "evaluate")
    record.save(outdir)
    _scatter(outdir / "figures" / "umap_after_batch.png", "UMAP after Harmony", 0.0, rng)
    _scatter(outdir / "figures" / "umap_before_batch.png", "UMAP before Harmony", 2.0, rng)
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.barh(["iLISI", "cLISI", "kBET", "ASW label"], [0.8, 0.95, 0.81, 0.59])
    ax.set_xlim(0, 1)
    save_figure(fig, outdir / "evaluate" / "metrics_bars.png", dpi=80)
    write_json({"X_pca": {"batch": 0.21, "bio": 0.71, "total": 0.51},
                "X_pca_harmony": {"batch": 0.82, "bio": 0.69, "total": 0.74}}, outdir / "evaluate" / "metrics.json")
    metrics = pd.DataFrame(
        {"iLISI": [1.1234, 2.6789], "cLISI": [1.0123, 1.0456], "kBET": [0.0312, 0.8123], "ASW_label": [0.61, 0.59]},
        index=pd.Index(["X_pca", "X_pca_harmony"], name="embedding"),
    )
    write_csv(metrics, outdir / "metrics.csv")
    write_json({"n_cells": {"before": 3000, "after": 2874}, "clusters": {"0.5": 7, "1.0": 11}}, outdir / "summary.json")
    return outdir


def test_report_in_headless_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser, driver_path = _find_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    report = write_report(_make_run(tmp_path / "run", monkeypatch))

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)]);"
        )
        assert len(images) == 3
        broken = [alt for alt, complete, width, _ in images if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert all(src.startswith("data:image/png;base64") for *_, src in images)
        # the page shows the run: title, the warning, the metric table
        text = driver.find_element("tag name", "body").text
        assert "scaml integrate report" in text
        assert "only 12 cells after QC" in text
        assert "2.679" in text
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        # a screenshot of the whole page
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1280, min(int(height) + 120, 8000))
        screenshot = tmp_path / "report_screenshot.png"
        png = base64.b64decode(driver.get_screenshot_as_base64())
        screenshot.write_bytes(png)
    finally:
        driver.quit()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")
