"""The mapping methods: one object per way of building a reference and mapping a query onto it.

Every method has the same five steps, called by :func:`scaml.mapping.build_reference` and
:func:`scaml.mapping.map_query`:

- :meth:`~MappingMethod.prepare_reference` / :meth:`~MappingMethod.prepare_query` check the cells
  and the user's options before anything is written (the method decides which options apply;
  options of other methods are reported as unused, unknown ones refused);
- :meth:`~MappingMethod.build` writes the model sub-directory and returns the reference embedding;
- :meth:`~MappingMethod.map` embeds the query in the reference's space.

:data:`METHODS` is the registry (``"scvi"``, ``"trvae"``, ``"scanvi"``, ``"peakvi"``, ``"poissonvi"``,
``"symphony"``); a new kind of
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

    def options(self, stage: Stage) -> frozenset[str]:
        """Names of the options the method takes when building (``"build"``) or mapping (``"map"``)."""
        raise NotImplementedError

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
        return MappedQuery(latent, classifier=classifier)


# ----------------------------------------------------------------------------- Symphony

class SymphonyMethod(MappingMethod):
    """A Symphony-style reference on scaml's Harmony (:mod:`scaml.mapping.symphony`): no training, one-step mapping."""

    name = "symphony"
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
