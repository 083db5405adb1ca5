"""Options every subcommand spells the same way: the input file and the output directory."""

from __future__ import annotations

import argparse

from ..errors import ScamlError


def add_input(parser: argparse.ArgumentParser, help: str, *, extra_flags: tuple[str, ...] = ()) -> None:
    """The input file, positionally or as ``--adata`` (and any ``extra_flags``, e.g. ``--query``)."""
    parser.add_argument("input", nargs="?", default=None, metavar="INPUT", help=help)
    parser.add_argument("--adata", *extra_flags, dest="input_flag", default=None, metavar="INPUT",
                        help="the input file, as a flag (same as the positional INPUT)")


def resolve_input(args: argparse.Namespace, flag: str = "--adata") -> str:
    """The input path given positionally or by flag; a ScamlError when none, or two different ones."""
    positional, flagged = args.input, args.input_flag
    if positional and flagged and positional != flagged:
        raise ScamlError(
            f"two inputs given: {positional!r} and {flag} {flagged!r}; give the input once, positionally or with {flag}."
        )
    path = positional or flagged
    if not path:
        raise ScamlError(f"no input file given; pass it positionally or with {flag} FILE.")
    return path


def add_output(parser: argparse.ArgumentParser, help: str = "output directory", *, required: bool = True,
               default: str | None = None, metavar: str = "DIR") -> None:
    """The output directory as ``--out`` or ``--outdir`` (the same option)."""
    parser.add_argument("--out", "--outdir", dest="out", required=required, default=default, metavar=metavar,
                        help=f"{help} (--out and --outdir are the same option)")
