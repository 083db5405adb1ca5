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

LIKELIHOODS = ("nb", "zinb", "mse", "bernoulli", "poisson")
#: Likelihoods of peak models (scATAC-seq): Bernoulli on binarised peaks, Poisson on fragment counts.
PEAK_LIKELIHOODS = ("bernoulli", "poisson")
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
    #: hidden layers of the classifier q(y | z1) (each as wide as the last hidden layer)
    classifier_layers: int = 1
    #: dropout after each hidden layer of the classifier (0: none, as SCANVI models saved before it)
    classifier_dropout: float = 0.0
    #: scANVI's generative model z1 | z2, y (False: a classifier on z1 only, as SCANVI models saved before it)
    label_generative: bool = False
    #: settings of a model that extends the network (e.g. a second modality's sizes), saved with the rest
    extra: dict = field(default_factory=dict)

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


def label_classifier(cfg: ModuleConfig) -> nn.Sequential:
    """scANVI's classifier q(y | z1): ``cfg.classifier_layers`` x (linear -> layer norm -> ReLU
    [-> dropout]), each as wide as the last hidden layer, then a linear layer to the label logits."""
    width = cfg.hidden_layers[-1]
    layers: list[nn.Module] = []
    n_in = cfg.n_latent
    for _ in range(max(1, int(cfg.classifier_layers))):
        layers += [nn.Linear(n_in, width), nn.LayerNorm(width, elementwise_affine=False), nn.ReLU()]
        if cfg.classifier_dropout > 0:
            layers.append(nn.Dropout(cfg.classifier_dropout))
        n_in = width
    layers.append(nn.Linear(n_in, cfg.n_labels))
    return nn.Sequential(*layers)


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
        self.log_input = cfg.gene_likelihood in ("nb", "zinb", "poisson")
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
    """p(x | z, c): NB / ZINB / Poisson parameters on counts, Bernoulli logits, or a mean for MSE."""

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


class LabelMLP(nn.Module):
    """Fully connected layers with the label injected into every layer, then a Gaussian head.

    Each layer is ``W h + b + E[y]`` (``E``: one row per label, the one-hot label as a
    lookup) -> norm -> ReLU -> dropout; the head gives a mean and a log variance. It serves
    as scANVI's q(z2 | z1, y) and p(z1 | z2, y) (n_latent -> n_latent).
    """

    def __init__(
        self, n_in: int, n_out: int, hidden: Sequence[int], n_labels: int, dropout_rate: float,
        layer_norm: bool, batch_norm: bool,
    ) -> None:
        super().__init__()
        widths = [n_in, *hidden]
        self.layers = nn.ModuleList(
            ConditionalLinear(a, b, [n_labels]) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.post = nn.ModuleList(
            nn.Sequential(_norm(b, layer_norm, batch_norm), nn.ReLU(), nn.Dropout(dropout_rate)) for b in hidden
        )
        self.mean = nn.Linear(widths[-1], n_out)
        self.log_var = nn.Linear(widths[-1], n_out)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance (clamped to [-15, 15]) given inputs ``x`` and integer labels."""
        h = x
        for layer, post in zip(self.layers, self.post, strict=True):
            h = post(layer(h, label))
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0)


def gaussian_log_density(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Log density of a diagonal Gaussian at ``x``, summed over the last dimension."""
    return -0.5 * ((x - mean).pow(2) * torch.exp(-log_var) + log_var + math.log(2 * math.pi)).sum(dim=-1)


def kl_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)), summed over the last dimension."""
    return 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).sum(dim=-1)


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


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor, nz: NonZeros | None = None) -> torch.Tensor:
    """Sum over all entries of the Bernoulli log likelihood of 0 / 1 values ``x`` given ``logits``.

    ``log p(x) = x * logits - softplus(logits)``: the second term over every entry, the first
    on the open (x = 1) entries only when ``nz`` is given.
    """
    total = -F.softplus(logits).sum()
    if nz is None:
        return total + (x * logits).sum()
    return total + (nz.values * logits.reshape(-1)[nz.flat]).sum()


def poisson_log_likelihood(
    x: torch.Tensor, log_rate: torch.Tensor, rate_sum: torch.Tensor, nz: NonZeros | None = None
) -> torch.Tensor:
    """Sum over all entries of the Poisson log likelihood (constant ``-lgamma(x + 1)`` left out).

    ``log p(x) = x * log_rate - rate``; ``rate_sum`` is the sum of the rates per cell (the library
    size when rate = library x softmax), so the rates are never summed entry by entry, and given
    ``nz`` only the non-zero entries are read.
    """
    if nz is None:
        return (x * log_rate).sum() - rate_sum.sum()
    return (nz.values * log_rate.reshape(-1)[nz.flat]).sum() - rate_sum.sum()


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
    ``n_labels > 0`` adds scANVI's classifier q(y | z1) on the latent (trained on the labelled
    cells); ``label_generative`` makes it the full scANVI model (Xu et al. 2021): z2 ~ N(0, I),
    y ~ Cat(p(y)), z1 | z2, y ~ N(mu(z2, y), sigma(z2, y)), x | z1, c ~ NB / ZINB, with the
    inference networks q(z1 | x, c) (the encoder), q(y | z1) (the classifier) and
    q(z2 | z1, y). Labelled cells use their label in the ELBO; unlabelled cells
    (label -1, or no labels at all, as query cells) average it over q(y | z1) and add
    KL(q(y | z1) || p(y)).
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
            self.classifier: nn.Module | None = label_classifier(cfg)
        else:
            self.classifier = None
        if cfg.label_generative:
            if cfg.n_labels < 2:
                raise ValueError("label_generative needs n_labels >= 2")
            # scANVI: q(z2 | z1, y) (with the encoder's dropout) and p(z1 | z2, y) (no dropout)
            self.encoder_z2: LabelMLP | None = LabelMLP(
                cfg.n_latent, cfg.n_latent, cfg.hidden_layers, cfg.n_labels, cfg.dropout_rate,
                cfg.use_layer_norm, cfg.use_batch_norm,
            )
            self.decoder_z1: LabelMLP | None = LabelMLP(
                cfg.n_latent, cfg.n_latent, list(reversed(cfg.hidden_layers)), cfg.n_labels, 0.0,
                cfg.use_layer_norm, cfg.use_batch_norm,
            )
            # p(y): uniform, as scvi-tools' default
            self.register_buffer("log_y_prior", torch.full((cfg.n_labels,), -math.log(cfg.n_labels)),
                                 persistent=False)
        else:
            self.encoder_z2 = None
            self.decoder_z1 = None

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
    @staticmethod
    def peak_logits(out: torch.Tensor, log_library: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of the peaks: decoder output plus the cell's log depth, centred.

        The depth factor of PeakVI is here derived from the library: ``log_library`` (log of the
        number of open peaks of a binarised cell) offsets every logit of the cell, so a deeper cell
        has every peak more likely open and the latent need not encode depth. The offset is centred
        on ``log 1000`` (a typical count of open peaks) so that the output bias, the per-peak term,
        starts near the peak's log odds.
        """
        return out + (log_library[:, None] - math.log(1000.0))

    def log_theta_for(self, cond: torch.Tensor) -> torch.Tensor:
        """Log inverse dispersion: 1 x genes, or cells x genes for per-condition dispersion."""
        if self.cfg.dispersion == "gene-batch":
            table = torch.cat(list(self.log_theta), dim=0) if len(self.log_theta) > 1 else self.log_theta[0]
            return table[cond]
        return self.log_theta[0]

    def latent_mean(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, cond)[0]

    def count_nll(self, out: torch.Tensor, pi: torch.Tensor | None, x: torch.Tensor, cond: torch.Tensor,
                  log_library: torch.Tensor, log_factorial: torch.Tensor | None,
                  nz: NonZeros | None) -> torch.Tensor:
        """Mean over cells of the NB / ZINB negative log likelihood of counts ``x``.

        The mean is ``library * softmax(out)``; ``pi`` the zero-inflation logits (None: NB).
        ``log_factorial`` (per cell, sum of ``lgamma(x + 1)``) completes the likelihood; it is a
        constant and changes no gradient.
        """
        log_theta = self.log_theta_for(cond)
        theta = torch.exp(log_theta)
        # log(mu / theta) with mu = library * softmax(out): one cells x genes pass
        log_ratio = torch.log_softmax(out, dim=-1) + (log_library[:, None] - log_theta)
        if pi is None:
            ll = nb_log_likelihood_ratio(x, log_ratio, theta, nz)
        else:
            ll = zinb_log_likelihood_ratio(x, log_ratio, theta, pi, nz)
        nll = -ll / x.shape[0]
        if log_factorial is not None:
            nll = nll + log_factorial.mean()
        return nll

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        assert self.classifier is not None
        return self.classifier(z)

    # --------------------------------------------------------------- loss
    def _z1_terms(self, z1: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: ``-log p(z1 | z2, y)`` and ``KL(q(z2 | z1, y) || N(0, I))`` for the given labels.

        z2 is one reparametrised sample of q(z2 | z1, y) (its mean in eval mode).
        """
        assert self.encoder_z2 is not None and self.decoder_z1 is not None
        m2, lv2 = self.encoder_z2(z1, labels)
        z2 = m2 + torch.exp(0.5 * lv2) * torch.randn_like(m2) if self.training else m2
        m1, lv1 = self.decoder_z1(z2, labels)
        return -gaussian_log_density(z1, m1, lv1), kl_standard_normal(m2, lv2)

    def label_terms(
        self, z1: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """scANVI's per-cell KL terms above x: (z1 term, z2 and y term).

        z1 term (the KL of z1 to its prior p(z1 | z2, y)): ``E_q log q(z1 | x) - E_y log p(z1 | z2, y)``;
        the other term: ``E_y KL(q(z2 | z1, y) || N(0, I))`` (+ ``KL(q(y | z1) || p(y))`` for
        unlabelled cells), where ``E_y`` is the cell's own label for labelled cells (label >= 0)
        and the average over q(y | z1) for unlabelled ones (label -1, or ``labels`` None).
        Labelled cells cost one pass of the small z2 / z1 networks, unlabelled cells one per label.
        """
        assert self.classifier is not None
        n_labels = self.cfg.n_labels
        logits = self.classifier(z1)
        probs = torch.softmax(logits, dim=-1)
        # E_q log q(z1 | x) in closed form (the same gradients as the one-sample estimate)
        z1_term = -0.5 * (log_var + math.log(2 * math.pi) + 1.0).sum(dim=-1)
        kl_term = torch.zeros_like(z1_term)
        if labels is None:
            unlabelled = None  # every cell
        else:
            labelled = labels >= 0
            own_nll, own_kl = self._z1_terms(z1, labels.clamp_min(0))
            zero = torch.zeros_like(own_nll)
            z1_term = z1_term + torch.where(labelled, own_nll, zero)
            kl_term = kl_term + torch.where(labelled, own_kl, zero)
            if bool(labelled.all()):
                return z1_term, kl_term
            unlabelled = torch.nonzero(~labelled).squeeze(1)
        zu = z1 if unlabelled is None else z1[unlabelled]
        pu = probs if unlabelled is None else probs[unlabelled]
        m = zu.shape[0]
        # every unlabelled cell with every label (label-major rows)
        ys = torch.arange(n_labels, device=z1.device).repeat_interleave(m)
        nll, kl_z2 = self._z1_terms(zu.repeat(n_labels, 1), ys)
        nll, kl_z2 = nll.view(n_labels, m).T, kl_z2.view(n_labels, m).T  # cells x labels
        log_pu = torch.log_softmax(logits if unlabelled is None else logits[unlabelled], dim=-1)
        kl_y = (pu * (log_pu - self.log_y_prior)).sum(dim=-1)
        add_z1 = (pu * nll).sum(dim=-1)
        add_kl = (pu * kl_z2).sum(dim=-1) + kl_y
        if unlabelled is None:
            return z1_term + add_z1, kl_term + add_kl
        return z1_term.index_add(0, unlabelled, add_z1), kl_term.index_add(0, unlabelled, add_kl)

    def loss(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        log_library: torch.Tensor | None,
        labels: torch.Tensor | None = None,
        kl_weight: float = 1.0,
        log_factorial: torch.Tensor | None = None,
        nz: NonZeros | None = None,
        labelled: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over cells of reconstruction + ``kl_weight`` * KL (+ MMD, + classification).

        ``log_factorial`` (per cell, sum of ``lgamma(x + 1)``) completes the NB
        log likelihood; it is a constant and changes no gradient. ``nz`` (the
        non-zero entries of ``x``) lets the likelihood skip work on zero counts.
        ``labels`` (-1: unlabelled) enter scANVI's ELBO and, unless ``labelled``
        (counts, conditions and labels of a separate batch of labelled cells, e.g. a
        label-balanced sample) is given, the classification loss.

        Returns the scalar loss and its detached parts (``kl``: the part that the
        KL weight multiplies; for scANVI all of z1's, z2's and y's KL, unlike scvi-tools,
        whose warm-up leaves z1's out).
        """
        mean, log_var = self.encoder(x, cond)
        std = torch.exp(0.5 * log_var)
        z = mean + std * torch.randn_like(std) if self.training else mean
        out, pi, h1 = self.decoder(z, cond)
        n_cells = x.shape[0]
        if self.count_model:
            assert log_library is not None
            recon_mean = self.count_nll(out, pi, x, cond, log_library, log_factorial, nz)
        elif self.cfg.gene_likelihood == "poisson":
            # PoissonVI: rate = library x softmax(decoder output); the rates of a cell sum to its library
            log_rate = torch.log_softmax(out, dim=-1) + log_library[:, None]
            recon_mean = -poisson_log_likelihood(x, log_rate, torch.exp(log_library), nz) / n_cells
            if log_factorial is not None:
                recon_mean = recon_mean + log_factorial.mean()
        elif self.cfg.gene_likelihood == "bernoulli":
            # PeakVI-like: logit p = decoder output (its bias: the per-peak term) + log depth of the cell
            recon_mean = -bernoulli_log_likelihood(x, self.peak_logits(out, log_library), nz) / n_cells
        else:
            recon_mean = (out - x).pow(2).sum() / n_cells
        parts: dict[str, torch.Tensor] = {"reconstruction": recon_mean.detach()}
        if self.cfg.label_generative:
            z1_term, kl = self.label_terms(z, mean, log_var, labels)
            z1_mean = z1_term.mean()
            # the whole KL of scANVI (z1's, z2's and y's) follows the KL warm-up, as SCVI's KL does
            kl_mean = kl.mean() + z1_mean
            total = recon_mean + kl_weight * kl_mean
            parts["z1"] = z1_mean.detach()
        else:
            kl_mean = kl_standard_normal(mean, log_var).mean()
            total = recon_mean + kl_weight * kl_mean
        parts["kl"] = kl_mean.detach()
        if self.cfg.mmd_beta > 0:
            mmd = mmd_between_conditions(h1, cond, self.cfg.n_conditions)
            total = total + self.cfg.mmd_beta * mmd
            parts["mmd"] = mmd.detach()
        if self.classifier is not None and (labels is not None or labelled is not None):
            # mean cross-entropy over the labelled cells (label -1: unlabelled), without a host sync
            if labelled is not None:
                x_l, cond_l, y_l = labelled
                logits = self.classifier(self.encoder(x_l, cond_l)[0])
            else:
                logits, y_l = self.classifier(mean), labels
            ce_sum = F.cross_entropy(logits, y_l, ignore_index=-1, reduction="sum")
            ce = ce_sum / (y_l >= 0).sum().clamp_min(1)
            total = total + self.cfg.classification_ratio * ce
            parts["classification"] = ce.detach()
        return total, parts
