"""The mapping methods: one object per way of building a reference and mapping a query onto it.

Every method has the same five steps, called by :func:`scaml.mapping.build_reference` and
:func:`scaml.mapping.map_query`:

- :meth:`~MappingMethod.prepare_reference` / :meth:`~MappingMethod.prepare_query` check the cells
  and the user's options before anything is written (the method decides which options apply;
  options of other methods are reported as unused, unknown ones refused);
- :meth:`~MappingMethod.build` writes the model sub-directory and returns the reference embedding;
- :meth:`~MappingMethod.map` embeds the query in the reference's space.

:data:`METHODS` is the registry (``"scvi"``, ``"trvae"``, ``"scanvi"``, ``"peakvi"``, ``"poissonvi"``,
``"totalvi"``, ``"symphony"``); a new kind of
reference plugs in by adding an object here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd

from .._utils import info, warn
from ..errors import ScamlError
from ..preprocess import counts_verdict, highly_variable_genes, log_normalize
from ..runinfo import RunRecord
from .figures import plot_training_loss
from .refdir import ReferenceDir

Stage = Literal["build", "map"]
COUNT_LIKELIHOODS = ("nb", "zinb")


@dataclass
class Prepared:
    """Cells checked by a method, ready for :meth:`MappingMethod.build` or :meth:`MappingMethod.map`.

    Attributes
    ----------
    adata
        What the method reads (for the VAEs: the expression matrix they model in X, with the obs
        columns they need; for Symphony: the user's object, which it does not modify).
    options
        The user's options that apply to the method.
    """

    adata: ad.AnnData
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuiltReference:
    """What :meth:`MappingMethod.build` returns: the reference embedding and the method's manifest entries."""

    latent: np.ndarray
    genes: list[str]
    manifest: dict[str, Any]


@dataclass
class MappedQuery:
    """What :meth:`MappingMethod.map` returns.

    Attributes
    ----------
    latent
        Query cells x dimensions in the reference's embedding (float32).
    obs
        More per-cell columns for the mapped query (e.g. ``mapping_confidence``).
    classifier
        Labels and probabilities of the method's own classifier (scANVI), or None.
    """

    latent: np.ndarray
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    classifier: tuple[np.ndarray, pd.DataFrame] | None = None
    #: more per-cell matrices for ``mapped.obsm`` (e.g. totalVI's denoised proteins) and entries for ``mapped.uns``
    obsm: dict[str, Any] = field(default_factory=dict)
    uns: dict[str, Any] = field(default_factory=dict)


@dataclass
class MapSettings:
    """The settings of :func:`scaml.mapping.map_query` every method reads."""

    batch_key: str | None
    allow_existing_conditions: bool
    min_gene_overlap: float
    force: bool
    random_state: int


class MappingMethod:
    """A way of building a reference and mapping queries onto it (see the module docstring)."""

    #: The name users pass (``--method``).
    name: str = ""
    #: The reference's model sub-directory.
    model_dir: str = "model"
    #: Whether a labelled reference also keeps a classifier on the cells' expression
    #: (:mod:`scaml.mapping.expression_classifier`; the RNA methods).
    expression_classifier: bool = False

    def options(self, stage: Stage) -> frozenset[str]:
        """Names of the options the method takes when building (``"build"``) or mapping (``"map"``)."""
        raise NotImplementedError

    def read_input(self, path: str) -> ad.AnnData:
        """Read the cells at ``path`` (:func:`scaml.io.read_input`; a method may read more, e.g. 10x antibody counts)."""
        from ..io import read_input

        return read_input(path)

    def accepts(self, option: str, stage: Stage = "build") -> bool:
        """Whether the method takes ``option`` at ``stage``."""
        return option in self.options(stage)

    def select_options(self, options: dict[str, Any], stage: Stage) -> dict[str, Any]:
        """The options (not None) that apply to this method; others' options are reported, unknown ones refused."""
        given = {k: v for k, v in options.items() if v is not None}
        own = self.options(stage)
        other = [k for k in given if k not in own]
        if other:
            known = set().union(*(m.options(stage) for m in METHODS.values() if m is not self))
            unknown = sorted(k for k in other if k not in known)
            if unknown:
                raise ScamlError(
                    f"unknown option(s) {', '.join(unknown)} for method {self.name!r}"
                    f"{' (mapping)' if stage == 'map' else ''}; it takes {', '.join(sorted(own)) or 'none'}."
                )
            warn(f"not used by method {self.name!r}: " + ", ".join(f"{k}={given[k]!r}" for k in other)
                 + " (options of other methods)")
        return {k: v for k, v in given.items() if k in own}

    def prepare_reference(self, adata: ad.AnnData, batch_key: str, label_key: str | None,
                          options: dict[str, Any]) -> Prepared:
        """Check the reference cells and options before anything is written."""
        return Prepared(adata, self.select_options(options, "build"))

    def build(self, prepared: Prepared, batch_key: str, label_key: str | None, *, n_hvg: int | None,
              random_state: int, outdir: Path, record: RunRecord) -> BuiltReference:
        """Build the reference, write its model sub-directory in ``outdir``, return its embedding."""
        raise NotImplementedError

    def prepare_query(self, query: ad.AnnData, reference: ReferenceDir, options: dict[str, Any]) -> Prepared:
        """Check the query and options before anything is written."""
        return Prepared(query, self.select_options(options, "map"))

    def map(self, reference: ReferenceDir, prepared: Prepared, settings: MapSettings, outdir: Path,
            record: RunRecord) -> MappedQuery:
        """Embed the query in the reference's space."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- shared checks

def check_gene_overlap(query: ad.AnnData, genes: list[str]) -> int:
    """Number of the reference ``genes`` the query holds; none is an error that names the likely cause."""
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


def _signature_names(func: Callable[..., Any], drop: set[str]) -> set[str]:
    return {name for name, p in inspect.signature(func).parameters.items()
            if name not in drop and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


# ----------------------------------------------------------------------------- VAEs

def _hvg_input(matrix: Any, likelihood: str) -> Any:
    """Log-normalised values for the HVG rule: counts are normalised, log data taken as they are."""
    if likelihood in COUNT_LIKELIHOODS or counts_verdict(matrix)[0]:
        return log_normalize(matrix)
    return matrix


def epoch_summary(history: dict) -> dict[str, Any]:
    """The training summary kept in run.json: epochs run, best epoch, time per epoch, last losses."""
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


class VAEMethod(MappingMethod):
    """A conditional-VAE reference (:mod:`scaml.vae`), mapped by architecture surgery and query training.

    Parameters
    ----------
    name
        The method name (``"scvi"``, ``"trvae"``, ``"scanvi"``).
    model
        The :mod:`scaml.vae` class name (``"SCVI"``, ``"TRVAE"``, ``"SCANVI"``).
    needs_labels
        The model trains on the reference labels (scANVI).
    peaks
        The model is a peak model (PEAKVI, POISSONVI on scATAC-seq peaks): the gene HVG selection
        is skipped and every peak is used.
    """

    model_dir = "model"
    _COMMON = {"self", "adata", "batch_key", "label_key", "random_state"}

    def __init__(self, name: str, model: str, *, needs_labels: bool = False, peaks: bool = False) -> None:
        self.name = name
        self.model = model
        self.needs_labels = needs_labels
        self.peaks = peaks
        self.expression_classifier = not peaks and model in ("SCVI", "TRVAE", "SCANVI")
        self._names: dict[str, frozenset[str]] = {}

    def _model_class(self) -> type:
        from .. import vae

        return getattr(vae, self.model)

    def _train_names(self) -> set[str]:
        from ..vae import BaseVAE

        return _signature_names(BaseVAE.train, {"self"})

    def options(self, stage: Stage) -> frozenset[str]:
        """Model options (``n_latent``, ``gene_likelihood``... of the class) and training options (``train``'s)."""
        if stage not in self._names:
            from ..vae import BaseVAE

            names = self._train_names()
            if stage == "build":
                cls = self._model_class()
                names |= _signature_names(BaseVAE.__init__, self._COMMON) | _signature_names(cls.__init__, self._COMMON)
            self._names[stage] = frozenset(names)
        return self._names[stage]

    def _split(self, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        train = self._train_names()
        return ({k: v for k, v in options.items() if k not in train},
                {k: v for k, v in options.items() if k in train})

    def prepare_reference(self, adata: ad.AnnData, batch_key: str, label_key: str | None,
                          options: dict[str, Any]) -> Prepared:
        """Check the options and read the modelled matrix (raw counts for NB / ZINB)."""
        if self.needs_labels and label_key is None:
            raise ScamlError(
                f"method {self.name!r} trains a classifier on the reference labels; name the label column with "
                "--label-key (label_key=...)."
            )
        options = self.select_options(options, "build")
        likelihood = options.get("gene_likelihood") or self._model_class().default_likelihood
        layer = options.pop("layer", None)
        from ..vae.model import read_matrix

        matrix, source = read_matrix(
            adata, layer, likelihood, what="reference",
            hint="Pass raw counts (in X or layers['counts']), or use --gene-likelihood mse "
            "(gene_likelihood='mse') for normalised / log-transformed data.",
        ) if not self.peaks else read_matrix(adata, layer, likelihood, what="reference")
        info(f"the {self.model} reference reads {source}")
        columns = list(dict.fromkeys([batch_key, *([label_key] if label_key is not None else [])]))
        cells = ad.AnnData(X=matrix, obs=adata.obs[columns].copy(),
                           var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str))))
        return Prepared(cells, {**options, "gene_likelihood": likelihood, "layer": layer})

    def build(self, prepared: Prepared, batch_key: str, label_key: str | None, *, n_hvg: int | None,
              random_state: int, outdir: Path, record: RunRecord) -> BuiltReference:
        """Select highly variable genes, train the model on the reference, save it in ``outdir/model``."""
        options = dict(prepared.options)
        layer = options.pop("layer")
        model_options, train_options = self._split(options)
        data = prepared.adata
        if self.peaks:
            if n_hvg is not None and n_hvg < data.n_vars:
                info(f"method {self.name!r} uses all {data.n_vars} peaks (no gene HVG selection; n_hvg is not used)")
        elif n_hvg is not None:
            with record.timer("highly_variable_genes"):
                values = _hvg_input(data.X, model_options["gene_likelihood"]) if n_hvg < data.n_vars else data.X
                mask = highly_variable_genes(values, int(n_hvg), batch=data.obs[batch_key].to_numpy(),
                                             var_names=data.var_names)
            info(f"using {int(mask.sum())} highly variable genes of {data.n_vars}")
            if not mask.all():
                data = data[:, mask].copy()
        model_options.setdefault("random_state", random_state)
        if self.needs_labels:
            model_options["label_key"] = label_key
        with record.timer("model_setup"):
            model = self._model_class()(data, batch_key, **model_options)
        with record.timer("training"):
            model.train(**train_options)
        with record.timer("latent"):
            latent = model.get_latent()
        with record.timer("save_model"):
            model.save(outdir / self.model_dir)
        record.data["training"] = epoch_summary(model.history)
        plot_training_loss(model.history, outdir / "figures" / "reference_training_loss.png",
                           f"{self.model} reference training")
        manifest = {"model_dir": self.model_dir, "model": self.model, "gene_likelihood": model.gene_likelihood}
        if layer is not None:
            manifest["layer"] = layer
        manifest.update(self._model_manifest(model))
        return BuiltReference(latent, list(model.genes), manifest)

    def prepare_query(self, query: ad.AnnData, reference: ReferenceDir, options: dict[str, Any]) -> Prepared:
        """Check the training options and read the query's matrix as the reference model reads it."""
        options = self.select_options(options, "map")
        likelihood = str(reference.manifest.get("gene_likelihood", "nb"))
        layer = reference.manifest.get("layer")
        from ..vae.model import read_matrix

        matrix, source = read_matrix(
            query, layer if layer in query.layers else None, likelihood, what="query",
            hint=f"The reference model uses gene_likelihood={likelihood!r}: pass the query's raw counts "
            "(in X or layers['counts']), or rebuild the reference with --gene-likelihood mse on normalised data.",
        ) if not self.peaks else read_matrix(query, layer if layer in query.layers else None, likelihood,
                                             what="query")
        info(f"the query's {source} is mapped")
        cells = ad.AnnData(X=matrix, obs=query.obs.copy(), var=pd.DataFrame(index=pd.Index(query.var_names.astype(str))))
        return Prepared(cells, options)

    def map(self, reference: ReferenceDir, prepared: Prepared, settings: MapSettings, outdir: Path,
            record: RunRecord) -> MappedQuery:
        """Architecture surgery on the reference model, query training, the query's latent space."""
        from ..vae import load_model, load_query

        query = prepared.adata
        with record.timer("load_model"):
            model = load_model(reference.model_dir)
        record.data["n_shared_genes"] = check_gene_overlap(query, model.genes)
        with record.timer("surgery"):
            qmodel = load_query(model, query, query_batch_key=settings.batch_key,
                                allow_existing_conditions=settings.allow_existing_conditions,
                                min_gene_overlap=settings.min_gene_overlap, force=settings.force)
        with record.timer("query_training"):
            qmodel.train(**prepared.options)
        record.data["query_training"] = epoch_summary(qmodel.history)
        plot_training_loss(qmodel.history, outdir / "figures" / "query_training_loss.png",
                           f"{self.model} query training (surgery: new batch weights only)")
        with record.timer("query_latent"):
            latent = qmodel.get_latent(query)
        classifier = None
        if hasattr(qmodel, "predict"):
            with record.timer(f"{self.name}_predict"):
                labels, proba = qmodel.predict(query)
            classifier = (np.asarray(labels), proba)
        result = MappedQuery(latent, classifier=classifier)
        self._query_outputs(qmodel, query, result, record)
        return result

    def _model_manifest(self, model: Any) -> dict[str, Any]:
        """More manifest entries from the trained reference model (none here)."""
        return {}

    def _query_outputs(self, qmodel: Any, query: ad.AnnData, result: MappedQuery, record: RunRecord) -> None:
        """Add the query model's other outputs to ``result`` (none here)."""


class TotalVIMethod(VAEMethod):
    """A totalVI-like CITE-seq reference (:class:`scaml.vae.TOTALVI`): RNA counts plus protein counts in ``obsm``.

    Reads a 10x feature-barcoding file with its antibody counts (:func:`scaml.cite.read_cite`);
    the manifest keeps the protein names and each batch's missing proteins; a mapped query gets
    ``obsm["denoised_protein"]``, ``obsm["protein_foreground_probability"]`` and
    ``obsm["protein_imputed"]`` (True where the query's panel lacked the protein: imputed).
    """

    def __init__(self) -> None:
        super().__init__("totalvi", "TOTALVI")

    def read_input(self, path: str) -> ad.AnnData:
        """Read the cells, splitting a 10x file's "Antibody Capture" features into ``obsm["protein_expression"]``."""
        from ..cite import read_cite

        return read_cite(path)

    def prepare_reference(self, adata: ad.AnnData, batch_key: str, label_key: str | None,
                          options: dict[str, Any]) -> Prepared:
        """As :class:`VAEMethod`, and check the protein counts (before anything is written)."""
        from ..cite import PROTEIN_KEY, get_protein_counts, split_feature_types

        key = str(options.get("protein_key") or PROTEIN_KEY)
        if key not in adata.obsm:
            adata = split_feature_types(adata, key)  # antibody features in X (var["feature_types"])
        counts = get_protein_counts(adata, key)
        prepared = super().prepare_reference(adata, batch_key, label_key, options)
        prepared.adata.obsm[key] = pd.DataFrame(counts.counts, index=prepared.adata.obs_names, columns=counts.names)
        prepared.options["protein_key"] = key
        return prepared

    def prepare_query(self, query: ad.AnnData, reference: ReferenceDir, options: dict[str, Any]) -> Prepared:
        """As :class:`VAEMethod`, with the query's protein counts matched to the reference's names."""
        from ..cite import PROTEIN_KEY, get_protein_counts, match_proteins, split_feature_types

        key = str(reference.manifest.get("protein_key") or PROTEIN_KEY)
        if key not in query.obsm:
            query = split_feature_types(query, key)  # antibody features in X (var["feature_types"])
        prepared = super().prepare_query(query, reference, options)
        if key in query.obsm:
            counts = get_protein_counts(query, key)
            match_proteins(list(reference.manifest.get("protein_names") or counts.names), counts.names)
            prepared.adata.obsm[key] = pd.DataFrame(counts.counts, index=prepared.adata.obs_names,
                                                    columns=counts.names)
        else:
            info(f"the query has no obsm[{key!r}]: it is mapped by its RNA and every protein is imputed")
        return prepared

    def _model_manifest(self, model: Any) -> dict[str, Any]:
        params = model.config["params"]
        return {"protein_key": params["protein_key"], "protein_names": list(model.protein_names),
                "protein_missing": model.missing_proteins()}

    def _query_outputs(self, qmodel: Any, query: ad.AnnData, result: MappedQuery, record: RunRecord) -> None:
        """The query's denoised proteins, foreground probabilities and imputed flags."""
        with record.timer("denoised_protein"):
            denoised = qmodel.get_normalized_protein(query)
            foreground = qmodel.get_protein_foreground_probability(query)
            imputed = qmodel.get_imputed_mask(query)
        for frame in (denoised, foreground):
            frame.attrs = {}
        result.obsm.update({"denoised_protein": denoised, "protein_foreground_probability": foreground,
                            "protein_imputed": imputed})
        missing = qmodel.missing_proteins()
        query_batches = set(qmodel.config["surgery"].get("new_conditions") or [])
        imputed_by_batch = {b: v for b, v in missing.items() if b in query_batches}
        result.uns["totalvi"] = {"protein_names": list(qmodel.protein_names), "imputed_proteins": imputed_by_batch}
        record.data["imputed_proteins"] = imputed_by_batch
        n_imp = sorted({p for v in imputed_by_batch.values() for p in v})
        info(f"denoised proteins in obsm['denoised_protein'] and foreground probabilities in "
             f"obsm['protein_foreground_probability'] ({len(qmodel.protein_names)} proteins); "
             + (f"{len(n_imp)} imputed for the query's panel, flagged in obsm['protein_imputed']: "
                f"{', '.join(n_imp[:10])}{', ...' if len(n_imp) > 10 else ''}" if n_imp else "none imputed"))


class TCRMethod(VAEMethod):
    """An mvTCR-like expression + TCR reference (:class:`scaml.vae.MVTCR`).

    The chains are read from the cells (:func:`scaml.tcr.read_tcr`'s layouts, ``tcr_layout``) or
    from a 10x contig CSV joined by barcode (``contigs``) and handed to the model as scaml's
    standard TCR columns. The build also draws ``figures/tcr_latent_umap.png`` (the joint latent
    by cluster and by expanded clonotype) and records the clonotype neighbour rate (15-NN); a
    mapped query gets ``obs["tcr_clonotype"]`` and its own rate in ``run.json``.
    """

    def __init__(self) -> None:
        super().__init__("mvtcr", "MVTCR")

    def options(self, stage: Stage) -> frozenset[str]:
        """As :class:`VAEMethod`, plus ``contigs`` and ``tcr_layout`` (building and mapping)."""
        return super().options(stage) | {"contigs", "tcr_layout"}

    @staticmethod
    def _read_tcr(adata: ad.AnnData, options: dict[str, Any], required: bool) -> tuple[pd.DataFrame, str]:
        from ..tcr import tcr_table

        contigs, layout = options.pop("contigs", None), options.pop("tcr_layout", None)
        table = tcr_table(adata, layout or "auto", contigs, required=required or contigs is not None
                          or layout not in (None, "auto"), report=False)
        where = str(table.attrs.get("layout"))
        info(f"the TCR chains are read from the {where} layout" if where != "none"
             else "the cells have no TCR columns: they are mapped by their expression alone")
        return table, where

    @staticmethod
    def _put_tcr(cells: ad.AnnData, source: ad.AnnData, table: pd.DataFrame, clonotype_key: str | None) -> None:
        from ..tcr import CLONOTYPE_COLUMN, TCR_COLUMNS, clonotypes

        for col in TCR_COLUMNS:
            cells.obs[col] = pd.Categorical(table[col].to_numpy(dtype=object))
        cells.obs[CLONOTYPE_COLUMN] = pd.Categorical(clonotypes(source, table, clonotype_key))

    def prepare_reference(self, adata: ad.AnnData, batch_key: str, label_key: str | None,
                          options: dict[str, Any]) -> Prepared:
        """As :class:`VAEMethod`, with the TCR chains read (and checked) before anything is written."""
        options = dict(options)
        table, layout = self._read_tcr(adata, options, required=True)
        prepared = super().prepare_reference(adata, batch_key, label_key, options)
        self._put_tcr(prepared.adata, adata, table, prepared.options.get("clonotype_key"))
        prepared.options.update({"tcr_layout": "auto", "clonotype_key": "tcr_clonotype"})
        self._layout = layout
        return prepared

    def build(self, prepared: Prepared, batch_key: str, label_key: str | None, *, n_hvg: int | None,
              random_state: int, outdir: Path, record: RunRecord) -> BuiltReference:
        """As :class:`VAEMethod`, then the clonotype neighbour rate and the latent figure."""
        from ..tcr import chain_counts, clonotype_neighbor_rate, read_tcr, tcr_latent_figure

        built = super().build(prepared, batch_key, label_key, n_hvg=n_hvg, random_state=random_state,
                              outdir=outdir, record=record)
        cells = prepared.adata
        clones = cells.obs["tcr_clonotype"].astype(str).to_numpy()
        rate = clonotype_neighbor_rate(built.latent, clones)
        summary = {"layout": getattr(self, "_layout", "auto"),
                   **chain_counts(read_tcr(cells, "scaml", report=False)),
                   "n_clonotypes": int(pd.unique(clones).size),
                   "clonotype_neighbor_rate_15nn": None if np.isnan(rate) else round(rate, 4)}
        record.data["tcr"] = summary
        info(f"clonotype neighbour rate of the joint latent (15 nearest neighbours): {rate:.3f}")
        with record.timer("tcr_figure"):
            tcr_latent_figure(built.latent, clones, outdir / "figures" / "tcr_latent_umap.png",
                              clusters=None if label_key is None else cells.obs[label_key].astype(str).to_numpy(),
                              cluster_name=label_key or "cluster", random_state=random_state,
                              title="MVTCR reference: joint expression + TCR latent (UMAP)")
        built.manifest["tcr"] = summary
        return built

    def prepare_query(self, query: ad.AnnData, reference: ReferenceDir, options: dict[str, Any]) -> Prepared:
        """As :class:`VAEMethod`, with the query's TCR chains (a query without any is mapped by expression)."""
        options = dict(options)
        table, _ = self._read_tcr(query, options, required=False)
        prepared = super().prepare_query(query, reference, options)
        self._put_tcr(prepared.adata, query, table, None)
        return prepared

    def _query_outputs(self, qmodel: Any, query: ad.AnnData, result: MappedQuery, record: RunRecord) -> None:
        """The query's clonotypes (``obs["tcr_clonotype"]``) and clonotype neighbour rate in the shared latent."""
        from ..tcr import clonotype_neighbor_rate

        clones = query.obs["tcr_clonotype"].astype(str).to_numpy()
        result.obs["tcr_clonotype"] = clones
        if query.n_obs > 2:
            rate = clonotype_neighbor_rate(result.latent, clones)
            record.data["tcr"] = {"clonotype_neighbor_rate_15nn": None if np.isnan(rate) else round(rate, 4)}
            info(f"clonotype neighbour rate of the query in the joint latent (15 nearest neighbours): {rate:.3f}")


# ----------------------------------------------------------------------------- Symphony

class SymphonyMethod(MappingMethod):
    """A Symphony-style reference on scaml's Harmony (:mod:`scaml.mapping.symphony`): no training, one-step mapping."""

    name = "symphony"
    expression_classifier = True
    model_dir = "symphony"

    def options(self, stage: Stage) -> frozenset[str]:
        """Building: ``n_comps``, ``theta``, ``nclust`` and :func:`scaml.harmony.run_harmony`'s options; mapping: none."""
        if stage == "map":
            return frozenset()
        from ..harmony import run_harmony
        from .symphony import build_symphony_reference

        common = {"adata_ref", "batch_key", "label_key", "n_hvg", "random_state"}
        harmony = _signature_names(run_harmony, {"data_mat", "meta_data", "vars_use", "random_state"})
        return frozenset(_signature_names(build_symphony_reference, common) | harmony)

    def build(self, prepared: Prepared, batch_key: str, label_key: str | None, *, n_hvg: int | None,
              random_state: int, outdir: Path, record: RunRecord) -> BuiltReference:
        """Build the Harmony reference and save it in ``outdir/symphony``."""
        from .symphony import build_symphony_reference

        options = dict(prepared.options)
        if n_hvg is not None:
            options["n_hvg"] = int(n_hvg)
        with record.timer("symphony_reference"):
            ref = build_symphony_reference(prepared.adata, batch_key, label_key=label_key,
                                           random_state=random_state, **options)
        with record.timer("save_model"):
            ref.save(outdir / self.model_dir)
        return BuiltReference(np.asarray(ref.embedding, dtype=np.float32), [str(g) for g in ref.var_names],
                              {"model_dir": self.model_dir})

    def map(self, reference: ReferenceDir, prepared: Prepared, settings: MapSettings, outdir: Path,
            record: RunRecord) -> MappedQuery:
        """Project the query, correct it by the mixture of experts, and score each cell's mapping confidence."""
        from .symphony import SymphonyReference

        query = prepared.adata
        with record.timer("load_model"):
            ref = SymphonyReference.load(reference.model_dir)
        genes = [str(g) for g in ref.var_names]
        shared = check_gene_overlap(query, genes)
        record.data["n_shared_genes"] = shared
        fraction = shared / max(len(genes), 1)
        info(f"gene overlap: the query holds {shared} of the {len(genes)} reference genes ({fraction:.1%})")
        if fraction < settings.min_gene_overlap:
            if not settings.force:
                raise ScamlError(
                    f"the query holds only {fraction:.1%} of the reference genes ({shared} of {len(genes)}), below "
                    f"min_gene_overlap={settings.min_gene_overlap:.0%}. Check the gene naming, or pass --force to "
                    "map anyway."
                )
            warn(f"mapping with only {fraction:.1%} of the reference genes (forced)")
        with record.timer("symphony_map"):
            result = ref.map(query, query_batch_key=settings.batch_key, random_state=settings.random_state)
        return MappedQuery(np.asarray(result.embedding, dtype=np.float32),
                           obs={"mapping_confidence": np.asarray(result.confidence, dtype=np.float32)})


#: The mapping methods by name.
METHODS: dict[str, MappingMethod] = {
    "scvi": VAEMethod("scvi", "SCVI"),
    "trvae": VAEMethod("trvae", "TRVAE"),
    "scanvi": VAEMethod("scanvi", "SCANVI", needs_labels=True),
    "peakvi": VAEMethod("peakvi", "PEAKVI", peaks=True),
    "poissonvi": VAEMethod("poissonvi", "POISSONVI", peaks=True),
    "totalvi": TotalVIMethod(),
    "mvtcr": TCRMethod(),
    "symphony": SymphonyMethod(),
}


def get_method(name: str) -> MappingMethod:
    """The method called ``name`` (case-insensitive).

    Raises
    ------
    ScamlError
        No such method.
    """
    method = METHODS.get(str(name).lower())
    if method is None:
        raise ScamlError(f"unknown reference method {name!r}; use one of {', '.join(METHODS)} (--method).")
    return method
