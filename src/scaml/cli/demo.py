"""``scaml demo``: the main job on simulated data, no input needed."""

from __future__ import annotations

import argparse

from .options import add_output


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:
    """Add the ``demo`` subcommand."""
    p = subparsers.add_parser(
        "demo", parents=[parent], help="simulate a multi-batch dataset and run scaml on it",
        description=(
            "Simulate negative-binomial counts (several batches and cell types, fixed seed) and run the "
            "integration pipeline, a cross-batch classifier benchmark and reference mapping on them."
        ),
    )
    add_output(p, "output directory (default scaml-demo)", required=False, default="scaml-demo")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--n-cells", type=int, default=4000, help="simulated cells (default 4000)")
    p.add_argument("--n-genes", type=int, default=2000, help="simulated genes (default 2000)")
    p.add_argument("--n-batches", type=int, default=3, help="simulated batches (default 3)")
    p.add_argument("--random-state", type=int, default=0, help="seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run :func:`scaml.demo.run_demo`."""
    from ..demo import run_demo
    from ..report import REPORT_FILE

    outdir = run_demo(args.out, n_cells=args.n_cells, n_genes=args.n_genes, n_batches=args.n_batches,
                      random_state=args.random_state, overwrite=args.overwrite)
    print(f"scaml demo finished; open the report: {outdir / REPORT_FILE}")
    return 0
