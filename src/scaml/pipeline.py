"""The integration pipeline: QC -> normalise -> HVG -> PCA -> Harmony -> neighbours/UMAP/Leiden -> markers.

scATAC-seq peaks take QC -> TF-IDF -> LSI (minus the depth component) -> Harmony -> the same steps.
:func:`integrate` is what ``scaml integrate`` and ``scaml demo`` run; every step is also a
function of :mod:`scaml.preprocess`, :mod:`scaml.atac`, :mod:`scaml.harmony` or scanpy that a notebook can call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from . import preprocess as pp
from ._utils import info, warn
from .errors import ScamlError
from .io import (
    check_obs_key,
    check_obsm_key,
    prepare_outdir,
    read_input,
    write_csv,
    write_h5ad,
    write_json,
)
from .neighbors import DEFAULT_K, Neighbors
from .runinfo import RunRecord
from .umap_sample import UMAP_MAX_CELLS, draw_sample

DEFAULT_RESOLUTIONS = (0.3, 0.5, 0.8)


def integrate(
    data: str | os.PathLike | ad.AnnData,
    batch_key: str | Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    *,
    modality: Literal["auto", "rna", "atac"] = "auto",
    theta: float | Sequence[float] | None = None,
    label_key: str | None = None,
    use_rep: str | None = None,
    input_kind: Literal["auto", "counts", "normalized"] = "auto",
    mito_prefix: Sequence[str] = ("MT-", "mt-"),
    min_genes: int = 200,
    max_genes: int | None = None,
    max_pct_mito: float | None = 20.0,
    min_cells: int = 3,
    n_top_genes: int = 2000,
    n_pcs: int = 30,
    n_neighbors: int = 15,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    resolution: float | None = None,
    markers: Sequence[str] | None = None,
    harmony_params: dict[str, Any] | None = None,
    random_state: int = 0,
    overwrite: bool = False,
    evaluate: bool = True,
    atac_params: dict[str, Any] | None = None,
    chunked: bool | None = None,
    max_memory: Any = None,
    chunk_cells: int | None = None,
    client: Any = None,
    dask: str | None = None,
    protein_model: Literal["clr", "totalvi"] = "clr",
    umap_max_cells: int | None = None,
) -> ad.AnnData:
    """Run the whole integration pipeline and, with ``out``, write every output.

    Parameters
    ----------
    data
        A path (h5ad, 10x .h5, 10x folder, CSV/TSV) or an AnnData object. Neither is modified:
        an AnnData is copied.
    batch_key
        Column(s) of ``obs`` that Harmony corrects for; several give several covariates. None: nothing
        is corrected (no Harmony, no batch metrics), and the run says so.
    out
        Output directory (``integrated.h5ad``, ``summary.json``, ``run.json``, ``figures/``,
        ``metrics.csv``). None computes without writing.
    modality
        ``"rna"`` (genes), ``"atac"`` (peak or bin counts: QC -> TF-IDF -> LSI -> Harmony on
        ``obsm["X_lsi"]``) or ``"auto"``: ATAC when the feature names parse as peaks (``chr-start-end``
        or ``chr:start-end``).
    theta
        Harmony diversity penalty, one per batch key (default 2 each).
    label_key
        Cell-type column; with it, the bio-conservation metrics are computed too.
    use_rep
        An existing embedding in ``obsm`` to correct instead of computing a PCA
        (QC, normalisation, HVG and PCA are then skipped).
    input_kind
        ``"auto"`` detects raw counts vs log-normalised X; ``"counts"`` requires counts;
        ``"normalized"`` takes X as log-normalised (QC and normalisation skipped).
    mito_prefix, min_genes, max_genes, max_pct_mito, min_cells
        QC rules (see :func:`scaml.preprocess.qc_filter`).
    n_top_genes
        Highly variable genes, selected per batch (first batch key).
    n_pcs
        Principal components.
    n_neighbors
        Neighbours for the kNN graph (UMAP and Leiden).
    resolutions, resolution
        Leiden resolutions to compute (``obs["leiden_<res>"]``) and the one copied to
        ``obs["leiden"]`` (default: the middle one).
    markers
        Genes for the marker UMAPs (default: the top Wilcoxon marker of each cluster).
    harmony_params
        Further parameters for :func:`scaml.harmony.run_harmony` (sigma, nclust, lamb, ...).
    random_state
        Seed for PCA, Harmony, UMAP and Leiden.
    overwrite
        Replace an existing, non-empty ``out``.
    evaluate
        Compute batch-mixing (and, with ``label_key``, bio-conservation) metrics on the
        uncorrected and corrected embeddings.
    atac_params
        ATAC settings (see :data:`ATAC_DEFAULTS`): ``min_counts``, ``min_peaks``, ``max_counts``
        per cell, ``min_fragments`` (with ``fragments``), ``binarize``, ``depth_threshold``,
        ``fragments`` (a ``fragments.tsv.gz``: n_fragments, FRiP) and ``genes`` (a GTF/GFF/BED
        annotation: TSS enrichment with fragments, and ``gene_activity.h5ad`` in ``out``), ``embedding``
        (``"lsi"``, Signac's TF-IDF + SVD, or ``"spectral"``, SnapATAC2's Laplacian eigenmaps:
        :func:`scaml.atac.spectral`; chunked: on ``landmarks`` cells, extended by Nystrom). ``min_cells`` above is the minimum number of cells per peak.
    chunked
        Preprocess the file in chunks of cells (:mod:`scaml.chunked`: QC, normalisation, HVG and PCA, or
        for peaks QC, TF-IDF and LSI, never hold the count matrix; markers on a per-cluster sample; ``integrated.h5ad`` written chunk
        by chunk). None (default): chunked when the input is an h5ad / zarr file whose in-memory
        processing would exceed ``max_memory``. The numbers are those of the in-memory path.
    max_memory
        The memory budget of the chunked path (bytes or ``"8GB"``; default a quarter of the machine's memory).
    chunk_cells
        Cells per chunk instead of the budget's.
    client, dask
        Run the chunked passes on a dask.distributed cluster: a ``Client``, or a scheduler address
        (``"local"`` starts a ``LocalCluster``). The run records which cluster it used.
    protein_model
        CITE-seq input (protein counts in ``obsm["protein_expression"]``, or a 10x feature-barcoding
        file's "Antibody Capture" features) gains two figures, the proteins on the UMAP and a
        protein x cluster dot plot, of: ``"clr"`` the CLR of the raw counts (or the input's
        ``obsm["denoised_protein"]`` when it has one); ``"totalvi"`` the denoised proteins of a
        :class:`scaml.vae.TOTALVI` trained on the QC'd cells (``obsm["denoised_protein"]``,
        ``obsm["protein_foreground_probability"]``, ``obsm["X_totalvi"]``). The titles say which.
    umap_max_cells
        Above this many cells (default :data:`scaml.umap_sample.UMAP_MAX_CELLS`, 200,000; 0: never) the
        UMAPs are laid out on a seeded random sample of this size, the other cells placed at the weighted
        mean of their nearest sample cells (``obs["umap_sample"]`` marks the sample), the integration
        figure shows the sample, and the metrics are computed on it. The Leiden graph is always of all cells.

    Returns
    -------
    AnnData
        The integrated object with ``obsm["X_pca"]`` (ATAC: ``obsm["X_lsi"]``), ``obsm["X_pca_harmony"]``
        (ATAC: ``obsm["X_lsi_harmony"]``), ``obsm["X_umap"]``, ``obsm["X_umap_uncorrected"]``,
        ``obs["leiden*"]`` and ``uns["rank_genes_groups"]``, ``uns["harmony"]``. Without a batch key
        there is no corrected embedding, ``X_umap`` is of the uncorrected one and ``uns["harmony"]`` is absent.
    """
    batch_keys, thetas, resolutions, chosen = _check_settings(batch_key, theta, resolutions, resolution)
    atac_settings = _atac_settings(atac_params)
    params = {
        "batch_key": batch_keys, "theta": thetas, "label_key": label_key, "use_rep": use_rep,
        "input_kind": input_kind, "mito_prefix": list(mito_prefix), "min_genes": min_genes,
        "max_genes": max_genes, "max_pct_mito": max_pct_mito, "min_cells": min_cells,
        "n_top_genes": n_top_genes, "n_pcs": n_pcs, "n_neighbors": n_neighbors,
        "resolutions": resolutions, "resolution": chosen, "markers": list(markers or []),
        "harmony_params": dict(harmony_params or {}), "random_state": random_state,
        "modality": modality, "atac_params": {k: (str(v) if isinstance(v, os.PathLike) else v)
                                              for k, v in atac_settings.items()},
    }
    params.update({"chunked": chunked, "max_memory": max_memory, "chunk_cells": chunk_cells,
                   "dask": dask if client is None else "client", "umap_max_cells": umap_max_cells})
    record = RunRecord("integrate", parameters=params)

    input_path = None if isinstance(data, ad.AnnData) else Path(data)
    if input_path is not None:
        record.inputs["input"] = str(input_path)
    source = _chunked_source(chunked, input_path, modality=modality, use_rep=use_rep, input_kind=input_kind,
                              max_memory=max_memory, n_top_genes=n_top_genes)
    use_chunks = source is not None
    modality_used = _chunked_modality(source, modality) if use_chunks else None
    owned_client = None
    if dask is not None and client is None:
        if not use_chunks:
            warn(f"--dask {dask} is not used: the input is processed in memory (add --chunked)")
        else:
            from .chunked import connect

            # before anything is written: an address that does not answer fails here
            client = owned_client = connect(dask)
    outdir = None
    if out is not None:
        outdir = prepare_outdir(out, overwrite=overwrite, protect=[input_path] if input_path else [])

    cells = None
    if use_chunks:
        genes_table = _atac_inputs(record, atac_settings) if modality_used == "atac" else None
        with record.timer("chunked_preprocessing"):
            cells = _preprocess_chunked(source, modality_used, batch_keys, atac_settings, record, genes_table,
                                        mito_prefix=mito_prefix,
                                        min_genes=min_genes, max_genes=max_genes, max_pct_mito=max_pct_mito,
                                        min_cells=min_cells, n_top_genes=n_top_genes, n_pcs=n_pcs,
                                        max_memory=max_memory, chunk_cells=chunk_cells, client=client,
                                        random_state=random_state)
        adata = cells.adata
        _check_keys(adata, batch_keys, label_key)
        record.data["before_qc"] = {"n_cells": cells.source.n_cells, "n_genes": cells.source.n_genes}
    else:
        with record.timer("read"):
            adata = data.copy() if isinstance(data, ad.AnnData) else _read(input_path, modality)
        _check_keys(adata, batch_keys, label_key)
        record.data["before_qc"] = {"n_cells": adata.n_obs, "n_genes": adata.n_vars}
        modality_used = _modality(adata, modality, use_rep)
        genes_table = _atac_inputs(record, atac_settings) if modality_used == "atac" else None
    record.data["modality"] = modality_used
    if not batch_keys:
        info("no --batch-key given: nothing is corrected (no Harmony, no batch-mixing metrics)")
        record.data["batch_correction"] = "none: no batch key given"
        evaluate = False

    if cells is not None:
        basis = _record_chunked(adata, record, cells, batch_keys)
    elif modality_used == "atac":
        basis = _prepare_atac(adata, record, atac_settings, genes_table, input_kind=input_kind, min_cells=min_cells,
                              n_components=n_pcs, random_state=random_state)
    else:
        basis = _prepare_embedding(adata, record, use_rep=use_rep, input_kind=input_kind, mito_prefix=mito_prefix,
                                   min_genes=min_genes, max_genes=max_genes, max_pct_mito=max_pct_mito,
                                   min_cells=min_cells, n_top_genes=n_top_genes, n_pcs=n_pcs,
                                   batch_keys=batch_keys, random_state=random_state)
    if cells is not None and batch_keys:
        harmony_params = _harmony_within_budget(adata, record, basis, cells.plan.budget_bytes, harmony_params,
                                                client=client)
    adjusted = _harmony(adata, record, basis, batch_keys, thetas, harmony_params, random_state) if batch_keys else basis
    # one neighbour search per embedding, shared by the kNN graph and the metrics (LISI needs the most)
    umap_sample = draw_sample(adata.n_obs, UMAP_MAX_CELLS if umap_max_cells is None else umap_max_cells,
                              random_state)
    search_k = max(DEFAULT_K, n_neighbors - 1) if evaluate else n_neighbors - 1
    if umap_sample is None:
        searches = _graphs_and_umaps(adata, record, basis, adjusted, n_neighbors, random_state, k=search_k)
    else:
        searches = _sampled_graphs_and_umaps(adata, record, basis, adjusted, n_neighbors, random_state,
                                             k=search_k, sample=umap_sample)
    _leiden(adata, record, resolutions, chosen, random_state)
    samples = None
    if cells is not None:
        samples = _chunked_samples(adata, record, cells, random_state, pool=umap_sample)
        marker_genes = _markers(samples[0], record)
        if "rank_genes_groups" in samples[0].uns:
            adata.uns["rank_genes_groups"] = samples[0].uns["rank_genes_groups"]
    else:
        marker_genes = _markers(adata, record)
    if cells is None and "protein_expression" in adata.obsm:
        from .cite.figures import protein_values

        with record.timer("proteins"):
            record.data["proteins"] = protein_values(adata, batch_key=batch_keys[0] if batch_keys else None,
                                                     protein_model=protein_model, random_state=random_state)

    metrics_table: pd.DataFrame | None = None
    if evaluate:
        with record.timer("metrics"):
            metrics_table = _evaluate(adata if umap_sample is None else _light_subset(adata, umap_sample),
                                      batch_keys[0], label_key, [basis, adjusted], random_state, searches,
                                      sampled_from=None if umap_sample is None else adata.n_obs)

    if outdir is not None:
        if cells is not None:
            record.data["chunked"] = {**cells.plan.to_dict(), **cells.engine.summary()}
        _write_outputs(adata, outdir, record, batch_keys[0] if batch_keys else None, adjusted, markers,
                       marker_genes, metrics_table, cells=cells, samples=samples, umap_sample=umap_sample)
        if modality_used == "atac" and atac_settings.get("genes") is not None:
            _write_gene_activity(adata, outdir, record, genes_table, cells)
        from .report import maybe_write_report

        maybe_write_report(outdir)
    if owned_client is not None:
        owned_client.close()
    return adata


def _check_settings(batch_key: str | Sequence[str] | None, theta: float | Sequence[float] | None,
                    resolutions: Sequence[float], resolution: float | None
                    ) -> tuple[list[str], list[float], list[float], float]:
    """Batch keys (possibly none), one theta per key, the Leiden resolutions and the chosen one (checked up front)."""
    batch_keys = [] if batch_key is None else [batch_key] if isinstance(batch_key, str) else list(batch_key)
    if theta is not None and not batch_keys:
        raise ScamlError("--theta was given without --batch-key; Harmony needs a batch column (--batch-key KEY).")
    resolutions = [float(r) for r in resolutions]
    if not resolutions:
        raise ScamlError("no Leiden resolution given; pass --resolutions 0.3 0.5 0.8.")
    chosen = float(resolution) if resolution is not None else resolutions[len(resolutions) // 2]
    if chosen not in resolutions:
        resolutions.append(chosen)
    return batch_keys, _thetas(theta, len(batch_keys)) if batch_keys else [], resolutions, chosen


def _check_keys(adata: ad.AnnData, batch_keys: list[str], label_key: str | None) -> None:
    """Every batch key exists with 2+ levels and no missing values (stored as categories); the label key exists."""
    for key in batch_keys:
        check_obs_key(adata, key, flag="--batch-key", min_levels=2)
        if adata.obs[key].isna().any():
            raise ScamlError(
                f"obs[{key!r}] has {int(adata.obs[key].isna().sum())} missing values; fill or drop those cells first."
            )
        adata.obs[key] = adata.obs[key].astype(str).astype("category")
    if label_key is not None:
        check_obs_key(adata, label_key, flag="--label-key")


def _prepare_embedding(adata: ad.AnnData, record: RunRecord, *, use_rep: str | None, input_kind: str,
                       mito_prefix: Sequence[str], min_genes: int, max_genes: int | None,
                       max_pct_mito: float | None, min_cells: int, n_top_genes: int, n_pcs: int,
                       batch_keys: list[str], random_state: int) -> str:
    """QC -> layers["counts"] -> normalise -> HVG -> PCA (or an existing embedding); returns its obsm key."""
    skipped: list[str] = []
    found = pp.find_expression(adata, input_kind)
    record.data["input_assumed"] = found.kind
    record.data["expression_source"] = found.source
    info(f"input: {adata.n_obs} cells x {adata.n_vars} genes; {found.reason}")
    if found.kind == "counts" and found.source != "X":
        adata.X = found.matrix.copy()  # QC and normalisation start from the counts layer
    if use_rep is not None:
        check_obsm_key(adata, use_rep, flag="--use-rep")
        skipped += ["qc", "normalize", "hvg", "pca"]
        info(f"using the existing embedding obsm[{use_rep!r}]: QC, normalisation, HVG selection and PCA are skipped")
        if found.kind == "counts":
            with record.timer("normalize"):
                pp.normalize_log1p(adata)
    else:
        if found.kind == "counts":
            with record.timer("qc"):
                removed = pp.qc_filter(adata, mito_prefix=mito_prefix, min_genes=min_genes,
                                       max_genes=max_genes, max_pct_mito=max_pct_mito, min_cells=min_cells)
            record.data["qc_removed"] = removed
            info(f"QC kept {adata.n_obs} cells and {adata.n_vars} genes ({removed})")
            with record.timer("normalize"):
                pp.normalize_log1p(adata)
        else:
            skipped += ["qc", "normalize"]
            info("X is not raw counts: QC filtering and normalisation are skipped (they need counts)")
        for key in batch_keys:
            check_obs_key(adata, key, flag="--batch-key", min_levels=2)
        with record.timer("hvg"):
            n_hvg = pp.select_hvg(adata, n_top_genes, batch_key=batch_keys[0] if batch_keys else None)
        record.data["n_hvg"] = n_hvg
        with record.timer("pca"):
            pp.run_pca(adata, n_pcs, random_state=random_state)
    record.data["after_qc"] = {"n_cells": adata.n_obs, "n_genes": adata.n_vars}
    record.data["skipped_steps"] = skipped
    basis = use_rep or "X_pca"
    embedding = check_obsm_key(adata, basis, flag="--use-rep")
    adata.obsm[basis] = np.ascontiguousarray(embedding, dtype=np.float32)
    return basis


#: share of the chunked run's memory budget that in-memory Harmony may take before it streams
HARMONY_BUDGET_SHARE = 0.5


def harmony_memory_estimate(n_cells: int, n_dims: int, nclust: int | None = None) -> int:
    """Bytes in-memory Harmony (float32) holds: the soft assignments (cells x clusters) and two cells x
    dims working copies (measured: 689 MiB at 1M cells x 50 dims and 100 clusters; this gives 763)."""
    k = min(max(round(n_cells / 30), 1), 100) if nclust is None else int(nclust)
    return int(n_cells * (4 * k + 2 * 4 * n_dims))


def _harmony_within_budget(adata: ad.AnnData, record: RunRecord, basis: str, budget: int,
                           harmony_params: dict[str, Any] | None, client: Any = None) -> dict[str, Any]:
    """The chunked run's Harmony settings: in memory while its estimate fits in
    :data:`HARMONY_BUDGET_SHARE` of the budget, else streaming (:mod:`scaml.harmony.stream`) with that
    share as its chunk budget; with a Dask ``client`` the streaming Harmony runs on that cluster
    (:mod:`scaml.harmony.dask_fit`). Given streaming settings (``max_memory``, ``chunk_cells``) are kept."""
    hp = dict(harmony_params or {})
    n_cells, n_dims = adata.obsm[basis].shape
    need = harmony_memory_estimate(n_cells, n_dims, hp.get("nclust"))
    share = int(HARMONY_BUDGET_SHARE * budget)
    given = "max_memory" in hp or "chunk_cells" in hp
    streaming = given or need > share
    if streaming and not given:
        hp["max_memory"] = share
    on_cluster = streaming and client is not None
    if on_cluster:
        hp["client"] = client
    record.data["harmony_memory"] = {
        "in_memory_estimate_mib": round(need / 2**20, 1), "budget_share_mib": round(share / 2**20, 1),
        "path": "streaming on the Dask cluster" if on_cluster else "streaming" if streaming else "in memory",
    }
    where = " on the Dask cluster" if on_cluster else ""
    if given:
        info(f"Harmony streams its cells{where} (harmony_params set its chunks)")
    elif streaming:
        info(f"Harmony streams its cells{where}: in memory it would take {need / 2**20:,.0f} MiB, more than its "
             f"{share / 2**20:,.0f} MiB share of the --max-memory budget")
    return hp


def _harmony(adata: ad.AnnData, record: RunRecord, basis: str, batch_keys: list[str], thetas: list[float],
             harmony_params: dict[str, Any] | None, random_state: int) -> str:
    """scaml's Harmony on ``obsm[basis]``; returns the key of the corrected embedding."""
    from .harmony import harmony_integrate

    adjusted = "X_pca_harmony" if basis == "X_pca" else f"{basis}_harmony"
    hp = dict(harmony_params or {})
    hp.setdefault("random_state", random_state)
    with record.timer("harmony"):
        harmony_integrate(adata, batch_keys if len(batch_keys) > 1 else batch_keys[0], basis=basis,
                          adjusted_basis=adjusted, theta=thetas if len(thetas) > 1 else thetas[0], **hp)
    return adjusted


def _graphs_and_umaps(adata: ad.AnnData, record: RunRecord, basis: str, adjusted: str, n_neighbors: int,
                      random_state: int, *, k: int) -> dict[str, Neighbors]:
    """kNN graphs (scaml's search, scanpy's keys) and UMAPs of the uncorrected and corrected embeddings.

    Each embedding is searched once for ``k`` neighbours; the graph uses the nearest ``n_neighbors - 1``
    and the searches are returned for the metrics.
    """
    import scanpy as sc

    from .neighbors import compute_neighbors, neighbors_graph

    searches: dict[str, Neighbors] = {}
    passes = [(basis, "X_umap_uncorrected", "uncorrected", "neighbors_umap_uncorrected"),
              (adjusted, "X_umap", None, "neighbors_umap")]
    if adjusted == basis:  # nothing corrected: one graph, one UMAP
        passes = passes[1:]
    for key, umap_key, neighbors_key, timer in passes:
        with record.timer(timer):
            searches[key] = compute_neighbors(adata.obsm[key], k, random_state=random_state)
            neighbors_graph(adata, key, n_neighbors, key_added=neighbors_key, random_state=random_state,
                            neighbors=searches[key])
            sc.tl.umap(adata, neighbors_key=neighbors_key or "neighbors", key_added=umap_key,
                       random_state=random_state)
    record.data["neighbors"] = {"n_neighbors": int(n_neighbors), "search": searches[adjusted].method,
                                "k_searched": int(searches[adjusted].k)}
    return searches


def _sampled_graphs_and_umaps(adata: ad.AnnData, record: RunRecord, basis: str, adjusted: str, n_neighbors: int,
                              random_state: int, *, k: int, sample: np.ndarray) -> dict[str, Neighbors]:
    """Large data: the full kNN graph of the corrected embedding (Leiden) and UMAPs laid out on a sample.

    Returns the sample's own searches (positions within the sample, ``k`` neighbours) for the metrics,
    which are then computed on the sample.
    """
    from .neighbors import compute_neighbors, neighbors_graph
    from .umap_sample import sampled_umap

    n, m = adata.n_obs, int(sample.size)
    info(f"{n:,} cells: UMAPs laid out on a random sample of {m:,} (the others placed by their nearest sample "
         "cells; --umap-max-cells 0 for all); the Leiden graph uses every cell")
    searches: dict[str, Neighbors] = {}
    passes = [(basis, "X_umap_uncorrected", "neighbors_umap_uncorrected"), (adjusted, "X_umap", "neighbors_umap")]
    if adjusted == basis:
        passes = passes[1:]
    full = None
    for key, umap_key, timer in passes:
        with record.timer(timer):
            if key == adjusted:
                full = compute_neighbors(adata.obsm[key], n_neighbors - 1, random_state=random_state)
                neighbors_graph(adata, key, n_neighbors, random_state=random_state, neighbors=full)
            layout = sampled_umap(adata.obsm[key], sample, n_neighbors=n_neighbors, k=k, random_state=random_state)
            adata.obsm[umap_key] = layout.coords
            searches[key] = layout.neighbors
    in_sample = np.zeros(n, dtype=bool)
    in_sample[sample] = True
    adata.obs["umap_sample"] = in_sample
    assert full is not None
    record.data["neighbors"] = {"n_neighbors": int(n_neighbors), "search": full.method, "k_searched": int(full.k)}
    record.data["umap_sample"] = {"cells": m, "of": n, "placed_by_nearest_sample_cells": 10,
                                  "used_for": ["UMAP layout", "integration figure", "metrics"]}
    return searches


def _light_subset(adata: ad.AnnData, positions: np.ndarray) -> ad.AnnData:
    """obs, obsm and the colours of some cells (no expression): the metrics and figures of a sample."""
    sub = ad.AnnData(obs=adata.obs.iloc[positions].copy())
    for key, value in adata.obsm.items():
        sub.obsm[key] = np.asarray(value)[positions]
    for key, value in adata.uns.items():
        if key.endswith("_colors"):
            sub.uns[key] = value
    return sub


def _leiden(adata: ad.AnnData, record: RunRecord, resolutions: list[float], chosen: float,
            random_state: int) -> None:
    """Leiden clusters at every resolution (``obs["leiden_<res>"]``); the chosen one copied to ``obs["leiden"]``."""
    import scanpy as sc

    clusters: dict[str, int] = {}
    with record.timer("leiden"):
        for res in resolutions:
            key = f"leiden_{res:g}"
            sc.tl.leiden(adata, resolution=res, key_added=key, flavor="igraph", n_iterations=2,
                         directed=False, random_state=random_state)
            clusters[f"{res:g}"] = int(adata.obs[key].nunique())
        adata.obs["leiden"] = adata.obs[f"leiden_{chosen:g}"].copy()
    record.data["clusters_per_resolution"] = clusters
    info(f"Leiden clusters per resolution: {clusters}; obs['leiden'] is resolution {chosen:g}")


def _markers(adata: ad.AnnData, record: RunRecord) -> list[str]:
    """Wilcoxon marker genes per Leiden cluster (``uns["rank_genes_groups"]``, scanpy's numbers and layout from
    :func:`scaml.markers.rank_markers`); returns the top ones."""
    from .markers import rank_markers

    marker_genes: list[str] = []
    with record.timer("markers"):
        if adata.obs["leiden"].nunique() >= 2:
            rank_markers(adata, "leiden")
            marker_genes = _top_markers(adata)
        else:
            warn("only one Leiden cluster: marker genes are not computed; try a higher --resolution")
    record.data["top_markers"] = marker_genes
    return marker_genes


def _thetas(theta: float | Sequence[float] | None, n: int) -> list[float]:
    if theta is None:
        return [2.0] * n
    values = [float(theta)] if np.isscalar(theta) else [float(t) for t in theta]
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise ScamlError(f"got {len(values)} theta values {values} for {n} batch keys; give one theta per --batch-key.")
    return values


def _top_markers(adata: ad.AnnData, per_cluster: int = 1, limit: int = 12) -> list[str]:
    names = pd.DataFrame(adata.uns["rank_genes_groups"]["names"])
    genes: list[str] = []
    for col in names.columns:
        for gene in names[col].head(per_cluster):
            if gene not in genes:
                genes.append(str(gene))
    return genes[:limit]


def _evaluate(adata: ad.AnnData, batch_key: str, label_key: str | None, embeddings: list[str],
              random_state: int, searches: dict[str, Neighbors], sampled_from: int | None = None) -> pd.DataFrame:
    """Batch mixing (and bio conservation with labels) of the embeddings, reusing the pipeline's searches.

    ``sampled_from``: ``adata`` is the UMAP sample of that many cells (the notes say so).
    """
    from .metrics import evaluate_embeddings

    # silhouettes are O(N^2): above 20,000 cells they use a stratified sample (the table's notes say so)
    asw_max_cells = 20000 if adata.n_obs > 20000 else None
    table = evaluate_embeddings(adata, batch_key=batch_key, label_key=label_key, embeddings=embeddings,
                                reference=embeddings[0], random_state=random_state,
                                asw_max_cells=asw_max_cells, neighbors=searches)
    if sampled_from is not None:
        note = f"computed on the random sample of {adata.n_obs} of {sampled_from} cells that the UMAPs lay out"
        table["notes"] = [f"{note}; {n}" if n else note for n in table["notes"].fillna("")]
    return table


def _write_outputs(adata: ad.AnnData, outdir: Path, record: RunRecord, batch_key: str | None, adjusted: str,
                   markers: Sequence[str] | None, marker_genes: list[str], metrics_table: pd.DataFrame | None,
                   *, cells: Any = None, samples: tuple[ad.AnnData, ad.AnnData] | None = None,
                   umap_sample: np.ndarray | None = None) -> None:
    """Figures, integrated.h5ad, summary.json and run.json.

    ``cells`` / ``samples`` (the chunked path): the marker figures use the sampled cells' expression
    and integrated.h5ad streams its matrices from the input file. ``umap_sample``: the UMAP figures
    show the laid-out sample only.
    """
    from . import plotting

    marker_data, figure_data = samples if samples is not None else (adata, adata)
    panel_data, panel_note = adata, None
    if umap_sample is not None:
        panel_data = _light_subset(adata, umap_sample)
        panel_note = f"UMAPs of a random sample of {umap_sample.size:,} of {adata.n_obs:,} cells"
        if samples is None:
            figure_data = adata[umap_sample]

    figures = outdir / "figures"
    with record.timer("figures"):
        if batch_key is not None:
            label = _basis_label(adata, record.data.get("modality"))
            plotting.plot_integration_panels(panel_data, batch_key, figures / "umap_integration_check.png",
                                             uncorrected_label=label, note=panel_note)
            plotting.plot_objective(adata.uns["harmony"]["objective_harmony"], figures / "harmony_objective.png")
        else:
            _plot_clusters_only(panel_data, figures / "umap_clusters.png", record.data.get("modality"))
        genes = list(markers) if markers else marker_genes
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            warn(f"marker genes not found and not plotted: {missing[:10]}")
        genes = [g for g in genes if g in adata.var_names]
        if genes:
            atac_run = record.data.get("modality") == "atac"
            what = "peaks" if atac_run else "genes"
            where = "the corrected UMAP (over-correction check)" if batch_key is not None else "the UMAP"
            if figure_data is not adata and figure_data.n_obs < adata.n_obs:
                where += f", {figure_data.n_obs:,} of {adata.n_obs:,} cells sampled"
            plotting.plot_gene_umaps(figure_data, genes[:12], figures / "marker_genes_umap.png",
                                     title=f"Marker {what} on {where}",
                                     value_label="TF-IDF accessibility" if atac_run else "log expression")
        if "rank_genes_groups" in marker_data.uns:
            plotting.plot_marker_dotplot(marker_data, figures / "marker_dotplot.png",
                                         features="peaks" if record.data.get("modality") == "atac" else "genes")
        if record.data.get("proteins"):
            from .cite.figures import protein_figures

            protein_figures(adata, record.data["proteins"], figures, batch_key=batch_key)
        if metrics_table is not None:
            from .metrics import plot_metrics

            write_csv(metrics_table, outdir / "metrics.csv", index=False)
            plot_metrics(metrics_table, figures / "metrics_comparison.png")
    with record.timer("write"):
        if cells is not None:
            from .chunked import write_chunked_h5ad

            write_chunked_h5ad(cells, adata, outdir / "integrated.h5ad")
        else:
            write_h5ad(adata, outdir / "integrated.h5ad")
    summary = {
        "cells_before_qc": record.data["before_qc"]["n_cells"],
        "genes_before_qc": record.data["before_qc"]["n_genes"],
        "cells_after_qc": record.data["after_qc"]["n_cells"],
        "genes_after_qc": record.data["after_qc"]["n_genes"],
        "input_assumed": record.data.get("input_assumed"),
        "skipped_steps": record.data.get("skipped_steps", []),
        "qc_removed": record.data.get("qc_removed", {}),
        "clusters_per_resolution": record.data["clusters_per_resolution"],
        "modality": record.data.get("modality"),
        "lsi": record.data.get("lsi"),
        "harmony": ({k: adata.uns["harmony"].get(k) for k in ("n_iter", "converged", "objective_harmony", "info")}
                    if "harmony" in adata.uns else None),
        "metrics": None if metrics_table is None else metrics_table.reset_index().to_dict(orient="records"),
        "parameters": record.parameters,
        "timings_seconds": record.timer.seconds,
    }
    record.data["summary"] = "summary.json"
    from ._utils import package_versions

    summary["versions"] = package_versions()
    write_json(summary, outdir / "summary.json")
    record.save(outdir)
    info(f"wrote {outdir}/integrated.h5ad, summary.json and figures/")


# ----------------------------------------------------------------------------- atlas scale (chunked)

#: Bytes of memory the in-memory path takes per stored count (counts, layers["counts"], the
#: normalised copy and scanpy's temporaries; measured: 10.1 GB for 325M values).
IN_MEMORY_BYTES_PER_VALUE = 32


def _chunked_source(chunked: bool | None, input_path: Path | None, *, modality: str, use_rep: str | None,
                    input_kind: str, max_memory: Any, n_top_genes: int) -> Any:
    """The checked input file (a :class:`scaml.chunked.CellSource`) when the chunked path is taken, else None.

    Taken when asked for (``chunked=True``; a file that cannot be read in chunks is refused here,
    before anything is written), or, with ``chunked=None``, for an h5ad / zarr input too big for the budget.
    """
    if chunked is False:
        return None
    why_not = None
    if input_path is None:
        why_not = "the input is an in-memory AnnData (give a .h5ad or .zarr file)"
    elif use_rep is not None:
        why_not = "--use-rep starts from an embedding (nothing to preprocess)"
    elif input_kind == "normalized":
        why_not = "the chunked path starts from raw counts (--input-kind normalized)"
    elif not input_path.name.lower().rstrip("/").endswith((".h5ad", ".zarr")):
        why_not = f"the chunked path reads .h5ad or .zarr files, not {input_path.name!r}"
    from .chunked import open_cells

    if chunked is True:
        if why_not:
            raise ScamlError(f"--chunked cannot run: {why_not}.")
        assert input_path is not None
        return open_cells(input_path)
    if why_not:
        return None
    from .chunked.preprocess import default_budget
    from .harmony.stream import parse_memory

    assert input_path is not None
    try:
        source = open_cells(input_path)
    except ScamlError:
        return None  # the in-memory reader gives its own message
    budget = default_budget() if max_memory is None else parse_memory(max_memory, "--max-memory")
    need = IN_MEMORY_BYTES_PER_VALUE * source.nnz + 8 * source.n_cells * min(n_top_genes, source.n_genes)
    if need <= budget:
        return None
    info(f"the input ({source.n_cells} cells, {source.nnz:,} stored values) needs about {need / 2**30:.1f} GiB in "
         f"memory, more than the budget ({budget / 2**30:.1f} GiB): preprocessing it in chunks (--no-chunked to "
         "read it whole)")
    return source


def _chunked_modality(source: Any, modality: str) -> str:
    """``"rna"`` or ``"atac"`` for a chunked input: as given, or (``"auto"``) ATAC when its features are named like peaks."""
    if modality not in ("auto", "rna", "atac"):
        raise ScamlError(f"unknown modality {modality!r}; use auto, rna or atac.")
    if modality != "auto":
        return modality
    from .atac import looks_like_peaks

    if looks_like_peaks(source.read_frame("var").index):
        info("the features are named like peaks (chr-start-end): running the ATAC path "
             "(pass --modality rna to treat them as genes)")
        return "atac"
    return "rna"


def _preprocess_chunked(source: Any, modality: str, batch_keys: list[str], atac_settings: dict[str, Any],
                        record: RunRecord, genes_table: pd.DataFrame | None, *,
                        mito_prefix: Sequence[str], min_genes: int, max_genes: int | None, max_pct_mito: float | None,
                        min_cells: int, n_top_genes: int, n_pcs: int, max_memory: Any, chunk_cells: int | None,
                        client: Any, random_state: int) -> Any:
    """QC -> normalise -> HVG -> PCA (RNA) or QC -> TF-IDF -> LSI (ATAC) over the file's chunks."""
    if modality == "atac":
        from .chunked import preprocess_peaks_chunked

        fragments = atac_settings.get("fragments")
        cells = preprocess_peaks_chunked(source, min_counts=int(atac_settings["min_counts"]),
                                         min_peaks=int(atac_settings["min_peaks"]),
                                         max_counts=atac_settings["max_counts"], min_cells=min_cells,
                                         binarize=bool(atac_settings["binarize"]), n_components=n_pcs,
                                         depth_threshold=atac_settings["depth_threshold"], random_state=random_state,
                                         fragments=fragments, tss=genes_table,
                                         min_fragments=atac_settings["min_fragments"] if fragments else None,
                                         embedding=atac_settings["embedding"], landmarks=atac_settings["landmarks"],
                                         max_memory=max_memory, chunk_cells=chunk_cells, client=client)
        if cells.fragments_qc is not None:
            _record_fragments(record, cells.fragments_qc)
        return cells
    from .chunked import preprocess_chunked

    return preprocess_chunked(source, batch_key=batch_keys[0] if batch_keys else None, mito_prefix=mito_prefix,
                              min_genes=min_genes, max_genes=max_genes, max_pct_mito=max_pct_mito,
                              min_cells=min_cells, n_top_genes=n_top_genes, n_pcs=n_pcs, max_memory=max_memory,
                              chunk_cells=chunk_cells, client=client)


def _record_chunked(adata: ad.AnnData, record: RunRecord, cells: Any, batch_keys: list[str]) -> str:
    """The chunked path's QC / HVG (or LSI) results in run.json; returns the embedding to correct."""
    for key in batch_keys:
        check_obs_key(adata, key, flag="--batch-key", min_levels=2)
    record.data["input_assumed"] = "counts"
    record.data["expression_source"] = cells.source.key
    record.data["qc_removed"] = cells.qc_removed
    record.data["after_qc"] = {"n_cells": adata.n_obs, "n_genes": adata.n_vars}
    record.data["chunking"] = cells.plan.to_dict()
    if "X_lsi" in adata.obsm:
        record.data["lsi"] = _lsi_record(adata, cells.depth, cells.binarize)
        record.data["skipped_steps"] = ["hvg", "pca"]
        return "X_lsi"
    if "X_spectral" in adata.obsm:
        _record_spectral(adata, record)
        record.data["skipped_steps"] = ["hvg", "pca"]
        return "X_spectral"
    record.data["n_hvg"] = int(adata.var["highly_variable"].sum())
    record.data["skipped_steps"] = []
    return "X_pca"


def _chunked_samples(adata: ad.AnnData, record: RunRecord, cells: Any, random_state: int,
                     pool: np.ndarray | None = None) -> tuple[ad.AnnData, ad.AnnData]:
    """Expression of a per-cluster sample (Wilcoxon markers) and of a random sample (marker UMAPs), from the file.

    ``pool``: the marker-UMAP cells are drawn from these positions (the laid-out UMAP sample).
    """
    from .chunked.samples import expression_samples

    with record.timer("read_samples"):
        marker_data, figure_data, sampled = expression_samples(cells, adata, "leiden", random_state=random_state,
                                                               pool=pool)
    record.data["samples"] = sampled
    info(f"markers on a per-cluster sample of {sampled['marker_cells']} cells (at most "
         f"{sampled['marker_cells_per_cluster']} per cluster); marker UMAPs on {sampled['figure_cells']} cells")
    return marker_data, figure_data


# ----------------------------------------------------------------------------- scATAC-seq

#: ATAC settings of :func:`integrate` (``atac_params``) and their defaults.
ATAC_DEFAULTS: dict[str, Any] = {
    "min_counts": 50, "min_peaks": 20, "max_counts": None, "min_fragments": None, "binarize": False,
    "depth_threshold": 0.75, "fragments": None, "genes": None, "embedding": "lsi", "landmarks": None,
}


def _atac_settings(atac_params: dict[str, Any] | None) -> dict[str, Any]:
    settings = dict(ATAC_DEFAULTS)
    unknown = sorted(set(atac_params or {}) - set(settings))
    if unknown:
        raise ScamlError(f"unknown ATAC settings {unknown}; use {sorted(settings)}.")
    settings.update(atac_params or {})
    if settings["embedding"] not in ("lsi", "spectral"):
        raise ScamlError(f"unknown ATAC embedding {settings['embedding']!r}; use lsi (Signac's TF-IDF + SVD) or "
                         "spectral (SnapATAC2's Laplacian eigenmaps) with --atac-embedding.")
    return settings


def _read(path: Path, modality: str) -> ad.AnnData:
    """The input; 10x peak files (Cell Ranger ATAC, or ARC with --modality atac) keep their peak features."""
    from .atac.features import is_10x_peak_file, read_peak_matrix

    is_10x = path.is_dir() or path.name.lower().endswith(".h5")
    if is_10x and (modality == "atac" or (modality == "auto" and is_10x_peak_file(path))):
        return read_peak_matrix(path)
    if is_10x:
        from .cite import read_cite

        return read_cite(path)  # a feature-barcoding file keeps its antibody counts (obsm["protein_expression"])
    return read_input(path)


def _modality(adata: ad.AnnData, modality: str, use_rep: str | None) -> str:
    """``"atac"`` or ``"rna"``: as given, or (``"auto"``) ATAC when the feature names parse as peaks."""
    from .atac import looks_like_peaks

    if modality not in ("auto", "rna", "atac"):
        raise ScamlError(f"unknown modality {modality!r}; use auto, rna or atac.")
    if modality == "auto":
        modality = "atac" if use_rep is None and looks_like_peaks(adata.var_names) else "rna"
        if modality == "atac":
            info("the features are named like peaks (chr-start-end): running the ATAC path "
                 "(pass --modality rna to treat them as genes)")
    if modality == "atac" and use_rep is not None:
        raise ScamlError("--use-rep corrects an existing embedding and skips the ATAC steps; drop --modality atac "
                         "(or --use-rep) to choose one.")
    return modality


def _prepare_atac(adata: ad.AnnData, record: RunRecord, settings: dict[str, Any], genes_table: pd.DataFrame | None,
                  *, input_kind: str,
                  min_cells: int, n_components: int, random_state: int) -> str:
    """Peak coordinates -> (fragments QC) -> QC filter -> TF-IDF -> LSI -> depth check; returns ``"X_lsi"``."""
    from . import atac
    from .io import count_matrix_problem

    if input_kind == "normalized":
        raise ScamlError("the ATAC path needs peak counts, not normalised values; drop --input-kind normalized.")
    source = "X"
    if "counts" in adata.layers and count_matrix_problem(adata.layers["counts"]) is None:
        adata.X, source = adata.layers["counts"].copy(), 'layers["counts"]'
    problem = count_matrix_problem(adata.X)
    if problem is not None:
        raise ScamlError(
            f"the ATAC path needs peak counts but {source} is not a count matrix: {problem}. Put the raw peak "
            "counts (non-negative integers, binarised is fine) in X or layers['counts']."
        )
    record.data["input_assumed"] = "counts"
    record.data["expression_source"] = source
    atac.add_peak_coordinates(adata)
    info(f"input: {adata.n_obs} cells x {adata.n_vars} peaks on {adata.var['chrom'].nunique()} chromosomes "
         f"({source} holds counts)")
    removed: dict[str, int] = {}
    if settings.get("fragments") is not None:
        with record.timer("fragments_qc"):
            summary = atac.fragment_qc(adata, settings["fragments"], tss=genes_table)
        _record_fragments(record, summary)
        if settings.get("min_fragments") is not None:
            keep = adata.obs["n_fragments"].to_numpy() >= int(settings["min_fragments"])
            removed["cells_removed_min_fragments"] = int((~keep).sum())
            if not keep.any():
                raise ScamlError(f"--min-fragments {settings['min_fragments']} removes every cell; lower it.")
            adata._inplace_subset_obs(keep)
    with record.timer("qc"):
        removed.update(atac.qc_filter_peaks(adata, min_counts=int(settings["min_counts"]),
                                            min_peaks=int(settings["min_peaks"]), max_counts=settings["max_counts"],
                                            min_cells=min_cells))
    record.data["qc_removed"] = removed
    info(f"ATAC QC kept {adata.n_obs} cells and {adata.n_vars} peaks ({removed})")
    record.data["after_qc"] = {"n_cells": adata.n_obs, "n_genes": adata.n_vars}
    record.data["skipped_steps"] = ["hvg", "pca"]
    if settings["embedding"] == "spectral":
        with record.timer("spectral"):
            adata.layers["counts"] = adata.X.copy()
            adata.X = atac.tfidf(adata.layers["counts"], binarize=bool(settings["binarize"]))  # for marker peaks
            atac.run_spectral(adata, n_components, layer="counts", binarize=bool(settings["binarize"]),
                              random_state=random_state)
        _record_spectral(adata, record)
        return "X_spectral"
    with record.timer("tfidf_lsi"):
        check = atac.run_lsi(adata, n_components, binarize=bool(settings["binarize"]),
                             depth_threshold=settings["depth_threshold"], random_state=random_state)
    record.data["lsi"] = _lsi_record(adata, check, bool(settings["binarize"]))
    return "X_lsi"


def _atac_inputs(record: RunRecord, settings: dict[str, Any]) -> pd.DataFrame | None:
    """The ATAC inputs besides the peaks in run.json; the gene annotation (TSS enrichment, gene activity), read once,
    when given."""
    from .atac import read_gene_annotation

    genes_table = None
    if settings.get("genes") is not None:
        genes_table = read_gene_annotation(settings["genes"])
        record.inputs["genes"] = str(settings["genes"])
    if settings.get("fragments") is not None:
        record.inputs["fragments"] = str(settings["fragments"])
    elif settings.get("min_fragments") is not None:
        warn("--min-fragments needs --fragments; it is ignored (--min-counts filters counts in peaks)")
    return genes_table


def _record_fragments(record: RunRecord, summary: dict[str, Any]) -> None:
    """The fragments QC summary in run.json and the log."""
    record.data["fragments_qc"] = summary
    info(f"fragments: {summary['n_fragments_read']} fragments of {summary['cells_with_fragments']} cells; "
         f"median FRiP {summary['median_frip']:.2f}"
         + (f", median TSS enrichment {summary['median_tss_enrichment']:.2f}"
            if "median_tss_enrichment" in summary else ""))


def _record_spectral(adata: ad.AnnData, record: RunRecord) -> None:
    """run.json's ``spectral`` entry, said in the log."""
    record.data["spectral"] = dict(adata.uns["spectral"])
    values = adata.uns["spectral"]["eigenvalues"]
    info(f"spectral embedding (SnapATAC2's cosine Laplacian eigenmaps): {adata.obsm['X_spectral'].shape[1]} "
         f"components after the first (the degree); eigenvalues {values[0]:.3f} ... {values[-1]:.3f}")


def _lsi_record(adata: ad.AnnData, check: Any, binarize: bool) -> dict[str, Any]:
    """run.json's ``lsi`` entry (components, binarisation, the depth check), the depth check said in the log."""
    lsi_info: dict[str, Any] = {"n_components": int(adata.obsm["X_lsi"].shape[1]), "binarize": bool(binarize)}
    if check is not None:
        info(check.describe())
        lsi_info.update({"depth_correlation": [round(float(r), 4) for r in check.correlations],
                         "depth_component_dropped": int(check.dropped[0] + 1) if check.dropped else None,
                         "depth_threshold": check.threshold, "depth_check": check.describe()})
    return lsi_info


def _write_gene_activity(adata: ad.AnnData, outdir: Path, record: RunRecord, genes: pd.DataFrame,
                         cells: Any = None) -> None:
    """Gene activity of the QC-passed cells from their peak counts, as ``gene_activity.h5ad``; with ``cells``
    (the chunked path) computed and written chunk by chunk from the peak file."""
    from .atac import gene_activity, peak_gene_map

    with record.timer("gene_activity"):
        if cells is None:
            activity = gene_activity(adata, genes, layer="counts")
            write_h5ad(activity, outdir / "gene_activity.h5ad")
        else:
            from .chunked import write_streamed_h5ad

            genes_map = peak_gene_map(adata.var, genes)
            activity = ad.AnnData(obs=adata.obs.copy(), var=genes_map.var.copy())
            activity.uns["gene_activity"] = dict(genes_map.uns)
            write_streamed_h5ad(activity, outdir / "gene_activity.h5ad", cells.activity_chunks(genes_map.mapping))
    record.data["gene_activity"] = {"file": "gene_activity.h5ad", "n_genes": int(activity.n_vars),
                                    **activity.uns["gene_activity"]}
    record.save(outdir)
    info(f"wrote {outdir}/gene_activity.h5ad ({activity.n_vars} genes with peaks over body + 2 kb upstream)")


def _basis_label(adata: ad.AnnData, modality: str | None) -> str:
    """The uncorrected embedding's name in figure titles: PCA, LSI or spectral."""
    if modality != "atac":
        return "PCA"
    return "spectral" if "X_spectral" in adata.obsm else "LSI"


def _plot_clusters_only(adata: ad.AnnData, path: Path, modality: str | None) -> None:
    """UMAP coloured by cluster, for runs without a batch key (nothing to compare)."""
    import matplotlib.pyplot as plt

    from .io import save_figure
    from .plotting import scatter_categories

    fig, ax = plt.subplots(figsize=(7, 5.6))
    basis = _basis_label(adata, modality)
    scatter_categories(ax, adata.obsm["X_umap"], adata.obs["leiden"],
                       title=f"UMAP of {basis} (no batch correction): leiden clusters", legend_on_data=True)
    save_figure(fig, path)
