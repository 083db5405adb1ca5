"""The ``scaml`` command: a thin layer over the Python API.

Each subcommand lives in a module of this package that defines
``register(subparsers, parent)``; the function it registers receives the
parsed arguments and calls one library function.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
from collections.abc import Sequence

from .. import __version__
from .._utils import console, is_quiet, set_quiet
from ..errors import ScamlError

#: Modules that register subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = ("demo", "integrate", "evaluate", "classify", "mapping", "report")

#: The command line of the current run (for summaries and reports).
COMMAND_LINE: list[str] = []


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="scaml",
        description=(
            "Single-cell batch integration with scaml's own Harmony, reference mapping with "
            "conditional VAEs or Symphony-style mapping, cross-batch classifier benchmarks, "
            "integration metrics and HTML reports."
        ),
    )
    parser.add_argument("--version", action="version", version=f"scaml {__version__}")
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--quiet", "-q", action="store_true", help="no progress bars or info messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(subparsers, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scaml`` command; returns the exit status (2 for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND_LINE[:] = ["scaml", *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ..style import use_file_backend

    use_file_backend()  # the command writes figures to files only
    was_quiet = is_quiet()
    set_quiet(getattr(args, "quiet", False))
    try:
        result = args.func(args)
        if not result:
            _write_report(args)
    except ScamlError as exc:
        message = " ".join(str(exc).split())
        console.print(f"[bold red]scaml {args.command}: error:[/bold red] {message}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    finally:  # --quiet lasts for this command only (main() may run many times in one process)
        set_quiet(was_quiet)
    return int(result or 0)


def _write_report(args: argparse.Namespace) -> None:
    """Build DIR/report.html for commands that name their output directory attribute."""
    if not getattr(args, "report_dir_attr", None):
        return
    from .report import maybe_write_report

    maybe_write_report(args)


def command_string() -> str:
    """The current command line as one shell-quoted string."""
    return " ".join(shlex.quote(a) for a in COMMAND_LINE) if COMMAND_LINE else ""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
