"""``scaml integrate``: the Harmony integration pipeline."""

from __future__ import annotations

import argparse

from .options import add_input, add_output, resolve_input


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``integrate`` subcommand."""
    p = subparsers.add_parser(
        "integrate", parents=[parent],
        help="QC, normalise, HVG, PCA (ATAC: TF-IDF, LSI), Harmony, neighbours/UMAP/Leiden, markers and figures",
        description=(
            "Integrate batches with scaml's Harmony inside the scanpy-style pipeline. Reads h5ad, a 10x .h5, "
            "a 10x matrix folder or a CSV/TSV table (cells x genes, or cells x peaks for scATAC-seq); writes "
            "DIR/integrated.h5ad, DIR/summary.json, DIR/figures/*.png and DIR/report.html. Peak matrices "
            "(features named chr-start-end or chr:start-end, or --modality atac) take QC, Signac's TF-IDF, "
            "LSI without the depth component, and Harmony on the LSI."
        ),
    )
    add_input(p, "h5ad, 10x .h5, 10x matrix folder, or CSV/TSV (cells x genes)")
    p.add_argument("--batch-key", action="append", default=None, metavar="KEY",
                   help="obs column to correct for; repeat for several covariates (none: nothing is corrected)")
    p.add_argument("--modality", choices=["auto", "rna", "atac"], default="auto",
                   help="rna (genes) or atac (peak/bin counts); default: atac when the features are named like peaks")
    p.add_argument("--theta", type=float, nargs="+", default=None,
                   help="diversity penalty per batch key (default 2 each), e.g. --theta 2 1")
    add_output(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--label-key", default=None, help="cell-type column: adds bio-conservation metrics")
    p.add_argument("--use-rep", default=None, metavar="OBSM_KEY",
                   help="correct this existing embedding (e.g. X_pca) and skip QC/normalise/HVG/PCA")
    p.add_argument("--input-kind", "--input", dest="input_kind", choices=["auto", "counts", "normalized"],
                   default="auto", help="what X holds (default: detect; --input is the old spelling)")
    qc = p.add_argument_group("QC (raw counts only)")
    qc.add_argument("--mito-prefix", nargs="+", default=["MT-", "mt-"], help="mitochondrial gene prefixes")
    qc.add_argument("--min-genes", type=int, default=200, help="minimum genes per cell (default 200)")
    qc.add_argument("--max-genes", type=int, default=None, help="maximum genes per cell (default none)")
    qc.add_argument("--max-pct-mito", type=float, default=20.0, help="maximum percent mitochondrial counts (default 20)")
    qc.add_argument("--min-cells", type=int, default=3, help="minimum cells per gene or peak (default 3)")
    at = p.add_argument_group("scATAC-seq (--modality atac)")
    at.add_argument("--min-counts", type=int, default=50, help="minimum counts in peaks per cell (default 50)")
    at.add_argument("--min-peaks", type=int, default=20, help="minimum accessible peaks per cell (default 20)")
    at.add_argument("--max-counts", type=int, default=None, help="maximum counts in peaks per cell (default none)")
    at.add_argument("--fragments", default=None, metavar="FILE",
                    help="fragments.tsv.gz of these cells: adds n_fragments and FRiP (and TSS enrichment with --genes)")
    at.add_argument("--min-fragments", type=int, default=None, help="minimum fragments per cell (with --fragments)")
    at.add_argument("--genes", default=None, metavar="GTF_GFF_BED",
                    help="gene annotation of the peaks' genome: TSS enrichment and DIR/gene_activity.h5ad")
    at.add_argument("--atac-embedding", choices=["lsi", "spectral"], default="lsi",
                    help="lsi: Signac's TF-IDF + SVD with the depth check (default); spectral: SnapATAC2's cosine "
                         "Laplacian eigenmaps (separates types better on very sparse data)")
    at.add_argument("--landmarks", type=int, default=None, metavar="N",
                    help="chunked spectral embedding: computed on N random cells (default 50000, fewer when the "
                         "budget is small), extended to the others by Nystrom")
    at.add_argument("--binarize", action="store_true", help="binarise peak counts before TF-IDF (default: keep counts)")
    at.add_argument("--depth-threshold", type=float, default=0.75,
                    help="drop the LSI component whose |r| with depth exceeds this (default 0.75, Signac's DepthCor)")
    dims = p.add_argument_group("features and graph")
    dims.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes, selected per batch (default 2000)")
    dims.add_argument("--n-pcs", type=int, default=30, help="principal components; LSI components for ATAC (default 30)")
    dims.add_argument("--n-neighbors", type=int, default=15, help="neighbours for UMAP and Leiden (default 15)")
    dims.add_argument("--resolutions", type=float, nargs="+", default=[0.3, 0.5, 0.8],
                      help="Leiden resolutions (default 0.3 0.5 0.8)")
    dims.add_argument("--resolution", type=float, default=None,
                      help="resolution copied to obs['leiden'] (default: the middle one)")
    dims.add_argument("--markers", nargs="+", default=None, help="genes for the marker UMAPs (default: top markers)")
    hg = p.add_argument_group("Harmony")
    hg.add_argument("--sigma", type=float, default=0.1, help="soft-clustering width (default 0.1)")
    hg.add_argument("--nclust", type=int, default=None, help="clusters (default min(N/30, 100))")
    hg.add_argument("--lamb", type=float, default=None, help="ridge penalty (default: automatic, alpha * E)")
    hg.add_argument("--max-iter-harmony", type=int, default=10, help="maximum Harmony iterations (default 10)")
    hg.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--protein-model", choices=["clr", "totalvi"], default="clr",
                   help="CITE-seq input: the protein figures show the CLR of the counts (default) or the "
                   "denoised proteins of a TOTALVI trained on the QC'd cells")
    big = p.add_argument_group("atlas scale (h5ad / zarr larger than memory)")
    chunk = big.add_mutually_exclusive_group()
    chunk.add_argument("--chunked", dest="chunked", action="store_const", const=True, default=None,
                       help="preprocess in chunks of cells (QC, normalise, HVG, PCA; for peaks QC, TF-IDF, LSI: the "
                       "counts are never held; markers on a per-cluster sample). Default: when the file would not "
                       "fit in --max-memory")
    chunk.add_argument("--no-chunked", dest="chunked", action="store_const", const=False,
                       help="read the whole input into memory whatever its size")
    big.add_argument("--max-memory", default=None, metavar="SIZE",
                     help="memory budget of the chunked path, e.g. 8GB (default: a quarter of this machine's memory); "
                     "Harmony streams its cells when it would need more than half of it")
    big.add_argument("--chunk-cells", type=int, default=None, metavar="N",
                     help="cells per chunk instead of the budget's")
    big.add_argument("--dask", default=None, metavar="ADDRESS",
                     help="run the chunked passes on a dask.distributed scheduler (tcp://host:8786, started with "
                     "'dask scheduler' and 'dask worker', or by dask-jobqueue / dask-kubernetes), or 'local' "
                     "for a LocalCluster on this machine; a streaming Harmony runs there too")
    big.add_argument("--umap-max-cells", type=int, default=None, metavar="N",
                     help="above N cells (default 200000) the UMAPs are laid out on a random sample of N cells, "
                     "the others placed by their nearest sample cells; the figure and the metrics use the "
                     "sample, Leiden all cells. 0: lay out every cell")
    p.add_argument("--no-metrics", action="store_true", help="skip the integration metrics")
    p.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`scaml.pipeline.integrate` with the parsed arguments."""
    from ..pipeline import integrate

    harmony_params = {"sigma": args.sigma, "nclust": args.nclust, "lamb": args.lamb,
                      "max_iter_harmony": args.max_iter_harmony, "device": args.device,
                      "verbose": not args.quiet}
    integrate(
        resolve_input(args), args.batch_key, args.out, theta=args.theta, label_key=args.label_key,
        use_rep=args.use_rep, input_kind=args.input_kind, mito_prefix=args.mito_prefix,
        min_genes=args.min_genes, max_genes=args.max_genes, max_pct_mito=args.max_pct_mito,
        min_cells=args.min_cells, n_top_genes=args.n_hvg, n_pcs=args.n_pcs, n_neighbors=args.n_neighbors,
        resolutions=args.resolutions, resolution=args.resolution, markers=args.markers,
        harmony_params=harmony_params, random_state=args.random_state, overwrite=args.overwrite,
        evaluate=not args.no_metrics, modality=args.modality,
        atac_params={"min_counts": args.min_counts, "min_peaks": args.min_peaks, "max_counts": args.max_counts,
                     "min_fragments": args.min_fragments, "binarize": args.binarize,
                     "depth_threshold": args.depth_threshold, "fragments": args.fragments, "genes": args.genes,
                     "embedding": args.atac_embedding, "landmarks": args.landmarks},
        chunked=True if args.dask is not None and args.chunked is None else args.chunked,
        max_memory=args.max_memory, chunk_cells=args.chunk_cells, dask=args.dask,
        protein_model=args.protein_model, umap_max_cells=args.umap_max_cells,
    )
    return 0
