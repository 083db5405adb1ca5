"""MVTCR: an mvTCR-like conditional VAE on expression and T-cell receptors (Drost et al. 2024).

Three experts of one Gaussian latent ``z`` are multiplied (a product of experts with the prior
N(0, I) as a fourth factor):

- expression: scaml's conditional encoder q(z | x, batch) on the counts (as :class:`~scaml.vae.SCVI`);
- alpha chain and beta chain: a small CNN over the CDR3's amino-acid tokens (embeddings plus a
  chain embedding, 64 filters over windows of 5 residues, ReLU, max-pooled over the sequence; one
  CNN for both chains) joined with V and J gene embeddings, each chain its own Gaussian expert.

A cell without an alpha (or beta) chain simply leaves that expert out of the product, and
during training each modality is dropped at random (``modality_dropout``) so that expression
alone, or TCR alone, also gives a latent that reconstructs both; a cell with both chains also
loses one of them at random (``chain_dropout``), so that one chain alone must give the latent of
both and a cell lacking a chain lands with its clonotype mates. The joint posterior is decoded
into the counts (NB / ZINB with the observed library size, the conditional decoder of SCVI) and
into the TCR: per-position amino-acid logits of both CDR3s (cross-entropy, padding included so
that length is learnt) and V / J gene classes (cross-entropy on the genes the reference knows),
weighted by ``tcr_weight``. Conditions (batches) enter the expression encoder and decoder as
one-hot columns, so :func:`scaml.vae.load_query` surgery works as for SCVI: the TCR networks
take no condition (a sequence has no batch effect) and stay frozen on a query. V / J genes the
reference never saw map to an "unknown" code. Training and validation cells are split by
clonotype (each clonotype on one side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._utils import info
from ..errors import ScamlError
from ..tcr.encode import GENE_SLOTS, MAX_CDR3_LENGTH, N_TOKENS, build_vocabularies, encode_table
from ..tcr.io import LAYOUTS, clonotypes, read_tcr
from .data import CellData
from .model import BaseVAE, register_model, torch_threads
from .modules import (
    ConditionalVAE,
    ModuleConfig,
    NonZeros,
    kl_standard_normal,
)
from .training import split_validation

#: Which experts enter the latent (:meth:`MVTCR.get_latent`'s ``modality``).
MODALITIES = ("joint", "expression", "tcr")


def product_of_experts(
    means: Sequence[torch.Tensor], log_vars: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log variance of the product of Gaussian experts and the prior N(0, I).

    ``masks`` (cells, 0 / 1) leave an expert out for a cell: precision ``1 + sum_m w_m / s2_m``,
    mean ``sum_m w_m mu_m / s2_m`` over that precision.
    """
    precision = torch.ones_like(means[0])
    weighted = torch.zeros_like(means[0])
    for mu, lv, m in zip(means, log_vars, masks, strict=True):
        p = torch.exp(-lv) * m[:, None]
        precision = precision + p
        weighted = weighted + mu * p
    return weighted / precision, -torch.log(precision)


class CDR3Encoder(nn.Module):
    """A 1-D CNN over CDR3 tokens, shared by both chains: filters over windows of 5 residues, max-pooled.

    The convolution is written as one linear map of each residue's window (its embedding and those of
    two neighbours on each side, zero beyond the ends), which is the same function as ``Conv1d`` with
    kernel 5 and padding 2 and runs faster on CPUs with this few channels.
    """

    WIDTH = 5

    def __init__(self, embedding_dim: int, n_filters: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(N_TOKENS, embedding_dim, padding_idx=0)
        self.chain = nn.Embedding(2, embedding_dim)
        self.filters = nn.Linear(self.WIDTH * embedding_dim, n_filters)
        self.n_out = n_filters

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Features (cells x 2 chains x ``n_out``) of the token tensor (cells x 2 x positions); 0 for a missing chain."""
        n, n_chains, length = tokens.shape
        present = (tokens > 0).unsqueeze(-1)  # cells x chains x positions x 1
        chain = torch.arange(n_chains, device=tokens.device)
        e = (self.tokens(tokens) + self.chain(chain)[None, :, None, :]) * present
        half = self.WIDTH // 2
        padded = F.pad(e, (0, 0, half, half))
        windows = torch.cat([padded[:, :, i:i + length] for i in range(self.WIDTH)], dim=-1)
        h = F.relu(self.filters(windows)) * present  # ReLU outputs >= 0: zeroing padding keeps the max
        return h.amax(dim=2)


class GaussianHead(nn.Module):
    """Features -> hidden layer -> a Gaussian (mean, log variance clamped to [-15, 15])."""

    def __init__(self, n_in: int, n_hidden: int, n_latent: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, n_hidden), nn.LayerNorm(n_hidden, elementwise_affine=False),
                                  nn.ReLU())
        self.mean = nn.Linear(n_hidden, n_latent)
        self.log_var = nn.Linear(n_hidden, n_latent)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(h)
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0)


class MVTCRModule(ConditionalVAE):
    """The network of :class:`MVTCR`: SCVI's conditional VAE plus CDR3 / gene experts and TCR decoders.

    ``cfg.extra`` holds ``max_length`` (CDR3 positions), ``vocabularies`` (the reference's genes
    per slot of :data:`scaml.tcr.encode.GENE_SLOTS`), ``embedding_dim``, ``n_filters``,
    ``gene_dim``, ``tcr_hidden``, ``tcr_weight``, ``modality_dropout`` and ``chain_dropout``.
    """

    def __init__(self, cfg: ModuleConfig) -> None:
        super().__init__(cfg)
        e = cfg.extra
        if not e or "vocabularies" not in e:
            raise ValueError("an MVTCR network needs cfg.extra with the TCR vocabularies and sizes")
        if cfg.gene_likelihood not in ("nb", "zinb"):
            raise ValueError("MVTCR models counts with gene_likelihood 'nb' or 'zinb'")
        self.max_length = int(e["max_length"])
        self.n_genes_slot = [len(e["vocabularies"][s]) for s in GENE_SLOTS]
        n_codes = [n + 2 for n in self.n_genes_slot]
        dim, filters, gdim, hidden = int(e["embedding_dim"]), int(e["n_filters"]), int(e["gene_dim"]), \
            int(e["tcr_hidden"])
        self.cdr3_encoder = CDR3Encoder(dim, filters)
        self.gene_embeddings = nn.ModuleList(nn.Embedding(n, gdim, padding_idx=0) for n in n_codes)
        n_features = self.cdr3_encoder.n_out + 2 * gdim
        self.alpha_expert = GaussianHead(n_features, hidden, cfg.n_latent)
        self.beta_expert = GaussianHead(n_features, hidden, cfg.n_latent)
        self.tcr_decoder = nn.Sequential(nn.Linear(cfg.n_latent, hidden),
                                         nn.LayerNorm(hidden, elementwise_affine=False), nn.ReLU())
        self.cdr3_out = nn.ModuleList(nn.Linear(hidden, self.max_length * N_TOKENS) for _ in range(2))
        self.gene_out = nn.ModuleList(nn.Linear(hidden, max(n, 1)) for n in self.n_genes_slot)

    # --------------------------------------------------------------- experts
    def experts(
        self, x: torch.Tensor, cond: torch.Tensor, tcr_cdr3: torch.Tensor | None, tcr_genes: torch.Tensor | None,
        tcr_chains: torch.Tensor | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Means, log variances and masks of the expression, alpha and beta experts."""
        mu_x, lv_x = self.encoder(x, cond)
        ones = torch.ones(x.shape[0], device=x.device, dtype=mu_x.dtype)
        if tcr_cdr3 is None or tcr_genes is None or tcr_chains is None:
            return [mu_x], [lv_x], [ones]
        seq = self.cdr3_encoder(tcr_cdr3)
        genes = [emb(tcr_genes[:, s]) for s, emb in enumerate(self.gene_embeddings)]
        h_a = torch.cat([seq[:, 0], genes[0], genes[1]], dim=1)
        h_b = torch.cat([seq[:, 1], genes[2], genes[3]], dim=1)
        mu_a, lv_a = self.alpha_expert(h_a)
        mu_b, lv_b = self.beta_expert(h_b)
        chains = tcr_chains.to(mu_x.dtype)
        return [mu_x, mu_a, mu_b], [lv_x, lv_a, lv_b], [ones, chains[:, 0], chains[:, 1]]

    def posterior(
        self, x: torch.Tensor, cond: torch.Tensor, tcr_cdr3: torch.Tensor | None = None,
        tcr_genes: torch.Tensor | None = None, tcr_chains: torch.Tensor | None = None, modality: str = "joint",
        drop: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The product-of-experts posterior (mean, log variance) of the chosen ``modality``.

        ``drop`` (training): each cell loses its TCR experts, or (if it has a chain) its expression
        expert, with probability ``modality_dropout`` each; a cell with both chains loses one of them
        (alpha or beta, at random) with probability ``chain_dropout``, so that one chain alone must
        give the latent of both (the experts learn to agree, and a cell lacking a chain lands where
        its clonotype mates with both chains do).
        """
        means, log_vars, masks = self.experts(x, cond, tcr_cdr3, tcr_genes, tcr_chains)
        if len(masks) == 1:
            return product_of_experts(means, log_vars, masks)
        if modality == "expression":
            masks = [masks[0], torch.zeros_like(masks[1]), torch.zeros_like(masks[2])]
        elif modality == "tcr":
            masks = [torch.zeros_like(masks[0]), masks[1], masks[2]]
        elif drop:
            p = float(self.cfg.extra.get("modality_dropout", 0.0))
            if p > 0:
                u = torch.rand(x.shape[0], device=x.device)
                has_tcr = (masks[1] + masks[2]) > 0
                drop_tcr = (u < p).to(masks[0].dtype)
                drop_x = ((u >= p) & (u < 2 * p) & has_tcr).to(masks[0].dtype)
                masks = [masks[0] * (1 - drop_x), masks[1] * (1 - drop_tcr), masks[2] * (1 - drop_tcr)]
            q = float(self.cfg.extra.get("chain_dropout", 0.0))
            if q > 0:
                both = (masks[1] * masks[2]) > 0
                v = torch.rand(x.shape[0], device=x.device)
                drop_a = (both & (v < q / 2)).to(masks[0].dtype)
                drop_b = (both & (v >= q / 2) & (v < q)).to(masks[0].dtype)
                masks = [masks[0], masks[1] * (1 - drop_a), masks[2] * (1 - drop_b)]
        return product_of_experts(means, log_vars, masks)

    def latent_mean(self, x: torch.Tensor, cond: torch.Tensor, tcr_cdr3: torch.Tensor | None = None,
                    tcr_genes: torch.Tensor | None = None, tcr_chains: torch.Tensor | None = None,
                    modality: str = "joint", **_: Any) -> torch.Tensor:
        """The posterior mean of the joint latent (all experts present), or of one ``modality``."""
        return self.posterior(x, cond, tcr_cdr3, tcr_genes, tcr_chains, modality)[0]

    # --------------------------------------------------------------- reconstruction
    def tcr_nll(self, z: torch.Tensor, tcr_cdr3: torch.Tensor, tcr_genes: torch.Tensor,
                tcr_chains: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell: the CDR3 cross-entropy (summed over positions of the present chains) and the V / J one."""
        h = self.tcr_decoder(z)
        n = z.shape[0]
        cdr3 = torch.zeros(n, device=z.device, dtype=z.dtype)
        for c in range(2):
            logits = self.cdr3_out[c](h).view(n, self.max_length, N_TOKENS)
            ce = F.cross_entropy(logits.reshape(-1, N_TOKENS), tcr_cdr3[:, c].reshape(-1),
                                 reduction="none").view(n, self.max_length).sum(dim=1)
            cdr3 = cdr3 + ce * tcr_chains[:, c].to(z.dtype)
        genes = torch.zeros(n, device=z.device, dtype=z.dtype)
        for s, n_known in enumerate(self.n_genes_slot):
            if n_known == 0:
                continue
            target = tcr_genes[:, s] - 2  # codes 0 (missing) and 1 (unknown) are left out
            ce = F.cross_entropy(self.gene_out[s](h), target.clamp_min(0), reduction="none")
            genes = genes + torch.where(target >= 0, ce, torch.zeros_like(ce))
        return cdr3, genes

    def loss(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        log_library: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        log_factorial: torch.Tensor | None = None,
        nz: NonZeros | None = None,
        labelled: Any = None,
        tcr_cdr3: torch.Tensor | None = None,
        tcr_genes: torch.Tensor | None = None,
        tcr_chains: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over cells of expression NLL + ``tcr_weight`` x TCR NLL + ``kl_weight`` x KL of the joint posterior."""
        mean, log_var = self.posterior(x, cond, tcr_cdr3, tcr_genes, tcr_chains, drop=self.training)
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean) if self.training else mean
        out, pi, _ = self.decoder(z, cond)
        assert log_library is not None
        recon = self.count_nll(out, pi, x, cond, log_library, log_factorial, nz)
        kl = kl_standard_normal(mean, log_var).mean()
        total = recon + kl_weight * kl
        parts = {"reconstruction": recon.detach(), "kl": kl.detach()}
        if tcr_cdr3 is not None and tcr_genes is not None and tcr_chains is not None:
            cdr3, genes = self.tcr_nll(z, tcr_cdr3, tcr_genes, tcr_chains)
            tcr = (cdr3 + genes).mean()
            total = total + float(self.cfg.extra.get("tcr_weight", 1.0)) * tcr
            parts["tcr_cdr3"] = cdr3.mean().detach()
            parts["tcr_genes"] = genes.mean().detach()
        return total, parts


def clonotype_split(groups: np.ndarray, fraction: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation rows with every clonotype (``groups``) on one side.

    Clonotypes are taken in random order into the validation set until it holds about
    ``fraction`` of the cells (empty when too few cells, as :func:`scaml.vae.training.split_validation`).
    """
    n = groups.size
    target = int(round(n * fraction)) if fraction > 0 else 0
    if n - target < 2 or target < 1:
        return np.arange(n), np.arange(0, dtype=np.int64)
    _, codes = np.unique(groups, return_inverse=True)
    n_groups = int(codes.max()) + 1
    order = torch.randperm(n_groups, generator=generator).numpy()
    sizes = np.bincount(codes, minlength=n_groups)
    cumulative = np.cumsum(sizes[order])
    n_val_groups = int(np.searchsorted(cumulative, target) + 1)
    val_groups = np.zeros(n_groups, dtype=bool)
    val_groups[order[:n_val_groups]] = True
    is_val = val_groups[codes]
    if (~is_val).sum() < 2:
        return np.arange(n), np.arange(0, dtype=np.int64)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@register_model
class MVTCR(BaseVAE):
    """mvTCR-like model of expression and TCR (see :mod:`scaml.vae.mvtcr`): a joint latent of both.

    Parameters
    ----------
    adata
        Cells x genes with raw counts (``layers["counts"]`` or X) and the TCR chains (any layout
        :func:`scaml.tcr.read_tcr` reads; a 10x contig file first goes through
        :func:`scaml.tcr.add_tcr`). Cells may lack the alpha or the beta chain (or both).
    batch_key
        obs column of the batches (conditions).
    tcr_layout
        Where the chains are: "auto" (the first found), "scaml", "airr", "airr-columns" or "ir".
    clonotype_key
        obs column of the clonotypes for the train / validation split; default the first of
        ``tcr_clonotype``, ``clonotype_orig``, ``clone_id``, ``clonotype``, ``raw_clonotype_id``,
        else identical alpha + beta CDR3 and V genes.
    tcr_weight
        Weight of the TCR reconstruction (CDR3 + V / J cross-entropy) against the expression NLL.
    max_cdr3_length
        CDR3 positions (default: the longest in the data, at most 30; longer ones are cut).
    cdr3_embedding_dim, cdr3_filters, gene_embedding_dim, tcr_hidden
        Sizes of the amino-acid embedding, CNN filters, V / J embeddings and
        the TCR networks' hidden layer.
    modality_dropout
        Probability, per cell and training step, of dropping the TCR experts (and, separately, the
        expression expert of a cell with a chain) from the product.
    chain_dropout
        Probability, per cell with both chains and training step, of dropping one chain's expert
        (so that alpha-only and beta-only cells land with their clonotype mates).
    **kwargs
        See :class:`~scaml.vae.model.BaseVAE` (``n_latent``, ``hidden_layers``, ``gene_likelihood``
        "nb" or "zinb", ``random_state``, ``device`` ...).

    Examples
    --------
    >>> from scaml.datasets import simulate_tcr
    >>> adata = simulate_tcr(400, 300, random_state=0)
    >>> model = MVTCR(adata, "batch").train(max_epochs=2, verbose=False)
    >>> model.get_latent().shape
    (400, 10)
    """

    model_name = "MVTCR"
    default_likelihood = "nb"
    likelihoods = ("nb", "zinb")
    module_class = MVTCRModule

    def __init__(
        self,
        adata: ad.AnnData,
        batch_key: str = "batch",
        *,
        tcr_layout: str = "auto",
        clonotype_key: str | None = None,
        tcr_weight: float = 1.0,
        max_cdr3_length: int | None = None,
        cdr3_embedding_dim: int = 16,
        cdr3_filters: int = 64,
        gene_embedding_dim: int = 16,
        tcr_hidden: int = 128,
        modality_dropout: float = 0.15,
        chain_dropout: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            adata, batch_key, tcr_layout=tcr_layout, clonotype_key=clonotype_key, tcr_weight=tcr_weight,
            max_cdr3_length=max_cdr3_length, cdr3_embedding_dim=cdr3_embedding_dim, cdr3_filters=cdr3_filters,
            gene_embedding_dim=gene_embedding_dim, tcr_hidden=tcr_hidden, modality_dropout=modality_dropout,
            chain_dropout=chain_dropout, **kwargs,
        )

    # ------------------------------------------------------------------ hooks
    def _extra_params(
        self, adata: ad.AnnData, tcr_layout: str = "auto", clonotype_key: str | None = None,
        tcr_weight: float = 1.0, max_cdr3_length: int | None = None, cdr3_embedding_dim: int = 16,
        cdr3_filters: int = 64, gene_embedding_dim: int = 16, tcr_hidden: int = 128,
        modality_dropout: float = 0.15, chain_dropout: float = 0.3, **extra: Any,
    ) -> dict:
        super()._extra_params(adata, **extra)
        if tcr_layout not in LAYOUTS:
            raise ScamlError(f"unknown tcr_layout {tcr_layout!r}; use one of {', '.join(LAYOUTS)} (--tcr-layout).")
        if not (math.isfinite(float(tcr_weight)) and float(tcr_weight) >= 0):
            raise ScamlError(f"tcr_weight must be a finite number >= 0; got {tcr_weight}.")
        if not 0.0 <= float(modality_dropout) < 0.5:
            raise ScamlError(f"modality_dropout must be in [0, 0.5); got {modality_dropout}.")
        if not 0.0 <= float(chain_dropout) <= 1.0:
            raise ScamlError(f"chain_dropout must be in [0, 1]; got {chain_dropout}.")
        for name, value in (("cdr3_embedding_dim", cdr3_embedding_dim), ("cdr3_filters", cdr3_filters),
                            ("gene_embedding_dim", gene_embedding_dim), ("tcr_hidden", tcr_hidden)):
            if int(value) < 1:
                raise ScamlError(f"{name} must be at least 1; got {value}.")
        table = read_tcr(adata, tcr_layout, required=True, report=True)
        lengths = [len(s) for col in ("tcr_alpha_cdr3", "tcr_beta_cdr3") for s in table[col] if s is not None]
        if not lengths:
            raise ScamlError("no cell has an alpha or a beta CDR3; MVTCR needs TCR chains (check the TCR columns).")
        if max_cdr3_length is None:
            max_length = min(max(lengths), MAX_CDR3_LENGTH)
        elif int(max_cdr3_length) < 1:
            raise ScamlError(f"max_cdr3_length must be at least 1; got {max_cdr3_length}.")
        else:
            max_length = int(max_cdr3_length)
        self._tcr_extra = {
            "max_length": int(max_length), "vocabularies": build_vocabularies(table),
            "embedding_dim": int(cdr3_embedding_dim), "n_filters": int(cdr3_filters),
            "gene_dim": int(gene_embedding_dim), "tcr_hidden": int(tcr_hidden), "tcr_weight": float(tcr_weight),
            "modality_dropout": float(modality_dropout), "chain_dropout": float(chain_dropout),
        }
        self._tcr_cache = (adata, table)
        return {"tcr_layout": tcr_layout, "clonotype_key": clonotype_key, "tcr_weight": float(tcr_weight),
                "max_cdr3_length": int(max_length), "modality_dropout": float(modality_dropout),
                "chain_dropout": float(chain_dropout)}

    def _module_extras(self, params: dict) -> dict:
        return {"extra": self._tcr_extra}

    def _cell_extras(self, adata: ad.AnnData, training: bool) -> dict[str, np.ndarray]:
        extra = self._config["module"]["extra"]
        cache = getattr(self, "_tcr_cache", None)
        if cache is not None and cache[0] is adata:
            table = cache[1]
            self._tcr_cache = None
        else:
            required = training and not self.is_query
            table = read_tcr(adata, self._config["params"]["tcr_layout"], required=required, report=training)
            if table.attrs.get("layout") == "none":
                info("no TCR columns in these cells: they are embedded from expression alone")
        if training:
            key = self._config["params"].get("clonotype_key")
            if key is not None and key not in adata.obs.columns and self.is_query:
                key = None  # a query without the reference's clonotype column: found or derived anew
            self._clonotypes = clonotypes(adata, table, key)
        return encode_table(table, extra["vocabularies"], int(extra["max_length"]), report=self.is_query and training)

    def _split_rows(self, data: CellData, fraction: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        groups = getattr(self, "_clonotypes", None)
        if groups is None or len(groups) != data.n_cells:
            return split_validation(data.n_cells, fraction, generator)
        return clonotype_split(np.asarray(groups, dtype=str), fraction, generator)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def get_latent(self, adata: ad.AnnData | None = None, batch_size: int = 1024,
                   modality: str = "joint") -> np.ndarray:
        """Posterior mean of the latent for each cell.

        Parameters
        ----------
        adata
            Cells to embed (default: the training data); its TCR chains are read as the model's
            ``tcr_layout`` says (cells without chains, or data without TCR columns, are embedded
            from expression alone).
        batch_size
            Cells per forward pass.
        modality
            "joint" (every expert present), "expression" (the expression expert and the prior) or
            "tcr" (the chain experts and the prior).

        Returns
        -------
        numpy.ndarray
            float32, cells x ``n_latent``.
        """
        if modality not in MODALITIES:
            raise ScamlError(f"modality must be one of {', '.join(MODALITIES)}; got {modality!r}.")
        data = self._data_for(adata)
        self.module.eval()
        out = []
        with torch_threads(None):
            for batch in data.batches(batch_size, self.device, drop_last_single=False):
                out.append(self.module.latent_mean(batch.x, batch.cond, modality=modality,
                                                   **batch.extras).float().cpu())
        if not out:
            return np.zeros((0, self.module.cfg.n_latent), dtype=np.float32)
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    @property
    def clonotypes(self) -> np.ndarray | None:
        """Clonotype of each training cell (None for a model loaded from disk)."""
        return getattr(self, "_clonotypes", None)


__all__ = ["MVTCR", "MVTCRModule", "clonotype_split", "product_of_experts"]
