"""A CellTypist-style classifier on the reference's expression, kept beside the reference's model.

Label transfer by kNN in a shared embedding sees only what the model keeps of a cell. A logistic
regression on the log-normalised expression of every gene (CellTypist's recipe) sees the rest. The
two make different mistakes. On the held-out splits of ``benchmarks/bench_mapping.py``, the mean of
their probabilities was ahead of either alone. :func:`scaml.mapping.map_query` therefore calls each
query cell from that mean when the reference holds this classifier.

The recipe: each cell normalised to 10,000 counts over all its genes and log1p (log-normalised input
is taken as it is); every gene expressed in the training cells, divided by its standard deviation
(not centred, so sparse data stay sparse) and clipped at 10; a multinomial L2 logistic regression
(scikit-learn, lbfgs). Large references are subsampled, label-stratified, to ``max_cells``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._utils import info
from ..errors import ScamlError
from ..io import write_json, write_npz
from ..preprocess import lognormalized

CLASSIFIER_DIR = "expression_classifier"
_ARRAYS = "classifier.npz"
_SETTINGS = "classifier.json"
#: Clip of the scaled values (CellTypist's).
CLIP = 10.0
#: Cells of the smallest labels always kept when a large reference is subsampled.
MIN_CELLS_PER_LABEL = 200


@dataclass
class ExpressionClassifier:
    """A fitted logistic regression on log-normalised expression.

    Attributes
    ----------
    genes
        The genes it reads, in the order of ``coef``'s columns.
    scale
        Per-gene divisor (the training cells' standard deviation).
    coef, intercept
        Labels x genes weights and per-label offsets (float32; a two-label fit is stored as two rows).
    classes
        The labels, in the order of ``coef``'s rows.
    settings
        How it was fitted (C, iterations, cells used, seconds), saved with it.
    """

    genes: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: list[str]
    settings: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, adata: ad.AnnData) -> pd.DataFrame:
        """Label probabilities of the cells of ``adata`` (raw counts or log-normalised values).

        Genes the query lacks count as not expressed. Returns cells x labels (float32), indexed by
        ``adata.obs_names``.
        """
        matrix = self.scaled_matrix(adata)
        logits = np.asarray(matrix @ self.coef.T, dtype=np.float64) + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        proba = np.exp(logits)
        proba /= proba.sum(axis=1, keepdims=True)
        return pd.DataFrame(proba.astype(np.float32), index=adata.obs_names.astype(str), columns=self.classes)

    def scaled_matrix(self, adata: ad.AnnData) -> sp.csr_matrix:
        """The cells' log-normalised expression of :attr:`genes`, scaled and clipped as in training."""
        X, _ = lognormalized(adata)
        X = sp.csr_matrix(X, dtype=np.float32)
        position = pd.Index(adata.var_names.astype(str)).get_indexer(self.genes)
        present = position >= 0
        if not present.any():
            raise ScamlError(
                f"the query holds none of the {len(self.genes)} genes of the reference's expression classifier "
                f"(e.g. {list(self.genes[:3])}); use the reference's gene names, or map with "
                "--no-expression-classifier."
            )
        picked = sp.csr_matrix(X[:, position[present]])
        # renumber the picked genes to their classifier columns (increasing, so each row stays sorted);
        # the genes the query lacks stay empty columns
        columns = np.flatnonzero(present)[picked.indices]
        placed = sp.csr_matrix((picked.data, columns, picked.indptr), shape=(picked.shape[0], len(self.genes)))
        return _scale_and_clip(placed, self.scale)

    def gene_overlap(self, adata: ad.AnnData) -> float:
        """Fraction of the classifier's genes that ``adata`` holds."""
        return float(pd.Index(self.genes).isin(adata.var_names.astype(str)).mean())

    def save(self, directory: str | Path) -> Path:
        """Write the classifier to ``directory`` (an ``.npz`` of arrays and a JSON of labels and settings)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"genes": self.genes.astype(str), "scale": self.scale, "coef": self.coef,
                  "intercept": self.intercept}
        write_npz(arrays, directory / _ARRAYS)
        write_json({"classes": list(self.classes), "settings": self.settings}, directory / _SETTINGS)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ExpressionClassifier:
        """Read a classifier written by :meth:`save`."""
        directory = Path(directory)
        try:
            with np.load(directory / _ARRAYS, allow_pickle=False) as arrays:
                parts = {key: arrays[key] for key in ("genes", "scale", "coef", "intercept")}
            meta = json.loads((directory / _SETTINGS).read_text())
        except (OSError, KeyError, ValueError) as exc:
            raise ScamlError(f"the reference's expression classifier in {directory} cannot be read ({exc}); "
                             "rebuild the reference, or map with --no-expression-classifier.") from exc
        return cls(genes=parts["genes"].astype(str), scale=parts["scale"].astype(np.float32),
                   coef=parts["coef"].astype(np.float32), intercept=parts["intercept"].astype(np.float64),
                   classes=[str(c) for c in meta["classes"]], settings=dict(meta.get("settings") or {}))


def _scale_and_clip(X: sp.csr_matrix, scale: np.ndarray) -> sp.csr_matrix:
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.data /= scale[X.indices]
    np.minimum(X.data, CLIP, out=X.data)
    return X


def training_cells(codes: np.ndarray, max_cells: int, random_state: int) -> np.ndarray:
    """Indices of the cells to fit on: all of them up to ``max_cells``, else a label-stratified sample.

    Every label keeps its share of ``max_cells`` but at least ``min(its cells, 200)`` cells.
    """
    n = codes.size
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(random_state)
    counts = np.bincount(codes)
    quota = np.minimum(counts, np.maximum(np.ceil(counts * max_cells / n).astype(int), MIN_CELLS_PER_LABEL))
    chosen = [rng.choice(np.flatnonzero(codes == label), size=int(q), replace=False)
              for label, q in enumerate(quota) if q > 0]
    return np.sort(np.concatenate(chosen))


def fit_expression_classifier(
    adata: ad.AnnData,
    labels: Any,
    *,
    unknown_label: str = "Unknown",
    C: float = 1.0,
    max_iter: int = 1000,
    max_cells: int = 50_000,
    random_state: int = 0,
) -> ExpressionClassifier:
    """Fit the CellTypist-style logistic regression on a labelled reference (see the module docstring).

    Parameters
    ----------
    adata
        Reference cells (raw counts in ``layers["counts"]`` or X, or log-normalised X); not modified.
    labels
        One label per cell; missing ones and ``unknown_label`` are left out.
    unknown_label
        The label of unlabelled cells.
    C
        Inverse L2 strength of scikit-learn's ``LogisticRegression``.
    max_iter
        lbfgs iterations at most.
    max_cells
        Cells fitted at most (a label-stratified sample above it).
    random_state
        Seed of that sample.

    Returns
    -------
    ExpressionClassifier

    Raises
    ------
    ScamlError
        Fewer than two labels, or a label count that does not match the cells.
    """
    from sklearn.linear_model import LogisticRegression

    labels = pd.Series(np.asarray(labels, dtype=object))
    if len(labels) != adata.n_obs:
        raise ScamlError(f"got {len(labels)} labels for {adata.n_obs} cells; pass one label per cell.")
    if int(max_cells) < 2:
        raise ScamlError(f"max_cells must be at least 2; got {max_cells}.")
    labelled = labels.notna().to_numpy() & (labels.astype(str) != str(unknown_label)).to_numpy()
    codes, classes = pd.factorize(labels[labelled].astype(str), sort=True)
    if len(classes) < 2:
        raise ScamlError(f"the expression classifier needs at least two labels; the reference has "
                         f"{len(classes)} ({list(classes)}). Build it with --no-expression-classifier.")
    start = time.perf_counter()
    chosen = training_cells(codes, int(max_cells), random_state)
    rows, codes = np.flatnonzero(labelled)[chosen], codes[chosen]
    X, found = lognormalized(adata[rows])
    X = sp.csr_matrix(X, dtype=np.float32)
    mean = np.asarray(X.mean(axis=0), dtype=np.float64).ravel()
    square = np.asarray(X.multiply(X).mean(axis=0), dtype=np.float64).ravel()
    sd = np.sqrt(np.maximum(square - mean * mean, 0.0))
    keep = sd > 0
    genes = adata.var_names.astype(str).to_numpy()[keep]
    scale = sd[keep].astype(np.float32)
    scaled = _scale_and_clip(X[:, np.flatnonzero(keep)], scale)
    info(f"expression classifier: logistic regression on {scaled.shape[0]} cells x {scaled.shape[1]} genes, "
         f"{len(classes)} labels")
    model = LogisticRegression(C=float(C), max_iter=int(max_iter))
    model.fit(scaled, codes)
    coef = model.coef_.astype(np.float32)
    intercept = model.intercept_.astype(np.float64)
    if coef.shape[0] == 1:  # binary: softmax over (0, w.x + b) is the logistic
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    settings = {"recipe": "log1p(counts / total * 1e4) of every gene, / sd, clip 10; multinomial L2 logistic "
                          "regression (lbfgs)",
                "C": float(C), "max_iter": int(max_iter), "n_iter": int(np.max(model.n_iter_)),
                "n_cells": int(rows.size), "n_labelled_cells": int(labelled.sum()), "max_cells": int(max_cells),
                "n_genes": int(genes.size), "input": found.source, "input_kind": found.kind,
                "seconds": round(time.perf_counter() - start, 3)}
    return ExpressionClassifier(genes=genes, scale=scale, coef=coef, intercept=intercept,
                                classes=[str(c) for c in classes], settings=settings)


__all__ = ["CLASSIFIER_DIR", "ExpressionClassifier", "fit_expression_classifier", "training_cells"]
