"""Map scATAC-seq cells onto an RNA reference through their gene activity (``scaml map --modality atac``).

The ATAC cells' gene activity (:func:`scaml.atac.gene_activity`: peak counts, or fragments, over each gene
body + 2 kb upstream) is what they share with an RNA reference. It is far sparser than RNA (on Granja's
5,000 random peaks a cell has a median of 23 activity counts over the genes it shares with the RNA set),
so two steps come before the mapping:

1. **Smoothing over the query's own neighbours.** Each cell's activity is summed with that of its
   ``smooth_neighbors`` nearest ATAC cells in the query's spectral embedding (SnapATAC2's Laplacian
   eigenmaps, :func:`scaml.atac.spectral`; ``graph_embedding="lsi"``: Signac's TF-IDF + SVD, the depth
   component dropped), as gene scores are imputed before integration in ArchR. The ATAC cells' own
   neighbourhoods are reliable (their peaks separate the types); the genes of a single cell are not. On
   Granja's very sparse peaks the spectral neighbourhoods are purer (ARI of Leiden 0.64 vs LSI's 0.37), and
   the transfer gains 8 points on the shared types (benchmarks/README.md).
2. **Scaling within the query.** Gene activity is not expression: its per-gene level and spread differ.
   The log-normalised activity (each cell's counts over its total, times the median total, log1p) is
   standardised per gene over the query cells (clipped at 10), as Seurat scales each modality on its
   own before transfer anchors. Scaling with the RNA reference's means puts every ATAC cell at one end
   of the reference (all called one type on Granja).

**Symphony references** (recommended): the scaled activity of the genes shared with the reference is
projected with the reference's PCA loadings of those genes (the other genes contribute nothing), then
soft-assigned and corrected by Symphony's mixture of experts with the ATAC batches as query batches
(:mod:`scaml.mapping.symphony`). **VAE references** (``scvi``, ``scanvi``...): the smoothed activity
counts are the query of the usual surgery, the reference genes without activity set to zero
(min_gene_overlap does not apply: the peaks decide the overlap). Peak references (``peakvi``,
``poissonvi``) take ATAC peaks directly and are refused here.

Labels are then transferred by the weighted kNN of RNA mapping (:mod:`scaml.mapping.transfer`), with
its uncertainty and Unknown call. That uncertainty only sees which reference cells are nearest: an ATAC
cell far from every reference cell still has all its neighbours in one cluster. So a Symphony mapping
also writes ``obs["mapping_confidence"]`` (:func:`centroid_confidence`, judged after the first correction
round as Symphony's confidence is): how decisively the cell points at one reference label's centroid
rather than the next. Cells of a type the reference lacks fall between the labels and get low values
(simulated: 60-80 % below 0.5, the shared types almost none); on Granja's 5,000 random peaks they do
not (benchmarks/README.md). By default the per-label probabilities of the weighted kNN are then averaged
over the same ATAC neighbourhoods before the call (:func:`neighbour_vote`; ``neighbour_vote=False`` turns
it off): on Granja it raises the shared types' accuracy from 0.83 to 0.91 and calls 18 % of the absent
types Unknown (0.7 % without).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import info, warn
from ..errors import ScamlError
from ..runinfo import RunRecord
from .methods import MappedQuery, MappingMethod, MapSettings, Prepared
from .refdir import ReferenceDir
from .transfer import neighbour_vote

#: ATAC neighbours whose gene activity is summed with each cell's (0: no smoothing).
SMOOTH_NEIGHBORS = 20
#: Components of the embedding of the query's own neighbour graph.
GRAPH_COMPONENTS = 20
#: The embedding of that graph: SnapATAC2's spectral embedding ("spectral") or Signac's LSI ("lsi").
GRAPH_EMBEDDING = "spectral"
#: Fewer shared genes than this gives a warning.
FEW_GENES = 50
_CLIP = 10.0
_PEAK_METHODS = ("peakvi", "poissonvi")


@dataclass
class AtacQuery:
    """An ATAC query made ready for an RNA reference (:func:`prepare_atac_query`).

    Attributes
    ----------
    activity
        Cells x genes gene activity (every annotated gene with activity; raw counts).
    aligned
        Cells x the reference genes that have activity: the counts the mapping reads (smoothed when
        ``neighbors`` is set), with the query's obs.
    neighbors
        Cells x k indices of each cell's nearest ATAC cells in the query's own embedding (None: no smoothing).
    summary
        What was computed (genes annotated, with activity, shared; counts per cell; smoothing), for run.json.
    vote
        Average the label probabilities over ``neighbors`` before the call (:func:`neighbour_vote`).
    """

    activity: ad.AnnData
    aligned: ad.AnnData
    neighbors: np.ndarray | None
    summary: dict[str, Any] = field(default_factory=dict)
    vote: bool = True


def reference_genes(reference: ReferenceDir) -> list[str]:
    """The genes a reference maps on (Symphony's HVGs, the VAE's genes); peak references are refused.

    Raises
    ------
    ScamlError
        The reference is a peak model (its features are peaks, not genes).
    """
    if reference.method in _PEAK_METHODS:
        raise ScamlError(
            f"reference {reference.path.name!r} is a {reference.method} peak model: map ATAC peaks onto it directly "
            "(without --modality atac); --modality atac maps ATAC cells onto an RNA reference through gene activity."
        )
    if reference.method == "symphony":
        from .symphony import SymphonyReference

        return [str(g) for g in SymphonyReference.load(reference.model_dir).var_names]
    from ..vae import load_model

    return [str(g) for g in load_model(reference.model_dir).genes]


def _smoothing_graph(peaks: ad.AnnData, k: int, n_components: int, random_state: int,
                     embedding: str = GRAPH_EMBEDDING) -> np.ndarray:
    """Each cell's ``k`` nearest ATAC cells in the spectral embedding (or the LSI, depth component dropped) of
    its peak counts."""
    from ..atac import run_lsi, spectral
    from ..neighbors import compute_neighbors

    counts = peaks.layers["counts"] if "counts" in peaks.layers else peaks.X
    light = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32))
    light.X.eliminate_zeros()
    has = np.diff(light.X.indptr) > 0  # spectral: cells without a count have no similarity, they sit at the origin
    n_components = int(min(n_components, min(int(has.sum()), light.n_vars) - 2))
    if n_components < 2:
        raise ScamlError(
            f"the ATAC query ({light.n_obs} cells x {light.n_vars} peaks) is too small for the embedding of its neighbour "
            "graph; map it with smooth_neighbors=0 (--smooth-neighbors 0)."
        )
    if embedding == "spectral":
        found = spectral(light.X[has], n_components, random_state=random_state).embedding
        coordinates = np.zeros((light.n_obs, found.shape[1]), dtype=np.float32)
        coordinates[has] = found
    else:
        run_lsi(light, n_components, random_state=random_state)
        coordinates = light.obsm["X_lsi"]
    return compute_neighbors(coordinates, k, random_state=random_state).indices


def smooth_counts(counts: Any, neighbors: np.ndarray) -> sp.csr_matrix:
    """Each cell's counts plus those of its neighbours (``neighbors``: cells x k indices); CSR float32."""
    n, k = neighbors.shape
    rows = np.repeat(np.arange(n), k + 1)
    cols = np.concatenate([np.arange(n)[:, None], neighbors], axis=1).ravel()
    W = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(n, n))
    return sp.csr_matrix(W @ sp.csr_matrix(counts, dtype=np.float32), dtype=np.float32)


def prepare_atac_query(
    peaks: ad.AnnData,
    genes_in_reference: list[str],
    annotation: str | os.PathLike | pd.DataFrame,
    *,
    fragments: str | os.PathLike | pd.DataFrame | None = None,
    upstream: int = 2000,
    smooth_neighbors: int = SMOOTH_NEIGHBORS,
    graph_embedding: str = GRAPH_EMBEDDING,
    graph_components: int = GRAPH_COMPONENTS,
    random_state: int = 0,
) -> AtacQuery:
    """Gene activity of ATAC cells, aligned to a reference's genes and smoothed over the cells' ATAC neighbours.

    Parameters
    ----------
    peaks
        ATAC cells x peaks (raw counts in ``layers["counts"]`` or X; ``var`` ``chrom``/``start``/``end`` or
        peak-named features); not modified.
    genes_in_reference
        The reference's genes (:func:`reference_genes`).
    annotation
        The gene annotation of the peaks' genome (GTF / GFF3 / BED path, or a table from
        :func:`scaml.atac.read_gene_annotation`), named as the reference's genes.
    fragments
        A fragments file of these cells: gene activity counts fragments instead of peak counts.
    upstream
        Base pairs before each TSS added to the gene body.
    smooth_neighbors
        ATAC neighbours summed into each cell's activity (0: none).
    graph_embedding
        The embedding of that neighbour graph: ``"spectral"`` (SnapATAC2's, the default) or ``"lsi"``.
    graph_components
        Its components.
    random_state
        Seed of the embedding and the neighbour search.

    Returns
    -------
    AtacQuery

    Raises
    ------
    ScamlError
        No annotated gene overlaps a peak (another genome build), or none of those genes is a reference gene.
    """
    from ..atac import gene_activity

    if int(smooth_neighbors) != smooth_neighbors or smooth_neighbors < 0:
        raise ScamlError(f"smooth_neighbors must be a whole number >= 0; got {smooth_neighbors!r} (--smooth-neighbors).")
    if graph_embedding not in ("spectral", "lsi"):
        raise ScamlError(f"unknown graph_embedding {graph_embedding!r}; use 'spectral' (the default) or 'lsi' "
                         "(--smooth-embedding).")
    started = time.perf_counter()
    activity = gene_activity(peaks, annotation, upstream, fragments=fragments)
    seconds = {"gene_activity": round(time.perf_counter() - started, 4)}
    ref_genes = pd.Index(genes_in_reference)
    shared = activity.var_names[activity.var_names.isin(ref_genes)]
    if shared.empty:
        raise ScamlError(
            f"none of the {activity.n_vars} annotated genes with gene activity (e.g. {list(activity.var_names[:3])}) is "
            f"among the reference's {len(ref_genes)} genes (e.g. {list(ref_genes[:3])}); give an annotation (--genes) "
            "that names genes as the reference does (symbols vs Ensembl IDs, same species)."
        )
    if len(shared) < FEW_GENES:
        warn(f"only {len(shared)} reference genes have gene activity in the ATAC query; the transfer may be poor")
    counts = activity[:, shared].X
    neighbors = None
    k = int(min(smooth_neighbors, peaks.n_obs - 1))
    if k > 0:
        started = time.perf_counter()
        neighbors = _smoothing_graph(peaks, k, graph_components, random_state, graph_embedding)
        counts = smooth_counts(counts, neighbors)
        seconds["lsi_neighbours_smoothing"] = round(time.perf_counter() - started, 4)
    aligned = ad.AnnData(X=sp.csr_matrix(counts, dtype=np.float32), obs=peaks.obs.copy(),
                         var=pd.DataFrame(index=pd.Index(shared.astype(str))))
    aligned.obs["gene_activity_total"] = np.asarray(activity.X.sum(axis=1)).ravel()
    per_cell = np.asarray(activity[:, shared].X.sum(axis=1)).ravel()
    summary = {
        "source": activity.uns["gene_activity"]["source"], "upstream": int(upstream),
        "n_genes_annotated": int(activity.uns["gene_activity"]["n_genes_annotated"]),
        "n_genes_with_activity": int(activity.n_vars), "n_reference_genes": len(ref_genes),
        "n_shared_genes": len(shared),
        "median_activity_per_cell_shared_genes": float(np.median(per_cell)),
        "cells_without_activity": int((per_cell == 0).sum()),
        "smooth_neighbors": k, "graph_embedding": graph_embedding if k > 0 else None,
        "graph_components": int(graph_components) if k > 0 else None, "seconds": seconds,
    }
    info(f"gene activity ({summary['source']}, gene body + {upstream} bp upstream): {activity.n_vars} of "
         f"{summary['n_genes_annotated']} annotated genes have activity, {len(shared)} of them among the "
         f"reference's {len(ref_genes)} genes; median {summary['median_activity_per_cell_shared_genes']:g} counts per "
         f"cell on those" + (f"; each cell's activity summed with its {k} nearest ATAC cells ({graph_embedding})"
                             if k else ""))
    return AtacQuery(activity, aligned, neighbors, summary)


def scale_activity(counts: Any) -> np.ndarray:
    """Log-normalised gene activity standardised per gene over the query cells (clipped at 10), float32.

    Each cell's counts over its total times the median total, log1p; then every gene centred and divided by
    its standard deviation over the cells (genes without variation: 0).
    """
    matrix = sp.csr_matrix(counts, dtype=np.float32)
    total = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    if (matrix.data < 0).any():
        raise ScamlError("gene activity must be non-negative counts; the ATAC query holds negative values. Pass the "
                         "raw peak counts (in X or layers['counts']).")
    scale = float(np.median(total[total > 0])) if (total > 0).any() else 1.0
    factor = (scale / np.maximum(total, 1e-12)).astype(np.float32)
    logged = sp.diags(factor) @ matrix
    logged.data = np.log1p(logged.data)
    mean = np.asarray(logged.mean(axis=0), dtype=np.float64).ravel()
    square = np.asarray(logged.multiply(logged).mean(axis=0), dtype=np.float64).ravel()
    n = logged.shape[0]
    sd = np.sqrt(np.maximum(square - mean**2, 0.0) * n / max(n - 1, 1))
    inv = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0).astype(np.float32)
    out = (logged.toarray() - mean.astype(np.float32)) * inv  # float32 dense: cells x shared genes
    return np.clip(out, -_CLIP, _CLIP, out=out)


def project_symphony(ref: Any, aligned: ad.AnnData, batch_key: str | None, iterations: int | None = None,
                     *, first_pass: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Scaled gene activity projected on a Symphony reference's loadings of the shared genes, then corrected.

    Parameters
    ----------
    ref
        A :class:`scaml.mapping.symphony.SymphonyReference`.
    aligned
        Cells x genes activity counts (genes among ``ref.var_names``), e.g. :attr:`AtacQuery.aligned`.
    batch_key
        ``obs`` column of the ATAC batches (corrected separately); None: one batch.
    iterations
        Rounds of soft assignment and mixture-of-experts correction (default: Symphony mapping's).
    first_pass
        Also return the coordinates after the first round (where the mapping confidence is judged, as
        Symphony mapping does: later rounds pull every cell onto the clusters it was assigned to).

    Returns
    -------
    numpy.ndarray or (numpy.ndarray, numpy.ndarray)
        Cells x components in the reference's Harmony space (float32); with ``first_pass`` also the
        first round's.
    """
    from .symphony import QUERY_ITERATIONS, _batch_design, _moe_correct_query, _soft_assign

    arrays = ref._arrays
    pos = pd.Index([str(g) for g in ref.var_names]).get_indexer(aligned.var_names.astype(str))
    if (pos < 0).any():
        raise ScamlError("project_symphony: every gene of the aligned activity must be a reference gene.")
    Zq = (scale_activity(aligned.X) @ arrays["loadings"][pos].astype(np.float32)).astype(np.float64)
    codes, _ = _batch_design(aligned.obs, batch_key, aligned.n_obs)
    corrected = first = Zq.copy()
    for step in range(int(iterations or QUERY_ITERATIONS)):
        R = _soft_assign(corrected, arrays["Y"], arrays["sigma"])
        corrected = _moe_correct_query(Zq, R, codes, int(codes.max()) + 1, arrays["Nr"], arrays["C"])
        if step == 0:
            first = corrected
    if first_pass:
        return corrected.astype(np.float32), first.astype(np.float32)
    return corrected.astype(np.float32)


def centroid_confidence(ref_embedding: np.ndarray, ref_labels: np.ndarray, query_embedding: np.ndarray,
                        unknown_label: str = "Unknown") -> np.ndarray:
    """How decisively each query cell points at one reference label: best minus second-best centroid cosine.

    The label centroids (mean embedding of the reference cells of each label) and the query cells are taken
    relative to the reference's mean; the confidence is the margin ``cos_best - cos_second`` over its value
    at the best centroid itself, ``1 - cos(best centroid, second centroid)``, clipped to [0, 1]. A cell in
    the direction of one label's centroid gets 1; a cell midway between two labels (as cells of a type
    the reference lacks often are) 0. With a single label the cosine itself (clipped at 0) is used.
    Unlabelled reference cells (missing or ``unknown_label``) are left out.

    Parameters
    ----------
    ref_embedding, ref_labels
        The reference cells' embedding and labels.
    query_embedding
        Query cells in the same space.
    unknown_label
        Label of unlabelled reference cells.

    Returns
    -------
    numpy.ndarray
        float32 confidence per query cell, in [0, 1].
    """
    ref = np.asarray(ref_embedding, dtype=np.float64)
    labels = pd.Series(ref_labels, dtype=object)
    keep = labels.notna().to_numpy() & (labels.astype(str) != unknown_label).to_numpy()
    names = pd.unique(labels[keep].astype(str))
    centre = ref[keep].mean(axis=0)
    cents = np.stack([ref[keep][labels[keep].astype(str).to_numpy() == n].mean(axis=0) - centre for n in names])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    q = np.asarray(query_embedding, dtype=np.float64) - centre
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    cos = q @ cents.T
    if cos.shape[1] == 1:
        return np.clip(cos[:, 0], 0.0, 1.0).astype(np.float32)
    order = np.argsort(-cos, axis=1)[:, :2]
    best, second = np.take_along_axis(cos, order, axis=1).T
    between = np.einsum("ij,ij->i", cents[order[:, 0]], cents[order[:, 1]])  # cosine of the two centroids
    margin = (best - second) / np.maximum(1.0 - between, 1e-12)
    return np.clip(margin, 0.0, 1.0).astype(np.float32)


def map_atac_query(
    atac: AtacQuery, method: MappingMethod, reference: ReferenceDir, prepared: Prepared, settings: MapSettings,
    outdir: Path, record: RunRecord,
) -> MappedQuery:
    """Embed the ATAC query's gene activity in an RNA reference's space; writes ``outdir/gene_activity.h5ad``.

    Symphony: :func:`project_symphony`. VAE references: the method's own surgery on the smoothed activity
    counts (the gene-overlap minimum does not apply). The summary goes to run.json (``data.atac``).
    """
    from ..io import write_h5ad

    record.data["atac"] = dict(atac.summary)
    record.data["n_shared_genes"] = int(atac.summary["n_shared_genes"])
    activity = atac.activity.copy()
    activity.uns["gene_activity"]["smooth_neighbors"] = int(atac.summary["smooth_neighbors"])
    with record.timer("write_gene_activity"):
        write_h5ad(activity, outdir / "gene_activity.h5ad")
    if method.name == "symphony":
        from .symphony import SymphonyReference

        with record.timer("load_model"):
            ref = SymphonyReference.load(reference.model_dir)
        with record.timer("atac_projection"):
            latent, first = project_symphony(ref, atac.aligned, settings.batch_key, first_pass=True)
        obs = {}
        if ref.label_key is not None and ref.label_key in ref.obs.columns:
            confidence = centroid_confidence(ref.embedding, ref.obs[ref.label_key].to_numpy(dtype=object), first)
            obs["mapping_confidence"] = confidence
            record.data["atac"]["median_mapping_confidence"] = float(np.median(confidence))
            record.data["atac"]["cells_below_confidence_0.5"] = int((confidence < 0.5).sum())
            info(f"ATAC mapping confidence (cosine margin to the reference's label centroids, after the first "
                 "correction round): median "
                 f"{np.median(confidence):.2f}, {int((confidence < 0.5).sum())} of {len(confidence)} cells below 0.5")
        return MappedQuery(latent, obs=obs)
    info(f"{method.name} reference: the smoothed gene-activity counts of {atac.aligned.n_vars} genes are mapped by "
         "surgery (reference genes without activity are zero)")
    return method.map(reference, prepared, replace(settings, force=True, min_gene_overlap=0.0), outdir, record)


def atac_query_from_options(
    query: ad.AnnData, reference: ReferenceDir, modality: str | None, genes: str | os.PathLike | pd.DataFrame | None,
    fragments: str | os.PathLike | pd.DataFrame | None, options: dict[str, Any] | None, random_state: int,
) -> AtacQuery | None:
    """The :class:`AtacQuery` of :func:`scaml.mapping.map_query`'s ``modality="atac"``; None for other modalities.

    Raises
    ------
    ScamlError
        An unknown modality or ATAC option, ``genes`` / ``fragments`` without ``modality="atac"``, or
        ``modality="atac"`` without an annotation (and every error of :func:`prepare_atac_query`).
    """
    modality = "rna" if modality in (None, "auto") else str(modality).lower()
    if modality not in ("rna", "atac"):
        raise ScamlError(f"unknown modality {modality!r}; use 'rna' (the default) or 'atac' (--modality).")
    if modality != "atac":
        given = [flag for flag, value in (("--genes", genes), ("--fragments", fragments)) if value is not None]
        if given or options:
            raise ScamlError(f"{' and '.join(given) or 'the ATAC options'} apply to ATAC queries only; add "
                             "--modality atac (modality='atac') to map ATAC cells through their gene activity.")
        return None
    if genes is None:
        raise ScamlError("--modality atac maps ATAC cells through their gene activity and needs the gene annotation "
                         "of the peaks' genome: give --genes genes.gtf.gz (a GTF, GFF3 or BED file, genes named as in "
                         "the reference).")
    allowed = {"upstream", "smooth_neighbors", "graph_embedding", "graph_components", "neighbour_vote"}
    unknown = sorted(set(options or {}) - allowed)
    if unknown:
        raise ScamlError(f"unknown ATAC option(s) {', '.join(unknown)}; the options are {', '.join(sorted(allowed))}.")
    options = dict(options or {})
    vote = bool(options.pop("neighbour_vote", True))
    atac = prepare_atac_query(query, reference_genes(reference), genes, fragments=fragments,
                              random_state=random_state, **options)
    atac.vote = vote and atac.neighbors is not None
    atac.summary["neighbour_vote"] = int(atac.neighbors.shape[1]) if atac.vote else None
    atac.summary["annotation"] = "table" if isinstance(genes, pd.DataFrame) else Path(genes).name
    if fragments is not None:
        atac.summary["fragments"] = "table" if isinstance(fragments, pd.DataFrame) else Path(fragments).name
    return atac


__all__ = ["GRAPH_COMPONENTS", "GRAPH_EMBEDDING", "SMOOTH_NEIGHBORS", "AtacQuery", "atac_query_from_options", "centroid_confidence",
           "map_atac_query", "neighbour_vote", "prepare_atac_query", "project_symphony", "reference_genes",
           "scale_activity", "smooth_counts"]
