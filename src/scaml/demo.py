"""``scaml demo``: simulate a multi-batch dataset and run scaml's jobs on it, no input needed."""

from __future__ import annotations

import os
from pathlib import Path

from ._utils import info
from .io import prepare_outdir, write_h5ad


def run_demo(
    out: str | os.PathLike = "scaml-demo",
    *,
    n_cells: int = 4000,
    n_genes: int = 2000,
    n_batches: int = 3,
    n_cell_types: int = 6,
    random_state: int = 0,
    overwrite: bool = False,
    steps: tuple[str, ...] = ("integrate", "classify", "mapping", "atac"),
) -> Path:
    """Simulate counts and run the integration pipeline (plus the other jobs) into ``out``.

    Parameters
    ----------
    out
        Output directory; the integration outputs sit at its top, other jobs in sub-folders.
    n_cells, n_genes, n_batches, n_cell_types
        Size of the simulated data (see :func:`scaml.datasets.simulate`).
    random_state
        Seed for the simulation and every step.
    overwrite
        Replace an existing, non-empty ``out``.
    steps
        Which jobs to run: ``"integrate"``, ``"classify"`` (train on one batch, test on
        another), ``"mapping"`` (reference = some batches, query = the others), ``"atac"``
        (simulated scATAC-seq peaks: TF-IDF -> LSI without the depth component -> Harmony, in ``atac/``).

    Returns
    -------
    Path
        The output directory (with ``report.html``; every step's folder has its own report too).
    """
    from .datasets import simulate
    from .pipeline import integrate

    outdir = prepare_outdir(out, overwrite=overwrite)
    info(f"simulating {n_cells} cells x {n_genes} genes in {n_batches} batches with {n_cell_types} cell types")
    adata = simulate(n_cells=n_cells, n_genes=n_genes, n_batches=n_batches, n_cell_types=n_cell_types,
                     random_state=random_state)
    write_h5ad(adata, outdir / "simulated_counts.h5ad")
    if "integrate" in steps:
        info("[1] integration: QC -> normalise -> HVG -> PCA -> Harmony -> UMAP/Leiden -> markers")
        integrate(adata, "batch", outdir, label_key="cell_type", random_state=random_state,
                  min_genes=100, overwrite=True)
    if "classify" in steps:
        from .classify import run_train

        info("[2] cross-batch classifiers: train on batch1, test on batch2 (and the reverse)")
        run_train(adata, label_key="cell_type", split_key="batch", split_train="batch1", split_test="batch2",
                  n_hvg=1000, models=("lr", "rf", "xgb", "mlp"), reverse=True, random_state=random_state,
                  outdir=outdir / "classify", overwrite=True)
    if "mapping" in steps:
        from .mapping import demo_mapping

        info(f"[3] reference mapping: scVI-like reference on batch1..batch{n_batches - 1}, "
             f"batch{n_batches} mapped onto it by architecture surgery")
        demo_mapping(adata, outdir / "mapping", batch_key="batch", label_key="cell_type",
                     random_state=random_state)
    if "atac" in steps:
        from .datasets import simulate_atac

        info("[4] scATAC-seq: simulated peaks -> QC -> TF-IDF -> LSI (depth component dropped) -> Harmony "
             "-> UMAP/Leiden")
        peaks = simulate_atac(n_cells=3000, n_peaks=3000, n_batches=n_batches, n_cell_types=n_cell_types,
                              random_state=random_state)
        write_h5ad(peaks, outdir / "simulated_peaks.h5ad")
        integrate(peaks, "batch", outdir / "atac", modality="atac", label_key="cell_type", n_pcs=20,
                  random_state=random_state, overwrite=True)
    from .report import maybe_write_report

    maybe_write_report(outdir, title="scaml demo")
    return outdir
