"""scATAC-seq: peak features, QC (with fragments), Signac's TF-IDF + LSI with the depth check, gene activity.

Each module does one job and works on AnnData objects with peaks as features:

- :mod:`~scaml.atac.features`: parse ``chr-start-end`` names into ``var`` ``chrom``/``start``/``end``,
  detect peak input, read 10x Cell Ranger ATAC / ARC files;
- :mod:`~scaml.atac.qc`: counts / peaks per cell, peaks per cell count, fragments, FRiP, TSS enrichment;
- :mod:`~scaml.atac.lsi`: log-TF-IDF, LSI (truncated SVD) and the depth-correlated component;
- :mod:`~scaml.atac.spectral`: SnapATAC2's spectral embedding (cosine Laplacian eigenmaps, matrix-free);
- :mod:`~scaml.atac.gene_activity`: peak counts over gene body + promoter from a GTF/GFF/BED annotation.
"""

from .features import add_peak_coordinates, looks_like_peaks, parse_peak_names, read_peak_matrix
from .gene_activity import (
    PeakGeneMap,
    gene_activity,
    gene_regions,
    peak_gene_map,
    read_gene_annotation,
)
from .lsi import DEPTH_CORRELATION_MAX, DepthCheck, depth_check, lsi, run_lsi, tfidf
from .qc import fragment_metrics, fragment_qc, iter_fragments, qc_filter_peaks, read_fragments
from .spectral import SpectralResult, run_spectral, spectral

__all__ = [
    "DEPTH_CORRELATION_MAX", "DepthCheck", "PeakGeneMap", "add_peak_coordinates", "depth_check", "fragment_metrics",
    "fragment_qc", "gene_activity", "gene_regions", "iter_fragments", "looks_like_peaks", "lsi", "parse_peak_names",
    "peak_gene_map", "qc_filter_peaks", "read_fragments", "read_gene_annotation", "read_peak_matrix", "run_lsi",
    "SpectralResult", "run_spectral", "spectral", "tfidf",
]
