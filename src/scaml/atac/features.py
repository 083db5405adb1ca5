"""Peak (or bin) features: parse ``chr-start-end`` / ``chr:start-end`` names, detect ATAC input, read 10x files."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import ScamlError

#: ``chr1-100-200``, ``chr1:100-200``, ``1_100_200`` (the separators Cell Ranger, Signac and ArchR write).
_PEAK = re.compile(r"^(?P<chrom>[^:\-_\s]+(?:_[^:\-_\s]+)*?)[:\-_](?P<start>\d+)[\-_](?P<end>\d+)$")

#: Share of feature names that must parse for the input to be taken as peaks.
DETECT_FRACTION = 0.9


def parse_peak_names(names: Sequence[str]) -> pd.DataFrame:
    """Split peak names into ``chrom``, ``start`` and ``end``.

    Parameters
    ----------
    names
        Feature names such as ``chr1-10001-15000``, ``chr1:10001-15000`` or ``chr1_10001_15000``.

    Returns
    -------
    pandas.DataFrame
        Indexed by the names, with ``chrom`` (str), ``start`` and ``end`` (int64).

    Raises
    ------
    ScamlError
        A name does not parse, or has its end before its start (the first bad names are listed).
    """
    names = [str(n) for n in names]
    matches = [_PEAK.match(n) for n in names]
    bad = [n for n, m in zip(names, matches, strict=True) if m is None]
    if bad:
        raise ScamlError(
            f"{len(bad)} of {len(names)} feature names are not peaks of the form chr-start-end or chr:start-end "
            f"(e.g. {bad[:3]}); rename the features (e.g. 'chr1-10001-15000') or run without --modality atac."
        )
    chrom = [m.group("chrom") for m in matches]  # type: ignore[union-attr]
    start = np.array([int(m.group("start")) for m in matches], dtype=np.int64)  # type: ignore[union-attr]
    end = np.array([int(m.group("end")) for m in matches], dtype=np.int64)  # type: ignore[union-attr]
    backwards = np.flatnonzero(end < start)
    if backwards.size:
        raise ScamlError(
            f"{backwards.size} peak names end before they start (e.g. {names[backwards[0]]!r}); "
            "fix the coordinates (chr-start-end with start <= end)."
        )
    return pd.DataFrame({"chrom": chrom, "start": start, "end": end}, index=pd.Index(names))


def normalise_chromosomes(names: Sequence[str] | np.ndarray | pd.Series) -> np.ndarray:
    """Chromosome names in one style, so that Ensembl and UCSC names meet: ``1`` -> ``chr1``, ``MT`` / ``M`` ->
    ``chrM``; names starting with ``chr`` are kept. Each distinct name is converted once (object array out)."""
    codes, uniques = pd.factorize(pd.Series(names).astype(str) if not isinstance(names, pd.Series) else names)
    mapped = []
    for name in map(str, uniques):
        mapped.append(name if name.startswith("chr") else "chrM" if name in ("MT", "M") else f"chr{name}")
    return np.append(np.asarray(mapped, dtype=object), None)[codes]


def looks_like_peaks(names: Sequence[str], fraction: float = DETECT_FRACTION) -> bool:
    """Whether at least ``fraction`` of (up to 2,000 sampled) feature names parse as peaks."""
    names = [str(n) for n in names]
    if not names:
        return False
    step = max(1, len(names) // 2000)
    sample = names[::step]
    return sum(_PEAK.match(n) is not None for n in sample) >= fraction * len(sample)


def add_peak_coordinates(adata: ad.AnnData) -> None:
    """Write ``var["chrom"]``, ``var["start"]`` and ``var["end"]`` parsed from the feature names (in place).

    Columns already present with the same values are kept; a ScamlError names unparsable names.
    """
    coords = parse_peak_names(adata.var_names)
    adata.var["chrom"] = pd.Categorical(coords["chrom"].to_numpy())
    adata.var["start"] = coords["start"].to_numpy()
    adata.var["end"] = coords["end"].to_numpy()


def read_peak_matrix(path: str | os.PathLike) -> ad.AnnData:
    """Read a peak count matrix: h5ad, a Cell Ranger ATAC / ARC ``.h5``, or a 10x peak-matrix folder.

    10x files are read with scanpy (``read_10x_h5`` / ``read_10x_mtx`` with every feature type);
    a multiome (ARC) file keeps its ``Peaks`` features only. The file is never modified.

    Parameters
    ----------
    path
        The input.

    Returns
    -------
    AnnData
        Cells x peaks.
    """
    from ..io import read_input

    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise ScamlError(f"input {str(path)!r} does not exist; check the path.")
    if not (name.endswith(".h5") or path.is_dir()):
        return read_input(path)
    import scanpy as sc

    try:
        if path.is_dir():
            files = {p.name for p in path.iterdir()}
            if not any(f.startswith("matrix.mtx") for f in files):
                raise ScamlError(f"folder {str(path)!r} is not a 10x matrix folder (no matrix.mtx[.gz]); "
                                 f"it holds: {sorted(files)[:10]}.")
            adata = _read_10x_peak_dir(path)
        else:
            adata = sc.read_10x_h5(str(path), gex_only=False)
    except ScamlError:
        raise
    except Exception as exc:
        raise ScamlError(f"could not read {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if "feature_types" in adata.var and (adata.var["feature_types"] == "Peaks").any():
        adata = adata[:, (adata.var["feature_types"] == "Peaks").to_numpy()].copy()
    adata.var_names_make_unique()
    return adata


def _read_10x_peak_dir(path: Path) -> ad.AnnData:
    """A 10x folder: Cell Ranger ATAC 1.x writes peaks.bed (3 columns), later versions features.tsv."""
    import scanpy as sc

    files = {p.name for p in path.iterdir()}
    if any(f.startswith("features.tsv") or f.startswith("genes.tsv") for f in files):
        return sc.read_10x_mtx(str(path), var_names="gene_ids", gex_only=False, cache=False)
    import scipy.io
    import scipy.sparse as sp

    def first(prefix: str) -> Path:
        found = sorted(p for p in path.iterdir() if p.name.startswith(prefix))
        if not found:
            raise ScamlError(f"folder {str(path)!r} has no {prefix}* file; a 10x peak matrix folder needs "
                             "matrix.mtx, barcodes.tsv and peaks.bed or features.tsv.")
        return found[0]

    X = sp.csr_matrix(scipy.io.mmread(first("matrix.mtx")).T, dtype=np.float32)
    barcodes = pd.read_csv(first("barcodes.tsv"), sep="\t", header=None)[0].astype(str)
    peaks = pd.read_csv(first("peaks.bed"), sep="\t", header=None)
    names = peaks[0].astype(str) + ":" + peaks[1].astype(str) + "-" + peaks[2].astype(str)
    return ad.AnnData(X=X, obs=pd.DataFrame(index=barcodes.to_numpy()), var=pd.DataFrame(index=names.to_numpy()))


def is_10x_peak_file(path: str | os.PathLike) -> bool:
    """Whether a 10x ``.h5`` or matrix folder holds peaks only (Cell Ranger ATAC), without gene features.

    A multiome (ARC) file holds both and is read as genes unless ``--modality atac`` asks for its peaks.
    """
    path = Path(path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.name.startswith(("features.tsv", "peaks.bed")))
            if not files:
                return False
            if files[0].name.startswith("peaks.bed"):
                return True
            types = pd.read_csv(files[0], sep="\t", header=None, usecols=[2])[2].astype(str)
            return bool((types == "Peaks").any() and not (types == "Gene Expression").any())
        if path.name.lower().endswith(".h5"):
            import h5py

            with h5py.File(path, "r") as f:
                if "matrix" not in f or "features" not in f["matrix"]:
                    return False
                types = {t.decode() if isinstance(t, bytes) else str(t) for t in f["matrix/features/feature_type"][:]}
            return "Peaks" in types and "Gene Expression" not in types
    except Exception:  # unreadable here: the ordinary reader gives the error
        return False
    return False
