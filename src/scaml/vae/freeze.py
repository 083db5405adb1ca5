"""Which weights of a query network train: the freezing rule of architecture surgery."""

from __future__ import annotations

from .modules import ConditionalVAE


def apply_freeze(module: ConditionalVAE, surgery: dict) -> None:
    """Set ``requires_grad`` of a query module's parameters from its surgery settings.

    Frozen: every parameter, except the newest block of condition weights of the
    first encoder and decoder layers (the query's conditions), the matching
    per-condition dispersions, and all dispersions when ``train_dispersion``.
    ``unfrozen`` trains everything.
    """
    if surgery.get("unfrozen", False):
        for p in module.parameters():
            p.requires_grad_(True)
        return
    for p in module.parameters():
        p.requires_grad_(False)
    if surgery.get("n_new_conditions", 0) > 0:
        for layer in module.conditional_layers():
            layer.cond_blocks[-1].requires_grad_(True)
        if module.count_model and module.cfg.dispersion == "gene-batch":
            module.log_theta[-1].requires_grad_(True)
    if surgery.get("train_dispersion", False) and module.count_model:
        for p in module.log_theta:
            p.requires_grad_(True)


def trainable_parameter_names(module: ConditionalVAE) -> list[str]:
    """Names of the parameters that training will update."""
    return [name for name, p in module.named_parameters() if p.requires_grad]
