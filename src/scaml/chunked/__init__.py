"""Atlas scale: preprocessing of files larger than memory, in chunks of cells, in this process or on Dask.

Modules, each depending only on those before it: ``source`` (reading a run of rows of an h5ad /
zarr file), ``engine`` (mapping a pass over the chunks here or on a dask.distributed cluster),
``passes`` (one chunk's work in each pass), ``preprocess`` (QC -> normalise -> HVG -> PCA, and
the chunk-wise output file) and ``peaks`` (scATAC-seq: QC -> TF-IDF -> LSI -> depth check).

Examples
--------
>>> from scaml.chunked import preprocess_chunked
>>> cells = preprocess_chunked("atlas.h5ad", batch_key="donor", max_memory="8GB")   # doctest: +SKIP
>>> cells.adata.obsm["X_pca"].shape                                                # doctest: +SKIP
"""

from __future__ import annotations

from .engine import Engine, connect, describe_client
from .peaks import ChunkedPeaks, preprocess_peaks_chunked
from .preprocess import (
    ChunkedCells,
    ChunkPlan,
    plan_chunks,
    preprocess_chunked,
    write_chunked_h5ad,
    write_streamed_h5ad,
)
from .source import CellSource, open_cells

__all__ = ["CellSource", "ChunkPlan", "ChunkedCells", "ChunkedPeaks", "Engine", "connect", "describe_client",
           "open_cells", "plan_chunks", "preprocess_chunked", "preprocess_peaks_chunked", "write_chunked_h5ad",
           "write_streamed_h5ad"]
