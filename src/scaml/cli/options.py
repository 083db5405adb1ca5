"""Options every subcommand spells the same way: the input (positionally or by flag) and the output directory."""

from __future__ import annotations

import argparse

from ..errors import ScamlError


def add_input(parser: argparse.ArgumentParser, help: str, *, flag: str = "--adata",
              extra_flags: tuple[str, ...] = (), metavar: str = "INPUT") -> None:
    """The input, positionally or as ``flag`` (and any ``extra_flags``, e.g. ``--query``); see :func:`resolve_input`."""
    parser.add_argument("input", nargs="?", default=None, metavar=metavar, help=f"{help} (or {flag} {metavar})")
    parser.add_argument(flag, *extra_flags, dest="input_flag", default=None, metavar=metavar,
                        help=f"the same as the positional {metavar}")


def resolve_input(args: argparse.Namespace, flag: str = "--adata", metavar: str = "INPUT") -> str:
    """The input given positionally or by flag; a ScamlError when none, or two different ones."""
    positional, flagged = args.input, args.input_flag
    if positional is not None and flagged is not None and positional != flagged:
        raise ScamlError(
            f"two inputs given: {positional!r} and {flag} {flagged!r}; give it once, positionally or with {flag}."
        )
    path = positional if positional is not None else flagged
    if path is None:
        command = getattr(args, "command", None) or "COMMAND"
        raise ScamlError(f"no input given; pass it positionally (scaml {command} {metavar} ...) or with {flag} {metavar}.")
    return path


def add_output(parser: argparse.ArgumentParser, help: str = "output directory", *, required: bool = True,
               default: str | None = None, metavar: str = "DIR", dest: str = "out") -> None:
    """The output directory as ``--out`` or ``--outdir`` (the same option, stored in ``args.<dest>``)."""
    parser.add_argument("--out", "--outdir", dest=dest, required=required, default=default, metavar=metavar,
                        help=f"{help} (--out and --outdir are the same option)")
