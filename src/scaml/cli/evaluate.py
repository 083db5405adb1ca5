"""``scaml evaluate``: scIB integration metrics of embeddings stored in an h5ad file."""

from __future__ import annotations

import argparse

from .options import add_input, add_output, resolve_input


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``evaluate`` subcommand."""
    p = subparsers.add_parser(
        "evaluate", parents=[parent],
        help="integration metrics (LISI, kBET, ASW, graph connectivity, NMI/ARI, ...) of embeddings",
        description=(
            "Compute the scIB integration metrics of one or more embeddings (obsm keys) of the same cells: "
            "iLISI, kBET, batch ASW, graph connectivity and PCR comparison (batch correction); NMI and ARI "
            "of Leiden clusters, label ASW, cLISI and isolated-label ASW (bio conservation, with "
            "--label-key); and the scIB summary (total = 0.4 batch + 0.6 bio). Writes DIR/metrics.csv, "
            "DIR/metrics.json, DIR/metrics_per_label.csv, DIR/metrics_leiden_sweep.csv, "
            "DIR/figures/metrics_comparison.png, "
            "DIR/run.json and DIR/report.html."
        ),
    )
    add_input(p, "h5ad file (or 10x .h5 / 10x folder / CSV) with the embeddings in obsm")
    p.add_argument("--batch-key", required=True, help="obs column of the batches")
    p.add_argument("--label-key", default=None,
                   help="obs column of the cell types (without it: batch-mixing metrics only)")
    p.add_argument("--embeddings", nargs="+", default=["X_pca", "X_pca_harmony"], metavar="OBSM_KEY",
                   help="obsm keys to compare (default: X_pca X_pca_harmony)")
    p.add_argument("--reference", default="X_pca", metavar="OBSM_KEY",
                   help="unintegrated embedding for the PCR comparison (default X_pca)")
    add_output(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--n-neighbors", type=int, default=15,
                   help="neighbours (counting the cell) for graph connectivity and Leiden (default 15)")
    p.add_argument("--perplexity", type=float, default=30, help="LISI perplexity (default 30)")
    p.add_argument("--neighbor-method", choices=["auto", "exact", "pynndescent"], default="auto",
                   help="nearest-neighbour search (default auto: exact up to 50,000 cells, pynndescent above)")
    p.add_argument("--asw-max-cells", type=int, default=None, metavar="N",
                   help="above N cells, silhouette metrics use a stratified sample of about N cells (default: all)")
    p.add_argument("--subsample", type=int, default=None, metavar="N",
                   help="evaluate a random subset of N cells (said in the notes)")
    p.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`scaml.metrics.evaluate` with the parsed arguments."""
    from ..metrics import evaluate

    evaluate(
        resolve_input(args), args.batch_key, args.label_key, args.embeddings, args.out, overwrite=args.overwrite,
        reference=args.reference, n_neighbors=args.n_neighbors, perplexity=args.perplexity,
        neighbor_method=args.neighbor_method, asw_max_cells=args.asw_max_cells, subsample=args.subsample,
        random_state=args.random_state,
    )
    return 0
