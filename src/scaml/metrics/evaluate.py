"""Evaluate embeddings of an AnnData object: all metrics, one row per embedding, and the output files."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._utils import Timer, info
from ..errors import ScamlError
from ..neighbors import Neighbors, compute_neighbors, umap_connectivities
from .clustering import DEFAULT_RESOLUTIONS, isolated_label_asw, nmi_ari_leiden_sweep
from .graph import graph_connectivity
from .kbet import kbet_per_label
from .lisi import clisi_scaled, ilisi_scaled, inverse_simpson, lisi_weights
from .pcr import pcr_comparison
from .silhouette import batch_asw, group_means, silhouette_samples, stratified_rows
from .summary import BATCH_METRICS, BIO_METRICS, metrics_table, summarize

DEFAULT_EMBEDDINGS = ("X_pca", "X_pca_harmony")


class _Steps(Timer):
    """Wall-clock (``seconds``) and process CPU time (``cpu_seconds``) of named steps."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.process_time()
        try:
            with super().__call__(name):
                yield
        finally:
            self.cpu_seconds[name] = round(self.cpu_seconds.get(name, 0.0) + time.process_time() - start, 3)


def embedding_metrics(
    X: np.ndarray,
    batches: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    X_reference: np.ndarray | None = None,
    n_neighbors: int = 15,
    perplexity: float = 30,
    resolutions: Sequence[float] = DEFAULT_RESOLUTIONS,
    neighbor_method: str = "auto",
    asw_max_cells: int | None = None,
    random_state: int = 0,
    neighbors: Neighbors | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """All integration metrics of one embedding, from one shared neighbour search.

    Parameters
    ----------
    X
        ``(n_cells, n_dims)`` embedding.
    batches
        ``(n_cells,)`` batch of each cell.
    labels
        ``(n_cells,)`` cell-type label of each cell, or None for the batch metrics only.
    X_reference
        Unintegrated embedding of the same cells for the PCR comparison (None: skipped).
    n_neighbors
        Neighbourhood size of the graph metrics (graph connectivity, Leiden), counting
        the cell itself as scanpy does.
    perplexity
        LISI perplexity; LISI uses ``3 * perplexity`` neighbours.
    resolutions
        Leiden resolutions of the NMI / ARI sweep.
    neighbor_method
        ``"auto"`` (exact up to 50,000 cells, pynndescent above), ``"exact"`` or
        ``"pynndescent"`` (see :func:`scaml.neighbors.compute_neighbors`); the
        ``neighbor_method`` of the result says which search ran.
    asw_max_cells
        With more cells than this, the silhouette metrics (label ASW, batch ASW,
        isolated label) average the exact silhouettes of a stratified random
        sample of about this many cells (each still measured against all cells)
        instead of every cell, and the notes say so. None: every cell.
    random_state
        Seed for Leiden, pynndescent and the silhouette sample.
    neighbors
        A search already done on ``X`` (e.g. the one behind the pipeline's kNN graph) with at
        least ``max(3 * perplexity, n_neighbors)`` neighbours, used instead of searching again.

    Returns
    -------
    metrics
        Metric name -> value, the summary scores, details and ``notes`` (a list of strings).
    details
        ``timings`` (wall seconds per step), ``cpu_timings`` (CPU seconds per step), ``per_label`` (a DataFrame) and ``leiden_sweep``.
    """
    timed = _Steps()
    run = _Run(X, batches, labels, timed)
    out = run.out
    k = max(int(round(3 * perplexity)), n_neighbors)
    with timed("neighbors"):
        k = int(min(k, X.shape[0] - 1))
        if neighbors is not None and neighbors.n_cells == X.shape[0] and neighbors.k >= k:
            nb = neighbors.subset(k)
        else:
            nb = compute_neighbors(X, k, method=neighbor_method, random_state=random_state)
    out.update(n_cells=X.shape[0], n_dims=X.shape[1], n_batches=run.n_batches,
               n_labels=run.n_labels if run.has_labels else np.nan, neighbor_method=nb.method)
    graph_k = min(n_neighbors - 1, nb.k)
    with timed("lisi_kernel"):
        lisi = lisi_weights(nb, perplexity)
    _batch_correction(run, nb, lisi, graph_k, X_reference, asw_max_cells, random_state)
    _bio_conservation(run, nb, lisi, graph_k, resolutions, random_state)
    return _finish(run)


class _Run:
    """One embedding's inputs (coded), results, notes and timings, shared by the steps of :func:`embedding_metrics`."""

    def __init__(self, X: np.ndarray, batches: np.ndarray, labels: np.ndarray | None, timed: _Steps) -> None:
        self.X = X
        self.timed = timed
        self.notes: list[str] = []
        self.per_label: list[pd.DataFrame] = []
        self.sweep: pd.DataFrame | None = None
        self.out: dict[str, Any] = {m: float("nan") for m in (*BATCH_METRICS, *BIO_METRICS)}
        self.b_codes = pd.factorize(np.asarray(batches), sort=True)[0]
        self.n_batches = int(self.b_codes.max()) + 1
        self.has_labels = labels is not None
        self.l_codes: np.ndarray | None = None
        self.n_labels = 0
        if labels is not None:
            codes, names = pd.factorize(np.asarray(labels), sort=True)
            self.l_codes = codes
            self.n_labels = int(codes.max()) + 1
            #: each cell's label (all cells one group without labels), for the per-label metrics
            self.group_names = np.asarray(names)[codes]
        else:
            self.group_names = np.full(X.shape[0], "all cells")
        self.fraction = 1.0


def _batch_correction(
    run: _Run,
    nb: Neighbors,
    lisi: tuple[np.ndarray, np.ndarray],
    graph_k: int,
    X_reference: np.ndarray | None,
    asw_max_cells: int | None,
    random_state: int,
) -> None:
    """iLISI, kBET, batch ASW, graph connectivity and PCR comparison, into ``run``."""
    X, out, notes, timed = run.X, run.out, run.notes, run.timed
    b_codes, n_batches = run.b_codes, run.n_batches
    with timed("ilisi"):
        lisi_b = inverse_simpson(*lisi, b_codes)
        out["ilisi_median"] = float(np.nanmedian(lisi_b))
        if n_batches > 1:
            out["ilisi"] = ilisi_scaled(lisi_b, n_batches)
    if n_batches < 2:
        notes.append("one batch only: iLISI, kBET, batch ASW and PCR comparison need two or more batches")
    if not run.has_labels:
        notes.append("no label key: kBET, batch ASW and graph connectivity treat all cells as one group; "
                      "bio-conservation metrics need a label key")
    with timed("kbet"):
        if n_batches > 1:
            out["kbet"], tab, kb_notes = kbet_per_label(X, nb, b_codes, run.group_names)
            notes += kb_notes
            run.per_label.append(tab.set_index("label")[["n_cells", "n_batches", "k0", "acceptance_rate"]]
                                 .rename(columns={"acceptance_rate": "kbet"}))
    run.fraction = _silhouette_fraction(X.shape[0], asw_max_cells, notes)
    with timed("batch_asw"):
        if n_batches > 1:
            out["batch_asw"], tab, asw_notes = batch_asw(X, b_codes, run.group_names, fraction=run.fraction,
                                                         random_state=random_state)
            notes += asw_notes
            run.per_label.append(tab.set_index("label")[["batch_asw"]])
    with timed("graph_connectivity"):
        out["graph_connectivity"], tab = graph_connectivity(nb, run.group_names, k=graph_k)
        run.per_label.append(tab.set_index("label")[["largest_component_fraction"]]
                             .rename(columns={"largest_component_fraction": "graph_connectivity"}))
    with timed("pcr_comparison"):
        if X_reference is None:
            notes.append("PCR comparison: no unintegrated reference embedding given")
        elif n_batches > 1:
            score, before, after = pcr_comparison(X_reference, X, b_codes)
            out.update(pcr_comparison=score, pcr_before=before, pcr_after=after)
            if X_reference is X or (X_reference.shape == X.shape and np.array_equal(X_reference, X)):
                notes.append("PCR comparison of the reference embedding with itself is 0 by definition")


def _silhouette_fraction(n_cells: int, asw_max_cells: int | None, notes: list[str]) -> float:
    """Fraction of the cells whose silhouettes the ASW metrics average (1: all), with a note when sampled."""
    fraction = 1.0 if not asw_max_cells or n_cells <= asw_max_cells else asw_max_cells / n_cells
    if fraction < 1:
        notes.append(f"silhouette metrics (label ASW, batch ASW, isolated label) average the exact silhouettes "
                     f"of a stratified random {fraction:.0%} of the cells (asw_max_cells={asw_max_cells})")
    return fraction


def _bio_conservation(
    run: _Run,
    nb: Neighbors,
    lisi: tuple[np.ndarray, np.ndarray],
    graph_k: int,
    resolutions: Sequence[float],
    random_state: int,
) -> None:
    """cLISI, NMI and ARI of Leiden clusters, label ASW and isolated-label ASW, into ``run``."""
    out, notes, timed = run.out, run.notes, run.timed
    l_codes, n_labels = run.l_codes, run.n_labels
    if l_codes is None:
        return
    if n_labels < 2:
        notes.append("one label only: NMI, ARI, label ASW, cLISI and isolated label need two or more labels")
    with timed("clisi"):
        lisi_l = inverse_simpson(*lisi, l_codes)
        out["clisi_median"] = float(np.nanmedian(lisi_l))
        if n_labels > 1:
            out["clisi"] = clisi_scaled(lisi_l, n_labels)
    if n_labels < 2:
        return
    with timed("nmi_ari"):
        conn = umap_connectivities(nb, k=graph_k)
        nmi, ari, res, sweep = nmi_ari_leiden_sweep(conn, l_codes, tuple(resolutions), random_state=random_state)
        out.update(nmi=nmi, ari=ari, leiden_resolution=res,
                   leiden_n_clusters=int(sweep.loc[sweep["resolution"] == res, "n_clusters"].iloc[0]))
        run.sweep = sweep
    with timed("label_asw"):
        sil_rows = stratified_rows(l_codes, run.fraction, random_state=random_state)
        sil = silhouette_samples(run.X, l_codes, rows=sil_rows)
        per_label_sil = group_means(sil, l_codes[sil_rows])  # indexed by label code
        label_sizes = np.bincount(l_codes, minlength=n_labels)[per_label_sil.index]
        mean_sil = float(np.dot(per_label_sil, label_sizes) / label_sizes.sum())
        out["label_asw"] = (mean_sil + 1) / 2  # scIB scaling, as label_asw()
    with timed("isolated_label"):
        if run.n_batches > 1:
            out["isolated_label"], iso_notes = isolated_label_asw(
                sil, run.group_names[sil_rows], run.b_codes[sil_rows],
                all_labels=run.group_names, all_batches=run.b_codes,
            )
            notes += iso_notes
        else:
            notes.append("isolated label needs two or more batches")


def _finish(run: _Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary scores, total time and notes in the metrics; the per-label table and the details."""
    out = run.out
    scores, score_notes = summarize(out)
    out.update(scores)
    run.notes += score_notes
    out["seconds"] = round(sum(run.timed.seconds.values()), 3)
    out["notes"] = run.notes
    table = pd.concat(run.per_label, axis=1) if run.per_label else pd.DataFrame()
    table.index.name = "label"
    details = {"timings": dict(run.timed.seconds), "cpu_timings": dict(run.timed.cpu_seconds),
               "per_label": table, "leiden_sweep": run.sweep}
    return out, details


def _obs_column(adata, key: str, flag: str) -> pd.Series:
    from ..io import check_obs_key

    return check_obs_key(adata, key, flag=flag, min_levels=1)


def evaluate_embeddings(
    adata,
    batch_key: str,
    label_key: str | None = None,
    embeddings: Sequence[str] = DEFAULT_EMBEDDINGS,
    *,
    reference: str | None = "X_pca",
    n_neighbors: int = 15,
    perplexity: float = 30,
    neighbor_method: str = "auto",
    asw_max_cells: int | None = None,
    random_state: int = 0,
    subsample: int | None = None,
    return_details: bool = False,
    neighbors: dict[str, Neighbors] | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Any]]:
    """scIB integration metrics of several embeddings of the same cells.

    Every embedding gets one neighbour search shared by all its metrics:
    iLISI, kBET, batch ASW, graph connectivity and PCR comparison (batch
    correction); NMI and ARI of Leiden clusters, label ASW, cLISI and the
    isolated-label ASW (bio conservation, only with ``label_key``); and the
    scIB summary scores. A metric that cannot be computed (one batch, one label,
    a label present in one batch only) is NaN and the ``notes`` column says why.

    Parameters
    ----------
    adata
        AnnData with the embeddings in ``obsm``.
    batch_key
        ``obs`` column of the batches.
    label_key
        ``obs`` column of the cell types, or None for the batch metrics only.
    embeddings
        ``obsm`` keys to evaluate.
    reference
        ``obsm`` key of the unintegrated embedding for the PCR comparison
        (None or absent: that metric is NaN with a note).
    n_neighbors
        Neighbourhood size of graph connectivity and Leiden (counting the cell, as scanpy).
    perplexity
        LISI perplexity (neighbourhoods of ``3 * perplexity`` cells).
    neighbor_method
        ``"auto"`` (exact up to 50,000 cells, pynndescent above), ``"exact"`` or ``"pynndescent"``.
    asw_max_cells
        Above this many cells, the silhouette metrics use the exact silhouettes
        of a stratified random sample of about this many cells (said in the
        notes); None (default) uses every cell.
    random_state
        Seed of Leiden and of the subsamples.
    subsample
        Evaluate on a random subset of this many cells (all metrics, said in the
        notes); None uses every cell.
    return_details
        Also return per-embedding timings, per-label tables and Leiden sweeps.
    neighbors
        Searches already done on the embeddings (obsm key -> :class:`~scaml.neighbors.Neighbors`
        over every cell), reused when every cell is evaluated.

    Returns
    -------
    pandas.DataFrame
        One row per embedding: the metrics, ``batch_score``, ``bio_score``,
        ``total`` (0.4 batch + 0.6 bio), raw values and ``notes``.
    """
    from ..io import check_obsm_key

    if isinstance(embeddings, str):
        embeddings = [embeddings]
    if not embeddings:
        raise ScamlError("no embedding to evaluate; pass one or more obsm keys with --embeddings.")
    batch_col = _obs_column(adata, batch_key, "--batch-key")
    label_col = _obs_column(adata, label_key, "--label-key") if label_key is not None else None
    arrays = {key: check_obsm_key(adata, key, flag="--embeddings") for key in embeddings}
    ref = None
    if reference is not None and reference in adata.obsm:
        ref = check_obsm_key(adata, reference)
    if n_neighbors < 2:
        raise ScamlError(f"n_neighbors must be at least 2; got {n_neighbors}.")
    if perplexity <= 0:
        raise ScamlError(f"perplexity must be positive; got {perplexity}.")

    keep = batch_col.notna().to_numpy()
    common_notes = []
    if label_col is not None:
        keep &= label_col.notna().to_numpy()
    if not keep.all():
        common_notes.append(f"{int((~keep).sum())} cells without a batch or label were left out")
    cells = np.flatnonzero(keep)
    n_total = adata.n_obs
    if subsample is not None:
        if subsample < 10:
            raise ScamlError(f"subsample must be at least 10 cells; got {subsample}.")
        if cells.size > subsample:
            rng = np.random.default_rng(random_state)
            cells = np.sort(rng.choice(cells, size=subsample, replace=False))
            common_notes.append(f"all metrics computed on a random subset of {subsample} of {n_total} cells")
    if cells.size < 3:
        raise ScamlError(f"only {cells.size} cells to evaluate; at least 3 are needed.")
    batches = batch_col.to_numpy()[cells]
    labels = label_col.to_numpy()[cells] if label_col is not None else None

    rows, details = [], {}
    for key, X in arrays.items():
        info(f"metrics of {key} ({cells.size} cells x {X.shape[1]} dims)")
        row, det = embedding_metrics(
            X[cells], batches, labels,
            X_reference=None if ref is None else ref[cells],
            n_neighbors=n_neighbors, perplexity=perplexity, neighbor_method=neighbor_method,
            asw_max_cells=asw_max_cells, random_state=random_state,
            neighbors=(neighbors or {}).get(key) if cells.size == n_total else None,
        )
        if ref is None:
            row["notes"] = [n for n in row["notes"] if not n.startswith("PCR comparison")]
            row["notes"].append(
                f"PCR comparison: reference embedding {reference!r} not in adata.obsm" if reference
                else "PCR comparison: no reference embedding given"
            )
        row["notes"] = "; ".join(common_notes + row["notes"])
        row["embedding"] = key
        row["n_cells_total"] = n_total
        rows.append(row)
        details[key] = det
    table = metrics_table(rows)
    return (table, details) if return_details else table


def evaluate(
    path_or_adata,
    batch_key: str,
    label_key: str | None = None,
    embeddings: Sequence[str] = DEFAULT_EMBEDDINGS,
    out: str | os.PathLike = "scaml_evaluate",
    overwrite: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Evaluate embeddings and write the results to an output directory.

    Writes ``out/metrics.csv`` and ``out/metrics.json`` (one row per embedding),
    ``out/metrics_per_label.csv`` (kBET, batch ASW and graph connectivity per
    label), ``out/metrics_leiden_sweep.csv`` (NMI / ARI per Leiden resolution,
    with labels), ``out/figures/metrics_comparison.png``, ``out/run.json`` and last
    ``out/report.html`` (:func:`scaml.report.maybe_write_report`: a report that cannot
    be built is a warning, not an error).

    Parameters
    ----------
    path_or_adata
        An h5ad (or other :func:`scaml.io.read_input` format) path, or an AnnData.
    batch_key, label_key, embeddings
        As :func:`evaluate_embeddings`.
    out
        Output directory (created; an existing non-empty one needs ``overwrite``).
    overwrite
        Replace an existing output directory.
    **kwargs
        Passed to :func:`evaluate_embeddings` (``reference``, ``n_neighbors``,
        ``perplexity``, ``neighbor_method``, ``asw_max_cells``, ``random_state``, ``subsample``).

    Returns
    -------
    pandas.DataFrame
        The metrics table.
    """
    from ..io import prepare_outdir, read_input, write_csv, write_json
    from ..report import maybe_write_report
    from ..runinfo import RunRecord
    from .plot import plot_metrics

    is_path = isinstance(path_or_adata, (str, os.PathLike))
    params = {"batch_key": batch_key, "label_key": label_key, "embeddings": list(embeddings), **kwargs}
    record = RunRecord("evaluate", parameters=params,
                       inputs={"input": str(path_or_adata)} if is_path else {})
    target = Path(out)
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        prepare_outdir(target, overwrite=False)  # raises the standard "already exists" error before any work
    with record.timer("read"):
        adata = read_input(path_or_adata) if is_path else path_or_adata
    # validate before touching the output directory
    table, details = evaluate_embeddings(adata, batch_key, label_key, embeddings, return_details=True, **kwargs)
    outdir = prepare_outdir(out, overwrite=overwrite, protect=[path_or_adata] if is_path else [])
    for key, det in details.items():
        for name, seconds in det["timings"].items():
            record.timer.seconds[f"{key}: {name}"] = seconds
    record.data = {"n_cells": int(adata.n_obs), "n_embeddings": len(table),
                   "embeddings": {k: list(adata.obsm[k].shape) for k in embeddings}}
    with record.timer("write"):
        write_csv(table, outdir / "metrics.csv", index=False)
        write_json(table.to_dict(orient="records"), outdir / "metrics.json")
        per_label = [det["per_label"].reset_index().assign(embedding=key) for key, det in details.items()
                     if len(det["per_label"])]
        if per_label:
            frame = pd.concat(per_label, ignore_index=True)
            frame = frame[["embedding", *[c for c in frame.columns if c != "embedding"]]]
            write_csv(frame, outdir / "metrics_per_label.csv", index=False)
        sweeps = [det["leiden_sweep"].assign(embedding=key) for key, det in details.items()
                  if det["leiden_sweep"] is not None]
        if sweeps:
            frame = pd.concat(sweeps, ignore_index=True)
            write_csv(frame[["embedding", "resolution", "n_clusters", "nmi", "ari"]],
                      outdir / "metrics_leiden_sweep.csv", index=False)
        plot_metrics(table, Path(outdir) / "figures" / "metrics_comparison.png")
    record.save(outdir)
    info(f"metrics written to {outdir}")
    maybe_write_report(outdir)
    return table
