"""Cells of an h5ad or zarr file read a run of rows at a time, never the whole matrix.

:class:`CellSource` is a small, picklable description (path, format, matrix key); every read
opens the file, takes the rows it needs and closes it, so that it runs the same in this process
and on a Dask worker. The matrix is AnnData's on-disk CSR (``data`` / ``indices`` / ``indptr``) or
a dense array; CSC is refused (a row would need the whole file).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import ScamlError

FORMATS = ("h5ad", "zarr")


def _format_of(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    if name.endswith(".zarr") or (path.is_dir() and ((path / ".zgroup").exists() or (path / "zarr.json").exists())):
        return "zarr"
    if name.endswith((".h5ad", ".h5")):
        return "h5ad"
    raise ScamlError(
        f"the chunked path reads .h5ad or .zarr files; got {str(path)!r}. Convert the input first "
        "(e.g. anndata.read_...(...).write_h5ad('cells.h5ad')) or run without --chunked."
    )


@contextlib.contextmanager
def _open_store(path: str, fmt: str) -> Iterator[Any]:
    if fmt == "h5ad":
        import h5py

        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise ScamlError(
                f"cannot read {path!r} as HDF5 ({str(exc).splitlines()[0]}); the file is truncated, damaged or "
                "not an h5ad. Copy it again or re-write it with anndata."
            ) from exc
        try:
            yield handle
        finally:
            handle.close()
    else:
        import zarr

        try:
            yield zarr.open_group(path, mode="r")
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise ScamlError(f"cannot read {path!r} as a zarr AnnData store ({exc}); check the path.") from exc


@dataclass(frozen=True)
class CellSource:
    """Where the cells are: a file and the matrix in it (``"X"`` or ``"layers/<name>"``).

    Use :func:`open_cells` to make one (it checks the file).
    """

    path: str
    fmt: str
    key: str
    n_cells: int
    n_genes: int
    sparse: bool
    nnz: int

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix | np.ndarray:
        """Rows ``start:stop`` of the matrix (CSR float32 for sparse storage, dense float32 otherwise).

        Raises
        ------
        ScamlError
            The file cannot be read there (truncated or changed since it was opened).
        """
        try:
            with _open_store(self.path, self.fmt) as store:
                node = store[self.key]
                if not self.sparse:
                    return np.asarray(node[start:stop], dtype=np.float32)
                indptr = np.asarray(node["indptr"][start:stop + 1], dtype=np.int64)
                lo, hi = int(indptr[0]), int(indptr[-1])
                data = np.asarray(node["data"][lo:hi], dtype=np.float32)
                indices = np.asarray(node["indices"][lo:hi], dtype=np.int32)
        except ScamlError:
            raise
        except Exception as exc:  # h5py / zarr read errors of a damaged file
            raise ScamlError(
                f"reading cells {start}-{stop} of {self.path!r} failed ({type(exc).__name__}: {exc}); the file is "
                "truncated or damaged. Copy it again."
            ) from exc
        if data.size != hi - lo or indices.size != hi - lo:
            raise ScamlError(
                f"{self.path!r} holds fewer stored values than its index says (cells {start}-{stop}); the file is "
                "truncated. Copy it again."
            )
        return sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, self.n_genes))

    def read_frame(self, name: str) -> pd.DataFrame:
        """``obs`` or ``var`` as a DataFrame."""
        from anndata.io import read_elem

        with _open_store(self.path, self.fmt) as store:
            try:
                return read_elem(store[name])
            except Exception as exc:
                raise ScamlError(f"cannot read {name!r} of {self.path!r} ({exc}); the file is damaged.") from exc


def open_cells(path: str | os.PathLike, layer: str | None = None) -> CellSource:
    """Check a file and describe its matrix for chunked reading.

    Parameters
    ----------
    path
        An ``.h5ad`` file or a ``.zarr`` AnnData store.
    layer
        Read ``layers[layer]`` instead of ``X``.

    Raises
    ------
    ScamlError
        The file is missing, damaged or truncated, the matrix is stored by column (CSC) or missing.
    """
    p = Path(path)
    if not p.exists():
        raise ScamlError(f"input {str(p)!r} does not exist.")
    fmt = _format_of(p)
    key = "X" if layer is None else f"layers/{layer}"
    with _open_store(str(p), fmt) as store:
        if key not in store:
            raise ScamlError(f"{str(p)!r} has no {key!r}; name an existing layer or put the counts in X.")
        node = store[key]
        attrs = dict(node.attrs)
        encoding = str(attrs.get("encoding-type", "array"))
        if encoding == "csc_matrix":
            raise ScamlError(
                f"{key} of {str(p)!r} is stored by column (CSC): reading cells in chunks needs it by row. Re-write "
                "it as CSR (adata.X = adata.X.tocsr(); adata.write_h5ad(...)) or run without --chunked."
            )
        if encoding == "csr_matrix":
            shape = tuple(int(s) for s in attrs["shape"])
            n_ptr = int(node["indptr"].shape[0])
            nnz = int(node["data"].shape[0])
            if n_ptr != shape[0] + 1:
                raise ScamlError(
                    f"{key} of {str(p)!r} has {n_ptr} row pointers for {shape[0]} cells; the file is truncated or "
                    "damaged. Copy it again."
                )
            last = int(node["indptr"][n_ptr - 1])
            if last > nnz or int(node["indices"].shape[0]) != nnz:
                raise ScamlError(
                    f"{key} of {str(p)!r} indexes {last} stored values but holds {nnz}; the file is truncated. "
                    "Copy it again."
                )
            return CellSource(str(p), fmt, key, shape[0], shape[1], True, nnz)
        if hasattr(node, "shape") and len(node.shape) == 2:
            n, g = (int(s) for s in node.shape)
            return CellSource(str(p), fmt, key, n, g, False, n * g)
    raise ScamlError(f"{key} of {str(p)!r} is neither a CSR matrix nor a 2-D array (encoding {encoding!r}).")


def row_ranges(n_cells: int, chunk_cells: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``chunk_cells`` rows."""
    step = max(1, int(chunk_cells))
    return [(a, min(a + step, n_cells)) for a in range(0, n_cells, step)]
