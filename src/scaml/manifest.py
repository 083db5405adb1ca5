"""Versioned JSON manifests: the one reader and checker of scaml's directory formats.

A reference directory (``reference.json``), a Symphony reference (``symphony/reference.json``)
and a VAE model directory (``model/config.json``) each start with a JSON manifest that says what
the directory holds (its *kind*) and which version of the format wrote it. :func:`read_manifest`
reads one and checks both, with messages that say what is wrong and how to fix it;
:func:`manifest_header` writes the matching entries. This module imports nothing else from scaml
but the version and the error type, so every format (``scaml.vae.io`` included) can use it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ScamlError

#: Default fix named in the messages.
REBUILD = "Rebuild the reference with this version of scaml (`scaml reference build`)."


def manifest_header(kind: str | None, format_version: int, *, kind_field: str = "kind") -> dict[str, Any]:
    """The entries every manifest starts with: its kind (when any), format version and scaml version.

    Parameters
    ----------
    kind
        What the directory holds (e.g. ``"scaml-reference"``); None writes no kind entry.
    format_version
        Version of the directory format.
    kind_field
        Name of the kind entry (``"kind"``; older formats use ``"format"``).

    Returns
    -------
    dict
    """
    header: dict[str, Any] = {} if kind is None else {kind_field: kind}
    header.update({"format_version": int(format_version), "scaml_version": __version__})
    return header


def read_manifest(
    path: str | os.PathLike,
    *,
    kind: str | None,
    format_version: int,
    what: str,
    kind_field: str = "kind",
    rebuild: str = REBUILD,
) -> dict[str, Any]:
    """Read a JSON manifest and check its kind and format version.

    Parameters
    ----------
    path
        The manifest file.
    kind
        The kind the manifest must name in ``kind_field``; None checks no kind.
    format_version
        The format version this scaml reads.
    what
        What the directory is, for the messages (e.g. ``"scaml reference"``).
    kind_field
        Name of the kind entry.
    rebuild
        The fix the messages name.

    Returns
    -------
    dict
        The manifest.

    Raises
    ------
    ScamlError
        The file is missing, is not a JSON object, names another kind, or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise ScamlError(f"{str(path.parent)!r} is not a {what} directory (no {path.name}). {rebuild}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScamlError(f"{str(path)!r} is not valid JSON ({exc}): the {what} is corrupt. {rebuild}") from exc
    if not isinstance(manifest, dict):
        raise ScamlError(f"{str(path)!r} does not hold a {what} manifest: the directory is corrupt. {rebuild}")
    if kind is not None and manifest.get(kind_field) != kind:
        raise ScamlError(
            f"{str(path)!r} describes a {manifest.get(kind_field)!r}, not a {what} ({kind!r}). {rebuild}"
        )
    found = manifest.get("format_version")
    if found != format_version:
        raise ScamlError(
            f"the {what} in {str(path.parent)!r} has format version {found!r} (written by scaml "
            f"{manifest.get('scaml_version', 'unknown')}); this scaml ({__version__}) reads format version "
            f"{format_version}. {rebuild}"
        )
    return manifest
