"""User API of scaml's conditional VAEs: :class:`SCVI`, :class:`TRVAE` and :class:`SCANVI`.

A model is built on an AnnData (the reference), trained with :meth:`BaseVAE.train`,
embeds cells with :meth:`BaseVAE.get_latent`, and is saved as a directory with
:meth:`BaseVAE.save`. :func:`scaml.vae.load_query` turns a trained model into a
query model by architecture surgery.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._utils import info
from ..errors import ScamlError, missing_key_error
from ..io import check_obs_key
from .data import CellData, align_columns, gene_kind, gene_positions
from .freeze import apply_freeze
from .io import FORMAT_VERSION, read_model_dir, write_model_dir
from .modules import DISPERSIONS, LIKELIHOODS, PEAK_LIKELIHOODS, ConditionalVAE, ModuleConfig
from .training import TrainSettings, split_validation, train_module

QUERY_CONDITION = "query"
# scVI's default KL warm-up (n_epochs_kl_warmup=400): fixed in epochs, not scaled to max_epochs, so
# that a short run ends with a small KL weight instead of squeezing the latent towards the prior
DEFAULT_KL_WARMUP_EPOCHS = 400


# ----------------------------------------------------------------------------- helpers

def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ScamlError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ScamlError(f"device={device!r} was asked for but CUDA is not available; use device='auto' or 'cpu'.")
    return dev


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators inside the block and restore them afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def torch_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with ``n_threads`` torch CPU threads (default: torch's, capped at the usable CPUs)."""
    old = torch.get_num_threads()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    if n_threads is None:
        n = min(old, usable)
    elif int(n_threads) < 1:
        raise ScamlError(f"n_threads must be at least 1; got {n_threads}.")
    else:
        n = int(n_threads)
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_max_epochs(n_cells: int, cap: int = 400) -> int:
    """scvi-tools' rule: about 20,000 cells x 400 epochs of work, at most ``cap`` epochs."""
    return int(max(1, min(round(20000 / max(n_cells, 1) * cap), cap)))


def check_adata(adata: Any, what: str) -> None:
    """Raise a ScamlError unless ``adata`` is an in-memory AnnData with cells and genes."""
    if not isinstance(adata, ad.AnnData):
        raise ScamlError(f"{what} must be an AnnData (cells x genes); got {type(adata).__name__}.")
    if adata.isbacked:
        raise ScamlError(f"{what} is opened in backed mode; load it into memory (adata.to_memory()) first.")


#: The fix named when a count likelihood meets data that are not raw counts.
COUNTS_HINT = ("Pass raw counts (in X or layers['counts']; round them if they are estimated counts), or use "
               "gene_likelihood='mse' (--gene-likelihood mse) for normalised / log-transformed data.")


#: The fix named when a peak model (Bernoulli / Poisson) meets values that are not counts.
PEAK_COUNTS_HINT = ("Pass the raw peak (fragment or insertion) counts, or binarised 0/1 peaks, in X or "
                    "layers['counts'] -- not TF-IDF / LSI-normalised or scaled values.")


def check_peak_counts(X: Any, where: str, likelihood: str) -> None:
    """Raise a ScamlError unless ``X`` holds non-negative whole numbers (peak counts or 0/1 peaks)."""
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.number):
        raise ScamlError(f"{where} must be numeric; got dtype {data.dtype}.")
    if data.size == 0:
        return
    bad = ~np.isfinite(data) | (data < 0) | (data != np.round(data))
    if bad.any():
        example = data.ravel()[np.flatnonzero(bad.ravel())[0]]
        raise ScamlError(
            f"{where} holds {int(bad.sum())} values that are not counts (e.g. {float(example):.4g}), but a "
            f"{likelihood.capitalize()} peak model needs non-negative whole numbers. {PEAK_COUNTS_HINT}"
        )


def read_matrix(adata: ad.AnnData, layer: str | None, likelihood: str, *, what: str = "data",
                hint: str = COUNTS_HINT) -> tuple[Any, str]:
    """The matrix a VAE models, and where it came from (``"X"``, ``'layers["counts"]'`` ...).

    NB / ZINB likelihoods read raw counts by scaml's one rule (:func:`scaml.preprocess.find_expression`
    with ``expected="counts"``: ``layer`` when given, else ``layers["counts"]`` when it holds counts,
    else ``X``); "mse" reads ``layer`` or ``X`` as it is.

    Raises
    ------
    ScamlError
        A missing layer, or no raw counts for a count likelihood (the message ends with ``hint``).
    """
    from ..preprocess import find_expression

    if layer is not None and layer not in adata.layers:
        raise missing_key_error(layer, adata.layers.keys(), f"the {what}'s layers", "layer")
    if likelihood in PEAK_LIKELIHOODS:
        # peaks: ``layer``, else layers["counts"] when present, else X; whole non-negative numbers only
        if layer is None and "counts" in adata.layers:
            layer = "counts"
        X, source = (adata.X, "X") if layer is None else (adata.layers[layer], f"layers[{layer!r}]")
        check_peak_counts(X, f"the {what}'s {source}", likelihood)
        return X, source
    if likelihood not in ("nb", "zinb"):
        return (adata.X, "X") if layer is None else (adata.layers[layer], f"layers[{layer!r}]")
    try:
        found = find_expression(adata, "counts", layer=layer)
    except ScamlError as exc:
        raise ScamlError(
            f"the {what} is not a raw count matrix, but a {likelihood.upper()} likelihood models raw counts: "
            f"{exc} {hint}"
        ) from exc
    return found.matrix, found.source


def _check_finite(X: Any, where: str) -> None:
    data = X.data if sp.issparse(X) else np.asarray(X)
    if not np.issubdtype(data.dtype, np.number):
        raise ScamlError(f"{where} must be numeric; got dtype {data.dtype}.")
    if not np.all(np.isfinite(data)):
        raise ScamlError(f"{where} holds NaN or infinite values; remove or fix those cells first.")


class BaseVAE:
    """A conditional VAE on one AnnData (shared by SCVI, TRVAE and SCANVI).

    Parameters
    ----------
    adata
        Cells x genes. Raw counts for ``gene_likelihood`` "nb" / "zinb"
        (``layers["counts"]`` when present, else ``X``), normalised or log data for "mse".
    batch_key
        Column of ``adata.obs`` with the condition (batch) of each cell.
    layer
        Layer to read instead of the default (``layers["counts"]`` or ``X``).
    n_latent
        Dimensions of the latent space.
    hidden_layers
        Widths of the encoder's hidden layers (the decoder mirrors them).
    dropout_rate
        Dropout in the encoder.
    use_layer_norm, use_batch_norm
        Normalisation after each hidden layer (layer norm is what surgery wants).
    gene_likelihood
        "nb" (negative binomial), "zinb" (zero-inflated NB) or "mse".
    dispersion
        "gene" (one NB dispersion per gene) or "gene-batch" (per gene and condition).
    random_state
        Seed for the initial weights, the validation split, shuffling and sampling.
    device
        "auto" (CUDA when available, else CPU), "cpu" or "cuda".
    """

    model_name = "SCVI"
    default_likelihood = "nb"
    #: The likelihoods the class takes (the peak models: Bernoulli / Poisson).
    likelihoods: tuple[str, ...] = ("nb", "zinb", "mse")
    #: The network class (a :class:`~scaml.vae.modules.ConditionalVAE` or a subclass that adds a modality).
    module_class: type[ConditionalVAE] = ConditionalVAE

    def __init__(
        self,
        adata: ad.AnnData,
        batch_key: str = "batch",
        *,
        layer: str | None = None,
        n_latent: int = 10,
        hidden_layers: Sequence[int] = (128, 128),
        dropout_rate: float = 0.05,
        use_layer_norm: bool = True,
        use_batch_norm: bool = False,
        gene_likelihood: str | None = None,
        dispersion: str = "gene",
        random_state: int = 0,
        device: str = "auto",
        **extra: Any,
    ) -> None:
        check_adata(adata, "adata")
        gene_likelihood = self.default_likelihood if gene_likelihood is None else gene_likelihood
        if gene_likelihood not in self.likelihoods:
            raise ScamlError(f"gene_likelihood={gene_likelihood!r} is not supported by {self.model_name}; use one of "
                             f"{', '.join(self.likelihoods)}.")
        self._validate_params(n_latent, hidden_layers, dropout_rate, gene_likelihood, dispersion)
        if adata.n_obs < 2 or adata.n_vars < 1:
            raise ScamlError(f"the model needs at least 2 cells and 1 gene; got {adata.n_obs} x {adata.n_vars}.")
        column = check_obs_key(adata, batch_key, flag="batch_key")
        if column.isna().any():
            raise ScamlError(
                f"adata.obs[{batch_key!r}] has {int(column.isna().sum())} missing values; "
                "give every cell a batch."
            )
        conditions = sorted(map(str, pd.unique(column.astype(str))))
        genes = [str(g) for g in adata.var_names]
        if len(set(genes)) != len(genes):
            raise ScamlError(
                f"adata.var_names holds {len(genes) - len(set(genes))} duplicated gene names; "
                "make them unique first (adata.var_names_make_unique())."
            )
        self.device = resolve_device(device)
        self.genes: list[str] = genes
        self.conditions: list[str] = conditions
        self.labels: list[str] | None = None
        self.batch_key: str = batch_key
        self.label_key: str | None = None
        self.history: dict = {}
        params = {
            "batch_key": batch_key, "layer": layer, "n_latent": int(n_latent),
            "hidden_layers": [int(h) for h in hidden_layers], "dropout_rate": float(dropout_rate),
            "use_layer_norm": bool(use_layer_norm), "use_batch_norm": bool(use_batch_norm),
            "gene_likelihood": gene_likelihood, "dispersion": dispersion, "random_state": int(random_state),
        }
        params.update(self._extra_params(adata, **extra))
        module_cfg = ModuleConfig(
            n_input=len(genes), cond_blocks=[len(conditions)], n_latent=int(n_latent),
            hidden_layers=[int(h) for h in hidden_layers], dropout_rate=float(dropout_rate),
            use_layer_norm=bool(use_layer_norm), use_batch_norm=bool(use_batch_norm),
            gene_likelihood=gene_likelihood, dispersion=dispersion,
            **self._module_extras(params),
        )
        self._config: dict = {
            "model": self.model_name, "format_version": FORMAT_VERSION, "params": params,
            "module": module_cfg.to_dict(), "surgery": None,
        }
        self._data = self._prepare(adata, training=True)
        with seeded(random_state, self.device):
            self.module = self.module_class(module_cfg).to(self.device)
        self.module.eval()

    # ------------------------------------------------------------------ subclass hooks
    def _extra_params(self, adata: ad.AnnData, **extra: Any) -> dict:
        if extra:
            raise TypeError(f"{self.model_name}() got unexpected arguments: {', '.join(extra)}")
        return {}

    def _module_extras(self, params: dict) -> dict:
        return {}

    def _label_codes(self, adata: ad.AnnData, training: bool) -> np.ndarray | None:
        return None

    def _model_matrix(self, X: Any) -> Any:
        """The matrix the network models, from the aligned data (PEAKVI binarises it)."""
        return X

    def _split_rows(self, data: CellData, fraction: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation rows (random cells; a model may keep groups of cells on one side)."""
        return split_validation(data.n_cells, fraction, generator)

    def _cell_extras(self, adata: ad.AnnData, training: bool) -> dict[str, np.ndarray] | None:
        """More per-cell inputs of the network beside the counts (:class:`CellData`'s ``extras``)."""
        return None

    # ------------------------------------------------------------------ properties
    @property
    def config(self) -> dict:
        """The model's configuration (parameters, network sizes, surgery), as saved in config.json."""
        cfg = copy.deepcopy(self._config)
        cfg["module"] = self.module.cfg.to_dict()
        return cfg

    @property
    def is_query(self) -> bool:
        """Whether this model came from :func:`scaml.vae.load_query`."""
        return self._config.get("surgery") is not None

    @property
    def gene_likelihood(self) -> str:
        return self._config["params"]["gene_likelihood"]

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_params(n_latent, hidden_layers, dropout_rate, gene_likelihood, dispersion) -> None:
        if gene_likelihood not in LIKELIHOODS:
            raise ScamlError(f"gene_likelihood={gene_likelihood!r} is not supported; use one of {', '.join(LIKELIHOODS)}.")
        if dispersion not in DISPERSIONS:
            raise ScamlError(f"dispersion={dispersion!r} is not supported; use one of {', '.join(DISPERSIONS)}.")
        if int(n_latent) < 1:
            raise ScamlError(f"n_latent must be at least 1; got {n_latent}.")
        if len(hidden_layers) < 1 or any(int(h) < 1 for h in hidden_layers):
            raise ScamlError(f"hidden_layers must be one or more positive widths; got {list(hidden_layers)}.")
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ScamlError(f"dropout_rate must be in [0, 1); got {dropout_rate}.")

    # ------------------------------------------------------------------ data
    def _condition_codes(self, adata: ad.AnnData) -> np.ndarray:
        keys = [self.batch_key, self._config["params"]["batch_key"]]
        key = next((k for k in keys if k in adata.obs.columns), None)
        surgery = self._config.get("surgery") or {}
        if key is None:
            default = surgery.get("default_condition")
            if default is not None:
                return np.full(adata.n_obs, self.conditions.index(default), dtype=np.int64)
            raise missing_key_error(self.batch_key, adata.obs.columns, "adata.obs", "batch_key")
        values = adata.obs[key]
        if values.isna().any():
            raise ScamlError(f"adata.obs[{key!r}] has {int(values.isna().sum())} missing values; give every cell a batch.")
        values = values.astype(str).to_numpy()
        index = {c: i for i, c in enumerate(self.conditions)}
        codes = np.fromiter((index.get(v, -1) for v in values), dtype=np.int64, count=values.size)
        if (codes < 0).any():
            unknown = sorted(set(values[codes < 0]))
            raise ScamlError(
                f"adata.obs[{key!r}] holds batches the model was not trained on: {unknown[:10]}; the model knows "
                f"{self.conditions[:20]}. Map new batches with scaml.vae.load_query(model, adata) first."
            )
        return codes

    def _aligned_matrix(self, adata: ad.AnnData, report: bool = False, strict_layer: bool = False) -> Any:
        layer = self._config["params"]["layer"]
        if layer is not None and layer not in adata.layers and not strict_layer:
            # new data (a query, or cells to embed) without the layer the model was built on
            info(f"adata has no layer {layer!r}; reading {'layers[counts] if present, else ' if self.gene_likelihood != 'mse' else ''}X.")
            layer = None
        X, where = read_matrix(adata, layer, self.gene_likelihood, what=f"{self.model_name} model's data")
        if list(map(str, adata.var_names)) == self.genes:
            return X, where
        positions = gene_positions(adata.var_names, self.genes)
        n_shared = int((positions >= 0).sum())
        if n_shared == 0:
            raise ScamlError(
                f"the data shares no genes with the model ({len(self.genes)} model genes, e.g. "
                f"{self.genes[:3]}; data genes e.g. {list(map(str, adata.var_names[:3]))}). "
                + _naming_hint(self.genes, list(map(str, adata.var_names)))
            )
        if report:
            info(
                f"gene overlap: {n_shared} of {len(self.genes)} model genes found in the query "
                f"({n_shared / len(self.genes):.1%}); {len(self.genes) - n_shared} missing genes are set to zero."
            )
        return align_columns(X, positions), where

    def _prepare(self, adata: ad.AnnData, training: bool = False, report: bool = False) -> CellData:
        X, where = self._aligned_matrix(adata, report=report, strict_layer=training and not self.is_query)
        _check_finite(X, where)
        X = self._model_matrix(X)
        cond = self._condition_codes(adata)
        labels = self._label_codes(adata, training)
        return CellData(X, cond, labels, obs_names=[str(n) for n in adata.obs_names],
                        extras=self._cell_extras(adata, training))

    def _data_for(self, adata: ad.AnnData | None) -> CellData:
        if adata is None:
            if getattr(self, "_data", None) is None:
                raise ScamlError(
                    "this model holds no data (it was loaded from disk); pass the AnnData to embed, e.g. "
                    "model.get_latent(adata)."
                )
            return self._data
        check_adata(adata, "adata")
        return self._prepare(adata)

    # ------------------------------------------------------------------ training
    def _default_train_settings(self, n_cells: int) -> dict:
        if self.is_query:
            # full KL weight at once: only the new condition weights move, and the full pull towards
            # the prior maps query cells better than the reference's weaker final weight (kang STIM)
            return {"max_epochs": default_max_epochs(n_cells, 200), "weight_decay": 0.0, "kl_warmup_epochs": 0}
        return {
            "max_epochs": default_max_epochs(n_cells, 400), "weight_decay": 1e-6,
            "kl_warmup_epochs": DEFAULT_KL_WARMUP_EPOCHS,
        }

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float | None = None,
        validation_fraction: float = 0.1,
        early_stopping: bool = True,
        patience: int = 20,
        lr_reduce_patience: int = 8,
        kl_warmup_epochs: int | None = None,
        verbose: bool = True,
        n_threads: int | None = None,
    ) -> BaseVAE:
        """Train the model on the data it was built on.

        Parameters
        ----------
        max_epochs
            Passes over the data. Default: ``min(round(20000 / n_cells * 400), 400)``
            for a reference model, half that (at most 200) for a query model.
        batch_size
            Cells per mini-batch.
        lr
            Adam learning rate.
        weight_decay
            Adam weight decay; default 1e-6 for a reference, 0 for a query model.
        validation_fraction
            Fraction of cells held out to compute the validation loss.
        early_stopping
            Stop when the validation loss has not improved for ``patience``
            epochs (counted once the KL warm-up is over) and restore the best weights.
        patience
            Epochs without improvement before stopping.
        lr_reduce_patience
            Epochs without improvement before the learning rate is multiplied by 0.6.
        kl_warmup_epochs
            Epochs over which the KL weight rises linearly from 0 to 1. Default
            400 for a reference (scVI's default, whatever ``max_epochs``: a shorter
            run ends with a KL weight of ``max_epochs / 400``, a weaker pull towards
            the prior that keeps cell types apart when training is short; the
            weight reached is ``history["final_kl_weight"]``); 0 for a query model.
        verbose
            Show a progress bar (also silenced by scaml's quiet mode).
        n_threads
            CPU threads for torch during training. Default: torch's setting,
            capped at the CPUs this process may use. On a busy machine 1 thread
            is often much faster than several (the network is small).

        Returns
        -------
        self
            ``self.history`` holds ``train_loss``, ``validation_loss``,
            ``epoch_seconds``, ``lr``, ``kl_weight`` (per epoch), ``final_kl_weight``,
            ``stopped_epoch`` (None when all epochs ran) and ``best_epoch``.
        """
        if self._data is None:
            raise ScamlError("this model holds no training data (it was loaded from disk); "
                             "build a new model on the data, or use load_query for new data.")
        data = self._data
        defaults = self._default_train_settings(data.n_cells)
        max_epochs = defaults["max_epochs"] if max_epochs is None else int(max_epochs)
        if max_epochs < 1:
            raise ScamlError(f"max_epochs must be at least 1; got {max_epochs}.")
        if batch_size < 2:
            raise ScamlError(f"batch_size must be at least 2; got {batch_size}.")
        if not 0.0 <= validation_fraction < 1.0:
            raise ScamlError(f"validation_fraction must be in [0, 1); got {validation_fraction}.")
        if kl_warmup_epochs is None:
            kl_warmup_epochs = defaults["kl_warmup_epochs"]
        elif int(kl_warmup_epochs) < 0:
            raise ScamlError(f"kl_warmup_epochs must be at least 0; got {kl_warmup_epochs}.")
        settings = TrainSettings(
            max_epochs=max_epochs, batch_size=int(batch_size), lr=float(lr),
            weight_decay=defaults["weight_decay"] if weight_decay is None else float(weight_decay),
            early_stopping=bool(early_stopping), patience=int(patience),
            lr_reduce_patience=int(lr_reduce_patience), kl_warmup_epochs=int(kl_warmup_epochs),
            seed=self._config["params"]["random_state"], verbose=verbose,
            description=f"{self.model_name}{' query' if self.is_query else ''}",
            n_samples_per_label=self._config["params"].get("n_samples_per_label"),
        )
        if not any(p.requires_grad for p in self.module.parameters()):
            info("nothing to train: every weight is frozen (the query adds no new batch); the model is unchanged.")
            self.history = {"train_loss": [], "validation_loss": [], "epoch_seconds": [], "lr": [],
                            "stopped_epoch": None, "best_epoch": None}
            return self
        seed = settings.seed
        generator = torch.Generator().manual_seed(seed)
        train_rows, val_rows = self._split_rows(data, validation_fraction, generator)
        surgery = self._config.get("surgery") or {}
        frozen = bool(surgery) and not surgery.get("unfrozen", False)
        with seeded(seed, self.device), torch_threads(n_threads):
            history = train_module(
                self.module, data, train_rows, val_rows, settings, self.device, generator,
                frozen_norm=frozen, freeze_dropout=bool(surgery.get("freeze_dropout", False)),
            )
        if verbose:
            n_run = len(history["train_loss"])
            stop = f", stopped early (best epoch {history['best_epoch']})" if history["stopped_epoch"] else ""
            last = history["validation_loss"][-1] if history["validation_loss"] else history["train_loss"][-1]
            info(
                f"{settings.description}: {n_run} epochs in {sum(history['epoch_seconds']):.1f} s "
                f"({1000 * sum(history['epoch_seconds']) / max(n_run, 1):.0f} ms/epoch){stop}; "
                f"last {'validation' if history['validation_loss'] else 'training'} loss {last:.4g}"
            )
        history["max_epochs"] = max_epochs
        history["n_train_cells"] = int(train_rows.size)
        history["n_validation_cells"] = int(val_rows.size)
        self.history = history
        return self

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_latent(self, adata: ad.AnnData | None = None, batch_size: int = 1024) -> np.ndarray:
        """Posterior mean of the latent space for each cell.

        Parameters
        ----------
        adata
            Cells to embed (genes aligned to the model's by name; batches must be
            known to the model). Default: the data the model was built on.
        batch_size
            Cells per forward pass.

        Returns
        -------
        numpy.ndarray
            float32, cells x ``n_latent``.
        """
        data = self._data_for(adata)
        self.module.eval()
        out = []
        for batch in data.batches(batch_size, self.device, drop_last_single=False):
            out.append(self.module.latent_mean(batch.x, batch.cond, **batch.extras).float().cpu())
        if not out:
            return np.zeros((0, self.module.cfg.n_latent), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Save the model as a directory (weights, config.json, genes, categories); atomic.

        Parameters
        ----------
        directory
            Target directory; refused when it exists and is not empty unless ``overwrite``.
        overwrite
            Replace an existing directory.

        Returns
        -------
        Path
            The directory (read it back with :func:`load_model`).
        """
        config = self.config
        config.update({
            "batch_key": self.batch_key, "label_key": self.label_key, "conditions": list(self.conditions),
            "labels": None if self.labels is None else list(self.labels), "n_genes": len(self.genes),
            "history": self.history,
        })
        return write_model_dir(directory, config, self.module.state_dict(), self.genes, overwrite=overwrite)

    def __repr__(self) -> str:
        p = self._config["params"]
        kind = "query model" if self.is_query else "model"
        return (
            f"{self.model_name} {kind}: {len(self.genes)} genes, {len(self.conditions)} conditions "
            f"({self.batch_key!r}), n_latent={p['n_latent']}, hidden={p['hidden_layers']}, "
            f"likelihood={p['gene_likelihood']}, trained={bool(self.history)}"
        )

    # ------------------------------------------------------------------ restoring
    @classmethod
    def _restore(
        cls, config: dict, module: ConditionalVAE, genes: list[str], conditions: list[str],
        labels: list[str] | None, device: torch.device, history: dict | None = None,
        batch_key: str | None = None,
    ) -> BaseVAE:
        obj = cls.__new__(cls)
        obj.device = device
        obj.genes = list(genes)
        obj.conditions = list(conditions)
        obj.labels = None if labels is None else list(labels)
        obj._config = copy.deepcopy(config)
        obj.batch_key = batch_key or config.get("batch_key") or config["params"]["batch_key"]
        obj.label_key = config["params"].get("label_key")
        obj.history = history or {}
        obj.module = module.to(device)
        obj.module.eval()
        obj._data = None
        return obj


def _naming_hint(model_genes: list[str], query_genes: list[str]) -> str:
    ref_kind, query_kind = gene_kind(model_genes), gene_kind(query_genes)
    if {ref_kind, query_kind} == {"Ensembl IDs", "gene symbols"}:
        return (
            f"The reference uses {ref_kind} and the query uses {query_kind}: convert one naming to the "
            "other (e.g. with a gene annotation table) so that both use the same gene names."
        )
    upper = {g.upper() for g in model_genes}
    n_case = sum(g.upper() in upper for g in query_genes)
    if n_case > 0.5 * min(len(model_genes), len(query_genes)) and len(set(model_genes) & set(query_genes)) < n_case:
        return (
            f"{n_case} genes match when case is ignored: the two datasets write gene names in different case "
            "(e.g. human 'CD4' vs mouse 'Cd4'); use the same species and naming for both."
        )
    return "Check that both datasets use the same gene naming (symbols vs Ensembl IDs, species, case)."


class SCVI(BaseVAE):
    """scVI-like conditional VAE: NB / ZINB likelihood on raw counts with the observed library size.

    See :class:`BaseVAE` for the parameters.

    Examples
    --------
    >>> from scaml.datasets import simulate
    >>> adata = simulate(300, 300, n_batches=2, n_cell_types=3)
    >>> model = SCVI(adata, "batch").train(max_epochs=2, verbose=False)
    >>> model.get_latent().shape
    (300, 10)
    """

    model_name = "SCVI"
    default_likelihood = "nb"


class TRVAE(BaseVAE):
    """trVAE-like conditional VAE: adds an MMD penalty between conditions on the first decoder layer.

    Parameters
    ----------
    beta
        Weight of the MMD penalty (sum over pairs of conditions in each mini-batch).
    **kwargs
        See :class:`BaseVAE`; the default likelihood is NB on counts (use "mse"
        for normalised data).
    """

    model_name = "TRVAE"
    default_likelihood = "nb"

    def __init__(self, adata: ad.AnnData, batch_key: str = "batch", *, beta: float = 1.0, **kwargs: Any) -> None:
        super().__init__(adata, batch_key, beta=beta, **kwargs)

    def _extra_params(self, adata: ad.AnnData, beta: float = 1.0, **extra: Any) -> dict:
        super()._extra_params(adata, **extra)
        if not (float(beta) >= 0 and math.isfinite(float(beta))):
            raise ScamlError(f"beta must be a finite number >= 0; got {beta}.")
        return {"beta": float(beta)}

    def _module_extras(self, params: dict) -> dict:
        return {"mmd_beta": params["beta"]}


class SCANVI(BaseVAE):
    """scANVI (Xu et al. 2021): a conditional VAE whose generative model holds the cell label.

    z2 ~ N(0, I), y ~ Cat(uniform), z1 | z2, y ~ N(mu(z2, y), sigma(z2, y)), x | z1, batch ~ NB / ZINB
    (the decoder of :class:`SCVI`, observed library size). Inference: q(z1 | x, batch) (the
    encoder; its mean is the embedding), q(y | z1) (the classifier) and q(z2 | z1, y).
    Labelled cells enter the ELBO with their label; unlabelled cells (``unlabeled_category`` or
    missing, and every query cell after :func:`scaml.vae.load_query`) with the average over
    q(y | z1) plus KL(q(y | z1) || p(y)). The classifier is also trained by a cross-entropy on
    labelled cells, weighted by ``classification_ratio``. The whole KL (z1's to p(z1 | z2, y),
    z2's and y's) follows the KL warm-up of :meth:`train`, as SCVI's does (scvi-tools leaves
    z1's out of the warm-up; with the 400-epoch warm-up, a 100-epoch reference and the query
    then lose accuracy on a stimulated query, kang_ifnb1k STIM: 0.77 vs 0.89 by kNN).
    Trained from scratch (as scvi-tools' ``SCANVI(adata)``); :meth:`from_scvi_model` starts
    from a trained :class:`SCVI` instead.

    Parameters
    ----------
    label_key
        Column of ``adata.obs`` with the cell labels.
    unlabeled_category
        The value of ``label_key`` that marks unlabelled cells (missing values are unlabelled too).
    classification_ratio
        Weight of the classification loss (mean cross-entropy over labelled cells; scvi-tools' 50).
    n_samples_per_label
        Label-balanced classification loss: each epoch draws at most this many labelled cells of
        every label (all cells of a smaller label) and each training step adds the cross-entropy
        of one mini-batch of them (scvi-tools' ``n_samples_per_label``). Default None: the
        labelled cells of each step's own mini-batch.
    classifier_layers
        Hidden layers of the classifier q(y | z1), each as wide as the encoder's last hidden
        layer (default 1).
    classifier_dropout
        Dropout after each hidden layer of the classifier (default 0). scvi-tools' rule (as
        many layers as the encoder, its dropout rate) was measured and lost: kang_ifnb1k STIM
        by kNN 0.851 vs 0.890 with 2 x 128 and dropout 0.05, panc8 hold-outs 0.950 vs 0.954
        (benchmarks/README.md).
    **kwargs
        See :class:`BaseVAE`.

    Examples
    --------
    >>> from scaml.datasets import simulate
    >>> adata = simulate(300, 300, n_batches=2, n_cell_types=3)
    >>> model = SCANVI(adata, "batch", label_key="cell_type").train(max_epochs=2, verbose=False)
    >>> labels, probabilities = model.predict()
    >>> probabilities.shape
    (300, 3)
    """

    model_name = "SCANVI"
    default_likelihood = "nb"

    def __init__(
        self,
        adata: ad.AnnData,
        batch_key: str = "batch",
        label_key: str = "cell_type",
        unlabeled_category: str = "Unknown",
        *,
        classification_ratio: float = 50.0,
        n_samples_per_label: int | None = None,
        classifier_layers: int = 1,
        classifier_dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            adata, batch_key, label_key=label_key, unlabeled_category=unlabeled_category,
            classification_ratio=classification_ratio, n_samples_per_label=n_samples_per_label,
            classifier_layers=classifier_layers, classifier_dropout=classifier_dropout, **kwargs,
        )

    def _extra_params(
        self, adata: ad.AnnData, label_key: str = "cell_type", unlabeled_category: str = "Unknown",
        classification_ratio: float = 50.0, n_samples_per_label: int | None = None,
        classifier_layers: int = 1, classifier_dropout: float = 0.0, **extra: Any,
    ) -> dict:
        super()._extra_params(adata, **extra)
        if isinstance(classifier_layers, bool) or not float(classifier_layers).is_integer() \
                or int(classifier_layers) < 1:
            raise ScamlError(f"classifier_layers must be a whole number >= 1; got {classifier_layers!r}.")
        if not 0.0 <= float(classifier_dropout) < 1.0:
            raise ScamlError(f"classifier_dropout must be in [0, 1); got {classifier_dropout!r}.")
        if label_key not in adata.obs.columns:
            raise missing_key_error(label_key, adata.obs.columns, "adata.obs", "label_key")
        if not (math.isfinite(float(classification_ratio)) and float(classification_ratio) >= 0):
            raise ScamlError(f"classification_ratio must be a finite number >= 0; got {classification_ratio}.")
        if n_samples_per_label is not None:
            if isinstance(n_samples_per_label, bool) or not float(n_samples_per_label).is_integer() \
                    or int(n_samples_per_label) < 1:
                raise ScamlError(
                    f"n_samples_per_label must be a whole number >= 1 (or None for all labelled cells); "
                    f"got {n_samples_per_label!r}."
                )
            n_samples_per_label = int(n_samples_per_label)
        values = adata.obs[label_key]
        known = values[values.notna()].astype(str)
        known = known[known != str(unlabeled_category)]
        labels = sorted(pd.unique(known))
        if len(labels) < 2:
            raise ScamlError(
                f"SCANVI needs at least 2 labelled classes in adata.obs[{label_key!r}]; found {labels} "
                f"(unlabeled_category={unlabeled_category!r})."
            )
        self.labels = [str(x) for x in labels]
        self.label_key = label_key
        return {
            "label_key": label_key, "unlabeled_category": str(unlabeled_category),
            "classification_ratio": float(classification_ratio), "n_samples_per_label": n_samples_per_label,
            "classifier_layers": int(classifier_layers), "classifier_dropout": float(classifier_dropout),
        }

    def _module_extras(self, params: dict) -> dict:
        return {"n_labels": len(self.labels or []), "classification_ratio": params["classification_ratio"],
                "label_generative": True, "classifier_layers": params["classifier_layers"],
                "classifier_dropout": params["classifier_dropout"]}

    def _label_codes(self, adata: ad.AnnData, training: bool) -> np.ndarray | None:
        surgery = self._config.get("surgery") or {}
        if not training or (self.is_query and not surgery.get("query_labels")):
            return None  # query cells are unlabelled (unless load_query(..., use_query_labels=True))
        key = self.label_key if self.label_key in adata.obs.columns else None
        if key is None:
            if self.is_query:
                return None
            raise missing_key_error(str(self.label_key), adata.obs.columns, "adata.obs", "label_key")
        values = adata.obs[key]
        index = {c: i for i, c in enumerate(self.labels or [])}
        as_str = values.astype(str).to_numpy()
        codes = np.fromiter((index.get(v, -1) for v in as_str), dtype=np.int64, count=as_str.size)
        codes[values.isna().to_numpy()] = -1
        return codes

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model: SCVI,
        adata: ad.AnnData,
        label_key: str = "cell_type",
        unlabeled_category: str = "Unknown",
        **kwargs: Any,
    ) -> SCANVI:
        """A SCANVI whose encoder, decoder and dispersions start from a trained :class:`SCVI`.

        As scvi-tools' ``SCANVI.from_scvi_model``: the architecture, likelihood and batch key are
        the SCVI model's; the classifier, q(z2 | z1, y) and p(z1 | z2, y) start fresh. Train it
        with :meth:`train` (usually for fewer epochs than from scratch).

        Parameters
        ----------
        scvi_model
            A trained reference SCVI (not a query model).
        adata
            The cells the SCVI model was trained on (same genes and batches), with the labels.
        label_key, unlabeled_category
            As for :class:`SCANVI`.
        **kwargs
            ``classification_ratio``, ``n_samples_per_label``, ``classifier_layers``,
            ``classifier_dropout``, ``random_state``, ``device``.

        Returns
        -------
        SCANVI
            The new model, holding ``adata``.
        """
        if not isinstance(scvi_model, SCVI) or scvi_model.is_query:
            raise ScamlError(
                f"from_scvi_model needs a trained reference scaml.vae.SCVI; got {type(scvi_model).__name__}"
                f"{' (a query model)' if isinstance(scvi_model, BaseVAE) and scvi_model.is_query else ''}."
            )
        allowed = {"classification_ratio", "n_samples_per_label", "classifier_layers", "classifier_dropout",
                   "random_state", "device"}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ScamlError(
                f"from_scvi_model takes the architecture from the SCVI model; unexpected arguments {unknown} "
                f"(allowed: {sorted(allowed)})."
            )
        p = scvi_model._config["params"]
        arch = {k: p[k] for k in ("layer", "n_latent", "hidden_layers", "dropout_rate", "use_layer_norm",
                                  "use_batch_norm", "gene_likelihood", "dispersion", "random_state")}
        arch.update(kwargs)
        model = cls(adata, scvi_model.batch_key, label_key, unlabeled_category, **arch)
        if model.genes != scvi_model.genes or model.conditions != scvi_model.conditions:
            raise ScamlError(
                "adata does not have the SCVI model's genes and batches; pass the AnnData the SCVI model "
                "was trained on."
            )
        state = {k: v for k, v in scvi_model.module.state_dict().items()
                 if k.startswith(("encoder.", "decoder.", "log_theta."))}
        model.module.load_state_dict(state, strict=False)
        model._config["params"]["from_scvi_model"] = True
        return model

    @torch.no_grad()
    def predict(self, adata: ad.AnnData | None = None, batch_size: int = 1024) -> tuple[np.ndarray, pd.DataFrame]:
        """Predict labels with the classifier on the latent mean.

        Parameters
        ----------
        adata
            Cells to classify (default: the training data).
        batch_size
            Cells per forward pass.

        Returns
        -------
        labels
            Predicted label of each cell (strings).
        probabilities
            DataFrame cells x classes (rows sum to 1), indexed by cell names when known.
        """
        data = self._data_for(adata)
        self.module.eval()
        probs = []
        for batch in data.batches(batch_size, self.device, drop_last_single=False):
            z = self.module.latent_mean(batch.x, batch.cond)
            probs.append(torch.softmax(self.module.classify(z), dim=-1).float().cpu())
        labels = np.asarray(self.labels, dtype=object)
        p = torch.cat(probs).numpy() if probs else np.zeros((0, labels.size), dtype=np.float32)
        index = data.obs_names
        frame = pd.DataFrame(p, columns=list(self.labels or []), index=index)
        return labels[p.argmax(axis=1)] if p.shape[0] else labels[:0], frame


def _peak_size(n_peaks: int) -> int:
    """PeakVI's default width of the latent space and of the hidden layers: ``sqrt(n_peaks)``."""
    return max(2, int(round(math.sqrt(max(int(n_peaks), 1)))))


class _PeakVAE(BaseVAE):
    """Shared defaults of the peak models: latent and hidden widths ``sqrt(n_peaks)``, two hidden layers."""

    likelihoods = PEAK_LIKELIHOODS

    def __init__(
        self,
        adata: ad.AnnData,
        batch_key: str = "batch",
        *,
        n_latent: int | None = None,
        hidden_layers: Sequence[int] | None = None,
        dropout_rate: float = 0.1,
        **kwargs: Any,
    ) -> None:
        check_adata(adata, "adata")
        size = _peak_size(adata.n_vars)
        super().__init__(
            adata, batch_key, n_latent=size if n_latent is None else n_latent,
            hidden_layers=(size, size) if hidden_layers is None else hidden_layers,
            dropout_rate=dropout_rate, **kwargs,
        )


class PEAKVI(_PeakVAE):
    """PeakVI-like conditional VAE on scATAC-seq peaks: Bernoulli likelihood on binarised peaks.

    The counts (``layers["counts"]`` when present, else ``X``; non-negative whole numbers) are
    binarised (open: count > 0). The decoder gives a logit per peak; the probability that peak
    ``j`` is open in cell ``i`` is ``sigmoid(f_j(z_i, batch_i) + b_j + log(d_i / 1000))``, with ``b_j``
    the per-peak bias (the output layer's) and ``d_i`` the cell's number of open peaks, a
    library-derived depth factor (PeakVI learns one with a second encoder; here it is observed, as
    scVI's library size). Defaults as PeakVI: ``n_latent`` and hidden widths ``sqrt(n_peaks)``, two
    hidden layers, dropout 0.1. Same training, saving and :func:`scaml.vae.load_query` surgery as
    :class:`SCVI`.

    Parameters
    ----------
    n_latent, hidden_layers
        Default ``round(sqrt(n_peaks))`` and two layers of that width.
    **kwargs
        See :class:`BaseVAE` (``gene_likelihood`` is "bernoulli").

    Examples
    --------
    >>> from scaml.datasets import simulate_atac
    >>> adata = simulate_atac(300, 400, n_batches=2, n_cell_types=3)
    >>> model = PEAKVI(adata, "batch").train(max_epochs=2, verbose=False)
    >>> model.get_latent().shape
    (300, 20)
    """

    model_name = "PEAKVI"
    default_likelihood = "bernoulli"

    def _model_matrix(self, X: Any) -> Any:
        if sp.issparse(X):
            out = sp.csr_matrix(X, dtype=np.float32, copy=True)
            out.eliminate_zeros()
            out.data[:] = 1.0
            return out
        return (np.asarray(X) > 0).astype(np.float32)


class POISSONVI(_PeakVAE):
    """PoissonVI-like conditional VAE on scATAC-seq fragment counts: Poisson likelihood.

    The peak counts (``layers["counts"]`` when present, else ``X``; non-negative whole numbers) are
    modelled as they are: ``x_ij ~ Poisson(l_i * softmax(f(z_i, batch_i))_j)`` with ``l_i`` the
    cell's observed total count (as PoissonVI, which reuses scVI's decoder with a Poisson
    likelihood). Defaults as :class:`PEAKVI`. Same training, saving and
    :func:`scaml.vae.load_query` surgery as :class:`SCVI`.

    Parameters
    ----------
    n_latent, hidden_layers
        Default ``round(sqrt(n_peaks))`` and two layers of that width.
    **kwargs
        See :class:`BaseVAE` (``gene_likelihood`` is "poisson").
    """

    model_name = "POISSONVI"
    default_likelihood = "poisson"


MODEL_CLASSES: dict[str, type[BaseVAE]] = {
    "SCVI": SCVI, "TRVAE": TRVAE, "SCANVI": SCANVI, "PEAKVI": PEAKVI, "POISSONVI": POISSONVI,
}


def register_model(cls: type[BaseVAE]) -> type[BaseVAE]:
    """Make :func:`load_model` know a model class (by its ``model_name``); usable as a class decorator."""
    MODEL_CLASSES[cls.model_name] = cls
    return cls


def load_model(directory: str | os.PathLike, device: str = "auto") -> BaseVAE:
    """Load a model saved with :meth:`BaseVAE.save`.

    Parameters
    ----------
    directory
        The model directory.
    device
        "auto" (CUDA when available, else CPU), "cpu" or "cuda".

    Returns
    -------
    BaseVAE
        The model (SCVI, TRVAE or SCANVI; a query model keeps its surgery
        settings and frozen weights). It holds no data: pass an AnnData to
        ``get_latent`` / ``predict``, or use :func:`scaml.vae.load_query`.

    Raises
    ------
    ScamlError
        Missing files, unreadable or inconsistent contents, or a directory
        written by an incompatible version.
    """
    files = read_model_dir(directory)
    config = files.config
    where = str(Path(directory) / "config.json")
    name = config.get("model")
    if name not in MODEL_CLASSES:
        raise ScamlError(f"{where!r} names an unknown model {name!r}; expected one of {sorted(MODEL_CLASSES)}.")
    try:
        module = MODEL_CLASSES[name].module_class(ModuleConfig(**config["module"]))
    except TypeError as exc:
        raise ScamlError(f"{where!r} holds an unknown network configuration ({exc}); the model directory is corrupt.") from exc
    try:
        module.load_state_dict(files.state, strict=True)
    except RuntimeError as exc:
        raise ScamlError(
            f"the weights in {str(Path(directory) / 'model.pt')!r} do not fit the configuration in config.json "
            f"({str(exc)[:300]}); the model directory is corrupt or mixed from two models."
        ) from exc
    if config.get("surgery"):
        apply_freeze(module, config["surgery"])
    conditions = [str(c) for c in config["conditions"]]
    labels = config.get("labels")
    history = config.get("history") or {}
    for key in ("versions", "scaml_version", "torch_version", "conditions", "labels", "n_genes", "history", "label_key"):
        config.pop(key, None)
    return MODEL_CLASSES[name]._restore(
        config, module, files.genes, conditions, labels, resolve_device(device), history=history,
        batch_key=config.get("batch_key"),
    )
