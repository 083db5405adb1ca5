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


def _wide(path: Path, title: str, rng: np.random.Generator) -> None:
    """A three-panel figure like the integration check and the joint UMAP."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for i, ax in enumerate(axes):
        for b in range(3):
            xy = rng.normal(size=(150, 2)) + b * (2.0 if i == 2 else 0.0)
            ax.scatter(xy[:, 0], xy[:, 1], s=3, label=f"batch{b + 1}")
        ax.set_title(f"{title} {i + 1}")
        ax.legend(markerscale=3, fontsize=7)
    save_figure(fig, path, dpi=100)


def _make_run(outdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An integrate run with the files `scaml integrate` writes (fabricated values), and a warning."""
    from scaml import runinfo

    rng = np.random.default_rng(0)
    outdir.mkdir(parents=True)
    monkeypatch.setattr(runinfo, "_COMMAND_LINE", [
        "scaml", "integrate", "pbmc_3batches.h5ad", "--batch-key", "batch", "--label-key", "cell_type",
        "--out", "run",
    ])
    record = RunRecord(
        "integrate",
        parameters={"batch_key": "batch", "theta": 2.0, "n_hvg": 2000, "n_pcs": 30, "resolutions": [0.5, 1.0],
                    "resolution": 0.5, "label_key": "cell_type"},
        inputs={"input": "pbmc_3batches.h5ad"},
        data={"before_qc": {"n_cells": 3000, "n_genes": 2000}, "after_qc": {"n_cells": 2874, "n_genes": 1875},
              "clusters_per_resolution": {"0.5": 7, "1.0": 11}},
    )
    with record.timer("qc"):
        pass
    with record.timer("harmony"):
        pass
    _utils.warn("batch 'batch3' has only 12 cells after QC; its correction is uncertain")
    record.save(outdir)
    _wide(outdir / "figures" / "umap_integration_check.png", "panel", rng)
    _scatter(outdir / "figures" / "umap_after_batch.png", "UMAP after Harmony", 0.0, rng)
    _scatter(outdir / "figures" / "umap_before_batch.png", "UMAP before Harmony", 2.0, rng)
    fig, ax = plt.subplots(figsize=(8, 2.5))
    ax.barh(["iLISI", "cLISI", "kBET", "ASW label"], [0.8, 0.95, 0.81, 0.59])
    ax.set_xlim(0, 1)
    save_figure(fig, outdir / "figures" / "metrics_comparison.png", dpi=80)
    metrics = pd.DataFrame({
        "embedding": ["X_pca", "X_pca_harmony"], "ilisi": [0.06, 0.83], "clisi": [0.99, 0.98],
        "kbet": [0.0312, 0.8123], "label_asw": [0.61, 0.59], "batch_score": [0.2, 0.8], "bio_score": [0.7, 0.69],
        "total": [0.5, 0.734], "ilisi_median": [1.1234, 2.6789], "clisi_median": [1.0123, 1.0456],
        "n_batches": [3, 3], "n_cells": [2874, 2874],
        "notes": ["", "a long note " * 30],  # a wide table must scroll inside its own box
    })
    write_csv(metrics, outdir / "metrics.csv", index=False)
    write_json({"n_cells": {"before": 3000, "after": 2874}, "clusters": {"0.5": 7, "1.0": 11}}, outdir / "summary.json")
    return outdir


def _add_mapping(outdir: Path, rng: np.random.Generator) -> None:
    """A `scaml map` sub-run in mapping/query: the page becomes a multi-step one (one tile per step)."""
    query = outdir / "mapping" / "query"
    RunRecord("map", parameters={"method": "scvi"},
              data={"n_query_cells": 1323, "n_reference_cells": 2677, "n_shared_genes": 1000, "n_unknown": 23}
              ).save(query)
    write_json({"label_key": "cell_type", "weighted_knn": {"accuracy": 0.9826, "macro_f1": 0.9919, "n_cells": 1323},
                "fraction_unknown": 0.0174}, query / "metrics.json")
    _wide(query / "figures" / "joint_umap.png", "joint", rng)
    _scatter(query / "figures" / "confusion_matrix.png", "confusion", 1.0, rng)


def _driver(browser: str, driver_path: str, profile: Path):  # noqa: ANN202 - selenium's type
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1400,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def _screenshot(driver, path: Path) -> bytes:  # noqa: ANN001 - selenium's type
    png = base64.b64decode(driver.get_screenshot_as_base64())
    path.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    return png


def _check_layout(driver, report: Path, shots: Path, name: str) -> None:  # noqa: ANN001
    """At 1400 and 400 px: the verdict is on the first screen, the page never scrolls sideways."""
    for width, height in ((1400, 900), (400, 800)):
        driver.set_window_size(width, height)
        driver.get(report.resolve().as_uri())
        top, inner_height = driver.execute_script(
            "var v = document.querySelector('#verdict ul.lines');"
            "return [v.getBoundingClientRect().top, window.innerHeight];")
        assert top < inner_height, f"{name} at {width} px: the verdict starts below the first screen"
        _screenshot(driver, shots / f"{name}_{width}_first_screen.png")
        # every collapsed section opened: wide tables and figures still stay inside the page
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true);")
        scroll_width, inner_width = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth];")
        assert scroll_width <= inner_width, f"{name} at {width} px: the page scrolls sideways"
        full = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(width, min(int(full) + 120, 8000))
        _screenshot(driver, shots / f"{name}_{width}_full.png")


def test_report_in_headless_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    browser, driver_path = _find_browser()
    report = write_report(_make_run(tmp_path / "run", monkeypatch))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver = _driver(browser, driver_path, tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(60)
        driver.get(report.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.src.slice(0, 22)]);"
        )
        assert len(images) == 4
        broken = [alt for alt, complete, width, _ in images if not (complete and width > 0)]
        assert not broken, f"images that did not load: {broken}"
        assert all(src.startswith("data:image/png;base64") for *_, src in images)
        # nothing was fetched over the network
        fetched = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith('data:'));")
        assert not fetched, fetched
        # the first screen shows the answer, the key figure and the warning; the tables are collapsed
        text = driver.find_element("tag name", "body").text
        assert "scaml integrate report" in text
        assert "batches mixed: iLISI 1.12 → 2.68 of 3" in text
        assert "cell types kept: cLISI 1.01 → 1.05" in text
        assert "clusters: 7 Leiden clusters at resolution 0.5" in text
        assert "only 12 cells after QC" in text
        key = driver.find_element("css selector", "#verdict figure.key img")
        assert key.get_attribute("alt") == "UMAP integration check" and key.is_displayed()
        assert "0.8123" not in text  # the metrics table (kBET) is in a collapsed section ...
        driver.find_element("css selector", "#tables summary").click()
        assert "0.8123" in driver.find_element("tag name", "body").text  # ... and opens with a click
        # a click on a column header sorts the table (numbers as numbers)
        header = driver.find_element("xpath", "//section[@id='tables']//table[1]//th[text()='total']")
        header.click()
        header.click()
        first_row = driver.find_element("xpath", "//section[@id='tables']//table[1]/tbody/tr[1]/td[1]").text
        assert header.get_attribute("aria-sort") == "descending" and first_row == "X_pca_harmony"
        errors = [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]
        assert not errors, f"console errors: {errors}"
        _check_layout(driver, report, shots, "integrate")

        # a multi-step run: one tile per step, each linking to its section
        _add_mapping(tmp_path / "run", np.random.default_rng(1))
        report = write_report(tmp_path / "run", title="scaml demo")
        driver.set_window_size(1400, 900)
        driver.get(report.resolve().as_uri())
        tiles = driver.find_elements("css selector", "a.tile")
        assert [t.find_element("tag name", "h2").text for t in tiles] == ["Integration", "Mapping query"]
        assert all(t.is_displayed() for t in tiles)
        assert "accuracy 0.983, macro F1 0.992" in tiles[1].text and "1.7%" in tiles[1].text
        tiles[1].click()
        assert driver.execute_script("return location.hash;") == "#step-mapping-query"
        _check_layout(driver, report, shots, "multi_step")
    finally:
        driver.quit()
    print(f"report screenshots: {shots}")
