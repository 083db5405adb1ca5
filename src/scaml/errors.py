"""The one exception type scaml raises for bad input or bad parameters."""

from __future__ import annotations

from collections.abc import Iterable


class ScamlError(ValueError):
    """A problem with the user's input or parameters.

    The message says what is wrong, with which value, and what to do about it.
    The command line prints it on one line and exits with status 2.
    """


def _preview(values: Iterable[object], limit: int = 20) -> str:
    values = [str(v) for v in values]
    shown = ", ".join(repr(v) for v in values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values) - limit} more)"
    return shown or "(none)"


def missing_key_error(key: str, available: Iterable[object], where: str, flag: str | None = None) -> ScamlError:
    """Build the error for a key that does not exist, listing those that do.

    Parameters
    ----------
    key
        The key the user asked for.
    available
        The keys that exist.
    where
        Where the key was looked for, e.g. ``"adata.obs"``.
    flag
        The option that named the key, e.g. ``"--batch-key"``, used in the hint.
    """
    available = list(available)
    hint = f"; pass one of them with {flag}" if flag else ""
    close = [a for a in map(str, available) if a.lower() == str(key).lower()]
    did_you_mean = f" Did you mean {close[0]!r}?" if close else ""
    return ScamlError(
        f"{where} has no key {key!r}.{did_you_mean} Available: {_preview(available)}{hint}."
    )
