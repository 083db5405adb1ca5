"""The ``scaml`` command: a thin layer over the Python API.

Each subcommand lives in a module of this package that defines
``register(subparsers, parent)``; the function it registers receives the
parsed arguments and calls one library function, which writes every output
(report.html included), so a notebook gets the same files as the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .. import __version__, runinfo
from .._utils import console, is_quiet, set_quiet
from ..errors import ScamlError

#: Modules that register subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = ("demo", "integrate", "evaluate", "classify", "mapping", "report")

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
    parent.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print the full traceback (for a bug report)")
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
    """Run the ``scaml`` command; returns the exit status.

    Bad input (a :class:`~scaml.errors.ScamlError`) prints one line and returns 2. Any other
    exception also prints one line (its type and message, and a hint to rerun with ``--debug``)
    and returns 2; with ``--debug`` the full traceback is printed as well.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    runinfo.set_command_line(["scaml", *argv])
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
    except ScamlError as exc:
        _print_error(args.command, str(exc))
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - an unexpected failure still ends as one line
        if getattr(args, "debug", False):
            traceback.print_exc(file=sys.stderr)
        _print_error(
            args.command,
            f"unexpected {type(exc).__name__}: {exc}. This is a bug in scaml or a case it does not handle; "
            "rerun with --debug for the traceback and report it.",
        )
        return 2
    finally:  # --quiet lasts for this command only (main() may run many times in one process)
        set_quiet(was_quiet)
    return int(result or 0)


def _print_error(command: str, message: str) -> None:
    """Print an error as exactly one line on stderr (whitespace and newlines folded)."""
    line = " ".join(message.split())
    console.print(f"[bold red]scaml {command}: error:[/bold red] {line}", soft_wrap=True, markup=True,
                  highlight=False, emoji=False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
