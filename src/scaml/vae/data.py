"""Mini-batches of counts drawn from a sparse matrix without densifying it.

Once per epoch the rows of the CSR matrix are permuted (one vectorised
gather over the stored values); a mini-batch is then a contiguous run of rows,
whose slice of ``indptr`` / ``indices`` / ``data`` is densified on its own.
Only one batch is ever dense.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .modules import NonZeros


@dataclass
class Batch:
    """One mini-batch, on the training device."""

    x: torch.Tensor  # cells x genes, float32, dense
    cond: torch.Tensor  # int64 condition codes
    log_library: torch.Tensor  # float32 log library size
    log_factorial: torch.Tensor  # float32 sum over genes of lgamma(x + 1) (the NB normalising constant)
    labels: torch.Tensor | None  # int64 label codes, -1 = unlabelled
    nz: NonZeros | None = None  # the stored entries of x (sparse input only)
    #: more per-cell inputs of a model that reads more than one matrix (e.g. protein counts), by name
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class CellData:
    """Counts (CSR or dense), condition codes, labels and library sizes of a set of cells.

    Parameters
    ----------
    X
        Cells x genes matrix, already aligned to the model's genes.
    cond
        Integer condition code of each cell.
    labels
        Integer label code of each cell (``-1`` for unlabelled) or None.
    obs_names
        Cell names (kept for the outputs).
    extras
        More per-cell arrays (first axis: cells) that a model reads beside ``X``, e.g. protein
        counts or encoded sequences; they are shuffled and batched with the cells and reach the
        module's ``loss`` / ``latent_mean`` as keyword arguments.
    """

    def __init__(
        self,
        X: sp.spmatrix | np.ndarray,
        cond: np.ndarray,
        labels: np.ndarray | None = None,
        obs_names: list[str] | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> None:
        if sp.issparse(X):
            X = sp.csr_matrix(X, dtype=np.float32)
            if not X.has_canonical_format or (X.data == 0).any():
                X = X.copy()  # never modify the caller's matrix
                X.sum_duplicates()
                X.eliminate_zeros()
            self.sparse = True
        else:
            X = np.ascontiguousarray(X, dtype=np.float32)
            self.sparse = False
        self.X = X
        self.n_cells, self.n_genes = X.shape
        self.cond = np.asarray(cond, dtype=np.int64)
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.obs_names = obs_names
        self.extras = {k: np.ascontiguousarray(v) for k, v in (extras or {}).items()}
        for name, values in self.extras.items():
            if values.shape[0] != self.n_cells:
                raise ValueError(f"extras[{name!r}] has {values.shape[0]} rows for {self.n_cells} cells")
        library = np.asarray(X.sum(axis=1)).ravel()
        self.log_library = np.log(np.maximum(library, 1.0)).astype(np.float32)
        self.log_factorial = _row_log_factorial(X)

    def batches(
        self,
        batch_size: int,
        device: torch.device,
        order: np.ndarray | None = None,
        drop_last_single: bool = True,
    ) -> Iterator[Batch]:
        """Yield mini-batches in ``order`` (default: stored order).

        A final batch of a single cell is dropped when ``drop_last_single``
        (batch and layer statistics of one cell are degenerate).
        """
        if order is not None:
            X = self.X[order]
            cond, log_lib, log_fact = self.cond[order], self.log_library[order], self.log_factorial[order]
            labels = None if self.labels is None else self.labels[order]
            extras = {k: v[order] for k, v in self.extras.items()}
        else:
            X, cond, log_lib, labels = self.X, self.cond, self.log_library, self.labels
            log_fact = self.log_factorial
            extras = self.extras
        extras_t = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in extras.items()}
        cond_t = torch.from_numpy(cond).to(device)
        lib_t = torch.from_numpy(log_lib).to(device)
        fact_t = torch.from_numpy(log_fact).to(device)
        labels_t = None if labels is None else torch.from_numpy(labels).to(device)
        n = X.shape[0]
        if self.sparse:
            indptr = torch.from_numpy(X.indptr.astype(np.int64)).to(device)
            indices = torch.from_numpy(X.indices.astype(np.int64)).to(device)
            values = torch.from_numpy(X.data).to(device)
        else:
            dense_t = torch.from_numpy(X).to(device)
        n_genes = self.n_genes
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if drop_last_single and stop - start == 1 and n > 1:
                break
            if self.sparse:
                lo, hi = int(X.indptr[start]), int(X.indptr[stop])
                x, nz = _densify(indptr[start:stop + 1] - lo, indices[lo:hi], values[lo:hi], stop - start, n_genes)
            else:
                x, nz = dense_t[start:stop], None
            yield Batch(
                x=x,
                cond=cond_t[start:stop],
                log_library=lib_t[start:stop],
                log_factorial=fact_t[start:stop],
                labels=None if labels_t is None else labels_t[start:stop],
                nz=nz,
                extras={k: v[start:stop] for k, v in extras_t.items()},
            )


def _densify(
    indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_rows: int, n_cols: int
) -> tuple[torch.Tensor, NonZeros]:
    """Dense rows from one CSR slice (``indptr`` starting at 0), and its non-zero entries."""
    rows = torch.repeat_interleave(
        torch.arange(n_rows, device=values.device), indptr[1:] - indptr[:-1], output_size=values.numel()
    )  # output_size: no host synchronisation on a GPU
    flat = rows * n_cols + indices
    out = torch.zeros(n_rows * n_cols, dtype=values.dtype, device=values.device)
    out[flat] = values
    return out.view(n_rows, n_cols), NonZeros(flat, indices, values)


def _row_log_factorial(X: sp.spmatrix | np.ndarray) -> np.ndarray:
    """Per row, the sum of ``lgamma(x + 1)`` over the stored values (zeros contribute 0)."""
    from scipy.special import gammaln

    if sp.issparse(X):
        values = gammaln(np.maximum(X.data, 0.0).astype(np.float64) + 1.0)
        rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        return np.bincount(rows, weights=values, minlength=X.shape[0]).astype(np.float32)
    return gammaln(np.maximum(np.asarray(X, dtype=np.float64), 0.0) + 1.0).sum(axis=1).astype(np.float32)


# ----------------------------------------------------------------------------- gene alignment

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def _looks_ensembl(name: str) -> bool:
    """True for Ensembl gene IDs such as ENSG00000141510 or ENSMUSG00000059552.1."""
    return _ENSEMBL.match(name) is not None


def ensembl_fraction(genes: list[str] | np.ndarray, n_check: int = 2000) -> float:
    """Fraction of (up to ``n_check``) gene names that look like Ensembl IDs."""
    genes = list(genes)[:n_check]
    if not genes:
        return 0.0
    return sum(_looks_ensembl(str(g)) for g in genes) / len(genes)


def gene_kind(genes: list[str] | np.ndarray) -> str:
    """``"Ensembl IDs"``, ``"gene symbols"`` or ``"mixed names"``."""
    frac = ensembl_fraction(genes)
    if frac > 0.5:
        return "Ensembl IDs"
    if frac < 0.1:
        return "gene symbols"
    return "mixed names"


def gene_positions(query_genes: list[str] | np.ndarray, model_genes: list[str]) -> np.ndarray:
    """For each model gene, its column in the query (``-1`` where the query lacks it).

    A name the query holds more than once maps to its first column.
    """
    first: dict[str, int] = {}
    for j, g in enumerate(map(str, query_genes)):
        first.setdefault(g, j)
    return np.fromiter((first.get(g, -1) for g in model_genes), dtype=np.int64, count=len(model_genes))


def align_columns(X: sp.spmatrix | np.ndarray, positions: np.ndarray) -> sp.csr_matrix | np.ndarray:
    """Reorder the columns of ``X`` to the model's genes; missing genes become zero columns.

    Sparse input stays sparse (a product with a sparse selection matrix).
    """
    n_query = X.shape[1]
    n_model = positions.size
    if n_query == n_model and np.array_equal(positions, np.arange(n_model)):
        return X
    present = np.flatnonzero(positions >= 0)
    if sp.issparse(X):
        select = sp.csr_matrix(
            (np.ones(present.size, dtype=np.float32), (positions[present], present)),
            shape=(n_query, n_model),
        )
        return (sp.csr_matrix(X) @ select).tocsr()
    out = np.zeros((X.shape[0], n_model), dtype=np.float32)
    out[:, present] = np.asarray(X)[:, positions[present]]
    return out
