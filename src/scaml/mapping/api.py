"""``build_reference`` and ``map_query``: the reference-mapping API.

:func:`build_reference` builds a reference with one of the methods of
:mod:`scaml.mapping.methods` and writes a reference directory (:mod:`scaml.mapping.refdir`).
:func:`map_query` maps a query onto it (architecture surgery and query training for the VAEs;
Symphony's projection and correction otherwise), transfers labels by weighted kNN
(:mod:`scaml.mapping.transfer`; scANVI also predicts directly), and writes ``mapped.h5ad``, a joint
UMAP and, when the query carries true labels, the metrics. Both end by writing ``report.html``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, warn
from ..errors import ScamlError
from ..io import check_obs_key, prepare_outdir, read_input, write_csv, write_h5ad, write_json
from ..runinfo import RunRecord
from .expression_classifier import CLASSIFIER_DIR, ExpressionClassifier, fit_expression_classifier
from .figures import LATENT_KEY, joint_umap
from .methods import METHODS, MappedQuery, MappingMethod, MapSettings, get_method
from .refdir import ReferenceDir, open_reference, reference_manifest, reference_obs, write_reference
from .scoring import score_transfer
from .transfer import MAJORITY_VOTING_RESOLUTION, parse_n_neighbors


def _load_adata(data: ad.AnnData | str | os.PathLike, what: str,
                method: MappingMethod | None = None) -> tuple[ad.AnnData, str | None]:
    if isinstance(data, ad.AnnData):
        return data, None
    path = str(data)
    info(f"reading {what} {path}")
    return (read_input(path) if method is None else method.read_input(path)), path


def _write_report(outdir: Path) -> None:
    from ..report import maybe_write_report

    maybe_write_report(outdir)


# ----------------------------------------------------------------------------- reference

def build_reference(
    adata: ad.AnnData | str | os.PathLike,
    method: str = "scvi",
    batch_key: str = "batch",
    label_key: str | None = None,
    out: str | os.PathLike = "scaml-reference",
    *,
    overwrite: bool = False,
    random_state: int = 0,
    max_epochs: int | None = None,
    n_hvg: int | None = 2000,
    unlabeled_category: str | None = None,
    train_params: dict | None = None,
    tuning: dict | None = None,
    expression_classifier: bool | None = None,
    **model_params: Any,
) -> Path:
    """Build a mapping reference and save it as a directory.

    Parameters
    ----------
    adata
        The reference cells (AnnData or a path :func:`scaml.io.read_input` reads). Raw
        counts for the NB / ZINB VAEs (``layers["counts"]`` when it holds counts, else X);
        raw counts or log-normalised values for Symphony. Not modified.
    method
        ``"scvi"``, ``"trvae"``, ``"scanvi"``, ``"peakvi"``, ``"poissonvi"`` (conditional VAEs,
        :mod:`scaml.vae`; the last two on scATAC-seq peak counts, every peak used) or
        ``"symphony"`` (a Harmony reference, :mod:`scaml.mapping.symphony`); ``"totalvi"``: CITE-seq
        RNA + protein counts (``obsm["protein_expression"]``, :class:`scaml.vae.TOTALVI`); ``"mvtcr"``:
        T cells with paired TCR chains in ``obs`` / ``obsm["airr"]`` or ``contigs=`` (:class:`scaml.vae.MVTCR`).
    batch_key
        ``obs`` column with the reference's batches (the conditions).
    label_key
        ``obs`` column with the cell labels to transfer later; required for ``"scanvi"``.
    out
        The reference directory; an existing non-empty one is refused unless ``overwrite``.
    overwrite
        Replace an existing ``out``.
    random_state
        Seed of the model (or of Harmony).
    max_epochs
        Training epochs of a VAE (default: scaml.vae's rule from the number of cells).
    n_hvg
        Highly variable genes the reference uses (:func:`scaml.preprocess.highly_variable_genes`;
        more than the data has: every gene, with a warning). ``None``: all genes for a VAE,
        2000 for Symphony. Not used by the peak methods (``"peakvi"``, ``"poissonvi"``: all peaks).
    unlabeled_category
        Label of unlabelled reference cells (scANVI; default "Unknown").
    train_params
        More arguments of the VAE's ``train`` (``batch_size``, ``lr``, ``early_stopping``,
        ``n_threads``...).
    tuning
        The record of a hyperparameter search (:func:`scaml.mapping.tune.tune_reference`):
        ``settings`` go to ``run.json``'s ``parameters.tuning``, ``result`` to ``data.tuning``
        and to the manifest's ``tuning``.
    expression_classifier
        Also fit a CellTypist-style logistic regression on the reference's log-normalised expression
        of every gene (:mod:`scaml.mapping.expression_classifier`), which :func:`map_query` averages
        with the kNN's probabilities. None (default): when the reference has labels and the method
        models RNA (scvi, trvae, scanvi, symphony). False: never.
    **model_params
        Options of the method: the model's (``n_latent``, ``hidden_layers``, ``gene_likelihood``,
        ``dropout_rate``, ``beta``...) and training's (as ``train_params``) for a VAE;
        ``n_comps``, ``theta``, ``nclust`` and :func:`scaml.harmony.run_harmony`'s for Symphony.
        The method decides which apply: options of another method are reported as unused
        (a warning), unknown ones refused.

    Returns
    -------
    Path
        The reference directory.

    Raises
    ------
    ScamlError
        Unknown method or option, missing keys, no labels for scANVI, non-count data for an
        NB / ZINB model, an expression classifier asked for without labels or on a non-RNA method,
        or an existing output directory.
    """
    chosen = get_method(method)
    classifier = _wants_expression_classifier(chosen, label_key, expression_classifier)
    record = RunRecord("reference build")  # first: warnings from here on are kept in run.json
    adata, input_path = _load_adata(adata, "the reference", chosen)
    check_obs_key(adata, batch_key, flag="--batch-key")
    if label_key is not None:
        check_obs_key(adata, label_key, flag="--label-key")
    options = {**model_params, **(train_params or {})}
    options.update({k: v for k, v in (("max_epochs", max_epochs), ("unlabeled_category", unlabeled_category))
                    if v is not None})
    prepared = chosen.prepare_reference(adata, batch_key, label_key, options)
    outdir = prepare_outdir(out, overwrite=overwrite, protect=[input_path] if input_path else [])
    record.parameters = {"method": chosen.name, "batch_key": batch_key, "label_key": label_key,
                         "random_state": random_state, "n_hvg": n_hvg, "options": prepared.options,
                         "expression_classifier": classifier}
    record.inputs = {"reference": input_path} if input_path else {}
    record.data = {"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)}
    if tuning is not None:
        record.parameters["tuning"] = tuning.get("settings", {})
        record.data["tuning"] = tuning.get("result", {})
    info(f"building a {chosen.name} reference on {adata.n_obs} cells x {adata.n_vars} genes "
         f"({adata.obs[batch_key].nunique()} batches of {batch_key!r})")
    built = chosen.build(prepared, batch_key, label_key, n_hvg=n_hvg, random_state=random_state,
                         outdir=outdir, record=record)
    manifest = reference_manifest(adata, chosen.name, batch_key, label_key)
    manifest.update(built.manifest)
    if classifier:
        with record.timer("expression_classifier"):
            fitted = fit_expression_classifier(adata, adata.obs[label_key],
                                               unknown_label=unlabeled_category or "Unknown",
                                               random_state=random_state)
            fitted.save(outdir / CLASSIFIER_DIR)
        manifest["expression_classifier"] = {"dir": CLASSIFIER_DIR, **fitted.settings}
        record.data["expression_classifier"] = fitted.settings
    manifest["n_genes"] = len(built.genes)
    if tuning is not None:
        manifest["tuning"] = tuning.get("result", {})
    with record.timer("write"):
        write_reference(outdir, manifest, built.latent, reference_obs(adata, batch_key, label_key))
    record.data.update({"n_latent": int(built.latent.shape[1]), "n_model_genes": len(built.genes)})
    record.save(outdir)
    info(f"reference written to {outdir}")
    _write_report(outdir)
    return outdir


def _wants_expression_classifier(method: MappingMethod, label_key: str | None, asked: bool | None) -> bool:
    """Whether the reference fits its expression classifier (None: when it can)."""
    if asked is None:
        return method.expression_classifier and label_key is not None
    if asked and not method.expression_classifier:
        raise ScamlError(f"method {method.name!r} does not take an expression classifier (only scvi, trvae, "
                         "scanvi and symphony: RNA); drop --expression-classifier.")
    if asked and label_key is None:
        raise ScamlError("an expression classifier needs the reference's labels; pass --label-key KEY "
                         "(label_key=...), or drop --expression-classifier.")
    return bool(asked)


def load_reference_manifest(reference_dir: str | os.PathLike) -> dict:
    """Read and check a reference directory's manifest (:func:`scaml.mapping.refdir.open_reference`).

    Raises
    ------
    ScamlError
        The directory does not exist, is not a scaml reference, was written by an
        incompatible version, or is incomplete.
    """
    return open_reference(reference_dir, METHODS).manifest


# ----------------------------------------------------------------------------- mapping

def map_query(
    reference_dir: str | os.PathLike,
    adata_query: ad.AnnData | str | os.PathLike,
    out: str | os.PathLike,
    *,
    query_batch_key: str | None = None,
    label_key: str | None = None,
    overwrite: bool = False,
    max_epochs: int | None = None,
    allow_existing_conditions: bool = False,
    random_state: int = 0,
    unknown_threshold: float = 0.5,
    n_neighbors: int | str = "auto",
    majority_voting: bool = False,
    majority_voting_resolution: float = MAJORITY_VOTING_RESOLUTION,
    min_gene_overlap: float = 0.5,
    force: bool = False,
    train_params: dict | None = None,
    umap: bool = True,
    modality: str | None = None,
    genes: str | os.PathLike | pd.DataFrame | None = None,
    fragments: str | os.PathLike | None = None,
    atac_options: dict | None = None,
    expression_classifier: bool = True,
) -> ad.AnnData:
    """Map a query dataset onto a reference, transfer labels, and write the results.

    Parameters
    ----------
    reference_dir
        A directory written by :func:`build_reference`.
    adata_query
        The query (AnnData or a path); raw counts for NB / ZINB references, raw counts or
        log-normalised values for Symphony. Not modified.
    out
        Output directory: ``mapped.h5ad``, ``predictions.csv``, ``figures/joint_umap.png``,
        ``metrics.json`` + ``confusion_matrix.csv`` (when ``label_key``), ``run.json``, ``report.html``.
    query_batch_key
        ``obs`` column with the query's batches. Default: the reference's batch key when
        the query has it; otherwise all query cells form one batch.
    label_key
        ``obs`` column with the query's true labels, to score the transferred labels.
    overwrite
        Replace an existing ``out``.
    max_epochs
        Query training epochs (VAE references; default: scaml.vae's rule).
    allow_existing_conditions
        Accept query batch names that exist in the reference (treated as the same batch).
    random_state
        Seed of the query training / mapping and the UMAP.
    unknown_threshold
        Label-transfer uncertainty (``1 - p(call)``) above which a cell is called "Unknown"
        (``1``: never); meant for query cell types the reference lacks. On the real held-out
        splits of ``benchmarks/bench_transfer.py`` every query label is in the reference, so an
        Unknown call is a miss there: with the kNN alone 0.5 cost 0.05 of accuracy on the perturbed
        kang query without making the remaining calls much more accurate; with the expression
        classifier in the calls it called 8 % Unknown there, and the remaining calls were 0.874
        correct instead of 0.850.
    n_neighbors
        Reference neighbours of the weighted kNN label transfer: ``"auto"`` (default,
        ``clip(min(round(sqrt(N)), m), 5, 50)`` with ``N`` labelled reference cells
        and ``m`` the cells of the smallest label; :func:`scaml.mapping.transfer.auto_n_neighbors`)
        or a whole number from 1 to ``N``. The ``k`` used is recorded in ``run.json``,
        ``uns["scaml_mapping"]`` and ``metrics.json``.
    majority_voting
        Also give every Leiden cluster of the query (in the shared embedding) the most frequent
        per-cell call of its cells, as CellTypist does: ``obs["predicted_<label>_majority_voting"]``
        and ``obs["predicted_<label>_cluster"]``; the per-cell calls stay in
        ``obs["predicted_<label>"]``. Unknown calls vote too: a cluster of mostly uncertain cells
        stays Unknown, and the uncertain cells of a confidently called cluster take its label.
    majority_voting_resolution
        Leiden resolution of those clusters (higher: more, smaller clusters).
    min_gene_overlap, force
        Smallest fraction of the reference genes the query must hold, and whether to go on below it.
    train_params
        More arguments of the query model's ``train`` (VAE references; a Symphony reference
        does not train and reports them as unused).
    umap
        Compute the joint UMAP and draw it.
    modality, genes, fragments, atac_options
        ``modality="atac"``: the query is scATAC-seq peaks, mapped onto an RNA reference through their
        gene activity over the annotation ``genes`` (GTF / GFF3 / BED of the peaks' genome; from the
        ``fragments`` file when given), smoothed over each cell's ATAC neighbours
        (:mod:`scaml.mapping.atac_query`; ``atac_options``: ``upstream``, ``smooth_neighbors``,
        ``graph_embedding``, ``graph_components``, ``neighbour_vote``); also writes ``gene_activity.h5ad``. None / ``"rna"``:
        the query is mapped as it is.
    expression_classifier
        When the reference keeps an expression classifier (:func:`build_reference`), call each cell
        from the mean of its kNN and classifier probabilities (the kNN's and the classifier's own calls
        are kept in ``obs["predicted_<label>_knn"]`` / ``obs["predicted_<label>_lr"]``). Not used for
        ATAC queries, nor when the query holds less than half of the classifier's genes (a warning).
        False: the kNN alone.

    Returns
    -------
    AnnData
        The mapped query (as written to ``mapped.h5ad``): ``obsm["X_scaml_latent"]``,
        ``obs["predicted_<label>"]``, ``obs["predicted_<label>_uncertainty"]``
        (+ ``obs["mapping_confidence"]`` for Symphony, ``obs["predicted_<label>_scanvi"]`` for scANVI,
        ``obs["predicted_<label>_majority_voting"]`` with majority voting).

    Raises
    ------
    ScamlError
        Not a reference directory, no shared genes, non-count data for an NB / ZINB
        reference, a query batch that exists in the reference, a missing key, or label-transfer
        options out of range (checked before any mapping work).
    """
    n_neighbors = parse_n_neighbors(n_neighbors)
    if not float(majority_voting_resolution) > 0:
        raise ScamlError(f"majority_voting_resolution must be positive; got {majority_voting_resolution}. "
                         f"Use e.g. {MAJORITY_VOTING_RESOLUTION:g} (the default; --majority-voting-resolution).")
    if not 0.0 <= float(unknown_threshold) <= 1.0:
        raise ScamlError(f"unknown_threshold must be between 0 and 1 (an uncertainty); got {unknown_threshold}. "
                         "Use e.g. 0.5 (the default), or 1 to never call Unknown (--unknown-threshold).")
    record = RunRecord("map")  # first: warnings from here on are kept in run.json
    reference = open_reference(reference_dir, METHODS)
    method = get_method(reference.method)
    query, input_path = _load_adata(adata_query, "the query", method)
    settings = _query_settings(query, reference, query_batch_key, label_key, allow_existing_conditions,
                               min_gene_overlap, force, random_state)
    options = {**(train_params or {}), **({"max_epochs": max_epochs} if max_epochs is not None else {})}
    from .atac_query import atac_query_from_options, map_atac_query

    atac = atac_query_from_options(query, reference, modality, genes, fragments, atac_options, random_state)
    prepared = method.prepare_query(query if atac is None else atac.aligned, reference, options)
    with record.timer("load_reference"):
        ref_latent, ref_obs = reference.cells()
    transfer = _transfer_settings(reference, ref_obs, n_neighbors, unknown_threshold, majority_voting,
                                  majority_voting_resolution, random_state)
    protect = [input_path] if input_path else []
    outdir = prepare_outdir(out, overwrite=overwrite, protect=[*protect, str(reference.path)])
    record.parameters = {
        "reference": reference.path.name, "method": method.name, "query_batch_key": settings.batch_key,
        "label_key": label_key, "allow_existing_conditions": allow_existing_conditions,
        "random_state": random_state, "unknown_threshold": unknown_threshold, "n_neighbors": n_neighbors,
        "majority_voting": bool(majority_voting),
        **({"majority_voting_resolution": float(majority_voting_resolution)} if majority_voting else {}),
        "options": prepared.options,
        **({"modality": "atac", "atac": {k: v for k, v in atac.summary.items() if k in
                                         ("annotation", "fragments", "upstream", "smooth_neighbors", "graph_embedding",
                                          "graph_components", "neighbour_vote")}}
           if atac is not None else {}),
    }
    record.inputs = {"query": input_path} if input_path else {}
    record.data = {"n_query_cells": int(query.n_obs), "n_query_genes": int(query.n_vars),
                   "n_reference_cells": int(reference.manifest.get("n_cells", 0))}
    result = (method.map(reference, prepared, settings, outdir, record) if atac is None
              else map_atac_query(atac, method, reference, prepared, settings, outdir, record))
    mapped = _mapped_adata(query, result)
    vote_neighbors = atac.neighbors if atac is not None and atac.vote else None
    probabilities = _classifier_probabilities(reference, query, expression_classifier, atac is not None, record)
    predicted_key, metrics = _transfer_and_score(mapped, reference, ref_latent, ref_obs, result, label_key,
                                                 transfer, outdir, record, vote_neighbors, probabilities)
    mapped.uns["scaml_mapping"] = {
        "method": method.name, "reference": reference.path.name, "latent_key": LATENT_KEY,
        "reference_batch_key": reference.batch_key, "query_batch_key": settings.batch_key or "",
        "predicted_key": predicted_key or "", "unknown_threshold": float(unknown_threshold),
        **{key: value for key, value in record.data.get("label_transfer", {}).items() if key != "rule"},
    }
    if umap:
        with record.timer("joint_umap"):
            mapped.obsm["X_umap_joint"] = joint_umap(ref_latent, ref_obs, mapped, predicted_key, outdir,
                                                     method.name, random_state)
    with record.timer("write"):
        _write_mapping(mapped, predicted_key, label_key, metrics, outdir)
    record.save(outdir)
    info(f"mapping written to {outdir}")
    _write_report(outdir)
    return mapped


def _query_settings(query: ad.AnnData, reference: ReferenceDir, query_batch_key: str | None,
                    label_key: str | None, allow_existing: bool, min_gene_overlap: float, force: bool,
                    random_state: int) -> MapSettings:
    """Check the query's keys and batches against the reference; the settings every method reads."""
    if query.n_obs == 0:
        raise ScamlError("the query has no cells.")
    if label_key is not None:
        check_obs_key(query, label_key, flag="--label-key")
    if query_batch_key is not None:
        check_obs_key(query, query_batch_key, flag="--query-batch-key")
        batch_key = query_batch_key
    elif reference.batch_key in query.obs.columns:
        batch_key = reference.batch_key
    else:
        batch_key = None
    if batch_key is not None:
        _check_existing_conditions(query, batch_key, reference.conditions, allow_existing)
    return MapSettings(batch_key=batch_key, allow_existing_conditions=allow_existing,
                       min_gene_overlap=min_gene_overlap, force=force, random_state=random_state)


def _check_existing_conditions(query: ad.AnnData, batch_key: str, conditions: list[str], allow: bool) -> None:
    values = query.obs[batch_key]
    if values.isna().any():
        raise ScamlError(
            f"query obs[{batch_key!r}] has {int(values.isna().sum())} missing values; give every query cell a batch."
        )
    existing = sorted(set(map(str, pd.unique(values.astype(str)))) & set(conditions))
    if existing and not allow:
        raise ScamlError(
            f"query batch(es) {existing[:10]} (column {batch_key!r}) already exist in the reference; rename the "
            "query's batches, or pass --allow-existing-conditions (allow_existing_conditions=True) to treat them "
            "as the same batches as in the reference."
        )
    if existing:
        info(f"query batch(es) {existing} are treated as the reference batches of the same name")


def _mapped_adata(query: ad.AnnData, result: MappedQuery) -> ad.AnnData:
    """A new AnnData around the query's data with the shared embedding and the method's per-cell columns."""
    mapped = ad.AnnData(X=query.X, obs=query.obs.copy(), var=query.var.copy(),
                        layers=dict(query.layers), obsm=dict(query.obsm), uns={})
    mapped.obsm[LATENT_KEY] = result.latent
    for key, values in result.obs.items():
        mapped.obs[key] = values
    mapped.obsm.update(result.obsm)
    mapped.uns.update(result.uns)
    return mapped


def _transfer_settings(reference: ReferenceDir, ref_obs: pd.DataFrame, n_neighbors: int | str, threshold: float,
                       majority_voting: bool, resolution: float, random_state: int) -> dict[str, Any]:
    """The label-transfer options, with ``n_neighbors`` checked against the reference (before mapping)."""
    from .transfer import labelled_counts, resolve_n_neighbors

    settings = {"n_neighbors": n_neighbors, "threshold": float(threshold), "majority_voting": bool(majority_voting),
                "resolution": float(resolution), "random_state": random_state}
    if reference.label_key is not None and "label" in ref_obs.columns:
        counts = labelled_counts(ref_obs["label"].to_numpy(dtype=object))
        if len(counts):
            resolve_n_neighbors(n_neighbors, int(counts.sum()), int(counts.min()))
    return settings


def _classifier_probabilities(reference: ReferenceDir, query: ad.AnnData, wanted: bool, atac: bool,
                              record: RunRecord) -> pd.DataFrame | None:
    """The reference's expression-classifier probabilities of the query cells, or None (and why, in run.json)."""
    entry = reference.manifest.get("expression_classifier")
    if not entry or reference.label_key is None:
        return None
    if not wanted or atac:
        why = ("not used (--no-expression-classifier)" if not wanted else
               "not used: an ATAC query is called from its gene activity by the kNN alone")
        info(f"the reference's expression classifier is {why}")
        record.data["expression_classifier"] = {"used": False, "why": why}
        return None
    with record.timer("expression_classifier"):
        classifier = ExpressionClassifier.load(reference.path / str(entry.get("dir", CLASSIFIER_DIR)))
        overlap = classifier.gene_overlap(query)
        if overlap < 0.5:
            why = f"not used: the query holds {overlap:.0%} of its {len(classifier.genes)} genes (less than half)"
            warn(f"the reference's expression classifier is {why}; labels come from the kNN alone")
            record.data["expression_classifier"] = {"used": False, "why": why}
            return None
        record.data["expression_classifier"] = {"used": True, "gene_overlap": round(overlap, 4)}
        return classifier.predict_proba(query)


def _transfer_and_score(mapped: ad.AnnData, reference: ReferenceDir, ref_latent: np.ndarray, ref_obs: pd.DataFrame,
                        result: MappedQuery, label_key: str | None, transfer: dict[str, Any], outdir: Path,
                        record: RunRecord, vote_neighbors: np.ndarray | None = None,
                        classifier_probabilities: pd.DataFrame | None = None) -> tuple[str | None, dict[str, Any]]:
    """Transfer the reference labels to ``mapped`` (weighted kNN, averaged with ``classifier_probabilities``
    when given; with ``vote_neighbors``, the probabilities averaged over each query cell's own neighbours) and
    score them; the predicted key and metrics."""
    from .transfer import AUTO_K_RULE, transfer_labels

    if reference.label_key is None or "label" not in ref_obs.columns:
        info("the reference carries no labels (built without --label-key): mapping only, no label transfer")
        return None, {}
    predicted_key = f"predicted_{reference.label_key}"
    threshold = transfer["threshold"]
    with record.timer("label_transfer"):
        calls = transfer_labels(ref_latent, ref_obs["label"].to_numpy(dtype=object), result.latent,
                                n_neighbors=transfer["n_neighbors"], threshold=threshold,
                                majority_voting=transfer["majority_voting"], resolution=transfer["resolution"],
                                query_index=mapped.obs_names, random_state=transfer["random_state"],
                                vote_neighbors=vote_neighbors, classifier_probabilities=classifier_probabilities)
    k = int(calls.attrs["n_neighbors"])
    mapped.obs[predicted_key] = pd.Categorical(calls["label"].astype(str))
    mapped.obs[f"{predicted_key}_uncertainty"] = calls["uncertainty"].to_numpy()
    mapped.obs[f"{predicted_key}_probability"] = calls["probability"].to_numpy()
    for source, suffix in (("knn", "knn"), ("classifier", "lr")):
        if f"{source}_label" in calls.columns:
            mapped.obs[f"{predicted_key}_{suffix}"] = pd.Categorical(calls[f"{source}_label"].astype(str))
            mapped.obs[f"{predicted_key}_{suffix}_uncertainty"] = 1.0 - calls[f"{source}_probability"].to_numpy()
    summary: dict[str, Any] = {
        "label_source": calls.attrs["label_source"],
        "n_neighbors": k, "n_neighbors_requested": str(calls.attrs["n_neighbors_requested"]),
        "n_labelled_reference_cells": int(calls.attrs["n_labelled"]),
        "smallest_reference_label": int(calls.attrs["smallest_class"]),
        "majority_voting": transfer["majority_voting"],
        "neighbour_vote": None if vote_neighbors is None else int(vote_neighbors.shape[1]),
    }
    if summary["n_neighbors_requested"] == "auto":
        summary["rule"] = AUTO_K_RULE
    n_unknown = int((calls["label"] == "Unknown").sum())
    how = (f"auto: {calls.attrs['n_labelled']} labelled reference cells, smallest label "
           f"{calls.attrs['smallest_class']}" if summary["n_neighbors_requested"] == "auto" else "as given")
    vote = ("" if vote_neighbors is None else
            f", probabilities averaged over each cell's {vote_neighbors.shape[1]} nearest query cells")
    source = "" if classifier_probabilities is None else ", averaged with the expression classifier"
    info(f"label transfer (weighted kNN, k={k}, {how}{vote}{source}): {n_unknown} of {len(calls)} query cells "
         f"called 'Unknown' (uncertainty > {threshold})")
    record.data["n_unknown"] = n_unknown
    if "majority_voting" in calls.columns:
        mapped.obs[f"{predicted_key}_majority_voting"] = pd.Categorical(calls["majority_voting"].astype(str))
        mapped.obs[f"{predicted_key}_cluster"] = pd.Categorical(calls["cluster"].astype(str))
        n_clusters = int(calls["cluster"].nunique())
        n_changed = int((calls["majority_voting"] != calls["label"]).sum())
        summary.update({"majority_voting_resolution": transfer["resolution"], "n_clusters": n_clusters})
        record.data["n_unknown_majority_voting"] = int((calls["majority_voting"] == "Unknown").sum())
        info(f"majority voting over {n_clusters} Leiden clusters of the query (resolution "
             f"{transfer['resolution']:g}): {n_changed} of {len(calls)} per-cell calls changed, in "
             f"obs[{predicted_key + '_majority_voting'!r}]")
    record.data["label_transfer"] = summary
    if result.classifier is not None:
        labels, proba = result.classifier
        mapped.obs[f"{predicted_key}_scanvi"] = pd.Categorical(labels.astype(str))
        mapped.obs[f"{predicted_key}_scanvi_uncertainty"] = (1.0 - proba.max(axis=1).to_numpy()).astype(np.float32)
    metrics: dict[str, Any] = {}
    if label_key is not None:
        metrics = score_transfer(mapped, label_key, predicted_key, calls, result.classifier, outdir, record)
    return predicted_key, metrics


def _write_mapping(mapped: ad.AnnData, predicted_key: str | None, label_key: str | None, metrics: dict,
                   outdir: Path) -> None:
    """Write ``predictions.csv``, ``mapped.h5ad`` and ``metrics.json``."""
    columns = [c for c in mapped.obs.columns if predicted_key and c.startswith(predicted_key)]
    columns += [c for c in ("mapping_confidence",) if c in mapped.obs.columns]
    if label_key is not None:
        columns = [label_key, *[c for c in columns if c != label_key]]
    table = mapped.obs[columns].copy()
    table.index.name = "cell"
    if columns:
        write_csv(table, outdir / "predictions.csv")
    write_h5ad(mapped, outdir / "mapped.h5ad")
    if metrics:
        write_json(metrics, outdir / "metrics.json")


__all__ = ["LATENT_KEY", "METHODS", "MappingMethod", "build_reference", "load_reference_manifest", "map_query"]
