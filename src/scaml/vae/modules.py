"""Torch building blocks of scaml's conditional VAEs.

The network knows nothing of AnnData: it takes dense count (or expression)
batches, integer condition codes, log library sizes and integer labels.

Conditions (batches) enter the first layer of the encoder and of the decoder
as one-hot columns (the "conditional" design of scArches). A one-hot column
multiplied by a weight matrix is a row lookup, so :class:`ConditionalLinear`
keeps the condition weights as a table of rows (one per condition) and adds the
row of each cell's condition to ``W x + b``: the same function as a linear
layer on ``[x, onehot(c)]``, without building the one-hot matrix. The table is
stored in *blocks* (``cond_blocks``): the reference conditions in block 0 and
the conditions added by architecture surgery in later blocks, so that freezing
the reference columns is a matter of ``requires_grad`` (exact, immune to weight
decay) rather than of masking gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LIKELIHOODS = ("nb", "zinb", "mse")
DISPERSIONS = ("gene", "gene-batch")


@dataclass
class ModuleConfig:
    """Everything needed to rebuild a :class:`ConditionalVAE` (saved as JSON)."""

    n_input: int
    cond_blocks: list[int]
    n_latent: int = 10
    hidden_layers: list[int] = field(default_factory=lambda: [128, 128])
    dropout_rate: float = 0.05
    use_layer_norm: bool = True
    use_batch_norm: bool = False
    gene_likelihood: str = "nb"
    dispersion: str = "gene"
    mmd_beta: float = 0.0
    n_labels: int = 0
    classification_ratio: float = 50.0

    @property
    def n_conditions(self) -> int:
        return int(sum(self.cond_blocks))

    def to_dict(self) -> dict:
        return asdict(self)


class ConditionalLinear(nn.Module):
    """``y = W x + b + C[c]``: a linear layer on ``[x, onehot(c)]`` with the condition part as a lookup.

    Parameters
    ----------
    n_in, n_out
        Sizes of the non-condition input and of the output.
    cond_blocks
        Number of conditions in each block of condition weights.
    """

    def __init__(self, n_in: int, n_out: int, cond_blocks: Sequence[int]) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)
        n_cond = int(sum(cond_blocks))
        # initialise the condition columns like the rest of a linear layer on n_in + n_cond inputs
        bound = 1.0 / math.sqrt(n_in + n_cond)
        self.cond_blocks = nn.ParameterList(
            [nn.Parameter(torch.empty(n, n_out).uniform_(-bound, bound)) for n in cond_blocks]
        )

    def condition_table(self) -> torch.Tensor:
        """All condition rows (conditions x n_out)."""
        if len(self.cond_blocks) == 1:
            return self.cond_blocks[0]
        return torch.cat(list(self.cond_blocks), dim=0)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.condition_table()[cond]

    def add_conditions(self, n_new: int) -> None:
        """Append a block of ``n_new`` condition rows, initialised at the mean of the existing rows."""
        table = self.condition_table().detach()
        init = table.mean(dim=0, keepdim=True).expand(n_new, -1).clone()
        self.cond_blocks.append(nn.Parameter(init))


def _norm(n: int, layer_norm: bool, batch_norm: bool) -> nn.Module:
    if batch_norm:
        return nn.BatchNorm1d(n, momentum=0.01, eps=1e-3)
    if layer_norm:
        return nn.LayerNorm(n, elementwise_affine=False)
    return nn.Identity()


class ConditionalMLP(nn.Module):
    """Fully connected layers; the conditions enter the first layer only.

    Each layer is linear -> norm -> ReLU -> dropout.
    """

    def __init__(
        self,
        n_in: int,
        hidden: Sequence[int],
        cond_blocks: Sequence[int],
        dropout_rate: float,
        layer_norm: bool,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("hidden_layers must name at least one layer")
        self.first = ConditionalLinear(n_in, hidden[0], cond_blocks)
        self.first_post = nn.Sequential(
            _norm(hidden[0], layer_norm, batch_norm), nn.ReLU(), nn.Dropout(dropout_rate)
        )
        rest: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:], strict=True):
            rest += [nn.Linear(a, b), _norm(b, layer_norm, batch_norm), nn.ReLU(), nn.Dropout(dropout_rate)]
        self.rest = nn.Sequential(*rest)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the output of the last layer and that of the first (for the MMD penalty)."""
        h1 = self.first_post(self.first(x, cond))
        return self.rest(h1), h1


class Encoder(nn.Module):
    """q(z | x, c): a Gaussian with diagonal covariance."""

    def __init__(self, cfg: ModuleConfig) -> None:
        super().__init__()
        self.log_input = cfg.gene_likelihood in ("nb", "zinb")
        self.body = ConditionalMLP(
            cfg.n_input, cfg.hidden_layers, cfg.cond_blocks, cfg.dropout_rate,
            cfg.use_layer_norm, cfg.use_batch_norm,
        )
        self.mean = nn.Linear(cfg.hidden_layers[-1], cfg.n_latent)
        self.log_var = nn.Linear(cfg.hidden_layers[-1], cfg.n_latent)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log_input:
            x = torch.log1p(x)
        h, _ = self.body(x, cond)
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0)


class Decoder(nn.Module):
    """p(x | z, c): NB / ZINB parameters on counts, or a mean for MSE."""

    def __init__(self, cfg: ModuleConfig) -> None:
        super().__init__()
        hidden = list(reversed(cfg.hidden_layers))
        self.likelihood = cfg.gene_likelihood
        # no dropout in the decoder (as scVI / scArches)
        self.body = ConditionalMLP(
            cfg.n_latent, hidden, cfg.cond_blocks, 0.0, cfg.use_layer_norm, cfg.use_batch_norm
        )
        self.out = nn.Linear(hidden[-1], cfg.n_input)
        self.dropout_logits = nn.Linear(hidden[-1], cfg.n_input) if cfg.gene_likelihood == "zinb" else None

    def forward(self, z: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Return (output, zero-inflation logits or None, first-layer activations)."""
        h, h1 = self.body(z, cond)
        out = self.out(h)
        pi = self.dropout_logits(h) if self.dropout_logits is not None else None
        return out, pi, h1


class NonZeros(NamedTuple):
    """The stored (non-zero) entries of a dense batch: flat positions, gene columns, values."""

    flat: torch.Tensor
    gene: torch.Tensor
    values: torch.Tensor


def _gather_theta(theta: torch.Tensor, nz: NonZeros, n_genes: int) -> torch.Tensor:
    """``theta`` at the non-zero entries (per-gene or per-entry ``theta``)."""
    if theta.dim() == 1 or theta.shape[0] == 1:
        return theta.reshape(-1)[nz.gene]
    return theta.reshape(-1)[nz.flat]


def _sum_weighted(values: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``(values * theta).sum()``, reducing over cells first when ``theta`` is per gene."""
    if theta.dim() == 1 or theta.shape[0] == 1:
        return (values.sum(dim=0) * theta.reshape(-1)).sum()
    return (values * theta).sum()


def nb_log_likelihood_ratio(
    x: torch.Tensor, log_ratio: torch.Tensor, theta: torch.Tensor, nz: NonZeros | None = None
) -> torch.Tensor:
    """Sum over all entries of the NB log likelihood, from ``log_ratio = log(mu) - log(theta)``.

    With ``r = log(mu / theta)``: ``log NB(x) = -theta * softplus(r) + x * (r - softplus(r))
    + lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` (the last, constant term is left out).
    The first term is summed over every entry; the others vanish at zero counts and,
    given ``nz`` (the non-zero entries of ``x``), are computed on those only.
    """
    sp_ratio = F.softplus(log_ratio)
    total = -_sum_weighted(sp_ratio, theta)
    if nz is None:
        return total + (x * (log_ratio - sp_ratio) + torch.lgamma(x + theta) - torch.lgamma(theta)).sum()
    theta_nz = _gather_theta(theta, nz, x.shape[1])
    r_nz = log_ratio.reshape(-1)[nz.flat]
    sp_nz = sp_ratio.reshape(-1)[nz.flat]
    return total + (nz.values * (r_nz - sp_nz) + torch.lgamma(nz.values + theta_nz) - torch.lgamma(theta_nz)).sum()


def nb_log_likelihood(
    x: torch.Tensor, log_mu: torch.Tensor, theta: torch.Tensor, nz: NonZeros | None = None
) -> torch.Tensor:
    """Sum over all entries of the negative-binomial log likelihood.

    ``log_mu``: log means (cells x genes); ``theta``: inverse dispersions (genes,
    1 x genes or cells x genes). The constant ``-lgamma(x + 1)`` is left out.
    ``nz`` (the non-zero entries of ``x``) makes sparse counts cheaper.
    """
    return nb_log_likelihood_ratio(x, log_mu - torch.log(theta), theta, nz)


def zinb_log_likelihood_ratio(
    x: torch.Tensor, log_ratio: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor,
    nz: NonZeros | None = None,
) -> torch.Tensor:
    """Sum over all entries of the zero-inflated NB log likelihood (``pi_logits``: logits of extra zeros).

    ``log_ratio = log(mu) - log(theta)`` as in :func:`nb_log_likelihood_ratio`.
    """
    sp_ratio = F.softplus(log_ratio)
    nb_zero = -theta * sp_ratio  # log NB(0)
    log_pi = -F.softplus(-pi_logits)
    log_one_minus_pi = -F.softplus(pi_logits)
    case_zero = torch.logaddexp(log_pi, log_one_minus_pi + nb_zero)
    if nz is None:
        case_nonzero = (
            log_one_minus_pi + nb_zero + x * (log_ratio - sp_ratio)
            + torch.lgamma(x + theta) - torch.lgamma(theta)
        )
        return torch.where(x < 1e-8, case_zero, case_nonzero).sum()
    theta_nz = _gather_theta(theta, nz, x.shape[1])
    flat = nz.flat
    case_nonzero = (
        log_one_minus_pi.reshape(-1)[flat] + nb_zero.reshape(-1)[flat]
        + nz.values * (log_ratio.reshape(-1)[flat] - sp_ratio.reshape(-1)[flat])
        + torch.lgamma(nz.values + theta_nz) - torch.lgamma(theta_nz)
    )
    return case_zero.sum() + (case_nonzero - case_zero.reshape(-1)[flat]).sum()


def zinb_log_likelihood(
    x: torch.Tensor, log_mu: torch.Tensor, theta: torch.Tensor, pi_logits: torch.Tensor,
    nz: NonZeros | None = None,
) -> torch.Tensor:
    """Sum over all entries of the zero-inflated NB log likelihood (constant ``-lgamma(x + 1)`` left out)."""
    return zinb_log_likelihood_ratio(x, log_mu - torch.log(theta), theta, pi_logits, nz)


def mmd_between_conditions(h: torch.Tensor, cond: torch.Tensor, n_conditions: int) -> torch.Tensor:
    """Sum of squared MMDs between every pair of conditions present in the batch.

    The kernel is a sum of Gaussian kernels at several bandwidths (relative to
    the layer width). Vectorised and free of host synchronisation: one kernel
    matrix ``K`` and one product ``P^T K P`` with ``P`` the one-hot matrix of
    conditions scaled by 1 / count, so that ``M[i, j]`` is the mean kernel value
    between conditions ``i`` and ``j`` and ``MMD^2(i, j) = M[i, i] + M[j, j] - 2 M[i, j]``.
    """
    onehot = F.one_hot(cond, n_conditions).to(h.dtype)
    counts = onehot.sum(dim=0)
    present = counts > 0
    weights = onehot / counts.clamp_min(1.0)
    d2 = torch.cdist(h, h).pow(2)
    width = float(h.shape[1])
    kernel = torch.zeros_like(d2)
    for scale in (0.01, 0.1, 1.0, 10.0, 100.0):
        kernel = kernel + torch.exp(-d2 / (2.0 * scale * width))
    m = weights.T @ kernel @ weights
    diag = torch.diagonal(m)
    pair = (diag[:, None] + diag[None, :] - 2.0 * m) * (present[:, None] & present[None, :])
    return torch.triu(pair, diagonal=1).sum().clamp_min(0.0)


class ConditionalVAE(nn.Module):
    """The conditional VAE shared by SCVI-, TRVAE- and SCANVI-like models.

    ``mmd_beta > 0`` adds trVAE's MMD penalty on the first decoder layer;
    ``n_labels > 0`` adds scANVI's classifier on the latent mean.
    """

    def __init__(self, cfg: ModuleConfig) -> None:
        super().__init__()
        if cfg.gene_likelihood not in LIKELIHOODS:
            raise ValueError(f"gene_likelihood must be one of {LIKELIHOODS}")
        if cfg.dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion must be one of {DISPERSIONS}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.count_model = cfg.gene_likelihood in ("nb", "zinb")
        if self.count_model:
            n_rows = cfg.cond_blocks if cfg.dispersion == "gene-batch" else [1]
            # log inverse dispersion, per gene (one row) or per gene and condition (blocks of rows)
            self.log_theta = nn.ParameterList([nn.Parameter(torch.zeros(n, cfg.n_input)) for n in n_rows])
        else:
            self.log_theta = nn.ParameterList()
        if cfg.n_labels > 0:
            self.classifier: nn.Module | None = nn.Sequential(
                nn.Linear(cfg.n_latent, cfg.hidden_layers[-1]),
                nn.LayerNorm(cfg.hidden_layers[-1], elementwise_affine=False),
                nn.ReLU(),
                nn.Linear(cfg.hidden_layers[-1], cfg.n_labels),
            )
        else:
            self.classifier = None

    # --------------------------------------------------------------- surgery support
    def conditional_layers(self) -> list[ConditionalLinear]:
        return [self.encoder.body.first, self.decoder.body.first]

    def add_conditions(self, n_new: int) -> None:
        """Append ``n_new`` condition columns to the first layers (and per-condition dispersions)."""
        for layer in self.conditional_layers():
            layer.add_conditions(n_new)
        if self.count_model and self.cfg.dispersion == "gene-batch":
            table = torch.cat([p.detach() for p in self.log_theta], dim=0)
            self.log_theta.append(nn.Parameter(table.mean(dim=0, keepdim=True).expand(n_new, -1).clone()))
        self.cfg.cond_blocks = [*self.cfg.cond_blocks, int(n_new)]

    # --------------------------------------------------------------- pieces
    def log_theta_for(self, cond: torch.Tensor) -> torch.Tensor:
        """Log inverse dispersion: 1 x genes, or cells x genes for per-condition dispersion."""
        if self.cfg.dispersion == "gene-batch":
            table = torch.cat(list(self.log_theta), dim=0) if len(self.log_theta) > 1 else self.log_theta[0]
            return table[cond]
        return self.log_theta[0]

    def latent_mean(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, cond)[0]

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        assert self.classifier is not None
        return self.classifier(z)

    # --------------------------------------------------------------- loss
    def loss(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        log_library: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        log_factorial: torch.Tensor | None = None,
        nz: NonZeros | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over cells of reconstruction + ``kl_weight`` * KL (+ MMD, + classification).

        ``log_factorial`` (per cell, sum of ``lgamma(x + 1)``) completes the NB
        log likelihood; it is a constant and changes no gradient. ``nz`` (the
        non-zero entries of ``x``) lets the likelihood skip work on zero counts.

        Returns the scalar loss and its detached parts.
        """
        mean, log_var = self.encoder(x, cond)
        std = torch.exp(0.5 * log_var)
        z = mean + std * torch.randn_like(std) if self.training else mean
        out, pi, h1 = self.decoder(z, cond)
        n_cells = x.shape[0]
        if self.count_model:
            log_theta = self.log_theta_for(cond)
            theta = torch.exp(log_theta)
            # log(mu / theta) with mu = library * softmax(out): one cells x genes pass
            log_ratio = torch.log_softmax(out, dim=-1) + (log_library[:, None] - log_theta)
            if pi is None:
                ll = nb_log_likelihood_ratio(x, log_ratio, theta, nz)
            else:
                ll = zinb_log_likelihood_ratio(x, log_ratio, theta, pi, nz)
            recon_mean = -ll / n_cells
            if log_factorial is not None:
                # a constant: makes the loss the full negative log likelihood
                recon_mean = recon_mean + log_factorial.mean()
        else:
            recon_mean = (out - x).pow(2).sum() / n_cells
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=-1)
        kl_mean = kl.mean()
        total = recon_mean + kl_weight * kl_mean
        parts = {"reconstruction": recon_mean.detach(), "kl": kl_mean.detach()}
        if self.cfg.mmd_beta > 0:
            mmd = mmd_between_conditions(h1, cond, self.cfg.n_conditions)
            total = total + self.cfg.mmd_beta * mmd
            parts["mmd"] = mmd.detach()
        if self.classifier is not None and labels is not None:
            # mean cross-entropy over the labelled cells (label -1: unlabelled), without a host sync
            logits = self.classifier(mean)
            ce_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
            ce = ce_sum / (labels >= 0).sum().clamp_min(1)
            total = total + self.cfg.classification_ratio * ce
            parts["classification"] = ce.detach()
        return total, parts
