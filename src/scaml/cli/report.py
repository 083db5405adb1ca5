"""``scaml report DIR``: (re)build the HTML report of a run directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
    parser.add_argument("outdir", metavar="DIR", help="the output directory of a scaml run")
    parser.add_argument("--title", default=None, help="page title (default: 'scaml <command> report')")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    """Write the report and print its path on stdout."""
    from ..report import write_report

    path = write_report(args.outdir, title=args.title)
    print(path)
    return 0


def maybe_write_report(args: argparse.Namespace) -> Path | None:
    """Write the report of a subcommand's output directory, if it has one.

    The subcommand names the attribute of ``args`` that holds its output
    directory in ``args.report_dir_attr`` (e.g. ``"out"``). The report's path
    is printed; a failure of the report itself becomes a warning and never
    fails a run that succeeded.

    Returns
    -------
    pathlib.Path or None
        The report's path, or None when no report was written.
    """
    from .._utils import info, warn

    attr = getattr(args, "report_dir_attr", None)
    if not attr:
        return None
    outdir = getattr(args, attr, None)
    if not outdir or not Path(outdir).is_dir():
        return None
    try:
        from ..report import write_report

        path = write_report(outdir)
    except Exception as exc:  # noqa: BLE001 - the run succeeded; a broken report must not fail it
        warn(f"could not write the HTML report in {str(outdir)!r}: {type(exc).__name__}: {exc}")
        return None
    info(f"report: {path}")
    return path
