"""Reference mapping: build a reference once, then map query datasets onto it and transfer labels.

A *reference directory* (written by :func:`build_reference`) holds:

- ``reference.json``: the manifest (kind, format version, method, keys, sizes, scaml version);
- ``model/`` (scVI / trVAE / scANVI-like models, :mod:`scaml.vae`) or ``symphony/``
  (a Symphony-style Harmony reference, :mod:`scaml.mapping.symphony`);
- ``reference_latent.npz`` (the reference cells' embedding and names) and
  ``reference_obs.csv`` (their batch and label), used for label transfer and joint UMAPs;
- ``run.json`` and figures.

:func:`map_query` maps a query onto it (architecture surgery and query training for
the VAEs; Symphony's projection and correction otherwise), transfers labels by
weighted kNN (:mod:`scaml.mapping.transfer`; scANVI also predicts directly), and writes
``mapped.h5ad``, a joint UMAP and, when the query carries true labels, the metrics.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import __version__
from .._utils import info, warn
from ..errors import ScamlError
from ..io import (
    check_obs_key,
    count_matrix_problem,
    prepare_outdir,
    read_input,
    write_csv,
    write_h5ad,
    write_json,
)
from ..runinfo import RunRecord

#: Mapping methods and what they build.
METHODS = ("scvi", "trvae", "scanvi", "symphony")
VAE_METHODS = {"scvi": "SCVI", "trvae": "TRVAE", "scanvi": "SCANVI"}

MANIFEST_FILE = "reference.json"
REFERENCE_KIND = "scaml-reference"
REFERENCE_FORMAT_VERSION = 1
LATENT_FILE = "reference_latent.npz"
OBS_FILE = "reference_obs.csv"
MODEL_DIR = "model"
SYMPHONY_DIR = "symphony"

#: obsm key of the shared embedding in mapped.h5ad.
LATENT_KEY = "X_scaml_latent"
#: Reference cells drawn at most in the joint UMAP (the query is always drawn in full).
MAX_UMAP_REFERENCE_CELLS = 50_000


# ----------------------------------------------------------------------------- helpers

def _load_adata(data: ad.AnnData | str | os.PathLike, what: str) -> tuple[ad.AnnData, str | None]:
    if isinstance(data, ad.AnnData):
        return data, None
    path = str(data)
    info(f"reading {what} {path}")
    return read_input(path), path


def _counts_matrix(adata: ad.AnnData) -> tuple[Any, str]:
    """The matrix a VAE reads by default: ``layers['counts']`` when present, else X."""
    if "counts" in adata.layers:
        return adata.layers["counts"], "layers['counts']"
    return adata.X, "X"


def _check_counts(adata: ad.AnnData, likelihood: str, what: str, hint: str) -> None:
    if likelihood not in ("nb", "zinb"):
        return
    X, where = _counts_matrix(adata)
    problem = count_matrix_problem(X)
    if problem is not None:
        raise ScamlError(
            f"the {what} {where} is not a raw count matrix ({problem}), but a {likelihood.upper()} likelihood "
            f"models raw counts. {hint}"
        )


def _select_hvg(adata: ad.AnnData, n_hvg: int, batch_key: str, likelihood: str) -> ad.AnnData:
    """Subset to ``n_hvg`` highly variable genes (Seurat flavour on log-normalised values, per batch)."""
    import scanpy as sc

    X, _ = _counts_matrix(adata)
    tmp = ad.AnnData(X=X.astype(np.float32, copy=True), obs=adata.obs[[batch_key]].copy(),
                     var=pd.DataFrame(index=adata.var_names))
    if likelihood in ("nb", "zinb"):
        sc.pp.normalize_total(tmp, target_sum=1e4)
        sc.pp.log1p(tmp)
    batch = batch_key if tmp.obs[batch_key].value_counts().min() >= 2 else None
    sc.pp.highly_variable_genes(tmp, n_top_genes=int(n_hvg), flavor="seurat", batch_key=batch)
    mask = tmp.var["highly_variable"].to_numpy()
    info(f"using {int(mask.sum())} highly variable genes of {adata.n_vars}")
    return adata[:, mask].copy()


def _epoch_summary(history: dict) -> dict:
    seconds = list(history.get("epoch_seconds") or [])
    return {
        "epochs": len(seconds),
        "max_epochs": history.get("max_epochs"),
        "stopped_epoch": history.get("stopped_epoch"),
        "best_epoch": history.get("best_epoch"),
        "seconds_per_epoch": round(float(np.mean(seconds)), 4) if seconds else None,
        "final_train_loss": (history.get("train_loss") or [None])[-1],
        "final_validation_loss": (history.get("validation_loss") or [None])[-1],
    }


def _plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    from ..io import save_figure

    train = history.get("train_loss") or []
    if not train:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    epochs = np.arange(1, len(train) + 1)
    ax.plot(epochs, train, label="training")
    val = history.get("validation_loss") or []
    if len(val) == len(train):
        ax.plot(epochs, val, label="validation")
    best = history.get("best_epoch")
    if best:
        ax.axvline(best, color="grey", ls="--", lw=1, label=f"best epoch ({best})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per cell")
    ax.set_title(title)
    ax.legend(frameon=False)
    save_figure(fig, path)


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
    unlabeled_category: str = "Unknown",
    train_params: dict | None = None,
    **model_params: Any,
) -> Path:
    """Build a mapping reference and save it as a directory.

    Parameters
    ----------
    adata
        The reference cells (AnnData or a path :func:`scaml.io.read_input` reads). Raw
        counts for the NB / ZINB VAEs and for Symphony (``layers["counts"]`` when present,
        else X). Not modified.
    method
        ``"scvi"``, ``"trvae"``, ``"scanvi"`` (conditional VAEs, :mod:`scaml.vae`) or
        ``"symphony"`` (a Harmony reference, :mod:`scaml.mapping.symphony`).
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
        Highly variable genes the reference uses (``None``: all genes for a VAE).
    unlabeled_category
        Label of unlabelled reference cells (scANVI).
    train_params
        More arguments of the VAE's ``train`` (``batch_size``, ``lr``, ``early_stopping``,
        ``n_threads``...).
    **model_params
        Arguments of the model (``n_latent``, ``hidden_layers``, ``gene_likelihood``,
        ``dropout_rate``, ``beta``...) or of the Symphony builder (``n_comps``, ``theta``...).

    Returns
    -------
    Path
        The reference directory.

    Raises
    ------
    ScamlError
        Unknown method, missing keys, no labels for scANVI, non-count data for an NB /
        ZINB model, or an existing output directory.
    """
    method = str(method).lower()
    if method not in METHODS:
        raise ScamlError(f"unknown reference method {method!r}; use one of {', '.join(METHODS)} (--method).")
    adata, input_path = _load_adata(adata, "the reference")
    check_obs_key(adata, batch_key, flag="--batch-key")
    if label_key is not None:
        check_obs_key(adata, label_key, flag="--label-key")
    elif method == "scanvi":
        raise ScamlError(
            "method 'scanvi' trains a classifier on the reference labels; name the label column with "
            "--label-key (label_key=...)."
        )
    likelihood = model_params.get("gene_likelihood") or ("nb" if method in VAE_METHODS else None)
    if method in VAE_METHODS:
        _check_counts(
            adata, likelihood, "reference",
            "Pass raw counts (in X or layers['counts']), or use --gene-likelihood mse "
            "(gene_likelihood='mse') for normalised / log-transformed data.",
        )
    outdir = prepare_outdir(out, overwrite=overwrite, protect=[input_path] if input_path else [])
    parameters = {"method": method, "batch_key": batch_key, "label_key": label_key,
                  "random_state": random_state, "max_epochs": max_epochs, "n_hvg": n_hvg,
                  "model_params": model_params, "train_params": train_params or {}}
    if method == "scanvi":
        parameters["unlabeled_category"] = unlabeled_category
    record = RunRecord("reference build", parameters=parameters,
                       inputs={"reference": input_path} if input_path else {},
                       data={"n_cells": int(adata.n_obs), "n_genes": int(adata.n_vars)})
    info(f"building a {method} reference on {adata.n_obs} cells x {adata.n_vars} genes "
         f"({adata.obs[batch_key].nunique()} batches of {batch_key!r})")
    manifest: dict[str, Any] = {
        "kind": REFERENCE_KIND, "format_version": REFERENCE_FORMAT_VERSION, "scaml_version": __version__,
        "method": method, "batch_key": batch_key, "label_key": label_key,
        "n_cells": int(adata.n_obs),
    }
    if method in VAE_METHODS:
        latent, genes, extra = _build_vae(adata, method, batch_key, label_key, outdir, record, random_state,
                                          max_epochs, n_hvg, likelihood, unlabeled_category,
                                          train_params or {}, model_params)
        manifest.update(extra)
    else:
        latent, genes = _build_symphony(adata, batch_key, label_key, outdir, record, random_state, n_hvg,
                                        model_params)
        manifest["model_dir"] = SYMPHONY_DIR
    manifest["n_genes"] = len(genes)
    manifest["n_latent"] = int(latent.shape[1])
    manifest["conditions"] = sorted(map(str, pd.unique(adata.obs[batch_key].astype(str))))
    obs = pd.DataFrame({"batch": adata.obs[batch_key].astype(str).to_numpy()}, index=adata.obs_names.astype(str))
    if label_key is not None:
        labels = adata.obs[label_key]
        obs["label"] = labels.astype(object).where(labels.notna(), None).to_numpy()
        manifest["labels"] = sorted(map(str, pd.unique(labels.dropna().astype(str))))
    obs.index.name = "cell"
    with record.timer("write"):
        _write_npz(outdir / LATENT_FILE, latent=latent.astype(np.float32), cells=obs.index.to_numpy(dtype=str))
        write_csv(obs, outdir / OBS_FILE)
        write_json(manifest, outdir / MANIFEST_FILE)
    record.data.update({"n_latent": int(latent.shape[1]), "n_model_genes": len(genes)})
    record.save(outdir)
    info(f"reference written to {outdir}")
    return outdir


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    from ..io import write_atomic

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    write_atomic(path, _write)


def _build_vae(adata, method, batch_key, label_key, outdir, record, random_state, max_epochs, n_hvg,
               likelihood, unlabeled_category, train_params, model_params):
    from .. import vae

    cls = getattr(vae, VAE_METHODS[method])
    data = adata
    if n_hvg is not None and adata.n_vars > int(n_hvg):
        with record.timer("highly_variable_genes"):
            data = _select_hvg(adata, int(n_hvg), batch_key, likelihood)
    kwargs = dict(model_params)
    kwargs.setdefault("random_state", random_state)
    if method == "scanvi":
        kwargs.update(label_key=label_key, unlabeled_category=unlabeled_category)
    with record.timer("model_setup"):
        model = cls(data, batch_key, **kwargs)
    with record.timer("training"):
        model.train(max_epochs=max_epochs, **train_params)
    with record.timer("latent"):
        latent = model.get_latent()
    with record.timer("save_model"):
        model.save(outdir / MODEL_DIR)
    record.data["training"] = _epoch_summary(model.history)
    _plot_history(model.history, outdir / "figures" / "reference_training_loss.png",
                  f"{VAE_METHODS[method]} reference training")
    extra = {"model_dir": MODEL_DIR, "model": VAE_METHODS[method], "gene_likelihood": model.gene_likelihood}
    return latent, list(model.genes), extra


def _build_symphony(adata, batch_key, label_key, outdir, record, random_state, n_hvg, model_params):
    from .symphony import build_symphony_reference

    kwargs = dict(model_params)
    kwargs.pop("gene_likelihood", None)
    if n_hvg is not None:
        kwargs["n_hvg"] = int(n_hvg)
    with record.timer("symphony_reference"):
        ref = build_symphony_reference(adata, batch_key, label_key=label_key, random_state=random_state, **kwargs)
    with record.timer("save_model"):
        ref.save(outdir / SYMPHONY_DIR)
    return np.asarray(ref.embedding, dtype=np.float32), [str(g) for g in ref.var_names]


def load_reference_manifest(reference_dir: str | os.PathLike) -> dict:
    """Read and check a reference directory's manifest.

    Raises
    ------
    ScamlError
        The directory does not exist, is not a scaml reference, or was written by an
        incompatible version.
    """
    path = Path(reference_dir)
    if not path.is_dir():
        raise ScamlError(
            f"reference directory {str(path)!r} does not exist; build one with `scaml reference build` "
            "and pass its --out directory to --reference."
        )
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ScamlError(
            f"{str(path)!r} is not a scaml reference directory (no {MANIFEST_FILE}); pass the --out directory "
            "of `scaml reference build`."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ScamlError(f"{str(manifest_path)!r} is not valid JSON ({exc}); rebuild the reference.") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != REFERENCE_KIND:
        raise ScamlError(f"{str(manifest_path)!r} does not describe a scaml reference; rebuild the reference.")
    fmt = manifest.get("format_version")
    if fmt != REFERENCE_FORMAT_VERSION:
        raise ScamlError(
            f"the reference in {str(path)!r} has format version {fmt!r} (written by scaml "
            f"{manifest.get('scaml_version', 'unknown')}); this scaml ({__version__}) reads format version "
            f"{REFERENCE_FORMAT_VERSION}. Rebuild the reference with this version of scaml."
        )
    if manifest.get("method") not in METHODS:
        raise ScamlError(f"{str(manifest_path)!r} names an unknown method {manifest.get('method')!r}; rebuild the reference.")
    for name in (LATENT_FILE, OBS_FILE, manifest.get("model_dir", "")):
        if not name or not (path / name).exists():
            raise ScamlError(f"the reference directory {str(path)!r} lacks {name!r}; it is incomplete. Rebuild it.")
    return manifest


def _load_reference_cells(path: Path, manifest: dict) -> tuple[np.ndarray, pd.DataFrame]:
    with np.load(path / LATENT_FILE, allow_pickle=False) as npz:
        latent = np.asarray(npz["latent"], dtype=np.float32)
        cells = npz["cells"].astype(str)
    obs = pd.read_csv(path / OBS_FILE, index_col=0, dtype=str, keep_default_na=False, na_values=[""])
    if len(obs) != latent.shape[0] or not np.array_equal(obs.index.to_numpy(dtype=str), cells):
        raise ScamlError(f"{LATENT_FILE} and {OBS_FILE} in {str(path)!r} disagree; the reference is corrupt. Rebuild it.")
    return latent, obs


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
    n_neighbors: int = 50,
    min_gene_overlap: float = 0.5,
    force: bool = False,
    train_params: dict | None = None,
    umap: bool = True,
) -> ad.AnnData:
    """Map a query dataset onto a reference, transfer labels, and write the results.

    Parameters
    ----------
    reference_dir
        A directory written by :func:`build_reference`.
    adata_query
        The query (AnnData or a path); raw counts for NB / ZINB references and Symphony.
        Not modified.
    out
        Output directory: ``mapped.h5ad``, ``predictions.csv``, ``figures/joint_umap.png``,
        ``metrics.json`` + ``confusion_matrix.csv`` (when ``label_key``), ``run.json``.
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
        Label-transfer uncertainty above which a cell is called "Unknown".
    n_neighbors
        Reference neighbours of the weighted kNN label transfer.
    min_gene_overlap, force
        Smallest fraction of the reference genes the query must hold, and whether to go on below it.
    train_params
        More arguments of the query model's ``train``.
    umap
        Compute the joint UMAP and draw it.

    Returns
    -------
    AnnData
        The mapped query (as written to ``mapped.h5ad``): ``obsm["X_scaml_latent"]``,
        ``obs["predicted_<label>"]``, ``obs["predicted_<label>_uncertainty"]``
        (+ ``obs["mapping_confidence"]`` for Symphony, ``obs["predicted_<label>_scanvi"]`` for scANVI).

    Raises
    ------
    ScamlError
        Not a reference directory, no shared genes, non-count data for an NB / ZINB
        reference, a query batch that exists in the reference, or a missing key.
    """
    path = Path(reference_dir)
    manifest = load_reference_manifest(path)
    method = manifest["method"]
    query, input_path = _load_adata(adata_query, "the query")
    if query.n_obs == 0:
        raise ScamlError("the query has no cells.")
    if label_key is not None:
        check_obs_key(query, label_key, flag="--label-key")
    ref_batch_key = manifest["batch_key"]
    if query_batch_key is not None:
        check_obs_key(query, query_batch_key, flag="--query-batch-key")
        batch_key = query_batch_key
    elif ref_batch_key in query.obs.columns:
        batch_key = ref_batch_key
    else:
        batch_key = None
    if batch_key is not None:
        _check_existing_conditions(query, batch_key, manifest, allow_existing_conditions)
    protect = [input_path] if input_path else []
    outdir = prepare_outdir(out, overwrite=overwrite, protect=[*protect, str(path)])
    record = RunRecord(
        "map",
        parameters={"reference": path.name, "method": method, "query_batch_key": batch_key,
                    "label_key": label_key, "max_epochs": max_epochs,
                    "allow_existing_conditions": allow_existing_conditions, "random_state": random_state,
                    "unknown_threshold": unknown_threshold, "n_neighbors": n_neighbors,
                    "train_params": train_params or {}},
        inputs={"query": input_path} if input_path else {},
        data={"n_query_cells": int(query.n_obs), "n_query_genes": int(query.n_vars),
              "n_reference_cells": int(manifest.get("n_cells", 0))},
    )
    with record.timer("load_reference"):
        ref_latent, ref_obs = _load_reference_cells(path, manifest)
    mapped = ad.AnnData(X=query.X, obs=query.obs.copy(), var=query.var.copy(),
                        layers=dict(query.layers), obsm=dict(query.obsm), uns={})
    extra_obs: dict[str, np.ndarray] = {}
    if method in VAE_METHODS:
        latent, scanvi = _map_vae(path, manifest, query, batch_key, record, max_epochs,
                                  allow_existing_conditions, min_gene_overlap, force, train_params or {},
                                  outdir)
    else:
        latent, scanvi, extra_obs = _map_symphony(path, manifest, query, batch_key, record, random_state,
                                                  min_gene_overlap, force)
    mapped.obsm[LATENT_KEY] = latent
    for key, values in extra_obs.items():
        mapped.obs[key] = values
    ref_label_key = manifest.get("label_key")
    predicted_key = None
    metrics: dict[str, Any] = {}
    if ref_label_key is not None and "label" in ref_obs.columns:
        predicted_key = f"predicted_{ref_label_key}"
        from .transfer import transfer_labels

        with record.timer("label_transfer"):
            calls = transfer_labels(ref_latent, ref_obs["label"].to_numpy(dtype=object), latent,
                                    n_neighbors=n_neighbors, threshold=unknown_threshold,
                                    query_index=mapped.obs_names, random_state=random_state)
        mapped.obs[predicted_key] = pd.Categorical(calls["label"].astype(str))
        mapped.obs[f"{predicted_key}_uncertainty"] = calls["uncertainty"].to_numpy()
        mapped.obs[f"{predicted_key}_probability"] = calls["probability"].to_numpy()
        n_unknown = int((calls["label"] == "Unknown").sum())
        info(f"label transfer (weighted kNN, k={n_neighbors}): {n_unknown} of {len(calls)} query cells "
             f"called 'Unknown' (uncertainty > {unknown_threshold})")
        record.data["n_unknown"] = n_unknown
        if scanvi is not None:
            labels, proba = scanvi
            mapped.obs[f"{predicted_key}_scanvi"] = pd.Categorical(labels.astype(str))
            mapped.obs[f"{predicted_key}_scanvi_uncertainty"] = (1.0 - proba.max(axis=1).to_numpy()).astype(np.float32)
        if label_key is not None:
            metrics = _score(mapped, label_key, predicted_key, calls, scanvi, outdir, record)
    else:
        info("the reference carries no labels (built without --label-key): mapping only, no label transfer")
    mapped.uns["scaml_mapping"] = {
        "method": method, "reference": path.name, "latent_key": LATENT_KEY,
        "reference_batch_key": ref_batch_key, "query_batch_key": batch_key or "",
        "predicted_key": predicted_key or "", "unknown_threshold": float(unknown_threshold),
        "n_neighbors": int(n_neighbors),
    }
    if umap:
        with record.timer("joint_umap"):
            coords_query = _joint_umap(ref_latent, ref_obs, mapped, predicted_key, outdir, method, random_state)
        mapped.obsm["X_umap_joint"] = coords_query
    with record.timer("write"):
        columns = [c for c in mapped.obs.columns if predicted_key and c.startswith(predicted_key)]
        columns += [c for c in ("mapping_confidence",) if c in mapped.obs.columns]
        if label_key is not None:
            columns = [label_key, *[c for c in columns if c != label_key]]
        table = mapped.obs[columns].copy()
        table.index.name = "cell"
        if columns:
            write_csv(table, outdir / "predictions.csv")
        write_h5ad(_h5ad_safe(mapped), outdir / "mapped.h5ad")
        if metrics:
            write_json(metrics, outdir / "metrics.json")
    record.save(outdir)
    info(f"mapping written to {outdir}")
    return mapped


def _check_existing_conditions(query: ad.AnnData, batch_key: str, manifest: dict, allow: bool) -> None:
    values = query.obs[batch_key]
    if values.isna().any():
        raise ScamlError(
            f"query obs[{batch_key!r}] has {int(values.isna().sum())} missing values; give every query cell a batch."
        )
    existing = sorted(set(map(str, pd.unique(values.astype(str)))) & set(manifest.get("conditions") or []))
    if existing and not allow:
        raise ScamlError(
            f"query batch(es) {existing[:10]} (column {batch_key!r}) already exist in the reference; rename the "
            "query's batches, or pass --allow-existing-conditions (allow_existing_conditions=True) to treat them "
            "as the same batches as in the reference."
        )
    if existing:
        info(f"query batch(es) {existing} are treated as the reference batches of the same name")


def _check_gene_overlap(query: ad.AnnData, genes: list[str]) -> int:
    shared = int(pd.Index(genes).isin(query.var_names.astype(str)).sum())
    if shared == 0:
        def ensembl(names) -> bool:
            names = [str(n) for n in list(names)[:500]]
            return bool(names) and np.mean([n.upper().startswith("ENS") and n[-1:].isdigit() for n in names]) > 0.5

        ref_ens, query_ens = ensembl(genes), ensembl(query.var_names)
        hint = (
            f" The reference uses {'Ensembl IDs' if ref_ens else 'gene symbols'} and the query uses "
            f"{'Ensembl IDs' if query_ens else 'gene symbols'}: convert one to the other."
            if ref_ens != query_ens else " Check that both use the same gene naming (species, case)."
        )
        raise ScamlError(
            f"the query shares no genes with the reference ({len(genes)} reference genes, e.g. {genes[:3]}; "
            f"query genes e.g. {list(map(str, query.var_names[:3]))}).{hint}"
        )
    return shared


def _map_vae(path, manifest, query, batch_key, record, max_epochs, allow_existing, min_gene_overlap, force,
             train_params, outdir):
    from ..vae import load_model, load_query

    with record.timer("load_model"):
        model = load_model(path / manifest["model_dir"])
    shared = _check_gene_overlap(query, model.genes)
    record.data["n_shared_genes"] = shared
    _check_counts(
        query, model.gene_likelihood, "query",
        f"The reference model uses gene_likelihood={model.gene_likelihood!r}: pass the query's raw counts "
        "(in X or layers['counts']), or rebuild the reference with --gene-likelihood mse on normalised data.",
    )
    with record.timer("surgery"):
        qmodel = load_query(model, query, query_batch_key=batch_key, allow_existing_conditions=allow_existing,
                            min_gene_overlap=min_gene_overlap, force=force)
    with record.timer("query_training"):
        qmodel.train(max_epochs=max_epochs, **train_params)
    record.data["query_training"] = _epoch_summary(qmodel.history)
    _plot_history(qmodel.history, outdir / "figures" / "query_training_loss.png",
                  f"{manifest.get('model', 'VAE')} query training (surgery: new batch weights only)")
    with record.timer("query_latent"):
        latent = qmodel.get_latent(query)
    scanvi = None
    if manifest["method"] == "scanvi":
        with record.timer("scanvi_predict"):
            labels, proba = qmodel.predict(query)
        scanvi = (np.asarray(labels), proba)
    return latent, scanvi


def _map_symphony(path, manifest, query, batch_key, record, random_state, min_gene_overlap, force):
    from .symphony import SymphonyReference

    with record.timer("load_model"):
        ref = SymphonyReference.load(path / manifest["model_dir"])
    genes = [str(g) for g in ref.var_names]
    shared = _check_gene_overlap(query, genes)
    record.data["n_shared_genes"] = shared
    fraction = shared / max(len(genes), 1)
    info(f"gene overlap: the query holds {shared} of the {len(genes)} reference genes ({fraction:.1%})")
    if fraction < min_gene_overlap:
        if not force:
            raise ScamlError(
                f"the query holds only {fraction:.1%} of the reference genes ({shared} of {len(genes)}), below "
                f"min_gene_overlap={min_gene_overlap:.0%}. Check the gene naming, or pass --force to map anyway."
            )
        warn(f"mapping with only {fraction:.1%} of the reference genes (forced)")
    with record.timer("symphony_map"):
        result = ref.map(query, query_batch_key=batch_key, random_state=random_state)
    extra = {}
    confidence = getattr(result, "confidence", None)
    if confidence is not None:
        extra["mapping_confidence"] = np.asarray(confidence, dtype=np.float32)
    return np.asarray(result.embedding, dtype=np.float32), None, extra


# ----------------------------------------------------------------------------- scoring and figures

def label_metrics(true: Any, predicted: Any) -> dict:
    """Accuracy, balanced accuracy and macro F1 of predicted labels against true labels.

    Macro F1 and balanced accuracy average over the true classes; an "Unknown" call
    counts as a miss of the cell's true class.
    """
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    true = np.asarray(true, dtype=str)
    predicted = np.asarray(predicted, dtype=str)
    classes = sorted(set(true))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        balanced = balanced_accuracy_score(true, predicted)
        macro_f1 = f1_score(true, predicted, labels=classes, average="macro", zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(true, predicted)), 4),
        "balanced_accuracy": round(float(balanced), 4),
        "macro_f1": round(float(macro_f1), 4),
        "n_cells": int(true.size),
    }


def _score(mapped, label_key, predicted_key, calls, scanvi, outdir, record) -> dict:
    true_col = mapped.obs[label_key]
    known = true_col.notna().to_numpy()
    true = true_col.astype(str).to_numpy()[known]
    predicted = calls["label"].astype(str).to_numpy()[known]
    ref_labels = set(map(str, mapped.obs[predicted_key].cat.categories)) | set(calls["best_label"].astype(str))
    metrics: dict[str, Any] = {
        "label_key": label_key,
        "predicted_key": predicted_key,
        "weighted_knn": label_metrics(true, predicted),
        "weighted_knn_no_unknown": label_metrics(true, calls["best_label"].astype(str).to_numpy()[known]),
        "fraction_unknown": round(float((predicted == "Unknown").mean()), 4) if predicted.size else None,
    }
    not_in_ref = sorted(set(true) - ref_labels - {"Unknown"})
    if not_in_ref:
        metrics["query_labels_not_in_reference"] = not_in_ref
        info(f"query labels absent from the reference (can only be right as 'Unknown'): {not_in_ref}")
    if scanvi is not None:
        metrics["scanvi_classifier"] = label_metrics(true, np.asarray(scanvi[0], dtype=str)[known])
    info("label transfer vs the query's " + repr(label_key) + ": " + ", ".join(
        f"{k}={v}" for k, v in metrics["weighted_knn"].items() if k != "n_cells"))
    record.data["metrics"] = {k: v for k, v in metrics["weighted_knn"].items()}
    rows = sorted(set(true))
    cols = sorted((set(predicted) | set(rows)) - {"Unknown"})
    if "Unknown" in set(predicted) or "Unknown" in set(rows):
        cols.append("Unknown")
    confusion = pd.crosstab(pd.Series(true, name="true"), pd.Series(predicted, name="predicted"))
    confusion = confusion.reindex(index=rows, columns=cols, fill_value=0)
    write_csv(confusion, outdir / "confusion_matrix.csv")
    _plot_confusion(confusion, outdir / "figures" / "confusion_matrix.png", label_key)
    return metrics


def _plot_confusion(confusion: pd.DataFrame, path: Path, label_key: str) -> None:
    import matplotlib.pyplot as plt

    from ..io import save_figure

    counts = confusion.to_numpy()
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = counts.shape
    fig, ax = plt.subplots(figsize=(max(5.5, 0.75 * n_cols + 3), max(4.0, 0.55 * n_rows + 2)))
    image = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(n_cols), [str(c) for c in confusion.columns], rotation=45, ha="right")
    ax.set_yticks(range(n_rows), [str(r) for r in confusion.index])
    ax.set_xlabel("predicted label (weighted kNN transfer)")
    ax.set_ylabel(f"true label ({label_key})")
    if n_rows * n_cols <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                if counts[i, j]:
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if frac[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ax.set_title("Query: true vs transferred labels")
    save_figure(fig, path)


def _joint_umap(ref_latent, ref_obs, mapped, predicted_key, outdir, method, random_state) -> np.ndarray:
    import matplotlib.pyplot as plt
    import umap

    from ..io import save_figure
    from ..plotting import scatter_categories

    rng = np.random.default_rng(random_state)
    n_ref = ref_latent.shape[0]
    keep = np.sort(rng.choice(n_ref, MAX_UMAP_REFERENCE_CELLS, replace=False)) if n_ref > MAX_UMAP_REFERENCE_CELLS \
        else np.arange(n_ref)
    query_latent = mapped.obsm[LATENT_KEY]
    joint = np.vstack([ref_latent[keep], query_latent]).astype(np.float32)
    n_neighbors = int(min(15, max(2, joint.shape[0] - 1)))
    info(f"joint UMAP of {keep.size} reference + {query_latent.shape[0]} query cells")
    coords = umap.UMAP(n_neighbors=n_neighbors, min_dist=0.3, random_state=random_state,
                       n_jobs=1).fit_transform(joint)
    dataset = np.array(["reference"] * keep.size + ["query"] * query_latent.shape[0], dtype=object)
    panels = 2 + int("mapping_confidence" in mapped.obs or predicted_key is not None)
    fig, axes = plt.subplots(1, panels, figsize=(6.6 * panels, 5.6))
    fig.subplots_adjust(wspace=0.5)
    scatter_categories(axes[0], coords, pd.Categorical(dataset, categories=["reference", "query"]),
                       title="Dataset", random_state=random_state)
    if predicted_key is not None and "label" in ref_obs.columns:
        ref_labels = ref_obs["label"].to_numpy(dtype=object)[keep]
        labels = np.concatenate([ref_labels, mapped.obs[predicted_key].astype(str).to_numpy()])
        labels = pd.Series(labels).fillna("Unknown").astype(str)
        # "Unknown" calls are drawn in grey (a missing category) so that they do not look like a cell type
        labels = pd.Categorical(labels.where(labels != "Unknown"),
                                categories=sorted(set(labels) - {"Unknown"}))
        title = "Labels: reference + query predictions (grey: Unknown)"
    else:
        labels = np.concatenate([ref_obs["batch"].to_numpy(dtype=object)[keep],
                                 np.array(["query"] * query_latent.shape[0], dtype=object)])
        title = "Batch (reference batches + query)"
    scatter_categories(axes[1], coords, labels, title=title, random_state=random_state)
    if panels == 3:
        ax = axes[2]
        ax.scatter(coords[: keep.size, 0], coords[: keep.size, 1], c="#d9d9d9", s=2, linewidths=0,
                   rasterized=True, label="reference")
        if "mapping_confidence" in mapped.obs and predicted_key is None:
            values, name, cmap = mapped.obs["mapping_confidence"].to_numpy(), "mapping confidence", "viridis"
        else:
            values = mapped.obs[f"{predicted_key}_uncertainty"].to_numpy()
            name, cmap = "label-transfer uncertainty", "magma_r"
        from ..plotting import point_size

        points = ax.scatter(coords[keep.size:, 0], coords[keep.size:, 1], c=values, cmap=cmap, vmin=0, vmax=1,
                            s=point_size(query_latent.shape[0]), linewidths=0, rasterized=True)
        fig.colorbar(points, ax=ax, label=name, shrink=0.8)
        ax.set_title(f"Query: {name} (reference in grey)")
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Query mapped onto the reference ({method}): joint UMAP of the shared embedding",
                 fontsize=13, y=1.02)
    save_figure(fig, outdir / "figures" / "joint_umap.png")
    return coords[keep.size:].astype(np.float32)


def _h5ad_safe(adata: ad.AnnData) -> ad.AnnData:
    """Object columns with mixed types break h5ad writing; store them as strings."""
    for column in adata.obs.columns:
        if adata.obs[column].dtype == object:
            adata.obs[column] = adata.obs[column].astype(str)
    if sp.issparse(adata.X) and not isinstance(adata.X, sp.csr_matrix):
        adata.X = sp.csr_matrix(adata.X)
    return adata


# ----------------------------------------------------------------------------- demo

def demo_mapping(
    adata: ad.AnnData,
    outdir: str | os.PathLike,
    batch_key: str = "batch",
    label_key: str = "cell_type",
    method: str = "scvi",
    random_state: int = 0,
    *,
    max_epochs: int = 30,
    query_max_epochs: int = 20,
    overwrite: bool = True,
) -> dict[str, Path]:
    """Build a reference on all batches but the last and map the last batch onto it.

    Kept small for ``scaml demo``: few training epochs and 1,000 highly variable genes.

    Parameters
    ----------
    adata
        Simulated (or real) counts with ``obs[batch_key]`` and ``obs[label_key]``; not modified.
    outdir
        Writes ``outdir/reference`` (the reference directory) and ``outdir/query`` (the mapping).
    batch_key, label_key
        The batch and label columns.
    method
        Any of :data:`METHODS`.
    random_state
        Seed.
    max_epochs, query_max_epochs
        Reference and query training epochs (VAEs).
    overwrite
        Replace existing sub-directories.

    Returns
    -------
    dict
        ``{"reference": Path, "query": Path}``.
    """
    column = check_obs_key(adata, batch_key, flag="batch_key", min_levels=2).astype(str)
    batches = sorted(pd.unique(column))
    query_batches = batches[-1:]
    is_query = column.isin(query_batches).to_numpy()
    reference = adata[~is_query].copy()
    query = adata[is_query].copy()
    info(f"mapping demo: reference = batches {batches[:-1]} ({reference.n_obs} cells), "
         f"query = {query_batches} ({query.n_obs} cells), method {method}")
    outdir = Path(outdir)
    # the networks are small: one torch thread is fastest on a laptop or a busy machine
    train = {"n_threads": 1} if method in VAE_METHODS else None
    ref_dir = build_reference(reference, method, batch_key, label_key, outdir / "reference", overwrite=overwrite,
                              random_state=random_state, max_epochs=max_epochs, n_hvg=1000, train_params=train)
    map_query(ref_dir, query, outdir / "query", label_key=label_key, overwrite=overwrite,
              max_epochs=query_max_epochs, random_state=random_state, train_params=train)
    return {"reference": ref_dir, "query": outdir / "query"}
