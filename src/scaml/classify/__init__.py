"""Cross-batch cell-type classifier benchmark (the SCAML protocol).

- :func:`run_train`: train LR / RF / XGBoost / MLP on some levels of a split key
  (harvest, donor, culture...) and test on others; ``--reverse`` and
  leave-one-group-out cross-validation; every artifact written to a directory.
- :func:`run_learning_curve`: accuracy against training-set size, group-aware.
- :func:`run_novelty`: score foreign cells (e.g. HEK293 contamination) with
  IsolationForest, LOF, one-class SVM or a classifier's uncertainty.
- :func:`plot_results`: the figures of a ``run_train`` output directory.

Model hyperparameters live in :data:`HYPERPARAMETERS` (one place).
"""

from __future__ import annotations

from .benchmark import run_train
from .curves import run_learning_curve
from .models import HYPERPARAMETERS, available_models
from .novelty import run_novelty
from .plots import plot_results

__all__ = [
    "HYPERPARAMETERS",
    "available_models",
    "plot_results",
    "run_learning_curve",
    "run_novelty",
    "run_train",
]
