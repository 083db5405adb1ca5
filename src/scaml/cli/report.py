"""``scaml report DIR``: (re)build the HTML report of a run directory."""

from __future__ import annotations

import argparse
from typing import Any

from .options import add_input, resolve_input


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        parents=[parent],
        help="build DIR/report.html, one self-contained page showing a run",
        description=(
            "Build DIR/report.html from what a scaml run wrote to DIR (run.json, summary.json, "
            "figures, metric tables) and print its path. Every scaml command that writes an output "
            "directory already does this; use it to rebuild the page."
        ),
    )
    add_input(parser, "the output directory of a scaml run", flag="--out", extra_flags=("--outdir", "--results"),
              metavar="DIR")
    parser.add_argument("--title", default=None, help="page title (default: 'scaml <command> report')")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print its path on stdout."""
    from ..report import write_report

    path = write_report(resolve_input(args, "--out", "DIR"), title=args.title)
    print(path)
    return 0
