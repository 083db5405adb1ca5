"""The files of a scaml VAE model directory (a leaf: it knows files, not models).

A model directory holds:

- ``model.pt``: the network's ``state_dict`` (tensors only, loaded with ``weights_only=True``);
- ``config.json``: model class, parameters, network configuration, surgery
  settings, condition and label categories, training history, format and
  package versions;
- ``genes.txt``: the model's genes, one per line, in input order.

:func:`write_model_dir` writes the three files into a temporary directory beside the target and
renames it into place, so a reader never sees a half-written model; :func:`read_model_dir` reads
and checks them (manifest through :func:`scaml.manifest.read_manifest`). Building the
network from them is :func:`scaml.vae.model.load_model`'s job.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .._utils import jsonable, package_versions
from ..errors import ScamlError
from ..manifest import read_manifest

#: Version of the model directory format.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
GENES_FILE = "genes.txt"
_REBUILD = "Rebuild the reference with this version of scaml."


@dataclass
class ModelFiles:
    """What a model directory holds: the configuration, the weights and the genes."""

    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    genes: list[str]


def write_model_dir(
    directory: str | os.PathLike,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    genes: list[str],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically (temporary directory + rename).

    Parameters
    ----------
    directory
        Target directory; refused when it exists and is not empty unless ``overwrite``.
    config
        The model's configuration; the format, scaml, torch and package versions are added.
    state
        The network's ``state_dict`` (moved to the CPU).
    genes
        The model's genes, in input order.
    overwrite
        Replace an existing directory.

    Returns
    -------
    Path
        The directory.
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ScamlError(f"{str(target)!r} exists and is a file; choose a directory path for the model.")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ScamlError(
            f"model directory {str(target)!r} already exists and is not empty; pass overwrite=True "
            "(--overwrite) to replace it, or choose another directory."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    config = dict(config)
    config.update({"format_version": FORMAT_VERSION, "scaml_version": __version__,
                   "torch_version": torch.__version__, "versions": package_versions()})
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(jsonable(config), indent=2) + "\n")
        (tmp / GENES_FILE).write_text("\n".join(genes) + "\n")
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old.{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _compat_key(version: str) -> tuple[int, ...] | None:
    """The part of a version that must match: (major,) from 1.0 on, (0, minor) before (semver)."""
    try:
        parts = [int(x) for x in str(version).split("+")[0].split(".")[:2]]
    except ValueError:
        return None
    if not parts or (len(parts) < 2 and parts[0] == 0):
        return None
    return tuple(parts[:2]) if parts[0] == 0 else (parts[0],)


def _check_scaml_version(config: dict[str, Any], path: Path) -> None:
    saved_version = str(config.get("scaml_version", ""))
    saved_key, own_key = _compat_key(saved_version), _compat_key(__version__)
    unknown = (None, (0, 0))  # (0, 0): a source tree without installed metadata
    if saved_key is None or (own_key not in unknown and saved_key not in unknown and saved_key != own_key):
        raise ScamlError(
            f"the model in {str(path)!r} was written by scaml {saved_version}, incompatible with this scaml "
            f"({__version__}); rebuild the reference with this version."
        )


def _check_config(config: dict[str, Any], genes: list[str], path: Path) -> None:
    where = str(path / CONFIG_FILE)
    try:
        module = config["module"]
        n_input, n_conditions = int(module["n_input"]), sum(int(n) for n in module["cond_blocks"])
        n_listed = len(config["conditions"])
        config["params"]  # noqa: B018 (presence check)
    except (KeyError, TypeError, ValueError) as exc:
        raise ScamlError(f"{where!r} lacks an entry ({exc}); the model directory is corrupt.") from exc
    if len(genes) != n_input or len(genes) != config.get("n_genes", len(genes)):
        raise ScamlError(
            f"{str(path / GENES_FILE)!r} lists {len(genes)} genes but the network expects {n_input}; "
            "the model directory is corrupt."
        )
    if n_listed != n_conditions:
        raise ScamlError(
            f"config.json lists {n_listed} conditions but the network has {n_conditions}; "
            "the model directory is corrupt."
        )


def read_model_dir(directory: str | os.PathLike) -> ModelFiles:
    """Read and check a model directory written by :func:`write_model_dir`.

    Parameters
    ----------
    directory
        The model directory.

    Returns
    -------
    ModelFiles
        The configuration (as saved, history included), the weights (on the CPU) and the genes.

    Raises
    ------
    ScamlError
        Missing files, unreadable or inconsistent contents, or a directory written by an
        incompatible version.
    """
    path = Path(directory)
    if not path.is_dir():
        raise ScamlError(f"model directory {str(path)!r} does not exist; pass the directory written by model.save().")
    missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE, GENES_FILE) if not (path / name).is_file()]
    if missing:
        raise ScamlError(
            f"{str(path)!r} is not a scaml model directory: {', '.join(missing)} missing. "
            "Pass the directory written by model.save() (or `scaml reference build`)."
        )
    config = read_manifest(path / CONFIG_FILE, kind=None, format_version=FORMAT_VERSION,
                           what="scaml model", rebuild=_REBUILD)
    _check_scaml_version(config, path)
    genes = (path / GENES_FILE).read_text().splitlines()
    _check_config(config, genes, path)
    try:
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise ScamlError(f"cannot read the weights {str(path / WEIGHTS_FILE)!r} ({exc}); the model directory is corrupt.") from exc
    return ModelFiles(config=config, state=state, genes=genes)
