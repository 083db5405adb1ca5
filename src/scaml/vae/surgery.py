"""Architecture surgery (scArches): adapt a trained reference model to a query dataset.

The query's genes are aligned to the reference's by name, new condition
columns are appended to the first layers of the encoder and the decoder for
the query's batches, and every reference weight is frozen, so that training on
the query moves only the new condition weights and the reference embedding
stays exactly where it was.
"""

from __future__ import annotations

import copy

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info
from ..errors import ScamlError, missing_key_error
from .data import gene_kind, gene_positions
from .freeze import apply_freeze, trainable_parameter_names
from .model import QUERY_CONDITION, BaseVAE, _naming_hint, check_adata
from .modules import ConditionalVAE

__all__ = ["apply_freeze", "load_query", "trainable_parameter_names"]


def load_query(
    model: BaseVAE,
    adata_query: ad.AnnData,
    *,
    query_batch_key: str | None = None,
    freeze_dropout: bool = True,
    unfrozen: bool = False,
    train_dispersion: bool = False,
    min_gene_overlap: float = 0.5,
    force: bool = False,
    allow_existing_conditions: bool = False,
    use_query_labels: bool = False,
) -> BaseVAE:
    """Build a query model from a trained reference model by architecture surgery.

    Parameters
    ----------
    model
        A trained :class:`~scaml.vae.SCVI`, :class:`~scaml.vae.TRVAE` or
        :class:`~scaml.vae.SCANVI` (built here or loaded with :func:`~scaml.vae.load_model`).
    adata_query
        The query cells (raw counts for NB / ZINB models). Genes are matched to
        the reference's by name; reference genes the query lacks are filled with zeros.
    query_batch_key
        Column of ``adata_query.obs`` with the query's batches. Default: the
        reference's ``batch_key``; when the query has no such column, all query
        cells form one new condition named "query".
    freeze_dropout
        Switch dropout off while training on the query.
    unfrozen
        Train every weight (not only the new condition columns); the reference
        embedding then moves.
    train_dispersion
        Also train the NB dispersions.
    min_gene_overlap
        Smallest fraction of the reference genes the query must hold.
    force
        Go on below ``min_gene_overlap``.
    allow_existing_conditions
        Accept query batches whose names exist in the reference and treat them
        as those reference conditions (otherwise an error).
    use_query_labels
        SCANVI only: query cells whose ``label_key`` value is one of the reference's labels
        train as labelled cells (their label in the ELBO, and the classification loss);
        the others stay unlabelled. Default False: every query cell is unlabelled and
        trains through scANVI's unlabelled loss (the average over q(y | z1)).

    Returns
    -------
    BaseVAE
        A model of the same class; train it with ``.train()`` and embed with
        ``.get_latent(adata_query)``. The reference model is not modified.

    Raises
    ------
    ScamlError
        No shared genes, too few shared genes, a missing batch column, or a query
        batch name that exists in the reference.
    """
    _check_inputs(model, adata_query, min_gene_overlap)
    if use_query_labels:
        if model.labels is None:
            raise ScamlError(
                f"use_query_labels=True needs a SCANVI reference; this is a {model.model_name} model (drop the option)."
            )
        if model.label_key not in adata_query.obs.columns:
            raise missing_key_error(str(model.label_key), adata_query.obs.columns, "adata_query.obs", "label_key")
    n_shared, fraction = _check_gene_overlap(model, adata_query, min_gene_overlap, force)
    key, new, default_condition = _query_conditions(model, adata_query, query_batch_key, allow_existing_conditions)
    surgery = {
        "n_reference_conditions": len(model.conditions),
        "n_new_conditions": len(new),
        "new_conditions": new,
        "query_batch_key": key,
        "default_condition": default_condition,
        "freeze_dropout": bool(freeze_dropout),
        "unfrozen": bool(unfrozen),
        "train_dispersion": bool(train_dispersion),
        "gene_overlap": round(fraction, 4),
        "n_shared_genes": n_shared,
    }
    if use_query_labels:
        surgery["query_labels"] = True
    module = _query_module(model, surgery)
    query = _query_model(model, module, surgery, adata_query)
    n_trainable = sum(int(np.prod(p.shape)) for p in module.parameters() if p.requires_grad)
    info(
        f"surgery: {len(new)} new condition(s) {new[:10]}; {n_trainable} trainable weights "
        f"({'all' if unfrozen else 'new condition columns' + (' and dispersion' if train_dispersion else '')})."
    )
    if query._data is not None and query._data.labels is not None:
        n_lab = int((query._data.labels >= 0).sum())
        info(f"surgery: {n_lab} of {adata_query.n_obs} query cells carry a reference label and train as labelled cells.")
    return query


def _check_inputs(model: BaseVAE, adata_query: ad.AnnData, min_gene_overlap: float) -> None:
    if not isinstance(model, BaseVAE):
        raise ScamlError(f"load_query needs a scaml.vae model (SCVI, TRVAE, SCANVI, PEAKVI or POISSONVI); got {type(model).__name__}.")
    check_adata(adata_query, "adata_query")
    if not 0.0 <= float(min_gene_overlap) <= 1.0:
        raise ScamlError(f"min_gene_overlap must be in [0, 1]; got {min_gene_overlap}.")
    if adata_query.n_obs < 1:
        raise ScamlError("the query has no cells.")


def _check_gene_overlap(
    model: BaseVAE, adata_query: ad.AnnData, min_gene_overlap: float, force: bool
) -> tuple[int, float]:
    """Number and fraction of the reference genes the query holds; refused below ``min_gene_overlap``."""
    query_genes = [str(g) for g in adata_query.var_names]
    positions = gene_positions(query_genes, model.genes)
    n_shared = int((positions >= 0).sum())
    n_ref = len(model.genes)
    if n_shared == 0:
        raise ScamlError(
            f"the query shares no genes with the reference ({n_ref} reference genes, e.g. {model.genes[:3]}; "
            f"{len(query_genes)} query genes, e.g. {query_genes[:3]}). " + _naming_hint(model.genes, query_genes)
        )
    fraction = n_shared / n_ref
    info(
        f"gene overlap: the query holds {n_shared} of the {n_ref} reference genes ({fraction:.1%}); "
        f"{n_ref - n_shared} missing genes are filled with zeros, "
        f"{len(set(query_genes)) - n_shared} query-only genes are ignored."
    )
    if fraction < min_gene_overlap:
        hint = ""
        kinds = {gene_kind(model.genes), gene_kind(query_genes)}
        if kinds == {"Ensembl IDs", "gene symbols"} or fraction < 0.5:
            hint = " " + _naming_hint(model.genes, query_genes)
        if not force:
            raise ScamlError(
                f"the query holds only {fraction:.1%} of the reference genes ({n_shared} of {n_ref}), below "
                f"min_gene_overlap={min_gene_overlap:.0%}.{hint} Pass force=True (--force) to map anyway, "
                "at the cost of a less reliable embedding."
            )
        info(f"mapping anyway (force=True) with {fraction:.1%} gene overlap.{hint}")
    return n_shared, fraction


def _query_conditions(
    model: BaseVAE, adata_query: ad.AnnData, query_batch_key: str | None, allow_existing: bool
) -> tuple[str, list[str], str | None]:
    """The query's batch column, its new conditions, and the default condition when it has no column."""
    key = query_batch_key or model.batch_key
    default_condition = None
    if key in adata_query.obs.columns:
        column = adata_query.obs[key]
        if column.isna().any():
            raise ScamlError(
                f"adata_query.obs[{key!r}] has {int(column.isna().sum())} missing values; give every query cell a batch."
            )
        query_conditions = sorted(map(str, pd.unique(column.astype(str))))
    elif query_batch_key is not None:
        raise missing_key_error(query_batch_key, adata_query.obs.columns, "adata_query.obs", "query_batch_key")
    else:
        default_condition = QUERY_CONDITION
        query_conditions = [QUERY_CONDITION]
        info(
            f"the query has no column {key!r}; all {adata_query.n_obs} query cells form one new batch "
            f"{QUERY_CONDITION!r} (pass query_batch_key to name the query's batch column)."
        )
    existing = [c for c in query_conditions if c in model.conditions]
    if existing and not allow_existing:
        raise ScamlError(
            f"query batch(es) {existing[:10]} already exist in the reference (column {key!r}). Rename the query's "
            "batches, or pass allow_existing_conditions=True (--allow-existing-conditions) to treat them as "
            "the same reference conditions."
        )
    if existing:
        info(f"query batch(es) {existing} are treated as the reference conditions of the same name.")
    return key, [c for c in query_conditions if c not in model.conditions], default_condition


def _query_module(model: BaseVAE, surgery: dict) -> ConditionalVAE:
    """A copy of the reference network with condition columns for the new batches, frozen as ``surgery`` says."""
    module = copy.deepcopy(model.module)
    if surgery["n_new_conditions"]:
        module.add_conditions(surgery["n_new_conditions"])
    apply_freeze(module, surgery)
    return module


def _query_model(model: BaseVAE, module: ConditionalVAE, surgery: dict, adata_query: ad.AnnData) -> BaseVAE:
    """The query model: the reference's class and settings around the new network, holding the query."""
    config = model.config
    config["module"] = module.cfg.to_dict()
    config["surgery"] = surgery
    config["batch_key"] = surgery["query_batch_key"]
    query = type(model)._restore(
        config, module, model.genes, model.conditions + surgery["new_conditions"], model.labels, model.device,
        batch_key=surgery["query_batch_key"],
    )
    query._data = query._prepare(adata_query, training=True)
    return query
