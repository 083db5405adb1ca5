"""The scIB summary: batch-correction score, bio-conservation score, total = 0.4 batch + 0.6 bio."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

#: Batch-correction metrics (all scaled to [0, 1], higher is better mixing).
BATCH_METRICS = ("ilisi", "kbet", "batch_asw", "graph_connectivity", "pcr_comparison")
#: Bio-conservation metrics (all in [0, 1], higher keeps more biology).
BIO_METRICS = ("nmi", "ari", "label_asw", "clisi", "isolated_label")
#: Aggregate scores.
SCORES = ("batch_score", "bio_score", "total")
#: Weights of the total score (scIB, Luecken et al. 2022).
BATCH_WEIGHT, BIO_WEIGHT = 0.4, 0.6

#: Human-readable names for tables and figures.
DISPLAY_NAMES = {
    "ilisi": "iLISI",
    "kbet": "kBET",
    "batch_asw": "Batch ASW",
    "graph_connectivity": "Graph connectivity",
    "pcr_comparison": "PCR comparison",
    "nmi": "NMI",
    "ari": "ARI",
    "label_asw": "Label ASW",
    "clisi": "cLISI",
    "isolated_label": "Isolated label",
    "batch_score": "Batch correction",
    "bio_score": "Bio conservation",
    "total": "Total",
}

#: Extra columns: raw values behind the scaled metrics and bookkeeping.
DETAIL_COLUMNS = (
    "ilisi_median", "clisi_median", "leiden_resolution", "leiden_n_clusters", "pcr_before", "pcr_after",
    "n_cells", "n_cells_total", "n_dims", "n_batches", "n_labels", "neighbor_method", "seconds",
)

COLUMNS = ("embedding", *BATCH_METRICS, *BIO_METRICS, *SCORES, *DETAIL_COLUMNS, "notes")


def _mean(values: Iterable[float]) -> tuple[float, int]:
    finite = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return (float(np.mean(finite)) if finite else float("nan")), len(finite)


def summarize(metrics: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Aggregate scores of one embedding.

    The batch score is the mean of the batch-correction metrics and the
    bio-conservation score the mean of the bio metrics, each over the metrics
    that could be computed (as scIB and scib-metrics do); the total is
    ``0.4 * batch + 0.6 * bio`` and NaN when either part is.

    Parameters
    ----------
    metrics
        Metric name -> value (NaN where not computed).

    Returns
    -------
    scores
        ``batch_score``, ``bio_score``, ``total``.
    notes
        Which aggregates average fewer metrics than usual.
    """
    notes = []
    batch, n_batch = _mean(metrics.get(m, float("nan")) for m in BATCH_METRICS)
    bio, n_bio = _mean(metrics.get(m, float("nan")) for m in BIO_METRICS)
    if 0 < n_batch < len(BATCH_METRICS):
        notes.append(f"batch score averages {n_batch} of {len(BATCH_METRICS)} metrics")
    if 0 < n_bio < len(BIO_METRICS):
        notes.append(f"bio score averages {n_bio} of {len(BIO_METRICS)} metrics")
    total = BATCH_WEIGHT * batch + BIO_WEIGHT * bio if n_batch and n_bio else float("nan")
    return {"batch_score": batch, "bio_score": bio, "total": total}, notes


def metrics_table(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per embedding with the standard column order (missing columns are NaN)."""
    frame = pd.DataFrame(list(rows))
    for col in COLUMNS:
        if col not in frame.columns:
            frame[col] = "" if col == "notes" else np.nan
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[[*COLUMNS, *extra]]
