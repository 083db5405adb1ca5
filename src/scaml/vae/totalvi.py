"""TOTALVI: a totalVI-like conditional VAE on CITE-seq cells (RNA + protein counts), with surgery.

The generative model follows totalVI (Gayoso et al. 2021, Nat Methods; scvi-tools' ``TOTALVAE``):

- one latent ``z ~ N(0, I)`` per cell, encoded from ``[log1p(RNA), log1p(protein)]`` and the
  batch one-hot (scArches' conditional first layer);
- RNA ``x_g ~ NB(l * softmax(f(z, b))_g, theta_g)`` with the observed library ``l``, as :class:`SCVI`;
- proteins: a mixture of two negative binomials, ``y_p ~ pi_p NB(beta_p, phi_p) + (1 - pi_p)
  NB(beta_p * alpha_p, phi_p)``. ``beta_p`` is the background (ambient antibody, non-specific
  binding): ``log beta_p ~ N(a_p(z, b), s_p(z, b))`` with the prior ``N(mu_pb, sigma_pb)`` per
  protein and batch (initialised from the data: the lower component of a two-means split of each
  protein's log counts in each batch); ``alpha_p = 1 + softplus(g_p(z, b))`` scales it up into the
  foreground; the mixing logit ``logit pi_p`` comes from the protein decoder; ``phi_p`` is one
  inverse dispersion per protein.

A protein that is all zero in a batch was not measured there: it is masked out of that batch's
likelihood and background KL, and its outputs (denoised values, foreground probability) are
*imputed* by decoding the cell's latent with each batch that did measure it (their average) and
flagged. The per-batch networks (the first layers of the encoder, the RNA decoder and the
protein decoder) and the per-batch background priors get new columns / rows in
:func:`scaml.vae.load_query`; everything else stays frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._utils import info, warn
from ..errors import ScamlError
from .data import CellData
from .model import BaseVAE, check_adata, register_model
from .modules import (
    ConditionalLinear,
    ConditionalMLP,
    ConditionalVAE,
    ModuleConfig,
    kl_standard_normal,
)

__all__ = ["TOTALVI", "TotalVAE"]


# ----------------------------------------------------------------------------- network

class ConditionTable(nn.Module):
    """One row of parameters per condition (conditions x ``n``), stored in blocks as ConditionalLinear's.

    Architecture surgery appends a block for the query's conditions (:meth:`add_conditions`);
    :func:`scaml.vae.freeze.apply_freeze` trains the newest block only.
    """

    def __init__(self, cond_blocks: Sequence[int], n: int, init: float = 0.0) -> None:
        super().__init__()
        self.cond_blocks = nn.ParameterList([nn.Parameter(torch.full((int(b), int(n)), float(init)))
                                             for b in cond_blocks])

    def condition_table(self) -> torch.Tensor:
        """All rows (conditions x n)."""
        if len(self.cond_blocks) == 1:
            return self.cond_blocks[0]
        return torch.cat(list(self.cond_blocks), dim=0)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.condition_table()[cond]

    def add_conditions(self, n_new: int) -> None:
        """Append ``n_new`` rows at the mean of the existing rows."""
        table = self.condition_table().detach()
        self.cond_blocks.append(nn.Parameter(table.mean(dim=0, keepdim=True).expand(n_new, -1).clone()))

    @torch.no_grad()
    def set_row(self, row: int, values: torch.Tensor, columns: torch.Tensor | None = None) -> None:
        """Write ``values`` into condition ``row`` (at ``columns``, default all)."""
        for block in self.cond_blocks:
            if row < block.shape[0]:
                if columns is None:
                    block[row] = values
                else:
                    block[row, columns] = values
                return
            row -= block.shape[0]
        raise IndexError("condition row out of range")


class JointEncoder(nn.Module):
    """q(z | x, y, b): an MLP over ``[log1p(RNA), log1p(protein) * mask]`` with the batch in its first layer."""

    def __init__(self, cfg: ModuleConfig, n_proteins: int) -> None:
        super().__init__()
        self.body = ConditionalMLP(cfg.n_input + n_proteins, cfg.hidden_layers, cfg.cond_blocks, cfg.dropout_rate,
                                   cfg.use_layer_norm, cfg.use_batch_norm)
        self.mean = nn.Linear(cfg.hidden_layers[-1], cfg.n_latent)
        self.log_var = nn.Linear(cfg.hidden_layers[-1], cfg.n_latent)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, protein: torch.Tensor,
                protein_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, _ = self.body(torch.cat([torch.log1p(x), torch.log1p(protein) * protein_mask], dim=-1), cond)
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0)


class ProteinDecoder(nn.Module):
    """p(y | z, b): background posterior (mean, scale), foreground scaling and mixing logit per protein."""

    def __init__(self, cfg: ModuleConfig, n_proteins: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.body = ConditionalMLP(cfg.n_latent, list(hidden), cfg.cond_blocks, 0.0, cfg.use_layer_norm,
                                   cfg.use_batch_norm)
        width = int(hidden[-1])
        self.back_mean = nn.Linear(width, n_proteins)
        self.back_scale = nn.Linear(width, n_proteins)
        self.fore_scale = nn.Linear(width, n_proteins)
        self.mixing = nn.Linear(width, n_proteins)

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        h, _ = self.body(z, cond)
        return {
            "back_mean": self.back_mean(h),
            "back_scale": F.softplus(self.back_scale(h)) + 1e-4,
            # foreground = background x (1 + softplus): always above the background
            "fore_scale": 1.0 + F.softplus(self.fore_scale(h)) + 1e-8,
            "mixing": self.mixing(h),  # logit of the background's share
        }


def nb_log_prob(y: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Element-wise NB log probability (with the ``-lgamma(y + 1)`` term), mean ``mu``, inverse dispersion ``theta``."""
    log_theta_mu = torch.log(theta + mu + 1e-8)
    return (theta * (torch.log(theta + 1e-8) - log_theta_mu) + y * (torch.log(mu + 1e-8) - log_theta_mu)
            + torch.lgamma(y + theta) - torch.lgamma(theta) - torch.lgamma(y + 1.0))


def nb_mixture_log_prob(y: torch.Tensor, mu_back: torch.Tensor, mu_fore: torch.Tensor, theta: torch.Tensor,
                        mixing: torch.Tensor) -> torch.Tensor:
    """Element-wise log of ``sigmoid(mixing) NB(mu_back) + sigmoid(-mixing) NB(mu_fore)`` (shared ``theta``)."""
    return torch.logaddexp(nb_log_prob(y, mu_back, theta) - F.softplus(-mixing),
                           nb_log_prob(y, mu_fore, theta) - F.softplus(mixing))


def kl_normal(m_q: torch.Tensor, s_q: torch.Tensor, m_p: torch.Tensor, s_p: torch.Tensor) -> torch.Tensor:
    """Element-wise KL(N(m_q, s_q^2) || N(m_p, s_p^2)) (scales, not variances)."""
    return torch.log(s_p / s_q) + (s_q.pow(2) + (m_q - m_p).pow(2)) / (2.0 * s_p.pow(2)) - 0.5


class TotalVAE(ConditionalVAE):
    """The totalVI-like network: :class:`~scaml.vae.modules.ConditionalVAE`'s RNA decoder plus proteins.

    ``cfg.extra`` holds ``n_proteins`` and ``protein_hidden`` (the widths of the protein decoder).
    The per-cell inputs ``protein`` (counts) and ``protein_mask`` (1: measured in the cell's
    batch) reach :meth:`loss` and :meth:`latent_mean` as keyword arguments.
    """

    def __init__(self, cfg: ModuleConfig) -> None:
        if cfg.gene_likelihood not in ("nb", "zinb"):
            raise ValueError("TotalVAE models RNA counts: gene_likelihood must be 'nb' or 'zinb'")
        super().__init__(cfg)
        n_proteins = int(cfg.extra["n_proteins"])
        hidden = cfg.extra.get("protein_hidden") or list(reversed(cfg.hidden_layers))
        self.n_proteins = n_proteins
        self.encoder = JointEncoder(cfg, n_proteins)
        self.protein_decoder = ProteinDecoder(cfg, n_proteins, hidden)
        # prior of the log background per protein and batch: mean and log scale
        self.background_mean = ConditionTable(cfg.cond_blocks, n_proteins, 1.0)
        self.background_log_scale = ConditionTable(cfg.cond_blocks, n_proteins, 0.0)
        self.log_protein_theta = nn.Parameter(torch.full((n_proteins,), 1.0))
        self.protein_expressed_weight = float(cfg.extra.get("protein_expressed_weight", 1e-3))

    # --------------------------------------------------------------- surgery support
    def conditional_layers(self) -> list[ConditionalLinear | ConditionTable]:  # type: ignore[override]
        return [self.encoder.body.first, self.decoder.body.first, self.protein_decoder.body.first,
                self.background_mean, self.background_log_scale]

    # --------------------------------------------------------------- pieces
    def latent_mean(self, x: torch.Tensor, cond: torch.Tensor, protein: torch.Tensor | None = None,
                    protein_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        protein, protein_mask = self._protein_inputs(x, protein, protein_mask)
        return self.encoder(x, cond, protein, protein_mask)[0]

    def _protein_inputs(self, x: torch.Tensor, protein: torch.Tensor | None,
                        protein_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if protein is None:
            protein = x.new_zeros((x.shape[0], self.n_proteins))
            protein_mask = torch.zeros_like(protein)
        elif protein_mask is None:
            protein_mask = torch.ones_like(protein)
        return protein, protein_mask

    def protein_parameters(self, z: torch.Tensor, cond: torch.Tensor) -> dict[str, torch.Tensor]:
        """The protein decoder's outputs for latents ``z`` decoded as conditions ``cond``."""
        return self.protein_decoder(z, cond)

    def denoised_protein(self, z: torch.Tensor, cond: torch.Tensor,
                         include_background: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoised protein and the foreground probability ``1 - pi``.

        Denoised: the foreground part ``(1 - pi) * beta * alpha`` (with ``beta`` at its posterior
        median ``exp(a)``), plus ``pi * beta`` with ``include_background`` (the expected count).
        """
        p = self.protein_decoder(z, cond)
        fore_prob = torch.sigmoid(-p["mixing"])
        rate_back = torch.exp(p["back_mean"])
        value = fore_prob * rate_back * p["fore_scale"]
        if include_background:
            value = value + (1.0 - fore_prob) * rate_back
        return value, fore_prob

    def normalized_rna(self, z: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """RNA expression scale (softmax of the decoder output; rows sum to 1)."""
        out, _, _ = self.decoder(z, cond)
        return torch.softmax(out, dim=-1)

    # --------------------------------------------------------------- loss
    def loss(  # type: ignore[override]
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        log_library: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        log_factorial: torch.Tensor | None = None,
        nz: Any = None,
        labelled: Any = None,
        protein: torch.Tensor | None = None,
        protein_mask: torch.Tensor | None = None,
        **_: Any,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over cells of RNA + protein reconstruction + ``kl_weight`` * (KL of z + masked background KL)."""
        protein, protein_mask = self._protein_inputs(x, protein, protein_mask)
        n_cells = x.shape[0]
        mean, log_var = self.encoder(x, cond, protein, protein_mask)
        std = torch.exp(0.5 * log_var)
        z = mean + std * torch.randn_like(std) if self.training else mean
        # RNA: NB / ZINB with the observed library, as SCVI
        out, pi, _ = self.decoder(z, cond)
        assert log_library is not None
        rna = self.count_nll(out, pi, x, cond, log_library, log_factorial, nz)
        # proteins: background / foreground NB mixture, masked where a batch did not measure a protein
        p = self.protein_decoder(z, cond)
        back_scale = p["back_scale"]
        log_back = p["back_mean"] + back_scale * torch.randn_like(back_scale) if self.training else p["back_mean"]
        rate_back = torch.exp(log_back.clamp(max=15.0))
        rate_fore = rate_back * p["fore_scale"]
        phi = torch.exp(self.log_protein_theta)
        ll_pro = nb_mixture_log_prob(protein, rate_back, rate_fore, phi, p["mixing"])
        pro = -(ll_pro * protein_mask).sum() / n_cells
        prior_mean = self.background_mean(cond)
        prior_scale = torch.exp(self.background_log_scale(cond))
        kl_back = (kl_normal(p["back_mean"], back_scale, prior_mean, prior_scale) * protein_mask).sum() / n_cells
        # totalVI's small push towards the background (keeps the foreground for real signal)
        expressed = -self.protein_expressed_weight * (F.logsigmoid(p["mixing"]) * protein_mask).sum() / n_cells
        kl_z = kl_standard_normal(mean, log_var).mean()
        kl = kl_z + kl_back
        total = rna + pro + expressed + kl_weight * kl
        parts = {"reconstruction": (rna + pro).detach(), "rna": rna.detach(), "protein": pro.detach(),
                 "kl": kl.detach(), "kl_background": kl_back.detach()}
        return total, parts


# ----------------------------------------------------------------------------- model

def _two_means_low(values: np.ndarray, n_iter: int = 30) -> tuple[float, float]:
    """Mean and SD of the lower of two 1-D clusters (the background of log protein counts)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 4 or np.ptp(v) == 0:
        return float(v.mean()) if v.size else 0.0, 0.5
    lo, hi = np.quantile(v, [0.2, 0.8])
    for _ in range(n_iter):
        low = np.abs(v - lo) <= np.abs(v - hi)
        if low.all() or (~low).all():
            break
        new_lo, new_hi = v[low].mean(), v[~low].mean()
        if abs(new_lo - lo) < 1e-6 and abs(new_hi - hi) < 1e-6:
            break
        lo, hi = new_lo, new_hi
    low = np.abs(v - lo) <= np.abs(v - hi)
    part = v[low] if low.sum() >= 2 else v
    return float(part.mean()), float(np.clip(part.std(), 0.05, 1.5))


@register_model
class TOTALVI(BaseVAE):
    """totalVI-like conditional VAE on CITE-seq cells: RNA by NB, proteins by a background/foreground NB mixture.

    See the module docstring (:mod:`scaml.vae.totalvi`) for the model. Same training, saving,
    :func:`scaml.vae.load_model` and :func:`scaml.vae.load_query` surgery as :class:`SCVI`.

    Parameters
    ----------
    adata
        Cells x genes with raw RNA counts (``layers["counts"]`` or X) and the protein counts in
        ``obsm[protein_key]`` (a DataFrame, or an array with ``uns["protein_names"]``).
    batch_key
        ``obs`` column with the batch of each cell. A protein that is all zero in a batch is
        missing there (masked, imputed in the outputs).
    protein_key
        The obsm key of the protein counts.
    protein_hidden_layers
        Widths of the protein decoder (default: the RNA decoder's).
    **kwargs
        See :class:`BaseVAE` (``n_latent``, ``hidden_layers``, ``gene_likelihood`` "nb" / "zinb"...).

    Examples
    --------
    >>> from scaml.datasets import simulate_cite
    >>> adata = simulate_cite(300, 300, 10, n_batches=2, n_cell_types=3)
    >>> model = TOTALVI(adata, "batch").train(max_epochs=2, verbose=False)
    >>> model.get_latent().shape
    (300, 10)
    >>> model.get_normalized_protein().shape
    (300, 10)
    """

    model_name = "TOTALVI"
    default_likelihood = "nb"
    likelihoods = ("nb", "zinb")
    module_class = TotalVAE

    def __init__(self, adata: ad.AnnData, batch_key: str = "batch", protein_key: str = "protein_expression", *,
                 protein_hidden_layers: Sequence[int] | None = None, **kwargs: Any) -> None:
        check_adata(adata, "adata")
        super().__init__(adata, batch_key, protein_key=protein_key, protein_hidden_layers=protein_hidden_layers,
                         **kwargs)
        self._init_background(self._data, list(range(len(self.conditions))))

    def train(self, max_epochs: int | None = None, batch_size: int = 128, lr: float = 4e-3,
              **kwargs: Any) -> TOTALVI:
        """Train as :meth:`BaseVAE.train`, with scvi-tools' totalVI learning rate 4e-3 by default.

        At 1e-3 (the other models' default) 200 epochs left the protein decoder short of converged on
        the 400 PBMC CITE-seq cells of ``benchmarks/bench_cite.py`` (held-out protein imputation
        r 0.72 vs 0.79 at 4e-3).
        """
        super().train(max_epochs, batch_size, lr, **kwargs)
        return self

    # ------------------------------------------------------------------ hooks
    def _extra_params(self, adata: ad.AnnData, protein_key: str = "protein_expression",
                      protein_hidden_layers: Sequence[int] | None = None, **extra: Any) -> dict:
        from ..cite.io import get_protein_counts, protein_panels

        super()._extra_params(adata, **extra)
        counts = get_protein_counts(adata, protein_key)
        self.protein_names = list(counts.names)
        batches = adata.obs[self.batch_key].astype(str).to_numpy()
        panels = protein_panels(counts.counts, batches, counts.names)
        if protein_hidden_layers is not None and (len(protein_hidden_layers) < 1
                                                  or any(int(h) < 1 for h in protein_hidden_layers)):
            raise ScamlError(f"protein_hidden_layers must be one or more positive widths; got "
                             f"{list(protein_hidden_layers)}.")
        unmeasured = [n for j, n in enumerate(counts.names) if not any(p[j] for p in panels.values())]
        if unmeasured:
            warn(f"protein(s) {unmeasured[:10]} are zero in every cell (a failed antibody?): masked everywhere, "
                 f"nothing is learnt for them and their outputs are 0; drop those columns from obsm[{protein_key!r}] "
                 "to leave them out.")
        return {
            "protein_key": protein_key, "protein_names": list(counts.names),
            "protein_hidden_layers": None if protein_hidden_layers is None else [int(h) for h in protein_hidden_layers],
            "protein_missing": {b: [counts.names[j] for j in np.flatnonzero(~p)] for b, p in panels.items()},
        }

    def _module_extras(self, params: dict) -> dict:
        return {"extra": {"n_proteins": len(params["protein_names"]),
                          "protein_hidden": params["protein_hidden_layers"]}}

    def _cell_extras(self, adata: ad.AnnData, training: bool) -> dict[str, np.ndarray]:
        from ..cite.io import align_proteins, get_protein_counts, match_proteins, protein_panels

        params = self._config["params"]
        key = params["protein_key"]
        names = self.protein_names
        cond = self._condition_codes(adata)
        new_query = training and self.is_query
        if key not in adata.obsm:
            if not self.is_query and training:
                raise ScamlError(f"adata.obsm has no protein counts {key!r}; TOTALVI needs them.")
            said = getattr(self, "_reported_matches", set())
            if () not in said:  # once, not at every call
                info(f"the data has no obsm[{key!r}]: every protein is imputed from the RNA")
                self._reported_matches = said | {()}
            counts = np.zeros((adata.n_obs, len(names)), dtype=np.float32)
            present = np.zeros(len(names), dtype=bool)
        else:
            found = get_protein_counts(adata, key)
            if found.names == names:
                counts, present = found.counts, np.ones(len(names), dtype=bool)
            else:
                match = match_proteins(names, found.names)
                said = getattr(self, "_reported_matches", set())
                if tuple(found.names) not in said:  # once per panel, not at every call
                    info(match.describe())
                    self._reported_matches = said | {tuple(found.names)}
                counts = align_proteins(found.counts, match.positions)
                present = match.positions >= 0
        missing_by_batch = params.setdefault("protein_missing", {})
        mask = np.zeros((adata.n_obs, len(names)), dtype=np.float32)
        unknown = [c for c in np.unique(cond) if self.conditions[c] not in missing_by_batch]
        if unknown:
            rows = np.isin(cond, unknown)
            cols = np.flatnonzero(present)  # proteins absent by name were reported by the match
            panels = protein_panels(counts[np.ix_(rows, cols)], np.asarray(self.conditions, dtype=object)[cond[rows]],
                                    [names[j] for j in cols], report=True)
            for b, sub in panels.items():
                obs = np.zeros(len(names), dtype=bool)
                obs[cols] = sub
                if new_query:  # the query's panels become part of the model (saved with it)
                    missing_by_batch[b] = [names[j] for j in np.flatnonzero(~obs)]
                else:
                    mask[rows & (np.asarray(self.conditions, dtype=object)[cond] == b)] = obs
        for c in np.unique(cond):
            b = self.conditions[c]
            if b in missing_by_batch:
                measured = ~np.isin(names, missing_by_batch[b]) & present
                mask[cond == c] = measured
        return {"protein": counts.astype(np.float32), "protein_mask": mask}

    def _prepare(self, adata: ad.AnnData, training: bool = False, report: bool = False) -> CellData:
        data = super()._prepare(adata, training=training, report=report)
        if training and self.is_query and getattr(self, "module", None) is not None:
            n_ref = self._config["surgery"]["n_reference_conditions"]
            self._init_background(data, list(range(n_ref, len(self.conditions))))
        return data

    def _init_background(self, data: CellData, conditions: list[int]) -> None:
        """Start the background prior of ``conditions`` at the data: the lower two-means cluster of log1p counts."""
        protein, mask = data.extras["protein"], data.extras["protein_mask"]
        module: TotalVAE = self.module  # type: ignore[assignment]
        for c in conditions:
            rows = data.cond == c
            if not rows.any():
                continue
            measured = np.flatnonzero(mask[rows].max(axis=0) > 0)
            if measured.size == 0:
                continue
            stats = np.array([_two_means_low(np.log1p(protein[rows, j])) for j in measured])
            cols = torch.as_tensor(measured, device=self.device)
            module.background_mean.set_row(c, torch.as_tensor(stats[:, 0], dtype=torch.float32, device=self.device),
                                           cols)
            module.background_log_scale.set_row(
                c, torch.as_tensor(np.log(stats[:, 1]), dtype=torch.float32, device=self.device), cols)

    @classmethod
    def _restore(cls, config: dict, module: ConditionalVAE, genes: list[str], conditions: list[str],
                 labels: list[str] | None, device: torch.device, history: dict | None = None,
                 batch_key: str | None = None) -> BaseVAE:
        obj = super()._restore(config, module, genes, conditions, labels, device, history=history,
                               batch_key=batch_key)
        obj.protein_names = list(config["params"]["protein_names"])  # type: ignore[attr-defined]
        return obj

    # ------------------------------------------------------------------ outputs
    def missing_proteins(self) -> dict[str, list[str]]:
        """Per batch the proteins it did not measure (imputed in the outputs)."""
        return {b: list(v) for b, v in self._config["params"].get("protein_missing", {}).items() if v}

    def _condition_index(self, transform_batch: str | None) -> int | None:
        if transform_batch is None:
            return None
        if str(transform_batch) not in self.conditions:
            raise ScamlError(f"transform_batch={transform_batch!r} is not a batch of the model; use one of "
                             f"{self.conditions[:20]}.")
        return self.conditions.index(str(transform_batch))

    @torch.no_grad()
    def _protein_outputs(self, adata: ad.AnnData | None, batch_size: int, transform_batch: str | None,
                         include_background: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, CellData]:
        """Denoised protein, foreground probability and the imputed mask (cells x proteins)."""
        data = self._data_for(adata)
        module: TotalVAE = self.module  # type: ignore[assignment]
        module.eval()
        fixed = self._condition_index(transform_batch)
        missing = self._config["params"].get("protein_missing", {})
        names = np.asarray(self.protein_names, dtype=object)
        measured_by = np.array([~np.isin(names, missing.get(b, [])) for b in self.conditions])  # conds x proteins
        denoised, fore = [], []
        for batch in data.batches(batch_size, self.device, drop_last_single=False):
            z = module.latent_mean(batch.x, batch.cond, **batch.extras)
            cond = batch.cond if fixed is None else torch.full_like(batch.cond, fixed)
            d, f = module.denoised_protein(z, cond, include_background)
            mask = batch.extras["protein_mask"] > 0 if fixed is None else \
                torch.as_tensor(measured_by[fixed], device=self.device).expand_as(d)
            if not bool(mask.all()):
                # impute: average over the batches that measured each protein
                d_sum, f_sum = torch.zeros_like(d), torch.zeros_like(f)
                n = torch.zeros_like(d)
                for c in range(len(self.conditions)):
                    has = torch.as_tensor(measured_by[c], device=self.device, dtype=d.dtype)
                    if not bool(has.any()):
                        continue
                    dc, fc = module.denoised_protein(z, torch.full_like(batch.cond, c), include_background)
                    d_sum += dc * has
                    f_sum += fc * has
                    n += has.expand_as(d)
                n = n.clamp_min(1.0)
                d = torch.where(mask, d, d_sum / n)
                f = torch.where(mask, f, f_sum / n)
            denoised.append(d.float().cpu())
            fore.append(f.float().cpu())
        p = len(self.protein_names)
        d_all = torch.cat(denoised).numpy() if denoised else np.zeros((0, p), np.float32)
        f_all = torch.cat(fore).numpy() if fore else np.zeros((0, p), np.float32)
        if fixed is None:
            imputed = data.extras["protein_mask"] <= 0
        else:
            imputed = np.broadcast_to(~measured_by[fixed], d_all.shape).copy()
        return d_all, f_all, imputed, data

    def _frame(self, values: np.ndarray, data: CellData, imputed: np.ndarray) -> pd.DataFrame:
        frame = pd.DataFrame(values, columns=list(self.protein_names), index=data.obs_names)
        frame.attrs["imputed"] = [n for j, n in enumerate(self.protein_names) if imputed[:, j].any()]
        return frame

    def get_normalized_protein(self, adata: ad.AnnData | None = None, batch_size: int = 1024,
                               transform_batch: str | None = None, include_background: bool = False) -> pd.DataFrame:
        """Denoised protein expression: the foreground part ``(1 - pi) * beta * alpha`` of each protein.

        Parameters
        ----------
        adata
            Cells (default: the training data).
        batch_size
            Cells per forward pass.
        transform_batch
            Decode every cell as this batch (default: the cell's own batch, and for the proteins
            its batch did not measure the average over the batches that did).
        include_background
            Add the background part ``pi * beta``: the expected protein count (as scvi-tools'
            ``include_protein_background=True``), e.g. to compare imputed with measured counts.

        Returns
        -------
        DataFrame
            Cells x proteins (float32). ``attrs["imputed"]`` names the proteins imputed for some cells;
            :meth:`get_imputed_mask` gives the cells.
        """
        d, _, imputed, data = self._protein_outputs(adata, batch_size, transform_batch, include_background)
        return self._frame(d, data, imputed)

    def get_protein_foreground_probability(self, adata: ad.AnnData | None = None, batch_size: int = 1024,
                                           transform_batch: str | None = None) -> pd.DataFrame:
        """Probability that each protein count is foreground (``1 - pi``: the cell expresses it), cells x proteins.

        Parameters and imputation as :meth:`get_normalized_protein`.
        """
        _, f, imputed, data = self._protein_outputs(adata, batch_size, transform_batch)
        return self._frame(f, data, imputed)

    def get_imputed_mask(self, adata: ad.AnnData | None = None) -> pd.DataFrame:
        """Cells x proteins, True where the protein was not measured in the cell's batch (its outputs are imputed)."""
        data = self._data_for(adata)
        return pd.DataFrame(data.extras["protein_mask"] <= 0, columns=list(self.protein_names),
                            index=data.obs_names)

    @torch.no_grad()
    def get_normalized_expression(self, adata: ad.AnnData | None = None, batch_size: int = 1024,
                                  library_size: float = 1.0, transform_batch: str | None = None) -> pd.DataFrame:
        """Normalised RNA: the decoder's expression scale times ``library_size`` (cells x genes).

        Parameters
        ----------
        adata, batch_size, transform_batch
            As :meth:`get_normalized_protein`.
        library_size
            Rows sum to this (1: proportions; e.g. 1e4 for counts per 10k).
        """
        data = self._data_for(adata)
        module: TotalVAE = self.module  # type: ignore[assignment]
        module.eval()
        fixed = self._condition_index(transform_batch)
        out = []
        for batch in data.batches(batch_size, self.device, drop_last_single=False):
            z = module.latent_mean(batch.x, batch.cond, **batch.extras)
            cond = batch.cond if fixed is None else torch.full_like(batch.cond, fixed)
            out.append((module.normalized_rna(z, cond) * float(library_size)).float().cpu())
        values = torch.cat(out).numpy() if out else np.zeros((0, len(self.genes)), np.float32)
        return pd.DataFrame(values, columns=list(self.genes), index=data.obs_names)

    def __repr__(self) -> str:
        return super().__repr__() + f", {len(self.protein_names)} proteins"
