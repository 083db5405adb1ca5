"""The training loop: Adam, KL warm-up, validation loss, early stopping, LR reduction on plateau."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .._utils import is_quiet, progress
from ..errors import ScamlError
from .data import CellData
from .modules import ConditionalVAE


@dataclass
class TrainSettings:
    """Parameters of one call to ``train`` (see :meth:`scaml.vae.model.BaseVAE.train`)."""

    max_epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-6
    early_stopping: bool = True
    patience: int = 20
    lr_reduce_patience: int = 8
    lr_factor: float = 0.6
    min_lr: float = 1e-5
    kl_warmup_epochs: int = 0
    n_samples_per_label: int | None = None
    seed: int = 0
    verbose: bool = True
    description: str = "training"


class _NoBar:
    """Stands in for the progress bar when it is off (no display thread at all)."""

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: object, **kwargs: object) -> int:
        return 0

    def update(self, *args: object, **kwargs: object) -> None:
        return None


def make_adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam (eps 0.01, as scVI), the fused implementation where this torch has it for the device."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=0.01, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, eps=0.01)


def split_validation(n_cells: int, fraction: float, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random train / validation row indices (validation empty when too few cells)."""
    n_val = int(round(n_cells * fraction)) if fraction > 0 else 0
    if n_cells - n_val < 2 or n_val < 1:
        return np.arange(n_cells), np.arange(0, dtype=np.int64)
    perm = torch.randperm(n_cells, generator=generator).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def set_train_mode(module: ConditionalVAE, frozen_norm: bool, freeze_dropout: bool) -> None:
    """Training mode, except frozen batch-norm statistics and, optionally, dropout."""
    module.train()
    for sub in module.modules():
        if frozen_norm and isinstance(sub, nn.BatchNorm1d):
            sub.eval()
        if freeze_dropout and isinstance(sub, nn.Dropout):
            sub.eval()


def balanced_label_rows(
    labels: np.ndarray, rows: np.ndarray, n_per_label: int | None, generator: torch.Generator
) -> np.ndarray:
    """The labelled cells among ``rows`` for the classification loss, in random order.

    ``n_per_label`` None: every labelled cell (label >= 0); otherwise at most ``n_per_label``
    cells of each label, drawn without replacement (all cells of a smaller label), as
    scvi-tools' ``n_samples_per_label``. Drawn anew at each call (once per epoch).
    """
    rows = np.asarray(rows)
    lab = labels[rows]
    keep = rows[lab >= 0]
    if n_per_label is not None:
        picked = []
        for code in np.unique(lab[lab >= 0]):
            cells = rows[lab == code]
            if cells.size > n_per_label:
                cells = cells[torch.randperm(cells.size, generator=generator).numpy()[:n_per_label]]
            picked.append(cells)
        keep = np.concatenate(picked) if picked else keep[:0]
    return keep[torch.randperm(keep.size, generator=generator).numpy()]


class _LabelledStream:
    """Endless mini-batches of (balanced) labelled cells beside the main batches, redrawn each epoch."""

    def __init__(self, data: CellData, rows: np.ndarray, n_per_label: int | None, batch_size: int,
                 device: torch.device, generator: torch.Generator) -> None:
        assert data.labels is not None
        self.data, self.rows, self.n_per_label = data, rows, n_per_label
        self.batch_size, self.device, self.generator = batch_size, device, generator
        self._it = None

    def new_epoch(self) -> None:
        order = balanced_label_rows(self.data.labels, self.rows, self.n_per_label, self.generator)
        self._order = order
        self._it = self.data.batches(self.batch_size, self.device, order=order) if order.size > 1 else None

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        if self._it is None:
            return None
        batch = next(self._it, None)
        if batch is None:  # cycle through the epoch's sample again (scvi-tools' concatenated loaders)
            self._it = self.data.batches(self.batch_size, self.device, order=self._order)
            batch = next(self._it)
        assert batch.labels is not None
        return batch.x, batch.cond, batch.labels


@torch.no_grad()
def evaluate_loss(
    module: ConditionalVAE, data: CellData, rows: np.ndarray, device: torch.device, batch_size: int = 1024,
    kl_weight: float = 1.0,
) -> float:
    """Mean loss per cell (KL weight ``kl_weight``, posterior mean, no dropout) over the cells at ``rows``."""
    module.eval()
    total, n = 0.0, 0
    for batch in data.batches(batch_size, device, order=rows, drop_last_single=False):
        loss, _ = module.loss(
            batch.x, batch.cond, batch.log_library, batch.labels, kl_weight, batch.log_factorial, batch.nz,
            **batch.extras,
        )
        m = batch.x.shape[0]
        total += float(loss) * m
        n += m
    return total / max(n, 1)


def train_module(
    module: ConditionalVAE,
    data: CellData,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    settings: TrainSettings,
    device: torch.device,
    generator: torch.Generator,
    *,
    frozen_norm: bool = False,
    freeze_dropout: bool = False,
) -> dict:
    """Train ``module`` in place on the cells at ``train_rows`` of ``data``; return the history.

    The loss of every step is the mean over the batch's cells of the
    reconstruction loss + ``kl_weight`` * KL (+ penalties), with ``kl_weight``
    rising linearly (per step) from 0 to 1 over ``kl_warmup_epochs`` (as scVI's
    warm-up). A run shorter than the warm-up ends with a KL weight below 1:
    the weight of the last step is recorded in ``history["final_kl_weight"]``. The
    monitored loss (validation loss, or training loss when there is no validation
    set) counts the KL at the weight planned for the last step at every epoch, so
    that it is comparable between epochs and measures the objective the run ends
    with; early stopping and LR reduction follow it once the first
    ``kl_warmup_epochs // 4`` epochs (at most ``max_epochs // 4``) are over. On
    early stopping the best weights are restored.

    With ``settings.n_samples_per_label`` (and labels), the classification loss of each step
    is computed on a separate mini-batch of labelled training cells, at most
    ``n_samples_per_label`` per label, redrawn every epoch (see :func:`balanced_label_rows`);
    otherwise on the labelled cells of the step's own mini-batch.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters")
    optimizer = make_adam(params, settings.lr, settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.lr_factor, patience=settings.lr_reduce_patience,
        threshold=1e-4, min_lr=settings.min_lr,
    )
    n_train = int(train_rows.size)
    steps_per_epoch = max(1, math.ceil(n_train / settings.batch_size))
    warmup_steps = settings.kl_warmup_epochs * steps_per_epoch

    def kl_weight_at(step: int) -> float:
        return min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0

    # the KL weight of the run's last step: the validation loss is measured at this fixed weight
    final_kl_weight = kl_weight_at(settings.max_epochs * steps_per_epoch - 1)
    # no plateau logic in the first quarter of the warm-up, while the losses still fall fast
    plateau_start = min(settings.kl_warmup_epochs, settings.max_epochs) // 4
    history: dict = {
        "train_loss": [], "validation_loss": [], "epoch_seconds": [], "lr": [], "kl_weight": [],
        "final_kl_weight": final_kl_weight, "stopped_epoch": None, "best_epoch": None,
    }
    best_loss, best_state, best_epoch, bad_epochs = math.inf, None, -1, 0
    step = 0
    stream = None
    if settings.n_samples_per_label is not None and data.labels is not None and module.classifier is not None:
        stream = _LabelledStream(data, train_rows, settings.n_samples_per_label, settings.batch_size, device,
                                 generator)
    show = settings.verbose and not is_quiet()
    with progress() if show else _NoBar() as bar:
        task = bar.add_task(settings.description, total=settings.max_epochs, status="")
        for epoch in range(settings.max_epochs):
            start = time.perf_counter()
            set_train_mode(module, frozen_norm, freeze_dropout)
            order = train_rows[torch.randperm(n_train, generator=generator).numpy()]
            loss_sum = torch.zeros((), device=device)
            monitored_sum = torch.zeros((), device=device)  # the loss at the final KL weight
            n_seen = 0
            kl_weight = kl_weight_at(step)
            if stream is not None:
                stream.new_epoch()
            for batch in data.batches(settings.batch_size, device, order=order):
                kl_weight = kl_weight_at(step)
                loss, parts = module.loss(
                    batch.x, batch.cond, batch.log_library, batch.labels, kl_weight, batch.log_factorial, batch.nz,
                    labelled=None if stream is None else stream.next(), **batch.extras,
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                m = batch.x.shape[0]
                loss_sum += loss.detach() * m
                monitored_sum += (loss.detach() + (final_kl_weight - kl_weight) * parts["kl"]) * m
                n_seen += m
                step += 1
            train_loss = float(loss_sum) / max(n_seen, 1)
            if val_rows.size > 0:
                monitored = evaluate_loss(module, data, val_rows, device, kl_weight=final_kl_weight)
                history["validation_loss"].append(monitored)
            else:
                monitored = float(monitored_sum) / max(n_seen, 1)
            history["train_loss"].append(train_loss)
            history["lr"].append(optimizer.param_groups[0]["lr"])
            history["kl_weight"].append(kl_weight)
            history["epoch_seconds"].append(time.perf_counter() - start)
            if epoch >= plateau_start and math.isfinite(monitored) and math.isfinite(train_loss):
                scheduler.step(monitored)
                if monitored < best_loss - 1e-4 * abs(best_loss if math.isfinite(best_loss) else 0.0):
                    best_loss, best_epoch, bad_epochs = monitored, epoch, 0
                    if settings.early_stopping:
                        best_state = copy.deepcopy(module.state_dict())
                else:
                    bad_epochs += 1
            if not (math.isfinite(monitored) and math.isfinite(train_loss)):
                raise ScamlError(
                    f"training diverged: the loss became {train_loss if not math.isfinite(train_loss) else monitored} "
                    f"at epoch {epoch + 1}. Lower the learning rate (lr={settings.lr:g}), or check the input "
                    "for extreme values (counts for NB/ZINB, normalised values for MSE)."
                )
            val_txt = f" val {history['validation_loss'][-1]:.4g}" if history["validation_loss"] else ""
            bar.update(task, advance=1, status=f"loss {train_loss:.4g}{val_txt}")
            if settings.early_stopping and bad_epochs >= settings.patience:
                history["stopped_epoch"] = epoch + 1
                break
    history["final_kl_weight"] = kl_weight  # the weight of the last step taken
    if settings.early_stopping and best_state is not None:
        module.load_state_dict(best_state)
        history["best_epoch"] = best_epoch + 1
    module.eval()
    return history
