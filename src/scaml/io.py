"""Reading, validating and writing data. Inputs are never modified; outputs are atomic."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._utils import jsonable
from .errors import ScamlError, missing_key_error

#: h5ad files smaller than this are almost surely broken exports.
_TINY_H5AD_BYTES = 4096

_SEURATDISK_HINT = (
    "Files of about 800 bytes are what SeuratDisk's SaveH5Seurat/Convert writes for Seurat v5 objects "
    "(it cannot read v5 assays); write the AnnData from R with the 'anndata' package instead, "
    "e.g. anndata::write_h5ad(AnnData(X = t(LayerData(obj, 'counts')), obs = obj@meta.data), 'file.h5ad')"
)


# ----------------------------------------------------------------------------- reading

def read_input(path: str | os.PathLike, *, backed: bool = False) -> ad.AnnData:
    """Read single-cell data from h5ad, a 10x .h5, a 10x matrix folder, or a CSV/TSV table.

    Parameters
    ----------
    path
        The input. ``.h5ad``; ``.h5`` (10x Genomics HDF5); a folder with
        ``matrix.mtx(.gz)``, ``features.tsv(.gz)``/``genes.tsv`` and
        ``barcodes.tsv(.gz)``; or ``.csv``/``.tsv``/``.txt`` (cells x genes,
        first column the cell names, first row the gene names; ``.gz`` allowed).
    backed
        Open an h5ad file in read-only backed mode.

    Returns
    -------
    AnnData
        An object independent of the file: nothing scaml does writes back to the input.

    Raises
    ------
    ScamlError
        The path does not exist, has an unknown format, or cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise ScamlError(f"input {str(path)!r} does not exist; check the path.")
    name = path.name.lower()
    try:
        if path.is_dir():
            return _read_10x_dir(path)
        if name.endswith(".h5ad"):
            return read_h5ad(path, backed=backed)
        if name.endswith(".h5"):
            import scanpy as sc

            adata = sc.read_10x_h5(str(path))
            adata.var_names_make_unique()
            return adata
        if any(name.endswith(s) for s in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz")):
            return _read_table(path)
    except ScamlError:
        raise
    except Exception as exc:  # any reader failure becomes one clear line
        raise ScamlError(f"could not read {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    raise ScamlError(
        f"unknown input format for {str(path)!r}; use .h5ad, a 10x .h5, a 10x matrix folder, or .csv/.tsv."
    )


def read_h5ad(path: str | os.PathLike, *, backed: bool = False) -> ad.AnnData:
    """Read an h5ad file, turning truncated or broken files into a clear :class:`ScamlError`."""
    path = Path(path)
    if not path.exists():
        raise ScamlError(f"h5ad file {str(path)!r} does not exist; check the path.")
    size = path.stat().st_size
    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:
        hint = f" {_SEURATDISK_HINT}." if size < _TINY_H5AD_BYTES else (
            " The file may be truncated (an interrupted copy or download) or not an h5ad file."
        )
        raise ScamlError(
            f"cannot read h5ad {str(path)!r} ({size} bytes): {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}.{hint}"
        ) from exc
    if adata.n_obs == 0 or adata.n_vars == 0:
        hint = f" {_SEURATDISK_HINT}." if size < _TINY_H5AD_BYTES else ""
        raise ScamlError(
            f"h5ad {str(path)!r} ({size} bytes) holds {adata.n_obs} cells x {adata.n_vars} genes; nothing to analyse.{hint}"
        )
    return adata


def _read_10x_dir(path: Path) -> ad.AnnData:
    import scanpy as sc

    files = {p.name for p in path.iterdir()}
    if not any(f.startswith("matrix.mtx") for f in files):
        raise ScamlError(
            f"folder {str(path)!r} is not a 10x matrix folder (no matrix.mtx[.gz]); it holds: {sorted(files)[:10]}."
        )
    adata = sc.read_10x_mtx(str(path), var_names="gene_symbols", cache=False)
    adata.var_names_make_unique()
    return adata


def _read_table(path: Path) -> ad.AnnData:
    name = path.name.lower().removesuffix(".gz")
    sep = "," if name.endswith(".csv") else "\t"
    table = pd.read_csv(path, sep=sep, index_col=0)
    numeric = table.select_dtypes(include=[np.number])
    if numeric.shape[1] != table.shape[1]:
        bad = [c for c in table.columns if c not in numeric.columns][:5]
        raise ScamlError(
            f"table {str(path)!r} has non-numeric columns {bad}; expected cells x genes numbers with cell names in the first column."
        )
    adata = ad.AnnData(
        X=sp.csr_matrix(numeric.to_numpy(dtype=np.float32)),
        obs=pd.DataFrame(index=numeric.index.astype(str)),
        var=pd.DataFrame(index=numeric.columns.astype(str)),
    )
    adata.var_names_make_unique()
    return adata


# ----------------------------------------------------------------------------- validation

def check_obs_key(adata: ad.AnnData, key: str, *, flag: str | None = None, min_levels: int = 1) -> pd.Series:
    """Return ``adata.obs[key]`` or raise a :class:`ScamlError` listing the columns that exist.

    Parameters
    ----------
    adata
        The data.
    key
        The column.
    flag
        The option that named it (for the message).
    min_levels
        Minimum number of distinct non-missing values required.
    """
    if key not in adata.obs.columns:
        raise missing_key_error(key, adata.obs.columns, "adata.obs", flag)
    column = adata.obs[key]
    levels = pd.unique(column.dropna())
    if len(levels) < min_levels:
        raise ScamlError(
            f"adata.obs[{key!r}] has {len(levels)} level(s) ({', '.join(map(str, levels[:5]))}); "
            f"at least {min_levels} are needed. Choose a column that separates the batches."
        )
    return column


def check_obsm_key(adata: ad.AnnData, key: str, *, flag: str | None = None) -> np.ndarray:
    """Return ``adata.obsm[key]`` as a dense finite array or raise a :class:`ScamlError`."""
    if key not in adata.obsm:
        raise missing_key_error(key, adata.obsm.keys(), "adata.obsm", flag)
    return check_finite(adata.obsm[key], f"adata.obsm[{key!r}]")


def check_finite(matrix: Any, what: str) -> np.ndarray:
    """Return ``matrix`` as a dense 2-D array, raising if it holds NaN or infinite values."""
    arr = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if arr.ndim != 2:
        raise ScamlError(f"{what} must be a 2-D cells x dimensions array; got shape {arr.shape}.")
    if not np.issubdtype(arr.dtype, np.number):
        raise ScamlError(f"{what} must be numeric; got dtype {arr.dtype}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise ScamlError(
            f"{what} holds {int(bad.sum())} NaN or infinite values in {rows.size} cells "
            f"(first rows: {rows[:5].tolist()}); remove or impute those cells first."
        )
    return arr


def count_matrix_problem(X: Any, n_check: int = 1_000_000) -> str | None:
    """Say why ``X`` is not a raw count matrix, or return None if it looks like counts.

    Checks for negative and non-integer values among up to ``n_check`` stored values.
    """
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size > n_check:
        data = data[:: max(1, data.size // n_check)]
    if data.size == 0:
        return None
    if np.any(data < 0):
        return f"it holds negative values (min {float(data.min()):.3g})"
    frac = np.abs(data - np.round(data)) > 1e-6
    if frac.any():
        example = float(data[np.flatnonzero(frac)[0]])
        return f"{frac.mean():.1%} of its values are not integers (e.g. {example:.4g})"
    return None


# ----------------------------------------------------------------------------- writing

def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(temporary_path)`` in the target's folder, then rename the file into place.

    Any writer (npz, torch.save, ...) becomes atomic this way; on failure the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path



def h5ad_safe_value(value: Any) -> Any:
    """A JSON-like value that h5ad can store: None becomes the string ``"None"``, numpy values plain."""
    value = jsonable(value)
    if isinstance(value, dict):
        return {k: h5ad_safe_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [h5ad_safe_value(v) for v in value]
    return "None" if value is None else value


def h5ad_safe(adata: ad.AnnData) -> ad.AnnData:
    """Make ``adata`` writable as h5ad, in place: object columns of obs/var as strings, sparse X as CSR.

    Missing values of object columns stay missing (anndata stores them as missing strings).

    Returns ``adata``.
    """
    for frame in (adata.obs, adata.var):
        for column in frame.columns:
            if frame[column].dtype == object:
                values = frame[column]
                # strings, missing values kept missing (never the string "nan")
                frame[column] = values.where(values.isna(), values.astype(str))
    if sp.issparse(adata.X) and not isinstance(adata.X, sp.csr_matrix):
        adata.X = sp.csr_matrix(adata.X)
    return adata


def write_h5ad(adata: ad.AnnData, path: str | os.PathLike) -> Path:
    """Write ``adata`` (made h5ad-safe with :func:`h5ad_safe`) to ``path`` atomically (temp file + rename)."""
    h5ad_safe(adata)
    return write_atomic(path, lambda tmp: adata.write_h5ad(tmp))


def write_npz(arrays: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write named arrays as a compressed ``.npz`` atomically (no pickled objects: read with ``allow_pickle=False``)."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)

    return write_atomic(path, _write)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write JSON (numpy values converted, NaN as null) atomically."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=False)

    def _write(tmp: str) -> None:
        Path(tmp).write_text(text + "\n")

    return write_atomic(path, _write)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_csv(frame: pd.DataFrame, path: str | os.PathLike, **kwargs: Any) -> Path:
    """Write a DataFrame as CSV atomically."""
    return write_atomic(path, lambda tmp: frame.to_csv(tmp, **kwargs))


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    def _write(tmp: str) -> None:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")

    try:
        return write_atomic(path, _write)
    finally:
        plt.close(fig)


def prepare_outdir(path: str | os.PathLike, *, overwrite: bool = False, protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Create an output directory, refusing an existing non-empty one unless ``overwrite``.

    With ``overwrite`` the old directory is removed, unless it holds one of the
    ``protect`` paths (the inputs), which is refused: scaml never deletes its input.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ScamlError(f"output {str(path)!r} exists and is a file; choose a directory path for --out.")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ScamlError(
                f"output directory {str(path)!r} already exists and is not empty; pass --overwrite "
                "(overwrite=True) to replace it, or choose another directory."
            )
        resolved = path.resolve()
        for item in protect:
            item_path = Path(item).resolve()
            if item_path == resolved or resolved in item_path.parents:
                raise ScamlError(
                    f"output directory {str(path)!r} contains the input {str(item)!r}; it cannot be overwritten. "
                    "Choose another output directory."
                )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
